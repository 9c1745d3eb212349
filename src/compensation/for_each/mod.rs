//! [`ForEachCompensated`]: the terminal step, in the shape of futures-util's
//! `try_for_each_concurrent`. Its items in flight are in [`slots`], each driven by the
//! state machine in [`item`].

mod item;
mod slots;

use core::pin::Pin;
use core::task::{Context, Poll, ready};
use std::future::Future;

use futures_core::future::FusedFuture;
use futures_core::stream::TryStream;
use pin_project_lite::pin_project;
use tokio_util::sync::WaitForCancellationFutureOwned;

use self::item::{Driver, ItemEnd};
pub(super) use self::slots::Slots;
use super::config::{Callback, Config, RunScope};
use super::stack::{Stack, Take};
use super::trace::{self, Span, Undone};
use super::{Cause, CompensatedError, Completion, ItemScope, Rollback, RollbackReport};

/// Where the run is.
pub(super) enum Phase<E> {
    Running,
    /// Stopped by `cause`: first the undos of failed attempts that were in progress finish
    /// the compensation each is running (`finishing`, wound down: they start no other),
    /// then `rollback` runs what is left, newest first. `earlier` reports the undos done.
    RollingBack {
        finishing: Vec<Rollback>,
        rollback: Rollback,
        cause: Option<Cause<E>>,
        earlier: RollbackReport,
    },
    Done,
}

pin_project! {
    #[project = ForEachProj]
    /// Future for [`ResultStreamExt::for_each_compensated`](crate::ResultStreamExt::for_each_compensated).
    ///
    /// Configure it before the first poll with [`rollback_policy`](Self::rollback_policy),
    /// [`all_or_nothing`](Self::all_or_nothing), [`with_cancellation`](Self::with_cancellation),
    /// [`concurrency`](Self::concurrency), [`retry`](Self::retry),
    /// [`skip_failed_items`](Self::skip_failed_items) and
    /// [`skip_upstream_errors`](Self::skip_upstream_errors). The method's documentation
    /// states every rule.
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct ForEachCompensated<St: TryStream, F, Fut> {
        #[pin]
        pub(super) stream: St,
        pub(super) f: F,
        #[pin]
        pub(super) items: Slots<St::Ok, Fut, St::Error>,
        pub(super) run: RunScope,
        pub(super) config: Config<St::Ok, St::Error>,
        #[pin]
        pub(super) cancelled: Option<WaitForCancellationFutureOwned>,
        pub(super) phase: Phase<St::Error>,
        pub(super) in_flight: usize,
        pub(super) upstream_done: bool,
        pub(super) pulled: u64,
        pub(super) done: Completion,
        pub(super) span: Span,
    }
}

/// Why the run stops: the cause, and the report of a failed item's own incomplete undo.
type Stop<E> = (Cause<E>, Option<RollbackReport>);

impl<St, F, Fut> Future for ForEachCompensated<St, F, Fut>
where
    St: TryStream,
    F: FnMut(St::Ok, ItemScope) -> Fut,
    Fut: Future<Output = Result<(), St::Error>>,
{
    type Output = Result<Completion, CompensatedError<St::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _span = trace::enter(this.span);
        let (cause, earlier) = match this.phase {
            Phase::Running => match ready!(if this.config.is_one_at_a_time() {
                poll_one_at_a_time(&mut this, cx)
            } else {
                poll_running(&mut this, cx)
            }) {
                Ok(()) => {
                    let run = &this.run.scope.stack;
                    // The run's success commits what its rollback would have run: what its
                    // items and its own handle registered, and what the scope's own handles
                    // did (not what an open child of the scope holds: that is the child's).
                    run.commit(Take::Run(run.run));
                    run.end_live();
                    *this.phase = Phase::Done;
                    return Poll::Ready(Ok(*this.done));
                }
                Err(stop) => stop,
            },
            Phase::RollingBack { .. } => return poll_rollback(this.phase, &this.run.scope.stack, cx),
            Phase::Done => panic!("ForEachCompensated polled after it resolved"),
        };
        // Stop pulling, drop the handlers in flight (their compensations are registered),
        // let the undos in progress finish the compensation each is running, then roll
        // back everything the run has not committed.
        let run = &this.run.scope.stack;
        *this.phase = Phase::RollingBack {
            finishing: this.items.as_mut().stop_all(),
            rollback: Rollback::new(run.clone(), this.config.rules.undo, Take::Run(run.run), None),
            cause: Some(cause),
            earlier: earlier.unwrap_or_default(),
        };
        poll_rollback(this.phase, run, cx)
    }
}

/// Pulls items while there is room and drives those in flight, as futures-util's
/// `try_for_each_concurrent` does; `Ready(Ok)` once every item is done and the upstream
/// has ended.
fn poll_running<St, F, Fut>(
    this: &mut ForEachProj<'_, St, F, Fut>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), Stop<St::Error>>>
where
    St: TryStream,
    F: FnMut(St::Ok, ItemScope) -> Fut,
    Fut: Future<Output = Result<(), St::Error>>,
{
    let config = &mut *this.config;
    let (limit, mut d) = (config.limit.get(), Driver::new(this.f, &this.run.scope.stack, config));
    this.items.as_mut().enter(limit, cx);
    loop {
        // Checked before each pull and before polling the handlers left pending (the
        // cancellation may be what woke this task).
        if config.cancelled() {
            return Poll::Ready(Err((Cause::Cancelled, None)));
        }
        let mut progress = false;
        if *this.in_flight < limit && !*this.upstream_done {
            match this.stream.as_mut().try_poll_next(cx) {
                Poll::Ready(Some(Ok(value))) => {
                    progress = true;
                    *this.in_flight += 1;
                    *this.pulled += 1;
                    let index = *this.pulled - 1;
                    if let Poll::Ready(end) = this.items.as_mut().start(cx, index, value, &mut d) {
                        item_ended(end, this.in_flight, this.done, &mut config.on_skip)?;
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    progress = true;
                    upstream_error(config, this.done, error)?;
                }
                Poll::Ready(None) => *this.upstream_done = true,
                Poll::Pending => {}
            }
        }
        if *this.in_flight > 0 {
            if let Poll::Ready(end) = this.items.as_mut().poll_woken(cx, &mut d) {
                progress = true;
                item_ended(end, this.in_flight, this.done, &mut config.on_skip)?;
            }
        } else if *this.upstream_done {
            return Poll::Ready(Ok(()));
        }
        if !progress {
            return pending(this.cancelled.as_mut(), cx);
        }
    }
}

/// The fast path, one item at a time with no retry and no skip (the default): the loop of
/// futures-util's `try_for_each`, on the same item code, without the bookkeeping of items
/// in flight (which costs about 80 instructions per item more).
#[inline(always)]
fn poll_one_at_a_time<St, F, Fut>(
    this: &mut ForEachProj<'_, St, F, Fut>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), Stop<St::Error>>>
where
    St: TryStream,
    F: FnMut(St::Ok, ItemScope) -> Fut,
    Fut: Future<Output = Result<(), St::Error>>,
{
    let config = &mut *this.config;
    let mut d = Driver::new(this.f, &this.run.scope.stack, config);
    let mut slot = this.items.as_mut().first();
    // A handler left pending is not polled again once the token fired.
    if config.cancelled() {
        return Poll::Ready(Err((Cause::Cancelled, None)));
    }
    let mut polled = slot.as_mut().poll_one(cx, &d, &mut this.done.items);
    loop {
        match polled {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(error)) => return Poll::Ready(Err((Cause::Handler(error), None))),
            Poll::Pending => return pending(this.cancelled.as_mut(), cx),
        }
        if config.cancelled() {
            return Poll::Ready(Err((Cause::Cancelled, None)));
        }
        polled = match this.stream.as_mut().try_poll_next(cx) {
            Poll::Ready(Some(Ok(value))) => {
                slot.as_mut().start_one(this.done.items, value, &mut d);
                slot.as_mut().poll_one(cx, &d, &mut this.done.items)
            }
            Poll::Ready(Some(Err(error))) => {
                upstream_error(config, this.done, error)?;
                continue;
            }
            Poll::Ready(None) => return Poll::Ready(Ok(())),
            Poll::Pending => return pending(this.cancelled.as_mut(), cx),
        };
    }
}

/// Nothing to do until woken: `Pending`, unless the cancellation fired (its future is
/// polled, so that it wakes the run).
fn pending<E>(
    cancelled: Pin<&mut Option<WaitForCancellationFutureOwned>>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), Stop<E>>> {
    match cancelled.as_pin_mut().map(|cancelled| cancelled.poll(cx)) {
        Some(Poll::Ready(())) => Poll::Ready(Err((Cause::Cancelled, None))),
        _ => Poll::Pending,
    }
}

/// Lets the undos in progress finish, then runs the run's rollback; resolves to the error.
fn poll_rollback<E>(
    phase: &mut Phase<E>,
    run: &Stack,
    cx: &mut Context<'_>,
) -> Poll<Result<Completion, CompensatedError<E>>> {
    let Phase::RollingBack {
        finishing,
        rollback,
        cause,
        earlier,
    } = phase
    else {
        unreachable!("only a run that stopped rolls back");
    };
    finishing.retain_mut(|undo| match Pin::new(undo).poll(cx) {
        Poll::Ready(report) => {
            *earlier = report.after(std::mem::take(earlier));
            false
        }
        Poll::Pending => true,
    });
    if !finishing.is_empty() {
        return Poll::Pending;
    }
    let report = ready!(Pin::new(rollback).poll(cx)).after(std::mem::take(earlier));
    trace::rollback(Undone::Run, &report);
    let cause = cause.take().expect("a rollback has a cause");
    run.end_live();
    *phase = Phase::Done;
    Poll::Ready(Err(CompensatedError::stopped(cause, report)))
}

/// An upstream error stops the run, or is handed to the callback of `skip_upstream_errors`.
fn upstream_error<T, E>(
    config: &mut Config<T, E>,
    done: &mut Completion,
    error: E,
) -> Result<(), Stop<E>> {
    let Some(on_error) = config.on_upstream_error.as_mut() else {
        return Err((Cause::Upstream(error), None));
    };
    done.upstream_errors += 1;
    (on_error.get_mut().unwrap_or_else(|p| p.into_inner()))(error);
    Ok(())
}

/// Counts an item that ended; an item that failed stops the run.
#[inline(always)]
fn item_ended<E>(
    end: ItemEnd<E>,
    in_flight: &mut usize,
    done: &mut Completion,
    on_skip: &mut Option<Callback<(u64, CompensatedError<E>)>>,
) -> Result<(), Stop<E>> {
    *in_flight -= 1;
    match end {
        ItemEnd::Done => done.items += 1,
        ItemEnd::Skipped(skipped) => {
            let (index, cause, report) = *skipped;
            done.skipped += 1;
            let on_skip = on_skip.as_mut().expect("skips are on");
            (on_skip.get_mut().unwrap_or_else(|p| p.into_inner()))((
                index,
                CompensatedError::skipped(cause, report),
            ));
        }
        ItemEnd::Failed(failed) => return Err(*failed),
    }
    Ok(())
}

impl<St, F, Fut> FusedFuture for ForEachCompensated<St, F, Fut>
where
    St: TryStream,
    F: FnMut(St::Ok, ItemScope) -> Fut,
    Fut: Future<Output = Result<(), St::Error>>,
{
    fn is_terminated(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }
}
