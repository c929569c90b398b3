//! The HTTP API's `/metrics` families (`icn_http_*`). The server records into these handles
//! directly on its shard (no locks on the recording path); the collector merges shards.
//!
//! Every metric carries at most one label (the metrics layer's rule), so "requests by class and
//! status" is one label `request` whose values are `<class>_<status>` from a fixed set.

use std::rc::Rc;

use icn_engine::metrics::{
    Aggregation, Counter, CounterId, Gauge, GaugeId, Histogram, HistogramId, LabelSpec,
    MetricsError, MetricsSchemaBuilder, ShardMetrics,
};

use super::admission::GateObserver;
use super::batch::VerifiedBy;
use super::routes::EndpointClass;

/// Status codes the server answers with (each gets a series per class).
pub const STATUSES: [u16; 12] = [200, 202, 400, 403, 404, 405, 408, 413, 429, 500, 503, 504];

/// Request classes for counting: the four admission classes plus `other` (operator endpoints,
/// unknown paths).
const REQUEST_CLASSES: [&str; 5] = ["call", "query", "read_state", "status", "other"];

/// Where an answered query's or read_state request's time went (label `stage` of
/// `icn_http_stage_us`), in the order a request passes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for a slot of the class (0 when one was free).
    Admission,
    /// Receiving the body.
    Body,
    /// Waiting for a verification-pool thread.
    VerifyWait,
    /// CBOR decoding and the request id's hash (on the pool).
    Decode,
    /// Expiry and signature checks (on the pool).
    Verify,
    /// The backend: for a query, execution, the wait for a signing thread and signing.
    Backend,
    /// Of the backend's time, executing the query on the shard.
    Execute,
    /// Of the backend's time, waiting for a pool thread to sign the answer.
    SignWait,
    /// Of the backend's time, signing the answer (on the pool).
    Sign,
    /// Encoding the answer's CBOR (writing it is hyper's, after this).
    Encode,
}

impl Stage {
    pub const ALL: [Stage; 10] = [
        Stage::Admission,
        Stage::Body,
        Stage::VerifyWait,
        Stage::Decode,
        Stage::Verify,
        Stage::Backend,
        Stage::Execute,
        Stage::SignWait,
        Stage::Sign,
        Stage::Encode,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Stage::Admission => "admission",
            Stage::Body => "body",
            Stage::VerifyWait => "verify_wait",
            Stage::Decode => "decode",
            Stage::Verify => "verify",
            Stage::Backend => "backend",
            Stage::Execute => "execute",
            Stage::SignWait => "sign_wait",
            Stage::Sign => "sign",
            Stage::Encode => "encode",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a request or connection was refused or cut (label `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The class's slots and queue were full (429 before the body).
    QueueFull,
    /// Waited in the queue longer than `http.queue_wait_timeout_ms` (429).
    QueueTimeout,
    /// The class was congested (`http.delay_target_ms` exceeded): refused at once or taken
    /// out of the queue (429).
    Congested,
    /// The verification pool's queue was full (429).
    PoolFull,
    /// Body above `http.body_bytes_max` (413).
    BodyTooLarge,
    /// Body not complete within `http.body_read_timeout_ms` (408).
    BodyTimeout,
    /// Request head not complete within `http.header_read_timeout_ms` (connection closed).
    HeaderTimeout,
    /// Nothing happened for `http.idle_timeout_ms` (connection closed).
    IdleTimeout,
    /// Over `http.connections_per_ip_max` (connection closed at accept).
    PerIpLimit,
    /// Over `http.connections_max` (connection closed at accept).
    ConnectionLimit,
    /// Undecodable body, wrong types, bad path id, expiry out of range, canister mismatch (400).
    BadRequest,
    /// Signature, sender or delegation check failed (400).
    BadSignature,
    /// The backend did not answer within `http.backend_timeout_ms` (504).
    BackendTimeout,
}

impl Rejection {
    pub const ALL: [Rejection; 13] = [
        Rejection::QueueFull,
        Rejection::QueueTimeout,
        Rejection::Congested,
        Rejection::PoolFull,
        Rejection::BodyTooLarge,
        Rejection::BodyTimeout,
        Rejection::HeaderTimeout,
        Rejection::IdleTimeout,
        Rejection::PerIpLimit,
        Rejection::ConnectionLimit,
        Rejection::BadRequest,
        Rejection::BadSignature,
        Rejection::BackendTimeout,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Rejection::QueueFull => "queue_full",
            Rejection::QueueTimeout => "queue_timeout",
            Rejection::Congested => "congested",
            Rejection::PoolFull => "pool_full",
            Rejection::BodyTooLarge => "body_too_large",
            Rejection::BodyTimeout => "body_timeout",
            Rejection::HeaderTimeout => "header_timeout",
            Rejection::IdleTimeout => "idle_timeout",
            Rejection::PerIpLimit => "per_ip_limit",
            Rejection::ConnectionLimit => "connection_limit",
            Rejection::BadRequest => "bad_request",
            Rejection::BadSignature => "bad_signature",
            Rejection::BackendTimeout => "backend_timeout",
        }
    }
}

/// The declared families.
#[derive(Clone, Copy, Debug)]
pub struct HttpMetricIds {
    requests: CounterId,
    rejections: CounterId,
    connections_accepted: CounterId,
    connections_open: GaugeId,
    client_addresses: GaugeId,
    in_flight: GaugeId,
    queued: GaugeId,
    pool_queued: GaugeId,
    verify_pending: GaugeId,
    verified: CounterId,
    batch_len: HistogramId,
    limit: GaugeId,
    latency: HistogramId,
    stages: HistogramId,
}

impl HttpMetricIds {
    pub fn declare(builder: &mut MetricsSchemaBuilder) -> Result<HttpMetricIds, MetricsError> {
        let request_labels: Vec<String> = REQUEST_CLASSES
            .iter()
            .flat_map(|class| STATUSES.iter().map(move |s| format!("{class}_{s}")))
            .collect();
        let request_labels: Vec<&str> = request_labels.iter().map(String::as_str).collect();
        let reasons: Vec<&str> = Rejection::ALL.iter().map(|r| r.label()).collect();
        let classes: Vec<&str> = EndpointClass::ALL.iter().map(|c| c.label()).collect();
        let class = || Some(LabelSpec::fixed("class", &classes));
        let stages: Vec<&str> = Stage::ALL.iter().map(|s| s.label()).collect();
        let by: Vec<&str> = VerifiedBy::ALL.iter().map(|b| b.label()).collect();
        Ok(HttpMetricIds {
            requests: builder.counter(
                "icn_http_requests_total",
                "API requests answered, by class and HTTP status (label request=<class>_<status>).",
                Some(LabelSpec::fixed("request", &request_labels)),
                Aggregation::Sum,
            )?,
            rejections: builder.counter(
                "icn_http_rejections_total",
                "Requests refused or connections cut by the API's bounds, by reason.",
                Some(LabelSpec::fixed("reason", &reasons)),
                Aggregation::Sum,
            )?,
            connections_accepted: builder.counter(
                "icn_http_connections_accepted_total",
                "API connections accepted (before the per-IP and total limits).",
                None,
                Aggregation::Sum,
            )?,
            connections_open: builder.gauge(
                "icn_http_connections",
                "Open API connections (bound http.connections_max per shard).",
                None,
                Aggregation::PerShard,
            )?,
            client_addresses: builder.gauge(
                "icn_http_client_addresses",
                "Client IP addresses with an open API connection (the per-IP map; bound http.connections_max).",
                None,
                Aggregation::PerShard,
            )?,
            in_flight: builder.gauge(
                "icn_http_in_flight",
                "Requests holding a slot of their class (bound http.<class>_concurrency_max).",
                class(),
                Aggregation::PerShard,
            )?,
            queued: builder.gauge(
                "icn_http_queue_depth",
                "Requests waiting for a slot of their class (bound http.<class>_queue_max).",
                class(),
                Aggregation::PerShard,
            )?,
            pool_queued: builder.gauge(
                "icn_http_verify_queue_depth",
                "Decode-and-verify jobs waiting for a pool thread (bound http.verify_queue_max, node-wide).",
                None,
                Aggregation::PerShard,
            )?,
            verify_pending: builder.gauge(
                "icn_http_verify_pending",
                "Queries and read_state requests waiting for a pool thread to verify them in a batch (bound http.verify_queue_max per shard).",
                None,
                Aggregation::PerShard,
            )?,
            verified: builder.counter(
                "icn_http_verified_total",
                "Queries and read_state requests verified by the pool, by how: single (alone or batching paused), batch (in a batch whose equation held), retried (in a failed batch, then singly).",
                Some(LabelSpec::fixed("by", &by)),
                Aggregation::Sum,
            )?,
            batch_len: builder.histogram(
                "icn_http_verify_batch_len",
                "Requests in the verification batch of each query or read_state request (bound http.verify_batch_max).",
                None,
                Aggregation::Sum,
            )?,
            limit: builder.gauge(
                "icn_http_admission_limit",
                "Requests a class admits at once: http.<class>_concurrency_max, or less while the delay control (http.delay_target_ms) holds it down.",
                class(),
                Aggregation::PerShard,
            )?,
            latency: builder.histogram(
                "icn_http_request_latency_us",
                "Microseconds from a request's head to its answer, by class (refusals included).",
                class(),
                Aggregation::Sum,
            )?,
            stages: builder.histogram(
                "icn_http_stage_us",
                "Microseconds answered queries and read_state requests spent in each stage (admission, body, verify_wait, decode, verify, backend, execute, sign_wait, sign, encode).",
                Some(LabelSpec::fixed("stage", &stages)),
                Aggregation::Sum,
            )?,
        })
    }
}

/// One shard's handles.
#[derive(Clone)]
pub struct HttpMetrics {
    /// Per request class (including `other`), per status in [`STATUSES`] order.
    requests: Rc<Vec<Vec<Counter>>>,
    rejections: Rc<Vec<Counter>>,
    pub(crate) connections_accepted: Counter,
    pub(crate) connections_open: Gauge,
    pub(crate) client_addresses: Gauge,
    pub(crate) pool_queued: Gauge,
    pub(crate) verify_pending: Gauge,
    verified: Rc<Vec<Counter>>,
    batch_len: Histogram,
    latency: Rc<Vec<Histogram>>,
    stages: Rc<Vec<Histogram>>,
    in_flight: Rc<Vec<Gauge>>,
    queued: Rc<Vec<Gauge>>,
    limit: Rc<Vec<Gauge>>,
}

impl HttpMetrics {
    pub fn new(ids: &HttpMetricIds, shard: &ShardMetrics) -> HttpMetrics {
        let requests = REQUEST_CLASSES
            .iter()
            .map(|class| {
                STATUSES
                    .iter()
                    .map(|s| shard.counter_with(ids.requests, &format!("{class}_{s}")))
                    .collect()
            })
            .collect();
        let per_class = |id| {
            EndpointClass::ALL
                .iter()
                .map(|c| shard.gauge_with(id, c.label()))
                .collect::<Vec<_>>()
        };
        HttpMetrics {
            requests: Rc::new(requests),
            rejections: Rc::new(
                Rejection::ALL
                    .iter()
                    .map(|r| shard.counter_with(ids.rejections, r.label()))
                    .collect(),
            ),
            connections_accepted: shard.counter(ids.connections_accepted),
            connections_open: shard.gauge(ids.connections_open),
            client_addresses: shard.gauge(ids.client_addresses),
            pool_queued: shard.gauge(ids.pool_queued),
            verify_pending: shard.gauge(ids.verify_pending),
            verified: Rc::new(
                VerifiedBy::ALL
                    .iter()
                    .map(|b| shard.counter_with(ids.verified, b.label()))
                    .collect(),
            ),
            batch_len: shard.histogram(ids.batch_len),
            latency: Rc::new(
                EndpointClass::ALL
                    .iter()
                    .map(|c| shard.histogram_with(ids.latency, c.label()))
                    .collect(),
            ),
            stages: Rc::new(
                Stage::ALL
                    .iter()
                    .map(|s| shard.histogram_with(ids.stages, s.label()))
                    .collect(),
            ),
            in_flight: Rc::new(per_class(ids.in_flight)),
            queued: Rc::new(per_class(ids.queued)),
            limit: Rc::new(per_class(ids.limit)),
        }
    }

    /// Records one request's time in `stage`.
    pub fn stage(&self, stage: Stage, micros: u64) {
        self.stages[stage.index()].record(micros);
    }

    /// Counts one request verified by the batcher: how, and its batch's length.
    pub fn verified(&self, by: VerifiedBy, batch_len: usize) {
        if let Some(i) = VerifiedBy::ALL.iter().position(|b| *b == by) {
            self.verified[i].inc();
        }
        self.batch_len
            .record(u64::try_from(batch_len).unwrap_or(u64::MAX));
    }

    /// Counts one answered request (`class` None: operator endpoint or unknown path).
    pub fn answered(&self, class: Option<EndpointClass>, status: u16, micros: u64) {
        let row = class.map_or(REQUEST_CLASSES.len() - 1, EndpointClass::index);
        if let Some(i) = STATUSES.iter().position(|s| *s == status) {
            self.requests[row][i].inc();
        }
        if let Some(class) = class {
            self.latency[class.index()].record(micros);
        }
    }

    pub fn rejected(&self, reason: Rejection) {
        if let Some(i) = Rejection::ALL.iter().position(|r| *r == reason) {
            self.rejections[i].inc();
        }
    }

    /// The observer that keeps a class's depth gauges current.
    pub fn gate_observer(&self, class: EndpointClass) -> Box<dyn GateObserver> {
        Box::new(GateGauges {
            in_flight: self.in_flight[class.index()].clone(),
            queued: self.queued[class.index()].clone(),
            limit: self.limit[class.index()].clone(),
        })
    }
}

struct GateGauges {
    in_flight: Gauge,
    queued: Gauge,
    limit: Gauge,
}

impl GateObserver for GateGauges {
    fn changed(&self, in_flight: usize, queued: usize) {
        self.in_flight
            .set(i64::try_from(in_flight).unwrap_or(i64::MAX));
        self.queued.set(i64::try_from(queued).unwrap_or(i64::MAX));
    }

    fn limit_changed(&self, limit: usize) {
        self.limit.set(i64::try_from(limit).unwrap_or(i64::MAX));
    }
}
