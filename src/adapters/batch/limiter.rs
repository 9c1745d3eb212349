//! The limits that close a batch: `max_items` always, and `max_weight` when a `weigh`
//! function is given.

use core::fmt;

use super::info::FlushReason;

/// The most values a new batch reserves room for at once (a longer batch grows by doubling).
const PREALLOCATE_MAX: usize = 1 << 16;

/// The weight half of a batch's limits: [`NoWeight`] (the default, zero-sized: nothing is
/// weighed), [`MaxWeight`] (set by `.max_weight(max_weight, weigh)`) or
/// `Option<MaxWeight>` (set by `.max_weight_opt(max_weight, weigh)`, for a cap known only
/// at run time: `None` weighs nothing and caps nothing).
///
/// Sealed: it is implemented only by those types.
pub trait Weigh<T>: sealed::Weigher<T> {}

impl<T> Weigh<T> for NoWeight {}
impl<T, F: FnMut(&T) -> usize> Weigh<T> for MaxWeight<F> {}
impl<T, F: FnMut(&T) -> usize> Weigh<T> for Option<MaxWeight<F>> {}

pub(crate) mod sealed {
    /// How a value is weighed and when a batch's weight closes it.
    ///
    /// For [`NoWeight`](super::NoWeight) every method is a constant, so a count-only batch
    /// pays nothing per value for the weight rules.
    pub trait Weigher<T> {
        /// One value's weight, and a batch's running total: `()` when nothing is weighed.
        type Weight: Copy + Default + core::fmt::Debug;

        /// Whether a value can ever close a non-empty batch before it joins it, leaving
        /// itself as the first value of the next one (a constant, false without a weight).
        const SPLITS: bool;

        /// Weighs `value`; called exactly once per value.
        fn weigh(&mut self, value: &T) -> Self::Weight;

        /// Whether a non-empty batch weighing `total` must close before taking a value of
        /// `weight`: the value would push it past `max_weight`.
        fn overflows(&self, total: Self::Weight, weight: Self::Weight) -> bool;

        /// The room left below `max_weight` in a batch weighing `total`: the form of the
        /// running total that the per-value path keeps in a register.
        fn room(&self, total: Self::Weight) -> Self::Weight;

        /// `room` less a value of `weight`, if some room is left after it (it joins without
        /// any weight rule applying). Always `Some` without a weight cap.
        fn take_room(room: Self::Weight, weight: Self::Weight) -> Option<Self::Weight>;

        /// The total of a batch with `room` left (the inverse of [`room`](Self::room)).
        fn total_from_room(&self, room: Self::Weight) -> Self::Weight;

        /// `total` with a value of `weight` added, for a value that does not overflow it (a
        /// first value, or one that [`overflows`](Self::overflows) said fits).
        fn add(total: Self::Weight, weight: Self::Weight) -> Self::Weight;

        /// Whether a batch weighing `total` is full by weight (`total >= max_weight`).
        fn is_full(&self, total: Self::Weight) -> bool;

        /// The total as reported in [`BatchInfo::weight`](super::super::BatchInfo::weight).
        fn report(&self, total: Self::Weight) -> Option<usize>;
    }
}

/// No weight cap: batches are limited by count only, and no value is weighed.
///
/// Zero-sized; every weight rule compiles away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoWeight;

impl<T> sealed::Weigher<T> for NoWeight {
    type Weight = ();
    const SPLITS: bool = false;

    #[inline(always)]
    fn weigh(&mut self, _: &T) {}

    #[inline(always)]
    fn overflows(&self, (): (), (): ()) -> bool {
        false
    }

    #[inline(always)]
    fn room(&self, (): ()) {}

    #[inline(always)]
    fn take_room((): (), (): ()) -> Option<()> {
        Some(())
    }

    #[inline(always)]
    fn total_from_room(&self, (): ()) {}

    #[inline(always)]
    fn add((): (), (): ()) {}

    #[inline(always)]
    fn is_full(&self, (): ()) -> bool {
        false
    }

    #[inline(always)]
    fn report(&self, (): ()) -> Option<usize> {
        None
    }
}

/// A weight cap: each value is weighed once by `weigh`, and a batch holds at most
/// `max_weight` in total, unless it is a single value heavier than that.
#[derive(Clone, Copy)]
pub struct MaxWeight<F> {
    weigh: F,
    max_weight: usize,
}

impl<F> MaxWeight<F> {
    /// Panics, at the caller's location, if `max_weight` is zero; `adapter` names the
    /// method in the message.
    #[track_caller]
    pub(crate) fn new(adapter: &str, max_weight: usize, weigh: F) -> Self {
        assert!(
            max_weight > 0,
            "{adapter}: `max_weight` must be greater than zero"
        );
        Self { weigh, max_weight }
    }

    /// [`new`](Self::new) for a cap known only at run time: `None` caps nothing.
    #[track_caller]
    pub(crate) fn new_opt(adapter: &str, max_weight: Option<usize>, weigh: F) -> Option<Self> {
        // Not `Option::map`: `#[track_caller]` does not reach into a closure.
        Some(Self::new(adapter, max_weight?, weigh))
    }

    /// The most a batch of more than one value may weigh.
    pub fn max_weight(&self) -> usize {
        self.max_weight
    }
}

impl<F> fmt::Debug for MaxWeight<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaxWeight")
            .field("max_weight", &self.max_weight())
            .finish_non_exhaustive()
    }
}

impl<T, F: FnMut(&T) -> usize> sealed::Weigher<T> for MaxWeight<F> {
    type Weight = usize;
    const SPLITS: bool = true;

    #[inline]
    fn weigh(&mut self, value: &T) -> usize {
        (self.weigh)(value)
    }

    #[inline]
    fn overflows(&self, total: usize, weight: usize) -> bool {
        // A sum past `usize::MAX` is past any cap.
        total
            .checked_add(weight)
            .is_none_or(|sum| sum > self.max_weight)
    }

    #[inline(always)]
    fn room(&self, total: usize) -> usize {
        self.max_weight.saturating_sub(total)
    }

    #[inline(always)]
    fn take_room(room: usize, weight: usize) -> Option<usize> {
        if weight < room {
            Some(room - weight)
        } else {
            None
        }
    }

    #[inline(always)]
    fn total_from_room(&self, room: usize) -> usize {
        self.max_weight - room
    }

    #[inline]
    fn add(total: usize, weight: usize) -> usize {
        total + weight
    }

    #[inline]
    fn is_full(&self, total: usize) -> bool {
        total >= self.max_weight
    }

    #[inline]
    fn report(&self, total: usize) -> Option<usize> {
        Some(total)
    }
}

/// A cap known only at run time: `None` calls no `weigh` and never closes a batch by weight.
impl<T, F: FnMut(&T) -> usize> sealed::Weigher<T> for Option<MaxWeight<F>> {
    type Weight = usize;
    const SPLITS: bool = true;

    #[inline]
    fn weigh(&mut self, value: &T) -> usize {
        self.as_mut().map_or(0, |cap| cap.weigh(value))
    }

    #[inline]
    fn overflows(&self, total: usize, weight: usize) -> bool {
        self.as_ref()
            .is_some_and(|cap| sealed::Weigher::<T>::overflows(cap, total, weight))
    }

    #[inline(always)]
    fn room(&self, total: usize) -> usize {
        self.as_ref()
            .map_or(usize::MAX, |cap| cap.max_weight.saturating_sub(total))
    }

    #[inline(always)]
    fn take_room(room: usize, weight: usize) -> Option<usize> {
        <MaxWeight<F> as sealed::Weigher<T>>::take_room(room, weight)
    }

    #[inline(always)]
    fn total_from_room(&self, room: usize) -> usize {
        self.as_ref()
            .map_or(usize::MAX - room, |cap| cap.max_weight - room)
    }

    #[inline]
    fn add(total: usize, weight: usize) -> usize {
        total + weight
    }

    #[inline]
    fn is_full(&self, total: usize) -> bool {
        self.as_ref().is_some_and(|cap| total >= cap.max_weight)
    }

    #[inline]
    fn report(&self, total: usize) -> Option<usize> {
        self.as_ref().map(|_| total)
    }
}

/// A batch's limits: at most `max_items` values, and the weight rules of `W`.
///
/// The rules, for a batcher holding `len` values weighing `total` when a value arrives:
/// 1. [`weigh`](Self::weigh) it (exactly once);
/// 2. if [`splits`](Self::splits) says so, the open batch closes first
///    ([`FlushReason::Weight`]) and the value becomes the first of the next batch;
/// 3. otherwise it joins the batch, and [`closes`](Self::closes) tells whether the batch is
///    now closed: [`FlushReason::Full`] at `max_items` values, [`FlushReason::Weight`] once
///    its total reaches `max_weight` (a lone value heavier than `max_weight` closes its batch
///    at once).
///
/// Greedy packing follows: on a ready upstream, each batch is the longest run of values
/// that fits both caps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limiter<W> {
    max_items: usize,
    weigher: W,
}

impl<W> Limiter<W> {
    /// Limits of `max_items` values (checked by the caller, which names its own method in
    /// the panic) and `weigher`'s weight rules.
    pub(crate) fn new(max_items: usize, weigher: W) -> Self {
        debug_assert!(max_items > 0);
        Self { max_items, weigher }
    }

    /// The most values a batch holds.
    #[inline(always)]
    pub(crate) fn max_items(&self) -> usize {
        self.max_items
    }

    /// The same count limit with other weight rules.
    pub(crate) fn with_weigher<V>(self, weigher: V) -> Limiter<V> {
        Limiter {
            max_items: self.max_items,
            weigher,
        }
    }

    /// Weighs a value that just arrived: called exactly once per value.
    #[inline(always)]
    pub(crate) fn weigh<T>(&mut self, value: &T) -> W::Weight
    where
        W: Weigh<T>,
    {
        self.weigher.weigh(value)
    }

    /// Whether the open batch (`len` values weighing `total`) must close before a value of
    /// `weight` joins it. Always false for an empty batch, and without a weight cap.
    #[inline(always)]
    pub(crate) fn splits<T>(&self, len: usize, total: W::Weight, weight: W::Weight) -> bool
    where
        W: Weigh<T>,
    {
        W::SPLITS && self.weigher.overflows(total, weight) && len > 0
    }

    /// The room left below `max_weight` in a batch weighing `total` (below `max_weight`),
    /// for a per-value loop that keeps it in a register: [`take_room`](Self::take_room) per
    /// value, [`total_from_room`](Self::total_from_room) when the loop ends.
    #[inline(always)]
    pub(crate) fn room<T>(&self, total: W::Weight) -> W::Weight
    where
        W: Weigh<T>,
    {
        self.weigher.room(total)
    }

    /// `room` less a value of `weight` if some room is left after it: the value joins the
    /// open batch without any weight rule applying (the fast path). When `None`, the value
    /// either closes the batch first ([`splits`](Self::splits)) or joins it and closes it
    /// ([`closes`](Self::closes)). A constant `Some` without a weight cap.
    #[inline(always)]
    pub(crate) fn take_room<T>(room: W::Weight, weight: W::Weight) -> Option<W::Weight>
    where
        W: Weigh<T>,
    {
        W::take_room(room, weight)
    }

    /// The total of a batch with `room` left.
    #[inline(always)]
    pub(crate) fn total_from_room<T>(&self, room: W::Weight) -> W::Weight
    where
        W: Weigh<T>,
    {
        self.weigher.total_from_room(room)
    }

    /// Whether a batch of `len` values weighing `total` is closed, and why.
    #[inline(always)]
    pub(crate) fn closes<T>(&self, len: usize, total: W::Weight) -> Option<FlushReason>
    where
        W: Weigh<T>,
    {
        if len >= self.max_items {
            Some(FlushReason::Full)
        } else if self.weigher.is_full(total) {
            Some(FlushReason::Weight)
        } else {
            None
        }
    }

    /// Whether a batch weighing `total` is full by weight; a constant `false` without a cap.
    #[inline(always)]
    pub(crate) fn full_by_weight<T>(&self, total: W::Weight) -> bool
    where
        W: Weigh<T>,
    {
        self.weigher.is_full(total)
    }

    /// The total as reported in [`BatchInfo::weight`](super::BatchInfo::weight): `None`
    /// without a cap.
    #[inline(always)]
    pub(crate) fn report<T>(&self, total: W::Weight) -> Option<usize>
    where
        W: Weigh<T>,
    {
        self.weigher.report(total)
    }

    /// The buffer of a new batch that reserves room for `reserve` values (0: none; see
    /// [`reserve_after`](Self::reserve_after)), at most 65,536 (a longer batch grows by
    /// doubling).
    #[inline(always)]
    pub(crate) fn new_batch<T>(&self, reserve: usize) -> Vec<T> {
        match reserve {
            0 => Vec::new(),
            _ => Vec::with_capacity(reserve.min(PREALLOCATE_MAX)),
        }
    }

    /// What the batch after one closed for `reason` with `len` values reserves. A batch that
    /// closed full, by count or by weight, has shown how long batches get: the next one
    /// reserves that length (`max_items` after a count close), at most 65,536 values, in one
    /// allocation. Any other batch (the first one among them) starts empty and grows by
    /// doubling as a `Vec` does, so that it holds memory in proportion to its values.
    #[inline(always)]
    pub(crate) fn reserve_after(&self, reason: FlushReason, len: usize) -> usize {
        match reason {
            FlushReason::Full | FlushReason::Weight => len,
            _ => 0,
        }
    }
}
