//! Which slots of a run were woken: one waker per slot, made once when the slot is first
//! needed, that marks its slot and wakes the run, so that the run polls only the slots that
//! were woken.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Wake, Waker};

use futures_util::task::AtomicWaker;

/// What every slot's waker shares: the run's own waker, and whether any slot was woken.
#[derive(Debug)]
struct Run {
    waker: AtomicWaker,
    any: AtomicBool,
}

/// A slot's waker: its own mark, and the run's.
#[derive(Debug)]
struct SlotWaker {
    run: Arc<Run>,
    woken: AtomicBool,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.run.any.store(true, Ordering::Release);
        self.run.waker.wake();
    }
}

/// One waker per slot of a run with more than one item in flight, made when the slot is
/// first needed (so a large limit costs nothing up front).
#[derive(Debug)]
pub(crate) struct Woken {
    run: Arc<Run>,
    slots: Vec<(Arc<SlotWaker>, Waker)>,
    /// The free slots among those made.
    free: Vec<usize>,
}

impl Woken {
    pub(crate) fn new() -> Self {
        Self {
            run: Arc::new(Run {
                waker: AtomicWaker::new(),
                any: AtomicBool::new(false),
            }),
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    /// Registers the run's waker: a slot's wake wakes it.
    pub(crate) fn register(&self, run: &Waker) {
        self.run.waker.register(run);
    }

    /// A free slot: one freed earlier, or else a new one (numbered by how many were made).
    #[inline]
    pub(crate) fn take_free(&mut self) -> usize {
        match self.free.pop() {
            Some(at) => at,
            None => self.new_slot(),
        }
    }

    #[cold]
    #[inline(never)]
    fn new_slot(&mut self) -> usize {
        self.slots.push(Self::slot_waker(&self.run));
        self.slots.len() - 1
    }

    fn slot_waker(run: &Arc<Run>) -> (Arc<SlotWaker>, Waker) {
        let slot = Arc::new(SlotWaker {
            run: run.clone(),
            woken: AtomicBool::new(false),
        });
        (slot.clone(), Waker::from(slot))
    }

    /// Marks slot `at` woken, without waking the run (which is being polled).
    pub(crate) fn mark(&self, at: usize) {
        self.slots[at].0.woken.store(true, Ordering::Release);
        self.run.any.store(true, Ordering::Release);
    }

    /// Slot `at` is free again. If its ended item left a clone of the slot's waker with
    /// some resource, the slot gets a new waker: a stale wake then wakes the run, but polls
    /// no item (the old waker marks only itself).
    #[inline]
    pub(crate) fn free(&mut self, at: usize) {
        // Two references when none escaped: the `Arc` kept here and the one in the `Waker`.
        if Arc::strong_count(&self.slots[at].0) > 2 {
            self.renew(at);
        }
        self.free.push(at);
    }

    #[cold]
    #[inline(never)]
    fn renew(&mut self, at: usize) {
        self.slots[at] = Self::slot_waker(&self.run);
    }

    /// Whether some slot was woken since the last call (clears the mark).
    pub(crate) fn any(&self) -> bool {
        self.run.any.swap(false, Ordering::AcqRel)
    }

    /// Whether slot `at` was woken since it was last polled (clears the mark).
    pub(crate) fn take(&self, at: usize) -> bool {
        self.slots[at].0.woken.swap(false, Ordering::AcqRel)
    }

    /// The waker of slot `at`.
    #[inline]
    pub(crate) fn waker(&self, at: usize) -> &Waker {
        &self.slots[at].1
    }
}
