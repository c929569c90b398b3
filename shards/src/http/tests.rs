//! The server over real loopback sockets: every bound of the `[http]` section reached by a raw
//! client, plus HTTP/2 and the CBOR round trips. Each test starts its own server thread with
//! short timeouts; every wait is bounded.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use icn_codecs::ic::{decode_value, Value};

use super::io::{ConnActivity, HyperIo, LocalExec};
use super::testing::*;

fn post_cbor(addr: SocketAddr, path: &str, body: &[u8]) -> Answer {
    request(addr, "POST", path, Some(body))
}

fn query_path() -> String {
    format!("/api/v2/canister/{}/query", test_canister())
}

fn call_path(version: &str) -> String {
    format!("/api/{version}/canister/{}/call", test_canister())
}

/// Decodes an answer body, which must start with the self-describe tag.
fn decode_answer(body: &[u8]) -> Value<'_> {
    assert!(
        body.starts_with(&[0xd9, 0xd9, 0xf7]),
        "no self-describe tag"
    );
    decode_value(body, 16).unwrap()
}

fn cbor_field<'a>(value: &'a Value<'a>, key: &str) -> &'a Value<'a> {
    value
        .get(key)
        .unwrap_or_else(|| panic!("no field {key} in {value:?}"))
}

#[test]
fn status_is_cbor_the_codecs_decode_without_a_root_key() {
    let server = ServerThread::start(test_tuning(), ScriptConfig::default());
    let answer = request(server.addr, "GET", "/api/v2/status", None);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("application/cbor"));
    let value = decode_answer(&answer.body);
    assert_eq!(
        cbor_field(&value, "ic_api_version"),
        &Value::Text(super::IC_API_VERSION.into())
    );
    assert_eq!(
        cbor_field(&value, "replica_health_status"),
        &Value::Text("healthy".into())
    );
    assert!(value.get("root_key").is_none());
    assert_eq!(
        request(server.addr, "POST", "/api/v2/status", Some(b"")).status,
        405
    );
    assert_eq!(
        request(server.addr, "GET", "/api/v9/status", None).status,
        404
    );
    assert_eq!(request(server.addr, "GET", "/health", None).text(), "ok");
}

#[test]
fn queries_calls_and_read_state_reach_the_backend_and_answer_cbor() {
    let server = ServerThread::start(test_tuning(), ScriptConfig::default());
    let key = TestKey::ed25519();
    let query = call_envelope(
        Some(&key),
        true,
        test_canister(),
        "get",
        b"DIDL\x00\x00",
        fresh_expiry(),
    );
    let answer = post_cbor(server.addr, &query_path(), &query);
    assert_eq!(answer.status, 200, "{}", answer.text());
    let value = decode_answer(&answer.body);
    assert_eq!(cbor_field(&value, "status"), &Value::Text("replied".into()));

    let call = call_envelope(
        Some(&TestKey::p256()),
        false,
        test_canister(),
        "inc",
        b"",
        fresh_expiry(),
    );
    assert_eq!(post_cbor(server.addr, &call_path("v2"), &call).status, 202);
    let call = call_envelope(
        Some(&TestKey::secp256k1(5)),
        false,
        test_canister(),
        "inc",
        b"",
        fresh_expiry(),
    );
    let answer = post_cbor(server.addr, &call_path("v3"), &call);
    assert_eq!(answer.status, 200, "{}", answer.text());
    let value = decode_answer(&answer.body);
    assert_eq!(cbor_field(&value, "status"), &Value::Text("replied".into()));
    assert!(matches!(cbor_field(&value, "certificate"), Value::Bytes(_)));

    let reject = call_envelope(None, false, test_canister(), "reject", b"", fresh_expiry());
    let answer = post_cbor(server.addr, &call_path("v4"), &reject);
    let value = decode_answer(&answer.body);
    assert_eq!(
        cbor_field(&value, "status"),
        &Value::Text("non_replicated_rejection".into())
    );
    assert_eq!(cbor_field(&value, "reject_code"), &Value::Nat(3));

    let read = read_state_envelope(None, &[&[b"time"]]);
    let path = format!("/api/v2/canister/{}/read_state", test_canister());
    let answer = post_cbor(server.addr, &path, &read);
    assert_eq!(answer.status, 200, "{}", answer.text());
    let value = decode_answer(&answer.body);
    assert!(matches!(cbor_field(&value, "certificate"), Value::Bytes(_)));
    let subnet = format!("/api/v3/subnet/{}/read_state", test_canister());
    assert_eq!(post_cbor(server.addr, &subnet, &read).status, 200);
}

#[test]
fn bad_bodies_get_400_with_a_message_naming_the_problem() {
    let server = ServerThread::start(test_tuning(), ScriptConfig::default());
    let garbage = post_cbor(server.addr, &query_path(), b"\xff\x00garbage");
    assert_eq!(garbage.status, 400);
    assert!(
        garbage.text().contains("could not decode"),
        "{}",
        garbage.text()
    );
    // A map whose content is a number: the field is named.
    let wrong_type = post_cbor(server.addr, &query_path(), b"\xa1\x67content\x01");
    assert_eq!(wrong_type.status, 400);
    assert!(
        wrong_type.text().contains("content"),
        "{}",
        wrong_type.text()
    );
    // A call sent to the query endpoint.
    let call = call_envelope(None, false, test_canister(), "inc", b"", fresh_expiry());
    let answer = post_cbor(server.addr, &query_path(), &call);
    assert!(answer.text().contains("request_type"), "{}", answer.text());
    // Another canister than the URL's.
    let other = call_envelope(
        None,
        true,
        icn_codecs::ic::Principal::from_canister_index(1),
        "get",
        b"",
        fresh_expiry(),
    );
    let answer = post_cbor(server.addr, &query_path(), &other);
    assert!(
        answer
            .text()
            .contains("does not match effective canister id"),
        "{}",
        answer.text()
    );
    // Expired.
    let stale = call_envelope(
        None,
        true,
        test_canister(),
        "get",
        b"",
        now_ns() - 3_600_000_000_000,
    );
    let answer = post_cbor(server.addr, &query_path(), &stale);
    assert_eq!(answer.status, 400);
    assert!(answer
        .text()
        .contains("Specified ingress_expiry not within expected range"));
    // A signature by another key.
    let key = TestKey::ed25519();
    let mut forged = call_envelope(
        Some(&key),
        true,
        test_canister(),
        "get",
        b"",
        fresh_expiry(),
    );
    let len = forged.len();
    forged[len - 1] ^= 1; // the last byte belongs to sender_sig
    let answer = post_cbor(server.addr, &query_path(), &forged);
    assert_eq!(answer.status, 400);
    assert!(
        answer.text().contains("Failed to authenticate request"),
        "{}",
        answer.text()
    );
    // Wrong content type.
    let mut stream = connect(server.addr);
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}",
        query_path()
    );
    stream.write_all(head.as_bytes()).unwrap();
    let answer = read_answer(&mut stream).unwrap();
    assert_eq!(answer.status, 400);
    assert!(answer.text().contains("application/cbor"));
    assert_eq!(
        server
            .seen
            .queries
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    let metrics = request(server.addr, "GET", "/metrics", None).text();
    assert!(
        metrics.contains("icn_http_rejections_total{reason=\"bad_signature\"} 1"),
        "{metrics}"
    );
}

#[test]
fn body_size_boundary_is_exact_and_chunked_bodies_are_cut_too() {
    let tuning = test_tuning();
    let max = tuning.body_bytes_max;
    let server = ServerThread::start(tuning, ScriptConfig::default());
    // Exactly the maximum is read and decoded (400: it is not CBOR), one more is refused.
    let at_max = post_cbor(server.addr, &query_path(), &vec![0xff; max]);
    assert_eq!(at_max.status, 400, "{}", at_max.text());
    let mut stream = connect(server.addr);
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: t\r\nContent-Type: application/cbor\r\nContent-Length: {}\r\n\r\n",
        query_path(),
        max + 1
    );
    stream.write_all(head.as_bytes()).unwrap();
    let answer = read_answer(&mut stream).unwrap();
    assert_eq!(answer.status, 413);
    // The same with the whole body already sent: the server drains it before closing, so the
    // 413 arrives instead of a connection reset.
    let mut stream = connect(server.addr);
    let mut bytes = head.into_bytes();
    bytes.extend(std::iter::repeat_n(0xffu8, max + 1));
    stream.write_all(&bytes).unwrap();
    let answer = read_answer(&mut stream).unwrap();
    assert_eq!(answer.status, 413);
    assert_eq!(answer.header("connection"), Some("close"));
    // Chunked: refused as soon as the chunks pass the maximum.
    let mut stream = connect(server.addr);
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: t\r\nContent-Type: application/cbor\r\nTransfer-Encoding: chunked\r\n\r\n",
        query_path()
    );
    stream.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b'a'; 16 << 10];
    for _ in 0..(max / chunk.len() + 1) {
        let _ = stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes());
        let _ = stream.write_all(&chunk);
        let _ = stream.write_all(b"\r\n");
    }
    let answer = read_answer(&mut stream).unwrap();
    assert_eq!(answer.status, 413);
}

/// (status, whether the answer says `connection: close`) of each answer in `bytes`, which
/// must hold whole answers with Content-Length bodies.
fn statuses_in(mut bytes: &[u8]) -> Vec<(u16, bool)> {
    let mut answers = Vec::new();
    while !bytes.is_empty() {
        let end = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a whole answer head")
            + 4;
        let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
        let status = head[9..12].parse().unwrap();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .map_or(0, |value| value.trim().parse().unwrap());
        answers.push((status, head.contains("connection: close")));
        bytes = &bytes[end + length..];
    }
    answers
}

#[test]
fn pipelined_requests_are_answered_in_order_up_to_a_closing_refusal() {
    let tuning = test_tuning();
    let server = ServerThread::start(tuning, ScriptConfig::default());
    let body = call_envelope(None, true, test_canister(), "get", b"", fresh_expiry());
    // One write: the server reads the requests together and answers them in one burst
    // (HyperIo's coalescing). The last answer closes the connection with request bytes still
    // unread, which is where a deferred flush can lose it (hyper's own `pipeline_flush` does).
    let mut burst = Vec::new();
    for _ in 0..3 {
        burst.extend(request_bytes("GET", "/api/v2/status", None));
    }
    for _ in 0..2 {
        burst.extend(request_bytes("POST", &query_path(), Some(&body)));
    }
    burst.extend(request_bytes("GET", "/nope", None));
    // A chunked body over the maximum: refused with 413 once the chunks pass it.
    burst.extend(
        format!(
            "POST {} HTTP/1.1\r\nHost: t\r\nContent-Type: application/cbor\r\nTransfer-Encoding: chunked\r\n\r\n",
            query_path()
        )
        .into_bytes(),
    );
    let chunk = vec![b'a'; 16 << 10];
    for _ in 0..(tuning.body_bytes_max / chunk.len() + 1) {
        burst.extend(format!("{:x}\r\n", chunk.len()).into_bytes());
        burst.extend(&chunk);
        burst.extend(b"\r\n");
    }
    let mut stream = connect(server.addr);
    stream.write_all(&burst).unwrap();
    let mut answers = Vec::new();
    stream.read_to_end(&mut answers).unwrap();
    assert_eq!(
        statuses_in(&answers),
        [
            (200, false),
            (200, false),
            (200, false),
            (200, false),
            (200, false),
            (404, false),
            (413, true)
        ]
    );
}

#[test]
fn a_slow_body_gets_408_within_the_body_deadline() {
    let tuning = test_tuning();
    let server = ServerThread::start(tuning, ScriptConfig::default());
    let mut stream = connect(server.addr);
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: t\r\nContent-Type: application/cbor\r\nContent-Length: 100\r\n\r\n0123456789",
        query_path()
    );
    let started = Instant::now();
    stream.write_all(head.as_bytes()).unwrap();
    let answer = read_answer(&mut stream).unwrap();
    assert_eq!(answer.status, 408);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(tuning.body_read_timeout_ms)
            && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
}

#[test]
fn slow_header_clients_are_dropped_while_others_are_served() {
    let tuning = test_tuning();
    let server = ServerThread::start(tuning, ScriptConfig::default());
    let addr = server.addr;
    let slowloris: Vec<_> = (0..4)
        .map(|_| {
            thread::spawn(move || {
                let mut stream = connect(addr);
                let started = Instant::now();
                // One header byte every 50 ms, never finishing the head.
                let head = b"GET /api/v2/status HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
                for byte in head {
                    if stream.write_all(&[*byte]).is_err() {
                        break;
                    }
                    thread::sleep(Duration::from_millis(50));
                    if started.elapsed() > Duration::from_secs(3) {
                        break;
                    }
                }
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest);
                started.elapsed()
            })
        })
        .collect();
    // Meanwhile a normal client keeps being served, on one keep-alive connection.
    let mut stream = connect(addr);
    let deadline = Instant::now() + Duration::from_millis(600);
    let mut served = 0;
    while Instant::now() < deadline {
        send_request(&mut stream, "GET", "/api/v2/status", None);
        assert_eq!(read_answer(&mut stream).unwrap().status, 200);
        served += 1;
        thread::sleep(Duration::from_millis(20));
    }
    assert!(served >= 10, "{served}");
    for client in slowloris {
        let held = client.join().unwrap();
        let limit = Duration::from_millis(tuning.header_read_timeout_ms);
        assert!(
            held >= limit && held < limit + Duration::from_millis(700),
            "{held:?}"
        );
    }
    let metrics = request(addr, "GET", "/metrics", None).text();
    assert!(
        metrics.contains("icn_http_rejections_total{reason=\"header_timeout\"} 4"),
        "{metrics}"
    );
}

#[test]
fn a_full_class_answers_429_before_reading_the_body_and_others_still_pass() {
    let tuning = icn_tuning::HttpTuning {
        query_concurrency_max: 1,
        query_queue_max: 1,
        queue_wait_timeout_ms: 2_000,
        // The scripted queries take 400 ms: this test is about the fixed limits.
        delay_target_ms: 0,
        ..test_tuning()
    };
    let script = ScriptConfig {
        query_delay: Duration::from_millis(400),
        ..ScriptConfig::default()
    };
    let server = ServerThread::start(tuning, script);
    let addr = server.addr;
    let body = call_envelope(None, true, test_canister(), "get", b"", fresh_expiry());
    let in_flight: Vec<_> = (0..2)
        .map(|i| {
            let body = body.clone();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(50 * i));
                post_cbor(addr, &query_path(), &body).status
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(200));
    // Slot and queue are taken: refused at once, with the body never sent.
    let mut stream = connect(addr);
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: t\r\nContent-Type: application/cbor\r\nContent-Length: 1000\r\n\r\n",
        query_path()
    );
    let started = Instant::now();
    stream.write_all(head.as_bytes()).unwrap();
    let answer = read_answer(&mut stream).unwrap();
    assert_eq!(answer.status, 429);
    assert!(answer.text().contains("query capacity exhausted"));
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    // Another class is unaffected.
    assert_eq!(request(addr, "GET", "/api/v2/status", None).status, 200);
    let statuses: Vec<u16> = in_flight.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(statuses, vec![200, 200]);
    let metrics = request(addr, "GET", "/metrics", None).text();
    assert!(
        metrics.contains("icn_http_requests_total{request=\"query_429\"} 1"),
        "{metrics}"
    );
}

#[test]
fn a_backend_that_does_not_answer_in_time_gets_504() {
    let tuning = icn_tuning::HttpTuning {
        backend_timeout_ms: 200,
        ..test_tuning()
    };
    let script = ScriptConfig {
        call_delay: Duration::from_secs(5),
        ..ScriptConfig::default()
    };
    let server = ServerThread::start(tuning, script);
    let body = call_envelope(None, false, test_canister(), "inc", b"", fresh_expiry());
    let started = Instant::now();
    let answer = post_cbor(server.addr, &call_path("v3"), &body);
    assert_eq!(answer.status, 504);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn connections_over_the_per_ip_limit_are_closed_at_accept() {
    let tuning = icn_tuning::HttpTuning {
        connections_per_ip_max: 2,
        ..test_tuning()
    };
    let server = ServerThread::start(tuning, ScriptConfig::default());
    let mut first = connect(server.addr);
    let mut second = connect(server.addr);
    send_request(&mut first, "GET", "/health", None);
    assert_eq!(read_answer(&mut first).unwrap().status, 200);
    send_request(&mut second, "GET", "/health", None);
    assert_eq!(read_answer(&mut second).unwrap().status, 200);
    let mut third = connect(server.addr);
    let _ = third.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut buf = [0u8; 64];
    let n = third.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the third connection was served");
    drop(first);
    // The slot frees once the server sees the close; retry a bounded number of times.
    let served = (0..50).any(|_| {
        thread::sleep(Duration::from_millis(20));
        let mut stream = connect(server.addr);
        send_request(&mut stream, "GET", "/health", None);
        read_answer(&mut stream)
            .map(|a| a.status == 200)
            .unwrap_or(false)
    });
    assert!(served);
}

#[test]
fn h2c_prior_knowledge_requests_are_served() {
    let server = ServerThread::start(test_tuning(), ScriptConfig::default());
    let addr = server.addr;
    let body = call_envelope(None, true, test_canister(), "get", b"xyz", fresh_expiry());
    glommio::LocalExecutorBuilder::default()
        .io_memory(512 << 10)
        .make()
        .unwrap()
        .run(async move {
            let stream = glommio::net::TcpStream::connect(addr).await.unwrap();
            let io = HyperIo::new(stream, Vec::new(), ConnActivity::new(Instant::now()));
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(LocalExec, io)
                    .await
                    .unwrap();
            let _driver = glommio::spawn_local(async move {
                let _ = connection.await;
            });
            let status = http::Request::get(format!("http://{addr}/api/v2/status"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let answer = sender.send_request(status).await.unwrap();
            assert_eq!(answer.status(), 200);
            assert_eq!(answer.version(), http::Version::HTTP_2);
            let bytes = answer.into_body().collect().await.unwrap().to_bytes();
            decode_answer(&bytes);
            // Two queries multiplexed on the one connection.
            let mut pending = Vec::new();
            for _ in 0..2 {
                let query = http::Request::post(format!("http://{addr}{}", query_path()))
                    .header("content-type", "application/cbor")
                    .body(Full::new(Bytes::from(body.clone())))
                    .unwrap();
                pending.push(sender.send_request(query));
            }
            for answer in pending {
                let answer = answer.await.unwrap();
                assert_eq!(answer.status(), 200);
                let bytes = answer.into_body().collect().await.unwrap().to_bytes();
                let value = decode_answer(&bytes);
                assert_eq!(cbor_field(&value, "status"), &Value::Text("replied".into()));
            }
        });
    let _ = Rc::new(());
}

#[test]
fn tls_clients_get_tls13_with_alpn_next_to_plaintext_clients() {
    let server = ServerThread::start(test_tuning(), ScriptConfig::default());
    let tls13 = boring::ssl::SslVersion::TLS1_3;
    // HTTP/1.1 over TLS, two requests on one connection.
    let mut stream = tls_connect(server.addr, b"\x08http/1.1", tls13).unwrap();
    assert_eq!(
        stream.ssl().selected_alpn_protocol(),
        Some(&b"http/1.1"[..])
    );
    for _ in 0..2 {
        stream
            .write_all(b"GET /api/v2/status HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let answer = read_answer(&mut stream).unwrap();
        assert_eq!(answer.status, 200);
        decode_answer(&answer.body);
    }
    let body = call_envelope(
        Some(&TestKey::ed25519()),
        true,
        test_canister(),
        "get",
        b"t",
        fresh_expiry(),
    );
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: t\r\nContent-Type: application/cbor\r\nContent-Length: {}\r\n\r\n",
        query_path(),
        body.len()
    );
    stream
        .write_all(&[head.as_bytes(), &body].concat())
        .unwrap();
    assert_eq!(read_answer(&mut stream).unwrap().status, 200);
    // ALPN h2: the server speaks HTTP/2 (its first frame is SETTINGS).
    let mut stream = tls_connect(server.addr, b"\x02h2\x08http/1.1", tls13).unwrap();
    assert_eq!(stream.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
    stream.write_all(&h2_preface()).unwrap();
    let first = h2_read_frame(&mut stream).unwrap();
    assert_eq!(
        first.kind, 0x04,
        "first frame is not SETTINGS: {:?}",
        first.payload
    );
    // TLS 1.2 is refused; plaintext still works on the same port.
    assert!(tls_connect(
        server.addr,
        b"\x08http/1.1",
        boring::ssl::SslVersion::TLS1_2
    )
    .is_err());
    assert_eq!(
        request(server.addr, "GET", "/api/v2/status", None).status,
        200
    );
}

#[test]
fn an_http2_connection_outlives_the_header_timeout_between_requests_and_ends_when_idle() {
    let tuning = test_tuning();
    let server = ServerThread::start(tuning, ScriptConfig::default());
    let mut stream = connect(server.addr);
    // Preface, empty SETTINGS, then PINGs for longer than the header timeout.
    stream.write_all(&h2_preface()).unwrap();
    let ping = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00pingpong";
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(tuning.header_read_timeout_ms * 3) {
        stream.write_all(ping).unwrap();
        thread::sleep(Duration::from_millis(50));
    }
    // Still open: read frames until a PING ACK (type 6, flag 1) shows up.
    let mut acked = false;
    for _ in 0..100 {
        let frame = h2_read_frame(&mut stream).unwrap();
        if frame.kind == 0x06 && frame.flags & 1 == 1 {
            acked = true;
            break;
        }
    }
    assert!(acked);
    // With no stream ever opened, the connection ends at the idle timeout despite the PINGs.
    let mut rest = Vec::new();
    while started.elapsed() < Duration::from_secs(10) {
        let _ = stream.write_all(ping);
        let mut buf = [0u8; 4096];
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => rest.extend_from_slice(&buf[..n]),
        }
        thread::sleep(Duration::from_millis(50));
    }
    let lived = started.elapsed();
    let idle = Duration::from_millis(tuning.idle_timeout_ms);
    assert!(
        lived >= idle && lived < idle + Duration::from_secs(2),
        "{lived:?}"
    );
}

/// One HTTP/2 frame: 24-bit length, type, flags, stream id, payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The client preface and an empty SETTINGS frame.
fn h2_preface() -> Vec<u8> {
    [
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
        &h2_frame(0x4, 0, 0, &[]),
    ]
    .concat()
}

/// One HTTP/2 frame as read: type, flags, stream id, payload.
struct H2Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

fn h2_read_frame(stream: &mut impl Read) -> std::io::Result<H2Frame> {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head)?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload)?;
    Ok(H2Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// Reads frames until a GOAWAY and returns its error code; None when the connection ends
/// (or stays silent for the read timeout) first.
fn h2_goaway_code(stream: &mut std::net::TcpStream) -> Option<u32> {
    loop {
        let frame = h2_read_frame(stream).ok()?;
        if frame.kind == 0x7 && frame.payload.len() >= 8 {
            let code = &frame.payload[4..8];
            return Some(u32::from_be_bytes([code[0], code[1], code[2], code[3]]));
        }
    }
}

#[test]
fn http2_rapid_resets_and_endless_header_blocks_end_their_connection_only() {
    const ENHANCE_YOUR_CALM: u32 = 0xb;
    let server = ServerThread::start(test_tuning(), ScriptConfig::default());
    // HPACK: :method GET, :scheme http (static table), then :path as a literal.
    let path = b"/api/v2/status";
    let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path);

    // Rapid reset (CVE-2023-44487): every stream is cancelled as soon as it is opened, so
    // the requests cost the server work while the client's stream limit never binds.
    let mut stream = connect(server.addr);
    let mut flood = h2_preface();
    for i in 0..20_000u32 {
        let id = 2 * i + 1;
        flood.extend(h2_frame(0x1, 0x4 | 0x1, id, &block));
        flood.extend(h2_frame(0x3, 0, id, &8u32.to_be_bytes()));
    }
    // The server may stop reading once it has given up on the connection.
    let _ = stream.write_all(&flood);
    assert_eq!(h2_goaway_code(&mut stream), Some(ENHANCE_YOUR_CALM));

    // A header block that never ends: HEADERS without END_HEADERS, then CONTINUATION frames
    // whose headers add up far past http.request_head_bytes_max.
    let mut stream = connect(server.addr);
    let mut endless = h2_preface();
    endless.extend(h2_frame(0x1, 0x1, 1, &block));
    let mut filler = Vec::new();
    for _ in 0..100 {
        // Literal header without indexing, new name "x-filler", a 100-byte value.
        filler.extend_from_slice(&[0x00, 8]);
        filler.extend_from_slice(b"x-filler");
        filler.push(100);
        filler.extend_from_slice(&[b'a'; 100]);
    }
    for _ in 0..1_000 {
        endless.extend(h2_frame(0x9, 0, 1, &filler));
    }
    let _ = stream.write_all(&endless);
    let code = h2_goaway_code(&mut stream);
    assert!(
        code.is_some_and(|code| code != 0),
        "no GOAWAY with an error for an endless header block: {code:?}"
    );

    // Neither cost anyone else anything.
    assert_eq!(
        request(server.addr, "GET", "/api/v2/status", None).status,
        200
    );
}

#[test]
fn http2_refusals_before_the_body_neither_reset_the_stream_nor_cost_the_connection() {
    let server = ServerThread::start(test_tuning(), ScriptConfig::default());
    let mut stream = connect(server.addr);
    stream.write_all(&h2_preface()).unwrap();
    // HPACK: :method POST, :scheme http (static table), :path as a literal, then content-type
    // text/plain (refused with 400 before the body is read) and content-length 5, both with
    // names from the static table.
    let path = query_path();
    let mut block = vec![0x83, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x0f, 0x10, 10]);
    block.extend_from_slice(b"text/plain");
    block.extend_from_slice(&[0x0f, 0x0d, 1, b'5']);
    // More refusals than the connection's error-reset bound (H2_ERROR_RESETS_MAX): each body
    // is sent only after its answer arrived, as from a client whose DATA was on the way.
    let (mut resets, mut refused) = (0, 0);
    for i in 0..1_100u32 {
        let id = 2 * i + 1;
        stream.write_all(&h2_frame(0x1, 0x4, id, &block)).unwrap();
        loop {
            let frame = h2_read_frame(&mut stream).unwrap();
            let ours = frame.stream == id;
            match frame.kind {
                0x7 => panic!("GOAWAY after {refused} refusals: {:?}", frame.payload),
                0x3 => resets += 1,
                // HEADERS: the first byte of a 400 answer is the static-table index of
                // `:status 400` (0x8c); DATA or HEADERS with END_STREAM ends the answer.
                0x1 if ours && frame.payload.first() == Some(&0x8c) => refused += 1,
                _ => {}
            }
            if ours && frame.flags & 0x1 == 0x1 && matches!(frame.kind, 0x0 | 0x1) {
                break;
            }
        }
        stream.write_all(&h2_frame(0x0, 0x1, id, b"hello")).unwrap();
    }
    assert_eq!(refused, 1_100);
    assert_eq!(resets, 0, "the server reset refused streams");
    // The connection still serves: a status request on the next stream is answered 200
    // (`:status 200` is static index 8).
    let id = 2 * 1_100 + 1;
    let status = [&[0x82u8, 0x86, 0x04, 14][..], b"/api/v2/status"].concat();
    stream
        .write_all(&h2_frame(0x1, 0x4 | 0x1, id, &status))
        .unwrap();
    loop {
        let frame = h2_read_frame(&mut stream).unwrap();
        assert_ne!(frame.kind, 0x7, "GOAWAY: {:?}", frame.payload);
        if frame.kind == 0x1 && frame.stream == id {
            assert_eq!(frame.payload.first(), Some(&0x88));
            break;
        }
    }
}
