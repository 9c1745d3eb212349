use core::pin::Pin;
use core::task::{Context, Poll, ready};
use std::future::Future;
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::Cause;
use crate::compensation::{CompensationScope, Rollback, RollbackPolicy, RollbackReport};

/// The run's rules that an item follows.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rules {
    /// [`UnitOfWork::Item`](super::UnitOfWork::Item): commit when the handler returns `Ok`.
    pub(super) commit_each: bool,
    /// Retry a failed attempt under this policy (the item is kept for the next attempt).
    pub(super) retry: Option<RollbackPolicy>,
    /// The policy of the undo of one failed attempt (the run's rollback policy).
    pub(super) undo: RollbackPolicy,
    /// Roll back an item that still fails, alone, and go on.
    pub(super) skip: bool,
}

/// A slot beyond the first, boxed once and reused.
pub(super) type BoxedSlot<T, Fut, E> = Pin<Box<ItemSlot<T, Fut, E>>>;

/// What an item came to, or what it needs from the run.
pub(super) enum Step<E> {
    /// Its handler returned `Ok`; its compensations are committed (per-item unit).
    Committed,
    /// Its failed attempt is undone and the backoff is over: the run, which owns the
    /// handler, starts the next attempt.
    Retry,
    /// It still failed and was rolled back alone, cleanly: the run hands it to `on_skip`.
    Skipped(Cause<E>, RollbackReport),
    /// It still failed: the run stops. With the report of the item's own undo when that
    /// undo ran and was incomplete.
    Failed(Cause<E>, Option<RollbackReport>),
}

pin_project! {
    /// One item in flight and its bookkeeping: the handler's attempt (with its time limit),
    /// the undo of a failed attempt, or the backoff before the next one.
    ///
    /// An item registers through a handle of its own (the run's item handle when items
    /// are handled one at a time), so it commits and undoes only what it registered since
    /// its attempt's mark.
    pub(super) struct ItemSlot<T, Fut, E> {
        #[pin]
        handler: Option<Fut>,
        // The attempt's deadline while the handler runs, the backoff after its undo.
        #[pin]
        timer: Option<Sleep>,
        undo: Option<(Rollback, Cause<E>)>,
        item: Option<T>,
        // The item's own handle (concurrent items); `None`: the run's item handle.
        own: Option<CompensationScope>,
        busy: bool,
        mark: u64,
        attempt: u32,
        index: u64,
    }
}

impl<T, Fut, E> ItemSlot<T, Fut, E> {
    pub(super) fn new() -> Self {
        Self {
            handler: None,
            timer: None,
            undo: None,
            item: None,
            own: None,
            busy: false,
            mark: 0,
            attempt: 0,
            index: 0,
        }
    }

    /// Whether an item occupies the slot.
    #[inline]
    pub(super) fn is_busy(&self) -> bool {
        self.busy
    }

    /// The position of its item in the stream (0 for the first).
    pub(super) fn index(&self) -> u64 {
        self.index
    }

    /// The item kept for its next attempt, when retries are on.
    pub(super) fn item(&self) -> Option<&T> {
        self.item.as_ref()
    }

    /// The item's handle to the scope: its own, or the run's item handle.
    pub(super) fn handle<'a>(&'a self, run: &'a CompensationScope) -> &'a CompensationScope {
        self.own.as_ref().unwrap_or(run)
    }

    /// Takes item number `index`, to be handled through `own` (`None`: the run's item handle);
    /// `item` is kept for retries.
    #[inline(always)]
    pub(super) fn occupy(
        self: Pin<&mut Self>,
        index: u64,
        own: Option<CompensationScope>,
        item: Option<T>,
    ) {
        let this = self.project();
        *this.index = index;
        *this.own = own;
        *this.item = item;
        *this.attempt = 1;
        *this.busy = true;
    }

    /// Starts an attempt: `handler` registers through [`handle`](Self::handle) from `mark`.
    #[inline(always)]
    pub(super) fn begin(
        self: Pin<&mut Self>,
        handler: Fut,
        mark: u64,
        time_limit: Option<Duration>,
    ) {
        let mut this = self.project();
        *this.mark = mark;
        this.handler.set(Some(handler));
        if let Some(limit) = time_limit {
            arm(this.timer, limit);
        }
    }

    /// Starts the handler of an item handled the plain way (one at a time, through the
    /// run's item handle, no retry, no skip): see [`poll_handler`](Self::poll_handler).
    #[inline(always)]
    pub(super) fn start(self: Pin<&mut Self>, handler: Fut, mark: u64) {
        let mut this = self.project();
        *this.mark = mark;
        this.handler.set(Some(handler));
    }

    /// Whether a handler [`start`](Self::start)ed the plain way is still in progress.
    #[inline(always)]
    pub(super) fn has_handler(&self) -> bool {
        self.handler.is_some()
    }

    /// Polls the handler that [`start`](Self::start) started, freeing the slot when it
    /// resolves.
    #[inline(always)]
    pub(super) fn poll_handler(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), E>>
    where
        Fut: Future<Output = Result<(), E>>,
    {
        let mut this = self.project();
        let handler = this
            .handler
            .as_mut()
            .as_pin_mut()
            .expect("a busy slot has a handler");
        let outcome = ready!(handler.poll(cx));
        this.handler.set(None);
        Poll::Ready(outcome)
    }

    /// Keeps the item of a plain-path handler for a retry.
    #[inline(always)]
    pub(super) fn keep_item(self: Pin<&mut Self>, item: T) {
        *self.project().item = Some(item);
    }

    /// Drops the item kept for a retry once the plain-path handler succeeded.
    #[inline(always)]
    pub(super) fn drop_item(self: Pin<&mut Self>) {
        *self.project().item = None;
    }

    /// Takes over a plain-path item, number `index`, whose first attempt failed with
    /// `cause`: the undo of that attempt starts, then [`poll_step`](Self::poll_step) drives
    /// it (retry, or skip) to its end.
    pub(super) fn fail_plain(
        self: Pin<&mut Self>,
        index: u64,
        cause: Cause<E>,
        undo: RollbackPolicy,
        run: &CompensationScope,
    ) {
        let this = self.project();
        *this.index = index;
        *this.own = None;
        *this.attempt = 1;
        *this.busy = true;
        *this.undo = Some((Rollback::since(run.clone(), *this.mark, undo), cause));
    }

    /// The mark of its attempt: what its handle registered since is the attempt's.
    #[inline(always)]
    pub(super) fn mark(&self) -> u64 {
        self.mark
    }

    /// Takes the undo of a failed attempt in progress, if any, for the run to finish when
    /// it stops.
    pub(super) fn take_undo(self: Pin<&mut Self>) -> Option<Rollback> {
        self.project().undo.take().map(|(undo, _cause)| undo)
    }

    /// Frees the slot, dropping whatever is in flight (its compensations stay in the scope).
    #[inline(always)]
    pub(super) fn clear(self: Pin<&mut Self>) {
        let mut this = self.project();
        this.handler.set(None);
        if this.timer.is_some() {
            this.timer.set(None);
        }
        if this.undo.is_some() {
            *this.undo = None;
        }
        *this.item = None;
        *this.own = None;
        *this.busy = false;
    }

    /// Drives the item; see [`Step`].
    #[inline(always)]
    pub(super) fn poll_step(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        rules: &Rules,
        run: &CompensationScope,
    ) -> Poll<Step<E>>
    where
        Fut: Future<Output = Result<(), E>>,
    {
        let mut this = self.project();
        let retry_left = |attempt: u32, kept: bool| {
            kept && rules
                .retry
                .is_some_and(|policy| attempt < policy.max_attempts())
        };
        loop {
            if let Some(handler) = this.handler.as_mut().as_pin_mut() {
                let cause = match handler.poll(cx) {
                    Poll::Ready(Ok(())) => {
                        if rules.commit_each {
                            this.own.as_ref().unwrap_or(run).commit_to(*this.mark);
                        }
                        return Poll::Ready(Step::Committed);
                    }
                    Poll::Ready(Err(error)) => Cause::Handler(error),
                    // The handler is polled first: one that finishes at its deadline wins.
                    Poll::Pending => {
                        let expired = this
                            .timer
                            .as_mut()
                            .as_pin_mut()
                            .is_some_and(|deadline| deadline.poll(cx).is_ready());
                        if !expired {
                            return Poll::Pending;
                        }
                        let limit = rules.retry.and_then(|policy| policy.attempt_time_limit());
                        Cause::TimedOut(limit.unwrap_or_default())
                    }
                };
                this.handler.set(None);
                this.timer.set(None);
                if !(retry_left(*this.attempt, this.item.is_some()) || rules.skip) {
                    return Poll::Ready(Step::Failed(cause, None));
                }
                let handle = this.own.as_ref().unwrap_or(run).clone();
                *this.undo = Some((Rollback::since(handle, *this.mark, rules.undo), cause));
                continue;
            }
            if let Some((undo, _)) = this.undo.as_mut() {
                let report = ready!(Pin::new(undo).poll(cx));
                let (_, cause) = this.undo.take().expect("polled just now");
                if !report.is_complete() {
                    // Nothing may build on a half-undone write: the run stops.
                    return Poll::Ready(Step::Failed(cause, Some(report)));
                }
                if !retry_left(*this.attempt, this.item.is_some()) {
                    return Poll::Ready(Step::Skipped(cause, report));
                }
                let policy = rules.retry.expect("retries are on");
                let wait = policy.backoff_strategy().delay(*this.attempt);
                *this.attempt += 1;
                if wait.is_zero() {
                    return Poll::Ready(Step::Retry);
                }
                this.timer.set(Some(tokio::time::sleep(wait)));
                continue;
            }
            let backoff = this
                .timer
                .as_mut()
                .as_pin_mut()
                .expect("a polled slot is busy");
            ready!(backoff.poll(cx));
            this.timer.set(None);
            return Poll::Ready(Step::Retry);
        }
    }
}

/// Arms an attempt's deadline (out of line: only with a time limit).
#[inline(never)]
fn arm(timer: Pin<&mut Option<Sleep>>, limit: Duration) {
    let mut timer = timer;
    timer.set(Some(tokio::time::sleep(limit)));
}
