//! The clap-shaped types: the flags as the user types them. Nothing below the CLI sees
//! them; [`super::config`] maps them to the pipeline's configuration.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::logs::LogFormat;

const AFTER_HELP: &str = "\
Durations take a unit: 500ms, 2s, 1.5s, 1m (a bare 0 is allowed).

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
    after_help = AFTER_HELP
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
    #[command(after_help = AFTER_HELP)]
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
    /// count them as invalid and terminate them (never redelivered). With
    /// --events-per-message above 1, N malformed lines instead, one in the middle of each
    /// of the first N messages: consumers reject that line alone.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub malformed: u64,
    /// Events per message: above 1, each message is NDJSON (one event per line), and a
    /// consumer acknowledges it once every event in it is committed.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub events_per_message: u64,
    /// Most publish acknowledgements awaited at a time.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = at_least_one::<u64>)]
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
    #[arg(long, value_name = "N", value_parser = at_least_one::<i64>, help_heading = "NATS source")]
    pub max_ack_pending: Option<i64>,
    /// Stop once no message has arrived for DURATION while none is held (at once: the open
    /// pull request is dropped, not waited for).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "source", help_heading = "NATS source")]
    pub idle_exit: Option<Duration>,
    /// Stop gracefully after N messages.
    #[arg(long, value_name = "N", value_parser = at_least_one::<u64>, requires = "source", help_heading = "NATS source")]
    pub max_events: Option<u64>,

    /// Most events per batch.
    #[arg(long, value_name = "N", default_value_t = 500, value_parser = at_least_one::<u64>, help_heading = "Batching")]
    pub max_batch: u64,
    /// Longest time an event waits for its batch to be written (e.g. 2s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration, help_heading = "Batching")]
    pub flush_every: Duration,
    /// Most bytes per batch, each event counting as its encoded NDJSON line; an event
    /// larger than N on its own is written alone. Applies beside --max-batch.
    #[arg(long, value_name = "N", value_parser = at_least_one::<u64>, help_heading = "Batching")]
    pub max_batch_bytes: Option<u64>,
    /// One batch per tenant, each with its own --flush-every deadline from its first event.
    #[arg(long, help_heading = "Batching")]
    pub per_tenant: bool,
    /// With --per-tenant: most tenants with an open batch; a new tenant's event first
    /// flushes the oldest open batch (an eviction). Default: unbounded.
    #[arg(long, value_name = "N", value_parser = at_least_one::<u64>, requires = "per_tenant", help_heading = "Batching")]
    pub max_open_tenants: Option<u64>,

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
    /// When the database goes away mid-run, wait this long for it to come back, to roll the
    /// batch being written back (a NATS run then goes on; other sources stop). 0 = no wait.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration, help_heading = "Database")]
    pub database_outage: Duration,
    /// Batches written at once (the connection pool holds one more connection than this).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = at_least_one::<u64>, help_heading = "Database")]
    pub concurrency: u64,

    /// What a batch that cannot be written does: stop (roll back, exit 1) or skip-batch
    /// (roll back, record it as failed, go on).
    #[arg(long, value_enum, default_value_t = OnFailureArg::Stop, help_heading = "Failures")]
    pub on_failure: OnFailureArg,
    /// Retries of a failed batch write: its partial rows are deleted, then the backoff,
    /// then the next attempt; --on-failure applies after the last one.
    #[arg(long, value_name = "N", default_value_t = 0, help_heading = "Failures")]
    pub write_retries: u32,
    /// Wait before the first retry of a batch write; doubles with each retry, up to 10s.
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = parse_duration, help_heading = "Failures")]
    pub write_backoff: Duration,
    /// Attempts per compensation (the rollback of a batch), the first included.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = at_least_one::<u32>, help_heading = "Failures")]
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
    #[arg(long, value_name = "N", value_parser = at_least_one::<u64>, requires = "source", help_heading = "Failures")]
    pub max_deliveries: Option<u64>,

    /// Inject a failure into every Nth batch, after its first half is written.
    #[arg(long, value_name = "N", value_parser = at_least_one::<u64>, help_heading = "Fault injection")]
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
    /// A batch chosen by --fail-every or --fail-rate fails only its first N write attempts
    /// (a transient failure, for --write-retries). Default: every attempt.
    #[arg(long, value_name = "N", value_parser = at_least_one::<u32>, help_heading = "Fault injection")]
    pub fail_attempts: Option<u32>,
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
    #[arg(long, value_name = "N", value_parser = at_least_one::<u64>, help_heading = "Fault injection")]
    pub hang_at_batch: Option<u64>,
    /// Write the first half of batch N, then stop this process (SIGSTOP, like a paused VM)
    /// until it is continued (SIGCONT), then fail the batch: a frozen instance that resumes
    /// into a rollback.
    #[arg(long, value_name = "N", value_parser = at_least_one::<u64>, help_heading = "Fault injection")]
    pub freeze_at_batch: Option<u64>,

    /// Progress display on stderr: a bar on a terminal, plain lines otherwise (auto).
    #[arg(long, value_enum, default_value_t = ProgressArg::Auto, help_heading = "Output")]
    pub progress: ProgressArg,
    /// No progress display (same as --progress none).
    #[arg(long, short, help_heading = "Output")]
    pub quiet: bool,
    /// Standard error as text lines, or one JSON object per line (no progress bar: plain
    /// progress lines instead). RUST_LOG filters them [default: event_batcher=info].
    #[arg(long, value_enum, default_value_t = LogFormat::Text, help_heading = "Output")]
    pub log_format: LogFormat,
    /// Serve Prometheus metrics at http://ADDR/metrics while the run lasts (ADDR: IP:PORT,
    /// `[IPv6]:PORT`, localhost:PORT or :PORT; port 0 picks a free port, logged on stderr).
    #[arg(long, value_name = "ADDR", help_heading = "Output")]
    pub metrics: Option<String>,
    /// Keep serving the metrics this long after the summary, so that their final values can
    /// be scraped (SIGINT or SIGTERM ends the wait).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "metrics", help_heading = "Output")]
    pub metrics_linger: Option<Duration>,
}

/// `--on-failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnFailureArg {
    /// Roll the batch back and stop the run (exit code 1).
    Stop,
    /// Roll the batch back, record it as failed, and go on with the next one.
    SkipBatch,
}

/// `--progress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressArg {
    /// A bar on a terminal, plain lines otherwise.
    Auto,
    /// Always a bar.
    Bar,
    /// Always plain lines.
    Plain,
    /// Nothing (messages and the summary are still printed).
    None,
}

/// Parses a whole number of at least 1, for the options where 0 means nothing sensible.
///
/// Refusals say what to type: clap prints them as
/// `invalid value '0' for '--max-batch <N>': must be at least 1`.
pub fn at_least_one<T>(text: &str) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + From<u8>,
{
    let number: T = text
        .trim()
        .parse()
        .map_err(|_| "expected a whole number, at least 1".to_owned())?;
    if number < T::from(1) {
        return Err("must be at least 1".to_owned());
    }
    Ok(number)
}

/// Parses a duration with its unit: `500ms`, `2s`, `1.5s`, `1m`, or `0`.
///
/// A number without a unit is refused (is `2` two seconds or two milliseconds?), but for
/// `0`, which means the same in every unit.
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
        "s" => value,
        "m" | "min" => value * 60.0,
        "" if value == 0.0 => 0.0,
        "" => {
            return Err(format!(
                "a duration needs a unit: write {number}s for seconds or {number}ms for milliseconds"
            ));
        }
        other => return Err(format!("invalid duration unit {other:?}: use ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds)
        .map_err(|error| format!("invalid duration {text:?}: {error}"))
}
