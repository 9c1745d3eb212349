//! Heap-allocation counts of `for_each_compensated`: nothing when nothing is registered or the
//! compensations are zero-sized; otherwise one allocation per registration (plus the growth
//! of the stack of compensations in all-or-nothing mode).
//!
//! Allocations are counted only inside the adapter's polls (see `alloc_common`).

mod alloc_common;

use alloc_common::{E, allocations, counted, current_thread};
use futures::stream;
use result_stream::{CompensationScope, ResultStreamExt};

#[global_allocator]
static GLOBAL: alloc_common::CountingAllocator = alloc_common::CountingAllocator;

// ---------------------------------------------------------------------------------------
// for_each_compensated

/// Pre-built batches: `n` vectors of 8 values (built before counting).
fn batches(n: u64) -> Vec<Result<Vec<u64>, E>> {
    (0..n).map(|i| Ok((i * 8..i * 8 + 8).collect())).collect()
}

#[test]
fn for_each_compensated_with_nothing_registered_allocates_nothing() {
    let rt = current_thread();
    let n = 50_000_u64;
    let input = batches(n);
    let done = rt.block_on(async {
        counted(stream::iter(input).for_each_compensated(
            CompensationScope::new(),
            |batch, _scope| async move {
                std::hint::black_box(batch.iter().sum::<u64>());
                Ok(())
            },
        ))
        .await
    });
    assert_eq!(done.unwrap().items(), n);
    assert_eq!(allocations(), 0);
}

#[test]
fn for_each_compensated_allocates_once_per_registration() {
    // One compensation per item, a real closure capturing the batch's first id: one
    // allocation for it (the `Box` of the action). The scope's stack `Vec` grows once (to 4
    // entries) and is reused for every later item, because committing an item truncates the
    // stack without allocating.
    const STACK_GROWTH: u64 = 1;
    let rt = current_thread();
    let n = 50_000_u64;
    let input = batches(n);
    let scope = CompensationScope::new();
    let done = rt.block_on(async {
        counted(stream::iter(input).for_each_compensated(
            scope.clone(),
            |batch, scope| async move {
                let first = batch[0];
                scope.register(move || async move {
                    std::hint::black_box(first);
                    Ok::<(), std::io::Error>(())
                });
                std::hint::black_box(batch.iter().sum::<u64>());
                Ok(())
            },
        ))
        .await
    });
    let allocs = allocations();
    assert_eq!(done.unwrap().items(), n);
    assert!(scope.is_empty(), "every item's compensation was committed");
    assert!(
        (n..=n + STACK_GROWTH).contains(&allocs),
        "{allocs} allocations for {n} registrations"
    );
}

#[test]
fn for_each_compensated_all_or_nothing_allocates_once_per_registration_plus_stack_growth() {
    // All-or-nothing keeps every compensation until the end: the stack `Vec` doubles
    // log2(n) times on top of one allocation per registration.
    let rt = current_thread();
    let n = 50_000_u64;
    let input = batches(n);
    let scope = CompensationScope::new();
    let done = rt.block_on(async {
        counted(
            stream::iter(input)
                .for_each_compensated(scope.clone(), |batch, scope| async move {
                    let first = batch[0];
                    scope.register(move || async move {
                        std::hint::black_box(first);
                        Ok::<(), std::io::Error>(())
                    });
                    Ok(())
                })
                .all_or_nothing(),
        )
        .await
    });
    let allocs = allocations();
    assert_eq!(done.unwrap().items(), n);
    assert!(scope.is_empty());
    let growth = u64::from(u64::BITS - n.leading_zeros()); // ceil(log2(n)) + 1 at most
    assert!(
        (n..=n + growth).contains(&allocs),
        "{allocs} allocations for {n} registrations"
    );
}

#[test]
fn for_each_compensated_zero_sized_compensations_allocate_nothing() {
    // A closure that captures nothing is zero-sized: boxing it allocates nothing, so
    // registering and committing it allocates nothing (at most the stack's one growth).
    let rt = current_thread();
    let n = 20_000_u64;
    let input = batches(n);
    let done = rt.block_on(async {
        counted(stream::iter(input).for_each_compensated(
            CompensationScope::new(),
            |_batch, scope| async move {
                scope.register(|| async { Ok::<(), std::io::Error>(()) });
                Ok(())
            },
        ))
        .await
    });
    let allocs = allocations();
    assert_eq!(done.unwrap().items(), n);
    assert!(allocs <= 1, "{allocs} allocations for {n} registrations");
}

#[test]
fn for_each_compensated_several_registrations_per_item_allocate_once_each() {
    // Three compensations per item: committing them moves them out of the lock through a
    // reused buffer, so once warm an item costs its three `Box`es and nothing else. Warm-up:
    // the stack's and the spare buffer's growth to 4 entries, once each.
    const WARM_UP: u64 = 2;
    let rt = current_thread();
    let n = 20_000_u64;
    let input = batches(n);
    let done = rt.block_on(async {
        counted(stream::iter(input).for_each_compensated(
            CompensationScope::new(),
            |batch, scope| async move {
                for &id in &batch[..3] {
                    scope.register(move || async move {
                        std::hint::black_box(id);
                        Ok::<(), std::io::Error>(())
                    });
                }
                Ok(())
            },
        ))
        .await
    });
    let allocs = allocations();
    assert_eq!(done.unwrap().items(), n);
    assert!(
        (3 * n..=3 * n + WARM_UP).contains(&allocs),
        "{allocs} allocations for {} registrations",
        3 * n
    );
}
