//! Live counters of a run, shared by the pipeline and the progress display, and what the
//! summary lists (invalid records, rolled-back batches).

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use result_stream::{FlushReason, RollbackReport};

use crate::event::Event;
use crate::record::Position;
use crate::sync::lock;
use crate::validate::Rejected;

/// How many invalid records and failed batches are listed in the summary (all are counted).
pub const LISTED: usize = 10;

/// Batches written, by the reason `chunks_timeout_result` flushed them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushCounts {
    /// Full: `--max-batch` events.
    pub size: u64,
    /// The `--flush-every` deadline of the batch's first event passed.
    pub deadline: u64,
    /// The input ended.
    pub end: u64,
    /// Flushed ahead of an error of the input (with `--strict`, the invalid line that
    /// stopped the run; or a read error).
    pub before_error: u64,
}

impl FlushCounts {
    /// All batches.
    pub fn total(&self) -> u64 {
        self.size + self.deadline + self.end + self.before_error
    }

    pub(crate) fn add(&mut self, reason: FlushReason) {
        match reason {
            FlushReason::Deadline => self.deadline += 1,
            FlushReason::End => self.end += 1,
            FlushReason::Error => self.before_error += 1,
            // `Full`, and the reasons of caps the pipeline does not set (weight, eviction).
            _ => self.size += 1,
        }
    }
}

/// An invalid record, as listed in the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectNote {
    /// Where it was (for NDJSON, the line number).
    pub position: Position,
    /// Why it was rejected.
    pub reason: String,
}

/// A batch that was rolled back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedBatch {
    /// The batch number (1-based, in the order batches were formed).
    pub seq: u64,
    /// How many events it held.
    pub events: usize,
    /// The id of its first event.
    pub first_id: String,
    /// The id of its last event.
    pub last_id: String,
    /// Why its write failed, starting with `batch N: ` (`batch N: cancelled` for Ctrl-C).
    pub error: String,
    /// Rows its compensation deleted.
    pub rows_deleted: u64,
    /// What the rollback did, in one line.
    pub rollback: String,
    /// Whether every compensation of the batch succeeded.
    pub rolled_back_cleanly: bool,
}

/// The batch being written, kept so that a batch rolled back by `for_each_compensated`
/// itself (stop mode, cancellation) can still be reported.
#[derive(Debug)]
pub(crate) struct InFlight {
    pub seq: u64,
    pub events: Arc<[Event]>,
    pub rows_deleted: Arc<AtomicU64>,
}

#[derive(Debug, Default)]
pub(crate) struct Detail {
    pub(crate) inserted: u64,
    pub(crate) already_present: u64,
    /// The distinct ids behind `already_present`, checked against the table at the end.
    pub(crate) skipped_ids: HashSet<String>,
    pub(crate) flush: FlushCounts,
    pub(crate) rejects: Vec<RejectNote>,
    pub(crate) failed: Vec<FailedBatch>,
    pub(crate) events_rolled_back: u64,
    pub(crate) in_flight: Option<InFlight>,
    pub(crate) ack_failures: u64,
    pub(crate) warnings: Vec<String>,
}

/// Live counters of a run, shared by the pipeline and the progress display.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Records read from the source (valid or not).
    pub read: AtomicU64,
    /// Records rejected by validation.
    pub invalid: AtomicU64,
    /// Events in committed batches.
    pub acknowledged: AtomicU64,
    /// Committed batches.
    pub committed: AtomicU64,
    /// Rolled-back batches.
    pub rolled_back: AtomicU64,
    /// Events of rolled-back batches given up after `--max-deliveries` (NATS) and written to
    /// the dead-letter file.
    pub dead_lettered: AtomicU64,
    detail: Mutex<Detail>,
}

impl Stats {
    pub(crate) fn detail(&self) -> MutexGuard<'_, Detail> {
        lock(&self.detail)
    }

    pub fn record_reject(&self, rejected: &Rejected) {
        self.invalid.fetch_add(1, Ordering::Relaxed);
        let mut detail = self.detail();
        if detail.rejects.len() < LISTED {
            detail.rejects.push(RejectNote {
                position: rejected.position,
                reason: rejected.reason.clone(),
            });
        }
    }

    pub fn begin_batch(&self, in_flight: InFlight) {
        self.detail().in_flight = Some(in_flight);
    }

    pub fn take_in_flight(&self) -> Option<InFlight> {
        self.detail().in_flight.take()
    }

    /// A batch's writes are committed: `inserted` of its `events` rows were new, the events
    /// with the `skipped` ids were already present (as the database reported).
    pub fn batch_committed(
        &self,
        reason: FlushReason,
        events: usize,
        inserted: u64,
        skipped: Vec<String>,
    ) {
        let events = events as u64;
        let mut detail = self.detail();
        detail.in_flight = None;
        detail.inserted += inserted;
        detail.already_present += skipped.len() as u64;
        detail.skipped_ids.extend(skipped);
        detail.flush.add(reason);
        drop(detail);
        self.acknowledged.fetch_add(events, Ordering::Relaxed);
        self.committed.fetch_add(1, Ordering::Relaxed);
    }

    /// A batch was rolled back after `error`; `report` is what its rollback did.
    pub fn batch_rolled_back(&self, batch: &InFlight, error: String, report: &RollbackReport) {
        let failed = FailedBatch {
            seq: batch.seq,
            events: batch.events.len(),
            first_id: batch
                .events
                .first()
                .map(|e| e.id.clone())
                .unwrap_or_default(),
            last_id: batch
                .events
                .last()
                .map(|e| e.id.clone())
                .unwrap_or_default(),
            error,
            rows_deleted: batch.rows_deleted.load(Ordering::Relaxed),
            rollback: report.to_string(),
            rolled_back_cleanly: report.is_complete(),
        };
        let mut detail = self.detail();
        if detail
            .in_flight
            .as_ref()
            .is_some_and(|f| f.seq == batch.seq)
        {
            detail.in_flight = None;
        }
        detail.events_rolled_back += batch.events.len() as u64;
        detail.failed.push(failed);
        drop(detail);
        self.rolled_back.fetch_add(1, Ordering::Relaxed);
    }

    /// The numbers of the batches rolled back so far.
    pub fn failed_batch_numbers(&self) -> Vec<u64> {
        self.detail().failed.iter().map(|b| b.seq).collect()
    }

    pub fn ack_failed(&self, what: &str, error: &dyn fmt::Display) {
        let mut detail = self.detail();
        detail.ack_failures += 1;
        if detail.ack_failures == 1 {
            detail.warnings.push(format!(
                "{what} failed (first of possibly several): {error}"
            ));
        }
    }

    pub fn warn(&self, warning: String) {
        self.detail().warnings.push(warning);
    }

    /// The distinct ids of the acknowledged events that were already present.
    pub fn skipped_ids(&self) -> Vec<String> {
        self.detail().skipped_ids.iter().cloned().collect()
    }
}
