//! From flags to the pipeline's validated configuration (the flags are [`super::args`]; the
//! result is a [`Config`] that passed [`Config::check`]).

use crate::pipeline::{Config, ConfigError, Faults, OnFailure, RollbackSettings, WriteRetry};
use crate::report::ProgressMode;
use crate::source::nats::NatsOptions;
use crate::source::{Input, SourceSpec, SyntheticSpec};

use super::args::{OnFailureArg, ProgressArg, RunArgs};

/// Instances `--max-ack-pending` is sized for by default (see
/// [`NatsOptions::for_pipeline`]).
pub const DEFAULT_INSTANCES: usize = 4;

impl From<OnFailureArg> for OnFailure {
    fn from(arg: OnFailureArg) -> Self {
        match arg {
            OnFailureArg::Stop => OnFailure::Stop,
            OnFailureArg::SkipBatch => OnFailure::SkipBatch,
        }
    }
}

impl From<ProgressArg> for ProgressMode {
    fn from(arg: ProgressArg) -> Self {
        match arg {
            ProgressArg::Auto => ProgressMode::Auto,
            ProgressArg::Bar => ProgressMode::Bar,
            ProgressArg::Plain => ProgressMode::Plain,
            ProgressArg::None => ProgressMode::None,
        }
    }
}

impl RunArgs {
    /// The pipeline configuration these options describe, checked ([`Config::check`]).
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let max_batch = usize::try_from(self.max_batch).unwrap_or(usize::MAX);
        // NATS-only limits are refused without NATS rather than ignored (clap's `requires`
        // is not enough when `--source` is absent from the command line).
        if self.source.is_none() {
            if self.max_events.is_some() {
                return Err(ConfigError(
                    "--max-events needs --source (a NATS source); use --events for the \
                     synthetic source"
                        .into(),
                ));
            }
            if self.idle_exit.is_some() {
                return Err(ConfigError(
                    "--idle-exit needs --source (a NATS source)".into(),
                ));
            }
        }
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
        let config = Config {
            source,
            database: self.database,
            table: self.table,
            max_batch,
            flush_every: self.flush_every,
            max_batch_bytes: self
                .max_batch_bytes
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            per_tenant: self.per_tenant,
            max_open_tenants: self
                .max_open_tenants
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            concurrency: usize::try_from(self.concurrency).unwrap_or(usize::MAX),
            write_retry: WriteRetry {
                retries: self.write_retries,
                backoff: self.write_backoff,
                ..WriteRetry::default()
            },
            on_failure: self.on_failure.into(),
            rollback: RollbackSettings {
                attempts: self.rollback_attempts,
                backoff: self.rollback_backoff,
                attempt_timeout: self.rollback_timeout,
                ..RollbackSettings::default()
            },
            faults: Faults {
                fail_every: self.fail_every,
                fail_rate: self.fail_rate,
                fail_attempts: self.fail_attempts,
                fail_rollback_attempts: self.fail_rollback_attempts,
                seed: self.seed,
                hang_at_batch: self.hang_at_batch,
                freeze_at_batch: self.freeze_at_batch,
            },
            strict: self.strict,
            rejects: self.rejects,
            dead_letter: self.dead_letter,
            max_deliveries: self.max_deliveries,
            progress: if self.quiet {
                ProgressMode::None
            } else {
                self.progress.into()
            },
            connect_timeout: self.connect_timeout,
            database_outage: self.database_outage,
        };
        config.check()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::*;
    use crate::cli::args::{Cli, Command, parse_duration};

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("3").unwrap_err().contains("3s"));
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
        assert_eq!(cli.run.into_config().unwrap(), Config::default());
    }

    #[test]
    fn run_is_an_optional_subcommand() {
        let cli = Cli::try_parse_from(["event-batcher", "run", "--events", "7"]).unwrap();
        let Some(Command::Run(args)) = cli.command else {
            panic!("expected the run subcommand");
        };
        let SourceSpec::Synthetic(spec) = args.into_config().unwrap().source else {
            panic!("expected a synthetic source");
        };
        assert_eq!(spec.events, 7);
    }

    #[test]
    fn input_selects_ndjson_and_conflicts_with_synthetic_options() {
        let cli = Cli::try_parse_from(["event-batcher", "--input", "-"]).unwrap();
        assert_eq!(
            cli.run.into_config().unwrap().source,
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
        let SourceSpec::Nats(options) = cli.run.into_config().unwrap().source else {
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
        assert!(
            Cli::try_parse_from(["event-batcher", "--max-events", "3"])
                .map_err(|e| e.to_string())
                .and_then(|cli| cli.run.into_config().map_err(|e| e.to_string()))
                .is_err()
        );
        let cli = Cli::try_parse_from(["event-batcher", "publish", "--events", "5"]).unwrap();
        let Some(Command::Publish(args)) = cli.command else {
            panic!("expected the publish subcommand");
        };
        assert_eq!((args.events, args.malformed), (5, 0));
    }

    #[test]
    fn batching_concurrency_and_retry_flags_map_to_the_config() {
        let cli = Cli::try_parse_from([
            "event-batcher",
            "--max-batch-bytes",
            "65536",
            "--per-tenant",
            "--max-open-tenants",
            "16",
            "--concurrency",
            "4",
            "--write-retries",
            "3",
            "--write-backoff",
            "250ms",
            "--fail-every",
            "2",
            "--fail-attempts",
            "1",
        ])
        .unwrap();
        let config = cli.run.into_config().unwrap();
        assert_eq!(config.max_batch_bytes, Some(65_536));
        assert!(config.per_tenant);
        assert_eq!(config.max_open_tenants, Some(16));
        assert_eq!(config.concurrency, 4);
        assert_eq!(config.write_retry.retries, 3);
        assert_eq!(config.write_retry.backoff, Duration::from_millis(250));
        let policy = config.write_retry.policy().unwrap();
        assert_eq!(policy.max_attempts(), 4);
        assert_eq!(config.faults.fail_attempts, Some(1));
        // No retries: no policy, so `for_each_compensated` gets no `.retry`.
        assert!(Config::default().write_retry.policy().is_none());
        // --max-open-tenants needs --per-tenant.
        assert!(Cli::try_parse_from(["event-batcher", "--max-open-tenants", "2"]).is_err());
        assert!(Cli::try_parse_from(["event-batcher", "--concurrency", "0"]).is_err());
    }

    #[test]
    fn quiet_disables_progress() {
        let cli = Cli::try_parse_from(["event-batcher", "-q"]).unwrap();
        assert_eq!(cli.run.into_config().unwrap().progress, ProgressMode::None);
    }
}
