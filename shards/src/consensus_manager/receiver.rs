//! The receiving half of the consensus manager for one artifact kind: every peer's slot table,
//! the artifacts they advertise, and the artifact downloader. No I/O: the driver feeds it slot
//! updates, fetch outcomes, connection changes and `now`, and polls it for fetches to start and
//! events (deliver, remove, penalize, cancel).
//!
//! Invariants:
//! - Per peer: at most `peer_slots_max` slots and `peer_advert_bytes_max` bytes of ids and
//!   attributes; an update beyond either is refused and the peer penalized.
//! - At most `tracked_artifacts_max` artifact ids are tracked; an advert of a new id beyond that
//!   is refused as busy (the sender retries later), never dropped silently.
//! - A slot's state only moves forward: an update with an older connection id, or an older or
//!   equal commit id for the same slot, is ignored.
//! - One download per artifact id at a time, however many peers advertise it and however often
//!   their connections flap; once delivered, an id is not downloaded again while any peer still
//!   advertises it. When no peer advertises an id any more its download stops and, if it was
//!   delivered, it leaves the unvalidated pool.
//! - Fetches in flight: at most `downloads_in_flight_max` in all and
//!   `downloads_in_flight_per_peer_max` per peer, counted in requests: a batch of several small
//!   whole artifacts from one peer (at most `fetch_batch_artifacts_max` of them and
//!   `fetch_batch_bytes_max` advertised bytes) is one fetch. Each artifact of a batch keeps its
//!   own outcome: a missing or wrong one is retried and blamed exactly as a single fetch is.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use icn_engine::{Buf, ConnId, NodeId};
use smallvec::SmallVec;

use super::sender::{SlotNumber, UpdateMessage};
use super::{Backoff, LocalMap, RemoteMap, TokenBucket};
use crate::artifact::{Advert, Artifact, ArtifactId, Want};

/// Identifies one fetch (one RPC) started by the downloader.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct FetchId(pub u64);

/// A fetch the driver must start: ask `peer` for `length` bytes at `offset` of the one artifact
/// in `artifacts` (`length` 0: all of it), or, when `artifacts` holds several, for each of them
/// whole in one batch request (`offset` and `length` 0); give up after `timeout`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetch {
    pub id: FetchId,
    pub peer: NodeId,
    pub artifacts: Vec<ArtifactId>,
    pub offset: u64,
    pub length: u64,
    pub timeout: Duration,
}

impl Fetch {
    /// Several whole artifacts in one request (the batch route), not one artifact or chunk.
    pub fn is_batch(&self) -> bool {
        self.artifacts.len() > 1
    }
}

/// How a fetch ended, for [`Receiver::fetch_done`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchOutcome {
    /// The RPC failed (timeout, closed connection, error status): everything it asked for is
    /// retried.
    Failed,
    /// The answer to a single fetch: the artifact or chunk.
    Bytes(Buf),
    /// The answer to a batch: per artifact asked for, in order, its bytes or `None` (the peer
    /// does not hold it, or it did not fit in the answer).
    Batch(Vec<Option<Buf>>),
    /// A batch answer that does not decode or does not match the request: the peer is
    /// penalized ([`Offence::BadMessage`]) and everything it was asked for is retried.
    Malformed,
}

/// Why a peer is penalized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offence {
    /// Bytes that do not match the advert (hash or length).
    InvalidArtifact,
    /// A slot number at or above `peer_slots_max`, or adverts over `peer_advert_bytes_max`.
    SlotTableOverflow,
    /// An advert larger than the largest message.
    ArtifactTooLarge,
    /// A slot update, fetch request or batch answer that does not decode, or a fetch for a
    /// range outside the artifact.
    BadMessage,
}

/// What the driver must do after feeding the receiver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiverEvent {
    /// A complete, content-checked artifact for the pool's unvalidated section.
    Deliver {
        artifact: Artifact,
        from: NodeId,
    },
    /// No peer advertises this delivered artifact any more.
    RemoveUnvalidated(ArtifactId),
    Penalize {
        peer: NodeId,
        offence: Offence,
    },
    /// Stop this fetch (its artifact is no longer wanted or no longer advertised).
    CancelFetch(FetchId),
}

/// An update refused; the driver answers the RPC with an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UpdateRefused {
    /// The peer broke a bound (it was penalized).
    #[error("slot update breaks a bound: {0:?}")]
    Offence(Offence),
    /// We cannot take it now (tracked-artifact bound); the sender should retry later.
    #[error("too many artifacts tracked; retry later")]
    Busy,
}

/// A decoded slot update from a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundUpdate {
    pub slot: SlotNumber,
    pub commit_id: u64,
    pub message: UpdateMessage,
}

/// Settings of one receiver (from icn-tuning's gossip section and rpc.message_bytes_max).
#[derive(Clone, Copy, Debug)]
pub struct ReceiverConfig {
    pub peer_slots_max: usize,
    pub peer_advert_bytes_max: usize,
    pub tracked_artifacts_max: usize,
    pub downloads_in_flight_per_peer_max: usize,
    pub downloads_in_flight_max: usize,
    pub chunking_threshold_bytes: u64,
    pub download_chunk_bytes: u64,
    pub download_timeout_initial: Duration,
    pub download_timeout_max: Duration,
    pub backoff: Backoff,
    pub peer_download_bytes_per_s_max: u64,
    pub download_bytes_per_s_max: u64,
    pub maybe_later_recheck: Duration,
    pub artifact_bytes_max: u64,
    /// Whole artifacts per batch request; 1: no batches.
    pub fetch_batch_artifacts_max: usize,
    /// Advertised bytes per batch; larger artifacts are fetched alone.
    pub fetch_batch_bytes_max: u64,
}

/// Counters of the receiving side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    pub updates_received: u64,
    pub updates_stale: u64,
    pub updates_refused_busy: u64,
    pub pushes_received: u64,
    pub adverts_received: u64,
    pub clears_received: u64,
    /// Fetch requests started (a batch counts once).
    pub fetches_started: u64,
    /// Batch requests started (a subset of fetches_started) and the artifacts they asked for.
    pub batches_started: u64,
    pub batch_artifacts_requested: u64,
    /// Artifacts a batch answer said the peer does not hold (each retried).
    pub batch_artifacts_not_held: u64,
    pub fetches_succeeded: u64,
    pub fetches_failed: u64,
    pub fetches_cancelled: u64,
    pub bytes_fetched: u64,
    pub artifacts_delivered: u64,
    /// Deliveries by content pushed in a slot update (subset of artifacts_delivered).
    pub artifacts_delivered_pushed: u64,
    pub invalid_artifacts: u64,
    pub protocol_offences: u64,
    /// Pushed copies of an artifact already delivered or being delivered (not re-delivered).
    pub duplicate_pushes: u64,
    pub removed_unvalidated: u64,
}

const PEERS_INLINE: usize = 8;

struct PeerState {
    conn: ConnId,
    slots: RemoteMap<SlotNumber, (u64, ArtifactId, usize)>,
    advert_bytes: usize,
    bucket: TokenBucket,
}

#[derive(Debug)]
enum Chunk {
    Missing { not_before: Duration },
    InFlight { fetch: FetchId, peer: NodeId },
    Done { bytes: Buf, from: NodeId },
}

#[derive(Debug)]
struct Download {
    chunks: Vec<Chunk>,
    /// Failed attempts so far; the fetch deadline doubles with each.
    failures: u32,
    /// After a chunked artifact failed its content check with chunks from several peers: every
    /// chunk from this one peer, so that the next failure names the culprit.
    single_source: Option<NodeId>,
    /// Peers that failed this download; tried last.
    avoided: SmallVec<[NodeId; 4]>,
    /// Order among downloads (smaller first).
    order: u64,
}

#[derive(Debug)]
enum Track {
    Unwanted,
    MaybeLater { recheck_at: Duration },
    Downloading(Download),
    Delivered,
}

struct Tracked {
    advert: Advert,
    advertisers: SmallVec<[NodeId; PEERS_INLINE]>,
    track: Track,
}

/// Downloads scanned per poll before giving up (bounds the cost of a poll when every
/// advertiser is busy).
const DOWNLOADS_SCANNED_PER_POLL_MAX: usize = 1024;

/// One fetch (one RPC) in flight.
struct InFlightFetch {
    peer: NodeId,
    /// (artifact, chunk index) asked for, in request order: one, or several whole artifacts.
    items: SmallVec<[(ArtifactId, usize); 1]>,
    /// Items whose download still waits on this fetch; the RPC is cancelled when none does.
    live: usize,
}

/// A batch being filled by one poll: its fetch is in `fetches` (counted against the limits)
/// from the moment it opens; its request goes out when it is full or the poll ends.
struct OpenBatch {
    /// Given when its first artifact joins (the batch then enters `fetches`).
    fetch: FetchId,
    peer: NodeId,
    artifacts: Vec<ArtifactId>,
    bytes: u64,
    /// The most failures among its downloads (sets the deadline).
    failures: u32,
}

/// Every peer's adverts for one artifact kind and the downloads they lead to.
pub struct Receiver {
    config: ReceiverConfig,
    peers: LocalMap<NodeId, PeerState>,
    tracked: RemoteMap<ArtifactId, Tracked>,
    /// Downloads with work to do, in order: order -> id.
    downloads: BTreeMap<u64, ArtifactId>,
    next_order: u64,
    maybe_later: BTreeSet<(Duration, ArtifactId)>,
    /// Bounded by `downloads_in_flight_max` entries of at most `fetch_batch_artifacts_max` items.
    fetches: LocalMap<FetchId, InFlightFetch>,
    /// Fetches in flight per peer, kept apart from the peer's state so that a reconnect (a new
    /// state) cannot lose count of the old connection's fetches. Only peers with a fetch in
    /// flight have an entry: at most `downloads_in_flight_max`.
    fetches_by_peer: LocalMap<NodeId, usize>,
    next_fetch: u64,
    bucket: TokenBucket,
    events: VecDeque<ReceiverEvent>,
    /// Earliest time a chunk waiting for its retry becomes due, found by the last poll.
    next_retry_at: Option<Duration>,
    stats: ReceiverStats,
}

impl Receiver {
    pub fn new(config: ReceiverConfig) -> Receiver {
        assert!(config.download_chunk_bytes > 0);
        assert!(config.chunking_threshold_bytes >= config.download_chunk_bytes);
        assert!(
            (1..=icn_codecs::ARTIFACT_BATCH_IDS_MAX).contains(&config.fetch_batch_artifacts_max)
        );
        Receiver {
            config,
            peers: LocalMap::default(),
            tracked: RemoteMap::default(),
            downloads: BTreeMap::new(),
            next_order: 0,
            maybe_later: BTreeSet::new(),
            fetches: LocalMap::default(),
            fetches_by_peer: LocalMap::default(),
            next_fetch: 0,
            bucket: TokenBucket::new(config.download_bytes_per_s_max),
            events: VecDeque::new(),
            next_retry_at: None,
            stats: ReceiverStats::default(),
        }
    }

    pub fn stats(&self) -> ReceiverStats {
        self.stats
    }

    /// Artifact ids tracked (advertised and not yet dropped).
    pub fn tracked(&self) -> usize {
        self.tracked.len()
    }

    /// Fetch requests in flight (a batch counts once).
    pub fn fetches_in_flight(&self) -> usize {
        self.fetches.len()
    }

    /// Downloads not finished (queued or in progress).
    pub fn downloads_pending(&self) -> usize {
        self.tracked
            .values()
            .filter(|tracked| matches!(tracked.track, Track::Downloading(_)))
            .count()
    }

    /// Slots held for `peer` (0 if unknown).
    pub fn peer_slots(&self, peer: NodeId) -> usize {
        self.peers.get(&peer).map_or(0, |state| state.slots.len())
    }

    /// Advert bytes (ids + attributes) held for `peer`, bounded by `peer_advert_bytes_max`.
    pub fn peer_advert_bytes(&self, peer: NodeId) -> usize {
        self.peers.get(&peer).map_or(0, |state| state.advert_bytes)
    }

    /// Peers that advertise `id`.
    pub fn advertisers(&self, id: &ArtifactId) -> Vec<NodeId> {
        self.tracked
            .get(id)
            .map(|tracked| tracked.advertisers.to_vec())
            .unwrap_or_default()
    }

    pub fn poll_event(&mut self) -> Option<ReceiverEvent> {
        self.events.pop_front()
    }

    /// A slot update from `peer` on connection `conn`. `want` is the pool's bouncer and
    /// `matches` its content check (for pushed artifacts).
    pub fn handle_update(
        &mut self,
        peer: NodeId,
        conn: ConnId,
        update: InboundUpdate,
        now: Duration,
        want: &dyn Fn(&Advert) -> Want,
        matches: &dyn Fn(&Advert, &[u8]) -> bool,
    ) -> Result<(), UpdateRefused> {
        self.stats.updates_received += 1;
        if !self.admit_connection(peer, conn, now) {
            self.stats.updates_stale += 1;
            return Ok(());
        }
        if update.slot >= self.config.peer_slots_max as u64 {
            return Err(self.offence(peer, Offence::SlotTableOverflow));
        }
        let state = &self.peers[&peer];
        if let Some((commit, _, _)) = state.slots.get(&update.slot) {
            if *commit >= update.commit_id {
                self.stats.updates_stale += 1;
                return Ok(());
            }
        }
        match update.message {
            UpdateMessage::Cleared(_) => {
                self.stats.clears_received += 1;
                self.clear_slot(peer, update.slot);
                Ok(())
            }
            UpdateMessage::Advert(advert) => {
                self.stats.adverts_received += 1;
                self.occupy_slot(
                    peer,
                    update.slot,
                    update.commit_id,
                    advert,
                    None,
                    now,
                    want,
                    matches,
                )
            }
            UpdateMessage::Push(artifact) => {
                self.stats.pushes_received += 1;
                let Artifact { advert, payload } = artifact;
                self.occupy_slot(
                    peer,
                    update.slot,
                    update.commit_id,
                    advert,
                    Some(payload),
                    now,
                    want,
                    matches,
                )
            }
        }
    }

    /// Registers `conn` for `peer`; false if it is older than the one known (a stale update).
    /// A newer connection starts the peer's slot table afresh.
    fn admit_connection(&mut self, peer: NodeId, conn: ConnId, now: Duration) -> bool {
        match self.peers.get(&peer).map(|state| state.conn) {
            Some(known) if known > conn => return false,
            Some(known) if known == conn => return true,
            Some(_) => self.peer_disconnected(peer),
            None => {}
        }
        let mut bucket = TokenBucket::new(self.config.peer_download_bytes_per_s_max);
        bucket.refill(now);
        self.peers.insert(
            peer,
            PeerState {
                conn,
                slots: RemoteMap::default(),
                advert_bytes: 0,
                bucket,
            },
        );
        true
    }

    /// The connection to `peer` is gone: everything it advertised is withdrawn. Its fetches in
    /// flight finish (or fail) on their own.
    pub fn peer_disconnected(&mut self, peer: NodeId) {
        let Some(state) = self.peers.remove(&peer) else {
            return;
        };
        for (_, (_, id, _)) in state.slots {
            self.drop_advertiser(&id, peer);
        }
    }

    /// One fetch to `peer` ended (answered, failed or cancelled).
    fn fetch_ended(&mut self, peer: NodeId) {
        if let Some(count) = self.fetches_by_peer.get_mut(&peer) {
            *count -= 1;
            if *count == 0 {
                self.fetches_by_peer.remove(&peer);
            }
        }
    }

    fn offence(&mut self, peer: NodeId, offence: Offence) -> UpdateRefused {
        self.stats.protocol_offences += 1;
        self.events
            .push_back(ReceiverEvent::Penalize { peer, offence });
        UpdateRefused::Offence(offence)
    }

    fn clear_slot(&mut self, peer: NodeId, slot: SlotNumber) {
        let state = self.peers.get_mut(&peer).expect("admitted peer");
        if let Some((_, id, bytes)) = state.slots.remove(&slot) {
            state.advert_bytes -= bytes;
            self.drop_advertiser(&id, peer);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn occupy_slot(
        &mut self,
        peer: NodeId,
        slot: SlotNumber,
        commit_id: u64,
        advert: Advert,
        pushed: Option<Buf>,
        now: Duration,
        want: &dyn Fn(&Advert) -> Want,
        matches: &dyn Fn(&Advert, &[u8]) -> bool,
    ) -> Result<(), UpdateRefused> {
        if advert.size_bytes > self.config.artifact_bytes_max {
            return Err(self.offence(peer, Offence::ArtifactTooLarge));
        }
        let entry_bytes = advert.id.len() + advert.attributes.len();
        let state = &self.peers[&peer];
        let old_bytes = state.slots.get(&slot).map_or(0, |(_, _, bytes)| *bytes);
        if state.advert_bytes - old_bytes + entry_bytes > self.config.peer_advert_bytes_max {
            return Err(self.offence(peer, Offence::SlotTableOverflow));
        }
        let is_new_id = !self.tracked.contains_key(&advert.id);
        if is_new_id && self.tracked.len() >= self.config.tracked_artifacts_max {
            self.stats.updates_refused_busy += 1;
            return Err(UpdateRefused::Busy);
        }
        self.clear_slot(peer, slot);
        let state = self.peers.get_mut(&peer).expect("admitted peer");
        state.advert_bytes += entry_bytes;
        state
            .slots
            .insert(slot, (commit_id, advert.id.clone(), entry_bytes));
        self.add_advertiser(peer, advert, pushed, now, want, matches);
        Ok(())
    }

    fn add_advertiser(
        &mut self,
        peer: NodeId,
        advert: Advert,
        pushed: Option<Buf>,
        now: Duration,
        want: &dyn Fn(&Advert) -> Want,
        matches: &dyn Fn(&Advert, &[u8]) -> bool,
    ) {
        let id = advert.id.clone();
        if let Some(tracked) = self.tracked.get_mut(&id) {
            if !tracked.advertisers.contains(&peer) {
                tracked.advertisers.push(peer);
            }
            if let Some(payload) = pushed {
                self.take_pushed(peer, &id, payload, matches);
            }
            return;
        }
        let track = match want(&advert) {
            Want::Wanted => Track::Downloading(self.new_download(advert.size_bytes, now)),
            Want::MaybeLater => {
                let recheck_at = now + self.config.maybe_later_recheck;
                self.maybe_later.insert((recheck_at, id.clone()));
                Track::MaybeLater { recheck_at }
            }
            Want::Unwanted => Track::Unwanted,
        };
        if let Track::Downloading(download) = &track {
            self.downloads.insert(download.order, id.clone());
        }
        let mut advertisers = SmallVec::new();
        advertisers.push(peer);
        self.tracked.insert(
            id.clone(),
            Tracked {
                advert,
                advertisers,
                track,
            },
        );
        if let Some(payload) = pushed {
            self.take_pushed(peer, &id, payload, matches);
        }
    }

    /// Pushed bytes for a tracked id: delivered if the id is being downloaded (the download
    /// stops), ignored if delivered already or unwanted.
    fn take_pushed(
        &mut self,
        peer: NodeId,
        id: &ArtifactId,
        payload: Buf,
        matches: &dyn Fn(&Advert, &[u8]) -> bool,
    ) {
        let tracked = self.tracked.get(id).expect("tracked id");
        if !matches!(tracked.track, Track::Downloading(_)) {
            if matches!(tracked.track, Track::Delivered) {
                self.stats.duplicate_pushes += 1;
            }
            return;
        }
        if payload.len() as u64 != tracked.advert.size_bytes || !matches(&tracked.advert, &payload)
        {
            self.invalid(peer);
            return;
        }
        self.stats.artifacts_delivered_pushed += 1;
        self.deliver(id, payload, peer);
    }

    fn invalid(&mut self, peer: NodeId) {
        self.stats.invalid_artifacts += 1;
        self.events.push_back(ReceiverEvent::Penalize {
            peer,
            offence: Offence::InvalidArtifact,
        });
    }

    fn new_download(&mut self, size_bytes: u64, now: Duration) -> Download {
        let chunk_count = if size_bytes > self.config.chunking_threshold_bytes {
            size_bytes.div_ceil(self.config.download_chunk_bytes) as usize
        } else {
            1
        };
        self.next_order += 1;
        Download {
            chunks: (0..chunk_count)
                .map(|_| Chunk::Missing { not_before: now })
                .collect(),
            failures: 0,
            single_source: None,
            avoided: SmallVec::new(),
            order: self.next_order,
        }
    }

    /// `peer` no longer advertises `id`; the last advertiser leaving drops the id.
    fn drop_advertiser(&mut self, id: &ArtifactId, peer: NodeId) {
        let Some(tracked) = self.tracked.get_mut(id) else {
            return;
        };
        tracked.advertisers.retain(|advertiser| *advertiser != peer);
        if !tracked.advertisers.is_empty() {
            return;
        }
        let tracked = self.tracked.remove(id).expect("tracked id");
        match tracked.track {
            Track::Downloading(download) => {
                self.downloads.remove(&download.order);
                self.cancel_chunks(download);
            }
            Track::Delivered => {
                self.stats.removed_unvalidated += 1;
                self.events
                    .push_back(ReceiverEvent::RemoveUnvalidated(id.clone()));
            }
            Track::MaybeLater { recheck_at } => {
                self.maybe_later.remove(&(recheck_at, id.clone()));
            }
            Track::Unwanted => {}
        }
    }

    /// The download no longer waits on its fetches; a fetch nobody waits on any more (a batch
    /// once its last waiting artifact is gone) is cancelled.
    fn cancel_chunks(&mut self, download: Download) {
        for chunk in download.chunks {
            let Chunk::InFlight { fetch, peer } = chunk else {
                continue;
            };
            let Some(in_flight) = self.fetches.get_mut(&fetch) else {
                continue;
            };
            in_flight.live -= 1;
            if in_flight.live > 0 {
                continue;
            }
            self.fetches.remove(&fetch);
            self.fetch_ended(peer);
            self.stats.fetches_cancelled += 1;
            self.events.push_back(ReceiverEvent::CancelFetch(fetch));
        }
    }

    fn deliver(&mut self, id: &ArtifactId, payload: Buf, from: NodeId) {
        let tracked = self.tracked.get_mut(id).expect("tracked id");
        let previous = std::mem::replace(&mut tracked.track, Track::Delivered);
        let artifact = Artifact {
            advert: tracked.advert.clone(),
            payload,
        };
        if let Track::Downloading(download) = previous {
            self.downloads.remove(&download.order);
            self.cancel_chunks(download);
        }
        self.stats.artifacts_delivered += 1;
        self.events
            .push_back(ReceiverEvent::Deliver { artifact, from });
    }

    /// Asks the bouncer again about adverts it answered "maybe later" whose recheck is due.
    pub fn recheck(&mut self, now: Duration, want: &dyn Fn(&Advert) -> Want) {
        while let Some((when, id)) = self.maybe_later.first().cloned() {
            if when > now {
                break;
            }
            self.maybe_later.remove(&(when, id.clone()));
            let Some(tracked) = self.tracked.get(&id) else {
                continue;
            };
            let answer = want(&tracked.advert);
            let size_bytes = tracked.advert.size_bytes;
            let track = match answer {
                Want::Wanted => {
                    let download = self.new_download(size_bytes, now);
                    self.downloads.insert(download.order, id.clone());
                    Track::Downloading(download)
                }
                Want::MaybeLater => {
                    let recheck_at = now + self.config.maybe_later_recheck;
                    self.maybe_later.insert((recheck_at, id.clone()));
                    Track::MaybeLater { recheck_at }
                }
                Want::Unwanted => Track::Unwanted,
            };
            self.tracked.get_mut(&id).expect("tracked id").track = track;
        }
    }

    /// When the receiver next has timed work (a chunk retry or a bouncer recheck).
    pub fn next_wakeup(&self) -> Option<Duration> {
        let recheck = self.maybe_later.first().map(|(when, _)| *when);
        match (recheck, self.next_retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next fetch to start, if a download has a chunk due and an advertiser with room.
    pub fn poll_fetch(&mut self, now: Duration) -> Option<Fetch> {
        let mut out = Vec::with_capacity(1);
        self.poll_fetches(now, 1, &mut out);
        out.pop()
    }

    /// Starts every fetch that can start now (for at most `max` artifacts), in download order,
    /// in one pass over the downloads that still have chunks to fetch; appends them to `out`.
    /// Small whole artifacts due from the same peer go into one batch request.
    pub fn poll_fetches(&mut self, now: Duration, max: usize, out: &mut Vec<Fetch>) {
        self.next_retry_at = None;
        self.bucket.refill(now);
        if !self.bucket.has_tokens() {
            self.next_retry_at = Some(self.bucket.ready_at(now));
            return;
        }
        let per_peer_max = self.config.downloads_in_flight_per_peer_max;
        let mut peers_with_room = self
            .peers
            .keys()
            .filter(|peer| self.fetches_by_peer.get(peer).copied().unwrap_or(0) < per_peer_max)
            .count();
        let mut started_all: SmallVec<[u64; 16]> = SmallVec::new();
        // At most one per peer with room when the poll began (a batch closes when full).
        let mut open: SmallVec<[OpenBatch; PEERS_INLINE]> = SmallVec::new();
        let mut artifacts_started = 0;
        let Receiver {
            config,
            peers,
            tracked,
            downloads,
            fetches,
            fetches_by_peer,
            next_fetch,
            bucket,
            next_retry_at,
            stats,
            ..
        } = self;
        for (scanned, (order, id)) in downloads.iter().enumerate() {
            let can_open = peers_with_room > 0 && fetches.len() < config.downloads_in_flight_max;
            if scanned >= DOWNLOADS_SCANNED_PER_POLL_MAX
                || artifacts_started >= max
                || (!can_open && open.is_empty())
                || !bucket.has_tokens()
            {
                break;
            }
            let Some(entry) = tracked.get_mut(id) else {
                continue;
            };
            let size_bytes = entry.advert.size_bytes;
            let Track::Downloading(download) = &mut entry.track else {
                continue;
            };
            let batchable = download.chunks.len() == 1
                && config.fetch_batch_artifacts_max > 1
                && size_bytes <= config.fetch_batch_bytes_max;
            let mut missing_left = false;
            for index in 0..download.chunks.len() {
                let Chunk::Missing { not_before } = download.chunks[index] else {
                    continue;
                };
                if not_before > now {
                    missing_left = true;
                    *next_retry_at =
                        Some(next_retry_at.map_or(not_before, |at| at.min(not_before)));
                    continue;
                }
                let can_open =
                    peers_with_room > 0 && fetches.len() < config.downloads_in_flight_max;
                if artifacts_started >= max || (!can_open && !batchable) {
                    missing_left = true;
                    continue;
                }
                if batchable {
                    let placed = place_in_batch(
                        config,
                        peers,
                        &mut open,
                        &entry.advertisers,
                        download,
                        size_bytes,
                        can_open,
                        fetches_by_peer,
                        now,
                    );
                    let Some(position) = placed else {
                        missing_left = true;
                        continue;
                    };
                    if open[position].artifacts.is_empty() {
                        let peer = open[position].peer;
                        *next_fetch += 1;
                        open[position].fetch = FetchId(*next_fetch);
                        let in_flight = fetches_by_peer.entry(peer).or_insert(0);
                        *in_flight += 1;
                        if *in_flight == per_peer_max {
                            peers_with_room -= 1;
                        }
                        fetches.insert(
                            open[position].fetch,
                            InFlightFetch {
                                peer,
                                items: SmallVec::new(),
                                live: 0,
                            },
                        );
                        stats.fetches_started += 1;
                    }
                    let batch = &mut open[position];
                    batch.artifacts.push(id.clone());
                    batch.bytes += size_bytes;
                    batch.failures = batch.failures.max(download.failures);
                    download.chunks[0] = Chunk::InFlight {
                        fetch: batch.fetch,
                        peer: batch.peer,
                    };
                    let in_flight = fetches.get_mut(&batch.fetch).expect("open batch");
                    in_flight.items.push((id.clone(), 0));
                    in_flight.live += 1;
                    peers
                        .get_mut(&batch.peer)
                        .expect("eligible peer")
                        .bucket
                        .take(size_bytes);
                    bucket.take(size_bytes);
                    artifacts_started += 1;
                    if batch.artifacts.len() >= config.fetch_batch_artifacts_max {
                        let batch = open.remove(position);
                        out.push(close_batch(config, stats, batch));
                    }
                    continue;
                }
                let Some(peer) = choose_peer(
                    peers,
                    fetches_by_peer,
                    &entry.advertisers,
                    download,
                    index,
                    per_peer_max,
                    now,
                ) else {
                    missing_left = true;
                    continue;
                };
                *next_fetch += 1;
                let fetch_id = FetchId(*next_fetch);
                let (offset, length) =
                    chunk_range(config, download.chunks.len(), index, size_bytes);
                download.chunks[index] = Chunk::InFlight {
                    fetch: fetch_id,
                    peer,
                };
                let expected = if length == 0 { size_bytes } else { length };
                let state = peers.get_mut(&peer).expect("eligible peer");
                let in_flight = fetches_by_peer.entry(peer).or_insert(0);
                *in_flight += 1;
                if *in_flight == per_peer_max {
                    peers_with_room -= 1;
                }
                state.bucket.take(expected);
                bucket.take(expected);
                let mut items = SmallVec::new();
                items.push((id.clone(), index));
                fetches.insert(
                    fetch_id,
                    InFlightFetch {
                        peer,
                        items,
                        live: 1,
                    },
                );
                stats.fetches_started += 1;
                artifacts_started += 1;
                out.push(Fetch {
                    id: fetch_id,
                    peer,
                    artifacts: vec![id.clone()],
                    offset,
                    length,
                    timeout: config.backoff_timeout(download.failures),
                });
            }
            if !missing_left {
                started_all.push(*order);
            }
        }
        for batch in open {
            out.push(close_batch(config, stats, batch));
        }
        for order in started_all {
            downloads.remove(&order);
        }
    }

    /// Puts a download back among those with chunks to fetch.
    fn needs_work(&mut self, id: &ArtifactId) {
        if let Some(Track::Downloading(download)) = self.tracked.get(id).map(|t| &t.track) {
            self.downloads.insert(download.order, id.clone());
        }
    }

    /// The outcome of a fetch from [`Receiver::poll_fetches`]. Every artifact it asked for is
    /// settled on its own: delivered, retried (not held, failed, wrong length) or, after a
    /// failed content check, retried with the peer penalized.
    pub fn fetch_done(
        &mut self,
        fetch: FetchId,
        outcome: FetchOutcome,
        now: Duration,
        matches: &dyn Fn(&Advert, &[u8]) -> bool,
    ) {
        let Some(in_flight) = self.fetches.remove(&fetch) else {
            return; // cancelled
        };
        let peer = in_flight.peer;
        self.fetch_ended(peer);
        let batch = in_flight.items.len() > 1;
        let answers = match outcome {
            FetchOutcome::Bytes(bytes) if !batch => vec![Some(bytes)],
            FetchOutcome::Batch(answers) if batch && answers.len() == in_flight.items.len() => {
                answers
            }
            FetchOutcome::Failed => {
                self.stats.fetches_failed += 1;
                self.items_failed(fetch, &in_flight, now);
                return;
            }
            FetchOutcome::Bytes(_) | FetchOutcome::Batch(_) | FetchOutcome::Malformed => {
                self.stats.fetches_failed += 1;
                self.stats.protocol_offences += 1;
                self.events.push_back(ReceiverEvent::Penalize {
                    peer,
                    offence: Offence::BadMessage,
                });
                self.items_failed(fetch, &in_flight, now);
                return;
            }
        };
        self.stats.fetches_succeeded += 1;
        for ((id, index), answer) in in_flight.items.into_iter().zip(answers) {
            if self.waits_on(fetch, &id, index) {
                self.item_answered(&id, index, peer, answer, now, matches);
            } else if let Some(bytes) = answer {
                self.late_item(&id, peer, &bytes, matches);
            }
        }
    }

    /// Whether chunk `index` of `id`'s download still waits on `fetch`.
    fn waits_on(&self, fetch: FetchId, id: &ArtifactId, index: usize) -> bool {
        let Some(Track::Downloading(download)) = self.tracked.get(id).map(|t| &t.track) else {
            return false;
        };
        matches!(download.chunks.get(index), Some(Chunk::InFlight { fetch: f, .. }) if *f == fetch)
    }

    fn items_failed(&mut self, fetch: FetchId, in_flight: &InFlightFetch, now: Duration) {
        for (id, index) in &in_flight.items {
            if self.waits_on(fetch, id, *index) {
                self.chunk_failed(id, *index, in_flight.peer, now);
            }
        }
    }

    /// One artifact or chunk of a fetch answered: `None` when a batch answer says the peer does
    /// not hold it.
    fn item_answered(
        &mut self,
        id: &ArtifactId,
        index: usize,
        peer: NodeId,
        answer: Option<Buf>,
        now: Duration,
        matches: &dyn Fn(&Advert, &[u8]) -> bool,
    ) {
        let Some(bytes) = answer else {
            self.stats.batch_artifacts_not_held += 1;
            self.chunk_failed(id, index, peer, now);
            return;
        };
        self.stats.bytes_fetched += bytes.len() as u64;
        let expected = self.expected_chunk_bytes(id, index);
        if expected != Some(bytes.len() as u64) {
            if expected.is_some() {
                self.invalid(peer);
                self.chunk_failed(id, index, peer, now);
            }
            return;
        }
        let download = self
            .download_mut(id)
            .expect("expected_chunk_bytes found it");
        download.chunks[index] = Chunk::Done { bytes, from: peer };
        if download
            .chunks
            .iter()
            .all(|chunk| matches!(chunk, Chunk::Done { .. }))
        {
            self.complete(id, now, matches);
        }
    }

    /// An artifact of a batch answer that nothing waits on any more (it arrived from another
    /// peer, or its download started over, while the batch was in flight): not used, but still
    /// checked when its advert is known, so that wrong bytes cost their sender as they would
    /// have a moment earlier.
    fn late_item(
        &mut self,
        id: &ArtifactId,
        peer: NodeId,
        bytes: &[u8],
        matches: &dyn Fn(&Advert, &[u8]) -> bool,
    ) {
        let Some(tracked) = self.tracked.get(id) else {
            return;
        };
        if bytes.len() as u64 != tracked.advert.size_bytes || !matches(&tracked.advert, bytes) {
            self.invalid(peer);
        }
    }

    fn download_mut(&mut self, id: &ArtifactId) -> Option<&mut Download> {
        match &mut self.tracked.get_mut(id)?.track {
            Track::Downloading(download) => Some(download),
            _ => None,
        }
    }

    fn expected_chunk_bytes(&mut self, id: &ArtifactId, index: usize) -> Option<u64> {
        let chunk_bytes = self.config.download_chunk_bytes;
        let tracked = self.tracked.get(id)?;
        let Track::Downloading(download) = &tracked.track else {
            return None;
        };
        let size_bytes = tracked.advert.size_bytes;
        if download.chunks.len() == 1 {
            return Some(size_bytes);
        }
        let offset = index as u64 * chunk_bytes;
        Some(chunk_bytes.min(size_bytes - offset))
    }

    fn chunk_failed(&mut self, id: &ArtifactId, index: usize, peer: NodeId, now: Duration) {
        let backoff = self.config.backoff;
        let Some(download) = self.download_mut(id) else {
            return;
        };
        download.failures = download.failures.saturating_add(1);
        if !download.avoided.contains(&peer) && download.avoided.len() < 4 {
            download.avoided.push(peer);
        }
        let not_before = now + backoff.delay(download.failures);
        download.chunks[index] = Chunk::Missing { not_before };
        self.needs_work(id);
    }

    fn complete(
        &mut self,
        id: &ArtifactId,
        now: Duration,
        matches: &dyn Fn(&Advert, &[u8]) -> bool,
    ) {
        let tracked = self.tracked.get_mut(id).expect("tracked id");
        let Track::Downloading(download) = &mut tracked.track else {
            unreachable!("complete() on a finished download");
        };
        let mut sources: SmallVec<[NodeId; PEERS_INLINE]> = SmallVec::new();
        let mut parts: SmallVec<[Buf; 4]> = SmallVec::new();
        for chunk in &download.chunks {
            if let Chunk::Done { bytes, from } = chunk {
                if !sources.contains(from) {
                    sources.push(*from);
                }
                parts.push(bytes.clone());
            }
        }
        let payload = if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            let mut joined = Vec::with_capacity(tracked.advert.size_bytes as usize);
            for part in &parts {
                joined.extend_from_slice(part);
            }
            Buf::from_vec(joined)
        };
        if matches(&tracked.advert, &payload) {
            let from = sources[0];
            self.deliver(id, payload, from);
            return;
        }
        // Wrong content. With one source, it is the culprit; with several, fetch everything
        // again from one peer so the next failure names one.
        let single = sources.len() == 1;
        download.failures = download.failures.saturating_add(1);
        let not_before = now + self.config.backoff.delay(download.failures);
        for chunk in download.chunks.iter_mut() {
            *chunk = Chunk::Missing { not_before };
        }
        if single {
            let culprit = sources[0];
            if !download.avoided.contains(&culprit) {
                download.avoided.push(culprit);
            }
            download.single_source = None;
            self.invalid(culprit);
        } else {
            download.single_source = tracked
                .advertisers
                .iter()
                .copied()
                .find(|peer| !download.avoided.contains(peer))
                .or_else(|| tracked.advertisers.first().copied());
        }
        self.needs_work(id);
    }
}

/// The advertiser with the fewest fetches in flight (and room and budget), preferring peers
/// that have not failed this download; ties broken by chunk index so the chunks of one artifact
/// spread over its advertisers.
#[allow(clippy::too_many_arguments)]
fn choose_peer(
    peers: &LocalMap<NodeId, PeerState>,
    fetches_by_peer: &LocalMap<NodeId, usize>,
    advertisers: &[NodeId],
    download: &Download,
    chunk: usize,
    per_peer_max: usize,
    now: Duration,
) -> Option<NodeId> {
    let in_flight = |peer: &NodeId| fetches_by_peer.get(peer).copied().unwrap_or(0);
    let eligible = |peer: &NodeId| {
        peers
            .get(peer)
            .is_some_and(|state| in_flight(peer) < per_peer_max && state.bucket.has_tokens_at(now))
    };
    if let Some(source) = download.single_source {
        if advertisers.contains(&source) {
            return eligible(&source).then_some(source);
        }
    }
    let mut best: Option<(bool, usize)> = None;
    let mut tied: SmallVec<[NodeId; PEERS_INLINE]> = SmallVec::new();
    for peer in advertisers.iter().filter(|peer| eligible(peer)) {
        let key = (download.avoided.contains(peer), in_flight(peer));
        match best {
            Some(current) if key > current => {}
            Some(current) if key == current => tied.push(*peer),
            _ => {
                best = Some(key);
                tied.clear();
                tied.push(*peer);
            }
        }
    }
    if tied.is_empty() {
        return None;
    }
    Some(tied[(chunk + download.order as usize) % tied.len()])
}

/// The open batch (index into `open`) a small whole download joins, opening one if needed
/// (with no artifacts yet and no fetch id: the caller starts it). In order: an open batch of
/// an advertiser that has not failed this download; else the peer [`choose_peer`] picks when a
/// new fetch may start (joining any open batch instead if that peer is one that failed it);
/// else any open batch of an advertiser. `None`: nowhere to go now.
#[allow(clippy::too_many_arguments)]
fn place_in_batch(
    config: &ReceiverConfig,
    peers: &LocalMap<NodeId, PeerState>,
    open: &mut SmallVec<[OpenBatch; PEERS_INLINE]>,
    advertisers: &[NodeId],
    download: &Download,
    size_bytes: u64,
    can_open: bool,
    fetches_by_peer: &LocalMap<NodeId, usize>,
    now: Duration,
) -> Option<usize> {
    debug_assert!(
        download.single_source.is_none(),
        "only chunked downloads have one"
    );
    let fits = |batch: &OpenBatch| {
        advertisers.contains(&batch.peer)
            && batch.artifacts.len() < config.fetch_batch_artifacts_max
            && batch.bytes + size_bytes <= config.fetch_batch_bytes_max
            && peers
                .get(&batch.peer)
                .is_some_and(|state| state.bucket.has_tokens_at(now))
    };
    let any_fitting = open.iter().position(fits);
    let trusted = open
        .iter()
        .position(|batch| fits(batch) && !download.avoided.contains(&batch.peer));
    if trusted.is_some() {
        return trusted;
    }
    if !can_open {
        return any_fitting;
    }
    let per_peer_max = config.downloads_in_flight_per_peer_max;
    let Some(peer) = choose_peer(
        peers,
        fetches_by_peer,
        advertisers,
        download,
        0,
        per_peer_max,
        now,
    ) else {
        return any_fitting;
    };
    if download.avoided.contains(&peer) && any_fitting.is_some() {
        return any_fitting;
    }
    open.push(OpenBatch {
        fetch: FetchId(0),
        peer,
        artifacts: Vec::new(),
        bytes: 0,
        failures: 0,
    });
    Some(open.len() - 1)
}

/// The request of a filled batch; a batch of one is a plain whole-artifact fetch.
fn close_batch(config: &ReceiverConfig, stats: &mut ReceiverStats, batch: OpenBatch) -> Fetch {
    debug_assert!(!batch.artifacts.is_empty());
    if batch.artifacts.len() > 1 {
        stats.batches_started += 1;
        stats.batch_artifacts_requested += batch.artifacts.len() as u64;
    }
    Fetch {
        id: batch.fetch,
        peer: batch.peer,
        artifacts: batch.artifacts,
        offset: 0,
        length: 0,
        timeout: config.backoff_timeout(batch.failures),
    }
}

/// Byte range of chunk `index`: (0, 0) (all of it) for an unchunked download.
fn chunk_range(
    config: &ReceiverConfig,
    chunks: usize,
    index: usize,
    size_bytes: u64,
) -> (u64, u64) {
    if chunks == 1 {
        return (0, 0);
    }
    let offset = index as u64 * config.download_chunk_bytes;
    (offset, config.download_chunk_bytes.min(size_bytes - offset))
}

impl ReceiverConfig {
    /// The fetch deadline after `failures` failed attempts: doubling, capped.
    fn backoff_timeout(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.min(16);
        self.download_timeout_initial
            .saturating_mul(factor)
            .min(self.download_timeout_max)
    }
}

#[cfg(test)]
mod tests;
