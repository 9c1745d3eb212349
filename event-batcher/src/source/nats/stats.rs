//! What one NATS source did with its messages: live counters and their snapshot.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::mutex::lock;

/// Counters for the summary (relaxed atomics).
#[derive(Debug, Default)]
pub(crate) struct SourceStats {
    pub(crate) received: AtomicU64,
    pub(crate) redelivered: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) nacked: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) dropped_nacked: AtomicU64,
    pub(crate) abandoned: AtomicU64,
    pub(crate) progress_sent: AtomicU64,
    pub(crate) send_failures: AtomicU64,
    pub(crate) progress_failures: AtomicU64,
    pub(crate) broker_errors: AtomicU64,
    pub(crate) ended: Mutex<Option<SourceEnd>>,
    /// What the pipeline did with each event (a message may carry several).
    pub(crate) events: EventCounters,
}

/// The live counters of one source, read while it runs (`--metrics`). Cheap to clone.
#[derive(Debug, Clone)]
pub struct NatsCounters(pub(crate) Arc<SourceStats>);

impl NatsCounters {
    /// The counters now.
    pub fn snapshot(&self) -> NatsStats {
        self.0.snapshot()
    }
}

/// Live per-event counters (relaxed atomics).
#[derive(Debug, Default)]
pub(crate) struct EventCounters {
    pub(crate) received: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) nacked: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) given_back: AtomicU64,
    pub(crate) abandoned: AtomicU64,
}

/// What the pipeline did with the events of the messages (one event per message, or one
/// per line of an NDJSON message): the hooks it called, whatever verdict each message got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventCounts {
    /// Events handed to the pipeline (redeliveries included).
    pub received: u64,
    /// Acknowledged after their batch committed.
    pub acked: u64,
    /// Negatively acknowledged after their batch was rolled back.
    pub nacked: u64,
    /// Rejected as invalid.
    pub rejected: u64,
    /// Given up after `--max-deliveries` (written to the dead-letter file).
    pub dead_lettered: u64,
    /// Dropped without a verdict (cancellation, shutdown).
    pub given_back: u64,
    /// Left without a verdict on purpose (rows of a rolled-back batch not deleted).
    pub abandoned: u64,
}

impl EventCounts {
    /// Events that got a verdict from the pipeline (or were dropped): every event received
    /// was settled once when this equals `received`.
    pub fn settled(&self) -> u64 {
        self.acked
            + self.nacked
            + self.rejected
            + self.dead_lettered
            + self.given_back
            + self.abandoned
    }
}

impl fmt::Display for EventCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} received; {} acked, {} nak'ed after rollback, {} rejected, {} dead-lettered, \
             {} given back unsettled, {} left for redelivery",
            self.received,
            self.acked,
            self.nacked,
            self.rejected,
            self.dead_lettered,
            self.given_back,
            self.abandoned
        )
    }
}

/// What one instance did with its messages. The verdict counts are of messages (one verdict
/// per message, sent once every event in it is settled); [`events`](Self::events) counts
/// events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NatsStats {
    /// Messages received (redeliveries included).
    pub received: u64,
    /// Of those, deliveries with attempt > 1.
    pub redelivered: u64,
    /// `+ACK` sent (after commit).
    pub acked: u64,
    /// `-NAK` with delay sent (after rollback).
    pub nacked: u64,
    /// `+TERM` sent (invalid payload).
    pub rejected: u64,
    /// `+TERM` sent for messages of a rolled-back batch delivered `--max-deliveries` times
    /// (their events went to the dead-letter file first).
    pub dead_lettered: u64,
    /// `-NAK` without delay for messages given back unsettled (cancellation, shutdown).
    pub dropped_nacked: u64,
    /// Messages left without a verdict on purpose (a rolled-back batch whose rows could not
    /// be deleted): the broker redelivers them after `ack_wait`.
    pub abandoned: u64,
    /// `+WPI` keep-alives sent.
    pub progress_sent: u64,
    /// Acks/naks/terms that could not be sent (the broker redelivers those messages).
    pub send_failures: u64,
    /// `+WPI` keep-alives that could not be sent.
    pub progress_failures: u64,
    /// Failed pull requests (retried).
    pub broker_errors: u64,
    /// Why the record stream ended, if it ended by itself (stop, idle, message limit).
    pub ended: Option<SourceEnd>,
    /// The events of those messages.
    pub events: EventCounts,
}

impl NatsStats {
    /// Verdicts sent: every message received got exactly one when this equals `received`.
    pub fn settled(&self) -> u64 {
        self.acked
            + self.nacked
            + self.rejected
            + self.dead_lettered
            + self.dropped_nacked
            + self.abandoned
            + self.send_failures
    }
}

/// Why a NATS record stream ended by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceEnd {
    /// The stop token of [`NatsSource::records`](super::NatsSource::records) was cancelled (SIGINT/SIGTERM).
    Stopped,
    /// No message arrived for [`NatsOptions::idle_exit`](super::NatsOptions::idle_exit).
    Idle(Duration),
    /// [`NatsOptions::max_messages`](super::NatsOptions::max_messages) messages were received.
    MaxMessages(u64),
}

impl fmt::Display for SourceEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceEnd::Stopped => {
                f.write_str("stop requested: stopped pulling, finished the batch in flight")
            }
            SourceEnd::Idle(idle) => write!(f, "no message for {idle:?} (--idle-exit)"),
            SourceEnd::MaxMessages(n) => write!(f, "{n} messages received (--max-events)"),
        }
    }
}

impl SourceStats {
    pub(crate) fn snapshot(&self) -> NatsStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NatsStats {
            received: g(&self.received),
            redelivered: g(&self.redelivered),
            acked: g(&self.acked),
            nacked: g(&self.nacked),
            rejected: g(&self.rejected),
            dead_lettered: g(&self.dead_lettered),
            dropped_nacked: g(&self.dropped_nacked),
            abandoned: g(&self.abandoned),
            progress_sent: g(&self.progress_sent),
            send_failures: g(&self.send_failures),
            progress_failures: g(&self.progress_failures),
            broker_errors: g(&self.broker_errors),
            ended: *lock(&self.ended),
            events: EventCounts {
                received: g(&self.events.received),
                acked: g(&self.events.acked),
                nacked: g(&self.events.nacked),
                rejected: g(&self.events.rejected),
                dead_lettered: g(&self.events.dead_lettered),
                given_back: g(&self.events.given_back),
                abandoned: g(&self.events.abandoned),
            },
        }
    }
}

impl fmt::Display for NatsStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} received ({} redelivered); verdicts: {} acked, {} nak'ed after rollback, \
             {} rejected, {} dead-lettered, {} given back unsettled, {} left for redelivery, \
             {} not sent; {} keep-alives ({} not sent), {} failed pulls",
            self.received,
            self.redelivered,
            self.acked,
            self.nacked,
            self.rejected,
            self.dead_lettered,
            self.dropped_nacked,
            self.abandoned,
            self.send_failures,
            self.progress_sent,
            self.progress_failures,
            self.broker_errors
        )
    }
}
