//! Loading events into a stream: publishes with a message id each, acks awaited.

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
