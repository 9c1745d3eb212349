//! The adapter chain, the batch writer, fault injection and the failure policy.
//!
//! ```text
//! source ─► map_ok_stream(validate) ─► invalid records diverted ─► chunks_timeout_result
//!        ─► tagged with the flush reason ─► for_each_compensated(write the batch)
//! ```
//!
//! The crate documentation explains the design; the rules each step follows are on
//! [`Pipeline::run`].

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::{Stream, StreamExt};
use result_stream::{
    Backoff, BoxError, Cause, CompensatedError, CompensationScope, Completion, FlushReason,
    ResultStreamExt, RollbackPolicy,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::event::{self, Event, Incoming, Rejected};
use crate::progress::{Progress, ProgressMode, Reporter};
use crate::source::nats::NatsError;
use crate::source::{Ack, OpenedSource, Position, RecordStream, SourceSpec, SyntheticSpec};
use crate::store::{self, Store};
use crate::summary::{DatabaseRows, Ending, InFlight, Outcome, Stats, Summary};

/// How many invalid records are reported one by one on standard error (all are counted,
/// and all go to `--rejects`).
pub const REPORTED_REJECTS: u64 = 20;

/// How many rolled-back batches are reported one by one on standard error (all are counted
/// in the summary, and all go to `--dead-letter`).
pub const REPORTED_ROLLBACKS: u64 = 20;

/// What to do when a batch cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OnFailure {
    /// Roll the batch back and stop the run (exit code 1).
    #[default]
    Stop,
    /// Roll the batch back, record it as failed, and go on with the next one.
    SkipBatch,
}

/// How compensations are retried (see `result_stream::RollbackPolicy`).
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
    pub fn policy(&self) -> RollbackPolicy {
        let backoff = if self.backoff.is_zero() {
            Backoff::None
        } else {
            Backoff::Exponential {
                initial: self.backoff,
                max: self.backoff_max.max(self.backoff),
            }
        };
        RollbackPolicy::default()
            .attempts(self.attempts.max(1))
            .backoff(backoff)
            .attempt_timeout(self.attempt_timeout)
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
    /// Seed of the `fail_rate` draws.
    pub seed: u64,
    /// Batch `n` is written and then the run hangs, before the batch is committed and
    /// acknowledged, until it is cancelled or killed (`--hang-at-batch`): a stuck or crashed
    /// instance holding a written but unacknowledged batch.
    pub hang_at_batch: Option<u64>,
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
        }
    }
}

impl Config {
    /// Checks the values clap cannot: ranges and the table name.
    pub fn check(&self) -> Result<(), SetupError> {
        let invalid = |message: String| Err(SetupError::Config(message));
        if self.max_batch == 0 {
            return invalid("--max-batch must be at least 1".into());
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
        if let SourceSpec::Synthetic(spec) = &self.source
            && !(spec.rate.is_finite() && spec.rate >= 0.0)
        {
            return invalid(format!("--rate must be a number >= 0, got {}", spec.rate));
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
        store::check_table_name(&self.table).map_err(SetupError::Config)
    }
}

/// A failure during the run: the error type of every stream in the chain.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A record failed validation.
    #[error("invalid input at {0}")]
    Invalid(Box<Rejected>),
    /// The source could not be read.
    #[error("cannot read the input: {0}")]
    Source(#[source] std::io::Error),
    /// A write to the database failed.
    #[error("batch {batch}: database write failed: {}", store::describe(.source))]
    Write {
        /// The batch number.
        batch: u64,
        /// The database error.
        #[source]
        source: sqlx::Error,
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
    /// A failed batch could not be undone (skip-batch mode stops then).
    #[error("batch {batch} could not be rolled back: {report}")]
    RollbackIncomplete {
        /// The batch number.
        batch: u64,
        /// The rollback report.
        report: String,
    },
}

/// An error that prevents the run from starting: exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A bad option value.
    #[error("{0}")]
    Config(String),
    /// A database URL that is not supported or cannot be parsed.
    #[error("bad database URL {url}: {reason}")]
    DatabaseUrl {
        /// The URL, password redacted.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The database cannot be reached or opened.
    #[error("cannot connect to {url}: {reason}")]
    DatabaseUnreachable {
        /// The URL, password redacted.
        url: String,
        /// The driver's error.
        reason: String,
    },
    /// The table cannot be created or has other columns.
    #[error("cannot use table `{table}` in {url}: {reason}")]
    Schema {
        /// The URL, password redacted.
        url: String,
        /// The table.
        table: String,
        /// The driver's error.
        reason: String,
    },
    /// The input cannot be opened.
    #[error("cannot read input {input}: {source}")]
    Input {
        /// The input.
        input: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The NATS server cannot be reached, or its stream or consumer cannot be used.
    #[error("{0}")]
    Nats(#[from] NatsError),
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

/// A configured run. [`run`] is the short way; use this to plug in another source or a
/// cancellation token.
#[must_use = "a pipeline does nothing until `run` is awaited"]
pub struct Pipeline {
    config: Config,
    source: Option<(RecordStream, String, Option<u64>)>,
    cancel: CancellationToken,
    stop: CancellationToken,
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

/// The state every batch shares.
struct Ctx {
    store: Store,
    run_id: i64,
    stats: Arc<Stats>,
    reporter: Reporter,
    policy: RollbackPolicy,
    on_failure: OnFailure,
    faults: Faults,
    fault_rng: Mutex<fastrand::Rng>,
    strict: bool,
    rejects: Option<Mutex<BufWriter<File>>>,
    /// The dead-letter file of a source that does not redeliver (every event of a
    /// rolled-back batch). A NATS source redelivers those: its file is `given_up`.
    dead_letter: Option<Mutex<BufWriter<File>>>,
    max_deliveries: Option<u64>,
    /// The dead-letter file of given-up events (`--max-deliveries`).
    given_up: Option<Mutex<GivenUpFile>>,
    /// The run's cancellation: a batch rolled back because of it gives nothing up.
    cancel: CancellationToken,
}

/// The dead-letter file of a NATS run with `--max-deliveries`: opened for appending, so a
/// restart (or another instance given the same path) never truncates it, and written
/// unbuffered, one `write` of whole lines per batch, synced before the messages are given up.
struct GivenUpFile {
    file: File,
    /// Cleared by a failed write (a partial line may be left): later events are nak'ed
    /// instead of given up.
    usable: bool,
}

impl GivenUpFile {
    /// Opens (creates) `path` for appending and syncs its directory, so that the file itself
    /// survives a crash once a message has been given up.
    fn open(path: &Path) -> Result<Self, SetupError> {
        let error = |source| SetupError::Output {
            path: path.display().to_string(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(error)?;
        let dir = path
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(error)?;
        Ok(Self { file, usable: true })
    }

    /// Appends `events` as NDJSON lines and syncs them to disk.
    fn append<'a>(&mut self, events: impl Iterator<Item = &'a Event>) -> std::io::Result<()> {
        if !self.usable {
            return Err(std::io::Error::other("an earlier write to it failed"));
        }
        let mut lines = Vec::new();
        write_events(&mut lines, events)?;
        let written = self
            .file
            .write_all(&lines)
            .and_then(|()| self.file.sync_data());
        if written.is_err() {
            self.usable = false;
        }
        written
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values (a writer, an RNG, a Vec) stay consistent if a holder panicked.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pipeline {
    /// A run of `config`.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            source: None,
            cancel: CancellationToken::new(),
            stop: CancellationToken::new(),
        }
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
    ///   connected, the table created and then the output files created: a problem there is
    ///   a [`SetupError`] (exit code 2), and nothing has been written (an output file that is
    ///   the input, or both outputs the same file, is refused before anything is opened);
    /// - every record is validated in `map_ok_stream`; an invalid one is counted, reported
    ///   on standard error with its position (the first [`REPORTED_REJECTS`]), written to
    ///   `--rejects`, and dropped from the stream, unless `--strict`, where it stops the run
    ///   after the batch formed before it is written;
    /// - valid events are batched by `chunks_timeout_result(max_batch, flush_every)` and each
    ///   batch is tagged with why it was flushed;
    /// - the stop token ends the source (see [`Pipeline::stop`]); a NATS source also ends by
    ///   itself after `--idle-exit` without a message or `--max-events` messages;
    /// - each batch is written by `for_each_compensated` as described in the crate
    ///   documentation, under the `--on-failure` policy; a batch that commits is counted as
    ///   acknowledged and its events are acknowledged to the source;
    /// - the cancellation token rolls back the batch in progress and ends the run;
    /// - at the end the database is counted and the consistency check computed; the
    ///   returned [`Summary`] holds everything, including how the run ended.
    pub async fn run(self) -> Result<Summary, SetupError> {
        let Pipeline {
            config,
            source,
            cancel,
            stop,
        } = self;
        config.check()?;
        check_outputs(&config)?;
        if source.is_some() && config.max_deliveries.is_some() {
            return Err(SetupError::Config(
                "--max-deliveries applies to the NATS source of the configuration, not to a \
                 source given to Pipeline::source"
                    .into(),
            ));
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
                config.source.open(stop).await?,
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
            return Err(SetupError::Config(format!(
                "the NATS consumer drops a message after {limit} deliveries (its max_deliver), \
                 before --max-deliveries {max} could dead-letter it: use --max-deliveries below \
                 {limit}, or a consumer with unlimited deliveries"
            )));
        }
        // The server gives a rollback's DELETE up a little before the compensation attempt
        // times out, so a DELETE reported as timed out cannot commit later.
        let store = Store::connect(&config.database, &config.table, config.connect_timeout)
            .await?
            .with_delete_timeout(config.rollback.attempt_timeout.mul_f64(0.9));
        // Created (truncated) only now that the run can start: a setup error leaves existing
        // files as they were.
        let outputs = create_output(config.rejects.as_deref()).and_then(|rejects| {
            Ok(
                match (config.max_deliveries, config.dead_letter.as_deref()) {
                    (Some(_), Some(path)) => (rejects, None, Some(GivenUpFile::open(path)?)),
                    (_, path) => (rejects, create_output(path)?, None),
                },
            )
        });
        let (rejects, dead_letter, given_up) = match outputs {
            Ok(outputs) => outputs,
            Err(error) => {
                store.close().await;
                return Err(error);
            }
        };

        let stats = Arc::new(Stats::default());
        if let Some(nats) = &nats {
            for warning in nats.warnings() {
                stats.warn(warning);
            }
        }
        let label = match &nats {
            Some(nats) => format!("{label} (ack wait {:?})", nats.ack_wait()),
            None => label,
        };
        let progress = Progress::start(config.progress, expected, stats.clone());
        let ctx = Arc::new(Ctx {
            run_id: fastrand::i64(1..i64::MAX),
            store: store.clone(),
            stats: stats.clone(),
            reporter: progress.reporter(),
            policy: config.rollback.policy(),
            on_failure: config.on_failure,
            faults: config.faults,
            fault_rng: Mutex::new(fastrand::Rng::with_seed(config.faults.seed)),
            strict: config.strict,
            rejects,
            dead_letter,
            max_deliveries: config.max_deliveries,
            given_up: given_up.map(Mutex::new),
            cancel: cancel.clone(),
        });

        let started = Instant::now();
        let result = drive(ctx.clone(), source, &config, cancel).await;
        let elapsed = started.elapsed();
        progress.finish().await;
        // Every hook has been settled (or dropped, which gives its message back): wait until
        // the verdicts are sent, before they are counted.
        let nats = match nats {
            Some(nats) => Some(nats.close().await),
            None => None,
        };

        let outcome = ctx.outcome(result);
        ctx.flush_outputs();
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

/// Refuses an output file (`--rejects`, `--dead-letter`) that is the `--input` file or the
/// other output file: creating it would truncate it.
fn check_outputs(config: &Config) -> Result<(), SetupError> {
    // The same file, also under another name, when both exist.
    let same = |a: &Path, b: &Path| {
        a == b
            || matches!(
                (std::fs::canonicalize(a), std::fs::canonicalize(b)),
                (Ok(a), Ok(b)) if a == b
            )
    };
    let input = match &config.source {
        SourceSpec::Ndjson(crate::source::Input::File(path)) => Some(path.as_path()),
        _ => None,
    };
    let outputs = [
        ("--rejects", config.rejects.as_deref()),
        ("--dead-letter", config.dead_letter.as_deref()),
    ];
    for (option, path) in outputs {
        let Some(path) = path else { continue };
        if let Some(input) = input
            && same(path, input)
        {
            return Err(SetupError::Config(format!(
                "{option} {} is the --input file: it would be overwritten",
                path.display()
            )));
        }
    }
    if let (Some(rejects), Some(dead_letter)) =
        (config.rejects.as_deref(), config.dead_letter.as_deref())
        && same(rejects, dead_letter)
    {
        return Err(SetupError::Config(format!(
            "--rejects and --dead-letter must be different files, both are {}",
            rejects.display()
        )));
    }
    Ok(())
}

fn create_output(path: Option<&Path>) -> Result<Option<Mutex<BufWriter<File>>>, SetupError> {
    path.map(|path| {
        File::create(path)
            .map(|file| Mutex::new(BufWriter::new(file)))
            .map_err(|source| SetupError::Output {
                path: path.display().to_string(),
                source,
            })
    })
    .transpose()
}

/// Builds the adapter chain and drives it to its end.
async fn drive(
    ctx: Arc<Ctx>,
    source: RecordStream,
    config: &Config,
    cancel: CancellationToken,
) -> Result<Completion, CompensatedError<PipelineError>> {
    let reading = ctx.clone();
    let validated = source.map_ok_stream(move |record| {
        reading.stats.read.fetch_add(1, Ordering::Relaxed);
        futures::future::ready(
            event::validate(record).map_err(|rejected| PipelineError::Invalid(Box::new(rejected))),
        )
    });
    let diverting = ctx.clone();
    let valid = validated.filter_map(move |item| {
        let ctx = diverting.clone();
        async move { ctx.divert_invalid(item).await }
    });

    let mut batches = Box::pin(valid.chunks_timeout_result(config.max_batch, config.flush_every));
    let tagged = futures::stream::poll_fn(move |cx| {
        batches.as_mut().poll_next(cx).map(|next| {
            next.map(|item| {
                item.map(|batch| {
                    let reason = batches
                        .last_flush_reason()
                        .expect("a yielded batch has a flush reason");
                    (batch, reason)
                })
            })
        })
    });

    let writing = ctx.clone();
    let mut seq = 0u64;
    tagged
        .for_each_compensated(CompensationScope::new(), move |(batch, reason), scope| {
            seq += 1;
            write_batch(writing.clone(), seq, reason, batch, scope)
        })
        .rollback_policy(ctx.policy)
        .with_cancellation(cancel)
        .await
}

/// Writes one batch under the failure policy: the handler of `for_each_compensated`.
///
/// `scope` is the pipeline's own scope, used with `UnitOfWork::Item`: when this runs it holds
/// nothing but what this batch registers, so `scope.commit()` commits exactly this batch.
async fn write_batch(
    ctx: Arc<Ctx>,
    seq: u64,
    reason: FlushReason,
    batch: Vec<Incoming>,
    scope: CompensationScope,
) -> Result<(), PipelineError> {
    let mut events = Vec::with_capacity(batch.len());
    // Each hook with the index of its event.
    let mut acks = Vec::new();
    for (index, incoming) in batch.into_iter().enumerate() {
        events.push(incoming.event);
        acks.extend(incoming.ack.map(|ack| (index, ack)));
    }
    let events: Arc<[Event]> = events.into();
    let acks = Arc::new(Mutex::new(acks));
    let rows_deleted = Arc::new(AtomicU64::new(0));
    let fail = ctx.should_fail(seq);
    let hang = ctx.faults.hang_at_batch == Some(seq);
    ctx.stats.begin_batch(InFlight {
        seq,
        events: events.clone(),
        rows_deleted: rows_deleted.clone(),
    });

    // The batch's compensations go to the pipeline's scope: when this runs it holds nothing
    // else (`UnitOfWork::Item` commits each successful batch), so `scope.rollback` undoes
    // exactly this batch and `scope.commit` commits exactly this batch. A cancellation
    // while the batch is being written makes `for_each_compensated` roll it back.
    ctx.register_undo(&scope, seq, &events, &acks, &rows_deleted);
    let inserted = match ctx.write(seq, &events, fail).await {
        Ok(inserted) => inserted,
        // Stop mode: the error propagates, `for_each_compensated` stops and rolls this batch
        // back.
        Err(error) if ctx.on_failure == OnFailure::Stop => return Err(error),
        Err(error) => {
            // Skip-batch mode: roll this batch back here, record it and go on.
            let report = scope.rollback(ctx.policy).await;
            let batch = InFlight {
                seq,
                events,
                rows_deleted,
            };
            ctx.rolled_back(&batch, error.to_string(), &report, true);
            if !report.is_complete() {
                // Rows this batch wrote are still there: going on would build on an
                // inconsistent table.
                return Err(PipelineError::RollbackIncomplete {
                    batch: seq,
                    report: report.to_string(),
                });
            }
            return Ok(());
        }
    };
    if hang {
        ctx.hang(seq).await;
    }
    scope.commit();

    // Committed: count it, then acknowledge its events to the source. A failed ack only
    // means a redelivery, which the idempotent insert absorbs.
    ctx.stats
        .batch_committed(reason, events.len(), inserted.rows, inserted.skipped);
    let pending = std::mem::take(&mut *lock(&acks));
    for (_, ack) in pending {
        if let Err(error) = ack.ack().await {
            ctx.stats.ack_failed("ack", &error);
        }
    }
    Ok(())
}

impl Ctx {
    /// `--hang-at-batch`: never returns; the run can only be cancelled (the batch is then
    /// rolled back) or the process killed (the batch stays written, unacknowledged).
    async fn hang(&self, seq: u64) {
        self.reporter.println(format!(
            "event-batcher: batch {seq} written; hanging before acknowledging it (--hang-at-batch)"
        ));
        std::future::pending::<()>().await;
    }

    /// Whether batch `seq` gets an injected failure.
    fn should_fail(&self, seq: u64) -> bool {
        self.faults
            .fail_every
            .is_some_and(|n| seq.is_multiple_of(n))
            || (self.faults.fail_rate > 0.0 && lock(&self.fault_rng).f64() < self.faults.fail_rate)
    }

    /// Registers, before anything is written, what undoes batch `seq`: a nak of its events
    /// (registered first, so it runs last, after the rows are gone; see
    /// [`settle_rolled_back`](Self::settle_rolled_back)) and the deletion of the rows it
    /// inserts.
    ///
    /// The events are nak'ed only if the deletion succeeded. If it failed or timed out (its
    /// statement may still commit later), a nak would let another instance get the events
    /// at once, find the rows present and acknowledge them just before the late deletion
    /// removes them: acknowledged events missing. They are abandoned instead
    /// ([`AckHandle::abandon`](crate::source::AckHandle::abandon)): no verdict, the broker
    /// redelivers them after its ack wait.
    fn register_undo(
        self: &Arc<Self>,
        scope: &CompensationScope,
        seq: u64,
        events: &Arc<[Event]>,
        acks: &Arc<Mutex<Vec<(usize, Ack)>>>,
        rows_deleted: &Arc<AtomicU64>,
    ) {
        let rows_gone = Arc::new(AtomicBool::new(false));
        if !lock(acks).is_empty() {
            let ctx = self.clone();
            let events = events.clone();
            let acks = acks.clone();
            let rows_gone = rows_gone.clone();
            scope.register_labeled(format!("batch {seq}: nak its events"), move || {
                let ctx = ctx.clone();
                let events = events.clone();
                let acks = acks.clone();
                let rows_gone = rows_gone.load(Ordering::Acquire);
                async move {
                    // Taken once: a retry has nothing left to nak.
                    let pending = std::mem::take(&mut *lock(&acks));
                    ctx.settle_rolled_back(pending, &events, rows_gone).await;
                    Ok::<(), BoxError>(())
                }
            });
        }
        let store = self.store.clone();
        let run = self.run_id;
        let batch = batch_number(seq);
        let failing = Arc::new(AtomicU32::new(self.faults.fail_rollback_attempts));
        let deleted = rows_deleted.clone();
        scope.register_labeled(format!("batch {seq}: delete its rows"), move || {
            let store = store.clone();
            let failing = failing.clone();
            let deleted = deleted.clone();
            let rows_gone = rows_gone.clone();
            async move {
                let injected = failing
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok();
                if injected {
                    return Err(BoxError::from(
                        "injected compensation failure (--fail-rollback-attempts)",
                    ));
                }
                let rows = store.delete_batch(run, batch).await?;
                deleted.fetch_add(rows, Ordering::Relaxed);
                rows_gone.store(true, Ordering::Release);
                Ok(())
            }
        });
    }

    /// Writes `events` as batch `seq` in two parts, each its own autocommitted statement(s),
    /// failing in between when `fail` is set; returns the rows inserted and the ids skipped.
    async fn write(
        &self,
        seq: u64,
        events: &[Event],
        fail: bool,
    ) -> Result<store::Inserted, PipelineError> {
        let batch = batch_number(seq);
        let write_error = |source| PipelineError::Write { batch: seq, source };
        let (first, second) = events.split_at(events.len().div_ceil(2));
        let mut inserted = self
            .store
            .insert(self.run_id, batch, first)
            .await
            .map_err(write_error)?;
        if fail {
            return Err(PipelineError::Injected {
                batch: seq,
                written: first.len(),
                len: events.len(),
            });
        }
        if !second.is_empty() {
            let rest = self
                .store
                .insert(self.run_id, batch, second)
                .await
                .map_err(write_error)?;
            inserted.rows += rest.rows;
            inserted.skipped.extend(rest.skipped);
        }
        Ok(inserted)
    }

    /// Records a rolled-back batch: counters, a message, and the dead-letter file.
    /// `announce` prints a line on stderr (skip-batch mode; when the run stops, its final
    /// error line says it).
    fn rolled_back(
        &self,
        batch: &InFlight,
        error: String,
        report: &result_stream::RollbackReport,
        announce: bool,
    ) {
        let count = self.stats.rolled_back.load(Ordering::Relaxed) + 1;
        if announce && count <= REPORTED_ROLLBACKS {
            self.reporter.println(format!(
                "event-batcher: {error}: rolled back, {} row(s) deleted, {report}",
                batch.rows_deleted.load(Ordering::Relaxed)
            ));
        }
        if announce && count == REPORTED_ROLLBACKS + 1 {
            self.reporter.println(
                "event-batcher: more batches rolled back: counted and listed in the summary",
            );
        }
        self.stats.batch_rolled_back(batch, error, report);
        if let Some(file) = &self.dead_letter
            && let Err(error) = write_events(&mut *lock(file), batch.events.iter())
        {
            self.stats
                .warn(format!("cannot write to the dead-letter file: {error}"));
        }
    }

    /// Settles the hooks of a rolled-back batch, once its compensation deleted its rows
    /// (`rows_gone`) or failed to:
    /// - rows not (surely) deleted: every hook is abandoned, the source redelivers after its
    ///   own timeout (see [`register_undo`](Self::register_undo));
    /// - otherwise, with `--max-deliveries N`, the events whose record has been delivered N
    ///   times are appended to the dead-letter file, which is synced, and only then given up (`+TERM`); if the file cannot be written they are nak'ed instead, so
    ///   no event is ever dropped;
    /// - every other hook is nak'ed (redelivered after `--nak-delay`).
    async fn settle_rolled_back(
        &self,
        pending: Vec<(usize, Ack)>,
        events: &[Event],
        rows_gone: bool,
    ) {
        if !rows_gone {
            for (_, ack) in pending {
                ack.abandon();
            }
            return;
        }
        // A cancelled run says nothing about whether the database accepts these events.
        let may_give_up = !self.cancel.is_cancelled();
        let exhausted = |ack: &Ack| {
            may_give_up
                && self
                    .max_deliveries
                    .is_some_and(|max| ack.deliveries().is_some_and(|n| n >= max))
        };
        let (given_up, mut retried): (Vec<_>, Vec<_>) =
            pending.into_iter().partition(|(_, ack)| exhausted(ack));
        if !given_up.is_empty() {
            match self.dead_letter_durably(given_up.iter().map(|(index, _)| &events[*index])) {
                Ok(()) => {
                    self.stats
                        .dead_lettered
                        .fetch_add(given_up.len() as u64, Ordering::Relaxed);
                    for (_, ack) in given_up {
                        if let Err(error) = ack.give_up().await {
                            self.stats.ack_failed("term", &error);
                        }
                    }
                }
                Err(error) => {
                    self.stats.warn(format!(
                        "cannot write to the dead-letter file ({error}): {} event(s) given back \
                         for redelivery instead of given up",
                        given_up.len()
                    ));
                    retried.extend(given_up);
                }
            }
        }
        for (_, ack) in retried {
            if let Err(error) = ack.nak().await {
                // The source redelivers an unacknowledged record anyway.
                self.stats.ack_failed("nak", &error);
            }
        }
    }

    /// Appends `events` to the dead-letter file and makes them durable (fsync) before their
    /// records are given up.
    fn dead_letter_durably<'a>(
        &self,
        events: impl Iterator<Item = &'a Event>,
    ) -> std::io::Result<()> {
        match &self.given_up {
            Some(file) => lock(file).append(events),
            None => Err(std::io::Error::other("no --dead-letter file")),
        }
    }

    /// Counts, reports and (unless `--strict`) drops an invalid record.
    async fn divert_invalid(
        &self,
        item: Result<Incoming, PipelineError>,
    ) -> Option<Result<Incoming, PipelineError>> {
        let mut rejected = match item {
            Err(PipelineError::Invalid(rejected)) => rejected,
            other => return Some(other),
        };
        self.stats.record_reject(&rejected);
        let count = self.stats.invalid.load(Ordering::Relaxed);
        if count <= REPORTED_REJECTS {
            self.reporter
                .println(format!("event-batcher: invalid {rejected}"));
        }
        if count == REPORTED_REJECTS + 1 {
            self.reporter.println(
                "event-batcher: more invalid records: counted in the summary, all in --rejects if given",
            );
        }
        if let Some(file) = &self.rejects {
            let (key, number) = match rejected.position {
                Position::Line(n) => ("line", n),
                Position::Sequence(n) => ("sequence", n),
            };
            let line = serde_json::json!({
                key: number,
                "error": rejected.reason,
                "raw": rejected.raw,
            });
            let mut file = lock(file);
            if let Err(error) = writeln!(file, "{line}") {
                self.stats
                    .warn(format!("cannot write to the rejects file: {error}"));
            }
        }
        if let Some(ack) = rejected.ack.take()
            && let Err(error) = ack.reject().await
        {
            self.stats.ack_failed("reject", &error);
        }
        if self.strict {
            Some(Err(PipelineError::Invalid(rejected)))
        } else {
            None
        }
    }

    /// How the run ended; records the batch that `for_each_compensated` rolled back itself.
    fn outcome(&self, result: Result<Completion, CompensatedError<PipelineError>>) -> Outcome {
        let error = match result {
            Ok(_) => return Outcome::Finished,
            Err(error) => error,
        };
        let (cause, report) = error.into_parts();
        if let Some(batch) = self.stats.take_in_flight() {
            let error = match &cause {
                Cause::Upstream(error) | Cause::Handler(error) => error.to_string(),
                _ => format!("batch {}: cancelled", batch.seq),
            };
            self.rolled_back(&batch, error, &report, false);
        }
        let (rollback, rolled_back_cleanly) = match &cause {
            // Skip-batch mode rolled the batch back itself, incompletely, and stopped: that
            // rollback is the one to report (the scope was empty when the run stopped).
            // (The cause already quotes its report.)
            Cause::Handler(PipelineError::RollbackIncomplete { batch, .. }) => {
                (format!("batch {batch} was not rolled back cleanly"), false)
            }
            _ if report.ran() == 0 => ("nothing to roll back".to_owned(), report.is_complete()),
            _ => (report.to_string(), report.is_complete()),
        };
        match cause {
            Cause::Upstream(error) | Cause::Handler(error) => {
                let cause = match (&error, self.strict) {
                    (PipelineError::Invalid(_), true) => format!("{error} (--strict)"),
                    _ => error.to_string(),
                };
                Outcome::Stopped {
                    cause,
                    rollback,
                    rolled_back_cleanly,
                }
            }
            // `Cause::Cancelled` (the enum is non-exhaustive).
            _ => Outcome::Cancelled {
                rollback,
                rolled_back_cleanly,
            },
        }
    }

    fn flush_outputs(&self) {
        for (file, what) in [
            (&self.rejects, "rejects"),
            (&self.dead_letter, "dead-letter"),
        ] {
            if let Some(Err(error)) = file.as_ref().map(|file| lock(file).flush()) {
                self.stats
                    .warn(format!("cannot write to the {what} file: {error}"));
            }
        }
    }

    /// The row counts of the consistency check.
    async fn count_rows(&self) -> Result<DatabaseRows, String> {
        let rolled_back: Vec<i64> = self.stats_failed_batches();
        let skipped = self.stats.skipped_ids();
        let counting = async {
            Ok::<_, sqlx::Error>(DatabaseRows {
                total: self.store.count_all().await?,
                of_run: self.store.count_run(self.run_id).await?,
                left_by_rolled_back: self.store.count_batches(self.run_id, &rolled_back).await?,
                skipped_ids: skipped.len() as u64,
                skipped_found: self.store.count_ids(&skipped).await?,
            })
        };
        counting.await.map_err(|error| store::describe(&error))
    }

    fn stats_failed_batches(&self) -> Vec<i64> {
        self.stats
            .failed_batch_numbers()
            .into_iter()
            .map(batch_number)
            .collect()
    }
}

/// Writes `events` as NDJSON (replayable with `--input`).
fn write_events<'a>(
    out: &mut impl Write,
    events: impl Iterator<Item = &'a Event>,
) -> std::io::Result<()> {
    for event in events {
        serde_json::to_writer(&mut *out, event)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// A batch number as stored in `batch_seq`.
fn batch_number(seq: u64) -> i64 {
    // A run would need 2^63 batches to overflow.
    i64::try_from(seq).unwrap_or(i64::MAX)
}
