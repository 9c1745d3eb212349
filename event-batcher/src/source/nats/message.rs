//! One JetStream message as records: one event, or one per line of an NDJSON message (each
//! with its share of the message's hook, see [`parts`](super::parts)).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_nats::Message;

use super::ack::Shared;
use super::parts;
use crate::record::{Position, Record, RecordBody};

/// The records of one JetStream message (held from now on), or `None` when it cannot be
/// acknowledged (not a JetStream delivery).
pub(super) fn records(message: Message, shared: &Arc<Shared>) -> Option<Vec<Record>> {
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
