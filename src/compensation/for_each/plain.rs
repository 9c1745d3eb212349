//! The plain path of [`ForEachCompensated`]: one item at a time, no time limit, its handler
//! polled directly, with no more per item than that.

use core::task::{Context, Poll};
use std::future::Future;

use futures_core::stream::TryStream;
use tokio_util::sync::CancellationToken;

use super::item::Rules;
use super::{Cause, CompensatedError, Completion, ForEachProj, Phase, is_cancelled};
use crate::compensation::CompensationScope;

/// What the plain path came to.
pub(super) enum Plain<T, E> {
    /// The future's answer.
    Return(Poll<T>),
    /// The run stops: roll back.
    Stop(Cause<E>),
    /// An attempt failed and the item needs an undo of its own (retry, skip): its slot's
    /// machinery takes it from here.
    HandOver,
}

/// Pulls and handles items one at a time. `KEEP`: a clone of each item is kept for a retry.
#[inline]
pub(super) fn poll<const KEEP: bool, St, F, Fut>(
    this: &mut ForEachProj<'_, St, F, Fut>,
    cx: &mut Context<'_>,
    rules: &Rules,
    check_before_handler: &mut bool,
) -> Plain<Result<Completion, CompensatedError<St::Error>>, St::Error>
where
    St: TryStream,
    F: FnMut(St::Ok, CompensationScope) -> Fut,
    Fut: Future<Output = Result<(), St::Error>>,
{
    let token_fired = |token: &Option<CancellationToken>| {
        token.as_ref().is_some_and(CancellationToken::is_cancelled)
    };
    loop {
        if this.first.has_handler() {
            if *check_before_handler && token_fired(this.token) {
                return Plain::Stop(Cause::Cancelled);
            }
            match this.first.as_mut().poll_handler(cx) {
                Poll::Ready(Ok(())) => {
                    *this.items += 1;
                    if rules.commit_each {
                        this.run.items().commit_to(this.first.mark());
                    }
                    if KEEP {
                        this.first.as_mut().drop_item();
                    }
                }
                Poll::Ready(Err(error)) => {
                    let retries = rules.retry.is_some_and(|policy| policy.max_attempts() > 1);
                    if !(retries || rules.skip) {
                        return Plain::Stop(Cause::Handler(error));
                    }
                    this.first.as_mut().fail_plain(
                        *this.pulled - 1,
                        Cause::Handler(error),
                        rules.undo,
                        this.run.items(),
                    );
                    return Plain::HandOver;
                }
                Poll::Pending => {
                    if is_cancelled(this.cancelled.as_mut(), cx) {
                        return Plain::Stop(Cause::Cancelled);
                    }
                    return Plain::Return(Poll::Pending);
                }
            }
        }
        if token_fired(this.token) {
            return Plain::Stop(Cause::Cancelled);
        }
        match this.stream.as_mut().try_poll_next(cx) {
            Poll::Ready(Some(Ok(value))) => {
                let handle = this.run.items();
                let mark = handle.checkpoint();
                *this.pulled += 1;
                let handler = match this.keep {
                    Some(keep) if KEEP => {
                        let handler = (this.f)(keep(&value), handle.clone());
                        this.first.as_mut().keep_item(value);
                        handler
                    }
                    _ => (this.f)(value, handle.clone()),
                };
                this.first.as_mut().start(handler, mark);
                *check_before_handler = false;
            }
            Poll::Ready(Some(Err(error))) => return Plain::Stop(Cause::Upstream(error)),
            Poll::Ready(None) => {
                this.run.handle().commit_run();
                this.run.end();
                *this.phase = Phase::Done;
                return Plain::Return(Poll::Ready(Ok(Completion {
                    items: *this.items,
                    skipped: *this.skipped,
                })));
            }
            Poll::Pending => {
                if is_cancelled(this.cancelled.as_mut(), cx) {
                    return Plain::Stop(Cause::Cancelled);
                }
                return Plain::Return(Poll::Pending);
            }
        }
    }
}
