//! NDJSON from a file or standard input: one event per line.
//!
//! Rules:
//! - lines are split on `\n`; a trailing `\r` is removed; the last line needs no newline;
//! - every line becomes one record positioned by its 1-based line number, including empty
//!   and malformed lines, which validation then rejects and reports (nothing is skipped
//!   silently);
//! - bytes are passed on as read: invalid UTF-8 is a validation error of that line, not an
//!   I/O error;
//! - memory is bounded: a line longer than [`MAX_LINE_BYTES`] is not kept whole. Its first
//!   [`MAX_LINE_BYTES`] bytes are kept, the rest is read and dropped as it arrives, and it
//!   becomes an [`Oversized`](RecordBody::Oversized) record, which validation rejects;
//! - a read error (not a bad line) ends the stream with `Err(SourceError::Read)`, which
//!   stops the run;
//! - a file that cannot be opened, or is a directory, is reported by [`open`] before the run
//!   starts.

use std::path::Path;

use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use super::{Input, OpenError, Position, Record, RecordBody, RecordStream, SourceError};

/// Read buffer size.
const BUFFER_BYTES: usize = 256 * 1024;

/// The longest line kept in memory (1 MiB): far more than an event needs (its id and tenant
/// are at most 192 bytes), little enough that any input is read in bounded memory.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Opens `input` and returns the stream of its lines.
pub async fn open(input: &Input) -> Result<RecordStream, OpenError> {
    match input {
        Input::Stdin => Ok(lines(tokio::io::stdin())),
        Input::File(path) => {
            let file = open_file(path).await.map_err(|source| OpenError::Input {
                input: input.to_string(),
                source,
            })?;
            Ok(lines(file))
        }
    }
}

async fn open_file(path: &Path) -> std::io::Result<tokio::fs::File> {
    let file = tokio::fs::File::open(path).await?;
    if file.metadata().await?.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            "is a directory",
        ));
    }
    Ok(file)
}

/// The records of an NDJSON byte stream.
pub fn lines<R: AsyncRead + Send + Unpin + 'static>(reader: R) -> RecordStream {
    lines_with_limit(reader, MAX_LINE_BYTES)
}

/// [`lines`], keeping at most `limit` bytes of a line.
fn lines_with_limit<R: AsyncRead + Send + Unpin + 'static>(
    reader: R,
    limit: usize,
) -> RecordStream {
    let reader = BufReader::with_capacity(BUFFER_BYTES, reader);
    futures::stream::unfold(Some((reader, 0u64)), move |state| async move {
        let (mut reader, line) = state?;
        match read_line(&mut reader, limit).await {
            Ok(None) => None,
            Ok(Some(body)) => {
                let record = Record {
                    position: Position::Line(line + 1),
                    body,
                    ack: None,
                };
                Some((Ok(record), Some((reader, line + 1))))
            }
            // Fused after an error: the next poll ends the stream.
            Err(error) => Some((Err(SourceError::Read(error)), None)),
        }
    })
    .boxed()
}

/// Reads one line (without its `\n` and a `\r` before it), keeping at most `limit` bytes of
/// it; `None` at the end of the input.
async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    limit: usize,
) -> std::io::Result<Option<RecordBody>> {
    let mut kept = Vec::new();
    let mut bytes = 0u64;
    let mut ended = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            // End of input: a last line without a newline is a line; nothing is not.
            if bytes == 0 && !ended {
                return Ok(None);
            }
            break;
        }
        ended = true;
        let (chunk, newline) = match available.iter().position(|&b| b == b'\n') {
            Some(at) => (&available[..at], true),
            None => (available, false),
        };
        let room = (limit + 1).saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        bytes += chunk.len() as u64;
        let used = chunk.len() + usize::from(newline);
        reader.consume(used);
        if newline {
            break;
        }
    }
    let whole = bytes == kept.len() as u64;
    if whole && kept.last() == Some(&b'\r') {
        kept.pop();
        bytes -= 1;
    }
    if kept.len() > limit {
        kept.truncate(limit);
        return Ok(Some(RecordBody::Oversized {
            head: kept,
            bytes,
            limit,
        }));
    }
    Ok(Some(RecordBody::Json(kept)))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &'static [u8]) -> Vec<(Position, Vec<u8>)> {
        lines(bytes)
            .map(|r| {
                let r = r.unwrap();
                match r.body {
                    RecordBody::Json(b) => (r.position, b),
                    other => panic!("a short line is a JSON record, got {other:?}"),
                }
            })
            .collect()
            .await
    }

    #[tokio::test]
    async fn numbers_every_line_including_empty_ones() {
        let got = read(b"a\r\n\nb\nc").await;
        assert_eq!(
            got,
            vec![
                (Position::Line(1), b"a".to_vec()),
                (Position::Line(2), b"".to_vec()),
                (Position::Line(3), b"b".to_vec()),
                (Position::Line(4), b"c".to_vec()),
            ]
        );
        assert!(read(b"").await.is_empty());
        assert_eq!(read(b"x\n").await.len(), 1);
    }

    #[tokio::test]
    async fn keeps_at_most_the_limit_of_a_long_line_and_reads_on() {
        let input = b"abcdefghij\nabc\r\nabcdef\r\nabcd\r\nlast-line-too".as_slice();
        let records: Vec<_> = lines_with_limit(input, 4)
            .map(|r| r.unwrap())
            .collect()
            .await;
        let bodies: Vec<String> = records
            .iter()
            .map(|r| match &r.body {
                RecordBody::Json(b) => format!("json {}", String::from_utf8_lossy(b)),
                RecordBody::Oversized { head, bytes, limit } => format!(
                    "oversized {} {bytes} {limit}",
                    String::from_utf8_lossy(head)
                ),
                RecordBody::Event(_) => unreachable!("NDJSON yields no built events"),
            })
            .collect();
        assert_eq!(
            bodies,
            [
                "oversized abcd 10 4",
                "json abc",
                "oversized abcd 7 4",
                "json abcd",
                "oversized last 13 4",
            ]
        );
        let positions: Vec<Position> = records.iter().map(|r| r.position).collect();
        assert_eq!(positions, (1..=5).map(Position::Line).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn reports_a_missing_file_and_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Input::File(dir.path().join("missing.ndjson"));
        let error = open(&missing).await.err().unwrap();
        assert!(error.to_string().contains("missing.ndjson"), "{error}");
        let error = open(&Input::File(dir.path().to_owned()))
            .await
            .err()
            .unwrap();
        assert!(error.to_string().contains("is a directory"), "{error}");
    }
}
