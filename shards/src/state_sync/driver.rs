//! The shard driver of state sync: binds the sans-I/O [`SyncSession`] and the
//! [`CheckpointStore`] to a transport, a runtime and the disk.
//!
//! Serving: three routes. Adverts (`StateAdvert`) are remembered per peer (its newest
//! `peer_adverts_max` heights); manifest and chunk requests are answered from the node's
//! checkpoints, or from the sync in progress for chunks it has verified (a partial node).
//!
//! Fetching: one event loop task. Every `advert_interval` it tells each connected peer which
//! states it holds (its checkpoints, and the one it is syncing as partial). When the target
//! (set by the node: a catch-up package in a real replica, the reference workload here) is
//! ahead of the newest checkpoint, it starts a session for it, resumes from the scratch space
//! a crashed or stopped sync left behind, hardlinks files and copies chunks the node already
//! holds in its newest checkpoint, and fetches the rest: every request an RPC task with a
//! deadline. A chunk's answer is checked against its length and hash and, if it matches,
//! written (io_uring on glommio, positional writes in the simulator) where it arrived: with
//! `Transport::rpc_then`, on the shard that owns the peer's connection when a node spreads
//! its peers over shards, so hashing and writing run on every shard's core beside the packets
//! (this shard only schedules). It counts as held once it is on disk. When every chunk is held the scratch
//! is adopted (renamed into place) as a checkpoint. A target that is no longer ahead stops the
//! session and removes its scratch.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use futures_channel::oneshot;
use futures_lite::future::or;
use icn_codecs::state::{Hash, Manifest, ManifestLimits, Segment, META_MANIFEST_PIECE};
use icn_codecs::{
    decode_chunk_request, decode_manifest_request, decode_state_advert, ChunkRequest, CodecLimits,
    Encoder, ManifestRequest, StateAdvert,
};
use icn_engine::transport::AnswerWork;
use icn_engine::{Buf, NodeId, Priority, RequestContext, Route, Router, RpcError, Transport};
use icn_tuning::Tuning;

use super::direct::{DirectWriter, TrySubmit};
use super::session::{
    Accepted, ChunkCheck, ChunkVerdict, Failure, SessionConfig, SessionStats, SyncOffence,
    SyncSession, Want,
};
use super::store::{Checkpoint, CheckpointStore, Scratch};
use crate::consensus_manager::driver::PenaltySink;
use crate::consensus_manager::{Backoff, Offence};
use crate::runtime::{timeout, Runtime, TaskHandle};
use crate::signal::Signal;

/// The shortest timed sleep of the loop, so a wakeup that is already due cannot spin it.
const LOOP_WAKEUP_MIN: Duration = Duration::from_millis(1);

/// How often a shard looks whether its checkpoint builder thread finished.
const CHECKPOINT_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Route of `StateAdvert` requests.
pub const ADVERT_ROUTE: Route = Route(0x300);
/// Route of `ManifestRequest`s.
pub const MANIFEST_ROUTE: Route = Route(0x301);
/// Route of `ChunkRequest`s.
pub const CHUNK_ROUTE: Route = Route(0x302);

/// Settings of the state sync service.
#[derive(Clone, Copy, Debug)]
pub struct StateSyncConfig {
    pub session: SessionConfig,
    pub advert_interval: Duration,
    pub request_timeout: Duration,
    pub peer_adverts_max: usize,
    pub progress_interval: Duration,
    pub chunk_bytes: u32,
    pub checkpoints_kept: usize,
    pub codec_limits: CodecLimits,
}

impl StateSyncConfig {
    pub fn from_tuning(tuning: &Tuning) -> StateSyncConfig {
        let sync = &tuning.state_sync;
        let ms = Duration::from_millis;
        StateSyncConfig {
            session: SessionConfig {
                chunks_in_flight_per_peer_max: sync.chunks_in_flight_per_peer_max,
                chunks_in_flight_max: sync.chunks_in_flight_max,
                backoff: Backoff {
                    initial: ms(sync.retry_backoff_initial_ms),
                    max: ms(sync.retry_backoff_max_ms),
                },
                limits: ManifestLimits {
                    piece_bytes_max: sync.manifest_piece_bytes_max,
                    files_max: sync.manifest_files_max,
                    chunks_max: sync.manifest_chunks_max,
                    ..ManifestLimits::default()
                },
            },
            advert_interval: ms(sync.advert_interval_ms),
            request_timeout: ms(sync.request_timeout_ms),
            peer_adverts_max: sync.peer_adverts_max,
            progress_interval: ms(sync.progress_interval_ms),
            chunk_bytes: sync.chunk_bytes as u32,
            checkpoints_kept: sync.checkpoints_kept_count,
            codec_limits: CodecLimits::default(),
        }
    }
}

/// How chunk bytes reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileIo {
    /// io_uring through glommio's buffered files (a glommio shard).
    Glommio,
    /// Positional writes (the simulator, which has no io_uring reactor).
    Std,
}

/// A sync's progress, reported every `progress_interval` and when it ends.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub height: u64,
    pub bytes_held: u64,
    pub bytes_total: u64,
    pub chunks_held: u64,
    pub chunks_total: u64,
    /// Bytes per second fetched since the last report.
    pub rate_bytes_per_s: f64,
    pub elapsed: Duration,
    pub peers: usize,
    pub done: bool,
}

/// Receives progress reports (the node draws a progress bar or logs lines).
pub type ProgressSink = Rc<dyn Fn(&Progress)>;

/// Counters over the service's life (metrics and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateSyncStats {
    pub syncs_started: u64,
    pub syncs_completed: u64,
    pub syncs_abandoned: u64,
    /// Totals over finished and running sessions.
    pub chunks_fetched: u64,
    pub bytes_fetched: u64,
    pub chunks_local: u64,
    pub corrupted_chunks: u64,
    pub bad_manifests: u64,
    pub peers_dropped: u64,
    pub request_failures: u64,
    /// Requests a full peer answered with "not held" (the peer is dropped and penalized).
    pub missing_from_full_peers: u64,
    pub chunks_served: u64,
    pub bytes_served: u64,
    pub manifests_served: u64,
    pub undecodable_requests: u64,
    pub io_errors: u64,
    /// Adverts remembered now, over all peers (bounded by peers × peer_adverts_max).
    pub adverts_tracked: u64,
    /// Checkpoints this node built itself.
    pub checkpoints_created: u64,
    /// Chunk requests in flight plus verified chunks being written (bound
    /// state_sync.chunks_in_flight_max).
    pub chunks_in_flight: u64,
}

/// What a task of the loop reports. The request outcomes name their session (`Active::id`):
/// one of a session abandoned meanwhile is dropped, since its wants name another manifest's
/// pieces and chunks.
enum Outcome {
    Answer {
        task: u64,
        session: u64,
        peer: NodeId,
        want: Want,
        bytes: Buf,
    },
    Failed {
        task: u64,
        session: u64,
        peer: NodeId,
        want: Want,
        failure: Failure,
    },
    /// A chunk's answer was checked and, if it matched, written: `Err` is a disk error.
    Chunk {
        task: u64,
        session: u64,
        peer: NodeId,
        chunk: u32,
        verdict: io::Result<ChunkVerdict>,
    },
    AdvertsSent {
        task: u64,
    },
    /// The complete sync's files were fsynced on a thread of their own: adopt it now.
    Flushed {
        task: u64,
        height: u64,
        result: io::Result<()>,
    },
}

struct Active {
    /// Tells this session's outcomes from those of one abandoned before it.
    id: u64,
    session: SyncSession,
    scratch: Scratch,
    started_at: Duration,
    last_report: Duration,
    bytes_at_last_report: u64,
    /// Totals already added to the service's stats.
    counted: SessionStats,
    /// Every chunk is written and its files are being fsynced before adoption.
    flushing: bool,
}

struct Inner {
    local: NodeId,
    config: StateSyncConfig,
    runtime: Rc<dyn Runtime>,
    io: FileIo,
    store: RefCell<CheckpointStore>,
    /// Direct (`O_DIRECT`) writes of aligned chunks with `FileIo::Glommio`, started with the
    /// first chunk this node writes (see [`Inner::direct_writer`]).
    direct: RefCell<Direct>,
    penalties: PenaltySink,
    progress: RefCell<Option<ProgressSink>>,
    /// Per peer, its newest adverts (at most `peer_adverts_max`), newest first.
    adverts: RefCell<HashMap<NodeId, VecDeque<StateAdvert>>>,
    target: Cell<Option<(u64, Hash)>>,
    active: RefCell<Option<Active>>,
    outcomes: RefCell<Vec<Outcome>>,
    tasks: RefCell<HashMap<u64, TaskHandle>>,
    next_task: Cell<u64>,
    next_session: Cell<u64>,
    wake: Signal,
    stopped: Cell<bool>,
    loop_task: RefCell<Option<TaskHandle>>,
    stats: RefCell<StateSyncStats>,
    encoder: RefCell<Encoder>,
}

/// Where a node's direct writes stand.
enum Direct {
    /// Not needed yet: a node that only serves never starts the writer threads.
    NotStarted,
    Running(DirectWriter),
    /// The simulator's `FileIo::Std`, or the threads could not start: chunks are written
    /// through the page cache.
    Unavailable,
}

impl Inner {
    /// The direct writer, its threads started on the first call (the first chunk this node
    /// writes); None under the simulator or where the threads could not start (said once).
    fn direct_writer(&self) -> Option<DirectWriter> {
        let mut direct = self.direct.borrow_mut();
        if matches!(*direct, Direct::NotStarted) {
            *direct = match self.io {
                FileIo::Std => Direct::Unavailable,
                FileIo::Glommio => match DirectWriter::start(
                    self.config.session.chunks_in_flight_max,
                    self.config.chunk_bytes as usize,
                ) {
                    Ok(writer) => Direct::Running(writer),
                    Err(error) => {
                        eprintln!(
                            "icn: state sync: no direct-write threads ({error}); chunks are \
                             written through the page cache"
                        );
                        Direct::Unavailable
                    }
                },
            };
        }
        match &*direct {
            Direct::Running(writer) => Some(writer.clone()),
            Direct::NotStarted | Direct::Unavailable => None,
        }
    }
}

/// The state sync service of a node (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct StateSync {
    inner: Rc<Inner>,
}

impl StateSync {
    pub fn new(
        local: NodeId,
        config: StateSyncConfig,
        runtime: Rc<dyn Runtime>,
        io: FileIo,
        store: CheckpointStore,
        penalties: PenaltySink,
    ) -> StateSync {
        StateSync {
            inner: Rc::new(Inner {
                local,
                config,
                runtime,
                io,
                store: RefCell::new(store),
                direct: RefCell::new(Direct::NotStarted),
                penalties,
                progress: RefCell::new(None),
                adverts: RefCell::new(HashMap::new()),
                target: Cell::new(None),
                active: RefCell::new(None),
                outcomes: RefCell::new(Vec::new()),
                tasks: RefCell::new(HashMap::new()),
                next_task: Cell::new(0),
                next_session: Cell::new(0),
                wake: Signal::new(),
                stopped: Cell::new(false),
                loop_task: RefCell::new(None),
                stats: RefCell::new(StateSyncStats::default()),
                encoder: RefCell::new(Encoder::new(config.codec_limits)),
            }),
        }
    }

    pub fn set_progress_sink(&self, sink: ProgressSink) {
        *self.inner.progress.borrow_mut() = Some(sink);
    }

    /// The state the node should hold (a catch-up package's height and root hash). A sync
    /// starts when it is ahead of the newest checkpoint.
    pub fn set_target(&self, height: u64, root: Hash) {
        self.inner.target.set(Some((height, root)));
        self.inner.wake.notify();
    }

    pub fn target(&self) -> Option<(u64, Hash)> {
        self.inner.target.get()
    }

    /// The store, for the node's own checkpoints (the workload writes them).
    pub fn store(&self) -> std::cell::RefMut<'_, CheckpointStore> {
        self.inner.store.borrow_mut()
    }

    /// Builds checkpoint `height` in the store (see [`CheckpointStore::create`]) and tells
    /// the loop, which advertises it from then on. Writing, hashing and fsyncing the files run
    /// on a thread of their own, so the shard keeps serving meanwhile; only the bookkeeping
    /// before and after runs here.
    pub async fn create_checkpoint(
        &self,
        height: u64,
        fill: impl FnOnce(&std::path::Path, Option<&Checkpoint>) -> io::Result<()> + Send + 'static,
    ) -> io::Result<Rc<Checkpoint>> {
        let result = self.build_checkpoint(height, fill).await;
        let mut stats = self.inner.stats.borrow_mut();
        match &result {
            Ok(_) => stats.checkpoints_created += 1,
            Err(_) => stats.io_errors += 1,
        }
        drop(stats);
        self.inner.wake.notify();
        result
    }

    async fn build_checkpoint(
        &self,
        height: u64,
        fill: impl FnOnce(&std::path::Path, Option<&Checkpoint>) -> io::Result<()> + Send + 'static,
    ) -> io::Result<Rc<Checkpoint>> {
        let mut pending = self.inner.store.borrow().begin_create(height)?;
        let builder = std::thread::Builder::new()
            .name("icn-checkpoint".into())
            .spawn(move || {
                let result = pending.build(fill);
                (pending, result)
            })?;
        while !builder.is_finished() {
            self.inner.runtime.sleep(CHECKPOINT_POLL_INTERVAL).await;
        }
        let (pending, result) = builder
            .join()
            .map_err(|_| io::Error::other("the checkpoint builder thread panicked"))?;
        result?;
        self.inner.store.borrow_mut().finish_create(pending)
    }

    /// The running sync's (chunks held, chunks in total), if one runs.
    pub fn chunk_progress(&self) -> Option<(u64, u64)> {
        self.inner
            .active
            .borrow()
            .as_ref()
            .map(|active| active.session.chunk_progress())
    }

    /// The running sync's (bytes held, bytes in total), if one runs.
    pub fn progress(&self) -> Option<(u64, u64)> {
        self.inner
            .active
            .borrow()
            .as_ref()
            .map(|active| active.session.progress())
    }

    pub fn latest_height(&self) -> Option<u64> {
        self.inner
            .store
            .borrow()
            .latest()
            .map(|checkpoint| checkpoint.height)
    }

    pub fn latest(&self) -> Option<Rc<Checkpoint>> {
        self.inner.store.borrow().latest()
    }

    pub fn is_syncing(&self) -> bool {
        self.inner.active.borrow().is_some()
    }

    pub fn stats(&self) -> StateSyncStats {
        let mut stats = *self.inner.stats.borrow();
        if let Some(active) = &*self.inner.active.borrow() {
            // What the loop already folded into the totals is in `counted`.
            add_session(&mut stats, &active.counted, &active.session.stats());
            stats.chunks_in_flight = active.session.chunks_in_flight() as u64;
        }
        stats.adverts_tracked = self
            .inner
            .adverts
            .borrow()
            .values()
            .map(|adverts| adverts.len() as u64)
            .sum();
        stats
    }

    /// The newest (height, root, partial) adverts of every peer, for the node's target policy.
    pub fn peer_adverts(&self) -> Vec<(NodeId, StateAdvert)> {
        self.inner
            .adverts
            .borrow()
            .iter()
            .flat_map(|(peer, adverts)| adverts.iter().map(|advert| (*peer, *advert)))
            .collect()
    }

    /// Adds the three state-sync routes to `router`.
    pub fn routes(&self, router: Router) -> Router {
        let adverts = self.clone();
        let manifests = self.clone();
        let chunks = self.clone();
        router
            .route(ADVERT_ROUTE, move |ctx: RequestContext, body: Buf| {
                let result = adverts.on_advert(ctx, body);
                async move { result }
            })
            .route(MANIFEST_ROUTE, move |ctx: RequestContext, body: Buf| {
                let result = manifests.on_manifest_request(ctx, body);
                async move { result }
            })
            .route(CHUNK_ROUTE, move |ctx: RequestContext, body: Buf| {
                let chunks = chunks.clone();
                async move { chunks.serve_chunk(ctx, body).await }
            })
    }

    fn undecodable(&self, peer: NodeId, error: impl std::fmt::Display) -> RpcError {
        self.inner.stats.borrow_mut().undecodable_requests += 1;
        (self.inner.penalties)(peer, Offence::BadMessage);
        RpcError::PeerMisbehaved(error.to_string())
    }

    fn on_advert(&self, ctx: RequestContext, body: Buf) -> Result<Buf, RpcError> {
        let advert = decode_state_advert(&body, &self.inner.config.codec_limits)
            .map_err(|error| self.undecodable(ctx.peer, error))?;
        let mut adverts = self.inner.adverts.borrow_mut();
        let list = adverts.entry(ctx.peer).or_default();
        list.retain(|known| known.height != advert.height);
        let at = list
            .iter()
            .position(|known| known.height < advert.height)
            .unwrap_or(list.len());
        list.insert(at, advert);
        list.truncate(self.inner.config.peer_adverts_max);
        drop(adverts);
        self.inner.wake.notify();
        Ok(Buf::empty())
    }

    fn on_manifest_request(&self, ctx: RequestContext, body: Buf) -> Result<Buf, RpcError> {
        let request = decode_manifest_request(&body, &self.inner.config.codec_limits)
            .map_err(|error| self.undecodable(ctx.peer, error))?;
        let checkpoint = self.inner.store.borrow().checkpoint(request.height);
        let bytes = match checkpoint {
            Some(checkpoint) => {
                if request.piece == META_MANIFEST_PIECE {
                    Some(checkpoint.encoded_meta.clone())
                } else {
                    checkpoint
                        .encoded_pieces
                        .get(request.piece as usize)
                        .cloned()
                }
            }
            None => self.inner.active.borrow().as_ref().and_then(|active| {
                if active.session.height() != request.height {
                    return None;
                }
                if request.piece == META_MANIFEST_PIECE {
                    active.scratch.encoded_meta().map(<[u8]>::to_vec)
                } else {
                    active
                        .scratch
                        .encoded_piece(request.piece)
                        .map(<[u8]>::to_vec)
                }
            }),
        };
        match bytes {
            Some(bytes) => {
                self.inner.stats.borrow_mut().manifests_served += 1;
                Ok(Buf::from_vec(bytes))
            }
            None => Err(RpcError::Handler("manifest piece not held".into())),
        }
    }

    /// Finds where a requested chunk lies (a checkpoint, or a verified chunk of the running
    /// sync); the read itself happens in [`StateSync::serve_chunk`].
    fn locate_chunk(
        &self,
        ctx: RequestContext,
        body: Buf,
    ) -> Result<(Vec<PathBuf>, Vec<Segment>), RpcError> {
        let request = decode_chunk_request(&body, &self.inner.config.codec_limits)
            .map_err(|error| self.undecodable(ctx.peer, error))?;
        let index = request.chunk_index;
        let checkpoint = self.inner.store.borrow().checkpoint(request.height);
        if let Some(checkpoint) = checkpoint {
            let segments = checkpoint
                .manifest
                .segments(index)
                .ok_or_else(|| RpcError::Handler("no such chunk".into()))?;
            let paths = segments
                .iter()
                .map(|segment| checkpoint.file_path(segment.file_index))
                .collect();
            return Ok((paths, segments));
        }
        let active = self.inner.active.borrow();
        match active.as_ref() {
            Some(active)
                if active.session.height() == request.height && active.session.holds(index) =>
            {
                let manifest = active
                    .session
                    .manifest()
                    .expect("a held chunk has a manifest");
                let segments = manifest.segments(index).expect("a held chunk is in range");
                let paths = segments
                    .iter()
                    .map(|segment| active.scratch.file_path(segment.file_index))
                    .collect();
                Ok((paths, segments))
            }
            _ => Err(RpcError::Handler("chunk not held".into())),
        }
    }

    async fn serve_chunk(&self, ctx: RequestContext, body: Buf) -> Result<Buf, RpcError> {
        let (paths, segments) = self.locate_chunk(ctx, body)?;
        match read_segments(self.inner.io, &paths, &segments).await {
            Ok(bytes) => {
                let mut stats = self.inner.stats.borrow_mut();
                stats.chunks_served += 1;
                stats.bytes_served += bytes.len() as u64;
                Ok(Buf::from_vec(bytes))
            }
            Err(error) => {
                self.inner.stats.borrow_mut().io_errors += 1;
                Err(RpcError::Handler(format!(
                    "reading the chunk failed: {error}"
                )))
            }
        }
    }

    /// Starts the event loop over the started transport.
    pub fn start<T: Transport + 'static>(&self, transport: Rc<T>) {
        let service = self.clone();
        let task = self
            .inner
            .runtime
            .spawn(Box::pin(async move { service.run(transport).await }));
        *self.inner.loop_task.borrow_mut() = Some(task);
    }

    /// Ends the loop and every task it spawned, and waits for them. A sync in progress keeps
    /// its scratch space, so the next start resumes it.
    pub async fn stop(&self) {
        let inner = &self.inner;
        inner.stopped.set(true);
        inner.wake.notify();
        let loop_task = inner.loop_task.borrow_mut().take();
        if let Some(task) = loop_task {
            task.join().await;
        }
        let tasks: Vec<TaskHandle> = inner.tasks.borrow_mut().drain().map(|(_, t)| t).collect();
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            task.join().await;
        }
    }

    async fn run<T: Transport + 'static>(&self, transport: Rc<T>) {
        let inner = &self.inner;
        let mut next_advert = Duration::ZERO;
        while !inner.stopped.get() {
            let now = inner.runtime.now();
            if now >= next_advert {
                self.send_adverts(&transport);
                next_advert = now + inner.config.advert_interval;
            }
            self.apply_outcomes(now);
            self.steer(now);
            self.start_requests(&transport, now);
            let wakeup = self
                .next_wakeup(now)
                .map_or(next_advert, |at| at.min(next_advert));
            let sleep = inner.runtime.sleep(wakeup.saturating_sub(now));
            or(inner.wake.wait(), sleep).await;
        }
    }

    /// When the loop must look again without being woken: a peer's backoff ending or the next
    /// progress report. Never in the past (a wakeup that is always due would spin the loop and
    /// starve the shard), and none while the complete sync flushes (its task wakes the loop).
    fn next_wakeup(&self, now: Duration) -> Option<Duration> {
        let active = self.inner.active.borrow();
        let active = active.as_ref()?;
        if active.flushing {
            return None;
        }
        let report = active.last_report + self.inner.config.progress_interval;
        let next = active
            .session
            .next_retry(now)
            .map_or(report, |retry| retry.min(report));
        Some(next.max(now + LOOP_WAKEUP_MIN))
    }

    fn spawn_task(&self, future: impl std::future::Future<Output = Outcome> + 'static) {
        let inner = &self.inner;
        let id = inner.next_task.get();
        inner.next_task.set(id + 1);
        let service = self.clone();
        let handle = inner.runtime.spawn(Box::pin(async move {
            let outcome = future.await;
            service.inner.outcomes.borrow_mut().push(outcome);
            service.inner.wake.notify();
        }));
        // A task that finished inline already posted its outcome; the handle is harmless.
        inner.tasks.borrow_mut().insert(id, handle);
    }

    fn task_id(&self) -> u64 {
        self.inner.next_task.get()
    }

    /// Tells every connected peer about the states this node serves.
    fn send_adverts<T: Transport + 'static>(&self, transport: &Rc<T>) {
        let inner = &self.inner;
        let mut adverts: Vec<StateAdvert> = Vec::new();
        {
            // Every checkpoint held (at most checkpoints_kept), newest first: a node one
            // checkpoint behind a moving target can still finish the one it started.
            let store = inner.store.borrow();
            for height in store.heights().into_iter().rev() {
                if let Some(checkpoint) = store.checkpoint(height) {
                    adverts.push(StateAdvert {
                        height,
                        root_hash: checkpoint.root_hash,
                        partial: false,
                    });
                }
            }
        }
        if let Some(active) = &*inner.active.borrow() {
            if active.session.manifest().is_some() {
                adverts.push(StateAdvert {
                    height: active.session.height(),
                    root_hash: active.session.root(),
                    partial: true,
                });
            }
        }
        if adverts.is_empty() {
            return;
        }
        let bodies: Vec<Buf> = {
            let mut encoder = inner.encoder.borrow_mut();
            adverts
                .iter()
                .filter_map(|advert| {
                    encoder
                        .encode_state_advert(advert)
                        .ok()
                        .map(Buf::copy_from_slice)
                })
                .collect()
        };
        let timeout_after = inner.config.request_timeout;
        for (peer, _) in transport.peers() {
            let transport = transport.clone();
            let bodies = bodies.clone();
            let runtime = inner.runtime.clone();
            let task = self.task_id();
            self.spawn_task(async move {
                for body in bodies {
                    let rpc = transport.rpc(peer, ADVERT_ROUTE, Priority::Low, body);
                    let _ = timeout(&*runtime, timeout_after, rpc).await;
                }
                Outcome::AdvertsSent { task }
            });
        }
    }

    fn apply_outcomes(&self, now: Duration) {
        let outcomes = std::mem::take(&mut *self.inner.outcomes.borrow_mut());
        for outcome in outcomes {
            match outcome {
                Outcome::AdvertsSent { task } => {
                    self.inner.tasks.borrow_mut().remove(&task);
                }
                Outcome::Flushed {
                    task,
                    height,
                    result,
                } => {
                    self.inner.tasks.borrow_mut().remove(&task);
                    let current = self
                        .inner
                        .active
                        .borrow()
                        .as_ref()
                        .map(|active| active.session.height());
                    // A session that was abandoned meanwhile is gone; its flush is moot.
                    if current == Some(height) {
                        match result {
                            Ok(()) => self.adopt(now),
                            Err(error) => self.io_failure("flushing the synced state", error),
                        }
                    }
                }
                Outcome::Answer {
                    task,
                    session,
                    peer,
                    want,
                    bytes,
                } => {
                    self.inner.tasks.borrow_mut().remove(&task);
                    if self.is_current(session) {
                        self.on_answer(peer, want, bytes);
                    }
                }
                Outcome::Failed {
                    task,
                    session,
                    peer,
                    want,
                    failure,
                } => {
                    self.inner.tasks.borrow_mut().remove(&task);
                    if !self.is_current(session) {
                        continue;
                    }
                    let offence = match &mut *self.inner.active.borrow_mut() {
                        Some(active) => active.session.on_failure(peer, want, failure, now),
                        None => None,
                    };
                    if offence.is_some() {
                        (self.inner.penalties)(peer, Offence::BadMessage);
                    }
                }
                Outcome::Chunk {
                    task,
                    session,
                    peer,
                    chunk,
                    verdict,
                } => {
                    self.inner.tasks.borrow_mut().remove(&task);
                    if self.is_current(session) {
                        self.on_chunk(peer, chunk, verdict);
                    }
                }
            }
        }
    }

    /// Whether `session` is the one in progress.
    fn is_current(&self, session: u64) -> bool {
        self.inner.active.borrow().as_ref().map(|active| active.id) == Some(session)
    }

    fn on_answer(&self, peer: NodeId, want: Want, bytes: Buf) {
        let accepted = {
            let mut active = self.inner.active.borrow_mut();
            let Some(active) = active.as_mut() else {
                return;
            };
            active.session.on_answer(peer, want, &bytes)
        };
        match accepted {
            Ok(Accepted::Nothing) => {}
            Ok(Accepted::ManifestReady) => {
                if let Err(error) = self.prepare_scratch() {
                    self.io_failure("preparing the scratch space", error);
                }
            }
            Ok(Accepted::ChunkHeld(chunk)) => self.record_held(chunk),
            Err(offence) => self.penalize(peer, offence),
        }
    }

    /// What the work on a chunk's answer of the current session found.
    fn on_chunk(&self, peer: NodeId, chunk: u32, verdict: io::Result<ChunkVerdict>) {
        let verdict = match verdict {
            Ok(verdict) => verdict,
            Err(error) => {
                self.io_failure("writing a chunk", error);
                return;
            }
        };
        let accepted = {
            let mut active = self.inner.active.borrow_mut();
            let Some(active) = active.as_mut() else {
                return;
            };
            active.session.on_chunk(peer, chunk, verdict)
        };
        match accepted {
            Ok(Accepted::ChunkHeld(chunk)) => self.record_held(chunk),
            Ok(_) => {}
            Err(offence) => self.penalize(peer, offence),
        }
    }

    fn penalize(&self, peer: NodeId, offence: SyncOffence) {
        let offence = match offence {
            SyncOffence::BadChunk { .. } | SyncOffence::BadManifest(_) => Offence::InvalidArtifact,
            SyncOffence::Missing(_) => Offence::BadMessage,
        };
        (self.inner.penalties)(peer, offence);
    }

    /// A chunk is verified on disk: the journal records it, so a resume does not fetch it again.
    fn record_held(&self, chunk: u32) {
        let recorded = match &mut *self.inner.active.borrow_mut() {
            Some(active) => active.scratch.record_verified(&[chunk]),
            None => Ok(()),
        };
        if let Err(error) = recorded {
            self.io_failure("recording a verified chunk", error);
        }
    }

    /// The manifest is in: persist it, create the files, and take every chunk the node
    /// already holds (verified on disk from an earlier attempt, or in its newest checkpoint).
    fn prepare_scratch(&self) -> io::Result<()> {
        let latest = self.inner.store.borrow().latest();
        let mut guard = self.inner.active.borrow_mut();
        let active = guard.as_mut().expect("a session is active");
        let manifest = active.session.manifest().cloned().expect("manifest ready");
        let resumed = active.scratch.manifest().is_some();
        if resumed {
            let verified = active.scratch.verified_chunks()?;
            active.session.mark_held(verified);
        } else {
            let meta = active.session.meta().cloned().expect("meta ready");
            let pieces: Vec<_> = active.session.pieces().cloned().collect();
            active
                .scratch
                .set_manifest(&meta, &pieces, Manifest::clone(&manifest))?;
        }
        if let Some(latest) = latest {
            let local = take_local_chunks(&manifest, &latest, &mut active.scratch, |chunk| {
                active.session.holds(chunk)
            })?;
            active.scratch.record_verified(&local)?;
            active.session.mark_held(local);
        }
        active.session.start_chunks();
        Ok(())
    }

    /// A disk error ends the session; its scratch stays for a later resume (chunks whose
    /// bytes do not verify are fetched again).
    fn io_failure(&self, what: &str, error: io::Error) {
        eprintln!("icn: state sync: {what} failed: {error}; the sync starts over");
        self.inner.stats.borrow_mut().io_errors += 1;
        self.end_session(false);
    }

    /// Starts, keeps, completes or abandons the session, as the target and the store say.
    fn steer(&self, now: Duration) {
        let inner = &self.inner;
        let latest = inner.store.borrow().latest().map(|c| c.height);
        let target = inner
            .target
            .get()
            .filter(|(height, _)| latest.is_none_or(|l| *height > l));
        let current = inner
            .active
            .borrow()
            .as_ref()
            .map(|active| (active.session.height(), active.session.root()));
        if current.is_some() && current != target {
            self.end_session(true);
        }
        if let Some((height, root)) = target {
            if inner.active.borrow().is_none() {
                if let Err(error) = self.begin_session(height, root, now) {
                    inner.stats.borrow_mut().io_errors += 1;
                    eprintln!("icn: state sync: cannot start syncing height {height}: {error}");
                    return;
                }
            }
            self.update_peers(height, root);
        }
        self.fold_stats();
        let complete = inner
            .active
            .borrow()
            .as_ref()
            .is_some_and(|active| active.session.is_complete());
        if complete {
            self.flush_then_adopt();
        } else {
            self.report(now, false);
        }
    }

    fn begin_session(&self, height: u64, root: Hash, now: Duration) -> io::Result<()> {
        let inner = &self.inner;
        let scratch = {
            let mut store = inner.store.borrow_mut();
            store.discard_scratches(Some((height, root)))?;
            store.scratch(height, root)?
        };
        let mut session = SyncSession::new(height, root, inner.local, inner.config.session);
        // A resumed scratch already holds the verified manifest: feed it in as if fetched.
        if let Some(meta) = scratch.encoded_meta() {
            let local = inner.local;
            let mut ready = session.on_answer(local, Want::Meta, meta).is_ok();
            let mut index = 0;
            while ready {
                let Some(piece) = scratch.encoded_piece(index) else {
                    break;
                };
                ready = matches!(
                    session.on_answer(local, Want::Piece(index), piece),
                    Ok(Accepted::Nothing | Accepted::ManifestReady)
                );
                index += 1;
            }
        }
        let manifest_ready = session.manifest().is_some();
        let id = inner.next_session.get();
        inner.next_session.set(id + 1);
        *inner.active.borrow_mut() = Some(Active {
            id,
            session,
            scratch,
            started_at: now,
            last_report: now,
            bytes_at_last_report: 0,
            counted: SessionStats::default(),
            flushing: false,
        });
        inner.stats.borrow_mut().syncs_started += 1;
        if manifest_ready {
            self.prepare_scratch()?;
            let mut active = inner.active.borrow_mut();
            if let Some(active) = active.as_mut() {
                active.bytes_at_last_report = active.session.progress().0;
            }
        }
        Ok(())
    }

    fn update_peers(&self, height: u64, root: Hash) {
        let advertisers: Vec<(NodeId, bool)> = self
            .inner
            .adverts
            .borrow()
            .iter()
            .filter_map(|(peer, adverts)| {
                adverts
                    .iter()
                    .find(|advert| advert.height == height && advert.root_hash == root)
                    .map(|advert| (*peer, advert.partial))
            })
            .collect();
        if let Some(active) = &mut *self.inner.active.borrow_mut() {
            active.session.set_peers(&advertisers);
        }
    }

    /// Adds the session's new counts to the service's totals.
    fn fold_stats(&self) {
        let mut active = self.inner.active.borrow_mut();
        if let Some(active) = active.as_mut() {
            let now = active.session.stats();
            add_session(&mut self.inner.stats.borrow_mut(), &active.counted, &now);
            active.counted = now;
        }
    }

    /// fsyncs the complete sync's files on a thread of their own (seconds for a large state),
    /// then adopts it from the loop; the shard keeps serving meanwhile.
    fn flush_then_adopt(&self) {
        let (height, dir) = {
            let mut guard = self.inner.active.borrow_mut();
            let Some(active) = guard.as_mut() else {
                return;
            };
            if active.flushing {
                return;
            }
            active.flushing = true;
            (active.session.height(), active.scratch.state_dir())
        };
        let runtime = self.inner.runtime.clone();
        let task = self.task_id();
        let io = self.inner.io;
        self.spawn_task(async move {
            // The simulator's clock is virtual: waiting there for a real thread would let
            // virtual time run away, so it flushes inline.
            let result = if io == FileIo::Std {
                super::store::sync_tree(&dir)
            } else {
                match std::thread::Builder::new()
                    .name("icn-sync-flush".into())
                    .spawn(move || super::store::flush_tree(&dir))
                {
                    Ok(flusher) => {
                        while !flusher.is_finished() {
                            runtime.sleep(CHECKPOINT_POLL_INTERVAL).await;
                        }
                        flusher
                            .join()
                            .unwrap_or_else(|_| Err(io::Error::other("the flush thread panicked")))
                    }
                    Err(error) => Err(error),
                }
            };
            Outcome::Flushed {
                task,
                height,
                result,
            }
        });
    }

    fn adopt(&self, now: Duration) {
        // Complete means every chunk is written, so no write of this session is running.
        self.report(now, true);
        let Some(active) = self.inner.active.borrow_mut().take() else {
            return;
        };
        // The flush task fsynced the state tree after the last write (flush_then_adopt).
        let result = self.inner.store.borrow_mut().adopt_flushed(active.scratch);
        match result {
            Ok(_) => self.inner.stats.borrow_mut().syncs_completed += 1,
            Err(error) => {
                self.inner.stats.borrow_mut().io_errors += 1;
                eprintln!(
                    "icn: state sync: adopting height {} failed: {error}",
                    active.session.height()
                );
            }
        }
    }

    /// Ends the session; `discard` also removes its scratch space (it is no longer needed).
    fn end_session(&self, discard: bool) {
        self.fold_stats();
        let ended = self.inner.active.borrow_mut().take();
        if ended.is_some() {
            self.inner.stats.borrow_mut().syncs_abandoned += 1;
        }
        // Requests and writes of the old session end on their own; their outcomes find no
        // session (or another one) and are dropped.
        if discard {
            if let Err(error) = self.inner.store.borrow_mut().discard_scratches(None) {
                eprintln!("icn: state sync: removing scratch space failed: {error}");
            }
        }
    }

    fn report(&self, now: Duration, done: bool) {
        let sink = self.inner.progress.borrow().clone();
        let mut guard = self.inner.active.borrow_mut();
        let Some(active) = guard.as_mut() else {
            return;
        };
        if !done && now < active.last_report + self.inner.config.progress_interval {
            return;
        }
        let (bytes_held, bytes_total) = active.session.progress();
        let (chunks_held, chunks_total) = active.session.chunk_progress();
        let interval = now.saturating_sub(active.last_report).as_secs_f64();
        let rate = if interval > 0.0 {
            bytes_held.saturating_sub(active.bytes_at_last_report) as f64 / interval
        } else {
            0.0
        };
        active.last_report = now;
        active.bytes_at_last_report = bytes_held;
        let progress = Progress {
            height: active.session.height(),
            bytes_held,
            bytes_total,
            chunks_held,
            chunks_total,
            rate_bytes_per_s: rate,
            elapsed: now.saturating_sub(active.started_at),
            peers: active.session.usable_peers(),
            done,
        };
        drop(guard);
        if let Some(sink) = sink {
            sink(&progress);
        }
    }

    fn start_requests<T: Transport + 'static>(&self, transport: &Rc<T>, now: Duration) {
        let (requests, height, session) = {
            let mut active = self.inner.active.borrow_mut();
            let Some(active) = active.as_mut() else {
                return;
            };
            (active.session.poll(now), active.session.height(), active.id)
        };
        let timeout_after = self.inner.config.request_timeout;
        for (peer, want) in requests {
            let body = {
                let mut encoder = self.inner.encoder.borrow_mut();
                let encoded = match want {
                    Want::Meta => encoder.encode_manifest_request(&ManifestRequest {
                        height,
                        piece: META_MANIFEST_PIECE,
                    }),
                    Want::Piece(piece) => {
                        encoder.encode_manifest_request(&ManifestRequest { height, piece })
                    }
                    Want::Chunk(chunk_index) => encoder.encode_chunk_request(&ChunkRequest {
                        height,
                        chunk_index,
                    }),
                };
                Buf::copy_from_slice(encoded.expect("fixed-size requests always encode"))
            };
            let transport = transport.clone();
            let runtime = self.inner.runtime.clone();
            let task = self.task_id();
            let Want::Chunk(chunk) = want else {
                self.spawn_task(async move {
                    let rpc = transport.rpc(peer, MANIFEST_ROUTE, Priority::Normal, body);
                    let failure = match timeout(&*runtime, timeout_after, rpc).await {
                        Some(Ok(bytes)) => {
                            return Outcome::Answer {
                                task,
                                session,
                                peer,
                                want,
                                bytes,
                            }
                        }
                        Some(Err(error)) => failure_of(&error),
                        None => Failure::Timeout,
                    };
                    Outcome::Failed {
                        task,
                        session,
                        peer,
                        want,
                        failure,
                    }
                });
                continue;
            };
            let Some((work, verdict)) = self.chunk_work(chunk) else {
                // Not while poll hands chunks out (they follow the manifest); the chunk is
                // released all the same, never left in flight.
                self.spawn_task(async move {
                    Outcome::Failed {
                        task,
                        session,
                        peer,
                        want,
                        failure: Failure::Transport,
                    }
                });
                continue;
            };
            self.spawn_task(async move {
                let rpc = transport.rpc_then(peer, CHUNK_ROUTE, Priority::Normal, body, work);
                let failure = match timeout(&*runtime, timeout_after, rpc).await {
                    Some(Ok(_)) => match verdict.await {
                        Ok(verdict) => {
                            return Outcome::Chunk {
                                task,
                                session,
                                peer,
                                chunk,
                                verdict,
                            }
                        }
                        // The work ended without a verdict: only a shard stopping drops it.
                        Err(_) => Failure::Transport,
                    },
                    Some(Err(error)) => failure_of(&error),
                    None => Failure::Timeout,
                };
                Outcome::Failed {
                    task,
                    session,
                    peer,
                    want,
                    failure,
                }
            });
        }
    }

    /// The work on `chunk`'s answer, wherever it arrives: check its length and hash, write it
    /// into the scratch if it matches, and send the verdict back (the RPC's own answer is
    /// empty). None without a session and manifest.
    fn chunk_work(
        &self,
        chunk: u32,
    ) -> Option<(AnswerWork, oneshot::Receiver<io::Result<ChunkVerdict>>)> {
        let (check, paths, segments) = {
            let active = self.inner.active.borrow();
            let active = active.as_ref()?;
            let check: ChunkCheck = active.session.chunk_check(chunk)?;
            let segments = active.session.manifest()?.segments(chunk)?;
            let paths: Vec<PathBuf> = segments
                .iter()
                .map(|segment| active.scratch.file_path(segment.file_index))
                .collect();
            (check, paths, segments)
        };
        let io = self.inner.io;
        let direct = self.inner.direct_writer();
        let (send, verdict) = oneshot::channel();
        let work: AnswerWork = Box::new(move |bytes: Buf| {
            Box::pin(async move {
                let found = if check.matches(&bytes) {
                    write_segments(io, direct.as_ref(), &paths, &segments, bytes)
                        .await
                        .map(|()| ChunkVerdict::Written)
                } else {
                    Ok(ChunkVerdict::Corrupt)
                };
                let _ = send.send(found);
                Ok(Buf::empty())
            })
        });
        Some((work, verdict))
    }
}

/// How a request that got no answer to check failed.
fn failure_of(error: &RpcError) -> Failure {
    match error {
        RpcError::Handler(_) => Failure::Unavailable,
        RpcError::Timeout => Failure::Timeout,
        _ => Failure::Transport,
    }
}

fn add_session(stats: &mut StateSyncStats, before: &SessionStats, now: &SessionStats) {
    stats.chunks_fetched += now.chunks_fetched - before.chunks_fetched;
    stats.bytes_fetched += now.bytes_fetched - before.bytes_fetched;
    stats.chunks_local += now.chunks_held - before.chunks_held;
    stats.corrupted_chunks += now.corrupted_chunks - before.corrupted_chunks;
    stats.bad_manifests += now.bad_manifests - before.bad_manifests;
    stats.peers_dropped += now.peers_dropped - before.peers_dropped;
    stats.request_failures += now.failures - before.failures;
    stats.missing_from_full_peers += now.missing - before.missing;
}

/// Takes what the node already holds in `latest` into the scratch: files with the same path,
/// size and hash are hardlinked (checkpoint files are never written in place), and chunks with
/// a hash `latest` also has are copied. Returns the chunks now held that were not before.
fn take_local_chunks(
    manifest: &Manifest,
    latest: &Checkpoint,
    scratch: &mut Scratch,
    held: impl Fn(u32) -> bool,
) -> io::Result<Vec<u32>> {
    let old_files: HashMap<&str, (u32, &icn_codecs::state::FileEntry)> = latest
        .manifest
        .files
        .iter()
        .enumerate()
        .map(|(index, file)| (file.path.as_str(), (index as u32, file)))
        .collect();
    let mut linked = vec![false; manifest.files.len()];
    for (index, file) in manifest.files.iter().enumerate() {
        if file.size == 0 {
            linked[index] = true;
            continue;
        }
        if let Some((old_index, old)) = old_files.get(file.path.as_str()) {
            if old.size == file.size && old.hash == file.hash {
                let target = scratch.file_path(index as u32);
                std::fs::remove_file(&target)?;
                std::fs::hard_link(latest.file_path(*old_index), &target)?;
                linked[index] = true;
            }
        }
    }
    let old_chunks: HashMap<Hash, u32> = latest
        .manifest
        .chunks
        .iter()
        .enumerate()
        .map(|(index, chunk)| (chunk.hash, index as u32))
        .collect();
    let mut taken = Vec::new();
    for index in 0..manifest.chunks.len() as u32 {
        if held(index) {
            continue;
        }
        let segments = manifest.segments(index).expect("chunk in range");
        if segments
            .iter()
            .all(|segment| linked[segment.file_index as usize])
        {
            taken.push(index);
            continue;
        }
        if let Some(old) = old_chunks.get(&manifest.chunks[index as usize].hash) {
            let bytes = latest.read_chunk(*old)?;
            if icn_codecs::state::chunk_hash(&bytes) != manifest.chunks[index as usize].hash {
                continue;
            }
            let paths: Vec<PathBuf> = segments
                .iter()
                .map(|segment| scratch.file_path(segment.file_index))
                .collect();
            write_segments_std(&paths, &segments, &bytes)?;
            taken.push(index);
        }
    }
    Ok(taken)
}

/// Writes a verified chunk's segments: on a glommio shard, each segment whose offset and
/// length are aligned (the bulk of a state: 1 MiB pieces of large files) with `O_DIRECT` on a
/// writer thread (`direct`), the rest with io_uring through the page cache (glommio buffered
/// files; a chunk that is one whole segment hands its received buffer over as it is);
/// positional writes under the simulator.
async fn write_segments(
    io: FileIo,
    direct: Option<&DirectWriter>,
    paths: &[PathBuf],
    segments: &[Segment],
    bytes: Buf,
) -> io::Result<()> {
    match io {
        FileIo::Std => write_segments_std(paths, segments, &bytes),
        FileIo::Glommio => {
            let mut at = 0usize;
            let mut buffered = Vec::new();
            for (path, segment) in paths.iter().zip(segments) {
                let len = segment.len as usize;
                let part = &bytes[at..at + len];
                at += len;
                if let Some(direct) = direct.filter(|_| DirectWriter::aligned(segment.offset, len))
                {
                    if let TrySubmit::Queued(done) =
                        direct.submit(path.clone(), segment.offset, part)
                    {
                        done.await
                            .map_err(|_| io::Error::other("the direct-write threads stopped"))??;
                        continue;
                    }
                }
                buffered.push((path, *segment, at - len));
            }
            if let [(path, segment, 0)] = buffered[..] {
                if segment.len == bytes.len() as u64 {
                    return write_whole_glommio(path, segment.offset, bytes.into_vec()).await;
                }
            }
            for (path, segment, from) in buffered {
                let part = bytes[from..from + segment.len as usize].to_vec();
                write_whole_glommio(path, segment.offset, part).await?;
            }
            Ok(())
        }
    }
}

/// Writes `bytes` at `offset` of the file at `path` with one io_uring write. glommio takes
/// the buffer by value, so a short write (which a regular file gives only when the disk is
/// full or the file too large) cannot be resumed from here: it fails the chunk, and the
/// session ends with its scratch kept (the driver's disk-error path).
async fn write_whole_glommio(path: &Path, offset: u64, bytes: Vec<u8>) -> io::Result<()> {
    let len = bytes.len();
    if len == 0 {
        return Ok(());
    }
    let file = glommio::io::OpenOptions::new()
        .write(true)
        .buffered_open(path)
        .await
        .map_err(io::Error::from)?;
    let written = file.write_at(bytes, offset).await.map_err(io::Error::from);
    let closed = file.close().await.map_err(io::Error::from);
    let written = written?;
    closed?;
    if written != len {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!(
                "short write to {}: {written} of {len} bytes",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Reads the segments of one chunk into one buffer: io_uring (glommio buffered files) on a
/// glommio shard, positional reads under the simulator.
async fn read_segments(io: FileIo, paths: &[PathBuf], segments: &[Segment]) -> io::Result<Vec<u8>> {
    let total: u64 = segments.iter().map(|segment| segment.len).sum();
    let mut bytes = Vec::with_capacity(total as usize);
    for (path, segment) in paths.iter().zip(segments) {
        let len = segment.len as usize;
        match io {
            FileIo::Std => {
                use std::os::unix::fs::FileExt;
                let file = std::fs::File::open(path)?;
                let start = bytes.len();
                bytes.resize(start + len, 0);
                file.read_exact_at(&mut bytes[start..], segment.offset)?;
            }
            FileIo::Glommio => {
                let file = glommio::io::BufferedFile::open(path)
                    .await
                    .map_err(io::Error::from)?;
                let mut done = 0usize;
                while done < len {
                    let read = file
                        .read_at(segment.offset + done as u64, len - done)
                        .await
                        .map_err(io::Error::from)?;
                    if read.is_empty() {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("{} ends before its chunk", path.display()),
                        ));
                    }
                    bytes.extend_from_slice(&read);
                    done += read.len();
                }
                file.close().await.map_err(io::Error::from)?;
            }
        }
    }
    Ok(bytes)
}

fn write_segments_std(paths: &[PathBuf], segments: &[Segment], bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut at = 0usize;
    for (path, segment) in paths.iter().zip(segments) {
        let len = segment.len as usize;
        let file = std::fs::OpenOptions::new().write(true).open(path)?;
        file.write_all_at(&bytes[at..at + len], segment.offset)?;
        at += len;
    }
    Ok(())
}
