//! Why a batch closed, and what `.with_batch_info()` reports with it.

use std::time::Duration;

use tokio::time::Instant;

/// Why a batching adapter yielded a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FlushReason {
    /// The batch reached `max_items` values.
    Full,
    /// The batch reached `max_weight`, or the next value would have pushed it past
    /// `max_weight` (that value starts the next batch), or it is a single value heavier than
    /// `max_weight`.
    Weight,
    /// The batch's deadline (`timeout` after its first value arrived) passed.
    Deadline,
    /// An `Err` arrived; it is yielded on the next poll.
    Error,
    /// The upstream ended.
    End,
    /// A per-key batcher closed the batch to make room for a new key's batch.
    Eviction,
}

/// What `.with_batch_info()` reports with each batch: why it closed, its total weight and
/// its age.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchInfo {
    reason: FlushReason,
    weight: Option<usize>,
    age: Duration,
}

impl BatchInfo {
    /// Info for a batch closed for `reason`, weighing `weight` (`None` without a weight cap)
    /// whose first value arrived `age` before it closed.
    pub(crate) fn new(reason: FlushReason, weight: Option<usize>, age: Duration) -> Self {
        Self {
            reason,
            weight,
            age,
        }
    }

    /// Why the batch closed.
    pub fn reason(&self) -> FlushReason {
        self.reason
    }

    /// The sum of the batch's weights, exact (a sum that would pass `usize::MAX` is past
    /// any cap, so a batch never holds one), or `None` without a weight cap (no
    /// `.max_weight(..)`, or `.max_weight_opt(None, ..)`).
    pub fn weight(&self) -> Option<usize> {
        self.weight
    }

    /// The time from the arrival of the batch's first value (when the adapter took it from
    /// the upstream) to the batch's closing, on the `tokio::time` clock.
    pub fn age(&self) -> Duration {
        self.age
    }
}

/// What a batching adapter yields for each batch: the batch alone ([`NoInfo`], the default)
/// or the batch with its [`BatchInfo`] ([`WithInfo`], set by `.with_batch_info()`).
///
/// Sealed: it is implemented only by those two types.
pub trait BatchOutput<T>: sealed::Output<T> {}

impl<T> BatchOutput<T> for NoInfo {}
impl<T> BatchOutput<T> for WithInfo {}

pub(crate) mod sealed {
    use tokio::time::Instant;

    use super::FlushReason;

    /// The hooks a batching adapter calls.
    pub trait Output<T> {
        /// What the adapter yields for one batch.
        type Batch;

        /// Called as a value joins a batch that held `len` values: always for the first
        /// value of a batch (`len == 0`), possibly for others; only `len == 0` counts.
        fn arrives(&mut self, len: usize);

        /// Forgets the open batch: its values were taken out without being yielded.
        fn clear(&mut self);

        /// Turns a closed batch into what is yielded.
        fn finish(
            &mut self,
            batch: Vec<T>,
            reason: FlushReason,
            weight: Option<usize>,
        ) -> Self::Batch;

        /// What is yielded for a batch closed for `reason`, weighing `weight`, whose first
        /// value arrived at `first` (`None`: in the poll that closes it, or never timed).
        fn output(
            batch: Vec<T>,
            reason: FlushReason,
            weight: Option<usize>,
            first: Option<Instant>,
        ) -> Self::Batch;
    }
}

/// Batches are yielded as they are, `Vec<T>`; no clock is read for them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoInfo;

impl<T> sealed::Output<T> for NoInfo {
    type Batch = Vec<T>;

    #[inline(always)]
    fn arrives(&mut self, _: usize) {}

    #[inline(always)]
    fn clear(&mut self) {}

    #[inline(always)]
    fn finish(&mut self, batch: Vec<T>, _: FlushReason, _: Option<usize>) -> Vec<T> {
        batch
    }

    #[inline(always)]
    fn output(batch: Vec<T>, _: FlushReason, _: Option<usize>, _: Option<Instant>) -> Vec<T> {
        batch
    }
}

/// Batches are yielded as `(Vec<T>, BatchInfo)`. The clock is read twice per batch: when
/// its first value arrives and when it closes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WithInfo {
    first_arrived: Option<Instant>,
}

impl<T> sealed::Output<T> for WithInfo {
    type Batch = (Vec<T>, BatchInfo);

    #[inline]
    fn arrives(&mut self, len: usize) {
        if len == 0 {
            self.first_arrived = Some(Instant::now());
        }
    }

    fn clear(&mut self) {
        self.first_arrived = None;
    }

    fn finish(
        &mut self,
        batch: Vec<T>,
        reason: FlushReason,
        weight: Option<usize>,
    ) -> (Vec<T>, BatchInfo) {
        let first = self.first_arrived.take();
        <Self as sealed::Output<T>>::output(batch, reason, weight, first)
    }

    fn output(
        batch: Vec<T>,
        reason: FlushReason,
        weight: Option<usize>,
        first: Option<Instant>,
    ) -> (Vec<T>, BatchInfo) {
        let age = match first {
            Some(first) => Instant::now().saturating_duration_since(first),
            None => Duration::ZERO,
        };
        (batch, BatchInfo::new(reason, weight, age))
    }
}
