//! Metric declarations. Declared once per process, then shared read-only by every shard and the
//! collector, so that a snapshot's metric `i` means the same thing everywhere.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{is_valid_label_name, is_valid_metric_name, MetricsConfig, MetricsError, SHARD_LABEL};

/// What a metric measures, and how it is rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Monotonic u64 (rendered as `counter`).
    Counter,
    /// Signed i64 that goes up and down (rendered as `gauge`).
    Gauge,
    /// hdrhistogram of values (rendered as a `summary` with quantiles, `_sum` and `_count`).
    Histogram,
}

/// How the collector combines the shards' values of one series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregation {
    /// One series for the node: counters and gauges are summed, histograms added.
    Sum,
    /// One series per shard, with a `shard="N"` label: for values whose per-core spread matters
    /// (queue depths, a shard's backlog) and whose sum would hide an overloaded core.
    PerShard,
}

/// Which values the metric's label may take. Every value not admitted goes to `"other"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelValues {
    /// Declared up front (error kinds). Each has a series from the start, so it renders as 0.
    Fixed(Vec<String>),
    /// Appear at runtime (routes, queue names); the first `series_max` distinct values get a
    /// series, the rest are summed into `"other"`. Bounds series count when values come from
    /// code paths we do not enumerate here.
    Bounded { series_max: usize },
    /// Peer node ids (hex): only peers in the registry ([`ShardMetrics::set_registry_peers`]),
    /// at most `MetricsConfig::peer_series_max`; other peers are summed into `"other"`.
    ///
    /// [`ShardMetrics::set_registry_peers`]: super::ShardMetrics::set_registry_peers
    Peer,
}

/// The one label a metric may carry (one dimension keeps merging and bounds simple).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelSpec {
    pub name: String,
    pub values: LabelValues,
}

impl LabelSpec {
    pub fn fixed(name: &str, values: &[&str]) -> LabelSpec {
        let values = values.iter().map(|v| v.to_string()).collect();
        LabelSpec {
            name: name.to_string(),
            values: LabelValues::Fixed(values),
        }
    }

    pub fn bounded(name: &str, series_max: usize) -> LabelSpec {
        LabelSpec {
            name: name.to_string(),
            values: LabelValues::Bounded { series_max },
        }
    }

    pub fn peer() -> LabelSpec {
        LabelSpec {
            name: "peer".to_string(),
            values: LabelValues::Peer,
        }
    }
}

/// One metric's declaration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricDesc {
    pub name: String,
    pub help: String,
    pub kind: MetricKind,
    pub label: Option<LabelSpec>,
    pub aggregation: Aggregation,
}

impl MetricDesc {
    /// Names this metric exposes: summaries also own `NAME_sum` and `NAME_count`.
    fn exposed_names(&self) -> Vec<String> {
        match self.kind {
            MetricKind::Histogram => vec![
                self.name.clone(),
                format!("{}_sum", self.name),
                format!("{}_count", self.name),
            ],
            MetricKind::Counter | MetricKind::Gauge => vec![self.name.clone()],
        }
    }
}

/// Typed handles to a declared metric: a counter id cannot be used to get a gauge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CounterId(pub(crate) usize);
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GaugeId(pub(crate) usize);
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HistogramId(pub(crate) usize);

/// All declarations of a process, frozen.
#[derive(Debug)]
pub struct MetricsSchema {
    /// Tells snapshots of this schema apart from those of another (tests build several).
    pub(crate) id: u64,
    pub(crate) config: MetricsConfig,
    pub(crate) metrics: Vec<MetricDesc>,
}

impl MetricsSchema {
    pub fn config(&self) -> &MetricsConfig {
        &self.config
    }

    pub fn metrics(&self) -> &[MetricDesc] {
        &self.metrics
    }

    /// The most distinct values (besides `"other"`) a metric's label may take.
    pub(crate) fn label_series_max(&self, desc: &MetricDesc) -> Option<usize> {
        match desc.label.as_ref().map(|label| &label.values) {
            Some(LabelValues::Bounded { series_max }) => Some(*series_max),
            Some(LabelValues::Peer) => Some(self.config.peer_series_max),
            Some(LabelValues::Fixed(_)) | None => None,
        }
    }
}

static NEXT_SCHEMA_ID: AtomicU64 = AtomicU64::new(1);

/// Declares metrics; validation happens here, at startup, so a bad name never reaches a scrape.
pub struct MetricsSchemaBuilder {
    config: MetricsConfig,
    metrics: Vec<MetricDesc>,
    exposed_names: HashSet<String>,
}

impl MetricsSchemaBuilder {
    pub fn new(config: MetricsConfig) -> Result<Self, MetricsError> {
        config.validate()?;
        Ok(MetricsSchemaBuilder {
            config,
            metrics: Vec::new(),
            exposed_names: HashSet::new(),
        })
    }

    pub fn counter(
        &mut self,
        name: &str,
        help: &str,
        label: Option<LabelSpec>,
        aggregation: Aggregation,
    ) -> Result<CounterId, MetricsError> {
        self.declare(name, help, MetricKind::Counter, label, aggregation)
            .map(CounterId)
    }

    pub fn gauge(
        &mut self,
        name: &str,
        help: &str,
        label: Option<LabelSpec>,
        aggregation: Aggregation,
    ) -> Result<GaugeId, MetricsError> {
        self.declare(name, help, MetricKind::Gauge, label, aggregation)
            .map(GaugeId)
    }

    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        label: Option<LabelSpec>,
        aggregation: Aggregation,
    ) -> Result<HistogramId, MetricsError> {
        self.declare(name, help, MetricKind::Histogram, label, aggregation)
            .map(HistogramId)
    }

    pub fn build(self) -> Arc<MetricsSchema> {
        let id = NEXT_SCHEMA_ID.fetch_add(1, Ordering::Relaxed);
        Arc::new(MetricsSchema {
            id,
            config: self.config,
            metrics: self.metrics,
        })
    }

    fn declare(
        &mut self,
        name: &str,
        help: &str,
        kind: MetricKind,
        label: Option<LabelSpec>,
        aggregation: Aggregation,
    ) -> Result<usize, MetricsError> {
        if !is_valid_metric_name(name) {
            return Err(MetricsError::InvalidName(name.to_string()));
        }
        if let Some(label) = &label {
            validate_label(label)?;
        }
        let desc = MetricDesc {
            name: name.to_string(),
            help: help.to_string(),
            kind,
            label,
            aggregation,
        };
        let exposed = desc.exposed_names();
        if let Some(taken) = exposed.iter().find(|n| self.exposed_names.contains(*n)) {
            return Err(MetricsError::DuplicateName(taken.clone()));
        }
        self.exposed_names.extend(exposed);
        self.metrics.push(desc);
        Ok(self.metrics.len() - 1)
    }
}

/// `shard` is ours (per-shard aggregation), `quantile` is the summary's.
const RESERVED_LABEL_NAMES: [&str; 2] = [SHARD_LABEL, "quantile"];

fn validate_label(label: &LabelSpec) -> Result<(), MetricsError> {
    if !is_valid_label_name(&label.name) || RESERVED_LABEL_NAMES.contains(&label.name.as_str()) {
        return Err(MetricsError::InvalidLabelName(label.name.clone()));
    }
    let LabelValues::Fixed(values) = &label.values else {
        return Ok(());
    };
    let invalid = |value: &str| MetricsError::InvalidLabelValues {
        label: label.name.clone(),
        value: value.to_string(),
    };
    if values.is_empty() {
        return Err(invalid(""));
    }
    let mut seen = HashSet::new();
    match values.iter().find(|value| !seen.insert(value.as_str())) {
        Some(duplicate) => Err(invalid(duplicate)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder() -> MetricsSchemaBuilder {
        MetricsSchemaBuilder::new(MetricsConfig::default()).unwrap()
    }

    #[test]
    fn declarations_get_sequential_typed_ids() {
        let mut b = builder();
        let c = b
            .counter("icn_a_total", "a", None, Aggregation::Sum)
            .unwrap();
        let g = b.gauge("icn_b", "b", None, Aggregation::PerShard).unwrap();
        let h = b
            .histogram("icn_c_us", "c", None, Aggregation::Sum)
            .unwrap();
        assert_eq!((c.0, g.0, h.0), (0, 1, 2));
        let schema = b.build();
        assert_eq!(schema.metrics()[2].kind, MetricKind::Histogram);
    }

    #[test]
    fn bad_names_and_duplicates_are_refused() {
        let mut b = builder();
        let bad = b.counter("requests", "x", None, Aggregation::Sum);
        assert_eq!(bad, Err(MetricsError::InvalidName("requests".into())));
        b.histogram("icn_rpc_us", "x", None, Aggregation::Sum)
            .unwrap();
        let clash = b.counter("icn_rpc_us_count", "x", None, Aggregation::Sum);
        assert_eq!(
            clash,
            Err(MetricsError::DuplicateName("icn_rpc_us_count".into()))
        );
        b.counter("icn_x_sum", "x", None, Aggregation::Sum).unwrap();
        let clash = b.histogram("icn_x", "x", None, Aggregation::Sum);
        assert_eq!(clash, Err(MetricsError::DuplicateName("icn_x_sum".into())));
    }

    #[test]
    fn bad_labels_are_refused() {
        let mut b = builder();
        for name in ["shard", "quantile", "__x", "a-b"] {
            let label = Some(LabelSpec::bounded(name, 4));
            let result = b.counter("icn_l_total", "x", label, Aggregation::Sum);
            assert_eq!(result, Err(MetricsError::InvalidLabelName(name.into())));
        }
        let dup = Some(LabelSpec::fixed("kind", &["a", "b", "a"]));
        let result = b.counter("icn_l_total", "x", dup, Aggregation::Sum);
        assert!(matches!(
            result,
            Err(MetricsError::InvalidLabelValues { .. })
        ));
        let empty = Some(LabelSpec::fixed("kind", &[]));
        assert!(b
            .counter("icn_l_total", "x", empty, Aggregation::Sum)
            .is_err());
        // A refused declaration takes no name.
        assert!(b
            .counter("icn_l_total", "x", None, Aggregation::Sum)
            .is_ok());
    }
}
