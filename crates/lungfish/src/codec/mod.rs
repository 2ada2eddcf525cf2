//! Decoders of input formats. Each turns raw bytes into the fields the pipeline needs,
//! validating fully, in one pass.

pub mod json;
