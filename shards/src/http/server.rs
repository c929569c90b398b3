//! The glommio driver: one SO_REUSEPORT listener per shard, the accept loop with the total and
//! per-IP connection limits, protocol selection (HTTP/1.1, or HTTP/2 with prior knowledge),
//! and the per-connection race between hyper and the header/idle watchdog.
//!
//! Fairness between connections comes from the executor: every connection is its own task,
//! hyper yields after each read and write, and HTTP/2 streams run as tasks of their own.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{future, AsyncRead, AsyncReadExt, AsyncWrite};
use glommio::net::{TcpListener, TcpStream};
use glommio::{Latency, Shares};
use hyper::server::conn::{http1, http2};
use icn_tuning::HttpTuning;

use super::io::{watchdog, ConnActivity, Expiry, HyperIo, LocalExec, SharedStream};
use super::metrics::Rejection;
use super::service::{handle, HttpDeps, ServerState};
use super::tls;

/// The first byte of a TLS connection (a handshake record): such connections get TLS when the
/// server has a certificate, all others are plaintext.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Scheduler shares of the connections' task queue (glommio's default queue has 1000) ...
const CONNECTION_SHARES: usize = 1000;
/// ... and of the admitted requests' queue, which also asks to run within
/// [`ADMITTED_LATENCY`] of becoming runnable.
const ADMITTED_SHARES: usize = 1000;
const ADMITTED_LATENCY: Duration = Duration::from_millis(1);

/// HTTP/2 streams a client may reset before the server has taken them up (rapid reset,
/// CVE-2023-44487): one more ends the connection with GOAWAY ENHANCE_YOUR_CALM. hyper's own
/// default, set here so that no change of defaults can lift the guard.
const H2_PENDING_RESETS_MAX: usize = 20;
/// HTTP/2 streams the server may reset for the client's protocol errors before it ends the
/// connection (hyper's default, pinned for the same reason).
const H2_ERROR_RESETS_MAX: usize = 1024;

/// The HTTP/2 connection preface a client with prior knowledge (h2c) starts with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Binds this shard's listener. glommio sets SO_REUSEPORT, so every shard binds the same
/// address and the kernel spreads connections over them.
pub fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).map_err(io::Error::from)
}

/// A running server on one shard; dropping it stops accepting (open connections finish their
/// current requests and end at their idle timeout).
pub struct HttpServer {
    local_addr: SocketAddr,
    state: Rc<ServerState>,
    _accept: glommio::Task<()>,
}

impl HttpServer {
    /// Binds `addr` on the current shard and starts accepting.
    pub fn start(addr: SocketAddr, tuning: HttpTuning, deps: HttpDeps) -> io::Result<HttpServer> {
        let listener = bind_listener(addr)?;
        let local_addr = listener.local_addr().map_err(io::Error::from)?;
        let state = ServerState::new(tuning, deps);
        let executor = glommio::executor();
        // Connections (reading heads, answering refusals) and admitted requests get equal
        // shares, and admitted requests ask for the executor within a millisecond of becoming
        // runnable, so a flood of refused requests cannot starve admitted ones or the node's
        // other work (gossip, consensus).
        let connections = executor.create_task_queue(
            Shares::Static(CONNECTION_SHARES),
            Latency::NotImportant,
            "icn-http-connections",
        );
        let admitted = executor.create_task_queue(
            Shares::Static(ADMITTED_SHARES),
            Latency::Matters(ADMITTED_LATENCY),
            "icn-http-admitted",
        );
        state.admitted_queue.set(Some(admitted));
        let accept = glommio::spawn_local_into(accept_loop(listener, state.clone()), connections)
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(HttpServer {
            local_addr,
            state,
            _accept: accept,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn state(&self) -> &Rc<ServerState> {
        &self.state
    }
}

async fn accept_loop(listener: TcpListener, state: Rc<ServerState>) {
    let open = Rc::new(Cell::new(0usize));
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(_) => {
                // Out of descriptors or a transient error: back off instead of spinning.
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let metrics = state.metrics().clone();
        metrics.connections_accepted.inc();
        if open.get() >= state.tuning.connections_max {
            metrics.rejected(Rejection::ConnectionLimit);
            continue;
        }
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        let Some(ip_guard) = state.ip_limiter.acquire(peer.ip()) else {
            metrics.rejected(Rejection::PerIpLimit);
            continue;
        };
        let _ = stream.set_nodelay(true);
        open.set(open.get() + 1);
        metrics.connections_open.inc();
        metrics
            .client_addresses
            .set(i64::try_from(state.ip_limiter.addresses()).unwrap_or(i64::MAX));
        let state = state.clone();
        let open = open.clone();
        glommio::spawn_local(async move {
            serve_connection(state.clone(), stream).await;
            drop(ip_guard);
            open.set(open.get() - 1);
            let metrics = state.metrics();
            metrics.connections_open.dec();
            metrics
                .client_addresses
                .set(i64::try_from(state.ip_limiter.addresses()).unwrap_or(i64::MAX));
        })
        .detach();
    }
}

/// Serves one connection until the client closes it, hyper ends it, or a timeout cuts it.
async fn serve_connection(state: Rc<ServerState>, stream: TcpStream) {
    let tuning = state.tuning;
    let header = Duration::from_millis(tuning.header_read_timeout_ms);
    let idle = Duration::from_millis(tuning.idle_timeout_ms);
    let activity = ConnActivity::new(Instant::now());
    let shared = Rc::new(RefCell::new(stream));
    let serve = {
        let activity = activity.clone();
        let state = state.clone();
        let shared = shared.clone();
        async move {
            let mut stream = SharedStream(shared);
            let Ok(first) = read_some(&mut stream, &activity).await else {
                return;
            };
            if first[0] == TLS_HANDSHAKE_RECORD {
                if let Some(context) = &state.deps.tls {
                    let Ok(tls) = tls::accept(context, stream, &first).await else {
                        return;
                    };
                    let is_h2 = tls.alpn() == Some(b"h2");
                    let io = HyperIo::new(tls, Vec::new(), activity.clone()).coalescing(!is_h2);
                    serve_http(io, is_h2, state, activity).await;
                    return;
                }
            }
            let Ok(prefix) = sniff(&mut stream, &activity, first).await else {
                return;
            };
            let is_h2 = prefix == H2_PREFACE;
            let io = HyperIo::new(stream, prefix, activity.clone()).coalescing(!is_h2);
            serve_http(io, is_h2, state, activity).await;
        }
    };
    let expired = future::or(
        async {
            serve.await;
            None
        },
        async { Some(watchdog(activity.clone(), header, idle).await) },
    )
    .await;
    match expired {
        Some(Expiry::Header) => state.metrics().rejected(Rejection::HeaderTimeout),
        Some(Expiry::Idle) => state.metrics().rejected(Rejection::IdleTimeout),
        None => {
            // hyper is done and has dropped its handle (HTTP/2 stream tasks, if any are
            // left, keep theirs: then the socket simply closes when they end).
            if let Ok(stream) = Rc::try_unwrap(shared) {
                linger(stream.into_inner(), &tuning).await;
            }
        }
    }
}

/// Closes a connection gracefully: half-close, then read and discard what the client still
/// sends (a body we refused to read) until it closes too, within the linger bounds. Closing
/// with unread bytes would make the kernel send a reset, which can destroy the answer (a 413
/// or 429) before the client has read it.
async fn linger(stream: TcpStream, tuning: &HttpTuning) {
    if stream.shutdown(Shutdown::Write).await.is_err() {
        return;
    }
    let mut stream = stream;
    let drain = async {
        let mut buf = [0u8; 8 << 10];
        let mut drained = 0usize;
        while drained < tuning.linger_drain_bytes_max {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = super::service::timeout(Duration::from_millis(tuning.linger_timeout_ms), drain).await;
}

/// Runs hyper's HTTP/1.1 or HTTP/2 server over `io` until the connection ends.
async fn serve_http<S>(
    io: HyperIo<S>,
    is_h2: bool,
    state: Rc<ServerState>,
    activity: Rc<ConnActivity>,
) where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let tuning = state.tuning;
    if is_h2 {
        activity.set_multiplexed(Instant::now());
    }
    let serve = move |request| handle(state.clone(), activity.clone(), request);
    if is_h2 {
        // Boxed: hyper moves each stream's future into a task of its own, and `handle`'s state
        // machine is 2.7 KiB. HTTP/1.1 keeps one box per connection (hyper's `in_flight`).
        let service = hyper::service::service_fn(move |request| Box::pin(serve(request)));
        let mut builder = http2::Builder::new(LocalExec);
        builder
            .max_concurrent_streams(tuning.h2_streams_per_connection_max)
            .max_pending_accept_reset_streams(H2_PENDING_RESETS_MAX)
            .max_local_error_reset_streams(Some(H2_ERROR_RESETS_MAX))
            .max_header_list_size(u32::try_from(tuning.request_head_bytes_max).unwrap_or(u32::MAX));
        let _ = builder.serve_connection(io, service).await;
    } else {
        let mut builder = http1::Builder::new();
        builder
            .header_read_timeout(None)
            .max_buf_size(tuning.request_head_bytes_max.max(8 << 10))
            .keep_alive(true);
        let _ = builder
            .serve_connection(io, hyper::service::service_fn(serve))
            .await;
    }
}

/// The first bytes of a connection (at least one, at most the HTTP/2 preface's length).
async fn read_some(
    stream: &mut SharedStream<TcpStream>,
    activity: &ConnActivity,
) -> io::Result<Vec<u8>> {
    let mut buf = [0u8; 24];
    let n = stream.read(&mut buf).await?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    activity.note_read(Instant::now());
    Ok(buf[..n].to_vec())
}

/// Reads on for as long as the bytes match the HTTP/2 preface: the whole preface means h2c
/// with prior knowledge; the first byte that differs means HTTP/1.1. The bytes read are
/// replayed to hyper.
async fn sniff(
    stream: &mut SharedStream<TcpStream>,
    activity: &ConnActivity,
    mut prefix: Vec<u8>,
) -> io::Result<Vec<u8>> {
    let mut buf = [0u8; 24];
    while prefix.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&prefix) {
        let want = H2_PREFACE.len() - prefix.len();
        let n = stream.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        activity.note_read(Instant::now());
        prefix.extend_from_slice(&buf[..n]);
    }
    Ok(prefix)
}
