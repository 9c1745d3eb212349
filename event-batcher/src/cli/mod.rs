//! The command line: the top layer.
//!
//! [`args`] holds the clap-shaped types (flags as typed), [`config`] maps them to the
//! pipeline's validated [`Config`](crate::pipeline::Config) (the flags themselves never
//! reach the pipeline), `signals` turns SIGINT/SIGTERM into the pipeline's stop and
//! cancellation tokens, and this file runs a command and picks the exit code.
//!
//! From the workspace, `cargo run --release -p event-batcher -- [run] [OPTIONS]` (the binary
//! is then `target/release/event-batcher`; `cargo install --path event-batcher` puts it on
//! `PATH`): `run` is the default subcommand, so no arguments runs the default pipeline. The
//! `publish` subcommand loads synthetic events into a NATS JetStream stream, for
//! `run --source nats://…` instances to consume.
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

pub mod args;
pub mod config;
mod signals;

use std::io::Write;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::console::{Console, one_line};
use crate::logs::{self, LogFormat};
use crate::metrics::{self, MetricsError, MetricsServer};
use crate::pipeline::Pipeline;
use crate::report::Outcome;
use crate::report::ProgressMode;
use crate::source::nats::{self, NatsError, NatsOptions, PublishReport};
use crate::source::{SourceSpec, synthetic};
use signals::Signals;

pub use args::{Cli, Command, PublishArgs, RunArgs, parse_duration};
pub use config::DEFAULT_INSTANCES;

/// The console every line of the process goes through (and the logs, once installed).
static CONSOLE: std::sync::LazyLock<Console> = std::sync::LazyLock::new(Console::new);

/// Runs the parsed command line and returns the process exit code.
pub async fn execute(cli: Cli) -> ExitCode {
    let format = match &cli.command {
        Some(Command::Run(args)) => args.log_format,
        Some(Command::Publish(_)) => LogFormat::Text,
        None => cli.run.log_format,
    };
    // Every line of the run is an event from here on; the summary stays on stdout.
    let rust_log = std::env::var("RUST_LOG").ok();
    if let Err(error) = logs::install(format, &CONSOLE, rust_log.as_deref()) {
        eprintln!("event-batcher: error: {}", one_line(&error.to_string()));
        return ExitCode::from(2);
    }
    match cli.command {
        Some(Command::Run(args)) => run(args).await,
        Some(Command::Publish(args)) => publish(args).await,
        None => run(cli.run).await,
    }
}

/// The `publish` command: a one-line report on stdout, or a one-line error (exit code 2).
async fn publish(args: PublishArgs) -> ExitCode {
    let console = CONSOLE.clone();
    match publish_events(&args).await {
        Ok(report) => {
            println!(
                "event-batcher publish: {report} to subject {} of stream {} at {} \
                 ({} events evt-{}-…, {} per message, {} malformed)",
                args.subject,
                args.stream,
                args.source,
                args.events,
                args.seed,
                args.events_per_message,
                args.malformed
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            console.println(format!("event-batcher: error: {error}"));
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
        let payload = serde_json::to_string(&event).expect("an event serialises to JSON");
        (event.id, payload)
    });
    let per_message = usize::try_from(args.events_per_message).unwrap_or(usize::MAX);
    let malformed_id = format!("malformed-{}", args.seed);
    let messages = nats::ndjson_messages(events, per_message, args.malformed, &malformed_id);
    let in_flight = usize::try_from(args.in_flight).unwrap_or(usize::MAX);
    let report = nats::publish(&js, &args.subject, messages, in_flight).await?;
    // Every publish was acknowledged by the server; nothing is left to flush but be tidy.
    let _ = client.flush().await;
    Ok(report)
}

/// The `run` command: the pipeline, its summary on stdout, a one-line error on stderr.
async fn run(args: RunArgs) -> ExitCode {
    let console = CONSOLE.clone();
    let (format, metrics, linger) = (args.log_format, args.metrics.clone(), args.metrics_linger);
    let config = match args.into_config() {
        Ok(mut config) => {
            if format == LogFormat::Json {
                // A bar and JSON lines do not mix: the progress is plain lines (events).
                if let ProgressMode::Auto | ProgressMode::Bar = config.progress {
                    config.progress = ProgressMode::Plain;
                }
            }
            config
        }
        Err(error) => {
            // One line, whatever a path or URL in it holds.
            console.println(format!(
                "event-batcher: error: {}",
                one_line(&error.to_string())
            ));
            return ExitCode::from(2);
        }
    };
    // Listening before the run starts: a bad address or a port in use stops it here.
    let metrics = match metrics.as_deref() {
        Some(addr) => match serve_metrics(addr).await {
            Ok(server) => Some(server),
            Err(error) => {
                console.println(format!(
                    "event-batcher: error: {}",
                    one_line(&error.to_string())
                ));
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    if let Some(server) = &metrics {
        console.println(format!(
            "event-batcher: metrics at http://{}/metrics",
            server.local_addr()
        ));
    }
    let cancel = CancellationToken::new();
    let stop = CancellationToken::new();
    let graceful = matches!(config.source, SourceSpec::Nats(_));
    // Installed before the run starts, so that no signal takes the default action.
    let signals = match Signals::new() {
        Ok(signals) => Some(tokio::spawn(signals.watch(
            stop.clone(),
            cancel.clone(),
            graceful,
            console.clone(),
        ))),
        Err(error) => {
            console.println(format!(
                "event-batcher: warning: cannot watch signals: {error}"
            ));
            None
        }
    };
    let mut pipeline = Pipeline::new(config)
        .cancellation(cancel)
        .stop(stop)
        .console(console.clone());
    if let Some(server) = &metrics {
        pipeline = pipeline.metrics(server.handle());
    }
    let result = pipeline.run().await;
    if let Some(signals) = signals {
        signals.abort();
    }
    let summary = match result {
        Ok(summary) => summary,
        Err(error) => {
            // One line, whatever a path or URL in it holds.
            console.println(format!(
                "event-batcher: error: {}",
                one_line(&error.to_string())
            ));
            return ExitCode::from(2);
        }
    };
    // A closed stdout (e.g. piped into `head`) must not turn a run into a panic.
    let _ = write!(std::io::stdout().lock(), "{summary}");
    let error = match &summary.outcome {
        Outcome::Stopped {
            cause, rollback, ..
        } => Some(format!("run stopped: {cause}; {rollback}")),
        Outcome::Cancelled { rollback, .. } => Some(format!("interrupted; {rollback}")),
        Outcome::Finished if !summary.check.holds => Some(format!(
            "consistency check failed: {}",
            summary.check.detail
        )),
        Outcome::Finished => None,
    };
    if let Some(error) = error {
        console.println(format!("event-batcher: error: {}", one_line(&error)));
    }
    if let (Some(_server), Some(linger)) = (&metrics, linger) {
        linger_until_signal(linger).await;
    }
    ExitCode::from(summary.exit_code())
}

/// The metrics server of `--metrics ADDR`, listening.
async fn serve_metrics(addr: &str) -> Result<MetricsServer, MetricsError> {
    MetricsServer::bind(metrics::parse_addr(addr)?).await
}

/// Waits `linger` (`--metrics-linger`), or until SIGINT or SIGTERM.
async fn linger_until_signal(linger: std::time::Duration) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    tokio::select! {
        _ = tokio::time::sleep(linger) => {}
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
}
