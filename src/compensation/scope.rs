use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Compensation, Rollback, RollbackPolicy};

/// The owner id of the handles that [`CompensationScope::new`] and its clones hand out.
const SCOPE_OWNER: u64 = 0;

/// A registered compensation.
#[derive(Clone)]
pub(crate) struct Entry {
    /// Registration number, unique in the scope and increasing up the stack.
    pub(crate) seq: u64,
    /// The run (or the scope itself, [`SCOPE_OWNER`]) whose handle registered it.
    pub(crate) owner: u64,
    pub(crate) label: Option<Cow<'static, str>>,
    pub(crate) action: Arc<dyn Compensation>,
}

struct Inner {
    stack: Mutex<Vec<Entry>>,
    /// Mirrors `stack.len()`, written under the lock.
    len: AtomicUsize,
    /// The next registration number, advanced under the lock, so "was anything registered
    /// since mark?" is one atomic load.
    next_seq: AtomicU64,
    next_owner: AtomicU64,
    /// Rollbacks of one scope take turns, so each compensation runs once, newest first.
    rollback_turn: tokio::sync::Mutex<()>,
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
/// # Sharing a scope between runs
///
/// Each [`for_each_compensated`](crate::ResultStreamExt::for_each_compensated) run hands its
/// handler a handle of its own: what is registered through it belongs to that run. A run
/// commits only its own compensations, and its rollback runs its own plus those registered
/// through the scope's own handles (the one from [`new`](Self::new) and its clones), never
/// another run's. So several runs may share one scope safely.
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
    owner: u64,
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
                next_seq: AtomicU64::new(0),
                next_owner: AtomicU64::new(SCOPE_OWNER + 1),
                rollback_turn: tokio::sync::Mutex::new(()),
            }),
            owner: SCOPE_OWNER,
        }
    }

    /// Pushes a compensation on top of the stack.
    ///
    /// Costs one heap allocation (the `Arc` holding the action) plus the stack's amortised
    /// growth; the stack keeps its capacity when compensations are committed, so a steady
    /// register-then-commit loop allocates only the `Arc`.
    pub fn register<C: Compensation + 'static>(&self, action: C) {
        self.push(None, Arc::new(action));
    }

    /// Like [`register`](Self::register), with a label that a
    /// [`CompensationFailure`](crate::CompensationFailure) reports.
    pub fn register_labeled<C: Compensation + 'static>(
        &self,
        label: impl Into<Cow<'static, str>>,
        action: C,
    ) {
        self.push(Some(label.into()), Arc::new(action));
    }

    /// How many compensations are pending in the scope (all runs included).
    pub fn len(&self) -> usize {
        self.inner.len.load(Ordering::Acquire)
    }

    /// `true` when no compensation is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops, without running them (the effects are kept), the pending compensations this
    /// handle may [`rollback`](Self::rollback), and returns how many there were.
    pub fn commit(&self) -> usize {
        let mut committed = 0;
        while let Some(entry) = self.take_newest(0, |entry| self.may_roll_back(entry)) {
            committed += 1;
            drop(entry);
        }
        committed
    }

    /// Runs the pending compensations newest first under `policy`, and resolves to what
    /// happened. See [`Rollback`] for the rules.
    ///
    /// From the scope's own handles ([`new`](Self::new) and its clones) this runs every
    /// pending compensation; from the handle a `for_each_compensated` handler receives, that
    /// run's compensations and those registered through the scope's own handles.
    ///
    /// Rollbacks of one scope take turns. A compensation must therefore not await a rollback
    /// of its own scope (it would wait for itself); a compensation it registers runs in the
    /// same rollback.
    pub fn rollback(&self, policy: RollbackPolicy) -> Rollback {
        Rollback::new(self.clone(), policy)
    }

    /// A handle to the same stack whose registrations belong to a new run.
    pub(crate) fn for_new_run(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            owner: self.inner.next_owner.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// A mark to commit back to: the next registration number.
    #[inline]
    pub(crate) fn checkpoint(&self) -> u64 {
        self.inner.next_seq.load(Ordering::Acquire)
    }

    /// Drops this handle's compensations registered since `mark`.
    ///
    /// One atomic load when nothing was registered since `mark`. Otherwise one at a time,
    /// each dropped with the stack unlocked (dropping a user's closure runs its destructor,
    /// which may use the scope), and no allocation. The lock is taken once per compensation
    /// committed: each removal also tells whether another one is left to commit.
    #[inline]
    pub(crate) fn commit_to(&self, mark: u64) {
        if self.checkpoint() <= mark {
            return;
        }
        self.commit_since(mark);
    }

    /// [`commit_to`](Self::commit_to) once something was registered since `mark`.
    fn commit_since(&self, mark: u64) {
        let ours = |entry: &Entry| entry.owner == self.owner;
        loop {
            let (entry, more) = {
                let mut stack = self.lock();
                // Entries are in registration order, so those since `mark` are the top ones.
                let Some(at) = stack
                    .iter()
                    .rposition(|entry| entry.seq < mark || ours(entry))
                else {
                    return;
                };
                if stack[at].seq < mark {
                    return;
                }
                // Usually the top one: `pop` it, with no shifting to do.
                let entry = if at + 1 == stack.len() {
                    stack.pop().expect("`at` is in the stack")
                } else {
                    stack.remove(at)
                };
                self.inner.len.store(stack.len(), Ordering::Release);
                let more = stack[..at]
                    .iter()
                    .rev()
                    .take_while(|entry| entry.seq >= mark)
                    .any(ours);
                (entry, more)
            };
            drop(entry);
            if !more {
                return;
            }
        }
    }

    /// Whether a rollback through this handle runs `entry`.
    pub(crate) fn may_roll_back(&self, entry: &Entry) -> bool {
        self.owner == SCOPE_OWNER || entry.owner == SCOPE_OWNER || entry.owner == self.owner
    }

    /// Waits for this scope's turn to roll back.
    pub(crate) async fn rollback_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.rollback_turn.lock().await
    }

    /// The newest pending compensation this handle may roll back, left in place.
    pub(crate) fn newest_to_roll_back(&self) -> Option<Entry> {
        self.lock()
            .iter()
            .rev()
            .find(|entry| self.may_roll_back(entry))
            .cloned()
    }

    /// Removes `entry` once it has run.
    pub(crate) fn remove(&self, entry: &Entry) {
        let removed = self.take_newest(entry.seq, |e| e.seq == entry.seq);
        drop(removed);
    }

    /// Removes and returns the newest entry registered at or after `mark` that matches.
    fn take_newest(&self, mark: u64, matches: impl Fn(&Entry) -> bool) -> Option<Entry> {
        let mut stack = self.lock();
        let at = stack
            .iter()
            .rposition(|entry| entry.seq < mark || matches(entry))?;
        if stack[at].seq < mark {
            return None;
        }
        let entry = stack.remove(at);
        self.inner.len.store(stack.len(), Ordering::Release);
        Some(entry)
    }

    fn push(&self, label: Option<Cow<'static, str>>, action: Arc<dyn Compensation>) {
        let mut stack = self.lock();
        let seq = self.inner.next_seq.load(Ordering::Relaxed);
        stack.push(Entry {
            seq,
            owner: self.owner,
            label,
            action,
        });
        self.inner.next_seq.store(seq + 1, Ordering::Release);
        self.inner.len.store(stack.len(), Ordering::Release);
    }

    /// Locks the stack. No critical section can panic midway through a change (each is a
    /// single `Vec` operation), so a poisoned lock is used as is.
    fn lock(&self) -> MutexGuard<'_, Vec<Entry>> {
        self.inner
            .stack
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
