use core::ops::ControlFlow;
use core::pin::Pin;
use core::task::{Context, Poll};
use std::time::Duration;

use futures_core::stream::{FusedStream, Stream, TryStream};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::batch::info::sealed::Output;
use super::batch::{
    BUDGET, BatchOutput, BatchState, Drained, FlushReason, Limiter, MaxWeight, NoInfo, NoWeight,
    Timer, Upstream, Weigh, WithInfo, deadline_after,
};

pin_project! {
    /// Stream for [`ResultStreamExt::chunks_timeout_result`](crate::ResultStreamExt::chunks_timeout_result),
    /// whose rustdoc states the rules. `W` and `I` are the type-state parameters of
    /// [`crate::batch`] set by [`max_weight`](Self::max_weight) and
    /// [`with_batch_info`](Self::with_batch_info).
    ///
    /// Dropping the adapter drops its buffered values; [`take_remainder`](Self::take_remainder)
    /// takes them out of a pinned adapter first.
    #[derive(Debug)]
    #[must_use = "streams do nothing unless polled"]
    #[project = Proj]
    pub struct ChunksTimeoutResult<St: TryStream, W: Weigh<St::Ok> = NoWeight, I = NoInfo> {
        #[pin]
        stream: Upstream<St>,
        #[pin]
        timer: Timer,
        state: BatchState<St::Ok, W, I>,
        pending_error: Option<St::Error>,
        timeout: Duration,
    }
}

const NAME: &str = "chunks_timeout_result";

impl<St: TryStream> ChunksTimeoutResult<St> {
    #[track_caller]
    pub(crate) fn new(stream: St, max_items: usize, timeout: Duration) -> Self {
        assert!(
            max_items > 0,
            "{NAME}: `max_items` must be greater than zero"
        );
        Self {
            stream: Upstream::new(stream),
            timer: Timer::new(),
            state: BatchState::new(Limiter::new(max_items, NoWeight)),
            pending_error: None,
            timeout,
        }
    }
}

impl<St: TryStream, I: BatchOutput<St::Ok>> ChunksTimeoutResult<St, NoWeight, I> {
    /// Adds a weight cap: a batch holds at most `max_weight` in total, each value weighing
    /// `weigh(&value)` (called once per value), unless it is one value heavier than that.
    /// The rules: "Weight cap" in [`chunks_timeout_result`](crate::ResultStreamExt::chunks_timeout_result).
    ///
    /// # Panics
    ///
    /// Panics, at the caller's location, if `max_weight` is zero.
    #[track_caller]
    pub fn max_weight<F>(
        self,
        max_weight: usize,
        weigh: F,
    ) -> ChunksTimeoutResult<St, MaxWeight<F>, I>
    where
        F: FnMut(&St::Ok) -> usize,
    {
        self.weighed(MaxWeight::new(NAME, max_weight, weigh))
    }

    /// [`max_weight`](Self::max_weight) for a cap known only at run time: `Some(max_weight)`
    /// applies its rules, `None` weighs nothing and caps nothing; both give one type.
    ///
    /// # Panics
    ///
    /// Panics, at the caller's location, if `max_weight` is `Some(0)`.
    #[track_caller]
    pub fn max_weight_opt<F>(
        self,
        max_weight: Option<usize>,
        weigh: F,
    ) -> ChunksTimeoutResult<St, Option<MaxWeight<F>>, I>
    where
        F: FnMut(&St::Ok) -> usize,
    {
        self.weighed(MaxWeight::new_opt(NAME, max_weight, weigh))
    }

    fn weighed<V: Weigh<St::Ok, Weight = usize>>(
        self,
        weigher: V,
    ) -> ChunksTimeoutResult<St, V, I> {
        self.rebuild(|limiter, _, output| (limiter.with_weigher(weigher), 0, output))
    }
}

impl<St: TryStream, W: Weigh<St::Ok>> ChunksTimeoutResult<St, W, NoInfo> {
    /// Yields each batch as `Ok((batch, info))` with its [`BatchInfo`](crate::BatchInfo):
    /// why it closed, its weight and its age (two clock reads per batch). The rules: "Batch
    /// info" in [`chunks_timeout_result`](crate::ResultStreamExt::chunks_timeout_result).
    pub fn with_batch_info(self) -> ChunksTimeoutResult<St, W, WithInfo> {
        self.rebuild(|limiter, total, _| (limiter, total, WithInfo::default()))
    }
}

impl<St: TryStream, W: Weigh<St::Ok>, I: BatchOutput<St::Ok>> ChunksTimeoutResult<St, W, I> {
    delegate_access_inner!(stream, St, (.));

    /// The same adapter with the limiter, total and output mapped by `f`.
    fn rebuild<V: Weigh<St::Ok>, J>(
        self,
        f: impl FnOnce(Limiter<W>, W::Weight, I) -> (Limiter<V>, V::Weight, J),
    ) -> ChunksTimeoutResult<St, V, J> {
        ChunksTimeoutResult {
            state: self.state.rebuild(f),
            stream: self.stream,
            timer: self.timer,
            pending_error: self.pending_error,
            timeout: self.timeout,
        }
    }

    /// Consumes an adapter that was never pinned and returns the underlying stream, the
    /// buffered values (oldest first) and the error held back behind an already-yielded
    /// partial batch, if any.
    pub fn into_parts(self) -> (St, Vec<St::Ok>, Option<St::Error>) {
        let stream = self.stream.into_inner();
        (stream, self.state.items, self.pending_error)
    }

    /// The values buffered for the next batch, oldest first.
    pub fn buffered_values(&self) -> &[St::Ok] {
        &self.state.items
    }

    /// Takes the buffered values (oldest first) and the held-back error (which came after
    /// them) out of a pinned adapter, leaving it empty with its timer disarmed, so that
    /// nothing already pulled is lost when it is abandoned (say, in a lost `tokio::select!`
    /// race). The adapter stays usable: the next value starts a new batch.
    #[doc(alias = "into_remainder")]
    pub fn take_remainder(self: Pin<&mut Self>) -> (Vec<St::Ok>, Option<St::Error>) {
        let this = self.project();
        this.timer.clear();
        (this.state.take(), this.pending_error.take())
    }

    /// The deadline of the batch being buffered, if its timer is armed (which happens when
    /// the upstream first returns `Pending` with values buffered).
    pub fn armed_deadline(&self) -> Option<Instant> {
        self.timer.deadline()
    }

    /// Why the most recent batch was yielded, or `None` before the first batch.
    pub fn last_flush_reason(&self) -> Option<FlushReason> {
        self.state.last_flush
    }
}

type Polled<T, E, I> = Poll<Option<Result<<I as Output<T>>::Batch, E>>>;

impl<St: TryStream, W: Weigh<St::Ok>, I: BatchOutput<St::Ok>> Proj<'_, St, W, I> {
    /// Yields the open batch and disarms its timer.
    #[inline]
    fn flush(&mut self, reason: FlushReason) -> Polled<St::Ok, St::Error, I> {
        self.timer.as_mut().clear();
        Poll::Ready(Some(Ok(self.state.close(reason))))
    }

    /// Takes a value that brings the batch to `max_weight` or past it: either the batch
    /// closes first and the value starts the next one (whose deadline runs from now), or
    /// the value joins and closes it (an exact fill, or a lone value past `max_weight`).
    #[cold]
    #[inline(never)]
    fn take_heavy(&mut self, value: St::Ok, weight: W::Weight) -> Polled<St::Ok, St::Error, I> {
        let state = &mut *self.state;
        if state.limiter.splits(state.items.len(), state.total, weight) {
            let batch = self.flush(FlushReason::Weight);
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

    /// Nothing ready (or the budget spent) with values buffered: waits for the deadline,
    /// `timeout` after the end of the poll in which the batch's first value arrived.
    fn wait(&mut self, yielded: bool, cx: &mut Context<'_>) -> Polled<St::Ok, St::Error, I> {
        let (started, timeout) = (&mut self.state.started, *self.timeout);
        let deadline = || deadline_after(started.take().unwrap_or_else(Instant::now), timeout);
        if timeout.is_zero() || self.timer.as_mut().poll_armed(cx, deadline).is_ready() {
            return self.flush(FlushReason::Deadline);
        }
        if yielded {
            cx.waker().wake_by_ref(); // The budget is spent: yield, and go on at once.
        }
        Poll::Pending
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
        // A value carried over by a weight split and heavier than `max_weight` closes its
        // batch at once (`SPLITS` is a constant `false` without a weight cap).
        if W::SPLITS && !state.items.is_empty() {
            if let Some(reason) = state.limiter.closes(state.items.len(), state.total) {
                return this.flush(reason);
            }
        }
        // Per value: a poll, a weight check against the room left (kept in a local), a push
        // and one length check; no timer, no clock. `stop` is `max_items` or the budget's end.
        let max_items = state.limiter.max_items();
        let stop = state.items.len().saturating_add(BUDGET).min(max_items);
        let mut room = state.limiter.room(state.total);
        let drained = this.stream.as_mut().poll_each(cx, |item| match item {
            Ok(value) => {
                let weight = state.limiter.weigh(&value);
                let Some(left) = Limiter::<W>::take_room(room, weight) else {
                    return ControlFlow::Break(Err(Ok((value, weight))));
                };
                room = left;
                if state.push(value) >= stop {
                    return ControlFlow::Break(Ok(()));
                }
                ControlFlow::Continue(())
            }
            Err(error) => ControlFlow::Break(Err(Err(error))),
        });
        state.total = state.limiter.total_from_room(room);
        let ended = match drained {
            Drained::Break(Err(Ok((value, weight)))) => return this.take_heavy(value, weight),
            Drained::Break(Err(Err(error))) if this.state.items.is_empty() => {
                return Poll::Ready(Some(Err(error)));
            }
            Drained::Break(Err(Err(error))) => {
                *this.pending_error = Some(error);
                return this.flush(FlushReason::Error);
            }
            Drained::Break(Ok(())) | Drained::Pending => false,
            Drained::Ended => true,
        };
        match this.state.items.len() {
            len if len >= max_items => this.flush(FlushReason::Full),
            0 if ended => Poll::Ready(None),
            0 => Poll::Pending,
            _ if ended => this.flush(FlushReason::End),
            len => this.wait(len >= stop, cx),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let (held, buffered) = (
            usize::from(self.pending_error.is_some()),
            self.state.items.len(),
        );
        let (lower, upper) = self.stream.size_hint();
        // At least the buffered and upcoming values packed as tightly as the count allows; at
        // most one batch per upstream item, plus the buffered batch.
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
