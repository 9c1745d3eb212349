//! The state of a batcher with one open batch: the batch and the limits that close it.

use core::mem;

use tokio::time::Instant;

use super::{BatchOutput, FlushReason, Limiter, Weigh};

/// The open batch and the rules that close it.
#[derive(Debug)]
pub(crate) struct BatchState<T, W: Weigh<T>, I> {
    pub(crate) limiter: Limiter<W>,
    pub(crate) items: Vec<T>,
    pub(crate) total: W::Weight,
    pub(crate) output: I,
    // How many values the next batch reserves room for (0: it starts empty and doubles).
    pub(crate) reserve: usize,
    // When the open batch's first value arrived, if that was in a poll that returned `Ready`
    // (a value that closed the previous batch by weight): its deadline runs from then.
    pub(crate) started: Option<Instant>,
    // When the open batch's first value arrived, timed for a `tracing` event.
    #[cfg(feature = "tracing")]
    pub(crate) opened: Option<Instant>,
    pub(crate) last_flush: Option<FlushReason>,
}

impl<T, W: Weigh<T>> BatchState<T, W, super::NoInfo> {
    /// An empty batch limited by `limiter`. The first batch has shown nothing: it starts
    /// empty and grows by doubling.
    pub(crate) fn new(limiter: Limiter<W>) -> Self {
        Self {
            limiter,
            items: Vec::new(),
            total: W::Weight::default(),
            output: super::NoInfo,
            reserve: 0,
            started: None,
            #[cfg(feature = "tracing")]
            opened: None,
            last_flush: None,
        }
    }
}

impl<T, W: Weigh<T>, I: BatchOutput<T>> BatchState<T, W, I> {
    /// Takes the buffered values out, forgetting the open batch.
    pub(crate) fn take(&mut self) -> Vec<T> {
        self.started = None;
        self.total = W::Weight::default();
        self.output.clear();
        #[cfg(feature = "tracing")]
        {
            self.opened = None;
        }
        mem::take(&mut self.items)
    }

    /// The same batch with other limits or output: `f` maps the limiter, total and output.
    pub(crate) fn rebuild<V: Weigh<T>, J>(
        self,
        f: impl FnOnce(Limiter<W>, W::Weight, I) -> (Limiter<V>, V::Weight, J),
    ) -> BatchState<T, V, J> {
        let (limiter, total, output) = f(self.limiter, self.total, self.output);
        BatchState {
            limiter,
            items: self.items,
            total,
            output,
            reserve: self.reserve,
            started: self.started,
            #[cfg(feature = "tracing")]
            opened: self.opened,
            last_flush: self.last_flush,
        }
    }

    /// Pushes a value that fits, and returns the batch's length.
    #[inline(always)]
    pub(crate) fn push(&mut self, value: T) -> usize {
        if self.items.len() == self.items.capacity() {
            self.reserve();
        }
        if mem::size_of::<T>() == 0 && self.items.is_empty() {
            self.begin(); // Zero-sized values never fill their `Vec`'s capacity.
        }
        self.items.push(value);
        self.items.len()
    }

    /// Makes room for one more value: a new batch's buffer (no capacity means no values),
    /// or doubling past it.
    #[inline]
    fn reserve(&mut self) {
        if self.items.capacity() == 0 {
            self.begin();
            self.items = self.limiter.new_batch(self.reserve);
        }
        self.items.reserve(1);
    }

    #[inline(always)]
    fn begin(&mut self) {
        self.output.arrives(0);
        #[cfg(feature = "tracing")]
        if super::trace::enabled() {
            self.opened = Some(Instant::now());
        }
    }

    /// Closes the open batch.
    #[inline]
    pub(crate) fn close(&mut self, reason: FlushReason) -> I::Batch {
        if W::SPLITS {
            self.started = None; // Only ever set by a weight split.
        }
        self.last_flush = Some(reason);
        let weight = self.limiter.report(mem::take(&mut self.total));
        let items = mem::take(&mut self.items);
        self.reserve = self.limiter.reserve_after(reason, items.len());
        #[cfg(feature = "tracing")]
        super::trace::flushed(reason, items.len(), weight, self.opened.take(), None);
        self.output.finish(items, reason, weight)
    }
}
