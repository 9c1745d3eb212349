//! `chunks_timeout_by_key_result`: one open batch per key, each with its own deadline.

mod open;

use core::fmt;
use core::future::Future;
use core::hash::Hash;
use core::pin::Pin;
use core::task::{Context, Poll};
use std::time::Duration;

use futures_core::stream::{FusedStream, Stream, TryStream};
use pin_project_lite::pin_project;
use tokio::runtime::{Handle, Id};
use tokio::time::{Instant, Sleep};

use open::{Batch, OpenBatches};

/// The most values a batch's buffer reserves up front (see [`ChunksTimeoutByKeyResult`]).
const PREALLOCATE_MAX: usize = 4_096;

/// Stands in for a deadline that overflows `Instant`: about thirty years.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// Why a batch closed (kept for `Debug`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Full,
    Deadline,
    Error,
    End,
    Eviction,
}

pin_project! {
    /// Stream for [`ResultStreamExt::chunks_timeout_by_key_result`](crate::ResultStreamExt::chunks_timeout_by_key_result).
    ///
    /// Keeps one open batch per key and yields each as `Ok((key, batch))` when it is full,
    /// when its own deadline passes, when it is evicted by [`max_open_keys`](Self::max_open_keys),
    /// before an `Err`, or at the end. The method's documentation states every rule.
    ///
    /// # Implementation
    ///
    /// Every batch gets the same `timeout` from a monotonic clock read when it opens, so
    /// the order in which batches open is the order of their deadlines. The open batches
    /// are kept in one linked list in that order (in a slab, indexed by a `HashMap<K, slot>`):
    /// its head is at once the next deadline, the batch to evict and the next to flush at an
    /// error or the end, and a batch that fills early is unlinked in O(1). One
    /// `tokio::time::Sleep`, stored inline, is armed at the head's deadline while the
    /// upstream is pending; there is no timer per key and no task.
    ///
    /// # Cost
    ///
    /// Per value: the key function, one key comparison when the value has the same key as the
    /// previous one (otherwise one hash lookup), and a push. Per batch: one allocation of
    /// `min(max_items, 4_096)` values (larger batches grow as a `Vec` does), one clone of the
    /// key (the index and the batch both hold one), and one read of the clock for all the
    /// batches opened in the same poll. The timer is touched only when the upstream returns
    /// `Pending` with a batch open.
    ///
    /// # Cancellation safety
    ///
    /// Dropping the adapter drops its buffered values;
    /// [`take_remainder`](Self::take_remainder) takes them out of a pinned adapter first.
    #[must_use = "streams do nothing unless polled"]
    #[project = Projection]
    pub struct ChunksTimeoutByKeyResult<St: TryStream, K, F> {
        #[pin]
        stream: St,
        key: F,
        open: OpenBatches<K, St::Ok>,
        pending_error: Option<St::Error>,
        // The one timer, armed at the oldest open batch's deadline, and the runtime it
        // belongs to (a timer of a runtime that was dropped may not be polled).
        #[pin]
        timer: Option<Sleep>,
        timer_runtime: Option<Id>,
        // Set when a full batch was yielded: the next poll yields expired batches before
        // taking more values, so that a flooding key cannot hold back another's deadline.
        expired_first: bool,
        upstream_done: bool,
        last_reason: Option<Reason>,
        max_items: usize,
        max_open_keys: usize,
        timeout: Duration,
    }
}

impl<St, K, F> fmt::Debug for ChunksTimeoutByKeyResult<St, K, F>
where
    St: TryStream + fmt::Debug,
    St::Ok: fmt::Debug,
    St::Error: fmt::Debug,
    K: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Open<'a, K, T>(&'a OpenBatches<K, T>);
        impl<K: fmt::Debug, T: fmt::Debug> fmt::Debug for Open<'_, K, T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_list()
                    .entries(self.0.iter().map(|b| (&b.key, &b.items, b.deadline)))
                    .finish()
            }
        }
        f.debug_struct("ChunksTimeoutByKeyResult")
            .field("stream", &self.stream)
            .field("open", &Open(&self.open))
            .field("pending_error", &self.pending_error)
            .field("upstream_done", &self.upstream_done)
            .field("last_reason", &self.last_reason)
            .field("max_items", &self.max_items)
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
            pending_error: None,
            timer: None,
            timer_runtime: None,
            expired_first: false,
            upstream_done: false,
            last_reason: None,
            max_items,
            max_open_keys: usize::MAX,
            timeout,
        }
    }

    /// Bounds the number of open batches (keys with buffered values) to `max_open_keys`.
    ///
    /// A value of a key with no open batch, when `max_open_keys` batches are open, first
    /// closes the oldest open batch (the one whose first value arrived first), which is
    /// yielded at once, then opens its own. A value that closes its batch by itself (with
    /// `max_items == 1`) opens nothing and evicts nothing. Without this call the number of
    /// open batches is unbounded: one per distinct key seen within a `timeout`.
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
}

impl<St: TryStream, K, F> ChunksTimeoutByKeyResult<St, K, F> {
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

    /// The number of buffered values, over every key.
    ///
    /// O(number of open batches).
    pub fn buffered_len(&self) -> usize {
        self.open.iter().map(|batch| batch.items.len()).sum()
    }

    /// The deadline of the oldest open batch: the next one the timer waits for.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.open.oldest().map(|batch| batch.deadline)
    }

    /// The open batches' keys, oldest batch first.
    pub fn open_keys_oldest_first(&self) -> impl Iterator<Item = &K> {
        self.open.iter().map(|batch| &batch.key)
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
    {
        let mut this = self.project();
        this.timer.set(None);
        *this.timer_runtime = None;
        *this.expired_first = false;
        let batches = this
            .open
            .take_all()
            .into_iter()
            .map(Batch::into_parts)
            .collect();
        (batches, this.pending_error.take())
    }
}

impl<St, K, F> ChunksTimeoutByKeyResult<St, K, F>
where
    St: TryStream,
    K: Hash + Eq + Clone,
{
    /// The values buffered for `key`, oldest first (empty when it has no open batch).
    pub fn buffered_values(&self, key: &K) -> &[St::Ok] {
        self.open.values_of(key)
    }
}

type Item<St, K> = Result<(K, Vec<<St as TryStream>::Ok>), <St as TryStream>::Error>;

impl<St, K, F> Stream for ChunksTimeoutByKeyResult<St, K, F>
where
    St: TryStream,
    F: FnMut(&St::Ok) -> K,
    K: Hash + Eq + Clone,
{
    type Item = Item<St, K>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();

        // An error is held back behind the batches that were open when it arrived.
        if this.pending_error.is_some() {
            if let Some(batch) = this.open.close_oldest() {
                return this.yield_batch(batch, Reason::Error);
            }
            return Poll::Ready(this.pending_error.take().map(Err));
        }
        if *this.upstream_done {
            return match this.open.close_oldest() {
                Some(batch) => this.yield_batch(batch, Reason::End),
                None => Poll::Ready(None),
            };
        }

        // Right after a full batch: expired deadlines before more data (see `expired_first`).
        if *this.expired_first {
            if let Some(oldest) = this.open.oldest() {
                if oldest.deadline <= Instant::now() {
                    let batch = this.open.close_oldest().expect("an oldest batch");
                    return this.yield_batch(batch, Reason::Deadline);
                }
            }
            *this.expired_first = false;
        }

        // Data first: what the upstream has ready joins its batches.
        let mut now = None;
        loop {
            match this.stream.as_mut().try_poll_next(cx) {
                Poll::Ready(Some(Ok(value))) => {
                    let key = (this.key)(&value);
                    if let Some(slot) = this.open.find(&key) {
                        let batch = this.open.get_mut(slot);
                        batch.items.push(value);
                        if batch.items.len() >= *this.max_items {
                            *this.expired_first = true;
                            let batch = this.open.close(slot);
                            return this.yield_batch(batch, Reason::Full);
                        }
                        continue;
                    }
                    if *this.max_items == 1 {
                        // Closed by its first value: opens nothing, evicts nothing.
                        *this.expired_first = true;
                        *this.last_reason = Some(Reason::Full);
                        return Poll::Ready(Some(Ok((key, vec![value]))));
                    }
                    let evicted = if this.open.len() >= *this.max_open_keys {
                        this.open.close_oldest()
                    } else {
                        None
                    };
                    let opened = *now.get_or_insert_with(Instant::now);
                    // A timeout past the clock's range means "never", as in `tokio::time::sleep`.
                    let deadline = opened
                        .checked_add(*this.timeout)
                        .unwrap_or_else(|| opened + FAR_FUTURE);
                    let mut items = Vec::with_capacity((*this.max_items).min(PREALLOCATE_MAX));
                    items.push(value);
                    this.open.open(key, items, deadline);
                    if let Some(batch) = evicted {
                        return this.yield_batch(batch, Reason::Eviction);
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    return match this.open.close_oldest() {
                        Some(batch) => {
                            *this.pending_error = Some(error);
                            this.yield_batch(batch, Reason::Error)
                        }
                        None => Poll::Ready(Some(Err(error))),
                    };
                }
                Poll::Ready(None) => {
                    *this.upstream_done = true;
                    return match this.open.close_oldest() {
                        Some(batch) => this.yield_batch(batch, Reason::End),
                        None => {
                            this.timer.set(None);
                            *this.timer_runtime = None;
                            Poll::Ready(None)
                        }
                    };
                }
                Poll::Pending => break,
            }
        }

        // The upstream is pending: the oldest batch's deadline is the next event.
        let Some(deadline) = this.open.oldest().map(|batch| batch.deadline) else {
            // Nothing is open: drop the timer, so that no stale deadline wakes the task.
            this.timer.set(None);
            *this.timer_runtime = None;
            return Poll::Pending;
        };
        if this.timeout.is_zero() {
            let batch = this.open.close_oldest().expect("an oldest batch");
            return this.yield_batch(batch, Reason::Deadline);
        }
        // A timer is only reused on the runtime that made it: one whose runtime was dropped
        // would panic when polled.
        let runtime = Handle::current().id();
        match this.timer.as_mut().as_pin_mut() {
            Some(timer) if *this.timer_runtime == Some(runtime) => {
                if timer.deadline() != deadline {
                    timer.reset(deadline);
                }
            }
            _ => {
                this.timer.set(Some(tokio::time::sleep_until(deadline)));
                *this.timer_runtime = Some(runtime);
            }
        }
        let timer = this.timer.as_mut().as_pin_mut().expect("an armed timer");
        match timer.poll(cx) {
            Poll::Ready(()) => {
                let batch = this.open.close_oldest().expect("an oldest batch");
                this.yield_batch(batch, Reason::Deadline)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let open = self.open.len();
        if self.upstream_done {
            return (open, Some(open));
        }
        let held = usize::from(self.pending_error.is_some());
        let (lower, upper) = self.stream.size_hint();
        let lower = if held == 1 {
            // The open batches, the error, then the upcoming values packed tightly.
            open + 1 + lower.div_ceil(self.max_items)
        } else {
            // Every open batch is yielded, and every value in a batch of at most `max_items`.
            open.max(
                self.buffered_len()
                    .saturating_add(lower)
                    .div_ceil(self.max_items),
            )
        };
        // Each batch yielded holds at least one value, and each upstream item yields at most
        // one batch or error of its own besides the open batches.
        let upper = upper.and_then(|upper| upper.checked_add(open)?.checked_add(held));
        (lower, upper)
    }
}

impl<St, K, F> FusedStream for ChunksTimeoutByKeyResult<St, K, F>
where
    St: TryStream,
    F: FnMut(&St::Ok) -> K,
    K: Hash + Eq + Clone,
{
    fn is_terminated(&self) -> bool {
        self.upstream_done && self.open.is_empty() && self.pending_error.is_none()
    }
}

impl<St, K, F> Projection<'_, St, K, F>
where
    St: TryStream,
    K: Hash + Eq + Clone,
{
    /// Yields a closed batch, first moving the timer off its deadline if it was the oldest:
    /// to the next oldest batch's (later, so tokio only extends the timer and nothing wakes
    /// at the old deadline), or dropping it when no batch is left.
    fn yield_batch(
        &mut self,
        batch: Batch<K, St::Ok>,
        reason: Reason,
    ) -> Poll<Option<Item<St, K>>> {
        *self.last_reason = Some(reason);
        if let Some(timer) = self.timer.as_mut().as_pin_mut() {
            match self.open.oldest().map(|oldest| oldest.deadline) {
                Some(next) if next == timer.deadline() => {}
                Some(next) if Handle::try_current().map(|h| h.id()).ok() == *self.timer_runtime => {
                    timer.reset(next);
                }
                _ => {
                    self.timer.set(None);
                    *self.timer_runtime = None;
                }
            }
        }
        Poll::Ready(Some(Ok(batch.into_parts())))
    }
}
