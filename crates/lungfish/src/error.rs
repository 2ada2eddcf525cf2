//! The engine's error type. Every error says its domain (bad input, an outside system,
//! or Lungfish itself) and whether retrying may help, so callers route failures with a
//! `match`, not by reading messages.

use lungfish_log::LogError;

use crate::config::ConfigErrors;
use crate::sinks::SinkError;
use crate::sources::RunError;

/// Why saved window state could not be loaded at start (see [`Error::State`]).
pub use crate::state::StateError;

/// Where a failure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// The input or the configuration is wrong; retrying the same thing fails again.
    Input,
    /// A system outside Lungfish failed (a database, the disk, a file).
    External,
    /// Lungfish itself failed (a bug, or a stage that stopped).
    Internal,
}

/// A pipeline error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The pipeline file or configuration is invalid.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// The log or the dead-letter queue failed.
    #[error("log: {0}")]
    Log(#[from] LogError),
    /// A source failed.
    #[error("source {name}: {error}")]
    Source {
        /// The source's name.
        name: String,
        /// What failed.
        #[source]
        error: RunError,
    },
    /// A sink failed.
    #[error("sink {name}: {error}")]
    Sink {
        /// The sink's name.
        name: String,
        /// What failed.
        #[source]
        error: SinkError,
    },
    /// The pipeline stopped because a stage failed; the message says which and why.
    #[error("{0}")]
    Failed(String),
    /// The saved window state could not be read at start.
    #[error("{0}")]
    State(#[from] crate::state::StateError),
}

impl Error {
    /// Where the failure comes from.
    pub fn domain(&self) -> Domain {
        match self {
            Error::Config(_) => Domain::Input,
            Error::Log(_) | Error::Sink { .. } | Error::State(_) => Domain::External,
            Error::Source { error, .. } => match error {
                RunError::Source(crate::sources::SourceError::Config(_)) => Domain::Input,
                _ => Domain::External,
            },
            Error::Failed(_) => Domain::Internal,
        }
    }

    /// True if running again unchanged may succeed (the failure was transient).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Config(_) => false,
            Error::Log(e) => {
                e.is_disk_full() || matches!(e, LogError::Io { .. } | LogError::Timeout(_))
            }
            Error::Sink { error, .. } => error.retryable,
            Error::Source { error, .. } => !matches!(
                error,
                RunError::Source(crate::sources::SourceError::Config(_))
            ),
            Error::Failed(_) => false,
            Error::State(e) => matches!(e, crate::state::StateError::Io { .. }),
        }
    }
}
