//! The record stream: one pull request at a time, the graceful stop, the idle exit. A
//! message of several events is handed out as its events, one after the other.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, consumer::pull};
use futures::{FutureExt, Stream, StreamExt};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::ack::{Shared, Verdict};
use super::error::one_line;
use super::message;
use super::stats::SourceEnd;
use crate::console::Console;
use crate::mutex::lock;
use crate::record::Record;
use crate::source::SourceError;

pub(super) type BatchFuture =
    Pin<Box<dyn Future<Output = Result<pull::Batch, pull::BatchError>> + Send>>;

pub(super) enum PullState {
    Idle,
    Requesting(BatchFuture),
    Receiving(Box<pull::Batch>),
}

/// Pause before the next pull request after a failed one.
const PULL_RETRY: Duration = Duration::from_secs(1);

pub(super) struct Records {
    pub(super) consumer: PullConsumer,
    pub(super) pull_batch: usize,
    pub(super) pull_expires: Duration,
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
    /// The events of a received message not handed out yet (the rest of an NDJSON message).
    pub(super) queued: VecDeque<Record>,
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
        self.queued.clear(); // dropped, hence given back
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
        self.console.warn(format!(
            "event-batcher: NATS pull failed, retrying in {PULL_RETRY:?}: {reason}"
        ));
        self.backoff = Some(Box::pin(tokio::time::sleep(PULL_RETRY)));
        None
    }

    /// Takes a message: its records are queued (handed out from the next poll on).
    fn take(&mut self, msg: jetstream::Message) {
        if let Some(records) = message::records(msg.message, &self.shared) {
            if let Some(left) = self.remaining.as_mut() {
                *left = left.saturating_sub(1);
            }
            self.queued.extend(records);
        }
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
            // The rest of a message already received is handed out first, even at a stop.
            if let Some(record) = this.queued.pop_front() {
                return Poll::Ready(Some(Ok(record)));
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
                        this.take(msg);
                    }
                },
            }
        }
    }
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
