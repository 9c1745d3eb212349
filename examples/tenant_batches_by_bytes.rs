//! One batch per tenant, each capped by bytes as well as by count: what a bulk API with a
//! request-size limit (here 4 KiB) needs. Each tenant's batch has its own 500 ms deadline,
//! and an event larger than the cap on its own is sent alone, at once.
//!
//! Run: `cargo run --example tenant_batches_by_bytes`

use std::collections::HashMap;
use std::time::Duration;

use futures::{TryStreamExt, stream};
use result_stream::{FlushReason, ResultStreamExt};

const MAX_BYTES: usize = 4 * 1024;

#[derive(Debug, Clone, PartialEq)]
struct Event {
    tenant: &'static str,
    seq: usize,
    payload: String,
}

#[tokio::main]
async fn main() -> Result<(), std::io::Error> {
    let tenants = ["acme", "globex", "initech"];
    // 200 to 899 bytes each; event 40 is 10 KB, larger than a whole batch may be.
    let size = |seq| {
        if seq == 40 {
            10_000
        } else {
            200 + seq * 37 % 700
        }
    };
    let events: Vec<Event> = (0..90)
        .map(|seq| Event {
            tenant: tenants[seq % 3],
            seq,
            payload: "x".repeat(size(seq)),
        })
        .collect();

    let mut batches = std::pin::pin!(
        stream::iter(events.clone().into_iter().map(Ok::<_, std::io::Error>))
            .chunks_timeout_by_key_result(|event| event.tenant, 100, Duration::from_millis(500))
            .max_weight(MAX_BYTES, |event| event.payload.len())
            .with_batch_info()
    );

    let mut received: HashMap<&str, Vec<Event>> = HashMap::new();
    let mut count = 0;
    while let Some((tenant, (batch, info))) = batches.try_next().await? {
        count += 1;
        let bytes = info
            .weight()
            .expect("a weight cap gives every batch its weight");
        println!(
            "{tenant:>8}: {:>2} event(s), {bytes:>5} bytes (closed by {:?})",
            batch.len(),
            info.reason()
        );
        // The rules: one tenant per batch, never over the cap but for a lone event larger
        // than it, and a batch closed by weight had no room for its tenant's next event.
        assert!(batch.iter().all(|event| event.tenant == tenant));
        assert!(bytes <= MAX_BYTES || batch.len() == 1, "{bytes} bytes");
        assert_eq!(bytes, batch.iter().map(|e| e.payload.len()).sum::<usize>());
        if info.reason() == FlushReason::Weight && bytes <= MAX_BYTES {
            let next = events
                .iter()
                .find(|e| e.tenant == tenant && e.seq > batch.last().unwrap().seq);
            assert!(bytes + next.map_or(0, |e| e.payload.len()) > MAX_BYTES);
        }
        received.entry(tenant).or_default().extend(batch);
    }

    // Nothing lost, duplicated or reordered within a tenant.
    for tenant in tenants {
        let sent: Vec<Event> = events
            .iter()
            .filter(|e| e.tenant == tenant)
            .cloned()
            .collect();
        assert_eq!(received[tenant], sent, "{tenant}");
    }
    println!(
        "{} events in {count} batches, each within {MAX_BYTES} bytes or alone",
        events.len()
    );
    Ok(())
}
