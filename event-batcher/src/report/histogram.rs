//! A fixed-bucket histogram of durations: relaxed atomics, nothing allocated per
//! observation, read by `--metrics` scrapes while the run records into it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds: from a millisecond (a small SQLite batch) to a
/// minute (a write held up by a database outage, an age near a long `--flush-every`).
pub const BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Durations counted by bucket (plus one for those above the last bound), with their sum.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket, not cumulative; the last one counts those above every bound.
    counts: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of the observations, in nanoseconds.
    sum_nanos: AtomicU64,
}

/// What a [`Histogram`] held when it was read.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Each bound of [`BUCKETS`] with the observations above the bound before it and at or
    /// below it (not cumulative: the Prometheus encoder adds them up).
    pub buckets: Vec<(f64, u64)>,
    /// All observations (the `+Inf` bucket).
    pub count: u64,
    /// Their sum, in seconds.
    pub sum: f64,
}

impl Histogram {
    /// Counts `duration`.
    pub fn observe(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let bucket = BUCKETS.partition_point(|bound| *bound < seconds);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The buckets; the count is their total (the `+Inf` bucket included), so the buckets
    /// always add up to it, even while observations are being recorded.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(BUCKETS.len());
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            let count = count.load(Ordering::Relaxed);
            total += count;
            buckets.push((*bound, count));
        }
        total += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets,
            count: total,
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_count_their_own_range_and_bounds_are_inclusive() {
        let histogram = Histogram::default();
        for ms in [0, 1, 2, 700, 120_000] {
            histogram.observe(Duration::from_millis(ms));
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 5);
        assert!((snapshot.sum - 120.703).abs() < 1e-9, "{}", snapshot.sum);
        let at = |bound: f64| snapshot.buckets.iter().find(|b| b.0 == bound).unwrap().1;
        assert_eq!(at(0.001), 2, "0 ms and 1 ms (a bound is inclusive)");
        assert_eq!(at(0.0025), 1);
        assert_eq!(at(0.5), 0);
        assert_eq!(at(1.0), 1);
        let in_buckets: u64 = snapshot.buckets.iter().map(|b| b.1).sum();
        assert_eq!(in_buckets, 4, "two minutes is only in +Inf");
    }
}
