//! NDJSON from a file or standard input: one event per line.
//!
//! Rules:
//! - lines are split on `\n`; a trailing `\r` is removed; the last line needs no newline;
//! - every line becomes one record positioned by its 1-based line number, including empty
//!   and malformed lines, which validation then rejects and reports (nothing is skipped
//!   silently);
//! - bytes are passed on as read: invalid UTF-8 is a validation error of that line, not an
//!   I/O error;
//! - a read error (not a bad line) ends the stream with `Err(PipelineError::Source)`, which
//!   stops the run;
//! - a file that cannot be opened, or is a directory, is reported by [`open`] before the run
//!   starts.

use std::path::Path;

use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use super::{Input, Position, Record, RecordBody, RecordStream};
use crate::pipeline::{PipelineError, SetupError};

/// Read buffer size.
const BUFFER_BYTES: usize = 256 * 1024;

/// Opens `input` and returns the stream of its lines.
pub async fn open(input: &Input) -> Result<RecordStream, SetupError> {
    match input {
        Input::Stdin => Ok(lines(tokio::io::stdin())),
        Input::File(path) => {
            let file = open_file(path).await.map_err(|source| SetupError::Input {
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
    let reader = BufReader::with_capacity(BUFFER_BYTES, reader);
    futures::stream::unfold(Some((reader, 0u64)), |state| async move {
        let (mut reader, line) = state?;
        let mut buf = Vec::new();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) => None,
            Ok(_) => {
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                }
                if buf.last() == Some(&b'\r') {
                    buf.pop();
                }
                let record = Record {
                    position: Position::Line(line + 1),
                    body: RecordBody::Json(buf),
                    ack: None,
                };
                Some((Ok(record), Some((reader, line + 1))))
            }
            // Fused after an error: the next poll ends the stream.
            Err(error) => Some((Err(PipelineError::Source(error)), None)),
        }
    })
    .boxed()
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
                    RecordBody::Event(_) => unreachable!("NDJSON yields JSON records"),
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
