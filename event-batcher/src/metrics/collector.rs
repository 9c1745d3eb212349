//! The metrics, encoded at scrape time from the run's own counters.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::mutex::lock;
use crate::report::histogram::HistogramSnapshot;
use crate::report::stats::Stats;
use crate::source::nats::NatsCounters;

/// The counters of the run being served: empty ones until a pipeline attaches its own.
#[derive(Debug, Default)]
pub(super) struct RunCounters {
    pub(super) stats: Arc<Stats>,
    pub(super) nats: Option<NatsCounters>,
}

/// Reads [`RunCounters`] on every scrape; registered once in the handle's registry.
#[derive(Debug)]
pub(super) struct Scrape(pub(super) Arc<Mutex<RunCounters>>);

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        // The lock is held only to clone two handles: a scrape never holds up the run's
        // own locks longer than a copy of its counters takes.
        let (stats, nats) = {
            let run = lock(&self.0);
            (run.stats.clone(), run.nats.clone())
        };
        let e = &mut encoder;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let (flush, events_rolled_back) = {
            let detail = stats.detail();
            (detail.flush, detail.events_rolled_back)
        };
        let rolled_back = load(&stats.rolled_back);
        let incomplete = load(&stats.rolled_back_incomplete);

        counter(
            e,
            "event_batcher_events_read",
            "Records read from the source, valid or not.",
            load(&stats.read),
        )?;
        counter(
            e,
            "event_batcher_events_invalid",
            "Records rejected by validation.",
            load(&stats.invalid),
        )?;
        counter(
            e,
            "event_batcher_events_acknowledged",
            "Events in committed batches.",
            load(&stats.acknowledged),
        )?;
        counter(
            e,
            "event_batcher_events_rolled_back",
            "Events in rolled-back batches.",
            events_rolled_back,
        )?;
        counter(
            e,
            "event_batcher_events_dead_lettered",
            "Events given up after --max-deliveries and written to the dead-letter file.",
            load(&stats.dead_lettered),
        )?;
        counters(
            e,
            "event_batcher_batches",
            "Batches committed, by why they closed.",
            "reason",
            &[
                ("size", flush.size),
                ("weight", flush.weight),
                ("deadline", flush.deadline),
                ("end", flush.end),
                ("eviction", flush.eviction),
                ("error", flush.before_error),
            ],
        )?;
        counters(
            e,
            "event_batcher_batch_rollbacks",
            "Batches rolled back, by whether every compensation succeeded.",
            "outcome",
            &[
                ("complete", rolled_back.saturating_sub(incomplete)),
                ("incomplete", incomplete),
            ],
        )?;
        counter(
            e,
            "event_batcher_write_retries",
            "Batch write attempts after the first (--write-retries).",
            load(&stats.retried),
        )?;
        let metric = e.encode_descriptor(
            "event_batcher_batches_in_flight",
            "Batches being written now.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(load(&stats.in_flight) as i64).encode(metric)?;
        histogram(
            e,
            "event_batcher_batch_write_seconds",
            "Duration of each batch write attempt that ended, committed or failed.",
            &stats.write_seconds.snapshot(),
        )?;
        histogram(
            e,
            "event_batcher_batch_age_seconds",
            "Age of each committed batch, from its first event to its flush.",
            &stats.batch_age.snapshot(),
        )?;

        let Some(nats) = nats else { return Ok(()) };
        let nats = nats.snapshot();
        counter(
            e,
            "event_batcher_nats_messages_received",
            "NATS messages received, redeliveries included.",
            nats.received,
        )?;
        counter(
            e,
            "event_batcher_nats_redeliveries",
            "NATS messages received that had been delivered before.",
            nats.redelivered,
        )?;
        counters(
            e,
            "event_batcher_nats_messages",
            "NATS messages settled, by verdict.",
            "outcome",
            &[
                ("acked", nats.acked),
                ("nacked", nats.nacked),
                ("terminated", nats.rejected),
                ("dead_lettered", nats.dead_lettered),
                ("given_back", nats.dropped_nacked),
                ("abandoned", nats.abandoned),
                ("unsent", nats.send_failures),
            ],
        )?;
        counter(
            e,
            "event_batcher_nats_pull_failures",
            "Failed NATS pull requests (retried).",
            nats.broker_errors,
        )
    }
}

/// A counter (the encoder adds `_total` to `name`).
fn counter(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

/// A counter with one label, one sample per `(label value, count)`.
fn counters(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, u64)],
) -> fmt::Result {
    let mut metric = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value_label, value) in values {
        let labels = [(label, *value_label)];
        ConstCounter::new(*value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn histogram(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    snapshot: &HistogramSnapshot,
) -> fmt::Result {
    let mut metric = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    metric.encode_histogram::<NoLabelSet>(snapshot.sum, snapshot.count, &snapshot.buckets, None)
}
