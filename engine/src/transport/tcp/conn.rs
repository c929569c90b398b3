//! One TLS connection to a peer: requests multiplexed by request id, in both directions.
//!
//! A connection runs three loops on its shard — reader, writer, keep-alive — until one of them
//! ends or somebody closes it; then every pending RPC fails with `ConnectionClosed` and every
//! handler still running for the peer is cancelled.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::future::or;
use glommio::timer::sleep;

use super::tls_io::TlsSocket;
use super::wire::{self, Envelope, Frame, FrameKind, FrameReader};
use super::{TcpConfig, TcpStats};
use crate::transport::{ConnId, NodeId, Priority, RequestContext, Route, Router, RpcError};
use crate::Buf;

/// Control frames (pongs) queued and not yet sent. A peer that pings faster than we can answer
/// gets its extra pings ignored instead of growing the queue. Worst-case memory: 64 frame heads.
const CONTROL_FRAMES_QUEUED_MAX: usize = 64;

/// Bodies at most this long are sent in the same TLS record as their frame head (one small copy
/// instead of a second record and syscall).
const COALESCE_BODY_BYTES_MAX: usize = 4 << 10;

/// How long closing may wait for close_notify to reach a peer that stopped reading.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

struct Outgoing {
    head: [u8; wire::FRAME_HEADER_BYTES + wire::ENVELOPE_BYTES],
    body: Buf,
    /// Set for requests, so that a cancelled request still queued can be withdrawn.
    request_id: Option<u64>,
}

/// Frames waiting for the writer, one queue per priority (highest served first).
#[derive(Default)]
struct SendQueues {
    by_priority: [VecDeque<Outgoing>; 3],
}

impl SendQueues {
    fn pop(&mut self) -> Option<Outgoing> {
        self.by_priority
            .iter_mut()
            .rev()
            .find_map(|queue| queue.pop_front())
    }

    fn withdraw_request(&mut self, request_id: u64) -> bool {
        for queue in &mut self.by_priority {
            if let Some(at) = queue.iter().position(|f| f.request_id == Some(request_id)) {
                queue.remove(at);
                return true;
            }
        }
        false
    }
}

#[derive(Default)]
struct PendingRpc {
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

pub(super) struct Conn {
    pub id: ConnId,
    pub peer: NodeId,
    config: Rc<TcpConfig>,
    stats: Rc<TcpStats>,
    socket: TlsSocket,
    queues: RefCell<SendQueues>,
    writer_waker: Cell<Option<Waker>>,
    /// Our requests awaiting a response; at most `requests_in_flight_max`.
    pending: RefCell<HashMap<u64, Rc<PendingRpc>>>,
    next_request_id: Cell<u64>,
    /// Handlers running for the peer's requests; at most `requests_in_flight_max`.
    inbound: RefCell<HashMap<u64, glommio::Task<()>>>,
    closed: Cell<bool>,
    close_waker: Cell<Option<Waker>>,
    last_received: Cell<Instant>,
}

impl Conn {
    pub fn new(
        id: ConnId,
        peer: NodeId,
        socket: TlsSocket,
        config: Rc<TcpConfig>,
        stats: Rc<TcpStats>,
    ) -> Conn {
        Conn {
            id,
            peer,
            config,
            stats,
            socket,
            queues: RefCell::default(),
            writer_waker: Cell::new(None),
            pending: RefCell::default(),
            next_request_id: Cell::new(1),
            inbound: RefCell::default(),
            closed: Cell::new(false),
            close_waker: Cell::new(None),
            last_received: Cell::new(Instant::now()),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Runs the connection until it ends; returns why it ended.
    pub async fn run(self: Rc<Self>, router: Rc<Router>) -> String {
        let reason = or(
            or(self.read_loop(&router), self.write_loop()),
            or(self.keepalive_loop(), self.closed_signal()),
        )
        .await;
        self.close();
        let _ = or(async { self.socket.close().await }, async {
            sleep(CLOSE_FLUSH_TIMEOUT).await
        })
        .await;
        reason
    }

    /// Ends the connection: fails pending RPCs, cancels running handlers, stops the loops.
    pub fn close(&self) {
        if self.closed.replace(true) {
            return;
        }
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        for slot in pending.into_values() {
            slot.complete(Err(RpcError::ConnectionClosed));
        }
        let handlers = std::mem::take(&mut *self.inbound.borrow_mut());
        drop(handlers);
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
        let slot = Rc::new(PendingRpc::default());
        self.pending.borrow_mut().insert(request_id, slot.clone());
        let envelope = Envelope::request(request_id, route, priority);
        self.enqueue(FrameKind::Request, &envelope, request, Some(request_id));
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

    fn enqueue(&self, kind: FrameKind, envelope: &Envelope, body: Buf, request_id: Option<u64>) {
        if self.closed.get() {
            return;
        }
        let head = wire::encode_head(kind, envelope, body.len() as u64);
        let queue = envelope.priority as usize;
        self.queues.borrow_mut().by_priority[queue].push_back(Outgoing {
            head,
            body,
            request_id,
        });
        self.wake_writer();
    }

    fn wake_writer(&self) {
        if let Some(waker) = self.writer_waker.take() {
            waker.wake();
        }
    }

    async fn closed_signal(&self) -> String {
        poll_fn(|cx| {
            if self.closed.get() {
                return Poll::Ready("closed locally".to_string());
            }
            self.close_waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    async fn read_loop(self: &Rc<Self>, router: &Rc<Router>) -> String {
        let mut reader = FrameReader::new(self.config.message_bytes_max);
        loop {
            let n = match self.socket.read(reader.want()).await {
                Ok(0) if reader.is_idle() => return "peer closed the connection".into(),
                Ok(0) => return "peer closed the connection mid-frame".into(),
                Ok(n) => n,
                Err(error) => return format!("read failed: {error}"),
            };
            self.last_received.set(Instant::now());
            match reader.advance(n) {
                Ok(None) => {}
                Ok(Some(frame)) => {
                    if let Err(reason) = self.on_frame(frame, router) {
                        return reason;
                    }
                }
                Err(error) => {
                    self.stats.count_wire_error(&error);
                    return format!("peer sent a bad frame: {error}");
                }
            }
            // A fast peer can keep the socket readable forever; let other tasks run.
            glommio::yield_if_needed().await;
        }
    }

    fn on_frame(self: &Rc<Self>, frame: Frame, router: &Rc<Router>) -> Result<(), String> {
        let Frame {
            kind,
            envelope,
            body,
        } = frame;
        match kind {
            FrameKind::Request => self.on_request(envelope, body, router),
            FrameKind::Response => {
                let slot = self.pending.borrow_mut().remove(&envelope.request_id);
                // No slot: the RPC was cancelled after the response left the peer.
                if let Some(slot) = slot {
                    slot.complete(envelope.into_result(Buf::from_vec(body)));
                }
                Ok(())
            }
            FrameKind::Cancel => {
                // Dropping the task cancels the handler.
                drop(self.inbound.borrow_mut().remove(&envelope.request_id));
                Ok(())
            }
            FrameKind::Ping => {
                if self.queues.borrow().by_priority[Priority::High as usize].len()
                    < CONTROL_FRAMES_QUEUED_MAX
                {
                    self.enqueue(FrameKind::Pong, &envelope, Buf::empty(), None);
                }
                Ok(())
            }
            FrameKind::Pong => Ok(()),
        }
    }

    fn on_request(
        self: &Rc<Self>,
        envelope: Envelope,
        body: Vec<u8>,
        router: &Rc<Router>,
    ) -> Result<(), String> {
        let request_id = envelope.request_id;
        let limit = self.config.requests_in_flight_max;
        if self.inbound.borrow().contains_key(&request_id) {
            return Err(format!(
                "peer reused request id {request_id} while it was in flight"
            ));
        }
        if self.inbound.borrow().len() >= limit {
            self.stats
                .requests_refused_in_flight
                .set(self.stats.requests_refused_in_flight.get() + 1);
            let (reply, body) =
                Envelope::response(&envelope, Err(RpcError::TooManyInFlight { limit }));
            self.enqueue(FrameKind::Response, &reply, body, None);
            return Ok(());
        }
        let ctx = RequestContext {
            peer: self.peer,
            conn: self.id,
            route: envelope.route,
            priority: envelope.priority,
        };
        let conn = self.clone();
        let router = router.clone();
        let task = glommio::spawn_local(async move {
            let mut result = router.dispatch(ctx, Buf::from_vec(body)).await;
            if let Ok(response) = &result {
                if let Err(error) = conn.check_body(response.len()) {
                    result = Err(error);
                }
            }
            let (reply, body) = Envelope::response(&envelope, result);
            conn.enqueue(FrameKind::Response, &reply, body, None);
            // Detach rather than drop our own handle: dropping it would cancel this task.
            if let Some(task) = conn.inbound.borrow_mut().remove(&request_id) {
                task.detach();
            }
        });
        self.inbound.borrow_mut().insert(request_id, task);
        Ok(())
    }

    async fn write_loop(&self) -> String {
        let chunk_bytes = self.config.write_chunk_bytes;
        let mut coalesced = Vec::with_capacity(
            wire::FRAME_HEADER_BYTES + wire::ENVELOPE_BYTES + COALESCE_BODY_BYTES_MAX,
        );
        loop {
            let next = or(self.next_frame(), async {
                self.socket.output_pending().await;
                None
            })
            .await;
            let result = match next {
                None => self.socket.flush().await,
                Some(frame) if frame.body.len() <= COALESCE_BODY_BYTES_MAX => {
                    coalesced.clear();
                    coalesced.extend_from_slice(&frame.head);
                    coalesced.extend_from_slice(&frame.body);
                    self.socket.write(&coalesced).await
                }
                Some(frame) => self.write_large(&frame, chunk_bytes).await,
            };
            if let Err(error) = result {
                return format!("write failed: {error}");
            }
            if self.closed.get() {
                return "closed locally".into();
            }
        }
    }

    async fn write_large(&self, frame: &Outgoing, chunk_bytes: usize) -> std::io::Result<()> {
        self.socket.write(&frame.head).await?;
        for chunk in frame.body.chunks(chunk_bytes) {
            self.socket.write(chunk).await?;
            glommio::yield_if_needed().await;
        }
        Ok(())
    }

    async fn next_frame(&self) -> Option<Outgoing> {
        poll_fn(|cx| {
            if let Some(frame) = self.queues.borrow_mut().pop() {
                return Poll::Ready(Some(frame));
            }
            if self.closed.get() {
                return Poll::Ready(None);
            }
            self.writer_waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    async fn keepalive_loop(&self) -> String {
        loop {
            sleep(self.config.keepalive_interval).await;
            if self.last_received.get().elapsed() > self.config.idle_timeout {
                return format!("nothing received for {:?}", self.config.idle_timeout);
            }
            self.enqueue(FrameKind::Ping, &Envelope::control(0), Buf::empty(), None);
        }
    }
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
        conn.pending.borrow_mut().remove(&self.request_id);
        if conn.closed.get() {
            return;
        }
        // Still queued: the peer never saw it, so nothing needs cancelling there.
        if !conn.queues.borrow_mut().withdraw_request(self.request_id) {
            conn.enqueue(
                FrameKind::Cancel,
                &Envelope::control(self.request_id),
                Buf::empty(),
                None,
            );
        }
    }
}
