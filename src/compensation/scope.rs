use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Compensation, Rollback, RollbackPolicy};

/// A registered compensation and its optional label.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) label: Option<Cow<'static, str>>,
    pub(crate) action: Arc<dyn Compensation>,
}

struct Inner {
    stack: Mutex<Vec<Entry>>,
    /// Mirrors `stack.len()`, written under the lock, so checkpoints are one atomic load.
    len: AtomicUsize,
}

/// A cheap, cloneable, `Send + Sync` handle to one LIFO stack of compensations.
///
/// Clones share the stack. Register a compensation *before* causing the effect it undoes, so
/// that a write that fails (or is cancelled) halfway is still covered.
///
/// Compensations stay in the scope until they are committed ([`commit`](Self::commit), or
/// per item by [`ForEachCompensated`](crate::ForEachCompensated)) or run by a
/// [`rollback`](Self::rollback). Nothing else removes them: when the future that drove a
/// pipeline is dropped, or a handler panics, what was registered is still here to roll back.
///
/// ```
/// use result_stream::{CompensationScope, RollbackPolicy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let scope = CompensationScope::new();
/// scope.register(|| async { println!("undo first"); Ok::<(), std::io::Error>(()) });
/// scope.register_labeled("second", || async { Err::<(), _>("disk on fire") });
///
/// let report = scope.rollback(RollbackPolicy::default()).await;
/// assert_eq!(report.ran(), 2);
/// assert_eq!(report.failures()[0].label(), Some("second"));
/// assert!(!report.is_complete());
/// assert!(scope.is_empty());
/// # }
/// ```
#[derive(Clone)]
pub struct CompensationScope {
    inner: Arc<Inner>,
}

impl Default for CompensationScope {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for CompensationScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompensationScope")
            .field("pending", &self.len())
            .finish()
    }
}

impl CompensationScope {
    /// Creates an empty scope. Needs no runtime.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                stack: Mutex::new(Vec::new()),
                len: AtomicUsize::new(0),
            }),
        }
    }

    /// Pushes a compensation on top of the stack. Costs one heap allocation (none for a
    /// zero-sized closure) plus the stack's amortised growth.
    pub fn register<C: Compensation + 'static>(&self, action: C) {
        self.push(Entry {
            label: None,
            action: Arc::new(action),
        });
    }

    /// Like [`register`](Self::register), with a label that a
    /// [`CompensationFailure`](crate::CompensationFailure) reports.
    pub fn register_labeled<C: Compensation + 'static>(
        &self,
        label: impl Into<Cow<'static, str>>,
        action: C,
    ) {
        self.push(Entry {
            label: Some(label.into()),
            action: Arc::new(action),
        });
    }

    /// How many compensations are pending.
    pub fn len(&self) -> usize {
        self.inner.len.load(Ordering::Acquire)
    }

    /// `true` when no compensation is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every pending compensation without running it (the effects are kept) and
    /// returns how many there were.
    pub fn commit(&self) -> usize {
        let before = self.len();
        self.commit_to(0);
        before
    }

    /// Runs every pending compensation, newest first, under `policy`, and resolves to what
    /// happened. See [`Rollback`].
    pub fn rollback(&self, policy: RollbackPolicy) -> Rollback {
        Rollback::new(self.clone(), policy)
    }

    /// The current stack height, to commit back to later.
    pub(crate) fn checkpoint(&self) -> usize {
        self.len()
    }

    /// Drops the compensations registered above `mark`.
    pub(crate) fn commit_to(&self, mark: usize) {
        if self.len() <= mark {
            return;
        }
        let mut stack = self.lock();
        if stack.len() > mark {
            let committed: Vec<Entry> = stack.drain(mark..).collect();
            self.inner.len.store(stack.len(), Ordering::Release);
            drop(stack);
            // Dropping users' closures can run their destructors: do it unlocked.
            drop(committed);
        }
    }

    /// The newest pending compensation, left in place.
    pub(crate) fn top(&self) -> Option<Entry> {
        self.lock().last().cloned()
    }

    /// Removes `entry` (searching from the top) once it has run.
    pub(crate) fn remove(&self, entry: &Entry) {
        let mut stack = self.lock();
        if let Some(at) = stack
            .iter()
            .rposition(|e| Arc::ptr_eq(&e.action, &entry.action))
        {
            let removed = stack.remove(at);
            self.inner.len.store(stack.len(), Ordering::Release);
            drop(stack);
            drop(removed);
        }
    }

    fn push(&self, entry: Entry) {
        let mut stack = self.lock();
        stack.push(entry);
        self.inner.len.store(stack.len(), Ordering::Release);
    }

    /// Locks the stack. A panic elsewhere never leaves it inconsistent (every critical
    /// section is a single `Vec` operation), so a poisoned lock is used as is.
    fn lock(&self) -> MutexGuard<'_, Vec<Entry>> {
        self.inner
            .stack
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
