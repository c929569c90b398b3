use std::io::{Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use super::*;
use crate::metrics::{
    Aggregation, LabelSpec, MetricsCollector, MetricsConfig, MetricsSchemaBuilder, ShardMetrics,
};

#[test]
fn request_heads_parse_strictly() {
    let ok = parse_request_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n");
    assert_eq!(
        ok,
        Ok(RequestHead {
            method: "GET",
            path: "/metrics"
        })
    );
    let old = parse_request_head(b"HEAD /health HTTP/1.0\r\n\r\n");
    assert_eq!(
        old,
        Ok(RequestHead {
            method: "HEAD",
            path: "/health"
        })
    );
    assert_eq!(
        parse_request_head(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
        Err(HeadError::VersionNotSupported)
    );
    let malformed: [&[u8]; 13] = [
        b"GET /metrics HTTP/1.1\r\n\r\n", // no Host
        b"GET /metrics HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET  /metrics HTTP/1.1\r\nHost: a\r\n\r\n", // double space
        b"GET metrics HTTP/1.1\r\nHost: a\r\n\r\n",   // not origin-form
        b"G(T /metrics HTTP/1.1\r\nHost: a\r\n\r\n",  // method not a token
        b"GET /metrics HTTP/1.1\nHost: a\r\n\r\n",    // bare LF
        b"GET /metrics HTTP/1.1\r\nHost : a\r\n\r\n", // space before colon
        b"GET /metrics HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: a\x01\r\n\r\n",
        b"GET /m\xffx HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /metrics HTTQ/1.1\r\nHost: a\r\n\r\n",
        b"\x00\x01\x02\r\n\r\n",
    ];
    for head in malformed {
        assert!(
            matches!(parse_request_head(head), Err(HeadError::Malformed(_))),
            "accepted {:?}",
            String::from_utf8_lossy(head)
        );
    }
}

#[test]
fn head_end_is_found_only_at_crlfcrlf() {
    assert_eq!(find_head_end(b"a\r\n\r\nbody"), Some(5));
    assert_eq!(find_head_end(b"a\r\n\r"), None);
    assert_eq!(find_head_end(b"\n\n"), None);
}

proptest::proptest! {
    #[test]
    fn parser_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
        let _ = parse_request_head(&bytes);
        let mut terminated = bytes.clone();
        terminated.extend_from_slice(b"\r\n\r\n");
        let _ = parse_request_head(&terminated);
    }
}

/// What the client saw: status, headers (lower-cased names), body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

fn connect(addr: SocketAddr) -> StdTcpStream {
    let stream = StdTcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    stream
}

fn read_answer(mut stream: StdTcpStream) -> Answer {
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .expect("server closes after answering");
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(": ").unwrap();
            (name.to_ascii_lowercase(), value.to_string())
        })
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

fn request(addr: SocketAddr, raw: &[u8]) -> Answer {
    let mut stream = connect(addr);
    stream.write_all(raw).unwrap();
    read_answer(stream)
}

fn get(addr: SocketAddr, path: &str) -> Answer {
    request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
    )
}

/// Runs the server on its own glommio executor thread until `stop` is set (bounded: 30 s).
struct ServerThread {
    addr: SocketAddr,
    node_id: NodeId,
    stop: Arc<AtomicBool>,
    handle: glommio::ExecutorJoinHandle<StatsSeen>,
}

/// The server's own counters, read on its thread when it stops.
#[derive(Debug, PartialEq, Eq)]
struct StatsSeen {
    accepted: u64,
    refused_over_limit: u64,
    answered: u64,
    bad: u64,
}

const TEST_READ_TIMEOUT_MS: u64 = 400;

fn start_server(connections_max: usize) -> ServerThread {
    let node_id = NodeId([0x5a; 32]);
    let stop = Arc::new(AtomicBool::new(false));
    let (addr_tx, addr_rx) = mpsc::channel();
    let stop_flag = stop.clone();
    let handle = glommio::LocalExecutorBuilder::default()
        .io_memory(512 << 10)
        .name("admin-test")
        .spawn(move || async move {
            let mut b = MetricsSchemaBuilder::new(MetricsConfig::default()).unwrap();
            let kind = Some(LabelSpec::fixed("kind", &["a\"b"]));
            let served = b
                .counter("icn_test_scrapes_total", "Scrapes.", kind, Aggregation::Sum)
                .unwrap();
            let schema = b.build();
            let shard = ShardMetrics::new(schema.clone(), 0);
            let collector = Arc::new(MetricsCollector::new(schema, 1));
            let started = Instant::now();
            let handlers = AdminHandlers {
                metrics: Rc::new(move || {
                    shard.counter_with(served, "a\"b").inc();
                    shard.publish(&collector).unwrap();
                    collector.render()
                }),
                health: Rc::new(move || Health {
                    node_id,
                    uptime: started.elapsed(),
                }),
            };
            let config = AdminConfig {
                connections_max,
                request_read_timeout_ms: TEST_READ_TIMEOUT_MS,
                linger_timeout_ms: 200,
                ..AdminConfig::default()
            };
            let server =
                AdminServer::bind("127.0.0.1:0".parse().unwrap(), config, handlers).unwrap();
            addr_tx.send(server.local_addr().unwrap()).unwrap();
            let stats = server.stats();
            let _task = glommio::spawn_local(server.run());
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop_flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            StatsSeen {
                accepted: stats.connections_accepted.get(),
                refused_over_limit: stats.connections_refused_over_limit.get(),
                answered: stats.requests_answered.get(),
                bad: stats.requests_bad.get(),
            }
        })
        .unwrap();
    let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    ServerThread {
        addr,
        node_id,
        stop,
        handle,
    }
}

impl ServerThread {
    fn stop(self) -> StatsSeen {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

/// The first request after connections were released may race the release on the server's
/// thread; retry a bounded number of times.
fn get_when_slot_free(addr: SocketAddr, path: &str) -> Answer {
    for _ in 0..40 {
        let mut stream = connect(addr);
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .unwrap();
        let mut raw = Vec::new();
        if stream.read_to_end(&mut raw).is_ok() && !raw.is_empty() {
            let text = String::from_utf8(raw).unwrap();
            let status = text.split(' ').nth(1).unwrap().parse().unwrap();
            return Answer {
                status,
                headers: Vec::new(),
                body: text,
            };
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("no free connection slot after 1 s");
}

#[test]
fn serves_metrics_and_health_and_refuses_everything_else() {
    let server = start_server(8);
    let addr = server.addr;

    let metrics = get(addr, "/metrics");
    assert_eq!(metrics.status, 200);
    assert_eq!(metrics.header("content-type"), Some(METRICS_CONTENT_TYPE));
    assert_eq!(
        metrics.header("content-length"),
        Some(metrics.body.len().to_string().as_str())
    );
    assert!(
        metrics
            .body
            .contains("# TYPE icn_test_scrapes_total counter\n"),
        "{}",
        metrics.body
    );
    assert!(
        metrics
            .body
            .contains("icn_test_scrapes_total{kind=\"a\\\"b\"} 1\n"),
        "{}",
        metrics.body
    );
    let again = get(addr, "/metrics?fresh=1");
    assert!(
        again
            .body
            .contains("icn_test_scrapes_total{kind=\"a\\\"b\"} 2\n"),
        "{}",
        again.body
    );

    let health = get(addr, "/health");
    assert_eq!(health.status, 200);
    assert_eq!(health.header("content-type"), Some("application/json"));
    let expected = format!(
        "{{\"status\":\"ok\",\"node_id\":\"{}\",\"uptime_s\":",
        server.node_id.to_hex()
    );
    assert!(health.body.starts_with(&expected), "{}", health.body);

    let head = request(addr, b"HEAD /health HTTP/1.0\r\n\r\n");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert!(
        head.header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap()
            > 0
    );

    assert_eq!(get(addr, "/nope").status, 404);
    let post = request(
        addr,
        b"POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    assert_eq!(post.header("connection"), Some("close"));

    // A head split across writes, with the terminator itself split, still parses.
    let mut stream = connect(addr);
    for piece in [&b"GET /health HTTP/1.1\r\nHo"[..], b"st: t\r\n\r", b"\n"] {
        stream.write_all(piece).unwrap();
        stream.flush().unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(read_answer(stream).status, 200);
    let stats = server.stop();
    let expected = StatsSeen {
        accepted: 7,
        refused_over_limit: 0,
        answered: 7,
        bad: 2,
    };
    assert_eq!(stats, expected, "404 and 405 count as bad requests");
}

#[test]
fn malformed_oversized_and_slow_requests_are_answered_and_closed() {
    let server = start_server(8);
    let addr = server.addr;
    for raw in [
        &b"GARBAGE\r\n\r\n"[..],
        b"\x00\xff\x10 junk junk\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nBad Header Line\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\n\r\n",
    ] {
        let answer = request(addr, raw);
        assert_eq!(answer.status, 400, "for {:?}", String::from_utf8_lossy(raw));
        assert_eq!(answer.header("connection"), Some("close"));
    }
    assert_eq!(
        request(addr, b"GET /metrics HTTP/3.0\r\nHost: t\r\n\r\n").status,
        505
    );

    // Oversized: 9 KiB of headers, never terminated; the answer survives the unread excess.
    let mut oversized = b"GET /metrics HTTP/1.1\r\nHost: t\r\n".to_vec();
    while oversized.len() < 9 << 10 {
        oversized
            .extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    assert_eq!(request(addr, &oversized).status, 431);

    // Half a head, then the client stops sending: 400, not a hang.
    let mut half = connect(addr);
    half.write_all(b"GET /metr").unwrap();
    half.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_answer(half).status, 400);

    // Slowloris: bytes trickle but the head never completes within the read timeout.
    let started = Instant::now();
    let mut slow = connect(addr);
    slow.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
    let answer = read_answer(slow);
    assert_eq!(answer.status, 408);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(TEST_READ_TIMEOUT_MS - 50),
        "{waited:?}"
    );
    assert!(waited < Duration::from_secs(3), "{waited:?}");

    // And the server is still fine.
    assert_eq!(get(addr, "/health").status, 200);
    let stats = server.stop();
    assert_eq!(
        (stats.accepted, stats.answered, stats.bad),
        (9, 9, 8),
        "{stats:?}"
    );
}

#[test]
fn connections_over_the_limit_are_closed_at_accept() {
    let server = start_server(2);
    let addr = server.addr;
    // Two idle connections take both slots (accepted in connect order).
    let idle: Vec<StdTcpStream> = (0..2).map(|_| connect(addr)).collect();
    std::thread::sleep(Duration::from_millis(50));
    let mut third = connect(addr);
    let _ = third.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut raw = Vec::new();
    // Closed without an answer: EOF, or a reset if our request was still unread.
    let result = third.read_to_end(&mut raw);
    let closed = match &result {
        Ok(_) => true,
        Err(error) => error.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(closed, "over-limit connection was not closed: {result:?}");
    assert!(
        raw.is_empty(),
        "over-limit connection got {:?}",
        String::from_utf8_lossy(&raw)
    );
    // The idle ones time out (408) and release their slots; then service resumes.
    for stream in idle {
        assert_eq!(read_answer(stream).status, 408);
    }
    assert_eq!(get_when_slot_free(addr, "/health").status, 200);
    let stats = server.stop();
    // Retries in get_when_slot_free may add refusals beyond the one we provoked.
    assert!(stats.refused_over_limit >= 1, "{stats:?}");
    assert_eq!(
        stats.accepted, 3,
        "two idle connections and the final request: {stats:?}"
    );
}
