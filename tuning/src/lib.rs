//! Every knob and limit of icn, in one place.
//!
//! Each knob is declared once (in `sections.rs`) with its unit in its name, a named default
//! constant, an allowed range and a doc line; the `section!` macro derives the section struct, its
//! `Default`, its range checks and the metadata behind the operator reference
//! (`docs/operations.md`) and `icn config check`. Rules that tie knobs together live in
//! [`CROSS_RULES`] and [`CAP_RULES`], as data, so they are checked and documented from one list.
//!
//! Knobs are passed explicitly from a loaded [`Tuning`]; nothing reads them from a global.

#[macro_use]
mod knob;
mod error;
mod reference;
mod sections;
mod toml_check;

use std::path::Path;

pub use error::{LoadError, Relation, TuningError};
pub use knob::{unit_of_name, Allowed, KnobMeta, KnobType, KnobValue, SectionMeta, UNIT_SUFFIXES};
pub use reference::{check_file, default_profile_toml, human_bytes, reference_markdown};
pub use sections::*;

/// The whole configuration of a node: one field per TOML table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tuning {
    pub engine: EngineTuning,
    pub udp: UdpTuning,
    pub quic: QuicTuning,
    pub tcp: TcpTuning,
    pub rpc: RpcTuning,
    pub registry: RegistryTuning,
    pub metrics: MetricsTuning,
    pub peers: PeersTuning,
    pub gossip: GossipTuning,
    pub state_sync: StateSyncTuning,
    pub http: HttpTuning,
    pub canisters: CanistersTuning,
    pub replica: ReplicaTuning,
}

/// Every section, in the order of [`Tuning`]'s fields.
pub const SECTIONS: &[SectionMeta] = &[
    EngineTuning::SECTION,
    UdpTuning::SECTION,
    QuicTuning::SECTION,
    TcpTuning::SECTION,
    RpcTuning::SECTION,
    RegistryTuning::SECTION,
    MetricsTuning::SECTION,
    PeersTuning::SECTION,
    GossipTuning::SECTION,
    StateSyncTuning::SECTION,
    HttpTuning::SECTION,
    CanistersTuning::SECTION,
    ReplicaTuning::SECTION,
];

/// A rule between two integer knobs: `knob` must stand in `relation` to `other`.
#[derive(Debug, Clone, Copy)]
pub struct CrossRule {
    pub knob: &'static str,
    pub relation: Relation,
    pub other: &'static str,
    pub why: &'static str,
}

/// Every rule between two knobs.
pub const CROSS_RULES: &[CrossRule] = &[
    CrossRule {
        knob: "quic.keep_alive_interval_ms",
        relation: Relation::LessThan,
        other: "quic.idle_timeout_ms",
        why: "a keep-alive must arrive before the idle timer closes a healthy connection",
    },
    CrossRule {
        knob: "quic.connection_window_bytes",
        relation: Relation::AtLeast,
        other: "quic.stream_window_bytes",
        why: "otherwise no stream could ever use its whole window",
    },
    CrossRule {
        knob: "quic.reconnect_backoff_max_ms",
        relation: Relation::AtLeast,
        other: "quic.reconnect_backoff_initial_ms",
        why: "the backoff would start above its own cap",
    },
    CrossRule {
        knob: "peers.ban_max_ms",
        relation: Relation::AtLeast,
        other: "peers.ban_initial_ms",
        why: "the ban would start above its own cap",
    },
    CrossRule {
        knob: "gossip.download_timeout_max_ms",
        relation: Relation::AtLeast,
        other: "gossip.download_timeout_initial_ms",
        why: "the deadline would start above its own cap",
    },
    CrossRule {
        knob: "gossip.retry_backoff_max_ms",
        relation: Relation::AtLeast,
        other: "gossip.retry_backoff_initial_ms",
        why: "the backoff would start above its own cap",
    },
    CrossRule {
        knob: "gossip.chunking_threshold_bytes",
        relation: Relation::AtLeast,
        other: "gossip.download_chunk_bytes",
        why: "an artifact below one chunk cannot be split into chunks",
    },
    CrossRule {
        knob: "gossip.download_chunk_bytes",
        relation: Relation::AtLeast,
        other: "gossip.fetch_batch_bytes_max",
        why: "a fetch in flight must hold at most one chunk of answer (gossip.downloads_in_flight_max bounds memory in chunks)",
    },
    CrossRule {
        knob: "state_sync.retry_backoff_max_ms",
        relation: Relation::AtLeast,
        other: "state_sync.retry_backoff_initial_ms",
        why: "the backoff would start above its own cap",
    },
    CrossRule {
        knob: "rpc.message_bytes_max",
        relation: Relation::AtLeast,
        other: "state_sync.chunk_bytes",
        why: "a chunk travels in one RPC response",
    },
    CrossRule {
        knob: "rpc.message_bytes_max",
        relation: Relation::AtLeast,
        other: "state_sync.manifest_piece_bytes_max",
        why: "a manifest piece travels in one RPC response",
    },
    CrossRule {
        knob: "tcp.keep_alive_interval_ms",
        relation: Relation::LessThan,
        other: "tcp.idle_timeout_ms",
        why: "a keep-alive must arrive before the idle timer closes a healthy connection",
    },
    CrossRule {
        knob: "tcp.reconnect_backoff_max_ms",
        relation: Relation::AtLeast,
        other: "tcp.reconnect_backoff_initial_ms",
        why: "the backoff would start above its own cap",
    },
    CrossRule {
        knob: "rpc.requests_in_flight_max",
        relation: Relation::AtMost,
        other: "quic.bidi_streams_max",
        why: "each request in flight holds one bidirectional stream",
    },
    CrossRule {
        knob: "http.backend_timeout_ms",
        relation: Relation::LessThan,
        other: "http.idle_timeout_ms",
        why: "an idle connection must not be closed while its answer is still awaited",
    },
    CrossRule {
        knob: "engine.buffer_bytes",
        relation: Relation::AtLeast,
        other: "udp.udp_payload_bytes_max",
        why: "a whole datagram must fit in one pooled buffer",
    },
    CrossRule {
        knob: "canisters.candid_decoding_cost_max",
        relation: Relation::AtLeast,
        other: "canisters.kv_value_bytes_max",
        why: "a put of the largest allowed value would fail to decode",
    },
    CrossRule {
        knob: "canisters.kv_store_bytes_max",
        relation: Relation::AtLeast,
        other: "canisters.kv_value_bytes_max",
        why: "the largest allowed value could never be stored",
    },
    CrossRule {
        knob: "replica.sync_call_wait_ms",
        relation: Relation::LessThan,
        other: "http.backend_timeout_ms",
        why: "a synchronous call must be answered 202 before the front gives up on it with 504",
    },
    CrossRule {
        knob: "replica.checkpoint_interval_count",
        relation: Relation::LessThan,
        other: "replica.heights_kept_count",
        why: "a node that synced a checkpoint must find the blocks after it in its peers' pools",
    },
    CrossRule {
        knob: "replica.heights_ahead_max",
        relation: Relation::AtMost,
        other: "replica.heights_kept_count",
        why: "a lagging peer's next block must still be in the pools when it asks",
    },
    CrossRule {
        knob: "replica.ingress_fetch_response_bytes_max",
        relation: Relation::AtLeast,
        other: "http.body_bytes_max",
        why: "a call the front accepted must fit in one ingress fetch answer",
    },
    CrossRule {
        knob: "rpc.message_bytes_max",
        relation: Relation::AtLeast,
        other: "replica.ingress_fetch_response_bytes_max",
        why: "an ingress fetch answer travels in one RPC response",
    },
    CrossRule {
        knob: "replica.ingress_fetch_backoff_max_ms",
        relation: Relation::AtLeast,
        other: "replica.ingress_fetch_backoff_initial_ms",
        why: "the backoff would start above its own cap",
    },
];

/// Cap on one buffer pool, allocated up front: a typo in buffers_max must not take the host's RAM.
pub const BUFFER_POOL_BYTES_CAP: u64 = 1 << 30;
/// The kernel refuses a GSO send larger than one UDP datagram can describe (65535 minus headers).
pub const UDP_GSO_SEND_BYTES_CAP: u64 = 65_507;
/// Cap on one latency histogram: there is one per metric, so each must stay small.
pub const HISTOGRAM_BYTES_CAP: u64 = 4 << 20;
/// Cap on a state sync's chunk buffers in flight: the sync's memory must not grow with a typo.
pub const STATE_SYNC_BUFFERS_BYTES_CAP: u64 = 4 << 30;
/// Cap on the HTTP API's request bodies buffered at once per shard.
pub const HTTP_BODY_BUFFERS_BYTES_CAP: u64 = 4 << 30;
/// The memlock limit the defaults are sized for (a common distribution default).
pub const MEMLOCK_BYTES_TYPICAL: u64 = 8 << 20;

/// A worst-case memory figure derived from several knobs, with its cap.
#[derive(Debug, Clone, Copy)]
pub struct CapRule {
    pub what: &'static str,
    pub knobs: &'static str,
    pub cap_bytes: u64,
    pub why: &'static str,
    pub bytes: fn(&Tuning) -> u64,
}

/// Every cap on a derived memory figure.
pub const CAP_RULES: &[CapRule] = &[
    CapRule {
        what: "HTTP body buffers",
        knobs: "(http.call_concurrency_max + http.query_concurrency_max + http.read_state_concurrency_max) × http.body_bytes_max",
        cap_bytes: HTTP_BODY_BUFFERS_BYTES_CAP,
        why: "every admitted request may buffer a maximal body before it is decoded",
        bytes: |tuning| tuning.http.body_buffers_bytes(),
    },
    CapRule {
        what: "buffer pool",
        knobs: "engine.buffers_max × engine.buffer_bytes",
        cap_bytes: BUFFER_POOL_BYTES_CAP,
        why: "each pool is allocated in full at start",
        bytes: |tuning| tuning.engine.buffer_pool_bytes(),
    },
    CapRule {
        what: "GSO send",
        knobs: "udp.send_batch_datagrams_max × udp.udp_payload_bytes_max (when udp.gso_enabled)",
        cap_bytes: UDP_GSO_SEND_BYTES_CAP,
        why: "one send batch is one GSO send, which the kernel limits to one UDP datagram's length",
        bytes: |tuning| {
            if tuning.udp.gso_enabled {
                tuning.udp.send_batch_bytes()
            } else {
                0
            }
        },
    },
    CapRule {
        what: "latency histogram",
        knobs: "metrics.histogram_significant_digits, metrics.latency_max_us",
        cap_bytes: HISTOGRAM_BYTES_CAP,
        why: "every latency metric holds one histogram per shard",
        bytes: |tuning| tuning.metrics.histogram_bytes(),
    },
    CapRule {
        what: "state sync chunk buffers",
        knobs: "state_sync.chunks_in_flight_max × state_sync.chunk_bytes",
        cap_bytes: STATE_SYNC_BUFFERS_BYTES_CAP,
        why: "every chunk in flight holds its whole buffer until it is verified and written",
        bytes: |tuning| {
            (tuning.state_sync.chunks_in_flight_max as u64)
                .saturating_mul(tuning.state_sync.chunk_bytes as u64)
        },
    },
];

// Related defaults, tied at compile time (the same rules as above, so a default can never ship
// that fails its own validation, plus the sizing assumptions the docs state).
const _: () = {
    assert!(
        (STATE_SYNC_CHUNKS_IN_FLIGHT_MAX_DEFAULT as u64) * (STATE_SYNC_CHUNK_BYTES_DEFAULT as u64)
            <= STATE_SYNC_BUFFERS_BYTES_CAP
    );
    assert!(RPC_MESSAGE_BYTES_MAX_DEFAULT >= STATE_SYNC_MANIFEST_PIECE_BYTES_MAX_DEFAULT);
    assert!(QUIC_KEEP_ALIVE_INTERVAL_MS_DEFAULT < QUIC_IDLE_TIMEOUT_MS_DEFAULT);
    assert!(TCP_KEEP_ALIVE_INTERVAL_MS_DEFAULT < TCP_IDLE_TIMEOUT_MS_DEFAULT);
    assert!(QUIC_CONNECTION_WINDOW_BYTES_DEFAULT >= QUIC_STREAM_WINDOW_BYTES_DEFAULT);
    assert!(QUIC_RECONNECT_BACKOFF_MAX_MS_DEFAULT >= QUIC_RECONNECT_BACKOFF_INITIAL_MS_DEFAULT);
    assert!(TCP_RECONNECT_BACKOFF_MAX_MS_DEFAULT >= TCP_RECONNECT_BACKOFF_INITIAL_MS_DEFAULT);
    assert!(RPC_REQUESTS_IN_FLIGHT_MAX_DEFAULT as u64 <= QUIC_BIDI_STREAMS_MAX_DEFAULT);
    assert!(ENGINE_BUFFER_BYTES_DEFAULT >= UDP_PAYLOAD_BYTES_MAX_DEFAULT);
    assert!(HTTP_IDLE_TIMEOUT_MS_DEFAULT > HTTP_BACKEND_TIMEOUT_MS_DEFAULT);
    assert!(
        ((HTTP_CALL_CONCURRENCY_MAX_DEFAULT
            + HTTP_QUERY_CONCURRENCY_MAX_DEFAULT
            + HTTP_READ_STATE_CONCURRENCY_MAX_DEFAULT) as u64)
            * (HTTP_BODY_BYTES_MAX_DEFAULT as u64)
            <= HTTP_BODY_BUFFERS_BYTES_CAP
    );
    assert!(
        (ENGINE_BUFFERS_MAX_DEFAULT as u64) * (ENGINE_BUFFER_BYTES_DEFAULT as u64)
            <= BUFFER_POOL_BYTES_CAP
    );
    assert!(
        (UDP_SEND_BATCH_DATAGRAMS_MAX_DEFAULT as u64) * (UDP_PAYLOAD_BYTES_MAX_DEFAULT as u64)
            <= UDP_GSO_SEND_BYTES_CAP
    );
    // A 100 MB message (a large artifact or state chunk) must fit.
    assert!(RPC_MESSAGE_BYTES_MAX_DEFAULT >= 100_000_000);
    // Eight executors take at most half of a typical memlock limit.
    assert!(8 * (ENGINE_IO_MEMORY_BYTES_DEFAULT as u64) <= MEMLOCK_BYTES_TYPICAL / 2);
    // A request that times out still lands inside the latency histogram.
    assert!(RPC_REQUEST_TIMEOUT_MS_DEFAULT * 1000 <= METRICS_LATENCY_MAX_US_DEFAULT);
    // Responses to a full window of requests never find the response queue full.
    assert!(RPC_RESPONSE_QUEUE_MAX_DEFAULT >= RPC_REQUESTS_IN_FLIGHT_MAX_DEFAULT);
    // hdrhistogram needs highest >= 2 × lowest; the knobs' ranges (lowest at most 100 µs,
    // latency_max_us at least 1 ms) make that hold for every valid profile, so it is no rule.
    assert!(2 * METRICS_HISTOGRAM_LOWEST_US_DEFAULT <= METRICS_LATENCY_MAX_US_DEFAULT);
    assert!(CANISTERS_CANDID_DECODING_COST_MAX_DEFAULT >= CANISTERS_KV_VALUE_BYTES_MAX_DEFAULT);
    assert!(CANISTERS_KV_STORE_BYTES_MAX_DEFAULT >= CANISTERS_KV_VALUE_BYTES_MAX_DEFAULT);
    // The largest put (key, value and a type table) decodes within the default cost.
    assert!(
        CANISTERS_KV_KEY_BYTES_MAX_DEFAULT + CANISTERS_KV_VALUE_BYTES_MAX_DEFAULT + KIB
            <= CANISTERS_CANDID_DECODING_COST_MAX_DEFAULT
    );
};

impl Tuning {
    /// Every knob's metadata and current value, section by section.
    pub fn knob_values(&self) -> Vec<(&'static KnobMeta, KnobValue)> {
        let mut values = self.engine.knob_values();
        values.extend(self.udp.knob_values());
        values.extend(self.quic.knob_values());
        values.extend(self.tcp.knob_values());
        values.extend(self.rpc.knob_values());
        values.extend(self.registry.knob_values());
        values.extend(self.metrics.knob_values());
        values.extend(self.peers.knob_values());
        values.extend(self.gossip.knob_values());
        values.extend(self.state_sync.knob_values());
        values.extend(self.http.knob_values());
        values.extend(self.canisters.knob_values());
        values.extend(self.replica.knob_values());
        values
    }

    /// Every knob's metadata, section by section.
    pub fn knobs() -> impl Iterator<Item = &'static KnobMeta> {
        SECTIONS.iter().flat_map(|section| section.knobs.iter())
    }

    /// The value of the knob with this dotted name, e.g. `quic.idle_timeout_ms`.
    pub fn value_of(&self, knob: &str) -> Option<KnobValue> {
        self.knob_values()
            .into_iter()
            .find(|(meta, _)| meta.knob == knob)
            .map(|(_, value)| value)
    }

    /// Checks every range, every rule between knobs and every cap; returns all problems at once.
    pub fn validate(&self) -> Result<(), Vec<TuningError>> {
        let mut errors = Vec::new();
        self.engine.validate_ranges(&mut errors);
        self.udp.validate_ranges(&mut errors);
        self.quic.validate_ranges(&mut errors);
        self.tcp.validate_ranges(&mut errors);
        self.rpc.validate_ranges(&mut errors);
        self.registry.validate_ranges(&mut errors);
        self.metrics.validate_ranges(&mut errors);
        self.peers.validate_ranges(&mut errors);
        self.gossip.validate_ranges(&mut errors);
        self.state_sync.validate_ranges(&mut errors);
        self.http.validate_ranges(&mut errors);
        self.canisters.validate_ranges(&mut errors);
        self.replica.validate_ranges(&mut errors);
        errors.extend(
            CROSS_RULES
                .iter()
                .filter_map(|rule| self.check_cross_rule(rule)),
        );
        errors.extend(
            CAP_RULES
                .iter()
                .filter_map(|rule| self.check_cap_rule(rule)),
        );
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn integer_of(&self, knob: &str) -> u64 {
        match self.value_of(knob) {
            Some(KnobValue::Integer(value)) => value,
            other => unreachable!("rule names {knob}, not an integer knob ({other:?})"),
        }
    }

    fn check_cross_rule(&self, rule: &CrossRule) -> Option<TuningError> {
        let value = self.integer_of(rule.knob);
        let other_value = self.integer_of(rule.other);
        if rule.relation.holds(value, other_value) {
            return None;
        }
        Some(TuningError::Conflict {
            knob: rule.knob,
            value,
            relation: rule.relation,
            other: rule.other,
            other_value,
            why: rule.why,
        })
    }

    fn check_cap_rule(&self, rule: &CapRule) -> Option<TuningError> {
        let value_bytes = (rule.bytes)(self);
        if value_bytes <= rule.cap_bytes {
            return None;
        }
        Some(TuningError::OverCap {
            what: rule.what,
            knobs: rule.knobs,
            value_bytes,
            cap_bytes: rule.cap_bytes,
            why: rule.why,
        })
    }

    /// Parses a TOML profile (missing keys take their defaults) and validates it, reporting every
    /// problem at once: unknown keys, wrong types and out-of-range values, then the rules between
    /// knobs over the values that were valid (a rule involving a knob already reported is left
    /// out, since its value was not the one written).
    pub fn from_toml_str(text: &str) -> Result<Tuning, Vec<TuningError>> {
        let syntax = |error: toml::de::Error| {
            vec![TuningError::Syntax {
                message: error.to_string().trim_end().to_string(),
            }]
        };
        let mut table: toml::Table = text.parse().map_err(syntax)?;
        let mut errors = toml_check::take_invalid(&mut table);
        let tuning: Tuning = toml::Value::Table(table).try_into().map_err(syntax)?;
        if let Err(rule_errors) = tuning.validate() {
            let reported: Vec<String> = errors
                .iter()
                .filter_map(|error| error.knob().map(str::to_string))
                .collect();
            let fresh = rule_errors
                .into_iter()
                .filter(|error| !reported.iter().any(|knob| error.mentions(knob)));
            errors.extend(fresh);
        }
        if errors.is_empty() {
            Ok(tuning)
        } else {
            Err(errors)
        }
    }

    /// Reads and validates a TOML profile; every error is reported with the file's path.
    pub fn load(path: impl AsRef<Path>) -> Result<Tuning, LoadError> {
        let path = path.as_ref();
        let fail = |errors| LoadError {
            path: path.to_path_buf(),
            errors,
        };
        let text = std::fs::read_to_string(path).map_err(|error| {
            fail(vec![TuningError::Io {
                path: path.to_path_buf(),
                message: error.to_string(),
            }])
        })?;
        Tuning::from_toml_str(&text).map_err(fail)
    }

    /// The configuration as TOML, every knob written out; `from_toml_str` reads it back equal.
    pub fn to_toml_string(&self) -> String {
        reference::render_toml(self, false)
    }
}

#[cfg(test)]
mod tests;
