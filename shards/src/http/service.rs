//! The server core: one request from its parsed head to its answer.
//!
//! Order matters for load shedding. A request is routed, its declared size checked (413) and
//! its class's gate consulted (429) before a single body byte is read; only an admitted
//! request buffers its body, under a deadline (408) and a size bound that also holds for
//! chunked bodies (413). Decoding, the expiry check and signature verification then run on
//! the verification pool (429 when its queue is full), and the backend gets the typed request
//! under its own deadline (504). Every answer is counted by class and status, and every
//! refusal by reason.

use std::cell::Cell;
use std::convert::Infallible;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures_lite::future;
use glommio::TaskQueueHandle;
use http::header::{ALLOW, CONNECTION, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use icn_codecs::ic::{
    decode_request_envelope, encode_query_response, encode_read_state_response,
    encode_reject_response, encode_status_response, encode_sync_call_response, IcLimits,
    NodeSignature, Principal, QueryOutcome, Reject, RequestContent, StatusResponse,
    SyncCallResponse,
};
use icn_tuning::HttpTuning;

use super::admission::{Admission, ClassGate, DelayControl, IpLimiter, Permit};
use super::auth::{authenticate, authenticate_deferred, check_ingress_expiry, Ed25519Check};
use super::backend::{
    owned_call, owned_read_state, Backend, BackendError, CallReply, CallRequest, CallVersion,
    OwnedReject, QueryRequest, QueryResult, ReadStateRequest, ReadStateTarget,
};
use super::batch::VerifyBatcher;
use super::io::ConnActivity;
use super::metrics::{HttpMetrics, Rejection, Stage};
use super::pool::CpuPool;
use super::routes::{route, EndpointClass, Route, RouteError};

/// The interface specification version the server implements.
pub const IC_API_VERSION: &str = "0.18.0";

/// The response body type.
pub type HttpResponse = Response<Full<Bytes>>;

/// Wall-clock nanoseconds since 1970 (replaceable in tests).
pub type Clock = Rc<dyn Fn() -> u64>;

/// What a shard's server needs besides its tuning.
#[derive(Clone)]
pub struct HttpDeps {
    pub backend: Rc<dyn Backend>,
    /// The node-wide decode-and-verify pool.
    pub pool: Arc<CpuPool>,
    pub metrics: HttpMetrics,
    /// Prometheus text for `/metrics` (normally: publish this shard, then render the
    /// collector).
    pub render_metrics: Rc<dyn Fn() -> String>,
    /// Nanoseconds since 1970; [`system_clock`] outside tests.
    pub clock: Clock,
    /// With a context, connections that start with a TLS handshake get TLS 1.3 (ALPN h2 or
    /// http/1.1); the others, and all connections without one, are plaintext.
    pub tls: Option<boring::ssl::SslContext>,
}

/// The system clock in nanoseconds since 1970.
pub fn system_clock() -> Clock {
    Rc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    })
}

/// One shard's server state: tuning, admission gates, dependencies.
pub struct ServerState {
    pub(crate) tuning: HttpTuning,
    limits: IcLimits,
    gates: [Rc<ClassGate>; 4],
    pub(crate) ip_limiter: Rc<IpLimiter>,
    pub(crate) deps: HttpDeps,
    /// The task queue admitted requests continue in (set by [`super::HttpServer::start`];
    /// None: they run in the connection's task).
    pub(crate) admitted_queue: Cell<Option<TaskQueueHandle>>,
    /// Batches the signature checks of queries and read_state requests (None when
    /// `http.verify_batch_max` is 1).
    pub(crate) batcher: Option<Arc<VerifyBatcher>>,
    /// The texts of the admission 429s, per class, built once: under a flood they answer most
    /// requests, and a shared `Bytes` costs no allocation per refusal.
    busy: [BusyTexts; 4],
}

/// One class's admission refusal texts (see [`ServerState::busy`]).
struct BusyTexts {
    /// The delay control holds the limit and every slot is taken.
    congested: Bytes,
    /// Slots and queue are full.
    full: Bytes,
    /// The request waited the whole `http.queue_wait_timeout_ms`.
    timed_out: Bytes,
}

impl BusyTexts {
    fn new(class: EndpointClass, tuning: &HttpTuning) -> BusyTexts {
        let label = class.label();
        BusyTexts {
            congested: Bytes::from(format!(
                "{label} requests are waiting longer than the {} ms target, retry later",
                tuning.delay_target_ms
            )),
            full: Bytes::from(format!("{label} capacity exhausted, retry later")),
            timed_out: Bytes::from(format!("{label} queue wait timed out, retry later")),
        }
    }
}

impl ServerState {
    pub fn new(tuning: HttpTuning, deps: HttpDeps) -> Rc<ServerState> {
        // Queries and read_state requests are short: their time in the server is work plus
        // waiting, and the delay control sheds the waiting. Calls wait for consensus (seconds
        // by design) and status answers are trivial, so those keep fixed limits.
        let delay = (tuning.delay_target_ms > 0).then(|| DelayControl {
            target: Duration::from_millis(tuning.delay_target_ms),
            interval: Duration::from_millis(tuning.delay_interval_ms),
            // Two jobs per pool thread keep every thread busy while requests move between
            // the shard and the pool.
            limit_min: deps.pool.threads().saturating_mul(2).max(4),
        });
        let gate = |class: EndpointClass, concurrency, queue| {
            let control = match class {
                EndpointClass::Query | EndpointClass::ReadState => delay,
                EndpointClass::Call | EndpointClass::Status => None,
            };
            ClassGate::with_control(
                concurrency,
                queue,
                control,
                Some(deps.metrics.gate_observer(class)),
                Instant::now,
            )
        };
        let gates = [
            gate(
                EndpointClass::Call,
                tuning.call_concurrency_max,
                tuning.call_queue_max,
            ),
            gate(
                EndpointClass::Query,
                tuning.query_concurrency_max,
                tuning.query_queue_max,
            ),
            gate(
                EndpointClass::ReadState,
                tuning.read_state_concurrency_max,
                tuning.read_state_queue_max,
            ),
            gate(
                EndpointClass::Status,
                tuning.status_concurrency_max,
                tuning.status_queue_max,
            ),
        ];
        let limits = IcLimits {
            body_bytes_max: tuning.body_bytes_max,
            ..IcLimits::default()
        };
        Rc::new(ServerState {
            tuning,
            limits,
            gates,
            ip_limiter: IpLimiter::new(tuning.connections_per_ip_max),
            deps,
            admitted_queue: Cell::new(None),
            batcher: (tuning.verify_batch_max > 1).then(|| VerifyBatcher::new(tuning, limits)),
            busy: EndpointClass::ALL.map(|class| BusyTexts::new(class, &tuning)),
        })
    }

    pub fn gate(&self, class: EndpointClass) -> &Rc<ClassGate> {
        &self.gates[class.index()]
    }

    pub fn metrics(&self) -> &HttpMetrics {
        &self.deps.metrics
    }
}

/// A refusal: status, text body, and the reason counted (None for plain client errors like
/// 404 that no bound caused).
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    /// UTF-8 text.
    pub(crate) message: Bytes,
    pub(crate) reason: Option<Rejection>,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<Bytes>, reason: Option<Rejection>) -> Self {
        Refusal {
            status,
            message: message.into(),
            reason,
        }
    }

    /// The message as a `String` (tests compare it).
    #[cfg(test)]
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.message).into_owned()
    }

    fn bad_request(message: impl Into<Bytes>) -> Self {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            message,
            Some(Rejection::BadRequest),
        )
    }
}

/// Serves one request: the hyper service function.
pub async fn handle<B>(
    state: Rc<ServerState>,
    activity: Rc<ConnActivity>,
    request: Request<B>,
) -> Result<HttpResponse, Infallible>
where
    B: http_body::Body<Data = Bytes> + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    let _active = activity.request_started();
    let started = Instant::now();
    let route = route(request.method(), request.uri().path());
    let class = route.as_ref().ok().and_then(|r| r.class());
    let response = match route {
        Ok(route) => match serve(&state, route, request).await {
            Ok(response) => response,
            Err(refusal) => refuse(&state, refusal),
        },
        Err(RouteError::NotFound) => text(StatusCode::NOT_FOUND, "no such endpoint"),
        Err(RouteError::MethodNotAllowed(allowed)) => {
            let mut response = text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("this endpoint accepts {allowed}"),
            );
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allowed));
            response
        }
        Err(RouteError::BadPrincipal(message)) => refuse(&state, Refusal::bad_request(message)),
    };
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    state
        .metrics()
        .answered(class, response.status().as_u16(), micros);
    Ok(response)
}

fn refuse(state: &ServerState, refusal: Refusal) -> HttpResponse {
    if let Some(reason) = refusal.reason {
        state.metrics().rejected(reason);
    }
    let mut response = text(refusal.status, refusal.message);
    if matches!(
        refusal.status,
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
    ) {
        // The body was not (fully) read: the connection cannot carry another request.
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

async fn serve<B>(
    state: &Rc<ServerState>,
    route: Route,
    request: Request<B>,
) -> Result<HttpResponse, Refusal>
where
    B: http_body::Body<Data = Bytes> + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    let class = match (route, route.class()) {
        (Route::Metrics, _) => {
            let body = (state.deps.render_metrics)();
            let mut response = text(StatusCode::OK, body);
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            return Ok(response);
        }
        (Route::Health, _) => return Ok(text(StatusCode::OK, "ok")),
        (_, Some(class)) => class,
        (_, None) => {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                "no such endpoint",
                None,
            ))
        }
    };
    let (parts, body) = request.into_parts();
    let hint = body.size_hint();
    // From here every refusal leaves the body unread; on HTTP/2 it is drained rather than
    // dropped (UnreadBody).
    let mut body = UnreadBody::new(body, parts.version == http::Version::HTTP_2, &state.tuning);
    if route.is_post() {
        // Refused before admission: a declared size is known without reading anything.
        if let Some(declared) = hint.exact().or(hint.upper()) {
            if declared > state.tuning.body_bytes_max as u64 {
                // Never drained: it is over the bound by its own declaration.
                drop(body.take());
                return Err(too_large(state));
            }
        }
        check_content_type(&parts.headers)?;
    }
    let mut stages = StageTimes::new();
    let congested = || {
        Refusal::new(
            StatusCode::TOO_MANY_REQUESTS,
            state.busy[class.index()].congested.clone(),
            Some(Rejection::Congested),
        )
    };
    let permit = match state.gate(class).admit() {
        Admission::Now(permit) => permit,
        Admission::Queued(queued) => {
            let wait = Duration::from_millis(state.tuning.queue_wait_timeout_ms);
            match timeout(wait, queued).await {
                Some(permit) => permit,
                None => {
                    return Err(Refusal::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        state.busy[class.index()].timed_out.clone(),
                        Some(Rejection::QueueTimeout),
                    ))
                }
            }
        }
        Admission::Full => {
            return Err(Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                state.busy[class.index()].full.clone(),
                Some(Rejection::QueueFull),
            ))
        }
        Admission::Congested => return Err(congested()),
    };
    stages.lap(Stage::Admission);
    if route == Route::Status {
        return Ok(status_response(state));
    }
    match state.admitted_queue.get() {
        // The admitted request's work continues in the shard's admitted task queue, which
        // the executor prefers over the connections' queue: under a flood, answering the
        // excess with 429s must not starve the requests already let in.
        Some(queue) => {
            let task = glommio::spawn_local_into(
                serve_admitted(state.clone(), route, body.take(), permit, stages),
                queue,
            )
            .map_err(|e| {
                Refusal::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("could not schedule the request: {e}"),
                    None,
                )
            })?;
            task.await
        }
        None => serve_admitted(state.clone(), route, body.take(), permit, stages).await,
    }
}

/// The body of a request that may still be refused. Refusals are decided before any body byte
/// is read, and on HTTP/1.1 an unread body just ends the connection's reuse. On HTTP/2,
/// dropping it would make the server reset the stream, and the client's DATA frames already
/// on the way then count as protocol errors against the connection
/// (`H2_ERROR_RESETS_MAX` in server.rs): a client multiplexing queries over one connection
/// would lose it, and every request on it, after about a thousand 429s. So a refused HTTP/2
/// body is read to its end and discarded in a task of its own while the answer goes out
/// (the answer does not wait for it), at most `http.body_bytes_max` bytes within
/// `http.body_read_timeout_ms` (then it is dropped after all). Its stream stays open
/// meanwhile and counts against the connection's stream limit.
struct UnreadBody<B: http_body::Body<Data = Bytes> + Unpin + 'static> {
    body: Option<B>,
    drain: bool,
    bytes_max: usize,
    timeout: Duration,
}

impl<B: http_body::Body<Data = Bytes> + Unpin + 'static> UnreadBody<B> {
    fn new(body: B, h2: bool, tuning: &HttpTuning) -> Self {
        UnreadBody {
            body: Some(body),
            drain: h2,
            bytes_max: tuning.body_bytes_max,
            timeout: Duration::from_millis(tuning.body_read_timeout_ms),
        }
    }

    /// The body, for an admitted request that reads it.
    fn take(&mut self) -> B {
        self.body.take().expect("the body is taken once")
    }
}

impl<B: http_body::Body<Data = Bytes> + Unpin + 'static> Drop for UnreadBody<B> {
    fn drop(&mut self) {
        let Some(mut body) = self.body.take() else {
            return;
        };
        if !self.drain || body.is_end_stream() {
            return;
        }
        let (bytes_max, deadline) = (self.bytes_max, self.timeout);
        let drain = async move {
            let mut read = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    read = read.saturating_add(data.len());
                    if read > bytes_max {
                        break;
                    }
                }
            }
        };
        glommio::spawn_local(timeout(deadline, drain)).detach();
    }
}

/// An admitted request from its body to its answer (the permit is held throughout).
async fn serve_admitted<B>(
    state: Rc<ServerState>,
    route: Route,
    body: B,
    permit: Permit,
    mut stages: StageTimes,
) -> Result<HttpResponse, Refusal>
where
    B: http_body::Body<Data = Bytes> + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    let state = &state;
    let body = read_body(state, body).await?;
    stages.lap(Stage::Body);
    let now = (state.deps.clock)();
    let tuning = state.tuning;
    let limits = state.limits;
    let batcher = match route {
        Route::Query(_) | Route::CanisterReadState(_) | Route::SubnetReadState(_) => {
            state.batcher.as_ref()
        }
        _ => None,
    };
    let pool_full = || {
        Refusal::new(
            StatusCode::TOO_MANY_REQUESTS,
            "signature verification capacity exhausted, retry later",
            Some(Rejection::PoolFull),
        )
    };
    let job_failed = || {
        Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "verification failed",
            None,
        )
    };
    let (verified, pool_times, queued) = if let Some(batcher) = batcher {
        let job = batcher
            .submit(&state.deps.pool, body.clone(), route, now)
            .map_err(|_| pool_full())?;
        PoolDepthSample::sample(state);
        let depth = PoolDepthSample(state);
        let outcome = job.await;
        drop(depth);
        let outcome = outcome.map_err(|_| job_failed())?;
        state.metrics().verified(outcome.by, outcome.batch_len);
        (outcome.verified, outcome.times, outcome.queued)
    } else {
        let job_body = body.clone();
        let submitted = Instant::now();
        let job = state
            .deps
            .pool
            .try_run_measured(move || {
                let mut pool_times = PoolTimes {
                    wait: submitted.elapsed(),
                    ..PoolTimes::default()
                };
                let verified = decode_and_check(
                    &job_body,
                    route,
                    &limits,
                    &tuning,
                    now,
                    &mut pool_times,
                    SignatureMode::Now,
                );
                (verified, pool_times)
            })
            .map_err(|_| pool_full())?;
        // Sampled at submission and when this request stops waiting (answered or
        // cancelled), so the gauge also falls when the queue drains.
        PoolDepthSample::sample(state);
        let depth = PoolDepthSample(state);
        let verified = job.await;
        drop(depth);
        let ((verified, pool_times), queued) = verified.map_err(|_| job_failed())?;
        (verified, pool_times, queued)
    };
    let verified = verified?;
    permit.add_wait(queued);
    stages.record(Stage::VerifyWait, pool_times.wait);
    stages.record(Stage::Decode, pool_times.decode);
    stages.record(Stage::Verify, pool_times.verify);
    stages.restart();
    let deadline = Duration::from_millis(state.tuning.backend_timeout_ms);
    let backend = state.deps.backend.clone();
    let answer = match (verified, route) {
        (Verified::Call(content, request_id), Route::Call(version, canister)) => {
            let request = CallRequest {
                version,
                effective_canister_id: canister,
                request_id,
                content,
                envelope: body,
            };
            let reply = with_deadline(deadline, backend.call(request)).await?;
            call_response(version, reply)
        }
        (Verified::Query(content, request_id), Route::Query(canister)) => {
            let request = QueryRequest {
                effective_canister_id: canister,
                request_id,
                content,
            };
            let reply = with_deadline(deadline, backend.query(request)).await?;
            stages.lap(Stage::Backend);
            if let Some(timings) = reply.timings {
                permit.add_wait(Duration::from_micros(timings.sign_queued_us));
                stages.record_us(Stage::Execute, timings.execute_us);
                stages.record_us(Stage::SignWait, timings.sign_wait_us);
                stages.record_us(Stage::Sign, timings.sign_us);
            }
            let outcome = match &reply.outcome {
                QueryResult::Replied { arg } => QueryOutcome::Replied { arg },
                QueryResult::Rejected(reject) => QueryOutcome::Rejected(borrow_reject(reject)),
            };
            let signatures: Vec<NodeSignature<'_>> = reply
                .signatures
                .iter()
                .map(|s| NodeSignature {
                    timestamp: s.timestamp,
                    signature: &s.signature,
                    identity: s.identity,
                })
                .collect();
            let mut out = Vec::new();
            encode_query_response(&outcome, &signatures, &mut out);
            stages.lap(Stage::Encode);
            stages.publish(state.metrics());
            cbor(StatusCode::OK, out)
        }
        (Verified::ReadState(content, request_id), Route::CanisterReadState(id))
        | (Verified::ReadState(content, request_id), Route::SubnetReadState(id)) => {
            let target = if matches!(route, Route::SubnetReadState(_)) {
                ReadStateTarget::Subnet(id)
            } else {
                ReadStateTarget::Canister(id)
            };
            let request = ReadStateRequest {
                target,
                request_id,
                content,
            };
            let reply = with_deadline(deadline, backend.read_state(request)).await?;
            stages.lap(Stage::Backend);
            let mut out = Vec::new();
            encode_read_state_response(&reply.certificate, &mut out);
            stages.lap(Stage::Encode);
            stages.publish(state.metrics());
            cbor(StatusCode::OK, out)
        }
        _ => {
            return Err(Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "request kind and route disagree",
                None,
            ))
        }
    };
    Ok(answer)
}

/// The stage times of one request, published to `icn_http_stage_us` only when it is answered
/// (a refused request's partial times would skew the breakdown). A fixed slot per stage: no
/// allocation per request.
struct StageTimes {
    mark: Instant,
    times: [Option<u64>; Stage::ALL.len()],
}

impl StageTimes {
    fn new() -> StageTimes {
        StageTimes {
            mark: Instant::now(),
            times: [None; Stage::ALL.len()],
        }
    }

    /// Ends `stage` now: its time is the time since the previous lap.
    fn lap(&mut self, stage: Stage) {
        let now = Instant::now();
        self.record(stage, now.saturating_duration_since(self.mark));
        self.mark = now;
    }

    /// Starts timing afresh (after stages measured elsewhere).
    fn restart(&mut self) {
        self.mark = Instant::now();
    }

    fn record(&mut self, stage: Stage, time: Duration) {
        self.record_us(stage, u64::try_from(time.as_micros()).unwrap_or(u64::MAX));
    }

    fn record_us(&mut self, stage: Stage, micros: u64) {
        self.times[stage as usize] = Some(micros);
    }

    fn publish(&self, metrics: &HttpMetrics) {
        for (stage, micros) in Stage::ALL.iter().zip(self.times) {
            if let Some(micros) = micros {
                metrics.stage(*stage, micros);
            }
        }
    }
}

/// Times measured on the verification pool.
#[derive(Default)]
pub(crate) struct PoolTimes {
    /// From submission to a worker starting the job (queueing and the worker's wake-up).
    pub(crate) wait: Duration,
    pub(crate) decode: Duration,
    pub(crate) verify: Duration,
}

/// Samples the verification pool's queue depth into its gauge when dropped.
struct PoolDepthSample<'a>(&'a ServerState);

impl PoolDepthSample<'_> {
    fn sample(state: &ServerState) {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let metrics = state.metrics();
        metrics.pool_queued.set(gauge(state.deps.pool.queued()));
        if let Some(batcher) = &state.batcher {
            metrics.verify_pending.set(gauge(batcher.pending()));
        }
    }
}

impl Drop for PoolDepthSample<'_> {
    fn drop(&mut self) {
        PoolDepthSample::sample(self.0);
    }
}

fn too_large(state: &ServerState) -> Refusal {
    Refusal::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "request body larger than {} bytes",
            state.tuning.body_bytes_max
        ),
        Some(Rejection::BodyTooLarge),
    )
}

fn check_content_type(headers: &http::HeaderMap) -> Result<(), Refusal> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/cbor") {
        Ok(())
    } else {
        Err(Refusal::bad_request(
            "Unexpected content-type, expected application/cbor",
        ))
    }
}

/// Buffers an admitted request's body, within the size bound and the body deadline.
async fn read_body<B>(state: &ServerState, mut body: B) -> Result<Bytes, Refusal>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let max = state.tuning.body_bytes_max;
    let collect = async {
        let mut buffer = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                Refusal::bad_request(format!("error reading the request body: {e}"))
            })?;
            if let Ok(data) = frame.into_data() {
                if buffer.len() + data.len() > max {
                    return Err(too_large(state));
                }
                buffer.extend_from_slice(&data);
            }
        }
        Ok(buffer.freeze())
    };
    let deadline = Duration::from_millis(state.tuning.body_read_timeout_ms);
    match timeout(deadline, collect).await {
        Some(result) => result,
        None => Err(Refusal::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body not received within {} ms",
                state.tuning.body_read_timeout_ms
            ),
            Some(Rejection::BodyTimeout),
        )),
    }
}

/// A decoded, authenticated request, owning its content.
pub(crate) enum Verified {
    Call(
        icn_codecs::ic::CallContent<'static>,
        icn_codecs::ic::RequestId,
    ),
    Query(
        icn_codecs::ic::CallContent<'static>,
        icn_codecs::ic::RequestId,
    ),
    ReadState(
        icn_codecs::ic::ReadStateContent<'static>,
        icn_codecs::ic::RequestId,
    ),
}

/// How [`decode_and_check`] checks signatures.
pub(crate) enum SignatureMode<'a> {
    /// Each at once ([`authenticate`]).
    Now,
    /// Ed25519 signatures set aside for a batch ([`authenticate_deferred`]).
    Deferred(&'a mut Vec<Ed25519Check>),
}

/// Runs on the pool: decode, match the endpoint, check the expiry window, authenticate, with
/// signatures checked at once or (the batcher's) Ed25519 ones set aside.
pub(crate) fn decode_and_check(
    body: &[u8],
    route: Route,
    limits: &IcLimits,
    tuning: &HttpTuning,
    now: u64,
    times: &mut PoolTimes,
    signatures: SignatureMode<'_>,
) -> Result<Verified, Refusal> {
    let started = Instant::now();
    let envelope = decode_request_envelope(body, limits)
        .map_err(|e| Refusal::bad_request(format!("could not decode the request body: {e}")))?;
    let decoded = Instant::now();
    times.decode = decoded - started;
    let expected = match route {
        Route::Call(..) => "call",
        Route::Query(_) => "query",
        _ => "read_state",
    };
    let found = envelope.content.request_type();
    if found != expected {
        return Err(Refusal::bad_request(format!(
            "field request_type: this endpoint takes {expected}, the request is {found}"
        )));
    }
    let effective = match route {
        Route::Call(_, id) | Route::Query(id) | Route::CanisterReadState(id) => Some(id),
        _ => None,
    };
    if let (RequestContent::Call(c) | RequestContent::Query(c), Some(effective)) =
        (&envelope.content, effective)
    {
        if c.canister_id != effective && c.canister_id != Principal::MANAGEMENT_CANISTER {
            return Err(Refusal::bad_request(format!(
                "Specified CanisterId {} does not match effective canister id in URL {}",
                c.canister_id, effective
            )));
        }
    }
    check_ingress_expiry(
        envelope.content.ingress_expiry(),
        now,
        tuning.ingress_expiry_window_ms.saturating_mul(1_000_000),
        tuning.ingress_expiry_drift_ms.saturating_mul(1_000_000),
    )
    .map_err(Refusal::bad_request)?;
    match signatures {
        SignatureMode::Now => authenticate(&envelope, effective.as_ref(), now),
        SignatureMode::Deferred(checks) => {
            authenticate_deferred(&envelope, effective.as_ref(), now, checks)
        }
    }
    .map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            format!(
                "Failed to authenticate request {}: {e}",
                hex(&envelope.request_id.0)
            ),
            Some(Rejection::BadSignature),
        )
    })?;
    times.verify = decoded.elapsed();
    let id = envelope.request_id;
    Ok(match &envelope.content {
        RequestContent::Call(c) => Verified::Call(owned_call(c), id),
        RequestContent::Query(c) => Verified::Query(owned_call(c), id),
        RequestContent::ReadState(r) => Verified::ReadState(owned_read_state(r), id),
    })
}

fn status_response(state: &ServerState) -> HttpResponse {
    let status = state.deps.backend.status();
    let mut out = Vec::new();
    encode_status_response(
        &StatusResponse {
            ic_api_version: IC_API_VERSION,
            root_key: status.root_key.as_deref(),
            impl_version: Some(env!("CARGO_PKG_VERSION")),
            impl_hash: None,
            replica_health_status: Some(status.replica_health_status),
            certified_height: status.certified_height,
        },
        &mut out,
    );
    cbor(StatusCode::OK, out)
}

fn call_response(version: CallVersion, reply: CallReply) -> HttpResponse {
    let mut out = Vec::new();
    match (version, reply) {
        (_, CallReply::Accepted) | (CallVersion::V2, CallReply::Certified { .. }) => {
            status_only(StatusCode::ACCEPTED)
        }
        (CallVersion::V2, CallReply::Rejected(reject)) => {
            encode_reject_response(&borrow_reject(&reject), &mut out);
            cbor(StatusCode::OK, out)
        }
        (_, CallReply::Certified { certificate }) => {
            encode_sync_call_response(
                &SyncCallResponse::Replied {
                    certificate: &certificate,
                },
                &mut out,
            );
            cbor(StatusCode::OK, out)
        }
        (_, CallReply::Rejected(reject)) => {
            encode_sync_call_response(
                &SyncCallResponse::NonReplicatedRejection(borrow_reject(&reject)),
                &mut out,
            );
            cbor(StatusCode::OK, out)
        }
    }
}

fn borrow_reject(reject: &OwnedReject) -> Reject<'_> {
    Reject {
        reject_code: reject.reject_code,
        reject_message: &reject.reject_message,
        error_code: reject.error_code.as_deref(),
    }
}

async fn with_deadline<T>(
    deadline: Duration,
    future: impl std::future::Future<Output = Result<T, BackendError>>,
) -> Result<T, Refusal> {
    match timeout(deadline, future).await {
        Some(Ok(value)) => Ok(value),
        Some(Err(error)) => {
            let status = match error {
                BackendError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                BackendError::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
                BackendError::NotFound(_) => StatusCode::NOT_FOUND,
                BackendError::Forbidden(_) => StatusCode::FORBIDDEN,
                BackendError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            Err(Refusal::new(status, error.to_string(), None))
        }
        None => Err(Refusal::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the replica did not answer within {} ms",
                deadline.as_millis()
            ),
            Some(Rejection::BackendTimeout),
        )),
    }
}

/// `future`'s output, or None when `limit` passes first.
pub(crate) async fn timeout<T>(
    limit: Duration,
    future: impl std::future::Future<Output = T>,
) -> Option<T> {
    future::or(async { Some(future.await) }, async {
        glommio::timer::sleep(limit).await;
        None
    })
    .await
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> HttpResponse {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn cbor(status: StatusCode, body: Vec<u8>) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/cbor"));
    response
}

fn status_only(status: StatusCode) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
