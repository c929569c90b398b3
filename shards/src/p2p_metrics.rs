//! What the P2P layer exports on /metrics, per artifact kind (label `kind`: block, notarization,
//! ingress). The consensus managers, pools and artifact managers keep plain counters;
//! [`P2pSampler::sample`] copies them into the metrics registry on every publish and scrape.

use std::rc::Rc;

use icn_engine::metrics::{
    Aggregation, CounterId, GaugeId, HistogramId, LabelSpec, MetricsError, MetricsSchemaBuilder,
    ShardMetrics,
};

use crate::node_metrics::Mirror;
use crate::p2p::{DeliveryStats, KindSnapshot, P2p, KINDS};
use crate::peer_manager::driver::PeerManagerHandle;
use crate::peer_manager::PeerStats;

type Reading = fn(&KindSnapshot, &DeliveryStats) -> u64;

/// Counters: (name, help, reading).
const COUNTERS: [(&str, &str, Reading); 19] = [
    ("icn_gossip_artifacts_received_total", "Artifacts validated from peers.", |_, d| d.received),
    ("icn_gossip_artifact_bytes_received_total", "Payload bytes of artifacts validated from peers.", |_, d| d.received_bytes),
    ("icn_gossip_artifacts_produced_total", "Artifacts this node made and offered (reference workload; notarization shares included).", |s, _| s.pool.produced),
    ("icn_gossip_slot_updates_sent_total", "Slot updates sent to peers (pushes, adverts, clears).", |s, _| s.gossip.sender.updates_sent),
    ("icn_gossip_slot_updates_failed_total", "Slot updates whose RPC failed (retried with backoff).", |s, _| s.gossip.sender.updates_failed),
    ("icn_gossip_slot_updates_received_total", "Slot updates received from peers.", |s, _| s.gossip.receiver.updates_received),
    ("icn_gossip_slot_updates_stale_total", "Received slot updates ignored as older than what the node holds.", |s, _| s.gossip.receiver.updates_stale),
    ("icn_gossip_slot_updates_refused_busy_total", "Received slot updates refused because the tracked-artifact bound or the inbound queue was full.", |s, _| s.gossip.receiver.updates_refused_busy),
    ("icn_gossip_fetches_started_total", "Fetch requests started (one artifact, one chunk, or a batch of small artifacts).", |s, _| s.gossip.receiver.fetches_started),
    ("icn_gossip_fetch_batches_total", "Batch fetch requests started (a subset of icn_gossip_fetches_started_total).", |s, _| s.gossip.receiver.batches_started),
    ("icn_gossip_fetch_batch_artifacts_total", "Artifacts asked for in batch fetch requests.", |s, _| s.gossip.receiver.batch_artifacts_requested),
    ("icn_gossip_fetch_batch_not_held_total", "Artifacts a batch answer said the peer does not hold (retried).", |s, _| s.gossip.receiver.batch_artifacts_not_held),
    ("icn_gossip_fetches_failed_total", "Fetches that failed or timed out (retried with backoff).", |s, _| s.gossip.receiver.fetches_failed),
    ("icn_gossip_fetched_bytes_total", "Bytes received in fetch responses.", |s, _| s.gossip.receiver.bytes_fetched),
    ("icn_gossip_invalid_artifacts_total", "Artifacts (or chunks) whose content did not match their advert.", |s, _| s.gossip.receiver.invalid_artifacts),
    ("icn_gossip_undecodable_messages_total", "Slot updates or fetch requests that did not decode.", |s, _| s.gossip.undecodable_messages),
    ("icn_gossip_penalties_total", "Offences reported to the peer manager.", |s, _| s.gossip.penalties),
    ("icn_gossip_aborted_total", "Artifacts this node withdrew from its peers (pool purge).", |s, _| s.gossip.sender.artifacts_aborted),
    ("icn_gossip_slot_table_refusals_total", "Artifacts the full slot table refused.", |s, _| s.gossip.sender.refused_full),
];

/// Gauges: (name, help, reading).
const GAUGES: [(&str, &str, Reading); 8] = [
    (
        "icn_gossip_slots_occupied",
        "Slots of this node's slot table in use (bound gossip.slots_max).",
        |s, _| s.gossip.slots_occupied as u64,
    ),
    (
        "icn_gossip_updates_queued",
        "Slot updates waiting to be sent, over all peers.",
        |s, _| s.gossip.updates_queued as u64,
    ),
    (
        "icn_gossip_updates_in_flight",
        "Slot-update RPCs in flight.",
        |s, _| s.gossip.updates_in_flight as u64,
    ),
    (
        "icn_gossip_artifacts_tracked",
        "Artifact ids advertised by peers and tracked (bound gossip.tracked_artifacts_max).",
        |s, _| s.gossip.artifacts_tracked as u64,
    ),
    (
        "icn_gossip_downloads_pending",
        "Downloads not finished.",
        |s, _| s.gossip.downloads_pending as u64,
    ),
    (
        "icn_gossip_fetches_in_flight",
        "Fetch RPCs in flight (bound gossip.downloads_in_flight_max).",
        |s, _| s.gossip.fetches_in_flight as u64,
    ),
    (
        "icn_gossip_inbound_queue_depth",
        "Received artifacts waiting for the pool (bound gossip.inbound_queue_artifacts_max).",
        |s, _| s.gossip.inbound_queue_depth as u64,
    ),
    (
        "icn_gossip_pool_validated_artifacts",
        "Validated artifacts in the pool.",
        |s, _| s.pool_validated as u64,
    ),
];

/// The peer manager's figures, by their position in `PeerStats::metrics()`.
#[derive(Clone, Debug)]
enum PeerMetricId {
    Counter(CounterId),
    Gauge(GaugeId),
}

#[derive(Clone, Debug)]
pub struct P2pMetricIds {
    peer_metrics: Vec<PeerMetricId>,
    counters: Vec<CounterId>,
    gauges: Vec<GaugeId>,
    latency: HistogramId,
    window_p50: GaugeId,
    window_p99: GaugeId,
}

impl P2pMetricIds {
    pub fn declare(builder: &mut MetricsSchemaBuilder) -> Result<P2pMetricIds, MetricsError> {
        let labels: Vec<&str> = KINDS.iter().map(|(_, label)| *label).collect();
        let kind = || Some(LabelSpec::fixed("kind", &labels));
        let counters = COUNTERS
            .iter()
            .map(|(name, help, _)| builder.counter(name, help, kind(), Aggregation::Sum))
            .collect::<Result<Vec<_>, _>>()?;
        let gauges = GAUGES
            .iter()
            .map(|(name, help, _)| builder.gauge(name, help, kind(), Aggregation::Sum))
            .collect::<Result<Vec<_>, _>>()?;
        let latency = builder.histogram(
            "icn_gossip_delivery_latency_us",
            "Microseconds from the producer's timestamp to validation here (same host or synchronized clocks).",
            kind(),
            Aggregation::Sum,
        )?;
        let window_p50 = builder.gauge(
            "icn_gossip_delivery_latency_window_p50_us",
            "Median delivery latency since the previous sample (publish or scrape; 0 without deliveries).",
            kind(),
            Aggregation::PerShard,
        )?;
        let window_p99 = builder.gauge(
            "icn_gossip_delivery_latency_window_p99_us",
            "99th percentile delivery latency since the previous sample (publish or scrape; 0 without deliveries).",
            kind(),
            Aggregation::PerShard,
        )?;
        let peer_metrics = PeerStats::default()
            .metrics()
            .iter()
            .map(|(name, help, _)| {
                if name.ends_with("_total") {
                    builder
                        .counter(name, help, None, Aggregation::Sum)
                        .map(PeerMetricId::Counter)
                } else {
                    builder
                        .gauge(name, help, None, Aggregation::Sum)
                        .map(PeerMetricId::Gauge)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(P2pMetricIds {
            peer_metrics,
            counters,
            gauges,
            latency,
            window_p50,
            window_p99,
        })
    }
}

/// Copies the P2P layer's counters into the metrics registry.
pub struct P2pSampler {
    p2p: Rc<P2p>,
    peers: PeerManagerHandle,
    /// Per peer-manager counter (None for gauges).
    peer_mirrors: Vec<Option<Mirror>>,
    ids: P2pMetricIds,
    shard: ShardMetrics,
    /// Per kind, per counter.
    mirrors: Vec<Vec<Mirror>>,
}

impl P2pSampler {
    pub fn new(
        p2p: Rc<P2p>,
        peers: PeerManagerHandle,
        ids: &P2pMetricIds,
        shard: &ShardMetrics,
    ) -> P2pSampler {
        let peer_mirrors = ids
            .peer_metrics
            .iter()
            .map(|id| match id {
                PeerMetricId::Counter(id) => Some(Mirror::new(shard.counter(*id))),
                PeerMetricId::Gauge(_) => None,
            })
            .collect();
        let mirrors = KINDS
            .iter()
            .map(|(_, label)| {
                ids.counters
                    .iter()
                    .map(|id| Mirror::new(shard.counter_with(*id, label)))
                    .collect()
            })
            .collect();
        P2pSampler {
            p2p,
            peers,
            peer_mirrors,
            ids: ids.clone(),
            shard: shard.clone(),
            mirrors,
        }
    }

    /// Reads everything now; the latency window restarts.
    pub fn sample(&self) {
        self.sample_peers();
        let snapshots = self.p2p.snapshot();
        for (index, (snapshot, parts)) in snapshots.iter().zip(self.p2p.kinds()).enumerate() {
            let mut deliveries = parts.deliveries.borrow_mut();
            for (mirror, (_, _, read)) in self.mirrors[index].iter().zip(COUNTERS.iter()) {
                mirror.follow(read(snapshot, &deliveries));
            }
            for (id, (_, _, read)) in self.ids.gauges.iter().zip(GAUGES.iter()) {
                let value = read(snapshot, &deliveries);
                self.shard
                    .gauge_with(*id, snapshot.label)
                    .set(i64::try_from(value).unwrap_or(i64::MAX));
            }
            self.shard
                .histogram_with(self.ids.latency, snapshot.label)
                .merge(&deliveries.window_us, deliveries.window_sum_us);
            let (p50, p99) = deliveries.take_window().unwrap_or((0, 0));
            let gauge = |id, value: u64| {
                self.shard
                    .gauge_with(id, snapshot.label)
                    .set(i64::try_from(value).unwrap_or(i64::MAX))
            };
            gauge(self.ids.window_p50, p50);
            gauge(self.ids.window_p99, p99);
        }
    }

    fn sample_peers(&self) {
        let stats = self.peers.stats();
        let readings = stats.metrics();
        for ((id, mirror), (_, _, value)) in self
            .ids
            .peer_metrics
            .iter()
            .zip(&self.peer_mirrors)
            .zip(readings.iter())
        {
            match (id, mirror) {
                (_, Some(mirror)) => mirror.follow(*value),
                (PeerMetricId::Gauge(id), None) => self
                    .shard
                    .gauge(*id)
                    .set(i64::try_from(*value).unwrap_or(i64::MAX)),
                (PeerMetricId::Counter(_), None) => unreachable!("counters have mirrors"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use icn_engine::{Buf, NodeId};
    use icn_tuning::Tuning;

    use super::*;
    use crate::p2p::{payload_with_header, BLOCK};
    use crate::pool::make_artifact;
    use crate::runtime::GlommioRuntime;

    fn counter(name: &str) -> Reading {
        COUNTERS
            .iter()
            .find(|(counter, _, _)| *counter == name)
            .map(|(_, _, read)| *read)
            .expect("a declared counter")
    }

    /// Shares are made by the block pool's observer, not by the workload loop: the produced
    /// counter must see them too, or a delivery check (received = others' produced) can never
    /// balance for notarizations.
    #[test]
    fn produced_counts_shares_made_for_validated_blocks() {
        let p2p = P2p::new(
            &Tuning::default(),
            GlommioRuntime::new(),
            Rc::new(|_, _| {}),
            16,
        );
        p2p.install_share_maker(NodeId([7; 32]));
        let block = make_artifact(3, Buf::from_vec(payload_with_header(3, 100)));
        p2p.produce(BLOCK, block.clone());
        p2p.produce(BLOCK, block);
        let produced = counter("icn_gossip_artifacts_produced_total");
        let counts: Vec<u64> = p2p
            .snapshot()
            .iter()
            .zip(p2p.kinds())
            .map(|(snapshot, parts)| produced(snapshot, &parts.deliveries.borrow()))
            .collect();
        // One block (its duplicate is not made twice), one share for it, no ingress.
        assert_eq!(counts, [1, 1, 0]);
    }
}
