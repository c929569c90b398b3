//! The protocol core of one state sync, without I/O: which peer to ask for what, and what to
//! make of the answers.
//!
//! A session syncs one state, named by its height and root hash (the target a catch-up package
//! would carry). It first fetches the meta-manifest and checks its hash against the root, then
//! the manifest pieces (each checked against the meta-manifest, several peers at once), then
//! the chunks it lacks: in a per-node XOR order (so joiners that sync at the same time fetch
//! different chunks first and can serve each other), each from the least loaded peer that
//! advertised the state, within per-peer and total in-flight limits. Every chunk is checked
//! against its length and hash ([`ChunkCheck`], which the driver runs where the answer
//! arrives) before the driver writes it, and counts as held once it is on disk. A peer that serves a bad manifest or chunk is
//! dropped from the session (and the driver penalizes it); a peer that times out or fails backs
//! off; a partial peer (itself syncing) that does not hold a chunk yet is asked for others.
//!
//! The driver (`driver.rs`) feeds peers, answers and the clock in, sends the requests
//! [`SyncSession::poll`] hands out, checks and writes each chunk's answer and reports what it
//! found ([`SyncSession::on_chunk`]).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use icn_codecs::state::{
    chunk_hash, decode_manifest_piece, decode_meta_manifest, Hash, Manifest, ManifestLimits,
    ManifestPiece, MetaManifest,
};
use icn_codecs::DecodeError;
use icn_engine::NodeId;

use crate::consensus_manager::Backoff;

/// Settings of a session.
#[derive(Clone, Copy, Debug)]
pub struct SessionConfig {
    pub chunks_in_flight_per_peer_max: usize,
    pub chunks_in_flight_max: usize,
    pub backoff: Backoff,
    pub limits: ManifestLimits,
}

/// What a request asks a peer for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Want {
    Meta,
    Piece(u32),
    Chunk(u32),
}

/// Why a request failed without an answer to check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No answer before the deadline.
    Timeout,
    /// The peer does not hold it (yet): a partial peer, or a peer that deleted the state.
    Unavailable,
    /// The connection failed or the peer refused for another reason.
    Transport,
}

/// A peer served bytes that do not belong to the state: it is dropped from the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncOffence {
    /// A meta-manifest or piece that does not decode or does not match its hash.
    BadManifest(DecodeError),
    /// A chunk whose length or hash differs from the manifest.
    BadChunk { chunk: u32 },
    /// A full peer said it does not hold part of the state it advertised.
    Missing(Want),
}

/// What an accepted answer means for the driver.
#[derive(Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Nothing to do (a piece arrived, more are missing; or a stale answer).
    Nothing,
    /// The whole manifest arrived and checked out: prepare the scratch space, mark the chunks
    /// already held with [`SyncSession::mark_held`], then [`SyncSession::start_chunks`].
    ManifestReady,
    /// The chunk checked out and is on disk: it is held now (record it for a resume).
    ChunkHeld(u32),
}

/// Counters of one session (the driver turns them into metrics and test assertions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Chunks downloaded and verified.
    pub chunks_fetched: u64,
    pub bytes_fetched: u64,
    /// Chunks the node already held (resumed from disk or copied from an older checkpoint).
    pub chunks_held: u64,
    /// Chunks that failed their check (each drops its peer).
    pub corrupted_chunks: u64,
    /// Meta-manifests and pieces that failed their check.
    pub bad_manifests: u64,
    pub peers_dropped: u64,
    /// Requests that timed out or failed without an answer.
    pub failures: u64,
    /// Chunk requests a partial peer answered with "not held yet".
    pub unavailable: u64,
    /// Requests a full peer answered with "not held" (each drops the peer).
    pub missing: u64,
}

/// A chunk's expected length and hash, to check its answer against where the answer arrives
/// (it is `Send`: it may run on the shard that owns the peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkCheck {
    pub size: u32,
    pub hash: Hash,
}

impl ChunkCheck {
    /// Whether `bytes` are the chunk: its length, then its hash.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        bytes.len() == self.size as usize && chunk_hash(bytes) == self.hash
    }
}

/// What the driver found on a chunk's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkVerdict {
    /// It matched its [`ChunkCheck`] and is on disk.
    Written,
    /// Its length or hash differs: the peer served bytes that are not the chunk.
    Corrupt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    Missing,
    InFlight,
    Held,
}

#[derive(Debug)]
struct Peer {
    partial: bool,
    /// Still advertises the state (a peer that stopped is kept until its requests end).
    advertising: bool,
    dropped: bool,
    in_flight: usize,
    failures: u32,
    retry_at: Duration,
    /// Chunks this partial peer said it does not hold; cleared when it advertises again. At
    /// most one entry per chunk of the manifest.
    misses: HashSet<u32>,
}

impl Peer {
    fn usable(&self, now: Duration, in_flight_max: usize) -> bool {
        self.advertising && !self.dropped && self.retry_at <= now && self.in_flight < in_flight_max
    }
}

/// One state sync (see the module docs).
pub struct SyncSession {
    height: u64,
    root: Hash,
    config: SessionConfig,
    /// XORed into chunk indices to get this node's fetch order.
    order_key: u32,
    peers: BTreeMap<NodeId, Peer>,
    meta: Option<MetaManifest>,
    meta_in_flight: bool,
    pieces: Vec<Option<ManifestPiece>>,
    pieces_in_flight: HashSet<u32>,
    manifest: Option<Rc<Manifest>>,
    chunks: Vec<ChunkState>,
    /// Missing chunks not in flight, in fetch order.
    queue: VecDeque<u32>,
    /// Chunks in flight (asked, or being checked and written where they arrived) and whom
    /// they were asked of; at most `chunks_in_flight_max`: a chunk holds its buffer until it
    /// is on disk.
    in_flight: HashMap<u32, NodeId>,
    held_bytes: u64,
    held_count: u64,
    stats: SessionStats,
}

impl SyncSession {
    pub fn new(height: u64, root: Hash, local: NodeId, config: SessionConfig) -> SyncSession {
        let order_key = u32::from_le_bytes([local.0[0], local.0[1], local.0[2], local.0[3]]);
        SyncSession {
            height,
            root,
            config,
            order_key,
            peers: BTreeMap::new(),
            meta: None,
            meta_in_flight: false,
            pieces: Vec::new(),
            pieces_in_flight: HashSet::new(),
            manifest: None,
            chunks: Vec::new(),
            queue: VecDeque::new(),
            in_flight: HashMap::new(),
            held_bytes: 0,
            held_count: 0,
            stats: SessionStats::default(),
        }
    }

    pub fn height(&self) -> u64 {
        self.height
    }

    pub fn root(&self) -> Hash {
        self.root
    }

    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    pub fn manifest(&self) -> Option<&Rc<Manifest>> {
        self.manifest.as_ref()
    }

    pub fn meta(&self) -> Option<&MetaManifest> {
        self.meta.as_ref()
    }

    /// The pieces received so far (all of them once the manifest is ready).
    pub fn pieces(&self) -> impl Iterator<Item = &ManifestPiece> {
        self.pieces.iter().flatten()
    }

    /// Bytes of state held and in total (0 until the meta-manifest arrived).
    pub fn progress(&self) -> (u64, u64) {
        let total = self.meta.as_ref().map_or(0, |meta| meta.state_bytes);
        (self.held_bytes, total)
    }

    /// Chunks held and in total.
    pub fn chunk_progress(&self) -> (u64, u64) {
        (self.held_count, self.chunks.len() as u64)
    }

    /// Chunk requests in flight plus verified chunks being written.
    pub fn chunks_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn is_complete(&self) -> bool {
        self.manifest.is_some() && self.held_count == self.chunks.len() as u64
    }

    /// Peers advertising the state now, and whether each is partial. A peer that is no longer
    /// listed gets no new requests; one listed again (a new advert) may be asked again for
    /// chunks it missed before.
    pub fn set_peers(&mut self, advertisers: &[(NodeId, bool)]) {
        for peer in self.peers.values_mut() {
            peer.advertising = false;
        }
        for &(id, partial) in advertisers {
            let peer = self.peers.entry(id).or_insert_with(|| Peer {
                partial,
                advertising: true,
                dropped: false,
                in_flight: 0,
                failures: 0,
                retry_at: Duration::ZERO,
                misses: HashSet::new(),
            });
            peer.advertising = true;
            if peer.partial {
                // A partial peer's advert means it made progress: ask it again.
                peer.misses.clear();
            }
            peer.partial = partial;
        }
        self.peers
            .retain(|_, peer| peer.advertising || peer.in_flight > 0 || peer.dropped);
    }

    /// Peers that can still serve this session (advertising and not dropped).
    pub fn usable_peers(&self) -> usize {
        self.peers
            .values()
            .filter(|peer| peer.advertising && !peer.dropped)
            .count()
    }

    /// When a peer's backoff ends next (for the driver's timer), if any peer is waiting.
    pub fn next_retry(&self, now: Duration) -> Option<Duration> {
        self.peers
            .values()
            .filter(|peer| peer.advertising && !peer.dropped && peer.retry_at > now)
            .map(|peer| peer.retry_at)
            .min()
    }

    /// Hands out the requests to send now, as many as the limits allow.
    pub fn poll(&mut self, now: Duration) -> Vec<(NodeId, Want)> {
        let mut requests = Vec::new();
        let per_peer = self.config.chunks_in_flight_per_peer_max;
        if self.meta.is_none() {
            if !self.meta_in_flight {
                if let Some(peer) = self.pick_peer(now, per_peer, None) {
                    self.meta_in_flight = true;
                    self.start(peer, Want::Meta, &mut requests);
                }
            }
            return requests;
        }
        if self.manifest.is_none() {
            for index in 0..self.pieces.len() as u32 {
                if self.pieces[index as usize].is_some() || self.pieces_in_flight.contains(&index) {
                    continue;
                }
                let Some(peer) = self.pick_peer(now, per_peer, None) else {
                    break;
                };
                self.pieces_in_flight.insert(index);
                self.start(peer, Want::Piece(index), &mut requests);
            }
            return requests;
        }
        // Chunks: walk the queue once; a chunk no usable peer can serve now waits its turn.
        let mut skipped = Vec::new();
        while self.in_flight.len() < self.config.chunks_in_flight_max {
            let Some(chunk) = self.queue.pop_front() else {
                break;
            };
            if self.chunks[chunk as usize] != ChunkState::Missing {
                continue;
            }
            match self.pick_peer(now, per_peer, Some(chunk)) {
                Some(peer) => {
                    self.chunks[chunk as usize] = ChunkState::InFlight;
                    self.in_flight.insert(chunk, peer);
                    self.start(peer, Want::Chunk(chunk), &mut requests);
                }
                None => {
                    skipped.push(chunk);
                    // No peer has room at all: stop scanning.
                    if self.pick_peer(now, per_peer, None).is_none() {
                        break;
                    }
                }
            }
        }
        for chunk in skipped.into_iter().rev() {
            self.queue.push_front(chunk);
        }
        requests
    }

    fn start(&mut self, peer: NodeId, want: Want, requests: &mut Vec<(NodeId, Want)>) {
        if let Some(state) = self.peers.get_mut(&peer) {
            state.in_flight += 1;
        }
        requests.push((peer, want));
    }

    /// The least loaded usable peer (full peers before partial ones on ties; ties beyond that
    /// broken by the chunk index, so equal peers share the load), skipping partial peers that
    /// said they lack `chunk`.
    fn pick_peer(&self, now: Duration, per_peer: usize, chunk: Option<u32>) -> Option<NodeId> {
        self.peers
            .iter()
            .filter(|(_, peer)| peer.usable(now, per_peer))
            .filter(|(_, peer)| chunk.is_none_or(|chunk| !peer.misses.contains(&chunk)))
            .min_by_key(|(id, peer)| {
                let spread = u32::from_le_bytes([id.0[0], id.0[1], id.0[2], id.0[3]])
                    ^ chunk.unwrap_or(0).wrapping_mul(0x9e37_79b9);
                (peer.in_flight, peer.partial, spread)
            })
            .map(|(id, _)| *id)
    }

    fn finished(&mut self, peer: NodeId) {
        if let Some(state) = self.peers.get_mut(&peer) {
            state.in_flight = state.in_flight.saturating_sub(1);
        }
    }

    fn release(&mut self, want: Want) {
        match want {
            Want::Meta => self.meta_in_flight = false,
            Want::Piece(index) => {
                self.pieces_in_flight.remove(&index);
            }
            Want::Chunk(chunk) => {
                if self.in_flight.remove(&chunk).is_some()
                    && self.chunks.get(chunk as usize) == Some(&ChunkState::InFlight)
                {
                    self.chunks[chunk as usize] = ChunkState::Missing;
                    self.queue.push_front(chunk);
                }
            }
        }
    }

    fn drop_peer(&mut self, peer: NodeId) {
        if let Some(state) = self.peers.get_mut(&peer) {
            if !state.dropped {
                state.dropped = true;
                self.stats.peers_dropped += 1;
            }
        }
    }

    /// A request failed without an answer. A full peer (one that advertised the whole state)
    /// that says it does not hold what it advertised is dropped from the session: the returned
    /// offence is for the driver to penalize.
    pub fn on_failure(
        &mut self,
        peer: NodeId,
        want: Want,
        failure: Failure,
        now: Duration,
    ) -> Option<SyncOffence> {
        self.finished(peer);
        self.release(want);
        let backoff = self.config.backoff;
        let state = self.peers.get_mut(&peer)?;
        match (failure, want) {
            (Failure::Unavailable, Want::Chunk(chunk)) if state.partial => {
                self.stats.unavailable += 1;
                state.misses.insert(chunk);
                None
            }
            (Failure::Unavailable, _) if !state.partial => {
                self.stats.missing += 1;
                self.drop_peer(peer);
                Some(SyncOffence::Missing(want))
            }
            _ => {
                self.stats.failures += 1;
                state.failures += 1;
                state.retry_at = now + backoff.delay(state.failures);
                None
            }
        }
    }

    /// An answer to a meta-manifest or piece request arrived from `peer`: checks it. An offence
    /// drops the peer. Chunk answers are checked and written by the driver and reported with
    /// [`SyncSession::on_chunk`]; raw chunk bytes handed in here are not taken (nothing says
    /// they are on disk): the chunk is asked again.
    pub fn on_answer(
        &mut self,
        peer: NodeId,
        want: Want,
        bytes: &[u8],
    ) -> Result<Accepted, SyncOffence> {
        self.finished(peer);
        let result = match want {
            Want::Meta => self.accept_meta(bytes),
            Want::Piece(index) => self.accept_piece(index, bytes),
            Want::Chunk(_) => {
                self.release(want);
                Ok(Accepted::Nothing)
            }
        };
        self.judge(peer, result)
    }

    /// What the driver found on `peer`'s answer for `chunk` (see [`ChunkVerdict`]). A corrupt
    /// chunk drops the peer and is asked of another.
    pub fn on_chunk(
        &mut self,
        peer: NodeId,
        chunk: u32,
        verdict: ChunkVerdict,
    ) -> Result<Accepted, SyncOffence> {
        self.finished(peer);
        let result = self.accept_chunk(peer, chunk, verdict);
        self.judge(peer, result)
    }

    /// What [`SyncSession::on_chunk`] needs checked on `chunk`'s answer: its length and hash
    /// from the manifest (None before the manifest or out of range).
    pub fn chunk_check(&self, chunk: u32) -> Option<ChunkCheck> {
        let entry = self.manifest.as_ref()?.chunks.get(chunk as usize)?;
        Some(ChunkCheck {
            size: entry.size,
            hash: entry.hash,
        })
    }

    /// Counts an answer's result against its peer: a good one clears its failures, an offence
    /// drops it.
    fn judge(
        &mut self,
        peer: NodeId,
        result: Result<Accepted, SyncOffence>,
    ) -> Result<Accepted, SyncOffence> {
        match &result {
            Ok(_) => {
                if let Some(state) = self.peers.get_mut(&peer) {
                    state.failures = 0;
                }
            }
            Err(offence) => {
                match offence {
                    SyncOffence::BadManifest(_) => self.stats.bad_manifests += 1,
                    SyncOffence::BadChunk { .. } => self.stats.corrupted_chunks += 1,
                    SyncOffence::Missing(_) => self.stats.missing += 1,
                }
                self.drop_peer(peer);
            }
        }
        result
    }

    fn accept_meta(&mut self, bytes: &[u8]) -> Result<Accepted, SyncOffence> {
        self.meta_in_flight = false;
        if self.meta.is_some() {
            return Ok(Accepted::Nothing);
        }
        let meta =
            decode_meta_manifest(bytes, &self.config.limits).map_err(SyncOffence::BadManifest)?;
        if meta.root_hash() != self.root {
            return Err(SyncOffence::BadManifest(DecodeError::Invalid {
                kind: "MetaManifest",
                detail: "hash differs from the state's root hash",
            }));
        }
        self.pieces = vec![None; meta.pieces.len()];
        self.meta = Some(meta);
        Ok(Accepted::Nothing)
    }

    fn accept_piece(&mut self, index: u32, bytes: &[u8]) -> Result<Accepted, SyncOffence> {
        self.pieces_in_flight.remove(&index);
        let Some(meta) = &self.meta else {
            return Ok(Accepted::Nothing);
        };
        if self.pieces.get(index as usize).is_none_or(Option::is_some) {
            return Ok(Accepted::Nothing);
        }
        let piece =
            decode_manifest_piece(bytes, &self.config.limits).map_err(SyncOffence::BadManifest)?;
        if piece.index != index {
            return Err(SyncOffence::BadManifest(DecodeError::Invalid {
                kind: "ManifestPiece",
                detail: "not the piece asked for",
            }));
        }
        meta.check_piece(&piece).map_err(SyncOffence::BadManifest)?;
        self.pieces[index as usize] = Some(piece);
        if self.pieces.iter().any(Option::is_none) {
            return Ok(Accepted::Nothing);
        }
        let pieces = self.pieces.iter().flatten().cloned().collect();
        match Manifest::assemble(meta, pieces, &self.config.limits) {
            Ok(manifest) => {
                self.chunks = vec![ChunkState::Missing; manifest.chunks.len()];
                self.manifest = Some(Rc::new(manifest));
                Ok(Accepted::ManifestReady)
            }
            Err(error) => {
                // Every piece matched a root hash that is itself invalid: nobody can serve
                // this state. Start the pieces over; the driver gives up on the target.
                self.pieces = vec![None; meta.pieces.len()];
                Err(SyncOffence::BadManifest(error))
            }
        }
    }

    /// Marks chunks the node already holds (verified on disk or copied locally) before
    /// fetching starts.
    pub fn mark_held(&mut self, chunks: impl IntoIterator<Item = u32>) {
        let Some(manifest) = self.manifest.clone() else {
            return;
        };
        for chunk in chunks {
            if let Some(state) = self.chunks.get_mut(chunk as usize) {
                if *state == ChunkState::Missing {
                    *state = ChunkState::Held;
                    self.held_count += 1;
                    self.held_bytes += u64::from(manifest.chunks[chunk as usize].size);
                    self.stats.chunks_held += 1;
                }
            }
        }
    }

    /// Queues the missing chunks in this node's fetch order; call once after
    /// [`Accepted::ManifestReady`] and [`SyncSession::mark_held`].
    pub fn start_chunks(&mut self) {
        let key = self.order_key;
        let mut missing: Vec<u32> = (0..self.chunks.len() as u32)
            .filter(|&chunk| self.chunks[chunk as usize] == ChunkState::Missing)
            .collect();
        missing.sort_unstable_by_key(|&chunk| chunk ^ key);
        self.queue = missing.into();
    }

    fn accept_chunk(
        &mut self,
        peer: NodeId,
        chunk: u32,
        verdict: ChunkVerdict,
    ) -> Result<Accepted, SyncOffence> {
        // Only the answer of the peer the chunk is in flight from counts (a stale answer
        // that was written anyway wrote the same verified bytes).
        if self.in_flight.get(&chunk) != Some(&peer) {
            return Ok(Accepted::Nothing);
        }
        self.in_flight.remove(&chunk);
        if verdict == ChunkVerdict::Corrupt {
            self.chunks[chunk as usize] = ChunkState::Missing;
            self.queue.push_front(chunk);
            return Err(SyncOffence::BadChunk { chunk });
        }
        let size = self
            .manifest
            .as_ref()
            .map_or(0, |manifest| manifest.chunks[chunk as usize].size);
        self.chunks[chunk as usize] = ChunkState::Held;
        self.held_count += 1;
        self.held_bytes += u64::from(size);
        self.stats.chunks_fetched += 1;
        self.stats.bytes_fetched += u64::from(size);
        Ok(Accepted::ChunkHeld(chunk))
    }

    /// Whether this node holds a verified copy of `chunk` (it may serve it while partial).
    pub fn holds(&self, chunk: u32) -> bool {
        self.chunks.get(chunk as usize) == Some(&ChunkState::Held)
    }
}

#[cfg(test)]
mod tests;
