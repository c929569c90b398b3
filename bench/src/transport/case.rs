//! The transport suite's cases and their sizes.

use std::time::Duration;

/// One message pattern of the transport suite (names from BENCH.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CaseKind {
    /// 1 MiB messages back to back, one way, each answered by an empty response.
    Bulk1MiB,
    /// 1 KiB request, 1 KiB response, one in flight.
    Rpc1KiBx1,
    /// 1 KiB request, 1 KiB response, 64 in flight.
    Rpc1KiBx64,
}

impl CaseKind {
    pub const ALL: [CaseKind; 3] = [
        CaseKind::Bulk1MiB,
        CaseKind::Rpc1KiBx1,
        CaseKind::Rpc1KiBx64,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CaseKind::Bulk1MiB => "bulk-1MiB",
            CaseKind::Rpc1KiBx1 => "rpc-1KiB-x1",
            CaseKind::Rpc1KiBx64 => "rpc-1KiB-x64",
        }
    }

    pub fn parse(name: &str) -> Option<CaseKind> {
        CaseKind::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

/// Size of one bulk message.
pub const BULK_MESSAGE_BYTES: usize = 1 << 20;

/// Bulk messages in flight per connection: enough that the pipe never drains while the receiver
/// acknowledges one message, small enough (4 MiB) to sit well inside every stack's windows.
/// The same for every system, so all of them see the same pattern.
pub const BULK_MESSAGES_IN_FLIGHT: usize = 4;

/// Request and response size of the RPC cases.
pub const RPC_MESSAGE_BYTES: usize = 1 << 10;

/// Bytes moved one way by a bulk measurement: quick and full.
pub const BULK_BYTES_QUICK: u64 = 256 << 20;
pub const BULK_BYTES_FULL: u64 = 2 << 30;

/// Length of an RPC measurement: quick and full.
pub const RPC_DURATION_QUICK: Duration = Duration::from_secs(3);
pub const RPC_DURATION_FULL: Duration = Duration::from_secs(10);

/// Warm-up before each measurement (connection set up, windows and congestion state grown).
pub const BULK_WARMUP_BYTES: u64 = 32 << 20;
pub const RPC_WARMUP: Duration = Duration::from_millis(500);

/// A bulk measurement stops issuing messages after this long even if the byte count is not
/// reached, so a slow or stuck system cannot hold the suite hostage; goodput stays correct
/// because it divides the bytes actually moved by the time actually taken.
pub const BULK_TIME_CAP_QUICK: Duration = Duration::from_secs(15);
pub const BULK_TIME_CAP_FULL: Duration = Duration::from_secs(60);

/// Repetitions of each point.
pub const REPETITIONS_QUICK: usize = 1;
pub const REPETITIONS_FULL: usize = 3;

/// QUIC knobs every QUIC system in the suite uses (icn and quinn alike), in one place so the
/// comparison stays like for like; the report's config prints them.
pub mod quic {
    /// UDP payload of a full QUIC packet: BENCH.md keeps packets at 1350-1472 bytes on loopback,
    /// whose 64 KiB MTU would flatter everyone. 1452 = 1500-byte Ethernet MTU - IPv6 (40) - UDP (8).
    pub const PACKET_BYTES: u16 = 1452;
    /// Per-stream receive window: a whole 1 MiB message and more fits in flight.
    pub const STREAM_WINDOW_BYTES: u32 = 16 << 20;
    /// Per-connection receive (and send) window.
    pub const CONNECTION_WINDOW_BYTES: u32 = 64 << 20;
    /// Concurrent bidirectional streams a peer may open: above the 64 in-flight RPCs.
    pub const BIDI_STREAMS_MAX: u32 = 128;
    /// SO_SNDBUF / SO_RCVBUF of each UDP socket (quinn's perf tool uses the same 2 MiB): bursts
    /// of a 64 MiB window at 1452 bytes a packet overflow the kernel's 208 KiB default.
    pub const UDP_SOCKET_BUFFER_BYTES: usize = 2 << 20;

    const _: () =
        assert!(BIDI_STREAMS_MAX as usize >= 64 && STREAM_WINDOW_BYTES <= CONNECTION_WINDOW_BYTES);
}

/// How long a phase of a case runs: a fixed number of operations or a fixed time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    Ops(u64),
    Time(Duration),
}

/// Everything a system needs to run one case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseSpec {
    pub kind: CaseKind,
    pub request_bytes: usize,
    pub response_bytes: usize,
    /// Operations kept in flight by the client.
    pub in_flight: usize,
    pub warmup: Budget,
    pub measure: Budget,
    /// No operation is started after this much time into a phase.
    pub time_cap: Duration,
}

impl CaseSpec {
    /// The case as the suite runs it, in quick or full mode.
    pub fn standard(kind: CaseKind, quick: bool) -> CaseSpec {
        match kind {
            CaseKind::Bulk1MiB => {
                let bytes = if quick {
                    BULK_BYTES_QUICK
                } else {
                    BULK_BYTES_FULL
                };
                CaseSpec {
                    kind,
                    request_bytes: BULK_MESSAGE_BYTES,
                    response_bytes: 0,
                    in_flight: BULK_MESSAGES_IN_FLIGHT,
                    warmup: Budget::Ops(BULK_WARMUP_BYTES / BULK_MESSAGE_BYTES as u64),
                    measure: Budget::Ops(bytes / BULK_MESSAGE_BYTES as u64),
                    time_cap: if quick {
                        BULK_TIME_CAP_QUICK
                    } else {
                        BULK_TIME_CAP_FULL
                    },
                }
            }
            CaseKind::Rpc1KiBx1 | CaseKind::Rpc1KiBx64 => {
                let duration = if quick {
                    RPC_DURATION_QUICK
                } else {
                    RPC_DURATION_FULL
                };
                CaseSpec {
                    kind,
                    request_bytes: RPC_MESSAGE_BYTES,
                    response_bytes: RPC_MESSAGE_BYTES,
                    in_flight: if kind == CaseKind::Rpc1KiBx1 { 1 } else { 64 },
                    warmup: Budget::Time(RPC_WARMUP),
                    measure: Budget::Time(duration),
                    time_cap: duration,
                }
            }
        }
    }

    /// A tiny version of the case for smoke tests: same pattern, a few operations.
    pub fn tiny(kind: CaseKind, ops: u64) -> CaseSpec {
        CaseSpec {
            warmup: Budget::Ops(ops.div_ceil(4)),
            measure: Budget::Ops(ops),
            time_cap: Duration::from_secs(5),
            ..CaseSpec::standard(kind, true)
        }
    }

    /// Payload bytes one operation moves, both directions together (goodput counts these).
    pub fn bytes_per_op(&self) -> u64 {
        (self.request_bytes + self.response_bytes) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in CaseKind::ALL {
            assert_eq!(CaseKind::parse(kind.name()), Some(kind));
        }
        assert_eq!(CaseKind::parse("bulk"), None);
    }

    #[test]
    fn standard_sizes_follow_the_brief() {
        let bulk = CaseSpec::standard(CaseKind::Bulk1MiB, true);
        assert_eq!(bulk.measure, Budget::Ops(256));
        assert_eq!(bulk.bytes_per_op(), 1 << 20);
        let bulk_full = CaseSpec::standard(CaseKind::Bulk1MiB, false);
        assert_eq!(bulk_full.measure, Budget::Ops(2048));
        let rpc = CaseSpec::standard(CaseKind::Rpc1KiBx64, false);
        assert_eq!((rpc.in_flight, rpc.bytes_per_op()), (64, 2048));
        assert_eq!(rpc.measure, Budget::Time(Duration::from_secs(10)));
    }
}
