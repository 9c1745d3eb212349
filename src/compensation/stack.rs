//! The one LIFO stack behind every handle of a scope, and who may take what from it.
//!
//! Every registration records two ids: its `owner` (the handle that registered it: the scope
//! itself, a run, an item of a run, or a child scope) and its `run` (the top-level unit it
//! belongs to: the scope itself, a run, or a child of the scope). A commit or a rollback
//! takes what its [`Take`] selects; absorbing a child relabels its entries as its parent's.
//! The stack stays in registration order, so "newest first" is always "top first".

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::Compensation;

/// The id of the scope itself (the handles of `CompensationScope::new` and its clones).
pub(crate) const ROOT: u64 = 0;

/// A registered compensation.
struct Registered {
    /// Registration number, unique in the scope and increasing up the stack.
    seq: u64,
    owner: u64,
    run: u64,
    label: Option<Cow<'static, str>>,
    action: Action,
}

/// A compensation's action, and whether a rollback is running it.
enum Action {
    /// Pending, as registered: boxed, so that committing it is one deallocation.
    Boxed(Box<dyn Compensation>),
    /// Pending, shared: a rollback that was dropped before it was done with it put it back.
    Shared(Arc<dyn Compensation>),
    /// A rollback is running it (or ran it and it failed, until that rollback resolves): no
    /// commit and no other rollback takes it.
    Running(Arc<dyn Compensation>),
}

impl Action {
    fn start(&mut self) -> Arc<dyn Compensation> {
        let shared = match self {
            // A zero-sized placeholder takes the box's place (no allocation) for the instant
            // of the conversion, under the lock.
            Action::Boxed(boxed) => Arc::from(std::mem::replace(boxed, Box::new(Placeholder))),
            Action::Shared(shared) | Action::Running(shared) => shared.clone(),
        };
        *self = Action::Running(shared.clone());
        shared
    }

    fn is_running(&self) -> bool {
        matches!(self, Action::Running(_))
    }
}

struct Placeholder;

#[async_trait::async_trait]
impl Compensation for Placeholder {
    async fn compensate(&self) -> Result<(), super::BoxError> {
        Ok(())
    }
}

/// A compensation a rollback runs, taken out of the lock.
pub(crate) struct Entry {
    pub(crate) seq: u64,
    pub(crate) label: Option<Cow<'static, str>>,
    pub(crate) action: Arc<dyn Compensation>,
}

/// What a commit or a rollback takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Take {
    /// The scope's own handles: everything but what a live run (or a live child of the
    /// scope) owns.
    Scope,
    /// A run's handle, its rollback and its success: the run's entries and the scope's own.
    Run(u64),
    /// An item or a child scope: what was registered through it (or absorbed into it), at
    /// or above a registration number.
    Owner(u64, u64),
}

impl Take {
    fn matches(self, entry: &Registered, live: &[u64]) -> bool {
        match self {
            Take::Scope => !live.contains(&entry.run),
            Take::Run(run) => entry.run == run || entry.run == ROOT,
            Take::Owner(owner, since) => entry.owner == owner && entry.seq >= since,
        }
    }
}

#[derive(Default)]
struct State {
    entries: Vec<Registered>,
    /// Runs, and children of the scope, that are live: the scope's own handles leave their
    /// entries alone.
    live: Vec<u64>,
}

struct Inner {
    state: Mutex<State>,
    /// Mirrors `state.entries.len()`, written under the lock.
    len: AtomicUsize,
    /// The next registration number, so "was anything registered since mark?" is one load.
    /// Ids (of runs, items and child scopes) are numbers of this same sequence that no
    /// entry has: what is registered through a handle is numbered above its id.
    next_seq: AtomicU64,
    /// Rollbacks of one scope take turns, so none runs a compensation another is running.
    rollback_turn: tokio::sync::Mutex<()>,
}

/// A handle to the stack: registers as `owner`, in `run`.
#[derive(Clone)]
pub(crate) struct Stack {
    inner: Arc<Inner>,
    pub(crate) owner: u64,
    pub(crate) run: u64,
}

impl Stack {
    pub(crate) fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                len: AtomicUsize::new(0),
                next_seq: AtomicU64::new(ROOT + 1),
                rollback_turn: tokio::sync::Mutex::new(()),
            }),
            owner: ROOT,
            run: ROOT,
        }
    }

    /// A handle with a new owner id. A child of the scope itself is a top-level unit (a run,
    /// or a child scope of the root): it gets a run of its own, live until
    /// [`end_live`](Self::end_live).
    pub(crate) fn child(&self) -> Self {
        let id = self.new_id();
        let run = if self.owner == ROOT {
            self.lock().live.push(id);
            id
        } else {
            self.run
        };
        Self {
            inner: self.inner.clone(),
            owner: id,
            run,
        }
    }

    /// A new id: for an item of this handle's run, or a child. Taken from the registration
    /// numbers (so unique in the scope), it is below everything registered under it.
    #[inline]
    pub(crate) fn new_id(&self) -> u64 {
        self.inner.next_seq.fetch_add(1, Ordering::AcqRel)
    }

    /// A handle for a new item of this handle's run: it registers as a new id.
    #[inline(always)]
    pub(crate) fn new_item(&self) -> Stack {
        let mut item = self.clone();
        item.owner = item.new_id();
        item
    }

    /// A handle to the same stack and run that registers as `owner`.
    #[inline]
    pub(crate) fn as_owner(&self, owner: u64) -> Stack {
        Stack {
            inner: self.inner.clone(),
            owner,
            run: self.run,
        }
    }

    /// Whether this handle is a top-level unit (see [`child`](Self::child)).
    pub(crate) fn is_top_level(&self) -> bool {
        self.owner != ROOT && self.owner == self.run
    }

    /// Ends a top-level unit: the scope's own handles may take what it left.
    pub(crate) fn end_live(&self) {
        let mut state = self.lock();
        if let Some(at) = state.live.iter().position(|&id| id == self.run) {
            state.live.swap_remove(at);
        }
    }

    #[inline(always)]
    pub(crate) fn len(&self) -> usize {
        self.inner.len.load(Ordering::Acquire)
    }

    /// The next registration number: what is registered from now on is at or above it.
    #[inline(always)]
    pub(crate) fn mark(&self) -> u64 {
        self.inner.next_seq.load(Ordering::Acquire)
    }

    #[inline]
    pub(crate) fn push(&self, label: Option<Cow<'static, str>>, action: Box<dyn Compensation>) {
        let mut state = self.lock();
        // Taken under the lock, so the stack stays in registration order.
        let seq = self.new_id();
        state.entries.push(Registered {
            seq,
            owner: self.owner,
            run: self.run,
            label,
            action: Action::Boxed(action),
        });
        self.inner.len.store(state.entries.len(), Ordering::Release);
    }

    /// Drops, without running them, the pending entries `take` selects; returns how many.
    /// Each is dropped with the stack unlocked (a user's destructor may use the scope).
    pub(crate) fn commit(&self, take: Take) -> usize {
        let mut committed = 0;
        while let Some(entry) = self.take_newest(take, 0) {
            committed += 1;
            drop(entry);
        }
        committed
    }

    /// Whether an entry may have been registered at or above `mark`: one atomic load when
    /// the stack is empty.
    #[inline(always)]
    fn any_since(&self, mark: u64) -> bool {
        self.len() != 0 && self.mark() > mark
    }

    /// Drops `owner`'s entries registered since `mark`.
    #[inline(always)]
    pub(crate) fn commit_since(&self, owner: u64, mark: u64) {
        if self.any_since(mark) {
            self.commit_registered_since(owner, mark);
        }
    }

    /// One lock per compensation committed: each removal also tells whether another one
    /// is left to commit. Each is dropped with the stack unlocked.
    #[inline(never)]
    fn commit_registered_since(&self, owner: u64, mark: u64) {
        let ours = |entry: &Registered| entry.owner == owner && !entry.action.is_running();
        loop {
            let (entry, more) = {
                let mut state = self.lock();
                let entries = &mut state.entries;
                // In registration order: those since `mark` are the top ones.
                let Some(at) = entries.iter().rposition(|e| e.seq < mark || ours(e)) else {
                    return;
                };
                if entries[at].seq < mark {
                    return;
                }
                let mut since = entries[..at].iter().rev().take_while(|e| e.seq >= mark);
                let more = since.any(ours);
                let entry = entries.remove(at);
                self.inner.len.store(entries.len(), Ordering::Release);
                (entry, more)
            };
            drop(entry);
            if !more {
                return;
            }
        }
    }

    /// Relabels `owner`'s entries registered since `mark` as `parent`'s, in place (so in
    /// their order).
    #[inline(always)]
    pub(crate) fn absorb_into(&self, owner: u64, mark: u64, parent: &Stack) {
        if self.any_since(mark) {
            self.absorb_registered_since(owner, mark, parent);
        }
    }

    #[inline(never)]
    fn absorb_registered_since(&self, owner: u64, mark: u64, parent: &Stack) {
        let mut state = self.lock();
        for entry in state.entries.iter_mut().rev() {
            if entry.seq < mark {
                break;
            }
            if entry.owner == owner {
                entry.owner = parent.owner;
                entry.run = parent.run;
            }
        }
    }

    /// Removes and returns the newest entry at or above `mark` that `take` selects and no
    /// rollback is running.
    fn take_newest(&self, take: Take, mark: u64) -> Option<Registered> {
        let mut state = self.lock();
        let State { entries, live } = &mut *state;
        let at = entries
            .iter()
            .rev()
            .take_while(|entry| entry.seq >= mark)
            .position(|entry| !entry.action.is_running() && take.matches(entry, live))?;
        let entry = entries.remove(entries.len() - 1 - at);
        self.inner.len.store(entries.len(), Ordering::Release);
        Some(entry)
    }

    /// Waits for this scope's turn to roll back.
    pub(crate) async fn rollback_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.rollback_turn.lock().await
    }

    /// Marks the newest pending entry `take` selects as running, leaving it in place.
    pub(crate) fn start_newest(&self, take: Take) -> Option<Entry> {
        let mut state = self.lock();
        let State { entries, live } = &mut *state;
        let entry = entries
            .iter_mut()
            .rev()
            .find(|entry| !entry.action.is_running() && take.matches(entry, live))?;
        Some(Entry {
            seq: entry.seq,
            label: entry.label.clone(),
            action: entry.action.start(),
        })
    }

    /// Removes the entry numbered `seq` (it ran, or failed for good and is reported).
    pub(crate) fn finish(&self, seq: u64) {
        let removed = {
            let mut state = self.lock();
            let stack = &mut state.entries;
            let removed = stack
                .iter()
                .rposition(|entry| entry.seq == seq)
                .map(|at| stack.remove(at));
            self.inner.len.store(stack.len(), Ordering::Release);
            removed
        };
        drop(removed);
    }

    /// Puts the entry numbered `seq` back, pending (its rollback was dropped).
    pub(crate) fn interrupt(&self, seq: u64) {
        let mut state = self.lock();
        if let Some(entry) = state.entries.iter_mut().rev().find(|e| e.seq == seq)
            && let Action::Running(shared) = &entry.action
        {
            entry.action = Action::Shared(shared.clone());
        }
    }

    /// No critical section can panic midway through a change, so a poisoned lock is used.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
