//! `chunks_timeout_by_key_result`: one open batch per key, each with its own deadline.

mod open;
mod poll;

use core::fmt;
use core::hash::Hash;
use core::pin::Pin;
use std::time::Duration;

use futures_core::stream::TryStream;
use pin_project_lite::pin_project;
use tokio::runtime::Id;
use tokio::time::{Instant, Sleep};

use super::batch::{
    BatchOutput, FlushReason, Limiter, MaxWeight, NoInfo, NoWeight, Weigh, WithInfo,
};
use open::{Batch, OpenBatches};

pin_project! {
    /// Stream for [`ResultStreamExt::chunks_timeout_by_key_result`](crate::ResultStreamExt::chunks_timeout_by_key_result).
    ///
    /// Keeps one open batch per key and yields each as `Ok((key, batch))` when it is full,
    /// when its own deadline passes, when it is evicted by [`max_open_keys`](Self::max_open_keys),
    /// before an `Err`, or at the end. The method's documentation states every rule;
    /// [`max_weight`](Self::max_weight) adds a weight cap per batch and
    /// [`with_batch_info`](Self::with_batch_info) tags each batch.
    ///
    /// `W` and `I` are the type-state parameters of [`crate::batch`], shared with
    /// [`ChunksTimeoutResult`](crate::ChunksTimeoutResult): the weight rules ([`NoWeight`]
    /// by default) and what is yielded per batch ([`NoInfo`] by default: `(K, Vec<T>)`;
    /// [`WithInfo`]: `(K, (Vec<T>, BatchInfo))`).
    ///
    /// # Implementation
    ///
    /// Every batch gets the same `timeout` from a monotonic clock read when it opens, so
    /// the order in which batches open is the order of their deadlines. The open batches
    /// are kept in one linked list in that order (in a slab; each key's buffer lives in a
    /// `HashMap<K, _>` entry that points at its node): the list's head is at once the next
    /// deadline, the batch to evict and the next to flush at an error or the end, and a
    /// batch that closes early is unlinked in O(1). One
    /// `tokio::time::Sleep`, stored inline, is armed at the head's deadline while the
    /// upstream is pending: no timer per key, no task. When the head closes early, the timer
    /// is moved to the next head's (later) deadline or dropped, so it never wakes the task
    /// for a batch that is gone; it is replaced when the adapter is polled on another runtime.
    ///
    /// # Cost
    ///
    /// Per value: the key function and a push, after one key comparison when the value has
    /// the same key as the previous one, otherwise after one hash lookup. Per batch: one allocation of
    /// `min(max_items, 4_096)` values (a larger batch grows as a `Vec` does), one clone of the
    /// key (the index and the batch each hold one), and one read of the clock for all the
    /// batches opened in the same poll. Memory: the open batches, plus a slab and an index
    /// that keep the size of the most batches ever open at once.
    ///
    /// # Cancellation safety
    ///
    /// Dropping the adapter drops its buffered values;
    /// [`take_remainder`](Self::take_remainder) takes them out of a pinned adapter first.
    #[must_use = "streams do nothing unless polled"]
    #[project = Proj]
    pub struct ChunksTimeoutByKeyResult<St: TryStream, K, F, W: Weigh<St::Ok> = NoWeight, I = NoInfo> {
        #[pin]
        stream: St,
        key: F,
        open: OpenBatches<K, St::Ok, W::Weight>,
        // A batch opened by a value that closed its key's previous batch by weight, and that
        // is closed by that value alone (heavier than `max_weight`): yielded next.
        due: Option<usize>,
        pending_error: Option<St::Error>,
        // The one timer, armed at the oldest open batch's deadline, and the runtime it
        // belongs to (a timer of a runtime that was dropped may not be polled).
        #[pin]
        timer: Option<Sleep>,
        timer_runtime: Option<Id>,
        // Set when a value or a deadline closed a batch: the next poll yields the batches
        // whose deadlines have passed before taking more values, so that a flooding key
        // cannot hold back another's deadline, and batches that expire together go together.
        expired_first: bool,
        upstream_done: bool,
        last_flush: Option<FlushReason>,
        limiter: Limiter<W>,
        output: I,
        max_open_keys: usize,
        timeout: Duration,
    }
}

impl<St, K, F, W, I> fmt::Debug for ChunksTimeoutByKeyResult<St, K, F, W, I>
where
    St: TryStream + fmt::Debug,
    St::Ok: fmt::Debug,
    St::Error: fmt::Debug,
    K: fmt::Debug + Hash + Eq,
    W: Weigh<St::Ok> + fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Open<'a, K, T, V>(&'a OpenBatches<K, T, V>);
        impl<K: fmt::Debug + Hash + Eq, T: fmt::Debug, V> fmt::Debug for Open<'_, K, T, V> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_list().entries(self.0.iter()).finish()
            }
        }
        f.debug_struct("ChunksTimeoutByKeyResult")
            .field("stream", &self.stream)
            .field("open", &Open(&self.open))
            .field("pending_error", &self.pending_error)
            .field("upstream_done", &self.upstream_done)
            .field("last_flush", &self.last_flush)
            .field("max_items", &self.limiter.max_items())
            .field("weight", self.limiter.weigher())
            .field("max_open_keys", &self.max_open_keys)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<St, K, F> ChunksTimeoutByKeyResult<St, K, F>
where
    St: TryStream,
    F: FnMut(&St::Ok) -> K,
    K: Hash + Eq + Clone,
{
    #[track_caller]
    pub(crate) fn new(stream: St, key: F, max_items: usize, timeout: Duration) -> Self {
        assert!(
            max_items > 0,
            "chunks_timeout_by_key_result: `max_items` must be greater than zero"
        );
        Self {
            stream,
            key,
            open: OpenBatches::new(),
            due: None,
            pending_error: None,
            timer: None,
            timer_runtime: None,
            expired_first: false,
            upstream_done: false,
            last_flush: None,
            limiter: Limiter::new(max_items, NoWeight),
            output: NoInfo,
            max_open_keys: usize::MAX,
            timeout,
        }
    }
}

impl<St: TryStream, K, F, I> ChunksTimeoutByKeyResult<St, K, F, NoWeight, I> {
    /// Adds a weight cap per key: each value is weighed once by `weigh`, and each key's
    /// batch holds at most `max_weight` in total.
    ///
    /// The rules of [`ChunksTimeoutResult::max_weight`](crate::ChunksTimeoutResult::max_weight),
    /// per key: a value that would push its key's batch past `max_weight` closes that batch
    /// ([`FlushReason::Weight`]) and starts the key's next one (with a deadline of its own);
    /// a batch that reaches `max_weight` is yielded at once; a value heavier than
    /// `max_weight` is yielded alone, at once, and evicts nothing. Other keys' batches are
    /// not affected.
    ///
    /// # Panics
    ///
    /// Panics, at the caller's location, if `max_weight` is zero.
    ///
    /// ```
    /// use std::time::Duration;
    /// use futures::{StreamExt, stream};
    /// use result_stream::ResultStreamExt;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let rows = stream::iter([("a", 4), ("b", 5), ("a", 3), ("b", 9), ("a", 1)].map(Ok::<_, ()>));
    /// let batches: Vec<_> = rows
    ///     .chunks_timeout_by_key_result(|row| row.0, 100, Duration::from_secs(1))
    ///     .max_weight(8, |row| row.1)
    ///     .collect()
    ///     .await;
    /// assert_eq!(batches, vec![
    ///     Ok(("b", vec![("b", 5)])),           // ("b", 9) would push b past 8,
    ///     Ok(("b", vec![("b", 9)])),           // and is heavier than 8 on its own
    ///     Ok(("a", vec![("a", 4), ("a", 3), ("a", 1)])), // 8: full by weight
    /// ]);
    /// # }
    /// ```
    #[track_caller]
    pub fn max_weight<G>(
        self,
        max_weight: usize,
        weigh: G,
    ) -> ChunksTimeoutByKeyResult<St, K, F, MaxWeight<G>, I>
    where
        G: FnMut(&St::Ok) -> usize,
    {
        let weigher = MaxWeight::new("max_weight", max_weight, weigh);
        debug_assert!(self.open.is_empty(), "an adapter that was never polled");
        ChunksTimeoutByKeyResult {
            stream: self.stream,
            key: self.key,
            open: OpenBatches::new(),
            due: None,
            pending_error: self.pending_error,
            timer: None,
            timer_runtime: None,
            expired_first: false,
            upstream_done: self.upstream_done,
            last_flush: self.last_flush,
            limiter: self.limiter.with_weigher(weigher),
            output: self.output,
            max_open_keys: self.max_open_keys,
            timeout: self.timeout,
        }
    }
}

impl<St: TryStream, K, F, W: Weigh<St::Ok>> ChunksTimeoutByKeyResult<St, K, F, W, NoInfo> {
    /// Yields each batch with a [`BatchInfo`](crate::BatchInfo): `Ok((key, (batch, info)))`.
    ///
    /// `info` tells why the batch closed ([`FlushReason`], including
    /// [`Eviction`](FlushReason::Eviction) for a batch closed by
    /// [`max_open_keys`](Self::max_open_keys)), its total weight (`None` without
    /// [`max_weight`](Self::max_weight)) and its age: from its first value's arrival (the
    /// poll that took it) to its closing. The clock is read once more per batch, at its
    /// closing, and only in this mode. Errors pass through as before.
    ///
    /// ```
    /// use std::time::Duration;
    /// use futures::{SinkExt, StreamExt};
    /// use result_stream::{FlushReason, ResultStreamExt};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let (mut tx, rx) = futures::channel::mpsc::unbounded::<Result<(char, u32), String>>();
    /// let mut batches = std::pin::pin!(
    ///     rx.chunks_timeout_by_key_result(|v| v.0, 10, Duration::from_secs(5))
    ///         .max_open_keys(1)
    ///         .with_batch_info()
    /// );
    /// tx.send(Ok(('a', 1))).await.unwrap();
    /// tx.send(Ok(('b', 1))).await.unwrap();
    ///
    /// let (key, (batch, info)) = batches.next().await.unwrap().unwrap();
    /// assert_eq!((key, batch, info.reason()), ('a', vec![('a', 1)], FlushReason::Eviction));
    ///
    /// let (key, (_, info)) = batches.next().await.unwrap().unwrap(); // b's deadline
    /// assert_eq!((key, info.reason(), info.age()), ('b', FlushReason::Deadline, Duration::from_secs(5)));
    /// # }
    /// ```
    pub fn with_batch_info(self) -> ChunksTimeoutByKeyResult<St, K, F, W, WithInfo> {
        debug_assert!(self.open.is_empty(), "an adapter that was never polled");
        ChunksTimeoutByKeyResult {
            stream: self.stream,
            key: self.key,
            open: OpenBatches::new(),
            due: None,
            pending_error: self.pending_error,
            timer: None,
            timer_runtime: None,
            expired_first: false,
            upstream_done: self.upstream_done,
            last_flush: self.last_flush,
            limiter: self.limiter,
            output: WithInfo::default(),
            max_open_keys: self.max_open_keys,
            timeout: self.timeout,
        }
    }
}

impl<St: TryStream, K, F, W: Weigh<St::Ok>, I> ChunksTimeoutByKeyResult<St, K, F, W, I> {
    /// Bounds the number of open batches (keys with buffered values) to `max_open_keys`.
    ///
    /// A value of a key with no open batch, when `max_open_keys` batches are open, first
    /// closes the oldest open batch (the one whose first value arrived first), which is
    /// yielded at once ([`FlushReason::Eviction`]), then opens its own. A value that closes
    /// its batch by itself (`max_items == 1`, or heavier than `max_weight`) opens nothing
    /// and evicts nothing. Without this call the number of open batches is unbounded: one
    /// per distinct key seen within a `timeout`.
    ///
    /// # Panics
    ///
    /// Panics, at the caller's location, if `max_open_keys` is zero.
    #[track_caller]
    pub fn max_open_keys(mut self, max_open_keys: usize) -> Self {
        assert!(
            max_open_keys > 0,
            "chunks_timeout_by_key_result: `max_open_keys` must be greater than zero"
        );
        self.max_open_keys = max_open_keys;
        self
    }

    /// Acquires a reference to the underlying stream.
    pub fn get_ref(&self) -> &St {
        &self.stream
    }

    /// Acquires a mutable reference to the underlying stream.
    ///
    /// Pulling items out of it directly bypasses this adapter.
    pub fn get_mut(&mut self) -> &mut St {
        &mut self.stream
    }

    /// Acquires a pinned mutable reference to the underlying stream.
    pub fn get_pin_mut(self: Pin<&mut Self>) -> Pin<&mut St> {
        self.project().stream
    }

    /// Consumes the adapter and returns the underlying stream.
    ///
    /// The adapter holds its timer inline, so it is `!Unpin`: this is only for an adapter
    /// that was never pinned. Buffered values and a held-back error are dropped; use
    /// [`take_remainder`](Self::take_remainder) on a pinned adapter to keep them.
    pub fn into_inner(self) -> St {
        self.stream
    }

    /// The number of open batches (keys with buffered values).
    pub fn open_keys(&self) -> usize {
        self.open.len()
    }

    /// The deadline of the oldest open batch: the next one the timer waits for.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.open.oldest().map(|batch| batch.deadline)
    }

    /// The open batches' keys, oldest batch first.
    pub fn open_keys_oldest_first(&self) -> impl Iterator<Item = &K> {
        self.open.nodes().map(|node| &node.key)
    }

    /// Why the most recent batch was yielded, or `None` before the first batch.
    pub fn last_flush_reason(&self) -> Option<FlushReason> {
        self.last_flush
    }

    /// Takes every key's buffered values (oldest batch first, each batch's values in
    /// arrival order) and the error held back behind them out of a pinned adapter, leaving
    /// it empty with its timer dropped.
    ///
    /// This is what makes the adapter safe to abandon, for example when it loses a
    /// `tokio::select!` race: nothing already pulled from the upstream is lost. The error, if
    /// present, came after every returned value. The adapter stays usable: the next value
    /// opens a new batch.
    #[doc(alias = "into_remainder")]
    #[allow(clippy::type_complexity)]
    pub fn take_remainder(self: Pin<&mut Self>) -> (Vec<(K, Vec<St::Ok>)>, Option<St::Error>)
    where
        K: Hash + Eq,
        I: BatchOutput<St::Ok>,
    {
        let mut this = self.project();
        this.timer.set(None);
        *this.timer_runtime = None;
        *this.expired_first = false;
        *this.due = None;
        let batches = this
            .open
            .take_all()
            .into_iter()
            .map(Batch::into_parts)
            .collect();
        (batches, this.pending_error.take())
    }
}

impl<St, K, F, W, I> ChunksTimeoutByKeyResult<St, K, F, W, I>
where
    St: TryStream,
    K: Hash + Eq + Clone,
    W: Weigh<St::Ok>,
{
    /// The values buffered for `key`, oldest first (empty when it has no open batch).
    pub fn buffered_values(&self, key: &K) -> &[St::Ok] {
        self.open.values_of(key)
    }

    /// The number of buffered values, over every key. O(number of open batches).
    pub fn buffered_len(&self) -> usize {
        self.open.iter().map(|(_, values, _)| values.len()).sum()
    }
}
