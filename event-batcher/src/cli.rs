//! The command line.
//!
//! `event-batcher [run] [OPTIONS]`: `run` is the default subcommand, so `event-batcher` with
//! no arguments runs the default pipeline. `event-batcher publish` loads synthetic events into
//! a NATS JetStream stream, for `run --source nats://…` instances to consume.
//!
//! Signals (SIGINT = Ctrl-C, SIGTERM):
//! - NATS source: the first stops the source gracefully: no more pulls, the events already
//!   read are batched and written, committed and acked (or rolled back and nak'ed), the
//!   summary is printed, exit code 0 if the check holds; the second cancels (the batch in
//!   flight is rolled back and nak'ed, exit code 1); the third exits at once (130);
//! - other sources: the first cancels (the batch in progress is rolled back, exit code 1),
//!   the second exits at once (130).
//!
//! Exit codes:
//! - `0`: the run finished (the whole input was read) and the consistency check holds;
//!   batches rolled back under `--on-failure skip-batch` and invalid lines (without
//!   `--strict`) do not change this;
//! - `1`: the run stopped (a failed batch under `--on-failure stop`, an invalid line under
//!   `--strict`, a read error, a rollback that could not complete, Ctrl-C) or the
//!   consistency check failed; the summary is printed all the same;
//! - `2`: the run could not start: a bad option, a bad database URL, an unreachable
//!   database, an unusable table, an unreadable input, an output file that cannot be
//!   created. Nothing was written.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::pipeline::{Config, Faults, OnFailure, Pipeline, RollbackSettings};
use crate::progress::ProgressMode;
use crate::source::nats::{self, NatsError, NatsOptions, PublishReport};
use crate::source::{Input, SourceSpec, SyntheticSpec, synthetic};
use crate::summary::Outcome;

/// Instances `--max-ack-pending` is sized for by default (see
/// [`NatsOptions::for_pipeline`]).
pub const DEFAULT_INSTANCES: usize = 4;

const EXIT_CODES: &str = "\
Exit codes:
  0  the run finished and the consistency check holds
  1  the run stopped (failed batch with --on-failure stop, invalid line with --strict,
     read error, incomplete rollback, Ctrl-C) or the consistency check failed
  2  the run could not start (bad option or URL, unreachable database or NATS server,
     unreadable input)

Signals: with --source nats://…, the first SIGINT/SIGTERM stops pulling and finishes the
batch in flight (commit + ack, or roll back + nak), then prints the summary; the second
rolls the batch in flight back. Other sources: the first rolls back and stops.";

/// Events in, batches of up to 500 (or every 2 s) out, each persisted with rollback.
#[derive(Debug, Parser)]
#[command(
    name = "event-batcher",
    version,
    args_conflicts_with_subcommands = true,
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// What to do (default: `run`).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The options of `run`, accepted without the subcommand name.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum Command {
    /// Run the pipeline (the default when no subcommand is given).
    #[command(after_help = EXIT_CODES)]
    Run(RunArgs),
    /// Publish synthetic events (the ids and fields of `run --events N --seed S`) to a NATS
    /// JetStream subject, creating the stream if missing. Each message carries its event id
    /// as `Nats-Msg-Id`, so publishing again within the stream's duplicate window (2 min by
    /// default) stores nothing twice.
    Publish(PublishArgs),
}

/// Options of the `publish` command.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// NATS server URL.
    #[arg(long, value_name = "URL", default_value = "nats://127.0.0.1:4222")]
    pub source: String,
    /// JetStream stream (created with file storage, capturing --subject, if missing).
    #[arg(long, value_name = "NAME", default_value = "EVENTS")]
    pub stream: String,
    /// Subject to publish to.
    #[arg(long, value_name = "SUBJECT", default_value = "events.ingest")]
    pub subject: String,
    /// Events to publish.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub events: u64,
    /// Seed of the events (ids evt-SEED-N).
    #[arg(long, value_name = "S", default_value_t = 42)]
    pub seed: u64,
    /// Also publish N malformed messages (not JSON events), after the events: consumers
    /// count them as invalid and terminate them (never redelivered).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub malformed: u64,
    /// Most publish acknowledgements awaited at a time.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub in_flight: u64,
}

/// Options of the `run` command.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Synthetic events to generate.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 10_000,
        conflicts_with = "input",
        help_heading = "Source"
    )]
    pub events: u64,
    /// Synthetic events per second; 0 = as fast as possible.
    #[arg(
        long,
        value_name = "R",
        default_value_t = 0.0,
        conflicts_with = "input",
        help_heading = "Source"
    )]
    pub rate: f64,
    /// Seed of the synthetic events (their ids are evt-SEED-N) and of --fail-rate.
    #[arg(long, value_name = "S", default_value_t = 42, help_heading = "Source")]
    pub seed: u64,
    /// Read NDJSON events from PATH, or from stdin with `-`, instead of generating them.
    #[arg(long, value_name = "PATH|-", help_heading = "Source")]
    pub input: Option<String>,
    /// Stop at the first invalid line instead of counting it and going on.
    #[arg(long, help_heading = "Source")]
    pub strict: bool,
    /// Write every invalid line (position, error, raw text) to PATH as NDJSON.
    #[arg(long, value_name = "PATH", help_heading = "Source")]
    pub rejects: Option<PathBuf>,

    /// Consume a NATS JetStream durable pull consumer at URL (nats://HOST:PORT) instead of
    /// generating events; any number of instances may share the consumer. Each message is
    /// acked after its batch commits and nak'ed after its batch is rolled back.
    #[arg(long, value_name = "URL", conflicts_with_all = ["input", "events", "rate"], help_heading = "NATS source")]
    pub source: Option<String>,
    /// JetStream stream (created with file storage, capturing --subject, if missing).
    #[arg(
        long,
        value_name = "NAME",
        default_value = "EVENTS",
        help_heading = "NATS source"
    )]
    pub stream: String,
    /// Subject the consumer filters on.
    #[arg(
        long,
        value_name = "SUBJECT",
        default_value = "events.ingest",
        help_heading = "NATS source"
    )]
    pub subject: String,
    /// Durable consumer, shared by the instances that split the work (created if missing;
    /// an existing one keeps its settings).
    #[arg(
        long,
        value_name = "NAME",
        default_value = "event-batcher",
        help_heading = "NATS source"
    )]
    pub consumer: String,
    /// How long the broker waits for a verdict before redelivering a message to another
    /// instance (consumer creation only). Held messages are kept alive (+WPI) every third of
    /// it, so only a dead or frozen instance loses its messages.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration, help_heading = "NATS source")]
    pub ack_wait: Duration,
    /// Delay before the messages of a rolled-back batch are redelivered.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration, help_heading = "NATS source")]
    pub nak_delay: Duration,
    /// Messages delivered but not yet acknowledged, across all instances (consumer creation
    /// only); must exceed --max-batch [default: 8 × --max-batch × 4 instances].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(1..), help_heading = "NATS source")]
    pub max_ack_pending: Option<i64>,
    /// Stop once no message has arrived for DURATION while none is held (at once: the open
    /// pull request is dropped, not waited for).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "source", help_heading = "NATS source")]
    pub idle_exit: Option<Duration>,
    /// Stop gracefully after N messages.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), requires = "source", help_heading = "NATS source")]
    pub max_events: Option<u64>,

    /// Most events per batch.
    #[arg(long, value_name = "N", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Batching")]
    pub max_batch: u64,
    /// Longest time an event waits for its batch to be written (e.g. 2s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration, help_heading = "Batching")]
    pub flush_every: Duration,

    /// Database URL: sqlite://PATH (file created if missing) or postgres://USER@HOST:PORT/DB.
    #[arg(
        long,
        value_name = "URL",
        default_value = "sqlite://events.db",
        help_heading = "Database"
    )]
    pub database: String,
    /// Table the events go to (created if missing).
    #[arg(
        long,
        value_name = "NAME",
        default_value = "events",
        help_heading = "Database"
    )]
    pub table: String,
    /// Longest wait for the database connection.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration, help_heading = "Database")]
    pub connect_timeout: Duration,

    /// What a batch that cannot be written does: stop (roll back, exit 1) or skip-batch
    /// (roll back, record it as failed, go on).
    #[arg(long, value_enum, default_value_t = OnFailure::Stop, help_heading = "Failures")]
    pub on_failure: OnFailure,
    /// Attempts per compensation (the rollback of a batch), the first included.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Failures")]
    pub rollback_attempts: u32,
    /// Wait before the first retry of a compensation; doubles with each retry, up to 2s.
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = parse_duration, help_heading = "Failures")]
    pub rollback_backoff: Duration,
    /// Time limit of one attempt of a compensation.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration, help_heading = "Failures")]
    pub rollback_timeout: Duration,
    /// Write dead letters to PATH as NDJSON (replay with --input): the events of
    /// rolled-back batches, or with --source the events given up after --max-deliveries.
    #[arg(long, value_name = "PATH", help_heading = "Failures")]
    pub dead_letter: Option<PathBuf>,
    /// NATS: give up on a message of a rolled-back batch once it has been delivered N times:
    /// its event goes to --dead-letter (required), the message is terminated. Default: it is
    /// redelivered until its batch commits.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), requires = "source", help_heading = "Failures")]
    pub max_deliveries: Option<u64>,

    /// Inject a failure into every Nth batch, after its first half is written.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), help_heading = "Fault injection")]
    pub fail_every: Option<u64>,
    /// Inject a failure into each batch with probability P (0 to 1), after its first half
    /// is written.
    #[arg(
        long,
        value_name = "P",
        default_value_t = 0.0,
        help_heading = "Fault injection"
    )]
    pub fail_rate: f64,
    /// Make the first N attempts of every row-deleting compensation fail.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        help_heading = "Fault injection"
    )]
    pub fail_rollback_attempts: u32,
    /// Write batch N, then hang before committing and acknowledging it (a stuck instance;
    /// kill it to see its messages redelivered to the others).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), help_heading = "Fault injection")]
    pub hang_at_batch: Option<u64>,

    /// Progress display on stderr: a bar on a terminal, plain lines otherwise (auto).
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto, help_heading = "Output")]
    pub progress: ProgressMode,
    /// No progress display (same as --progress none).
    #[arg(long, short, help_heading = "Output")]
    pub quiet: bool,
}

/// Parses `500ms`, `2s`, `1.5s`, `1m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 500ms, 2s, 1.5s, 1m"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        other => return Err(format!("invalid duration unit {other:?}: use ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds)
        .map_err(|error| format!("invalid duration {text:?}: {error}"))
}

impl RunArgs {
    /// The pipeline configuration these options describe.
    pub fn into_config(self) -> Config {
        let max_batch = usize::try_from(self.max_batch).unwrap_or(usize::MAX);
        let source = match (self.source, self.input) {
            (Some(url), _) => {
                let mut options = NatsOptions::new(url, self.stream, self.subject, self.consumer)
                    .for_pipeline(max_batch, DEFAULT_INSTANCES);
                options.ack_wait = self.ack_wait;
                options.nak_delay = self.nak_delay;
                if let Some(max_ack_pending) = self.max_ack_pending {
                    options.max_ack_pending = max_ack_pending;
                }
                options.idle_exit = self.idle_exit;
                options.max_messages = self.max_events;
                SourceSpec::Nats(Box::new(options))
            }
            (None, Some(input)) if input == "-" => SourceSpec::Ndjson(Input::Stdin),
            (None, Some(path)) => SourceSpec::Ndjson(Input::File(path.into())),
            (None, None) => SourceSpec::Synthetic(SyntheticSpec {
                events: self.events,
                rate: self.rate,
                seed: self.seed,
            }),
        };
        Config {
            source,
            database: self.database,
            table: self.table,
            max_batch,
            flush_every: self.flush_every,
            on_failure: self.on_failure,
            rollback: RollbackSettings {
                attempts: self.rollback_attempts,
                backoff: self.rollback_backoff,
                attempt_timeout: self.rollback_timeout,
                ..RollbackSettings::default()
            },
            faults: Faults {
                fail_every: self.fail_every,
                fail_rate: self.fail_rate,
                fail_rollback_attempts: self.fail_rollback_attempts,
                seed: self.seed,
                hang_at_batch: self.hang_at_batch,
            },
            strict: self.strict,
            rejects: self.rejects,
            dead_letter: self.dead_letter,
            max_deliveries: self.max_deliveries,
            progress: if self.quiet {
                ProgressMode::None
            } else {
                self.progress
            },
            connect_timeout: self.connect_timeout,
        }
    }
}

/// Runs the parsed command line and returns the process exit code.
pub async fn execute(cli: Cli) -> ExitCode {
    match cli.command {
        Some(Command::Run(args)) => run(args).await,
        Some(Command::Publish(args)) => publish(args).await,
        None => run(cli.run).await,
    }
}

/// The `publish` command: a one-line report on stdout, or a one-line error (exit code 2).
async fn publish(args: PublishArgs) -> ExitCode {
    match publish_events(&args).await {
        Ok(report) => {
            println!(
                "event-batcher publish: {report} to subject {} of stream {} at {} \
                 ({} events evt-{}-…, {} malformed)",
                args.subject, args.stream, args.source, args.events, args.seed, args.malformed
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("event-batcher: error: {error}");
            ExitCode::from(2)
        }
    }
}

async fn publish_events(args: &PublishArgs) -> Result<PublishReport, NatsError> {
    let options = NatsOptions::new(&args.source, &args.stream, &args.subject, "publish");
    let client = nats::connect(&options).await?;
    let js = nats::jetstream_context(client.clone(), &options);
    nats::ensure_stream(&js, &options).await?;
    let events = synthetic::events(args.seed, args.events).map(|event| {
        let payload = serde_json::to_vec(&event).expect("an event serialises to JSON");
        (event.id, payload)
    });
    let malformed = (1..=args.malformed).map(|n| {
        (
            format!("malformed-{}-{n}", args.seed),
            format!("not an event: malformed message {n}").into_bytes(),
        )
    });
    let in_flight = usize::try_from(args.in_flight).unwrap_or(usize::MAX);
    let report = nats::publish(&js, &args.subject, events.chain(malformed), in_flight).await?;
    // Every publish was acknowledged by the server; nothing is left to flush but be tidy.
    let _ = client.flush().await;
    Ok(report)
}

/// The `run` command: the pipeline, its summary on stdout, a one-line error on stderr.
async fn run(args: RunArgs) -> ExitCode {
    let config = args.into_config();
    let cancel = CancellationToken::new();
    let stop = CancellationToken::new();
    let graceful = matches!(config.source, SourceSpec::Nats(_));
    // Installed before the run starts, so that no signal takes the default action.
    let signals = match Signals::new() {
        Ok(signals) => Some(tokio::spawn(signals.watch(
            stop.clone(),
            cancel.clone(),
            graceful,
        ))),
        Err(error) => {
            eprintln!("event-batcher: warning: cannot watch signals: {error}");
            None
        }
    };
    let result = Pipeline::new(config)
        .cancellation(cancel)
        .stop(stop)
        .run()
        .await;
    if let Some(signals) = signals {
        signals.abort();
    }
    let summary = match result {
        Ok(summary) => summary,
        Err(error) => {
            eprintln!("event-batcher: error: {error}");
            return ExitCode::from(2);
        }
    };
    // A closed stdout (e.g. piped into `head`) must not turn a run into a panic.
    let _ = write!(std::io::stdout().lock(), "{summary}");
    match &summary.outcome {
        Outcome::Stopped {
            cause, rollback, ..
        } => eprintln!("event-batcher: error: run stopped: {cause}; {rollback}"),
        Outcome::Cancelled { rollback, .. } => {
            eprintln!("event-batcher: error: interrupted; {rollback}")
        }
        Outcome::Finished if !summary.check.holds => {
            eprintln!(
                "event-batcher: error: consistency check failed: {}",
                summary.check.detail
            )
        }
        Outcome::Finished => {}
    }
    ExitCode::from(summary.exit_code())
}

/// SIGINT and SIGTERM.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    #[cfg(unix)]
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    #[cfg(not(unix))]
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {})
    }

    /// The next signal's name; `None` when signals can no longer be received.
    #[cfg(unix)]
    async fn next(&mut self) -> Option<&'static str> {
        tokio::select! {
            received = self.interrupt.recv() => received.map(|()| "SIGINT"),
            received = self.terminate.recv() => received.map(|()| "SIGTERM"),
        }
    }

    #[cfg(not(unix))]
    async fn next(&mut self) -> Option<&'static str> {
        tokio::signal::ctrl_c().await.ok().map(|()| "Ctrl-C")
    }

    /// With `graceful`, the first signal stops the source (the batch in flight is finished);
    /// the next cancels the run (the batch in flight is rolled back); the next exits at once.
    async fn watch(mut self, stop: CancellationToken, cancel: CancellationToken, graceful: bool) {
        if graceful {
            let Some(name) = self.next().await else {
                return;
            };
            eprintln!(
                "event-batcher: {name}: stopping: no more messages are pulled, the batch in flight \
                 is finished ({name} again to roll it back instead)"
            );
            stop.cancel();
        }
        let Some(name) = self.next().await else {
            return;
        };
        eprintln!(
            "event-batcher: {name}: interrupted: rolling back the batch in progress ({name} again \
             to quit now)"
        );
        cancel.cancel();
        if self.next().await.is_some() {
            std::process::exit(130);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn no_arguments_is_the_default_run() {
        let cli = Cli::try_parse_from(["event-batcher"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.run.into_config(), Config::default());
    }

    #[test]
    fn run_is_an_optional_subcommand() {
        let cli = Cli::try_parse_from(["event-batcher", "run", "--events", "7"]).unwrap();
        let Some(Command::Run(args)) = cli.command else {
            panic!("expected the run subcommand");
        };
        let SourceSpec::Synthetic(spec) = args.into_config().source else {
            panic!("expected a synthetic source");
        };
        assert_eq!(spec.events, 7);
    }

    #[test]
    fn input_selects_ndjson_and_conflicts_with_synthetic_options() {
        let cli = Cli::try_parse_from(["event-batcher", "--input", "-"]).unwrap();
        assert_eq!(
            cli.run.into_config().source,
            SourceSpec::Ndjson(Input::Stdin)
        );
        assert!(Cli::try_parse_from(["event-batcher", "--input", "x", "--events", "3"]).is_err());
        assert!(Cli::try_parse_from(["event-batcher", "--max-batch", "0"]).is_err());
        assert!(Cli::try_parse_from(["event-batcher", "--on-failure", "retry"]).is_err());
    }

    #[test]
    fn source_selects_nats_with_its_options() {
        let cli = Cli::try_parse_from([
            "event-batcher",
            "--source",
            "nats://h:1",
            "--stream",
            "S",
            "--ack-wait",
            "5s",
            "--idle-exit",
            "2s",
            "--max-events",
            "10",
            "--max-batch",
            "100",
        ])
        .unwrap();
        let SourceSpec::Nats(options) = cli.run.into_config().source else {
            panic!("expected a NATS source");
        };
        assert_eq!(options.stream, "S");
        assert_eq!(options.subject, "events.ingest");
        assert_eq!(options.ack_wait, Duration::from_secs(5));
        assert_eq!(options.idle_exit, Some(Duration::from_secs(2)));
        assert_eq!(options.max_messages, Some(10));
        assert_eq!(options.pull_batch, 100);
        assert!(options.max_ack_pending > 100);
        assert!(
            Cli::try_parse_from(["event-batcher", "--source", "nats://h:1", "--input", "x"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["event-batcher", "--max-events", "3"]).is_err());
        let cli = Cli::try_parse_from(["event-batcher", "publish", "--events", "5"]).unwrap();
        let Some(Command::Publish(args)) = cli.command else {
            panic!("expected the publish subcommand");
        };
        assert_eq!((args.events, args.malformed), (5, 0));
    }

    #[test]
    fn quiet_disables_progress() {
        let cli = Cli::try_parse_from(["event-batcher", "-q"]).unwrap();
        assert_eq!(cli.run.into_config().progress, ProgressMode::None);
    }
}
