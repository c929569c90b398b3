//! A minimal HTTP/1.1 admin server on a shard: `GET /metrics` and `GET /health`, nothing else.
//!
//! It reads only the request head (request line and headers up to CRLFCRLF), answers once and
//! closes the connection, so there is no keep-alive state, no body parsing and nothing to grow.
//! Every resource is bounded by [`AdminConfig`]: head size, open connections, time to receive the
//! head, time to send the answer, and the lingering drain before close. A malformed request gets
//! 400 and a close; nothing a client sends can panic it, and all I/O is async on the executor.

use std::cell::Cell;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use crate::transport::NodeId;

/// Bounds of the admin server. Each connection holds at most one head buffer
/// (`request_head_bytes_max`), so worst-case memory is about
/// `connections_max * (request_head_bytes_max + response size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    /// Largest request head (request line + headers + CRLFCRLF) accepted; a longer one gets
    /// 431 and a close. 8 KiB is what common servers allow and far more than a scraper sends.
    pub request_head_bytes_max: usize,
    /// Connections served at once; one more is closed at accept without an answer (answering
    /// would itself take a buffer and a write). Scrapers and health checks need a handful.
    pub connections_max: usize,
    /// Time for the whole request head to arrive, in milliseconds, counted from accept, so a
    /// client trickling bytes (slowloris) cannot hold a connection slot longer than this.
    pub request_read_timeout_ms: u64,
    /// Time to send the answer, in milliseconds; a client that does not read is dropped.
    pub response_write_timeout_ms: u64,
    /// After answering, unread request bytes (an oversized head, a body) are drained before the
    /// close, so the kernel does not reset the connection and destroy the answer in flight.
    /// At most this many bytes are drained.
    pub linger_drain_bytes_max: usize,
    /// ... and for at most this many milliseconds.
    pub linger_timeout_ms: u64,
}

impl AdminConfig {
    pub const REQUEST_HEAD_BYTES_MAX_DEFAULT: usize = 8 << 10;
    pub const CONNECTIONS_MAX_DEFAULT: usize = 64;
    pub const REQUEST_READ_TIMEOUT_MS_DEFAULT: u64 = 5_000;
    pub const RESPONSE_WRITE_TIMEOUT_MS_DEFAULT: u64 = 10_000;
    pub const LINGER_DRAIN_BYTES_MAX_DEFAULT: usize = 64 << 10;
    pub const LINGER_TIMEOUT_MS_DEFAULT: u64 = 1_000;
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            request_head_bytes_max: Self::REQUEST_HEAD_BYTES_MAX_DEFAULT,
            connections_max: Self::CONNECTIONS_MAX_DEFAULT,
            request_read_timeout_ms: Self::REQUEST_READ_TIMEOUT_MS_DEFAULT,
            response_write_timeout_ms: Self::RESPONSE_WRITE_TIMEOUT_MS_DEFAULT,
            linger_drain_bytes_max: Self::LINGER_DRAIN_BYTES_MAX_DEFAULT,
            linger_timeout_ms: Self::LINGER_TIMEOUT_MS_DEFAULT,
        }
    }
}

/// What `/health` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    pub node_id: NodeId,
    pub uptime: Duration,
}

/// Produces the answers; called on the server's shard, once per request.
#[derive(Clone)]
pub struct AdminHandlers {
    /// Prometheus text (normally: publish this shard, then `MetricsCollector::render`).
    pub metrics: Rc<dyn Fn() -> String>,
    pub health: Rc<dyn Fn() -> Health>,
}

/// Counters of the server itself (read by tests and, later, exported as metrics).
#[derive(Debug, Default)]
pub struct AdminStats {
    pub connections_accepted: Cell<u64>,
    pub connections_refused_over_limit: Cell<u64>,
    pub requests_answered: Cell<u64>,
    pub requests_bad: Cell<u64>,
}

/// Back-off after a failed accept (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_BACKOFF_MS: u64 = 10;
/// Read size while draining before close.
const DRAIN_CHUNK_BYTES: usize = 4 << 10;

pub struct AdminServer {
    listener: TcpListener,
    config: AdminConfig,
    handlers: AdminHandlers,
    active_connections: Rc<Cell<usize>>,
    stats: Rc<AdminStats>,
}

impl AdminServer {
    /// Binds on the current glommio executor (use port 0 for an ephemeral port).
    pub fn bind(
        addr: SocketAddr,
        config: AdminConfig,
        handlers: AdminHandlers,
    ) -> io::Result<AdminServer> {
        let listener = TcpListener::bind(addr)?;
        let active_connections = Rc::new(Cell::new(0));
        let stats = Rc::new(AdminStats::default());
        Ok(AdminServer {
            listener,
            config,
            handlers,
            active_connections,
            stats,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    pub fn stats(&self) -> Rc<AdminStats> {
        self.stats.clone()
    }

    /// Accepts until the task running it is dropped; each connection is its own task.
    pub async fn run(self) {
        loop {
            let stream = match self.listener.accept().await {
                Ok(stream) => stream,
                Err(_) => {
                    glommio::timer::sleep(Duration::from_millis(ACCEPT_ERROR_BACKOFF_MS)).await;
                    continue;
                }
            };
            self.admit(stream);
        }
    }

    fn admit(&self, stream: TcpStream) {
        if self.active_connections.get() >= self.config.connections_max {
            bump(&self.stats.connections_refused_over_limit);
            drop(stream);
            return;
        }
        bump(&self.stats.connections_accepted);
        let slot = ConnectionSlot::take(&self.active_connections);
        let (config, handlers, stats) = (self.config, self.handlers.clone(), self.stats.clone());
        glommio::spawn_local(async move {
            let _slot = slot;
            serve_connection(stream, config, &handlers, &stats).await;
        })
        .detach();
    }
}

/// Holds one of `connections_max` slots; released however the connection task ends.
struct ConnectionSlot(Rc<Cell<usize>>);

impl ConnectionSlot {
    fn take(active: &Rc<Cell<usize>>) -> ConnectionSlot {
        active.set(active.get() + 1);
        ConnectionSlot(active.clone())
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

fn bump(counter: &Cell<u64>) {
    counter.set(counter.get() + 1);
}

async fn serve_connection(
    mut stream: TcpStream,
    config: AdminConfig,
    handlers: &AdminHandlers,
    stats: &AdminStats,
) {
    let read_timeout = Duration::from_millis(config.request_read_timeout_ms);
    let head = glommio::timer::timeout(read_timeout, async {
        Ok(read_head(&mut stream, config.request_head_bytes_max).await)
    })
    .await;
    let response = match head {
        Ok(Ok(head)) => answer(&head, handlers),
        Ok(Err(HeadReadError::ClosedBeforeAnyByte)) | Ok(Err(HeadReadError::Io)) => return,
        Ok(Err(HeadReadError::ClosedMidHead)) => Response::error(400, "Bad Request"),
        Ok(Err(HeadReadError::TooLarge)) => Response::error(431, "Request Header Fields Too Large"),
        Err(_timed_out) => Response::error(408, "Request Timeout"),
    };
    if response.status >= 400 {
        bump(&stats.requests_bad);
    }
    let write_timeout = Duration::from_millis(config.response_write_timeout_ms);
    let written = glommio::timer::timeout(write_timeout, async {
        Ok(stream.write_all(&response.bytes).await)
    })
    .await;
    if matches!(written, Ok(Ok(()))) {
        bump(&stats.requests_answered);
        linger_close(&mut stream, config).await;
    }
}

#[derive(Debug, PartialEq, Eq)]
enum HeadReadError {
    ClosedBeforeAnyByte,
    ClosedMidHead,
    TooLarge,
    Io,
}

/// Reads until CRLFCRLF; returns the head (without anything the client sent after it).
async fn read_head(
    stream: &mut TcpStream,
    head_bytes_max: usize,
) -> Result<Vec<u8>, HeadReadError> {
    let mut buffer = vec![0u8; head_bytes_max];
    let mut filled = 0;
    loop {
        if filled == buffer.len() {
            return Err(HeadReadError::TooLarge);
        }
        let read = stream
            .read(&mut buffer[filled..])
            .await
            .map_err(|_| HeadReadError::Io)?;
        if read == 0 {
            return Err(match filled {
                0 => HeadReadError::ClosedBeforeAnyByte,
                _ => HeadReadError::ClosedMidHead,
            });
        }
        // The terminator may straddle two reads: look back 3 bytes.
        let search_from = filled.saturating_sub(3);
        filled += read;
        if let Some(end) = find_head_end(&buffer[search_from..filled]) {
            buffer.truncate(search_from + end);
            return Ok(buffer);
        }
    }
}

/// Length of the head including its CRLFCRLF, if the terminator is in `bytes`.
fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map(|start| start + 4)
}

/// Half-closes, then reads and discards what the client still sends, within bounds.
async fn linger_close(stream: &mut TcpStream, config: AdminConfig) {
    if stream.shutdown(Shutdown::Write).await.is_err() {
        return;
    }
    let linger = Duration::from_millis(config.linger_timeout_ms);
    let _ = glommio::timer::timeout(linger, async {
        let mut scratch = vec![0u8; DRAIN_CHUNK_BYTES];
        let mut drained = 0;
        while drained < config.linger_drain_bytes_max {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(read) => drained += read,
            }
        }
        Ok(())
    })
    .await;
}

/// The parts of a request head this server uses.
#[derive(Debug, PartialEq, Eq)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// The path without its query string.
    pub path: &'a str,
}

/// Why a head was refused; each maps to one status.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// 400: not an HTTP/1.x request head we can read.
    Malformed(&'static str),
    /// 505: well-formed, but not HTTP/1.0 or HTTP/1.1.
    VersionNotSupported,
}

/// Parses a request head ending in CRLFCRLF (as returned by the reader). Strict: CRLF line ends,
/// token method, origin-form target, header names that are tokens, values without control bytes,
/// exactly one Host header for HTTP/1.1 (RFC 9112 section 3.2).
pub fn parse_request_head(head: &[u8]) -> Result<RequestHead<'_>, HeadError> {
    if !head.ends_with(b"\r\n\r\n") {
        return Err(HeadError::Malformed("no CRLFCRLF"));
    }
    // Drop the empty line's CRLF and the last LF: every remaining line then ends in CR.
    let text = &head[..head.len() - 3];
    let mut lines = text
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r"));
    let request_line = lines
        .next()
        .flatten()
        .ok_or(HeadError::Malformed("bare LF"))?;
    let RequestLine {
        method,
        target,
        version,
    } = parse_request_line(request_line)?;
    let mut hosts = 0;
    for line in lines {
        let line = line.ok_or(HeadError::Malformed("bare LF"))?;
        if parse_header_line(line)?.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        }
    }
    if version == b"HTTP/1.1" && hosts != 1 {
        return Err(HeadError::Malformed("HTTP/1.1 needs exactly one Host"));
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or(target);
    // Both parts were checked to be ASCII.
    let method = std::str::from_utf8(method).map_err(|_| HeadError::Malformed("method"))?;
    let path = std::str::from_utf8(path).map_err(|_| HeadError::Malformed("target"))?;
    Ok(RequestHead { method, path })
}

/// The three parts of a request line, checked but still bytes.
struct RequestLine<'a> {
    method: &'a [u8],
    target: &'a [u8],
    version: &'a [u8],
}

fn parse_request_line(line: &[u8]) -> Result<RequestLine<'_>, HeadError> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed(
            "request line must be METHOD SP TARGET SP VERSION",
        ));
    };
    if method.is_empty() || !method.iter().all(|&b| is_token_byte(b)) {
        return Err(HeadError::Malformed("method is not a token"));
    }
    let visible = |b: &u8| (0x21..=0x7e).contains(b);
    if target.first() != Some(&b'/') || !target.iter().all(visible) {
        return Err(HeadError::Malformed("target is not origin-form"));
    }
    match version {
        b"HTTP/1.1" | b"HTTP/1.0" => Ok(RequestLine {
            method,
            target,
            version,
        }),
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            Err(HeadError::VersionNotSupported)
        }
        _ => Err(HeadError::Malformed("version")),
    }
}

/// Checks `name: value` and returns the name.
fn parse_header_line(line: &[u8]) -> Result<&[u8], HeadError> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(HeadError::Malformed("header without colon"))?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    // No whitespace before the colon (RFC 9112 section 5.1), no obs-fold (names are tokens).
    if name.is_empty() || !name.iter().all(|&b| is_token_byte(b)) {
        return Err(HeadError::Malformed("header name is not a token"));
    }
    let allowed = |b: &u8| *b == b'\t' || (*b >= 0x20 && *b != 0x7f);
    if !value.iter().all(allowed) {
        return Err(HeadError::Malformed("control byte in header value"));
    }
    Ok(name)
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A complete HTTP/1.1 answer, ready to write.
struct Response {
    status: u16,
    bytes: Vec<u8>,
}

const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";
const JSON_CONTENT_TYPE: &str = "application/json";

impl Response {
    fn new(status: u16, reason: &str, content_type: &str, body: &str, with_body: bool) -> Response {
        let mut bytes = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        if status == 405 {
            bytes.push_str("Allow: GET, HEAD\r\n");
        }
        bytes.push_str("\r\n");
        if with_body {
            bytes.push_str(body);
        }
        Response {
            status,
            bytes: bytes.into_bytes(),
        }
    }

    fn error(status: u16, reason: &str) -> Response {
        let body = format!("{}\n", reason.to_ascii_lowercase());
        Response::new(status, reason, TEXT_CONTENT_TYPE, &body, true)
    }
}

fn answer(head: &[u8], handlers: &AdminHandlers) -> Response {
    let request = match parse_request_head(head) {
        Ok(request) => request,
        Err(HeadError::Malformed(_)) => return Response::error(400, "Bad Request"),
        Err(HeadError::VersionNotSupported) => {
            return Response::error(505, "HTTP Version Not Supported")
        }
    };
    let with_body = request.method != "HEAD";
    let read_only = matches!(request.method, "GET" | "HEAD");
    match (request.path, read_only) {
        ("/metrics", true) => {
            let body = (handlers.metrics)();
            Response::new(200, "OK", METRICS_CONTENT_TYPE, &body, with_body)
        }
        ("/health", true) => {
            let body = health_json(&(handlers.health)());
            Response::new(200, "OK", JSON_CONTENT_TYPE, &body, with_body)
        }
        ("/metrics" | "/health", false) => Response::error(405, "Method Not Allowed"),
        _ => Response::error(404, "Not Found"),
    }
}

/// The node id is hex, so no JSON escaping is needed.
fn health_json(health: &Health) -> String {
    format!(
        "{{\"status\":\"ok\",\"node_id\":\"{}\",\"uptime_s\":{}}}\n",
        health.node_id.to_hex(),
        health.uptime.as_secs()
    )
}

#[cfg(test)]
mod tests;
