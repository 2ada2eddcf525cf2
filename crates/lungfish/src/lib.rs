//! Lungfish engine.
