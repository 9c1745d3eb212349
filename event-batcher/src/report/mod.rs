//! What a run reports: its live counters ([`stats`]) and histograms ([`histogram`]), the
//! consistency check ([`check`]) and the ids found already present it verifies, kept on disk
//! ([`already_present`]), the final [`summary`], and the progress display ([`progress`]).
//!
//! This layer sits above the sources and the store (it reads the NATS source's counters) and
//! below the pipeline, which feeds it.

pub mod already_present;
pub mod check;
pub mod histogram;
pub mod progress;
pub mod stats;
pub mod summary;

pub use check::{Check, DatabaseRows};
pub use progress::ProgressMode;
pub use stats::{FailedBatch, FlushCounts, LISTED, RejectNote};
pub use summary::{Outcome, Summary};
