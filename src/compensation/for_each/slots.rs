//! The items in flight on the general path, polled when woken as `FuturesUnordered` does,
//! with no allocation per item.

use core::pin::Pin;
use core::task::{Context, Poll};
use std::future::Future;

use super::Stop;
use super::item::{Driver, Slot};
use crate::compensation::wake::Woken;
use crate::compensation::{ItemScope, Rollback};

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

impl<T, Fut, E> Slots<T, Fut, E>
where
    Fut: Future<Output = Result<(), E>>,
{
    pub(crate) fn new() -> Self {
        let (slots, woken, next) = (Vec::new(), None, 0);
        Self { slots, woken, next }
    }

    /// The run is polled with the waker `cx`: a new scan may start.
    pub(super) fn enter(&mut self, cx: &Context<'_>) {
        self.woken
            .get_or_insert_with(Woken::new)
            .register(cx.waker());
        self.next = 0;
    }

    /// Starts item number `index` in a free slot, marked woken: the next scan polls it.
    pub(super) fn start<F>(&mut self, index: u64, value: T, d: &mut Driver<'_, T, E, F>)
    where
        F: FnMut(T, ItemScope) -> Fut,
    {
        let woken = self.woken.get_or_insert_with(Woken::new);
        // The run starts an item only below its limit: at most `limit` slots.
        let at = woken.take_free();
        if at == self.slots.len() {
            self.slots.push(Box::pin(Slot::new()));
        }
        self.slots[at].as_mut().start(index, value, d);
        woken.mark(at);
        self.next = self.next.min(at);
    }

    /// Polls the slots woken since they were last polled, until one item ends. A scan
    /// polls each slot at most once: one that wakes itself waits for the next poll of the
    /// run.
    pub(super) fn poll_woken<F>(
        &mut self,
        d: &mut Driver<'_, T, E, F>,
    ) -> Poll<Result<(), Box<Stop<E>>>>
    where
        F: FnMut(T, ItemScope) -> Fut,
    {
        let woken = self.woken.get_or_insert_with(Woken::new);
        if self.next == 0 && !woken.any() {
            return Poll::Pending;
        }
        while let Some(slot) = self.slots.get_mut(self.next) {
            let at = self.next;
            self.next += 1;
            if woken.take(at) && slot.is_busy() {
                let end = slot
                    .as_mut()
                    .poll_item(&mut Context::from_waker(woken.waker(at)), d);
                if end.is_ready() {
                    woken.free(at);
                    return end;
                }
            }
        }
        Poll::Pending
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
