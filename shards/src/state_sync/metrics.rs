//! What state sync exports on /metrics (`icn_state_sync_*`). The driver keeps plain counters;
//! [`StateSyncSampler::sample`] copies them into the metrics registry on every publish and
//! scrape.

use icn_engine::metrics::{
    Aggregation, CounterId, GaugeId, MetricsError, MetricsSchemaBuilder, ShardMetrics,
};

use super::driver::{StateSync, StateSyncStats};
use crate::node_metrics::Mirror;

type Reading = fn(&StateSyncStats) -> u64;

/// Counters: (name, help, reading).
const COUNTERS: [(&str, &str, Reading); 17] = [
    ("icn_state_sync_syncs_started_total", "Syncs started (including resumed ones).", |s| s.syncs_started),
    ("icn_state_sync_syncs_completed_total", "Syncs whose state was adopted as a checkpoint.", |s| s.syncs_completed),
    ("icn_state_sync_syncs_abandoned_total", "Syncs stopped because the target moved or a disk error ended them.", |s| s.syncs_abandoned),
    ("icn_state_sync_chunks_fetched_total", "Chunks downloaded and verified.", |s| s.chunks_fetched),
    ("icn_state_sync_fetched_bytes_total", "Bytes of verified chunks downloaded.", |s| s.bytes_fetched),
    ("icn_state_sync_chunks_local_total", "Chunks taken from disk instead of the network (resumed, hardlinked or copied from an older checkpoint).", |s| s.chunks_local),
    ("icn_state_sync_corrupted_chunks_total", "Chunks whose length or hash did not match the manifest (each drops its peer from the sync).", |s| s.corrupted_chunks),
    ("icn_state_sync_bad_manifests_total", "Meta-manifests or manifest pieces that failed their check.", |s| s.bad_manifests),
    ("icn_state_sync_peers_dropped_total", "Peers dropped from a sync for serving bad data.", |s| s.peers_dropped),
    ("icn_state_sync_request_failures_total", "Manifest or chunk requests that timed out or failed (retried on another peer after a backoff).", |s| s.request_failures),
    ("icn_state_sync_missing_total", "Requests a peer that advertised a whole state answered with \"not held\" (each drops and penalizes the peer).", |s| s.missing_from_full_peers),
    ("icn_state_sync_chunks_served_total", "Chunks served to peers.", |s| s.chunks_served),
    ("icn_state_sync_served_bytes_total", "Bytes of chunks served to peers.", |s| s.bytes_served),
    ("icn_state_sync_manifests_served_total", "Meta-manifests and manifest pieces served to peers.", |s| s.manifests_served),
    ("icn_state_sync_undecodable_requests_total", "Adverts or requests from peers that did not decode.", |s| s.undecodable_requests),
    ("icn_state_sync_io_errors_total", "Disk errors while building, reading, writing or adopting state.", |s| s.io_errors),
    ("icn_state_sync_checkpoints_created_total", "Checkpoints this node built itself.", |s| s.checkpoints_created),
];

/// Gauges that come from the stats: (name, help, reading).
const GAUGES: [(&str, &str, Reading); 2] = [
    ("icn_state_sync_adverts_tracked", "Peer adverts remembered (bound: peers × state_sync.peer_adverts_max).", |s| s.adverts_tracked),
    ("icn_state_sync_chunks_in_flight", "Chunk requests in flight plus verified chunks being written (bound state_sync.chunks_in_flight_max).", |s| s.chunks_in_flight),
];

#[derive(Clone, Debug)]
pub struct StateSyncMetricIds {
    counters: Vec<CounterId>,
    gauges: Vec<GaugeId>,
    height: GaugeId,
    syncing: GaugeId,
    bytes_held: GaugeId,
    bytes_total: GaugeId,
}

impl StateSyncMetricIds {
    pub fn declare(builder: &mut MetricsSchemaBuilder) -> Result<StateSyncMetricIds, MetricsError> {
        let counters = COUNTERS
            .iter()
            .map(|(name, help, _)| builder.counter(name, help, None, Aggregation::Sum))
            .collect::<Result<Vec<_>, _>>()?;
        let gauges = GAUGES
            .iter()
            .map(|(name, help, _)| builder.gauge(name, help, None, Aggregation::Sum))
            .collect::<Result<Vec<_>, _>>()?;
        let mut gauge = |name, help| builder.gauge(name, help, None, Aggregation::Sum);
        Ok(StateSyncMetricIds {
            counters,
            gauges,
            height: gauge(
                "icn_state_sync_checkpoint_height",
                "Height of the newest checkpoint held (0: none).",
            )?,
            syncing: gauge("icn_state_sync_syncing", "1 while a sync runs.")?,
            bytes_held: gauge(
                "icn_state_sync_bytes_held",
                "Bytes of the running sync's state held so far.",
            )?,
            bytes_total: gauge(
                "icn_state_sync_bytes_total",
                "Bytes of the running sync's state (0 until its meta-manifest arrived).",
            )?,
        })
    }
}

/// Copies the driver's counters into the metrics registry.
pub struct StateSyncSampler {
    sync: StateSync,
    ids: StateSyncMetricIds,
    shard: ShardMetrics,
    mirrors: Vec<Mirror>,
}

impl StateSyncSampler {
    pub fn new(
        sync: StateSync,
        ids: &StateSyncMetricIds,
        shard: &ShardMetrics,
    ) -> StateSyncSampler {
        let mirrors = ids
            .counters
            .iter()
            .map(|id| Mirror::new(shard.counter(*id)))
            .collect();
        StateSyncSampler {
            sync,
            ids: ids.clone(),
            shard: shard.clone(),
            mirrors,
        }
    }

    pub fn sample(&self) {
        let stats = self.sync.stats();
        for (mirror, (_, _, read)) in self.mirrors.iter().zip(COUNTERS.iter()) {
            mirror.follow(read(&stats));
        }
        let set = |id: GaugeId, value: u64| {
            self.shard
                .gauge(id)
                .set(i64::try_from(value).unwrap_or(i64::MAX))
        };
        for (id, (_, _, read)) in self.ids.gauges.iter().zip(GAUGES.iter()) {
            set(*id, read(&stats));
        }
        set(self.ids.height, self.sync.latest_height().unwrap_or(0));
        let progress = self.sync.progress();
        set(self.ids.syncing, u64::from(progress.is_some()));
        let (held, total) = progress.unwrap_or((0, 0));
        set(self.ids.bytes_held, held);
        set(self.ids.bytes_total, total);
    }
}
