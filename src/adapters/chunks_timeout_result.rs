use core::fmt;
use core::future::Future;
use core::mem;
use core::pin::Pin;
use core::task::{Context, Poll};
use std::time::Duration;

use futures_core::stream::{FusedStream, Stream, TryStream};
use pin_project_lite::pin_project;
use tokio::runtime::{Handle, Id};
use tokio::time::{Instant, Sleep};

use super::batch::{BatchOutput, FlushReason, Limiter, NoInfo, NoWeight, Weigh};

mod builders;

/// The most values a batch's buffer reserves up front (see [`ChunksTimeoutResult`]).
const PREALLOCATE_MAX: usize = 1 << 16;

/// Stands in for a deadline that overflows `Instant`: about thirty years.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

pin_project! {
    /// Stream for [`ResultStreamExt::chunks_timeout_result`](crate::ResultStreamExt::chunks_timeout_result).
    ///
    /// Buffers `Ok` values into batches of at most `max_items` and yields each batch as
    /// `Ok(Vec<T>)` when it is full, when `timeout` has passed since its first value arrived,
    /// when an `Err` arrives (the partial batch first, then the error), or when the upstream
    /// ends. The method's documentation states every rule; [`max_weight`](Self::max_weight)
    /// adds a weight cap and [`with_batch_info`](Self::with_batch_info) tags each batch.
    ///
    /// `W` and `I` are type-state parameters from [`crate::batch`]: the weight rules
    /// ([`NoWeight`] by default) and what is yielded per batch ([`NoInfo`] by default).
    ///
    /// # Implementation
    ///
    /// The deadline timer is a `tokio::time::Sleep` stored inline (no heap allocation). It is
    /// created only when the upstream returns `Pending` with values buffered, so a batch that
    /// fills from a ready upstream never touches the timer or the clock; it is dropped (and so
    /// deregistered) when its batch is yielded or taken out, so it never wakes the task for a
    /// batch that is gone, and each batch's timer belongs to the runtime that polls it (a
    /// batch still open when its runtime is dropped gets a new timer, at the same deadline, on
    /// the next runtime that polls it).
    /// Each batch is one allocation of `min(max_items, 65_536)` values; a batch of more than
    /// 65,536 values grows as a `Vec` does (doubling) past that.
    ///
    /// # Cancellation safety
    ///
    /// Dropping the adapter drops its buffered values; [`take_remainder`](Self::take_remainder)
    /// takes them out of a pinned adapter first.
    #[must_use = "streams do nothing unless polled"]
    #[project = Proj]
    pub struct ChunksTimeoutResult<St: TryStream, W: Weigh<St::Ok> = NoWeight, I = NoInfo> {
        #[pin]
        stream: St,
        items: Vec<St::Ok>,
        total: W::Weight,
        pending_error: Option<St::Error>,
        #[pin]
        deadline: Option<Sleep>,
        // The runtime the timer belongs to: a timer of a runtime that was dropped may not be
        // polled, so it is re-created on the runtime that polls.
        timer_runtime: Option<Id>,
        // When the open batch's first value arrived, if that was in a poll that returned
        // `Ready` (a value that closed the previous batch by weight): its deadline runs from
        // then, not from the next poll.
        started: Option<Instant>,
        upstream_done: bool,
        last_flush: Option<FlushReason>,
        limiter: Limiter<W>,
        output: I,
        timeout: Duration,
    }
}

impl<St, W, I> fmt::Debug for ChunksTimeoutResult<St, W, I>
where
    St: TryStream + fmt::Debug,
    St::Ok: fmt::Debug,
    St::Error: fmt::Debug,
    W: Weigh<St::Ok> + fmt::Debug,
    I: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunksTimeoutResult")
            .field("stream", &self.stream)
            .field("items", &self.items)
            .field("total", &self.total)
            .field("pending_error", &self.pending_error)
            .field("deadline", &self.armed_deadline())
            .field("upstream_done", &self.upstream_done)
            .field("max_items", &self.limiter.max_items())
            .field("weight", self.limiter.weigher())
            .field("output", &self.output)
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
        Self {
            stream,
            items: Vec::new(),
            total: (),
            pending_error: None,
            deadline: None,
            timer_runtime: None,
            started: None,
            upstream_done: false,
            last_flush: None,
            limiter: Limiter::new(max_items, NoWeight),
            output: NoInfo,
            timeout,
        }
    }
}

impl<St: TryStream, W: Weigh<St::Ok>, I> ChunksTimeoutResult<St, W, I> {
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
    /// The adapter holds its timer inline, so it is `!Unpin`: once pinned (polled) it can no
    /// longer be moved, and this is only for an adapter that was never pinned. Buffered
    /// values and a held-back error are dropped: use [`into_parts`](Self::into_parts), or
    /// [`take_remainder`](Self::take_remainder) on a pinned adapter, to keep them.
    pub fn into_inner(self) -> St {
        self.stream
    }

    /// Consumes the adapter and returns the underlying stream, the buffered values (oldest
    /// first) and the error held back behind an already-yielded partial batch, if any.
    ///
    /// Like [`into_inner`](Self::into_inner), only for an adapter that is not pinned; a
    /// pinned one gives its values back through [`take_remainder`](Self::take_remainder).
    pub fn into_parts(self) -> (St, Vec<St::Ok>, Option<St::Error>) {
        (self.stream, self.items, self.pending_error)
    }

    /// The values buffered for the next batch, oldest first.
    pub fn buffered_values(&self) -> &[St::Ok] {
        &self.items
    }

    /// Takes the buffered values (oldest first) and the held-back error out of a pinned
    /// adapter, leaving it empty with its deadline timer dropped.
    ///
    /// This is what makes the adapter safe to abandon, for example when it loses a
    /// `tokio::select!` race: nothing already pulled from the upstream is lost. The error, if
    /// present, came after every returned value. The adapter stays usable: the next value
    /// starts a new batch.
    #[doc(alias = "into_remainder")]
    pub fn take_remainder(self: Pin<&mut Self>) -> (Vec<St::Ok>, Option<St::Error>)
    where
        I: BatchOutput<St::Ok>,
    {
        let mut this = self.project();
        this.deadline.set(None);
        *this.timer_runtime = None;
        *this.started = None;
        *this.total = Default::default();
        this.output.clear();
        (mem::take(this.items), this.pending_error.take())
    }

    /// The deadline of the batch being buffered, if its timer is armed.
    ///
    /// The timer is armed lazily, when the upstream first returns `Pending` with values
    /// buffered, so a non-empty batch can be without one until then.
    pub fn armed_deadline(&self) -> Option<Instant> {
        self.deadline.as_ref().map(Sleep::deadline)
    }

    /// Why the most recent batch was yielded, or `None` before the first batch.
    ///
    /// Read it right after `poll_next` returned `Some(Ok(batch))` to tag that batch, or use
    /// [`with_batch_info`](Self::with_batch_info).
    pub fn last_flush_reason(&self) -> Option<FlushReason> {
        self.last_flush
    }
}

impl<St: TryStream, W: Weigh<St::Ok>, I: BatchOutput<St::Ok>> Proj<'_, St, W, I> {
    /// Takes the buffered batch out, drops its timer and records why it was yielded.
    #[inline]
    fn flush(&mut self, reason: FlushReason) -> Poll<Option<Result<I::Batch, St::Error>>> {
        if self.deadline.is_some() {
            self.deadline.set(None);
            *self.timer_runtime = None;
        }
        *self.started = None;
        *self.last_flush = Some(reason);
        let weight = W::report(mem::take(self.total));
        Poll::Ready(Some(Ok(self.output.finish(
            mem::take(self.items),
            reason,
            weight,
        ))))
    }
}

impl<St: TryStream, W: Weigh<St::Ok>, I: BatchOutput<St::Ok>> Proj<'_, St, W, I> {
    /// Takes a value that would bring the open batch to `max_weight` or past it: the batch
    /// closes first and the value starts the next one, or the value joins and closes it
    /// (an exact fill, or a lone value heavier than `max_weight`).
    #[cold]
    #[inline(never)]
    fn take_heavy(
        &mut self,
        value: St::Ok,
        weight: W::Weight,
    ) -> Poll<Option<Result<I::Batch, St::Error>>> {
        let max_items = self.limiter.max_items();
        if self.limiter.splits(self.items.len(), *self.total, weight) {
            let batch = self.flush(FlushReason::Weight);
            *self.items = Vec::with_capacity(max_items.min(PREALLOCATE_MAX));
            // The value arrived in this poll, which returns `Ready`: its batch's deadline
            // runs from now, however long the consumer takes to poll again.
            *self.started = Some(Instant::now());
            self.output.arrives(0);
            self.items.push(value);
            *self.total = W::add(Default::default(), weight);
            return batch;
        }
        if self.items.capacity() == 0 {
            *self.items = Vec::with_capacity(max_items.min(PREALLOCATE_MAX));
        }
        self.output.arrives(self.items.len());
        self.items.push(value);
        *self.total = W::add(*self.total, weight);
        let reason = self
            .limiter
            .closes(self.items.len(), *self.total)
            .expect("a value that does not stay below max_weight closes its batch");
        self.flush(reason)
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
        // A value that closed the previous batch by weight may close its own at once (a lone
        // oversize value). A constant `false` without a weight cap.
        if W::SPLITS && !this.items.is_empty() {
            if let Some(reason) = this.limiter.closes(this.items.len(), *this.total) {
                return this.flush(reason);
            }
        }

        // Data first: drain what the upstream has ready before looking at the deadline.
        // The count-only per-value path is: poll, one capacity check (which also makes
        // `push`'s own check redundant), push, one length check. Nothing here touches the
        // timer or the clock.
        if !*this.upstream_done {
            let max_items = this.limiter.max_items();
            // The weight rules work on the room left below `max_weight`, kept in a local
            // (a register) and written back to `total` before anything reads it.
            let mut room = this.limiter.room(*this.total);
            loop {
                match this.stream.as_mut().try_poll_next(cx) {
                    Poll::Ready(Some(Ok(value))) => {
                        let weight = this.limiter.weigh(&value);
                        // A constant `Some` without a weight cap.
                        let Some(left) = Limiter::<W>::take_room(room, weight) else {
                            *this.total = this.limiter.total_from_room(room);
                            return this.take_heavy(value, weight);
                        };
                        room = left;
                        if this.items.len() == this.items.capacity() {
                            if this.items.capacity() == 0 {
                                // A new batch (no capacity means no values): one allocation,
                                // for the whole batch.
                                this.output.arrives(0);
                                *this.items = Vec::with_capacity(max_items.min(PREALLOCATE_MAX));
                                this.items.push(value);
                                if max_items == 1 {
                                    *this.total = this.limiter.total_from_room(room);
                                    return this.flush(FlushReason::Full);
                                }
                                continue;
                            }
                            grow(this.items);
                        }
                        if mem::size_of::<St::Ok>() == 0 {
                            // Zero-sized values never fill their `Vec`'s capacity.
                            this.output.arrives(this.items.len());
                        }
                        this.items.push(value);
                        if this.items.len() >= max_items {
                            *this.total = this.limiter.total_from_room(room);
                            return this.flush(FlushReason::Full);
                        }
                    }
                    Poll::Ready(Some(Err(error))) => {
                        if this.items.is_empty() {
                            return Poll::Ready(Some(Err(error)));
                        }
                        *this.pending_error = Some(error);
                        *this.total = this.limiter.total_from_room(room);
                        return this.flush(FlushReason::Error);
                    }
                    Poll::Ready(None) => {
                        *this.upstream_done = true;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            *this.total = this.limiter.total_from_room(room);
        }

        if this.items.is_empty() {
            return if *this.upstream_done {
                Poll::Ready(None)
            } else {
                Poll::Pending
            };
        }
        if *this.upstream_done {
            return this.flush(FlushReason::End);
        }

        // The upstream is pending with values buffered. Every value of this batch arrived
        // during this call unless the timer was armed by an earlier one, or the batch's first
        // value closed the previous batch by weight in an earlier call (`started`), so arming
        // it now starts the deadline at the end of the call in which the batch's first value
        // arrived. A new `Sleep` per armed batch binds it to the runtime polling it now.
        if this.deadline.is_none() {
            if this.timeout.is_zero() {
                return this.flush(FlushReason::Deadline);
            }
            let now = this.started.take().unwrap_or_else(Instant::now);
            // A timeout past the clock's range means "never", as in `tokio::time::sleep`.
            let at = now
                .checked_add(*this.timeout)
                .unwrap_or_else(|| now + FAR_FUTURE);
            this.deadline.set(Some(tokio::time::sleep_until(at)));
            *this.timer_runtime = Some(Handle::current().id());
        } else {
            // A batch open across runtimes: the timer of a runtime that was dropped may not be
            // polled, so it is re-created, at the same deadline, on the one polling now.
            // (Outside any runtime the timer is polled as it is, as before.)
            let runtime = Handle::try_current().ok().map(|handle| handle.id());
            if runtime.is_some() && *this.timer_runtime != runtime {
                let at = this
                    .deadline
                    .as_ref()
                    .as_pin_ref()
                    .map(|timer| timer.deadline());
                this.deadline.set(at.map(tokio::time::sleep_until));
                *this.timer_runtime = runtime;
            }
        }
        let sleep = this
            .deadline
            .as_mut()
            .as_pin_mut()
            .expect("an armed deadline has a timer");
        match sleep.poll(cx) {
            Poll::Ready(()) => this.flush(FlushReason::Deadline),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.upstream_done {
            let n = usize::from(!self.items.is_empty());
            return (n, Some(n));
        }
        let held = usize::from(self.pending_error.is_some());
        let buffered = self.items.len();
        let (lower, upper) = self.stream.size_hint();
        // At least the buffered and upcoming values, packed as tightly as the count allows; at
        // most one output per upstream item plus one for the buffered batch.
        let lower = buffered
            .saturating_add(lower)
            .div_ceil(self.limiter.max_items())
            .saturating_add(held);
        let upper = upper.and_then(|upper| {
            upper
                .checked_add(usize::from(buffered > 0))
                .and_then(|u| u.checked_add(held))
        });
        (lower, upper)
    }
}

impl<St: TryStream, W: Weigh<St::Ok>, I: BatchOutput<St::Ok>> FusedStream
    for ChunksTimeoutResult<St, W, I>
{
    fn is_terminated(&self) -> bool {
        self.upstream_done && self.items.is_empty() && self.pending_error.is_none()
    }
}

/// Makes room for one more value in a batch of more than `PREALLOCATE_MAX` values: the
/// buffer then grows as a `Vec` does.
#[cold]
#[inline(never)]
fn grow<T>(items: &mut Vec<T>) {
    items.reserve(1);
}
