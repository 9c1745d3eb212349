//! Construction and introspection of `chunks_timeout_by_key_result`: zero sizes panic naming
//! the parameter, at the caller's line; construction needs no runtime, nor does a ready
//! upstream; `size_hint` bounds hold at every step; `Debug` shows the open batches oldest
//! first; the key function is called exactly once per value; the adapter is `Send` and `Sync`
//! and batches per key when spawned on a multi-threaded runtime.
//!
//! Values are `(key, n)` pairs keyed by their first field.

mod common;

use std::pin::pin;

use common::panics::{record_panics, take_panic_location};
use common::secs;
use futures::channel::mpsc;
use futures::stream::{self, Stream};
use futures::{StreamExt, poll};
use result_stream::ResultStreamExt;

type Value = (char, u32);
type Item = Result<Value, &'static str>;

fn key(value: &Value) -> char {
    value.0
}

// ---------------------------------------------------------------------------------------
// Panics, construction, size_hint, Debug
// ---------------------------------------------------------------------------------------

#[test]
#[should_panic(expected = "`max_items` must be greater than zero")]
fn zero_max_items_panics_naming_the_parameter() {
    let _ = stream::empty::<Item>().chunks_timeout_by_key_result(key, 0, secs(1));
}

#[test]
#[should_panic(expected = "`max_open_keys` must be greater than zero")]
fn zero_max_open_keys_panics_naming_the_parameter() {
    let _ = stream::empty::<Item>()
        .chunks_timeout_by_key_result(key, 1, secs(1))
        .max_open_keys(0);
}

/// Runs `f`, which must panic, and returns the line of the panic in this file.
fn panic_line(f: impl FnOnce() + std::panic::UnwindSafe) -> u32 {
    record_panics();
    std::panic::catch_unwind(f).expect_err("must panic");
    let (file, line) = take_panic_location().expect("the hook saw the panic");
    assert!(file.ends_with("keyed_api.rs"), "panic located in {file}");
    line
}

#[test]
fn zero_size_panics_point_at_the_caller() {
    let before = line!();
    let line = panic_line(|| {
        let _ = stream::empty::<Item>().chunks_timeout_by_key_result(key, 0, secs(1));
    });
    assert!(before < line && line < before + 6, "line {line}");

    let before = line!();
    let line = panic_line(|| {
        let s = stream::empty::<Item>().chunks_timeout_by_key_result(key, 1, secs(1));
        let _ = s.max_open_keys(0);
    });
    assert!(before + 2 < line && line < before + 6, "line {line}");
}

#[test]
fn construction_outside_a_runtime_does_not_panic() {
    assert!(tokio::runtime::Handle::try_current().is_err());
    let (tx, rx) = mpsc::unbounded::<Item>();
    let s = rx
        .chunks_timeout_by_key_result(key, 4, secs(2))
        .max_open_keys(8);
    assert!(format!("{s:?}").contains("ChunksTimeoutByKeyResult"));
    assert_eq!(s.next_deadline(), None);
    assert_eq!(s.open_keys(), 0);
    drop(s);
    drop(tx);
}

#[test]
fn a_ready_upstream_needs_no_runtime() {
    let values = (0..10u32).map(|n| Ok::<Value, ()>((if n % 2 == 0 { 'a' } else { 'b' }, n)));
    let s = stream::iter(values).chunks_timeout_by_key_result(key, 2, secs(1));
    let out: Vec<_> = futures::executor::block_on(s.collect());
    let batch = |k: char, ns: &[u32]| Ok((k, ns.iter().map(|&n| (k, n)).collect::<Vec<_>>()));
    assert_eq!(
        out,
        vec![
            batch('a', &[0, 2]),
            batch('b', &[1, 3]),
            batch('a', &[4, 6]),
            batch('b', &[5, 7]),
            batch('a', &[8]), // the end: a's last batch opened first
            batch('b', &[9]),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn size_hint_bounds_hold_at_every_step_on_iter_streams() {
    let patterns: Vec<Vec<Item>> = vec![
        vec![],
        vec![Ok(('a', 1))],
        vec![Err("e")],
        vec![Ok(('a', 1)), Ok(('b', 1)), Err("e"), Ok(('a', 2))],
        (0..9).map(|n| Ok((['a', 'b', 'c'][n % 3], 0))).collect(),
        vec![Ok(('a', 1)), Ok(('a', 2)), Ok(('a', 3)), Err("e"), Err("f")],
    ];
    for pattern in patterns {
        for max_items in 1..=3 {
            let mut s = pin!(stream::iter(pattern.clone()).chunks_timeout_by_key_result(
                key,
                max_items,
                secs(1)
            ));
            let mut remaining = {
                let copy = stream::iter(pattern.clone()).chunks_timeout_by_key_result(
                    key,
                    max_items,
                    secs(1),
                );
                copy.collect::<Vec<_>>().await.len()
            };
            loop {
                let (lower, upper) = s.size_hint();
                assert!(
                    lower <= remaining,
                    "{pattern:?}/{max_items}: {lower} > {remaining}"
                );
                assert!(
                    upper.is_none_or(|upper| remaining <= upper),
                    "{pattern:?}/{max_items}: {upper:?} < {remaining}"
                );
                if s.next().await.is_none() {
                    break;
                }
                remaining -= 1;
            }
            assert_eq!(remaining, 0);
            assert_eq!(s.size_hint(), (0, Some(0)));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn debug_shows_the_open_batches_oldest_first() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(rx.chunks_timeout_by_key_result(key, 10, secs(2)));
    tx.unbounded_send(Ok(('z', 1))).unwrap();
    tx.unbounded_send(Ok(('y', 7))).unwrap();
    assert!(poll!(s.next()).is_pending());
    let debug = format!("{s:?}");
    let z = debug.find("('z', 1)").expect("z's value");
    let y = debug.find("('y', 7)").expect("y's value");
    assert!(z < y, "{debug}");
}

#[tokio::test(start_paused = true)]
async fn the_key_function_is_called_exactly_once_per_value() {
    let calls = std::cell::Cell::new(0);
    let values: Vec<Item> = (0..20u32)
        .map(|n| Ok((['a', 'a', 'b', 'c'][n as usize % 4], n)))
        .collect();
    let s = stream::iter(values).chunks_timeout_by_key_result(
        |v: &Value| {
            calls.set(calls.get() + 1);
            v.0
        },
        3,
        secs(1),
    );
    let batches: Vec<_> = s.collect().await;
    let values: usize = batches.iter().map(|b| b.as_ref().unwrap().1.len()).sum();
    assert_eq!((calls.get(), values), (20, 20));
}

#[test]
fn the_adapter_is_send_and_sync_in_every_type_state() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    let plain = stream::iter(Vec::<Item>::new()).chunks_timeout_by_key_result(key, 2, secs(1));
    send_sync(&plain);
    let full = stream::iter(Vec::<Item>::new())
        .chunks_timeout_by_key_result(key, 2, secs(1))
        .max_open_keys(4)
        .max_weight(10, |v: &Value| v.1 as usize)
        .with_batch_info();
    send_sync(&full);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_pipeline_batches_per_key() {
    let values: Vec<Item> = (0..100u32)
        .map(|n| Ok((['a', 'b'][n as usize % 2], n)))
        .collect();
    let handle = tokio::spawn(async move {
        stream::iter(values)
            .chunks_timeout_by_key_result(key, 10, secs(1))
            .collect::<Vec<_>>()
            .await
    });
    let batches = handle.await.unwrap();
    assert_eq!(batches.len(), 10);
    assert!(batches.iter().all(|b| b.as_ref().unwrap().1.len() == 10));
}

/// A key with no `Debug`: the adapter needs none, whatever the crate's features (with
/// `tracing` on, the events then have no `key` field unless `trace_key_with` writes one).
#[derive(Clone, PartialEq, Eq, Hash)]
struct Tenant(char);

#[test]
fn a_key_that_is_not_debug_batches_with_or_without_a_key_formatter() {
    let values =
        || stream::iter((0..6u32).map(|n| Ok::<Value, ()>((['a', 'b'][n as usize % 2], n))));
    let show = |tenant: &Tenant, f: &mut std::fmt::Formatter<'_>| write!(f, "tenant {}", tenant.0);
    for traced in [false, true] {
        let s = values().chunks_timeout_by_key_result(|v| Tenant(v.0), 3, secs(1));
        let s = if traced { s.trace_key_with(show) } else { s };
        let batches: Vec<_> = futures::executor::block_on(s.collect());
        let keys: Vec<char> = batches.iter().map(|b| b.as_ref().unwrap().0.0).collect();
        assert_eq!(keys, vec!['a', 'b']);
    }
}
