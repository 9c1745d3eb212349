//! The errors of the sources.

use crate::source::nats::NatsError;

/// A source could not be opened: the run cannot start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The input file cannot be opened.
    #[error("cannot read input {input}: {source}")]
    Input {
        /// The input.
        input: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The NATS server cannot be reached, or its stream or consumer cannot be used.
    #[error(transparent)]
    Nats(#[from] NatsError),
}

/// A source failed while it was read: the run stops.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The input could not be read.
    #[error("{0}")]
    Read(#[source] std::io::Error),
    /// The broker can no longer deliver (its consumer or stream was deleted).
    #[error("NATS: {reason}")]
    Broker {
        /// The broker's description.
        reason: String,
    },
}
