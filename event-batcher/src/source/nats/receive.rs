//! The receiving task: reads the source's inbox (every pull request is answered there),
//! holds each message as it arrives (so the keep-alive covers it from then on), turns it
//! into records, and passes them, with the ends of pull requests, to the record stream.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_nats::{Client, Message, StatusCode, Subject};
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;

use super::ack::Shared;
use super::error::one_line;
use super::parts;
use crate::record::{Position, Record, RecordBody};

/// What the inbox brought.
pub(super) enum Delivery {
    /// The inbox is subscribed: pull requests may be sent.
    Subscribed,
    /// A message: its records (one, or one per event of an NDJSON message).
    Message(Vec<Record>),
    /// A pull request ended (expired, or ended by the server) with this many of its
    /// messages not delivered (`None`: the server did not say).
    Ended(Option<usize>),
    /// The inbox or the pull failed (retried).
    Failed(String),
    /// The consumer cannot deliver any more (deleted, or not a pull consumer).
    Fatal(String),
}

/// Most messages passed on in one run: what had arrived together, up to this.
const RUN: usize = 64;

/// Subscribes `inbox` and passes what arrives on `tx` until the stream drops its end, in
/// runs of what had arrived together (one wake-up of the stream per run, not per message).
/// The messages that had already arrived then are given back (`-NAK`, no delay).
pub(super) async fn receive(
    client: Client,
    inbox: Subject,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Vec<Delivery>>,
) {
    let mut inbox = match client.subscribe(inbox).await {
        Ok(subscriber) => subscriber,
        Err(error) => {
            let _ = tx.send(vec![Delivery::Failed(one_line(&error))]);
            return;
        }
    };
    if tx.send(vec![Delivery::Subscribed]).is_err() {
        return;
    }
    loop {
        let message = tokio::select! {
            _ = tx.closed() => break,
            message = inbox.next() => message,
        };
        let Some(message) = message else {
            let _ = tx.send(vec![Delivery::Failed(
                "the inbox subscription ended".into(),
            )]);
            return;
        };
        let mut run: Vec<Delivery> = classify(message, &shared).into_iter().collect();
        while run.len() < RUN
            && let Some(Some(message)) = inbox.next().now_or_never()
        {
            run.extend(classify(message, &shared));
        }
        if !run.is_empty() && tx.send(run).is_err() {
            // The stream is gone: what was just made is dropped, hence given back.
            break;
        }
    }
    let _ = inbox.unsubscribe().await;
    // Dropped at once: given back.
    while let Some(Some(message)) = inbox.next().now_or_never() {
        drop(classify(message, &shared));
    }
}

/// A message of the inbox as a delivery; `None` for what needs no action (a heartbeat).
fn classify(message: Message, shared: &Arc<Shared>) -> Option<Delivery> {
    let status = message.status.unwrap_or(StatusCode::OK);
    if status == StatusCode::OK {
        return records(message, shared).map(Delivery::Message);
    }
    if status == StatusCode::IDLE_HEARTBEAT {
        return None;
    }
    let description = message.description.clone().unwrap_or_default();
    if status == StatusCode::TIMEOUT
        || status == StatusCode::REQUEST_TERMINATED
        || status == StatusCode::NOT_FOUND
    {
        let lower = description.to_lowercase();
        if lower.contains("consumer deleted") || lower.contains("push based") {
            return Some(Delivery::Fatal(format!("{status}: {description}")));
        }
        let pending = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get("Nats-Pending-Messages"))
            .and_then(|value| value.as_str().parse().ok());
        return Some(Delivery::Ended(pending));
    }
    if status == StatusCode::NO_RESPONDERS {
        return Some(Delivery::Failed(
            "no responders: the stream or consumer is not available".into(),
        ));
    }
    Some(Delivery::Failed(format!(
        "error while processing messages from the stream: {status}, {description}"
    )))
}

/// The records of one JetStream message (held from now on), or `None` when it cannot be
/// acknowledged (not a JetStream delivery).
fn records(message: Message, shared: &Arc<Shared>) -> Option<Vec<Record>> {
    let reply = message.reply?;
    let (stream_seq, delivered) = ack_info(&reply).unwrap_or((0, 1));
    let stats = &shared.stats;
    stats.received.fetch_add(1, Ordering::Relaxed);
    if delivered > 1 {
        stats.redelivered.fetch_add(1, Ordering::Relaxed);
    }
    let ack = shared.hold(reply, stream_seq, delivered);
    let payload = &message.payload[..];
    let lines = event_lines(payload);
    let records = if lines.len() <= 1 {
        vec![Record {
            position: Position::Sequence(stream_seq),
            body: RecordBody::Json(payload.to_vec()),
            ack: Some(Box::new(ack)),
        }]
    } else {
        let hooks = parts::split(ack, lines.len());
        lines
            .into_iter()
            .zip(hooks)
            .map(|((line, bytes), hook)| Record {
                position: Position::MessageLine {
                    message: stream_seq,
                    line,
                },
                body: RecordBody::Json(bytes.to_vec()),
                ack: Some(Box::new(hook)),
            })
            .collect()
    };
    let events = records.len() as u64;
    stats.events.received.fetch_add(events, Ordering::Relaxed);
    Some(records)
}

/// The non-blank lines of a payload, with their 1-based line numbers. A payload of one
/// line (with or without a final newline) is one event.
fn event_lines(payload: &[u8]) -> Vec<(u64, &[u8])> {
    payload
        .split(|&byte| byte == b'\n')
        .zip(1u64..)
        .filter(|(line, _)| !line.iter().all(u8::is_ascii_whitespace))
        .map(|(line, number)| (number, line))
        .collect()
}

/// `(stream sequence, delivery attempt)` from a JetStream reply subject:
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>`, or
/// the longer form with a domain and an account hash after `$JS.ACK`.
fn ack_info(reply: &str) -> Option<(u64, i64)> {
    let tokens: Vec<&str> = reply.split('.').collect();
    let at = match tokens.len() {
        9 => 4,
        n if n >= 11 => 6,
        _ => return None,
    };
    if tokens.first() != Some(&"$JS") || tokens.get(1) != Some(&"ACK") {
        return None;
    }
    let delivered = tokens[at].parse().ok()?;
    let stream_seq = tokens[at + 1].parse().ok()?;
    Some((stream_seq, delivered))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_subjects_give_sequence_and_delivery() {
        assert_eq!(
            ack_info("$JS.ACK.S.C.3.1042.17.1700000000.5"),
            Some((1042, 3))
        );
        assert_eq!(
            ack_info("$JS.ACK.dom.acchash.S.C.1.7.7.1700000000.0.token"),
            Some((7, 1))
        );
        assert_eq!(ack_info("_INBOX.abc"), None);
        assert_eq!(ack_info("$JS.ACK.S.C.x.1.1.1.1"), None);
    }

    #[test]
    fn a_message_is_split_into_its_non_blank_lines() {
        let lines = event_lines(b"{\"a\":1}\n\n  \n{\"b\":2}\r\n{\"c\":3}\n");
        let numbers: Vec<u64> = lines.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [1, 4, 5]);
        assert_eq!(lines[1].1, b"{\"b\":2}\r");
        assert_eq!(event_lines(b"{\"a\":1}\n").len(), 1);
        assert_eq!(event_lines(b"").len(), 0);
    }
}
