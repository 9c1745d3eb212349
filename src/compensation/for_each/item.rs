//! One item in flight, in a slot reused for the next: attempt → on failure, its own undo →
//! backoff → next attempt, skip, or fail; and the items in flight of the general path,
//! polled when woken as `FuturesUnordered` does, with no allocation per item.

use core::pin::Pin;
use core::task::{Context, Poll, ready};
use std::future::Future;
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use crate::compensation::config::Config;
use crate::compensation::stack::{Stack, Take};
use crate::compensation::trace::{self, Span, Undone};
use crate::compensation::wake::Woken;
use crate::compensation::{
    Cause, CompensatedError, Completion, ItemScope, Rollback, RollbackReport,
};

/// Why the run stops: the cause, and the report of a failed item's own incomplete undo.
pub(super) type Stop<E> = (Cause<E>, Option<RollbackReport>);

/// How an item ended: `Ok` when it succeeded or was skipped (`on_skip` has it), `Err` when
/// the run stops.
pub(super) type End<E> = Result<(), Box<Stop<E>>>;

pin_project! {
    /// A slot for one item in flight. Between two attempts (`handler` is `None`, `attempt`
    /// is not 0) the undo of the failed one runs, then the backoff (in `timer`).
    pub(crate) struct Slot<T, Fut, E> {
        #[pin]
        handler: Option<Fut>,
        // The attempt's deadline (with a time limit), or the backoff.
        #[pin]
        timer: Option<Sleep>,
        undo: Option<(Rollback, Cause<E>)>,
        // The item, kept for the next attempt (with retries).
        item: Option<T>,
        // The id its handle registers as: what it registers is numbered above it.
        id: u64,
        index: u64,
        // 0 when the slot is free (the fast path leaves it at 0).
        attempt: u32,
        span: Span,
    }
}

impl<T, Fut, E> Slot<T, Fut, E> {
    pub(crate) fn new() -> Self {
        let (handler, timer, undo, item, span) = (None, None, None, None, trace::no_span());
        let (id, index, attempt) = (0, 0, 0);
        Self {
            handler,
            timer,
            undo,
            item,
            id,
            index,
            attempt,
            span,
        }
    }

    /// Frees the slot: its handler, timer or backoff is dropped (its compensations stay,
    /// the run's rollback's); the undo of a failed attempt in progress is handed over,
    /// wound down, to finish the compensation it is running and start no other.
    pub(super) fn stop(self: Pin<&mut Self>) -> Option<Rollback> {
        let mut this = self.project();
        *this.attempt = 0;
        this.handler.set(None);
        this.timer.set(None);
        *this.item = None;
        let undo = this.undo.take().map(|(undo, _)| undo);
        undo.iter().for_each(Rollback::wind_down);
        undo
    }
}

/// The items in flight, each in a slot of its own, boxed once when first needed and reused
/// (so no more slots than items ever in flight at once), each with a waker of its own (see
/// [`Woken`]) so that the run polls only the slots that were woken.
pub(crate) struct Slots<T, Fut, E> {
    slots: Vec<Pin<Box<Slot<T, Fut, E>>>>,
    // Made when the run first takes this path.
    woken: Option<Woken>,
    // The next slot a scan of the woken ones looks at: a scan goes on across calls.
    next: usize,
}

impl<T, Fut, E> Slots<T, Fut, E> {
    pub(crate) fn new() -> Self {
        let (slots, woken, next) = (Vec::new(), None, 0);
        Self { slots, woken, next }
    }

    /// The run is polled with the waker `cx`: a new scan may start.
    pub(super) fn enter(&mut self, cx: &Context<'_>) {
        let woken = self.woken.get_or_insert_with(Woken::new);
        woken.register(cx.waker());
        self.next = 0;
    }

    /// Stops every item in flight; returns the undos of failed attempts in progress, wound
    /// down (see [`Slot::stop`]).
    pub(super) fn stop_all(&mut self) -> Vec<Rollback> {
        self.slots
            .iter_mut()
            .filter_map(|slot| slot.as_mut().stop())
            .collect()
    }
}

/// What items need of their run, for one poll of the run; drives them.
pub(super) struct Driver<'a, T, E, F> {
    pub(super) f: &'a mut F,
    pub(super) run: &'a Stack,
    pub(super) cfg: &'a mut Config<T, E>,
    pub(super) done: &'a mut Completion,
}

type SlotMut<'s, T, Fut, E> = Pin<&'s mut Slot<T, Fut, E>>;

impl<T, E, F, Fut> Driver<'_, T, E, F>
where
    F: FnMut(T, ItemScope) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    /// Starts item number `index` on its first attempt, with a handle of a new id.
    #[inline(always)]
    pub(super) fn start_one(&mut self, mut slot: SlotMut<'_, T, Fut, E>, index: u64, value: T) {
        let stack = self.run.new_item();
        *slot.as_mut().project().id = stack.owner;
        self.launch(slot, index, 1, value, stack);
    }

    /// Starts attempt number `attempt` on `value`, registering through `stack`.
    #[inline(always)]
    fn launch(
        &mut self,
        slot: SlotMut<'_, T, Fut, E>,
        index: u64,
        attempt: u32,
        value: T,
        stack: Stack,
    ) {
        let mut this = slot.project();
        *this.span = trace::attempt_span(index, attempt);
        let handler = trace::in_span(this.span, || (self.f)(value, ItemScope { stack }));
        this.handler.set(Some(handler));
    }

    /// The fast path (one item at a time, no retry, no skip): polls the item started by
    /// [`start_one`](Self::start_one), if any, until its handler returns.
    #[inline(always)]
    pub(super) fn poll_one(
        &mut self,
        slot: SlotMut<'_, T, Fut, E>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), E>> {
        let mut this = slot.project();
        let Some(handler) = this.handler.as_mut().as_pin_mut() else {
            return Poll::Ready(Ok(()));
        };
        let result = ready!(trace::in_span(this.span, || handler.poll(cx)));
        this.handler.set(None);
        if result.is_ok() {
            // Every earlier item succeeded: this one's index is their count.
            self.succeeded(this.id, self.done.items);
        }
        Poll::Ready(result)
    }

    /// The general path: starts item number `index` in a free slot, marked woken: the next
    /// scan polls it.
    pub(super) fn start_in(&mut self, slots: &mut Slots<T, Fut, E>, index: u64, value: T) {
        let woken = slots.woken.get_or_insert_with(Woken::new);
        // The run starts an item only below its limit: at most `limit` slots.
        let at = woken.take_free();
        if at == slots.slots.len() {
            slots.slots.push(Box::pin(Slot::new()));
        }
        self.start(slots.slots[at].as_mut(), index, value);
        woken.mark(at);
        slots.next = slots.next.min(at);
    }

    /// The general path: polls the slots woken since they were last polled, until one item
    /// ends. A scan polls each slot at most once: one that wakes itself waits for the next
    /// poll of the run.
    pub(super) fn poll_woken(&mut self, slots: &mut Slots<T, Fut, E>) -> Poll<End<E>> {
        let woken = slots.woken.get_or_insert_with(Woken::new);
        if slots.next == 0 && !woken.any() {
            return Poll::Pending;
        }
        while let Some(slot) = slots.slots.get_mut(slots.next) {
            let at = slots.next;
            slots.next += 1;
            if woken.take(at) && slot.attempt != 0 {
                let end = self.poll_item(slot.as_mut(), &mut Context::from_waker(woken.waker(at)));
                if end.is_ready() {
                    woken.free(at);
                    return end;
                }
            }
        }
        Poll::Pending
    }

    /// Starts item number `index` in `slot`.
    fn start(&mut self, mut slot: SlotMut<'_, T, Fut, E>, index: u64, value: T) {
        let this = slot.as_mut().project();
        (*this.index, *this.attempt) = (index, 1);
        let value = match self.cfg.keep {
            Some(keep) => keep(this.item.insert(value)),
            None => value,
        };
        self.start_one(slot.as_mut(), index, value);
        slot.project()
            .timer
            .set(self.limit().map(tokio::time::sleep));
    }

    /// The general path: drives the item to its [`End`].
    #[inline(always)]
    fn poll_item(
        &mut self,
        mut slot: SlotMut<'_, T, Fut, E>,
        cx: &mut Context<'_>,
    ) -> Poll<End<E>> {
        loop {
            let mut this = slot.as_mut().project();
            let end = match this.handler.as_mut().as_pin_mut() {
                None => ready!(self.poll_between(slot.as_mut(), cx)),
                // The handler is polled first: one that finishes at its deadline wins.
                Some(handler) => match trace::in_span(this.span, || handler.poll(cx)) {
                    Poll::Ready(Ok(())) => {
                        self.succeeded(this.id, *this.index);
                        Some(Ok(()))
                    }
                    Poll::Ready(Err(error)) => self.failed(slot.as_mut(), Cause::Handler(error)),
                    Poll::Pending => {
                        let deadline = this.timer.as_mut().as_pin_mut();
                        if !deadline.is_some_and(|deadline| deadline.poll(cx).is_ready()) {
                            return Poll::Pending;
                        }
                        let cause = Cause::TimedOut(self.limit().unwrap_or_default());
                        self.failed(slot.as_mut(), cause)
                    }
                },
            };
            if let Some(end) = end {
                slot.stop();
                return Poll::Ready(end);
            }
        }
    }

    /// The attempt failed with `cause`: its own undo starts if a retry or a skip follows;
    /// otherwise the item fails (its compensations are the run's rollback's).
    #[cold]
    fn failed(&self, slot: SlotMut<'_, T, Fut, E>, cause: Cause<E>) -> Option<End<E>> {
        let mut this = slot.project();
        let retry = this.item.is_some() && *this.attempt < self.attempts();
        if !(retry || self.cfg.rules.skip) {
            return Some(Err(Box::new((cause, None))));
        }
        this.handler.set(None);
        this.timer.set(None);
        let (id, policy) = (*this.id, self.cfg.rules.undo);
        let undo = Rollback::new(self.run.as_owner(id), policy, Take::Owner(id, id), None);
        *this.undo = Some((undo, cause));
        None
    }

    /// Between two attempts: the failed one's undo, then the backoff, then the next attempt
    /// starts (`Ready(None)`); or the item ends, skipped or (undo incomplete) failed.
    #[cold]
    fn poll_between(
        &mut self,
        mut slot: SlotMut<'_, T, Fut, E>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<End<E>>> {
        let mut this = slot.as_mut().project();
        let index = *this.index;
        if let Some((undo, _)) = this.undo.as_mut() {
            let report = ready!(Pin::new(undo).poll(cx));
            let (_, cause) = this.undo.take().expect("an undo in progress");
            trace::rollback(Undone::Attempt(index), &report);
            if !report.is_complete() {
                // Nothing may build on a half-undone write: the run stops.
                return Poll::Ready(Some(Err(Box::new((cause, Some(report))))));
            }
            if !(this.item.is_some() && *this.attempt < self.attempts()) {
                trace::skip(index);
                self.done.skipped += 1;
                let on_skip = self.cfg.on_skip.as_mut().expect("skips are on");
                let on_skip = on_skip.get_mut().unwrap_or_else(|p| p.into_inner());
                on_skip((index, CompensatedError::skipped(cause, report)));
                return Poll::Ready(Some(Ok(())));
            }
            let policy = self.cfg.rules.retry.expect("retries are on");
            let wait = policy.backoff_strategy().delay(*this.attempt);
            *this.attempt += 1;
            trace::retry(index, *this.attempt);
            // A zero wait arms no timer.
            this.timer
                .set((!wait.is_zero()).then(|| tokio::time::sleep(wait)));
        }
        if let Some(backoff) = this.timer.as_mut().as_pin_mut() {
            ready!(backoff.poll(cx));
        }
        let value = (self.cfg.keep.expect("retries keep the item"))(
            this.item.as_ref().expect("retries keep the item"),
        );
        let (stack, attempt) = (self.run.as_owner(*this.id), *this.attempt);
        this.timer.set(self.limit().map(tokio::time::sleep));
        self.launch(slot, index, attempt, value, stack);
        Poll::Ready(None)
    }

    /// Item `index`, registered as `id`, succeeded: its compensations are committed, or
    /// absorbed into the run (one load when nothing is registered in the scope).
    #[inline(always)]
    fn succeeded(&mut self, id: &u64, index: u64) {
        if self.run.len() != 0 {
            commit(self.run, self.cfg.rules.commit_each, *id);
        }
        self.done.items += 1;
        trace::commit(index);
    }

    /// The time limit of each attempt.
    fn limit(&self) -> Option<Duration> {
        self.cfg
            .rules
            .retry
            .and_then(|policy| policy.attempt_time_limit())
    }

    fn attempts(&self) -> u32 {
        self.cfg
            .rules
            .retry
            .map_or(1, |policy| policy.max_attempts())
    }
}

#[inline(never)]
fn commit(run: &Stack, commit_each: bool, id: u64) {
    if commit_each {
        run.commit_since(id, id + 1);
    } else {
        run.absorb_into(id, id + 1, run);
    }
}
