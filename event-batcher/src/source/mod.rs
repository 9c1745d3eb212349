//! Where events come from.
//!
//! A source is any `Stream<Item = Result<Record, SourceError>>` ([`RecordStream`]): the
//! pipeline does not know which kind it reads. A record is not yet an event: it is parsed
//! and validated by the pipeline ([`crate::validate`]), so every source gets the same rules
//! and the same reporting of invalid input. Records and their acknowledgement hooks are
//! described in [`crate::record`].
//!
//! The file sources ([`synthetic`], [`ndjson`]) have nothing to acknowledge and carry
//! `None`; the [`nats`] source (a JetStream durable pull consumer shared by any number of
//! instances) acks after commit, naks after rollback and terminates invalid messages.
//!
//! Each source owns its errors: [`SourceError`] is a failure while reading (it stops the
//! run), [`OpenError`] one that prevents a source from being opened (the run cannot start).

mod error;
pub mod nats;
pub mod ndjson;
pub mod synthetic;

use std::fmt;
use std::path::PathBuf;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio_util::sync::CancellationToken;

use crate::console::Console;

pub use crate::record::{Ack, AckHandle, Position, Record, RecordBody};
pub use error::{OpenError, SourceError};
pub use nats::{NatsOptions, NatsSource, NatsStats};
pub use synthetic::SyntheticSpec;

/// The stream a source produces. An `Err` is a failure of the source itself (an I/O error,
/// a broker that deleted the consumer), which stops the run; invalid records are `Ok` here
/// and become errors at validation.
pub type RecordStream = BoxStream<'static, Result<Record, SourceError>>;

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
    /// its open pull request still delivers; the file sources simply end. A NATS source
    /// reports a failed pull (retried) on `console`.
    pub async fn open(
        &self,
        stop: CancellationToken,
        console: Console,
    ) -> Result<OpenedSource, OpenError> {
        let file = |records: RecordStream| OpenedSource {
            records: records.take_until(stop.clone().cancelled_owned()).boxed(),
            nats: None,
        };
        match self {
            SourceSpec::Synthetic(spec) => Ok(file(synthetic::stream(spec.clone()))),
            SourceSpec::Ndjson(input) => Ok(file(ndjson::open(input).await?)),
            SourceSpec::Nats(options) => {
                let source = NatsSource::connect((**options).clone())
                    .await?
                    .with_console(console);
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
