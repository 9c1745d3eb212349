//! NATS JetStream source (`--source nats://HOST:PORT --stream S --subject E --consumer C`):
//! a durable pull consumer shared by any number of instances, turned into the pipeline's
//! [`RecordStream`], with **ack after commit** and **nak after rollback**.
//!
//! # Delivery contract
//!
//! * Each message becomes one [`Record`]: position `Sequence(stream sequence)`, body
//!   `Json(payload)`, and a [`NatsAck`] hook. The pipeline validates the payload like an NDJSON
//!   line, then settles the hook exactly once:
//!   - `ack` (`+ACK`) after the record's batch has committed;
//!   - `nak` (`-NAK {"delay":…}`, [`NatsOptions::nak_delay`]) after it was rolled back: the
//!     broker redelivers it, to this or another instance, after the delay;
//!   - `reject` (`+TERM`) when the payload is invalid: never redelivered (poison message).
//! * A hook dropped without a verdict (the batch in flight or the chunker's partial batch
//!   dropped at cancellation, a panic) sends `-NAK` with no delay: the message is available again
//!   at once instead of after `ack_wait`.
//! * Every message is delivered at least once. A message that is never settled (process killed)
//!   is redelivered once `ack_wait` has passed. With idempotent writes (`ON CONFLICT (id) DO
//!   NOTHING`) that is one row per event. Redeliveries can carry delivery count 1 again after a
//!   broker crash (measured): never use the count for deduplication.
//! * Acks are sent in the background, in order, by one task per source: `ack()` returns once the
//!   ack is queued, not once the server has it. An ack that gets lost only causes a redelivery.
//!   [`NatsSource::close`] waits for the queue and flushes the connection.
//!
//! # Keep-alive (why `ack_wait` can be short)
//!
//! While this instance holds a message (delivered, not yet settled) it sends `+WPI` (in
//! progress) for it every [`NatsOptions::progress_every`] (default `ack_wait / 3`), which restarts
//! the broker's `ack_wait` timer. So a message is redelivered elsewhere only when its holder is
//! dead or frozen, never because it waited for the flush interval or a slow write. Without this,
//! `ack_wait < flush-every + write time` makes the broker redeliver messages of a batch that is
//! still being written — the same event twice in one batch (measured) — and, combined with a
//! rollback, can lose an event: instance B finds the row that A's in-flight batch inserted, skips
//! it as present and acks the message; A's batch then rolls back, deletes the row and naks a
//! message that is already acked.
//!
//! # Sizing
//!
//! `max_ack_pending` is **per consumer, shared by all instances**: every delivered but unsettled
//! message counts (prefetch, the batch being written, nak'ed messages during their delay). Below
//! the batch size the broker stops delivering and every batch waits for the flush deadline
//! (measured: one 50-event batch per flush interval with 50 < 100). [`NatsOptions::for_pipeline`]
//! computes a safe value.
//!
//! # Pulling
//!
//! One pull request at a time (`consumer.batch()`, [`NatsOptions::pull_batch`] messages,
//! [`NatsOptions::pull_expires`]), the next one only when the pipeline asks for more: an instance
//! prefetches at most one pull batch, pulls nothing while it writes (fair sharing), and on
//! shutdown knows every message it was sent. async-nats' continuous `consumer.stream()` was
//! measured to strand up to a whole pull batch (delivered to the client, never seen) until
//! `ack_wait` when dropped.
//!
//! # Shutdown
//!
//! * The pipeline cancels (`with_cancellation`): the batch in flight is rolled back (its nak
//!   compensation runs), the chunker's records are dropped (their hooks nak), the stream is
//!   dropped and naks what its open pull request had already delivered. Call
//!   [`NatsSource::close`] before printing the summary and exiting.
//! * Alternatively give the token to [`NatsSource::records`] and not to the pipeline: the stream
//!   then stops pulling, naks the rest of its open pull request (waiting until the request
//!   completes or expires, at most [`NatsOptions::drain_timeout`]) and ends, so the
//!   pipeline flushes, commits and acks its last batch ("finish the batch in flight").
//!   [`NatsOptions::max_messages`] ends the stream the same way.
//! * [`NatsOptions::idle_exit`] ends the stream at once instead: the open request has
//!   delivered nothing for the whole idle period and nothing is held, so what already arrived
//!   (normally nothing) is given back and the request dropped. Waiting for it would add up
//!   to `pull_expires` + 1 s and make the idle instance catch, and hand back, other
//!   instances' nak'ed redeliveries. A message the broker sends in the instant the request
//!   is dropped waits for `ack_wait`.
//! * Only messages on the wire at the moment of a hard stop wait for `ack_wait`.
//!
//! # Errors
//!
//! Setup problems are [`NatsError`]s with one-line messages (bad URL, unreachable server, stream
//! capturing other subjects, ...). During the run, a pull request that fails (server restarting,
//! connection lost) is retried after 1 s and only counted; the client reconnects by itself. A
//! fatal error (consumer or stream deleted) ends the stream with
//! `Err(PipelineError::Source(..))`.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use async_nats::{
    Client, ConnectOptions, ServerAddr, Subject,
    jetstream::{
        self, AckKind,
        consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
        message::PublishMessage,
        stream::{self, StorageType},
    },
};
use futures::{FutureExt, Stream, StreamExt, future::BoxFuture, stream::FuturesUnordered};
use result_stream::BoxError;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::pipeline::PipelineError;
use crate::source::{AckHandle, Position, Record, RecordBody, RecordStream};

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

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
    /// Longest wait, at a graceful stop of [`NatsSource::records`] (the stop token or
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

    fn progress_interval(&self) -> Option<Duration> {
        let every = self.progress_every.unwrap_or(self.ack_wait / 3);
        (!every.is_zero()).then_some(every)
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Setup / publish errors; `Display` is one line, meant for the CLI.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The `--source` value is not a NATS URL.
    #[error("invalid NATS URL {url:?}: {reason} (expected nats://HOST:PORT)")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server cannot be reached (refused, DNS, timeout, TLS, auth).
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect {
        /// The URL.
        url: String,
        /// The client's error.
        reason: String,
    },
    /// The stream cannot be created or read, or captures other subjects.
    #[error("JetStream stream {stream:?}: {reason}")]
    Stream {
        /// The stream name.
        stream: String,
        /// What went wrong (e.g. JetStream not enabled on the server).
        reason: String,
    },
    /// The durable consumer cannot be created or used.
    #[error("JetStream consumer {consumer:?} on stream {stream:?}: {reason}")]
    Consumer {
        /// The stream name.
        stream: String,
        /// The consumer name.
        consumer: String,
        /// What went wrong.
        reason: String,
    },
    /// A publish was not stored (no stream for the subject, timeout, ...).
    #[error("publish to {subject:?} failed: {reason}")]
    Publish {
        /// The subject.
        subject: String,
        /// What went wrong.
        reason: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Connection and topology
// ---------------------------------------------------------------------------------------------

/// Validates the URL and connects once (no retry loop on the initial connect, so a wrong address
/// fails fast). After that the client reconnects by itself, forever.
pub async fn connect(opts: &NatsOptions) -> Result<Client, NatsError> {
    let url = opts.url.trim();
    let invalid = |reason: String| NatsError::InvalidUrl {
        url: url.to_string(),
        reason,
    };
    let addr: ServerAddr = url
        .parse()
        .map_err(|e: std::io::Error| invalid(e.to_string()))?;
    if !matches!(addr.scheme(), "nats" | "tls") {
        return Err(invalid(format!("unsupported scheme {:?}", addr.scheme())));
    }
    if addr.host().is_empty() {
        return Err(invalid("missing host".into()));
    }
    let connecting = ConnectOptions::new()
        .name("event-batcher")
        .connection_timeout(opts.connect_timeout)
        .request_timeout(Some(opts.request_timeout))
        .connect(addr);
    // connection_timeout covers TCP connect; bound the handshake as well.
    match tokio::time::timeout(opts.connect_timeout + Duration::from_secs(1), connecting).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(NatsError::Connect {
            url: url.to_string(),
            reason: one_line(&e),
        }),
        Err(_) => Err(NatsError::Connect {
            url: url.to_string(),
            reason: format!("timed out after {:?}", opts.connect_timeout),
        }),
    }
}

/// A JetStream context whose API requests and publish acks time out after `request_timeout`.
pub fn jetstream_context(client: Client, opts: &NatsOptions) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(opts.request_timeout)
        .build(client)
}

/// Gets the stream or creates it (file storage, capturing `opts.subject`). An existing stream
/// that does not capture the subject is an error (someone else's stream is never changed).
pub async fn ensure_stream(
    js: &jetstream::Context,
    opts: &NatsOptions,
) -> Result<stream::Stream, NatsError> {
    let err = |reason: String| NatsError::Stream {
        stream: opts.stream.clone(),
        reason,
    };
    let mut stream = js
        .get_or_create_stream(stream::Config {
            name: opts.stream.clone(),
            subjects: vec![opts.subject.clone()],
            storage: StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| err(one_line(&e)))?;
    let info = stream.info().await.map_err(|e| err(one_line(&e)))?;
    let subjects = &info.config.subjects;
    if !subjects.iter().any(|s| subject_matches(s, &opts.subject)) {
        return Err(err(format!(
            "exists but captures {subjects:?}, not {:?}",
            opts.subject
        )));
    }
    Ok(stream)
}

/// Gets the durable pull consumer or creates it with explicit acks. An existing consumer keeps
/// its configuration; one that cannot give ack-after-commit (not explicit acks) is an error.
pub async fn ensure_consumer(
    stream: &stream::Stream,
    opts: &NatsOptions,
) -> Result<PullConsumer, NatsError> {
    let err = |reason: String| NatsError::Consumer {
        stream: opts.stream.clone(),
        consumer: opts.consumer.clone(),
        reason,
    };
    let config = pull::Config {
        durable_name: Some(opts.consumer.clone()),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: opts.ack_wait,
        max_deliver: opts.max_deliver,
        max_ack_pending: opts.max_ack_pending,
        filter_subject: opts.subject.clone(),
        ..Default::default()
    };
    let consumer: PullConsumer = stream
        .get_or_create_consumer(&opts.consumer, config)
        .await
        .map_err(|e| err(one_line(&e)))?;
    let cfg = &consumer.cached_info().config;
    if cfg.ack_policy != AckPolicy::Explicit {
        return Err(err(format!(
            "exists with ack policy {:?}; ack-after-commit needs Explicit",
            cfg.ack_policy
        )));
    }
    if !cfg.filter_subject.is_empty() && cfg.filter_subject != opts.subject {
        return Err(err(format!(
            "exists with filter subject {:?}, not {:?}",
            cfg.filter_subject, opts.subject
        )));
    }
    Ok(consumer)
}

/// Settings of an existing consumer that work but are worth a warning in the summary.
pub fn consumer_warnings(consumer: &PullConsumer, opts: &NatsOptions) -> Vec<String> {
    let cfg = &consumer.cached_info().config;
    let mut warnings = Vec::new();
    if cfg.max_ack_pending > 0 && (cfg.max_ack_pending as usize) < opts.pull_batch {
        warnings.push(format!(
            "NATS consumer {:?} allows {} unacknowledged messages, fewer than a batch of {}: \
             batches will only be flushed on the deadline",
            opts.consumer, cfg.max_ack_pending, opts.pull_batch
        ));
    }
    if cfg.ack_wait != opts.ack_wait {
        warnings.push(format!(
            "NATS consumer {:?} already exists with ack wait {:?} (not {:?}); its value applies",
            opts.consumer, cfg.ack_wait, opts.ack_wait
        ));
    }
    if cfg.max_deliver > 0 {
        warnings.push(format!(
            "NATS consumer {:?} drops a message after {} failed deliveries",
            opts.consumer, cfg.max_deliver
        ));
    }
    warnings
}

// ---------------------------------------------------------------------------------------------
// Stats
// ---------------------------------------------------------------------------------------------

/// Counters for the summary (relaxed atomics).
#[derive(Debug, Default)]
struct SourceStats {
    received: AtomicU64,
    redelivered: AtomicU64,
    acked: AtomicU64,
    nacked: AtomicU64,
    rejected: AtomicU64,
    dead_lettered: AtomicU64,
    dropped_nacked: AtomicU64,
    abandoned: AtomicU64,
    progress_sent: AtomicU64,
    send_failures: AtomicU64,
    progress_failures: AtomicU64,
    broker_errors: AtomicU64,
    ended: Mutex<Option<SourceEnd>>,
}

/// What one instance did with its messages.
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
    /// The stop token of [`NatsSource::records`] was cancelled (SIGINT/SIGTERM).
    Stopped,
    /// No message arrived for [`NatsOptions::idle_exit`].
    Idle(Duration),
    /// [`NatsOptions::max_messages`] messages were received.
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
    fn snapshot(&self) -> NatsStats {
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
            ended: *self.ended.lock().unwrap_or_else(|p| p.into_inner()),
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

// ---------------------------------------------------------------------------------------------
// Acknowledgements
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Verdict {
    Ack,
    Nak,
    Reject,
    GiveUp,
    GiveBack,
    Progress,
}

struct Op {
    reply: Subject,
    verdict: Verdict,
}

/// State shared by the stream, the hooks, the keep-alive and the ack task of one source.
struct Shared {
    tx: mpsc::UnboundedSender<Op>,
    /// Messages delivered and not yet settled: token → reply subject (for the keep-alive).
    held: Mutex<HashMap<u64, Subject>>,
    next_token: AtomicU64,
    /// Separate `Arc`: the ack task must not keep a sender (it ends when all senders are gone).
    stats: Arc<SourceStats>,
}

impl Shared {
    fn hold(self: &Arc<Self>, reply: Subject, stream_seq: u64, delivered: i64) -> NatsAck {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        self.held.lock().unwrap().insert(token, reply.clone());
        NatsAck {
            shared: self.clone(),
            token,
            reply: Some(reply),
            stream_seq,
            delivered,
        }
    }

    fn send(&self, reply: Subject, verdict: Verdict) -> Result<(), BoxError> {
        self.tx
            .send(Op { reply, verdict })
            .map_err(|_| BoxError::from("the NATS acknowledgement task has stopped"))
    }
}

/// The acknowledgement hook of one message. Settled once; dropping it unsettled gives the
/// message back to the broker (`-NAK`, no delay).
pub struct NatsAck {
    shared: Arc<Shared>,
    token: u64,
    reply: Option<Subject>,
    /// Stream sequence of the message (stable across redeliveries).
    pub stream_seq: u64,
    /// Delivery attempt (1 for the first delivery).
    pub delivered: i64,
}

impl fmt::Debug for NatsAck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "NatsAck(seq {}, delivery {})",
            self.stream_seq, self.delivered
        )
    }
}

impl NatsAck {
    fn settle(&mut self, verdict: Verdict) -> BoxFuture<'static, Result<(), BoxError>> {
        let result = match self.reply.take() {
            Some(reply) => {
                // Removed and queued under the lock: see `keep_alive`.
                let mut held = self.shared.held.lock().unwrap_or_else(|p| p.into_inner());
                held.remove(&self.token);
                let sent = self.shared.send(reply, verdict);
                drop(held);
                sent
            }
            None => Ok(()),
        };
        futures::future::ready(result).boxed()
    }
}

impl AckHandle for NatsAck {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>> {
        self.settle(Verdict::Ack)
    }
    fn nak(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>> {
        self.settle(Verdict::Nak)
    }
    fn reject(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>> {
        self.settle(Verdict::Reject)
    }
    fn deliveries(&self) -> Option<u64> {
        u64::try_from(self.delivered).ok()
    }
    fn give_up(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>> {
        self.settle(Verdict::GiveUp)
    }
    fn abandon(mut self: Box<Self>) {
        if self.reply.take().is_some() {
            // No verdict and no more keep-alives: the broker redelivers after `ack_wait`.
            let mut held = self.shared.held.lock().unwrap_or_else(|p| p.into_inner());
            held.remove(&self.token);
            drop(held);
            self.shared.stats.abandoned.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for NatsAck {
    fn drop(&mut self) {
        if let Some(reply) = self.reply.take() {
            // Removed and queued under the lock: see `keep_alive`.
            let mut held = self.shared.held.lock().unwrap_or_else(|p| p.into_inner());
            held.remove(&self.token);
            let _ = self.shared.send(reply, Verdict::GiveBack);
        }
    }
}

/// Sends the verdicts in order until every sender is gone, then flushes.
async fn ack_task(
    client: Client,
    mut rx: mpsc::UnboundedReceiver<Op>,
    stats: Arc<SourceStats>,
    nak_delay: Duration,
) {
    let stats = &*stats;
    while let Some(op) = rx.recv().await {
        let (kind, counter) = match op.verdict {
            Verdict::Ack => (AckKind::Ack, &stats.acked),
            Verdict::Nak if nak_delay.is_zero() => (AckKind::Nak(None), &stats.nacked),
            Verdict::Nak => (AckKind::Nak(Some(nak_delay)), &stats.nacked),
            Verdict::Reject => (AckKind::Term, &stats.rejected),
            Verdict::GiveUp => (AckKind::Term, &stats.dead_lettered),
            Verdict::GiveBack => (AckKind::Nak(None), &stats.dropped_nacked),
            Verdict::Progress => (AckKind::Progress, &stats.progress_sent),
        };
        let failures = match op.verdict {
            Verdict::Progress => &stats.progress_failures,
            _ => &stats.send_failures,
        };
        match client.publish(op.reply, kind.into()).await {
            Ok(()) => counter.fetch_add(1, Ordering::Relaxed),
            Err(_) => failures.fetch_add(1, Ordering::Relaxed),
        };
    }
    let _ = client.flush().await;
}

/// Sends `+WPI` for every held message every `every`, until `stop`.
async fn keep_alive(shared: Arc<Shared>, every: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        // Queued while holding the lock: a verdict (settle, drop) removes its message under
        // the same lock before queueing, so a `+WPI` can never be queued after the verdict of
        // its message (a `+WPI` after `-NAK {delay}` would cancel the delay).
        let held = shared.held.lock().unwrap_or_else(|p| p.into_inner());
        for reply in held.values() {
            let _ = shared.send(reply.clone(), Verdict::Progress);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The source
// ---------------------------------------------------------------------------------------------

/// Connection, consumer and acknowledgement machinery of one instance.
pub struct NatsSource {
    client: Client,
    js: jetstream::Context,
    consumer: PullConsumer,
    opts: NatsOptions,
    shared: Arc<Shared>,
    ack_task: tokio::task::JoinHandle<()>,
    /// Stops the keep-alive task when the source is closed or dropped.
    keep_alive: tokio_util::sync::DropGuard,
}

impl fmt::Debug for NatsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSource")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl NatsSource {
    /// Connects, ensures the stream and the durable consumer exist, starts the ack task.
    pub async fn connect(opts: NatsOptions) -> Result<Self, NatsError> {
        let client = connect(&opts).await?;
        let js = jetstream_context(client.clone(), &opts);
        let stream = ensure_stream(&js, &opts).await?;
        let consumer = ensure_consumer(&stream, &opts).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(SourceStats::default());
        let shared = Arc::new(Shared {
            tx,
            held: Mutex::default(),
            next_token: AtomicU64::new(0),
            stats: stats.clone(),
        });
        let ack_task = tokio::spawn(ack_task(client.clone(), rx, stats, opts.nak_delay));
        let keep_alive_stop = CancellationToken::new();
        // The effective ack_wait is the consumer's (it may predate these options).
        let server_ack_wait = consumer.cached_info().config.ack_wait;
        let interval = NatsOptions {
            ack_wait: server_ack_wait,
            ..opts.clone()
        }
        .progress_interval();
        if let Some(every) = interval {
            tokio::spawn(keep_alive(shared.clone(), every, keep_alive_stop.clone()));
        }
        Ok(Self {
            client,
            js,
            consumer,
            opts,
            shared,
            ack_task,
            keep_alive: keep_alive_stop.drop_guard(),
        })
    }

    /// The connection (e.g. to publish on it).
    pub fn client(&self) -> &Client {
        &self.client
    }
    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }
    /// The options the source was opened with.
    pub fn options(&self) -> &NatsOptions {
        &self.opts
    }

    /// Warnings about the existing consumer's settings (see [`consumer_warnings`]).
    pub fn warnings(&self) -> Vec<String> {
        consumer_warnings(&self.consumer, &self.opts)
    }

    /// The consumer's `ack_wait` as the server has it.
    pub fn ack_wait(&self) -> Duration {
        self.consumer.cached_info().config.ack_wait
    }

    /// The consumer's `max_deliver` as the server has it (`-1` or `0`: unlimited).
    pub fn max_deliver(&self) -> i64 {
        self.consumer.cached_info().config.max_deliver
    }

    /// Counters so far.
    pub fn stats(&self) -> NatsStats {
        self.shared.stats.snapshot()
    }

    /// Messages held by this instance right now (delivered, not settled).
    pub fn in_flight(&self) -> usize {
        self.shared.held.lock().unwrap().len()
    }

    /// Consumer state from the server.
    pub async fn consumer_info(&self) -> Result<jetstream::consumer::Info, NatsError> {
        let mut consumer = self.consumer.clone();
        consumer
            .info()
            .await
            .cloned()
            .map_err(|e| NatsError::Consumer {
                stream: self.opts.stream.clone(),
                consumer: self.opts.consumer.clone(),
                reason: one_line(&e),
            })
    }

    /// Messages waiting in the consumer (not yet delivered), e.g. to size a progress bar.
    pub async fn pending(&self) -> Result<u64, NatsError> {
        Ok(self.consumer_info().await?.num_pending)
    }

    /// The records of the consumer. `stop`: see "Shutdown" in the module docs (pass a token
    /// that never fires when the pipeline itself is cancelled).
    pub fn records(&self, stop: CancellationToken) -> RecordStream {
        Records {
            consumer: self.consumer.clone(),
            pull_batch: self.opts.pull_batch.max(1),
            pull_expires: self.opts.pull_expires,
            drain_timeout: self.opts.drain_timeout,
            shared: self.shared.clone(),
            state: PullState::Idle,
            stop: Box::pin(stop.cancelled_owned()),
            draining: None,
            backoff: None,
            done: false,
            idle_exit: self.opts.idle_exit.filter(|idle| !idle.is_zero()),
            idle: None,
            remaining: self.opts.max_messages,
            limit: self.opts.max_messages,
        }
        .boxed()
    }

    /// Stops the keep-alive, waits (up to `request_timeout`) until every hook has been settled
    /// or dropped and every verdict sent, flushes the connection, and makes one request to
    /// the consumer so that the server has read every verdict before the process may exit.
    /// Call it after the pipeline has finished, before printing the summary.
    pub async fn close(self) -> NatsStats {
        let NatsSource {
            client,
            mut consumer,
            shared,
            ack_task,
            opts,
            keep_alive,
            ..
        } = self;
        drop(keep_alive); // cancels the keep-alive task
        let stats = shared.stats.clone();
        drop(shared); // the ack task ends when the last hook and stream are gone
        // On timeout (hooks still alive somewhere) what is queued is still sent by the task.
        let _ = tokio::time::timeout(opts.request_timeout, ack_task).await;
        let _ = tokio::time::timeout(opts.request_timeout, client.flush()).await;
        // `flush` only empties the socket. The server handles one connection's messages in
        // order, so the reply to a request sent after the verdicts means it has read them
        // all: an exit right after cannot reset the connection under unread verdicts.
        let _ = tokio::time::timeout(opts.request_timeout, consumer.info()).await;
        stats.snapshot()
    }
}

// ---------------------------------------------------------------------------------------------
// The record stream
// ---------------------------------------------------------------------------------------------

type BatchFuture = Pin<Box<dyn Future<Output = Result<pull::Batch, pull::BatchError>> + Send>>;

enum PullState {
    Idle,
    Requesting(BatchFuture),
    Receiving(Box<pull::Batch>),
}

/// Pause before the next pull request after a failed one.
const PULL_RETRY: Duration = Duration::from_secs(1);

struct Records {
    consumer: PullConsumer,
    pull_batch: usize,
    pull_expires: Duration,
    drain_timeout: Duration,
    shared: Arc<Shared>,
    state: PullState,
    stop: Pin<Box<WaitForCancellationFutureOwned>>,
    draining: Option<Pin<Box<tokio::time::Sleep>>>,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
    /// `--idle-exit`, and its timer (armed while the stream waits for a message).
    idle_exit: Option<Duration>,
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Messages still allowed (`--max-events`), and the limit.
    remaining: Option<u64>,
    limit: Option<u64>,
}

impl Records {
    fn request(&self) -> BatchFuture {
        let consumer = self.consumer.clone();
        let batch = match self.remaining {
            Some(left) => self
                .pull_batch
                .min(usize::try_from(left).unwrap_or(usize::MAX)),
            None => self.pull_batch,
        };
        let expires = self.pull_expires;
        // No idle heartbeat: async-nats 0.51's `Batch` returns `Pending` without arranging a
        // wake-up after it consumed a heartbeat. A lost request ends at `expires` + 5 s instead.
        Box::pin(async move {
            consumer
                .batch()
                .max_messages(batch)
                .expires(expires)
                .messages()
                .await
        })
    }

    /// Gives a delivered message back (`-NAK`, no delay) without making a record of it.
    fn give_back(&self, msg: &jetstream::Message) {
        if let Some(reply) = msg.reply.clone() {
            let _ = self.shared.send(reply, Verdict::GiveBack);
        }
    }

    /// Stops pulling: the open request is drained (its messages given back), then the stream
    /// ends. The first reason is recorded.
    fn begin_drain(&mut self, reason: SourceEnd) {
        self.shared
            .stats
            .ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(reason);
        let longest = self
            .drain_timeout
            .max(self.pull_expires + Duration::from_secs(1));
        self.draining = Some(Box::pin(tokio::time::sleep(longest)));
        self.backoff = None;
        self.idle = None;
    }

    /// Ends the stream: the open request is dropped (unsubscribed).
    fn finish(&mut self) {
        self.done = true;
        self.drain_ready();
        self.state = PullState::Idle;
    }

    /// Gives back whatever the open request has already delivered to the client.
    fn drain_ready(&mut self) {
        if let PullState::Receiving(batch) = &mut self.state {
            while let Some(Some(item)) = batch.next().now_or_never() {
                if let Ok(msg) = item
                    && let Some(reply) = msg.reply.clone()
                {
                    self.shared.stats.received.fetch_add(1, Ordering::Relaxed);
                    let _ = self.shared.send(reply, Verdict::GiveBack);
                }
            }
        }
    }

    /// A failed pull: retried after a pause unless fatal.
    fn pull_failed(&mut self, reason: String) -> Option<PipelineError> {
        self.shared
            .stats
            .broker_errors
            .fetch_add(1, Ordering::Relaxed);
        self.state = PullState::Idle;
        if self.draining.is_some() {
            self.finish();
            return None;
        }
        let fatal = [
            "Consumer Deleted",
            "consumer not found",
            "stream not found",
            "push based",
        ]
        .iter()
        .any(|m| reason.to_lowercase().contains(&m.to_lowercase()));
        if fatal {
            self.done = true;
            return Some(PipelineError::Source(std::io::Error::other(format!(
                "NATS: {reason}"
            ))));
        }
        eprintln!("event-batcher: NATS pull failed, retrying in {PULL_RETRY:?}: {reason}");
        self.backoff = Some(Box::pin(tokio::time::sleep(PULL_RETRY)));
        None
    }

    fn record(&self, msg: jetstream::Message) -> Option<Record> {
        let reply = msg.reply.clone()?; // not a JetStream delivery: cannot be acked, skip
        let (stream_seq, delivered) = msg
            .info()
            .map(|i| (i.stream_sequence, i.delivered))
            .unwrap_or((0, 1));
        let stats = &self.shared.stats;
        stats.received.fetch_add(1, Ordering::Relaxed);
        if delivered > 1 {
            stats.redelivered.fetch_add(1, Ordering::Relaxed);
        }
        let ack = self.shared.hold(reply, stream_seq, delivered);
        Some(Record {
            position: Position::Sequence(stream_seq),
            body: RecordBody::Json(msg.message.payload.to_vec()),
            ack: Some(Box::new(ack)),
        })
    }
}

impl Drop for Records {
    fn drop(&mut self) {
        // Dropped mid-run (pipeline cancelled): give back what already arrived, so other
        // instances get it now rather than after ack_wait.
        self.drain_ready();
    }
}

impl Stream for Records {
    type Item = Result<Record, PipelineError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match this.poll_inner(cx) {
            Poll::Ready(Some(Ok(record))) => {
                this.idle = None;
                Poll::Ready(Some(Ok(record)))
            }
            Poll::Pending if this.draining.is_none() => {
                // Waiting for the broker with nothing held (every message received is
                // settled): the idle timer runs, from the first such wait, and ends the
                // stream gracefully when it fires. While messages are held (a batch
                // filling up or being written) it does not run: their batch may still be
                // rolled back, and its messages come back after the nak delay.
                let holding = !this.shared.held.lock().unwrap().is_empty();
                if holding {
                    this.idle = None;
                } else if let Some(idle) = this.idle_exit {
                    let timer = this
                        .idle
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                    if timer.as_mut().poll(cx).is_ready() {
                        // Unlike a stop or the message limit, an idle exit does not wait
                        // for the open request: it has delivered nothing for the whole
                        // idle period, and waiting would only catch (and hand back)
                        // other instances' nak'ed redeliveries. What already arrived is
                        // given back and the request dropped.
                        this.begin_drain(SourceEnd::Idle(idle));
                        this.finish();
                        return Poll::Ready(None);
                    }
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl Records {
    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Record, PipelineError>>> {
        let this = self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if this.draining.is_none() && this.stop.as_mut().poll(cx).is_ready() {
                this.begin_drain(SourceEnd::Stopped);
            }
            if this.draining.is_none()
                && let (Some(0), Some(limit)) = (this.remaining, this.limit)
            {
                this.begin_drain(SourceEnd::MaxMessages(limit));
            }
            if let Some(deadline) = this.draining.as_mut()
                && deadline.as_mut().poll(cx).is_ready()
            {
                this.finish();
                continue;
            }
            match &mut this.state {
                PullState::Idle => {
                    if this.draining.is_some() {
                        this.finish();
                        continue;
                    }
                    if let Some(b) = this.backoff.as_mut() {
                        if b.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        this.backoff = None;
                    }
                    this.state = PullState::Requesting(this.request());
                }
                PullState::Requesting(fut) => match fut.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(batch)) => this.state = PullState::Receiving(Box::new(batch)),
                    Poll::Ready(Err(e)) => {
                        if let Some(err) = this.pull_failed(one_line(&e)) {
                            return Poll::Ready(Some(Err(err)));
                        }
                    }
                },
                PullState::Receiving(batch) => match batch.poll_next_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(None) => this.state = PullState::Idle,
                    Poll::Ready(Some(Err(e))) => {
                        if let Some(err) = this.pull_failed(one_line(&*e)) {
                            return Poll::Ready(Some(Err(err)));
                        }
                    }
                    Poll::Ready(Some(Ok(msg))) => {
                        if this.draining.is_some() {
                            this.shared.stats.received.fetch_add(1, Ordering::Relaxed);
                            this.give_back(&msg);
                            continue;
                        }
                        if let Some(record) = this.record(msg) {
                            if let Some(left) = this.remaining.as_mut() {
                                *left = left.saturating_sub(1);
                            }
                            return Poll::Ready(Some(Ok(record)));
                        }
                    }
                },
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Publisher
// ---------------------------------------------------------------------------------------------

/// Result of [`publish`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PublishReport {
    /// Messages stored by the broker.
    pub stored: u64,
    /// Messages the broker recognised as duplicates (same `Nats-Msg-Id` within the stream's
    /// duplicate window, 2 min by default) and did not store again.
    pub duplicates: u64,
    /// Time from the first publish to the last publish ack.
    pub elapsed: Duration,
}

impl PublishReport {
    /// Messages (stored + duplicates) per second.
    pub fn per_second(&self) -> f64 {
        (self.stored + self.duplicates) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for PublishReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "published {} new + {} duplicate message(s) in {:.2?} ({:.0} msg/s)",
            self.stored,
            self.duplicates,
            self.elapsed,
            self.per_second()
        )
    }
}

/// Publishes `(message id, payload)` pairs to `subject`, each with `Nats-Msg-Id = id` (a
/// re-publish within the duplicate window is not stored twice), with at most `max_in_flight`
/// publish acks outstanding. Every publish ack is awaited: `Ok` means all are stored.
pub async fn publish<I>(
    js: &jetstream::Context,
    subject: &str,
    messages: I,
    max_in_flight: usize,
) -> Result<PublishReport, NatsError>
where
    I: IntoIterator<Item = (String, Vec<u8>)>,
{
    let started = Instant::now();
    let max_in_flight = max_in_flight.max(1);
    let fail = |reason: String| NatsError::Publish {
        subject: subject.to_string(),
        reason,
    };
    let mut in_flight = FuturesUnordered::new();
    let (mut stored, mut duplicates) = (0u64, 0u64);
    let mut settle =
        |r: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>| {
            let ack = r.map_err(|e| fail(one_line(&e)))?;
            if ack.duplicate {
                duplicates += 1;
            } else {
                stored += 1;
            }
            Ok::<(), NatsError>(())
        };
    for (id, payload) in messages {
        if in_flight.len() >= max_in_flight
            && let Some(r) = in_flight.next().await
        {
            settle(r)?;
        }
        let ack = js
            .send_publish(
                subject.to_string(),
                PublishMessage::build()
                    .payload(payload.into())
                    .message_id(id),
            )
            .await
            .map_err(|e| fail(one_line(&e)))?;
        in_flight.push(std::future::IntoFuture::into_future(ack));
    }
    while let Some(r) = in_flight.next().await {
        settle(r)?;
    }
    Ok(PublishReport {
        stored,
        duplicates,
        elapsed: started.elapsed(),
    })
}

/// Serialises events to JSON and publishes them with `Nats-Msg-Id = id_of(event)`.
pub async fn publish_json<T, I, F>(
    js: &jetstream::Context,
    subject: &str,
    events: I,
    id_of: F,
    max_in_flight: usize,
) -> Result<PublishReport, NatsError>
where
    T: serde::Serialize,
    I: IntoIterator<Item = T>,
    F: Fn(&T) -> String,
{
    let messages = events.into_iter().map(|e| {
        let payload = serde_json::to_vec(&e).expect("an event serialises");
        (id_of(&e), payload)
    });
    publish(js, subject, messages, max_in_flight).await
}

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

/// An error and its sources on one line, without repeating what the outer message says.
fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let m = s.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        src = s.source();
    }
    out.replace('\n', " ")
}

/// Does the stream subject pattern `pattern` capture `subject`?
fn subject_matches(pattern: &str, subject: &str) -> bool {
    if pattern == subject {
        return true;
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let s: Vec<&str> = subject.split('.').collect();
    for (i, pt) in p.iter().enumerate() {
        match *pt {
            ">" => return s.len() > i,
            "*" => {
                if i >= s.len() || s[i] == ">" {
                    return false;
                }
            }
            lit => {
                if s.get(i) != Some(&lit) {
                    return false;
                }
            }
        }
    }
    p.len() == s.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_patterns() {
        assert!(subject_matches("events.ingest", "events.ingest"));
        assert!(subject_matches("events.>", "events.ingest"));
        assert!(subject_matches("events.>", "events.a.b"));
        assert!(subject_matches("events.*", "events.a"));
        assert!(!subject_matches("events.*", "events.a.b"));
        assert!(!subject_matches("events.ingest", "events.other"));
        assert!(!subject_matches("events.>", "events"));
    }

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

    #[tokio::test]
    async fn bad_url_is_a_clear_error() {
        for url in [
            "http://127.0.0.1:4222",
            "nats://",
            "nats://host:notaport",
            "::::",
        ] {
            let o = NatsOptions::new(url, "s", "e", "c");
            let e = connect(&o).await.unwrap_err();
            assert!(matches!(e, NatsError::InvalidUrl { .. }), "{url}: {e}");
            assert!(!e.to_string().contains('\n'));
        }
    }

    #[tokio::test]
    async fn unreachable_server_fails_fast() {
        let mut o = NatsOptions::new("nats://127.0.0.1:1", "s", "e", "c");
        o.connect_timeout = Duration::from_secs(2);
        let t = Instant::now();
        let e = connect(&o).await.unwrap_err();
        assert!(matches!(e, NatsError::Connect { .. }), "{e}");
        assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    }
}
