//! `quinn-tokio`: chunk fetching the way the IC's state sync does it, on quinn 0.11 + tokio +
//! rustls (ring), with the transport suite's quinn setup (1452-byte packets, MTU discovery off,
//! 16 MiB stream / 64 MiB connection windows, 128 bidirectional streams, 2 MiB UDP socket
//! buffers, GSO as quinn enables it).
//!
//! - P servers, each a thread with a current-thread tokio runtime and one endpoint, serve the
//!   chunks of their copy of the state: a request is a bidirectional stream carrying the chunk
//!   index (u32 LE), the response the chunk's bytes read from the files with `pread`.
//! - One client thread (current-thread runtime) connects to every server before the clock
//!   starts. It is given the manifest (it does not fetch one: icn's figure includes fetching
//!   and checking the manifest, the baseline's does not). Then it creates the files at full
//!   length, fetches every chunk with 10 requests in flight per peer (the IC's setting),
//!   chunk `i` from peer `i mod P`, hashes each as quinn hands out its bytes (the streaming form
//!   of `chunk_hash`) and checks it against the manifest, writes it with `pwrite`, and fsyncs
//!   every file at the end.
//! - A failed or bad chunk counts as an error and is asked again (up to
//!   [`CHUNK_ATTEMPTS_MAX`] times); a chunk still missing at the end is one more error.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use icn_codecs::state::{ChunkHasher, Manifest};
use quinn::{Connection, VarInt};
use serde_json::{json, Value};

use super::state::{self, RunMeter};
use super::{
    source_cores, thread_cores, Run, SyncCase, SyncState, SyncSystem,
    QUINN_CHUNKS_IN_FLIGHT_PER_PEER,
};
use crate::host::pin_current_thread;
use crate::transport::case::quic;
use crate::transport::quinn_tokio::{
    client_config, current_thread_runtime, endpoint, server_config, Identity,
};

/// How many times one chunk is requested before the run gives up on it.
pub const CHUNK_ATTEMPTS_MAX: u32 = 3;

/// How long servers and client have to come up and connect.
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a closing endpoint waits for its CONNECTION_CLOSE to go out.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Bytes of a request: the chunk index.
const REQUEST_BYTES: usize = 4;

pub struct QuinnSync;

impl SyncSystem for QuinnSync {
    fn name(&self) -> &'static str {
        "quinn-tokio"
    }

    fn run(&self, state: &SyncState, case: SyncCase) -> Result<Run, String> {
        let identity = Identity::generate()?;
        let sources = state.source_stores(case.peers)?;
        let destination = state.destination()?;
        let client_core = thread_cores(1)[0];
        let source_cores = source_cores(&vec![client_core; case.peers]);
        let stop = Arc::new(AtomicBool::new(false));
        let timeout = state::run_timeout(state.state_bytes());
        let (address_tx, address_rx) = mpsc::channel();
        let mut servers = Vec::with_capacity(case.peers);
        for (index, source) in sources.iter().enumerate() {
            let config = server_config(&identity)?;
            let dir = state.state_dir_in(source);
            let manifest = state.manifest.clone();
            let address_tx = address_tx.clone();
            let stop = stop.clone();
            let core = source_cores[index];
            let server = thread::Builder::new()
                .name("quinn-sync-server".into())
                .spawn(move || {
                    pin_current_thread(core);
                    current_thread_runtime()?.block_on(serve(
                        config, dir, manifest, index, address_tx, stop, timeout,
                    ))
                })
                .map_err(|e| e.to_string())?;
            servers.push(server);
        }
        drop(address_tx);
        let mut addresses = vec![None; case.peers];
        let mut setup_error = None;
        for _ in 0..case.peers {
            match address_rx.recv_timeout(SETUP_TIMEOUT) {
                Ok((index, Ok(address))) => addresses[index] = Some(address),
                Ok((_, Err(error))) => setup_error = Some(error),
                Err(_) => setup_error = Some("a server did not start".into()),
            }
        }
        let result = match setup_error {
            Some(error) => Err(error),
            None => {
                let addresses: Vec<SocketAddr> = addresses.into_iter().flatten().collect();
                let client_config = client_config(&identity)?;
                let manifest = state.manifest.clone();
                let base = destination.path().to_path_buf();
                let state_bytes = state.state_bytes();
                let core = client_core;
                thread::Builder::new()
                    .name("quinn-sync-client".into())
                    .spawn(move || {
                        pin_current_thread(core);
                        current_thread_runtime()?.block_on(run_client(
                            client_config,
                            addresses,
                            manifest,
                            base,
                            state_bytes,
                            timeout,
                        ))
                    })
                    .map_err(|e| e.to_string())?
                    .join()
                    .map_err(|_| "client thread panicked".to_string())
                    .and_then(|run| run)
            }
        };
        stop.store(true, Ordering::Release);
        let mut server_error = None;
        for server in servers {
            match server.join() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => server_error = Some(error),
                Err(_) => server_error = Some("server thread panicked".into()),
            }
        }
        let mut run = result?;
        if let Some(error) = server_error {
            run.measurement.errors += 1;
            run.measurement
                .first_error
                .get_or_insert(format!("server: {error}"));
        }
        Ok(run)
    }

    fn config(&self, state: &SyncState) -> BTreeMap<String, Value> {
        BTreeMap::from([
            ("quic_packet_bytes".into(), json!(quic::PACKET_BYTES)),
            ("mtu_discovery".into(), json!(false)),
            (
                "gso".into(),
                json!("quinn default (enabled where the kernel supports it)"),
            ),
            (
                "stream_window_bytes".into(),
                json!(quic::STREAM_WINDOW_BYTES),
            ),
            (
                "connection_window_bytes".into(),
                json!(quic::CONNECTION_WINDOW_BYTES),
            ),
            ("bidi_streams_max".into(), json!(quic::BIDI_STREAMS_MAX)),
            (
                "udp_socket_buffer_bytes".into(),
                json!(quic::UDP_SOCKET_BUFFER_BYTES),
            ),
            (
                "chunks_in_flight_per_peer".into(),
                json!(QUINN_CHUNKS_IN_FLIGHT_PER_PEER),
            ),
            (
                "window_bytes_per_peer".into(),
                json!(QUINN_CHUNKS_IN_FLIGHT_PER_PEER as u64 * u64::from(state.chunk_bytes)),
            ),
            ("manifest".into(), json!("given to the client; not fetched")),
            (
                "chunk_assignment".into(),
                json!("chunk i from peer i mod P"),
            ),
            (
                "runtime".into(),
                json!("one tokio current-thread runtime per server and for the client"),
            ),
        ])
    }
}

/// One server: accepts the client's connection and answers chunk requests until the client
/// closes it (or the run is stopped).
async fn serve(
    config: quinn::ServerConfig,
    dir: PathBuf,
    manifest: Arc<Manifest>,
    index: usize,
    address: mpsc::Sender<(usize, Result<SocketAddr, String>)>,
    stop: Arc<AtomicBool>,
    timeout: Duration,
) -> Result<(), String> {
    let bound = endpoint(Some(config))
        .and_then(|endpoint| Ok((endpoint.local_addr().map_err(|e| e.to_string())?, endpoint)));
    let endpoint = match bound {
        Ok((local, endpoint)) => {
            let _ = address.send((index, Ok(local)));
            endpoint
        }
        Err(error) => {
            let _ = address.send((index, Err(error.clone())));
            return Err(error);
        }
    };
    let accepted = tokio::time::timeout(SETUP_TIMEOUT, async {
        loop {
            if stop.load(Ordering::Acquire) {
                return None;
            }
            if let Ok(incoming) =
                tokio::time::timeout(Duration::from_millis(50), endpoint.accept()).await
            {
                return incoming;
            }
        }
    })
    .await;
    let Ok(Some(incoming)) = accepted else {
        endpoint.close(VarInt::from_u32(0), b"done");
        // No client came: the client side reports why (or the run never started).
        return Ok(());
    };
    let connection = incoming.await.map_err(|e| format!("handshake: {e}"))?;
    let dir = Rc::new(dir);
    let serving = async {
        while let Ok((send, receive)) = connection.accept_bi().await {
            tokio::task::spawn_local(answer(send, receive, dir.clone(), manifest.clone()));
        }
    };
    let local = tokio::task::LocalSet::new();
    let _ = tokio::time::timeout(timeout + SETUP_TIMEOUT, local.run_until(serving)).await;
    endpoint.close(VarInt::from_u32(0), b"done");
    Ok(())
}

async fn answer(
    mut send: quinn::SendStream,
    mut receive: quinn::RecvStream,
    dir: Rc<PathBuf>,
    manifest: Arc<Manifest>,
) {
    let Ok(request) = receive.read_to_end(REQUEST_BYTES).await else {
        let _ = send.reset(VarInt::from_u32(1));
        return;
    };
    let Ok(index) = <[u8; REQUEST_BYTES]>::try_from(request.as_slice()) else {
        let _ = send.reset(VarInt::from_u32(1));
        return;
    };
    let mut bytes = Vec::new();
    // A read from the page cache: done inline, as icn's chunk handler does.
    match state::read_chunk_into(&dir, &manifest, u32::from_le_bytes(index), &mut bytes) {
        Ok(()) => {
            if send.write_chunk(Bytes::from(bytes)).await.is_ok() {
                let _ = send.finish();
            }
        }
        Err(_) => {
            let _ = send.reset(VarInt::from_u32(2));
        }
    }
}

/// What the client's workers share (one thread: `Rc` + `RefCell`).
struct Fetch {
    manifest: Arc<Manifest>,
    base: PathBuf,
    /// Per peer, the chunks still to fetch from it, with the attempts made so far.
    queues: Vec<RefCell<VecDeque<(u32, u32)>>>,
    fetched: std::cell::Cell<u64>,
    errors: std::cell::Cell<u64>,
    first_error: RefCell<Option<String>>,
    /// Seconds the final fsync of every file took (part of the measured time).
    fsync_s: std::cell::Cell<Option<f64>>,
}

impl Fetch {
    fn fail(&self, error: String) {
        self.errors.set(self.errors.get() + 1);
        self.first_error.borrow_mut().get_or_insert(error);
    }
}

async fn run_client(
    config: quinn::ClientConfig,
    addresses: Vec<SocketAddr>,
    manifest: Arc<Manifest>,
    base: PathBuf,
    state_bytes: u64,
    timeout: Duration,
) -> Result<Run, String> {
    let mut endpoint = endpoint(None)?;
    endpoint.set_default_client_config(config);
    let mut connections = Vec::with_capacity(addresses.len());
    for address in &addresses {
        let connecting = endpoint
            .connect(*address, "localhost")
            .map_err(|e| format!("connect: {e}"))?;
        let connection = tokio::time::timeout(SETUP_TIMEOUT, connecting)
            .await
            .map_err(|_| "handshake timed out".to_string())?
            .map_err(|e| format!("handshake: {e}"))?;
        connections.push(connection);
    }
    let peers = connections.len();
    let mut queues = vec![VecDeque::new(); peers];
    for index in 0..manifest.chunks.len() as u32 {
        queues[index as usize % peers].push_back((index, 0));
    }
    let fetch = Rc::new(Fetch {
        manifest,
        base,
        queues: queues.into_iter().map(RefCell::new).collect(),
        fetched: std::cell::Cell::new(0),
        errors: std::cell::Cell::new(0),
        first_error: RefCell::new(None),
        fsync_s: std::cell::Cell::new(None),
    });
    let meter = RunMeter::start();
    let local = tokio::task::LocalSet::new();
    let work = local.run_until(fetch_all(fetch.clone(), &connections));
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => fetch.fail(error),
        Err(_) => fetch.fail(format!("sync did not finish in {timeout:?}")),
    }
    let chunks = fetch.manifest.chunks.len() as u64;
    let missing = chunks - fetch.fetched.get().min(chunks);
    if missing > 0 {
        fetch.fail(format!("{missing} chunks missing at the end"));
    }
    let errors = fetch.errors.get();
    let bytes = if missing == 0 { state_bytes } else { 0 };
    let mut run = meter.finish(
        bytes,
        fetch.fetched.get(),
        errors,
        fetch.first_error.borrow().clone(),
    );
    if let Some(seconds) = fetch.fsync_s.get() {
        run.measurement.extra.insert("fsync_s".into(), seconds);
    }
    for (name, value) in packet_figures(&connections) {
        run.measurement.extra.insert(name, value);
    }
    for connection in &connections {
        connection.close(VarInt::from_u32(0), b"done");
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, endpoint.wait_idle()).await;
    Ok(run)
}

/// Creates the files, runs the per-peer workers until every queue is empty, fsyncs the files.
async fn fetch_all(fetch: Rc<Fetch>, connections: &[Connection]) -> Result<(), String> {
    state::create_files(&fetch.base, &fetch.manifest)
        .map_err(|e| format!("creating the files: {e}"))?;
    let mut workers = Vec::new();
    for (peer, connection) in connections.iter().enumerate() {
        for _ in 0..QUINN_CHUNKS_IN_FLIGHT_PER_PEER {
            workers.push(tokio::task::spawn_local(worker(
                fetch.clone(),
                peer,
                connection.clone(),
            )));
        }
    }
    for worker in workers {
        worker.await.map_err(|e| format!("worker task: {e}"))?;
    }
    let flush = std::time::Instant::now();
    let synced = state::sync_files(&fetch.base, &fetch.manifest).map_err(|e| format!("fsync: {e}"));
    fetch.fsync_s.set(Some(flush.elapsed().as_secs_f64()));
    synced
}

/// One in-flight slot of one peer: takes that peer's next chunk until none is left.
async fn worker(fetch: Rc<Fetch>, peer: usize, connection: Connection) {
    loop {
        let next = fetch.queues[peer].borrow_mut().pop_front();
        let Some((index, attempts)) = next else {
            return;
        };
        match fetch_chunk(&fetch, &connection, index).await {
            Ok(()) => fetch.fetched.set(fetch.fetched.get() + 1),
            Err(error) => {
                fetch.fail(format!("chunk {index} from peer {peer}: {error}"));
                if attempts + 1 < CHUNK_ATTEMPTS_MAX {
                    fetch.queues[peer]
                        .borrow_mut()
                        .push_back((index, attempts + 1));
                }
            }
        }
    }
}

/// Fetches, verifies and writes one chunk.
async fn fetch_chunk(fetch: &Fetch, connection: &Connection, index: u32) -> Result<(), String> {
    let expected = fetch.manifest.chunks[index as usize];
    let (mut send, mut receive) = connection
        .open_bi()
        .await
        .map_err(|e| format!("open_bi: {e}"))?;
    send.write_all(&index.to_le_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    send.finish().map_err(|e| format!("finish: {e}"))?;
    let mut pieces: Vec<Bytes> = Vec::new();
    let mut received = 0usize;
    let mut hasher = ChunkHasher::new();
    while let Some(chunk) = receive
        .read_chunk(expected.size as usize, true)
        .await
        .map_err(|e| format!("read: {e}"))?
    {
        received += chunk.bytes.len();
        if received > expected.size as usize {
            return Err(format!("more than the chunk's {} bytes", expected.size));
        }
        hasher.update(&chunk.bytes);
        pieces.push(chunk.bytes);
    }
    if hasher.finish() != expected.hash {
        return Err(format!("{received} bytes that do not match the manifest"));
    }
    write_pieces(&fetch.base, &fetch.manifest, index, &pieces)
}

/// Whole-run UDP figures of the client over every connection: the mean size of the datagrams
/// it received (proof of the packet size cap) and the packets it sent that were lost.
fn packet_figures(connections: &[Connection]) -> BTreeMap<String, f64> {
    let (mut datagrams, mut bytes, mut lost) = (0u64, 0u64, 0u64);
    for connection in connections {
        let stats = connection.stats();
        datagrams += stats.udp_rx.datagrams;
        bytes += stats.udp_rx.bytes;
        lost += stats.path.lost_packets;
    }
    let mut figures = BTreeMap::from([
        (
            "client_udp_datagrams_received".to_string(),
            datagrams as f64,
        ),
        ("client_lost_packets".to_string(), lost as f64),
    ]);
    if datagrams > 0 {
        figures.insert(
            "client_udp_datagram_bytes_mean".into(),
            bytes as f64 / datagrams as f64,
        );
    }
    figures
}

fn write_pieces(
    base: &Path,
    manifest: &Manifest,
    index: u32,
    pieces: &[Bytes],
) -> Result<(), String> {
    state::write_chunk_pieces(base, manifest, index, pieces).map_err(|e| format!("pwrite: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quinn_fetches_a_tiny_state_from_three_peers() {
        let state = SyncState::build(state::tests::tiny_spec(), 1 << 20).unwrap();
        let run = QuinnSync.run(&state, SyncCase { peers: 3 }).unwrap();
        let measurement = &run.measurement;
        assert_eq!(measurement.errors, 0, "{:?}", measurement.first_error);
        assert_eq!(measurement.bytes, state.state_bytes());
        assert_eq!(measurement.ops, u64::from(state.chunk_count()));
    }
}
