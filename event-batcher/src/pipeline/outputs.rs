//! The files a run writes besides the database: `--rejects` and `--dead-letter`.
//!
//! Rules:
//! - an output file that is the `--input` file, or both outputs the same file, is refused
//!   before anything is opened ([`check_outputs`]);
//! - the files are created (truncated) only once the run can start, so a setup error leaves
//!   existing files as they were;
//! - a NATS run with `--max-deliveries` appends its given-up events to the dead-letter file
//!   and syncs them before their messages are terminated ([`GivenUpFile`]).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;

use super::config::{Config, ConfigError};
use super::error::SetupError;
use crate::event::Event;
use crate::record::Position;
use crate::source::{Input, SourceSpec};
use crate::sync::lock;
use crate::validate::Rejected;

/// The output files of a run.
#[derive(Debug)]
pub(super) struct Outputs {
    rejects: Option<Mutex<BufWriter<File>>>,
    /// The dead-letter file of a source that does not redeliver (every event of a
    /// rolled-back batch). A NATS source redelivers those: its file is `given_up`.
    dead_letter: Option<Mutex<BufWriter<File>>>,
    /// The dead-letter file of given-up events (`--max-deliveries`).
    given_up: Option<Mutex<GivenUpFile>>,
}

impl Outputs {
    /// Creates the files `config` names.
    pub(super) fn create(config: &Config) -> Result<Outputs, SetupError> {
        let rejects = create_output(config.rejects.as_deref())?;
        let (dead_letter, given_up) = match (config.max_deliveries, config.dead_letter.as_deref()) {
            (Some(_), Some(path)) => (None, Some(Mutex::new(GivenUpFile::open(path)?))),
            (_, path) => (create_output(path)?, None),
        };
        Ok(Outputs {
            rejects,
            dead_letter,
            given_up,
        })
    }

    /// Appends an invalid record to `--rejects`, if given: `line` (or `sequence`), `error`,
    /// `raw`.
    pub(super) fn reject(&self, rejected: &Rejected) -> std::io::Result<()> {
        let Some(file) = &self.rejects else {
            return Ok(());
        };
        let (key, number) = match rejected.position {
            Position::Line(n) => ("line", n),
            Position::Sequence(n) => ("sequence", n),
        };
        let line = serde_json::json!({
            key: number,
            "error": rejected.reason,
            "raw": rejected.raw,
        });
        writeln!(lock(file), "{line}")
    }

    /// Appends the events of a rolled-back batch to `--dead-letter`, if given (a source that
    /// does not redeliver).
    pub(super) fn dead_letter<'a>(
        &self,
        events: impl Iterator<Item = &'a Event>,
    ) -> std::io::Result<()> {
        match &self.dead_letter {
            Some(file) => write_events(&mut *lock(file), events),
            None => Ok(()),
        }
    }

    /// Appends `events` to the dead-letter file and makes them durable (fsync) before their
    /// records are given up.
    pub(super) fn give_up<'a>(
        &self,
        events: impl Iterator<Item = &'a Event>,
    ) -> std::io::Result<()> {
        match &self.given_up {
            Some(file) => lock(file).append(events),
            None => Err(std::io::Error::other("no --dead-letter file")),
        }
    }

    /// Flushes the buffered files; returns a warning per file that could not be written.
    pub(super) fn flush(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for (file, what) in [
            (&self.rejects, "rejects"),
            (&self.dead_letter, "dead-letter"),
        ] {
            if let Some(Err(error)) = file.as_ref().map(|file| lock(file).flush()) {
                warnings.push(format!("cannot write to the {what} file: {error}"));
            }
        }
        warnings
    }
}

/// The dead-letter file of a NATS run with `--max-deliveries`: opened for appending, so a
/// restart (or another instance given the same path) never truncates it, and written
/// unbuffered, one `write` of whole lines per batch, synced before the messages are given up.
#[derive(Debug)]
struct GivenUpFile {
    file: File,
    /// Cleared by a failed write (a partial line may be left): later events are nak'ed
    /// instead of given up.
    usable: bool,
}

impl GivenUpFile {
    /// Opens (creates) `path` for appending and syncs its directory, so that the file itself
    /// survives a crash once a message has been given up.
    fn open(path: &Path) -> Result<Self, SetupError> {
        let error = |source| SetupError::Output {
            path: path.display().to_string(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(error)?;
        let dir = path
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(error)?;
        Ok(Self { file, usable: true })
    }

    /// Appends `events` as NDJSON lines and syncs them to disk.
    fn append<'a>(&mut self, events: impl Iterator<Item = &'a Event>) -> std::io::Result<()> {
        if !self.usable {
            return Err(std::io::Error::other("an earlier write to it failed"));
        }
        let mut lines = Vec::new();
        write_events(&mut lines, events)?;
        let written = self
            .file
            .write_all(&lines)
            .and_then(|()| self.file.sync_data());
        if written.is_err() {
            self.usable = false;
        }
        written
    }
}

/// Refuses an output file (`--rejects`, `--dead-letter`) that is the `--input` file or the
/// other output file: creating it would truncate it.
pub(super) fn check_outputs(config: &Config) -> Result<(), SetupError> {
    // The same file, also under another name, when both exist.
    let same = |a: &Path, b: &Path| {
        a == b
            || matches!(
                (std::fs::canonicalize(a), std::fs::canonicalize(b)),
                (Ok(a), Ok(b)) if a == b
            )
    };
    let input = match &config.source {
        SourceSpec::Ndjson(Input::File(path)) => Some(path.as_path()),
        _ => None,
    };
    let outputs = [
        ("--rejects", config.rejects.as_deref()),
        ("--dead-letter", config.dead_letter.as_deref()),
    ];
    for (option, path) in outputs {
        let Some(path) = path else { continue };
        if let Some(input) = input
            && same(path, input)
        {
            return Err(SetupError::Config(ConfigError(format!(
                "{option} {} is the --input file: it would be overwritten",
                path.display()
            ))));
        }
    }
    if let (Some(rejects), Some(dead_letter)) =
        (config.rejects.as_deref(), config.dead_letter.as_deref())
        && same(rejects, dead_letter)
    {
        return Err(SetupError::Config(ConfigError(format!(
            "--rejects and --dead-letter must be different files, both are {}",
            rejects.display()
        ))));
    }
    Ok(())
}

fn create_output(path: Option<&Path>) -> Result<Option<Mutex<BufWriter<File>>>, SetupError> {
    path.map(|path| {
        File::create(path)
            .map(|file| Mutex::new(BufWriter::new(file)))
            .map_err(|source| SetupError::Output {
                path: path.display().to_string(),
                source,
            })
    })
    .transpose()
}

/// Writes `events` as NDJSON (replayable with `--input`).
fn write_events<'a>(
    out: &mut impl Write,
    events: impl Iterator<Item = &'a Event>,
) -> std::io::Result<()> {
    for event in events {
        serde_json::to_writer(&mut *out, event)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}
