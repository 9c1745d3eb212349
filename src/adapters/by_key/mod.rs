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

use super::batch::trace::KeyFormatter;
use super::batch::{FlushReason, Limiter, MaxWeight, NoInfo, NoWeight, Timer, Upstream, Weigh};
use open::OpenBatches;

pin_project! {
    /// Stream for [`ResultStreamExt::chunks_timeout_by_key_result`](crate::ResultStreamExt::chunks_timeout_by_key_result),
    /// which states the rules. `W` and `I`: the type-state parameters of [`crate::batch`].
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
        trace_key: Option<KeyFormatter<K>>,
        output: PhantomData<fn() -> I>,
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
        f.debug_struct("ChunksTimeoutByKeyResult")
            .field("stream", self.stream.get_ref())
            .field("open", &self.state.iter().collect::<Vec<_>>())
            .field("pending_error", &self.pending_error)
            .field("limits", &self.state.limiter)
            .field("max_open_keys", &self.state.max_open_keys)
            .field("timeout", &self.state.timeout)
            .finish_non_exhaustive()
    }
}

impl<St: TryStream, K: Hash + Eq, F> ChunksTimeoutByKeyResult<St, K, F> {
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
            state: OpenBatches::new(Limiter::new(max_items, NoWeight), timeout, usize::MAX),
            pending_error: None,
            trace_key: None,
            output: PhantomData,
        }
    }
}

impl<St: TryStream, K: Hash + Eq, F, I> ChunksTimeoutByKeyResult<St, K, F, NoWeight, I> {
    /// Adds a weight cap per key: "Weight cap" in [`chunks_timeout_by_key_result`](crate::ResultStreamExt::chunks_timeout_by_key_result).
    #[track_caller]
    pub fn max_weight<G: FnMut(&St::Ok) -> usize>(
        self,
        max_weight: usize,
        weigh: G,
    ) -> ChunksTimeoutByKeyResult<St, K, F, MaxWeight<G>, I> {
        let weigher = MaxWeight::new("chunks_timeout_by_key_result", max_weight, weigh);
        self.retyped(|state| state.with_weigher(weigher))
    }

    /// [`max_weight`](Self::max_weight) for a cap known only at run time (`None`: no cap).
    #[track_caller]
    pub fn max_weight_opt<G: FnMut(&St::Ok) -> usize>(
        self,
        max_weight: Option<usize>,
        weigh: G,
    ) -> ChunksTimeoutByKeyResult<St, K, F, Option<MaxWeight<G>>, I> {
        let weigher = MaxWeight::new_opt("chunks_timeout_by_key_result", max_weight, weigh);
        self.retyped(|state| state.with_weigher(weigher))
    }
}

impl<St: TryStream, K: Hash + Eq, F, W: Weigh<St::Ok>> ChunksTimeoutByKeyResult<St, K, F, W> {
    /// Yields `Ok((key, (batch, info)))`, with a [`BatchInfo`](crate::BatchInfo) per batch.
    pub fn with_batch_info(self) -> ChunksTimeoutByKeyResult<St, K, F, W, crate::batch::WithInfo> {
        self.retyped(|state| state)
    }
}

impl<St: TryStream, K: Hash + Eq, F, W: Weigh<St::Ok>, I> ChunksTimeoutByKeyResult<St, K, F, W, I> {
    delegate_access_inner!(stream, St, (.));

    fn retyped<V: Weigh<St::Ok>, J>(
        self,
        state: impl FnOnce(OpenBatches<K, St::Ok, W>) -> OpenBatches<K, St::Ok, V>,
    ) -> ChunksTimeoutByKeyResult<St, K, F, V, J> {
        ChunksTimeoutByKeyResult {
            stream: self.stream,
            timer: self.timer,
            key: self.key,
            state: state(self.state),
            pending_error: self.pending_error,
            trace_key: self.trace_key,
            output: PhantomData,
        }
    }

    /// Bounds the open batches to `max_open_keys`: "Eviction" in [`chunks_timeout_by_key_result`](crate::ResultStreamExt::chunks_timeout_by_key_result).
    #[track_caller]
    pub fn max_open_keys(mut self, max_open_keys: usize) -> Self {
        assert!(
            max_open_keys > 0,
            "chunks_timeout_by_key_result: `max_open_keys` must be greater than zero"
        );
        self.state.max_open_keys = max_open_keys;
        self
    }

    /// Gives each batch's `tracing` event a `key` field, written by `show`.
    pub fn trace_key_with(mut self, show: fn(&K, &mut fmt::Formatter<'_>) -> fmt::Result) -> Self {
        self.trace_key = Some(show);
        self
    }

    /// The number of open batches (keys with buffered values).
    pub fn open_keys(&self) -> usize {
        self.state.open
    }

    /// The deadline of the oldest open batch: the next one the timer waits for.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.state.queue.front().map(|batch| batch.deadline)
    }

    /// The open batches' keys, oldest batch first.
    pub fn open_keys_oldest_first(&self) -> impl Iterator<Item = &K> {
        self.state.iter().map(|(key, _)| key)
    }

    /// Why the most recent batch was yielded, or `None` before the first batch.
    pub fn last_flush_reason(&self) -> Option<FlushReason> {
        self.state.last_flush
    }

    /// The values buffered for `key`, oldest first (empty when it has no open batch).
    pub fn buffered_values(&self, key: &K) -> &[St::Ok] {
        self.state.index.get(key).map_or(&[], |entry| &entry.items)
    }

    /// The number of buffered values, over every key.
    pub fn buffered_len(&self) -> usize {
        self.state.index.values().map(|e| e.items.len()).sum()
    }

    /// Takes every key's buffered values (oldest batch first) and the held-back error out.
    #[doc(alias = "into_remainder")]
    #[allow(clippy::type_complexity)]
    pub fn take_remainder(self: Pin<&mut Self>) -> (Vec<(K, Vec<St::Ok>)>, Option<St::Error>) {
        let this = self.project();
        this.timer.clear();
        (this.state.take_all(), this.pending_error.take())
    }
}
