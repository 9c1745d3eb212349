//! [`ForEachCompensated`]: the terminal step (here), its configuration ([`config`]), its
//! items in flight ([`item`]) and its error ([`error`]).

mod config;
mod error;
mod item;
mod plain;

use core::fmt;
use core::pin::Pin;
use core::task::{Context, Poll, ready};
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::Mutex;

use futures_core::future::FusedFuture;
use futures_core::stream::TryStream;
use pin_project_lite::pin_project;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

pub use config::{Completion, UnitOfWork};
pub use error::{Cause, CompensatedError};
use item::{BoxedSlot, ItemSlot, Rules, Step};
use plain::Plain;

use super::scope::LiveRun;
use super::{CompensationScope, Rollback, RollbackPolicy, RollbackReport};

/// The callback of [`ForEachCompensated::skip_failed_items`]. The `Mutex` is never locked
/// (it is reached through `&mut`): it only makes the future `Sync`.
type OnSkip<E> = Mutex<Box<dyn FnMut(u64, CompensatedError<E>) + Send>>;

/// Where the run is.
enum Phase<E> {
    /// Pulling items and handling them.
    Running,
    /// Stopped by `cause`; undoing what is not committed. `earlier` is the report of a
    /// failed item's own, incomplete, undo, and of the undos in `finishing`: those of
    /// failed attempts that were in progress when the run stopped. They are wound down
    /// first: the compensations they are running finish (dropping one would give back to
    /// the scope its running compensation and those that already failed, and `rollback`
    /// would run them again), they start no other; then `rollback` runs what is left,
    /// newest first.
    RollingBack {
        finishing: Vec<Rollback>,
        rollback: Rollback,
        cause: Option<Cause<E>>,
        earlier: Option<RollbackReport>,
    },
    /// Resolved.
    Done,
}

pin_project! {
    #[project = ForEachProj]
    /// Future for [`ResultStreamExt::for_each_compensated`](crate::ResultStreamExt::for_each_compensated).
    ///
    /// Configure it before the first poll with [`rollback_policy`](Self::rollback_policy),
    /// [`unit_of_work`](Self::unit_of_work) (or [`all_or_nothing`](Self::all_or_nothing)),
    /// [`with_cancellation`](Self::with_cancellation), [`concurrency`](Self::concurrency),
    /// [`retry`](Self::retry) and [`skip_failed_items`](Self::skip_failed_items). The
    /// method's documentation states every rule.
    ///
    /// # Implementation
    ///
    /// The run is in one phase at a time: running (pulling and handling), rolling
    /// back, done. Each item in flight lives in a slot that keeps its bookkeeping (its
    /// handle, its attempt's mark, retries, its own undo). The first slot is inline, so
    /// one item at a time allocates nothing per item; with
    /// [`concurrency(n)`](Self::concurrency) the other `n - 1` slots are boxed once, when
    /// first needed, and reused.
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct ForEachCompensated<St: TryStream, F, Fut> {
        #[pin]
        stream: St,
        f: F,
        #[pin]
        first: ItemSlot<St::Ok, Fut, St::Error>,
        extra: Vec<BoxedSlot<St::Ok, Fut, St::Error>>,
        run: LiveRun,
        policy: RollbackPolicy,
        unit: UnitOfWork,
        limit: NonZeroUsize,
        retry: Option<RollbackPolicy>,
        keep: Option<fn(&St::Ok) -> St::Ok>,
        on_skip: Option<OnSkip<St::Error>>,
        token: Option<CancellationToken>,
        #[pin]
        cancelled: Option<WaitForCancellationFutureOwned>,
        phase: Phase<St::Error>,
        upstream_done: bool,
        pulled: u64,
        items: u64,
        skipped: u64,
    }
}

impl<St, F, Fut> fmt::Debug for ForEachCompensated<St, F, Fut>
where
    St: TryStream + fmt::Debug,
    St::Error: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForEachCompensated")
            .field("stream", &self.stream)
            .field("scope", &self.run)
            .field("policy", &self.policy)
            .field("unit", &self.unit)
            .field("concurrency", &self.limit)
            .field("retry", &self.retry)
            .field("skips", &self.on_skip.is_some())
            .field("token", &self.token)
            .field("items", &self.items)
            .field("skipped", &self.skipped)
            .field("done", &matches!(self.phase, Phase::Done))
            .finish_non_exhaustive()
    }
}

/// The slot `at` (0: the inline one).
#[inline]
fn slot<'a, T, Fut, E>(
    first: &'a mut Pin<&mut ItemSlot<T, Fut, E>>,
    extra: &'a mut [BoxedSlot<T, Fut, E>],
    at: usize,
) -> Pin<&'a mut ItemSlot<T, Fut, E>> {
    match at {
        0 => first.as_mut(),
        _ => extra[at - 1].as_mut(),
    }
}

impl<St, F, Fut> Future for ForEachCompensated<St, F, Fut>
where
    St: TryStream,
    F: FnMut(St::Ok, CompensationScope) -> Fut,
    Fut: Future<Output = Result<(), St::Error>>,
{
    type Output = Result<Completion, CompensatedError<St::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let rules = Rules {
            commit_each: *this.unit == UnitOfWork::Item,
            retry: *this.retry,
            undo: *this.policy,
            skip: this.on_skip.is_some(),
        };
        let time_limit = this.retry.and_then(|policy| policy.attempt_time_limit());
        // One item at a time with no time limit: an item takes the plain path (its handler
        // polled directly, no more per item than that) until an attempt fails and needs an
        // undo of its own (retry, skip); the slot's own machinery then takes it to its end.
        let single = this.limit.get() == 1 && time_limit.is_none();
        // And with no retry and no skip, no attempt is ever handed over.
        let simple = single && rules.retry.is_none() && !rules.skip;
        // The token is checked before each pull, and before polling handlers left pending
        // by an earlier call (one may have been woken by the cancellation).
        let mut check_before_handlers = true;
        'poll: loop {
            match this.phase {
                Phase::Running => {}
                Phase::RollingBack {
                    finishing,
                    rollback,
                    cause,
                    earlier,
                } => {
                    finishing.retain_mut(|undo| match Pin::new(undo).poll(cx) {
                        Poll::Ready(report) => {
                            let before = earlier.take().unwrap_or_default();
                            *earlier = Some(report.after(before));
                            false
                        }
                        Poll::Pending => true,
                    });
                    if !finishing.is_empty() {
                        return Poll::Pending;
                    }
                    let mut report = ready!(Pin::new(rollback).poll(cx));
                    if let Some(earlier) = earlier.take() {
                        report = report.after(earlier);
                    }
                    let cause = cause.take().expect("a rollback always has a cause");
                    *this.phase = Phase::Done;
                    this.run.end();
                    return Poll::Ready(Err(CompensatedError { cause, report }));
                }
                Phase::Done => panic!("ForEachCompensated polled after it resolved"),
            }

            let token_fired = || {
                this.token
                    .as_ref()
                    .is_some_and(CancellationToken::is_cancelled)
            };
            let (cause, earlier) = if simple {
                // One item at a time, no retry, no skip: the handler is polled directly,
                // with no more per item than that.
                'plain: loop {
                    if this.first.has_handler() {
                        if check_before_handlers && token_fired() {
                            break 'plain (Cause::Cancelled, None);
                        }
                        match this.first.as_mut().poll_handler(cx) {
                            Poll::Ready(Ok(())) => {
                                *this.items += 1;
                                if rules.commit_each {
                                    this.run.items().commit_to(this.first.mark());
                                }
                            }
                            Poll::Ready(Err(error)) => break 'plain (Cause::Handler(error), None),
                            Poll::Pending => {
                                if is_cancelled(this.cancelled.as_mut(), cx) {
                                    break 'plain (Cause::Cancelled, None);
                                }
                                return Poll::Pending;
                            }
                        }
                    }
                    if token_fired() {
                        break 'plain (Cause::Cancelled, None);
                    }
                    match this.stream.as_mut().try_poll_next(cx) {
                        Poll::Ready(Some(Ok(value))) => {
                            let handle = this.run.items();
                            let mark = handle.checkpoint();
                            let handler = (this.f)(value, handle.clone());
                            this.first.as_mut().start(handler, mark);
                            check_before_handlers = false;
                        }
                        Poll::Ready(Some(Err(error))) => {
                            break 'plain (Cause::Upstream(error), None);
                        }
                        Poll::Ready(None) => {
                            this.run.handle().commit_run();
                            this.run.end();
                            *this.phase = Phase::Done;
                            return Poll::Ready(Ok(Completion {
                                items: *this.items,
                                skipped: *this.skipped,
                            }));
                        }
                        Poll::Pending => {
                            if is_cancelled(this.cancelled.as_mut(), cx) {
                                break 'plain (Cause::Cancelled, None);
                            }
                            return Poll::Pending;
                        }
                    }
                }
            } else if single && !this.first.is_busy() {
                // With skips only, no item is kept.
                let outcome = if this.keep.is_none() {
                    plain::poll::<false, _, _, _>(&mut this, cx, &rules, &mut check_before_handlers)
                } else {
                    plain::poll::<true, _, _, _>(&mut this, cx, &rules, &mut check_before_handlers)
                };
                match outcome {
                    Plain::Return(poll) => return poll,
                    Plain::Stop(cause) => (cause, None),
                    Plain::HandOver => continue 'poll,
                }
            } else {
                'work: {
                    let slots = 1 + this.extra.len();
                    let mut free = None;
                    // Whether an item is still in flight after this round.
                    let mut pending = false;
                    let mut again = false;
                    if check_before_handlers && slot_busy(&this.first, this.extra) && token_fired()
                    {
                        break 'work (Cause::Cancelled, None);
                    }
                    for at in 0..slots {
                        let mut item = slot(&mut this.first, this.extra, at);
                        if !item.is_busy() {
                            free.get_or_insert(at);
                            continue;
                        }
                        match item.as_mut().poll_step(cx, &rules, this.run.items()) {
                            Poll::Pending => pending = true,
                            Poll::Ready(Step::Committed) => {
                                item.clear();
                                *this.items += 1;
                                free.get_or_insert(at);
                            }
                            Poll::Ready(Step::Retry) => {
                                let keep = this.keep.expect("retries keep the item");
                                let next = keep(item.item().expect("retries keep the item"));
                                let handle = item.handle(this.run.items()).clone();
                                let mark = handle.checkpoint();
                                let handler = (this.f)(next, handle);
                                item.begin(handler, mark, time_limit);
                                again = true;
                            }
                            Poll::Ready(Step::Skipped(cause, report)) => {
                                let index = item.index();
                                item.clear();
                                *this.skipped += 1;
                                free.get_or_insert(at);
                                let on_skip = this.on_skip.as_mut().expect("skips are on");
                                let on_skip = on_skip.get_mut().unwrap_or_else(|p| p.into_inner());
                                on_skip(index, CompensatedError { cause, report });
                            }
                            Poll::Ready(Step::Failed(cause, report)) => {
                                break 'work (cause, report);
                            }
                        }
                    }

                    if single && free.is_some() && !*this.upstream_done {
                        // Back to the plain path for the next item.
                        continue 'poll;
                    }
                    if !*this.upstream_done {
                        if free.is_none() && slots < this.limit.get() {
                            this.extra.push(Box::pin(ItemSlot::new()));
                            free = Some(slots);
                        }
                        if let Some(at) = free {
                            if token_fired() {
                                break 'work (Cause::Cancelled, None);
                            }
                            match this.stream.as_mut().try_poll_next(cx) {
                                Poll::Ready(Some(Ok(value))) => {
                                    let mut item = slot(&mut this.first, this.extra, at);
                                    // One at a time, an item registers through the run's item handle;
                                    // concurrent items each through their own.
                                    let own = (this.limit.get() > 1)
                                        .then(|| this.run.handle().for_item());
                                    let handle = own.as_ref().unwrap_or(this.run.items());
                                    let mark = handle.checkpoint();
                                    let (value, kept) = match this.keep {
                                        None => (value, None),
                                        Some(keep) => (keep(&value), Some(value)),
                                    };
                                    let handler = (this.f)(value, handle.clone());
                                    item.as_mut().occupy(*this.pulled, own, kept);
                                    item.begin(handler, mark, time_limit);
                                    *this.pulled += 1;
                                    check_before_handlers = false;
                                    continue 'poll;
                                }
                                Poll::Ready(Some(Err(error))) => {
                                    break 'work (Cause::Upstream(error), None);
                                }
                                Poll::Ready(None) => {
                                    *this.upstream_done = true;
                                    continue 'poll;
                                }
                                Poll::Pending => {}
                            }
                        }
                    } else if !pending && !again {
                        // Everything the run owns is committed with it: what its handlers
                        // registered and what was registered through `scope()`, before the
                        // first item or between items.
                        this.run.handle().commit_run();
                        this.run.end();
                        *this.phase = Phase::Done;
                        return Poll::Ready(Ok(Completion {
                            items: *this.items,
                            skipped: *this.skipped,
                        }));
                    }
                    if again {
                        check_before_handlers = false;
                        continue 'poll;
                    }
                    if is_cancelled(this.cancelled.as_mut(), cx) {
                        break 'work (Cause::Cancelled, None);
                    }
                    return Poll::Pending;
                }
            };

            // Stop pulling, drop the handlers in progress (their compensations are already
            // registered), finish the undos in progress, and roll back everything not
            // committed.
            let mut finishing = Vec::new();
            for at in 0..1 + this.extra.len() {
                let mut item = slot(&mut this.first, this.extra, at);
                if let Some(undo) = item.as_mut().take_undo() {
                    // Its compensation in progress finishes; the rest is the run's
                    // rollback's, newest first across items.
                    undo.wind_down();
                    finishing.push(undo);
                }
                item.clear();
            }
            *this.phase = Phase::RollingBack {
                finishing,
                rollback: this.run.handle().rollback(*this.policy),
                cause: Some(cause),
                earlier,
            };
        }
    }
}

/// Whether any slot holds an item.
fn slot_busy<T, Fut, E>(
    first: &Pin<&mut ItemSlot<T, Fut, E>>,
    extra: &[BoxedSlot<T, Fut, E>],
) -> bool {
    first.is_busy() || extra.iter().any(|slot| slot.is_busy())
}

/// Polls the cancellation future, registering the task's waker with it.
fn is_cancelled(
    cancelled: Pin<&mut Option<WaitForCancellationFutureOwned>>,
    cx: &mut Context<'_>,
) -> bool {
    cancelled
        .as_pin_mut()
        .is_some_and(|cancelled| cancelled.poll(cx).is_ready())
}

impl<St, F, Fut> FusedFuture for ForEachCompensated<St, F, Fut>
where
    St: TryStream,
    F: FnMut(St::Ok, CompensationScope) -> Fut,
    Fut: Future<Output = Result<(), St::Error>>,
{
    fn is_terminated(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }
}
