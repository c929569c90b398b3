//! The metrics every node exposes, declared in one place so that names, help and labels are the
//! same for all transports (quic, tcp, memory) and documented once (docs/operations.md).

use super::{
    Aggregation, Counter, CounterId, Gauge, GaugeId, Histogram, HistogramId, LabelSpec,
    MetricsError, MetricsSchemaBuilder, ShardMetrics,
};
use crate::transport::{NodeId, Route, RpcError};

/// Distinct routes with a series of their own in `icn_rpc_duration_us`. Routes are `u16` chosen
/// by our code, but a bug or a new service must not multiply histograms (about 20 KiB each per
/// shard); 32 covers every route icn defines with room to spare.
pub const ROUTE_SERIES_MAX: usize = 32;

/// Distinct queue names in `icn_queue_depth`. Queues are ours; the bound catches a name built
/// from runtime data by mistake. One 8-byte cell per queue per shard.
pub const QUEUE_SERIES_MAX: usize = 64;

/// Distinct decode error kinds in `icn_decode_errors_total`; kinds are the codecs' error enum
/// variants (fewer than this), the bound keeps a stray formatted message from exploding series.
pub const DECODE_ERROR_KIND_SERIES_MAX: usize = 32;

/// `kind` values of `icn_rpc_errors_total`, one per [`RpcError`] variant.
pub const RPC_ERROR_KINDS: [&str; 10] = [
    "not_connected",
    "connection_closed",
    "no_route",
    "message_too_large",
    "too_many_in_flight",
    "peer_misbehaved",
    "handler",
    "timeout",
    "cancelled",
    "local",
];

/// `event` values of `icn_transport_events_total`: things a transport counts that are neither
/// an RPC error nor a decode error. Fixed, so remote input cannot add series.
pub const TRANSPORT_EVENT_KINDS: [&str; 9] = [
    "handshake_failed",
    "connection_refused",
    "request_refused_in_flight",
    "request_out_of_order",
    "response_unknown_id",
    "goaway_sent",
    "goaway_received",
    "pong_dropped",
    "frame_unencodable",
];

/// The `kind` label of an RPC error (exhaustive: a new variant must pick a name here).
pub fn rpc_error_kind(error: &RpcError) -> &'static str {
    match error {
        RpcError::NotConnected(_) => "not_connected",
        RpcError::ConnectionClosed => "connection_closed",
        RpcError::NoRoute(_) => "no_route",
        RpcError::MessageTooLarge { .. } => "message_too_large",
        RpcError::TooManyInFlight { .. } => "too_many_in_flight",
        RpcError::PeerMisbehaved(_) => "peer_misbehaved",
        RpcError::Handler(_) => "handler",
        RpcError::Timeout => "timeout",
        RpcError::Cancelled => "cancelled",
        RpcError::Local(_) => "local",
    }
}

/// Ids of the standard metrics; declare once with [`StandardMetrics::declare`] next to any
/// service-specific metrics, then get handles per shard.
#[derive(Clone, Copy, Debug)]
pub struct StandardMetrics {
    /// `icn_transport_active_connections` (gauge, summed over shards).
    pub active_connections: GaugeId,
    /// `icn_transport_connections_opened_total`.
    pub connections_opened: CounterId,
    /// `icn_transport_connections_closed_total`.
    pub connections_closed: CounterId,
    /// `icn_transport_sent_bytes_total{peer}`.
    pub bytes_sent: CounterId,
    /// `icn_transport_received_bytes_total{peer}`.
    pub bytes_received: CounterId,
    /// `icn_transport_packets_sent_total`.
    pub packets_sent: CounterId,
    /// `icn_transport_packets_received_total`.
    pub packets_received: CounterId,
    /// `icn_transport_packets_lost_total`.
    pub packets_lost: CounterId,
    /// `icn_transport_rtt_us` (summary).
    pub rtt_us: HistogramId,
    /// `icn_transport_congestion_window_bytes{peer}` (gauge).
    pub congestion_window_bytes: GaugeId,
    /// `icn_rpc_duration_us{route}` (summary).
    pub rpc_duration_us: HistogramId,
    /// `icn_rpc_errors_total{kind}`.
    pub rpc_errors: CounterId,
    /// `icn_queue_depth{queue,shard}` (gauge, per shard).
    pub queue_depth: GaugeId,
    /// `icn_decode_errors_total{kind}`.
    pub decode_errors: CounterId,
    /// `icn_transport_garbage_datagrams_total`.
    pub garbage_datagrams: CounterId,
    /// `icn_transport_events_total{event}`.
    pub transport_events: CounterId,
}

impl StandardMetrics {
    pub fn declare(b: &mut MetricsSchemaBuilder) -> Result<StandardMetrics, MetricsError> {
        use Aggregation::{PerShard, Sum};
        let peer = || Some(LabelSpec::peer());
        Ok(StandardMetrics {
            active_connections: b.gauge(
                "icn_transport_active_connections",
                "Connections currently open to peers.",
                None,
                Sum,
            )?,
            connections_opened: b.counter(
                "icn_transport_connections_opened_total",
                "Connections established (both directions, after the handshake).",
                None,
                Sum,
            )?,
            connections_closed: b.counter(
                "icn_transport_connections_closed_total",
                "Connections closed, for any reason.",
                None,
                Sum,
            )?,
            bytes_sent: b.counter(
                "icn_transport_sent_bytes_total",
                "Application payload bytes sent, per registry peer (others under peer=\"other\").",
                peer(),
                Sum,
            )?,
            bytes_received: b.counter(
                "icn_transport_received_bytes_total",
                "Application payload bytes received, per registry peer (others under peer=\"other\").",
                peer(),
                Sum,
            )?,
            packets_sent: b.counter(
                "icn_transport_packets_sent_total",
                "UDP datagrams sent (a GSO batch counts each segment).",
                None,
                Sum,
            )?,
            packets_received: b.counter(
                "icn_transport_packets_received_total",
                "UDP datagrams received (a GRO batch counts each segment).",
                None,
                Sum,
            )?,
            packets_lost: b.counter(
                "icn_transport_packets_lost_total",
                "Packets the congestion controller declared lost.",
                None,
                Sum,
            )?,
            rtt_us: b.histogram(
                "icn_transport_rtt_us",
                "Round-trip time samples, in microseconds.",
                None,
                Sum,
            )?,
            congestion_window_bytes: b.gauge(
                "icn_transport_congestion_window_bytes",
                "Congestion window of the connection to each peer, in bytes (a peer lives on one shard, so the sum over shards is that connection's window).",
                peer(),
                Sum,
            )?,
            rpc_duration_us: b.histogram(
                "icn_rpc_duration_us",
                "RPC duration from send to response, in microseconds, per route.",
                Some(LabelSpec::bounded("route", ROUTE_SERIES_MAX)),
                Sum,
            )?,
            rpc_errors: b.counter(
                "icn_rpc_errors_total",
                "Failed RPCs by error kind.",
                Some(LabelSpec::fixed("kind", &RPC_ERROR_KINDS)),
                Sum,
            )?,
            queue_depth: b.gauge(
                "icn_queue_depth",
                "Items waiting in each bounded queue, per shard (a sum would hide one overloaded core).",
                Some(LabelSpec::bounded("queue", QUEUE_SERIES_MAX)),
                PerShard,
            )?,
            decode_errors: b.counter(
                "icn_decode_errors_total",
                "Messages from peers that failed to decode, by error kind.",
                Some(LabelSpec::bounded("kind", DECODE_ERROR_KIND_SERIES_MAX)),
                Sum,
            )?,
            garbage_datagrams: b.counter(
                "icn_transport_garbage_datagrams_total",
                "Datagrams dropped before reaching a connection (not QUIC, unknown connection, bad header).",
                None,
                Sum,
            )?,
            transport_events: b.counter(
                "icn_transport_events_total",
                "Transport events by kind: handshake failures, refused connections and requests, goaways, ignored frames.",
                Some(LabelSpec::fixed("event", &TRANSPORT_EVENT_KINDS)),
                Sum,
            )?,
        })
    }
}

/// The handles a transport needs on one shard, created once when the transport starts.
/// Per-peer handles are created per connection with [`TransportMetrics::sent_bytes_for`] etc.
#[derive(Clone)]
pub struct TransportMetrics {
    ids: StandardMetrics,
    shard: ShardMetrics,
    pub active_connections: Gauge,
    pub connections_opened: Counter,
    pub connections_closed: Counter,
    pub packets_sent: Counter,
    pub packets_received: Counter,
    pub packets_lost: Counter,
    pub rtt_us: Histogram,
    pub garbage_datagrams: Counter,
}

impl TransportMetrics {
    /// The `kind` values of `icn_rpc_errors_total` (reachable through the re-exported type).
    pub const RPC_ERROR_KINDS: [&'static str; RPC_ERROR_KINDS.len()] = RPC_ERROR_KINDS;
    /// The `event` values of `icn_transport_events_total`.
    pub const TRANSPORT_EVENT_KINDS: [&'static str; TRANSPORT_EVENT_KINDS.len()] =
        TRANSPORT_EVENT_KINDS;

    pub fn new(ids: StandardMetrics, shard: &ShardMetrics) -> TransportMetrics {
        TransportMetrics {
            ids,
            shard: shard.clone(),
            active_connections: shard.gauge(ids.active_connections),
            connections_opened: shard.counter(ids.connections_opened),
            connections_closed: shard.counter(ids.connections_closed),
            packets_sent: shard.counter(ids.packets_sent),
            packets_received: shard.counter(ids.packets_received),
            packets_lost: shard.counter(ids.packets_lost),
            rtt_us: shard.histogram(ids.rtt_us),
            garbage_datagrams: shard.counter(ids.garbage_datagrams),
        }
    }

    pub fn sent_bytes_for(&self, peer: &NodeId) -> Counter {
        self.shard.counter_for_peer(self.ids.bytes_sent, peer)
    }

    pub fn received_bytes_for(&self, peer: &NodeId) -> Counter {
        self.shard.counter_for_peer(self.ids.bytes_received, peer)
    }

    pub fn congestion_window_bytes_for(&self, peer: &NodeId) -> Gauge {
        self.shard
            .gauge_for_peer(self.ids.congestion_window_bytes, peer)
    }

    pub fn rpc_duration_us_for(&self, route: Route) -> Histogram {
        self.shard
            .histogram_with(self.ids.rpc_duration_us, &route.0.to_string())
    }

    /// The `route="other"` series of `icn_rpc_duration_us`, for a transport that keeps
    /// durations of more routes than it tracks one by one.
    pub fn rpc_duration_us_other(&self) -> Histogram {
        self.shard
            .histogram_with(self.ids.rpc_duration_us, super::OVERFLOW_LABEL_VALUE)
    }

    /// Counts one failed RPC. Error paths are not hot, so the lookup per call is fine.
    pub fn count_rpc_error(&self, error: &RpcError) {
        self.shard
            .counter_with(self.ids.rpc_errors, rpc_error_kind(error))
            .inc();
    }

    /// The failed-RPC counter of one `kind` (a [`RPC_ERROR_KINDS`] value), for a transport that
    /// counts errors itself and publishes the differences.
    pub fn rpc_errors(&self, kind: &str) -> Counter {
        self.shard.counter_with(self.ids.rpc_errors, kind)
    }

    /// The counter of one transport event (a [`TRANSPORT_EVENT_KINDS`] value).
    pub fn transport_events(&self, event: &str) -> Counter {
        self.shard.counter_with(self.ids.transport_events, event)
    }

    pub fn queue_depth(&self, queue: &str) -> Gauge {
        self.shard.gauge_with(self.ids.queue_depth, queue)
    }

    pub fn decode_errors(&self, kind: &str) -> Counter {
        self.shard.counter_with(self.ids.decode_errors, kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{MetricsCollector, MetricsConfig};

    #[test]
    fn standard_set_declares_and_renders() {
        let mut b = MetricsSchemaBuilder::new(MetricsConfig::default()).unwrap();
        let ids = StandardMetrics::declare(&mut b).unwrap();
        assert!(
            StandardMetrics::declare(&mut b).is_err(),
            "declaring twice is refused"
        );
        let schema = b.build();
        let shard = ShardMetrics::new(schema.clone(), 0);
        let peer = NodeId([9; 32]);
        shard.set_registry_peers([peer]);
        let transport = TransportMetrics::new(ids, &shard);
        transport.connections_opened.inc();
        transport.active_connections.inc();
        transport.sent_bytes_for(&peer).add(1200);
        transport.rpc_duration_us_for(Route(3)).record(80);
        transport.count_rpc_error(&RpcError::Timeout);
        transport.count_rpc_error(&RpcError::NotConnected(peer));
        transport.queue_depth("xnet_out").set(4);
        transport.decode_errors("bad_frame_header").inc();
        transport.transport_events("goaway_sent").add(2);
        transport.rpc_errors("cancelled").inc();
        let collector = MetricsCollector::new(schema, 1);
        shard.publish(&collector).unwrap();
        let text = collector.render();
        for line in [
            "icn_transport_connections_opened_total 1\n",
            "icn_transport_active_connections 1\n",
            &format!(
                "icn_transport_sent_bytes_total{{peer=\"{}\"}} 1200\n",
                peer.to_hex()
            ),
            "icn_rpc_duration_us_count{route=\"3\"} 1\n",
            "icn_rpc_errors_total{kind=\"timeout\"} 1\n",
            "icn_rpc_errors_total{kind=\"not_connected\"} 1\n",
            "icn_rpc_errors_total{kind=\"local\"} 0\n",
            "icn_queue_depth{queue=\"xnet_out\",shard=\"0\"} 4\n",
            "icn_decode_errors_total{kind=\"bad_frame_header\"} 1\n",
            "icn_transport_events_total{event=\"goaway_sent\"} 2\n",
            "icn_transport_events_total{event=\"handshake_failed\"} 0\n",
            "icn_rpc_errors_total{kind=\"cancelled\"} 1\n",
            "# TYPE icn_transport_rtt_us summary\n",
            "# TYPE icn_transport_garbage_datagrams_total counter\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn every_rpc_error_kind_is_declared() {
        let peer = NodeId([1; 32]);
        let errors = [
            RpcError::NotConnected(peer),
            RpcError::ConnectionClosed,
            RpcError::NoRoute(Route(1)),
            RpcError::MessageTooLarge {
                size_bytes: 2,
                limit_bytes: 1,
            },
            RpcError::TooManyInFlight { limit: 1 },
            RpcError::PeerMisbehaved(String::new()),
            RpcError::Handler(String::new()),
            RpcError::Timeout,
            RpcError::Cancelled,
            RpcError::Local(String::new()),
        ];
        let kinds: Vec<&str> = errors.iter().map(rpc_error_kind).collect();
        assert_eq!(kinds, RPC_ERROR_KINDS);
    }
}
