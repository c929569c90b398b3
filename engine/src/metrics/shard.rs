//! A shard's own metric cells and the cheap handles hot code uses.
//!
//! Everything here is `Rc`/`Cell`/`RefCell` and `!Send` on purpose: a shard's metrics are touched
//! only by that shard, so recording is a plain load/add/store. Handles are created once (at
//! connection setup, at service start) and then used without any lookup.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::schema::{LabelValues, MetricDesc, MetricKind};
use super::{
    CounterId, GaugeId, HistogramId, MetricsCollector, MetricsError, MetricsSchema,
    OVERFLOW_LABEL_VALUE,
};
use crate::transport::NodeId;

/// A monotonic counter cell. Clones share the cell.
#[derive(Clone, Debug)]
pub struct Counter {
    value: Rc<Cell<u64>>,
}

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    #[inline]
    pub fn add(&self, amount: u64) {
        // Saturating: a Prometheus counter must never go backwards.
        self.value.set(self.value.get().saturating_add(amount));
    }

    pub fn get(&self) -> u64 {
        self.value.get()
    }
}

/// A gauge cell (signed: a depth computed as `enqueued - dequeued` may dip below zero briefly).
#[derive(Clone, Debug)]
pub struct Gauge {
    value: Rc<Cell<i64>>,
}

impl Gauge {
    #[inline]
    pub fn set(&self, value: i64) {
        self.value.set(value);
    }

    #[inline]
    pub fn add(&self, delta: i64) {
        self.value.set(self.value.get().saturating_add(delta));
    }

    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    #[inline]
    pub fn dec(&self) {
        self.add(-1);
    }

    pub fn get(&self) -> i64 {
        self.value.get()
    }
}

/// The histogram plus the exact sum of recorded values (hdrhistogram keeps only buckets, and a
/// summary's `_sum` should not carry bucket rounding).
#[derive(Debug)]
struct HistogramCell {
    histogram: hdrhistogram::Histogram<u64>,
    sum: u64,
}

/// A latency histogram cell, values normally in microseconds.
#[derive(Clone, Debug)]
pub struct Histogram {
    cell: Rc<RefCell<HistogramCell>>,
}

impl Histogram {
    /// Records one value; values above the configured highest are clamped to it.
    #[inline]
    pub fn record(&self, value: u64) {
        let mut cell = self.cell.borrow_mut();
        cell.histogram.saturating_record(value);
        cell.sum = cell.sum.saturating_add(value);
    }

    /// Records a duration in microseconds (saturating at u64::MAX us).
    #[inline]
    pub fn record_duration(&self, duration: Duration) {
        self.record(u64::try_from(duration.as_micros()).unwrap_or(u64::MAX));
    }

    /// Adds everything `recorded` holds (values kept elsewhere between publishes, e.g. by a
    /// transport on its hot path) and their exact `sum`. Costs one record per non-empty bucket
    /// of `recorded`, not one per value; values above the configured highest are clamped.
    pub fn merge(&self, recorded: &hdrhistogram::Histogram<u64>, sum: u64) {
        let mut cell = self.cell.borrow_mut();
        for bucket in recorded.iter_recorded() {
            cell.histogram
                .saturating_record_n(bucket.value_iterated_to(), bucket.count_at_value());
        }
        cell.sum = cell.sum.saturating_add(sum);
    }

    pub fn count(&self) -> u64 {
        self.cell.borrow().histogram.len()
    }

    pub fn value_at_quantile(&self, quantile: f64) -> u64 {
        self.cell.borrow().histogram.value_at_quantile(quantile)
    }
}

#[derive(Clone, Debug)]
enum SeriesCell {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

/// The series of one metric on one shard. `dynamic_series` counts the series created at runtime
/// (bounded or peer labels) so that the bound is checked without scanning.
#[derive(Debug, Default)]
struct Family {
    series: Vec<(Option<String>, SeriesCell)>,
    by_label: HashMap<String, usize>,
    dynamic_series: usize,
}

/// One series' value in a snapshot.
#[derive(Clone, Debug)]
pub enum SeriesValue {
    Counter(u64),
    Gauge(i64),
    Histogram {
        histogram: hdrhistogram::Histogram<u64>,
        sum: u64,
    },
}

/// One series in a snapshot: its label value (None for an unlabelled metric) and value.
#[derive(Clone, Debug)]
pub struct SeriesSnapshot {
    pub label_value: Option<String>,
    pub value: SeriesValue,
}

/// A shard's metrics at one instant: plain data, `Send`, ready for the collector.
/// `metrics[i]` holds the series of the schema's metric `i`.
#[derive(Clone, Debug)]
pub struct ShardSnapshot {
    pub(crate) schema_id: u64,
    pub shard: usize,
    pub metrics: Vec<Vec<SeriesSnapshot>>,
}

struct ShardInner {
    schema: Arc<MetricsSchema>,
    shard: usize,
    families: Vec<RefCell<Family>>,
    /// Peers allowed their own series: the registry's, sorted and cut to `peer_series_max`.
    registry_peers: RefCell<HashSet<NodeId>>,
}

/// One shard's metrics. Clones share the same cells (hand one to every service on the shard).
///
/// Ids passed to the handle getters must come from the schema this shard was built with, and
/// the label form must match the declaration (`counter` for unlabelled, `counter_with` for fixed
/// or bounded labels, `counter_for_peer` for peer labels); a mismatch is our bug and panics at
/// handle creation, never on the recording path.
#[derive(Clone)]
pub struct ShardMetrics {
    inner: Rc<ShardInner>,
}

/// Which series of a metric a handle is for.
enum LabelChoice<'a> {
    None,
    Value(&'a str),
    Peer(&'a NodeId),
}

impl ShardMetrics {
    /// Creates the shard's cells: unlabelled metrics and every fixed label value get their series
    /// now, so they render (as zero) before the first event.
    pub fn new(schema: Arc<MetricsSchema>, shard: usize) -> ShardMetrics {
        let families = (0..schema.metrics.len())
            .map(|_| RefCell::new(Family::default()))
            .collect();
        let inner = ShardInner {
            schema,
            shard,
            families,
            registry_peers: RefCell::default(),
        };
        let metrics = ShardMetrics {
            inner: Rc::new(inner),
        };
        metrics.create_declared_series();
        metrics
    }

    pub fn shard(&self) -> usize {
        self.inner.shard
    }

    pub fn schema(&self) -> &Arc<MetricsSchema> {
        &self.inner.schema
    }

    /// Sets the peers that may get their own series. Deterministic (sorted by id, cut to
    /// `peer_series_max`) so that every shard given the same registry version admits the same
    /// peers. Series already created stay; new peers beyond the bound go to `"other"`.
    pub fn set_registry_peers(&self, peers: impl IntoIterator<Item = NodeId>) {
        let mut sorted: Vec<NodeId> = peers.into_iter().collect();
        sorted.sort_unstable();
        sorted.dedup();
        sorted.truncate(self.inner.schema.config.peer_series_max);
        *self.inner.registry_peers.borrow_mut() = sorted.into_iter().collect();
    }

    /// Handle to an unlabelled counter.
    pub fn counter(&self, id: CounterId) -> Counter {
        self.counter_for(id, LabelChoice::None)
    }

    /// Handle to a labelled counter's series for `value` (or `"other"` if not admitted).
    pub fn counter_with(&self, id: CounterId, value: &str) -> Counter {
        self.counter_for(id, LabelChoice::Value(value))
    }

    /// Handle to a peer-labelled counter's series for `peer` (or `"other"`).
    pub fn counter_for_peer(&self, id: CounterId, peer: &NodeId) -> Counter {
        self.counter_for(id, LabelChoice::Peer(peer))
    }

    pub fn gauge(&self, id: GaugeId) -> Gauge {
        self.gauge_for(id, LabelChoice::None)
    }

    pub fn gauge_with(&self, id: GaugeId, value: &str) -> Gauge {
        self.gauge_for(id, LabelChoice::Value(value))
    }

    pub fn gauge_for_peer(&self, id: GaugeId, peer: &NodeId) -> Gauge {
        self.gauge_for(id, LabelChoice::Peer(peer))
    }

    pub fn histogram(&self, id: HistogramId) -> Histogram {
        self.histogram_for(id, LabelChoice::None)
    }

    pub fn histogram_with(&self, id: HistogramId, value: &str) -> Histogram {
        self.histogram_for(id, LabelChoice::Value(value))
    }

    pub fn histogram_for_peer(&self, id: HistogramId, peer: &NodeId) -> Histogram {
        self.histogram_for(id, LabelChoice::Peer(peer))
    }

    /// Copies every series out. Costs one clone per histogram; called per publish, not per event.
    pub fn snapshot(&self) -> ShardSnapshot {
        let metrics = self
            .inner
            .families
            .iter()
            .map(|family| snapshot_family(&family.borrow()));
        ShardSnapshot {
            schema_id: self.inner.schema.id,
            shard: self.inner.shard,
            metrics: metrics.collect(),
        }
    }

    /// Takes a snapshot and hands it to the collector (one short mutex section there).
    pub fn publish(&self, collector: &MetricsCollector) -> Result<(), MetricsError> {
        collector.publish(self.snapshot())
    }

    /// Publishes every `interval` until the returned task is dropped; the staleness of a scrape
    /// is at most `interval`. Runs on the shard's glommio executor.
    pub fn spawn_publisher(
        &self,
        collector: Arc<MetricsCollector>,
        interval: Duration,
    ) -> glommio::Task<()> {
        let metrics = self.clone();
        glommio::spawn_local(async move {
            loop {
                // A mismatch is a wiring bug that publishing again will not fix.
                if metrics.publish(&collector).is_err() {
                    return;
                }
                glommio::timer::sleep(interval).await;
            }
        })
    }

    fn counter_for(&self, id: CounterId, choice: LabelChoice<'_>) -> Counter {
        match self.series(id.0, choice) {
            SeriesCell::Counter(counter) => counter,
            other => unreachable!("CounterId {} names a {other:?}", id.0),
        }
    }

    fn gauge_for(&self, id: GaugeId, choice: LabelChoice<'_>) -> Gauge {
        match self.series(id.0, choice) {
            SeriesCell::Gauge(gauge) => gauge,
            other => unreachable!("GaugeId {} names a {other:?}", id.0),
        }
    }

    fn histogram_for(&self, id: HistogramId, choice: LabelChoice<'_>) -> Histogram {
        match self.series(id.0, choice) {
            SeriesCell::Histogram(histogram) => histogram,
            other => unreachable!("HistogramId {} names a {other:?}", id.0),
        }
    }

    fn create_declared_series(&self) {
        for (index, desc) in self.inner.schema.metrics.iter().enumerate() {
            match desc.label.as_ref().map(|label| &label.values) {
                None => {
                    self.insert_series(index, None, false);
                }
                Some(LabelValues::Fixed(values)) => {
                    for value in values {
                        self.insert_series(index, Some(value.clone()), false);
                    }
                }
                Some(LabelValues::Bounded { .. }) | Some(LabelValues::Peer) => {}
            }
        }
    }

    /// Finds or creates the series a handle points at; this is where label bounds are enforced.
    fn series(&self, index: usize, choice: LabelChoice<'_>) -> SeriesCell {
        let desc = &self.inner.schema.metrics[index];
        let label_value = match (&choice, desc.label.as_ref().map(|label| &label.values)) {
            (LabelChoice::None, None) => return self.family(index).series[0].1.clone(),
            (
                LabelChoice::Value(value),
                Some(LabelValues::Fixed(_) | LabelValues::Bounded { .. }),
            ) => value.to_string(),
            (LabelChoice::Peer(peer), Some(LabelValues::Peer)) => self.peer_label(peer),
            _ => panic!("metric {} used with the wrong kind of label", desc.name),
        };
        if let Some(&position) = self.family(index).by_label.get(&label_value) {
            return self.family(index).series[position].1.clone();
        }
        let admitted = label_value != OVERFLOW_LABEL_VALUE && self.admits_new_series(index, desc);
        let label_value = if admitted {
            label_value
        } else {
            OVERFLOW_LABEL_VALUE.to_string()
        };
        self.get_or_insert_series(index, label_value, admitted)
    }

    /// Fixed labels admit nothing new; bounded and peer labels admit up to their series max.
    fn admits_new_series(&self, index: usize, desc: &MetricDesc) -> bool {
        match self.inner.schema.label_series_max(desc) {
            Some(series_max) => self.family(index).dynamic_series < series_max,
            None => false,
        }
    }

    fn peer_label(&self, peer: &NodeId) -> String {
        if self.inner.registry_peers.borrow().contains(peer) {
            peer.to_hex()
        } else {
            OVERFLOW_LABEL_VALUE.to_string()
        }
    }

    fn get_or_insert_series(&self, index: usize, label_value: String, dynamic: bool) -> SeriesCell {
        if let Some(&position) = self.family(index).by_label.get(&label_value) {
            return self.family(index).series[position].1.clone();
        }
        self.insert_series(index, Some(label_value), dynamic)
    }

    fn insert_series(
        &self,
        index: usize,
        label_value: Option<String>,
        dynamic: bool,
    ) -> SeriesCell {
        let cell = self.new_cell(self.inner.schema.metrics[index].kind);
        let mut family = self.inner.families[index].borrow_mut();
        if let Some(value) = &label_value {
            let position = family.series.len();
            family.by_label.insert(value.clone(), position);
        }
        family.dynamic_series += usize::from(dynamic);
        family.series.push((label_value, cell.clone()));
        cell
    }

    fn new_cell(&self, kind: MetricKind) -> SeriesCell {
        match kind {
            MetricKind::Counter => SeriesCell::Counter(Counter {
                value: Rc::default(),
            }),
            MetricKind::Gauge => SeriesCell::Gauge(Gauge {
                value: Rc::default(),
            }),
            MetricKind::Histogram => {
                let histogram = self
                    .inner
                    .schema
                    .config
                    .new_histogram()
                    .expect("histogram config was validated when the schema was built");
                let cell = HistogramCell { histogram, sum: 0 };
                SeriesCell::Histogram(Histogram {
                    cell: Rc::new(RefCell::new(cell)),
                })
            }
        }
    }

    fn family(&self, index: usize) -> std::cell::Ref<'_, Family> {
        self.inner.families[index].borrow()
    }
}

fn snapshot_family(family: &Family) -> Vec<SeriesSnapshot> {
    let snapshot_one = |(label_value, cell): &(Option<String>, SeriesCell)| SeriesSnapshot {
        label_value: label_value.clone(),
        value: match cell {
            SeriesCell::Counter(counter) => SeriesValue::Counter(counter.get()),
            SeriesCell::Gauge(gauge) => SeriesValue::Gauge(gauge.get()),
            SeriesCell::Histogram(histogram) => {
                let cell = histogram.cell.borrow();
                SeriesValue::Histogram {
                    histogram: cell.histogram.clone(),
                    sum: cell.sum,
                }
            }
        },
    };
    family.series.iter().map(snapshot_one).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Aggregation, LabelSpec, MetricsConfig, MetricsSchemaBuilder};

    fn assert_send<T: Send>() {}

    #[test]
    fn snapshots_are_send() {
        assert_send::<ShardSnapshot>();
    }

    #[test]
    fn handles_share_cells() {
        let mut b = MetricsSchemaBuilder::new(MetricsConfig::default()).unwrap();
        let c = b
            .counter("icn_c_total", "c", None, Aggregation::Sum)
            .unwrap();
        let g = b.gauge("icn_g", "g", None, Aggregation::Sum).unwrap();
        let h = b
            .histogram("icn_h_us", "h", None, Aggregation::Sum)
            .unwrap();
        let metrics = ShardMetrics::new(b.build(), 3);
        let (c1, c2) = (metrics.counter(c), metrics.counter(c));
        c1.inc();
        c2.add(4);
        assert_eq!(metrics.counter(c).get(), 5);
        metrics.gauge(g).add(7);
        metrics.gauge(g).dec();
        assert_eq!(metrics.gauge(g).get(), 6);
        metrics.histogram(h).record(10);
        metrics
            .histogram(h)
            .record_duration(Duration::from_millis(2));
        assert_eq!(metrics.histogram(h).count(), 2);
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.shard, 3);
        assert!(matches!(
            snapshot.metrics[0][0].value,
            SeriesValue::Counter(5)
        ));
        let SeriesValue::Histogram { sum, .. } = &snapshot.metrics[2][0].value else {
            panic!("histogram expected");
        };
        assert_eq!(*sum, 2010);
    }

    #[test]
    fn counter_saturates_instead_of_wrapping() {
        let mut b = MetricsSchemaBuilder::new(MetricsConfig::default()).unwrap();
        let c = b
            .counter("icn_c_total", "c", None, Aggregation::Sum)
            .unwrap();
        let counter = ShardMetrics::new(b.build(), 0).counter(c);
        counter.add(u64::MAX - 1);
        counter.add(5);
        assert_eq!(counter.get(), u64::MAX);
    }

    #[test]
    fn histogram_clamps_values_above_the_highest() {
        let config = MetricsConfig {
            histogram_highest_us: 1000,
            ..Default::default()
        };
        let mut b = MetricsSchemaBuilder::new(config).unwrap();
        let h = b
            .histogram("icn_h_us", "h", None, Aggregation::Sum)
            .unwrap();
        let histogram = ShardMetrics::new(b.build(), 0).histogram(h);
        histogram.record(u64::MAX);
        assert_eq!(histogram.count(), 1);
        assert!(histogram.value_at_quantile(1.0) <= 1010);
    }

    #[test]
    fn fixed_and_bounded_labels_fold_into_other() {
        let mut b = MetricsSchemaBuilder::new(MetricsConfig::default()).unwrap();
        let kinds = Some(LabelSpec::fixed("kind", &["timeout", "closed"]));
        let errors = b
            .counter("icn_e_total", "e", kinds, Aggregation::Sum)
            .unwrap();
        let routes = Some(LabelSpec::bounded("route", 2));
        let rpcs = b
            .counter("icn_r_total", "r", routes, Aggregation::Sum)
            .unwrap();
        let metrics = ShardMetrics::new(b.build(), 0);
        assert_eq!(
            metrics.snapshot().metrics[0].len(),
            2,
            "fixed values exist from the start"
        );
        metrics.counter_with(errors, "timeout").inc();
        metrics.counter_with(errors, "made-up").add(2);
        for route in ["1", "2", "3", "4", "1"] {
            metrics.counter_with(rpcs, route).inc();
        }
        let labels = |i: usize| -> Vec<(String, u64)> {
            let snapshot = metrics.snapshot();
            let series = snapshot.metrics[i].iter().map(|s| match s.value {
                SeriesValue::Counter(v) => (s.label_value.clone().unwrap(), v),
                _ => unreachable!(),
            });
            series.collect()
        };
        let owned = |pairs: &[(&str, u64)]| -> Vec<(String, u64)> {
            pairs
                .iter()
                .map(|(label, value)| (label.to_string(), *value))
                .collect()
        };
        assert_eq!(
            labels(0),
            owned(&[("timeout", 1), ("closed", 0), ("other", 2)])
        );
        assert_eq!(labels(1), owned(&[("1", 2), ("2", 1), ("other", 2)]));
    }

    #[test]
    fn peer_series_only_for_registry_peers_up_to_the_cap() {
        let config = MetricsConfig {
            peer_series_max: 2,
            ..Default::default()
        };
        let mut b = MetricsSchemaBuilder::new(config).unwrap();
        let sent = b.counter(
            "icn_s_total",
            "s",
            Some(LabelSpec::peer()),
            Aggregation::Sum,
        );
        let sent = sent.unwrap();
        let metrics = ShardMetrics::new(b.build(), 0);
        let peers: Vec<NodeId> = (1..=4).map(|i| NodeId([i; 32])).collect();
        // Registry lists peers 4, 3, 2 (unsorted): the cap keeps the two smallest ids, 2 and 3.
        metrics.set_registry_peers([peers[3], peers[2], peers[1]]);
        for peer in &peers {
            metrics.counter_for_peer(sent, peer).add(10);
        }
        let snapshot = metrics.snapshot();
        let labels: Vec<_> = snapshot.metrics[0]
            .iter()
            .map(|s| {
                (
                    s.label_value.clone().unwrap(),
                    matches!(s.value, SeriesValue::Counter(v) if v > 0),
                )
            })
            .collect();
        let expected = [
            (OVERFLOW_LABEL_VALUE.to_string(), true),
            (peers[1].to_hex(), true),
            (peers[2].to_hex(), true),
        ];
        assert_eq!(labels, expected);
        let other = snapshot.metrics[0]
            .iter()
            .find(|s| s.label_value.as_deref() == Some("other"));
        assert!(
            matches!(other.unwrap().value, SeriesValue::Counter(20)),
            "peers 1 and 4 summed"
        );
    }

    #[test]
    fn publisher_task_publishes_periodically() {
        let mut b = MetricsSchemaBuilder::new(MetricsConfig::default()).unwrap();
        let c = b
            .counter("icn_c_total", "c", None, Aggregation::Sum)
            .unwrap();
        let schema = b.build();
        let collector = Arc::new(MetricsCollector::new(schema.clone(), 1));
        let executor = glommio::LocalExecutorBuilder::default()
            .io_memory(512 << 10)
            .make()
            .unwrap();
        let seen = executor.run(async {
            let metrics = ShardMetrics::new(schema, 0);
            let _publisher = metrics.spawn_publisher(collector.clone(), Duration::from_millis(5));
            metrics.counter(c).add(7);
            // Bounded wait: the publisher runs every 5 ms; give it up to 2 s on a busy machine.
            for _ in 0..400 {
                glommio::timer::sleep(Duration::from_millis(5)).await;
                if collector.render().contains("icn_c_total 7\n") {
                    return true;
                }
            }
            false
        });
        assert!(seen, "the publisher never delivered the counter");
    }

    #[test]
    #[should_panic(expected = "wrong kind of label")]
    fn unlabelled_handle_on_labelled_metric_is_our_bug() {
        let mut b = MetricsSchemaBuilder::new(MetricsConfig::default()).unwrap();
        let label = Some(LabelSpec::bounded("queue", 2));
        let depth = b.gauge("icn_q", "q", label, Aggregation::PerShard).unwrap();
        ShardMetrics::new(b.build(), 0).gauge(depth);
    }
}
