//! Standard error: the one module that writes to it.
//!
//! Messages (invalid records, rolled-back batches, a failed NATS pull, signals, the final
//! error line) and the plain progress lines all go through a [`Console`]. While a progress
//! bar is shown, a line is printed above the bar instead of through it, so it does not tear
//! it. The summary goes to standard output (the CLI prints it).
//!
//! Once [`crate::logs::install`] has run (the CLI's `--log-format`, `RUST_LOG`), each line
//! is a `tracing` event instead, printed by the installed subscriber (see [`crate::logs`]
//! for targets, levels and formats).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use indicatif::ProgressBar;

use crate::mutex::lock;

/// The target of the events of [`Console::println`] and [`Console::warn`].
pub const TARGET: &str = "event_batcher";
/// The target of the events of [`Console::progress`].
pub const PROGRESS_TARGET: &str = "event_batcher::progress";

/// Whether lines are events (set once by [`crate::logs::install`]).
static EVENTS: AtomicBool = AtomicBool::new(false);

/// From now on, lines are `tracing` events.
pub(crate) fn emit_events() {
    EVENTS.store(true, Ordering::Relaxed);
}

/// Whether lines are events.
pub(crate) fn emits_events() -> bool {
    EVENTS.load(Ordering::Relaxed)
}

/// Prints lines on standard error, above the progress bar while one is attached. Cheap to
/// clone: the clones share the bar.
#[derive(Debug, Clone, Default)]
pub struct Console {
    bar: Arc<Mutex<Option<ProgressBar>>>,
}

impl Console {
    /// A console with no bar attached.
    pub fn new() -> Self {
        Self::default()
    }

    /// Prints one line on standard error (an event once the logs are installed: `ERROR`
    /// when it says `error:`, `WARN` when it says `warning:`, `INFO` otherwise).
    pub fn println(&self, line: impl AsRef<str>) {
        let line = line.as_ref();
        if !emits_events() {
            return self.print(line);
        }
        let message = line.strip_prefix("event-batcher: ").unwrap_or(line);
        if message.starts_with("error:") {
            tracing::error!(target: TARGET, "{message}");
        } else if message.starts_with("warning:") {
            tracing::warn!(target: TARGET, "{message}");
        } else {
            tracing::info!(target: TARGET, "{message}");
        }
    }

    /// Prints one line that reports a problem the run goes on after (an invalid record, a
    /// rolled-back batch): a `WARN` event once the logs are installed.
    pub fn warn(&self, line: impl AsRef<str>) {
        let line = line.as_ref();
        if !emits_events() {
            return self.print(line);
        }
        let message = line.strip_prefix("event-batcher: ").unwrap_or(line);
        tracing::warn!(target: TARGET, "{message}");
    }

    /// Prints one plain progress line: an `INFO` event of [`PROGRESS_TARGET`] once the logs
    /// are installed.
    pub fn progress(&self, line: impl AsRef<str>) {
        let line = line.as_ref();
        if !emits_events() {
            return self.print(line);
        }
        tracing::info!(target: PROGRESS_TARGET, "{line}");
    }

    /// Prints `line` as it is, above the bar if there is one.
    pub(crate) fn print(&self, line: &str) {
        match &*lock(&self.bar) {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Prints the lines above `bar` from now on.
    pub(crate) fn attach(&self, bar: ProgressBar) {
        *lock(&self.bar) = Some(bar);
    }

    /// Detaches the bar: lines go straight to standard error again.
    pub(crate) fn detach(&self) -> Option<ProgressBar> {
        lock(&self.bar).take()
    }
}

/// `text` with its control characters (a newline in a file name, say) escaped as Rust does
/// (`\n`, `\u{1b}`), so that a message quoting it stays on one line.
pub fn one_line(text: &str) -> String {
    let mut line = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            line.extend(c.escape_default());
        } else {
            line.push(c);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_line_escapes_control_characters_only() {
        assert_eq!(super::one_line("a\nb\tc\u{1b}é"), "a\\nb\\tc\\u{1b}é");
    }
}
