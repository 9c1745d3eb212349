//! What the builder methods of `ForEachCompensated` set, read by the run (`for_each`) and
//! written by the builders (`options`): kept apart from both so that neither imports the
//! other's internals.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

use super::{CompensatedError, CompensationScope, RetryPolicy};

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

/// A callback the run calls; the `Mutex` is never locked (it is reached through `&mut`): it
/// only makes the future `Sync`.
pub(crate) type Callback<A> = Mutex<Box<dyn FnMut(A) + Send>>;

/// What the builder methods set.
pub(crate) struct Config<T, E> {
    pub(crate) rules: Rules,
    pub(crate) limit: NonZeroUsize,
    /// `Clone::clone` of the item, set by `retry` (the only method that needs it).
    pub(crate) keep: Option<fn(&T) -> T>,
    pub(crate) on_skip: Option<Callback<(u64, CompensatedError<E>)>>,
    pub(crate) on_upstream_error: Option<Callback<E>>,
    pub(crate) token: Option<CancellationToken>,
}

/// The run's own handle to the scope, live (out of reach of the scope's own handles) until
/// the run resolves or is dropped.
pub(crate) struct RunScope {
    pub(crate) scope: CompensationScope,
}

impl Drop for RunScope {
    fn drop(&mut self) {
        self.scope.stack.end_live();
    }
}

impl<T, E> Config<T, E> {
    /// Whether the cancellation token fired.
    #[inline]
    pub(crate) fn cancelled(&self) -> bool {
        self.token
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
    }

    /// One item at a time, with no retry and no skip: the fast path.
    #[inline]
    pub(crate) fn is_one_at_a_time(&self) -> bool {
        self.limit.get() == 1 && self.rules.retry.is_none() && !self.rules.skip
    }
}
