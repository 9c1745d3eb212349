use core::hash::Hash;
use core::ops::ControlFlow;
use core::pin::Pin;
use core::task::{Context, Poll};

use futures_core::stream::{FusedStream, Stream, TryStream};
use tokio::time::Instant;

use super::open::{DORMANT, Entry, Which};
use super::{ChunksTimeoutByKeyResult, Proj};
use crate::adapters::batch::info::sealed::Output;
use crate::adapters::batch::trace::{self, Shown};
use crate::adapters::batch::{BUDGET, BatchOutput, Drained, FlushReason, Limiter, Upstream, Weigh};

type Item<St, K, I> =
    Result<(K, <I as Output<<St as TryStream>::Ok>>::Batch), <St as TryStream>::Error>;
type Polled<St, K, I> = Poll<Option<Item<St, K, I>>>;

// What the upstream gave; a value's key and weight are each computed exactly once.
enum Next<T, K, Wt, E> {
    Value(T, K, Wt),
    Err(E),
    End,
    Pending,
}

// Why a run of one key's values stopped (`Stop(None)`: the budget is spent).
enum Run<T, K, Wt, E> {
    Split(T, Wt),
    Stop(Option<FlushReason>),
    Other(Next<T, K, Wt, E>),
}

#[inline(always)]
fn keyed<T, K, W: Weigh<T>, E>(
    item: Result<T, E>,
    key_of: &mut impl FnMut(&T) -> K,
    limiter: &mut Limiter<W>,
) -> Next<T, K, W::Weight, E> {
    match item {
        Ok(value) => {
            let weight = limiter.weigh(&value);
            let key = key_of(&value);
            Next::Value(value, key, weight)
        }
        Err(error) => Next::Err(error),
    }
}

#[inline(always)]
fn pull<St: TryStream, K, W: Weigh<St::Ok>>(
    stream: Pin<&mut Upstream<St>>,
    key_of: &mut impl FnMut(&St::Ok) -> K,
    limiter: &mut Limiter<W>,
    cx: &mut Context<'_>,
) -> Next<St::Ok, K, W::Weight, St::Error> {
    match stream.poll_next(cx) {
        Poll::Ready(Some(item)) => keyed(item, key_of, limiter),
        Poll::Ready(None) => Next::End,
        Poll::Pending => Next::Pending,
    }
}

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
        return ControlFlow::Break(Run::Stop(limiter.closes(entry.items.len(), entry.total)));
    }
    ControlFlow::Continue(())
}

// Adds `value` and the values of `key` right behind it to `key`'s batch, up to `stop` values.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn run_of_key<St: TryStream, K: Eq, W: Weigh<St::Ok>>(
    stream: Pin<&mut Upstream<St>>,
    key_of: &mut impl FnMut(&St::Ok) -> K,
    limiter: &mut Limiter<W>,
    entry: &mut Entry<St::Ok, W::Weight>,
    key: &K,
    stop: usize,
    (value, weight): (St::Ok, W::Weight),
    cx: &mut Context<'_>,
) -> Run<St::Ok, K, W::Weight, St::Error> {
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
    let drained = stream.poll_each(cx, |item| match keyed(item, key_of, limiter) {
        Next::Value(value, next_key, weight) if next_key == *key => {
            join(entry, limiter, stop, value, weight)
        }
        other => ControlFlow::Break(Run::Other(other)),
    });
    match drained {
        Drained::Break(run) => run,
        Drained::Pending => Run::Other(Next::Pending),
        Drained::Ended => Run::Other(Next::End),
    }
}

impl<St, K, F, W, I> Stream for ChunksTimeoutByKeyResult<St, K, F, W, I>
where
    St: TryStream,
    F: FnMut(&St::Ok) -> K,
    K: Hash + Eq + Clone,
    W: Weigh<St::Ok>,
    I: BatchOutput<St::Ok>,
{
    type Item = Item<St, K, I>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        if let Some(owed) = this.owed() {
            return owed;
        }
        // Data first: what the upstream has ready joins its batches, at most `BUDGET` values
        // (fewer if a deadline has passed: the grace left).
        let (mut budget, mut now) = (this.state.grace, None);
        let max_items = this.state.limiter.max_items();
        let mut next = pull(this.stream.as_mut(), this.key, &mut this.state.limiter, cx);
        loop {
            let (value, key, weight) = match next {
                Next::Value(value, key, weight) => (value, key, weight),
                Next::Err(error) => {
                    *this.pending_error = Some(error); // Held back behind the open batches.
                    return this.owed().expect("the open batches, then the error");
                }
                Next::End => return this.owed().expect("the open batches, then the end"),
                Next::Pending => break,
            };
            let state = &mut *this.state;
            let entry = state
                .index
                .get_mut(&key)
                .filter(|entry| entry.seq != DORMANT);
            let (Some(entry), limiter) = (entry, &mut state.limiter) else {
                (budget, this.state.grace) = (budget - 1, budget - 1);
                if let Some(ready) = this.open(key, value, weight, &mut now) {
                    return ready;
                } else if budget == 0 {
                    break;
                }
                next = pull(this.stream.as_mut(), this.key, &mut this.state.limiter, cx);
                continue;
            };
            // `key`'s batch is open: its next values go straight into it, without looking the
            // key up again. `stop` counts the budget in.
            let start = entry.items.len();
            let stop = start.saturating_add(budget).min(max_items);
            let (stream, item) = (this.stream.as_mut(), (value, weight));
            let run = run_of_key(stream, this.key, limiter, entry, &key, stop, item, cx);
            budget -= entry.items.len() - start;
            // Values not taken yet count against the grace (`wait` sets it, if reached).
            this.state.grace = budget;
            match run {
                Run::Split(value, weight) => return this.split(key, value, weight, now),
                Run::Stop(Some(reason)) => return this.close(Which::Key(key), reason),
                Run::Stop(None) => break, // The budget is spent.
                Run::Other(item) => next = item,
            }
        }
        this.wait(budget == 0, cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let (open, held) = (self.state.open, usize::from(self.pending_error.is_some()));
        let (lower, upper) = self.stream.size_hint();
        let upcoming = lower.div_ceil(self.state.limiter.max_items());
        // At least the open batches and the upcoming values, packed (alone after a held error).
        let lower = (open + held).saturating_add(held * upcoming).max(upcoming);
        (lower, upper.and_then(|n| n.checked_add(open + held)))
    }
}

impl<St, K, F, W, I> FusedStream for ChunksTimeoutByKeyResult<St, K, F, W, I>
where
    Self: Stream,
    St: TryStream,
    W: Weigh<St::Ok>,
{
    fn is_terminated(&self) -> bool {
        self.stream.is_terminated() && self.state.open == 0 && self.pending_error.is_none()
    }
}

impl<St, K, F, W, I> Proj<'_, St, K, F, W, I>
where
    St: TryStream,
    K: Hash + Eq + Clone,
    W: Weigh<St::Ok>,
    I: BatchOutput<St::Ok>,
{
    // Owed before more values are taken: a value due alone, the open batches then the held
    // error or the end, and (after a yield) the expired batches once the grace is spent.
    fn owed(&mut self) -> Option<Polled<St, K, I>> {
        if core::mem::take(&mut self.state.due) {
            return Some(self.close(Which::Newest, FlushReason::Weight));
        }
        if self.pending_error.is_some() || self.stream.is_terminated() {
            if self.state.open > 0 {
                let reason = match self.pending_error {
                    Some(_) => FlushReason::Error,
                    None => FlushReason::End,
                };
                return Some(self.close(Which::Oldest, reason));
            }
            self.timer.as_mut().clear();
            return Some(Poll::Ready(self.pending_error.take().map(Err)));
        }
        if self.state.expired_first {
            match self.state.queue.front() {
                // Data wins: values already available are taken first, while the grace lasts.
                Some(oldest) if oldest.deadline <= Instant::now() => {
                    if !self.state.grace_after_deadline {
                        // The first poll to see it passed: data wins for a full budget.
                        (self.state.grace, self.state.grace_after_deadline) = (BUDGET, true);
                    } else if self.state.grace == 0 {
                        return Some(self.close(Which::Oldest, FlushReason::Deadline));
                    }
                }
                _ => {
                    (self.state.expired_first, self.state.grace) = (false, BUDGET);
                    self.state.grace_after_deadline = false;
                }
            }
        }
        None
    }

    // `now` is read once per poll; a value that closes its batch by itself opens nothing.
    fn open(
        &mut self,
        key: K,
        value: St::Ok,
        weight: W::Weight,
        now: &mut Option<Instant>,
    ) -> Option<Polled<St, K, I>> {
        let total = W::add(Default::default(), weight);
        if let Some(reason) = self.state.limiter.closes(1, total) {
            return Some(self.emit(key, vec![value], total, None, reason));
        }
        let full = self.state.open >= self.state.max_open_keys;
        let evicted = full.then(|| self.close(Which::Oldest, FlushReason::Eviction));
        self.state
            .open(key, value, total, *now.get_or_insert_with(Instant::now));
        evicted
    }

    // `value` would push `key`'s batch past `max_weight`: it starts the key's next batch.
    #[cold]
    fn split(
        &mut self,
        key: K,
        value: St::Ok,
        weight: W::Weight,
        now: Option<Instant>,
    ) -> Polled<St, K, I> {
        self.state.grace -= 1; // The value that splits is taken too.
        let closed = self.close(Which::Key(key.clone()), FlushReason::Weight);
        let total = W::add(Default::default(), weight);
        self.state
            .open(key, value, total, now.unwrap_or_else(Instant::now));
        self.state.due = self.state.limiter.closes(1, total).is_some();
        closed
    }

    fn wait(&mut self, yielded: bool, cx: &mut Context<'_>) -> Polled<St, K, I> {
        let Some(deadline) = self.state.queue.front().map(|batch| batch.deadline) else {
            (self.state.grace, self.state.grace_after_deadline) = (BUDGET, false);
            self.timer.as_mut().clear();
            return Poll::Pending;
        };
        if yielded {
            // A cooperative yield: expired deadlines come first when polled again.
            (self.state.grace, self.state.expired_first) = (0, true);
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if self.state.timeout.is_zero() || self.timer.as_mut().poll_until(deadline, cx).is_ready() {
            // The upstream has nothing ready: every expired batch comes out now.
            (self.state.grace, self.state.grace_after_deadline) = (0, true);
            return self.close(Which::Oldest, FlushReason::Deadline);
        }
        (self.state.grace, self.state.grace_after_deadline) = (BUDGET, false);
        Poll::Pending
    }

    // A set timer follows the oldest deadline, or goes with the last batch.
    fn close(&mut self, which: Which<K>, reason: FlushReason) -> Polled<St, K, I> {
        let (key, batch) = self.state.close(which, reason).expect("an open batch");
        match (self.timer.deadline(), self.state.queue.front()) {
            (Some(at), Some(next)) if next.deadline != at => {
                self.timer.as_mut().retarget(next.deadline)
            }
            (Some(_), None) => self.timer.as_mut().clear(),
            _ => {}
        }
        self.emit(key, batch.items, batch.total, Some(batch.opened), reason)
    }

    // `opened`: `None` for a batch whose first value arrived in this poll.
    fn emit(
        &mut self,
        key: K,
        items: Vec<St::Ok>,
        total: W::Weight,
        opened: Option<Instant>,
        reason: FlushReason,
    ) -> Polled<St, K, I> {
        (self.state.last_flush, self.state.expired_first) = (Some(reason), true);
        let weight = self.state.limiter.report(total);
        let shown = self.trace_key.map(|show| Shown(&key, show));
        let shown = shown.as_ref().map(|shown| shown as &dyn core::fmt::Debug);
        // A batch closed by its only value opened now (age 0), for the event too.
        let timed = opened.or_else(|| cfg!(feature = "tracing").then(Instant::now));
        trace::flushed(reason, items.len(), weight, timed, shown);
        Poll::Ready(Some(Ok((key, I::output(items, reason, weight, opened)))))
    }
}
