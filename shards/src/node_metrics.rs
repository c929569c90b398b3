//! What a node exports on /metrics: the standard transport set (engine::metrics::StandardMetrics)
//! filled by the transport's own `publish_metrics`, plus counters only one transport has, the
//! registry version, and requests served per route.
//!
//! The transports keep plain `Cell` counters on their hot paths; [`StatsSampler::sample`] has
//! them published into the metrics registry (as deltas for counters) once per publish and once
//! per scrape, so the data path never touches the metrics layer.

use std::cell::Cell;
use std::rc::Rc;

use icn_engine::metrics::{
    Aggregation, Counter, CounterId, Gauge, GaugeId, LabelSpec, MetricsError, MetricsSchemaBuilder,
    ShardMetrics, StandardMetrics, TransportMetrics,
};
use icn_engine::transport::quic::QuicTransport;
use icn_engine::transport::tcp::TcpTransport;
use icn_engine::Route;

use crate::node_config::TransportKind;
use crate::node_transport::NodeTransport;

/// Routes with a series of their own in `icn_node_requests_served_total`. Routes come from peers'
/// requests, but only routes with a handler are counted, so this bounds a future service adding
/// many; the same bound as the engine's per-route RPC histograms.
pub const SERVED_ROUTE_SERIES_MAX: usize = 32;

type QuicReading = fn(&QuicTransport) -> u64;
type TcpReading = fn(&TcpTransport) -> u64;

/// Counters only the QUIC transport keeps: (name, help, reading).
const QUIC_COUNTERS: [(&str, &str, QuicReading); 14] = [
    (
        "icn_quic_handshakes_refused_total",
        "QUIC handshakes that completed but whose peer was refused (wrong node, dialer or shard).",
        |t| t.stats().handshakes_refused.get(),
    ),
    (
        "icn_quic_handshakes_misrouted_total",
        "QUIC handshakes refused because they reached a shard that does not own their peer.",
        |t| t.stats().handshakes_misrouted.get(),
    ),
    (
        "icn_quic_handshakes_failed_total",
        "QUIC connection attempts that ended before admission (TLS refusal of a node outside the registry, timeout, refusals).",
        |t| t.stats().handshakes_failed.get(),
    ),
    (
        "icn_quic_initials_dropped_total",
        "QUIC Initial packets dropped because connections_max connections were open.",
        |t| t.stats().initials_dropped_full.get(),
    ),
    (
        "icn_quic_rpcs_sent_total",
        "RPCs this node sent over QUIC.",
        |t| t.stats().rpcs_sent.get(),
    ),
    (
        "icn_quic_rpcs_served_total",
        "RPCs this node served over QUIC.",
        |t| t.stats().rpcs_served.get(),
    ),
    (
        "icn_quic_rpcs_failed_total",
        "RPCs this node sent over QUIC that failed.",
        |t| t.stats().rpcs_failed.get(),
    ),
    (
        "icn_quic_streams_reset_by_peer_total",
        "QUIC streams the peer reset (cancelled RPCs).",
        |t| t.stats().streams_reset_by_peer.get(),
    ),
    (
        "icn_quic_protocol_errors_total",
        "QUIC streams closed because the peer broke the framing rules.",
        |t| t.stats().protocol_errors.get(),
    ),
    (
        "icn_quic_oversized_messages_total",
        "RPC messages over rpc.message_bytes_max refused on QUIC.",
        |t| t.stats().oversized_messages.get(),
    ),
    (
        "icn_quic_flushes_retried_total",
        "Flushes that found packets only after asking quiche again past a stale stream.",
        |t| t.stats().flushes_retried.get(),
    ),
    (
        "icn_udp_sent_bytes_total",
        "UDP payload bytes sent by the QUIC socket.",
        |t| t.udp_stats().bytes_sent.get(),
    ),
    (
        "icn_udp_received_bytes_total",
        "UDP payload bytes received by the QUIC socket.",
        |t| t.udp_stats().bytes_received.get(),
    ),
    (
        "icn_udp_send_would_block_total",
        "UDP sends that found the socket buffer full and backed off.",
        |t| t.udp_stats().send_would_block.get(),
    ),
];

/// Counters only the TCP transport keeps: (name, help, reading).
const TCP_COUNTERS: [(&str, &str, TcpReading); 5] = [
    (
        "icn_tcp_frames_oversized_total",
        "TCP frames refused for announcing a body over rpc.message_bytes_max.",
        |t| t.stats().frames_oversized.get(),
    ),
    (
        "icn_tcp_frames_malformed_total",
        "TCP frames refused as malformed.",
        |t| t.stats().frames_malformed.get(),
    ),
    (
        "icn_tcp_connections_refused_total",
        "Inbound TCP connections refused (dial rule, left the registry, or too many handshakes).",
        |t| t.stats().connections_refused.get(),
    ),
    (
        "icn_tcp_handshakes_failed_total",
        "TCP+TLS handshakes that failed or timed out.",
        |t| t.stats().handshakes_failed.get(),
    ),
    (
        "icn_tcp_requests_refused_in_flight_total",
        "Requests answered TooManyInFlight without running a handler.",
        |t| t.stats().requests_refused_in_flight.get(),
    ),
];

/// Ids of everything a node exports.
#[derive(Clone, Debug)]
pub struct NodeMetricIds {
    pub standard: StandardMetrics,
    pub registry_version: GaugeId,
    pub requests_served: CounterId,
    /// The transport-specific counters, in the order of their table.
    pub transport_counters: Vec<CounterId>,
    /// Which transport the node runs.
    pub kind: TransportKind,
}

impl NodeMetricIds {
    pub fn declare(
        builder: &mut MetricsSchemaBuilder,
        kind: TransportKind,
    ) -> Result<NodeMetricIds, MetricsError> {
        let standard = StandardMetrics::declare(builder)?;
        let registry_version = builder.gauge(
            "icn_registry_version",
            "Registry version each shard holds.",
            None,
            Aggregation::PerShard,
        )?;
        let requests_served = builder.counter(
            "icn_node_requests_served_total",
            "Requests this node's handlers answered, per route (1 echo, 2 sink).",
            Some(LabelSpec::bounded("route", SERVED_ROUTE_SERIES_MAX)),
            Aggregation::Sum,
        )?;
        let table: Vec<(&str, &str)> = match kind {
            TransportKind::Quic => QUIC_COUNTERS.iter().map(|(n, h, _)| (*n, *h)).collect(),
            TransportKind::Tcp => TCP_COUNTERS.iter().map(|(n, h, _)| (*n, *h)).collect(),
        };
        let transport_counters = table
            .into_iter()
            .map(|(name, help)| builder.counter(name, help, None, Aggregation::Sum))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(NodeMetricIds {
            standard,
            registry_version,
            requests_served,
            transport_counters,
            kind,
        })
    }
}

/// A metrics counter that follows a monotonic counter kept elsewhere.
pub(crate) struct Mirror {
    counter: Counter,
    last: Cell<u64>,
}

impl Mirror {
    pub(crate) fn new(counter: Counter) -> Mirror {
        Mirror {
            counter,
            last: Cell::new(0),
        }
    }

    pub(crate) fn follow(&self, now: u64) {
        self.counter.add(now.saturating_sub(self.last.get()));
        self.last.set(now.max(self.last.get()));
    }
}

/// Per-handler counters: requests per route. (Body bytes per peer are counted by the
/// transports themselves, in both directions, in their `publish_metrics`.)
#[derive(Clone)]
pub struct ServiceMetrics {
    shard: ShardMetrics,
    requests_served: CounterId,
}

impl ServiceMetrics {
    pub fn new(ids: &NodeMetricIds, shard: &ShardMetrics) -> ServiceMetrics {
        ServiceMetrics {
            shard: shard.clone(),
            requests_served: ids.requests_served,
        }
    }

    /// Counts one served request.
    pub fn served(&self, route: Route) {
        self.shard
            .counter_with(self.requests_served, &route.0.to_string())
            .inc();
    }
}

/// What a [`StatsSampler`] reads.
enum SampledTransport {
    /// The node's transport (on the home shard: QUIC's home endpoint, or TCP).
    Node(Rc<NodeTransport>),
    /// The QUIC endpoint of another shard of the node.
    QuicShard(QuicTransport),
}

/// Has a transport publish its standard metrics, and copies its own counters.
pub struct StatsSampler {
    transport: SampledTransport,
    metrics: TransportMetrics,
    registry_version: Gauge,
    transport_counters: Vec<Mirror>,
}

impl StatsSampler {
    pub fn new(transport: Rc<NodeTransport>, ids: &NodeMetricIds, shard: &ShardMetrics) -> Self {
        StatsSampler::of(SampledTransport::Node(transport), ids, shard)
    }

    /// For the QUIC endpoint of a shard other than the home shard (its own `shard` metrics).
    pub fn for_quic_shard(
        transport: QuicTransport,
        ids: &NodeMetricIds,
        shard: &ShardMetrics,
    ) -> Self {
        StatsSampler::of(SampledTransport::QuicShard(transport), ids, shard)
    }

    fn of(transport: SampledTransport, ids: &NodeMetricIds, shard: &ShardMetrics) -> Self {
        let metrics = TransportMetrics::new(ids.standard, shard);
        StatsSampler {
            transport_counters: ids
                .transport_counters
                .iter()
                .map(|id| Mirror::new(shard.counter(*id)))
                .collect(),
            registry_version: shard.gauge(ids.registry_version),
            metrics,
            transport,
        }
    }

    pub fn set_registry_version(&self, version: u64) {
        self.registry_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
    }

    /// Reads every counter of the transport now.
    pub fn sample(&self) {
        match &self.transport {
            SampledTransport::Node(node) => match &**node {
                NodeTransport::Quic { transport, .. } => self.sample_quic(transport.local()),
                NodeTransport::Tcp(transport) => self.sample_tcp(transport),
            },
            SampledTransport::QuicShard(transport) => self.sample_quic(transport),
        }
    }

    /// The QUIC transport publishes its own standard metrics (connections, open count, bytes
    /// per peer, datagrams, lost packets, RTT and congestion window per peer, RPC durations and
    /// errors by kind, transport events, queue depths); only the node's `icn_quic_*` and
    /// `icn_udp_*` counters are mirrored here.
    fn sample_quic(&self, transport: &QuicTransport) {
        transport.publish_metrics(&self.metrics);
        for (mirror, (_, _, read)) in self.transport_counters.iter().zip(QUIC_COUNTERS.iter()) {
            mirror.follow(read(transport));
        }
    }

    /// The TCP transport publishes its own standard metrics (connections, open count, bytes per
    /// peer, ping RTTs, RPC errors by kind, decode errors, queue depths); only the node's
    /// `icn_tcp_*` counters are mirrored here.
    fn sample_tcp(&self, transport: &TcpTransport) {
        transport.publish_metrics(&self.metrics);
        for (mirror, (_, _, read)) in self.transport_counters.iter().zip(TCP_COUNTERS.iter()) {
            mirror.follow(read(transport));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use icn_engine::metrics::{MetricsCollector, MetricsConfig};

    #[test]
    fn node_metrics_declare_for_both_transports() {
        for kind in [TransportKind::Quic, TransportKind::Tcp] {
            let mut builder = MetricsSchemaBuilder::new(MetricsConfig::default()).unwrap();
            let ids = NodeMetricIds::declare(&mut builder, kind).unwrap();
            let expected = match kind {
                TransportKind::Quic => QUIC_COUNTERS.len(),
                TransportKind::Tcp => TCP_COUNTERS.len(),
            };
            assert_eq!(ids.transport_counters.len(), expected);
            let schema = builder.build();
            let shard = ShardMetrics::new(schema.clone(), 0);
            let collector = MetricsCollector::new(schema, 1);
            let service = ServiceMetrics::new(&ids, &shard);
            service.served(Route(2));
            shard.publish(&collector).unwrap();
            let text = collector.render();
            assert!(
                text.contains("icn_node_requests_served_total{route=\"2\"} 1"),
                "{text}"
            );
        }
    }

    #[test]
    fn mirror_adds_only_the_increase() {
        let mut builder = MetricsSchemaBuilder::new(MetricsConfig::default()).unwrap();
        let id = builder
            .counter("icn_test_total", "test counter", None, Aggregation::Sum)
            .unwrap();
        let shard = ShardMetrics::new(builder.build(), 0);
        let mirror = Mirror::new(shard.counter(id));
        mirror.follow(5);
        mirror.follow(5);
        mirror.follow(12);
        mirror.follow(3); // a counter never goes back; a smaller reading adds nothing
        assert_eq!(shard.counter(id).get(), 12);
    }
}
