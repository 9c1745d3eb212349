//! Heap-allocation counts of `map_ok_stream`: nothing per item, with ready futures and with
//! futures that return `Pending` once.
//!
//! Allocations are counted only inside the adapter's polls (see `alloc_common`).

mod alloc_common;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use alloc_common::{E, allocations, counted, current_thread};
use futures::{StreamExt, stream};
use result_stream::ResultStreamExt;

#[global_allocator]
static GLOBAL: alloc_common::CountingAllocator = alloc_common::CountingAllocator;

// ---------------------------------------------------------------------------------------
// map_ok_stream

#[test]
fn map_ok_stream_allocates_nothing_per_item() {
    let rt = current_thread();
    let n = 100_000_u64;
    let sum = rt.block_on(async {
        let upstream = stream::iter((0..n).map(|v| {
            if v % 10 == 9 {
                Err(std::io::ErrorKind::Other.into())
            } else {
                Ok::<u64, E>(v)
            }
        }));
        let mapped = counted(upstream.map_ok_stream(|v| async move { Ok::<u64, E>(v * 2) }));
        mapped
            .fold(0_u64, |acc, r| async move { acc + r.unwrap_or(1) })
            .await
    });
    assert!(sum > 0);
    assert_eq!(allocations(), 0);
}

#[test]
fn map_ok_stream_with_pending_futures_allocates_nothing_per_item() {
    /// Returns `Pending` once (waking itself), then `Ready`.
    struct YieldOnce(bool, u64);
    impl Future for YieldOnce {
        type Output = Result<u64, E>;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            if self.0 {
                Poll::Ready(Ok(self.1))
            } else {
                self.0 = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
    let rt = current_thread();
    let n = 20_000_u64;
    let count = rt.block_on(async {
        let upstream = stream::iter((0..n).map(Ok::<u64, E>));
        counted(upstream.map_ok_stream(|v| YieldOnce(false, v)))
            .count()
            .await
    });
    assert_eq!(count as u64, n);
    assert_eq!(allocations(), 0);
}
