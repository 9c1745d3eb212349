//! The open batches of a per-key batcher: one table that is at once the key index, the
//! deadline queue, the eviction order and the flush order.
//!
//! Every batch gets the same `timeout`, and its deadline is stamped from a monotonic clock
//! when it opens, so the order in which batches open is also the order of their deadlines
//! (and of their first values). One doubly linked list in opening order therefore answers
//! all three questions "which deadline is next", "which batch is oldest" and "in which order
//! do the batches flush", each in O(1), with O(1) removal of any batch that closes early
//! (full, weight). The list lives in a slab (`Vec` of nodes and a free list), so after
//! warm-up opening and closing a batch allocates nothing but the batch's own buffer.
//!
//! A value's path touches the index only: the batch's buffer lives in the index's entry,
//! next to the key, and the list is touched when a batch opens or closes.

use core::hash::Hash;
use std::collections::HashMap;

use tokio::time::Instant;

/// The end of the list.
const NIL: usize = usize::MAX;

/// An open batch's values, in the index next to its key.
#[derive(Debug)]
pub(super) struct Entry<T, W> {
    pub(super) items: Vec<T>,
    /// The batch's running weight (`()` without a weight cap).
    pub(super) total: W,
    /// The batch's node in the list.
    slot: usize,
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
pub(super) struct Batch<K, T, W> {
    pub(super) key: K,
    pub(super) items: Vec<T>,
    pub(super) total: W,
    pub(super) opened: Instant,
}

/// The open batches, in the order they opened.
pub(super) struct OpenBatches<K, T, W> {
    index: HashMap<K, Entry<T, W>>,
    nodes: Vec<Option<Node<K>>>,
    free: Vec<usize>,
    head: usize,
    tail: usize,
}

impl<K, T, W> OpenBatches<K, T, W> {
    pub(super) fn new() -> Self {
        Self {
            index: HashMap::new(),
            nodes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
        }
    }

    /// How many batches are open.
    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.head == NIL
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
        node
    }
}

impl<K: Hash + Eq, T, W> OpenBatches<K, T, W> {
    /// `key`'s open batch, if it has one.
    #[inline]
    pub(super) fn get_mut(&mut self, key: &K) -> Option<&mut Entry<T, W>> {
        self.index.get_mut(key)
    }

    /// The values buffered for `key`, oldest first (empty if it has no open batch).
    pub(super) fn values_of(&self, key: &K) -> &[T] {
        self.index.get(key).map_or(&[], |entry| &entry.items)
    }

    /// The open batches, oldest first: key, values, deadline.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&K, &[T], Instant)> {
        self.nodes().map(|node| {
            let entry = &self.index[&node.key];
            (&node.key, &entry.items[..], node.deadline)
        })
    }

    /// Closes `key`'s open batch, which must exist.
    pub(super) fn close(&mut self, key: &K) -> Batch<K, T, W> {
        let entry = self.index.remove(key).expect("an open batch");
        let node = self.unlink(entry.slot);
        Batch {
            key: node.key,
            items: entry.items,
            total: entry.total,
            opened: node.opened,
        }
    }

    /// Closes the batch whose node is in `slot`, which must be open.
    pub(super) fn close_slot(&mut self, slot: usize) -> Batch<K, T, W> {
        let node = self.unlink(slot);
        let entry = self.index.remove(&node.key).expect("an open batch");
        Batch {
            key: node.key,
            items: entry.items,
            total: entry.total,
            opened: node.opened,
        }
    }

    /// Closes the oldest open batch, if any.
    pub(super) fn close_oldest(&mut self) -> Option<Batch<K, T, W>> {
        (self.head != NIL).then(|| self.close_slot(self.head))
    }

    /// Takes every open batch out, oldest first, leaving the table empty (its memory kept).
    pub(super) fn take_all(&mut self) -> Vec<Batch<K, T, W>> {
        let mut all = Vec::with_capacity(self.len());
        while let Some(batch) = self.close_oldest() {
            all.push(batch);
        }
        all
    }
}

impl<K: Hash + Eq + Clone, T, W> OpenBatches<K, T, W> {
    /// Opens a batch for `key` (which has none) as the newest, and returns its slot.
    pub(super) fn open(
        &mut self,
        key: K,
        items: Vec<T>,
        total: W,
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
        let previous = self.index.insert(key, Entry { items, total, slot });
        debug_assert!(previous.is_none(), "a key has at most one open batch");
        slot
    }
}

impl<K, T, W> Batch<K, T, W> {
    /// The batch's key and values.
    pub(super) fn into_parts(self) -> (K, Vec<T>) {
        (self.key, self.items)
    }
}
