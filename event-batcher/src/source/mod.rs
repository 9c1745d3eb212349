//! Where events come from.
//!
//! A source is any `Stream<Item = Result<Record, PipelineError>>` ([`RecordStream`]): the
//! pipeline does not know which kind it reads. A record is not yet an event: it is parsed
//! and validated by the pipeline (in `map_ok_stream`), so every source gets the same rules
//! and the same reporting of invalid input.
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
//! The file sources ([`synthetic`], [`ndjson`]) have nothing to acknowledge and carry
//! `None`; the [`nats`] source (a JetStream durable pull consumer shared by any number of
//! instances) acks after commit, naks after rollback and terminates invalid messages.

pub mod nats;
pub mod ndjson;
pub mod synthetic;

use std::fmt;
use std::path::PathBuf;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use result_stream::BoxError;
use tokio_util::sync::CancellationToken;

use crate::event::Event;
use crate::pipeline::{PipelineError, SetupError};

pub use nats::{NatsOptions, NatsSource, NatsStats};
pub use synthetic::SyntheticSpec;

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
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Line(n) => write!(f, "line {n}"),
            Position::Sequence(n) => write!(f, "event {n}"),
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

/// The stream a source produces. An `Err` is a failure of the source itself (an I/O error),
/// which stops the run; invalid records are `Ok` here and become errors at validation.
pub type RecordStream = BoxStream<'static, Result<Record, PipelineError>>;

/// Where the NDJSON input is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Standard input (`--input -`).
    Stdin,
    /// A file.
    File(PathBuf),
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::Stdin => f.write_str("stdin"),
            Input::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Which source a run reads.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    /// Generated events.
    Synthetic(SyntheticSpec),
    /// NDJSON from a file or standard input.
    Ndjson(Input),
    /// A NATS JetStream durable pull consumer (`--source nats://…`).
    Nats(Box<NatsOptions>),
}

/// An opened source: its records, and for NATS the connection that settles them.
pub struct OpenedSource {
    /// The records.
    pub records: RecordStream,
    /// The NATS source whose hooks the records carry: [`NatsSource::close`] it after the
    /// pipeline has finished (it waits until every verdict has been sent).
    pub nats: Option<NatsSource>,
}

impl fmt::Debug for OpenedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenedSource")
            .field("nats", &self.nats)
            .finish_non_exhaustive()
    }
}

impl SourceSpec {
    /// How many records the source will produce, when known in advance (for the progress
    /// bar).
    pub fn expected_len(&self) -> Option<u64> {
        match self {
            SourceSpec::Synthetic(spec) => Some(spec.events),
            SourceSpec::Ndjson(_) => None,
            SourceSpec::Nats(options) => options.max_messages,
        }
    }

    /// Opens the source. Fails, before anything is written, when the input cannot be read
    /// (or the broker reached, or its stream and consumer created).
    ///
    /// When `stop` is cancelled the source stops reading and its stream ends, so the batches
    /// already formed are written: a NATS source stops pulling and gives back (`-NAK`) what
    /// its open pull request still delivers; the file sources simply end.
    pub async fn open(&self, stop: CancellationToken) -> Result<OpenedSource, SetupError> {
        let file = |records: RecordStream| OpenedSource {
            records: records.take_until(stop.clone().cancelled_owned()).boxed(),
            nats: None,
        };
        match self {
            SourceSpec::Synthetic(spec) => Ok(file(synthetic::stream(spec.clone()))),
            SourceSpec::Ndjson(input) => Ok(file(ndjson::open(input).await?)),
            SourceSpec::Nats(options) => {
                let source = NatsSource::connect((**options).clone()).await?;
                Ok(OpenedSource {
                    records: source.records(stop),
                    nats: Some(source),
                })
            }
        }
    }
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpec::Synthetic(spec) => write!(f, "{spec}"),
            SourceSpec::Ndjson(input) => write!(f, "NDJSON from {input}"),
            SourceSpec::Nats(o) => write!(
                f,
                "NATS {}, stream {}, subject {}, consumer {}",
                o.url, o.stream, o.subject, o.consumer
            ),
        }
    }
}
