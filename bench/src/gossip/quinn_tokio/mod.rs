//! `quinn-tokio` for the gossip suite: an IC-like consensus manager on quinn 0.11 + tokio, the
//! stack the IC replica uses, with the transport suite's quinn setup (1452-byte packets, MTU
//! discovery off, the shared stream/connection windows, 2 MiB UDP socket buffers, GSO as quinn
//! enables it, rustls with ring).
//!
//! As the IC's consensus manager does, a producer gives each new artifact a slot in its slot
//! table and sends the slot update to every peer on a stream of its own (here a request with an
//! empty response, as the IC's transport `rpc`): the artifact itself when it is under the push
//! threshold, otherwise an advert (id + size). A receiver keeps each peer's slot table, dedups
//! by id, and fetches an advertised artifact with a request/response stream to the peer that
//! advertised it (the producer). When every peer has an artifact the pool purges it and the
//! producer frees its slot.
//!
//! Each node is one thread with a current-thread tokio runtime (node state in `Rc<RefCell<_>>`
//! on a `LocalSet`, so no lock anywhere), one endpoint (one UDP socket) for all its connections;
//! node `i` dials every node `j > i` and accepts the others.

mod receiver;
mod wire;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use quinn::{Connection, Endpoint, VarInt};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::LocalSet;

use super::case::ARTIFACT_BYTES_MAX;
use super::harness::SETUP_TIMEOUT;
use super::{Artifact, ArtifactId, GossipSystem, NodeHarness, PoolEvent};
use crate::host::pin_current_thread;
use crate::transport::case::quic;
use crate::transport::quinn_tokio::{
    client_config, current_thread_runtime, endpoint, server_config, Identity,
};
use receiver::{ReceiverCore, UpdateAction};
use wire::{Request, SlotUpdate, REQUEST_BYTES_MAX};

/// How long a closing node waits for its CONNECTION_CLOSE frames to go out.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Application error code on a stream the node refuses (bad request, unknown artifact).
const REFUSED: VarInt = VarInt::from_u32(1);

pub struct QuinnGossip;

impl GossipSystem for QuinnGossip {
    fn name(&self) -> &'static str {
        "quinn-tokio"
    }

    fn run(&self, nodes: Vec<NodeHarness>) -> Result<BTreeMap<String, f64>, String> {
        let identity = Identity::generate()?;
        let server = server_config(&identity)?;
        let client = client_config(&identity)?;
        let (address_sender, addresses) = mpsc::channel();
        let mut books = Vec::new();
        let mut threads = Vec::new();
        for node in nodes {
            let (book_sender, book) = oneshot::channel();
            books.push(book_sender);
            let (server, client, address_sender) =
                (server.clone(), client.clone(), address_sender.clone());
            let thread = thread::Builder::new()
                .name(format!("gossip-quinn-{}", node.index()))
                .spawn(move || {
                    pin_current_thread(node.core());
                    let runtime = current_thread_runtime()?;
                    let setup = NodeSetup {
                        server,
                        client,
                        address_sender,
                        book,
                    };
                    LocalSet::new().block_on(&runtime, run_node(node, setup))
                })
                .map_err(|e| format!("node thread: {e}"))?;
            threads.push(thread);
        }
        drop(address_sender);
        // Without a full book every node's wait for it fails at once, and the threads end.
        let book = collect_addresses(&addresses, books.len());
        if let Ok(book) = &book {
            for sender in books {
                let _ = sender.send(book.clone());
            }
        } else {
            drop(books);
        }
        let mut figures = NodeFigures::default();
        let mut first_error = book.err();
        for thread in threads {
            match thread.join() {
                Ok(Ok(node)) => figures.add(&node),
                Ok(Err(error)) => {
                    first_error.get_or_insert(error);
                }
                Err(_) => {
                    first_error.get_or_insert("node thread panicked".into());
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(figures.report()),
        }
    }

    fn config(&self) -> BTreeMap<String, Value> {
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
                "runtime".into(),
                json!("one tokio current-thread runtime + LocalSet per node"),
            ),
            (
                "streams".into(),
                json!("one bidirectional stream per slot update (empty response) and per fetch"),
            ),
            ("tls".into(), json!("rustls 0.23, ring provider, TLS 1.3")),
        ])
    }
}

fn collect_addresses(
    addresses: &mpsc::Receiver<(usize, Result<SocketAddr, String>)>,
    nodes: usize,
) -> Result<Vec<SocketAddr>, String> {
    let mut book = vec![None; nodes];
    for _ in 0..nodes {
        let (index, address) = addresses
            .recv_timeout(SETUP_TIMEOUT)
            .map_err(|_| "a node did not bind its endpoint".to_string())?;
        book[index] = Some(address?);
    }
    Ok(book.into_iter().flatten().collect())
}

/// What a node thread needs to come up and find the others.
struct NodeSetup {
    server: quinn::ServerConfig,
    client: quinn::ClientConfig,
    address_sender: mpsc::Sender<(usize, Result<SocketAddr, String>)>,
    book: oneshot::Receiver<Vec<SocketAddr>>,
}

/// One node's state, shared by its tasks on its thread.
struct Node {
    harness: NodeHarness,
    /// Connection to each peer; `None` at this node's own index.
    connections: Vec<Option<Connection>>,
    sender: RefCell<SenderState>,
    receiver: RefCell<ReceiverCore>,
}

/// The producing side: this node's slot table and the artifacts it serves. Both are bounded by
/// the harness window: a slot and an artifact are released on purge.
#[derive(Default)]
struct SenderState {
    commit_id: u64,
    next_slot: u64,
    free_slots: Vec<u64>,
    served: HashMap<ArtifactId, (Bytes, u64)>,
}

async fn run_node(harness: NodeHarness, setup: NodeSetup) -> Result<NodeFigures, String> {
    let index = harness.index();
    let bound = endpoint(Some(setup.server)).and_then(|endpoint| {
        let local = endpoint.local_addr().map_err(|e| e.to_string())?;
        Ok((endpoint, local))
    });
    let mut endpoint = match bound {
        Ok((endpoint, local)) => {
            let _ = setup.address_sender.send((index, Ok(local)));
            endpoint
        }
        Err(error) => {
            let _ = setup.address_sender.send((index, Err(error.clone())));
            return Err(error);
        }
    };
    endpoint.set_default_client_config(setup.client);
    let book = setup
        .book
        .await
        .map_err(|_| "no address book: another node failed to start".to_string())?;
    let connections = tokio::time::timeout(SETUP_TIMEOUT, connect_all(&endpoint, &book, index))
        .await
        .map_err(|_| format!("node {index}: connecting timed out"))??;
    harness.ready();
    let node = Rc::new(Node {
        receiver: RefCell::new(ReceiverCore::new(book.len())),
        sender: RefCell::default(),
        harness,
        connections,
    });
    for peer in (0..book.len()).filter(|&peer| peer != index) {
        tokio::task::spawn_local(serve_peer(node.clone(), peer));
    }
    produce(&node).await;
    let figures = NodeFigures::of(&node.connections);
    endpoint.close(VarInt::from_u32(0), b"done");
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, endpoint.wait_idle()).await;
    Ok(figures)
}

/// Dials every higher-indexed node and accepts every lower-indexed one.
async fn connect_all(
    endpoint: &Endpoint,
    book: &[SocketAddr],
    index: usize,
) -> Result<Vec<Option<Connection>>, String> {
    let dials: Vec<_> = (index + 1..book.len())
        .map(|peer| {
            let connecting = endpoint.connect(book[peer], "localhost");
            tokio::task::spawn_local(async move {
                let connection = connecting
                    .map_err(|e| format!("connect: {e}"))?
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
                Ok::<_, String>((peer, connection))
            })
        })
        .collect();
    let mut connections: Vec<Option<Connection>> = vec![None; book.len()];
    for _ in 0..index {
        let incoming = endpoint.accept().await.ok_or("endpoint closed")?;
        let connection = incoming.await.map_err(|e| format!("handshake: {e}"))?;
        let peer = book
            .iter()
            .position(|address| *address == connection.remote_address())
            .filter(|&peer| peer < index)
            .ok_or_else(|| format!("connection from a stranger {}", connection.remote_address()))?;
        connections[peer] = Some(connection);
    }
    for dial in dials {
        let (peer, connection) = dial.await.map_err(|e| format!("dial task: {e}"))??;
        connections[peer] = Some(connection);
    }
    Ok(connections)
}

/// The consensus manager's sending side: one event of the pool at a time.
async fn produce(node: &Rc<Node>) {
    while let Some(event) = node.harness.next_event().await {
        match event {
            PoolEvent::Insert(artifact) => insert(node, artifact),
            PoolEvent::Purge(id) => {
                let mut sender = node.sender.borrow_mut();
                match sender.served.remove(&id) {
                    Some((_, slot)) => sender.free_slots.push(slot),
                    None => node
                        .harness
                        .record_error("purge of an artifact never inserted"),
                }
            }
        }
    }
}

fn insert(node: &Rc<Node>, artifact: Artifact) {
    let push = node.harness.spec().pushed();
    let update = {
        let mut sender = node.sender.borrow_mut();
        let slot = sender.free_slots.pop().unwrap_or_else(|| {
            sender.next_slot += 1;
            sender.next_slot - 1
        });
        sender.commit_id += 1;
        let update = wire::encode_update(
            sender.commit_id,
            slot,
            &artifact.id,
            &artifact.content,
            push,
        );
        sender.served.insert(artifact.id, (artifact.content, slot));
        update
    };
    for connection in node.connections.iter().flatten() {
        let (connection, update, harness) =
            (connection.clone(), update.clone(), node.harness.clone());
        tokio::task::spawn_local(async move {
            if let Err(error) = send_update(&connection, update).await {
                harness.record_error(&format!("slot update: {error}"));
            }
        });
    }
}

async fn send_update(connection: &Connection, update: Bytes) -> Result<(), String> {
    let (mut send, mut receive) = connection
        .open_bi()
        .await
        .map_err(|e| format!("open_bi: {e}"))?;
    send.write_chunk(update)
        .await
        .map_err(|e| format!("write: {e}"))?;
    send.finish().map_err(|e| format!("finish: {e}"))?;
    receive
        .read_to_end(0)
        .await
        .map_err(|e| format!("response: {e}"))?;
    Ok(())
}

/// Accepts the streams a peer opens: its slot updates and its fetches of our artifacts.
async fn serve_peer(node: Rc<Node>, peer: usize) {
    let Some(connection) = node.connections[peer].clone() else {
        return;
    };
    loop {
        match connection.accept_bi().await {
            Ok((send, receive)) => {
                tokio::task::spawn_local(answer(node.clone(), peer, send, receive));
            }
            Err(error) => {
                node.harness
                    .record_error(&format!("connection to node {peer}: {error}"));
                return;
            }
        }
    }
}

async fn answer(
    node: Rc<Node>,
    peer: usize,
    mut send: quinn::SendStream,
    mut receive: quinn::RecvStream,
) {
    let request = match receive.read_to_end(REQUEST_BYTES_MAX).await {
        Ok(bytes) => wire::decode_request(Bytes::from(bytes)).map_err(|e| e.to_string()),
        Err(error) => Err(format!("request: {error}")),
    };
    let outcome = match request {
        Ok(Request::Update(update)) => {
            let result = on_update(&node, peer, update);
            let _ = send.finish();
            result
        }
        Ok(Request::Fetch(id)) => serve_fetch(&node, &id, &mut send).await,
        Err(error) => Err(error),
    };
    if let Err(error) = outcome {
        let _ = send.reset(REFUSED);
        node.harness
            .record_error(&format!("from node {peer}: {error}"));
    }
}

fn on_update(node: &Rc<Node>, peer: usize, update: SlotUpdate) -> Result<(), String> {
    let SlotUpdate {
        commit_id,
        slot,
        id,
        size,
        pushed,
    } = update;
    let action = node
        .receiver
        .borrow_mut()
        .on_update(peer, commit_id, slot, id, pushed.is_some())
        .map_err(|e| e.to_string())?;
    match (action, pushed) {
        (UpdateAction::Deliver, Some(content)) => node.harness.deliver(&id, &[content]),
        (UpdateAction::Fetch, _) => {
            tokio::task::spawn_local(fetch(node.clone(), peer, id, size as usize));
            Ok(())
        }
        _ => Ok(()),
    }
}

async fn serve_fetch(
    node: &Node,
    id: &ArtifactId,
    send: &mut quinn::SendStream,
) -> Result<(), String> {
    let content = node
        .sender
        .borrow()
        .served
        .get(id)
        .map(|(content, _)| content.clone());
    let content = content.ok_or_else(|| format!("fetch of unknown artifact {id:?}"))?;
    send.write_chunk(content)
        .await
        .map_err(|e| format!("write: {e}"))?;
    send.finish().map_err(|e| format!("finish: {e}"))
}

async fn fetch(node: Rc<Node>, peer: usize, id: ArtifactId, size: usize) {
    let result = match &node.connections[peer] {
        Some(connection) => download(connection, &id, size).await,
        None => Err("advert from a node without a connection".into()),
    };
    let delivered = match result {
        // The harness counts a refused delivery itself.
        Ok(chunks) => node.harness.deliver(&id, &chunks).is_ok(),
        Err(error) => {
            node.harness
                .record_error(&format!("fetch from node {peer}: {error}"));
            false
        }
    };
    node.receiver.borrow_mut().on_fetched(&id, delivered);
}

/// Fetches an artifact of `size` bytes as the chunks quinn hands out (no copy).
async fn download(
    connection: &Connection,
    id: &ArtifactId,
    size: usize,
) -> Result<Vec<Bytes>, String> {
    if size > ARTIFACT_BYTES_MAX {
        return Err(format!("advert of {size} bytes"));
    }
    let (mut send, mut receive) = connection
        .open_bi()
        .await
        .map_err(|e| format!("open_bi: {e}"))?;
    send.write_chunk(wire::encode_fetch(id))
        .await
        .map_err(|e| format!("write: {e}"))?;
    send.finish().map_err(|e| format!("finish: {e}"))?;
    let mut chunks = Vec::new();
    let mut received = 0usize;
    while let Some(chunk) = receive
        .read_chunk(size.max(1), true)
        .await
        .map_err(|e| format!("read: {e}"))?
    {
        received += chunk.bytes.len();
        if received > size {
            return Err(format!("answer longer than the advertised {size} bytes"));
        }
        chunks.push(chunk.bytes);
    }
    if received != size {
        return Err(format!("answer of {received} bytes, advertised {size}"));
    }
    Ok(chunks)
}

/// UDP and loss figures of a node's connections over the whole run (setup and drain included).
#[derive(Clone, Copy, Debug, Default)]
struct NodeFigures {
    datagrams_sent: u64,
    datagram_bytes_sent: u64,
    send_calls: u64,
    lost_packets: u64,
}

impl NodeFigures {
    fn of(connections: &[Option<Connection>]) -> NodeFigures {
        let mut figures = NodeFigures::default();
        for stats in connections.iter().flatten().map(Connection::stats) {
            figures.datagrams_sent += stats.udp_tx.datagrams;
            figures.datagram_bytes_sent += stats.udp_tx.bytes;
            figures.send_calls += stats.udp_tx.ios;
            figures.lost_packets += stats.path.lost_packets;
        }
        figures
    }

    fn add(&mut self, other: &NodeFigures) {
        self.datagrams_sent += other.datagrams_sent;
        self.datagram_bytes_sent += other.datagram_bytes_sent;
        self.send_calls += other.send_calls;
        self.lost_packets += other.lost_packets;
    }

    fn report(&self) -> BTreeMap<String, f64> {
        let mut report = BTreeMap::from([
            (
                "run_udp_datagrams_sent".to_string(),
                self.datagrams_sent as f64,
            ),
            ("run_lost_packets".to_string(), self.lost_packets as f64),
        ]);
        if self.datagrams_sent > 0 {
            report.insert(
                "run_udp_datagram_bytes_mean".into(),
                self.datagram_bytes_sent as f64 / self.datagrams_sent as f64,
            );
        }
        if self.send_calls > 0 {
            report.insert(
                "run_udp_datagrams_per_send_call".into(),
                self.datagrams_sent as f64 / self.send_calls as f64,
            );
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::case::{GossipCase, GossipSpec};
    use crate::gossip::harness::run_case;

    fn short(case: &str) -> GossipSpec {
        GossipSpec {
            warmup: Duration::from_millis(50),
            measure: Duration::from_millis(300),
            ..GossipSpec::standard(GossipCase::parse(case).unwrap(), true)
        }
    }

    fn assert_everything_delivered(spec: &GossipSpec) {
        let measurement = run_case(&QuinnGossip, spec).unwrap();
        assert_eq!(measurement.errors, 0, "{:?}", measurement.first_error);
        let inserted = measurement.extra["artifacts_inserted"];
        assert!(inserted > 0.0);
        let receivers = (spec.case.nodes - 1) as f64;
        assert_eq!(measurement.extra["deliveries_total"], inserted * receivers);
        assert_eq!(measurement.extra["duplicate_deliveries"], 0.0);
        assert!(measurement.ops > 0, "deliveries in the measured phase");
        assert_eq!(
            measurement.bytes,
            measurement.ops * spec.case.artifact_bytes as u64
        );
        let mean = measurement.extra["run_udp_datagram_bytes_mean"];
        assert!(
            mean <= f64::from(quic::PACKET_BYTES),
            "datagrams of {mean} bytes"
        );
    }

    #[test]
    fn quinn_gossip_delivers_every_advertised_artifact_to_every_receiver() {
        assert_everything_delivered(&short("n4-1KiB"));
    }

    #[test]
    fn quinn_gossip_delivers_pushed_artifacts() {
        let mut spec = short("n4-1KiB");
        spec.case.artifact_bytes = 512;
        assert!(spec.pushed());
        assert_everything_delivered(&spec);
    }
}
