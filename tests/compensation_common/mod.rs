//! Helpers shared by the compensation tests: the user's own error type, an ordered log of
//! what ran, a table standing in for a database, and a stream that must not be pulled past
//! its first error.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use std::time::Duration;

use futures::stream::Stream;
use result_stream::Compensation;
use result_stream::ItemScope;
use tokio::time::sleep;

/// The user's own error type: the cause must keep it, matchable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppError {
    Write(u32),
    Upstream(&'static str),
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppError::Write(item) => write!(f, "write of item {item} failed"),
            AppError::Upstream(what) => write!(f, "upstream: {what}"),
        }
    }
}

impl std::error::Error for AppError {}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A shared, ordered record of what happened.
#[derive(Clone, Default)]
pub struct Log(pub Arc<Mutex<Vec<String>>>);

impl Log {
    pub fn push(&self, entry: impl Into<String>) {
        lock(&self.0).push(entry.into());
    }
    pub fn entries(&self) -> Vec<String> {
        lock(&self.0).clone()
    }
}

/// A compensation that records `name` and succeeds.
pub fn undo(log: &Log, name: impl Into<String>) -> impl Compensation + 'static {
    let log = log.clone();
    let name = name.into();
    move || {
        let (log, name) = (log.clone(), name.clone());
        async move {
            log.push(name);
            Ok::<(), io::Error>(())
        }
    }
}

/// A compensation that records `name` and always fails with `message`.
pub fn failing(
    log: &Log,
    name: impl Into<String>,
    message: &'static str,
) -> impl Compensation + 'static {
    let log = log.clone();
    let name = name.into();
    move || {
        let (log, name) = (log.clone(), name.clone());
        async move {
            log.push(name);
            Err::<(), _>(io::Error::other(message))
        }
    }
}

/// A table standing in for a database, with a compensation that deletes rows.
#[derive(Clone, Default)]
pub struct Table(pub Arc<Mutex<BTreeSet<u32>>>);

impl Table {
    pub fn insert(&self, row: u32) {
        lock(&self.0).insert(row);
    }
    pub fn rows(&self) -> Vec<u32> {
        lock(&self.0).iter().copied().collect()
    }
    /// A compensation deleting `row`, recording `undo <row>` in `log`.
    pub fn delete(&self, log: &Log, row: u32) -> impl Compensation + 'static {
        let (table, log) = (self.clone(), log.clone());
        move || {
            let (table, log) = (table.clone(), log.clone());
            async move {
                lock(&table.0).remove(&row);
                log.push(format!("undo {row}"));
                Ok::<(), io::Error>(())
            }
        }
    }
}

/// Runs a closure when dropped.
pub struct OnDrop<F: FnMut()>(pub F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// A stream that panics if polled again after it yielded an `Err`: the terminal step must
/// stop pulling at the first error.
pub struct StopsAtError<T, E> {
    items: std::vec::IntoIter<Result<T, E>>,
    failed: bool,
}

impl<T: Unpin, E: Unpin> Stream for StopsAtError<T, E> {
    type Item = Result<T, E>;
    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        assert!(!self.failed, "upstream polled after it yielded an error");
        let next = self.items.next();
        self.failed = matches!(next, Some(Err(_)));
        Poll::Ready(next)
    }
}

pub fn stops_at_error<T, E>(items: Vec<Result<T, E>>) -> StopsAtError<T, E> {
    StopsAtError {
        items: items.into_iter(),
        failed: false,
    }
}

/// A handler script: item `i` registers `undo i`, writes row `i`, waits `wait(i)`, and
/// resolves to `outcome(i, attempt)` (attempts counted from 1 per item).
pub fn scripted(
    log: &Log,
    table: &Table,
    wait: impl Fn(u32) -> Duration + Send + Sync + 'static,
    outcome: impl Fn(u32, u32) -> Result<(), AppError> + Send + Sync + 'static,
) -> impl FnMut(
    u32,
    ItemScope,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), AppError>> + Send>> {
    let (log, table) = (log.clone(), table.clone());
    let attempts: Arc<Mutex<Vec<u32>>> = Arc::default();
    let (wait, outcome) = (Arc::new(wait), Arc::new(outcome));
    move |item, scope| {
        let attempt = {
            let mut attempts = attempts.lock().unwrap();
            if attempts.len() <= item as usize {
                attempts.resize(item as usize + 1, 0);
            }
            attempts[item as usize] += 1;
            attempts[item as usize]
        };
        let (log, table, wait, outcome) =
            (log.clone(), table.clone(), wait.clone(), outcome.clone());
        Box::pin(async move {
            scope.register(table.delete(&log, item));
            table.insert(item);
            log.push(format!("write {item}#{attempt}"));
            sleep(wait(item)).await;
            outcome(item, attempt)
        })
    }
}

pub fn undos(log: &Log) -> Vec<String> {
    log.entries()
        .into_iter()
        .filter(|entry| entry.starts_with("undo"))
        .collect()
}
