//! What the reference models of `chunks_timeout_by_key_result` share: the values and
//! errors of a generated schedule, and the replay of that schedule (deadlines before each
//! event, an error closing every open batch, `timeout == 0` closing them at the end of each
//! burst, the end of the stream closing the rest).

use result_stream::FlushReason;

/// A value: a unique id, its key and its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Val<K> {
    pub id: u32,
    pub key: K,
    pub weight: usize,
}

/// One input token: a value or an error with a unique id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tok<K> {
    V(Val<K>),
    E(u32),
}

impl<K> Tok<K> {
    /// The upstream item: `Ok` of the value, or `Err` of the error's id.
    pub fn item(self) -> Result<Val<K>, u32> {
        match self {
            Tok::V(v) => Ok(v),
            Tok::E(e) => Err(e),
        }
    }
}

/// A reference model's open batches and outputs, as [`replay`] drives them.
pub trait KeyedModel<K> {
    /// Flushes the batches whose deadlines pass before `t`; `None` on a tie (a deadline at
    /// `t` with `timeout > 0`), where either order is correct.
    fn expire_before(&mut self, t: u64) -> Option<()>;
    /// Takes the value `v` arriving at `t`.
    fn value(&mut self, t: u64, v: Val<K>);
    /// Closes every open batch at `t`, oldest first, for `reason`.
    fn flush_all(&mut self, t: u64, reason: FlushReason);
    /// Yields the error `id` at `t` (after the open batches it closed).
    fn error(&mut self, t: u64, id: u32);
}

/// Replays `events` (at their times, ms) and the end of the stream at `end` through `m`;
/// `None` when a deadline ties with an event or the end.
pub fn replay<K: Copy>(
    m: &mut impl KeyedModel<K>,
    events: &[(u64, Tok<K>)],
    end: u64,
    timeout: u64,
) -> Option<()> {
    for (i, &(t, tok)) in events.iter().enumerate() {
        m.expire_before(t)?;
        match tok {
            Tok::V(v) => m.value(t, v),
            Tok::E(id) => {
                m.flush_all(t, FlushReason::Error);
                m.error(t, id);
            }
        }
        let burst_ends = events.get(i + 1).is_none_or(|&(next, _)| next > t);
        let stream_ends = i + 1 == events.len() && end == t;
        if burst_ends && !stream_ends && timeout == 0 {
            m.flush_all(t, FlushReason::Deadline);
        }
    }
    m.expire_before(end)?;
    m.flush_all(end, FlushReason::End);
    Some(())
}
