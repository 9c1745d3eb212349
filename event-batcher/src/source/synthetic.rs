//! Generated events: the default source.
//!
//! Rules:
//! - event `n` (1-based) has the id `evt-{seed}-{n:010}`: ids are deterministic, so running
//!   the same command twice produces the same events and the second run stores nothing new
//!   (that is the idempotency demonstration), while another `--seed` produces new events;
//! - tenant and payload are drawn from a random generator seeded with `seed`; `ts` is the
//!   wall-clock time when the event is generated;
//! - with `rate > 0`, event `n` is released no earlier than `(n - 1) / rate` seconds after the
//!   first one: the schedule is fixed, so the average rate is exact, and after a slow
//!   consumer held the stream back it catches up at full speed until it is on schedule again;
//! - with `rate == 0` events are produced as fast as they are pulled, and the stream never
//!   returns `Pending` (so every batch but the last fills up to `--max-batch`).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use serde::Serialize;
use tokio::time::Instant;

use super::{Position, Record, RecordBody, RecordStream};
use crate::event::Event;

const TENANTS: [&str; 8] = [
    "acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "tyrell",
];
const KINDS: [&str; 4] = ["click", "view", "purchase", "signup"];

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticSpec {
    /// How many events.
    pub events: u64,
    /// Events per second; `0.0` means as fast as possible.
    pub rate: f64,
    /// Seed of the ids and of the random fields.
    pub seed: u64,
}

impl fmt::Display for SyntheticSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "synthetic ({} events, ", self.events)?;
        if self.rate > 0.0 {
            write!(f, "{} per second", self.rate)?;
        } else {
            f.write_str("as fast as possible")?;
        }
        write!(f, ", seed {})", self.seed)
    }
}

impl SyntheticSpec {
    /// The longest run a `rate` may schedule: the last event is due at most this long after
    /// the first (a slower rate is refused, rather than overflow the schedule).
    pub const MAX_SCHEDULE: Duration = Duration::from_secs(366 * 24 * 3600);

    /// Checks the rate: `0` (as fast as possible), or a finite positive number at which the
    /// last event is due within [`MAX_SCHEDULE`](Self::MAX_SCHEDULE).
    pub fn check(&self) -> Result<(), String> {
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            return Err(format!("--rate must be a number >= 0, got {}", self.rate));
        }
        if self.rate > 0.0
            && self
                .due(self.events)
                .is_none_or(|due| due > Self::MAX_SCHEDULE)
        {
            return Err(format!(
                "--rate {} is too slow: the last of {} events would be due more than a year \
                 after the first",
                self.rate, self.events
            ));
        }
        Ok(())
    }

    /// When event `n` (1-based) is due after the first at `rate > 0`; `None` beyond
    /// `Duration`.
    fn due(&self, n: u64) -> Option<Duration> {
        Duration::try_from_secs_f64(n.saturating_sub(1) as f64 / self.rate).ok()
    }
}

/// The id of event `n` (1-based) for `seed`.
pub fn event_id(seed: u64, n: u64) -> String {
    format!("evt-{seed}-{n:010}")
}

struct State {
    spec: SyntheticSpec,
    next: u64,
    rng: fastrand::Rng,
    started: Option<Instant>,
}

/// The stream of `spec.events` generated records.
pub fn stream(spec: SyntheticSpec) -> RecordStream {
    let rng = fastrand::Rng::with_seed(spec.seed);
    let state = State {
        spec,
        next: 1,
        rng,
        started: None,
    };
    futures::stream::unfold(state, |mut state| async move {
        let n = state.next;
        if n > state.spec.events {
            return None;
        }
        state.next += 1;
        if state.spec.rate > 0.0 {
            let started = *state.started.get_or_insert_with(Instant::now);
            // Never a panic, even for a spec that did not pass `check`: an event due beyond
            // what the clock can represent is never released.
            match state.spec.due(n).and_then(|due| started.checked_add(due)) {
                Some(due) if due > Instant::now() => tokio::time::sleep_until(due).await,
                Some(_) => {}
                None => std::future::pending().await,
            }
        }
        let event = generate(&mut state.rng, state.spec.seed, n);
        let record = Record {
            position: Position::Sequence(n),
            body: RecordBody::Event(event),
            ack: None,
        };
        Some((Ok(record), state))
    })
    .boxed()
}

/// The events [`stream`] generates for `seed` (at rate 0), `count` of them, as an iterator
/// (the `publish` command loads them into a broker).
pub fn events(seed: u64, count: u64) -> impl Iterator<Item = Event> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (1..=count).map(move |n| generate(&mut rng, seed, n))
}

/// The payload of a generated event, e.g. `{"amount":1234,"kind":"click","seq":7}`: its
/// fields in alphabetical order (the order serde_json writes the keys of a map), serialized
/// straight to text, without building a JSON value first.
#[derive(Serialize)]
struct Payload {
    amount: u32,
    kind: &'static str,
    seq: u64,
}

fn generate(rng: &mut fastrand::Rng, seed: u64, n: u64) -> Event {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        });
    // Drawn in this order: tenant, kind, amount (the events of a seed never change).
    let tenant = TENANTS[rng.usize(..TENANTS.len())];
    let kind = KINDS[rng.usize(..KINDS.len())];
    let amount = rng.u32(0..10_000);
    Event {
        id: event_id(seed, n),
        tenant: tenant.to_owned(),
        ts,
        payload: serde_json::value::to_raw_value(&Payload {
            amount,
            kind,
            seq: n,
        })
        .expect("a struct of numbers and strings serialises"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn generates_deterministic_ids_and_the_requested_count() {
        let spec = SyntheticSpec {
            events: 3,
            rate: 0.0,
            seed: 9,
        };
        let records: Vec<_> = stream(spec).collect().await;
        let ids: Vec<String> = records
            .into_iter()
            .map(|r| match r.unwrap().body {
                RecordBody::Event(e) => e.id,
                other => panic!("synthetic records are events, got {other:?}"),
            })
            .collect();
        assert_eq!(
            ids,
            ["evt-9-0000000001", "evt-9-0000000002", "evt-9-0000000003"]
        );
        let from_iterator: Vec<String> = events(9, 3).map(|e| e.id).collect();
        assert_eq!(from_iterator, ids);
    }

    /// The events of a seed never change: payload text, tenant and the order of the random
    /// draws are those of the first version, which built a `serde_json::json!` value.
    #[test]
    fn generates_the_same_events_as_a_json_value_would() {
        let mut rng = fastrand::Rng::with_seed(5);
        for (n, event) in (1..=200).zip(events(5, 200)) {
            let tenant = TENANTS[rng.usize(..TENANTS.len())];
            let expected = serde_json::json!({
                "seq": n,
                "kind": KINDS[rng.usize(..KINDS.len())],
                "amount": rng.u32(0..10_000),
            });
            assert_eq!(event.id, event_id(5, n));
            assert_eq!(event.tenant, tenant);
            assert_eq!(event.payload.get(), expected.to_string());
        }
        // As the first version stored them (read back from its database).
        let first: Vec<(String, String, String)> = events(5, 3)
            .map(|e| (e.id, e.tenant, e.payload.get().to_owned()))
            .collect();
        let stored = [
            (
                "evt-5-0000000001",
                "globex",
                r#"{"amount":5639,"kind":"click","seq":1}"#,
            ),
            (
                "evt-5-0000000002",
                "initech",
                r#"{"amount":7895,"kind":"signup","seq":2}"#,
            ),
            (
                "evt-5-0000000003",
                "wayne",
                r#"{"amount":2862,"kind":"signup","seq":3}"#,
            ),
        ]
        .map(|(id, tenant, payload)| (id.to_owned(), tenant.to_owned(), payload.to_owned()));
        assert_eq!(first, stored);
    }

    #[tokio::test(start_paused = true)]
    async fn paces_events_at_the_rate() {
        let spec = SyntheticSpec {
            events: 11,
            rate: 10.0,
            seed: 1,
        };
        let started = Instant::now();
        let count = stream(spec).count().await;
        assert_eq!(count, 11);
        // 11 events at 10 per second: the last is due 1 s after the first.
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    /// Each event is released at its own time, not all in a burst at the end (a pacing that
    /// only got the total right would pass the test above): event `n` (1-based) arrives
    /// exactly `(n - 1) / rate` after the first, on the paused clock.
    #[tokio::test(start_paused = true)]
    async fn releases_each_event_at_its_own_time() {
        let spec = SyntheticSpec {
            events: 6,
            rate: 4.0,
            seed: 1,
        };
        let started = Instant::now();
        let arrivals: Vec<Duration> = stream(spec).map(|_| started.elapsed()).collect().await;
        let expected: Vec<Duration> = (0..6u64).map(|i| Duration::from_millis(250 * i)).collect();
        assert_eq!(arrivals, expected);
    }
}
