//! `chunks_timeout_by_key_result`: one open batch per key, each with its own deadline.

mod open;
mod poll;

use core::fmt;
use core::hash::Hash;
use core::marker::PhantomData;
use core::pin::Pin;
use std::time::Duration;

use futures_core::stream::TryStream;
use pin_project_lite::pin_project;
use tokio::time::Instant;

#[cfg(doc)]
use super::batch::WithInfo;
use super::batch::{
    BatchOutput, FlushReason, Limiter, MaxWeight, NoInfo, NoWeight, Timer, Upstream, Weigh,
};
use open::OpenBatches;

pin_project! {
    /// Stream for [`ResultStreamExt::chunks_timeout_by_key_result`](crate::ResultStreamExt::chunks_timeout_by_key_result):
    /// the method states the rules. [`max_open_keys`](Self::max_open_keys) bounds the open
    /// batches, [`max_weight`](Self::max_weight) adds a weight cap per batch and
    /// [`with_batch_info`](Self::with_batch_info) tags each batch (`W` and `I` are the
    /// type-state parameters of [`crate::batch`] that they set, as on
    /// [`ChunksTimeoutResult`](crate::ChunksTimeoutResult); with [`WithInfo`] the item is
    /// `(K, (Vec<T>, BatchInfo))`).
    ///
    /// # Cancellation safety
    ///
    /// Dropping the adapter drops its buffered values;
    /// [`take_remainder`](Self::take_remainder) takes them out of a pinned adapter first.
    #[must_use = "streams do nothing unless polled"]
    #[project = Proj]
    pub struct ChunksTimeoutByKeyResult<St: TryStream, K, F, W: Weigh<St::Ok> = NoWeight, I = NoInfo> {
        #[pin]
        stream: Upstream<St>,
        #[pin]
        timer: Timer,
        key: F,
        state: OpenBatches<K, St::Ok, W>,
        pending_error: Option<St::Error>,
        output: PhantomData<fn() -> I>,
        timeout: Duration,
    }
}

impl<St, K, F, W, I> fmt::Debug for ChunksTimeoutByKeyResult<St, K, F, W, I>
where
    St: TryStream + fmt::Debug,
    St::Ok: fmt::Debug,
    St::Error: fmt::Debug,
    K: fmt::Debug + Hash + Eq + Clone,
    W: Weigh<St::Ok> + fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunksTimeoutByKeyResult")
            .field("stream", self.stream.get_ref())
            .field("open", &self.state.iter().collect::<Vec<_>>())
            .field("pending_error", &self.pending_error)
            .field("limits", &self.state.limiter)
            .field("max_open_keys", &self.state.max_open_keys)
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
            stream: Upstream::new(stream),
            timer: Timer::new(),
            key,
            state: OpenBatches::new(Limiter::new(max_items, NoWeight), usize::MAX),
            pending_error: None,
            output: PhantomData,
            timeout,
        }
    }
}

impl<St: TryStream, K, F, I> ChunksTimeoutByKeyResult<St, K, F, NoWeight, I> {
    /// Adds a weight cap per key: each value is weighed once by `weigh`, and each key's
    /// batch holds at most `max_weight` in total.
    ///
    /// The rules of [`ChunksTimeoutResult::max_weight`](crate::ChunksTimeoutResult::max_weight),
    /// per key:
    /// - a value that would push its key's batch past `max_weight` (or overflow `usize`)
    ///   closes that batch ([`FlushReason::Weight`]) and starts the key's next one, with a
    ///   deadline of its own;
    /// - a batch that reaches `max_weight` is yielded at once;
    /// - a value heavier than `max_weight` is yielded alone, at once, and evicts nothing;
    /// - other keys' batches are not affected.
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
        self.weighed(MaxWeight::new(
            "chunks_timeout_by_key_result",
            max_weight,
            weigh,
        ))
    }

    /// [`max_weight`](Self::max_weight) for a cap known only at run time: `Some(max_weight)`
    /// applies its rules, `None` weighs nothing (`weigh` is never called) and caps nothing;
    /// both give the same type, so one chain serves both.
    ///
    /// # Panics
    ///
    /// Panics, at the caller's location, if `max_weight` is `Some(0)`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use futures::{StreamExt, stream};
    /// use result_stream::ResultStreamExt;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let cap_from_flags: Option<usize> = None;
    /// let rows = stream::iter([("a", 4), ("a", 9)].map(Ok::<_, ()>));
    /// let batches: Vec<_> = rows
    ///     .chunks_timeout_by_key_result(|row| row.0, 100, Duration::from_secs(1))
    ///     .max_weight_opt(cap_from_flags, |row| row.1)
    ///     .collect()
    ///     .await;
    /// assert_eq!(batches, vec![Ok(("a", vec![("a", 4), ("a", 9)]))]);
    /// # }
    /// ```
    #[track_caller]
    pub fn max_weight_opt<G>(
        self,
        max_weight: Option<usize>,
        weigh: G,
    ) -> ChunksTimeoutByKeyResult<St, K, F, Option<MaxWeight<G>>, I>
    where
        G: FnMut(&St::Ok) -> usize,
    {
        // A `match`, not `Option::map`: `#[track_caller]` does not reach into a closure.
        #[allow(clippy::manual_map)]
        let weigher = match max_weight {
            Some(max) => Some(MaxWeight::new("chunks_timeout_by_key_result", max, weigh)),
            None => None,
        };
        self.weighed(weigher)
    }

    fn weighed<V: Weigh<St::Ok>>(self, weigher: V) -> ChunksTimeoutByKeyResult<St, K, F, V, I> {
        let limiter = self.state.limiter.with_weigher(weigher);
        ChunksTimeoutByKeyResult {
            stream: self.stream,
            timer: self.timer,
            key: self.key,
            state: self.state.with_limiter(limiter),
            pending_error: self.pending_error,
            output: PhantomData,
            timeout: self.timeout,
        }
    }
}

impl<St: TryStream, K, F, W: Weigh<St::Ok>> ChunksTimeoutByKeyResult<St, K, F, W, NoInfo> {
    /// Yields each batch with a [`BatchInfo`](crate::BatchInfo): `Ok((key, (batch, info)))`.
    ///
    /// - `info.reason()`: why the batch closed ([`FlushReason`], including
    ///   [`Eviction`](FlushReason::Eviction) for a batch closed by
    ///   [`max_open_keys`](Self::max_open_keys));
    /// - `info.weight()`: its total weight, `None` without a weight cap;
    /// - `info.age()`: from its first value's arrival (the poll that took it) to its
    ///   closing; the clock is read once more per batch for it, and only in this mode;
    /// - errors pass through as before.
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
    pub fn with_batch_info(self) -> ChunksTimeoutByKeyResult<St, K, F, W, crate::batch::WithInfo> {
        ChunksTimeoutByKeyResult {
            stream: self.stream,
            timer: self.timer,
            key: self.key,
            state: self.state,
            pending_error: self.pending_error,
            output: PhantomData,
            timeout: self.timeout,
        }
    }
}

impl<St: TryStream, K, F, W: Weigh<St::Ok>, I> ChunksTimeoutByKeyResult<St, K, F, W, I> {
    delegate_access_inner!(stream, St, (.));

    /// Bounds the number of open batches (keys with buffered values) to `max_open_keys`.
    ///
    /// - a value of a key with no open batch, when `max_open_keys` batches are open, first
    ///   closes the oldest open batch, which is yielded at once
    ///   ([`FlushReason::Eviction`]), then opens its own;
    /// - a value that closes its batch by itself (`max_items == 1`, or heavier than
    ///   `max_weight`) opens nothing and evicts nothing;
    /// - without this call the number of open batches is unbounded: one per distinct key
    ///   seen within a `timeout`.
    ///
    /// # Panics
    ///
    /// Panics, at the caller's location, if `max_open_keys` is zero.
    ///
    /// ```
    /// use std::time::Duration;
    /// use futures::{StreamExt, stream};
    /// use result_stream::ResultStreamExt;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let values = stream::iter([1, 2, 1, 3].map(Ok::<u32, ()>));
    /// let batches: Vec<_> = values
    ///     .chunks_timeout_by_key_result(|&v| v, 10, Duration::from_secs(1))
    ///     .max_open_keys(2)
    ///     .collect()
    ///     .await;
    /// // 3 evicts 1 (the oldest), then the end flushes 2 and 3.
    /// assert_eq!(batches, vec![Ok((1, vec![1, 1])), Ok((2, vec![2])), Ok((3, vec![3]))]);
    /// # }
    /// ```
    #[track_caller]
    pub fn max_open_keys(mut self, max_open_keys: usize) -> Self {
        assert!(
            max_open_keys > 0,
            "chunks_timeout_by_key_result: `max_open_keys` must be greater than zero"
        );
        self.state.max_open_keys = max_open_keys;
        self
    }

    /// The number of open batches (keys with buffered values).
    pub fn open_keys(&self) -> usize {
        self.state.len()
    }

    /// The deadline of the oldest open batch: the next one the timer waits for.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.state.oldest().map(|batch| batch.deadline)
    }

    /// The open batches' keys, oldest batch first.
    pub fn open_keys_oldest_first(&self) -> impl Iterator<Item = &K> {
        self.state.nodes().map(|node| &node.key)
    }

    /// Why the most recent batch was yielded, or `None` before the first batch.
    pub fn last_flush_reason(&self) -> Option<FlushReason> {
        self.state.last_flush
    }
}

impl<St, K, F, W, I> ChunksTimeoutByKeyResult<St, K, F, W, I>
where
    St: TryStream,
    K: Hash + Eq + Clone,
    W: Weigh<St::Ok>,
    I: BatchOutput<St::Ok>,
{
    /// The values buffered for `key`, oldest first (empty when it has no open batch).
    pub fn buffered_values(&self, key: &K) -> &[St::Ok] {
        self.state.values_of(key)
    }

    /// The number of buffered values, over every key. O(number of open batches).
    pub fn buffered_len(&self) -> usize {
        self.state.iter().map(|(_, values)| values.len()).sum()
    }

    /// Takes every key's buffered values (oldest batch first, each batch's values in
    /// arrival order) and the error held back behind them out of a pinned adapter, leaving
    /// it empty with its timer dropped: nothing already pulled from the upstream is lost
    /// when the adapter is abandoned (say, in a lost `tokio::select!` race). The error, if
    /// present, came after every returned value. The next value opens a new batch.
    #[doc(alias = "into_remainder")]
    #[allow(clippy::type_complexity)]
    pub fn take_remainder(self: Pin<&mut Self>) -> (Vec<(K, Vec<St::Ok>)>, Option<St::Error>) {
        let this = self.project();
        this.timer.clear();
        (this.state.take_all(), this.pending_error.take())
    }
}
