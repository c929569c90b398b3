//! Client-side RPC durations per route, shared by the QUIC and TCP transports: recorded on the
//! hot path without touching the metrics layer and merged into `icn_rpc_duration_us` on publish.

use std::time::Duration;

use crate::metrics::{MetricsConfig, TransportMetrics};
use crate::transport::Route;

/// Routes whose RPC durations are kept apart until the next publish; further routes share one
/// histogram, published as `route="other"`. Routes are chosen by this node's services, not by
/// peers; the metric's own `route` label has the same bound. Worst-case memory: this many
/// histograms of about 20 KiB (1 us..60 s, 2 significant digits), plus one for the rest.
pub const RPC_DURATION_ROUTES_MAX: usize = 32;

/// Durations of answered RPCs of one route (or of the overflow), in microseconds, since the
/// last publish.
pub(crate) struct DurationBucket {
    histogram: hdrhistogram::Histogram<u64>,
    /// Exact sum (the histogram keeps only buckets).
    sum_us: u64,
}

impl DurationBucket {
    fn new() -> DurationBucket {
        let histogram = MetricsConfig::default()
            .new_histogram()
            .expect("the default histogram bounds are valid");
        DurationBucket {
            histogram,
            sum_us: 0,
        }
    }

    fn record(&mut self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.histogram.saturating_record(us);
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// Adds the durations to `target` and forgets them.
    fn publish_to(&mut self, target: impl FnOnce() -> crate::metrics::Histogram) {
        if self.histogram.is_empty() {
            return;
        }
        target().merge(&self.histogram, self.sum_us);
        self.histogram.reset();
        self.sum_us = 0;
    }
}

/// Client-side RPC durations per route, kept on the hot path without touching the metrics
/// layer (no label lookup per RPC) and merged into `icn_rpc_duration_us` on publish.
#[derive(Default)]
pub(crate) struct RpcDurations {
    /// At most [`RPC_DURATION_ROUTES_MAX`] entries; looked up linearly (a node has a handful of
    /// routes, and a short vector beats hashing).
    by_route: Vec<(Route, DurationBucket)>,
    other: Option<DurationBucket>,
}

impl RpcDurations {
    pub(crate) fn record(&mut self, route: Route, elapsed: Duration) {
        let position = self.by_route.iter().position(|(known, _)| *known == route);
        let bucket = match position {
            Some(index) => &mut self.by_route[index].1,
            None if self.by_route.len() < RPC_DURATION_ROUTES_MAX => {
                self.by_route.push((route, DurationBucket::new()));
                &mut self.by_route.last_mut().expect("just pushed").1
            }
            None => self.other.get_or_insert_with(DurationBucket::new),
        };
        bucket.record(elapsed);
    }

    pub(crate) fn publish(&mut self, metrics: &TransportMetrics) {
        for (route, bucket) in &mut self.by_route {
            bucket.publish_to(|| metrics.rpc_duration_us_for(*route));
        }
        if let Some(bucket) = &mut self.other {
            bucket.publish_to(|| metrics.rpc_duration_us_other());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_durations_are_bounded_and_published_once() {
        use crate::metrics::{MetricsCollector, MetricsSchemaBuilder, ShardMetrics};
        use crate::metrics::{StandardMetrics, TransportMetrics};
        let mut builder = MetricsSchemaBuilder::new(MetricsConfig::default()).unwrap();
        let ids = StandardMetrics::declare(&mut builder).unwrap();
        let schema = builder.build();
        let shard = ShardMetrics::new(schema.clone(), 0);
        let metrics = TransportMetrics::new(ids, &shard);
        let mut durations = RpcDurations::default();
        for route in 0..RPC_DURATION_ROUTES_MAX as u16 + 3 {
            durations.record(Route(route), Duration::from_micros(100));
        }
        durations.record(Route(0), Duration::from_micros(300));
        assert_eq!(durations.by_route.len(), RPC_DURATION_ROUTES_MAX);
        durations.publish(&metrics);
        durations.publish(&metrics); // nothing new: adds nothing
        let collector = MetricsCollector::new(schema, 1);
        shard.publish(&collector).unwrap();
        let text = collector.render();
        for line in [
            "icn_rpc_duration_us_count{route=\"0\"} 2\n",
            "icn_rpc_duration_us_sum{route=\"0\"} 400\n",
            "icn_rpc_duration_us_count{route=\"31\"} 1\n",
            // The three routes beyond the bound share one series.
            "icn_rpc_duration_us_count{route=\"other\"} 3\n",
            "icn_rpc_duration_us_sum{route=\"other\"} 300\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
