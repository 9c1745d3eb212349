//! The open batches of a per-key batcher: one table that is at once the key index, the
//! deadline queue, the eviction order and the flush order.
//!
//! Every batch gets the same `timeout`, and its deadline is stamped from a monotonic clock
//! when it opens, so the order in which batches open is also the order of their deadlines
//! (and of their first values). One doubly linked list in opening order therefore answers
//! all three questions "which deadline is next", "which batch is oldest" and "in which order
//! do the batches flush", each in O(1), with O(1) removal of any batch that closes early
//! (full, weight). The list lives in a slab (`Vec` of slots and a free list), so after
//! warm-up opening and closing a batch allocates nothing but the batch's own buffer.

use core::hash::Hash;
use std::collections::HashMap;

use tokio::time::Instant;

/// The end of the list, or "no slot".
const NIL: usize = usize::MAX;

/// One open batch.
#[derive(Debug)]
pub(super) struct Batch<K, T, W> {
    pub(super) key: K,
    pub(super) items: Vec<T>,
    /// The batch's running weight (`()` without a weight cap).
    pub(super) total: W,
    /// When its first value arrived (the clock read of the poll that took it).
    pub(super) opened: Instant,
    /// `opened + timeout`.
    pub(super) deadline: Instant,
    prev: usize,
    next: usize,
}

/// The open batches, in the order they opened.
pub(super) struct OpenBatches<K, T, W> {
    slots: Vec<Option<Batch<K, T, W>>>,
    free: Vec<usize>,
    index: HashMap<K, usize>,
    head: usize,
    tail: usize,
    /// The slot used last: a run of values of one key finds its batch without hashing.
    last: usize,
}

impl<K, T, W> OpenBatches<K, T, W> {
    pub(super) fn new() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            head: NIL,
            tail: NIL,
            last: NIL,
        }
    }

    /// How many batches are open.
    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.head == NIL
    }

    /// The batch in `slot`, which must be open.
    pub(super) fn get_mut(&mut self, slot: usize) -> &mut Batch<K, T, W> {
        self.slots[slot].as_mut().expect("an open slot")
    }

    /// The oldest open batch (the first to have opened; its deadline is the earliest).
    pub(super) fn oldest(&self) -> Option<&Batch<K, T, W>> {
        self.slots.get(self.head).and_then(Option::as_ref)
    }

    /// The slot of the oldest open batch.
    pub(super) fn oldest_slot(&self) -> Option<usize> {
        (self.head != NIL).then_some(self.head)
    }

    /// The open batches, oldest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Batch<K, T, W>> {
        let mut at = self.head;
        core::iter::from_fn(move || {
            let batch = self.slots.get(at)?.as_ref()?;
            at = batch.next;
            Some(batch)
        })
    }

    /// Closes the batch in `slot` (which must be open) and returns it.
    pub(super) fn close(&mut self, slot: usize) -> Batch<K, T, W>
    where
        K: Hash + Eq,
    {
        let batch = self.slots[slot].take().expect("an open slot");
        match batch.prev {
            NIL => self.head = batch.next,
            prev => self.get_mut(prev).next = batch.next,
        }
        match batch.next {
            NIL => self.tail = batch.prev,
            next => self.get_mut(next).prev = batch.prev,
        }
        self.index.remove(&batch.key);
        self.free.push(slot);
        if self.last == slot {
            self.last = NIL;
        }
        batch
    }

    /// Closes the oldest open batch, if any.
    pub(super) fn close_oldest(&mut self) -> Option<Batch<K, T, W>>
    where
        K: Hash + Eq,
    {
        self.oldest_slot().map(|slot| self.close(slot))
    }

    /// Takes every open batch out, oldest first, leaving the table empty (its memory kept).
    pub(super) fn take_all(&mut self) -> Vec<Batch<K, T, W>>
    where
        K: Hash + Eq,
    {
        let mut all = Vec::with_capacity(self.len());
        while let Some(batch) = self.close_oldest() {
            all.push(batch);
        }
        all
    }
}

impl<K: Hash + Eq + Clone, T, W> OpenBatches<K, T, W> {
    /// The slot of `key`'s open batch, if it has one.
    #[inline]
    pub(super) fn find(&mut self, key: &K) -> Option<usize> {
        if let Some(Some(batch)) = self.slots.get(self.last) {
            if batch.key == *key {
                return Some(self.last);
            }
        }
        let slot = *self.index.get(key)?;
        self.last = slot;
        Some(slot)
    }

    /// The values buffered for `key`, oldest first (empty if it has no open batch).
    pub(super) fn values_of(&self, key: &K) -> &[T] {
        match self.index.get(key) {
            Some(&slot) => &self.slots[slot].as_ref().expect("an open slot").items,
            None => &[],
        }
    }

    /// Opens a batch for `key` (which has none) as the newest, and returns its slot.
    pub(super) fn open(
        &mut self,
        key: K,
        items: Vec<T>,
        total: W,
        opened: Instant,
        deadline: Instant,
    ) -> usize {
        let batch = Batch {
            key: key.clone(),
            items,
            total,
            opened,
            deadline,
            prev: self.tail,
            next: NIL,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(batch);
                slot
            }
            None => {
                self.slots.push(Some(batch));
                self.slots.len() - 1
            }
        };
        match self.tail {
            NIL => self.head = slot,
            tail => self.get_mut(tail).next = slot,
        }
        self.tail = slot;
        let previous = self.index.insert(key, slot);
        debug_assert!(previous.is_none(), "a key has at most one open batch");
        self.last = slot;
        slot
    }
}

impl<K, T, W> Batch<K, T, W> {
    /// The batch's key and values.
    pub(super) fn into_parts(self) -> (K, Vec<T>) {
        (self.key, self.items)
    }
}
