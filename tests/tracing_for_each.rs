//! The `tracing` spans and events of `for_each_compensated` (target
//! `result_stream::for_each`), captured by a hand-written subscriber.
#![cfg(feature = "tracing")]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use futures::stream;
use result_stream::{CompensationScope, ResultStreamExt, RetryPolicy};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};

type Fields = BTreeMap<String, String>;

#[derive(Debug, Clone)]
struct SpanRec {
    name: &'static str,
    target: String,
    fields: Fields,
    parent: Option<u64>,
}

#[derive(Debug, Clone)]
struct EventRec {
    fields: Fields,
    span: Option<u64>,
}

impl EventRec {
    fn message(&self) -> &str {
        self.fields.get("message").map_or("", String::as_str)
    }
}

#[derive(Default)]
struct Captured {
    spans: Vec<SpanRec>,
    events: Vec<EventRec>,
    entered: Vec<u64>,
}

/// Records every span and event of the `result_stream::for_each` target.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Captured>>);

struct Visitor<'a>(&'a mut Fields);

impl Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl Subscriber for Capture {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        Interest::sometimes()
    }
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target().starts_with("result_stream")
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let mut state = self.0.lock().unwrap();
        let mut fields = Fields::new();
        attrs.record(&mut Visitor(&mut fields));
        let parent = match attrs.parent() {
            Some(parent) => Some(parent.into_u64()),
            None if attrs.is_contextual() => state.entered.last().copied(),
            None => None,
        };
        state.spans.push(SpanRec {
            name: attrs.metadata().name(),
            target: attrs.metadata().target().to_owned(),
            fields,
            parent,
        });
        Id::from_u64(state.spans.len() as u64)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut state = self.0.lock().unwrap();
        let at = span.into_u64() as usize - 1;
        values.record(&mut Visitor(&mut state.spans[at].fields));
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut state = self.0.lock().unwrap();
        let mut fields = Fields::new();
        event.record(&mut Visitor(&mut fields));
        fields.insert("target".into(), event.metadata().target().to_owned());
        let span = state.entered.last().copied();
        state.events.push(EventRec { fields, span });
    }
    fn enter(&self, span: &Id) {
        self.0.lock().unwrap().entered.push(span.into_u64());
    }
    fn exit(&self, span: &Id) {
        let mut state = self.0.lock().unwrap();
        let at = state.entered.iter().rposition(|&id| id == span.into_u64());
        state.entered.remove(at.expect("exit of a span entered"));
    }
}

fn capture<F: std::future::Future>(run: F) -> (F::Output, Captured) {
    let capture = Capture::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let output = tracing::subscriber::with_default(capture.clone(), || rt.block_on(run));
    let state = std::mem::take(&mut *capture.0.lock().unwrap());
    (output, state)
}

fn field<'a>(fields: &'a Fields, name: &str) -> &'a str {
    fields.get(name).map_or("<missing>", String::as_str)
}

#[test]
fn a_run_with_a_retry_and_a_skip_traces_each_attempt_and_outcome() {
    let calls = Arc::new(AtomicU32::new(0));
    let (done, captured) = capture(async move {
        stream::iter((0..3u32).map(Ok::<u32, &'static str>))
            .for_each_compensated(CompensationScope::new(), move |item, scope| {
                let calls = calls.clone();
                async move {
                    scope.register(|| async { Ok::<(), &'static str>(()) });
                    match (item, calls.fetch_add(1, Ordering::SeqCst)) {
                        (0, 0) => Err("transient"), // item 0: retried once, then committed
                        (1, _) => Err("poison"),    // item 1: both attempts fail, skipped
                        _ => Ok(()),
                    }
                }
            })
            .retry(RetryPolicy::default().attempts(2))
            .skip_failed_items(|_, _| {})
            .await
    });
    let done = done.unwrap();
    assert_eq!((done.items(), done.skipped()), (2, 1));

    let runs: Vec<_> = captured
        .spans
        .iter()
        .enumerate()
        .filter(|(_, span)| span.name == "for_each_compensated")
        .collect();
    assert_eq!(runs.len(), 1);
    let run_id = runs[0].0 as u64 + 1;
    assert_eq!(runs[0].1.target, "result_stream::for_each");

    let attempts: Vec<(String, String)> = captured
        .spans
        .iter()
        .filter(|span| span.name == "item")
        .inspect(|span| assert_eq!(span.parent, Some(run_id), "{span:?}"))
        .map(|span| {
            let (index, attempt) = (field(&span.fields, "index"), field(&span.fields, "attempt"));
            (index.to_owned(), attempt.to_owned())
        })
        .collect();
    let expected = [("0", "1"), ("1", "1"), ("0", "2"), ("1", "2"), ("2", "1")];
    let mut sorted = attempts.clone();
    sorted.sort();
    let mut want: Vec<_> = expected
        .iter()
        .map(|(i, a)| (i.to_string(), a.to_string()))
        .collect();
    want.sort();
    assert_eq!(sorted, want);

    let of = |message: &str| -> Vec<&EventRec> {
        captured
            .events
            .iter()
            .filter(|event| event.message() == message)
            .collect()
    };
    for event in &captured.events {
        assert_eq!(field(&event.fields, "target"), "result_stream::for_each");
        assert!(event.span.is_some(), "inside the run's span: {event:?}");
    }
    let commits: Vec<_> = of("commit")
        .iter()
        .map(|e| field(&e.fields, "index"))
        .collect();
    assert_eq!(commits, vec!["0", "2"]);
    let retries: Vec<_> = of("retry")
        .iter()
        .map(|e| (field(&e.fields, "index"), field(&e.fields, "attempt")))
        .collect();
    assert_eq!(retries, vec![("0", "2"), ("1", "2")]);
    let skips: Vec<_> = of("skip")
        .iter()
        .map(|e| field(&e.fields, "index"))
        .collect();
    assert_eq!(skips, vec!["1"]);
    let rollbacks: Vec<_> = of("rollback")
        .iter()
        .map(|e| {
            let f = &e.fields;
            let (index, ran) = (field(f, "index"), field(f, "ran"));
            (index, ran, field(f, "failed"), field(f, "complete"))
        })
        .collect();
    assert_eq!(
        rollbacks,
        vec![
            ("0", "1", "0", "true"),
            ("1", "1", "0", "true"),
            ("1", "1", "0", "true")
        ]
    );
}

#[test]
fn a_failed_run_traces_its_rollback_with_what_failed() {
    let (result, captured) = capture(async {
        stream::iter((0..2u32).map(Ok::<u32, &'static str>))
            .for_each_compensated(CompensationScope::new(), |item, scope| async move {
                scope.register(|| async { Ok::<(), &'static str>(()) });
                scope.register(|| async { Err::<(), _>("undo refused") });
                if item == 1 { Err("disk full") } else { Ok(()) }
            })
            .await
    });
    let error = result.unwrap_err();
    assert_eq!(error.report().ran(), 2);
    let rollbacks: Vec<_> = captured
        .events
        .iter()
        .filter(|event| event.message() == "rollback")
        .collect();
    assert_eq!(rollbacks.len(), 1);
    let fields = &rollbacks[0].fields;
    assert_eq!(field(fields, "ran"), "2");
    assert_eq!(field(fields, "failed"), "1");
    assert_eq!(field(fields, "complete"), "false");
    assert!(
        !fields.contains_key("index"),
        "the run's rollback has no item"
    );
}
