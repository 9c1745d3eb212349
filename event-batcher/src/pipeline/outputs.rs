//! The files a run writes besides the database: `--rejects` and `--dead-letter`.
//!
//! Rules:
//! - an output file that is the `--input` file (also under another name or as a hard link,
//!   or, with `--input -`, the file read as standard input), the SQLite database file (or
//!   its `-wal`, `-shm`, `-journal` files), or both outputs the same file, is refused before
//!   anything is opened ([`check_outputs`]);
//! - the files are opened (created when missing, not truncated) before the database is
//!   connected to, so an output that cannot be created stops the run before anything is
//!   written ([`PreparedOutputs`]); they are truncated only once the run can start, and a
//!   file created for a run that then could not start is removed again: a setup error
//!   leaves the files as they were;
//! - `--rejects` is flushed after each line and `--dead-letter` (a source that does not
//!   redeliver) is flushed and synced after each rolled-back batch, before the batch is
//!   announced: a killed process loses none of the lines it reported;
//! - a NATS run with `--max-deliveries` appends its given-up events to the dead-letter file
//!   and syncs them before their messages are terminated ([`GivenUpFile`]).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::config::{Config, ConfigError};
use super::error::SetupError;
use crate::event::Event;
use crate::mutex::lock;
use crate::record::Position;
use crate::source::{Input, SourceSpec};
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

/// The output files of a run that has not started yet: opened, not truncated. Dropped
/// without [`start`](Self::start) (the run could not start), it removes the files it
/// created, except the shared given-up file of a NATS run (another instance may be
/// appending to it), which is left empty.
#[derive(Debug)]
pub(super) struct PreparedOutputs {
    rejects: Option<(File, PathBuf)>,
    dead_letter: Option<(File, PathBuf)>,
    given_up: Option<GivenUpFile>,
    /// The files this run created (removed again unless it starts).
    created: Vec<PathBuf>,
}

impl PreparedOutputs {
    /// Opens the files `config` names, creating the missing ones.
    pub(super) fn open(config: &Config) -> Result<PreparedOutputs, SetupError> {
        let mut prepared = PreparedOutputs {
            rejects: None,
            dead_letter: None,
            given_up: None,
            created: Vec::new(),
        };
        prepared.rejects = prepared.open_output(config.rejects.as_deref())?;
        match (config.max_deliveries, config.dead_letter.as_deref()) {
            (Some(_), Some(path)) => prepared.given_up = Some(GivenUpFile::open(path)?),
            (_, path) => prepared.dead_letter = prepared.open_output(path)?,
        }
        Ok(prepared)
    }

    fn open_output(&mut self, path: Option<&Path>) -> Result<Option<(File, PathBuf)>, SetupError> {
        let Some(path) = path else { return Ok(None) };
        let existed = std::fs::symlink_metadata(path).is_ok();
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|source| output_error(path, source))?;
        if !existed {
            self.created.push(path.to_owned());
        }
        Ok(Some((file, path.to_owned())))
    }

    /// The run starts: truncates the files (except the given-up file, appended to).
    pub(super) fn start(mut self) -> Result<Outputs, SetupError> {
        self.created.clear();
        let truncate = |file: Option<(File, PathBuf)>| {
            file.map(|(file, path)| {
                // A FIFO or a device cannot be (and need not be) truncated.
                if file.metadata().is_ok_and(|m| m.is_file()) {
                    file.set_len(0)
                        .map_err(|source| output_error(&path, source))?;
                }
                Ok::<_, SetupError>(Mutex::new(BufWriter::new(file)))
            })
            .transpose()
        };
        Ok(Outputs {
            rejects: truncate(self.rejects.take())?,
            dead_letter: truncate(self.dead_letter.take())?,
            given_up: self.given_up.take().map(Mutex::new),
        })
    }
}

impl Drop for PreparedOutputs {
    fn drop(&mut self) {
        for path in &self.created {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn output_error(path: &Path, source: std::io::Error) -> SetupError {
    SetupError::Output {
        path: path.display().to_string(),
        source,
    }
}

impl Outputs {
    /// Appends an invalid record to `--rejects`, if given: `line` (or `sequence`, or `message`
    /// and `line`), `error`, `raw`.
    pub(super) fn reject(&self, rejected: &Rejected) -> std::io::Result<()> {
        let Some(file) = &self.rejects else {
            return Ok(());
        };
        let line = match rejected.position {
            Position::Line(n) => serde_json::json!({
                "line": n,
                "error": rejected.reason,
                "raw": rejected.raw,
            }),
            Position::Sequence(n) => serde_json::json!({
                "sequence": n,
                "error": rejected.reason,
                "raw": rejected.raw,
            }),
            Position::MessageLine { message, line } => serde_json::json!({
                "message": message,
                "line": line,
                "error": rejected.reason,
                "raw": rejected.raw,
            }),
        };
        // Flushed line by line: a killed run loses no reject it reported.
        let mut file = lock(file);
        writeln!(file, "{line}").and_then(|()| file.flush())
    }

    /// Appends the events of a rolled-back batch to `--dead-letter`, if given (a source that
    /// does not redeliver), and makes them durable (flush and fsync).
    pub(super) fn dead_letter<'a>(
        &self,
        events: impl Iterator<Item = &'a Event>,
    ) -> std::io::Result<()> {
        // Durable before the batch is announced (see `Ctx::rolled_back`): a killed run
        // loses no dead letter it reported.
        match &self.dead_letter {
            Some(file) => {
                let mut file = lock(file);
                write_events(&mut *file, events)?;
                file.flush()?;
                file.get_ref().sync_data()
            }
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
        let error = |source| output_error(path, source);
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

/// Refuses an output file (`--rejects`, `--dead-letter`) that is the `--input` file (under
/// any name, a hard link included, or the file read as standard input with `--input -`),
/// the SQLite database file or one of its companion files, or the other output file:
/// writing it would destroy what it holds.
pub(super) fn check_outputs(config: &Config) -> Result<(), SetupError> {
    let refuse = |message: String| Err(SetupError::Config(ConfigError(message)));
    let input = match &config.source {
        SourceSpec::Ndjson(Input::File(path)) => Some(FileId::of_path(path)),
        SourceSpec::Ndjson(Input::Stdin) => FileId::of_stdin(),
        _ => None,
    };
    let database: Vec<FileId> = sqlite_file(&config.database)
        .map(|db| {
            ["", "-wal", "-shm", "-journal"]
                .iter()
                .map(|suffix| {
                    let mut name = db.clone().into_os_string();
                    name.push(suffix);
                    FileId::of_path(Path::new(&name))
                })
                .collect()
        })
        .unwrap_or_default();
    let outputs = [
        ("--rejects", config.rejects.as_deref()),
        ("--dead-letter", config.dead_letter.as_deref()),
    ];
    for (option, path) in outputs {
        let Some(path) = path else { continue };
        let output = FileId::of_path(path);
        if input.as_ref().is_some_and(|input| output.is(input)) {
            return refuse(format!(
                "{option} {} is the --input file: it would be overwritten",
                path.display()
            ));
        }
        if database.iter().any(|db| output.is(db)) {
            return refuse(format!(
                "{option} {} is the database file (or one of its companion files): it would be \
                 overwritten",
                path.display()
            ));
        }
    }
    if let (Some(rejects), Some(dead_letter)) =
        (config.rejects.as_deref(), config.dead_letter.as_deref())
        && FileId::of_path(rejects).is(&FileId::of_path(dead_letter))
    {
        return refuse(format!(
            "--rejects and --dead-letter must be different files, both are {}",
            rejects.display()
        ));
    }
    Ok(())
}

/// What makes a file the same file as another.
#[derive(Debug, PartialEq)]
enum FileId {
    /// An existing regular file: its device and inode (hard links and other names included).
    Inode(u64, u64),
    /// Something else that exists (a device such as `/dev/null`, a FIFO): writing it
    /// destroys nothing.
    Special,
    /// A file that does not exist (yet): its absolute path, directory resolved.
    Missing(PathBuf),
}

impl FileId {
    fn of_path(path: &Path) -> FileId {
        match std::fs::metadata(path) {
            Ok(metadata) => FileId::of_metadata(&metadata),
            Err(_) => {
                let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
                let resolved = match (absolute.parent(), absolute.file_name()) {
                    (Some(dir), Some(name)) => std::fs::canonicalize(dir)
                        .map(|dir| dir.join(name))
                        .unwrap_or(absolute.clone()),
                    _ => absolute,
                };
                FileId::Missing(resolved)
            }
        }
    }

    /// The file standard input reads, if it can be told.
    fn of_stdin() -> Option<FileId> {
        use std::os::fd::AsFd;
        let stdin = std::io::stdin();
        let fd = stdin.as_fd().try_clone_to_owned().ok()?;
        File::from(fd)
            .metadata()
            .ok()
            .map(|metadata| FileId::of_metadata(&metadata))
    }

    fn of_metadata(metadata: &std::fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        if metadata.is_file() {
            FileId::Inode(metadata.dev(), metadata.ino())
        } else {
            FileId::Special
        }
    }

    /// Whether writing `self` would destroy `other`.
    fn is(&self, other: &FileId) -> bool {
        !matches!(self, FileId::Special) && self == other
    }
}

/// The file of a `sqlite:` database URL (`None` for another database or an in-memory one).
fn sqlite_file(url: &str) -> Option<PathBuf> {
    use std::str::FromStr;
    if !url.starts_with("sqlite:") {
        return None;
    }
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url).ok()?;
    let file = options.get_filename();
    (file != Path::new(":memory:") && !file.as_os_str().is_empty()).then(|| file.to_owned())
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
