//! Decoders of input formats. Each turns raw bytes into the fields the pipeline needs,
//! validating fully, in one pass.

pub mod json;
#[cfg(feature = "protobuf")]
pub mod protobuf;

/// The format of an input's payload: how it is cut into events and which extractor
/// reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum InputFormat {
    /// JSON: one object per line ([`json`]).
    #[default]
    Json,
    /// Protobuf: length-delimited messages of the pipeline's message type (the
    /// `protobuf` module, cargo feature `protobuf`).
    Protobuf,
}
