//! SIGINT and SIGTERM: the first stops (NATS) or cancels the run, the next cancels, the
//! next exits at once.

use tokio_util::sync::CancellationToken;

use crate::console::Console;

/// SIGINT and SIGTERM.
pub(super) struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    #[cfg(unix)]
    pub(super) fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    #[cfg(not(unix))]
    pub(super) fn new() -> std::io::Result<Signals> {
        Ok(Signals {})
    }

    /// The next signal's name; `None` when signals can no longer be received.
    #[cfg(unix)]
    async fn next(&mut self) -> Option<&'static str> {
        tokio::select! {
            received = self.interrupt.recv() => received.map(|()| "SIGINT"),
            received = self.terminate.recv() => received.map(|()| "SIGTERM"),
        }
    }

    #[cfg(not(unix))]
    async fn next(&mut self) -> Option<&'static str> {
        tokio::signal::ctrl_c().await.ok().map(|()| "Ctrl-C")
    }

    /// With `graceful`, the first signal stops the source (the batch in flight is finished);
    /// the next cancels the run (the batch in flight is rolled back); the next exits at once.
    pub(super) async fn watch(
        mut self,
        stop: CancellationToken,
        cancel: CancellationToken,
        graceful: bool,
        console: Console,
    ) {
        if graceful {
            let Some(name) = self.next().await else {
                return;
            };
            console.println(format!(
                "event-batcher: {name}: stopping: no more messages are pulled, the batch in flight \
                 is finished ({name} again to roll it back instead)"
            ));
            stop.cancel();
        }
        let Some(name) = self.next().await else {
            return;
        };
        console.println(format!(
            "event-batcher: {name}: interrupted: rolling back the batch in progress ({name} again \
             to quit now)"
        ));
        cancel.cancel();
        if self.next().await.is_some() {
            std::process::exit(130);
        }
    }
}
