use core::fmt;
use core::mem;
use core::pin::Pin;
use core::task::{Context, Poll};
use std::time::Duration;

use futures_core::stream::{FusedStream, Stream, TryStream};
use futures_util::stream::{Fuse, IntoStream, StreamExt, TryStreamExt};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::batch::info::sealed::Output;
use super::batch::{
    BUDGET, BatchOutput, FlushReason, Limiter, NoInfo, NoWeight, Timer, Weigh, deadline_after,
};

mod builders;

pin_project! {
    /// Stream for [`ResultStreamExt::chunks_timeout_result`](crate::ResultStreamExt::chunks_timeout_result):
    /// the method states the rules. [`max_weight`](Self::max_weight) adds a weight cap and
    /// [`with_batch_info`](Self::with_batch_info) tags each batch; `W` and `I` are the
    /// type-state parameters of [`crate::batch`] that they set.
    ///
    /// # Cancellation safety
    ///
    /// Dropping the adapter drops its buffered values; [`take_remainder`](Self::take_remainder)
    /// takes them out of a pinned adapter first.
    #[must_use = "streams do nothing unless polled"]
    #[project = Proj]
    pub struct ChunksTimeoutResult<St: TryStream, W: Weigh<St::Ok> = NoWeight, I = NoInfo> {
        #[pin]
        stream: Fuse<IntoStream<St>>,
        #[pin]
        timer: Timer,
        state: State<St::Ok, W, I>,
        pending_error: Option<St::Error>,
        timeout: Duration,
    }
}

/// The open batch and the rules that close it.
#[derive(Debug)]
struct State<T, W: Weigh<T>, I> {
    limiter: Limiter<W>,
    items: Vec<T>,
    total: W::Weight,
    output: I,
    // The last batch closed full: the next one reserves its full size.
    filled: bool,
    // When the open batch's first value arrived, if that was in a poll that returned `Ready`
    // (a value that closed the previous batch by weight): its deadline runs from then.
    started: Option<Instant>,
    // When the open batch's first value arrived, timed for a `tracing` event.
    #[cfg(feature = "tracing")]
    opened: Option<Instant>,
    last_flush: Option<FlushReason>,
}

impl<T, W: Weigh<T>, I: BatchOutput<T>> State<T, W, I> {
    /// The same batch with other limits or output: `f` maps the limiter, total and output.
    fn rebuild<V: Weigh<T>, J>(
        self,
        f: impl FnOnce(Limiter<W>, W::Weight, I) -> (Limiter<V>, V::Weight, J),
    ) -> State<T, V, J> {
        let (limiter, total, output) = f(self.limiter, self.total, self.output);
        State {
            limiter,
            items: self.items,
            total,
            output,
            filled: self.filled,
            started: self.started,
            #[cfg(feature = "tracing")]
            opened: self.opened,
            last_flush: self.last_flush,
        }
    }

    /// Pushes a value that fits, and returns the batch's length.
    #[inline(always)]
    fn push(&mut self, value: T) -> usize {
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
            self.items = self.limiter.new_batch(self.filled);
        }
        self.items.reserve(1);
    }

    #[inline(always)]
    fn begin(&mut self) {
        self.output.arrives(0);
        #[cfg(feature = "tracing")]
        if super::batch::trace::enabled() {
            self.opened = Some(Instant::now());
        }
    }

    /// Closes the open batch.
    #[inline]
    fn close(&mut self, reason: FlushReason) -> I::Batch {
        self.started = None;
        self.last_flush = Some(reason);
        self.filled = matches!(reason, FlushReason::Full | FlushReason::Weight);
        let weight = self.limiter.report(mem::take(&mut self.total));
        let items = mem::take(&mut self.items);
        #[cfg(feature = "tracing")]
        super::batch::trace::flushed::<()>(reason, items.len(), weight, self.opened.take(), None);
        self.output.finish(items, reason, weight)
    }
}

impl<St: TryStream, W: Weigh<St::Ok>, I: BatchOutput<St::Ok>> fmt::Debug
    for ChunksTimeoutResult<St, W, I>
where
    St: fmt::Debug,
    St::Ok: fmt::Debug,
    St::Error: fmt::Debug,
    W: fmt::Debug,
    I: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunksTimeoutResult")
            .field("stream", self.get_ref())
            .field("items", &self.state.items)
            .field("total", &self.state.total)
            .field("pending_error", &self.pending_error)
            .field("deadline", &self.armed_deadline())
            .field("max_items", &self.state.limiter.max_items())
            .field("weight", self.state.limiter.weigher())
            .field("output", &self.state.output)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<St: TryStream> ChunksTimeoutResult<St> {
    #[track_caller]
    pub(crate) fn new(stream: St, max_items: usize, timeout: Duration) -> Self {
        assert!(
            max_items > 0,
            "chunks_timeout_result: `max_items` must be greater than zero"
        );
        let state = State {
            limiter: Limiter::new(max_items, NoWeight),
            items: Vec::new(),
            total: (),
            output: NoInfo,
            // A batcher holds one open batch: the first one reserves its full size.
            filled: true,
            started: None,
            #[cfg(feature = "tracing")]
            opened: None,
            last_flush: None,
        };
        let stream = stream.into_stream().fuse();
        Self {
            stream,
            timer: Timer::new(),
            state,
            pending_error: None,
            timeout,
        }
    }
}

impl<St: TryStream, W: Weigh<St::Ok>, I: BatchOutput<St::Ok>> ChunksTimeoutResult<St, W, I> {
    delegate_access_inner!(stream, St, (. .));

    /// Consumes an adapter that was never pinned and returns the underlying stream, the
    /// buffered values (oldest first) and the error held back behind an already-yielded
    /// partial batch, if any. A pinned adapter gives them back through
    /// [`take_remainder`](Self::take_remainder).
    pub fn into_parts(self) -> (St, Vec<St::Ok>, Option<St::Error>) {
        (
            self.stream.into_inner().into_inner(),
            self.state.items,
            self.pending_error,
        )
    }

    /// The values buffered for the next batch, oldest first.
    pub fn buffered_values(&self) -> &[St::Ok] {
        &self.state.items
    }

    /// Takes the buffered values (oldest first) and the held-back error out of a pinned
    /// adapter, leaving it empty with its timer dropped: nothing already pulled from the
    /// upstream is lost when the adapter is abandoned (say, in a lost `tokio::select!`
    /// race). The error, if present, came after every returned value. The adapter stays
    /// usable: the next value starts a new batch.
    #[doc(alias = "into_remainder")]
    pub fn take_remainder(self: Pin<&mut Self>) -> (Vec<St::Ok>, Option<St::Error>) {
        let this = self.project();
        this.timer.clear();
        let state = this.state;
        state.started = None;
        state.total = Default::default();
        state.output.clear();
        #[cfg(feature = "tracing")]
        {
            state.opened = None;
        }
        (mem::take(&mut state.items), this.pending_error.take())
    }

    /// The deadline of the batch being buffered, if its timer is armed (which happens when
    /// the upstream first returns `Pending` with values buffered).
    pub fn armed_deadline(&self) -> Option<Instant> {
        self.timer.deadline()
    }

    /// Why the most recent batch was yielded, or `None` before the first batch. Read it
    /// right after a batch to tag that batch, or use [`with_batch_info`](Self::with_batch_info).
    pub fn last_flush_reason(&self) -> Option<FlushReason> {
        self.state.last_flush
    }
}

type Polled<St, I> =
    Poll<Option<Result<<I as Output<<St as TryStream>::Ok>>::Batch, <St as TryStream>::Error>>>;

impl<St: TryStream, W: Weigh<St::Ok>, I: BatchOutput<St::Ok>> Proj<'_, St, W, I> {
    /// Yields the open batch and drops its timer.
    #[inline]
    fn flush(&mut self, reason: FlushReason) -> Polled<St, I> {
        self.timer.as_mut().clear();
        Poll::Ready(Some(Ok(self.state.close(reason))))
    }

    /// Takes a value that would bring the batch to `max_weight` or past it: the batch closes
    /// first and the value starts the next one, or the value joins and closes it (an exact
    /// fill, or a lone value heavier than `max_weight`).
    #[cold]
    #[inline(never)]
    fn take_heavy(&mut self, value: St::Ok, weight: W::Weight) -> Polled<St, I> {
        let state = &mut *self.state;
        if state.limiter.splits(state.items.len(), state.total, weight) {
            let batch = self.flush(FlushReason::Weight);
            // The value arrived in this poll, which returns `Ready`: its batch's deadline
            // runs from now, however long the consumer takes to poll again.
            self.state.started = Some(Instant::now());
            self.state.push(value);
            self.state.total = W::add(Default::default(), weight);
            return batch;
        }
        state.push(value);
        state.total = W::add(state.total, weight);
        let reason = state.limiter.closes(state.items.len(), state.total);
        self.flush(reason.expect("a value that does not stay below max_weight closes its batch"))
    }
}

impl<St: TryStream, W: Weigh<St::Ok>, I: BatchOutput<St::Ok>> Stream
    for ChunksTimeoutResult<St, W, I>
{
    type Item = Result<I::Batch, St::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        if let Some(error) = this.pending_error.take() {
            return Poll::Ready(Some(Err(error)));
        }
        let state = &mut *this.state;
        // A value carried over by a weight split closes its own batch if it is heavier than
        // `max_weight`. A constant `false` without a weight cap.
        if W::SPLITS && !state.items.is_empty() {
            if let Some(reason) = state.limiter.closes(state.items.len(), state.total) {
                return this.flush(reason);
            }
        }
        // Data first. Per value: a poll, a capacity check, a push and one length check (the
        // weight rules keep the room left below `max_weight` in a local); nothing touches the
        // timer or the clock. `stop` is `max_items`, or less when the budget ends first.
        let max_items = state.limiter.max_items();
        let stop = state.items.len().saturating_add(BUDGET).min(max_items);
        let mut room = state.limiter.room(state.total);
        let ended = loop {
            match this.stream.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(value))) => {
                    let weight = this.state.limiter.weigh(&value);
                    let Some(left) = Limiter::<W>::take_room(room, weight) else {
                        this.state.total = this.state.limiter.total_from_room(room);
                        return this.take_heavy(value, weight);
                    };
                    room = left;
                    if this.state.push(value) >= stop {
                        break false;
                    }
                }
                Poll::Ready(Some(Err(error))) if this.state.items.is_empty() => {
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Ready(Some(Err(error))) => {
                    this.state.total = this.state.limiter.total_from_room(room);
                    *this.pending_error = Some(error);
                    return this.flush(FlushReason::Error);
                }
                Poll::Ready(None) => break true,
                Poll::Pending => break false,
            }
        };
        this.state.total = this.state.limiter.total_from_room(room);
        let len = this.state.items.len();
        if len >= max_items {
            return this.flush(FlushReason::Full);
        }
        if len == 0 {
            return if ended {
                Poll::Ready(None)
            } else {
                Poll::Pending
            };
        }
        if ended {
            return this.flush(FlushReason::End);
        }
        // Nothing ready (or the budget spent) with values buffered: the deadline is
        // `timeout` after the end of the poll in which the batch's first value arrived.
        let at = match this.timer.deadline() {
            _ if this.timeout.is_zero() => return this.flush(FlushReason::Deadline),
            Some(at) => at,
            None => deadline_after(
                this.state.started.take().unwrap_or_else(Instant::now),
                *this.timeout,
            ),
        };
        if this.timer.as_mut().poll_until(at, cx).is_ready() {
            return this.flush(FlushReason::Deadline);
        }
        if len >= stop {
            cx.waker().wake_by_ref(); // The budget is spent: yield, and go on at once.
        }
        Poll::Pending
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let held = usize::from(self.pending_error.is_some());
        let buffered = self.state.items.len();
        let (lower, upper) = self.stream.size_hint();
        // At least the buffered and upcoming values, packed as tightly as the count allows;
        // at most one output per upstream item plus one for the buffered batch.
        let lower = buffered
            .saturating_add(lower)
            .div_ceil(self.state.limiter.max_items());
        let upper = upper.and_then(|upper| upper.checked_add(usize::from(buffered > 0) + held));
        (lower.saturating_add(held), upper)
    }
}

impl<St: TryStream, W: Weigh<St::Ok>, I: BatchOutput<St::Ok>> FusedStream
    for ChunksTimeoutResult<St, W, I>
{
    fn is_terminated(&self) -> bool {
        self.stream.is_terminated() && self.state.items.is_empty() && self.pending_error.is_none()
    }
}
