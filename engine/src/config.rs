//! From a validated [`Tuning`] profile to the engine's runtime configs.
//!
//! Every field of every config below is read from one named knob (see `tuning/src/sections.rs`
//! and docs/operations.md); nothing here invents a number. Where a field is a structural choice
//! rather than a tunable (whether shards share a UDP port), the caller states it explicitly.

use std::net::SocketAddr;
use std::time::Duration;

use icn_tuning::{CongestionControl, EngineTuning, MetricsTuning, Tuning, UdpTuning};

use crate::metrics::MetricsConfig;
use crate::shard::ShardConfig;
use crate::transport::quic::{QuicConfig, Steering};
use crate::transport::tcp::TcpConfig;
use crate::udp::UdpConfig;

/// Whether a UDP socket's port is shared by the sockets of several shards (SO_REUSEPORT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortSharing {
    /// One socket owns the port; a second bind (another process by mistake) fails loudly.
    Exclusive,
    /// One socket per shard on the same port; the kernel spreads flows across them.
    SharedByShards,
}

fn millis(value: u64) -> Duration {
    Duration::from_millis(value)
}

impl UdpConfig {
    /// Socket settings from the `udp` section.
    pub fn from_tuning(udp: &UdpTuning, sharing: PortSharing) -> UdpConfig {
        UdpConfig {
            send_buffer_bytes: udp.socket_send_buffer_bytes,
            recv_buffer_bytes: udp.socket_recv_buffer_bytes,
            gso_enabled: udp.gso_enabled,
            gro_enabled: udp.gro_enabled,
            recv_batch_datagrams_max: udp.recv_batch_datagrams_max,
            send_batch_datagrams_max: udp.send_batch_datagrams_max,
            reuse_port: sharing == PortSharing::SharedByShards,
        }
    }
}

/// quiche's congestion controller for the tuning crate's choice.
pub fn congestion_control_algorithm(
    choice: CongestionControl,
) -> quiche::CongestionControlAlgorithm {
    match choice {
        CongestionControl::Cubic => quiche::CongestionControlAlgorithm::CUBIC,
        CongestionControl::Reno => quiche::CongestionControlAlgorithm::Reno,
        CongestionControl::Bbr2 => quiche::CongestionControlAlgorithm::Bbr2Gcongestion,
    }
}

impl QuicConfig {
    /// This config for shard `steering.index` of a node whose QUIC endpoints share one port:
    /// `connections_max` is the node's, split evenly over its shards (rounded up), so the
    /// node-wide bound (and the connection windows it bounds) stays what the knob says.
    pub fn for_shard(self, steering: Steering) -> QuicConfig {
        let shards = steering.count.max(1);
        QuicConfig {
            connections_max: self.connections_max.div_ceil(shards).max(1),
            steering,
            ..self
        }
    }

    /// An endpoint on `listen_addr` from the `quic`, `udp` and `rpc` sections, for a node of one
    /// shard whose socket owns its port. A node of several shards sets `steering` per shard and
    /// starts each endpoint on its socket of one `udp::SteeredPort`.
    pub fn from_tuning(tuning: &Tuning, listen_addr: SocketAddr) -> QuicConfig {
        let quic = &tuning.quic;
        QuicConfig {
            listen_addr,
            udp: UdpConfig::from_tuning(&tuning.udp, PortSharing::Exclusive),
            udp_payload_bytes_max: tuning.udp.udp_payload_bytes_max,
            handshake_timeout: millis(quic.handshake_timeout_ms),
            initial_rtt: millis(quic.initial_rtt_ms),
            idle_timeout: millis(quic.idle_timeout_ms),
            keep_alive_interval: millis(quic.keep_alive_interval_ms),
            stream_window_bytes: quic.stream_window_bytes as u64,
            connection_window_bytes: quic.connection_window_bytes as u64,
            bidi_streams_max: quic.bidi_streams_max,
            connections_max: quic.connections_max,
            message_bytes_max: tuning.rpc.message_bytes_max as u64,
            requests_in_flight_max: tuning.rpc.requests_in_flight_max,
            request_timeout: millis(tuning.rpc.request_timeout_ms),
            reconnect_backoff_initial: millis(quic.reconnect_backoff_initial_ms),
            reconnect_backoff_max: millis(quic.reconnect_backoff_max_ms),
            congestion_control: congestion_control_algorithm(quic.congestion_control),
            steering: Steering::SINGLE,
        }
    }
}

impl TcpConfig {
    /// The TCP+TLS transport from the `tcp` and `rpc` sections.
    pub fn from_tuning(tuning: &Tuning) -> TcpConfig {
        let tcp = &tuning.tcp;
        TcpConfig {
            message_bytes_max: tuning.rpc.message_bytes_max as u64,
            requests_in_flight_max: tuning.rpc.requests_in_flight_max,
            keepalive_interval: millis(tcp.keep_alive_interval_ms),
            idle_timeout: millis(tcp.idle_timeout_ms),
            handshake_timeout: millis(tcp.connect_timeout_ms),
            handshakes_in_flight_max: tcp.handshakes_in_flight_max,
            reconnect_backoff_min: millis(tcp.reconnect_backoff_initial_ms),
            reconnect_backoff_max: millis(tcp.reconnect_backoff_max_ms),
            read_buffer_bytes: tcp.read_buffer_bytes,
            write_chunk_bytes: tcp.write_buffer_bytes,
            request_timeout: millis(tuning.rpc.request_timeout_ms),
            // Wire-format limits belong to the protocol version (icn-codecs), not to tuning.
            envelope_bytes_max: icn_codecs::FrameLimits::ENVELOPE_BYTES_MAX_DEFAULT,
            codec_limits: icn_codecs::CodecLimits::default(),
        }
    }
}

impl ShardConfig {
    /// The shard runtime from the `engine` section (`shard_count = 0`: one per core).
    pub fn from_tuning(engine: &EngineTuning) -> ShardConfig {
        ShardConfig {
            shards: engine.shard_count,
            pin_cores: engine.pin_cores,
            io_memory_bytes: engine.io_memory_bytes,
            channel_capacity: engine.cross_shard_channel_messages_max,
            spin_before_park: spin_before_park(engine),
            preempt_timer: Duration::from_micros(engine.preempt_timer_us),
            wake_tick: wake_tick(engine),
        }
    }
}

/// The period of every executor's wake tick (`shard::spawn_wake_tick`), from
/// `engine.wake_tick_us`.
pub fn wake_tick(engine: &EngineTuning) -> Duration {
    Duration::from_micros(engine.wake_tick_us)
}

/// The executors' busy-poll before parking, from `engine.spin_before_park_us` (0: off).
pub fn spin_before_park(engine: &EngineTuning) -> Option<Duration> {
    (engine.spin_before_park_us > 0).then(|| Duration::from_micros(engine.spin_before_park_us))
}

impl MetricsConfig {
    /// Histogram bounds and series limits from the `metrics` section.
    pub fn from_tuning(metrics: &MetricsTuning) -> MetricsConfig {
        MetricsConfig {
            histogram_lowest_us: metrics.histogram_lowest_us,
            histogram_highest_us: metrics.latency_max_us,
            histogram_significant_digits: metrics.histogram_significant_digits,
            peer_series_max: metrics.peer_series_max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid profile in which every knob the mappings read differs from its default, so a
    /// field mapped from the wrong knob (or from a constant) shows up as a mismatch.
    fn distinctive() -> Tuning {
        let text = r#"
            [engine]
            shard_count = 3
            pin_cores = false
            cross_shard_channel_messages_max = 777
            io_memory_bytes = 262144
            spin_before_park_us = 37
            preempt_timer_us = 2345
            wake_tick_us = 6789
            [udp]
            socket_send_buffer_bytes = 1048577
            socket_recv_buffer_bytes = 1048579
            gso_enabled = false
            gro_enabled = false
            udp_payload_bytes_max = 1350
            send_batch_datagrams_max = 17
            recv_batch_datagrams_max = 19
            [quic]
            handshake_timeout_ms = 1234
            initial_rtt_ms = 47
            idle_timeout_ms = 4321
            keep_alive_interval_ms = 321
            stream_window_bytes = 100000
            connection_window_bytes = 300000
            bidi_streams_max = 555
            connections_max = 66
            reconnect_backoff_initial_ms = 7
            reconnect_backoff_max_ms = 70
            congestion_control = "bbr2"
            [tcp]
            connect_timeout_ms = 2345
            idle_timeout_ms = 5432
            keep_alive_interval_ms = 432
            reconnect_backoff_initial_ms = 9
            reconnect_backoff_max_ms = 90
            write_buffer_bytes = 40000
            read_buffer_bytes = 50000
            handshakes_in_flight_max = 11
            [rpc]
            message_bytes_max = 9000000
            requests_in_flight_max = 44
            request_timeout_ms = 8765
            [metrics]
            histogram_significant_digits = 2
            latency_max_us = 9000000
            histogram_lowest_us = 4
            peer_series_max = 13
        "#;
        let tuning = Tuning::from_toml_str(text).expect("the test profile is valid");
        assert_ne!(tuning, Tuning::default());
        tuning
    }

    #[test]
    fn quic_and_udp_use_their_knobs() {
        let tuning = distinctive();
        let addr: SocketAddr = "127.0.0.1:4100".parse().unwrap();
        let config = QuicConfig::from_tuning(&tuning, addr);
        assert_eq!(config.listen_addr, addr);
        assert_eq!(config.udp_payload_bytes_max, 1350);
        assert_eq!(config.handshake_timeout, Duration::from_millis(1234));
        assert_eq!(config.initial_rtt, Duration::from_millis(47));
        assert_eq!(config.idle_timeout, Duration::from_millis(4321));
        assert_eq!(config.keep_alive_interval, Duration::from_millis(321));
        assert_eq!(config.stream_window_bytes, 100_000);
        assert_eq!(config.connection_window_bytes, 300_000);
        assert_eq!(config.bidi_streams_max, 555);
        assert_eq!(config.connections_max, 66);
        assert_eq!(config.message_bytes_max, 9_000_000);
        assert_eq!(config.requests_in_flight_max, 44);
        assert_eq!(config.request_timeout, Duration::from_millis(8765));
        assert_eq!(config.reconnect_backoff_initial, Duration::from_millis(7));
        assert_eq!(config.reconnect_backoff_max, Duration::from_millis(70));
        assert_eq!(
            config.congestion_control,
            quiche::CongestionControlAlgorithm::Bbr2Gcongestion
        );
        let udp = &config.udp;
        assert_eq!(udp.send_buffer_bytes, 1_048_577);
        assert_eq!(udp.recv_buffer_bytes, 1_048_579);
        assert!(!udp.gso_enabled && !udp.gro_enabled);
        assert_eq!(udp.send_batch_datagrams_max, 17);
        assert_eq!(udp.recv_batch_datagrams_max, 19);
        assert!(!udp.reuse_port, "a QUIC endpoint owns its port");
        let shared = UdpConfig::from_tuning(&tuning.udp, PortSharing::SharedByShards);
        assert!(shared.reuse_port);
        assert_eq!(config.steering, Steering::SINGLE);
        // A node of 4 shards splits its 66 connections: 17 per shard, 68 >= 66 in all.
        let third = Steering { index: 2, count: 4 };
        let shard = config.clone().for_shard(third);
        assert_eq!((shard.connections_max, shard.steering), (17, third));
        assert_eq!(config.for_shard(Steering::SINGLE).connections_max, 66);
    }

    #[test]
    fn every_congestion_controller_maps() {
        use quiche::CongestionControlAlgorithm as Algo;
        let mapped: Vec<Algo> = CongestionControl::ALL
            .iter()
            .map(|choice| congestion_control_algorithm(*choice))
            .collect();
        assert_eq!(mapped, [Algo::CUBIC, Algo::Reno, Algo::Bbr2Gcongestion]);
    }

    #[test]
    fn tcp_uses_tcp_and_rpc_knobs() {
        let config = TcpConfig::from_tuning(&distinctive());
        assert_eq!(config.message_bytes_max, 9_000_000);
        assert_eq!(config.requests_in_flight_max, 44);
        assert_eq!(config.keepalive_interval, Duration::from_millis(432));
        assert_eq!(config.idle_timeout, Duration::from_millis(5432));
        assert_eq!(config.handshake_timeout, Duration::from_millis(2345));
        assert_eq!(config.handshakes_in_flight_max, 11);
        assert_eq!(config.reconnect_backoff_min, Duration::from_millis(9));
        assert_eq!(config.reconnect_backoff_max, Duration::from_millis(90));
        assert_eq!(config.read_buffer_bytes, 50_000);
        assert_eq!(config.write_chunk_bytes, 40_000);
    }

    #[test]
    fn shards_and_metrics_use_their_knobs() {
        let tuning = distinctive();
        let shards = ShardConfig::from_tuning(&tuning.engine);
        assert_eq!(shards.shards, 3);
        assert!(!shards.pin_cores);
        assert_eq!(shards.io_memory_bytes, 256 << 10);
        assert_eq!(shards.spin_before_park, Some(Duration::from_micros(37)));
        assert_eq!(shards.preempt_timer, Duration::from_micros(2345));
        assert_eq!(shards.wake_tick, Duration::from_micros(6789));
        assert_eq!(shards.channel_capacity, 777);
        let metrics = MetricsConfig::from_tuning(&tuning.metrics);
        assert_eq!(
            metrics,
            MetricsConfig {
                histogram_lowest_us: 4,
                histogram_highest_us: 9_000_000,
                histogram_significant_digits: 2,
                peer_series_max: 13,
            }
        );
        assert!(metrics.validate().is_ok());
    }

    #[test]
    fn defaults_map_to_valid_configs() {
        let tuning = Tuning::default();
        assert!(MetricsConfig::from_tuning(&tuning.metrics)
            .validate()
            .is_ok());
        let shards = ShardConfig::from_tuning(&tuning.engine);
        assert!(shards.resolved_shards() >= 1);
        let quic = QuicConfig::from_tuning(&tuning, "127.0.0.1:0".parse().unwrap());
        assert!(quic.keep_alive_interval < quic.idle_timeout);
        let tcp = TcpConfig::from_tuning(&tuning);
        assert!(tcp.keepalive_interval < tcp.idle_timeout);
    }
}
