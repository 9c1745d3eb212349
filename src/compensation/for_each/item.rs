//! One item in flight, in a slot reused for the next: attempt → on failure, its own undo →
//! backoff → next attempt, skip, or fail.

use core::pin::Pin;
use core::task::{Context, Poll, ready};
use std::future::Future;
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::Stop;
use crate::compensation::config::Config;
use crate::compensation::stack::{Stack, Take};
use crate::compensation::trace::{self, Span, Undone};
use crate::compensation::{Cause, CompensatedError, Completion, ItemScope, Rollback};

/// What an item needs of its run, for one poll of the run.
pub(super) struct Driver<'a, T, E, F> {
    pub(super) f: &'a mut F,
    pub(super) run: &'a Stack,
    pub(super) config: &'a mut Config<T, E>,
    pub(super) done: &'a mut Completion,
}

impl<'a, T, E, F> Driver<'a, T, E, F> {
    pub(super) fn new(
        f: &'a mut F,
        run: &'a Stack,
        config: &'a mut Config<T, E>,
        done: &'a mut Completion,
    ) -> Self {
        Self {
            f,
            run,
            config,
            done,
        }
    }

    /// The time limit of each attempt.
    fn limit(&self) -> Option<Duration> {
        self.config
            .rules
            .retry
            .and_then(|policy| policy.attempt_time_limit())
    }

    /// Item `index`, registered as `id`, succeeded: its compensations are committed, or
    /// absorbed into the run (one load when nothing is registered in the scope).
    #[inline(always)]
    fn succeeded(&mut self, id: &u64, index: u64) {
        if self.run.len() != 0 {
            self.commit(*id);
        }
        self.done.items += 1;
        trace::commit(index);
    }

    #[inline(never)]
    fn commit(&self, id: u64) {
        if self.config.rules.commit_each {
            self.run.commit_since(id, id + 1);
        } else {
            self.run.absorb_into(id, id + 1, self.run);
        }
    }

    fn attempts(&self) -> u32 {
        self.config
            .rules
            .retry
            .map_or(1, |policy| policy.max_attempts())
    }
}

pin_project! {
    /// A slot for one item in flight. Between two attempts (`handler` is `None`, `attempt`
    /// is not 0) the undo of the failed one runs, then the backoff (in `timer`).
    pub(crate) struct Slot<T, Fut, E> {
        #[pin]
        handler: Option<Fut>,
        // The attempt's deadline (with a time limit), or the backoff.
        #[pin]
        timer: Option<Sleep>,
        undo: Option<(Rollback, Cause<E>)>,
        // The item, kept for the next attempt (with retries).
        item: Option<T>,
        // The id its handle registers as: what it registers is numbered above it.
        id: u64,
        index: u64,
        // 0 when the slot is free (the fast path leaves it at 0).
        attempt: u32,
        span: Span,
    }
}

impl<T, Fut, E> Slot<T, Fut, E>
where
    Fut: Future<Output = Result<(), E>>,
{
    pub(crate) fn new() -> Self {
        Self {
            handler: None,
            timer: None,
            undo: None,
            item: None,
            id: 0,
            index: 0,
            attempt: 0,
            span: trace::no_span(),
        }
    }

    pub(super) fn is_busy(&self) -> bool {
        self.attempt != 0
    }

    /// Starts item number `index`, with a handle of a new id, on its first attempt.
    #[inline(always)]
    pub(super) fn start_one<F>(
        mut self: Pin<&mut Self>,
        index: u64,
        value: T,
        d: &mut Driver<'_, T, E, F>,
    ) where
        F: FnMut(T, ItemScope) -> Fut,
    {
        let stack = d.run.new_item();
        *self.as_mut().project().id = stack.owner;
        self.launch(index, 1, value, stack, d);
    }

    /// Starts attempt number `attempt` on `value`, registering through `stack`.
    #[inline(always)]
    fn launch<F>(
        self: Pin<&mut Self>,
        index: u64,
        attempt: u32,
        value: T,
        stack: Stack,
        d: &mut Driver<'_, T, E, F>,
    ) where
        F: FnMut(T, ItemScope) -> Fut,
    {
        let mut this = self.project();
        *this.span = trace::attempt_span(index, attempt);
        let handler = trace::in_span(this.span, || (d.f)(value, ItemScope { stack }));
        this.handler.set(Some(handler));
    }

    /// The fast path (one item at a time, no retry, no skip): polls the item started by
    /// [`start_one`](Self::start_one), if any, until its handler returns.
    #[inline(always)]
    pub(super) fn poll_one<F>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        d: &mut Driver<'_, T, E, F>,
    ) -> Poll<Result<(), E>> {
        let mut this = self.project();
        let Some(handler) = this.handler.as_mut().as_pin_mut() else {
            return Poll::Ready(Ok(()));
        };
        let result = ready!(trace::in_span(this.span, || handler.poll(cx)));
        this.handler.set(None);
        if result.is_ok() {
            // Every earlier item succeeded: this one's index is their count.
            d.succeeded(this.id, d.done.items);
        }
        Poll::Ready(result)
    }

    /// Starts item number `index` (not polled yet).
    #[inline(always)]
    pub(super) fn start<F>(
        mut self: Pin<&mut Self>,
        index: u64,
        value: T,
        d: &mut Driver<'_, T, E, F>,
    ) where
        F: FnMut(T, ItemScope) -> Fut,
    {
        let this = self.as_mut().project();
        (*this.index, *this.attempt) = (index, 1);
        let value = match d.config.keep {
            Some(keep) => keep(this.item.insert(value)),
            None => value,
        };
        self.as_mut().start_one(index, value, d);
        if let Some(limit) = d.limit() {
            self.project().timer.set(Some(tokio::time::sleep(limit)));
        }
    }

    /// Drives the item to its end: `Ok` when it succeeded or was skipped (the callback
    /// has it), `Err` when the run must stop.
    #[inline(always)]
    pub(super) fn poll_item<F>(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        d: &mut Driver<'_, T, E, F>,
    ) -> Poll<Result<(), Box<Stop<E>>>>
    where
        F: FnMut(T, ItemScope) -> Fut,
    {
        loop {
            let mut this = self.as_mut().project();
            let end = match this.handler.as_mut().as_pin_mut() {
                None => ready!(self.as_mut().poll_between(cx, d)),
                // The handler is polled first: one that finishes at its deadline wins.
                Some(handler) => match trace::in_span(this.span, || handler.poll(cx)) {
                    Poll::Ready(Ok(())) => Some(Ok(d.succeeded(this.id, *this.index))),
                    Poll::Ready(Err(error)) => self.as_mut().failed(Cause::Handler(error), d),
                    Poll::Pending => {
                        let deadline = this.timer.as_mut().as_pin_mut();
                        if !deadline.is_some_and(|deadline| deadline.poll(cx).is_ready()) {
                            return Poll::Pending;
                        }
                        let cause = Cause::TimedOut(d.limit().unwrap_or_default());
                        self.as_mut().failed(cause, d)
                    }
                },
            };
            if let Some(end) = end {
                self.stop();
                return Poll::Ready(end);
            }
        }
    }

    /// Frees the slot: its handler, timer or backoff is dropped (its compensations stay,
    /// the run's rollback's); the undo of a failed attempt in progress is handed over,
    /// wound down, to finish the compensation it is running and start no other.
    pub(super) fn stop(self: Pin<&mut Self>) -> Option<Rollback> {
        let mut this = self.project();
        *this.attempt = 0;
        this.handler.set(None);
        this.timer.set(None);
        *this.item = None;
        let undo = this.undo.take().map(|(undo, _)| undo);
        undo.iter().for_each(Rollback::wind_down);
        undo
    }

    /// The attempt failed with `cause`: its own undo starts if a retry or a skip follows;
    /// otherwise the item fails (its compensations are the run's rollback's).
    #[cold]
    fn failed<F>(
        self: Pin<&mut Self>,
        cause: Cause<E>,
        d: &Driver<'_, T, E, F>,
    ) -> Option<Result<(), Box<Stop<E>>>> {
        let mut this = self.project();
        let retry = this.item.is_some() && *this.attempt < d.attempts();
        if !(retry || d.config.rules.skip) {
            return Some(Err(Box::new((cause, None))));
        }
        this.handler.set(None);
        this.timer.set(None);
        let (id, policy) = (*this.id, d.config.rules.undo);
        let undo = Rollback::new(d.run.as_owner(id), policy, Take::Owner(id, id), None);
        *this.undo = Some((undo, cause));
        None
    }

    /// Between two attempts: the failed one's undo, then the backoff, then the next attempt
    /// starts (`Ready(None)`); or the item ends, skipped or (undo incomplete) failed.
    #[cold]
    fn poll_between<F>(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        d: &mut Driver<'_, T, E, F>,
    ) -> Poll<Option<Result<(), Box<Stop<E>>>>>
    where
        F: FnMut(T, ItemScope) -> Fut,
    {
        let mut this = self.as_mut().project();
        let index = *this.index;
        if let Some((undo, _)) = this.undo.as_mut() {
            let report = ready!(Pin::new(undo).poll(cx));
            let (_, cause) = this.undo.take().expect("an undo in progress");
            trace::rollback(Undone::Attempt(index), &report);
            if !report.is_complete() {
                // Nothing may build on a half-undone write: the run stops.
                return Poll::Ready(Some(Err(Box::new((cause, Some(report))))));
            }
            if !(this.item.is_some() && *this.attempt < d.attempts()) {
                trace::skip(index);
                d.done.skipped += 1;
                let on_skip = d.config.on_skip.as_mut().expect("skips are on");
                let on_skip = on_skip.get_mut().unwrap_or_else(|p| p.into_inner());
                on_skip((index, CompensatedError::skipped(cause, report)));
                return Poll::Ready(Some(Ok(())));
            }
            let policy = d.config.rules.retry.expect("retries are on");
            let wait = policy.backoff_strategy().delay(*this.attempt);
            *this.attempt += 1;
            trace::retry(index, *this.attempt);
            // A zero wait arms no timer.
            if !wait.is_zero() {
                this.timer.set(Some(tokio::time::sleep(wait)));
            }
        }
        if let Some(backoff) = this.timer.as_mut().as_pin_mut() {
            ready!(backoff.poll(cx));
        }
        let keep = d.config.keep.expect("retries keep the item");
        let value = keep(this.item.as_ref().expect("retries keep the item"));
        let (stack, attempt) = (d.run.as_owner(*this.id), *this.attempt);
        let limit = d.limit().map(tokio::time::sleep);
        this.timer.set(limit);
        self.launch(index, attempt, value, stack, d);
        Poll::Ready(None)
    }
}
