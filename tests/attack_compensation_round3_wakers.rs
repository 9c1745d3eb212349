//! Round-3 attack on the rewritten engine of `for_each_compensated`, continued from
//! `attack_compensation_round3.rs`: what a slot's waker and the per-item span promise.

mod compensation_common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use compensation_common::lock;
use futures::stream;
use result_stream::{CompensationScope, ResultStreamExt};

type Err = String;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------------------------------------------------
// Wakers: a slot's waker outlives its item.
// ---------------------------------------------------------------------------------------

/// Rule (`for_each_compensated` rustdoc, Cost): with `concurrency(n)`, `n > 1`, each slot
/// "gets a waker of its own, once, so that only the items that were woken are polled"; and
/// a handler that sleeps once is polled at most 3 times.
///
/// A waker that an ended item left with a waker-keeping resource (an `AtomicWaker`-style
/// "register, then check" that found the resource ready) must not poll the next item in
/// that slot: the slot gets a new waker, as `FuturesUnordered` makes a task per future.
/// (Before, the slot's one waker went to the next item, polled 5 times for one sleep.)
#[tokio::test(start_paused = true)]
async fn a_stale_wake_of_an_ended_items_slot_never_polls_the_next_item() {
    let gate = Arc::new(Mutex::new(None::<std::task::Waker>));
    let polls = Arc::new(Mutex::new(0usize));
    let ringer = gate.clone();
    tokio::spawn(async move {
        for _ in 0..3 {
            tokio::time::sleep(ms(2)).await;
            if let Some(waker) = lock(&ringer).as_ref() {
                waker.wake_by_ref();
            }
        }
    });
    let (g, p) = (gate.clone(), polls.clone());
    let done = stream::iter((0..2u32).map(Ok::<u32, Err>))
        .for_each_compensated(CompensationScope::new(), move |item, _scope| {
            let (gate, polls) = (g.clone(), p.clone());
            async move {
                if item == 0 {
                    // Register interest, find the resource ready, and end.
                    std::future::poll_fn(|cx| {
                        *lock(&gate) = Some(cx.waker().clone());
                        std::task::Poll::Ready(())
                    })
                    .await;
                    return Ok(());
                }
                // Item 1 reuses item 0's slot: it sleeps once.
                let mut sleep = std::pin::pin!(tokio::time::sleep(ms(10)));
                std::future::poll_fn(|cx| {
                    *lock(&polls) += 1;
                    sleep.as_mut().poll(cx)
                })
                .await;
                Ok(())
            }
        })
        .concurrency(2)
        .await
        .unwrap();
    assert_eq!(done.items(), 2);
    let polls = *lock(&polls);
    assert!(
        polls <= 3,
        "item 1 slept once and was polled {polls} times: woken through item 0's waker"
    );
}

// ---------------------------------------------------------------------------------------
// Tracing: "a span per item attempt" for a subscriber that wants spans.
// ---------------------------------------------------------------------------------------

#[cfg(feature = "tracing")]
mod spans {
    use super::*;
    use tracing::span::{Attributes, Id, Record};
    use tracing::subscriber::Interest;
    use tracing::{Event, Metadata, Subscriber};

    /// A subscriber that wants spans, every span, and no events (a span exporter).
    #[derive(Clone, Default)]
    struct SpansOnly(Arc<Mutex<Vec<&'static str>>>);

    impl Subscriber for SpansOnly {
        fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
            match metadata.is_span() {
                true => Interest::always(),
                false => Interest::never(),
            }
        }
        fn enabled(&self, metadata: &Metadata<'_>) -> bool {
            metadata.is_span()
        }
        fn new_span(&self, attrs: &Attributes<'_>) -> Id {
            let mut names = lock(&self.0);
            names.push(attrs.metadata().name());
            Id::from_u64(names.len() as u64)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, _: &Event<'_>) {}
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    /// Rule (feature `tracing`): a span per item attempt, skipped only when no subscriber
    /// wants it. Whether one wants it is asked for a span, not for an event: a subscriber
    /// (or a per-layer filter) that enables spans and not events, such as a span exporter
    /// filtered with `metadata.is_span()`, gets every item span (it once got none).
    #[test]
    fn a_subscriber_that_wants_spans_gets_one_per_item_attempt() {
        for concurrency in [1, 2] {
            let spans = SpansOnly::default();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            let done = tracing::subscriber::with_default(spans.clone(), || {
                rt.block_on(
                    stream::iter((0..3u32).map(Ok::<u32, Err>))
                        .for_each_compensated(CompensationScope::new(), |_, _| async { Ok(()) })
                        .concurrency(concurrency),
                )
            })
            .unwrap();
            assert_eq!(done.items(), 3);
            let names = lock(&spans.0).clone();
            assert!(names.contains(&"for_each_compensated"), "{names:?}");
            let items = names.iter().filter(|name| **name == "item").count();
            assert_eq!(items, 3, "concurrency {concurrency}: spans {names:?}");
        }
    }
}
