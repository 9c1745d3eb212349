//! What a run did: live counters, the final [`Summary`], and the consistency check.
//!
//! # The consistency check
//!
//! Every row records the run and the batch that inserted it (`run_id`, `batch_seq`), and
//! every committed batch records which of its events its `INSERT … ON CONFLICT DO NOTHING
//! RETURNING id` statements actually inserted (the returned ids) and which they skipped as
//! already present (the others). At the end of the run the database is asked, and the check
//! holds when all of these are true:
//! 1. the rows carrying this run's id number exactly the rows inserted by committed
//!    batches: nothing acknowledged is missing, and nothing else of this run is there;
//! 2. no row carries the number of a rolled-back batch: every compensation undid its
//!    partial write;
//! 3. every id skipped as already present has a row (`SELECT COUNT(*) … WHERE id IN (…)`,
//!    in chunks): an acknowledged event that was not inserted by this run is really stored;
//! 4. inserted + already present == events acknowledged.
//!
//! Together: a row exists for every acknowledged event. It costs two indexed `COUNT(*)`
//! queries plus one per 1,000 skipped ids, and keeps in memory only the ids of the events
//! found already present (none in a first run; every id in a re-run of the same input).
//!
//! For a NATS source the check also holds the broker to account, from the verdicts actually
//! sent (counted by the source's acknowledgement task after `NatsSource::close` waited for
//! them):
//! 5. acks sent == events acknowledged (written in committed batches), naks sent (+ messages
//!    deliberately left for redelivery after `ack_wait`, when a rollback could not delete the
//!    rows, + messages given up after `--max-deliveries`) == events in rolled-back batches,
//!    `+TERM`s sent for given-up messages == events written to the dead-letter file for
//!    them, rejects (`+TERM`) sent == invalid records;
//! 6. every message received got exactly one verdict: received == acked + nak'ed +
//!    rejected + dead-lettered + given back unsettled + left for redelivery (+ verdicts that
//!    could not be sent, which fail 5).
//!
//! With several instances sharing a consumer, each checks its own run (its `run_id`); the
//! table as a whole is what the instances wrote together.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use result_stream::{FlushReason, RollbackReport};

use crate::event::{Event, Rejected};
use crate::source::{NatsStats, Position};

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

    fn add(&mut self, reason: FlushReason) {
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
struct Detail {
    inserted: u64,
    already_present: u64,
    /// The distinct ids behind `already_present`, checked against the table at the end.
    skipped_ids: HashSet<String>,
    flush: FlushCounts,
    rejects: Vec<RejectNote>,
    failed: Vec<FailedBatch>,
    events_rolled_back: u64,
    in_flight: Option<InFlight>,
    ack_failures: u64,
    warnings: Vec<String>,
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
    fn detail(&self) -> MutexGuard<'_, Detail> {
        // Every critical section is a few field updates: a poisoned lock is consistent.
        self.detail.lock().unwrap_or_else(|p| p.into_inner())
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

/// How the run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The input was read to its end.
    Finished,
    /// A failure stopped the run (stop mode, `--strict`, a read error, or a rollback that
    /// could not complete).
    Stopped {
        /// What failed, in one line.
        cause: String,
        /// What the final rollback did, in one line.
        rollback: String,
        /// Whether it undid everything.
        rolled_back_cleanly: bool,
    },
    /// Interrupted (Ctrl-C); the batch in progress was rolled back.
    Cancelled {
        /// What the rollback did, in one line.
        rollback: String,
        /// Whether it undid everything.
        rolled_back_cleanly: bool,
    },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Finished => f.write_str("finished"),
            Outcome::Stopped {
                cause, rollback, ..
            } => write!(f, "stopped: {cause}; {rollback}"),
            Outcome::Cancelled { rollback, .. } => write!(f, "interrupted; {rollback}"),
        }
    }
}

/// Row counts read from the database at the end of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatabaseRows {
    /// Rows in the table.
    pub total: u64,
    /// Rows inserted by this run.
    pub of_run: u64,
    /// Rows still carrying the number of a batch of this run that was rolled back.
    pub left_by_rolled_back: u64,
    /// Distinct ids of the acknowledged events that were skipped as already present.
    pub skipped_ids: u64,
    /// Of those, the ids that have a row in the table.
    pub skipped_found: u64,
}

/// The result of the consistency check (see the [module documentation](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Whether it holds.
    pub holds: bool,
    /// The numbers behind it, in one line.
    pub detail: String,
}

impl Check {
    /// Compares the counters of a run with the database.
    pub fn new(
        acknowledged: u64,
        inserted: u64,
        already_present: u64,
        rolled_back_batches: u64,
        rows: Result<DatabaseRows, String>,
    ) -> Check {
        let rows = match rows {
            Ok(rows) => rows,
            Err(error) => {
                return Check {
                    holds: false,
                    detail: format!("could not count the rows: {error}"),
                };
            }
        };
        let holds = rows.of_run == inserted
            && rows.left_by_rolled_back == 0
            && rows.skipped_found == rows.skipped_ids
            && inserted + already_present == acknowledged;
        let detail = if holds {
            format!(
                "OK: rows for the acknowledged events ({} inserted by this run + {already_present} \
                 already present, all {} id(s) found) == events acknowledged ({acknowledged}); \
                 {rolled_back_batches} rolled-back batch(es) left 0 rows",
                rows.of_run, rows.skipped_ids
            )
        } else {
            format!(
                "FAILED: the database holds {} row(s) inserted by this run, committed batches \
                 inserted {inserted}; {} of {} id(s) skipped as already present found; \
                 {inserted} inserted + {already_present} already present vs {acknowledged} \
                 acknowledged; rolled-back batches left {} row(s)",
                rows.of_run, rows.skipped_found, rows.skipped_ids, rows.left_by_rolled_back
            )
        };
        Check { holds, detail }
    }

    /// Adds the broker's side (rules 5 and 6 of the [module documentation](self)).
    pub fn with_broker(
        mut self,
        nats: &NatsStats,
        acknowledged: u64,
        events_rolled_back: u64,
        dead_lettered: u64,
        invalid: u64,
    ) -> Check {
        let settled = nats.settled();
        let returned = nats.nacked + nats.abandoned + nats.dead_lettered;
        let holds = nats.acked == acknowledged
            && returned == events_rolled_back
            && nats.dead_lettered == dead_lettered
            && nats.rejected == invalid
            && nats.received == settled
            && nats.send_failures == 0;
        let compare = |sent: u64, events: u64| if sent == events { "==" } else { "!=" };
        let mut naks = format!("naks {}", nats.nacked);
        if nats.abandoned > 0 {
            naks.push_str(&format!(
                " + {} left for redelivery (rows not deleted)",
                nats.abandoned
            ));
        }
        if nats.dead_lettered > 0 || dead_lettered > 0 {
            naks.push_str(&format!(
                " + {} given up ({} {} dead letters written)",
                nats.dead_lettered,
                compare(nats.dead_lettered, dead_lettered),
                dead_lettered
            ));
        }
        let mut detail = format!(
            "NATS verdicts {}: acks {} {} events acknowledged {acknowledged}, {naks} {} events \
             rolled back {events_rolled_back}, rejects {} {} invalid {invalid}, {} received {} \
             {settled} settled ({} given back unsettled)",
            if holds { "OK" } else { "FAILED" },
            nats.acked,
            compare(nats.acked, acknowledged),
            compare(returned, events_rolled_back),
            nats.rejected,
            compare(nats.rejected, invalid),
            nats.received,
            compare(nats.received, settled),
            nats.dropped_nacked,
        );
        if nats.send_failures > 0 {
            detail.push_str(&format!(
                ", {} verdict(s) could not be sent (those messages will be redelivered)",
                nats.send_failures
            ));
        }
        if !holds && self.holds {
            self.detail = format!(
                "FAILED (broker): {}",
                self.detail.trim_start_matches("OK: ")
            );
        }
        self.holds &= holds;
        self.detail = format!("{}; {detail}", self.detail);
        self
    }
}

/// Everything a run reports, printed as the final summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// This run's id, stored in `run_id` with every row it inserted.
    pub run_id: i64,
    /// The source, described.
    pub source: String,
    /// The database URL (password redacted) and backend.
    pub database: String,
    /// The table.
    pub table: String,
    /// How the run ended.
    pub outcome: Outcome,
    /// Wall-clock time of the pipeline (connecting and the final check excluded).
    pub elapsed: Duration,
    /// Records read from the source, valid or not.
    pub events_read: u64,
    /// Records rejected by validation.
    pub invalid: u64,
    /// The first [`LISTED`] rejected records.
    pub rejects: Vec<RejectNote>,
    /// Events in committed batches.
    pub acknowledged: u64,
    /// Rows inserted by committed batches.
    pub inserted: u64,
    /// Events of committed batches whose id was already stored.
    pub already_present: u64,
    /// Committed batches by flush reason.
    pub batches: FlushCounts,
    /// Batches rolled back.
    pub batches_rolled_back: u64,
    /// Events in rolled-back batches.
    pub events_rolled_back: u64,
    /// Of those, events given up after `--max-deliveries` (NATS) and written to the
    /// dead-letter file.
    pub events_dead_lettered: u64,
    /// Every rolled-back batch.
    pub failed_batches: Vec<FailedBatch>,
    /// Valid events read but neither committed nor rolled back: the run stopped (Ctrl-C, a
    /// failure) while they waited for their batch. Not acknowledged; a re-run writes them.
    pub events_not_written: u64,
    /// Acknowledgements (`ack`/`nak`/`reject`) the source refused.
    pub ack_failures: u64,
    /// Problems that did not stop the run (an unwritable rejects file, …).
    pub warnings: Vec<String>,
    /// Row counts from the database, or why they could not be read.
    pub rows: Result<DatabaseRows, String>,
    /// What the NATS source did (a NATS run only).
    pub nats: Option<NatsStats>,
    /// The consistency check.
    pub check: Check,
}

/// What the pipeline hands over to build a [`Summary`].
pub(crate) struct Ending {
    pub run_id: i64,
    pub source: String,
    pub database: String,
    pub table: String,
    pub outcome: Outcome,
    pub elapsed: Duration,
    pub rows: Result<DatabaseRows, String>,
    pub nats: Option<NatsStats>,
}

impl Summary {
    pub(crate) fn new(stats: &Stats, ending: Ending) -> Summary {
        let detail = stats.detail();
        let acknowledged = stats.acknowledged.load(Ordering::Relaxed);
        let read = stats.read.load(Ordering::Relaxed);
        let invalid = stats.invalid.load(Ordering::Relaxed);
        let dead_lettered = stats.dead_lettered.load(Ordering::Relaxed);
        let mut check = Check::new(
            acknowledged,
            detail.inserted,
            detail.already_present,
            detail.failed.len() as u64,
            ending.rows.clone(),
        );
        if let Some(nats) = &ending.nats {
            check = check.with_broker(
                nats,
                acknowledged,
                detail.events_rolled_back,
                dead_lettered,
                invalid,
            );
        }
        Summary {
            run_id: ending.run_id,
            source: ending.source,
            database: ending.database,
            table: ending.table,
            outcome: ending.outcome,
            elapsed: ending.elapsed,
            events_read: read,
            invalid,
            rejects: detail.rejects.clone(),
            acknowledged,
            inserted: detail.inserted,
            already_present: detail.already_present,
            batches: detail.flush,
            batches_rolled_back: detail.failed.len() as u64,
            events_rolled_back: detail.events_rolled_back,
            events_dead_lettered: dead_lettered,
            failed_batches: detail.failed.clone(),
            events_not_written: read
                .saturating_sub(invalid)
                .saturating_sub(acknowledged)
                .saturating_sub(detail.events_rolled_back),
            ack_failures: detail.ack_failures,
            warnings: detail.warnings.clone(),
            rows: ending.rows,
            nats: ending.nats,
            check,
        }
    }

    /// `true` when the run finished and the consistency check holds.
    pub fn is_success(&self) -> bool {
        self.outcome == Outcome::Finished && self.check.holds
    }

    /// The process exit code: 0 when [`is_success`](Self::is_success), else 1.
    pub fn exit_code(&self) -> u8 {
        if self.is_success() { 0 } else { 1 }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        writeln!(f, "event-batcher summary")?;
        writeln!(f, "  run id               {}", self.run_id)?;
        writeln!(f, "  source               {}", self.source)?;
        writeln!(
            f,
            "  database             {}, table {}",
            self.database, self.table
        )?;
        writeln!(f, "  outcome              {}", self.outcome)?;
        write!(f, "  elapsed              {secs:.2} s")?;
        if secs > 0.0 {
            write!(f, " ({:.0} events/s read)", self.events_read as f64 / secs)?;
        }
        writeln!(f)?;
        writeln!(f, "  events read          {}", self.events_read)?;
        writeln!(f, "  invalid lines        {}", self.invalid)?;
        for note in &self.rejects {
            writeln!(f, "    {}: {}", note.position, note.reason)?;
        }
        if self.invalid > self.rejects.len() as u64 {
            writeln!(
                f,
                "    … and {} more",
                self.invalid - self.rejects.len() as u64
            )?;
        }
        writeln!(
            f,
            "  events acknowledged  {} ({} new rows, {} already present)",
            self.acknowledged, self.inserted, self.already_present
        )?;
        write!(
            f,
            "  batches written      {} (size {}, deadline {}, end {}",
            self.batches.total(),
            self.batches.size,
            self.batches.deadline,
            self.batches.end
        )?;
        if self.batches.before_error > 0 {
            write!(f, ", before an input error {}", self.batches.before_error)?;
        }
        writeln!(f, ")")?;
        write!(
            f,
            "  batches rolled back  {} ({} events",
            self.batches_rolled_back, self.events_rolled_back
        )?;
        if self.events_dead_lettered > 0 {
            write!(
                f,
                "; {} given up after --max-deliveries, in the dead-letter file",
                self.events_dead_lettered
            )?;
        }
        writeln!(f, ")")?;
        for batch in self.failed_batches.iter().take(LISTED) {
            writeln!(
                f,
                "    {} [{} events, {} … {}; {} row(s) deleted; {}]",
                batch.error,
                batch.events,
                batch.first_id,
                batch.last_id,
                batch.rows_deleted,
                batch.rollback
            )?;
        }
        if self.failed_batches.len() > LISTED {
            writeln!(f, "    … and {} more", self.failed_batches.len() - LISTED)?;
        }
        if self.events_not_written > 0 {
            writeln!(
                f,
                "  events not written   {} (read, but the run stopped before their batch was written)",
                self.events_not_written
            )?;
        }
        match &self.rows {
            Ok(rows) => writeln!(
                f,
                "  rows in database     {} in table {}, {} inserted by this run",
                rows.total, self.table, rows.of_run
            )?,
            Err(error) => writeln!(f, "  rows in database     unknown: {error}")?,
        }
        if let Some(nats) = &self.nats {
            writeln!(f, "  NATS messages        {nats}")?;
            if let Some(ended) = &nats.ended {
                writeln!(f, "  source ended         {ended}")?;
            }
        }
        if self.ack_failures > 0 {
            writeln!(f, "  acks refused         {}", self.ack_failures)?;
        }
        for warning in &self.warnings {
            writeln!(f, "  warning              {warning}")?;
        }
        writeln!(f, "  consistency check    {}", self.check.detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(of_run: u64, left: u64) -> Result<DatabaseRows, String> {
        Ok(DatabaseRows {
            total: of_run,
            of_run,
            left_by_rolled_back: left,
            skipped_ids: 2,
            skipped_found: 2,
        })
    }

    #[test]
    fn check_holds_only_when_the_database_matches() {
        assert!(Check::new(10, 8, 2, 0, rows(8, 0)).holds);
        assert!(Check::new(10, 8, 2, 1, rows(8, 0)).detail.starts_with("OK"));
        // A committed row is missing.
        assert!(!Check::new(10, 8, 2, 0, rows(7, 0)).holds);
        // A rolled-back batch left rows behind.
        let check = Check::new(10, 8, 2, 1, rows(8, 3));
        assert!(!check.holds);
        assert!(check.detail.contains("left 3 row(s)"), "{}", check.detail);
        // An id skipped as already present has no row.
        let missing = rows(8, 0).map(|rows| DatabaseRows {
            skipped_found: 1,
            ..rows
        });
        let check = Check::new(10, 8, 2, 0, missing);
        assert!(!check.holds);
        assert!(check.detail.contains("1 of 2 id(s)"), "{}", check.detail);
        // The database could not be read.
        assert!(!Check::new(0, 0, 0, 0, Err("down".into())).holds);
    }

    #[test]
    fn broker_check_compares_verdicts_with_events() {
        let nats = NatsStats {
            received: 12,
            redelivered: 2,
            acked: 8,
            nacked: 2,
            rejected: 1,
            dropped_nacked: 1,
            ..NatsStats::default()
        };
        let check = Check::new(8, 8, 0, 1, rows(8, 0)).with_broker(&nats, 8, 2, 0, 1);
        assert!(check.holds, "{}", check.detail);
        assert!(
            check.detail.contains("NATS verdicts OK"),
            "{}",
            check.detail
        );
        // An ack missing (a hook dropped, or never sent).
        let short = NatsStats { acked: 7, ..nats };
        let check = Check::new(8, 8, 0, 1, rows(8, 0)).with_broker(&short, 8, 2, 0, 1);
        assert!(!check.holds);
        assert!(
            check.detail.starts_with("FAILED (broker)"),
            "{}",
            check.detail
        );
        assert!(check.detail.contains("acks 7 != events acknowledged 8"));
        // A verdict that could not be sent.
        let lost = NatsStats {
            acked: 7,
            send_failures: 1,
            ..nats
        };
        assert!(
            !Check::new(8, 8, 0, 1, rows(8, 0))
                .with_broker(&lost, 8, 2, 0, 1)
                .holds
        );
        // The database part still counts.
        assert!(
            !Check::new(8, 8, 0, 1, rows(7, 0))
                .with_broker(&nats, 8, 2, 0, 1)
                .holds
        );
        // Of the 2 events rolled back, one nak'ed and one given up (+TERM) after its dead
        // letter was written: holds; a +TERM without its dead letter does not.
        let given_up = NatsStats {
            nacked: 1,
            dead_lettered: 1,
            ..nats
        };
        let check = Check::new(8, 8, 0, 1, rows(8, 0)).with_broker(&given_up, 8, 2, 1, 1);
        assert!(check.holds, "{}", check.detail);
        assert!(
            check.detail.contains(
                "naks 1 + 1 given up (== 1 dead letters written) == events rolled back 2"
            ),
            "{}",
            check.detail
        );
        let check = Check::new(8, 8, 0, 1, rows(8, 0)).with_broker(&given_up, 8, 2, 0, 1);
        assert!(!check.holds, "{}", check.detail);
        assert!(
            check
                .detail
                .contains("1 given up (!= 0 dead letters written)")
        );
    }

    #[test]
    fn counts_committed_and_rolled_back_batches() {
        let stats = Stats::default();
        stats.batch_committed(FlushReason::Full, 4, 3, vec!["x".into()]);
        stats.batch_committed(FlushReason::End, 2, 2, Vec::new());
        let events: Arc<[Event]> = vec![Event {
            id: "e1".into(),
            tenant: "t".into(),
            ts: 0,
            payload: serde_json::Value::Null,
        }]
        .into();
        let batch = InFlight {
            seq: 3,
            events,
            rows_deleted: Arc::new(AtomicU64::new(1)),
        };
        stats.begin_batch(InFlight {
            seq: 3,
            events: batch.events.clone(),
            rows_deleted: batch.rows_deleted.clone(),
        });
        stats.batch_rolled_back(&batch, "boom".into(), &RollbackReport::default());
        assert!(stats.take_in_flight().is_none());
        let summary = Summary::new(
            &stats,
            Ending {
                run_id: 1,
                source: "s".into(),
                database: "d".into(),
                table: "t".into(),
                outcome: Outcome::Finished,
                elapsed: Duration::from_secs(1),
                rows: rows(5, 0),
                nats: None,
            },
        );
        assert_eq!(summary.acknowledged, 6);
        assert_eq!(summary.already_present, 1);
        assert_eq!(summary.batches.size, 1);
        assert_eq!(summary.batches.end, 1);
        assert_eq!(summary.batches_rolled_back, 1);
        assert_eq!(summary.failed_batches[0].first_id, "e1");
        assert!(summary.is_success());
        let text = summary.to_string();
        assert!(text.contains("batches rolled back  1 (1 events)"), "{text}");
        assert!(text.contains("consistency check    OK"), "{text}");
    }
}
