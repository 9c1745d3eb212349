//! A counting `#[global_allocator]` and the helpers of the heap-allocation count tests.
//!
//! [`CountingAllocator`] counts allocations (`alloc`, `alloc_zeroed` and `realloc`) made on
//! the current thread while counting is switched on. Counting is switched on only *inside*
//! the `poll`/`poll_next` of the adapter under test (see [`Counted`]), so what is counted is
//! exactly what the adapter, the upstream it polls and the handler it calls allocate. The
//! consumer, the runtime's own bookkeeping between polls, and other test threads are not
//! counted. Every runtime is a `current_thread` runtime built before counting begins, so the
//! task runs on the test's own thread.
//!
//! Each test binary that includes this module declares its own
//! `#[global_allocator] static GLOBAL: alloc_common::CountingAllocator`.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;

// ---------------------------------------------------------------------------------------
// The counting allocator.

/// Forwards to `System`, counting this thread's allocations while counting is on.
pub struct CountingAllocator;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn note_allocation() {
    // `try_with`: the allocator can be called while thread-locals are being torn down.
    let counting = COUNTING.try_with(Cell::get).unwrap_or(false);
    if counting {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: every method forwards to `System` unchanged; the counters are thread-locals with
// const initialisers and no destructors, so touching them never allocates or re-enters.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Runs `f` with counting switched on and returns what it returned.
pub fn counting<R>(f: impl FnOnce() -> R) -> R {
    let was = COUNTING.with(|c| c.replace(true));
    let result = f();
    COUNTING.with(|c| c.set(was));
    result
}

/// The allocations counted on this thread since the last [`reset`].
pub fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Sets this thread's allocation count back to zero.
pub fn reset() {
    ALLOCATIONS.with(|n| n.set(0));
}

pin_project_lite::pin_project! {
    /// Counts the allocations made inside the wrapped stream's `poll_next` or future's `poll`.
    pub struct Counted<S> {
        #[pin]
        pub inner: S,
    }
}

/// Resets the count and wraps `inner` so that its polls are counted.
pub fn counted<S>(inner: S) -> Counted<S> {
    reset();
    Counted { inner }
}

impl<S: Stream> Stream for Counted<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let inner = self.project().inner;
        counting(|| inner.poll_next(cx))
    }
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let inner = self.project().inner;
        counting(|| inner.poll(cx))
    }
}

/// A `current_thread` runtime with time enabled.
pub fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// A `current_thread` runtime with time enabled and the clock paused.
pub fn paused_current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// The error type of every stream in these tests.
pub type E = std::io::Error;
