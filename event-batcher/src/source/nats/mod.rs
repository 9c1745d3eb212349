//! NATS JetStream source (`--source nats://HOST:PORT --stream S --subject E --consumer C`):
//! a durable pull consumer shared by any number of instances, turned into the pipeline's
//! [`RecordStream`], with **ack after commit** and **nak after rollback**.
//!
//! # Delivery contract
//!
//! * A message carries one event (its payload is one JSON document) or several (NDJSON: one
//!   event per line; blank lines are skipped). Each event becomes one
//!   [`Record`](crate::record::Record): position `Sequence(stream sequence)`, or
//!   `MessageLine { message, line }` for an event of a message of several; body
//!   `Json(event)`; and an acknowledgement hook ([`NatsAck`], or an [`EventAck`] per event
//!   of a message of several). The pipeline validates each event like an NDJSON line, then
//!   settles its hook exactly once:
//!   - `ack` after the event's batch has committed;
//!   - `nak` after it was rolled back;
//!   - `reject` when the event is invalid (that event only: the rest of its message is
//!     written).
//! * A message gets one verdict, once every event in it has one (see [`EventAck`] for the
//!   whole table): `+ACK` when its events are committed (or rejected), `-NAK {"delay":…}`
//!   ([`NatsOptions::nak_delay`]) when one of its events was rolled back: the broker
//!   redelivers the whole message, to this or another instance, after the delay, and the
//!   events already committed are found present; `+TERM` when every event in it was invalid
//!   (poison message), or an event was given up after `--max-deliveries`.
//! * A hook dropped without a verdict (the batch in flight or the chunker's partial batch
//!   dropped at cancellation, a panic) sends `-NAK` with no delay: the message is available again
//!   at once instead of after `ack_wait`.
//! * Every message is delivered at least once. A message that is never settled (process killed)
//!   is redelivered once `ack_wait` has passed. With idempotent writes (`ON CONFLICT (id) DO
//!   NOTHING`) that is one row per event. Redeliveries can carry delivery count 1 again after a
//!   broker crash (measured): never use the count for deduplication.
//! * Acks are sent in the background, in order, by one task per source: `ack()` returns once the
//!   ack is queued, not once the server has it. The task gathers verdicts for up to 25 ms (or
//!   until 500 are queued) and sends them in one write: each write wakes the server, and its
//!   wake-ups, not the acks' bytes, were most of its CPU at 100 events per message. An ack
//!   that gets lost only causes a redelivery. [`NatsSource::close`] waits for the queue and
//!   flushes the connection.
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
//! `ack_wait` when dropped. A continuous pull of this crate's own (one inbox read by a task
//! that held each message as it arrived, the next request sent when half of the open ones
//! was left) was measured against this one request at a time: no gain at one instance,
//! `--concurrency 1` (paired runs on a loaded 2-core machine, 100,000 events, ratio to the
//! synthetic source 0.51–0.74 before, 0.49–0.68 with it) and about a quarter more CPU in the
//! instance per message; it was not kept.
//!
//! # Shutdown
//!
//! * The pipeline cancels (`with_cancellation`): the batch in flight is rolled back (its nak
//!   compensation runs), the chunker's records are dropped (their hooks nak), the stream is
//!   dropped and naks what its open pull request had already delivered. Call
//!   [`NatsSource::close`] before printing the summary and exiting.
//! * Alternatively give the token to [`NatsSource::records`] and not to the pipeline: the stream
//!   then stops pulling, hands out the rest of a message of several events it had begun,
//!   naks the rest of its open pull request (waiting until the request completes or
//!   expires, at most [`NatsOptions::drain_timeout`]) and ends, so the
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
//! `Err(SourceError::Broker)`.
//!
//! # Layout
//!
//! [`options`] (what to connect to, and the sizing), [`error`] (setup errors), [`connect`](mod@connect)
//! (the connection, the stream and the consumer), [`ack`] (the hooks, the keep-alive and the
//! task that sends verdicts), `parts` (the hooks of a message of several events), `message`
//! (a message as records), `records` (the pull loop), [`stats`] (the counters) and
//! [`publish`](mod@publish) (loading events); this file ties them together in [`NatsSource`].

pub mod ack;
pub mod connect;
pub mod error;
mod message;
pub mod options;
mod parts;
pub mod publish;
mod records;
pub mod stats;

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::Client;
use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::console::Console;
use crate::mutex::lock;
use crate::source::RecordStream;
use ack::{Shared, ack_task, keep_alive};
use records::{PullState, Records};
use stats::SourceStats;

pub use ack::NatsAck;
pub use connect::{connect, consumer_warnings, ensure_consumer, ensure_stream, jetstream_context};
pub use error::NatsError;
pub use options::NatsOptions;
pub use parts::EventAck;
pub use publish::{PublishReport, ndjson_messages, publish, publish_json};
pub use stats::{EventCounts, NatsCounters, NatsStats, SourceEnd};

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
    /// Where the record stream reports a failed pull.
    console: Console,
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
            console: Console::new(),
        })
    }

    /// Reports a failed pull (retried) of the [`records`](Self::records) made from now on on
    /// `console` (by default, a console of its own: standard error, no progress bar).
    pub fn with_console(mut self, console: Console) -> Self {
        self.console = console;
        self
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

    /// The live counters, for a reader that outlives this borrow (`--metrics`).
    pub fn counters(&self) -> NatsCounters {
        NatsCounters(self.shared.stats.clone())
    }

    /// Messages held by this instance right now (delivered, not settled).
    pub fn in_flight(&self) -> usize {
        lock(&self.shared.held).len()
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
                source: e.into(),
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
            console: self.console.clone(),
            queued: VecDeque::new(),
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
