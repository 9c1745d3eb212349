//! The items in flight, polled when woken (as `FuturesUnordered` does, with no allocation
//! per item: one waker per slot, made once, see [`Woken`]).

use core::pin::Pin;
use core::task::{Context, Poll, ready};
use pin_project_lite::pin_project;
use std::future::Future;

use super::item::{Driver, ItemEnd, Slot};
use crate::compensation::wake::Woken;
use crate::compensation::{ItemScope, Rollback};

/// A slot beyond the first, boxed once and reused.
type Boxed<T, Fut, E> = Pin<Box<Slot<T, Fut, E>>>;

pin_project! {
    /// The items in flight, each in a slot of its own, polled when woken. The first slot is
    /// inline (one item at a time allocates nothing); with `n > 1` items in flight the
    /// others are boxed once, when first needed, and reused, and each slot has a waker of
    /// its own (made once), so that the run polls only the slots that were woken.
    pub(crate) struct Slots<T, Fut, E> {
        #[pin]
        first: Slot<T, Fut, E>,
        extra: Vec<Boxed<T, Fut, E>>,
        // `None` with one slot: it shares the run's waker, and counts as woken whenever
        // the run is polled.
        woken: Option<Woken>,
        first_woken: bool,
        // The next slot a scan of the woken ones looks at, while one is in progress.
        scan: Option<usize>,
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
            first_woken: false,
            scan: None,
        }
    }

    /// Called when the run is polled: the run's waker is the one slots wake.
    #[inline]
    pub(super) fn enter(self: Pin<&mut Self>, limit: usize, cx: &Context<'_>) {
        let this = self.project();
        if limit > 1 {
            this.woken
                .get_or_insert_with(Woken::new)
                .register(cx.waker());
        }
        *this.first_woken = true;
    }

    /// Starts item number `index` in a free slot and polls it.
    #[inline]
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
        let this = self.project();
        let at = match this.woken {
            None => 0,
            Some(woken) => {
                // The run starts an item only below its limit: at most `limit` slots.
                let at = woken.take_free();
                while this.extra.len() < at {
                    this.extra.push(Box::pin(Slot::new()));
                }
                at
            }
        };
        if at == 0 {
            *this.first_woken = false;
        }
        let mut slot = slot(this.first, this.extra, at);
        slot.as_mut().start(index, value, d);
        match this.woken {
            None => slot.poll_item(cx, d),
            Some(woken) => {
                let mut cx = Context::from_waker(woken.waker(at));
                let end = ready!(slot.poll_item(&mut cx, d));
                woken.free(at);
                Poll::Ready(end)
            }
        }
    }

    /// Polls the slots woken since they were last polled, until one item ends.
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
            if !std::mem::take(this.first_woken) || !this.first.is_busy() {
                return Poll::Pending;
            }
            return this.first.poll_item(cx, d);
        };
        // One scan per call, started only if a slot was woken: a handler that wakes
        // itself is polled again on the next call, not in a loop here.
        let mut at = match this.scan.take() {
            Some(at) => at,
            None if woken.any() => 0,
            None => return Poll::Pending,
        };
        while at <= this.extra.len() {
            let slot = slot(this.first.as_mut(), this.extra, at);
            at += 1;
            if woken.take(at - 1) && slot.is_busy() {
                let mut cx = Context::from_waker(woken.waker(at - 1));
                if let Poll::Ready(end) = slot.poll_item(&mut cx, d) {
                    woken.free(at - 1);
                    *this.scan = Some(at);
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
        let mut undos = Vec::new();
        for at in 0..=this.extra.len() {
            undos.extend(slot(this.first.as_mut(), this.extra, at).stop());
        }
        undos
    }
}

/// The slot `at` (0: the inline one).
fn slot<'a, T, Fut, E>(
    first: Pin<&'a mut Slot<T, Fut, E>>,
    extra: &'a mut [Boxed<T, Fut, E>],
    at: usize,
) -> Pin<&'a mut Slot<T, Fut, E>> {
    match at {
        0 => first,
        _ => extra[at - 1].as_mut(),
    }
}
