use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Compensation, Rollback, RollbackPolicy};

/// The owner (and run) id of the handles that [`CompensationScope::new`] and its clones hand
/// out: their registrations belong to no run.
const SCOPE_OWNER: u64 = 0;

/// A registered compensation, in the stack.
struct Registered {
    /// Registration number, unique in the scope and increasing up the stack.
    seq: u64,
    /// The handle (a run, one item of a run, or the scope itself) that registered it.
    owner: u64,
    /// The run that handle belongs to ([`SCOPE_OWNER`] for the scope's own handles).
    run: u64,
    label: Option<Cow<'static, str>>,
    action: Action,
}

impl Registered {
    /// A rollback is running it (or ran it, and it failed for good, until that rollback
    /// resolves): no commit may take it, and it leaves the stack when that rollback is done
    /// with it (or is put back, not running, if the rollback is dropped).
    #[inline]
    fn is_running(&self) -> bool {
        matches!(self.action, Action::Running(_))
    }
}

/// A compensation's action, and whether a rollback is running it (one word of tag, so an
/// entry is no larger for the flag).
enum Action {
    /// Pending, as registered: boxed, so that committing it (the common case) is one
    /// deallocation, with no reference count to touch.
    Boxed(Box<dyn Compensation>),
    /// Pending, shared: a rollback that was dropped before it was done with it put it back.
    Shared(Arc<dyn Compensation>),
    /// A rollback is running it, through a clone of this `Arc` (see
    /// [`Registered::is_running`]). A rollback shares the action rather than moving it out,
    /// so that it stays in the stack, and its failure can keep it; the `Box` is turned into
    /// an `Arc` (one allocation) when a rollback first starts it.
    Running(Arc<dyn Compensation>),
}

impl Action {
    /// Marks the action running and returns the shared handle the rollback runs.
    fn start(&mut self) -> Arc<dyn Compensation> {
        let shared = match self {
            // A zero-sized placeholder takes the box's place for the conversion (no
            // allocation), and is overwritten at once.
            Action::Boxed(boxed) => Arc::from(std::mem::replace(boxed, Box::new(Placeholder))),
            Action::Shared(shared) | Action::Running(shared) => shared.clone(),
        };
        *self = Action::Running(shared.clone());
        shared
    }

    /// Marks the action pending again (its rollback was dropped).
    fn interrupt(&mut self) {
        if let Action::Running(shared) = self {
            *self = Action::Shared(shared.clone());
        }
    }
}

/// Stands in for an action for the instant it is moved from its `Box` into an `Arc` (in
/// [`Action::start`], under the stack's lock, which nothing can observe it through). Zero
/// sized, so boxing it allocates nothing. It undoes nothing.
struct Placeholder;

#[async_trait::async_trait]
impl Compensation for Placeholder {
    async fn compensate(&self) -> Result<(), super::BoxError> {
        Ok(())
    }
}

/// A compensation a rollback runs: what it needs of a [`Registered`] one, taken out of the
/// stack's lock.
pub(crate) struct Entry {
    /// Its registration number, by which the rollback settles it.
    pub(crate) seq: u64,
    pub(crate) label: Option<Cow<'static, str>>,
    pub(crate) action: Arc<dyn Compensation>,
}

/// The stack and who may touch what in it, behind one lock.
#[derive(Default)]
struct State {
    entries: Vec<Registered>,
    /// Runs (`for_each_compensated` futures) that have neither resolved nor been dropped:
    /// their entries are theirs alone.
    live_runs: Vec<u64>,
}

struct Inner {
    state: Mutex<State>,
    /// Mirrors `state.entries.len()`, written under the lock.
    len: AtomicUsize,
    /// The next registration number, advanced under the lock, so "was anything registered
    /// since mark?" is one atomic load.
    next_seq: AtomicU64,
    next_owner: AtomicU64,
    /// Rollbacks of one scope take turns, so none runs a compensation another is running.
    rollback_turn: tokio::sync::Mutex<()>,
}

/// A cheap, cloneable, `Send + Sync` handle to one LIFO stack of compensations.
///
/// Clones share the stack. Register a compensation *before* causing the effect it undoes, so
/// that a write that fails (or is cancelled) halfway is still covered.
///
/// Compensations stay in the scope until they are committed ([`commit`](Self::commit), or
/// by [`ForEachCompensated`](crate::ForEachCompensated) when its work succeeds) or run by a
/// [`rollback`](Self::rollback) (one that failed for good leaves when its rollback
/// resolves, with the failure in the report; a rollback dropped midway gives it back).
/// Nothing else removes them: when the future that drove a pipeline is dropped, or a handler
/// panics, what was registered is still here to roll back.
///
/// A compensation is never both committed and undone: one that a rollback is running, or
/// that failed in a rollback that has not resolved yet, cannot be committed
/// ([`commit`](Self::commit) does not count it).
///
/// # Sharing a scope between runs
///
/// Each [`for_each_compensated`](crate::ResultStreamExt::for_each_compensated) run has a
/// handle of its own ([`ForEachCompensated::scope`](crate::ForEachCompensated::scope), and
/// the handles its handler receives): what is registered through them belongs to that run.
/// A run commits only its own compensations. Its rollback runs its own plus those registered
/// through the scope's own handles (the one from [`new`](Self::new) and its clones, which
/// belong to no run), never another run's. While a run is *live* (its future has neither
/// resolved nor been dropped) the scope's own handles neither commit nor roll back its
/// compensations: a write in progress is never stripped of its undo, nor undone under the
/// handler's feet. Once the future is dropped mid-item, what it left is the scope's to
/// [`rollback`](Self::rollback) (or [`commit`](Self::commit)). So several runs may share one
/// scope safely.
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
    run: u64,
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
                state: Mutex::new(State::default()),
                len: AtomicUsize::new(0),
                next_seq: AtomicU64::new(0),
                next_owner: AtomicU64::new(SCOPE_OWNER + 1),
                rollback_turn: tokio::sync::Mutex::new(()),
            }),
            owner: SCOPE_OWNER,
            run: SCOPE_OWNER,
        }
    }

    /// Pushes a compensation on top of the stack.
    ///
    /// Costs at most one heap allocation (the `Box` holding the action: none for a
    /// zero-sized one) plus the stack's amortised growth; the stack keeps its capacity when
    /// compensations are committed, so a steady register-then-commit loop allocates only the
    /// `Box`. (A rollback that runs the compensation moves it into an `Arc`, once.)
    pub fn register<C: Compensation + 'static>(&self, action: C) {
        self.push(None, Box::new(action));
    }

    /// Like [`register`](Self::register), with a label that a
    /// [`CompensationFailure`](crate::CompensationFailure) reports.
    pub fn register_labeled<C: Compensation + 'static>(
        &self,
        label: impl Into<Cow<'static, str>>,
        action: C,
    ) {
        self.push(Some(label.into()), Box::new(action));
    }

    /// How many compensations are pending in the scope (all runs included, those a rollback
    /// is running, and those that failed in a rollback that has not resolved yet).
    pub fn len(&self) -> usize {
        self.inner.len.load(Ordering::Acquire)
    }

    /// `true` when no compensation is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops, without running them (the effects are kept), the pending compensations this
    /// handle may [`rollback`](Self::rollback), and returns how many it dropped.
    ///
    /// A compensation that a rollback is running at that moment (or that failed in a
    /// rollback that has not resolved yet) is not committed (nor counted): it is being
    /// undone, and leaves the scope when its rollback is done with it.
    pub fn commit(&self) -> usize {
        let mut committed = 0;
        while let Some(entry) = self.take_newest(|entry, live| self.may_take(entry, live)) {
            committed += 1;
            drop(entry);
        }
        committed
    }

    /// Runs the pending compensations newest first under `policy`, and resolves to what
    /// happened. See [`Rollback`] for the rules.
    ///
    /// From the scope's own handles ([`new`](Self::new) and its clones) this runs every
    /// pending compensation except those of a live run (see
    /// [Sharing a scope between runs](Self#sharing-a-scope-between-runs)); from a handle a
    /// `for_each_compensated` run hands out, that run's compensations and those registered
    /// through the scope's own handles.
    ///
    /// Rollbacks of one scope take turns. A compensation must therefore not await a rollback
    /// of its own scope (it would wait for itself); a compensation it registers runs in the
    /// same rollback.
    pub fn rollback(&self, policy: RollbackPolicy) -> Rollback {
        Rollback::new(self.clone(), policy)
    }

    /// A handle to the same stack whose registrations belong to a new run, live until
    /// [`end_run`](Self::end_run).
    pub(crate) fn for_new_run(&self) -> Self {
        let id = self.inner.next_owner.fetch_add(1, Ordering::Relaxed);
        self.lock().live_runs.push(id);
        Self {
            inner: self.inner.clone(),
            owner: id,
            run: id,
        }
    }

    /// A handle to the same stack, in the same run, whose registrations belong to one item
    /// of that run (so that items handled concurrently commit and undo only their own).
    pub(crate) fn for_item(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            owner: self.inner.next_owner.fetch_add(1, Ordering::Relaxed),
            run: self.run,
        }
    }

    /// Marks this handle's run as over: what it left is the scope's to roll back or commit.
    pub(crate) fn end_run(&self) {
        let mut state = self.lock();
        if let Some(at) = state.live_runs.iter().position(|&run| run == self.run) {
            state.live_runs.swap_remove(at);
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
        let ours = |entry: &Registered| entry.owner == self.owner && !entry.is_running();
        loop {
            let mut state = self.lock();
            let stack = &mut state.entries;
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
            let more = stack[..at]
                .iter()
                .rev()
                .take_while(|entry| entry.seq >= mark)
                .any(ours);
            // Usually the top one: `pop` it, with no shifting to do. Moved once, into this
            // local, and dropped (a user's destructor) once the lock is released.
            let entry = if at + 1 == stack.len() {
                stack.pop()
            } else {
                Some(stack.remove(at))
            };
            self.inner.len.store(stack.len(), Ordering::Release);
            drop(state);
            drop(entry);
            if !more {
                return;
            }
        }
    }

    /// Drops every compensation of this handle's run (whichever of its handles registered
    /// it, whenever), except one a rollback is running.
    pub(crate) fn commit_run(&self) {
        let run = self.run;
        while let Some(entry) = self.take_newest(|entry, _| entry.run == run) {
            drop(entry);
        }
    }

    /// Whether a rollback or commit through this handle takes `entry`, given the live runs.
    fn may_take(&self, entry: &Registered, live_runs: &[u64]) -> bool {
        if self.run == SCOPE_OWNER {
            entry.run == SCOPE_OWNER || !live_runs.contains(&entry.run)
        } else {
            entry.run == SCOPE_OWNER || entry.run == self.run
        }
    }

    /// Waits for this scope's turn to roll back.
    pub(crate) async fn rollback_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.rollback_turn.lock().await
    }

    /// Marks the newest pending compensation `take` selects as running, leaving it in
    /// place, and returns it.
    pub(crate) fn start_newest(&self, take: Take) -> Option<Entry> {
        let mut state = self.lock();
        let State { entries, live_runs } = &mut *state;
        let entry = entries.iter_mut().rev().find(|entry| {
            !entry.is_running()
                && match take {
                    Take::Handle => self.may_take(entry, live_runs),
                    Take::Since(mark) => entry.owner == self.owner && entry.seq >= mark,
                }
        })?;
        Some(Entry {
            seq: entry.seq,
            label: entry.label.clone(),
            action: entry.action.start(),
        })
    }

    /// Removes `entry` once it has run.
    pub(crate) fn finish(&self, seq: u64) {
        let removed = {
            let mut state = self.lock();
            let stack = &mut state.entries;
            let at = stack.iter().rposition(|entry| entry.seq == seq);
            let removed = at.map(|at| stack.remove(at));
            self.inner.len.store(stack.len(), Ordering::Release);
            removed
        };
        drop(removed);
    }

    /// Puts back `entry`, not running, when its rollback was dropped before it finished or
    /// before the rollback resolved after it failed.
    pub(crate) fn interrupt(&self, seq: u64) {
        let mut state = self.lock();
        if let Some(entry) = state
            .entries
            .iter_mut()
            .rev()
            .find(|entry| entry.seq == seq)
        {
            entry.action.interrupt();
        }
    }

    /// Removes and returns the newest entry that is not running and matches.
    fn take_newest(&self, matches: impl Fn(&Registered, &[u64]) -> bool) -> Option<Registered> {
        let mut state = self.lock();
        let State { entries, live_runs } = &mut *state;
        let at = entries
            .iter()
            .rposition(|entry| !entry.is_running() && matches(entry, live_runs))?;
        let entry = entries.remove(at);
        self.inner.len.store(entries.len(), Ordering::Release);
        Some(entry)
    }

    /// Inlined into `register`, so that the label (`None` there) and the box are not
    /// passed through memory, to be read back before they are written into the stack.
    #[inline]
    fn push(&self, label: Option<Cow<'static, str>>, action: Box<dyn Compensation>) {
        let mut state = self.lock();
        let seq = self.inner.next_seq.load(Ordering::Relaxed);
        state.entries.push(Registered {
            seq,
            owner: self.owner,
            run: self.run,
            label,
            action: Action::Boxed(action),
        });
        self.inner.next_seq.store(seq + 1, Ordering::Release);
        self.inner.len.store(state.entries.len(), Ordering::Release);
    }

    /// Locks the state. No critical section can panic midway through a change (each is a
    /// single `Vec` operation or a flag), so a poisoned lock is used as is.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What a rollback takes from the scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Take {
    /// What its handle may roll back (see [`CompensationScope::rollback`]).
    Handle,
    /// Only what its handle registered since a [checkpoint](CompensationScope::checkpoint):
    /// one attempt of one item.
    Since(u64),
}

/// A run's own handle to the scope: the run is live (its compensations are its alone) until
/// this is [ended](Self::end) or dropped.
pub(crate) struct LiveRun {
    scope: CompensationScope,
    /// The handle that items handled one at a time register through: the same run, an
    /// owner of its own, so that an item commits and undoes only what its handler
    /// registered, never what was registered meanwhile through the run's own handle
    /// (which belongs to the whole run).
    items: CompensationScope,
}

impl LiveRun {
    /// Starts a new run on `scope`.
    pub(crate) fn new(scope: &CompensationScope) -> Self {
        let scope = scope.for_new_run();
        let items = scope.for_item();
        Self { scope, items }
    }

    /// The run's handle.
    #[inline]
    pub(crate) fn handle(&self) -> &CompensationScope {
        &self.scope
    }

    /// The handle of the items handled one at a time.
    #[inline]
    pub(crate) fn items(&self) -> &CompensationScope {
        &self.items
    }

    /// Ends the run: what it left is the scope's. Ending twice is harmless.
    pub(crate) fn end(&self) {
        self.scope.end_run();
    }
}

impl Drop for LiveRun {
    fn drop(&mut self) {
        self.end();
    }
}

impl fmt::Debug for LiveRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.scope, f)
    }
}
