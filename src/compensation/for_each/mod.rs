//! [`ForEachCompensated`]: the terminal step, in the shape of futures-util's
//! `try_for_each_concurrent`; its items are driven by [`item`].

mod item;

use core::pin::Pin;
use core::task::{Context, Poll, ready};
use std::future::Future;

use futures_core::future::FusedFuture;
use futures_core::stream::TryStream;
use pin_project_lite::pin_project;
use tokio_util::sync::WaitForCancellationFutureOwned;

use self::item::{Driver, Stop};
pub(super) use self::item::{Slot, Slots};
use super::config::{Config, RunScope};
use super::stack::Take;
use super::trace::{self, Span, Undone};
use super::{Cause, CompensatedError, Completion, ItemScope, Rollback};

/// Where the run is.
pub(super) enum Phase<E> {
    Running,
    /// Stopped by `cause`: the rollback runs.
    RollingBack {
        rollback: Rollback,
        cause: Option<Cause<E>>,
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
        // The item of the fast path.
        #[pin]
        pub(super) one: Slot<St::Ok, Fut, St::Error>,
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
        if let Phase::Running = this.phase {
            let polled = match this.config.is_one_at_a_time() {
                true => this.poll_one_at_a_time(cx),
                false => this.poll_running(cx),
            };
            let run = &this.run.scope.stack;
            let Err((cause, earlier)) = ready!(polled) else {
                // The run's success commits what its rollback would have run: what its
                // items and its own handle registered, and what the scope's own handles did
                // (not what an open child of the scope holds: that is the child's).
                run.commit(Take::Run(run.run));
                run.end_live();
                *this.phase = Phase::Done;
                return Poll::Ready(Ok(*this.done));
            };
            // Stop pulling and drop the handlers in flight (their compensations are
            // registered); the undos of failed attempts in progress finish the compensation
            // each is running (they start no other), then the run's rollback runs what is
            // left, newest first.
            this.one.as_mut().stop();
            let rest = Rollback::new(
                run.clone(),
                this.config.rules.undo,
                Take::Run(run.run),
                None,
            );
            let rollback =
                Rollback::after(this.items.stop_all(), rest, earlier.unwrap_or_default());
            *this.phase = Phase::RollingBack {
                rollback,
                cause: Some(cause),
            };
        }
        let Phase::RollingBack { rollback, cause } = this.phase else {
            panic!("ForEachCompensated polled after it resolved");
        };
        let report = ready!(Pin::new(rollback).poll(cx));
        trace::rollback(Undone::Run, &report);
        let cause = cause.take().expect("a rollback has a cause");
        this.run.scope.stack.end_live();
        *this.phase = Phase::Done;
        Poll::Ready(Err(CompensatedError::stopped(cause, report)))
    }
}

impl<St, F, Fut> ForEachProj<'_, St, F, Fut>
where
    St: TryStream,
    F: FnMut(St::Ok, ItemScope) -> Fut,
    Fut: Future<Output = Result<(), St::Error>>,
{
    /// The general path: pulls items while there is room and drives those in flight, as
    /// futures-util's `try_for_each_concurrent` does; `Ready(Ok)` once every item is done and
    /// the upstream has ended.
    fn poll_running(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Stop<St::Error>>> {
        let limit = self.config.limit.get();
        let run = &self.run.scope.stack;
        let (f, cfg, done) = (&mut *self.f, &mut *self.config, &mut *self.done);
        let mut d = Driver { f, run, cfg, done };
        self.items.enter(cx);
        loop {
            // Checked before each pull and before polling the handlers left pending (the
            // cancellation may be what woke this task).
            d.not_cancelled()?;
            let mut progress = false;
            if *self.in_flight < limit && !*self.upstream_done {
                match self.stream.as_mut().try_poll_next(cx) {
                    Poll::Ready(Some(Ok(value))) => {
                        (progress, *self.in_flight) = (true, *self.in_flight + 1);
                        d.start_in(self.items, *self.pulled, value);
                        *self.pulled += 1;
                    }
                    Poll::Ready(Some(Err(error))) => {
                        progress = true;
                        d.upstream_error(error)?;
                    }
                    Poll::Ready(None) => *self.upstream_done = true,
                    Poll::Pending => {}
                }
            }
            if *self.in_flight == 0 && *self.upstream_done {
                return Poll::Ready(Ok(()));
            }
            if let Poll::Ready(end) = d.poll_woken(self.items) {
                (progress, *self.in_flight) = (true, *self.in_flight - 1);
                end.map_err(|stop| *stop)?;
            }
            if !progress {
                return pending(self.cancelled.as_mut(), cx);
            }
        }
    }

    /// The fast path, one item at a time with no retry and no skip (the default): the loop of
    /// futures-util's `try_for_each` on one slot, without the bookkeeping of the general path
    /// (about 80 instructions per item).
    #[inline(always)]
    fn poll_one_at_a_time(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Stop<St::Error>>> {
        let run = &self.run.scope.stack;
        let (f, cfg, done) = (&mut *self.f, &mut *self.config, &mut *self.done);
        let mut d = Driver { f, run, cfg, done };
        // A handler left pending is not polled again once the token fired.
        d.not_cancelled()?;
        let mut polled = d.poll_one(self.one.as_mut(), cx);
        loop {
            match polled {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error)) => return Poll::Ready(Err((Cause::Handler(error), None))),
                Poll::Pending => return pending(self.cancelled.as_mut(), cx),
            }
            d.not_cancelled()?;
            polled = match self.stream.as_mut().try_poll_next(cx) {
                Poll::Ready(Some(Ok(value))) => {
                    d.start_one(self.one.as_mut(), d.done.items, value);
                    d.poll_one(self.one.as_mut(), cx)
                }
                Poll::Ready(Some(Err(error))) => {
                    d.upstream_error(error)?;
                    continue;
                }
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return pending(self.cancelled.as_mut(), cx),
            };
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

impl<T, E, F> Driver<'_, T, E, F> {
    /// `Err` once the cancellation token fired.
    fn not_cancelled(&self) -> Result<(), Stop<E>> {
        match self.cfg.cancelled() {
            true => Err((Cause::Cancelled, None)),
            false => Ok(()),
        }
    }

    /// An upstream error stops the run, or is handed to `skip_upstream_errors`' callback.
    fn upstream_error(&mut self, error: E) -> Result<(), Stop<E>> {
        let Some(on_error) = self.cfg.on_upstream_error.as_mut() else {
            return Err((Cause::Upstream(error), None));
        };
        self.done.upstream_errors += 1;
        (on_error.get_mut().unwrap_or_else(|p| p.into_inner()))(error);
        Ok(())
    }
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
