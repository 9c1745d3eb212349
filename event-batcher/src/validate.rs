//! Parsing and validation: the step every record goes through, whatever its source, so
//! that every source gets the same rules (those of [`crate::event`]) and the same reporting
//! of invalid input.

use std::fmt;

use crate::event::Event;
use crate::record::{Ack, Position, Record, RecordBody};

/// How much of a rejected line is quoted in a human-readable message (the `--rejects` file
/// always holds the whole line).
const QUOTE_CHARS: usize = 80;

/// A valid event on its way to a batch, with the acknowledgement hook of its source.
#[derive(Debug)]
pub struct Incoming {
    /// The event.
    pub event: Event,
    /// Where it came from (line number or message sequence).
    pub position: Position,
    /// Acknowledged after the event's batch commits, negatively acknowledged after it is
    /// rolled back; `None` for sources without acknowledgements (synthetic, NDJSON).
    pub ack: Option<Ack>,
}

/// A record that failed parsing or validation.
#[derive(Debug)]
pub struct Rejected {
    /// Where it came from; for NDJSON, the 1-based line number.
    pub position: Position,
    /// Why it was rejected, in one line.
    pub reason: String,
    /// The record as read (invalid UTF-8 replaced by U+FFFD); of a line too long to be kept
    /// in memory, its first bytes followed by `…`.
    pub raw: String,
    /// The source's acknowledgement hook: a rejected record is
    /// [rejected](crate::record::AckHandle::reject) (never redelivered).
    pub ack: Option<Ack>,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.position, self.reason)?;
        if !self.raw.trim().is_empty() {
            write!(f, " (in {})", quote(&self.raw))?;
        }
        Ok(())
    }
}

/// A short quotation of `raw` for messages.
fn quote(raw: &str) -> String {
    let mut quoted: String = raw.chars().take(QUOTE_CHARS).collect();
    if raw.chars().nth(QUOTE_CHARS).is_some() {
        quoted.push('…');
    }
    format!("{quoted:?}")
}

/// Parses and validates one record: the step the pipeline runs in `map_ok_stream`.
///
/// A JSON record is parsed with the rules of [`crate::event`]; an already
/// built event (synthetic source) is only checked.
pub fn validate(record: Record) -> Result<Incoming, Rejected> {
    let Record {
        position,
        body,
        ack,
    } = record;
    let (parsed, raw) = match body {
        RecordBody::Oversized { head, bytes, limit } => {
            let reason = format!("line is {bytes} bytes long, at most {limit} allowed");
            let mut raw = String::from_utf8_lossy(&head).into_owned();
            raw.push('…');
            return Err(Rejected {
                position,
                reason,
                raw,
                ack,
            });
        }
        RecordBody::Json(bytes) => {
            let parsed = parse_json(&bytes);
            (parsed, bytes)
        }
        RecordBody::Event(event) => {
            let raw = match event.check() {
                Ok(()) => {
                    return Ok(Incoming {
                        event,
                        position,
                        ack,
                    });
                }
                Err(_) => serde_json::to_vec(&event).unwrap_or_default(),
            };
            (Ok(event), raw)
        }
    };
    match parsed.and_then(|event| event.check().map(|()| event)) {
        Ok(event) => Ok(Incoming {
            event,
            position,
            ack,
        }),
        Err(reason) => Err(Rejected {
            position,
            reason,
            raw: String::from_utf8_lossy(&raw).into_owned(),
            ack,
        }),
    }
}

/// The reason given for a record that is not a JSON object (plain text, an array, a
/// number, …).
const NOT_AN_OBJECT: &str = r#"invalid event: not a JSON object (an event is one object per line: {"id":"…","tenant":"…","ts":<milliseconds>,"payload":<any JSON>})"#;

/// Parses one JSON record into an event, with a one-line reason on failure.
fn parse_json(bytes: &[u8]) -> Result<Event, String> {
    let first = bytes.iter().find(|byte| !byte.is_ascii_whitespace());
    match first {
        None => return Err("empty line".to_owned()),
        // serde_json would say "expected ident (column 2)" or "expected value (column 1)":
        // say what an event looks like instead.
        Some(byte) if *byte != b'{' => return Err(NOT_AN_OBJECT.to_owned()),
        Some(_) => {}
    }
    serde_json::from_slice::<Event>(bytes).map_err(|error| {
        // serde_json ends its message with " at line L column C"; within one record the line
        // is always 1, so keep only the column.
        let message = error.to_string();
        let message = message
            .rsplit_once(" at line ")
            .map_or(message.as_str(), |(head, _)| head);
        format!("invalid event: {message} (column {})", error.column())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(line: &str) -> Record {
        Record {
            position: Position::Line(7),
            body: RecordBody::Json(line.as_bytes().to_vec()),
            ack: None,
        }
    }

    #[test]
    fn accepts_a_well_formed_event() {
        let incoming =
            validate(json(r#"{"id":"a","tenant":"t","ts":5,"payload":{"x":1}}"#)).unwrap();
        assert_eq!(incoming.event.id, "a");
        assert_eq!(incoming.event.payload.get(), r#"{"x":1}"#);
        assert_eq!(incoming.position, Position::Line(7));
    }

    #[test]
    fn rejects_with_the_reason_and_the_line() {
        let cases = [
            ("", "empty line"),
            ("   ", "empty line"),
            ("not json", "invalid event: not a JSON object (an event is"),
            ("  [1, 2]", "not a JSON object"),
            (
                "{not json",
                "invalid event: key must be a string (column 2)",
            ),
            (
                r#"{"id":"a","tenant":"t","ts":5}"#,
                "missing field `payload`",
            ),
            (
                r#"{"id":"a","tenant":"t","ts":5,"payload":1,"x":2}"#,
                "unknown field `x`",
            ),
            (
                r#"{"id":"","tenant":"t","ts":5,"payload":1}"#,
                "field `id` is empty",
            ),
            (
                r#"{"id":"a","tenant":"t","ts":-1,"payload":1}"#,
                "field `ts` is -1",
            ),
            (
                r#"{"id":"a","tenant":"t","ts":1.5,"payload":1}"#,
                "invalid type",
            ),
            (
                r#"{"id":"a\u0007","tenant":"t","ts":1,"payload":1}"#,
                "field `id` contains a control character",
            ),
        ];
        for (line, expected) in cases {
            let rejected = validate(json(line)).unwrap_err();
            assert!(
                rejected.reason.contains(expected),
                "{line:?}: {:?} does not contain {expected:?}",
                rejected.reason
            );
            assert_eq!(rejected.position, Position::Line(7));
            assert_eq!(rejected.raw, line);
            assert!(rejected.to_string().starts_with("line 7: "));
        }
    }

    #[test]
    fn rejects_invalid_utf8_without_panicking() {
        let record = Record {
            position: Position::Line(1),
            body: RecordBody::Json(b"{\"id\":\"\xff\"}".to_vec()),
            ack: None,
        };
        let rejected = validate(record).unwrap_err();
        assert!(rejected.raw.contains('\u{fffd}'));
    }

    #[test]
    fn keeps_the_payload_text_as_given_on_one_line() {
        for (line, payload) in [
            (
                r#"{"id":"a","tenant":"t","ts":5,"payload":{"n":12345678901234567890123}}"#,
                r#"{"n":12345678901234567890123}"#,
            ),
            (r#"{"id":"a","tenant":"t","ts":5,"payload":1e400}"#, "1e400"),
            (
                "{\"id\":\"a\",\"tenant\":\"t\",\"ts\":5,\"payload\":{\"s\":\"x\\ny\",\r\n\"n\":1.50}}",
                r#"{"s":"x\ny",  "n":1.50}"#,
            ),
        ] {
            let incoming = validate(json(line)).unwrap();
            assert_eq!(incoming.event.payload.get(), payload, "{line}");
            let written = serde_json::to_string(&incoming.event).unwrap();
            assert!(!written.contains('\n'), "{written}");
        }
    }

    #[test]
    fn checks_built_events_too() {
        let event = Event {
            id: "x".repeat(crate::event::MAX_ID_BYTES + 1),
            tenant: "t".into(),
            ts: 0,
            payload: serde_json::value::RawValue::NULL.to_owned(),
        };
        let record = Record {
            position: Position::Sequence(3),
            body: RecordBody::Event(event),
            ack: None,
        };
        let rejected = validate(record).unwrap_err();
        assert!(
            rejected.reason.contains("at most 128"),
            "{}",
            rejected.reason
        );
        assert!(rejected.to_string().starts_with("event 3: "));
    }
}
