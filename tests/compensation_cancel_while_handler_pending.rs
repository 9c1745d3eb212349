//! Cancellation noticed while an item's handler is pending: the item's registrations are
//! undone in the poll where the token is seen, and a pending handler is never resumed once
//! the token has fired, on every path a run can take (one item at a time, several at once,
//! with a time limit).

mod common;
mod compensation_common;

use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::{ms, secs};
use compensation_common::*;
use futures::channel::oneshot;
use futures::stream;
use result_stream::{CompensationScope, ResultStreamExt, RetryPolicy};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

#[tokio::test(start_paused = true)]
async fn cancellation_noticed_in_the_poll_where_the_handler_is_pending_undoes_its_item() {
    let start = Instant::now();
    let log = Log::default();
    let token = CancellationToken::new();
    let (log2, token2) = (log.clone(), token.clone());
    let error = stream::iter((1..=3).map(Ok::<u32, AppError>))
        .for_each_compensated(CompensationScope::new(), move |item, scope| {
            scope.register(undo(&log2, format!("undo {item}")));
            let token = token2.clone();
            async move {
                if item == 2 {
                    token.cancel(); // fires while this handler runs...
                    sleep(secs(3_600)).await; // ...which is then pending
                }
                Ok(())
            }
        })
        .with_cancellation(token)
        .await
        .unwrap_err();
    assert!(error.cause().is_cancelled());
    // The in-flight item 2 is rolled back, not committed; item 1 stays committed.
    assert_eq!(error.report().ran(), 1);
    assert_eq!(log.entries(), vec!["undo 2"]);
    assert_eq!(start.elapsed(), ms(0), "dropped at once");
}

#[tokio::test(start_paused = true)]
async fn a_pending_handler_is_not_resumed_once_the_token_has_fired() {
    // One item at a time, two slots, and the slots' own machinery (retries with a time
    // limit): each path checks the token before resuming a pending handler.
    for config in ["plain", "concurrency(2)", "retry with a time limit"] {
        let log = Log::default();
        let token = CancellationToken::new();
        let (tx, rx) = oneshot::channel::<()>();
        let gate = Arc::new(Mutex::new(Some(rx)));
        let finished = Arc::new(AtomicBool::new(false));
        let (log2, finished2) = (log.clone(), finished.clone());
        let run = stream::iter(vec![Ok::<u32, AppError>(1)])
            .for_each_compensated(CompensationScope::new(), move |item, scope| {
                scope.register(undo(&log2, format!("undo {item}")));
                let rx = gate.lock().unwrap().take().expect("one item");
                let finished = finished2.clone();
                async move {
                    rx.await.expect("sender kept");
                    finished.store(true, Ordering::SeqCst);
                    Ok(())
                }
            })
            .with_cancellation(token.clone());
        let run = match config {
            "plain" => run,
            "concurrency(2)" => run.concurrency(2),
            _ => run.retry(
                RetryPolicy::default()
                    .attempts(2)
                    .attempt_timeout(secs(3_600)),
            ),
        };
        let mut run = pin!(run);
        assert!(futures::poll!(run.as_mut()).is_pending());

        // Both wake the run before it is polled again: the handler could now finish, but
        // the token fired first, so it is dropped instead of resumed.
        token.cancel();
        tx.send(()).unwrap();
        let error = run.await.expect_err(config);

        assert!(error.cause().is_cancelled(), "{config}");
        assert!(
            !finished.load(Ordering::SeqCst),
            "{config}: the handler was resumed"
        );
        assert_eq!(error.report().ran(), 1, "{config}");
        assert_eq!(log.entries(), vec!["undo 1"], "{config}");
    }
}
