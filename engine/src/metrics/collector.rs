//! The one cross-thread piece: holds each shard's latest snapshot, merges them, renders text.
//!
//! Its mutex is taken once per publish (per shard per interval) and once per scrape, only to swap
//! or clone `Arc`s; merging and rendering happen outside it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use super::schema::{MetricDesc, MetricKind};
use super::{
    Aggregation, MetricsError, MetricsSchema, SeriesValue, ShardSnapshot, OVERFLOW_LABEL_VALUE,
    SHARD_LABEL, SUMMARY_QUANTILES,
};

/// Where a merged series sits: its label value and, for per-shard metrics, its shard.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    pub label_value: Option<String>,
    pub shard: Option<usize>,
}

/// One merged series.
#[derive(Clone, Debug)]
pub struct MergedSeries {
    pub key: SeriesKey,
    pub value: SeriesValue,
}

/// One metric after merging all shards, series in a stable order (by label value, then shard).
#[derive(Clone, Debug)]
pub struct MergedFamily {
    pub desc: MetricDesc,
    pub series: Vec<MergedSeries>,
}

/// Shared by all shards (`Arc<MetricsCollector>`).
pub struct MetricsCollector {
    schema: Arc<MetricsSchema>,
    /// Latest snapshot per shard; `shard_count` entries, so memory is bounded by the shard count
    /// times one snapshot.
    latest: Mutex<Vec<Option<Arc<ShardSnapshot>>>>,
}

impl MetricsCollector {
    pub fn new(schema: Arc<MetricsSchema>, shard_count: usize) -> MetricsCollector {
        MetricsCollector {
            schema,
            latest: Mutex::new(vec![None; shard_count]),
        }
    }

    pub fn schema(&self) -> &Arc<MetricsSchema> {
        &self.schema
    }

    /// Replaces the shard's previous snapshot (values are cumulative, so the latest is enough).
    pub fn publish(&self, snapshot: ShardSnapshot) -> Result<(), MetricsError> {
        if snapshot.schema_id != self.schema.id
            || snapshot.metrics.len() != self.schema.metrics.len()
        {
            return Err(MetricsError::SchemaMismatch);
        }
        let mut latest = self.lock_latest();
        let shard_count = latest.len();
        let slot = latest
            .get_mut(snapshot.shard)
            .ok_or(MetricsError::ShardOutOfRange {
                shard: snapshot.shard,
                shard_count,
            })?;
        *slot = Some(Arc::new(snapshot));
        Ok(())
    }

    /// Merges the latest snapshot of every shard that has published.
    pub fn merge(&self) -> Vec<MergedFamily> {
        let snapshots: Vec<Arc<ShardSnapshot>> =
            self.lock_latest().iter().flatten().cloned().collect();
        let merge_one = |(index, desc)| self.merge_family(index, desc, &snapshots);
        self.schema
            .metrics
            .iter()
            .enumerate()
            .map(merge_one)
            .collect()
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        render_families(&self.merge())
    }

    fn lock_latest(&self) -> std::sync::MutexGuard<'_, Vec<Option<Arc<ShardSnapshot>>>> {
        // A panic elsewhere while holding the lock cannot leave a half-written Vec of Arcs, so
        // the data is still good: keep serving metrics.
        self.latest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn merge_family(
        &self,
        index: usize,
        desc: &MetricDesc,
        snapshots: &[Arc<ShardSnapshot>],
    ) -> MergedFamily {
        let admitted = self.admitted_label_values(index, desc, snapshots);
        let mut merged: BTreeMap<SeriesKey, SeriesValue> = BTreeMap::new();
        for snapshot in snapshots {
            for series in &snapshot.metrics[index] {
                let label_value = match (&admitted, &series.label_value) {
                    (Some(admitted), Some(value)) if !admitted.contains(value) => {
                        Some(OVERFLOW_LABEL_VALUE.to_string())
                    }
                    _ => series.label_value.clone(),
                };
                let shard = (desc.aggregation == Aggregation::PerShard).then_some(snapshot.shard);
                let key = SeriesKey { label_value, shard };
                match merged.get_mut(&key) {
                    Some(total) => merge_value(total, &series.value),
                    None => {
                        merged.insert(key, series.value.clone());
                    }
                }
            }
        }
        let series = merged
            .into_iter()
            .map(|(key, value)| MergedSeries { key, value })
            .collect();
        MergedFamily {
            desc: desc.clone(),
            series,
        }
    }

    /// For bounded and peer labels: the values that keep a series of their own node-wide. Each
    /// shard keeps its own bound, but the union over shards (or over registry changes) could
    /// exceed it, so the merge applies the bound again: the smallest values by order are kept
    /// (stable between scrapes), the rest fold into `"other"`.
    fn admitted_label_values(
        &self,
        index: usize,
        desc: &MetricDesc,
        snapshots: &[Arc<ShardSnapshot>],
    ) -> Option<BTreeSet<String>> {
        let series_max = self.schema.label_series_max(desc)?;
        let values = snapshots
            .iter()
            .flat_map(|snapshot| snapshot.metrics[index].iter())
            .filter_map(|series| series.label_value.clone())
            .filter(|value| value != OVERFLOW_LABEL_VALUE);
        let distinct: BTreeSet<String> = values.collect();
        Some(distinct.into_iter().take(series_max).collect())
    }
}

/// Adds `source` into `total`. Kinds always match: both come from the same schema index.
fn merge_value(total: &mut SeriesValue, source: &SeriesValue) {
    match (total, source) {
        (SeriesValue::Counter(total), SeriesValue::Counter(value)) => {
            *total = total.saturating_add(*value);
        }
        (SeriesValue::Gauge(total), SeriesValue::Gauge(value)) => {
            *total = total.saturating_add(*value);
        }
        (
            SeriesValue::Histogram {
                histogram: total,
                sum: total_sum,
            },
            SeriesValue::Histogram { histogram, sum },
        ) => {
            total
                .add(histogram)
                .expect("histograms of one schema share bounds, so adding cannot overflow them");
            *total_sum = total_sum.saturating_add(*sum);
        }
        (total, source) => unreachable!("merging {source:?} into {total:?}"),
    }
}

/// Renders merged families as Prometheus text format 0.0.4.
pub fn render_families(families: &[MergedFamily]) -> String {
    let mut out = String::new();
    for family in families {
        render_family(&mut out, family);
    }
    out
}

fn render_family(out: &mut String, family: &MergedFamily) {
    let desc = &family.desc;
    let type_name = match desc.kind {
        MetricKind::Counter => "counter",
        MetricKind::Gauge => "gauge",
        MetricKind::Histogram => "summary",
    };
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {} {}", desc.name, escape_help(&desc.help));
    let _ = writeln!(out, "# TYPE {} {}", desc.name, type_name);
    for series in &family.series {
        let labels = series_labels(desc, &series.key);
        match &series.value {
            SeriesValue::Counter(value) => {
                write_sample(out, &desc.name, &labels, &value.to_string())
            }
            SeriesValue::Gauge(value) => write_sample(out, &desc.name, &labels, &value.to_string()),
            SeriesValue::Histogram { histogram, sum } => {
                write_summary(out, &desc.name, &labels, histogram, *sum)
            }
        }
    }
}

fn series_labels(desc: &MetricDesc, key: &SeriesKey) -> Vec<(String, String)> {
    let mut labels = Vec::with_capacity(2);
    if let (Some(label), Some(value)) = (&desc.label, &key.label_value) {
        labels.push((label.name.clone(), value.clone()));
    }
    if let Some(shard) = key.shard {
        labels.push((SHARD_LABEL.to_string(), shard.to_string()));
    }
    labels
}

fn write_summary(
    out: &mut String,
    name: &str,
    labels: &[(String, String)],
    histogram: &hdrhistogram::Histogram<u64>,
    sum: u64,
) {
    for quantile in SUMMARY_QUANTILES {
        let mut with_quantile = labels.to_vec();
        with_quantile.push(("quantile".to_string(), quantile.to_string()));
        // The exposition format's convention for a quantile of no observations is NaN.
        let value = if histogram.is_empty() {
            "NaN".to_string()
        } else {
            histogram.value_at_quantile(quantile).to_string()
        };
        write_sample(out, name, &with_quantile, &value);
    }
    write_sample(out, &format!("{name}_sum"), labels, &sum.to_string());
    write_sample(
        out,
        &format!("{name}_count"),
        labels,
        &histogram.len().to_string(),
    );
}

fn write_sample(out: &mut String, name: &str, labels: &[(String, String)], value: &str) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, label_value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{label}=\"{}\"", escape_label_value(label_value));
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

/// Label values escape backslash, double quote and line feed (format 0.0.4).
pub fn escape_label_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// HELP text escapes backslash and line feed only (format 0.0.4).
pub fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests;
