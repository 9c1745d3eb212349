//! The items in flight, polled when woken, as `FuturesUnordered` does, with no allocation
//! per item.

use core::pin::Pin;
use core::task::{Context, Poll};
use std::future::Future;

use pin_project_lite::pin_project;

use super::item::{Driver, ItemEnd, Slot};
use crate::compensation::wake::Woken;
use crate::compensation::{ItemScope, Rollback};

pin_project! {
    /// The items in flight, each in a slot of its own. The first slot is inline (one item
    /// at a time allocates nothing) and shares the run's waker: it counts as woken whenever
    /// the run is polled. With `n > 1` items in flight the others are boxed once, when first
    /// needed, and reused, and every slot has a waker of its own (see [`Woken`]), so that
    /// the run polls only the slots that were woken.
    pub(crate) struct Slots<T, Fut, E> {
        #[pin]
        first: Slot<T, Fut, E>,
        extra: Vec<Pin<Box<Slot<T, Fut, E>>>>,
        // `None` with one slot.
        woken: Option<Woken>,
        // The next slot to look at: a scan of the woken ones goes on across calls.
        next: usize,
    }
}

impl<T, Fut, E> Slots<T, Fut, E>
where
    Fut: Future<Output = Result<(), E>>,
{
    pub(crate) fn new() -> Self {
        Self {
            first: Slot::new(),
            extra: Vec::new(),
            woken: None,
            next: 0,
        }
    }

    /// The first slot: the only one with one item at a time.
    #[inline(always)]
    pub(super) fn first(self: Pin<&mut Self>) -> Pin<&mut Slot<T, Fut, E>> {
        self.project().first
    }

    /// Called when the run is polled, with its limit and waker: a scan of the woken slots
    /// starts.
    #[inline]
    pub(super) fn enter(self: Pin<&mut Self>, limit: usize, cx: &Context<'_>) {
        let this = self.project();
        if limit > 1 {
            let woken = this.woken.get_or_insert_with(Woken::new);
            woken.register(cx.waker());
        }
        *this.next = 0;
    }

    /// Starts item number `index` in a free slot and polls it once.
    #[inline(always)]
    pub(super) fn start<F>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        index: u64,
        value: T,
        d: &mut Driver<'_, T, F>,
    ) -> Poll<ItemEnd<E>>
    where
        F: FnMut(T, ItemScope) -> Fut,
    {
        let mut this = self.project();
        let Some(woken) = this.woken else {
            this.first.as_mut().start(index, value, d);
            return this.first.poll_item(cx, d);
        };
        // The run starts an item only below its limit: at most `limit` slots.
        let at = woken.take_free();
        if at > this.extra.len() {
            this.extra.push(Box::pin(Slot::new()));
        }
        let mut cx = Context::from_waker(woken.waker(at));
        let mut slot = slot(this.first, this.extra, at);
        slot.as_mut().start(index, value, d);
        let end = slot.poll_item(&mut cx, d);
        if end.is_ready() {
            woken.free(at);
        }
        end
    }

    /// Polls the slots woken since they were last polled, until one item ends. A slot is
    /// polled at most once per scan: one that wakes itself waits for the next.
    pub(super) fn poll_woken<F>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        d: &mut Driver<'_, T, F>,
    ) -> Poll<ItemEnd<E>>
    where
        F: FnMut(T, ItemScope) -> Fut,
    {
        let mut this = self.project();
        let Some(woken) = this.woken else {
            if std::mem::replace(this.next, 1) == 0 && this.first.is_busy() {
                return this.first.poll_item(cx, d);
            }
            return Poll::Pending;
        };
        if *this.next == 0 && !woken.any() {
            return Poll::Pending;
        }
        while *this.next <= this.extra.len() {
            let at = std::mem::replace(this.next, *this.next + 1);
            let slot = slot(this.first.as_mut(), this.extra, at);
            if woken.take(at) && slot.is_busy() {
                let mut cx = Context::from_waker(woken.waker(at));
                if let Poll::Ready(end) = slot.poll_item(&mut cx, d) {
                    woken.free(at);
                    return Poll::Ready(end);
                }
            }
        }
        Poll::Pending
    }

    /// Stops every item in flight; returns the undos of failed attempts in progress, wound
    /// down (see [`Slot::stop`]).
    pub(super) fn stop_all(self: Pin<&mut Self>) -> Vec<Rollback> {
        let mut this = self.project();
        (0..=this.extra.len())
            .filter_map(|at| slot(this.first.as_mut(), this.extra, at).stop())
            .collect()
    }
}

/// The slot `at` (0: the inline one).
fn slot<'a, T, Fut, E>(
    first: Pin<&'a mut Slot<T, Fut, E>>,
    extra: &'a mut [Pin<Box<Slot<T, Fut, E>>>],
    at: usize,
) -> Pin<&'a mut Slot<T, Fut, E>> {
    match at {
        0 => first,
        _ => extra[at - 1].as_mut(),
    }
}
