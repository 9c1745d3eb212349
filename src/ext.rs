use std::future::Future;
use std::hash::Hash;
use std::time::Duration;

use futures_core::stream::Stream;

use crate::{
    ChunksTimeoutByKeyResult, ChunksTimeoutResult, CompensationScope, ForEachCompensated,
    ItemScope, MapOkStream,
};

/// Adapters for streams of `Result`s, implemented for every `Stream<Item = Result<T, E>>`.
///
/// ```
/// use result_stream::ResultStreamExt;
/// ```
pub trait ResultStreamExt<T, E>: Stream<Item = Result<T, E>> {
    /// Replaces each `Ok(t)` with the output of the future `f(t)`: the shape of futures'
    /// `TryStreamExt::and_then`, kept here so the whole pipeline is one chain on
    /// `ResultStreamExt` (see [`MapOkStream`]).
    ///
    /// Rules:
    /// - `f` is called once per `Ok` value; each upstream `Err(e)` is passed through
    ///   untouched and `f` is not called for it;
    /// - one future at a time: the next upstream item is not polled until the current future
    ///   has finished, so output order is input order;
    /// - the stream does not stop at an error, whether from upstream or from `f`: stopping is
    ///   the consumer's decision (see [`for_each_compensated`](Self::for_each_compensated)).
    ///
    /// ```
    /// use futures::{StreamExt, stream};
    /// use result_stream::ResultStreamExt;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let lines = stream::iter(vec![Ok("1"), Err("socket reset"), Ok("x"), Ok("3")]);
    /// let parsed: Vec<Result<u32, &str>> = lines
    ///     .map_ok_stream(|line| async move { line.parse::<u32>().map_err(|_| "not a number") })
    ///     .collect()
    ///     .await;
    /// assert_eq!(parsed, vec![Ok(1), Err("socket reset"), Err("not a number"), Ok(3)]);
    /// # }
    /// ```
    #[doc(alias = "and_then")]
    fn map_ok_stream<U, Fut, F>(self, f: F) -> MapOkStream<Self, Fut, F>
    where
        Self: Sized,
        F: FnMut(T) -> Fut,
        Fut: Future<Output = Result<U, E>>,
    {
        MapOkStream::new(self, f)
    }

    /// Buffers `Ok` values into batches and yields `Ok(batch)` when the first of these
    /// happens:
    /// 1. the batch holds `max_items` values;
    /// 2. `timeout` has passed since the first value of this batch arrived: a deadline per
    ///    batch, started by its first value and never extended by later ones. Exactly: the
    ///    deadline is `timeout` after the end of the poll in which the batch's first value
    ///    arrived (when the upstream first returns `Pending` with it buffered), so a value
    ///    waits at most `timeout` plus the time the upstream spent producing the values it had
    ///    ready in that poll: nothing to speak of for a channel, 270 ms for an upstream that
    ///    computes for 270 ms in one poll. This keeps the clock out of batches that fill from a
    ///    ready upstream;
    /// 3. an `Err(e)` arrives: the partial batch is yielded first, then `Err(e)` on the next
    ///    poll, then batching goes on with the next value;
    /// 4. the upstream ends: the partial batch is yielded at once, then `None`.
    ///
    /// Rules:
    /// - never an empty batch, never more than `max_items` values; no value is lost,
    ///   duplicated or reordered, and errors keep their place relative to the values around
    ///   them;
    /// - data wins ties: when the deadline has passed and the upstream has values ready, they
    ///   are taken into the batch first (up to `max_items`, and within the 4,096-value budget
    ///   of one poll, below), as tokio-stream's `chunks_timeout` does;
    /// - `timeout == Duration::ZERO` yields the batch as soon as the upstream has nothing
    ///   ready or the poll's budget is spent (a ready burst of 5,000 values comes out as
    ///   4,096 and 904);
    /// - the timer is `tokio::time`, so it needs a Tokio runtime with the time driver when
    ///   polled (not when constructed), and a paused clock makes it deterministic;
    /// - buffered values are never lost when the adapter is abandoned:
    ///   [`ChunksTimeoutResult::take_remainder`] takes them (and a held-back error) out of
    ///   a pinned adapter.
    /// - liveness: one `poll_next` takes at most 4,096 values from the upstream; past that
    ///   it wakes its task and returns `Pending` (a cooperative yield), and the batch's
    ///   deadline counts from the end of that poll, so an endless ready upstream still gets
    ///   its `Deadline` batches after a bounded amount of work;
    /// - memory: a batch after one that closed by count reserves its full size,
    ///   `min(max_items, 65_536)` values, in one allocation, and a batch after one that
    ///   closed by weight reserves that batch's length (at most 65,536), growing by
    ///   doubling past it; the first batch, and a batch after one that closed otherwise
    ///   (deadline, error, end), start empty and grow by doubling, so that they hold
    ///   memory in proportion to their values;
    /// - cost: no timer and no clock read for a batch that fills without the upstream
    ///   returning `Pending` (with a weight cap, a batch whose first value closed the
    ///   previous batch by weight reads the clock once, for that value's deadline); the
    ///   timer is one inline `tokio::time::Sleep`, never a heap allocation, made when a batch
    ///   first waits for its deadline and reset for the next ones (made anew after a batch
    ///   that closed before its deadline, or on another runtime);
    /// - with the crate's `tracing` feature, each batch is one `DEBUG` event, target
    ///   `result_stream::batch`, fields `reason`, `len`, `weight` (with a weight cap) and
    ///   `age_ms` (when a subscriber was listening as the batch opened).
    ///
    /// # Weight cap
    ///
    /// [`.max_weight(max_weight, weigh)`](ChunksTimeoutResult::max_weight) also caps each
    /// batch's total weight (bytes, bind parameters, anything additive), and
    /// [`.max_weight_opt(max_weight, weigh)`](ChunksTimeoutResult::max_weight_opt) does so
    /// for a cap known only at run time (with `None`, nothing is weighed or capped; both
    /// give the same type, so one chain serves both):
    /// - `weigh` is called exactly once per value, when it arrives;
    /// - a value that would push the batch's total past `max_weight` closes the batch
    ///   ([`FlushReason::Weight`](crate::FlushReason::Weight)) and starts the next one; a
    ///   total that would overflow `usize` is past any cap;
    /// - a batch whose total reaches `max_weight` is yielded at once;
    /// - a value heavier than `max_weight` is yielded alone, at once: never held for the
    ///   deadline, never dropped, never an error; weight 0 is allowed;
    /// - a value that starts the next batch this way is buffered (so
    ///   [`take_remainder`](ChunksTimeoutResult::take_remainder) returns it), and its batch's
    ///   deadline is `timeout` after the poll in which it arrived;
    /// - on a ready upstream each batch is the longest run of values that fits both caps.
    ///
    /// # Batch info
    ///
    /// [`.with_batch_info()`](ChunksTimeoutResult::with_batch_info) yields each batch as
    /// `Ok((batch, info))`, with a [`BatchInfo`](crate::BatchInfo):
    /// - `info.reason()`: why the batch closed ([`FlushReason`](crate::FlushReason));
    /// - `info.weight()`: its total weight, `None` without a weight cap;
    /// - `info.age()`: from its first value's arrival to its closing, on the `tokio::time`
    ///   clock, which is read twice per batch for it, and only in this mode (where only the
    ///   reason is needed, [`last_flush_reason`](ChunksTimeoutResult::last_flush_reason)
    ///   reads no clock);
    /// - errors pass through as before.
    ///
    /// # Panics
    ///
    /// Panics, at the caller's location, if `max_items` is zero.
    ///
    /// ```
    /// use std::time::Duration;
    /// use futures::{SinkExt, StreamExt};
    /// use result_stream::ResultStreamExt;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let (mut tx, rx) = futures::channel::mpsc::unbounded::<Result<u32, String>>();
    /// let mut batches = std::pin::pin!(rx.chunks_timeout_result(3, Duration::from_secs(2)));
    ///
    /// for v in 1..=4 { tx.send(Ok(v)).await.unwrap(); }
    /// assert_eq!(batches.next().await, Some(Ok(vec![1, 2, 3])));  // full
    ///
    /// let started = tokio::time::Instant::now();
    /// assert_eq!(batches.next().await, Some(Ok(vec![4])));        // deadline of value 4
    /// assert_eq!(started.elapsed(), Duration::from_secs(2));
    ///
    /// tx.send(Ok(5)).await.unwrap();
    /// tx.send(Err("bad frame".into())).await.unwrap();
    /// assert_eq!(batches.next().await, Some(Ok(vec![5])));        // partial batch first,
    /// assert_eq!(batches.next().await, Some(Err("bad frame".into()))); // then the error
    ///
    /// tx.send(Ok(6)).await.unwrap();
    /// drop(tx);
    /// assert_eq!(batches.next().await, Some(Ok(vec![6])));        // end of stream flush
    /// assert_eq!(batches.next().await, None);
    /// # }
    /// ```
    ///
    /// With a weight cap (bytes) and batch info:
    ///
    /// ```
    /// use std::time::Duration;
    /// use futures::{StreamExt, stream};
    /// use result_stream::{FlushReason, ResultStreamExt};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let rows = stream::iter(["ab", "cde", "f", "ghijklmnop", "qr"].map(Ok::<_, ()>));
    /// let mut batches = std::pin::pin!(rows
    ///     .chunks_timeout_result(100, Duration::from_secs(1))
    ///     .max_weight(6, |row: &&str| row.len())
    ///     .with_batch_info());
    /// let (batch, info) = batches.next().await.unwrap().unwrap();
    /// assert_eq!((batch, info.reason(), info.weight()), (vec!["ab", "cde", "f"], FlushReason::Weight, Some(6)));
    /// let (batch, info) = batches.next().await.unwrap().unwrap(); // heavier than 6: alone, at once
    /// assert_eq!((batch, info.weight(), info.age()), (vec!["ghijklmnop"], Some(10), Duration::ZERO));
    /// let (batch, info) = batches.next().await.unwrap().unwrap();
    /// assert_eq!((batch, info.reason()), (vec!["qr"], FlushReason::End));
    ///
    /// let no_cap = stream::iter(["ab", "cde"].map(Ok::<_, ()>)) // the same type as with a cap
    ///     .chunks_timeout_result(100, Duration::from_secs(1))
    ///     .max_weight_opt(None, |row: &&str| row.len());
    /// assert_eq!(no_cap.collect::<Vec<_>>().await, vec![Ok(vec!["ab", "cde"])]);
    /// # }
    /// ```
    #[track_caller]
    fn chunks_timeout_result(self, max_items: usize, timeout: Duration) -> ChunksTimeoutResult<Self>
    where
        Self: Sized,
    {
        ChunksTimeoutResult::new(self, max_items, timeout)
    }

    /// Drives the stream to its end, handing each `Ok` item to `f` with the item's own
    /// handle to `scope` (an [`ItemScope`]), and rolls back the pending compensations when
    /// anything fails.
    ///
    /// `f` registers, on the scope it is given, compensations for the effects it is about to
    /// cause (register *before* the write, so that a partial write is undone too), then
    /// returns `Ok(())` or `Err(e)`.
    ///
    /// Rules:
    /// - items are pulled in stream order and handled one at a time, or up to `n` at a
    ///   time with [`concurrency(n)`](ForEachCompensated::concurrency) (handlers may then
    ///   finish in any order);
    /// - when `f` returns `Ok`, that item's compensations are committed (dropped); with
    ///   [`all_or_nothing`](ForEachCompensated::all_or_nothing) they are all kept until the
    ///   stream ends, then committed together;
    /// - when the stream ends, everything the run owns is committed, including what was
    ///   registered through [`ForEachCompensated::scope`] before the first item or between
    ///   items: a later `scope.rollback` never undoes a run that succeeded;
    /// - when `f` returns `Err`, the upstream yields `Err`, or the
    ///   [cancellation token](ForEachCompensated::with_cancellation) fires: pulling stops,
    ///   the run's pending compensations run, newest first (with those registered through
    ///   `scope`'s own handles, see below), under the
    ///   [rollback policy](ForEachCompensated::rollback_policy), and the future resolves to a
    ///   [`CompensatedError`](crate::CompensatedError) holding the [`Cause`](crate::Cause)
    ///   (with your own `E`) and the [`RollbackReport`](crate::RollbackReport);
    /// - cancellation is prompt: a handler still running when the token fires is dropped at
    ///   once, and the compensations it had registered run before the future resolves (which
    ///   is why they are registered before the effect);
    /// - if this future is dropped, or `f` panics, in the middle of an item, the compensations
    ///   registered so far stay in `scope`: `scope.rollback(policy).await` runs them later;
    /// - a failed handler can be [retried](ForEachCompensated::retry) (the failed attempt's
    ///   compensations run first) and an item that still fails
    ///   [skipped](ForEachCompensated::skip_failed_items) (rolled back alone; the run goes
    ///   on); upstream errors can be handed to a callback instead of stopping the run
    ///   ([`skip_upstream_errors`](ForEachCompensated::skip_upstream_errors));
    /// - on success it resolves to a [`Completion`](crate::Completion) with the number of
    ///   items processed (and skipped);
    /// - the rollback itself is not cancelled by the token; it runs to its end.
    ///
    /// What the handler's handle acts on: `f` receives an [`ItemScope`], the handle of its
    /// own item (a distinct type from [`CompensationScope`], so that a signature tells which
    /// one a function registers through):
    /// - what the handler registers through it belongs to its item: committed when `f`
    ///   returns `Ok`, or with [`all_or_nothing`](ForEachCompensated::all_or_nothing)
    ///   absorbed into the run (kept until the stream ends); undone alone by a
    ///   [retry](ForEachCompensated::retry) or a [skip](ForEachCompensated::skip_failed_items);
    /// - its [`commit`](ItemScope::commit) and [`rollback`](ItemScope::rollback) act on this
    ///   item's compensations only: under [`concurrency(n)`](ForEachCompensated::concurrency)
    ///   no item can drop or run another's, nor what the run's or the scope's own handles
    ///   registered;
    /// - [`ItemScope::child`] opens a nested scope for a step of the handler that may be
    ///   undone (or committed) on its own, or absorbed into the item;
    /// - the run itself is a child of `scope`: on failure its rollback runs the run's
    ///   pending compensations and those registered through `scope`'s own handles
    ///   (including any registered before the run started), never those of another run
    ///   sharing the scope; on success it commits those same ones. What an open
    ///   [`CompensationScope::child`] holds stays the child's either way. Until the future
    ///   resolves or is dropped, `scope`'s own handles neither commit nor roll back this
    ///   run's compensations (see [`CompensationScope`]). A handler that registers through
    ///   a captured clone of `scope` instead of its `ItemScope` registers for the scope,
    ///   not for its item: its item's success does not commit it, the run's success does.
    ///
    /// Cost: no heap allocation per item. With nothing registered, an item costs a clone and
    /// a drop of the scope handle (an `Arc`), an atomic increment (its id, which also marks
    /// where its registrations start), one atomic load (is anything registered in the
    /// scope?) and, with a cancellation token, one uncontended lock (tokio-util's
    /// `is_cancelled`, on a child token of this run's own). With
    /// [`concurrency(n)`](ForEachCompensated::concurrency), `n > 1` (or with
    /// [`retry`](ForEachCompensated::retry) or
    /// [`skip_failed_items`](ForEachCompensated::skip_failed_items)), each slot for an item
    /// in flight is boxed once, when first needed (so no more than the most items ever in
    /// flight at once, whatever `n`), and gets a waker of its own, once, so that only the
    /// items that were woken are polled (a slot whose ended item left a clone of its waker
    /// with some resource gets a new one, one allocation, so that a stale wake polls no
    /// later item; one at a time, the handler shares the run's waker, as in `try_for_each`,
    /// so a wake left by an earlier item may poll it once more); with
    /// [`retry`](ForEachCompensated::retry), each item is cloned once.
    ///
    /// # Panics
    ///
    /// Panics if polled again after it resolved.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use futures::stream;
    /// use result_stream::{Cause, CompensationScope, ResultStreamExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let table = Arc::new(Mutex::new(Vec::<u32>::new()));
    /// let items = stream::iter(vec![Ok(vec![1, 2]), Ok(vec![3, 4]), Ok(vec![5, 6])]);
    ///
    /// let result = items
    ///     .for_each_compensated(CompensationScope::new(), |batch: Vec<u32>, scope| {
    ///         let table = table.clone();
    ///         async move {
    ///             let undo = table.clone();
    ///             let ids = batch.clone();
    ///             scope.register(move || {
    ///                 let (undo, ids) = (undo.clone(), ids.clone());
    ///                 async move {
    ///                     undo.lock().unwrap().retain(|row| !ids.contains(row));
    ///                     Ok::<(), std::io::Error>(())
    ///                 }
    ///             });
    ///             table.lock().unwrap().push(batch[0]);          // a partial write...
    ///             if batch[0] == 5 {
    ///                 return Err("disk full");                  // ...then a failure
    ///             }
    ///             table.lock().unwrap().push(batch[1]);
    ///             Ok(())
    ///         }
    ///     })
    ///     .await;
    ///
    /// let error = result.unwrap_err();
    /// assert!(matches!(error.cause(), Cause::Handler("disk full")));
    /// assert!(error.is_rolled_back_cleanly());
    /// assert_eq!(*table.lock().unwrap(), vec![1, 2, 3, 4]); // the partial batch is undone
    /// # }
    /// ```
    fn for_each_compensated<F, Fut>(
        self,
        scope: CompensationScope,
        f: F,
    ) -> ForEachCompensated<Self, F, Fut>
    where
        Self: Sized,
        F: FnMut(T, ItemScope) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        ForEachCompensated::new(self, scope, f)
    }

    /// Buffers `Ok` values into one open batch per key, `key(&value)`, and yields
    /// `Ok((key, batch))` when the first of these happens to that key's batch:
    /// 1. it holds `max_items` values;
    /// 2. `timeout` has passed since its first value arrived: each key's batch has a deadline
    ///    of its own, started by its first value and never extended by later ones (nor by
    ///    other keys' values). The clock is read once per poll, when the poll opens its first
    ///    batch, so a deadline is never later than `timeout` after its value was taken;
    /// 3. an `Err(e)` arrives: every open batch is yielded first, oldest first value first,
    ///    then `Err(e)`, then batching goes on with the next value;
    /// 4. the upstream ends: every open batch is yielded, oldest first, then `None`;
    /// 5. it is the oldest open batch, [`max_open_keys`](ChunksTimeoutByKeyResult::max_open_keys)
    ///    batches are open, and a value of a new key arrives (eviction).
    ///
    /// Rules:
    /// - within a key, values keep their order; batches are yielded in the order they close;
    ///   never an empty batch, never more than `max_items` values; no value is lost or
    ///   duplicated, and no value is yielded after an error that arrived after it;
    /// - data wins ties, as in [`chunks_timeout_result`](Self::chunks_timeout_result): a
    ///   deadline that has passed is acted on when the upstream has nothing ready, so values
    ///   already available join their batches first, also across polls that yield batches
    ///   those values closed. Then every batch whose deadline has passed is yielded, oldest
    ///   first, before more values are taken;
    /// - liveness: data wins for at most 4,096 values: counted from the start of the poll
    ///   in which a deadline passed, and across the polls that follow while each yields a
    ///   batch that a value closed (full, by weight, evicted), at most 4,096 values are
    ///   taken before every batch whose deadline has passed is yielded, oldest first, with
    ///   reason `Deadline`. One `poll_next` takes at most 4,096 values; past that it wakes
    ///   its task and returns `Pending` (a cooperative yield). So on an upstream that never
    ///   returns `Pending`, even one that fills a batch at every poll or brings a new key
    ///   with every value, a deadline is honoured within 4,096 values;
    /// - `timeout == Duration::ZERO` yields every open batch, oldest first, as soon as the
    ///   upstream has nothing ready or the poll's 4,096 values are spent;
    /// - the number of open batches is unbounded by default (one per key seen within a
    ///   `timeout`); [`max_open_keys`](ChunksTimeoutByKeyResult::max_open_keys) bounds it;
    /// - one timer for all keys (a `tokio::time::Sleep` at the oldest batch's deadline): it
    ///   needs a Tokio runtime with the time driver when polled with a batch open and the
    ///   upstream pending (not when constructed), a paused clock makes it deterministic, and
    ///   the adapter may be moved to another runtime between polls;
    /// - buffered values are never lost when the adapter is abandoned (say, in a lost
    ///   `tokio::select!` race): [`ChunksTimeoutByKeyResult::take_remainder`] takes every
    ///   key's values (oldest batch first) and a held-back error out of a pinned adapter,
    ///   leaving it empty with its timer dropped; dropping the adapter drops its values;
    /// - memory: an open batch holds memory in proportion to its values: it starts empty
    ///   and grows by doubling, except that a key whose last batch closed by count
    ///   reserves its next batch's full size, `min(max_items, 65_536)` values, in one
    ///   allocation, and a key whose last batch closed by weight reserves that batch's
    ///   length. Besides the values, each open batch costs an index entry and a queue
    ///   entry (100 to 200 bytes with a `u64` key); a batch that closes before older ones
    ///   leaves its queue entry behind until they close, never more such entries than open
    ///   batches. The adapter remembers the keys whose last batch filled (an index entry
    ///   each, no values) up to the number of open batches or 1,024, whichever is more.
    ///   When the last open batch closes, tables grown past 1,024 entries by a burst of keys
    ///   are given back (the index keeps only the remembered keys);
    /// - cost per value: the key function and a push, after one key comparison when the
    ///   value has the same key as the previous one, otherwise after one hash lookup. Per
    ///   batch: at most one clone of the key (none for a key whose last batch filled, by
    ///   count or to exactly `max_weight`; one for a batch that a value opens by splitting
    ///   its key's batch, since both batches need the key), one allocation for a key whose
    ///   last batch filled (else one per doubling), and one clock read for all the batches
    ///   opened in the same poll;
    /// - with the crate's `tracing` feature, each batch is one `DEBUG` event, target
    ///   `result_stream::batch`, fields `reason`, `len`, `weight` (with a weight cap),
    ///   `age_ms`, and `key` when
    ///   [`trace_key_with`](ChunksTimeoutByKeyResult::trace_key_with) gives a formatter
    ///   (`std::fmt::Debug::fmt` for a `Debug` key; without one, the events have no `key`):
    ///   no bound on `K` depends on the feature, so enabling it never breaks a build whose
    ///   key is not `Debug`.
    ///
    /// `key` is called once per value.
    ///
    /// # Weight cap
    ///
    /// [`max_weight`](ChunksTimeoutByKeyResult::max_weight) adds a weight cap per key, with
    /// the rules of [`ChunksTimeoutResult::max_weight`](crate::ChunksTimeoutResult::max_weight)
    /// (each value weighs `weigh(&value)`, called once per value) for each key's batch alone:
    /// a value that would push it past `max_weight` closes it
    /// ([`FlushReason::Weight`](crate::FlushReason::Weight)) and opens the key's next batch,
    /// with a deadline of its own; a batch whose total reaches `max_weight` closes at once
    /// (`Weight`); a value heavier than `max_weight` is yielded alone, at once, and evicts
    /// nothing. [`max_weight_opt`](ChunksTimeoutByKeyResult::max_weight_opt) takes the cap as
    /// an `Option`, known only at run time: `None` weighs nothing (`weigh` is never called)
    /// and caps nothing.
    ///
    /// # Eviction
    ///
    /// [`max_open_keys`](ChunksTimeoutByKeyResult::max_open_keys) bounds the open batches
    /// (unbounded by default): a new key's value, when that many are open, first closes the
    /// oldest one ([`FlushReason::Eviction`](crate::FlushReason::Eviction)), unless it closes
    /// its own batch by itself (`max_items == 1`, or too heavy).
    ///
    /// # Batch info
    ///
    /// [`with_batch_info`](ChunksTimeoutByKeyResult::with_batch_info) yields
    /// `Ok((key, (batch, info)))`: the [`BatchInfo`](crate::BatchInfo) tells why the batch
    /// closed (including `Eviction`), its weight and its age, from its first value's arrival
    /// (the poll that took it) to its closing, as on
    /// [`chunks_timeout_result`](Self::chunks_timeout_result).
    ///
    /// # Panics
    ///
    /// Panics, at the caller's location, if `max_items` is zero, if `max_weight` is zero
    /// (`Some(0)` for `max_weight_opt`) or if `max_open_keys` is zero.
    ///
    /// ```
    /// use std::time::Duration;
    /// use futures::{SinkExt, StreamExt};
    /// use result_stream::ResultStreamExt;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let (mut tx, rx) = futures::channel::mpsc::unbounded::<Result<(&str, u32), String>>();
    /// let mut batches = std::pin::pin!(
    ///     rx.chunks_timeout_by_key_result(|&(tenant, _)| tenant, 2, Duration::from_secs(2))
    /// );
    /// let started = tokio::time::Instant::now();
    ///
    /// tx.send(Ok(("a", 1))).await.unwrap();
    /// tx.send(Ok(("b", 1))).await.unwrap();
    /// tx.send(Ok(("a", 2))).await.unwrap();
    /// assert_eq!(batches.next().await, Some(Ok(("a", vec![("a", 1), ("a", 2)])))); // full
    /// assert_eq!(batches.next().await, Some(Ok(("b", vec![("b", 1)]))));          // deadline
    /// assert_eq!(started.elapsed(), Duration::from_secs(2));
    ///
    /// tx.send(Ok(("b", 2))).await.unwrap();
    /// tx.send(Ok(("a", 3))).await.unwrap();
    /// tx.send(Err("bad frame".into())).await.unwrap();
    /// assert_eq!(batches.next().await, Some(Ok(("b", vec![("b", 2)]))));  // oldest first,
    /// assert_eq!(batches.next().await, Some(Ok(("a", vec![("a", 3)]))));
    /// assert_eq!(batches.next().await, Some(Err("bad frame".into())));    // then the error
    ///
    /// tx.send(Ok(("c", 1))).await.unwrap();
    /// drop(tx);
    /// assert_eq!(batches.next().await, Some(Ok(("c", vec![("c", 1)])))); // end of stream
    /// assert_eq!(batches.next().await, None);
    /// # }
    /// ```
    ///
    /// With a weight cap, a bound on open batches and batch info:
    ///
    /// ```
    /// use std::time::Duration;
    /// use futures::{StreamExt, stream};
    /// use result_stream::FlushReason::{End, Eviction, Weight};
    /// use result_stream::ResultStreamExt;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let rows = [("a", 4), ("b", 5), ("a", 3), ("b", 9), ("a", 1), ("c", 2), ("b", 1), ("d", 1)];
    /// let batches: Vec<_> = stream::iter(rows.map(Ok::<_, ()>))
    ///     .chunks_timeout_by_key_result(|row| row.0, 100, Duration::from_secs(1))
    ///     .max_weight(8, |row| row.1)
    ///     .max_open_keys(2)
    ///     .trace_key_with(std::fmt::Debug::fmt) // the `tracing` feature's `key` field
    ///     .with_batch_info()
    ///     .map(|batch| batch.map(|(key, (rows, info))| (key, rows.len(), info.reason())))
    ///     .collect()
    ///     .await;
    /// assert_eq!(batches, vec![
    ///     Ok(("b", 1, Weight)),   // ("b", 9) would push b past 8: b's next batch
    ///     Ok(("b", 1, Weight)),   // ("b", 9) is heavier than 8: alone, at once
    ///     Ok(("a", 3, Weight)),   // 4 + 3 + 1 = 8: full by weight
    ///     Ok(("c", 1, Eviction)), // d opens while c and b are open: c is the oldest
    ///     Ok(("b", 1, End)),      // the end: oldest first
    ///     Ok(("d", 1, End)),
    /// ]);
    /// # }
    /// ```
    #[track_caller]
    fn chunks_timeout_by_key_result<K, F>(
        self,
        key: F,
        max_items: usize,
        timeout: Duration,
    ) -> ChunksTimeoutByKeyResult<Self, K, F>
    where
        Self: Sized,
        F: FnMut(&T) -> K,
        K: Hash + Eq + Clone,
    {
        ChunksTimeoutByKeyResult::new(self, key, max_items, timeout)
    }
}

impl<S, T, E> ResultStreamExt<T, E> for S where S: Stream<Item = Result<T, E>> + ?Sized {}
