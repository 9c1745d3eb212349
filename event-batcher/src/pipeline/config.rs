//! What a run is told to do: the validated configuration.
//!
//! [`Config`] is the pipeline's input, whoever builds it (the CLI maps its flags to one,
//! a library user builds one directly); [`Config::check`] enforces what its types cannot.

use std::path::PathBuf;
use std::time::Duration;

use result_stream::{Backoff, RetryPolicy};

use crate::report::ProgressMode;
use crate::source::{SourceSpec, SyntheticSpec};
use crate::store;

/// An option value out of its range, or options that do not go together. One line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// What to do when a batch cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// Roll the batch back and stop the run (exit code 1).
    #[default]
    Stop,
    /// Roll the batch back, record it as failed, and go on with the next one.
    SkipBatch,
}

/// How compensations are retried (see `result_stream::RetryPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollbackSettings {
    /// Attempts per compensation, the first included (at least 1).
    pub attempts: u32,
    /// Wait before the first retry; it doubles with each retry, up to `backoff_max`.
    pub backoff: Duration,
    /// Longest wait between retries.
    pub backoff_max: Duration,
    /// Time limit of one attempt.
    pub attempt_timeout: Duration,
}

impl Default for RollbackSettings {
    fn default() -> Self {
        Self {
            attempts: 3,
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(30),
        }
    }
}

impl RollbackSettings {
    /// The library policy these settings describe.
    pub fn policy(&self) -> RetryPolicy {
        let backoff = if self.backoff.is_zero() {
            Backoff::None
        } else {
            Backoff::Exponential {
                initial: self.backoff,
                max: self.backoff_max.max(self.backoff),
            }
        };
        RetryPolicy::default()
            .attempts(self.attempts.max(1))
            .backoff(backoff)
            .attempt_timeout(self.attempt_timeout)
    }
}

/// How a failed batch write is retried: its rollback runs, then the backoff, then the next
/// attempt; the failure policy applies after the last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteRetry {
    /// Retries after the first attempt (0: none).
    pub retries: u32,
    /// Wait before the first retry; it doubles with each retry, up to `backoff_max`.
    pub backoff: Duration,
    /// Longest wait between retries.
    pub backoff_max: Duration,
}

impl Default for WriteRetry {
    fn default() -> Self {
        Self {
            retries: 0,
            backoff: Duration::from_millis(500),
            backoff_max: Duration::from_secs(10),
        }
    }
}

impl WriteRetry {
    /// The library policy these settings describe, `None` without retries.
    pub fn policy(&self) -> Option<RetryPolicy> {
        if self.retries == 0 {
            return None;
        }
        let backoff = if self.backoff.is_zero() {
            Backoff::None
        } else {
            Backoff::Exponential {
                initial: self.backoff,
                max: self.backoff_max.max(self.backoff),
            }
        };
        Some(
            RetryPolicy::default()
                .attempts(self.retries.saturating_add(1))
                .backoff(backoff),
        )
    }
}

/// Failures injected on purpose, for demonstrations and tests.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Faults {
    /// Every `n`th batch (by batch number) fails after its first half is written.
    pub fail_every: Option<u64>,
    /// Each batch fails after its first half is written with this probability (0 to 1).
    pub fail_rate: f64,
    /// The first `n` attempts of every row-deleting compensation fail (to exercise the
    /// retries, or, with `n >= --rollback-attempts`, an incomplete rollback).
    pub fail_rollback_attempts: u32,
    /// A batch chosen by `fail_every` or `fail_rate` fails only its first `n` write
    /// attempts (`--fail-attempts`; with `--write-retries`, a transient failure); `None`:
    /// every attempt fails.
    pub fail_attempts: Option<u32>,
    /// Seed of the `fail_rate` draws.
    pub seed: u64,
    /// Batch `n` is written and then the run hangs, before the batch is committed and
    /// acknowledged, until it is cancelled or killed (`--hang-at-batch`): a stuck or crashed
    /// instance holding a written but unacknowledged batch.
    pub hang_at_batch: Option<u64>,
    /// Batch `n` writes its first half, then the process stops itself (SIGSTOP) until it is
    /// continued (SIGCONT), and then the batch fails (`--freeze-at-batch`): an instance
    /// frozen mid-batch (a paused VM) that resumes into a rollback. Unix only.
    pub freeze_at_batch: Option<u64>,
}

/// Everything a run needs. [`Config::default`] is the default command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where events come from.
    pub source: SourceSpec,
    /// `sqlite://PATH` or `postgres://…`.
    pub database: String,
    /// The table the events go to.
    pub table: String,
    /// Most events per batch.
    pub max_batch: usize,
    /// Longest wait of an event for its batch to be flushed.
    pub flush_every: Duration,
    /// Most bytes per batch, counting each event as its encoded NDJSON line
    /// (`--max-batch-bytes`); an event larger than this on its own is written alone.
    /// `None`: no byte cap.
    pub max_batch_bytes: Option<usize>,
    /// One open batch per tenant, each with its own `flush_every` deadline
    /// (`--per-tenant`).
    pub per_tenant: bool,
    /// With `per_tenant`, most tenants with an open batch: a new tenant's event first
    /// flushes the oldest open batch (`--max-open-tenants`). `None`: unbounded.
    pub max_open_tenants: Option<usize>,
    /// Batches written at once (`--concurrency`); the connection pool is sized to match.
    pub concurrency: usize,
    /// How a failed batch write is retried (`--write-retries`, `--write-backoff`) before
    /// the failure policy applies.
    pub write_retry: WriteRetry,
    /// What a failed batch does to the run.
    pub on_failure: OnFailure,
    /// How compensations are retried.
    pub rollback: RollbackSettings,
    /// Injected failures.
    pub faults: Faults,
    /// Stop at the first invalid record.
    pub strict: bool,
    /// Where to write invalid records, one JSON object per line: `line` (or `sequence` for
    /// a source without lines), `error`, `raw`.
    pub rejects: Option<PathBuf>,
    /// Where to write dead letters (NDJSON events, replayable with `--input`): for a source
    /// that does not redeliver (synthetic, NDJSON), the events of every rolled-back batch;
    /// for NATS, the events given up after [`max_deliveries`](Self::max_deliveries) (the
    /// others of a rolled-back batch are redelivered, not dead).
    pub dead_letter: Option<PathBuf>,
    /// NATS: a message of a rolled-back batch that has been delivered this many times (every
    /// delivery counts, including those after a graceful stop gave it back or its ack wait
    /// expired; the count restarts after a broker crash) is not given back again: its event
    /// is appended to [`dead_letter`](Self::dead_letter) (which is then opened for appending,
    /// never truncated; written and synced first) and the message is terminated (`+TERM`).
    /// A batch rolled back because the run was cancelled gives nothing up. `None`:
    /// redelivered until its batch commits.
    pub max_deliveries: Option<u64>,
    /// How progress is shown.
    pub progress: ProgressMode,
    /// Longest wait for the database connection.
    pub connect_timeout: Duration,
    /// Longest wait, when a batch's write fails because the database is unavailable, for it
    /// to come back, so that the batch can be rolled back (`--database-outage`; zero: no
    /// wait). See [`Pipeline::run`](super::Pipeline::run).
    pub database_outage: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            source: SourceSpec::Synthetic(SyntheticSpec {
                events: 10_000,
                rate: 0.0,
                seed: 42,
            }),
            database: "sqlite://events.db".to_owned(),
            table: "events".to_owned(),
            max_batch: 500,
            flush_every: Duration::from_secs(2),
            max_batch_bytes: None,
            per_tenant: false,
            max_open_tenants: None,
            concurrency: 1,
            write_retry: WriteRetry::default(),
            on_failure: OnFailure::Stop,
            rollback: RollbackSettings::default(),
            faults: Faults {
                seed: 42,
                ..Faults::default()
            },
            strict: false,
            rejects: None,
            dead_letter: None,
            max_deliveries: None,
            progress: ProgressMode::Auto,
            connect_timeout: Duration::from_secs(5),
            database_outage: Duration::from_secs(60),
        }
    }
}

impl Config {
    /// Checks what the types cannot: ranges, combinations and the table name.
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError(message));
        if self.max_batch == 0 {
            return invalid("--max-batch must be at least 1".into());
        }
        if self.max_batch_bytes == Some(0) {
            return invalid("--max-batch-bytes must be at least 1".into());
        }
        if self.concurrency == 0 {
            return invalid("--concurrency must be at least 1".into());
        }
        match (self.per_tenant, self.max_open_tenants) {
            (_, Some(0)) => return invalid("--max-open-tenants must be at least 1".into()),
            (false, Some(_)) => {
                return invalid("--max-open-tenants applies with --per-tenant".into());
            }
            _ => {}
        }
        if self.faults.fail_attempts == Some(0) {
            return invalid("--fail-attempts must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.faults.fail_rate) {
            return invalid(format!(
                "--fail-rate must be between 0 and 1, got {}",
                self.faults.fail_rate
            ));
        }
        if self.faults.fail_every == Some(0) {
            return invalid("--fail-every must be at least 1".into());
        }
        if self.rollback.attempts == 0 {
            return invalid("--rollback-attempts must be at least 1".into());
        }
        if self.rollback.attempt_timeout.is_zero() {
            return invalid(
                "--rollback-timeout must be longer than 0 (a compensation attempt would time out \
                 before it starts)"
                    .into(),
            );
        }
        if let SourceSpec::Synthetic(spec) = &self.source {
            spec.check().map_err(ConfigError)?;
        }
        if let SourceSpec::Nats(nats) = &self.source {
            // Below a batch, the broker stops delivering before a batch is full and every
            // batch waits for the --flush-every deadline.
            if usize::try_from(nats.max_ack_pending).is_ok_and(|n| n <= self.max_batch) {
                return invalid(format!(
                    "--max-ack-pending ({}) must be larger than --max-batch ({})",
                    nats.max_ack_pending, self.max_batch
                ));
            }
            if let Some(idle) = nats.idle_exit
                && idle <= nats.nak_delay
            {
                return invalid(format!(
                    "--idle-exit ({idle:?}) must be longer than --nak-delay ({:?}): the messages \
                     of a rolled-back batch come back after the nak delay",
                    nats.nak_delay
                ));
            }
            if nats.ack_wait < Duration::from_millis(300) {
                return invalid("--ack-wait must be at least 300ms".into());
            }
            match (self.max_deliveries, &self.dead_letter) {
                (Some(0), _) => return invalid("--max-deliveries must be at least 1".into()),
                (Some(_), None) => {
                    return invalid(
                        "--max-deliveries needs --dead-letter PATH: the events it gives up on \
                         are written there"
                            .into(),
                    );
                }
                (None, Some(_)) => {
                    return invalid(
                        "--dead-letter with a NATS source receives the events given up after \
                         --max-deliveries (the other events of a rolled-back batch are \
                         redelivered): set --max-deliveries"
                            .into(),
                    );
                }
                _ => {}
            }
        } else if self.max_deliveries.is_some() {
            return invalid("--max-deliveries needs --source (a NATS source)".into());
        }
        store::check_table_name(&self.table).map_err(ConfigError)
    }
}
