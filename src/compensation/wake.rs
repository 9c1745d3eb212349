//! Which slots of a run were woken: one waker per slot, made once, that marks its slot and
//! wakes the run, so that the run polls only the slots that were woken.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Wake, Waker};

use futures_util::task::AtomicWaker;

/// The flags the slots' wakers set, and the run's own waker they wake.
#[derive(Debug)]
struct Flags {
    run: AtomicWaker,
    any: AtomicBool,
    slots: Box<[AtomicBool]>,
}

#[derive(Debug)]
struct SlotWaker {
    flags: Arc<Flags>,
    at: usize,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.flags.slots[self.at].store(true, Ordering::Release);
        self.flags.any.store(true, Ordering::Release);
        self.flags.run.wake();
    }
}

/// One waker per slot of a run with more than one item in flight.
#[derive(Debug)]
pub(crate) struct Woken {
    flags: Arc<Flags>,
    wakers: Vec<Waker>,
    /// The free slots, the lowest on top.
    pub(crate) free: Vec<usize>,
}

impl Woken {
    pub(crate) fn new(slots: usize) -> Self {
        let flags = Arc::new(Flags {
            run: AtomicWaker::new(),
            any: AtomicBool::new(false),
            slots: (0..slots).map(|_| AtomicBool::new(false)).collect(),
        });
        let wakers = (0..slots)
            .map(|at| {
                let flags = flags.clone();
                Waker::from(Arc::new(SlotWaker { flags, at }))
            })
            .collect();
        let free = (0..slots).rev().collect();
        Self {
            flags,
            wakers,
            free,
        }
    }

    /// Registers the run's waker: a slot's wake wakes it.
    pub(crate) fn register(&self, run: &Waker) {
        self.flags.run.register(run);
    }

    /// Whether some slot was woken since the last call (clears the mark).
    pub(crate) fn any(&self) -> bool {
        self.flags.any.swap(false, Ordering::AcqRel)
    }

    /// Whether slot `at` was woken since it was last polled (clears the mark).
    pub(crate) fn take(&self, at: usize) -> bool {
        self.flags.slots[at].swap(false, Ordering::AcqRel)
    }

    /// The waker of slot `at`.
    pub(crate) fn waker(&self, at: usize) -> &Waker {
        &self.wakers[at]
    }
}
