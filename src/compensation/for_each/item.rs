//! One item in flight: attempt → its own undo on failure → backoff → next attempt, skip,
//! or fail. A slot holds one item at a time and is reused for the next.

use core::pin::Pin;
use core::task::{Context, Poll, ready};
use std::future::Future;
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use crate::compensation::config::{Config, Rules};
use crate::compensation::stack::{Stack, Take};
use crate::compensation::trace::{self, Span, Undone};
use crate::compensation::{Cause, ItemScope, Rollback, RollbackReport};

/// What an item needs of its run: the handler, the run's handle, its rules, and the
/// item's `Clone` for retries.
pub(super) struct Driver<'a, T, F> {
    pub(super) f: &'a mut F,
    pub(super) run: &'a Stack,
    pub(super) rules: Rules,
    pub(super) keep: Option<fn(&T) -> T>,
    /// The time limit of each attempt.
    pub(super) limit: Option<Duration>,
}

impl<'a, T, F> Driver<'a, T, F> {
    pub(super) fn new<E>(f: &'a mut F, run: &'a Stack, config: &Config<T, E>) -> Self {
        let rules = config.rules;
        let limit = rules.retry.and_then(|policy| policy.attempt_time_limit());
        let keep = config.keep;
        Self { f, run, rules, keep, limit }
    }

    /// Item `index`, registered as `id`, succeeded: its compensations are committed, or
    /// absorbed into the run. One load when nothing is registered in the scope.
    #[inline(always)]
    fn commit(&self, id: &u64, index: u64) {
        if self.run.len() != 0 {
            self.commit_registered(*id);
        }
        trace::commit(index);
    }

    #[inline(never)]
    fn commit_registered(&self, id: u64) {
        if self.rules.commit_each {
            self.run.commit_since(id, id + 1);
        } else {
            self.run.absorb_into(id, id + 1, self.run);
        }
    }
}

/// How an item ended.
pub(super) enum ItemEnd<E> {
    /// Its handler returned `Ok`.
    Done,
    /// It still failed and was rolled back alone, cleanly: the run hands it to `on_skip`.
    /// (Boxed, as `Failed`: these are rare, and the end of every item is moved.)
    Skipped(Box<(u64, Cause<E>, RollbackReport)>),
    /// It still failed: the run stops. With the report of the item's own undo when that
    /// undo ran and was incomplete.
    Failed(Box<(Cause<E>, Option<RollbackReport>)>),
}

pin_project! {
    /// A slot for one item in flight. Between attempts (`handler` is `None`, `attempt` is
    /// not 0), the undo of the failed one runs, then the backoff (in `timer`).
    pub(super) struct Slot<T, Fut, E> {
        // The attempt in progress.
        #[pin]
        handler: Option<Fut>,
        // The attempt's deadline (with a time limit), or the backoff.
        #[pin]
        timer: Option<Sleep>,
        // The undo of the failed attempt, and why it failed.
        undo: Option<(Rollback, Cause<E>)>,
        // The item, kept for the next attempt (with retries).
        item: Option<T>,
        // The id its handle registers as: what it registers is numbered above it.
        id: u64,
        index: u64,
        // 0 when the slot is free.
        attempt: u32,
        span: Span,
    }
}

impl<T, Fut, E> Slot<T, Fut, E>
where
    Fut: Future<Output = Result<(), E>>,
{
    pub(super) fn new() -> Self {
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

    #[inline(always)]
    pub(super) fn is_busy(&self) -> bool {
        self.attempt != 0
    }

    /// The fast path (one item at a time, no retry, no skip): starts item number `index`,
    /// with nothing but its handler and its id.
    #[inline(always)]
    pub(super) fn start_one<F>(self: Pin<&mut Self>, index: u64, value: T, d: &mut Driver<'_, T, F>)
    where
        F: FnMut(T, ItemScope) -> Fut,
    {
        let mut this = self.project();
        let stack = d.run.new_item();
        *this.id = stack.owner;
        *this.span = trace::attempt_span(index, 1);
        let handler = trace::in_span(this.span, || (d.f)(value, ItemScope { stack }));
        this.handler.set(Some(handler));
    }

    /// The fast path: polls the item started by [`start_one`](Self::start_one), if any;
    /// `Ready(Ok)` once its compensations are committed, and counted in `done` (which is
    /// its index: every earlier item succeeded).
    #[inline(always)]
    pub(super) fn poll_one<F>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        d: &Driver<'_, T, F>,
        done: &mut u64,
    ) -> Poll<Result<(), E>> {
        let mut this = self.project();
        let Some(handler) = this.handler.as_mut().as_pin_mut() else {
            return Poll::Ready(Ok(()));
        };
        let result = ready!(trace::in_span(this.span, || handler.poll(cx)));
        this.handler.set(None);
        if result.is_ok() {
            d.commit(this.id, *done);
            *done += 1;
        }
        Poll::Ready(result)
    }

    /// Starts item number `index` on its first attempt (not polled yet).
    #[inline(always)]
    pub(super) fn start<F>(mut self: Pin<&mut Self>, index: u64, value: T, d: &mut Driver<'_, T, F>)
    where
        F: FnMut(T, ItemScope) -> Fut,
    {
        let this = self.as_mut().project();
        *this.id = d.run.new_id();
        *this.index = index;
        *this.attempt = 1;
        let value = match d.keep {
            Some(keep) => keep(this.item.insert(value)),
            None => value,
        };
        self.attempt(d, value);
    }

    /// Starts attempt number `self.attempt` on `value`.
    #[inline(always)]
    fn attempt<F>(self: Pin<&mut Self>, d: &mut Driver<'_, T, F>, value: T)
    where
        F: FnMut(T, ItemScope) -> Fut,
    {
        let mut this = self.project();
        *this.span = trace::attempt_span(*this.index, *this.attempt);
        let stack = d.run.as_owner(*this.id);
        let handler = trace::in_span(this.span, || (d.f)(value, ItemScope { stack }));
        this.handler.set(Some(handler));
        if let Some(limit) = d.limit {
            this.timer.set(Some(tokio::time::sleep(limit)));
        }
    }

    /// Drives the item; see [`ItemEnd`].
    #[inline(always)]
    pub(super) fn poll_item<F>(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        d: &mut Driver<'_, T, F>,
    ) -> Poll<ItemEnd<E>>
    where
        F: FnMut(T, ItemScope) -> Fut,
    {
        loop {
            let mut this = self.as_mut().project();
            let end = match this.handler.as_mut().as_pin_mut() {
                // Between two attempts.
                None => ready!(self.as_mut().poll_between(cx, d)),
                // The handler is polled first: one that finishes at its deadline wins.
                Some(handler) => match trace::in_span(this.span, || handler.poll(cx)) {
                    Poll::Ready(Ok(())) => {
                        d.commit(this.id, *this.index);
                        Some(ItemEnd::Done)
                    }
                    Poll::Ready(Err(error)) => self.as_mut().failed(Cause::Handler(error), d),
                    Poll::Pending => {
                        let deadline = this.timer.as_mut().as_pin_mut();
                        if !deadline.is_some_and(|deadline| deadline.poll(cx).is_ready()) {
                            return Poll::Pending;
                        }
                        let cause = Cause::TimedOut(d.limit.unwrap_or_default());
                        self.as_mut().failed(cause, d)
                    }
                },
            };
            if let Some(end) = end {
                self.end();
                return Poll::Ready(end);
            }
        }
    }

    /// Stops the item: its handler, timer or backoff is dropped (its compensations stay,
    /// the run's rollback's); the undo of a failed attempt in progress is handed over, to
    /// finish the compensation it is running and start no other.
    pub(super) fn stop(mut self: Pin<&mut Self>) -> Option<Rollback> {
        let undo = self.as_mut().project().undo.take().map(|(undo, _)| undo);
        undo.iter().for_each(Rollback::wind_down);
        self.end();
        undo
    }

    /// The attempt failed with `cause`: its own undo starts if a retry or a skip follows;
    /// otherwise the item fails (its compensations are the run's rollback's).
    #[cold]
    fn failed<F>(self: Pin<&mut Self>, cause: Cause<E>, d: &Driver<'_, T, F>) -> Option<ItemEnd<E>> {
        let mut this = self.project();
        let retry_left = this.item.is_some() && *this.attempt < max_attempts(&d.rules);
        if !(retry_left || d.rules.skip) {
            return Some(ItemEnd::Failed(Box::new((cause, None))));
        }
        this.handler.set(None);
        this.timer.set(None);
        let (id, policy) = (*this.id, d.rules.undo);
        let undo = Rollback::new(d.run.as_owner(id), policy, Take::Owner(id, id), None);
        *this.undo = Some((undo, cause));
        None
    }

    /// Between two attempts: the failed one's undo, then the backoff, then the next attempt
    /// starts (`Ready(None)`); or the item ends: skipped, or (undo incomplete) failed.
    #[cold]
    fn poll_between<F>(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        d: &mut Driver<'_, T, F>,
    ) -> Poll<Option<ItemEnd<E>>>
    where
        F: FnMut(T, ItemScope) -> Fut,
    {
        let mut this = self.as_mut().project();
        if let Some((undo, _)) = this.undo.as_mut() {
            let report = ready!(Pin::new(undo).poll(cx));
            let (_, cause) = this.undo.take().expect("an undo in progress");
            let index = *this.index;
            trace::rollback(Undone::Attempt(index), &report);
            if !report.is_complete() {
                // Nothing may build on a half-undone write: the run stops.
                return Poll::Ready(Some(ItemEnd::Failed(Box::new((cause, Some(report))))));
            }
            if !(this.item.is_some() && *this.attempt < max_attempts(&d.rules)) {
                trace::skip(index);
                return Poll::Ready(Some(ItemEnd::Skipped(Box::new((index, cause, report)))));
            }
            let policy = d.rules.retry.expect("retries are on");
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
            this.timer.set(None);
        }
        let keep = d.keep.expect("retries keep the item");
        let value = keep(this.item.as_ref().expect("retries keep the item"));
        self.attempt(d, value);
        Poll::Ready(None)
    }

    /// Frees the slot.
    #[inline(always)]
    fn end(self: Pin<&mut Self>) {
        let mut this = self.project();
        *this.attempt = 0;
        this.handler.set(None);
        if this.timer.is_some() {
            this.timer.set(None);
        }
        if this.item.is_some() {
            *this.item = None;
        }
    }
}

/// How many attempts an item has.
fn max_attempts(rules: &Rules) -> u32 {
    rules.retry.map_or(1, |policy| policy.max_attempts())
}
