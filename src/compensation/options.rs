use std::num::NonZeroUsize;
use std::sync::Mutex;

use futures_core::stream::TryStream;
use tokio_util::sync::CancellationToken;

use core::fmt;
use core::pin::Pin;

use super::config::{Config, Rules, RunScope};
use super::for_each::{Phase, Slot, Slots};
use super::{CompensatedError, CompensationScope, ForEachCompensated, RetryPolicy};
use futures_core::future::Future;

/// What one commit of compensations covers in [`ForEachCompensated`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum UnitOfWork {
    /// Each item is its own unit (the default): when the handler returns `Ok`, the
    /// compensations registered for that item are committed (dropped). A failure undoes only
    /// the items not committed.
    #[default]
    Item,
    /// The whole run is one unit (all-or-nothing): compensations are kept until the stream
    /// ends, so a failure undoes every item processed so far.
    Run,
}

/// What a successful [`ForEachCompensated`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Completion {
    pub(crate) items: u64,
    pub(crate) skipped: u64,
    pub(crate) upstream_errors: u64,
}

impl Completion {
    /// How many items the handler processed successfully.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// How many items were [skipped](ForEachCompensated::skip_failed_items): they failed and
    /// were rolled back alone.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// How many upstream errors were handed to the callback of
    /// [`skip_upstream_errors`](ForEachCompensated::skip_upstream_errors).
    pub fn upstream_errors(&self) -> u64 {
        self.upstream_errors
    }
}

impl<St: TryStream, F, Fut> ForEachCompensated<St, F, Fut> {
    /// Sets how the rollback runs each compensation (default: once each, newest first).
    /// It also runs the undo of a failed attempt ([`retry`](Self::retry)) and of a skipped
    /// item ([`skip_failed_items`](Self::skip_failed_items)).
    pub fn rollback_policy(mut self, policy: RetryPolicy) -> Self {
        self.config.rules.undo = policy;
        self
    }

    /// Sets what one commit covers (default: [`UnitOfWork::Item`]).
    ///
    /// # Panics
    ///
    /// Panics if `unit` is [`UnitOfWork::Run`] and
    /// [`skip_failed_items`](Self::skip_failed_items) is set: an all-or-nothing run cannot
    /// go on without one of its items.
    #[track_caller]
    pub fn unit_of_work(mut self, unit: UnitOfWork) -> Self {
        assert!(
            !(unit == UnitOfWork::Run && self.config.on_skip.is_some()),
            "ForEachCompensated::unit_of_work: `UnitOfWork::Run` (all-or-nothing) cannot skip failed items"
        );
        self.config.rules.commit_each = unit == UnitOfWork::Item;
        self
    }

    /// Makes the whole run one unit of work (shorthand for
    /// [`unit_of_work(UnitOfWork::Run)`](UnitOfWork::Run)).
    ///
    /// Rules:
    /// - when an item's handler returns `Ok`, its compensations are absorbed into the run
    ///   (in their order), not committed: each item is a child of the run, absorbed on `Ok`;
    /// - a failure (handler, upstream, cancellation) undoes every item handled so far,
    ///   newest registration first; the run's success commits them all;
    /// - an item's own [`ItemScope::commit`](crate::ItemScope::commit) still acts on that
    ///   item only, never on what earlier items handed to the run.
    ///
    /// # Panics
    ///
    /// Panics if [`skip_failed_items`](Self::skip_failed_items) is set.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use futures::stream;
    /// use result_stream::{CompensationScope, ResultStreamExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let undone = Arc::new(Mutex::new(Vec::new()));
    /// let log = undone.clone();
    /// let error = stream::iter((1..=3).map(Ok::<u32, &str>))
    ///     .for_each_compensated(CompensationScope::new(), move |item, scope| {
    ///         let log = log.clone();
    ///         scope.register(move || {
    ///             let log = log.clone();
    ///             async move { log.lock().unwrap().push(item); Ok::<(), std::io::Error>(()) }
    ///         });
    ///         async move { if item == 3 { Err("disk full") } else { Ok(()) } }
    ///     })
    ///     .all_or_nothing()
    ///     .await
    ///     .unwrap_err();
    /// assert_eq!(error.report().ran(), 3);
    /// assert_eq!(*undone.lock().unwrap(), vec![3, 2, 1]);
    /// # }
    /// ```
    #[track_caller]
    pub fn all_or_nothing(self) -> Self {
        self.unit_of_work(UnitOfWork::Run)
    }

    /// Stops the run, dropping the handlers in progress at once, and rolls back when `token`
    /// is cancelled. The error's cause is then [`Cause::Cancelled`](crate::Cause::Cancelled).
    ///
    /// Rules:
    /// - the token is checked before each pull and before polling handlers left pending;
    ///   a handler in flight is dropped at once, and the compensations it had registered
    ///   run before the future resolves;
    /// - a cancellation during a retry's backoff ends the run at once; an undo of a failed
    ///   attempt in progress finishes the compensation it is running (and starts no other)
    ///   before the run's rollback runs the rest;
    /// - the rollback itself is not cancelled by the token.
    ///
    /// The run watches a [child](CancellationToken::child_token) of `token`, so checking it
    /// (once per item) never contends with other runs sharing the same token.
    ///
    /// ```
    /// use std::time::Duration;
    /// use futures::stream;
    /// use result_stream::{CancellationToken, CompensationScope, ResultStreamExt};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let token = CancellationToken::new();
    /// let stop = token.clone();
    /// tokio::spawn(async move {
    ///     tokio::time::sleep(Duration::from_secs(1)).await;
    ///     stop.cancel(); // say, on SIGTERM
    /// });
    /// let error = stream::iter((0..).map(Ok::<u64, std::io::Error>))
    ///     .for_each_compensated(CompensationScope::new(), |_item, scope| async move {
    ///         scope.register(|| async { Ok::<(), std::io::Error>(()) });
    ///         tokio::time::sleep(Duration::from_millis(300)).await; // a slow write
    ///         Ok(())
    ///     })
    ///     .with_cancellation(token)
    ///     .await
    ///     .unwrap_err();
    /// assert!(error.cause().is_cancelled());
    /// assert_eq!(error.report().ran(), 1); // the write in flight is undone
    /// # }
    /// ```
    pub fn with_cancellation(mut self, token: CancellationToken) -> Self {
        let token = token.child_token();
        self.cancelled = Some(token.clone().cancelled_owned());
        self.config.token = Some(token);
        self
    }

    /// Handles up to `n` items at once (default 1). Items are pulled in order; handlers may
    /// finish in any order, and each item's compensations are committed when its own
    /// handler returns `Ok`. On a failure or a cancellation, pulling stops, the handlers
    /// still in flight are dropped at once, and the compensations of every item not
    /// committed run, newest registration first; the cause is the first failure.
    ///
    /// Each item registers through a handle of its own, at any `n`. With `n > 1` (or with
    /// [`retry`](Self::retry) or [`skip_failed_items`](Self::skip_failed_items)) a slot for
    /// an item in flight is allocated once, when first needed, and reused: a large `n`
    /// (even `usize::MAX`, for "no limit") costs only the slots that are ever in use at
    /// once.
    ///
    /// # Panics
    ///
    /// Panics if `n` is zero.
    ///
    /// ```
    /// use std::time::Duration;
    /// use futures::stream;
    /// use result_stream::{CompensationScope, ResultStreamExt};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let start = tokio::time::Instant::now();
    /// let done = stream::iter((0..8).map(Ok::<u32, std::io::Error>))
    ///     .for_each_compensated(CompensationScope::new(), |_item, _scope| async {
    ///         tokio::time::sleep(Duration::from_secs(1)).await; // a latency-bound write
    ///         Ok(())
    ///     })
    ///     .concurrency(4)
    ///     .await
    ///     .unwrap();
    /// assert_eq!(done.items(), 8);
    /// assert_eq!(start.elapsed(), Duration::from_secs(2));
    /// # }
    /// ```
    #[track_caller]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.config.limit =
            NonZeroUsize::new(n).expect("ForEachCompensated::concurrency: `n` must be at least 1");
        self
    }

    /// Retries an item whose handler returns `Err` (or runs past the policy's
    /// [time limit](RetryPolicy::attempt_timeout), [`Cause::TimedOut`](crate::Cause::TimedOut)) under `policy`:
    /// the compensations of the failed attempt run first (newest first, under the
    /// [rollback policy](Self::rollback_policy)), then the policy's backoff, then the next
    /// attempt, on a clone of the item. If the undo of an attempt is incomplete, the run
    /// stops (nothing is retried on a half-undone write). A cancellation during a backoff
    /// ends the run at once. After the last attempt the item fails as without retries.
    ///
    /// Cost: each item is cloned once before its first attempt, even when nothing fails, so
    /// an item that is cheap to clone (`Arc<[T]>`, `bytes::Bytes`) keeps retries cheap.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::time::Duration;
    /// use futures::stream;
    /// use result_stream::{Backoff, CompensationScope, ResultStreamExt, RetryPolicy};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// static CALLS: AtomicU32 = AtomicU32::new(0);
    /// let done = stream::iter(vec![Ok::<_, String>("batch")])
    ///     .for_each_compensated(CompensationScope::new(), |_batch, _scope| async {
    ///         match CALLS.fetch_add(1, Ordering::SeqCst) {
    ///             0 => Err("deadlock victim".to_owned()), // transient
    ///             _ => Ok(()),
    ///         }
    ///     })
    ///     .retry(
    ///         RetryPolicy::default()
    ///             .attempts(3)
    ///             .backoff(Backoff::Fixed(Duration::from_millis(100))),
    ///     )
    ///     .await
    ///     .unwrap();
    /// assert_eq!(done.items(), 1);
    /// assert_eq!(CALLS.load(Ordering::SeqCst), 2);
    /// # }
    /// ```
    pub fn retry(mut self, policy: RetryPolicy) -> Self
    where
        St::Ok: Clone,
    {
        self.config.rules.retry = Some(policy);
        self.config.keep = Some(<St::Ok as Clone>::clone);
        self
    }

    /// Skips an item that still fails (after its retries): its compensations run at once,
    /// alone, and `on_skip` receives its position among the items (0 for the first item;
    /// upstream errors, even those [skipped](Self::skip_upstream_errors), are not counted)
    /// and a [`CompensatedError`] with its cause and that rollback's report (its text says
    /// the item was rolled back, not that the run stopped); the run goes on,
    /// and [`Completion::skipped`] counts it. If that rollback is incomplete, the run stops
    /// instead (nothing may build on a half-undone write). An upstream error, a
    /// cancellation, still stop the run. Nothing is kept per skipped item.
    ///
    /// # Panics
    ///
    /// Panics if the run is [all-or-nothing](Self::all_or_nothing).
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use futures::stream;
    /// use result_stream::{CompensationScope, ResultStreamExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let skipped = Arc::new(Mutex::new(Vec::new()));
    /// let dead_letters = skipped.clone();
    /// let done = stream::iter((1..=4).map(Ok::<u32, &'static str>))
    ///     .for_each_compensated(CompensationScope::new(), |item, _scope| async move {
    ///         if item == 3 { Err("poison") } else { Ok(()) }
    ///     })
    ///     .skip_failed_items(move |index, error| {
    ///         assert!(error.is_rolled_back_cleanly());
    ///         dead_letters.lock().unwrap().push(index);
    ///     })
    ///     .await
    ///     .unwrap();
    /// assert_eq!((done.items(), done.skipped()), (3, 1));
    /// assert_eq!(*skipped.lock().unwrap(), vec![2]); // the third item
    /// # }
    /// ```
    #[track_caller]
    pub fn skip_failed_items<S>(mut self, on_skip: S) -> Self
    where
        S: FnMut(u64, CompensatedError<St::Error>) + Send + 'static,
    {
        assert!(
            self.config.rules.commit_each,
            "ForEachCompensated::skip_failed_items: an all-or-nothing run cannot skip failed items"
        );
        let mut on_skip = on_skip;
        self.config.rules.skip = true;
        self.config.on_skip = Some(Mutex::new(Box::new(move |(index, error)| {
            on_skip(index, error)
        })));
        self
    }

    /// Hands each upstream `Err` to `on_error` and goes on pulling, instead of stopping the
    /// run (a parse error in one event need not stop a pipeline, nor need a `filter`
    /// before batching).
    ///
    /// Rules:
    /// - nothing is rolled back for an upstream error: no item came with it, so no handler
    ///   ran for it; items in flight go on;
    /// - `on_error` is called in the order the errors arrive, from within the run's poll:
    ///   keep it short (count, log, send to a channel);
    /// - [`Completion::upstream_errors`] counts them;
    /// - a handler's failure, and a cancellation, still stop the run;
    /// - with [`all_or_nothing`](Self::all_or_nothing), the run's unit is what its items
    ///   wrote: an upstream error handed to `on_error` leaves it whole (without this method,
    ///   an upstream error undoes the whole run).
    ///
    /// ```
    /// use futures::stream;
    /// use result_stream::{CompensationScope, ResultStreamExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let events = stream::iter(vec![Ok(1), Err("bad json"), Ok(2)]);
    /// let done = events
    ///     .for_each_compensated(CompensationScope::new(), |_event, _scope| async { Ok(()) })
    ///     .skip_upstream_errors(|error| eprintln!("skipped: {error}"))
    ///     .await
    ///     .unwrap();
    /// assert_eq!((done.items(), done.upstream_errors()), (2, 1));
    /// # }
    /// ```
    pub fn skip_upstream_errors<S>(mut self, on_error: S) -> Self
    where
        S: FnMut(St::Error) + Send + 'static,
    {
        self.config.on_upstream_error = Some(Mutex::new(Box::new(on_error)));
        self
    }

    /// This run's handle to the scope: what is registered through it belongs to this run,
    /// like what the handler registers, whenever it is registered (before the first poll,
    /// between items): it is committed when the run succeeds and rolled back when it fails.
    pub fn scope(&self) -> &CompensationScope {
        &self.run.scope
    }

    /// How many items the handler has processed successfully so far.
    pub fn items_processed(&self) -> u64 {
        self.done.items
    }

    /// Acquires a reference to the underlying stream.
    pub fn get_ref(&self) -> &St {
        &self.stream
    }

    /// Acquires a mutable reference to the underlying stream.
    pub fn get_mut(&mut self) -> &mut St {
        &mut self.stream
    }

    /// Consumes the future and returns the underlying stream.
    ///
    /// The future holds its handler and cancellation state inline, so it is `!Unpin`: this is
    /// only for a future that was never pinned (polled). Once polled, drop it instead: the
    /// handlers in progress are dropped with it, and their compensations stay in the
    /// [`scope`](Self::scope).
    pub fn into_inner(self) -> St {
        self.stream
    }
}

impl<St: TryStream, F, Fut> ForEachCompensated<St, F, Fut> {
    pub(crate) fn new(stream: St, scope: CompensationScope, f: F) -> Self
    where
        Fut: Future<Output = Result<(), St::Error>>,
    {
        let run = RunScope {
            scope: CompensationScope {
                stack: scope.stack.child(),
            },
        };
        Self {
            stream,
            f,
            one: Slot::new(),
            items: Slots::new(),
            run,
            config: Config {
                rules: Rules {
                    commit_each: true,
                    retry: None,
                    undo: RetryPolicy::default(),
                    skip: false,
                },
                limit: NonZeroUsize::MIN,
                keep: None,
                on_skip: None,
                on_upstream_error: None,
                token: None,
            },
            cancelled: None,
            phase: Phase::Running,
            in_flight: 0,
            upstream_done: false,
            pulled: 0,
            done: Completion::default(),
            span: super::trace::run_span(),
        }
    }

    /// Acquires a pinned mutable reference to the underlying stream.
    pub fn get_pin_mut(self: Pin<&mut Self>) -> Pin<&mut St> {
        self.project().stream
    }
}

impl<St, F, Fut> fmt::Debug for ForEachCompensated<St, F, Fut>
where
    St: TryStream + fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForEachCompensated")
            .field("stream", &self.stream)
            .field("scope", &self.run.scope)
            .field("rules", &self.config.rules)
            .field("concurrency", &self.config.limit)
            .field("token", &self.config.token)
            .field("done", &self.done)
            .field("resolved", &matches!(self.phase, Phase::Done))
            .finish_non_exhaustive()
    }
}
