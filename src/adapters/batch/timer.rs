//! The deadline timer both batchers share.

use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::runtime::{Handle, Id};
use tokio::time::{Instant, Sleep};

/// Stands in for a deadline that overflows `Instant`: about thirty years.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `timeout` after `now`; a timeout past the clock's range means "never", as in
/// `tokio::time::sleep`.
#[inline]
pub(crate) fn deadline_after(now: Instant, timeout: Duration) -> Instant {
    now.checked_add(timeout).unwrap_or_else(|| now + FAR_FUTURE)
}

pin_project! {
    /// One inline `tokio::time::Sleep` (never a heap allocation), created when a batcher
    /// first waits for a deadline and reset for later ones: a `Sleep` that fired is kept
    /// when its batch closes, to be reset for the next batch's deadline.
    ///
    /// A `Sleep` may only be polled on a live runtime: a batcher polled on another runtime
    /// than the one its timer was made on gets a new one, at the same deadline. While the
    /// same task's waker polls on the same runtime and the deadline is the same, the `Sleep`
    /// already holds that waker and is only asked whether it has elapsed.
    #[derive(Debug)]
    pub(crate) struct Timer {
        #[pin]
        sleep: Option<Sleep>,
        // Whether `sleep` is set for the open batch (else it fired, and is kept for reuse).
        armed: bool,
        runtime: Option<Id>,
        // The waker the `Sleep` was last polled with (the clone keeps its task's allocation,
        // so its data pointer, alive).
        waker: Option<Waker>,
    }
}

impl Timer {
    pub(crate) const fn new() -> Self {
        Self {
            sleep: None,
            armed: false,
            runtime: None,
            waker: None,
        }
    }

    /// The deadline the timer is set for, if it is set.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.sleep
            .as_ref()
            .filter(|_| self.armed)
            .map(Sleep::deadline)
    }

    /// Disarms the timer, so that it never wakes the task for a batch that is gone: a
    /// `Sleep` that has not fired is dropped (deregistered), one that fired is kept.
    #[inline]
    pub(crate) fn clear(self: Pin<&mut Self>) {
        if self.armed {
            let mut this = self.project();
            *this.armed = false;
            if !this
                .sleep
                .as_ref()
                .as_pin_ref()
                .is_some_and(|s| s.is_elapsed())
            {
                this.sleep.set(None);
            }
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

    /// The armed `Sleep`, if it already holds this task's waker on the runtime polling now.
    #[inline(always)]
    fn registered(&self, cx: &Context<'_>) -> Option<&Sleep> {
        let (true, Some(sleep), Some(waker)) = (self.armed, &self.sleep, &self.waker) else {
            return None;
        };
        // A waker may outlive its runtime or be polled on several (a hand-made one, or
        // `futures::executor::block_on`'s): the `Sleep` is trusted only on its own runtime.
        (same_task(waker, cx.waker()) && current_runtime() == self.runtime).then_some(sleep)
    }

    /// Waits for `at`, waking the task then.
    #[inline]
    pub(crate) fn poll_until(self: Pin<&mut Self>, at: Instant, cx: &mut Context<'_>) -> Poll<()> {
        match self.registered(cx).filter(|sleep| sleep.deadline() == at) {
            Some(sleep) => elapsed(sleep),
            None => self.poll_slow(at, cx),
        }
    }

    /// Waits for the armed deadline, or for `deadline()` if the timer is not armed.
    #[inline]
    pub(crate) fn poll_armed(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        deadline: impl FnOnce() -> Instant,
    ) -> Poll<()> {
        if let Some(sleep) = self.registered(cx) {
            return elapsed(sleep);
        }
        let at = self.deadline().unwrap_or_else(deadline);
        self.poll_slow(at, cx)
    }

    /// Sets the `Sleep` to `at` on the runtime polling now, and polls it.
    #[inline(never)]
    fn poll_slow(self: Pin<&mut Self>, at: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        // Outside any runtime an armed timer is polled as it is (tokio then panics with its
        // message), and a new one is made (`sleep_until` panics with its own).
        let runtime = current_runtime();
        match this.sleep.as_mut().as_pin_mut() {
            Some(sleep) if runtime == *this.runtime || (runtime.is_none() && *this.armed) => {
                if sleep.deadline() != at {
                    sleep.reset(at);
                }
            }
            _ => {
                this.sleep.set(Some(tokio::time::sleep_until(at)));
                *this.runtime = runtime;
            }
        }
        *this.armed = true;
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

/// Whether a `Sleep` that holds the task's waker has fired.
#[inline(always)]
fn elapsed(sleep: &Sleep) -> Poll<()> {
    if sleep.is_elapsed() {
        Poll::Ready(())
    } else {
        Poll::Pending
    }
}

/// The runtime polling now (runtime ids are unique in the process), if any.
#[inline(always)]
fn current_runtime() -> Option<Id> {
    Handle::try_current().ok().map(|handle| handle.id())
}

/// Whether `current` wakes the task `stored` (a clone this timer holds) wakes. `will_wake`
/// alone misses clones of tokio's wakers (their vtables can be duplicated between codegen
/// units); the same non-null data pointer, kept alive by the stored clone, with vtables of
/// the same four functions is the same waker. (The same data under other functions is not:
/// one `Arc` can sit behind two wakers that wake different things.)
#[inline(always)]
fn same_task(stored: &Waker, current: &Waker) -> bool {
    stored.will_wake(current)
        || (!stored.data().is_null()
            && stored.data() == current.data()
            && stored.vtable() == current.vtable())
}
