//! The `Stream` implementation of [`ChunksTimeoutByKeyResult`].

use core::future::Future;
use core::hash::Hash;
use core::pin::Pin;
use core::task::{Context, Poll};
use std::time::Duration;

use futures_core::stream::{FusedStream, Stream, TryStream};
use tokio::runtime::Handle;
use tokio::time::Instant;

use super::open::Batch;
use super::{ChunksTimeoutByKeyResult, Proj};
use crate::adapters::batch::info::sealed::Output;
use crate::adapters::batch::{BatchInfo, FlushReason, Limiter, NoInfo, Weigh, WithInfo};

/// The most values a batch's buffer reserves up front (see [`ChunksTimeoutByKeyResult`]).
const PREALLOCATE_MAX: usize = 4_096;

/// Stands in for a deadline that overflows `Instant`: about thirty years.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

pub(super) mod sealed {
    use tokio::time::Instant;

    use crate::adapters::batch::FlushReason;
    use crate::adapters::batch::info::sealed::Output;

    /// How a per-key batcher turns a closed batch into what it yields: each open batch
    /// carries its own first-arrival time, so the age comes from it.
    pub trait ByKeyOutput<T>: Output<T> {
        /// `batch`, closed for `reason`, weighing `weight`, whose first value arrived at
        /// `opened` (`None`: it closed in the poll it arrived in).
        fn close(
            batch: Vec<T>,
            reason: FlushReason,
            weight: Option<usize>,
            opened: Option<Instant>,
        ) -> Self::Batch;
    }
}

use sealed::ByKeyOutput;

impl<T> ByKeyOutput<T> for NoInfo {
    #[inline(always)]
    fn close(batch: Vec<T>, _: FlushReason, _: Option<usize>, _: Option<Instant>) -> Vec<T> {
        batch
    }
}

impl<T> ByKeyOutput<T> for WithInfo {
    fn close(
        batch: Vec<T>,
        reason: FlushReason,
        weight: Option<usize>,
        opened: Option<Instant>,
    ) -> (Vec<T>, BatchInfo) {
        let age = opened.map_or(Duration::ZERO, |opened| {
            Instant::now().saturating_duration_since(opened)
        });
        (batch, BatchInfo::new(reason, weight, age))
    }
}

/// What the upstream gave, with the value's key and weight already computed.
enum Next<T, K, Wt, E> {
    Value(T, K, Wt),
    Err(E),
    End,
    Pending,
}

/// Polls the upstream once; a value is keyed and weighed (each exactly once).
#[inline(always)]
#[allow(clippy::type_complexity)]
fn next_value<St, K, F, W>(
    stream: Pin<&mut St>,
    key: &mut F,
    limiter: &mut Limiter<W>,
    cx: &mut Context<'_>,
) -> Next<St::Ok, K, W::Weight, St::Error>
where
    St: TryStream,
    F: FnMut(&St::Ok) -> K,
    W: Weigh<St::Ok>,
{
    match stream.try_poll_next(cx) {
        Poll::Ready(Some(Ok(value))) => {
            let weight = limiter.weigh(&value);
            let key = key(&value);
            Next::Value(value, key, weight)
        }
        Poll::Ready(Some(Err(error))) => Next::Err(error),
        Poll::Ready(None) => Next::End,
        Poll::Pending => Next::Pending,
    }
}

type Item<St, K, I> =
    Result<(K, <I as Output<<St as TryStream>::Ok>>::Batch), <St as TryStream>::Error>;

impl<St, K, F, W, I> Stream for ChunksTimeoutByKeyResult<St, K, F, W, I>
where
    St: TryStream,
    F: FnMut(&St::Ok) -> K,
    K: Hash + Eq + Clone,
    W: Weigh<St::Ok>,
    I: ByKeyOutput<St::Ok>,
{
    type Item = Item<St, K, I>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();

        // A value that closed its key's batch by weight and is heavier than `max_weight`
        // closes its own batch next. A constant `None` without a weight cap.
        if W::SPLITS {
            if let Some(slot) = this.due.take() {
                let batch = this.open.close_slot(slot);
                return this.yield_batch(batch, FlushReason::Weight);
            }
        }
        // An error is held back behind the batches that were open when it arrived.
        if this.pending_error.is_some() {
            if let Some(batch) = this.open.close_oldest() {
                return this.yield_batch(batch, FlushReason::Error);
            }
            return Poll::Ready(this.pending_error.take().map(Err));
        }
        if *this.upstream_done {
            return match this.open.close_oldest() {
                Some(batch) => this.yield_batch(batch, FlushReason::End),
                None => Poll::Ready(None),
            };
        }

        // Right after a batch that a value or a deadline closed: expired deadlines before
        // more data.
        if *this.expired_first {
            if let Some(oldest) = this.open.oldest() {
                if oldest.deadline <= Instant::now() {
                    let batch = this.open.close_oldest().expect("an oldest batch");
                    return this.yield_batch(batch, FlushReason::Deadline);
                }
            }
            *this.expired_first = false;
        }

        // Data first: what the upstream has ready joins its batches.
        let mut now = None;
        let mut next = next_value(this.stream.as_mut(), this.key, this.limiter, cx);
        loop {
            let (mut value, key, mut weight) = match next {
                Next::Value(value, key, weight) => (value, key, weight),
                Next::Err(error) => {
                    return match this.open.close_oldest() {
                        Some(batch) => {
                            *this.pending_error = Some(error);
                            this.yield_batch(batch, FlushReason::Error)
                        }
                        None => Poll::Ready(Some(Err(error))),
                    };
                }
                Next::End => {
                    *this.upstream_done = true;
                    return match this.open.close_oldest() {
                        Some(batch) => this.yield_batch(batch, FlushReason::End),
                        None => {
                            this.timer.set(None);
                            *this.timer_runtime = None;
                            Poll::Ready(None)
                        }
                    };
                }
                Next::Pending => break,
            };

            let Some(entry) = this.open.get_mut(&key) else {
                let total = W::add(Default::default(), weight);
                if let Some(reason) = this.limiter.closes(1, total) {
                    // Closed by its first value: it opens nothing and evicts nothing.
                    *this.expired_first = true;
                    *this.last_flush = Some(reason);
                    let batch = I::close(vec![value], reason, W::report(total), None);
                    return Poll::Ready(Some(Ok((key, batch))));
                }
                let evicted = if this.open.len() >= *this.max_open_keys {
                    this.open.close_oldest()
                } else {
                    None
                };
                this.open_batch(key, value, total, &mut now);
                if let Some(batch) = evicted {
                    *this.expired_first = true;
                    return this.yield_batch(batch, FlushReason::Eviction);
                }
                next = next_value(this.stream.as_mut(), this.key, this.limiter, cx);
                continue;
            };

            // `key`'s batch is open: this value and the next ones of the same key go
            // straight into it, without looking the key up again.
            loop {
                if this.limiter.splits(entry.items.len(), entry.total, weight) {
                    // The value starts its key's next batch, with a deadline of its own.
                    let closed = this.open.close(&key);
                    let total = W::add(Default::default(), weight);
                    let slot = this.open_batch(key, value, total, &mut now);
                    if this.limiter.closes(1, total).is_some() {
                        *this.due = Some(slot);
                    }
                    *this.expired_first = true;
                    return this.yield_batch(closed, FlushReason::Weight);
                }
                entry.items.push(value);
                entry.total = W::add(entry.total, weight);
                if let Some(reason) = this.limiter.closes(entry.items.len(), entry.total) {
                    *this.expired_first = true;
                    let batch = this.open.close(&key);
                    return this.yield_batch(batch, reason);
                }
                match next_value(this.stream.as_mut(), this.key, this.limiter, cx) {
                    Next::Value(v, k, w) if k == key => (value, weight) = (v, w),
                    other => {
                        next = other;
                        break;
                    }
                }
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
            *this.expired_first = true;
            let batch = this.open.close_oldest().expect("an oldest batch");
            return this.yield_batch(batch, FlushReason::Deadline);
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
                // The other batches whose deadlines have passed follow before more data.
                *this.expired_first = true;
                let batch = this.open.close_oldest().expect("an oldest batch");
                this.yield_batch(batch, FlushReason::Deadline)
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
        let max_items = self.limiter.max_items();
        let lower = if held == 1 {
            // The open batches, the error, then the upcoming values packed tightly.
            open + 1 + lower.div_ceil(max_items)
        } else {
            // Every open batch is yielded, and every value in a batch of at most `max_items`.
            open.max(
                self.buffered_len()
                    .saturating_add(lower)
                    .div_ceil(max_items),
            )
        };
        // Each batch holds at least one value: besides the open batches, each upstream item
        // adds at most one output.
        let upper = upper.and_then(|upper| upper.checked_add(open)?.checked_add(held));
        (lower, upper)
    }
}

impl<St, K, F, W, I> FusedStream for ChunksTimeoutByKeyResult<St, K, F, W, I>
where
    St: TryStream,
    F: FnMut(&St::Ok) -> K,
    K: Hash + Eq + Clone,
    W: Weigh<St::Ok>,
    I: ByKeyOutput<St::Ok>,
{
    fn is_terminated(&self) -> bool {
        self.upstream_done && self.open.is_empty() && self.pending_error.is_none()
    }
}

impl<St, K, F, W, I> Proj<'_, St, K, F, W, I>
where
    St: TryStream,
    K: Hash + Eq + Clone,
    W: Weigh<St::Ok>,
    I: ByKeyOutput<St::Ok>,
{
    /// Opens `key`'s batch with `value` as the newest, its deadline `timeout` after `now`
    /// (the clock is read once per poll, for every batch it opens).
    fn open_batch(
        &mut self,
        key: K,
        value: St::Ok,
        total: W::Weight,
        now: &mut Option<Instant>,
    ) -> usize {
        let opened = *now.get_or_insert_with(Instant::now);
        // A timeout past the clock's range means "never", as in `tokio::time::sleep`.
        let deadline = opened
            .checked_add(*self.timeout)
            .unwrap_or_else(|| opened + FAR_FUTURE);
        let mut items = Vec::with_capacity(self.limiter.max_items().min(PREALLOCATE_MAX));
        items.push(value);
        self.open.open(key, items, total, opened, deadline)
    }

    /// Yields a closed batch, first moving the timer off its deadline if it was the oldest:
    /// to the next oldest batch's (later, so tokio only extends the timer and nothing wakes
    /// at the old deadline), or dropping it when no batch is left.
    fn yield_batch(
        &mut self,
        batch: Batch<K, St::Ok, W::Weight>,
        reason: FlushReason,
    ) -> Poll<Option<Item<St, K, I>>> {
        *self.last_flush = Some(reason);
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
        let Batch {
            key,
            items,
            total,
            opened,
        } = batch;
        let weight = W::report(total);
        Poll::Ready(Some(Ok((
            key,
            I::close(items, reason, weight, Some(opened)),
        ))))
    }
}
