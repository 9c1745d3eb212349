//! The final [`Summary`] of a run, and how the run ended ([`Outcome`]).

use std::fmt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::check::{Check, DatabaseRows};
use super::stats::{FailedBatch, FlushCounts, LISTED, RejectNote, Stats, age_quantile};
use crate::source::NatsStats;

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
    /// Median age of the committed batches (first event to flush); `None` without any.
    pub batch_age_p50: Option<Duration>,
    /// 99th percentile of the committed batches' ages.
    pub batch_age_p99: Option<Duration>,
    /// The tenants with the most acknowledged events (at most [`TOP_TENANTS`]), most
    /// first (ties by name).
    pub top_tenants: Vec<(String, u64)>,
    /// Tenants with acknowledged events.
    pub tenants: usize,
    /// Batch write attempts after the first (`--write-retries`).
    pub write_retries: u64,
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

/// How many tenants the summary lists.
pub const TOP_TENANTS: usize = 5;

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
        let mut detail = stats.detail();
        let mut ages = std::mem::take(&mut detail.ages_micros);
        let (batch_age_p50, batch_age_p99) =
            (age_quantile(&mut ages, 0.5), age_quantile(&mut ages, 0.99));
        let mut top_tenants: Vec<(String, u64)> = detail
            .tenants
            .iter()
            .map(|(tenant, events)| (tenant.clone(), *events))
            .collect();
        top_tenants.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top_tenants.truncate(TOP_TENANTS);
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
            batch_age_p50,
            batch_age_p99,
            top_tenants,
            tenants: detail.tenants.len(),
            write_retries: stats.retried.load(Ordering::Relaxed),
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
            "  batches written      {} (size {}, weight {}, deadline {}, end {}, eviction {}",
            self.batches.total(),
            self.batches.size,
            self.batches.weight,
            self.batches.deadline,
            self.batches.end,
            self.batches.eviction,
        )?;
        if self.batches.before_error > 0 {
            write!(f, ", before an input error {}", self.batches.before_error)?;
        }
        writeln!(f, ")")?;
        if let (Some(p50), Some(p99)) = (self.batch_age_p50, self.batch_age_p99) {
            writeln!(
                f,
                "  batch age            p50 {:.1} ms, p99 {:.1} ms (first event to flush)",
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3
            )?;
        }
        if !self.top_tenants.is_empty() {
            let top: Vec<String> = self
                .top_tenants
                .iter()
                .map(|(tenant, events)| format!("{tenant} {events}"))
                .collect();
            writeln!(
                f,
                "  top tenants          {} (events; {} tenant(s))",
                top.join(", "),
                self.tenants
            )?;
        }
        if self.write_retries > 0 {
            writeln!(
                f,
                "  write retries        {} (failed attempts undone and written again)",
                self.write_retries
            )?;
        }
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
            writeln!(f, "  NATS events          {}", nats.events)?;
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
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    use result_stream::{BatchInfo, FlushReason, RollbackReport};

    use super::*;
    use crate::event::Event;
    use crate::report::stats::InFlight;

    fn rows(of_run: u64, left: u64) -> Result<DatabaseRows, String> {
        Ok(DatabaseRows {
            total: of_run,
            of_run,
            left_by_rolled_back: left,
            kept_claimed: 0,
            skipped_ids: 2,
            skipped_found: 2,
        })
    }

    /// The info of the one batch a batcher of `max_items` makes of one value: full (1) or
    /// at the end (more). (`BatchInfo` has no public constructor.)
    async fn info(max_items: usize) -> BatchInfo {
        use futures::StreamExt;
        use result_stream::ResultStreamExt;
        let mut batches = std::pin::pin!(
            futures::stream::iter([Ok::<u8, ()>(0)])
                .chunks_timeout_result(max_items, Duration::from_secs(1))
                .with_batch_info()
        );
        let (_, info) = batches.next().await.unwrap().unwrap();
        info
    }

    #[tokio::test]
    async fn counts_committed_and_rolled_back_batches() {
        let stats = Stats::default();
        let event = |id: &str, tenant: &str| Event {
            id: id.into(),
            tenant: tenant.into(),
            ts: 0,
            payload: serde_json::value::RawValue::NULL.to_owned(),
        };
        let four = [
            event("a1", "acme"),
            event("a2", "acme"),
            event("b1", "beta"),
            event("a3", "acme"),
        ];
        let full = info(1).await;
        assert_eq!(full.reason(), FlushReason::Full);
        stats.batch_committed(1, &full, None, &four, 3, vec!["x".into()]);
        let two = [event("b2", "beta"), event("b3", "beta")];
        let end = info(2).await;
        assert_eq!(end.reason(), FlushReason::End);
        stats.batch_committed(2, &end, Some("beta"), &two, 2, Vec::new());
        let events: Arc<[Event]> = vec![event("e1", "t")].into();
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
        assert!(stats.take_in_flight(3).is_none());
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
        assert_eq!(
            summary.top_tenants,
            vec![("acme".to_owned(), 3), ("beta".to_owned(), 3)]
        );
        assert_eq!(summary.batches_rolled_back, 1);
        assert_eq!(summary.failed_batches[0].first_id, "e1");
        assert!(summary.is_success());
        let text = summary.to_string();
        assert!(text.contains("batches rolled back  1 (1 events)"), "{text}");
        assert!(text.contains("consistency check    OK"), "{text}");
    }
}
