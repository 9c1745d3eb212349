//! Standard error: the one module that writes to it.
//!
//! Messages (invalid records, rolled-back batches, a failed NATS pull, signals, the final
//! error line) and the plain progress lines all go through a [`Console`]. While a progress
//! bar is shown, a line is printed above the bar instead of through it, so it does not tear
//! it. The summary goes to standard output (the CLI prints it).

use std::sync::{Arc, Mutex};

use indicatif::ProgressBar;

use crate::mutex::lock;

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

    /// Prints one line on standard error.
    pub fn println(&self, line: impl AsRef<str>) {
        match &*lock(&self.bar) {
            Some(bar) => bar.println(line),
            None => eprintln!("{}", line.as_ref()),
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
