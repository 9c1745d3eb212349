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
//! - `payload`: any JSON value, stored as JSON text;
//! - an empty (or whitespace-only) line is invalid too: it is reported, not skipped.

use serde::{Deserialize, Serialize};

/// The longest accepted event id, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// The longest accepted tenant, in bytes.
pub const MAX_TENANT_BYTES: usize = 64;
/// The latest accepted timestamp: 9999-12-31T23:59:59.999Z, in milliseconds since the epoch.
pub const MAX_TS_MILLIS: i64 = 253_402_300_799_999;

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Unique id; the primary key in the database and the idempotency key.
    pub id: String,
    /// The tenant the event belongs to.
    pub tenant: String,
    /// When the event happened, in milliseconds since the Unix epoch.
    pub ts: i64,
    /// Free-form JSON payload.
    pub payload: serde_json::Value,
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
