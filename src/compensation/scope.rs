use std::borrow::Cow;
use std::fmt;

use super::stack::{ROOT, Stack, Take};
use super::{Compensation, RetryPolicy, Rollback};

/// A cheap, cloneable, `Send + Sync` handle to one LIFO stack of compensations.
///
/// Clones share the stack. Register a compensation *before* causing the effect it undoes, so
/// that a write that fails (or is cancelled) halfway is still covered.
///
/// Rules:
/// - a compensation stays in the scope until it is committed ([`commit`](Self::commit), or
///   by [`ForEachCompensated`](crate::ForEachCompensated) when its work succeeds) or run by
///   a [`rollback`](Self::rollback). Nothing else removes it: when the future that drove a
///   pipeline is dropped, or a handler panics, what was registered is still here;
/// - a compensation is never both committed and undone: one that a rollback is running (or
///   that failed in a rollback that has not resolved yet) is not committed;
/// - each [`for_each_compensated`](crate::ResultStreamExt::for_each_compensated) run is a
///   child of the scope: what its items and its own handle
///   ([`ForEachCompensated::scope`](crate::ForEachCompensated::scope)) register belongs to
///   it. While the run's future is live (neither resolved nor dropped) the scope's own
///   handles (from [`new`](Self::new) and its clones) neither commit nor roll back the
///   run's compensations; once it is dropped, what it left is the scope's;
/// - a run's rollback runs its own compensations and those registered through the scope's
///   own handles (before or during the run), never another run's; its success commits the
///   same ones, and so leaves the scope's own handles nothing it could have undone. What an
///   open [`child`](Self::child) of the scope holds is the child's: neither the run's
///   rollback nor its success takes it (once absorbed, it is the scope's own). So several
///   runs may share one scope;
/// - [`child`](Self::child) opens a nested scope: see [`ChildScope`].
///
/// ```
/// use result_stream::{CompensationScope, RetryPolicy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let scope = CompensationScope::new();
/// scope.register(|| async { println!("undo first"); Ok::<(), std::io::Error>(()) });
/// scope.register_labeled("second", || async { Err::<(), _>("disk on fire") });
///
/// let report = scope.rollback(RetryPolicy::default()).await;
/// assert_eq!(report.ran(), 2);
/// assert_eq!(report.failures()[0].label(), Some("second"));
/// assert!(!report.is_complete());
/// assert!(scope.is_empty());
/// # }
/// ```
#[derive(Clone)]
pub struct CompensationScope {
    pub(crate) stack: Stack,
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
            stack: Stack::new(),
        }
    }

    /// Pushes a compensation on top of the stack.
    ///
    /// Costs at most one heap allocation (the `Box` holding the action: none for a
    /// zero-sized one) plus the stack's amortised growth.
    pub fn register<C: Compensation + 'static>(&self, action: C) {
        self.stack.push(None, Box::new(action));
    }

    /// Like [`register`](Self::register), with a label that a
    /// [`CompensationFailure`](crate::CompensationFailure) reports.
    pub fn register_labeled<C: Compensation + 'static>(
        &self,
        label: impl Into<Cow<'static, str>>,
        action: C,
    ) {
        self.stack.push(Some(label.into()), Box::new(action));
    }

    /// How many compensations are pending in the whole scope (every run, item and child
    /// included, and those a rollback is running).
    pub fn len(&self) -> usize {
        self.stack.len()
    }

    /// `true` when no compensation is pending in the scope.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops, without running them (the effects are kept), the pending compensations this
    /// handle may take, and returns how many it dropped: from the scope's own handles,
    /// everything but what a live run or a live child owns; from a run's handle, the run's
    /// and the scope's own.
    pub fn commit(&self) -> usize {
        self.stack.commit(self.take())
    }

    /// Runs the pending compensations this handle may take (as for
    /// [`commit`](Self::commit)) newest first under `policy`, and resolves to what happened.
    /// See [`Rollback`] for the rules.
    pub fn rollback(&self, policy: RetryPolicy) -> Rollback {
        Rollback::new(self.stack.clone(), policy, self.take(), None)
    }

    /// Opens a nested scope: what is registered through it is its own until it is
    /// committed, rolled back or absorbed into this scope. See [`ChildScope`].
    pub fn child(&self) -> ChildScope {
        ChildScope::of(&self.stack)
    }

    fn take(&self) -> Take {
        if self.stack.owner == ROOT {
            Take::Scope
        } else {
            Take::Run(self.stack.run)
        }
    }
}

/// The handle a [`for_each_compensated`](crate::ResultStreamExt::for_each_compensated)
/// handler receives: it belongs to its item.
///
/// Rules:
/// - what is registered through it (or a clone of it) belongs to this item: when the
///   handler returns `Ok` it is committed (or, in an
///   [all-or-nothing](crate::ForEachCompensated::all_or_nothing) run, absorbed into the
///   run); when an attempt fails, it is what that attempt's undo runs;
/// - [`commit`](Self::commit) drops only this item's pending compensations and
///   [`rollback`](Self::rollback) runs only those: under
///   [`concurrency(n)`](crate::ForEachCompensated::concurrency) no item can drop or run
///   another item's compensations, nor what the scope's or the run's handles registered;
/// - a clone kept after the item ended still registers into the run: what it registers is
///   committed by the run's success and undone by its rollback;
/// - [`child`](Self::child) opens a nested scope of the item (see [`ChildScope`]): a step
///   of the handler that can be undone on its own.
///
/// ```
/// use futures::stream;
/// use result_stream::{CompensationScope, ResultStreamExt, RetryPolicy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let done = stream::iter((0..4).map(Ok::<u32, std::io::Error>))
///     .for_each_compensated(CompensationScope::new(), |item, scope| async move {
///         scope.register(move || async move { Ok::<(), std::io::Error>(()) });
///         if item % 2 == 0 {
///             // Undo this item's partial write and carry on: only its own undo runs.
///             let report = scope.rollback(RetryPolicy::default()).await;
///             assert_eq!(report.ran(), 1);
///         }
///         Ok(())
///     })
///     .concurrency(2)
///     .await
///     .unwrap();
/// assert_eq!(done.items(), 4);
/// # }
/// ```
#[derive(Clone)]
pub struct ItemScope {
    /// Registers as the item's id, which is below everything registered through it.
    pub(crate) stack: Stack,
}

impl fmt::Debug for ItemScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ItemScope")
            .field("pending", &self.len())
            .finish()
    }
}

impl ItemScope {
    /// Pushes a compensation for this item on top of the stack. See
    /// [`CompensationScope::register`].
    pub fn register<C: Compensation + 'static>(&self, action: C) {
        self.stack.push(None, Box::new(action));
    }

    /// Like [`register`](Self::register), with a label that a
    /// [`CompensationFailure`](crate::CompensationFailure) reports.
    pub fn register_labeled<C: Compensation + 'static>(
        &self,
        label: impl Into<Cow<'static, str>>,
        action: C,
    ) {
        self.stack.push(Some(label.into()), Box::new(action));
    }

    /// How many compensations are pending in the whole scope (as
    /// [`CompensationScope::len`]).
    pub fn len(&self) -> usize {
        self.stack.len()
    }

    /// `true` when no compensation is pending in the scope.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops, without running them, this item's pending compensations, and returns how
    /// many it dropped.
    pub fn commit(&self) -> usize {
        self.stack.commit(self.take())
    }

    fn take(&self) -> Take {
        Take::Owner(self.stack.owner, self.stack.owner)
    }

    /// Runs this item's pending compensations newest first under `policy`. See
    /// [`Rollback`] for the rules.
    pub fn rollback(&self, policy: RetryPolicy) -> Rollback {
        Rollback::new(self.stack.clone(), policy, self.take(), None)
    }

    /// Opens a nested scope of this item. See [`ChildScope`].
    pub fn child(&self) -> ChildScope {
        ChildScope::of(&self.stack)
    }
}

/// A nested scope: a unit of work inside its parent (a [`CompensationScope`], an
/// [`ItemScope`] or another `ChildScope`).
///
/// Rules:
/// - what is registered through it is its own (and its children's, once absorbed);
/// - it ends in one of three ways: [`commit`](Self::commit) drops its compensations (the
///   effects are kept), [`rollback`](Self::rollback) runs them newest first under a policy,
///   [`absorb`](Self::absorb) hands them to its parent, in their order, as if the parent
///   had registered them;
/// - dropping it absorbs it (nothing is lost silently), and so does a
///   [`rollback`](Self::rollback) dropped before it resolved (what it had not run) and one
///   that resolved (what was registered while it ran);
/// - a child of the scope itself is, while it is open, out of reach of the scope's own
///   [`commit`](CompensationScope::commit) and [`rollback`](CompensationScope::rollback),
///   as a live run is.
///
/// ```
/// use result_stream::{CompensationScope, RetryPolicy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let scope = CompensationScope::new();
/// scope.register(|| async { Ok::<(), std::io::Error>(()) });
///
/// let step = scope.child();
/// step.register(|| async { Ok::<(), std::io::Error>(()) });
/// assert_eq!(step.rollback(RetryPolicy::default()).await.ran(), 1); // only its own
///
/// let kept = scope.child();
/// kept.register(|| async { Ok::<(), std::io::Error>(()) });
/// kept.absorb(); // now the scope's
/// assert_eq!(scope.rollback(RetryPolicy::default()).await.ran(), 2);
/// # }
/// ```
pub struct ChildScope {
    unit: Closing,
}

impl fmt::Debug for ChildScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildScope")
            .field("pending", &self.len())
            .finish()
    }
}

impl ChildScope {
    fn of(parent: &Stack) -> Self {
        Self {
            unit: Closing {
                stack: parent.child(),
                parent: parent.clone(),
                mark: parent.mark(),
            },
        }
    }

    /// Pushes a compensation of this child on top of the stack.
    pub fn register<C: Compensation + 'static>(&self, action: C) {
        self.unit.stack.push(None, Box::new(action));
    }

    /// Like [`register`](Self::register), with a label.
    pub fn register_labeled<C: Compensation + 'static>(
        &self,
        label: impl Into<Cow<'static, str>>,
        action: C,
    ) {
        self.unit.stack.push(Some(label.into()), Box::new(action));
    }

    /// How many compensations are pending in the whole scope.
    pub fn len(&self) -> usize {
        self.unit.stack.len()
    }

    /// `true` when no compensation is pending in the scope.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Opens a child of this child.
    pub fn child(&self) -> ChildScope {
        ChildScope::of(&self.unit.stack)
    }

    /// Ends the child, dropping its compensations without running them; returns how many.
    pub fn commit(self) -> usize {
        self.unit
            .stack
            .commit(Take::Owner(self.unit.stack.owner, 0))
    }

    /// Ends the child, running its compensations newest first under `policy`. See
    /// [`Rollback`] for the rules.
    pub fn rollback(self, policy: RetryPolicy) -> Rollback {
        let (stack, take) = (
            self.unit.stack.clone(),
            Take::Owner(self.unit.stack.owner, 0),
        );
        Rollback::new(stack, policy, take, Some(self.unit))
    }

    /// Ends the child, handing its compensations to its parent in their order.
    pub fn absorb(self) {
        drop(self);
    }
}

/// Absorbs what a child left into its parent and ends it.
fn close(stack: &Stack, parent: &Stack, mark: u64) {
    stack.absorb_into(stack.owner, mark, parent);
    if stack.is_top_level() {
        stack.end_live();
    }
}

/// The end of a child rolled back: when its rollback resolves or is dropped, what is left
/// of the child is absorbed into its parent.
pub(crate) struct Closing {
    stack: Stack,
    parent: Stack,
    mark: u64,
}

impl Drop for Closing {
    fn drop(&mut self) {
        close(&self.stack, &self.parent, self.mark);
    }
}
