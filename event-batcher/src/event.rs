//! The event, its wire format, and the validation every record goes through.
//!
//! One event is one JSON object (one line of NDJSON):
//!
//! ```json
//! {"id":"evt-42-0000000001","tenant":"acme","ts":1714564800000,"payload":{"kind":"click"}}
//! ```
//!
//! Rules (a record that breaks one is rejected with the reason, never dropped silently):
//! - exactly the fields `id`, `tenant`, `ts` and `payload`; an unknown field is an error, so a
//!   typo (`"tenat"`) is caught instead of being stored as a default;
//! - `id`: 1 to [`MAX_ID_BYTES`] bytes, no control characters. It is the idempotency key: two
//!   events with the same id are the same event, and the second one is never stored twice;
//! - `tenant`: 1 to [`MAX_TENANT_BYTES`] bytes, no control characters;
//! - `ts`: milliseconds since the Unix epoch, an integer from 0 to [`MAX_TS_MILLIS`]
//!   (the last millisecond of the year 9999);
//! - `payload`: any JSON value, stored as JSON text exactly as given (numbers of any size or
//!   precision are kept as written, not parsed into a float), except that a line break
//!   between its tokens becomes a space, so that the event stays one NDJSON line;
//! - an empty (or whitespace-only) line is invalid too: it is reported, not skipped.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

/// The longest accepted event id, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// The longest accepted tenant, in bytes.
pub const MAX_TENANT_BYTES: usize = 64;
/// The latest accepted timestamp: 9999-12-31T23:59:59.999Z, in milliseconds since the epoch.
pub const MAX_TS_MILLIS: i64 = 253_402_300_799_999;

/// One event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Unique id; the primary key in the database and the idempotency key.
    pub id: String,
    /// The tenant the event belongs to.
    pub tenant: String,
    /// When the event happened, in milliseconds since the Unix epoch.
    pub ts: i64,
    /// Free-form JSON payload: its text as given (see the [module documentation](self)).
    #[serde(deserialize_with = "one_line_payload")]
    pub payload: Box<RawValue>,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        (&self.id, &self.tenant, self.ts, self.payload.get())
            == (&other.id, &other.tenant, other.ts, other.payload.get())
    }
}

/// The deepest nesting of arrays and objects accepted in a payload: serde_json's own limit
/// for a whole document (128) less the event object around the payload.
pub const MAX_PAYLOAD_DEPTH: usize = 127;

/// The payload as given, its line breaks (whitespace between tokens: a JSON string cannot
/// hold a raw one) turned into spaces. Deeper than [`MAX_PAYLOAD_DEPTH`], it is refused
/// (`recursion limit exceeded`), as serde_json refuses a deeper document: the raw value is
/// captured without that limit.
fn one_line_payload<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Box<RawValue>, D::Error> {
    let raw = Box::<RawValue>::deserialize(deserializer)?;
    if depth(raw.get()) > MAX_PAYLOAD_DEPTH {
        return Err(serde::de::Error::custom("recursion limit exceeded"));
    }
    if !raw.get().contains(['\n', '\r']) {
        return Ok(raw);
    }
    RawValue::from_string(raw.get().replace(['\n', '\r'], " ")).map_err(serde::de::Error::custom)
}

impl Event {
    /// Checks the rules of the [module documentation](self) that parsing alone does not
    /// enforce.
    pub fn check(&self) -> Result<(), String> {
        check_text("id", &self.id, MAX_ID_BYTES)?;
        check_text("tenant", &self.tenant, MAX_TENANT_BYTES)?;
        if !(0..=MAX_TS_MILLIS).contains(&self.ts) {
            return Err(format!(
                "field `ts` is {}, expected milliseconds since the Unix epoch from 0 to {MAX_TS_MILLIS}",
                self.ts
            ));
        }
        Ok(())
    }
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("field `{field}` is empty"));
    }
    if value.len() > max {
        return Err(format!(
            "field `{field}` is {} bytes long, at most {max} allowed",
            value.len()
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("field `{field}` contains a control character"));
    }
    Ok(())
}

/// The deepest nesting of arrays and objects in `json` (valid JSON).
fn depth(json: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for byte in json.bytes() {
        match (in_string, escaped, byte) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (true, false, _) => {}
            (false, _, b'"') => in_string = true,
            (false, _, b'[' | b'{') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (false, _, b']' | b'}') => depth = depth.saturating_sub(1),
            (false, _, _) => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    #[test]
    fn measures_nesting_outside_strings() {
        assert_eq!(super::depth("1"), 0);
        assert_eq!(super::depth(r#"{"a":[1,{"b":"[[[\"{"}]}"#), 3);
        assert_eq!(super::depth(r#"[[],[[]]]"#), 3);
    }
}
