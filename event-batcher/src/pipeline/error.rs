//! The pipeline's errors: a failure during the run ([`PipelineError`]) and one that keeps
//! the run from starting ([`SetupError`]). Each wraps the typed error of the layer it came
//! from (source, store, configuration) as its `#[source]`.

use super::config::ConfigError;
use crate::source::{OpenError, SourceError};
use crate::store::{ConnectError, QueryError};
use crate::validate::Rejected;

/// A failure during the run: the error type of every stream in the chain.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A record failed validation.
    #[error("invalid input at {0}")]
    Invalid(Box<Rejected>),
    /// The source could not be read.
    #[error("cannot read the input: {0}")]
    Source(#[from] SourceError),
    /// A write to the database failed.
    #[error("batch {batch}: database write failed: {source}")]
    Write {
        /// The batch number.
        batch: u64,
        /// The database error.
        #[source]
        source: QueryError,
    },
    /// Rows the batch found present (and skipped) were gone when it came to claim them
    /// before committing: their owner rolled back in between. The batch is not acknowledged
    /// as it is (it is rolled back, then retried or redelivered, and the ids inserted anew).
    #[error(
        "batch {batch}: {missing} row(s) found present were deleted by their owner's rollback \
         before this batch committed; not acknowledged"
    )]
    Vanished {
        /// The batch number.
        batch: u64,
        /// Distinct ids found present whose rows are gone.
        missing: u64,
    },
    /// An injected failure (`--fail-every`, `--fail-rate`).
    #[error("batch {batch}: injected failure after writing the first {written} of {len} events")]
    Injected {
        /// The batch number.
        batch: u64,
        /// Events written before the failure.
        written: usize,
        /// Events in the batch.
        len: usize,
    },
}

impl PipelineError {
    /// Whether this is a database write that failed because the database was unavailable
    /// (see [`QueryError::is_unavailable`]), not because of the batch.
    pub fn is_database_unavailable(&self) -> bool {
        matches!(self, PipelineError::Write { source, .. } if source.is_unavailable())
    }

    /// Whether the batch failed for a reason that says nothing about its events and that a
    /// redelivery clears: the database was unavailable, or rows it found present vanished
    /// before it could claim them ([`PipelineError::Vanished`]: their owner rolled back).
    pub fn is_redeliverable(&self) -> bool {
        self.is_database_unavailable() || matches!(self, PipelineError::Vanished { .. })
    }
}

/// An error that prevents the run from starting: exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A bad option value.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database cannot be used (a bad URL, unreachable, an unusable table).
    #[error(transparent)]
    Database(#[from] ConnectError),
    /// The source cannot be opened (an unreadable input, an unusable NATS server).
    #[error(transparent)]
    Source(#[from] OpenError),
    /// An output file (`--rejects`, `--dead-letter`) cannot be created.
    #[error("cannot create {path}: {source}")]
    Output {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}
