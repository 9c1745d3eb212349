use core::fmt;
use core::future::Future;
use core::mem;
use core::pin::Pin;
use core::task::{Context, Poll};
use std::time::Duration;

use futures_core::stream::{FusedStream, Stream, TryStream};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// The most values a batch's buffer reserves up front (see [`ChunksTimeoutResult`]).
const PREALLOCATE_MAX: usize = 1 << 16;

/// Stands in for a deadline that overflows `Instant`: about thirty years.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// Why [`ChunksTimeoutResult`] yielded its most recent batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlushReason {
    /// The batch reached `max_items` values.
    Full,
    /// The batch's deadline (`timeout` after its first value arrived) passed.
    Deadline,
    /// An `Err` arrived; it is yielded on the next poll.
    Error,
    /// The upstream ended.
    End,
}

pin_project! {
    /// Stream for [`ResultStreamExt::chunks_timeout_result`](crate::ResultStreamExt::chunks_timeout_result).
    ///
    /// Buffers `Ok` values into batches of at most `max_items` and yields each batch as
    /// `Ok(Vec<T>)` when it is full, when `timeout` has passed since its first value arrived,
    /// when an `Err` arrives (the partial batch first, then the error), or when the upstream
    /// ends. The method's documentation states every rule.
    ///
    /// # Cost
    ///
    /// The deadline timer is a `tokio::time::Sleep` stored inline (no heap allocation), created
    /// on first use and reset for each later batch. It is armed only when the upstream returns
    /// `Pending` with values buffered, so a batch that fills from a ready upstream never touches
    /// the timer or the clock. Each batch is one allocation of
    /// `min(max_items, 65_536)` values (more only when `max_items` is larger than that).
    #[must_use = "streams do nothing unless polled"]
    pub struct ChunksTimeoutResult<St: TryStream> {
        #[pin]
        stream: St,
        items: Vec<St::Ok>,
        pending_error: Option<St::Error>,
        #[pin]
        deadline: Option<Sleep>,
        deadline_armed: bool,
        upstream_done: bool,
        last_flush: Option<FlushReason>,
        max_items: usize,
        timeout: Duration,
    }
}

impl<St> fmt::Debug for ChunksTimeoutResult<St>
where
    St: TryStream + fmt::Debug,
    St::Ok: fmt::Debug,
    St::Error: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunksTimeoutResult")
            .field("stream", &self.stream)
            .field("items", &self.items)
            .field("pending_error", &self.pending_error)
            .field("deadline", &self.armed_deadline())
            .field("upstream_done", &self.upstream_done)
            .field("max_items", &self.max_items)
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
            pending_error: None,
            deadline: None,
            deadline_armed: false,
            upstream_done: false,
            last_flush: None,
            max_items,
            timeout,
        }
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
    /// adapter, leaving it empty with its deadline disarmed.
    ///
    /// This is what makes the adapter safe to abandon, for example when it loses a
    /// `tokio::select!` race: nothing already pulled from the upstream is lost. The error, if
    /// present, came after every returned value. The adapter stays usable: the next value
    /// starts a new batch.
    #[doc(alias = "into_remainder")]
    pub fn take_remainder(self: Pin<&mut Self>) -> (Vec<St::Ok>, Option<St::Error>) {
        let this = self.project();
        *this.deadline_armed = false;
        (mem::take(this.items), this.pending_error.take())
    }

    /// The deadline of the batch being buffered, if its timer is armed.
    ///
    /// The timer is armed lazily, when the upstream first returns `Pending` with values
    /// buffered, so a non-empty batch can be without one until then.
    pub fn armed_deadline(&self) -> Option<Instant> {
        match (&self.deadline, self.deadline_armed) {
            (Some(sleep), true) => Some(sleep.deadline()),
            _ => None,
        }
    }

    /// Why the most recent batch was yielded, or `None` before the first batch.
    ///
    /// Read it right after `poll_next` returned `Some(Ok(batch))` to tag that batch.
    pub fn last_flush_reason(&self) -> Option<FlushReason> {
        self.last_flush
    }
}

impl<St: TryStream> Stream for ChunksTimeoutResult<St> {
    type Item = Result<Vec<St::Ok>, St::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();

        if let Some(error) = this.pending_error.take() {
            return Poll::Ready(Some(Err(error)));
        }

        // Data first: drain what the upstream has ready before looking at the deadline.
        // The per-value path is: poll, one capacity check (which also makes `push`'s own
        // check redundant), push, one length check. Nothing here touches the timer.
        if !*this.upstream_done {
            let max_items = *this.max_items;
            loop {
                match this.stream.as_mut().try_poll_next(cx) {
                    Poll::Ready(Some(Ok(value))) => {
                        if this.items.len() == this.items.capacity() {
                            if this.items.capacity() == 0 {
                                // A new batch (no capacity means no values): one allocation,
                                // for the whole batch.
                                *this.items = Vec::with_capacity(max_items.min(PREALLOCATE_MAX));
                            } else {
                                grow(this.items);
                            }
                        }
                        this.items.push(value);
                        if this.items.len() >= max_items {
                            return Poll::Ready(Some(Ok(take_batch(
                                this.items,
                                this.deadline_armed,
                                this.last_flush,
                                FlushReason::Full,
                            ))));
                        }
                    }
                    Poll::Ready(Some(Err(error))) => {
                        if this.items.is_empty() {
                            return Poll::Ready(Some(Err(error)));
                        }
                        *this.pending_error = Some(error);
                        return Poll::Ready(Some(Ok(take_batch(
                            this.items,
                            this.deadline_armed,
                            this.last_flush,
                            FlushReason::Error,
                        ))));
                    }
                    Poll::Ready(None) => {
                        *this.upstream_done = true;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
        }

        if this.items.is_empty() {
            *this.deadline_armed = false;
            return if *this.upstream_done {
                Poll::Ready(None)
            } else {
                Poll::Pending
            };
        }
        if *this.upstream_done {
            return Poll::Ready(Some(Ok(take_batch(
                this.items,
                this.deadline_armed,
                this.last_flush,
                FlushReason::End,
            ))));
        }

        // The upstream is pending with values buffered. Every value of this batch arrived
        // during this call unless the timer was armed by an earlier one, so arming it now
        // starts the deadline at the batch's first value, give or take this poll.
        if !*this.deadline_armed {
            if this.timeout.is_zero() {
                return Poll::Ready(Some(Ok(take_batch(
                    this.items,
                    this.deadline_armed,
                    this.last_flush,
                    FlushReason::Deadline,
                ))));
            }
            let now = Instant::now();
            // A timeout past the clock's range means "never", as in `tokio::time::sleep`.
            let at = now
                .checked_add(*this.timeout)
                .unwrap_or_else(|| now + FAR_FUTURE);
            match this.deadline.as_mut().as_pin_mut() {
                Some(sleep) => sleep.reset(at),
                None => this.deadline.set(Some(tokio::time::sleep_until(at))),
            }
            *this.deadline_armed = true;
        }
        let sleep = this
            .deadline
            .as_pin_mut()
            .expect("an armed deadline has a timer");
        match sleep.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Ok(take_batch(
                this.items,
                this.deadline_armed,
                this.last_flush,
                FlushReason::Deadline,
            )))),
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
        // At least the buffered and upcoming values, packed as tightly as possible; at most
        // one output per upstream item plus one for the buffered batch.
        let lower = buffered
            .saturating_add(lower)
            .div_ceil(self.max_items)
            .saturating_add(held);
        let upper = upper.and_then(|upper| {
            upper
                .checked_add(usize::from(buffered > 0))
                .and_then(|u| u.checked_add(held))
        });
        (lower, upper)
    }
}

impl<St: TryStream> FusedStream for ChunksTimeoutResult<St> {
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

/// Takes the buffered batch out, disarms its deadline and records why it was yielded.
#[inline]
fn take_batch<T>(
    items: &mut Vec<T>,
    deadline_armed: &mut bool,
    last_flush: &mut Option<FlushReason>,
    reason: FlushReason,
) -> Vec<T> {
    *deadline_armed = false;
    *last_flush = Some(reason);
    mem::take(items)
}
