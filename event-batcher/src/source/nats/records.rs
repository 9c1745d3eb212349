//! The record stream: one pull request at a time, received by a task of its own, the
//! graceful stop, the idle exit.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::ack::Shared;
use super::error::one_line;
use super::stats::SourceEnd;
use crate::console::Console;
use crate::record::{Position, Record, RecordBody};
use crate::source::SourceError;
use crate::sync::lock;

/// What the task of the open pull request hands over.
pub(super) enum Delivery {
    /// A message, already held (see [`Shared::hold`]).
    Record(Record),
    /// The request or its delivery failed (one line); the request is over.
    Failed(String),
}

/// The open pull request. A task sends it, then receives its messages and makes records of
/// them as they arrive: each is held, and kept alive (`+WPI`), from the moment it arrives,
/// also while the pipeline writes a batch and does not poll the stream. The records wait in
/// `rx`, which ends when the request is over. Dropping the feed stops the task: it gives
/// back what it still receives at once, and ends.
pub(super) struct Feed {
    rx: mpsc::UnboundedReceiver<Delivery>,
}

pub(super) enum PullState {
    Idle,
    Open(Feed),
}

/// Pause before the next pull request after a failed one.
const PULL_RETRY: Duration = Duration::from_secs(1);

pub(super) struct Records {
    pub(super) consumer: PullConsumer,
    pub(super) pull_batch: usize,
    pub(super) pull_expires: Duration,
    /// Messages the open pull request may still deliver (what it asked for, less what it
    /// handed out).
    pub(super) due: usize,
    pub(super) drain_timeout: Duration,
    pub(super) shared: Arc<Shared>,
    pub(super) state: PullState,
    pub(super) stop: Pin<Box<WaitForCancellationFutureOwned>>,
    pub(super) draining: Option<Pin<Box<tokio::time::Sleep>>>,
    pub(super) backoff: Option<Pin<Box<tokio::time::Sleep>>>,
    pub(super) done: bool,
    /// `--idle-exit`, and its timer (armed while the stream waits for a message).
    pub(super) idle_exit: Option<Duration>,
    pub(super) idle: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Messages still allowed (`--max-events`), and the limit.
    pub(super) remaining: Option<u64>,
    pub(super) limit: Option<u64>,
    /// Where a failed pull is reported.
    pub(super) console: Console,
}

impl Records {
    /// Opens the next pull request, for at most what `--max-events` leaves.
    fn open(&mut self) -> PullState {
        let batch = match self.remaining {
            Some(left) => self
                .pull_batch
                .min(usize::try_from(left).unwrap_or(usize::MAX)),
            None => self.pull_batch,
        };
        self.due = batch;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(feed(
            self.consumer.clone(),
            batch,
            self.pull_expires,
            self.shared.clone(),
            tx,
        ));
        PullState::Open(Feed { rx })
    }

    /// The open request has handed out all it asked for: opens the next one now, while the
    /// pipeline writes the batch these messages complete, unless the stream is stopping,
    /// pausing after a failed pull, or at the message limit. The pull round trip then
    /// overlaps the write instead of following it; the instance still holds at most one
    /// pull batch that it has not handed out.
    fn open_early(&mut self) {
        if self.draining.is_none() && self.backoff.is_none() && self.remaining != Some(0) {
            self.state = self.open();
        }
    }

    /// Stops pulling: the open request is drained (its messages given back), then the stream
    /// ends. The first reason is recorded.
    fn begin_drain(&mut self, reason: SourceEnd) {
        lock(&self.shared.stats.ended).get_or_insert(reason);
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

    /// Gives back whatever the open request has already delivered to the client: the
    /// records waiting are dropped (each hook gives its message back); the task, once the
    /// feed is dropped, gives back what it still receives at once.
    fn drain_ready(&mut self) {
        if let PullState::Open(feed) = &mut self.state {
            while let Ok(delivery) = feed.rx.try_recv() {
                drop(delivery);
            }
        }
    }

    /// A failed pull: retried after a pause (and reported on the console) unless fatal.
    fn pull_failed(&mut self, reason: String) -> Option<SourceError> {
        self.shared
            .stats
            .broker_errors
            .fetch_add(1, Ordering::Relaxed);
        self.state = PullState::Idle;
        if self.draining.is_some() {
            self.finish();
            return None;
        }
        if is_fatal(&reason) {
            self.done = true;
            return Some(SourceError::Broker { reason });
        }
        self.console.println(format!(
            "event-batcher: NATS pull failed, retrying in {PULL_RETRY:?}: {reason}"
        ));
        self.backoff = Some(Box::pin(tokio::time::sleep(PULL_RETRY)));
        None
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
    type Item = Result<Record, SourceError>;

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
                let holding = !lock(&this.shared.held).is_empty();
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
    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Record, SourceError>>> {
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
                    this.state = this.open();
                }
                PullState::Open(feed) => match feed.rx.poll_recv(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(None) => this.state = PullState::Idle,
                    Poll::Ready(Some(Delivery::Failed(reason))) => {
                        if let Some(err) = this.pull_failed(reason) {
                            return Poll::Ready(Some(Err(err)));
                        }
                    }
                    Poll::Ready(Some(Delivery::Record(record))) => {
                        if this.draining.is_some() {
                            drop(record); // its hook gives the message back
                            continue;
                        }
                        this.due = this.due.saturating_sub(1);
                        if let Some(left) = this.remaining.as_mut() {
                            *left = left.saturating_sub(1);
                        }
                        if this.due == 0 {
                            this.open_early();
                        }
                        return Poll::Ready(Some(Ok(record)));
                    }
                },
            }
        }
    }
}

/// The task of one pull request (see [`Feed`]): sends it, then makes a record of each message
/// as it arrives, until the request is over or the feed is dropped.
async fn feed(
    consumer: PullConsumer,
    batch: usize,
    expires: Duration,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Delivery>,
) {
    // No idle heartbeat: async-nats 0.51's `Batch` returns `Pending` without arranging a
    // wake-up after it consumed a heartbeat. A lost request ends at `expires` + 5 s instead.
    let request = consumer
        .batch()
        .max_messages(batch)
        .expires(expires)
        .messages();
    let mut messages = tokio::select! {
        opened = request => match opened {
            Ok(messages) => messages,
            Err(e) => {
                let _ = tx.send(Delivery::Failed(one_line(&e)));
                return;
            }
        },
        () = tx.closed() => return,
    };
    loop {
        let item = tokio::select! {
            item = messages.next() => item,
            () = tx.closed() => break,
        };
        match item {
            None => return,
            Some(Err(e)) => {
                let _ = tx.send(Delivery::Failed(one_line(&*e)));
                return;
            }
            Some(Ok(msg)) => {
                if let Some(record) = record(&shared, msg)
                    && tx.send(Delivery::Record(record)).is_err()
                {
                    // The feed is gone: the record is dropped, its hook gives it back.
                    break;
                }
            }
        }
    }
    // The stream stopped or was dropped: give back what has already arrived (what arrives
    // after the request is dropped waits for `ack_wait`).
    while let Some(Some(item)) = messages.next().now_or_never() {
        if let Ok(msg) = item {
            drop(record(&shared, msg));
        }
    }
}

/// The record of a delivered message, held from now on; `None` (skipped) for a message that
/// is not a JetStream delivery and cannot be acknowledged.
fn record(shared: &Arc<Shared>, msg: jetstream::Message) -> Option<Record> {
    let reply = msg.reply.clone()?;
    let (stream_seq, delivered) = msg
        .info()
        .map(|i| (i.stream_sequence, i.delivered))
        .unwrap_or((0, 1));
    let stats = &shared.stats;
    stats.received.fetch_add(1, Ordering::Relaxed);
    if delivered > 1 {
        stats.redelivered.fetch_add(1, Ordering::Relaxed);
    }
    let ack = shared.hold(reply, stream_seq, delivered);
    Some(Record {
        position: Position::Sequence(stream_seq),
        body: RecordBody::Json(msg.message.payload.to_vec()),
        ack: Some(Box::new(ack)),
    })
}

/// Whether a failed pull means the consumer can no longer deliver (deleted, or not a pull
/// consumer) rather than a broker that is restarting or unreachable.
///
/// async-nats 0.51 hands a pull request's server status to the client only as the text of an
/// `io::Error` (`Batch` yields `io::Error::other("error while processing messages from the
/// stream: 409, Some(\"Consumer Deleted\")")`), so that text is the one thing there is to
/// classify; this is the only place that reads it.
fn is_fatal(reason: &str) -> bool {
    const FATAL: [&str; 4] = [
        "consumer deleted",
        "consumer not found",
        "stream not found",
        "push based",
    ];
    let reason = reason.to_lowercase();
    FATAL.iter().any(|fatal| reason.contains(fatal))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_gone_consumer_or_stream_is_fatal() {
        assert!(is_fatal(
            "error while processing messages from the stream: 409, Some(\"Consumer Deleted\")"
        ));
        assert!(is_fatal("consumer not found"));
        assert!(!is_fatal("pull request failed: timed out"));
        assert!(!is_fatal("connection closed"));
    }
}
