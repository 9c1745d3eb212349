use core::fmt;
use core::pin::Pin;
use core::task::{Context, Poll, ready};
use std::future::Future;

use futures_core::future::FusedFuture;
use futures_core::stream::TryStream;
use pin_project_lite::pin_project;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::{Cause, CompensatedError, CompensationScope, Rollback, RollbackPolicy};

/// What one commit of compensations covers in [`ForEachCompensated`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnitOfWork {
    /// Each item is its own unit (the default): when the handler returns `Ok`, the
    /// compensations registered for that item are committed (dropped). A failure undoes only
    /// the item in progress.
    #[default]
    Item,
    /// The whole run is one unit (all-or-nothing): compensations are kept until the stream
    /// ends, so a failure undoes every item processed so far.
    Run,
}

/// What a successful [`ForEachCompensated`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    items: u64,
}

impl Completion {
    /// How many items the handler processed successfully.
    pub fn items(&self) -> u64 {
        self.items
    }
}

pin_project! {
    /// Future for [`ResultStreamExt::for_each_compensated`](crate::ResultStreamExt::for_each_compensated).
    ///
    /// Configure it before the first poll with [`rollback_policy`](Self::rollback_policy),
    /// [`unit_of_work`](Self::unit_of_work) (or [`all_or_nothing`](Self::all_or_nothing)) and
    /// [`with_cancellation`](Self::with_cancellation). The method's documentation states every
    /// rule.
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct ForEachCompensated<St: TryStream, F, Fut> {
        #[pin]
        stream: St,
        f: F,
        #[pin]
        handler: Option<Fut>,
        scope: CompensationScope,
        policy: RollbackPolicy,
        unit: UnitOfWork,
        token: Option<CancellationToken>,
        #[pin]
        cancelled: Option<WaitForCancellationFutureOwned>,
        rollback: Option<Rollback>,
        cause: Option<Cause<St::Error>>,
        run_mark: Option<u64>,
        item_mark: u64,
        items: u64,
        done: bool,
    }
}

impl<St, F, Fut> fmt::Debug for ForEachCompensated<St, F, Fut>
where
    St: TryStream + fmt::Debug,
    St::Error: fmt::Debug,
    Fut: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForEachCompensated")
            .field("stream", &self.stream)
            .field("handler", &self.handler)
            .field("scope", &self.scope)
            .field("policy", &self.policy)
            .field("unit", &self.unit)
            .field("token", &self.token)
            .field("rollback", &self.rollback)
            .field("cause", &self.cause)
            .field("items", &self.items)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<St: TryStream, F, Fut> ForEachCompensated<St, F, Fut> {
    pub(crate) fn new(stream: St, scope: CompensationScope, f: F) -> Self {
        Self {
            stream,
            f,
            handler: None,
            scope: scope.for_new_run(),
            policy: RollbackPolicy::default(),
            unit: UnitOfWork::default(),
            token: None,
            cancelled: None,
            rollback: None,
            cause: None,
            run_mark: None,
            item_mark: 0,
            items: 0,
            done: false,
        }
    }

    /// Sets how the rollback runs each compensation (default: once each, newest first).
    pub fn rollback_policy(mut self, policy: RollbackPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets what one commit covers (default: [`UnitOfWork::Item`]).
    pub fn unit_of_work(mut self, unit: UnitOfWork) -> Self {
        self.unit = unit;
        self
    }

    /// Shorthand for [`unit_of_work(UnitOfWork::Run)`](UnitOfWork::Run): a failure undoes the
    /// whole run.
    pub fn all_or_nothing(self) -> Self {
        self.unit_of_work(UnitOfWork::Run)
    }

    /// Stops the run, dropping the handler in progress at once, and rolls back when `token`
    /// is cancelled. The error's cause is then [`Cause::Cancelled`].
    ///
    /// The run watches a [child](CancellationToken::child_token) of `token`, so checking it
    /// (once per item) never contends with other runs sharing the same token.
    pub fn with_cancellation(mut self, token: CancellationToken) -> Self {
        let token = token.child_token();
        self.cancelled = Some(token.clone().cancelled_owned());
        self.token = Some(token);
        self
    }

    /// This run's handle to the scope: what is registered through it belongs to this run,
    /// like what the handler registers.
    pub fn scope(&self) -> &CompensationScope {
        &self.scope
    }

    /// How many items the handler has processed successfully so far.
    pub fn items_processed(&self) -> u64 {
        self.items
    }

    /// Acquires a reference to the underlying stream.
    pub fn get_ref(&self) -> &St {
        &self.stream
    }

    /// Acquires a mutable reference to the underlying stream.
    pub fn get_mut(&mut self) -> &mut St {
        &mut self.stream
    }

    /// Acquires a pinned mutable reference to the underlying stream.
    pub fn get_pin_mut(self: Pin<&mut Self>) -> Pin<&mut St> {
        self.project().stream
    }

    /// Consumes the future and returns the underlying stream.
    ///
    /// The future holds its handler and cancellation state inline, so it is `!Unpin`: this is
    /// only for a future that was never pinned (polled). Once polled, drop it instead: a
    /// handler in progress is dropped with it, and its compensations stay in the
    /// [`scope`](Self::scope).
    pub fn into_inner(self) -> St {
        self.stream
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
        assert!(!*this.done, "ForEachCompensated polled after it resolved");
        if *this.unit == UnitOfWork::Run && this.run_mark.is_none() {
            *this.run_mark = Some(this.scope.checkpoint());
        }

        // The token is checked once before each pull, and before polling a handler that was
        // left pending by an earlier call (it may have been woken by the cancellation).
        let mut check_before_handler = true;
        'poll: loop {
            if let Some(rollback) = this.rollback.as_mut() {
                let report = ready!(Pin::new(rollback).poll(cx));
                *this.rollback = None;
                *this.done = true;
                let cause = this.cause.take().expect("a rollback always has a cause");
                return Poll::Ready(Err(CompensatedError { cause, report }));
            }

            let cause = 'work: {
                let token_fired = || {
                    this.token
                        .as_ref()
                        .is_some_and(CancellationToken::is_cancelled)
                };
                if let Some(handler) = this.handler.as_mut().as_pin_mut() {
                    if check_before_handler && token_fired() {
                        break 'work Cause::Cancelled;
                    }
                    match handler.poll(cx) {
                        Poll::Ready(Ok(())) => {
                            this.handler.set(None);
                            *this.items += 1;
                            if *this.unit == UnitOfWork::Item {
                                this.scope.commit_to(*this.item_mark);
                            }
                        }
                        Poll::Ready(Err(error)) => break 'work Cause::Handler(error),
                        Poll::Pending => {
                            if is_cancelled(this.cancelled.as_mut(), cx) {
                                break 'work Cause::Cancelled;
                            }
                            return Poll::Pending;
                        }
                    }
                }
                if token_fired() {
                    break 'work Cause::Cancelled;
                }
                match this.stream.as_mut().try_poll_next(cx) {
                    Poll::Ready(Some(Ok(item))) => {
                        *this.item_mark = this.scope.checkpoint();
                        let handler = (this.f)(item, this.scope.clone());
                        this.handler.set(Some(handler));
                        check_before_handler = false;
                        continue 'poll;
                    }
                    Poll::Ready(Some(Err(error))) => break 'work Cause::Upstream(error),
                    Poll::Ready(None) => {
                        if let Some(mark) = *this.run_mark {
                            this.scope.commit_to(mark);
                        }
                        *this.done = true;
                        return Poll::Ready(Ok(Completion { items: *this.items }));
                    }
                    Poll::Pending => {
                        if is_cancelled(this.cancelled.as_mut(), cx) {
                            break 'work Cause::Cancelled;
                        }
                        return Poll::Pending;
                    }
                }
            };

            // Stop pulling, drop the handler in progress (its compensations are already
            // registered), and roll back everything pending.
            this.handler.set(None);
            *this.cause = Some(cause);
            *this.rollback = Some(this.scope.rollback(*this.policy));
        }
    }
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
        self.done
    }
}
