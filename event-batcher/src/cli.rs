//! The command line.
//!
//! `event-batcher [run] [OPTIONS]`: `run` is the default subcommand, so `event-batcher` with
//! no arguments runs the default pipeline, and other subcommands can be added beside it.
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
use crate::source::{Input, SourceSpec, SyntheticSpec};
use crate::summary::Outcome;

const EXIT_CODES: &str = "\
Exit codes:
  0  the run finished and the consistency check holds
  1  the run stopped (failed batch with --on-failure stop, invalid line with --strict,
     read error, incomplete rollback, Ctrl-C) or the consistency check failed
  2  the run could not start (bad option or URL, unreachable database, unreadable input)";

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
pub enum Command {
    /// Run the pipeline (the default when no subcommand is given).
    #[command(after_help = EXIT_CODES)]
    Run(RunArgs),
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
    /// Write the events of rolled-back batches to PATH as NDJSON (replay with --input).
    #[arg(long, value_name = "PATH", help_heading = "Failures")]
    pub dead_letter: Option<PathBuf>,

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
        let source = match self.input {
            Some(input) if input == "-" => SourceSpec::Ndjson(Input::Stdin),
            Some(path) => SourceSpec::Ndjson(Input::File(path.into())),
            None => SourceSpec::Synthetic(SyntheticSpec {
                events: self.events,
                rate: self.rate,
                seed: self.seed,
            }),
        };
        Config {
            source,
            database: self.database,
            table: self.table,
            max_batch: usize::try_from(self.max_batch).unwrap_or(usize::MAX),
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
            },
            strict: self.strict,
            rejects: self.rejects,
            dead_letter: self.dead_letter,
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
        None => run(cli.run).await,
    }
}

/// The `run` command: the pipeline, its summary on stdout, a one-line error on stderr.
async fn run(args: RunArgs) -> ExitCode {
    let cancel = CancellationToken::new();
    let signals = tokio::spawn(watch_interrupts(cancel.clone()));
    let result = Pipeline::new(args.into_config())
        .cancellation(cancel)
        .run()
        .await;
    signals.abort();
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

/// First Ctrl-C: cancel the run (the batch in progress is rolled back). Second: exit at once.
async fn watch_interrupts(cancel: CancellationToken) {
    if tokio::signal::ctrl_c().await.is_err() {
        return;
    }
    eprintln!(
        "event-batcher: interrupted: rolling back the batch in progress (Ctrl-C again to quit now)"
    );
    cancel.cancel();
    if tokio::signal::ctrl_c().await.is_ok() {
        std::process::exit(130);
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
    fn quiet_disables_progress() {
        let cli = Cli::try_parse_from(["event-batcher", "-q"]).unwrap();
        assert_eq!(cli.run.into_config().progress, ProgressMode::None);
    }
}
