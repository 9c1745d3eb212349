//! What a source hands to the pipeline: a [`Record`] (not yet parsed or validated), where
//! it came from ([`Position`]), and its acknowledgement hook ([`AckHandle`]).
//!
//! A record may carry an acknowledgement hook ([`AckHandle`]) for sources that redeliver
//! (a message broker). The pipeline calls it exactly once per record:
//! - [`ack`](AckHandle::ack) after the record's batch is durably written (its
//!   compensations committed);
//! - [`nak`](AckHandle::nak) after the record's batch was rolled back (the rows deleted
//!   first, then the nak: a redelivery never races the deletion);
//! - [`reject`](AckHandle::reject) when the record is invalid (redelivering it cannot help);
//! - [`abandon`](AckHandle::abandon) instead of `nak` when the record's batch was rolled
//!   back but the deletion of its rows failed or timed out: no verdict, the source
//!   redelivers after its own timeout (a NATS message after `ack_wait`).
//!
//! The file sources (synthetic, NDJSON) have nothing to acknowledge and carry `None`; the
//! NATS source acks after commit, naks after rollback and terminates invalid messages.

use std::fmt;

use futures::future::BoxFuture;
use result_stream::BoxError;

use crate::event::Event;

/// Acknowledges one record to the source it came from. See the [module documentation](self)
/// for when each method is called. Each consumes the handle: a record is settled once.
pub trait AckHandle: Send + fmt::Debug + 'static {
    /// The record's batch was written and committed.
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>>;
    /// The record's batch was rolled back: deliver it again later.
    fn nak(self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>>;
    /// The record is invalid: do not deliver it again.
    fn reject(self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>>;
    /// How many times the source has delivered this record, this delivery included (1 the
    /// first time), for sources that redeliver; `None` otherwise.
    fn deliveries(&self) -> Option<u64> {
        None
    }
    /// The record's batch was rolled back and the record has been delivered too often
    /// (`--max-deliveries`): its event is in the dead-letter file, do not deliver it again.
    /// The default rejects it.
    fn give_up(self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>> {
        self.reject()
    }
    /// The record's batch was rolled back but its rows may still be (or become) present
    /// (the deletion failed or timed out): settle nothing and let the source redeliver it
    /// only after its own timeout, by when a late deletion has committed. Unlike dropping
    /// the handle, this must not give the record back at once. The default just drops it,
    /// for sources whose drop settles nothing.
    fn abandon(self: Box<Self>) {}
}

/// A boxed acknowledgement hook.
pub type Ack = Box<dyn AckHandle>;

/// Where a record came from, for messages and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Position {
    /// A 1-based line number in NDJSON input.
    Line(u64),
    /// A 1-based sequence number (synthetic events, or a broker's message sequence).
    Sequence(u64),
    /// A 1-based line of a broker's message that carries several events (NDJSON).
    MessageLine {
        /// The message's sequence number.
        message: u64,
        /// The line within the message.
        line: u64,
    },
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Line(n) => write!(f, "line {n}"),
            Position::Sequence(n) => write!(f, "event {n}"),
            Position::MessageLine { message, line } => write!(f, "message {message} line {line}"),
        }
    }
}

/// What a source read, before validation.
#[derive(Debug)]
pub enum RecordBody {
    /// One JSON document (an NDJSON line, a message payload), to be parsed.
    Json(Vec<u8>),
    /// An event built by the source itself; it is still checked.
    Event(Event),
    /// A line longer than the source keeps in memory: only its first `limit` bytes were
    /// kept, the rest was read and skipped. Always invalid.
    Oversized {
        /// The first `limit` bytes of the line.
        head: Vec<u8>,
        /// The length of the whole line, in bytes.
        bytes: u64,
        /// The most bytes the source keeps of one line.
        limit: usize,
    },
}

/// One record read from a source.
#[derive(Debug)]
pub struct Record {
    /// Where it came from.
    pub position: Position,
    /// What was read.
    pub body: RecordBody,
    /// The acknowledgement hook, if the source has one.
    pub ack: Option<Ack>,
}
