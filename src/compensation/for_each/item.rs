//! One item in flight: attempt → its own undo on failure → backoff → next attempt, skip,
//! or fail. A slot holds one item at a time and is reused for the next.

use core::pin::Pin;
use core::task::{Context, Poll, ready};
use std::future::Future;

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use crate::compensation::config::Rules;
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
}

/// How an item ended.
pub(super) enum ItemEnd<E> {
    /// Its handler returned `Ok`.
    Done,
    /// It still failed and was rolled back alone, cleanly: the run hands it to `on_skip`.
    /// (Boxed, as `Failed`: the end of every item is moved through the run, and these
    /// are rare.)
    Skipped(Box<(u64, Cause<E>, RollbackReport)>),
    /// It still failed: the run stops. With the report of the item's own undo when that
    /// undo ran and was incomplete.
    Failed(Box<(Cause<E>, Option<RollbackReport>)>),
}

pin_project! {
    #[project = StageProj]
    enum Stage<Fut, E> {
        Free,
        Attempt { #[pin] handler: Fut },
        Undo { undo: Rollback, cause: Option<Cause<E>> },
        Backoff,
    }
}

pin_project! {
    #[project = SlotProj]
    /// A slot for one item in flight.
    pub(super) struct Slot<T, Fut, E> {
        #[pin]
        stage: Stage<Fut, E>,
        // The attempt's deadline (with a time limit), or the backoff.
        #[pin]
        timer: Option<Sleep>,
        // The id its handle registers as, in the run.
        owner: u64,
        // The registration number when the item started: what its handle registered is
        // at or above it.
        mark: u64,
        // The item, kept for the next attempt (with retries).
        item: Option<T>,
        index: u64,
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
            stage: Stage::Free,
            timer: None,
            owner: 0,
            mark: 0,
            item: None,
            index: 0,
            attempt: 0,
            span: trace::no_span(),
        }
    }

    #[inline]
    pub(super) fn is_busy(&self) -> bool {
        !matches!(self.stage, Stage::Free)
    }

    /// Starts item number `index` on its first attempt; `keep` clones it for retries.
    #[inline]
    pub(super) fn start<F>(self: Pin<&mut Self>, index: u64, value: T, d: &mut Driver<'_, T, F>)
    where
        F: FnMut(T, ItemScope) -> Fut,
    {
        let mut this = self.project();
        *this.owner = d.run.new_owner();
        *this.mark = d.run.mark();
        *this.index = index;
        *this.attempt = 1;
        let value = match d.keep {
            Some(keep) => keep(this.item.insert(value)),
            None => value,
        };
        this.attempt(d, value);
    }

    /// Stops the item: its handler, timer or backoff is dropped (its compensations stay,
    /// the run's rollback's); the undo of a failed attempt in progress is handed over, to
    /// finish the compensation it is running and start no other.
    pub(super) fn stop(self: Pin<&mut Self>) -> Option<Rollback> {
        let mut this = self.project();
        let undo = match this.stage.as_mut().project() {
            StageProj::Undo { undo, .. } => {
                let undo = std::mem::replace(undo, Rollback::done());
                undo.wind_down();
                Some(undo)
            }
            _ => None,
        };
        this.end(());
        undo
    }

    /// Drives the item; see [`ItemEnd`].
    pub(super) fn poll_item<F>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        d: &mut Driver<'_, T, F>,
    ) -> Poll<ItemEnd<E>>
    where
        F: FnMut(T, ItemScope) -> Fut,
    {
        let mut this = self.project();
        loop {
            let end = match this.stage.as_mut().project() {
                StageProj::Attempt { handler } => {
                    // The handler is polled first: one that finishes at its deadline wins.
                    match trace::in_span(this.span, || handler.poll(cx)) {
                        Poll::Ready(Ok(())) => {
                            this.commit(d);
                            Some(ItemEnd::Done)
                        }
                        Poll::Ready(Err(error)) => this.undo(Cause::Handler(error), d),
                        Poll::Pending => {
                            let deadline = this.timer.as_mut().as_pin_mut();
                            if !deadline.is_some_and(|deadline| deadline.poll(cx).is_ready()) {
                                return Poll::Pending;
                            }
                            let limit = d.rules.retry.and_then(|p| p.attempt_time_limit());
                            this.undo(Cause::TimedOut(limit.unwrap_or_default()), d)
                        }
                    }
                }
                StageProj::Undo { undo, cause } => {
                    let report = ready!(Pin::new(undo).poll(cx));
                    let cause = cause.take().expect("an undo has a cause");
                    this.undone(cause, report, &d.rules)
                }
                StageProj::Backoff => {
                    // A zero wait arms no timer (so it needs none).
                    if let Some(backoff) = this.timer.as_mut().as_pin_mut() {
                        ready!(backoff.poll(cx));
                    }
                    let keep = d.keep.expect("retries keep the item");
                    let value = keep(this.item.as_ref().expect("retries keep the item"));
                    this.attempt(d, value);
                    None
                }
                StageProj::Free => unreachable!("a free slot is never polled"),
            };
            if let Some(end) = end {
                return Poll::Ready(this.end(end));
            }
        }
    }
}

impl<T, Fut, E> SlotProj<'_, T, Fut, E> {
    /// Starts attempt number `self.attempt` on `value`.
    fn attempt<F>(&mut self, d: &mut Driver<'_, T, F>, value: T)
    where
        F: FnMut(T, ItemScope) -> Fut,
    {
        *self.span = trace::attempt_span(*self.index, *self.attempt);
        let (stack, mark) = (d.run.as_owner(*self.owner), *self.mark);
        let handler = trace::in_span(self.span, || (d.f)(value, ItemScope { stack, mark }));
        self.stage.set(Stage::Attempt { handler });
        let limit = d.rules.retry.and_then(|policy| policy.attempt_time_limit());
        if let Some(limit) = limit {
            self.timer.set(Some(tokio::time::sleep(limit)));
        } else if self.timer.is_some() {
            self.timer.set(None);
        }
    }

    /// The handler returned `Ok`: its compensations are committed, or absorbed into the run.
    #[inline]
    fn commit<F>(&mut self, d: &Driver<'_, T, F>) {
        if d.rules.commit_each {
            d.run.commit_since(*self.owner, *self.mark);
        } else {
            d.run.absorb_into(*self.owner, *self.mark, d.run);
        }
        trace::commit(*self.index);
    }

    /// The attempt failed with `cause`: its own undo starts if a retry or a skip follows;
    /// otherwise the item fails (its compensations are the run's rollback's).
    fn undo<F>(&mut self, cause: Cause<E>, d: &Driver<'_, T, F>) -> Option<ItemEnd<E>> {
        if !(self.retry_left(&d.rules) || d.rules.skip) {
            return Some(ItemEnd::Failed(Box::new((cause, None))));
        }
        if self.timer.is_some() {
            self.timer.set(None);
        }
        let take = Take::Owner(*self.owner, *self.mark);
        let undo = Rollback::new(d.run.as_owner(*self.owner), d.rules.undo, take, None);
        self.stage.set(Stage::Undo {
            undo,
            cause: Some(cause),
        });
        None
    }

    /// The failed attempt's undo resolved with `report`: the backoff before the next
    /// attempt starts, or the item is skipped, or (undo incomplete) it fails.
    fn undone(
        &mut self,
        cause: Cause<E>,
        report: RollbackReport,
        rules: &Rules,
    ) -> Option<ItemEnd<E>> {
        trace::rollback(Undone::Attempt(*self.index), &report);
        if !report.is_complete() {
            // Nothing may build on a half-undone write: the run stops.
            return Some(ItemEnd::Failed(Box::new((cause, Some(report)))));
        }
        if !self.retry_left(rules) {
            trace::skip(*self.index);
            return Some(ItemEnd::Skipped(Box::new((*self.index, cause, report))));
        }
        let policy = rules.retry.expect("retries are on");
        let wait = policy.backoff_strategy().delay(*self.attempt);
        *self.attempt += 1;
        trace::retry(*self.index, *self.attempt);
        self.stage.set(Stage::Backoff);
        if !wait.is_zero() {
            self.timer.set(Some(tokio::time::sleep(wait)));
        }
        None
    }

    fn retry_left(&self, rules: &Rules) -> bool {
        let attempts = rules.retry.map_or(1, |policy| policy.max_attempts());
        self.item.is_some() && *self.attempt < attempts
    }

    /// Frees the slot and returns `end`.
    fn end<R>(&mut self, end: R) -> R {
        self.stage.set(Stage::Free);
        if self.timer.is_some() {
            self.timer.set(None);
        }
        *self.item = None;
        end
    }
}
