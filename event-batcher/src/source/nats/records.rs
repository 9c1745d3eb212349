//! The record stream: a continuous pull. One inbox receives every pull request's messages
//! (read by the receiving task, [`receive`](super::receive)); the next request is sent as
//! soon as fewer than half a pull batch of the open ones is left to deliver, so messages
//! keep arriving (and are held, kept alive) while the pipeline writes a batch. Also the
//! graceful stop and the idle exit.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::{Client, Subject};
use futures::Stream;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::ack::Shared;
use super::error::one_line;
use super::options::NatsOptions;
use super::receive::{Delivery, receive};
use super::stats::SourceEnd;
use crate::console::Console;
use crate::record::Record;
use crate::source::SourceError;
use crate::sync::lock;

/// Pause before the next pull request after a failed one.
const PULL_RETRY: Duration = Duration::from_secs(1);
/// How long past its expiry a pull request may stay unanswered before it is presumed lost
/// (a broker restart forgets the open requests).
const LOST_AFTER: Duration = Duration::from_secs(5);

pub(super) struct Records {
    client: Client,
    /// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`: where pull requests go.
    next: Subject,
    /// Where their messages come back.
    inbox: Subject,
    /// What the receiving task passed on, in runs of what had arrived together.
    deliveries: mpsc::UnboundedReceiver<Vec<Delivery>>,
    /// The rest of the run being taken.
    run: std::vec::IntoIter<Delivery>,
    subscribed: bool,
    pull_batch: usize,
    pull_expires: Duration,
    drain_timeout: Duration,
    shared: Arc<Shared>,
    /// Messages asked for by the open pull requests and not received yet.
    outstanding: usize,
    /// The pull request being sent, and its size.
    sending: Option<(BoxFuture<'static, Result<(), String>>, usize)>,
    /// Fires when nothing was sent or received for `pull_expires` + [`LOST_AFTER`] while
    /// requests are open: they are presumed lost.
    silence: Pin<Box<Sleep>>,
    /// The records of a received message not handed out yet (the rest of an NDJSON message).
    queued: VecDeque<Record>,
    stop: Pin<Box<WaitForCancellationFutureOwned>>,
    draining: Option<Pin<Box<Sleep>>>,
    backoff: Option<Pin<Box<Sleep>>>,
    done: bool,
    /// `--idle-exit`, and its timer (armed while the stream waits for a message).
    idle_exit: Option<Duration>,
    idle: Option<Pin<Box<Sleep>>>,
    /// Messages still allowed (`--max-events`), and the limit.
    remaining: Option<u64>,
    limit: Option<u64>,
    /// Where a failed pull is reported.
    console: Console,
}

impl Records {
    /// The records of `consumer` on `stream`, with the receiving task started.
    pub(super) fn new(
        client: Client,
        next: Subject,
        opts: &NatsOptions,
        shared: Arc<Shared>,
        stop: CancellationToken,
        console: Console,
    ) -> Records {
        let inbox = Subject::from(client.new_inbox());
        let (tx, deliveries) = mpsc::unbounded_channel();
        tokio::spawn(receive(client.clone(), inbox.clone(), shared.clone(), tx));
        Records {
            client,
            next,
            inbox,
            deliveries,
            run: Vec::new().into_iter(),
            subscribed: false,
            pull_batch: opts.pull_batch.max(1),
            pull_expires: opts.pull_expires,
            drain_timeout: opts.drain_timeout,
            shared,
            outstanding: 0,
            sending: None,
            silence: Box::pin(tokio::time::sleep(Duration::ZERO)),
            queued: VecDeque::new(),
            stop: Box::pin(stop.cancelled_owned()),
            draining: None,
            backoff: None,
            done: false,
            idle_exit: opts.idle_exit.filter(|idle| !idle.is_zero()),
            idle: None,
            remaining: opts.max_messages,
            limit: opts.max_messages,
            console,
        }
    }

    /// The size of the next pull request, if one is due: when at most half a pull batch of
    /// the open requests is left, and never more than the message limit leaves.
    fn due_request(&self) -> Option<usize> {
        if !self.subscribed
            || self.done
            || self.draining.is_some()
            || self.sending.is_some()
            || self.backoff.is_some()
            || self.outstanding > self.pull_batch / 2
        {
            return None;
        }
        let size = match self.remaining {
            Some(left) => {
                let left = left.saturating_sub(self.outstanding as u64);
                self.pull_batch
                    .min(usize::try_from(left).unwrap_or(usize::MAX))
            }
            None => self.pull_batch,
        };
        (size > 0).then_some(size)
    }

    /// Sends a pull request for `size` messages to the inbox.
    fn request(&mut self, size: usize) {
        let client = self.client.clone();
        let (next, inbox) = (self.next.clone(), self.inbox.clone());
        // No idle heartbeat: a request lost in a broker restart is noticed by the silence
        // timer instead.
        let body = format!(
            "{{\"batch\":{size},\"expires\":{}}}",
            self.pull_expires.as_nanos()
        );
        let send = async move {
            client
                .publish_with_reply(next, inbox, body.into())
                .await
                .map_err(|error| one_line(&error))
        };
        self.outstanding += size;
        self.sending = Some((Box::pin(send), size));
        self.heard();
    }

    /// Something was sent or received: the open requests are alive.
    fn heard(&mut self) {
        self.silence
            .as_mut()
            .reset(Instant::now() + self.pull_expires + LOST_AFTER);
    }

    /// Stops pulling: the open requests are drained (their messages given back), then the
    /// stream ends. The first reason is recorded.
    fn begin_drain(&mut self, reason: SourceEnd) {
        lock(&self.shared.stats.ended).get_or_insert(reason);
        let longest = self
            .drain_timeout
            .max(self.pull_expires + Duration::from_secs(1));
        self.draining = Some(Box::pin(tokio::time::sleep(longest)));
        self.backoff = None;
        self.idle = None;
    }

    /// Ends the stream: the inbox is closed, and what had arrived is given back.
    fn finish(&mut self) {
        self.done = true;
        self.deliveries.close();
        // Dropped, hence given back (`-NAK`, no delay).
        self.run = Vec::new().into_iter();
        while self.deliveries.try_recv().is_ok() {}
        self.queued.clear();
    }

    /// A failed pull: retried after a pause (and reported on the console) unless fatal.
    fn pull_failed(&mut self, reason: String) -> Option<SourceError> {
        self.shared
            .stats
            .broker_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // What the failed requests would have delivered is not counted on any more.
        self.outstanding = 0;
        if self.draining.is_some() {
            self.finish();
            return None;
        }
        if is_fatal(&reason) {
            self.finish();
            return Some(SourceError::Broker { reason });
        }
        self.console.println(format!(
            "event-batcher: NATS pull failed, retrying in {PULL_RETRY:?}: {reason}"
        ));
        self.backoff = Some(Box::pin(tokio::time::sleep(PULL_RETRY)));
        None
    }

    /// Takes one delivery into account; `Some` ends the stream with an error.
    fn take(&mut self, delivery: Delivery) -> Option<SourceError> {
        self.heard();
        match delivery {
            Delivery::Subscribed => self.subscribed = true,
            Delivery::Message(records) => {
                self.outstanding = self.outstanding.saturating_sub(1);
                if self.draining.is_some() {
                    drop(records); // given back
                } else {
                    if let Some(left) = self.remaining.as_mut() {
                        *left = left.saturating_sub(1);
                    }
                    self.queued.extend(records);
                }
            }
            Delivery::Ended(pending) => {
                let ended = pending.unwrap_or(self.pull_batch);
                self.outstanding = self.outstanding.saturating_sub(ended);
            }
            Delivery::Failed(reason) => return self.pull_failed(reason),
            Delivery::Fatal(reason) => {
                self.finish();
                return Some(SourceError::Broker { reason });
            }
        }
        None
    }
}

impl Drop for Records {
    fn drop(&mut self) {
        // Dropped mid-run (pipeline cancelled): give back what already arrived, so other
        // instances get it now rather than after ack_wait.
        self.finish();
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
                // filling up or being written, or messages received and not yet handed
                // out) it does not run: their batch may still be rolled back, and its
                // messages come back after the nak delay.
                let holding = !lock(&this.shared.held).is_empty();
                if holding {
                    this.idle = None;
                } else if let Some(idle) = this.idle_exit {
                    let timer = this
                        .idle
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                    if timer.as_mut().poll(cx).is_ready() {
                        // Unlike a stop or the message limit, an idle exit does not wait
                        // for the open requests: they have delivered nothing for the whole
                        // idle period, and waiting would only catch (and hand back) other
                        // instances' nak'ed redeliveries. What already arrived is given
                        // back and the inbox closed.
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
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            // The rest of a message already received is handed out first, even at a stop.
            if let Some(record) = self.queued.pop_front() {
                return Poll::Ready(Some(Ok(record)));
            }
            if self.draining.is_none() && self.stop.as_mut().poll(cx).is_ready() {
                self.begin_drain(SourceEnd::Stopped);
            }
            if self.draining.is_none()
                && let (Some(0), Some(limit)) = (self.remaining, self.limit)
            {
                self.begin_drain(SourceEnd::MaxMessages(limit));
            }
            if let Some(deadline) = self.draining.as_mut()
                && (deadline.as_mut().poll(cx).is_ready()
                    || (self.outstanding == 0 && self.sending.is_none()))
            {
                // Every open request completed or expired (or the drain timed out).
                self.finish();
                continue;
            }
            if let Some(backoff) = self.backoff.as_mut()
                && backoff.as_mut().poll(cx).is_ready()
            {
                self.backoff = None;
            }
            if let Some((send, size)) = self.sending.as_mut()
                && let Poll::Ready(sent) = send.as_mut().poll(cx)
            {
                let size = *size;
                self.sending = None;
                if let Err(reason) = sent {
                    self.outstanding = self.outstanding.saturating_sub(size);
                    if let Some(error) = self.pull_failed(reason) {
                        return Poll::Ready(Some(Err(error)));
                    }
                }
                continue;
            }
            if let Some(size) = self.due_request() {
                self.request(size);
                continue;
            }
            if let Some(delivery) = self.run.next() {
                if let Some(error) = self.take(delivery) {
                    return Poll::Ready(Some(Err(error)));
                }
                continue;
            }
            match self.deliveries.poll_recv(cx) {
                Poll::Ready(Some(run)) => {
                    self.run = run.into_iter();
                    continue;
                }
                Poll::Ready(None) => {
                    // The receiving task ended after reporting why (or the inbox closed).
                    self.done = true;
                    return Poll::Ready(Some(Err(SourceError::Broker {
                        reason: "the NATS inbox subscription ended".into(),
                    })));
                }
                Poll::Pending => {}
            }
            if self.outstanding > 0 && self.silence.as_mut().poll(cx).is_ready() {
                // Open requests unanswered past their expiry: lost (broker restart).
                self.outstanding = 0;
                self.heard();
                continue;
            }
            return Poll::Pending;
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
