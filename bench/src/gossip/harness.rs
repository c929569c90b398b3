//! The workload every gossip system runs, and the clock that measures it.
//!
//! The harness plays the artifact pool of every node: it makes each node's artifacts, keeps the
//! per-producer window, verifies what receivers deliver, tells producers when an artifact has
//! reached every peer (so they purge it, as the IC's artifact manager does), and measures. A
//! system only moves artifacts: see [`super::GossipSystem`] for the contract.
//!
//! All nodes live in one process, so one [`Instant`] clock serves producer and receivers alike:
//! latency is the receiver's delivery instant minus the producer's insert instant.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::{Duration, Instant};

use boring::sha::Sha256;
use bytes::Bytes;

use super::case::GossipSpec;
use super::GossipSystem;
use crate::stats::LatencyRecorder;
use crate::transport::load::{Measurement, PhaseStart, WorkerOutcome};

/// How long the nodes have to connect to each other before the run is abandoned.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Granularity of the clock thread's waits (phase ends and the drain check).
const CLOCK_TICK: Duration = Duration::from_millis(2);

/// Bytes at the start of every artifact that name its producer (u32 LE) and sequence (u64 LE):
/// they make every artifact unique and let a delivery find its producer's books.
pub const ARTIFACT_HEADER_BYTES: usize = 12;

/// An artifact's id: SHA-256 of its content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ArtifactId(pub [u8; 32]);

impl std::fmt::Debug for ArtifactId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for byte in &self.0[..6] {
            write!(f, "{byte:02x}")?;
        }
        f.write_str("..")
    }
}

impl ArtifactId {
    /// The id of `content`.
    pub fn of(content: &[u8]) -> ArtifactId {
        ArtifactId(boring::sha::sha256(content))
    }
}

/// An artifact a producer inserts: the content is one shared buffer (clone it per peer; icn
/// turns it into a `Buf` with `Buf::from_vec(Vec::from(content))`, which does not copy).
#[derive(Clone, Debug)]
pub struct Artifact {
    pub id: ArtifactId,
    pub content: Bytes,
}

/// What the pool asks a node's consensus manager to do.
#[derive(Clone, Debug)]
pub enum PoolEvent {
    /// A new artifact of this node: send it (push or advert) to every peer, serve fetches of it.
    Insert(Artifact),
    /// Every peer has this artifact: stop serving it and free its slot.
    Purge(ArtifactId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
enum Phase {
    Setup = 0,
    Warmup = 1,
    Measure = 2,
    Drain = 3,
    Finished = 4,
}

impl Phase {
    fn from_u8(value: u8) -> Phase {
        match value {
            0 => Phase::Setup,
            1 => Phase::Warmup,
            2 => Phase::Measure,
            3 => Phase::Drain,
            _ => Phase::Finished,
        }
    }

    fn producing(self) -> bool {
        matches!(self, Phase::Warmup | Phase::Measure)
    }
}

/// One producer's books. The in-flight map is bounded by the spec's window.
#[derive(Default)]
struct Producer {
    next_sequence: u64,
    in_flight: HashMap<ArtifactId, InFlight>,
    /// Artifacts delivered everywhere, not yet handed to the node as purges; at most `window`
    /// (an artifact leaves `in_flight` when it enters here).
    purges: VecDeque<ArtifactId>,
    waker: Option<Waker>,
    inserted: u64,
}

struct InFlight {
    inserted_at: Instant,
    /// Bit `i` set: node `i` has delivered it.
    delivered_mask: u64,
}

/// What one receiver delivered.
#[derive(Default)]
struct Tally {
    deliveries: u64,
    measured_deliveries: u64,
    measured_bytes: u64,
    measured_latency: LatencyRecorder,
}

#[derive(Default)]
struct ErrorLog {
    count: u64,
    first: Option<String>,
    duplicates: u64,
}

struct Shared {
    spec: GossipSpec,
    cores: Vec<Option<usize>>,
    /// Pseudo-random content every artifact copies before its header is written.
    template: Vec<u8>,
    phase: AtomicU8,
    ready: Vec<AtomicBool>,
    producers: Vec<Mutex<Producer>>,
    tallies: Vec<Mutex<Tally>>,
    errors: Mutex<ErrorLog>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking node thread already fails the run; its books stay readable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn new(spec: GossipSpec, cores: Vec<Option<usize>>) -> Shared {
        let nodes = spec.case.nodes;
        Shared {
            template: pseudo_random_bytes(spec.case.artifact_bytes, 0x1c4_905_51b),
            spec,
            cores,
            phase: AtomicU8::new(Phase::Setup as u8),
            ready: (0..nodes).map(|_| AtomicBool::new(false)).collect(),
            producers: (0..nodes).map(|_| Mutex::default()).collect(),
            tallies: (0..nodes).map(|_| Mutex::default()).collect(),
            errors: Mutex::default(),
        }
    }

    fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Moves to `phase` and wakes every producer so it sees the change.
    fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
        for producer in &self.producers {
            let waker = lock(producer).waker.take();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    fn record_error(&self, error: &str) {
        if self.phase() == Phase::Finished {
            return; // connections closing at the end are not failed operations
        }
        let mut log = lock(&self.errors);
        log.count += 1;
        log.first.get_or_insert_with(|| error.to_string());
    }

    /// Every node but `producer`.
    fn receivers_mask(&self, producer: usize) -> u64 {
        let all = u64::MAX >> (64 - self.spec.case.nodes);
        all & !(1u64 << producer)
    }

    fn make_artifact(&self, producer: usize, sequence: u64) -> Artifact {
        let mut content = self.template.clone();
        content[..4].copy_from_slice(&(producer as u32).to_le_bytes());
        content[4..ARTIFACT_HEADER_BYTES].copy_from_slice(&sequence.to_le_bytes());
        Artifact {
            id: ArtifactId::of(&content),
            content: Bytes::from(content),
        }
    }

    /// Receiver deliveries still missing, over every producer.
    fn missing_deliveries(&self) -> u64 {
        let peers = self.spec.case.nodes as u64 - 1;
        self.producers
            .iter()
            .map(|producer| {
                lock(producer)
                    .in_flight
                    .values()
                    .map(|entry| peers - u64::from(entry.delivered_mask.count_ones()))
                    .sum::<u64>()
            })
            .sum()
    }

    /// The measured figures, summed over receivers, as the transport suite's outcome type.
    fn measured_outcome(&self, end: Instant) -> WorkerOutcome {
        let mut outcome = WorkerOutcome {
            finished: Some(end),
            ..WorkerOutcome::default()
        };
        for tally in &self.tallies {
            let tally = lock(tally);
            outcome.ops += tally.measured_deliveries;
            outcome.bytes += tally.measured_bytes;
            outcome.latency.merge(&tally.measured_latency);
        }
        outcome
    }
}

/// xorshift64* bytes: incompressible enough that no layer can cheat, cheap to make.
fn pseudo_random_bytes(length: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut bytes = Vec::with_capacity(length + 8);
    while bytes.len() < length {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        bytes.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    bytes.truncate(length);
    bytes
}

/// One node's handle on the harness. Cheap to clone, `Send + Sync`: tasks of the node may each
/// hold one. Calls from any thread are correct; the figures assume the node's own thread.
#[derive(Clone)]
pub struct NodeHarness {
    index: usize,
    shared: Arc<Shared>,
}

impl NodeHarness {
    /// This node's index, `0..nodes()`.
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn nodes(&self) -> usize {
        self.shared.spec.case.nodes
    }

    /// The core this node's thread should pin itself to (`None`: leave it to the scheduler).
    pub fn core(&self) -> Option<usize> {
        self.shared.cores[self.index]
    }

    pub fn spec(&self) -> &GossipSpec {
        &self.shared.spec
    }

    /// Says that this node is connected to every peer; the warm-up starts once all are.
    pub fn ready(&self) {
        self.shared.ready[self.index].store(true, Ordering::Release);
    }

    /// The next thing to do. Purges first; a new artifact once the window has room and the run
    /// is producing; `None` once the run is over (every node then shuts down). One caller per
    /// node at a time (it is the node's consensus manager loop).
    pub async fn next_event(&self) -> Option<PoolEvent> {
        poll_fn(|context| self.poll_event(context)).await
    }

    fn poll_event(&self, context: &mut Context<'_>) -> Poll<Option<PoolEvent>> {
        let shared = &*self.shared;
        let sequence = {
            let mut producer = lock(&shared.producers[self.index]);
            // Read under the lock: `set_phase` stores, then takes the waker under it.
            let phase = shared.phase();
            if phase == Phase::Finished {
                return Poll::Ready(None);
            }
            if let Some(id) = producer.purges.pop_front() {
                return Poll::Ready(Some(PoolEvent::Purge(id)));
            }
            if !phase.producing() || producer.in_flight.len() >= shared.spec.window {
                match &mut producer.waker {
                    Some(waker) if waker.will_wake(context.waker()) => {}
                    slot => *slot = Some(context.waker().clone()),
                }
                return Poll::Pending;
            }
            producer.next_sequence += 1;
            producer.next_sequence
        };
        // Made outside the lock: receivers delivering this producer's artifacts must not wait
        // for a 4 MiB copy and hash.
        let artifact = shared.make_artifact(self.index, sequence);
        let mut producer = lock(&shared.producers[self.index]);
        // The drain may have begun while the artifact was made: an artifact inserted now would
        // escape the drain's count of missing deliveries, so it is dropped unsent.
        let phase = shared.phase();
        if !phase.producing() {
            if phase == Phase::Finished {
                return Poll::Ready(None);
            }
            producer.waker = Some(context.waker().clone());
            return Poll::Pending;
        }
        let entry = InFlight {
            inserted_at: Instant::now(),
            delivered_mask: 0,
        };
        let replaced = producer.in_flight.insert(artifact.id, entry);
        assert!(replaced.is_none(), "sequence numbers make artifacts unique");
        producer.inserted += 1;
        Poll::Ready(Some(PoolEvent::Insert(artifact)))
    }

    /// This node now holds the whole artifact `id`, as `parts` in order. The harness checks the
    /// content against the id, that it was not delivered here before, and counts it. An error is
    /// counted in the run's errors and returned (the caller need not record it again).
    pub fn deliver<C: AsRef<[u8]>>(&self, id: &ArtifactId, parts: &[C]) -> Result<(), String> {
        let result = self.try_deliver(id, parts);
        if let Err(error) = &result {
            self.shared
                .record_error(&format!("node {}: {error}", self.index));
        }
        result
    }

    fn try_deliver<C: AsRef<[u8]>>(&self, id: &ArtifactId, parts: &[C]) -> Result<(), String> {
        let shared = &*self.shared;
        let (producer, length) = verify(id, parts)?;
        if producer >= self.nodes() {
            return Err(format!("artifact names producer {producer}"));
        }
        if producer == self.index {
            return Err("artifact delivered to its own producer".into());
        }
        let delivered_at = Instant::now();
        let waker = {
            let mut books = lock(&shared.producers[producer]);
            let Some(entry) = books.in_flight.get_mut(id) else {
                lock(&shared.errors).duplicates += 1;
                return Err(format!(
                    "artifact {id:?} delivered again after every peer had it"
                ));
            };
            let bit = 1u64 << self.index;
            if entry.delivered_mask & bit != 0 {
                lock(&shared.errors).duplicates += 1;
                return Err(format!("artifact {id:?} delivered twice"));
            }
            entry.delivered_mask |= bit;
            let latency = delivered_at.saturating_duration_since(entry.inserted_at);
            let waker = if entry.delivered_mask == shared.receivers_mask(producer) {
                books.in_flight.remove(id);
                books.purges.push_back(*id);
                books.waker.take()
            } else {
                None
            };
            // Counted while the producer's books are held: once the drain sees no delivery
            // missing, every delivery it waited for is in the tallies too.
            let mut tally = lock(&shared.tallies[self.index]);
            tally.deliveries += 1;
            if shared.phase() == Phase::Measure {
                tally.measured_deliveries += 1;
                tally.measured_bytes += length as u64;
                tally.measured_latency.record(latency);
            }
            waker
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Counts a failed operation of this node (a failed send, fetch, or a peer's bad message).
    /// Errors once the run is over (connections closing) are not counted.
    pub fn record_error(&self, error: &str) {
        self.shared
            .record_error(&format!("node {}: {error}", self.index));
    }

    /// Whether the run is over (the node should shut down).
    pub fn is_finished(&self) -> bool {
        self.shared.phase() == Phase::Finished
    }
}

/// Hashes `parts` against `id`; returns the producer named in the header and the length.
fn verify<C: AsRef<[u8]>>(id: &ArtifactId, parts: &[C]) -> Result<(usize, usize), String> {
    let mut hasher = Sha256::new();
    let mut header = [0u8; ARTIFACT_HEADER_BYTES];
    let mut length = 0usize;
    for part in parts {
        let bytes = part.as_ref();
        if length < ARTIFACT_HEADER_BYTES {
            let take = bytes.len().min(ARTIFACT_HEADER_BYTES - length);
            header[length..length + take].copy_from_slice(&bytes[..take]);
        }
        hasher.update(bytes);
        length += bytes.len();
    }
    if hasher.finish() != id.0 {
        return Err(format!("content of {length} bytes does not hash to {id:?}"));
    }
    if length < ARTIFACT_HEADER_BYTES {
        return Err(format!("artifact of {length} bytes has no header"));
    }
    let producer = u32::from_le_bytes(header[..4].try_into().expect("4-byte slice"));
    Ok((producer as usize, length))
}

/// Round-robin over the cores this process may use when there are at least two; otherwise the
/// scheduler places the node threads.
fn node_cores(nodes: usize) -> Vec<Option<usize>> {
    let ids: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .iter()
        .map(|core| core.id)
        .collect();
    (0..nodes)
        .map(|node| (ids.len() >= 2).then(|| ids[node % ids.len()]))
        .collect()
}

/// Runs one case of `system`: nodes connect, warm up, are measured, drain, stop.
pub fn run_case(system: &dyn GossipSystem, spec: &GossipSpec) -> Result<Measurement, String> {
    spec.validate()?;
    let nodes = spec.case.nodes;
    let shared = Arc::new(Shared::new(spec.clone(), node_cores(nodes)));
    let handles = (0..nodes)
        .map(|index| NodeHarness {
            index,
            shared: shared.clone(),
        })
        .collect();
    let clock = {
        let shared = shared.clone();
        thread::Builder::new()
            .name("gossip-clock".into())
            .spawn(move || keep_time(&shared))
            .map_err(|e| format!("clock thread: {e}"))?
    };
    let system_result = system.run(handles);
    // A system that returns early (it failed to start) must not leave the clock waiting.
    shared.set_phase(Phase::Finished);
    let measured = clock
        .join()
        .map_err(|_| "clock thread panicked".to_string())?;
    let system_extra = system_result?;
    let mut measurement = measured?;
    measurement.extra.extend(system_extra);
    Ok(measurement)
}

/// The clock thread: phases, the measurement, the drain.
fn keep_time(shared: &Shared) -> Result<Measurement, String> {
    wait_until_ready(shared)?;
    shared.set_phase(Phase::Warmup);
    sleep_unless_finished(shared, shared.spec.warmup)?;
    let start = PhaseStart::now();
    shared.set_phase(Phase::Measure);
    sleep_unless_finished(shared, shared.spec.measure)?;
    shared.set_phase(Phase::Drain);
    let end = Instant::now();
    let mut measurement = start.finish(shared.measured_outcome(end));
    let drain_started = Instant::now();
    while shared.missing_deliveries() > 0 && drain_started.elapsed() < shared.spec.drain_timeout {
        sleep_unless_finished(shared, CLOCK_TICK)?;
    }
    let drain = drain_started.elapsed();
    let missing = shared.missing_deliveries();
    shared.set_phase(Phase::Finished);
    let log = lock(&shared.errors);
    measurement.errors = log.count + missing;
    measurement.first_error = log
        .first
        .clone()
        .or_else(|| (missing > 0).then(|| format!("{missing} deliveries missing after the drain")));
    measurement
        .extra
        .extend(run_figures(shared, &log, missing, drain));
    Ok(measurement)
}

fn run_figures(
    shared: &Shared,
    log: &ErrorLog,
    missing: u64,
    drain: Duration,
) -> BTreeMap<String, f64> {
    let inserted: u64 = shared.producers.iter().map(|p| lock(p).inserted).sum();
    let deliveries: u64 = shared.tallies.iter().map(|t| lock(t).deliveries).sum();
    BTreeMap::from([
        ("artifacts_inserted".to_string(), inserted as f64),
        ("deliveries_total".to_string(), deliveries as f64),
        ("duplicate_deliveries".to_string(), log.duplicates as f64),
        ("missing_deliveries".to_string(), missing as f64),
        ("drain_s".to_string(), drain.as_secs_f64()),
    ])
}

fn wait_until_ready(shared: &Shared) -> Result<(), String> {
    let started = Instant::now();
    loop {
        if shared
            .ready
            .iter()
            .all(|ready| ready.load(Ordering::Acquire))
        {
            return Ok(());
        }
        if started.elapsed() > SETUP_TIMEOUT {
            let waiting = shared
                .ready
                .iter()
                .filter(|ready| !ready.load(Ordering::Acquire))
                .count();
            shared.set_phase(Phase::Finished);
            return Err(format!(
                "{waiting} nodes not connected after {SETUP_TIMEOUT:?}"
            ));
        }
        sleep_unless_finished(shared, CLOCK_TICK)?;
    }
}

/// Sleeps `duration` in ticks; fails at once if the system stopped the run.
fn sleep_unless_finished(shared: &Shared, duration: Duration) -> Result<(), String> {
    let until = Instant::now() + duration;
    loop {
        if shared.phase() == Phase::Finished {
            return Err("the system stopped before the run ended".into());
        }
        let now = Instant::now();
        if now >= until {
            return Ok(());
        }
        thread::sleep((until - now).min(CLOCK_TICK));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;
    use std::task::Wake;

    use super::*;
    use crate::gossip::case::GossipCase;

    /// Runs a future on this thread, parking between polls.
    pub(crate) fn block_on<F: std::future::Future>(future: F) -> F::Output {
        struct Unpark(thread::Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(thread::current())));
        let mut context = Context::from_waker(&waker);
        let mut future = std::pin::pin!(future);
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
                return output;
            }
            thread::park_timeout(Duration::from_millis(5));
        }
    }

    fn spec(nodes: usize, window: usize) -> GossipSpec {
        GossipSpec {
            window,
            warmup: Duration::from_millis(20),
            measure: Duration::from_millis(100),
            ..GossipSpec::standard(
                GossipCase {
                    nodes,
                    artifact_bytes: 1 << 10,
                },
                true,
            )
        }
    }

    fn handles(spec: GossipSpec) -> (Arc<Shared>, Vec<NodeHarness>) {
        let nodes = spec.case.nodes;
        let shared = Arc::new(Shared::new(spec, vec![None; nodes]));
        let handles = (0..nodes)
            .map(|index| NodeHarness {
                index,
                shared: shared.clone(),
            })
            .collect();
        (shared, handles)
    }

    fn poll_once(node: &NodeHarness) -> Poll<Option<PoolEvent>> {
        node.poll_event(&mut Context::from_waker(Waker::noop()))
    }

    fn insert(node: &NodeHarness) -> Artifact {
        match poll_once(node) {
            Poll::Ready(Some(PoolEvent::Insert(artifact))) => artifact,
            other => panic!("expected an insert, got {other:?}"),
        }
    }

    #[test]
    fn window_purges_and_the_end_of_the_run() {
        let (shared, nodes) = handles(spec(3, 2));
        assert!(
            poll_once(&nodes[0]).is_pending(),
            "nothing before the warm-up"
        );
        shared.set_phase(Phase::Measure);
        let first = insert(&nodes[0]);
        let second = insert(&nodes[0]);
        assert_ne!(first.id, second.id);
        assert!(poll_once(&nodes[0]).is_pending(), "window of 2 is full");
        nodes[1].deliver(&first.id, &[&first.content]).unwrap();
        assert!(poll_once(&nodes[0]).is_pending(), "node 2 still lacks it");
        // Content may arrive in any split.
        let (head, tail) = first.content.split_at(5);
        nodes[2].deliver(&first.id, &[head, tail]).unwrap();
        assert!(
            matches!(poll_once(&nodes[0]), Poll::Ready(Some(PoolEvent::Purge(id))) if id == first.id)
        );
        insert(&nodes[0]);
        let tally = lock(&shared.tallies[2]);
        assert_eq!((tally.measured_deliveries, tally.measured_bytes), (1, 1024));
        assert_eq!(tally.measured_latency.count(), 1);
        drop(tally);
        assert_eq!(shared.missing_deliveries(), 2 + 2);
        shared.set_phase(Phase::Finished);
        assert!(matches!(poll_once(&nodes[0]), Poll::Ready(None)));
    }

    #[test]
    fn bad_deliveries_are_errors() {
        let (shared, nodes) = handles(spec(3, 4));
        shared.set_phase(Phase::Warmup);
        let artifact = insert(&nodes[1]);
        let mut forged = artifact.content.to_vec();
        forged[100] ^= 1;
        assert!(nodes[0].deliver(&artifact.id, &[&forged]).is_err());
        assert!(
            nodes[1]
                .deliver(&artifact.id, &[&artifact.content])
                .is_err(),
            "own producer"
        );
        assert!(nodes[0]
            .deliver(&artifact.id, &[&artifact.content[..5]])
            .is_err());
        let short = [1u8, 2, 3];
        assert!(nodes[0]
            .deliver(&ArtifactId::of(&short), &[&short])
            .is_err());
        nodes[0]
            .deliver(&artifact.id, &[&artifact.content])
            .unwrap();
        assert!(
            nodes[0]
                .deliver(&artifact.id, &[&artifact.content])
                .is_err(),
            "twice"
        );
        nodes[2]
            .deliver(&artifact.id, &[&artifact.content])
            .unwrap();
        assert!(
            nodes[2]
                .deliver(&artifact.id, &[&artifact.content])
                .is_err(),
            "after purge"
        );
        let log = lock(&shared.errors);
        assert_eq!((log.count, log.duplicates), (6, 2));
        assert!(log.first.as_deref().unwrap().contains("does not hash"));
        drop(log);
        assert_eq!(
            lock(&shared.tallies[0]).measured_deliveries,
            0,
            "warm-up only"
        );
        shared.set_phase(Phase::Finished);
        nodes[0].record_error("closing");
        assert_eq!(
            lock(&shared.errors).count,
            6,
            "errors after the end are not counted"
        );
    }

    /// A system with no network: a producer hands each artifact straight to every receiver's
    /// harness. It checks the clock, phases and drain with nothing else in the way.
    struct Direct;

    impl GossipSystem for Direct {
        fn name(&self) -> &'static str {
            "direct"
        }

        fn run(&self, nodes: Vec<NodeHarness>) -> Result<BTreeMap<String, f64>, String> {
            let threads: Vec<_> = nodes
                .iter()
                .map(|node| {
                    let (node, peers) = (node.clone(), nodes.clone());
                    thread::spawn(move || {
                        node.ready();
                        while let Some(event) = block_on(node.next_event()) {
                            if let PoolEvent::Insert(artifact) = event {
                                for peer in peers.iter().filter(|p| p.index() != node.index()) {
                                    let _ = peer.deliver(&artifact.id, &[&artifact.content]);
                                }
                            }
                        }
                    })
                })
                .collect();
            for thread in threads {
                thread.join().map_err(|_| "node panicked".to_string())?;
            }
            Ok(BTreeMap::from([("direct".to_string(), 1.0)]))
        }
    }

    #[test]
    fn a_whole_run_delivers_everything_once() {
        let measurement = run_case(&Direct, &spec(4, 8)).unwrap();
        assert_eq!(measurement.errors, 0, "{:?}", measurement.first_error);
        let inserted = measurement.extra["artifacts_inserted"];
        assert!(inserted > 0.0);
        assert_eq!(measurement.extra["deliveries_total"], inserted * 3.0);
        assert_eq!(measurement.extra["missing_deliveries"], 0.0);
        assert_eq!(measurement.extra["direct"], 1.0);
        assert!(measurement.ops > 0 && measurement.bytes == measurement.ops * 1024);
        let latency = measurement.latency.expect("latency measured");
        assert_eq!(latency.count(), measurement.ops);
        assert!(measurement.elapsed >= Duration::from_millis(100));
    }

    #[test]
    fn a_system_that_never_connects_fails_the_run() {
        struct Broken;
        impl GossipSystem for Broken {
            fn name(&self) -> &'static str {
                "broken"
            }
            fn run(&self, _nodes: Vec<NodeHarness>) -> Result<BTreeMap<String, f64>, String> {
                Err("no sockets today".into())
            }
        }
        let error = run_case(&Broken, &spec(4, 8)).unwrap_err();
        assert_eq!(error, "no sockets today");
    }

    #[test]
    fn cores_are_round_robin_or_unpinned() {
        let cores = node_cores(7);
        assert_eq!(cores.len(), 7);
        assert!(cores.iter().all(Option::is_some) || cores.iter().all(Option::is_none));
        let bytes = pseudo_random_bytes(1000, 7);
        assert_eq!(bytes.len(), 1000);
        assert!(
            bytes.iter().filter(|&&b| b == 0).count() < 30,
            "not a run of zeros"
        );
    }
}
