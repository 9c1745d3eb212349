//! What a NATS source connects to, and how it sizes its prefetch and keep-alive.

use std::time::Duration;

/// Everything needed to reach the stream and the durable pull consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct NatsOptions {
    /// `nats://HOST:PORT` (also `HOST:PORT`, `tls://…`).
    pub url: String,
    /// JetStream stream name (created with file storage if missing).
    pub stream: String,
    /// Subject the stream captures and the consumer filters on (e.g. `events.ingest`).
    pub subject: String,
    /// Durable consumer name, shared by every instance that should split the work.
    pub consumer: String,
    /// Time the broker waits for a verdict before redelivering. Only applied when the consumer
    /// is created (an existing consumer keeps its own).
    pub ack_wait: Duration,
    /// Consumer-wide cap on delivered-but-unsettled messages (creation only). See the module
    /// docs.
    pub max_ack_pending: i64,
    /// Max delivery attempts per message, `-1` = unlimited (creation only). With a finite value
    /// the broker silently drops a message after that many failed batches: bound deliveries
    /// with the pipeline's `--max-deliveries` instead, which dead-letters the event first.
    pub max_deliver: i64,
    /// Messages per pull request = the most this instance prefetches. Best: the batch size.
    pub pull_batch: usize,
    /// Pull request expiry: an idle instance re-pulls this often; a request lost in a broker
    /// restart is noticed after this + 5 s.
    pub pull_expires: Duration,
    /// Longest wait, at a graceful stop of [`NatsSource::records`](super::NatsSource::records) (the stop token or
    /// [`max_messages`](Self::max_messages); not [`idle_exit`](Self::idle_exit), which ends at
    /// once), for the open pull request to complete or expire (never less than `pull_expires` + 1 s is used). The request is
    /// waited for, not abandoned at a lull: the broker may still be holding part of it back
    /// (`max_ack_pending`) until the batch in flight is acknowledged, and what it delivers to
    /// an abandoned request waits for `ack_wait`.
    pub drain_timeout: Duration,
    /// Delay of the `-NAK` sent for the messages of a rolled-back batch.
    pub nak_delay: Duration,
    /// `+WPI` interval for held messages; `None` = `ack_wait / 3`; `Some(ZERO)` disables it.
    pub progress_every: Option<Duration>,
    /// Timeout of JetStream API requests and publish acks.
    pub request_timeout: Duration,
    /// TCP connect timeout of the initial connection.
    pub connect_timeout: Duration,
    /// End the record stream gracefully (as if stopped) once it has waited this long for a
    /// message without receiving one while holding none (`--idle-exit`): time spent filling
    /// or writing a batch does not count. Make it longer than [`nak_delay`](Self::nak_delay),
    /// so that the messages of a batch rolled back last come back before the stream ends.
    /// The stream then ends at once (the open request, idle all that time, is dropped, not
    /// waited for).
    pub idle_exit: Option<Duration>,
    /// End the record stream gracefully after this many messages (`--max-events`); pull
    /// requests never ask for more than what is left.
    pub max_messages: Option<u64>,
}

impl NatsOptions {
    /// Defaults: ack_wait 30 s, max_ack_pending 20,000, unlimited deliveries, pulls of 500
    /// expiring after 5 s, nak delay 1 s, keep-alive every ack_wait / 3.
    pub fn new(
        url: impl Into<String>,
        stream: impl Into<String>,
        subject: impl Into<String>,
        consumer: impl Into<String>,
    ) -> Self {
        Self {
            url: url.into(),
            stream: stream.into(),
            subject: subject.into(),
            consumer: consumer.into(),
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 20_000,
            max_deliver: -1,
            pull_batch: 500,
            pull_expires: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(7),
            nak_delay: Duration::from_secs(1),
            progress_every: None,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            idle_exit: None,
            max_messages: None,
        }
    }

    /// Sizes prefetch and `max_ack_pending` for batches of `batch_size` and up to `instances`
    /// processes sharing the consumer: each may hold a batch being written, a batch filling in
    /// the chunker, one pull batch of prefetch and a nak'ed batch waiting for its delay;
    /// doubled for headroom.
    pub fn for_pipeline(mut self, batch_size: usize, instances: usize) -> Self {
        self.pull_batch = batch_size.max(1);
        let per_instance = 3 * batch_size + self.pull_batch;
        self.max_ack_pending = (2 * instances.max(1) * per_instance).max(1_000) as i64;
        self
    }

    pub(crate) fn progress_interval(&self) -> Option<Duration> {
        let every = self.progress_every.unwrap_or(self.ack_wait / 3);
        (!every.is_zero()).then_some(every)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_sizing() {
        let o = NatsOptions::new("nats://x:1", "s", "e", "c").for_pipeline(500, 3);
        assert_eq!(o.pull_batch, 500);
        assert!(o.max_ack_pending >= 3 * (3 * 500 + 500));
        assert_eq!(o.progress_interval(), Some(Duration::from_secs(10)));
        let off = NatsOptions {
            progress_every: Some(Duration::ZERO),
            ..o
        };
        assert_eq!(off.progress_interval(), None);
    }
}
