//! Progress on standard error while the pipeline runs.
//!
//! Rules:
//! - `auto` (the default) draws an indicatif bar when standard error is a terminal, and
//!   prints a plain line every [`PLAIN_EVERY`] otherwise (a log file or CI gets readable
//!   lines, not control sequences);
//! - the display reads the pipeline's atomic counters from its own task: the pipeline never
//!   waits for it, and nothing is done per event;
//! - messages (an invalid line, a rolled-back batch) and the plain lines go through the
//!   run's [`Console`], which prints them above the bar when there is one, so they do not
//!   tear it;
//! - the summary goes to standard output, after the bar is cleared.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::stats::Stats;
use crate::console::Console;

/// How often a plain progress line is printed.
pub const PLAIN_EVERY: Duration = Duration::from_secs(2);
/// How often the bar is refreshed.
const BAR_EVERY: Duration = Duration::from_millis(100);

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// A bar on a terminal, plain lines otherwise.
    #[default]
    Auto,
    /// Always a bar.
    Bar,
    /// Always plain lines.
    Plain,
    /// Nothing (messages and the summary are still printed).
    None,
}

/// The running progress display.
#[derive(Debug)]
pub(crate) struct Progress {
    console: Console,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts the display on `console`; `total` is the number of records expected, if known.
    pub fn start(
        mode: ProgressMode,
        total: Option<u64>,
        stats: Arc<Stats>,
        console: Console,
    ) -> Progress {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
            ProgressMode::Auto => ProgressMode::Plain,
            other => other,
        };
        let stop = CancellationToken::new();
        let task = match mode {
            ProgressMode::Bar => {
                let bar = new_bar(total);
                console.attach(bar.clone());
                Some(tokio::spawn(refresh_bar(bar, stats, stop.clone())))
            }
            ProgressMode::Plain => Some(tokio::spawn(print_lines(
                stats,
                console.clone(),
                stop.clone(),
            ))),
            ProgressMode::None | ProgressMode::Auto => None,
        };
        Progress {
            console,
            stop,
            task,
        }
    }

    /// Stops the display and clears the bar.
    pub async fn finish(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            // The task only ends by the token; a panic in it is not the run's failure.
            let _ = task.await;
        }
        if let Some(bar) = self.console.detach() {
            bar.finish_and_clear();
        }
    }
}

fn new_bar(total: Option<u64>) -> ProgressBar {
    let template = match total {
        Some(_) => "{spinner} {elapsed_precise} [{bar:30}] {human_pos}/{human_len} events, {msg}",
        None => "{spinner} {elapsed_precise} {human_pos} events, {msg}",
    };
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr()).with_style(style)
}

/// Events read, and the rest of the progress line.
fn counts(stats: &Stats, elapsed: Duration) -> (u64, String) {
    let read = stats.read.load(Ordering::Relaxed);
    let rate = read as f64 / elapsed.as_secs_f64().max(1e-3);
    let message = format!(
        "{rate:.0} events/s, {} batches written, {} in flight, {} rolled back, {} invalid",
        stats.committed.load(Ordering::Relaxed),
        stats.in_flight.load(Ordering::Relaxed),
        stats.rolled_back.load(Ordering::Relaxed),
        stats.invalid.load(Ordering::Relaxed),
    );
    (read, message)
}

async fn refresh_bar(bar: ProgressBar, stats: Arc<Stats>, stop: CancellationToken) {
    let started = Instant::now();
    let mut ticks = tokio::time::interval(BAR_EVERY);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let (read, message) = counts(&stats, started.elapsed());
        bar.set_position(read);
        bar.set_message(message);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
    }
}

async fn print_lines(stats: Arc<Stats>, console: Console, stop: CancellationToken) {
    let started = Instant::now();
    let mut ticks = tokio::time::interval_at(started + PLAIN_EVERY, PLAIN_EVERY);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let elapsed = started.elapsed();
        let (read, message) = counts(&stats, elapsed);
        console.progress(format!(
            "progress: {:.0} s, {read} events read, {message}",
            elapsed.as_secs_f64()
        ));
    }
}
