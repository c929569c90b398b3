//! Latency histograms and the median-of-runs rule.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Slowest latency the histogram can hold: anything slower is clamped to it (and a run that slow
/// is broken anyway). 100 s in nanoseconds.
const LATENCY_NS_MAX: u64 = 100_000_000_000;

/// Three significant digits: 0.1% resolution, about 200 KiB of counters per histogram.
const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// Records operation latencies in nanoseconds.
#[derive(Clone, Debug)]
pub struct LatencyRecorder {
    histogram: Histogram<u64>,
}

/// The percentiles BENCH.md asks for, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LatencySummary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyRecorder {
    pub fn new() -> Self {
        let histogram = Histogram::new_with_bounds(1, LATENCY_NS_MAX, LATENCY_SIGNIFICANT_DIGITS)
            .expect("constant histogram bounds are valid");
        LatencyRecorder { histogram }
    }

    pub fn record(&mut self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.histogram.saturating_record(nanos.min(LATENCY_NS_MAX));
    }

    /// Adds another recorder's samples (per-worker recorders are merged after a run).
    pub fn merge(&mut self, other: &LatencyRecorder) {
        self.histogram
            .add(&other.histogram)
            .expect("histograms share the same bounds");
    }

    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// Percentiles, or `None` when nothing was recorded (never a made-up zero).
    pub fn summary(&self) -> Option<LatencySummary> {
        if self.histogram.is_empty() {
            return None;
        }
        let at = |quantile: f64| micros(self.histogram.value_at_quantile(quantile));
        Some(LatencySummary {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
        })
    }
}

/// Nanoseconds to microseconds with 0.01 us kept (the histogram's own resolution is coarser).
fn micros(nanos: u64) -> f64 {
    (nanos as f64 / 10.0).round() / 100.0
}

/// Index of the median of `values`: the lower of the two middle elements for an even count, so
/// the reported run is always one that really happened. `None` for an empty slice.
pub fn median_index(values: &[f64]) -> Option<usize> {
    if values.is_empty() {
        return None;
    }
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    Some(order[(values.len() - 1) / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut recorder = LatencyRecorder::new();
        for micros in 1..=1000u64 {
            recorder.record(Duration::from_micros(micros));
        }
        let summary = recorder.summary().unwrap();
        // Three significant digits: each percentile within 0.1% of the exact value.
        for (got, exact) in [
            (summary.p50, 500.0),
            (summary.p90, 900.0),
            (summary.p99, 990.0),
            (summary.p999, 999.0),
        ] {
            assert!(
                (got - exact).abs() <= exact * 0.001 + 0.01,
                "got {got}, exact {exact}"
            );
        }
        assert!(summary.p50 <= summary.p90 && summary.p90 <= summary.p99);
        assert!(summary.p99 <= summary.p999);
    }

    #[test]
    fn empty_recorder_has_no_summary() {
        assert_eq!(LatencyRecorder::new().summary(), None);
    }

    #[test]
    fn merge_adds_counts_and_extremes_are_clamped() {
        let mut a = LatencyRecorder::new();
        let mut b = LatencyRecorder::new();
        a.record(Duration::from_micros(10));
        b.record(Duration::from_secs(1_000)); // beyond the bound: clamped, not lost
        b.record(Duration::ZERO); // below the bound: counted as 1 ns
        a.merge(&b);
        assert_eq!(a.count(), 3);
        let summary = a.summary().unwrap();
        assert!(
            summary.p999 >= 99_000_000.0,
            "clamped to ~100 s, got {}",
            summary.p999
        );
    }

    #[test]
    fn median_index_picks_a_real_run() {
        assert_eq!(median_index(&[]), None);
        assert_eq!(median_index(&[5.0]), Some(0));
        assert_eq!(median_index(&[3.0, 1.0, 2.0]), Some(2));
        assert_eq!(median_index(&[4.0, 1.0, 3.0, 2.0]), Some(3)); // lower middle: 2.0
    }
}
