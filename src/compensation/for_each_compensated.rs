use core::fmt;
use core::pin::Pin;
use core::task::{Context, Poll, ready};
use std::error::Error;
use std::future::Future;

use futures_core::future::FusedFuture;
use futures_core::stream::TryStream;
use pin_project_lite::pin_project;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::scope::LiveRun;
use super::{CompensationScope, Rollback, RollbackPolicy, RollbackReport};

/// What one commit of compensations covers in [`ForEachCompensated`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
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
        scope: LiveRun,
        policy: RollbackPolicy,
        unit: UnitOfWork,
        token: Option<CancellationToken>,
        #[pin]
        cancelled: Option<WaitForCancellationFutureOwned>,
        rollback: Option<Rollback>,
        cause: Option<Cause<St::Error>>,
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
            scope: LiveRun::new(&scope),
            policy: RollbackPolicy::default(),
            unit: UnitOfWork::default(),
            token: None,
            cancelled: None,
            rollback: None,
            cause: None,
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
    /// like what the handler registers, whenever it is registered (before the first poll,
    /// between items): it is committed when the run succeeds and rolled back when it fails.
    pub fn scope(&self) -> &CompensationScope {
        self.scope.handle()
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

        // The token is checked once before each pull, and before polling a handler that was
        // left pending by an earlier call (it may have been woken by the cancellation).
        let mut check_before_handler = true;
        'poll: loop {
            if let Some(rollback) = this.rollback.as_mut() {
                let report = ready!(Pin::new(rollback).poll(cx));
                *this.rollback = None;
                *this.done = true;
                this.scope.end();
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
                                this.scope.handle().commit_to(*this.item_mark);
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
                        *this.item_mark = this.scope.handle().checkpoint();
                        let handler = (this.f)(item, this.scope.handle().clone());
                        this.handler.set(Some(handler));
                        check_before_handler = false;
                        continue 'poll;
                    }
                    Poll::Ready(Some(Err(error))) => break 'work Cause::Upstream(error),
                    Poll::Ready(None) => {
                        // Everything the run owns is committed with it: what its handlers
                        // registered and what was registered through `scope()`, before the
                        // first item or between items.
                        this.scope.handle().commit_run();
                        this.scope.end();
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
            *this.rollback = Some(this.scope.handle().rollback(*this.policy));
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

/// Why a [`ForEachCompensated`](crate::ForEachCompensated) stopped and rolled back.
///
/// It keeps the user's own error type `E`, so callers can match on it. It may gain variants
/// (a match needs a `_` arm).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cause<E> {
    /// The upstream stream yielded `Err`.
    Upstream(E),
    /// The handler returned `Err` for an item.
    Handler(E),
    /// The cancellation token fired.
    Cancelled,
}

impl<E> Cause<E> {
    /// The error behind the cause, or `None` for a cancellation.
    pub fn error(&self) -> Option<&E> {
        match self {
            Cause::Upstream(error) | Cause::Handler(error) => Some(error),
            Cause::Cancelled => None,
        }
    }

    /// Takes the error behind the cause, or `None` for a cancellation.
    pub fn into_error(self) -> Option<E> {
        match self {
            Cause::Upstream(error) | Cause::Handler(error) => Some(error),
            Cause::Cancelled => None,
        }
    }

    /// `true` for [`Cause::Cancelled`].
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Cause::Cancelled)
    }
}

impl<E: fmt::Display> fmt::Display for Cause<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Upstream(error) => write!(f, "upstream error: {error}"),
            Cause::Handler(error) => write!(f, "handler error: {error}"),
            Cause::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// The error of [`ForEachCompensated`](crate::ForEachCompensated): why it stopped, and what
/// the rollback that followed did.
///
/// ```
/// use result_stream::{Cause, CompensatedError};
///
/// fn explain(error: &CompensatedError<std::io::Error>) -> &'static str {
///     match (error.cause(), error.report().is_complete()) {
///         (Cause::Cancelled, true) => "cancelled, rolled back cleanly",
///         (_, true) => "failed, rolled back cleanly",
///         (_, false) => "failed, and some effects could not be undone",
///     }
/// }
/// # let _ = explain;
/// ```
#[derive(Debug)]
pub struct CompensatedError<E> {
    pub(crate) cause: Cause<E>,
    pub(crate) report: RollbackReport,
}

impl<E> CompensatedError<E> {
    /// Why the run stopped.
    pub fn cause(&self) -> &Cause<E> {
        &self.cause
    }

    /// What the rollback did.
    pub fn report(&self) -> &RollbackReport {
        &self.report
    }

    /// `true` when every pending compensation succeeded.
    pub fn is_rolled_back_cleanly(&self) -> bool {
        self.report.is_complete()
    }

    /// Takes the cause.
    pub fn into_cause(self) -> Cause<E> {
        self.cause
    }

    /// Takes the cause and the report.
    pub fn into_parts(self) -> (Cause<E>, RollbackReport) {
        (self.cause, self.report)
    }
}

/// `stopped by a handler error: <E>; rolled back cleanly (2 compensation(s) ran)`: the
/// cause's error (whether or not `E` is an [`Error`]) and the rollback's outcome.
///
/// The cause's error is part of this text, so [`source`](Error::source) skips it and
/// returns *its* source: an error-chain printer (`anyhow`'s `{:#}`, say) shows each message
/// once. The error itself is reached through [`cause`](Self::cause).
impl<E: fmt::Display> fmt::Display for CompensatedError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            Cause::Upstream(error) => write!(f, "stopped by an upstream error: {error}")?,
            Cause::Handler(error) => write!(f, "stopped by a handler error: {error}")?,
            Cause::Cancelled => f.write_str("cancelled")?,
        }
        write!(f, "; {}", self.report)
    }
}

impl<E: Error + 'static> Error for CompensatedError<E> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.cause.error().and_then(Error::source)
    }
}
