//! One TLS connection to a peer: requests multiplexed by request id, in both directions.
//!
//! A connection runs a reader, a writer and a keep-alive loop on its shard. It ends when one of
//! them fails, the peer says Goaway, or somebody calls [`Conn::close`]; then every pending RPC
//! fails with `ConnectionClosed` at once, every handler still running for the peer is cancelled,
//! and, when the connection ends on our initiative, the writer sends a Goaway frame (at a frame
//! boundary) before TLS close_notify so that the peer fails its own RPCs at once too.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::future::{or, zip};
use glommio::timer::sleep;
use icn_codecs::{DecodeError, Encoder, GoawayReason, RpcStatus};

use super::tasks::{TaskSet, Waiters};
use super::tls_io::TlsSocket;
use super::wire::{self, Envelope, Frame, FrameReader};
use super::{PeerTraffic, TcpConfig, TcpStats};
use crate::transport::{ConnId, NodeId, Priority, RequestContext, Route, Router, RpcError};
use crate::Buf;

/// Pongs queued and not yet sent. A peer that pings faster than we answer gets its extra pings
/// ignored (and counted) instead of growing the queue. Worst-case memory: 64 small envelopes.
const PONGS_QUEUED_MAX: usize = 64;

/// Overloaded responses queued and not yet sent. A peer keeps sending requests while all its
/// `requests_in_flight_max` slots are busy only if its limit is larger than ours; one that also
/// does not read our refusals would grow the queue without end, so past this many the
/// connection is closed (Goaway ProtocolError). Worst-case memory: 64 small envelopes.
const REFUSALS_QUEUED_MAX: usize = 64;

/// Bodies at most this long are sent in the same TLS record as their frame head (one small copy
/// instead of a second record and syscall). Larger bodies are encrypted straight from their `Buf`.
const COALESCE_BODY_BYTES_MAX: usize = 4 << 10;

/// How long closing may wait for the Goaway and close_notify to reach a peer that stopped reading.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a connection ends, and whether the peer is told with a Goaway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Closing {
    /// We end it: send Goaway with this reason and message before close_notify.
    Goaway {
        reason: GoawayReason,
        message: String,
    },
    /// The peer is gone or already said Goaway; there is nobody to tell.
    Quiet(String),
}

impl Closing {
    pub fn goaway(reason: GoawayReason, message: impl Into<String>) -> Closing {
        Closing::Goaway {
            reason,
            message: message.into(),
        }
    }
}

/// Which end of the connection we are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    /// We dialed: in TLS 1.3 our handshake finishes before the acceptor has checked our
    /// certificate against its registry, so only its first frame proves it accepted us.
    Dialer,
    /// We accepted, after checking the dialer's certificate and the dialing rule ourselves.
    Acceptor,
}

struct Outgoing {
    envelope: Envelope,
    body: Buf,
}

/// Frames waiting for the writer: control frames (Cancel, Ping, Pong) first, then one queue per
/// priority, highest first. Control frames are tiny, and a Cancel must precede every request
/// queued after it, so the peer frees the cancelled request's slot before a new one arrives.
#[derive(Default)]
struct SendQueues {
    control: VecDeque<Outgoing>,
    by_priority: [VecDeque<Outgoing>; 3],
    pongs_queued: usize,
    refusals_queued: usize,
}

impl SendQueues {
    fn pop(&mut self) -> Option<Outgoing> {
        if let Some(frame) = self.control.pop_front() {
            if matches!(frame.envelope, Envelope::Pong { .. }) {
                self.pongs_queued -= 1;
            }
            return Some(frame);
        }
        let frame = self
            .by_priority
            .iter_mut()
            .rev()
            .find_map(|queue| queue.pop_front())?;
        if is_refusal(&frame.envelope) {
            self.refusals_queued -= 1;
        }
        Some(frame)
    }

    fn push(&mut self, frame: Outgoing, priority: Priority) {
        if is_refusal(&frame.envelope) {
            self.refusals_queued += 1;
        }
        self.by_priority[priority as usize].push_back(frame);
    }

    fn withdraw_request(&mut self, request_id: u64) -> bool {
        for queue in &mut self.by_priority {
            let found = queue.iter().position(|frame| {
                matches!(frame.envelope, Envelope::Request { request_id: id, .. } if id == request_id)
            });
            if let Some(at) = found {
                queue.remove(at);
                return true;
            }
        }
        false
    }

    fn len(&self) -> usize {
        self.control.len() + self.by_priority.iter().map(VecDeque::len).sum::<usize>()
    }
}

struct PendingRpc {
    /// Our request's route: a NoRoute response does not repeat it.
    route: Route,
    result: RefCell<Option<Result<Buf, RpcError>>>,
    waker: Cell<Option<Waker>>,
}

impl PendingRpc {
    fn complete(&self, result: Result<Buf, RpcError>) {
        *self.result.borrow_mut() = Some(result);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// What every connection of a transport shares with it.
pub(super) struct ConnShared {
    pub config: Rc<TcpConfig>,
    pub stats: Rc<TcpStats>,
    pub traffic: Rc<PeerTraffic>,
    pub conn_waiters: Rc<Waiters>,
}

pub(super) struct Conn {
    pub id: ConnId,
    pub peer: NodeId,
    config: Rc<TcpConfig>,
    stats: Rc<TcpStats>,
    traffic: Rc<PeerTraffic>,
    socket: TlsSocket,
    /// The connection's one encoder; only the writer uses it.
    encoder: RefCell<Encoder>,
    queues: RefCell<SendQueues>,
    writer_waker: Cell<Option<Waker>>,
    /// Our requests awaiting a response; at most `requests_in_flight_max`.
    pending: RefCell<HashMap<u64, Rc<PendingRpc>>>,
    next_request_id: Cell<u64>,
    /// Handlers running for the peer's requests, by request id; at most
    /// `requests_in_flight_max`. A handler leaves when it has answered (or failed), when the
    /// peer cancels it, or when the connection closes.
    inbound: Rc<TaskSet<u64>>,
    /// Highest request id the peer sent; ids must grow, and Goaway reports this one.
    last_peer_request_id: Cell<u64>,
    /// Set by `close`; the writer sends it as the connection's last frame.
    goaway: RefCell<Option<Envelope>>,
    close_reason: RefCell<Option<Closing>>,
    closed: Cell<bool>,
    close_waker: Cell<Option<Waker>>,
    /// Whether the peer accepted the connection: from the start for the acceptor, from the
    /// first frame received for the dialer. Until then `peers()` omits it and RPCs wait.
    established: Cell<bool>,
    /// Woken when the connection becomes established (RPCs waiting for a connection).
    conn_waiters: Rc<Waiters>,
    /// Last sign that the peer is alive: bytes received, or a chunk of a large body written
    /// (the socket only takes more when the peer reads). The idle timeout runs from here.
    last_alive: Cell<Instant>,
    last_received: Cell<Instant>,
    /// The ping awaiting its pong: nonce and when it was queued.
    ping_outstanding: Cell<Option<(u64, Instant)>>,
    next_ping_nonce: Cell<u64>,
}

impl Conn {
    pub fn new(
        id: ConnId,
        peer: NodeId,
        socket: TlsSocket,
        shared: ConnShared,
        side: Side,
    ) -> Conn {
        let ConnShared {
            config,
            stats,
            traffic,
            conn_waiters,
        } = shared;
        let encoder = Encoder::new(config.codec_limits);
        Conn {
            id,
            peer,
            config,
            stats,
            traffic,
            socket,
            encoder: RefCell::new(encoder),
            queues: RefCell::default(),
            writer_waker: Cell::new(None),
            pending: RefCell::default(),
            next_request_id: Cell::new(1),
            inbound: TaskSet::new(),
            last_peer_request_id: Cell::new(0),
            goaway: RefCell::new(None),
            close_reason: RefCell::new(None),
            closed: Cell::new(false),
            close_waker: Cell::new(None),
            established: Cell::new(side == Side::Acceptor),
            conn_waiters,
            last_alive: Cell::new(Instant::now()),
            last_received: Cell::new(Instant::now()),
            ping_outstanding: Cell::new(None),
            next_ping_nonce: Cell::new(1),
        }
    }

    /// Open, and accepted by the peer.
    pub fn is_usable(&self) -> bool {
        self.established.get() && !self.closed.get()
    }

    /// Frames queued for the writer, RPCs awaiting responses, handlers running.
    pub fn depths(&self) -> (usize, usize, usize) {
        (
            self.queues.borrow().len(),
            self.pending.borrow().len(),
            self.inbound.len(),
        )
    }

    /// Runs the connection until it ends; returns why it ended.
    pub async fn run(self: Rc<Self>, router: Rc<Router>) -> Closing {
        // Both sides speak first: the dialer learns that it was accepted, and each side gets
        // an RTT sample before any traffic.
        self.send_ping();
        let watch = async {
            let ended = or(
                or(self.read_loop(&router), self.keepalive_loop()),
                self.closed_signal(),
            )
            .await;
            self.close(ended);
        };
        let write = async {
            // After close the writer gets a bounded time to send the Goaway.
            let bounded_after_close = async {
                self.closed_signal().await;
                sleep(CLOSE_FLUSH_TIMEOUT).await;
                Err("timed out sending the goaway".to_string())
            };
            if let Err(error) = or(self.write_loop(), bounded_after_close).await {
                self.close(Closing::Quiet(error));
            }
        };
        zip(watch, write).await;
        let _ = or(async { self.socket.close().await }, async {
            sleep(CLOSE_FLUSH_TIMEOUT).await
        })
        .await;
        self.close_reason
            .borrow()
            .clone()
            .expect("close() ran before the loops ended")
    }

    /// Ends the connection: fails pending RPCs with `ConnectionClosed`, cancels running
    /// handlers, drops queued frames and, for a `Closing::Goaway`, has the writer send one.
    pub fn close(&self, closing: Closing) {
        if self.closed.replace(true) {
            return;
        }
        TcpStats::bump(&self.stats.connections_closed);
        if let Closing::Goaway { reason, message } = &closing {
            TcpStats::bump(&self.stats.goaways_sent);
            let message =
                wire::truncate_utf8(message, self.config.codec_limits.error_message_bytes_max);
            *self.goaway.borrow_mut() = Some(Envelope::Goaway {
                reason: *reason,
                last_request_id: self.last_peer_request_id.get(),
                message: message.to_string(),
            });
        }
        *self.close_reason.borrow_mut() = Some(closing);
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        for slot in pending.into_values() {
            slot.complete(Err(RpcError::ConnectionClosed));
        }
        self.inbound.cancel_all();
        *self.queues.borrow_mut() = SendQueues::default();
        self.wake_writer();
        if let Some(waker) = self.close_waker.take() {
            waker.wake();
        }
    }

    /// Sends one request and waits for its response; dropping the future cancels it.
    pub async fn rpc(
        self: &Rc<Self>,
        route: Route,
        priority: Priority,
        request: Buf,
    ) -> Result<Buf, RpcError> {
        self.check_body(request.len())?;
        if self.closed.get() {
            return Err(RpcError::ConnectionClosed);
        }
        let limit = self.config.requests_in_flight_max;
        if self.pending.borrow().len() >= limit {
            return Err(RpcError::TooManyInFlight { limit });
        }
        let request_id = self.next_request_id.get();
        self.next_request_id.set(request_id + 1);
        let slot = Rc::new(PendingRpc {
            route,
            result: RefCell::new(None),
            waker: Cell::new(None),
        });
        self.pending.borrow_mut().insert(request_id, slot.clone());
        let envelope = Envelope::Request {
            request_id,
            route,
            priority,
        };
        self.enqueue(envelope, request, priority);
        let mut guard = CancelOnDrop {
            conn: self,
            request_id,
            armed: true,
        };
        let result = poll_fn(|cx| match slot.result.borrow_mut().take() {
            Some(result) => Poll::Ready(result),
            None => {
                slot.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
        guard.armed = false;
        result
    }

    fn check_body(&self, size: usize) -> Result<(), RpcError> {
        let limit_bytes = self.config.message_bytes_max;
        if size as u64 > limit_bytes {
            return Err(RpcError::MessageTooLarge {
                size_bytes: size as u64,
                limit_bytes,
            });
        }
        Ok(())
    }

    fn enqueue(&self, envelope: Envelope, body: Buf, priority: Priority) {
        if self.closed.get() {
            return;
        }
        let frame = Outgoing { envelope, body };
        self.queues.borrow_mut().push(frame, priority);
        self.wake_writer();
    }

    fn enqueue_control(&self, envelope: Envelope) {
        if self.closed.get() {
            return;
        }
        let mut queues = self.queues.borrow_mut();
        if matches!(envelope, Envelope::Pong { .. }) {
            if queues.pongs_queued >= PONGS_QUEUED_MAX {
                TcpStats::bump(&self.stats.pongs_dropped);
                return;
            }
            queues.pongs_queued += 1;
        }
        queues.control.push_back(Outgoing {
            envelope,
            body: Buf::empty(),
        });
        drop(queues);
        self.wake_writer();
    }

    fn wake_writer(&self) {
        if let Some(waker) = self.writer_waker.take() {
            waker.wake();
        }
    }

    async fn closed_signal(&self) -> Closing {
        poll_fn(|cx| {
            if self.closed.get() {
                return Poll::Ready(Closing::Quiet("closed locally".into()));
            }
            self.close_waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    async fn read_loop(self: &Rc<Self>, router: &Rc<Router>) -> Closing {
        let mut reader = FrameReader::new(self.config.frame_limits(), self.config.codec_limits);
        loop {
            let n = match self.socket.read(reader.want()).await {
                Ok(0) if reader.is_idle() => return Closing::Quiet("peer closed".into()),
                Ok(0) => return Closing::Quiet("peer closed mid-frame".into()),
                Ok(n) => n,
                Err(error) => return Closing::Quiet(format!("read failed: {error}")),
            };
            let now = Instant::now();
            self.last_received.set(now);
            self.last_alive.set(now);
            match reader.advance(n) {
                Ok(None) => {}
                Ok(Some(frame)) => {
                    if !self.established.replace(true) {
                        self.conn_waiters.wake_all();
                    }
                    if let Err(closing) = self.on_frame(frame, router) {
                        return closing;
                    }
                }
                Err(error) => return self.on_decode_error(&error),
            }
            // A fast peer can keep the socket readable forever; let other tasks run.
            glommio::yield_if_needed().await;
        }
    }

    fn on_decode_error(&self, error: &DecodeError) -> Closing {
        self.stats.count_decode_error(error);
        Closing::goaway(
            GoawayReason::ProtocolError,
            format!("bad frame from the peer: {error}"),
        )
    }

    fn on_frame(self: &Rc<Self>, frame: Frame, router: &Rc<Router>) -> Result<(), Closing> {
        let body_bytes = frame.body.len() as u64;
        match frame.envelope {
            Envelope::Request {
                request_id,
                route,
                priority,
            } => {
                self.traffic.add_received(body_bytes);
                self.on_request(request_id, route, priority, frame.body, router)?;
            }
            Envelope::Response {
                request_id,
                status,
                error_message,
            } => {
                self.traffic.add_received(body_bytes);
                let slot = self.pending.borrow_mut().remove(&request_id);
                match slot {
                    Some(slot) => slot.complete(wire::response_result(
                        status,
                        &error_message,
                        slot.route,
                        Buf::from_vec(frame.body),
                    )),
                    // A response that crossed our Cancel, or a confused peer: either way
                    // nobody waits for it.
                    None => TcpStats::bump(&self.stats.responses_unknown_id),
                }
            }
            Envelope::Cancel { request_id } => {
                // An unknown id was already answered.
                self.inbound.cancel(request_id);
            }
            Envelope::Ping { nonce } => self.enqueue_control(Envelope::Pong { nonce }),
            Envelope::Pong { nonce } => self.on_pong(nonce),
            Envelope::Goaway {
                reason,
                last_request_id,
                message,
            } => {
                TcpStats::bump(&self.stats.goaways_received);
                TcpStats::bump(&self.stats.goaways_received_by_reason[reason as usize]);
                return Err(Closing::Quiet(format!(
                    "peer sent goaway ({reason:?}, last request {last_request_id}): {message}"
                )));
            }
        }
        Ok(())
    }

    fn on_pong(&self, nonce: u64) {
        if let Some((expected, sent_at)) = self.ping_outstanding.get() {
            if expected == nonce {
                self.ping_outstanding.set(None);
                self.stats.record_rtt(sent_at.elapsed());
            }
        }
    }

    fn on_request(
        self: &Rc<Self>,
        request_id: u64,
        route: Route,
        priority: Priority,
        body: Vec<u8>,
        router: &Rc<Router>,
    ) -> Result<(), Closing> {
        if request_id <= self.last_peer_request_id.get() {
            TcpStats::bump(&self.stats.requests_out_of_order);
            return Err(Closing::goaway(
                GoawayReason::ProtocolError,
                format!("request id {request_id} does not grow"),
            ));
        }
        self.last_peer_request_id.set(request_id);
        if self.closed.get() {
            // Closed by an earlier frame's handler: nobody would answer or cancel this one.
            return Ok(());
        }
        let limit = self.config.requests_in_flight_max;
        if self.inbound.len() >= limit {
            TcpStats::bump(&self.stats.requests_refused_in_flight);
            if self.queues.borrow().refusals_queued >= REFUSALS_QUEUED_MAX {
                return Err(Closing::goaway(
                    GoawayReason::ProtocolError,
                    format!(
                        "{REFUSALS_QUEUED_MAX} refusals unread and more requests over the limit"
                    ),
                ));
            }
            self.respond(
                request_id,
                priority,
                Err(RpcError::TooManyInFlight { limit }),
            );
            return Ok(());
        }
        let ctx = RequestContext {
            peer: self.peer,
            conn: self.id,
            route,
            priority,
        };
        let conn = self.clone();
        let router = router.clone();
        // The handler may finish inside `spawn` (glommio polls a new task at once); the set
        // frees its slot either way.
        self.inbound.spawn(request_id, async move {
            let mut result = router.dispatch(ctx, Buf::from_vec(body)).await;
            if let Ok(response) = &result {
                if let Err(error) = conn.check_body(response.len()) {
                    result = Err(error);
                }
            }
            conn.respond(request_id, priority, result);
        });
        Ok(())
    }

    fn respond(&self, request_id: u64, priority: Priority, result: Result<Buf, RpcError>) {
        let error_message_bytes_max = self.config.codec_limits.error_message_bytes_max;
        let (envelope, body) = Envelope::response(request_id, result, error_message_bytes_max);
        self.enqueue(envelope, body, priority);
    }

    /// Writes queued frames until the connection closes, then the Goaway if `close` left one.
    async fn write_loop(&self) -> Result<(), String> {
        let mut head = Vec::with_capacity(wire::HEAD_BYTES_TYPICAL + COALESCE_BODY_BYTES_MAX);
        loop {
            let next = or(self.next_frame(), async {
                self.socket.output_pending().await;
                Next::Flush
            })
            .await;
            let result = match next {
                Next::Frame(frame) => self.write_frame(&frame, &mut head).await,
                Next::Flush => self.socket.flush().await,
                Next::Closed => break,
            };
            result.map_err(|error| format!("write failed: {error}"))?;
        }
        let goaway = self.goaway.borrow_mut().take();
        if let Some(envelope) = goaway {
            let frame = Outgoing {
                envelope,
                body: Buf::empty(),
            };
            self.write_frame(&frame, &mut head)
                .await
                .map_err(|error| format!("goaway write failed: {error}"))?;
        }
        Ok(())
    }

    /// Encodes the frame's head with the connection's encoder, then sends head and body. A body
    /// above [`COALESCE_BODY_BYTES_MAX`] is encrypted straight from its `Buf`, chunk by chunk
    /// (BoringSSL writes the ciphertext into the socket's output buffer; no plaintext copy).
    async fn write_frame(&self, frame: &Outgoing, head: &mut Vec<u8>) -> std::io::Result<()> {
        head.clear();
        let encoded = wire::encode_head(
            &mut self.encoder.borrow_mut(),
            &frame.envelope,
            frame.body.len() as u64,
            head,
        );
        if let Err(error) = encoded {
            self.on_encode_error(&frame.envelope, error);
            return Ok(());
        }
        self.count_sent(frame);
        if frame.body.len() <= COALESCE_BODY_BYTES_MAX {
            head.extend_from_slice(&frame.body);
            return self.socket.write(head).await;
        }
        self.socket.write(head).await?;
        for chunk in frame.body.chunks(self.config.write_chunk_bytes) {
            if self.closed.get() {
                // Closing mid-frame: the rest of the body is not worth the wait, and no frame
                // (not even a Goaway) can follow a cut one.
                *self.goaway.borrow_mut() = None;
                return Err(std::io::Error::other("closed while sending a body"));
            }
            self.socket.write(chunk).await?;
            self.last_alive.set(Instant::now());
            glommio::yield_if_needed().await;
        }
        Ok(())
    }

    fn count_sent(&self, frame: &Outgoing) {
        if matches!(
            frame.envelope,
            Envelope::Request { .. } | Envelope::Response { .. }
        ) {
            self.traffic.add_sent(frame.body.len() as u64);
        }
    }

    /// Our own envelope did not encode: a bug or inconsistent limits, never the peer's fault.
    /// The RPC it belonged to fails locally; nothing goes on the wire.
    fn on_encode_error(&self, envelope: &Envelope, error: icn_codecs::EncodeError) {
        TcpStats::bump(&self.stats.frames_unencodable);
        if let Envelope::Request { request_id, .. } = envelope {
            if let Some(slot) = self.pending.borrow_mut().remove(request_id) {
                slot.complete(Err(RpcError::Local(format!(
                    "cannot encode request: {error}"
                ))));
            }
        }
    }

    async fn next_frame(&self) -> Next {
        poll_fn(|cx| {
            if self.closed.get() {
                return Poll::Ready(Next::Closed);
            }
            if let Some(frame) = self.queues.borrow_mut().pop() {
                return Poll::Ready(Next::Frame(frame));
            }
            self.writer_waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    /// Pings a connection that has received nothing for `keepalive_interval`; ends one that
    /// showed no sign of life for `idle_timeout`.
    async fn keepalive_loop(&self) -> Closing {
        loop {
            sleep(self.config.keepalive_interval).await;
            let idle_timeout = self.config.idle_timeout;
            if self.last_alive.get().elapsed() > idle_timeout {
                return Closing::goaway(
                    GoawayReason::Idle,
                    format!("nothing received for {idle_timeout:?}"),
                );
            }
            if self.last_received.get().elapsed() >= self.config.keepalive_interval {
                self.send_ping();
            }
        }
    }

    fn send_ping(&self) {
        let nonce = self.next_ping_nonce.get();
        self.next_ping_nonce.set(nonce + 1);
        self.ping_outstanding.set(Some((nonce, Instant::now())));
        self.enqueue_control(Envelope::Ping { nonce });
    }
}

/// An Overloaded response: what a request over the in-flight limit gets.
fn is_refusal(envelope: &Envelope) -> bool {
    matches!(
        envelope,
        Envelope::Response {
            status: RpcStatus::Overloaded,
            ..
        }
    )
}

enum Next {
    Frame(Outgoing),
    Flush,
    Closed,
}

/// Withdraws or cancels an RPC whose future was dropped before the response arrived.
struct CancelOnDrop<'a> {
    conn: &'a Rc<Conn>,
    request_id: u64,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let conn = self.conn;
        let pending = conn.pending.borrow_mut().remove(&self.request_id);
        // Not pending any more: answered (the result just was not taken) or failed locally;
        // either way the peer holds nothing for it.
        if pending.is_none() || conn.closed.get() {
            return;
        }
        // Still queued: the peer never saw it, so nothing needs cancelling there.
        if !conn.queues.borrow_mut().withdraw_request(self.request_id) {
            conn.enqueue_control(Envelope::Cancel {
                request_id: self.request_id,
            });
        }
    }
}
