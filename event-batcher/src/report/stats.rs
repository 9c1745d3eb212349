//! Live counters of a run, shared by the pipeline and the progress display, and what the
//! summary lists (invalid records, rolled-back batches).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use std::time::Duration;

use result_stream::{BatchInfo, FlushReason, RollbackReport};

use super::already_present::AlreadyPresentIds;
use super::histogram::Histogram;
use crate::event::Event;
use crate::mutex::lock;
use crate::record::Position;
use crate::validate::Rejected;

/// How many invalid records and failed batches are listed in the summary (all are counted).
pub const LISTED: usize = 10;

/// Batches written, by the reason the batching adapter flushed them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushCounts {
    /// Full: `--max-batch` events.
    pub size: u64,
    /// Full by `--max-batch-bytes` (or one event larger than it).
    pub weight: u64,
    /// `--per-tenant`: flushed to make room for a new tenant (`--max-open-tenants`).
    pub eviction: u64,
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
        self.size + self.weight + self.eviction + self.deadline + self.end + self.before_error
    }

    pub(crate) fn add(&mut self, reason: FlushReason) {
        match reason {
            FlushReason::Deadline => self.deadline += 1,
            FlushReason::End => self.end += 1,
            FlushReason::Error => self.before_error += 1,
            FlushReason::Weight => self.weight += 1,
            FlushReason::Eviction => self.eviction += 1,
            // `Full`, and reasons added to the (non-exhaustive) enum later.
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
    /// The ids behind `already_present` (distinct per batch), checked against the table at
    /// the end; kept on disk, not in memory (see [`AlreadyPresentIds`]).
    pub(crate) skipped_ids: AlreadyPresentIds,
    pub(crate) flush: FlushCounts,
    /// The age of each committed batch (first event to flush), in microseconds.
    pub(crate) ages_micros: Vec<u32>,
    /// Events of committed batches, by tenant.
    pub(crate) tenants: HashMap<String, u64>,
    pub(crate) rejects: Vec<RejectNote>,
    pub(crate) failed: Vec<FailedBatch>,
    pub(crate) events_rolled_back: u64,
    /// The batches being written, by number.
    pub(crate) in_flight: BTreeMap<u64, InFlight>,
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
    /// Batch write attempts after the first (`--write-retries`).
    pub retried: AtomicU64,
    /// Batches being written now.
    pub in_flight: AtomicU64,
    /// Events of rolled-back batches given up after `--max-deliveries` (NATS) and written to
    /// the dead-letter file.
    pub dead_lettered: AtomicU64,
    /// Of the rolled-back batches, those whose rollback did not complete.
    pub rolled_back_incomplete: AtomicU64,
    /// Duration of each batch write attempt that ended (committed or failed).
    pub write_seconds: Histogram,
    /// Age of each committed batch (first event to flush).
    pub batch_age: Histogram,
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

    /// An attempt to write a batch starts (again, for a retry).
    pub fn begin_batch(&self, in_flight: InFlight) {
        let mut detail = self.detail();
        detail.in_flight.insert(in_flight.seq, in_flight);
        self.in_flight
            .store(detail.in_flight.len() as u64, Ordering::Relaxed);
    }

    /// Batch `seq`, if it is being written, no longer counted as such.
    pub fn take_in_flight(&self, seq: u64) -> Option<InFlight> {
        let mut detail = self.detail();
        let batch = detail.in_flight.remove(&seq);
        self.in_flight
            .store(detail.in_flight.len() as u64, Ordering::Relaxed);
        batch
    }

    /// Every batch being written, oldest first, no longer counted as such.
    pub fn take_all_in_flight(&self) -> Vec<InFlight> {
        let taken = std::mem::take(&mut self.detail().in_flight);
        self.in_flight.store(0, Ordering::Relaxed);
        taken.into_values().collect()
    }

    /// Batch `seq`'s writes are committed: `inserted` of its `events` rows were new, the
    /// events with the `skipped` ids were already present (as the database reported);
    /// `info` is how it was formed, `tenant` its tenant if batches are per tenant.
    pub fn batch_committed(
        &self,
        seq: u64,
        info: &BatchInfo,
        tenant: Option<&str>,
        events: &[Event],
        inserted: u64,
        skipped: Vec<String>,
    ) {
        // Counted before the lock is taken: one entry per tenant of the batch.
        let mut by_tenant: HashMap<&str, u64> = HashMap::new();
        match tenant {
            Some(tenant) => {
                by_tenant.insert(tenant, events.len() as u64);
            }
            None => {
                for event in events {
                    *by_tenant.entry(event.tenant.as_str()).or_default() += 1;
                }
            }
        }
        let mut detail = self.detail();
        detail.in_flight.remove(&seq);
        self.in_flight
            .store(detail.in_flight.len() as u64, Ordering::Relaxed);
        detail.inserted += inserted;
        detail.already_present += skipped.len() as u64;
        detail.skipped_ids.record(&skipped);
        detail.flush.add(info.reason());
        self.batch_age.observe(info.age());
        detail
            .ages_micros
            .push(u32::try_from(info.age().as_micros()).unwrap_or(u32::MAX));
        for (tenant, count) in by_tenant {
            match detail.tenants.get_mut(tenant) {
                Some(total) => *total += count,
                None => {
                    detail.tenants.insert(tenant.to_owned(), count);
                }
            }
        }
        drop(detail);
        self.acknowledged
            .fetch_add(events.len() as u64, Ordering::Relaxed);
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
        detail.in_flight.remove(&batch.seq);
        self.in_flight
            .store(detail.in_flight.len() as u64, Ordering::Relaxed);
        detail.events_rolled_back += batch.events.len() as u64;
        detail.failed.push(failed);
        drop(detail);
        if !report.is_complete() {
            self.rolled_back_incomplete.fetch_add(1, Ordering::Relaxed);
        }
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

    /// The ids of the acknowledged events that were already present (distinct per batch),
    /// taken out for the consistency check: the ids of batches committed after this call
    /// are not in it.
    pub fn take_skipped_ids(&self) -> AlreadyPresentIds {
        std::mem::take(&mut self.detail().skipped_ids)
    }
}

/// The batch age at quantile `q` (0 to 1, nearest rank) of `ages_micros`, `None` when empty.
pub(crate) fn age_quantile(ages_micros: &mut [u32], q: f64) -> Option<Duration> {
    if ages_micros.is_empty() {
        return None;
    }
    let rank = ((q * ages_micros.len() as f64).ceil() as usize).clamp(1, ages_micros.len());
    let (_, nth, _) = ages_micros.select_nth_unstable(rank - 1);
    Some(Duration::from_micros(u64::from(*nth)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_quantiles_are_nearest_rank() {
        assert_eq!(age_quantile(&mut [], 0.5), None);
        // 1..=100 ms, shuffled: p50 is the 50th value, p99 the 99th, p100 the largest.
        let mut ages: Vec<u32> = (1..=100).map(|ms| ms * 1000).rev().collect();
        ages.swap(3, 70);
        let ms = |n: u64| Some(Duration::from_millis(n));
        assert_eq!(age_quantile(&mut ages, 0.5), ms(50));
        assert_eq!(age_quantile(&mut ages, 0.99), ms(99));
        assert_eq!(age_quantile(&mut ages, 1.0), ms(100));
        assert_eq!(age_quantile(&mut [7_000], 0.99), ms(7));
    }
}
