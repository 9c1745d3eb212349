//! The ids that committed batches skipped as already present, kept for the consistency
//! check (rule 3 of [`check`](super::check)) in bounded memory.
//!
//! Rules:
//! - The ids are not kept in memory: each committed batch appends its distinct skipped ids
//!   to an unnamed temporary file (created at the first one, removed by the system when it
//!   is closed, even if the process dies), through a buffer of [`BUFFER_BYTES`]. What stays
//!   in memory does not grow with the number of ids: the buffer, the counts, and, at the
//!   check, one chunk of at most [`CHUNK_IDS`] ids.
//! - At the end of the run, [`AlreadyPresentIds::verify`] reads them back in chunks of at most
//!   [`CHUNK_IDS`] entries and asks the database, per chunk, how many of the chunk's distinct
//!   ids have a row. It returns (ids checked, ids found): the check holds only when they are
//!   equal, so one id without a row fails it, however many ids there are.
//! - Ids are distinct within a batch and within a chunk, not across the run (that would
//!   need every id in memory): an id skipped by two batches of the run (a redelivery) may
//!   be checked, and counted, twice. Each time it must have a row.
//! - Nothing is lost silently: when the file cannot be created or written, the first error
//!   is kept and [`verify`](AlreadyPresentIds::verify) returns it (the check then fails: it could
//!   not count).

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};

/// The write buffer of the temporary file, and the read buffer of the check.
pub const BUFFER_BYTES: usize = 64 * 1024;

/// Most ids in one database query of the check.
pub const CHUNK_IDS: usize = 1000;

/// The ids a run found already present, on disk (see the [module documentation](self)).
#[derive(Default)]
pub struct AlreadyPresentIds {
    /// Ids written to the file.
    entries: u64,
    /// The file, once an id was skipped.
    file: Option<BufWriter<File>>,
    /// The first error met while keeping them.
    error: Option<String>,
}

impl fmt::Debug for AlreadyPresentIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlreadyPresentIds")
            .field("entries", &self.entries)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl AlreadyPresentIds {
    /// Keeps the distinct ids of `ids`, the ids one committed batch skipped.
    pub fn record(&mut self, ids: &[String]) {
        if ids.is_empty() || self.error.is_some() {
            return;
        }
        let mut seen = HashSet::with_capacity(ids.len());
        let distinct = ids.iter().filter(|id| seen.insert(id.as_str()));
        let written = self.writer().and_then(|file| {
            let mut entries = 0;
            for id in distinct {
                write_entry(file, id)?;
                entries += 1;
            }
            Ok(entries)
        });
        match written {
            Ok(entries) => self.entries += entries,
            Err(error) => {
                self.error = Some(format!(
                    "could not keep the ids found already present: {error}"
                ));
                self.file = None;
            }
        }
    }

    /// Ids kept so far (distinct per batch).
    pub fn len(&self) -> u64 {
        self.entries
    }

    /// Whether no id was kept.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Bytes this value holds in memory (the write buffer, when the file is open): the
    /// bound the module documentation promises.
    pub fn memory(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.file.as_ref().map_or(0, BufWriter::capacity)
            + self.error.as_ref().map_or(0, String::capacity)
    }

    /// Reads the ids back in chunks of at most [`CHUNK_IDS`] entries and calls `count` with
    /// the distinct ids of each (how many of them have a row); returns (ids checked, ids
    /// found), or the error that kept the ids or a count from being had.
    pub async fn verify<F, Fut, E>(self, mut count: F) -> Result<(u64, u64), String>
    where
        F: FnMut(Vec<String>) -> Fut,
        Fut: Future<Output = Result<u64, E>>,
        E: fmt::Display,
    {
        if let Some(error) = self.error {
            return Err(error);
        }
        let Some(file) = self.file else {
            return Ok((0, 0));
        };
        let reading = |error: io::Error| {
            format!("could not read the ids found already present back: {error}")
        };
        let mut file = file.into_inner().map_err(|e| reading(e.into_error()))?;
        file.rewind().map_err(reading)?;
        let mut reader = BufReader::with_capacity(BUFFER_BYTES, file);
        let (mut checked, mut found, mut read) = (0, 0, 0);
        while read < self.entries {
            let take = (self.entries - read).min(CHUNK_IDS as u64);
            let mut seen = HashSet::with_capacity(take as usize);
            for _ in 0..take {
                seen.insert(read_entry(&mut reader).map_err(reading)?);
            }
            read += take;
            let chunk: Vec<String> = seen.into_iter().collect();
            checked += chunk.len() as u64;
            found += count(chunk).await.map_err(|error| error.to_string())?;
        }
        Ok((checked, found))
    }

    /// The open file, created at the first call.
    fn writer(&mut self) -> io::Result<&mut BufWriter<File>> {
        if self.file.is_none() {
            self.file = Some(BufWriter::with_capacity(
                BUFFER_BYTES,
                tempfile::tempfile()?,
            ));
        }
        Ok(self.file.as_mut().expect("created above"))
    }
}

/// One entry: the id's length in bytes (`u32`, little-endian), then its UTF-8 bytes.
fn write_entry(file: &mut impl Write, id: &str) -> io::Result<()> {
    let len = u32::try_from(id.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "id longer than 4 GiB"))?;
    file.write_all(&len.to_le_bytes())?;
    file.write_all(id.as_bytes())
}

fn read_entry(file: &mut impl Read) -> io::Result<String> {
    let mut len = [0; 4];
    file.read_exact(&mut len)?;
    let mut bytes = vec![0; u32::from_le_bytes(len) as usize];
    file.read_exact(&mut bytes)?;
    String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    fn ids(range: std::ops::Range<u32>) -> Vec<String> {
        range.map(|n| format!("evt-{n:010}")).collect()
    }

    #[tokio::test]
    async fn memory_does_not_grow_with_the_ids_and_every_id_is_checked() {
        let mut skipped = AlreadyPresentIds::default();
        let empty = skipped.memory();
        assert!(empty < 256, "{empty}");
        skipped.record(&ids(0..1000));
        let one_batch = skipped.memory();
        assert!(one_batch <= BUFFER_BYTES + 256, "{one_batch}");
        for batch in 1..300 {
            skipped.record(&ids(batch * 1000..(batch + 1) * 1000));
        }
        // 300,000 ids (about 5 MB on disk), the same memory as after the first batch.
        assert_eq!(skipped.len(), 300_000);
        assert_eq!(skipped.memory(), one_batch);
        // Each id reaches the count once, in chunks of at most CHUNK_IDS.
        let asked = RefCell::new(HashSet::new());
        let (checked, found) = skipped
            .verify(|chunk| {
                assert!(chunk.len() <= CHUNK_IDS);
                let mut asked = asked.borrow_mut();
                for id in &chunk {
                    assert!(asked.insert(id.clone()), "{id} asked twice");
                }
                let missing = chunk.iter().filter(|id| *id == "evt-0000123456").count();
                std::future::ready(Ok::<_, String>((chunk.len() - missing) as u64))
            })
            .await
            .unwrap();
        assert_eq!(asked.into_inner(), ids(0..300_000).into_iter().collect());
        // One id without a row shows.
        assert_eq!((checked, found), (300_000, 299_999));
    }

    #[tokio::test]
    async fn ids_are_distinct_per_batch_and_nothing_kept_is_nothing_asked() {
        let none = AlreadyPresentIds::default();
        assert!(none.is_empty());
        let (checked, found) = none
            .verify(|_| async { Err::<u64, _>("never asked") })
            .await
            .unwrap();
        assert_eq!((checked, found), (0, 0));
        let mut skipped = AlreadyPresentIds::default();
        skipped.record(&["a".into(), "b".into(), "a".into()]);
        skipped.record(&[]);
        skipped.record(&["é".into()]);
        assert_eq!(skipped.len(), 3);
        let got = skipped
            .verify(|chunk| {
                let mut chunk = chunk;
                chunk.sort();
                assert_eq!(chunk, ["a", "b", "é"]);
                async { Ok::<_, String>(3) }
            })
            .await;
        assert_eq!(got, Ok((3, 3)));
    }

    #[tokio::test]
    async fn a_failed_count_fails_the_verification() {
        let mut skipped = AlreadyPresentIds::default();
        skipped.record(&ids(0..10));
        let got = skipped
            .verify(|_| async { Err::<u64, _>("database down") })
            .await;
        assert_eq!(got, Err("database down".to_owned()));
    }
}
