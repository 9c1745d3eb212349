//! The pipeline: a configured run ([`Pipeline`]) and what it is made of.
//!
//! Layout (imports flow down this list, never up): [`config`] (the validated configuration),
//! [`error`] (what stops a run or keeps it from starting), `chain` (the adapter chain),
//! `batch` (writing one batch, and the state batches share), `rolled_back` (recording a
//! rolled-back batch and settling its records), `faults` (injected failures), `outputs` (the
//! rejects and dead-letter files), `finish` (the outcome and the row counts).
//!
//! ```text
//! source ─► map_ok_stream(validate) ─► invalid records diverted
//!        ─► chunks_timeout_result (or chunks_timeout_by_key_result by tenant), with batch info
//!        ─► numbered ─► for_each_compensated(write the batch), concurrent, retrying, skipping
//! ```
//!
//! The crate documentation explains the design; the rules each step follows are on
//! [`Pipeline::run`].

mod batch;
mod chain;
pub mod config;
pub mod error;
mod faults;
mod finish;
mod outage;
mod outputs;
mod rolled_back;

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::console::Console;
use crate::metrics::MetricsHandle;
use crate::report::progress::Progress;
use crate::report::stats::Stats;
use crate::report::summary::{Ending, Summary};
use crate::source::{OpenedSource, RecordStream};
use crate::store::Store;
use batch::{Ctx, FailurePolicy};
use faults::FaultInjector;
use outputs::{PreparedOutputs, check_outputs};

pub use chain::REPORTED_REJECTS;
pub use chain::encoded_len;
pub use config::{Config, ConfigError, Faults, OnFailure, RollbackSettings, WriteRetry};
pub use error::{PipelineError, SetupError};
pub use rolled_back::REPORTED_ROLLBACKS;

/// A configured run. [`run`] is the short way; use this to plug in another source or a
/// cancellation token.
#[must_use = "a pipeline does nothing until `run` is awaited"]
pub struct Pipeline {
    config: Config,
    source: Option<(RecordStream, String, Option<u64>)>,
    cancel: CancellationToken,
    stop: CancellationToken,
    console: Console,
    metrics: Option<MetricsHandle>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("config", &self.config)
            .field("custom_source", &self.source.as_ref().map(|s| &s.1))
            .finish_non_exhaustive()
    }
}

/// Runs the pipeline `config` describes. See [`Pipeline::run`].
pub async fn run(config: Config) -> Result<Summary, SetupError> {
    Pipeline::new(config).run().await
}

impl Pipeline {
    /// A run of `config`.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            source: None,
            cancel: CancellationToken::new(),
            stop: CancellationToken::new(),
            console: Console::new(),
            metrics: None,
        }
    }

    /// Prints messages and progress on `console` (by default, one of its own).
    pub fn console(mut self, console: Console) -> Self {
        self.console = console;
        self
    }

    /// Serves the run's counters through `metrics` (`--metrics`): attached when the run
    /// starts, they stay readable after it ends, so a scrape then agrees with the summary.
    pub fn metrics(mut self, metrics: MetricsHandle) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Reads `source` instead of the one `config` describes; `label` describes it in the
    /// summary and `expected` sizes the progress bar.
    pub fn source(
        mut self,
        source: RecordStream,
        label: impl Into<String>,
        expected: Option<u64>,
    ) -> Self {
        self.source = Some((source, label.into(), expected));
        self
    }

    /// Stops the run, rolling back the batch in progress, when `token` is cancelled.
    pub fn cancellation(mut self, token: CancellationToken) -> Self {
        self.cancel = token;
        self
    }

    /// Stops the source gracefully when `token` is cancelled: nothing more is read (a NATS
    /// source stops pulling and gives back what its open pull request still delivers), the
    /// events already read are batched and written (committed and acknowledged, or rolled
    /// back and nak'ed), and the run ends as if the input had ended. Cancelling the
    /// [`cancellation`](Self::cancellation) token after this one rolls the batch in flight
    /// back instead.
    pub fn stop(mut self, token: CancellationToken) -> Self {
        self.stop = token;
        self
    }

    /// Runs the pipeline to the end of the source (or to the failure that stops it) and
    /// returns the summary; fails only when the run cannot start.
    ///
    /// Rules:
    /// - before anything is read, the options are checked, the input opened, the database
    ///   output files opened, the database connected, the table created, and then the
    ///   output files truncated: a problem there is a [`SetupError`] (exit code 2), and
    ///   nothing has been written (an output file that is the input, the SQLite database, or
    ///   both outputs the same file, is refused before anything is opened);
    /// - every record is validated in `map_ok_stream`; an invalid one is counted, reported
    ///   on standard error with its position (the first [`REPORTED_REJECTS`]), written to
    ///   `--rejects`, and dropped from the stream, unless `--strict`, where it stops the run
    ///   after the batch formed before it is written;
    /// - valid events are batched by `chunks_timeout_result(max_batch, flush_every)` (per
    ///   tenant with [`Config::per_tenant`], at most [`Config::max_batch_bytes`] bytes when
    ///   set) and each batch carries its batch info (why it closed, its weight, its age) and
    ///   a number, given once (a retried batch keeps it);
    /// - the stop token ends the source (see [`Pipeline::stop`]); a NATS source also ends by
    ///   itself after `--idle-exit` without a message or `--max-events` messages;
    /// - each batch is written by `for_each_compensated` as described in the crate
    ///   documentation, up to [`Config::concurrency`] at once, a failed write retried as
    ///   [`Config::write_retry`] says, then under the `--on-failure` policy; a batch that
    ///   commits is counted as acknowledged and its events are acknowledged to the source,
    ///   whatever the batches beside it do;
    /// - a batch whose write fails because the database is unavailable
    ///   ([`PipelineError::is_database_unavailable`]) waits for the database, at most
    ///   [`Config::database_outage`], before it is rolled back; then, when its records carry
    ///   acknowledgement hooks (a redelivering source such as NATS), it is rolled back and
    ///   given back (nak) and the run goes on, whatever `--on-failure` says; otherwise the
    ///   failure policy applies (stop mode: the run stops after the rollback);
    /// - the cancellation token rolls back the batch in progress and ends the run;
    /// - at the end the database is counted and the consistency check computed; the
    ///   returned [`Summary`] holds everything, including how the run ended.
    pub async fn run(self) -> Result<Summary, SetupError> {
        let Pipeline {
            config,
            source,
            cancel,
            stop,
            console,
            metrics,
        } = self;
        config.check()?;
        check_outputs(&config)?;
        if source.is_some() && config.max_deliveries.is_some() {
            return Err(SetupError::Config(ConfigError(
                "--max-deliveries applies to the NATS source of the configuration, not to a \
                 source given to Pipeline::source"
                    .into(),
            )));
        }
        let (opened, label, expected) = match source {
            Some((records, label, expected)) => {
                let records = records.take_until(stop.cancelled_owned()).boxed();
                (
                    OpenedSource {
                        records,
                        nats: None,
                    },
                    label,
                    expected,
                )
            }
            None => (
                config.source.open(stop, console.clone()).await?,
                config.source.to_string(),
                config.source.expected_len(),
            ),
        };
        let OpenedSource {
            records: source,
            nats,
        } = opened;
        if let (Some(nats), Some(max)) = (&nats, config.max_deliveries)
            && let Ok(limit @ 1..) = u64::try_from(nats.max_deliver())
            && limit <= max
        {
            // The broker would drop the message silently before it is dead-lettered.
            return Err(SetupError::Config(ConfigError(format!(
                "the NATS consumer drops a message after {limit} deliveries (its max_deliver), \
                 before --max-deliveries {max} could dead-letter it: use --max-deliveries below \
                 {limit}, or a consumer with unlimited deliveries"
            ))));
        }
        // Opened (not truncated) before the database is touched: an output that cannot be
        // created stops the run before anything is written; dropped, it removes what it
        // created.
        let outputs = PreparedOutputs::open(&config)?;
        // The server gives a rollback's DELETE up a little before the compensation attempt
        // times out, so a DELETE reported as timed out cannot commit later.
        let connections = u32::try_from(config.concurrency)
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        let store = Store::connect_with_pool(
            &config.database,
            &config.table,
            config.connect_timeout,
            connections,
        )
        .await?
        .with_delete_timeout(config.rollback.attempt_timeout.mul_f64(0.9));
        // Truncated only now that the run can start: a setup error leaves existing files as
        // they were.
        let outputs = match outputs.start() {
            Ok(outputs) => outputs,
            Err(error) => {
                store.close().await;
                return Err(error);
            }
        };

        let stats = Arc::new(Stats::default());
        if let Some(metrics) = &metrics {
            metrics.attach(stats.clone(), nats.as_ref().map(|nats| nats.counters()));
        }
        if let Some(nats) = &nats {
            for warning in nats.warnings() {
                stats.warn(warning);
            }
        }
        let label = match &nats {
            Some(nats) => format!("{label} (ack wait {:?})", nats.ack_wait()),
            None => label,
        };
        let progress = Progress::start(config.progress, expected, stats.clone(), console.clone());
        let redelivers = nats.is_some();
        let ctx = Arc::new(Ctx {
            run_id: fastrand::i64(1..i64::MAX),
            store: store.clone(),
            stats: stats.clone(),
            console,
            failure: FailurePolicy {
                rollback: config.rollback.policy(),
                retry: config.write_retry.policy(),
                on_failure: config.on_failure,
                max_deliveries: config.max_deliveries,
                strict: config.strict,
            },
            faults: FaultInjector::new(config.faults),
            outputs,
            stopping: cancel.child_token(),
            stop_cause: Mutex::new(None),
            redelivers,
            cancel,
            database_outage: config.database_outage,
        });

        let started = Instant::now();
        let result = chain::drive(ctx.clone(), source, &config).await;
        let elapsed = started.elapsed();
        progress.finish().await;
        // Every hook has been settled (or dropped, which gives its message back): wait until
        // the verdicts are sent, before they are counted.
        let nats = match nats {
            Some(nats) => Some(nats.close().await),
            None => None,
        };

        let outcome = ctx.outcome(result);
        for warning in ctx.outputs.flush() {
            stats.warn(warning);
        }
        let rows = ctx.count_rows().await;
        store.close().await;
        Ok(Summary::new(
            &stats,
            Ending {
                run_id: ctx.run_id,
                source: label,
                database: format!("{} {}", store.backend(), store.url()),
                table: store.table().to_owned(),
                outcome,
                elapsed,
                rows,
                nats,
            },
        ))
    }
}
