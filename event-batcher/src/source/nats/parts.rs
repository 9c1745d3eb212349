//! A message of several events (NDJSON, one event per line): one hook per event, and the
//! message's verdict once every one of them is settled.
//!
//! The table of verdicts is on [`EventAck`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::BoxFuture;
use result_stream::BoxError;

use super::ack::{NatsAck, Verdict};
use super::stats::EventCounters;
use crate::mutex::lock;
use crate::record::AckHandle;

/// What happened to one event, weakest first: the message gets the strongest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Rejected,
    Acked,
    GivenUp,
    GivenBack,
    Nacked,
    Abandoned,
}

/// The message's side: its hook, and what its events got so far.
struct Message {
    ack: NatsAck,
    /// Events without a verdict yet.
    left: usize,
    /// The strongest outcome so far.
    strongest: Outcome,
}

/// The hook of one event of a message of several.
///
/// The events of one message may end up in different batches (and, with `--per-tenant`,
/// batches of different keys), committed or rolled back at different times. The message
/// stays held (and kept alive) until the last of its events has a verdict, then gets one
/// verdict, the strongest of theirs (the first row, top down, that one of its events got):
///
/// | some event was …                          | the message                          |
/// |-------------------------------------------|--------------------------------------|
/// | left without a verdict (rows not deleted) | no verdict: redelivered after `ack_wait` |
/// | rolled back (nak)                         | `-NAK` with the nak delay            |
/// | dropped unsettled (shutdown)              | `-NAK` at once                       |
/// | given up after `--max-deliveries`         | `+TERM` (its event is a dead letter) |
/// | committed                                 | `+ACK`                               |
/// | (every event rejected as invalid)         | `+TERM`                              |
///
/// So a message is acknowledged only once every valid event in it is committed; a
/// redelivered message brings back its committed events too, which the idempotent insert
/// finds present (one row per event). An invalid line is rejected alone: it goes to the
/// rejects file, and the rest of its message is written.
pub struct EventAck {
    message: Arc<Mutex<Message>>,
    settled: bool,
    /// Delivery attempt of the message (1 for the first delivery).
    delivered: i64,
}

impl fmt::Debug for EventAck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventAck(delivery {})", self.delivered)
    }
}

/// The hooks of the `events` events of the message `ack` (one per event, in order).
pub(super) fn split(ack: NatsAck, events: usize) -> Vec<EventAck> {
    let delivered = ack.delivered;
    let message = Arc::new(Mutex::new(Message {
        ack,
        left: events,
        strongest: Outcome::Rejected,
    }));
    (0..events)
        .map(|_| EventAck {
            message: message.clone(),
            settled: false,
            delivered,
        })
        .collect()
}

impl EventAck {
    /// Records this event's outcome; the last event of the message sends its verdict.
    fn settle(&mut self, outcome: Outcome) -> Result<(), BoxError> {
        if std::mem::replace(&mut self.settled, true) {
            return Ok(());
        }
        let mut message = lock(&self.message);
        let counter: fn(&EventCounters) -> &AtomicU64 = match outcome {
            Outcome::Rejected => |e| &e.rejected,
            Outcome::Acked => |e| &e.acked,
            Outcome::GivenUp => |e| &e.dead_lettered,
            Outcome::GivenBack => |e| &e.given_back,
            Outcome::Nacked => |e| &e.nacked,
            Outcome::Abandoned => |e| &e.abandoned,
        };
        counter(&message.ack.stats().events).fetch_add(1, Ordering::Relaxed);
        message.strongest = message.strongest.max(outcome);
        message.left -= 1;
        if message.left > 0 {
            return Ok(());
        }
        let verdict = match message.strongest {
            Outcome::Abandoned => {
                message.ack.leave();
                return Ok(());
            }
            Outcome::Nacked => Verdict::Nak,
            Outcome::GivenBack => Verdict::GiveBack,
            Outcome::GivenUp => Verdict::GiveUp,
            Outcome::Acked => Verdict::Ack,
            Outcome::Rejected => Verdict::Reject,
        };
        message.ack.settle(verdict)
    }

    fn verdict(&mut self, outcome: Outcome) -> BoxFuture<'static, Result<(), BoxError>> {
        futures::future::ready(self.settle(outcome)).boxed()
    }
}

impl AckHandle for EventAck {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>> {
        self.verdict(Outcome::Acked)
    }
    fn nak(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>> {
        self.verdict(Outcome::Nacked)
    }
    fn reject(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>> {
        self.verdict(Outcome::Rejected)
    }
    fn deliveries(&self) -> Option<u64> {
        u64::try_from(self.delivered).ok()
    }
    fn give_up(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>> {
        self.verdict(Outcome::GivenUp)
    }
    fn abandon(mut self: Box<Self>) {
        let _ = self.settle(Outcome::Abandoned);
    }
}

impl Drop for EventAck {
    fn drop(&mut self) {
        let _ = self.settle(Outcome::GivenBack);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use tokio::sync::mpsc;

    use super::*;
    use crate::source::nats::ack::{Op, Shared};
    use crate::source::nats::stats::SourceStats;

    const OUTCOMES: [Outcome; 6] = [
        Outcome::Rejected,
        Outcome::Acked,
        Outcome::GivenUp,
        Outcome::GivenBack,
        Outcome::Nacked,
        Outcome::Abandoned,
    ];

    fn source() -> (Arc<Shared>, mpsc::UnboundedReceiver<Op>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            tx,
            held: Mutex::default(),
            next_token: AtomicU64::new(0),
            stats: Arc::new(SourceStats::default()),
        });
        (shared, rx)
    }

    /// Settles `hook` the way the pipeline would for `outcome` (a drop for "given back").
    fn apply(hook: EventAck, outcome: Outcome) {
        let hook = Box::new(hook);
        let result = match outcome {
            Outcome::Rejected => hook.reject().now_or_never(),
            Outcome::Acked => hook.ack().now_or_never(),
            Outcome::GivenUp => hook.give_up().now_or_never(),
            Outcome::Nacked => hook.nak().now_or_never(),
            Outcome::Abandoned => {
                hook.abandon();
                Some(Ok(()))
            }
            Outcome::GivenBack => {
                drop(hook);
                Some(Ok(()))
            }
        };
        result
            .expect("settling is immediate")
            .expect("the verdict is queued");
    }

    /// Every permutation of `0..n`.
    fn orders(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![Vec::new()];
        }
        let mut all = Vec::new();
        for order in orders(n - 1) {
            for at in 0..=order.len() {
                let mut longer = order.clone();
                longer.insert(at, n - 1);
                all.push(longer);
            }
        }
        all
    }

    /// Exhaustive for messages of 1 to 3 events (every outcome of every event, settled in
    /// every order) and of 4 events (every outcome, two orders): the message is held until
    /// its last event is settled, then gets exactly one verdict, the strongest of its
    /// events' outcomes (none when one was left for redelivery), and every event is counted
    /// once under its own outcome.
    #[test]
    fn a_split_message_gets_one_verdict_once_every_event_has_one() {
        let mut cases = 0;
        for events in 1..=4usize {
            let all_orders = orders(events);
            let orders = if events == 4 {
                vec![
                    all_orders[0].clone(),
                    all_orders[all_orders.len() - 1].clone(),
                ]
            } else {
                all_orders
            };
            let combos = OUTCOMES.len().pow(events as u32);
            for combo in 0..combos {
                let outcomes: Vec<Outcome> = (0..events)
                    .map(|i| OUTCOMES[combo / OUTCOMES.len().pow(i as u32) % OUTCOMES.len()])
                    .collect();
                for order in &orders {
                    check(&outcomes, order);
                    cases += 1;
                }
            }
        }
        // 6 + 6² × 2 orders + 6³ × 6 orders + 6⁴ × 2 orders.
        assert_eq!(cases, 6 + 36 * 2 + 216 * 6 + 1296 * 2);
    }

    fn check(outcomes: &[Outcome], order: &[usize]) {
        let (shared, mut verdicts) = source();
        let ack = shared.hold("$JS.ACK.S.C.2.9.9.0.0".into(), 9, 2);
        let mut hooks: Vec<Option<EventAck>> =
            split(ack, outcomes.len()).into_iter().map(Some).collect();
        for (step, &event) in order.iter().enumerate() {
            assert!(
                verdicts.try_recv().is_err(),
                "{outcomes:?} {order:?}: early verdict"
            );
            assert_eq!(lock(&shared.held).len(), 1, "held until the last event");
            let hook = hooks[event].take().expect("settled once");
            assert_eq!(hook.deliveries(), Some(2));
            apply(hook, outcomes[event]);
            let last = step + 1 == order.len();
            if !last {
                continue;
            }
            assert!(
                lock(&shared.held).is_empty(),
                "released after the last event"
            );
            let strongest = *outcomes.iter().max().expect("an event");
            let expected = match strongest {
                Outcome::Abandoned => None,
                Outcome::Nacked => Some(Verdict::Nak),
                Outcome::GivenBack => Some(Verdict::GiveBack),
                Outcome::GivenUp => Some(Verdict::GiveUp),
                Outcome::Acked => Some(Verdict::Ack),
                Outcome::Rejected => Some(Verdict::Reject),
            };
            let sent = verdicts.try_recv().ok().map(|op| op.verdict);
            assert_eq!(sent, expected, "{outcomes:?} {order:?}");
            assert!(verdicts.try_recv().is_err(), "one verdict only");
        }
        let stats = shared.stats.snapshot();
        let count = |outcome| outcomes.iter().filter(|o| **o == outcome).count() as u64;
        let events = stats.events;
        assert_eq!(events.acked, count(Outcome::Acked));
        assert_eq!(events.nacked, count(Outcome::Nacked));
        assert_eq!(events.rejected, count(Outcome::Rejected));
        assert_eq!(events.dead_lettered, count(Outcome::GivenUp));
        assert_eq!(events.given_back, count(Outcome::GivenBack));
        assert_eq!(events.abandoned, count(Outcome::Abandoned));
        assert_eq!(
            stats.abandoned,
            u64::from(outcomes.contains(&Outcome::Abandoned))
        );
    }
}
