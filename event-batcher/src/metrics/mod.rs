//! `--metrics ADDR`: the run's counters in the Prometheus text format at
//! `http://ADDR/metrics`, for the life of the run.
//!
//! # Rules
//!
//! - The metrics are not a second set of counters: each scrape encodes the very counters
//!   the summary is made of (and the NATS source's own), so a scrape taken once the run has
//!   ended agrees exactly with the summary, whether the run finished, stopped on a failure
//!   or was interrupted. Nothing is done per event for them; a scrape costs one encoding of
//!   about fifty lines, and the pipeline never waits for a scraper (see [`MetricsServer`]
//!   for the limits that keep a client that never reads, or never sends, from costing more
//!   than a task).
//! - The address is parsed ([`parse_addr`]) and listened on before the run starts: an
//!   address that does not parse or cannot be listened on (a port in use) is a
//!   [`MetricsError`], and the CLI exits with code 2 before anything is written.
//! - The endpoint serves zeros until the pipeline attaches its counters, then the run's
//!   values; `--metrics-linger DURATION` keeps it up that long after the summary (SIGINT
//!   or SIGTERM ends the wait), so the final values can be scraped.
//!
//! # The metrics
//!
//! | metric | type | what it counts |
//! | --- | --- | --- |
//! | `event_batcher_events_read_total` | counter | records read, valid or not |
//! | `event_batcher_events_invalid_total` | counter | records rejected by validation |
//! | `event_batcher_events_acknowledged_total` | counter | events in committed batches |
//! | `event_batcher_events_rolled_back_total` | counter | events in rolled-back batches |
//! | `event_batcher_events_dead_lettered_total` | counter | events given up after `--max-deliveries` |
//! | `event_batcher_batches_total{reason}` | counter | committed batches by why they closed: `size`, `weight`, `deadline`, `end`, `eviction`, `error` |
//! | `event_batcher_batch_rollbacks_total{outcome}` | counter | rolled-back batches: `complete`, `incomplete` |
//! | `event_batcher_write_retries_total` | counter | batch write attempts after the first |
//! | `event_batcher_batches_in_flight` | gauge | batches being written now |
//! | `event_batcher_batch_write_seconds` | histogram | each batch write attempt that ended |
//! | `event_batcher_batch_age_seconds` | histogram | each committed batch, first event to flush |
//! | `event_batcher_nats_messages_received_total` | counter | NATS messages received, redeliveries included |
//! | `event_batcher_nats_redeliveries_total` | counter | of those, messages delivered before |
//! | `event_batcher_nats_messages_total{outcome}` | counter | verdicts: `acked`, `nacked`, `terminated`, `dead_lettered`, `given_back`, `abandoned`, `unsent` |
//! | `event_batcher_nats_pull_failures_total` | counter | failed pull requests (retried) |
//!
//! The `nats` metrics exist in a NATS run only. The summary's lines map one to one:
//! `events read`, `invalid lines`, `events acknowledged`, `batches written (size …)`,
//! `write retries`, `batches rolled back (N events)`, `NATS messages`.
//!
//! # Why `prometheus-client` and a hand-written responder
//!
//! `prometheus-client` (the Prometheus project's own Rust client) encodes the text format
//! from a [`Collector`](prometheus_client::collector::Collector) called on each scrape,
//! which is what "the summary's own counters" needs, and it adds four small crates (no
//! HTTP stack). `metrics` + `metrics-exporter-prometheus` would keep a second registry fed
//! by a call per increment, and its exporter brings `hyper` and its tree: several times
//! the compile time on a two-core machine, for a server that answers one fixed request.

mod collector;
mod config;
mod server;

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;

use crate::mutex::lock;
use crate::report::stats::Stats;
use crate::source::nats::NatsCounters;
use collector::{RunCounters, Scrape};

pub use config::{MetricsError, parse_addr};
pub use server::{CONNECTION_TIMEOUT, MAX_CONNECTIONS, MetricsServer};

/// What the endpoint serves: the counters of one run. Cheap to clone; give it to
/// [`Pipeline::metrics`](crate::Pipeline::metrics), which attaches the run's counters when
/// the run starts.
#[derive(Debug, Clone)]
pub struct MetricsHandle {
    run: Arc<Mutex<RunCounters>>,
    registry: Arc<Registry>,
}

impl Default for MetricsHandle {
    fn default() -> Self {
        let run = Arc::new(Mutex::new(RunCounters::default()));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape(run.clone())));
        Self {
            run,
            registry: Arc::new(registry),
        }
    }
}

impl MetricsHandle {
    /// A handle serving zeros until a pipeline attaches its counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `stats` (and `nats`, for a NATS run) from now on.
    pub(crate) fn attach(&self, stats: Arc<Stats>, nats: Option<NatsCounters>) {
        *lock(&self.run) = RunCounters { stats, nats };
    }

    /// The metrics now, in the Prometheus text format (what a scrape returns).
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(4096);
        // Writing to a `String` cannot fail, and the collector reports no error of its own.
        let _ = prometheus_text::encode(&mut text, &self.registry);
        text
    }
}
