//! The `Stream` implementation of [`ChunksTimeoutByKeyResult`].

use core::hash::Hash;
use core::ops::ControlFlow;
use core::pin::Pin;
use core::task::{Context, Poll};
use std::time::Duration;

use futures_core::stream::{FusedStream, Stream, TryStream};
use tokio::time::Instant;

use super::open::{Batch, Entry};
use super::{ChunksTimeoutByKeyResult, Proj};
use crate::adapters::batch::info::sealed::Output;
use crate::adapters::batch::{
    BUDGET, BatchInfo, Drained, FlushReason, Limiter, NoInfo, TracedKey, Upstream, Weigh, WithInfo,
    deadline_after,
};

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

type Item<St, K, I> =
    Result<(K, <I as Output<<St as TryStream>::Ok>>::Batch), <St as TryStream>::Error>;
type Polled<St, K, I> = Poll<Option<Item<St, K, I>>>;

/// What the upstream gave, with the value's key and weight computed (each exactly once).
enum Next<T, K, Wt, E> {
    Value(T, K, Wt),
    Err(E),
    End,
    Pending,
}

/// Why a run of values of one key into its open batch stopped.
enum Run<T, K, Wt, E> {
    /// The value would push the batch past `max_weight`.
    Split(T, Wt),
    /// The batch is full (by count or weight), or the budget is spent.
    Stop,
    /// What the upstream gave that is not of this key.
    Other(Next<T, K, Wt, E>),
}

/// Adds a value of the run's key to its open batch, unless it splits it.
#[inline(always)]
fn join<T, K, W: Weigh<T>, E>(
    entry: &mut Entry<T, W::Weight>,
    limiter: &Limiter<W>,
    stop: usize,
    value: T,
    weight: W::Weight,
) -> ControlFlow<Run<T, K, W::Weight, E>> {
    if limiter.splits(entry.items.len(), entry.total, weight) {
        return ControlFlow::Break(Run::Split(value, weight));
    }
    entry.items.push(value);
    entry.total = W::add(entry.total, weight);
    if entry.items.len() >= stop || limiter.full_by_weight(entry.total) {
        return ControlFlow::Break(Run::Stop);
    }
    ControlFlow::Continue(())
}

/// Adds `first` and the values of `key` that follow it on the upstream to `key`'s open
/// batch, until a value of another key (or an error, the end, `Pending`), a split, or the
/// batch's `stop`.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn run_of_key<St, K, F, W>(
    stream: Pin<&mut Upstream<St>>,
    key_of: &mut F,
    limiter: &mut Limiter<W>,
    entry: &mut Entry<St::Ok, W::Weight>,
    key: &K,
    stop: usize,
    (value, weight): (St::Ok, W::Weight),
    cx: &mut Context<'_>,
) -> Run<St::Ok, K, W::Weight, St::Error>
where
    St: TryStream,
    F: FnMut(&St::Ok) -> K,
    K: Eq,
    W: Weigh<St::Ok>,
{
    if let ControlFlow::Break(run) = join(entry, limiter, stop, value, weight) {
        return run;
    }
    // Values that alternate between keys take one poll each; a run of one key goes on
    // through `poll_each`, which checks the upstream's end once.
    let mut stream = stream;
    match pull(stream.as_mut(), key_of, limiter, cx) {
        Next::Value(value, next_key, weight) if next_key == *key => {
            if let ControlFlow::Break(run) = join(entry, limiter, stop, value, weight) {
                return run;
            }
        }
        other => return Run::Other(other),
    }
    let drained = stream.poll_each(cx, |item| {
        let value = match item {
            Ok(value) => value,
            Err(error) => return ControlFlow::Break(Run::Other(Next::Err(error))),
        };
        let (weight, next_key) = (limiter.weigh(&value), key_of(&value));
        if next_key != *key {
            return ControlFlow::Break(Run::Other(Next::Value(value, next_key, weight)));
        }
        join(entry, limiter, stop, value, weight)
    });
    match drained {
        Drained::Break(run) => run,
        Drained::Pending => Run::Other(Next::Pending),
        Drained::Ended => Run::Other(Next::End),
    }
}

/// Polls the upstream once; a value is keyed and weighed.
#[inline(always)]
#[allow(clippy::type_complexity)]
fn pull<St, K, F, W>(
    stream: Pin<&mut Upstream<St>>,
    key: &mut F,
    limiter: &mut Limiter<W>,
    cx: &mut Context<'_>,
) -> Next<St::Ok, K, W::Weight, St::Error>
where
    St: TryStream,
    F: FnMut(&St::Ok) -> K,
    W: Weigh<St::Ok>,
{
    match stream.poll_next(cx) {
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

impl<St, K, F, W, I> Stream for ChunksTimeoutByKeyResult<St, K, F, W, I>
where
    St: TryStream,
    F: FnMut(&St::Ok) -> K,
    K: Hash + Eq + Clone + TracedKey,
    W: Weigh<St::Ok>,
    I: ByKeyOutput<St::Ok>,
{
    type Item = Item<St, K, I>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        if let Some(owed) = this.owed() {
            return owed;
        }
        // Data first: what the upstream has ready joins its batches, at most `BUDGET` values
        // (fewer if a deadline has passed: the grace left).
        let (mut budget, mut now, mut carried) = (this.state.grace, None, None);
        let max_items = this.state.limiter.max_items();
        while budget > 0 {
            let next = carried.take();
            let next = next.unwrap_or_else(|| {
                pull(this.stream.as_mut(), this.key, &mut this.state.limiter, cx)
            });
            let (value, key, weight) = match next {
                Next::Value(value, key, weight) => (value, key, weight),
                Next::Err(error) => return this.hold_error(error),
                Next::End => return this.owed().unwrap_or(Poll::Ready(None)),
                Next::Pending => break,
            };
            let (Some(entry), limiter) = this.state.entry_and_limiter(&key) else {
                if let Some(ready) = this.open(key, value, weight, &mut now) {
                    this.state.grace = budget - 1;
                    return ready;
                }
                budget -= 1;
                continue;
            };
            // `key`'s batch is open: this value and the next ones of the same key go straight
            // into it, without looking the key up again. `stop` counts the budget in.
            let (start, slot) = (entry.items.len(), entry.slot);
            let stop = start.saturating_add(budget).min(max_items);
            let run = run_of_key(
                this.stream.as_mut(),
                this.key,
                limiter,
                entry,
                &key,
                stop,
                (value, weight),
                cx,
            );
            let (len, total) = (entry.items.len(), entry.total);
            match run {
                Run::Split(value, weight) => {
                    this.state.grace = budget - (len - start) - 1;
                    return this.split(slot, key, value, weight, &mut now);
                }
                Run::Stop => match limiter.closes(len, total) {
                    Some(reason) => {
                        this.state.grace = budget - (len - start);
                        return this.close(slot, reason);
                    }
                    None => budget = 0,
                },
                Run::Other(next) => {
                    budget -= len - start;
                    carried = Some(next);
                }
            }
        }
        this.wait(budget == 0, cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let open = self.state.len();
        let held = usize::from(self.pending_error.is_some());
        let (lower, upper) = self.stream.size_hint();
        let max_items = self.state.limiter.max_items();
        let lower = if held == 1 {
            // The open batches, the error, then the upcoming values packed tightly.
            open + 1 + lower.div_ceil(max_items)
        } else {
            // Every open batch is yielded, and every value in a batch of at most `max_items`.
            open.max(
                self.state
                    .iter()
                    .map(|(_, values)| values.len())
                    .sum::<usize>()
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
    K: Hash + Eq + Clone + TracedKey,
    W: Weigh<St::Ok>,
    I: ByKeyOutput<St::Ok>,
{
    fn is_terminated(&self) -> bool {
        self.stream.is_terminated() && self.state.len() == 0 && self.pending_error.is_none()
    }
}

impl<St, K, F, W, I> Proj<'_, St, K, F, W, I>
where
    St: TryStream,
    F: FnMut(&St::Ok) -> K,
    K: Hash + Eq + Clone + TracedKey,
    W: Weigh<St::Ok>,
    I: ByKeyOutput<St::Ok>,
{
    /// What is owed before more values are taken: a value due alone, the batches held
    /// before an error and then the error, the batches left at the end, and (after a batch
    /// a value or a deadline closed, or a yield) the batches whose deadlines have passed,
    /// once the grace that lets data win is spent.
    fn owed(&mut self) -> Option<Polled<St, K, I>> {
        if let Some(slot) = self.state.due.take() {
            return Some(self.close(slot, FlushReason::Weight));
        }
        if self.pending_error.is_some() {
            return Some(match self.state.close_oldest(FlushReason::Error) {
                Some(batch) => self.yield_batch(batch, FlushReason::Error),
                None => Poll::Ready(self.pending_error.take().map(Err)),
            });
        }
        if self.stream.is_terminated() {
            return Some(match self.state.close_oldest(FlushReason::End) {
                Some(batch) => self.yield_batch(batch, FlushReason::End),
                None => {
                    self.timer.as_mut().clear();
                    Poll::Ready(None)
                }
            });
        }
        if self.state.expired_first {
            match self.state.oldest() {
                // Data wins: values already available are taken first, while the grace lasts.
                Some(oldest) if oldest.deadline <= Instant::now() => {
                    if self.state.grace == 0 {
                        return Some(self.close_oldest(FlushReason::Deadline));
                    }
                }
                _ => {
                    self.state.expired_first = false;
                    self.state.grace = BUDGET;
                }
            }
        }
        None
    }

    /// Holds `error` back behind the open batches, or yields it if none is open.
    fn hold_error(&mut self, error: St::Error) -> Polled<St, K, I> {
        match self.state.close_oldest(FlushReason::Error) {
            Some(batch) => {
                *self.pending_error = Some(error);
                self.yield_batch(batch, FlushReason::Error)
            }
            None => Poll::Ready(Some(Err(error))),
        }
    }

    /// Opens `key`'s batch with `value`, its deadline `timeout` after `now` (the clock is
    /// read once per poll, for every batch it opens), evicting the oldest batch if
    /// `max_open_keys` are open. A value that closes its batch by itself opens nothing.
    fn open(
        &mut self,
        key: K,
        value: St::Ok,
        weight: W::Weight,
        now: &mut Option<Instant>,
    ) -> Option<Polled<St, K, I>> {
        let total = W::add(Default::default(), weight);
        if let Some(reason) = self.state.limiter.closes(1, total) {
            self.state.expired_first = true;
            self.state.last_flush = Some(reason);
            let weight = self.state.limiter.report(total);
            crate::adapters::batch::trace::flushed(reason, 1, weight, None, Some(&key));
            return Some(Poll::Ready(Some(Ok((
                key,
                I::close(vec![value], reason, weight, None),
            )))));
        }
        let evicted = (self.state.len() >= self.state.max_open_keys)
            .then(|| self.state.close_oldest(FlushReason::Eviction))
            .flatten();
        let opened = *now.get_or_insert_with(Instant::now);
        let deadline = deadline_after(opened, *self.timeout);
        self.state.open(key, value, total, opened, deadline);
        let batch = evicted?;
        self.state.expired_first = true;
        Some(self.yield_batch(batch, FlushReason::Eviction))
    }

    /// `value` would push its key's batch (in `slot`) past `max_weight`: the batch closes
    /// and the value starts the key's next one, with a deadline of its own.
    #[cold]
    fn split(
        &mut self,
        slot: usize,
        key: K,
        value: St::Ok,
        weight: W::Weight,
        now: &mut Option<Instant>,
    ) -> Polled<St, K, I> {
        let closed = self.state.close(slot, FlushReason::Weight);
        let total = W::add(Default::default(), weight);
        let opened = *now.get_or_insert_with(Instant::now);
        let slot = self.state.open(
            key,
            value,
            total,
            opened,
            deadline_after(opened, *self.timeout),
        );
        if self.state.limiter.closes(1, total).is_some() {
            self.state.due = Some(slot);
        }
        self.state.expired_first = true;
        self.yield_batch(closed, FlushReason::Weight)
    }

    /// Closes the batch in `slot` for `reason` and yields it.
    fn close(&mut self, slot: usize, reason: FlushReason) -> Polled<St, K, I> {
        self.state.expired_first = true;
        let batch = self.state.close(slot, reason);
        self.yield_batch(batch, reason)
    }

    fn close_oldest(&mut self, reason: FlushReason) -> Polled<St, K, I> {
        self.state.expired_first = true;
        let batch = self.state.close_oldest(reason).expect("an open batch");
        self.yield_batch(batch, reason)
    }

    /// Nothing ready, or the budget spent: the oldest batch's deadline is the next event.
    fn wait(&mut self, yielded: bool, cx: &mut Context<'_>) -> Polled<St, K, I> {
        let Some(deadline) = self.state.oldest().map(|batch| batch.deadline) else {
            self.state.grace = BUDGET;
            self.timer.as_mut().clear();
            return Poll::Pending;
        };
        if yielded {
            // A cooperative yield: expired deadlines come first when polled again.
            self.state.expired_first = true;
            self.state.grace = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if self.timeout.is_zero() || self.timer.as_mut().poll_until(deadline, cx).is_ready() {
            // The upstream has nothing ready: every expired batch comes out now.
            self.state.grace = 0;
            return self.close_oldest(FlushReason::Deadline);
        }
        self.state.grace = BUDGET;
        Poll::Pending
    }

    /// Yields a closed batch. A timer set for its deadline moves to the next oldest batch's
    /// (later) deadline, or goes when none is open, so that it never wakes the task for a
    /// batch that is gone.
    fn yield_batch(
        &mut self,
        batch: Batch<K, St::Ok, W::Weight>,
        reason: FlushReason,
    ) -> Polled<St, K, I> {
        self.state.last_flush = Some(reason);
        if self.timer.deadline() == Some(batch.deadline) {
            match self.state.oldest().map(|oldest| oldest.deadline) {
                Some(next) if next == batch.deadline => {}
                Some(next) => self.timer.as_mut().retarget(next),
                None => self.timer.as_mut().clear(),
            }
        }
        let Batch {
            key,
            items,
            total,
            opened,
            ..
        } = batch;
        let weight = self.state.limiter.report(total);
        crate::adapters::batch::trace::flushed(
            reason,
            items.len(),
            weight,
            Some(opened),
            Some(&key),
        );
        Poll::Ready(Some(Ok((
            key,
            I::close(items, reason, weight, Some(opened)),
        ))))
    }
}
