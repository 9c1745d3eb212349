//! The `tracing` feature's batch events: one event per flushed batch, target
//! `result_stream::batch`, with fields `reason`, `len`, `weight` (with a weight cap),
//! `age_ms` and, for keyed batches given `trace_key_with`, `key`. Checked with a capturing
//! subscriber on a paused clock.
#![cfg(feature = "tracing")]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc;
use futures::{StreamExt, poll};
use result_stream::ResultStreamExt;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// The events seen, each as its fields' `Debug` text by name (and `target`).
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<BTreeMap<String, String>>>>);

impl Capture {
    fn events(&self) -> Vec<BTreeMap<String, String>> {
        self.0.lock().unwrap().clone()
    }
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = BTreeMap::new();
        fields.insert("target".to_owned(), event.metadata().target().to_owned());
        fields.insert("level".to_owned(), event.metadata().level().to_string());
        event.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(fields);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// `pairs` as an event's expected fields.
fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut fields: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    fields.insert("target".to_owned(), "result_stream::batch".to_owned());
    fields.insert("level".to_owned(), "DEBUG".to_owned());
    fields.insert("message".to_owned(), "batch flushed".to_owned());
    fields
}

#[tokio::test(start_paused = true)]
async fn a_deadline_flush_is_one_event_with_reason_len_weight_and_age() {
    let capture = Capture::default();
    let _subscriber = tracing::subscriber::set_default(capture.clone());
    let (tx, rx) = mpsc::unbounded::<Result<u32, &str>>();
    let mut batches = pin!(
        rx.chunks_timeout_result(10, Duration::from_secs(2))
            .max_weight(100, |v: &u32| *v as usize)
    );
    tx.unbounded_send(Ok(3)).unwrap();
    tx.unbounded_send(Ok(4)).unwrap();
    assert!(poll!(batches.next()).is_pending());
    assert!(capture.events().is_empty(), "no event before a flush");

    assert_eq!(batches.next().await, Some(Ok(vec![3, 4])));
    assert_eq!(
        capture.events(),
        vec![fields(&[
            ("reason", "Deadline"),
            ("len", "2"),
            ("weight", "7"),
            ("age_ms", "2000"),
        ])]
    );
}

#[tokio::test(start_paused = true)]
async fn an_error_flushes_each_open_key_with_an_event_naming_the_key() {
    let capture = Capture::default();
    let _subscriber = tracing::subscriber::set_default(capture.clone());
    let (tx, rx) = mpsc::unbounded::<Result<(&str, u32), &str>>();
    let batches = rx.chunks_timeout_by_key_result(|v| v.0, 10, Duration::from_secs(5));
    let mut batches = pin!(batches.trace_key_with(Debug::fmt));
    tx.unbounded_send(Ok(("a", 1))).unwrap();
    assert!(poll!(batches.next()).is_pending());
    tokio::time::advance(Duration::from_millis(1_500)).await;
    tx.unbounded_send(Ok(("b", 2))).unwrap();
    tx.unbounded_send(Ok(("a", 3))).unwrap();
    tx.unbounded_send(Err("bad frame")).unwrap();

    assert_eq!(
        batches.next().await,
        Some(Ok(("a", vec![("a", 1), ("a", 3)])))
    );
    assert_eq!(batches.next().await, Some(Ok(("b", vec![("b", 2)]))));
    assert_eq!(batches.next().await, Some(Err("bad frame")));
    assert_eq!(
        capture.events(),
        vec![
            fields(&[
                ("reason", "Error"),
                ("len", "2"),
                ("age_ms", "1500"),
                ("key", "\"a\""),
            ]),
            fields(&[
                ("reason", "Error"),
                ("len", "1"),
                ("age_ms", "0"),
                ("key", "\"b\""),
            ]),
        ],
        "no weight field without a weight cap; nothing for the error itself"
    );
}

#[tokio::test(start_paused = true)]
async fn every_flush_reason_is_one_event() {
    let capture = Capture::default();
    let _subscriber = tracing::subscriber::set_default(capture.clone());
    let values = futures::stream::iter([1, 2, 3, 40, 5].map(Ok::<u32, ()>));
    let batches: Vec<_> = values
        .chunks_timeout_result(2, Duration::from_secs(1))
        .max_weight(10, |v: &u32| *v as usize)
        .collect()
        .await;
    assert_eq!(batches.len(), 4);
    let reasons: Vec<_> = capture
        .events()
        .into_iter()
        .map(|event| (event["reason"].clone(), event["len"].clone()))
        .collect();
    let expected = [
        ("Full", "2"),
        ("Weight", "1"),
        ("Weight", "1"),
        ("End", "1"),
    ];
    assert_eq!(
        reasons,
        expected.map(|(r, l)| (r.to_owned(), l.to_owned())).to_vec()
    );
}
