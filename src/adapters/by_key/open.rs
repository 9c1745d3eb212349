// An index from key to batch, and a queue of the batches in opening order: (one `timeout`
// for all) the deadline, eviction and flush order. A batch closed before its turn leaves a
// stale queue entry (`seq` no longer its key's) until it reaches the front or the stale ones
// outnumber the open batches. A key whose batch filled keeps an empty (dormant) index entry.

use core::hash::Hash;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::adapters::batch::{BUDGET, FlushReason, Limiter, Weigh, deadline_after};

pub(super) const DORMANT: u64 = u64::MAX;

// Dormant entries kept while fewer batches are open; tables up to this size never shrink.
const KEEP: usize = 1_024;

pub(super) struct Entry<T, Wt> {
    pub(super) items: Vec<T>,
    pub(super) total: Wt,
    pub(super) seq: u64,
    pub(super) opened: Instant, // The clock read of the poll that took its first value.
    reserve: usize, // What the key's next batch reserves: a dormant key's, its full size.
}

pub(super) struct Queued<K> {
    pub(super) key: K,
    pub(super) deadline: Instant,
    seq: u64,
}

pub(super) enum Which<K> {
    Key(K),
    Oldest,
    Newest,
}

pub(super) struct OpenBatches<K, T, W: Weigh<T>> {
    pub(super) limiter: Limiter<W>,
    pub(super) timeout: Duration,
    pub(super) max_open_keys: usize,
    pub(super) due: bool, // The newest batch holds one value heavier than `max_weight`.
    pub(super) expired_first: bool, // After a yield: the next poll checks deadlines first.
    // Values that may be taken before passed deadlines are honoured, counting down across
    // polls from `BUDGET` after a poll began with one passed (`grace_after_deadline`).
    pub(super) grace: usize,
    pub(super) grace_after_deadline: bool,
    pub(super) last_flush: Option<FlushReason>,
    pub(super) index: HashMap<K, Entry<T, W::Weight>>, // Also the dormant entries.
    pub(super) queue: VecDeque<Queued<K>>,
    pub(super) open: usize,
    next_seq: u64,
}

impl<K: Hash + Eq, T, W: Weigh<T>> OpenBatches<K, T, W> {
    pub(super) fn new(limiter: Limiter<W>, timeout: Duration, max_open_keys: usize) -> Self {
        Self {
            limiter,
            timeout,
            max_open_keys,
            due: false,
            expired_first: false,
            grace: BUDGET,
            grace_after_deadline: false,
            last_flush: None,
            index: HashMap::new(),
            queue: VecDeque::new(),
            open: 0,
            next_seq: 0,
        }
    }

    pub(super) fn with_weigher<V: Weigh<T>>(self, weigher: V) -> OpenBatches<K, T, V> {
        let limiter = self.limiter.with_weigher(weigher);
        OpenBatches::new(limiter, self.timeout, self.max_open_keys)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&K, &[T])> {
        let live = move |q: &'_ Queued<K>| self.index.get(&q.key).filter(|e| e.seq == q.seq);
        (self.queue.iter()).filter_map(move |q| Some((&q.key, &live(q)?.items[..])))
    }

    // Opens `key`'s batch (it has none open); see `Limiter::reserve_after` for its buffer.
    pub(super) fn open(&mut self, key: K, value: T, total: W::Weight, opened: Instant)
    where
        K: Clone,
    {
        let deadline = deadline_after(opened, self.timeout);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.open += 1;
        let limiter = &self.limiter;
        let new_batch = |reserve| {
            let mut items = limiter.new_batch(reserve);
            items.push(value);
            Entry {
                items,
                total,
                seq,
                opened,
                reserve: 0,
            }
        };
        // A dormant entry takes the batch, and the key goes to the queue without a clone.
        match self.index.get_mut(&key) {
            Some(entry) => *entry = new_batch(entry.reserve),
            None => drop(self.index.insert(key.clone(), new_batch(0))),
        }
        self.queue.push_back(Queued { key, deadline, seq });
    }

    // A batch that closed full leaves its key's entry dormant.
    pub(super) fn close(
        &mut self,
        which: Which<K>,
        reason: FlushReason,
    ) -> Option<(K, Entry<T, W::Weight>)> {
        let (key, queued) = match which {
            Which::Key(key) => (key, true),
            Which::Oldest => (self.queue.pop_front()?.key, false),
            Which::Newest => (self.queue.pop_back()?.key, false),
        };
        self.open -= 1;
        let batch = if matches!(reason, FlushReason::Full | FlushReason::Weight) {
            let entry = self.index.get_mut(&key).expect("an open batch");
            let dormant = Entry {
                items: Vec::new(),
                total: Default::default(),
                seq: DORMANT,
                opened: entry.opened,
                reserve: self.limiter.reserve_after(reason, entry.items.len()),
            };
            core::mem::replace(entry, dormant)
        } else {
            self.index.remove(&key).expect("an open batch")
        };
        if self.index.len() - self.open > self.open.max(KEEP) {
            self.index.retain(|_, entry| entry.seq != DORMANT);
        }
        // A batch closed by key leaves its queue entry stale, unless it is the front.
        if queued && self.queue.front().is_some_and(|q| q.seq == batch.seq) {
            self.queue.pop_front();
        }
        self.tidy();
        Some((key, batch))
    }

    // The queue's front is live, at most as many stale entries as open batches; tables grown
    // past `KEEP` by a burst of keys shrink once the last open batch has closed.
    fn tidy(&mut self) {
        let index = &self.index;
        let live = |q: &Queued<K>| index.get(&q.key).is_some_and(|e| e.seq == q.seq);
        while self.queue.len() > self.open && self.queue.front().is_some_and(|q| !live(q)) {
            self.queue.pop_front();
        }
        if self.queue.len() > 2 * self.open {
            self.queue.retain(live);
        }
        if self.open == 0 && self.queue.capacity() > KEEP {
            self.queue = VecDeque::new();
        }
        if self.open == 0 && self.index.capacity() > KEEP {
            self.index.shrink_to(0); // Down to the dormant entries.
        }
    }

    pub(super) fn take_all(&mut self) -> Vec<(K, Vec<T>)> {
        let all = core::iter::from_fn(|| self.close(Which::Oldest, FlushReason::End))
            .map(|(key, batch)| (key, batch.items))
            .collect();
        self.index.clear();
        (self.due, self.expired_first, self.grace) = (false, false, BUDGET);
        self.grace_after_deadline = false;
        all
    }
}
