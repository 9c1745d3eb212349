//! [`ForEachCompensated`]: the terminal step. Its items in flight are in [`slots`], each
//! driven by the state machine in [`item`].

mod item;
mod sequential;
mod slots;

use core::pin::Pin;
use core::task::{Context, Poll, ready};
use std::future::Future;

use futures_core::future::FusedFuture;
use futures_core::stream::TryStream;
use pin_project_lite::pin_project;
use tokio_util::sync::WaitForCancellationFutureOwned;

use self::item::{Driver, ItemEnd};
pub(super) use self::sequential::Sequential;
pub(super) use self::slots::Slots;
use super::config::{Callback, Config, RunScope};
use super::stack::Take;
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
        pub(super) sequential: Sequential<Fut>,
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
        loop {
            let (cause, earlier) = match this.phase {
                Phase::Running => match if this.config.is_sequential() {
                    poll_sequential(&mut this, cx)
                } else {
                    poll_running(&mut this, cx)
                } {
                    Poll::Ready(Ok(())) => {
                        // The run's success commits what its rollback would have run:
                        // what its items and its own handle registered, and what the
                        // scope's own handles did (not what an open child of the scope
                        // holds: that is the child's).
                        let run = &this.run.scope.stack;
                        run.commit(Take::Run(run.run));
                        run.end_live();
                        *this.phase = Phase::Done;
                        return Poll::Ready(Ok(*this.done));
                    }
                    Poll::Ready(Err(stop)) => stop,
                    Poll::Pending => return Poll::Pending,
                },
                Phase::RollingBack {
                    finishing,
                    rollback,
                    cause,
                    earlier,
                } => {
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
                    this.run.scope.stack.end_live();
                    *this.phase = Phase::Done;
                    return Poll::Ready(Err(CompensatedError::stopped(cause, report)));
                }
                Phase::Done => panic!("ForEachCompensated polled after it resolved"),
            };
            // Stop pulling, drop the handlers in flight (their compensations are
            // registered), let the undos in progress finish the compensation each is
            // running, then roll back everything the run has not committed.
            let run = &this.run.scope.stack;
            this.sequential.as_mut().stop();
            *this.phase = Phase::RollingBack {
                finishing: this.items.as_mut().stop_all(),
                rollback: Rollback::new(
                    run.clone(),
                    this.config.rules.undo,
                    Take::Run(run.run),
                    None,
                ),
                cause: Some(cause),
                earlier: earlier.unwrap_or_default(),
            };
        }
    }
}

/// Pulls items while there is room and drives those in flight, in the shape of
/// futures-util's `try_for_each_concurrent`; `Ready(Ok)` once every item is done and the
/// upstream has ended.
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
    let mut d = Driver {
        f: this.f,
        run: &this.run.scope.stack,
        rules: config.rules,
        keep: config.keep,
    };
    // Checked before polling the handlers left pending (the cancellation may be what woke
    // this task) and before each pull.
    if config.cancelled() {
        return Poll::Ready(Err((Cause::Cancelled, None)));
    }
    this.items.as_mut().enter(config.limit.get(), cx);
    loop {
        let mut progress = false;
        if *this.in_flight < config.limit.get() && !*this.upstream_done {
            if config.cancelled() {
                return Poll::Ready(Err((Cause::Cancelled, None)));
            }
            match this.stream.as_mut().try_poll_next(cx) {
                Poll::Ready(Some(Ok(value))) => {
                    progress = true;
                    *this.in_flight += 1;
                    *this.pulled += 1;
                    let index = *this.pulled - 1;
                    let started = this.items.as_mut().start(cx, index, value, &mut d);
                    if let Poll::Ready(end) = started {
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
        if let Poll::Ready(end) = this.items.as_mut().poll_woken(cx, &mut d) {
            progress = true;
            item_ended(end, this.in_flight, this.done, &mut config.on_skip)?;
        }
        if *this.in_flight == 0 && *this.upstream_done {
            return Poll::Ready(Ok(()));
        }
        if !progress {
            return pending(this.cancelled.as_mut(), cx);
        }
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

/// Pulls and handles items one at a time; `Ready(Ok)` at the end of the stream.
#[inline]
fn poll_sequential<St, F, Fut>(
    this: &mut ForEachProj<'_, St, F, Fut>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), Stop<St::Error>>>
where
    St: TryStream,
    F: FnMut(St::Ok, ItemScope) -> Fut,
    Fut: Future<Output = Result<(), St::Error>>,
{
    let run = &this.run.scope.stack;
    let mut item = this.sequential.as_mut().project();
    // A handler left pending is not polled again once the token fired.
    if item.handler.is_some() && this.config.cancelled() {
        return Poll::Ready(Err((Cause::Cancelled, None)));
    }
    loop {
        if let Some(handler) = item.handler.as_mut().as_pin_mut() {
            match trace::in_span(item.span, || handler.poll(cx)) {
                Poll::Ready(Ok(())) => {
                    item.handler.set(None);
                    this.done.items += 1;
                    if this.config.rules.commit_each {
                        run.commit_since(*item.owner, *item.mark);
                    } else {
                        run.absorb_into(*item.owner, *item.mark, run);
                    }
                    trace::commit(this.done.items - 1);
                }
                Poll::Ready(Err(error)) => {
                    item.handler.set(None);
                    return Poll::Ready(Err((Cause::Handler(error), None)));
                }
                Poll::Pending => return pending(this.cancelled.as_mut(), cx),
            }
        }
        if this.config.cancelled() {
            return Poll::Ready(Err((Cause::Cancelled, None)));
        }
        match this.stream.as_mut().try_poll_next(cx) {
            Poll::Ready(Some(Ok(value))) => {
                // Every earlier item succeeded: this one's index is their count.
                *item.owner = run.new_owner();
                *item.mark = run.mark();
                *item.span = trace::attempt_span(this.done.items, 1);
                let scope = ItemScope {
                    stack: run.as_owner(*item.owner),
                    mark: *item.mark,
                };
                let handler = trace::in_span(item.span, || (this.f)(value, scope));
                item.handler.set(Some(handler));
            }
            Poll::Ready(Some(Err(error))) => upstream_error(this.config, this.done, error)?,
            Poll::Ready(None) => return Poll::Ready(Ok(())),
            Poll::Pending => return pending(this.cancelled.as_mut(), cx),
        }
    }
}
