//! Per-shard metrics with nothing shared on the data path, merged off the data path for scraping.
//!
//! How the pieces fit:
//! - [`MetricsSchemaBuilder`] declares every metric once per process (name, help, kind, an optional
//!   label with a bounded set of values, and how shards are combined). The result, a
//!   [`MetricsSchema`], is read-only and shared by all shards behind an `Arc`.
//! - Each shard owns a [`ShardMetrics`] (`Rc`/`Cell`, deliberately `!Send`). Hot code holds cheap
//!   handles ([`Counter`], [`Gauge`], [`Histogram`]) and calls `inc()` / `record(us)`: no lock, no
//!   atomic, no map lookup.
//! - Periodically (or on request) a shard takes a [`ShardSnapshot`] (plain `Send` data) and
//!   publishes it to the [`MetricsCollector`], the one structure shared across threads. Its mutex is
//!   taken once per publish and once per scrape, never per event.
//! - The collector merges the latest snapshot of every shard and renders the Prometheus text
//!   exposition format 0.0.4.
//!
//! Label cardinality is bounded everywhere: a label's values are either declared up front, capped
//! by a named `series_max`, or (for peers) limited to registry peers and `peer_series_max`. Every
//! value that is not admitted is counted under `label="other"`, so no event is ever lost and no
//! remote input can grow the number of series.

mod collector;
mod schema;
mod shard;
mod standard;

pub use collector::{MergedFamily, MergedSeries, MetricsCollector, SeriesKey};
pub use schema::{
    Aggregation, CounterId, GaugeId, HistogramId, LabelSpec, LabelValues, MetricDesc, MetricKind,
    MetricsSchema, MetricsSchemaBuilder,
};
pub use shard::{
    Counter, Gauge, Histogram, SeriesSnapshot, SeriesValue, ShardMetrics, ShardSnapshot,
};
pub use standard::{rpc_error_kind, StandardMetrics, TransportMetrics};

/// The label value that collects every series not admitted by a label's bound.
pub const OVERFLOW_LABEL_VALUE: &str = "other";

/// The label that [`Aggregation::PerShard`] adds; reserved, so no metric may declare it.
pub const SHARD_LABEL: &str = "shard";

/// Every metric name starts with this.
pub const METRIC_NAME_PREFIX: &str = "icn_";

/// Quantiles rendered for every histogram (as a Prometheus summary).
pub const SUMMARY_QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

/// Sizes the metrics layer. Passed explicitly (normally built from the tuning crate's profile).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Smallest value, in microseconds, that histograms tell apart from zero. 1 us resolves the
    /// fastest loopback RPCs; must be at least 1 (hdrhistogram's rule).
    pub histogram_lowest_us: u64,
    /// Largest value, in microseconds, that histograms record exactly; larger values are clamped
    /// to it (so one stalled request cannot fail a record). Default 60 s, the longest timeout
    /// icn uses. Must be at least twice `histogram_lowest_us`.
    pub histogram_highest_us: u64,
    /// Significant decimal digits kept per value (0..=5). 2 digits = 1% relative error, which is
    /// enough for p50..p99.9 and keeps one histogram near 20 KiB for a 1 us..60 s range
    /// (3 digits: about 140 KiB). Memory per histogram grows 8x per extra digit.
    pub histogram_significant_digits: u8,
    /// For each peer-labelled metric, the most peers that get a series of their own on a shard
    /// (and in the merged output); other peers are summed into `peer="other"`. Bounds series
    /// count (and memory: one histogram or 8-byte cell per series) when a subnet is large or the
    /// registry churns. Default 64: larger than an IC subnet (13..40 nodes).
    pub peer_series_max: usize,
}

impl MetricsConfig {
    pub const HISTOGRAM_LOWEST_US_DEFAULT: u64 = 1;
    pub const HISTOGRAM_HIGHEST_US_DEFAULT: u64 = 60_000_000;
    pub const HISTOGRAM_SIGNIFICANT_DIGITS_DEFAULT: u8 = 2;
    pub const PEER_SERIES_MAX_DEFAULT: usize = 64;

    /// Checks the histogram bounds the way hdrhistogram will, so a bad profile fails at startup.
    pub fn validate(&self) -> Result<(), MetricsError> {
        self.new_histogram().map(|_| ())
    }

    /// An empty histogram with this config's bounds.
    pub(crate) fn new_histogram(&self) -> Result<hdrhistogram::Histogram<u64>, MetricsError> {
        hdrhistogram::Histogram::new_with_bounds(
            self.histogram_lowest_us,
            self.histogram_highest_us,
            self.histogram_significant_digits,
        )
        .map_err(|error| MetricsError::HistogramConfig(format!("{error:?}")))
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            histogram_lowest_us: Self::HISTOGRAM_LOWEST_US_DEFAULT,
            histogram_highest_us: Self::HISTOGRAM_HIGHEST_US_DEFAULT,
            histogram_significant_digits: Self::HISTOGRAM_SIGNIFICANT_DIGITS_DEFAULT,
            peer_series_max: Self::PEER_SERIES_MAX_DEFAULT,
        }
    }
}

/// Errors of declaring metrics and publishing snapshots. All are local mistakes (ours).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    #[error("invalid metric name {0:?}: must match [a-zA-Z_:][a-zA-Z0-9_:]* and start with icn_")]
    InvalidName(String),
    #[error("invalid label name {0:?}: must match [a-zA-Z_][a-zA-Z0-9_]*, not start with __, not be reserved")]
    InvalidLabelName(String),
    #[error("metric name {0:?} is already taken (summaries also take NAME_sum and NAME_count)")]
    DuplicateName(String),
    #[error("label {label:?} declares value {value:?} twice or declares no values")]
    InvalidLabelValues { label: String, value: String },
    #[error("invalid histogram config: {0}")]
    HistogramConfig(String),
    #[error("snapshot was taken with a different schema")]
    SchemaMismatch,
    #[error("shard {shard} is outside the collector's {shard_count} shards")]
    ShardOutOfRange { shard: usize, shard_count: usize },
}

/// Prometheus metric name rule plus our prefix.
pub fn is_valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok =
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':');
    first_ok
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        && name.starts_with(METRIC_NAME_PREFIX)
}

/// Prometheus label name rule; `__` names are reserved for Prometheus itself.
pub fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_');
    first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') && !name.starts_with("__")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_are_validated() {
        assert!(is_valid_metric_name("icn_bytes_sent_total"));
        assert!(is_valid_metric_name("icn_a:b_1"));
        assert!(!is_valid_metric_name("bytes_sent_total"), "prefix required");
        assert!(!is_valid_metric_name("icn_bad-name"));
        assert!(!is_valid_metric_name("icn_é"));
        assert!(!is_valid_metric_name(""));
        assert!(!is_valid_metric_name("1icn_x"));
    }

    #[test]
    fn label_names_are_validated() {
        assert!(is_valid_label_name("peer"));
        assert!(is_valid_label_name("_x9"));
        assert!(!is_valid_label_name("__name"));
        assert!(!is_valid_label_name("a:b"));
        assert!(!is_valid_label_name("9a"));
        assert!(!is_valid_label_name(""));
    }

    #[test]
    fn config_is_validated() {
        assert!(MetricsConfig::default().validate().is_ok());
        let zero_low = MetricsConfig {
            histogram_lowest_us: 0,
            ..Default::default()
        };
        assert!(matches!(
            zero_low.validate(),
            Err(MetricsError::HistogramConfig(_))
        ));
        let digits = MetricsConfig {
            histogram_significant_digits: 6,
            ..Default::default()
        };
        assert!(digits.validate().is_err());
        let inverted = MetricsConfig {
            histogram_highest_us: 1,
            ..Default::default()
        };
        assert!(inverted.validate().is_err());
    }
}
