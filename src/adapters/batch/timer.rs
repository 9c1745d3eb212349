//! The deadline timer both batchers share, and the rule for how much a new batch reserves.

use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::runtime::{Handle, Id};
use tokio::time::{Instant, Sleep};

use super::FlushReason;

/// Stands in for a deadline that overflows `Instant`: about thirty years.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// The most values a new batch reserves room for at once (a longer batch grows by doubling).
const PREALLOCATE_MAX: usize = 1 << 16;

/// `timeout` after `now`; a timeout past the clock's range means "never", as in
/// `tokio::time::sleep`.
pub(crate) fn deadline_after(now: Instant, timeout: Duration) -> Instant {
    now.checked_add(timeout).unwrap_or_else(|| now + FAR_FUTURE)
}

/// The buffer of a new batch that reserves room for `reserve` values (0: none; see
/// [`reserve_after`]), at most 65,536 (a longer batch grows by doubling).
#[inline]
pub(crate) fn new_batch<T>(reserve: usize) -> Vec<T> {
    if reserve == 0 {
        Vec::new()
    } else {
        Vec::with_capacity(reserve.min(PREALLOCATE_MAX))
    }
}

/// What the batch after one closed for `reason` with `len` values reserves. A batch that
/// closed full, by count or by weight, has shown how long batches get: the next one
/// reserves that length (`max_items` after a count close), at most 65,536 values, in one
/// allocation. Any other batch (the first one among them) starts empty and grows by
/// doubling as a `Vec` does, so that it holds memory in proportion to its values.
#[inline(always)]
pub(crate) fn reserve_after(reason: FlushReason, len: usize) -> usize {
    if matches!(reason, FlushReason::Full | FlushReason::Weight) {
        len
    } else {
        0
    }
}

pin_project! {
    /// One inline `tokio::time::Sleep` (never a heap allocation), created when a batcher
    /// first waits for a deadline and reset for later ones.
    ///
    /// A `Sleep` may only be polled on a live runtime: a batcher polled on another runtime
    /// than the one its timer was made on gets a new one, at the same deadline. While the
    /// same task's waker polls on the same runtime and the deadline is the same, the `Sleep`
    /// already holds that waker and is only asked whether it has elapsed.
    #[derive(Debug)]
    pub(crate) struct Timer {
        #[pin]
        sleep: Option<Sleep>,
        runtime: Option<Id>,
        // The waker the `Sleep` was last polled with (it keeps that waker's runtime alive).
        waker: Option<Waker>,
    }
}

impl Timer {
    pub(crate) const fn new() -> Self {
        Self {
            sleep: None,
            runtime: None,
            waker: None,
        }
    }

    /// The deadline the timer is set for, if it is set.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.sleep.as_ref().map(Sleep::deadline)
    }

    /// Drops the timer, so that it never wakes the task for a batch that is gone.
    #[inline]
    pub(crate) fn clear(self: Pin<&mut Self>) {
        let mut this = self.project();
        if this.sleep.is_some() {
            this.sleep.set(None);
            *this.runtime = None;
            *this.waker = None;
        }
    }

    /// Moves a set timer to `at` (a later deadline) without polling it: the waker it holds
    /// (if it has not fired yet) is woken then. A timer that fired, or of another runtime
    /// than the current one, is dropped instead: the next poll sets a new one.
    pub(crate) fn retarget(self: Pin<&mut Self>, at: Instant) {
        let runtime = current_runtime();
        let mut this = self.project();
        match this.sleep.as_mut().as_pin_mut() {
            Some(sleep) if !sleep.is_elapsed() && runtime.is_some() && runtime == *this.runtime => {
                sleep.reset(at)
            }
            _ => {
                this.sleep.set(None);
                *this.waker = None;
            }
        }
    }

    /// Waits for `at`, waking the task then.
    #[inline]
    pub(crate) fn poll_until(self: Pin<&mut Self>, at: Instant, cx: &mut Context<'_>) -> Poll<()> {
        if let (Some(sleep), Some(waker)) = (&self.sleep, &self.waker) {
            // A waker may outlive its runtime or be polled on several (a hand-made one, or
            // `futures::executor::block_on`'s): the `Sleep` is trusted only on its own runtime.
            if sleep.deadline() == at
                && same_task(waker, cx.waker())
                && current_runtime() == self.runtime
            {
                return if sleep.is_elapsed() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                };
            }
        }
        self.poll_slow(at, cx)
    }

    /// Sets the `Sleep` to `at` on the runtime polling now, and polls it.
    #[inline(never)]
    fn poll_slow(self: Pin<&mut Self>, at: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        // Outside any runtime the timer is polled as it is (tokio then panics with its message).
        let runtime = current_runtime();
        match this.sleep.as_mut().as_pin_mut() {
            Some(sleep) if runtime.is_none() || runtime == *this.runtime => {
                if sleep.deadline() != at {
                    sleep.reset(at);
                }
            }
            _ => {
                this.sleep.set(Some(tokio::time::sleep_until(at)));
                *this.runtime = runtime;
            }
        }
        let sleep = this.sleep.as_pin_mut().expect("a timer that was just set");
        // Out of tokio's cooperative budget, a `Sleep` returns `Pending` without registering:
        // the next poll must poll it again.
        let registers = tokio::task::coop::has_budget_remaining();
        let polled = sleep.poll(cx);
        if polled.is_pending() && !registers {
            *this.waker = None;
        } else if polled.is_pending() {
            match this.waker {
                Some(waker) => waker.clone_from(cx.waker()),
                None => *this.waker = Some(cx.waker().clone()),
            }
        }
        polled
    }
}

/// The runtime polling now (runtime ids are unique in the process), if any.
#[inline(always)]
fn current_runtime() -> Option<Id> {
    Handle::try_current().ok().map(|handle| handle.id())
}

/// Whether `current` wakes the task `stored` (a clone this timer holds) wakes. `will_wake`
/// alone misses clones of tokio's wakers (their vtables can be duplicated between codegen
/// units); the same non-null data pointer, kept alive by the stored clone, is the same
/// task's waker.
#[inline(always)]
fn same_task(stored: &Waker, current: &Waker) -> bool {
    stored.will_wake(current) || (!stored.data().is_null() && stored.data() == current.data())
}
