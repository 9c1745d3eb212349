//! Loading events into a stream: publishes with a message id each, acks awaited; events
//! grouped several to a message (NDJSON) or one per message.

use std::fmt;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use result_stream::BoxError;

use super::error::NatsError;

/// Result of [`publish`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PublishReport {
    /// Messages stored by the broker.
    pub stored: u64,
    /// Messages the broker recognised as duplicates (same `Nats-Msg-Id` within the stream's
    /// duplicate window, 2 min by default) and did not store again.
    pub duplicates: u64,
    /// Time from the first publish to the last publish ack.
    pub elapsed: Duration,
}

impl PublishReport {
    /// Messages (stored + duplicates) per second.
    pub fn per_second(&self) -> f64 {
        (self.stored + self.duplicates) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for PublishReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "published {} new + {} duplicate message(s) in {:.2?} ({:.0} msg/s)",
            self.stored,
            self.duplicates,
            self.elapsed,
            self.per_second()
        )
    }
}

/// Publishes `(message id, payload)` pairs to `subject`, each with `Nats-Msg-Id = id` (a
/// re-publish within the duplicate window is not stored twice), with at most `max_in_flight`
/// publish acks outstanding. Every publish ack is awaited: `Ok` means all are stored.
pub async fn publish<I>(
    js: &jetstream::Context,
    subject: &str,
    messages: I,
    max_in_flight: usize,
) -> Result<PublishReport, NatsError>
where
    I: IntoIterator<Item = (String, Vec<u8>)>,
{
    let started = Instant::now();
    let max_in_flight = max_in_flight.max(1);
    let fail = |source: BoxError| NatsError::Publish {
        subject: subject.to_string(),
        source,
    };
    let mut in_flight = FuturesUnordered::new();
    let (mut stored, mut duplicates) = (0u64, 0u64);
    let mut settle =
        |r: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>| {
            let ack = r.map_err(|e| fail(e.into()))?;
            if ack.duplicate {
                duplicates += 1;
            } else {
                stored += 1;
            }
            Ok::<(), NatsError>(())
        };
    for (id, payload) in messages {
        if in_flight.len() >= max_in_flight
            && let Some(r) = in_flight.next().await
        {
            settle(r)?;
        }
        let ack = js
            .send_publish(
                subject.to_string(),
                PublishMessage::build()
                    .payload(payload.into())
                    .message_id(id),
            )
            .await
            .map_err(|e| fail(e.into()))?;
        in_flight.push(std::future::IntoFuture::into_future(ack));
    }
    while let Some(r) = in_flight.next().await {
        settle(r)?;
    }
    Ok(PublishReport {
        stored,
        duplicates,
        elapsed: started.elapsed(),
    })
}

/// Serialises events to JSON and publishes them with `Nats-Msg-Id = id_of(event)`.
pub async fn publish_json<T, I, F>(
    js: &jetstream::Context,
    subject: &str,
    events: I,
    id_of: F,
    max_in_flight: usize,
) -> Result<PublishReport, NatsError>
where
    T: serde::Serialize,
    I: IntoIterator<Item = T>,
    F: Fn(&T) -> String,
{
    let messages = events.into_iter().map(|e| {
        let payload = serde_json::to_vec(&e).expect("an event serialises");
        (id_of(&e), payload)
    });
    publish(js, subject, messages, max_in_flight).await
}

/// Groups events into messages: `(message id, payload)` with `per_message` events each, one
/// JSON document per line (NDJSON; the last message may hold fewer). With one event per
/// message the payload is the event and the id its own id; otherwise the id is
/// `FIRST+COUNT` (`evt-42-0000000001+100`). The `malformed` lines (`not an event: malformed
/// line K`) are put one each in the middle of the first messages (a line of its own), or,
/// with one event per message or when there are more of them than messages, published as
/// messages of their own after the events.
///
/// ```
/// use event_batcher::source::nats::ndjson_messages;
///
/// let events = ["a", "b", "c"].map(|id| (id.to_string(), format!("{{\"id\":\"{id}\"}}")));
/// let messages: Vec<(String, Vec<u8>)> =
///     ndjson_messages(events.into_iter(), 2, 1, "bad").collect();
/// assert_eq!(messages[0].0, "a+2");
/// assert_eq!(
///     String::from_utf8_lossy(&messages[0].1),
///     "{\"id\":\"a\"}\nnot an event: malformed line 1\n{\"id\":\"b\"}"
/// );
/// assert_eq!(messages[1], ("c+1".to_string(), b"{\"id\":\"c\"}".to_vec()));
/// assert_eq!(messages.len(), 2);
/// ```
pub fn ndjson_messages<I>(
    events: I,
    per_message: usize,
    malformed: u64,
    malformed_id: &str,
) -> impl Iterator<Item = (String, Vec<u8>)> + use<I>
where
    I: Iterator<Item = (String, String)>,
{
    let per_message = per_message.max(1);
    let malformed_line = |k: u64| format!("not an event: malformed line {k}");
    let mut events = events.peekable();
    let mut inserted = 0u64;
    let grouped = std::iter::from_fn(move || {
        let group: Vec<(String, String)> = events.by_ref().take(per_message).collect();
        let (first, _) = group.first()?;
        if per_message == 1 {
            let (id, json) = group.into_iter().next()?;
            return Some((id, json.into_bytes()));
        }
        let id = format!("{first}+{}", group.len());
        let mut lines: Vec<String> = group.into_iter().map(|(_, json)| json).collect();
        if inserted < malformed {
            inserted += 1;
            lines.insert(lines.len().div_ceil(2), malformed_line(inserted));
        }
        Some((id, lines.join("\n").into_bytes()))
    });
    // The malformed lines left over (all of them with one event per message) follow as
    // messages of their own; how many is known once the events are exhausted.
    let mut grouped = grouped.fuse();
    let mut used = 0u64;
    let mut rest: Option<std::ops::RangeInclusive<u64>> = None;
    let malformed_id = malformed_id.to_owned();
    std::iter::from_fn(move || {
        if rest.is_none() {
            if let Some(message) = grouped.next() {
                if per_message > 1 && used < malformed {
                    used += 1;
                }
                return Some(message);
            }
            rest = Some(used + 1..=malformed);
        }
        let k = rest.as_mut()?.next()?;
        let line = if per_message == 1 {
            format!("not an event: malformed message {k}")
        } else {
            malformed_line(k)
        };
        Some((format!("{malformed_id}-{k}"), line.into_bytes()))
    })
}
