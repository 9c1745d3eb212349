//! `--log-format text|json` and `RUST_LOG`: the lines the run writes on standard error, as
//! `tracing` events through `tracing-subscriber`.
//!
//! Rules:
//! - Once [`install`]ed, every line of the [`Console`] is an event: target `event_batcher`
//!   (`event_batcher::progress` for the plain progress lines), level `ERROR` for a line
//!   that says `error:`, `WARN` for one that says `warning:` and for an invalid record, a
//!   rolled-back batch or a database outage, `INFO` otherwise; its `message` is the line
//!   without the `event-batcher: ` prefix.
//! - `text` prints each event as the line it was before (`event-batcher: …`), above the
//!   progress bar when there is one; an event of another target (enabled through
//!   `RUST_LOG`) is printed as `LEVEL target: message fields`.
//! - `json` prints each event as one JSON object on one line: `timestamp` (RFC 3339, UTC),
//!   `level`, `message`, any other fields, `target`. There is no progress bar (the plain
//!   progress lines are events instead).
//! - `RUST_LOG` filters with `target=level` directives, comma-separated (`warn`,
//!   `event_batcher=warn`, `event_batcher=info,sqlx=debug`); unset or empty, it is
//!   [`DEFAULT_FILTER`]: this program's lines, nothing from the libraries below it. A value
//!   that does not parse is an error (exit code 2).
//! - The summary is not an event: it goes to standard output as before.
//!
//! ```text
//! $ event-batcher --input events.ndjson --log-format json 2>&1 >/dev/null | head -1
//! {"timestamp":"2026-12-07T13:00:00.000000Z","level":"WARN","message":"invalid line 3: …","target":"event_batcher"}
//! ```

use std::fmt;
use std::io;
use std::str::FromStr;

use tracing::{Event, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{Layer, fmt as subscriber_fmt};

use crate::console::{self, Console};

/// The filter when `RUST_LOG` is unset or empty: every line of this program, nothing else.
pub const DEFAULT_FILTER: &str = "event_batcher=info";

/// How the events are printed on standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// The lines as they always were, above the progress bar.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Why the logs cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    /// `RUST_LOG` does not parse.
    #[error(
        "RUST_LOG {value:?}: {source} (expected comma-separated `level` or `target=level`, \
         e.g. event_batcher=warn)"
    )]
    Filter {
        /// The value.
        value: String,
        /// Why it does not parse.
        source: tracing_subscriber::filter::ParseError,
    },
    /// Another global subscriber was installed first.
    #[error("the logs cannot be set up: {0}")]
    AlreadySet(#[from] tracing::subscriber::SetGlobalDefaultError),
}

/// Turns the [`Console`]'s lines into events printed in `format`, filtered by `filter`
/// (the value of `RUST_LOG`; `None` or empty: [`DEFAULT_FILTER`]), for the rest of the
/// process. `console` is the one the run prints through (its progress bar, in `text`).
/// Once per process: a later call checks `filter` and keeps the first installation.
pub fn install(
    format: LogFormat,
    console: &Console,
    filter: Option<&str>,
) -> Result<(), LogsError> {
    let targets = parse_filter(filter)?;
    if console::emits_events() {
        return Ok(());
    }
    let writer = ConsoleWriter(console.clone());
    let layer = match format {
        LogFormat::Text => subscriber_fmt::layer()
            .event_format(TextLine)
            .with_writer(writer)
            .with_filter(targets)
            .boxed(),
        LogFormat::Json => subscriber_fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(writer)
            .with_filter(targets)
            .boxed(),
    };
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))?;
    console::emit_events();
    Ok(())
}

/// The filter `RUST_LOG` describes.
fn parse_filter(filter: Option<&str>) -> Result<Targets, LogsError> {
    let value = filter.map(str::trim).filter(|value| !value.is_empty());
    Targets::from_str(value.unwrap_or(DEFAULT_FILTER)).map_err(|source| LogsError::Filter {
        value: value.unwrap_or_default().to_owned(),
        source,
    })
}

/// `text`: the program's lines as they were, other targets with their level and target.
struct TextLine;

impl<S, N> FormatEvent<S, N> for TextLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        match metadata.target() {
            console::PROGRESS_TARGET => {}
            console::TARGET => writer.write_str("event-batcher: ")?,
            target => write!(writer, "{} {target}: ", metadata.level())?,
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Prints each formatted event through the console (above its progress bar).
struct ConsoleWriter(Console);

impl<'a> MakeWriter<'a> for ConsoleWriter {
    type Writer = ConsoleLine;

    fn make_writer(&'a self) -> ConsoleLine {
        ConsoleLine {
            console: self.0.clone(),
            text: Vec::new(),
        }
    }
}

/// One formatted event, printed when dropped.
struct ConsoleLine {
    console: Console,
    text: Vec<u8>,
}

impl io::Write for ConsoleLine {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.text.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ConsoleLine {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.text);
        let text = text.strip_suffix('\n').unwrap_or(&text);
        if !text.is_empty() {
            self.console.print(text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_takes_target_level_directives() {
        assert!(parse_filter(None).is_ok());
        assert!(parse_filter(Some("  ")).is_ok());
        assert!(parse_filter(Some("warn,event_batcher=debug,sqlx=info")).is_ok());
        let error = parse_filter(Some("event_batcher=loud"))
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("RUST_LOG \"event_batcher=loud\": "),
            "{error}"
        );
        assert!(!error.contains('\n'), "{error}");
    }
}
