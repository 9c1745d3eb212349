//! Attack, round 3, on the rewritten `chunks_timeout_by_key_result` (an index of open
//! batches, a FIFO deadline queue with stale and dormant entries, a per-poll budget).
//!
//! A reference model is checked over random schedules with many keys (fills, splits,
//! reopened keys, evictions): each output's time, key, values, reason, weight and age,
//! `size_hint` after each output, and a wake for every `Pending`. Then the data-wins
//! budget, `take_remainder` after churn, memory, key clones and `tracing` events.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use common::keyed_model::{self, KeyedModel, replay};
use common::{ms, paused_runtime, scheduled};
use futures::{Stream, StreamExt, poll};
use proptest::prelude::*;
use result_stream::batch::{MaxWeight, WithInfo};
use result_stream::{BatchInfo, ChunksTimeoutByKeyResult, FlushReason, ResultStreamExt};
use tokio::time::Instant;

/// A pseudo-random number below `n`, per call.
fn xorshift(mut state: u64) -> impl FnMut(u64) -> u64 {
    move |n| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    }
}

type Val = keyed_model::Val<u16>;
type Tok = keyed_model::Tok<u16>;

/// The limits: `max_items`, `timeout` (ms), `max_open_keys`, `max_weight`.
#[derive(Debug, Clone)]
struct Params(usize, u64, Option<usize>, Option<usize>);

/// One output, at a time (ms since the start).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
    /// A batch: time, key, value ids, reason, reported weight, age (ms).
    B(u64, u16, Vec<u32>, FlushReason, Option<usize>, u64),
    /// An error: time, id.
    E(u64, u32),
}

impl Out {
    fn batch(at: u64, key: u16, vals: &[Val], info: &BatchInfo) -> Self {
        let (ids, age) = (vals.iter().map(|v| v.id).collect(), info.age().as_millis());
        let (reason, weight) = (info.reason(), info.weight());
        Out::B(at, key, ids, reason, weight, age as u64)
    }
}

// The reference model

/// Open batches by key (seq, values, opening time), and their order of opening.
struct Model<'a> {
    p: &'a Params,
    open: HashMap<u16, (u64, Vec<Val>, u64)>,
    order: BTreeMap<u64, u16>,
    seq: u64,
    outs: Vec<Out>,
}

impl Model<'_> {
    fn push(&mut self, at: u64, key: u16, vals: &[Val], reason: FlushReason, opened: u64) {
        let ids = vals.iter().map(|v| v.id).collect();
        let weight = (self.p.3).map(|_| vals.iter().map(|v| v.weight).sum());
        self.outs
            .push(Out::B(at, key, ids, reason, weight, at - opened));
    }
    fn emit(&mut self, at: u64, key: u16, reason: FlushReason) {
        let (seq, vals, opened) = self.open.remove(&key).expect("an open batch");
        self.order.remove(&seq);
        self.push(at, key, &vals, reason, opened);
    }
    fn oldest(&self) -> Option<(u16, u64)> {
        let (_, &key) = self.order.first_key_value()?;
        Some((key, self.open[&key].2 + self.p.1))
    }
    fn closes(&self, len: usize, total: usize) -> Option<FlushReason> {
        if len >= self.p.0 {
            Some(FlushReason::Full)
        } else if self.p.3.is_some_and(|max| total >= max) {
            Some(FlushReason::Weight)
        } else {
            None
        }
    }
    fn start(&mut self, t: u64, v: Val) {
        self.seq += 1;
        self.open.insert(v.key, (self.seq, vec![v], t));
        self.order.insert(self.seq, v.key);
    }
    fn total(&self, key: u16) -> Option<usize> {
        Some(self.open.get(&key)?.1.iter().map(|v| v.weight).sum())
    }
}

impl KeyedModel<u16> for Model<'_> {
    fn value(&mut self, t: u64, v: Val) {
        let max_weight = self.p.3.unwrap_or(usize::MAX);
        if self.total(v.key).is_some_and(|w| w + v.weight > max_weight) {
            self.emit(t, v.key, FlushReason::Weight); // A split: `v` opens the next batch.
            self.start(t, v);
        } else if let Some(open) = self.open.get_mut(&v.key) {
            open.1.push(v);
        } else if let Some(reason) = self.closes(1, v.weight) {
            return self.push(t, v.key, &[v], reason, t); // Alone: evicts nothing.
        } else {
            if (self.p.2).is_some_and(|max| self.open.len() >= max) {
                let (oldest, _) = self.oldest().expect("an open batch");
                self.emit(t, oldest, FlushReason::Eviction);
            }
            self.start(t, v);
        }
        let len = self.open[&v.key].1.len();
        if let Some(reason) = self.closes(len, self.total(v.key).unwrap()) {
            self.emit(t, v.key, reason);
        }
    }
    /// Flushes the batches whose deadlines pass before `t`; `None` on a tie (either order
    /// is correct then).
    fn expire_before(&mut self, t: u64) -> Option<()> {
        while let Some((key, deadline)) = self.oldest() {
            if deadline < t {
                self.emit(deadline, key, FlushReason::Deadline);
            } else if deadline == t && self.p.1 > 0 {
                return None;
            } else {
                break;
            }
        }
        Some(())
    }
    fn flush_all(&mut self, at: u64, reason: FlushReason) {
        while let Some((key, _)) = self.oldest() {
            self.emit(at, key, reason);
        }
    }
    fn error(&mut self, at: u64, id: u32) {
        self.outs.push(Out::E(at, id));
    }
}

fn model(events: &[(u64, Tok)], end: u64, p: &Params) -> Option<Vec<Out>> {
    let mut m = Model {
        p,
        open: HashMap::new(),
        order: BTreeMap::new(),
        seq: 0,
        outs: Vec::new(),
    };
    replay(&mut m, events, end, p.1)?;
    Some(m.outs)
}

// Running the adapter

/// An upstream that knows exactly how many items it has left: its `size_hint` is exact.
struct Exact<S> {
    inner: S,
    left: usize,
}

impl<S: Stream + Unpin> Stream for Exact<S> {
    type Item = S::Item;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let polled = self.inner.poll_next_unpin(cx);
        if let Poll::Ready(Some(_)) = polled {
            self.left -= 1;
        }
        polled
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

type Hint = (usize, Option<usize>);

type Adapter<S> = ChunksTimeoutByKeyResult<S, u16, KeyOf, Option<MaxWeight<WeightOf>>, WithInfo>;
type KeyOf = fn(&Val) -> u16;
type WeightOf = fn(&Val) -> usize;

/// The adapter under test, with `p`'s limits (`max_weight_opt`: one type for every case).
fn adapter<S: Stream<Item = Result<Val, u32>>>(upstream: S, p: &Params) -> Adapter<S> {
    let (key, weight): (KeyOf, WeightOf) = (|v| v.key, |v| v.weight);
    (upstream.chunks_timeout_by_key_result(key, p.0, ms(p.1)))
        .max_open_keys(p.2.unwrap_or(usize::MAX))
        .max_weight_opt(p.3, weight)
        .with_batch_info()
}

/// Drives `stream` to its end: the outputs, the `size_hint` before the first poll and after
/// each output, and the time at which `None` came.
async fn collect<S>(stream: S, start: Instant) -> (Vec<Out>, Vec<Hint>, u64)
where
    S: Stream<Item = Result<(u16, (Vec<Val>, BatchInfo)), u32>>,
{
    let mut stream = pin!(stream);
    let (mut outs, mut hints) = (Vec::new(), vec![stream.size_hint()]);
    while let Some(item) = stream.next().await {
        let at = start.elapsed().as_millis() as u64;
        outs.push(match item {
            Ok((key, (vals, info))) => Out::batch(at, key, &vals, &info),
            Err(id) => Out::E(at, id),
        });
        hints.push(stream.size_hint());
    }
    (outs, hints, start.elapsed().as_millis() as u64)
}

/// Runs the adapter over a schedule on a fresh paused runtime. A `Pending` with no wake
/// coming would park the runtime for good: the outer timeout turns that into `None`.
fn run(events: &[(u64, Tok)], end: u64, p: &Params) -> Option<(Vec<Out>, Vec<Hint>, u64)> {
    paused_runtime().block_on(async {
        let (start, left) = (Instant::now(), events.len());
        let schedule = events.iter().map(|&(t, tok)| (ms(t), tok.item())).collect();
        let inner = scheduled(start, schedule, ms(end));
        let driven = collect(adapter(Exact { inner, left }, p), start);
        let year = Duration::from_secs(365 * 86_400);
        tokio::time::timeout(year, driven).await.ok()
    })
}

/// Events at their times (ms), the end of the stream (ms), the limits.
type Case = (Vec<(u64, Tok)>, u64, Params);

/// Many keys, small batches: fills, splits and reopened keys leave stale queue entries and
/// dormant index entries behind at almost every step.
fn case() -> impl Strategy<Value = Case> {
    let gap = prop_oneof![3 => Just(0u64), 2 => 0u64..=25];
    let step = (gap, prop::bool::weighted(0.05), any::<u16>(), 0usize..=9);
    (
        prop::collection::vec(step, 0..160),
        0u64..=60,
        1u16..=40,
        1usize..=4,
        prop_oneof![1 => Just(0u64), 4 => 1u64..=40],
        prop::option::of(1usize..=6),
        prop::option::of(1usize..=8),
    )
        .prop_map(
            |(steps, final_gap, keys, max_items, timeout, open, weight)| {
                let mut now = 0;
                let events = (steps.into_iter().enumerate())
                    .map(|(i, (gap, is_error, key, weight))| {
                        let (id, key) = (i as u32, key % keys);
                        now += gap;
                        (
                            now,
                            if is_error {
                                Tok::E(id)
                            } else {
                                Tok::V(Val { id, key, weight })
                            },
                        )
                    })
                    .collect();
                let p = Params(max_items, timeout, open, weight);
                let end = now + final_gap;
                (events, end, p)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// The exact outputs (time, key, values, reason, weight, age) equal the model's, every
    /// `Pending` is followed by a wake, and `size_hint` brackets the outputs still to come.
    #[test]
    fn outputs_match_the_model_under_heavy_key_churn((events, end, p) in case()) {
        let ran = run(&events, end, &p);
        let Some((outs, hints, ended)) = ran else {
            return Err(TestCaseError::fail("a Pending with no wake coming: the run hung"));
        };
        prop_assert_eq!(ended, end, "None comes when the upstream ends");
        for (i, &(lower, upper)) in hints.iter().enumerate() {
            let left = outs.len() - i;
            prop_assert!(lower <= left, "size_hint lower {} > {} left after {} outputs", lower, left, i);
            prop_assert!(upper.is_none_or(|u| left <= u), "size_hint upper {:?} < {} left", upper, left);
        }
        if let Some(expected) = model(&events, end, &p) {
            prop_assert_eq!(outs, expected);
        }
    }
}

/// Thousands of keys, fills of one to three values, weight splits, evictions, errors and
/// deadlines (every value at an even millisecond, in bursts; an odd timeout: no deadline
/// ties with an arrival, so the model is exact) drive the stale-entry compaction and the
/// dormant-entry bound (1,024) many times over.
#[test]
fn a_hundred_thousand_values_over_thousands_of_keys_match_the_model() {
    let mut next = xorshift(0x2545_f491_4f6c_dd1d);
    for (max_items, max_open_keys, max_weight, keys, burst) in [
        (2, None, None, 3_000, 8),
        (3, Some(1_500), Some(12), 5_000, 50),
        (3, None, Some(9), 2_500, 3),
        (1_000, Some(700), Some(20), 4_000, 100_000),
    ] {
        let events: Vec<(u64, Tok)> = (0..100_000u32)
            .map(|id| match (2 * (id / burst) as u64, next(4_000)) {
                (t, 0) => (t, Tok::E(id)),
                (t, _) => {
                    let (key, weight) = (next(keys) as u16, next(8) as usize);
                    (t, Tok::V(Val { id, key, weight }))
                }
            })
            .collect();
        let (p, end) = (Params(max_items, 41, max_open_keys, max_weight), 200_002);
        let expected = model(&events, end, &p).expect("no ties: odd deadlines, even arrivals");
        let (outs, _, ended) = run(&events, end, &p).expect("no Pending without a wake");
        assert_eq!((outs.len(), ended), (expected.len(), end), "{p:?}");
        let first_difference = outs.iter().zip(&expected).position(|(a, b)| a != b);
        assert_eq!(first_difference, None, "{p:?}");
    }
}

// Data wins: the budget of a poll before the deadline passed is not the grace after it

type Pair = (char, u32);

/// The rule: a deadline that has passed is acted on when the upstream has nothing ready, so
/// values already available join their batches first; data wins "for at most 4,096 values,
/// counted from the start of the poll in which a deadline passed". Here the deadline passes
/// between two polls (the consumer is busy for 20 ms), and the next poll takes only the 95
/// values that the previous poll, long before the deadline, left of its own budget: `a`'s
/// deadline is then honoured while `("a", 2)`, ready all along, waits behind 105 values.
#[tokio::test(start_paused = true)]
async fn data_wins_after_a_deadline_passes_between_polls_gets_the_full_budget() {
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Pair, ()>>();
    let mut batches = pin!(rx.chunks_timeout_by_key_result(|v| v.0, 4_000, ms(10)));
    tx.unbounded_send(Ok(('a', 1))).unwrap();
    (0..4_000).for_each(|n| tx.unbounded_send(Ok(('b', n))).unwrap());
    let (key, full) = batches.next().await.unwrap().unwrap();
    assert_eq!((key, full.len()), ('b', 4_000), "b fills first");

    // The consumer works on that batch for 20 ms; meanwhile more values arrive.
    tokio::time::sleep(ms(20)).await;
    (0..200).for_each(|n| tx.unbounded_send(Ok(('b', 10_000 + n))).unwrap());
    tx.unbounded_send(Ok(('a', 2))).unwrap();

    let (key, batch) = batches.next().await.unwrap().unwrap();
    assert_eq!(key, 'a');
    assert_eq!(
        batch,
        vec![('a', 1), ('a', 2)],
        "201 values were ready when a's deadline was acted on: well within 4,096, so a's \
         second value joins a's batch before it is yielded"
    );
}

// take_remainder after churn

/// Pins: after fills, weight splits, evictions and reopened keys have left stale queue
/// entries, the remainder is every open batch, oldest first (the model's order), nothing
/// lost, and the adapter is empty after it.
#[tokio::test(start_paused = true)]
async fn take_remainder_after_heavy_churn_is_the_models_open_batches_oldest_first() {
    let p = Params(3, 1_000, Some(40), Some(10));
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Val, u32>>();
    let mut batches = pin!(adapter(rx, &p));
    let mut next = xorshift(7);
    let events: Vec<(u64, Tok)> = (0..5_000u32)
        .map(|id| {
            let (key, weight) = (next(60) as u16, next(7) as usize);
            (0, Tok::V(Val { id, key, weight }))
        })
        .collect();
    (events.iter()).for_each(|&(_, tok)| tx.unbounded_send(tok.item()).unwrap());
    let (mut outs, mut pendings) = (Vec::new(), 0);
    while pendings < 3 {
        // A `Pending` may be a cooperative yield (5,000 values > one poll's budget).
        let Poll::Ready(polled) = poll!(batches.next()) else {
            pendings += 1;
            continue;
        };
        let (key, (vals, info)) = polled.unwrap().unwrap();
        (pendings, _) = (0, outs.push(Out::batch(0, key, &vals, &info)));
    }
    let open_keys: Vec<u16> = batches.open_keys_oldest_first().copied().collect();
    let (remainder, error) = batches.as_mut().take_remainder();
    assert_eq!(error, None);

    let mut expected = model(&events, 0, &p).unwrap();
    let expected_rest = expected.split_off(outs.len());
    assert_eq!(outs, expected);
    let ids = |vals: &[Val]| vals.iter().map(|v| v.id).collect::<Vec<_>>();
    let rest: Vec<_> = remainder.iter().map(|(k, vals)| (*k, ids(vals))).collect();
    let expected_rest: Vec<_> = (expected_rest.into_iter())
        .map(|out| match out {
            Out::B(_, key, ids, FlushReason::End, ..) => (key, ids),
            other => panic!("only the open batches are left, not {other:?}"),
        })
        .collect();
    assert_eq!(rest, expected_rest);
    assert_eq!(open_keys, rest.iter().map(|r| r.0).collect::<Vec<_>>());
    assert_eq!((batches.open_keys(), batches.buffered_len()), (0, 0));
    assert_eq!(batches.next_deadline(), None);
}

// Dormant keys: memory and key clones

/// Counts this thread's live heap bytes and their peak (each test runs on its own thread).
struct Counting;

thread_local! {
    static LIVE_PEAK: Cell<(i64, i64)> = const { Cell::new((0, 0)) };
}

fn note(delta: i64) {
    let _ = LIVE_PEAK.try_with(|c| c.set((c.get().0 + delta, c.get().1.max(c.get().0 + delta))));
}

// SAFETY: every method forwards to `System` unchanged; the counter is a const-initialised
// thread-local without a destructor, so counting never allocates or re-enters.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as i64);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(-(layout.size() as i64));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size as i64 - layout.size() as i64);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Pins (untested before): the adapter remembers the keys whose last batch filled "up to
/// the number of open batches or 1,024, whichever is more". A million distinct keys, each
/// filling one batch of two values while one other batch stays open all along, keep the
/// peak memory far below what a million remembered keys would cost (tens of MB).
#[test]
fn a_million_keys_each_filling_once_are_not_all_remembered() {
    let keys = 1_000_000u64;
    let values = std::iter::once(u64::MAX).chain((0..keys).flat_map(|k| [k, k]));
    let (batches, open_at_end) = paused_runtime().block_on(async {
        let adapter = futures::stream::iter(values.map(Ok::<u64, ()>))
            .chain(futures::stream::pending())
            .chunks_timeout_by_key_result(|&v| v, 2, Duration::from_secs(3_600));
        let mut adapter = pin!(adapter);
        LIVE_PEAK.with(|c| c.set((0, 0)));
        let mut batches = 0;
        while batches < keys {
            let (key, batch) = adapter.next().await.unwrap().unwrap();
            assert_eq!(batch, vec![key, key]);
            batches += 1;
        }
        (batches, adapter.open_keys())
    });
    assert_eq!((batches, open_at_end), (keys, 1), "the anchor stays open");
    let peak = LIVE_PEAK.with(Cell::get).1;
    assert!(peak < 2_000_000, "peak {peak} bytes over a million keys");
}

static CLONES: AtomicUsize = AtomicUsize::new(0); // Only `Tenant` counts: one test.

/// A key that counts its clones.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Tenant(u8);

impl Clone for Tenant {
    fn clone(&self) -> Self {
        CLONES.fetch_add(1, Ordering::Relaxed);
        Tenant(self.0)
    }
}

/// Drives `batches` to its end; returns the key clones counted since the last reset (and
/// resets the count) and the number of batches.
async fn clones_and_batches(batches: impl Stream) -> (usize, usize) {
    let batches = batches.collect::<Vec<_>>().await.len();
    (CLONES.swap(0, Ordering::Relaxed), batches)
}

/// The rule ("cost per value ... Per batch: at most one clone of the key (none for a key
/// whose last batch filled, by count or to exactly `max_weight`; one for a batch that a
/// value opens by splitting its key's batch)"): batches that fill by count reopen without a
/// clone; batches that a weight split opens clone the key once each.
#[tokio::test(start_paused = true)]
async fn a_key_is_cloned_for_its_first_batch_and_for_each_split_only() {
    let tenant = |v: &(u8, usize)| Tenant(v.0);
    let rows = || futures::stream::iter([(1, 6); 100].map(Ok::<_, ()>));
    let by_count = rows().chunks_timeout_by_key_result(tenant, 2, ms(10));
    assert_eq!(clones_and_batches(by_count).await, (1, 50), "by count");
    let by_weight = rows().chunks_timeout_by_key_result(tenant, 100, ms(10));
    let by_weight = clones_and_batches(by_weight.max_weight(10, |v| v.1)).await;
    assert_eq!(by_weight, (100, 100), "split by weight: one clone each");
    let exact = rows().chunks_timeout_by_key_result(tenant, 100, ms(10));
    let exact = clones_and_batches(exact.max_weight(12, |v| v.1)).await;
    assert_eq!(exact, (1, 50), "filled to exactly max_weight");
}

// tracing: every batch's event has `age_ms`

/// The rule: "each batch is one DEBUG event, ... fields `reason`, `len`, `weight` (with a
/// weight cap), `age_ms`, and `key`". A keyed batch closed by its only value (`max_items`
/// of one, or a value heavier than `max_weight` for a key with no open batch) has no
/// `age_ms` field (`emit` is given no opening time), while the same batch from
/// `chunks_timeout_result` has one.
#[cfg(feature = "tracing")]
#[tokio::test(start_paused = true)]
async fn a_keyed_batch_closed_by_its_only_value_has_an_age_ms_field() {
    use std::sync::{Arc, Mutex};
    use tracing::{field::Field, span};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<Vec<&'static str>>>>);
    struct Names<'a>(&'a mut Vec<&'static str>);
    impl tracing::field::Visit for Names<'_> {
        fn record_debug(&mut self, field: &Field, _: &dyn std::fmt::Debug) {
            self.0.push(field.name());
        }
    }
    impl tracing::Subscriber for Capture {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
            span::Id::from_u64(1)
        }
        fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
        fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let mut names = Vec::new();
            event.record(&mut Names(&mut names));
            self.0.lock().unwrap().push(names);
        }
        fn enter(&self, _: &span::Id) {}
        fn exit(&self, _: &span::Id) {}
    }

    let capture = Capture::default();
    let _subscriber = tracing::subscriber::set_default(capture.clone());
    let rows = || futures::stream::iter([('a', 1), ('b', 50)].map(Ok::<Pair, ()>));
    let plain = rows().chunks_timeout_result(1, ms(10));
    assert_eq!(plain.collect::<Vec<_>>().await.len(), 2);
    let keyed = rows().chunks_timeout_by_key_result(|v| v.0, 1, ms(10));
    assert_eq!(keyed.collect::<Vec<_>>().await.len(), 2);
    let heavy = (rows().chunks_timeout_by_key_result(|v| v.0, 5, ms(10)))
        .max_weight(10, |v| v.1 as usize)
        .trace_key_with(std::fmt::Debug::fmt);
    assert_eq!(heavy.collect::<Vec<_>>().await.len(), 2);
    let events = capture.0.lock().unwrap().clone();
    let kinds = ["plain", "plain", "keyed", "keyed", "heavy", "heavy"];
    assert_eq!(events.len(), kinds.len());
    for (names, kind) in events.iter().zip(kinds) {
        assert!(names.contains(&"age_ms"), "a {kind} event: {names:?}");
    }
}
