//! What the reference replica exports on /metrics (`icn_replica_*`): progress (executed and
//! certified heights), what the chain and the pools did, and the depth of every queue and pool
//! that remote input fills, next to its bound. [`ReplicaSampler::sample`] copies the driver's
//! plain counters into the metrics registry on every publish and scrape.

use std::rc::Rc;

use icn_engine::metrics::{
    Aggregation, CounterId, GaugeId, LabelSpec, MetricsError, MetricsSchemaBuilder, ShardMetrics,
};

use super::driver::{Replica, ReplicaSnapshot, REPLICA_KINDS};
use crate::node_metrics::Mirror;

type Reading = fn(&ReplicaSnapshot) -> u64;

/// Counters: (name, help, reading).
const COUNTERS: [(&str, &str, Reading); 26] = [
    ("icn_replica_blocks_made_total", "Blocks this node made as a height's maker.", |s| s.chain.blocks_made),
    ("icn_replica_shares_sent_total", "Notarization shares this node sent.", |s| s.chain.shares_sent),
    ("icn_replica_blocks_received_total", "Blocks received from their makers.", |s| s.chain.blocks_received),
    ("icn_replica_shares_received_total", "Notarization shares received from peers.", |s| s.chain.shares_received),
    ("icn_replica_invalid_artifacts_total", "Blocks or shares that did not decode or came from a node that may not send them (each penalizes the peer).", |s| s.chain.invalid),
    ("icn_replica_heights_executed_total", "Heights executed.", |s| s.chain.heights_executed),
    ("icn_replica_calls_executed_total", "Update calls executed (replied or rejected).", |s| s.chain.calls_executed),
    ("icn_replica_calls_rejected_total", "Executed update calls that ended in a reject.", |s| s.chain.calls_rejected),
    ("icn_replica_calls_skipped_total", "Ordered calls not executed: already executed (same request id) or expired at the block's time.", |s| s.chain.calls_skipped),
    ("icn_replica_stalled_rounds_total", "Round timeouts that passed without the next height executing (a silent or slow maker).", |s| s.chain.stalled_rounds),
    ("icn_replica_heights_certified_total", "Heights whose state tree was certified.", |s| s.stats.certified),
    ("icn_replica_certifications_skipped_total", "Executed heights never certified because a newer one was ready first.", |s| s.stats.certifications_skipped),
    ("icn_replica_queries_total", "Queries executed and signed.", |s| s.stats.queries),
    ("icn_replica_calls_accepted_total", "Update calls accepted over HTTP into the ingress pool.", |s| s.stats.calls_accepted),
    ("icn_replica_calls_refused_full_total", "Update calls refused (429) because the ingress pool was full.", |s| s.stats.calls_refused_full),
    ("icn_replica_ingress_received_total", "Ingress messages received from peers.", |s| s.ingress.received),
    ("icn_replica_ingress_verified_total", "Gossiped ingress messages that passed verification.", |s| s.ingress.verified),
    ("icn_replica_ingress_invalid_total", "Gossiped ingress messages that failed decoding, expiry or signature checks.", |s| s.ingress.invalid),
    ("icn_replica_ingress_expired_total", "Ingress messages dropped from the pool unexecuted because they expired.", |s| s.ingress.expired_removed),
    ("icn_replica_ingress_fetch_requests_total", "Ingress fetch requests sent (for calls a notarized block names and this node lacks).", |s| s.fetch.requests),
    ("icn_replica_ingress_fetch_requested_total", "Request ids asked for by ingress fetches, summed over requests.", |s| s.fetch.requested),
    ("icn_replica_ingress_fetch_received_total", "Fetched ingress messages that passed verification and are now held in the pool (or were executed meanwhile).", |s| s.fetch.received),
    ("icn_replica_ingress_fetch_invalid_total", "Fetched ingress messages refused: not asked for, not a call, sent twice, a bad signature (each penalizes the peer) or an expiry outside the window.", |s| s.fetch.invalid),
    ("icn_replica_ingress_fetch_failed_total", "Ingress fetch requests that failed as a whole: timeout, transport error, an undecodable answer (penalized) or no verification capacity.", |s| s.fetch.failed),
    ("icn_replica_ingress_fetch_dropped_total", "Missing request ids not tracked because replica.ingress_fetch_tracked_max were.", |s| s.fetch.dropped_full),
    ("icn_replica_ingress_fetch_served_total", "Ingress fetch requests this node answered.", |s| s.fetch.served),
];

/// Gauges: (name, help, reading).
const GAUGES: [(&str, &str, Reading); 15] = [
    (
        "icn_replica_executed_height",
        "Height of the newest executed block.",
        |s| s.executed_height,
    ),
    (
        "icn_replica_certified_height",
        "Height of the newest certified state (what read_state and synchronous calls answer from).",
        |s| s.certified_height,
    ),
    (
        "icn_replica_ingress_pool_messages",
        "Validated ingress messages held (bound icn_replica_ingress_pool_messages_max).",
        |s| s.ingress_messages as u64,
    ),
    (
        "icn_replica_ingress_pool_messages_max",
        "Bound on the ingress pool's messages (replica.ingress_pool_messages_max).",
        |s| s.ingress_limits.messages_max as u64,
    ),
    (
        "icn_replica_ingress_pool_bytes",
        "Bytes of ingress held (bound icn_replica_ingress_pool_bytes_max).",
        |s| s.ingress_bytes as u64,
    ),
    (
        "icn_replica_ingress_pool_bytes_max",
        "Bound on the ingress pool's bytes (replica.ingress_pool_bytes_max).",
        |s| s.ingress_limits.bytes_max as u64,
    ),
    (
        "icn_replica_ingress_verifying",
        "Gossiped ingress messages being verified (bound replica.ingress_verify_in_flight_max).",
        |s| s.ingress_verifying as u64,
    ),
    (
        "icn_replica_request_statuses",
        "Request statuses in the state (bound icn_replica_request_statuses_max).",
        |s| s.request_statuses as u64,
    ),
    (
        "icn_replica_request_statuses_max",
        "Bound on the request statuses (replica.request_statuses_max).",
        |s| s.request_statuses_max as u64,
    ),
    (
        "icn_replica_block_pool_artifacts",
        "Blocks held (bound: heights kept and ahead × members × 4).",
        |s| s.block_pool as u64,
    ),
    (
        "icn_replica_share_pool_artifacts",
        "Notarization shares held (bound: heights kept and ahead × members × 4).",
        |s| s.share_pool as u64,
    ),
    (
        "icn_replica_ingress_fetch_in_flight",
        "Ingress fetch requests outstanding (bound icn_replica_ingress_fetch_in_flight_max).",
        |s| s.fetch_in_flight as u64,
    ),
    (
        "icn_replica_ingress_fetch_in_flight_max",
        "Bound on ingress fetch requests outstanding (replica.ingress_fetch_in_flight_max).",
        |s| s.fetch_in_flight_max as u64,
    ),
    (
        "icn_replica_ingress_fetch_tracked",
        "Missing request ids being fetched or waiting to be (bound icn_replica_ingress_fetch_tracked_max).",
        |s| s.fetch_tracked as u64,
    ),
    (
        "icn_replica_ingress_fetch_tracked_max",
        "Bound on the missing request ids tracked (replica.ingress_fetch_tracked_max).",
        |s| s.fetch_tracked_max as u64,
    ),
];

#[derive(Clone, Debug)]
pub struct ReplicaMetricIds {
    counters: Vec<CounterId>,
    gauges: Vec<GaugeId>,
    inbound_queue: GaugeId,
    tracked: GaugeId,
}

impl ReplicaMetricIds {
    pub fn declare(builder: &mut MetricsSchemaBuilder) -> Result<ReplicaMetricIds, MetricsError> {
        let counters = COUNTERS
            .iter()
            .map(|(name, help, _)| builder.counter(name, help, None, Aggregation::Sum))
            .collect::<Result<Vec<_>, _>>()?;
        let gauges = GAUGES
            .iter()
            .map(|(name, help, _)| builder.gauge(name, help, None, Aggregation::Sum))
            .collect::<Result<Vec<_>, _>>()?;
        let labels: Vec<&str> = REPLICA_KINDS.iter().map(|(_, label)| *label).collect();
        let kind = || Some(LabelSpec::fixed("kind", &labels));
        Ok(ReplicaMetricIds {
            counters,
            gauges,
            inbound_queue: builder.gauge(
                "icn_replica_gossip_inbound_queue_depth",
                "Received replica artifacts waiting for their pool (bound gossip.inbound_queue_artifacts_max).",
                kind(),
                Aggregation::Sum,
            )?,
            tracked: builder.gauge(
                "icn_replica_gossip_artifacts_tracked",
                "Replica artifact ids advertised by peers and tracked (bound gossip.tracked_artifacts_max).",
                kind(),
                Aggregation::Sum,
            )?,
        })
    }
}

/// Copies the replica's counters into the metrics registry.
pub struct ReplicaSampler {
    replica: Rc<Replica>,
    ids: ReplicaMetricIds,
    shard: ShardMetrics,
    mirrors: Vec<Mirror>,
}

impl ReplicaSampler {
    pub fn new(replica: Rc<Replica>, ids: &ReplicaMetricIds, shard: &ShardMetrics) -> Self {
        let mirrors = ids
            .counters
            .iter()
            .map(|id| Mirror::new(shard.counter(*id)))
            .collect();
        ReplicaSampler {
            replica,
            ids: ids.clone(),
            shard: shard.clone(),
            mirrors,
        }
    }

    pub fn sample(&self) {
        let snapshot = self.replica.snapshot();
        for (mirror, (_, _, read)) in self.mirrors.iter().zip(COUNTERS.iter()) {
            mirror.follow(read(&snapshot));
        }
        let clamp = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        for (id, (_, _, read)) in self.ids.gauges.iter().zip(GAUGES.iter()) {
            self.shard.gauge(*id).set(clamp(read(&snapshot)));
        }
        for (label, gossip) in self.replica.gossip() {
            let stats = gossip.stats();
            self.shard
                .gauge_with(self.ids.inbound_queue, label)
                .set(clamp(stats.inbound_queue_depth as u64));
            self.shard
                .gauge_with(self.ids.tracked, label)
                .set(clamp(stats.artifacts_tracked as u64));
        }
    }
}
