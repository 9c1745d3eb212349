//! One item in flight: attempt → its own undo on failure → backoff → next attempt, skip,
//! or fail. A slot holds one item at a time and is reused for the next.

use core::pin::Pin;
use core::task::{Context, Poll, ready};
use std::future::Future;

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use crate::compensation::stack::{Stack, Take};
use crate::compensation::{Cause, ItemScope, RetryPolicy, Rollback, RollbackReport};

/// The run's rules that an item follows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    /// Commit an item's compensations when its handler returns `Ok` (per-item unit of work);
    /// otherwise they are absorbed into the run.
    pub(crate) commit_each: bool,
    /// Retry a failed attempt under this policy (the item is kept for the next attempt).
    pub(crate) retry: Option<RetryPolicy>,
    /// The policy of the undo of one failed attempt (the run's rollback policy).
    pub(crate) undo: RetryPolicy,
    /// Roll back an item that still fails, alone, and go on.
    pub(crate) skip: bool,
}

/// How an item ended.
pub(super) enum ItemEnd<E> {
    /// Its handler returned `Ok`.
    Done,
    /// It still failed and was rolled back alone, cleanly: the run hands it to `on_skip`.
    Skipped(u64, Cause<E>, RollbackReport),
    /// It still failed: the run stops. With the report of the item's own undo when that
    /// undo ran and was incomplete.
    Failed(Cause<E>, Option<RollbackReport>),
}

pin_project! {
    #[project = StageProj]
    enum Stage<Fut, E> {
        Free,
        Attempt { #[pin] handler: Fut, #[pin] deadline: Option<Sleep> },
        Undo { undo: Rollback, cause: Option<Cause<E>> },
        Backoff { #[pin] sleep: Sleep },
    }
}

pin_project! {
    #[project = SlotProj]
    /// A slot for one item in flight.
    pub(super) struct Slot<T, Fut, E> {
        #[pin]
        stage: Stage<Fut, E>,
        // The item's handle: registers as the item, in the run.
        scope: Option<Stack>,
        // The registration number when the item started: what its handle registered is
        // at or above it.
        mark: u64,
        // The item, kept for the next attempt (with retries).
        item: Option<T>,
        index: u64,
        attempt: u32,
    }
}

impl<T, Fut, E> Slot<T, Fut, E>
where
    Fut: Future<Output = Result<(), E>>,
{
    pub(super) fn new() -> Self {
        Self {
            stage: Stage::Free,
            scope: None,
            mark: 0,
            item: None,
            index: 0,
            attempt: 0,
        }
    }

    #[inline]
    pub(super) fn is_busy(&self) -> bool {
        !matches!(self.stage, Stage::Free)
    }

    /// Starts item number `index` on its first attempt; `keep` clones it for retries.
    #[inline]
    pub(super) fn start<F>(
        self: Pin<&mut Self>,
        index: u64,
        value: T,
        keep: Option<fn(&T) -> T>,
        f: &mut F,
        run: &Stack,
        rules: &Rules,
    ) where
        F: FnMut(T, ItemScope) -> Fut,
    {
        let this = self.project();
        let scope = run.child();
        *this.mark = scope.mark();
        *this.index = index;
        *this.attempt = 1;
        let value = match keep {
            Some(keep) => keep(this.item.insert(value)),
            None => value,
        };
        let handler = f(
            value,
            ItemScope {
                stack: scope.clone(),
            },
        );
        *this.scope = Some(scope);
        let deadline = rules.retry.and_then(|policy| policy.attempt_time_limit());
        start_attempt(this.stage, handler, deadline);
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
        this.stage.set(Stage::Free);
        *this.item = None;
        *this.scope = None;
        undo
    }

    /// Drives the item; see [`ItemEnd`].
    pub(super) fn poll_item<F>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        f: &mut F,
        run: &Stack,
        rules: &Rules,
        keep: Option<fn(&T) -> T>,
    ) -> Poll<ItemEnd<E>>
    where
        F: FnMut(T, ItemScope) -> Fut,
    {
        let mut this = self.project();
        let time_limit = rules.retry.and_then(|policy| policy.attempt_time_limit());
        let retries = rules.retry.map_or(1, |policy| policy.max_attempts());
        loop {
            let scope = this.scope.as_ref().expect("a polled slot holds an item");
            match this.stage.as_mut().project() {
                StageProj::Attempt { handler, deadline } => {
                    let cause = match handler.poll(cx) {
                        Poll::Ready(Ok(())) => {
                            if rules.commit_each {
                                scope.commit_since(*this.mark);
                            } else {
                                scope.absorb_into(run, *this.mark);
                            }
                            return Poll::Ready(this.end(ItemEnd::Done));
                        }
                        Poll::Ready(Err(error)) => Cause::Handler(error),
                        // The handler is polled first: one that finishes at its deadline wins.
                        Poll::Pending => {
                            let deadline = deadline.as_pin_mut();
                            if !deadline.is_some_and(|deadline| deadline.poll(cx).is_ready()) {
                                return Poll::Pending;
                            }
                            Cause::TimedOut(time_limit.unwrap_or_default())
                        }
                    };
                    let retry_left = this.item.is_some() && *this.attempt < retries;
                    if !(retry_left || rules.skip) {
                        return Poll::Ready(this.end(ItemEnd::Failed(cause, None)));
                    }
                    let take = Take::Owner(scope.owner);
                    let undo = Rollback::new(scope.clone(), rules.undo, take, None);
                    this.stage.set(Stage::Undo {
                        undo,
                        cause: Some(cause),
                    });
                }
                StageProj::Undo { undo, cause } => {
                    let report = ready!(Pin::new(undo).poll(cx));
                    let cause = cause.take().expect("an undo has a cause");
                    if !report.is_complete() {
                        // Nothing may build on a half-undone write: the run stops.
                        return Poll::Ready(this.end(ItemEnd::Failed(cause, Some(report))));
                    }
                    if !(this.item.is_some() && *this.attempt < retries) {
                        let index = *this.index;
                        return Poll::Ready(this.end(ItemEnd::Skipped(index, cause, report)));
                    }
                    let policy = rules.retry.expect("retries are on");
                    let wait = policy.backoff_strategy().delay(*this.attempt);
                    *this.attempt += 1;
                    this.stage.set(Stage::Backoff {
                        sleep: tokio::time::sleep(wait),
                    });
                }
                StageProj::Backoff { sleep } => {
                    ready!(sleep.poll(cx));
                    let keep = keep.expect("retries keep the item");
                    let value = keep(this.item.as_ref().expect("retries keep the item"));
                    let handler = f(
                        value,
                        ItemScope {
                            stack: scope.clone(),
                        },
                    );
                    start_attempt(this.stage.as_mut(), handler, time_limit);
                }
                StageProj::Free => unreachable!("a free slot is never polled"),
            }
        }
    }
}

impl<T, Fut, E> SlotProj<'_, T, Fut, E> {
    /// Frees the slot and returns `end`.
    fn end(&mut self, end: ItemEnd<E>) -> ItemEnd<E> {
        self.stage.set(Stage::Free);
        *self.item = None;
        *self.scope = None;
        end
    }
}

fn start_attempt<Fut, E>(
    mut stage: Pin<&mut Stage<Fut, E>>,
    handler: Fut,
    deadline: Option<std::time::Duration>,
) {
    stage.set(Stage::Attempt {
        handler,
        deadline: None,
    });
    if let Some(limit) = deadline
        && let StageProj::Attempt { mut deadline, .. } = stage.project()
    {
        deadline.set(Some(tokio::time::sleep(limit)));
    }
}
