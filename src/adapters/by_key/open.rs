//! The open batches of a per-key batcher, with the limits that close them: one table that
//! is at once the key index, the deadline queue, the eviction order and the flush order.
//!
//! Every batch gets the same `timeout` from a monotonic clock read when it opens, so the
//! order in which batches open is the order of their deadlines. One doubly linked list in
//! opening order (in a slab: a `Vec` of nodes and a free list) therefore answers "which
//! deadline is next", "which batch is oldest" and "in which order do batches flush", each in
//! O(1), with O(1) removal of a batch that closes early. A value's path touches the index
//! only: the batch's buffer lives in the index's entry, next to the key.
//!
//! A key whose batch closed full keeps its index entry, empty, as the memory that its
//! batches fill: its next batch reserves its full size at once. Other batches start empty
//! and grow. Those dormant entries hold no values; there are never more of them than
//! 1,024 or the open batches, whichever is more (past that they are all dropped).
//!
//! The tables shrink after a burst: when the last open batch closes, the slab and its free
//! list are dropped and the index shrinks to its dormant entries (tables of up to 1,024
//! entries are kept). A table that stays partly open keeps the size of its largest burst.

use core::hash::Hash;
use std::collections::HashMap;
use std::collections::hash_map::Entry as Slot;

use tokio::time::Instant;

use crate::adapters::batch::{BUDGET, FlushReason, Limiter, Weigh};

/// The end of the list, and the slot of a dormant entry.
const NIL: usize = usize::MAX;

/// The most dormant entries kept while fewer batches are open.
const DORMANT_MIN: usize = 1_024;

/// Tables (index, slab, free list) up to this many entries are never shrunk.
const SHRINK_MIN: usize = 1_024;

/// An open batch's values, in the index next to its key.
#[derive(Debug)]
pub(super) struct Entry<T, Wt> {
    pub(super) items: Vec<T>,
    pub(super) total: Wt,
    /// The batch's node in the list (`NIL`: no batch open, its last one filled).
    pub(super) slot: usize,
    /// What the key's next batch reserves (see `Limiter::reserve_after`).
    reserve: usize,
}

/// An open batch's place in the list.
#[derive(Debug)]
pub(super) struct Node<K> {
    pub(super) key: K,
    /// When its first value arrived (the clock read of the poll that took it).
    pub(super) opened: Instant,
    /// `opened + timeout`.
    pub(super) deadline: Instant,
    prev: usize,
    next: usize,
}

/// A closed batch.
#[derive(Debug)]
pub(super) struct Batch<K, T, Wt> {
    pub(super) key: K,
    pub(super) items: Vec<T>,
    pub(super) total: Wt,
    pub(super) opened: Instant,
    pub(super) deadline: Instant,
}

/// The open batches, in the order they opened, and the limits that close them.
#[derive(Debug)]
pub(super) struct OpenBatches<K, T, W: Weigh<T>> {
    pub(super) limiter: Limiter<W>,
    pub(super) max_open_keys: usize,
    /// A batch opened by a value that closed its key's previous batch by weight, and that
    /// this value alone closes (heavier than `max_weight`): yielded next.
    pub(super) due: Option<usize>,
    /// Set after a batch that a value or a deadline closed, or a cooperative yield: the next
    /// poll looks at the oldest deadline before taking more values.
    pub(super) expired_first: bool,
    /// How many values may still be taken before the batches whose deadlines have passed
    /// are yielded: `BUDGET` while none has passed, counting down (across polls that yield
    /// a batch a value closed) from the poll in which one passed.
    pub(super) grace: usize,
    pub(super) last_flush: Option<FlushReason>,
    index: HashMap<K, Entry<T, W::Weight>>,
    nodes: Vec<Option<Node<K>>>,
    free: Vec<usize>,
    head: usize,
    tail: usize,
    open: usize,
    dormant: usize,
}

impl<K, T, W: Weigh<T>> OpenBatches<K, T, W> {
    pub(super) fn new(limiter: Limiter<W>, max_open_keys: usize) -> Self {
        Self {
            limiter,
            max_open_keys,
            due: None,
            expired_first: false,
            grace: BUDGET,
            last_flush: None,
            index: HashMap::new(),
            nodes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            open: 0,
            dormant: 0,
        }
    }

    /// The same (empty) table with other limits.
    pub(super) fn with_limiter<V: Weigh<T>>(self, limiter: Limiter<V>) -> OpenBatches<K, T, V> {
        debug_assert!(self.open == 0, "an adapter that was never polled");
        let mut open = OpenBatches::new(limiter, self.max_open_keys);
        open.last_flush = self.last_flush;
        open
    }

    /// How many batches are open.
    pub(super) fn len(&self) -> usize {
        self.open
    }

    /// The oldest open batch (the first to have opened; its deadline is the earliest).
    pub(super) fn oldest(&self) -> Option<&Node<K>> {
        self.nodes.get(self.head).and_then(Option::as_ref)
    }

    /// The open batches' nodes, oldest first.
    pub(super) fn nodes(&self) -> impl Iterator<Item = &Node<K>> {
        let mut at = self.head;
        core::iter::from_fn(move || {
            let node = self.nodes.get(at)?.as_ref()?;
            at = node.next;
            Some(node)
        })
    }

    /// Unlinks the node in `slot` (which must be in the list) and frees the slot.
    fn unlink(&mut self, slot: usize) -> Node<K> {
        let node = self.nodes[slot].take().expect("a linked slot");
        match node.prev {
            NIL => self.head = node.next,
            prev => self.nodes[prev].as_mut().expect("a linked slot").next = node.next,
        }
        match node.next {
            NIL => self.tail = node.prev,
            next => self.nodes[next].as_mut().expect("a linked slot").prev = node.prev,
        }
        self.free.push(slot);
        self.open -= 1;
        if self.open == 0 && self.nodes.capacity() > SHRINK_MIN {
            // The last open batch closed: a burst of keys leaves no slab behind (every
            // slot is free, so the slab starts over).
            self.nodes = Vec::new();
            self.free = Vec::new();
            self.head = NIL;
            self.tail = NIL;
        }
        node
    }
}

impl<K: Hash + Eq + Clone, T, W: Weigh<T>> OpenBatches<K, T, W> {
    /// `key`'s open batch, if it has one, and the limits.
    #[inline]
    pub(super) fn entry_and_limiter(
        &mut self,
        key: &K,
    ) -> (Option<&mut Entry<T, W::Weight>>, &mut Limiter<W>) {
        let entry = self.index.get_mut(key).filter(|entry| entry.slot != NIL);
        (entry, &mut self.limiter)
    }

    /// The values buffered for `key`, oldest first (empty if it has no open batch).
    pub(super) fn values_of(&self, key: &K) -> &[T] {
        self.index.get(key).map_or(&[], |entry| &entry.items)
    }

    /// The open batches, oldest first: key and values.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&K, &[T])> {
        self.nodes()
            .map(|node| (&node.key, &self.index[&node.key].items[..]))
    }

    /// Opens a batch for `key` (which has none open) with `value` as the newest, and
    /// returns its slot. Its buffer follows the preallocation rule: full size if the key's
    /// last batch filled, else empty and growing.
    pub(super) fn open(
        &mut self,
        key: K,
        value: T,
        total: W::Weight,
        opened: Instant,
        deadline: Instant,
    ) -> usize {
        let node = Node {
            key: key.clone(),
            opened,
            deadline,
            prev: self.tail,
            next: NIL,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.nodes[slot] = Some(node);
                slot
            }
            None => {
                self.nodes.push(Some(node));
                self.nodes.len() - 1
            }
        };
        match self.tail {
            NIL => self.head = slot,
            tail => self.nodes[tail].as_mut().expect("a linked slot").next = slot,
        }
        self.tail = slot;
        self.open += 1;
        let (limiter, dormant) = (&self.limiter, &mut self.dormant);
        let new_batch = |reserve| {
            let mut items = limiter.new_batch(reserve);
            items.push(value);
            Entry {
                items,
                total,
                slot,
                reserve: 0,
            }
        };
        match self.index.entry(key) {
            Slot::Occupied(mut entry) => {
                *dormant -= 1;
                let reserve = entry.get().reserve;
                *entry.get_mut() = new_batch(reserve);
            }
            Slot::Vacant(entry) => {
                entry.insert(new_batch(0));
            }
        }
        slot
    }

    /// Closes the batch in `slot` for `reason`. A batch that closed full leaves its key's
    /// entry dormant (see the module's documentation).
    pub(super) fn close(&mut self, slot: usize, reason: FlushReason) -> Batch<K, T, W::Weight> {
        let node = self.unlink(slot);
        let (items, total) = if matches!(reason, FlushReason::Full | FlushReason::Weight) {
            let entry = self.index.get_mut(&node.key).expect("an open batch");
            entry.slot = NIL;
            entry.reserve = self.limiter.reserve_after(reason, entry.items.len());
            self.dormant += 1;
            let taken = (
                core::mem::take(&mut entry.items),
                core::mem::take(&mut entry.total),
            );
            if self.dormant > self.open.max(DORMANT_MIN) {
                self.index.retain(|_, entry| entry.slot != NIL);
                self.dormant = 0;
            }
            taken
        } else {
            let entry = self.index.remove(&node.key).expect("an open batch");
            (entry.items, entry.total)
        };
        if self.open == 0 && self.index.capacity() > SHRINK_MIN {
            // The last open batch closed: a burst of keys leaves no index behind (only the
            // dormant entries). Once per emptying, so amortized O(1) per batch it held.
            self.index.shrink_to(self.dormant);
        }
        Batch {
            key: node.key,
            items,
            total,
            opened: node.opened,
            deadline: node.deadline,
        }
    }

    /// Closes the oldest open batch for `reason`, if any.
    pub(super) fn close_oldest(&mut self, reason: FlushReason) -> Option<Batch<K, T, W::Weight>> {
        (self.head != NIL).then(|| self.close(self.head, reason))
    }

    /// Takes every open batch out, oldest first, leaving the table empty.
    pub(super) fn take_all(&mut self) -> Vec<(K, Vec<T>)> {
        let mut all = Vec::with_capacity(self.len());
        while let Some(batch) = self.close_oldest(FlushReason::End) {
            all.push((batch.key, batch.items));
        }
        self.index.clear();
        self.dormant = 0;
        self.due = None;
        self.expired_first = false;
        self.grace = BUDGET;
        all
    }
}
