//! The sending half of the consensus manager for one artifact kind: the node's own slot table
//! and, per connected peer, the slot updates still to send. No I/O: the driver feeds it pool
//! output, connection changes, RPC outcomes and `now`, and polls it for updates to send.
//!
//! Invariants:
//! - At most `slots_max` slots; a full table refuses a new artifact (the pool must purge first).
//! - Every change to a slot takes the next `commit_id`, so a receiver can drop older updates
//!   whatever order they arrive in.
//! - A peer's queue holds slot numbers, at most one entry per slot (so at most `slots_max`); the
//!   message is built from the slot's state when sent, so a slot that changed twice is sent once.
//! - A new connection (first, or a larger connection id after a reconnect) queues every occupied
//!   slot: the peer gets the whole table.
//! - A failed update is retried with exponential backoff while the slot still holds the same
//!   commit; a newer commit supersedes it.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use icn_engine::{Buf, ConnId, NodeId};

use super::{Backoff, LocalMap, LocalSet, RemoteMap};
use crate::artifact::{Advert, Artifact, ArtifactId, ArtifactKind};

/// A slot's number in the sender's table.
pub type SlotNumber = u64;

/// How long a freed slot waits before its "cleared" update is queued. Slots are reused last-in
/// first-out, so under load a freed slot usually holds a new artifact within this time and only
/// that is sent (a receiver drops the slot's old advert when the slot is overwritten): one update
/// per reuse instead of two. Bounds how long a withdrawn artifact stays advertised to 50 ms.
pub const CLEAR_COALESCE: Duration = Duration::from_millis(50);

/// The table is full: the artifact was not added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("slot table full ({slots_max} slots)")]
pub struct SlotTableFull {
    pub slots_max: usize,
}

/// Why a fetch of an artifact this node advertised cannot be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServeError {
    #[error("artifact not in the slot table")]
    NotFound,
    #[error("range {offset}+{length} is outside the artifact's {size_bytes} bytes")]
    BadRange {
        offset: u64,
        length: u64,
        size_bytes: u64,
    },
}

/// One slot update to send: the slot's state when it was polled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundUpdate {
    pub peer: NodeId,
    pub conn: ConnId,
    pub slot: SlotNumber,
    pub commit_id: u64,
    pub message: UpdateMessage,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpdateMessage {
    /// The artifact itself travels with the update.
    Push(Artifact),
    /// Only its advert; the peer fetches the bytes.
    Advert(Advert),
    /// The slot is empty now; `ArtifactId` is what it held.
    Cleared(ArtifactId),
}

/// Counters of the sending side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SenderStats {
    pub artifacts_added: u64,
    pub artifacts_aborted: u64,
    pub refused_full: u64,
    pub updates_sent: u64,
    pub updates_failed: u64,
    pub updates_retried: u64,
    pub fetches_served: u64,
    pub fetches_not_found: u64,
}

#[derive(Clone, Debug)]
struct Occupied {
    artifact: Artifact,
    push: bool,
    commit_id: u64,
}

#[derive(Clone, Debug)]
enum Slot {
    Occupied(Occupied),
    /// Emptied by an abort; remembers what it held until reused, to name it in the update.
    Cleared {
        id: ArtifactId,
        commit_id: u64,
    },
}

/// Send state towards one peer on its current connection.
#[derive(Debug)]
struct Outbox {
    conn: ConnId,
    /// Slots to send, in order; `queued` dedups them.
    queue: VecDeque<SlotNumber>,
    queued: LocalSet<SlotNumber>,
    /// Updates on the wire: slot -> commit.
    in_flight: LocalMap<SlotNumber, u64>,
    /// Failed updates waiting to be retried: (when, slot) -> commit.
    retries: BTreeMap<(Duration, SlotNumber), u64>,
    /// Consecutive failures towards this peer, for the backoff.
    failures: u32,
}

impl Outbox {
    fn new(conn: ConnId) -> Outbox {
        Outbox {
            conn,
            queue: VecDeque::new(),
            queued: LocalSet::default(),
            in_flight: LocalMap::default(),
            retries: BTreeMap::new(),
            failures: 0,
        }
    }

    fn enqueue(&mut self, slot: SlotNumber) {
        if self.queued.insert(slot) {
            self.queue.push_back(slot);
        }
    }
}

/// Settings of one sender (from icn-tuning's gossip section).
#[derive(Clone, Copy, Debug)]
pub struct SenderConfig {
    pub slots_max: usize,
    pub push_threshold_bytes: usize,
    pub updates_in_flight_per_peer_max: usize,
    pub backoff: Backoff,
}

/// The node's slot table for one artifact kind and its per-peer outboxes.
pub struct Sender {
    kind: ArtifactKind,
    config: SenderConfig,
    slots: Vec<Option<Slot>>,
    /// Slots never used or cleared, reused before the table grows.
    free: Vec<SlotNumber>,
    by_id: RemoteMap<ArtifactId, SlotNumber>,
    commit_id: u64,
    outboxes: BTreeMap<NodeId, Outbox>,
    /// Freed slots whose clear is not queued yet: (due, slot, commit of the clear), in due
    /// order; at most one entry per abort, so at most `slots_max` after purges.
    pending_clears: VecDeque<(Duration, SlotNumber, u64)>,
    /// Where the next poll starts among the peers, so that one busy peer cannot starve others.
    poll_cursor: Option<NodeId>,
    stats: SenderStats,
}

impl Sender {
    pub fn new(kind: ArtifactKind, config: SenderConfig) -> Sender {
        assert!(config.slots_max > 0);
        assert!(config.updates_in_flight_per_peer_max > 0);
        Sender {
            kind,
            config,
            slots: Vec::new(),
            free: Vec::new(),
            by_id: RemoteMap::default(),
            commit_id: 0,
            outboxes: BTreeMap::new(),
            pending_clears: VecDeque::new(),
            poll_cursor: None,
            stats: SenderStats::default(),
        }
    }

    pub fn kind(&self) -> ArtifactKind {
        self.kind
    }

    pub fn stats(&self) -> SenderStats {
        self.stats
    }

    /// Artifacts in the table.
    pub fn occupied(&self) -> usize {
        self.by_id.len()
    }

    /// Updates waiting to be sent, over all peers (queued and retrying).
    pub fn queued_updates(&self) -> usize {
        self.outboxes
            .values()
            .map(|outbox| outbox.queue.len() + outbox.retries.len())
            .sum()
    }

    pub fn contains(&self, id: &ArtifactId) -> bool {
        self.by_id.contains_key(id)
    }

    /// Puts `artifact` in a slot and queues its update to every peer. Adding an id already in
    /// the table is a no-op (Ok with its slot).
    pub fn add(
        &mut self,
        artifact: Artifact,
        latency_sensitive: bool,
    ) -> Result<SlotNumber, SlotTableFull> {
        if let Some(&slot) = self.by_id.get(artifact.id()) {
            return Ok(slot);
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None if self.slots.len() < self.config.slots_max => {
                self.slots.push(None);
                (self.slots.len() - 1) as SlotNumber
            }
            None => {
                self.stats.refused_full += 1;
                return Err(SlotTableFull {
                    slots_max: self.config.slots_max,
                });
            }
        };
        let push = latency_sensitive || artifact.payload.len() < self.config.push_threshold_bytes;
        self.commit_id += 1;
        self.by_id.insert(artifact.id().clone(), slot);
        self.slots[slot as usize] = Some(Slot::Occupied(Occupied {
            artifact,
            push,
            commit_id: self.commit_id,
        }));
        self.stats.artifacts_added += 1;
        self.queue_everywhere(slot);
        Ok(slot)
    }

    /// Frees the slot holding `id`; a "cleared" update goes to every peer after
    /// [`CLEAR_COALESCE`] unless the slot is reused first. Returns false when `id` is not in the
    /// table.
    pub fn abort(&mut self, id: &ArtifactId, now: Duration) -> bool {
        let Some(slot) = self.by_id.remove(id) else {
            return false;
        };
        self.commit_id += 1;
        self.slots[slot as usize] = Some(Slot::Cleared {
            id: id.clone(),
            commit_id: self.commit_id,
        });
        self.free.push(slot);
        self.stats.artifacts_aborted += 1;
        self.pending_clears
            .push_back((now + CLEAR_COALESCE, slot, self.commit_id));
        true
    }

    /// Queues the clears that are due and whose slot was not reused meanwhile.
    fn queue_due_clears(&mut self, now: Duration) {
        while let Some(&(due, slot, commit)) = self.pending_clears.front() {
            if due > now {
                break;
            }
            self.pending_clears.pop_front();
            if Self::commit_of(&self.slots, slot) == Some(commit) {
                self.queue_everywhere(slot);
            }
        }
    }

    fn queue_everywhere(&mut self, slot: SlotNumber) {
        for outbox in self.outboxes.values_mut() {
            outbox.enqueue(slot);
        }
    }

    /// The peer is connected on `conn`. A new peer, or a newer connection of a known one, gets
    /// the whole table; the same connection again changes nothing; an older one is ignored.
    pub fn peer_connected(&mut self, peer: NodeId, conn: ConnId) {
        if let Some(outbox) = self.outboxes.get(&peer) {
            if outbox.conn >= conn {
                return;
            }
        }
        let mut outbox = Outbox::new(conn);
        for slot in self.by_id.values() {
            outbox.enqueue(*slot);
        }
        // Oldest slots first is as good as any order; sorting makes runs reproducible.
        outbox.queue.make_contiguous().sort_unstable();
        self.outboxes.insert(peer, outbox);
    }

    pub fn peer_disconnected(&mut self, peer: NodeId) {
        self.outboxes.remove(&peer);
    }

    pub fn peers(&self) -> impl Iterator<Item = (NodeId, ConnId)> + '_ {
        self.outboxes
            .iter()
            .map(|(peer, outbox)| (*peer, outbox.conn))
    }

    /// The next update to send, if any peer has one due and room in flight.
    pub fn poll_update(&mut self, now: Duration) -> Option<OutboundUpdate> {
        self.queue_due_clears(now);
        let peers: Vec<NodeId> = self.peer_order();
        for peer in peers {
            if let Some(update) = self.poll_peer(peer, now) {
                self.poll_cursor = Some(peer);
                return Some(update);
            }
        }
        None
    }

    /// Every update that can be sent now, grouped by peer (each peer drained up to its
    /// in-flight bound), peers in round-robin order; appended to `out`.
    pub fn poll_updates(&mut self, now: Duration, out: &mut Vec<OutboundUpdate>) {
        self.queue_due_clears(now);
        for peer in self.peer_order() {
            let before = out.len();
            while let Some(update) = self.poll_peer(peer, now) {
                out.push(update);
            }
            if out.len() > before {
                self.poll_cursor = Some(peer);
            }
        }
    }

    /// Peers in round-robin order, starting after the last one served.
    fn peer_order(&self) -> Vec<NodeId> {
        let peers: Vec<NodeId> = self.outboxes.keys().copied().collect();
        let start = match self.poll_cursor {
            Some(cursor) => peers.partition_point(|peer| *peer <= cursor),
            None => 0,
        };
        let mut order = peers[start..].to_vec();
        order.extend_from_slice(&peers[..start]);
        order
    }

    fn poll_peer(&mut self, peer: NodeId, now: Duration) -> Option<OutboundUpdate> {
        let outbox = self.outboxes.get_mut(&peer)?;
        if outbox.in_flight.len() >= self.config.updates_in_flight_per_peer_max {
            return None;
        }
        let slot = Self::next_due(outbox, &self.slots, now)?;
        let (commit_id, message) = Self::message_for(&self.slots, slot)?;
        outbox.in_flight.insert(slot, commit_id);
        self.stats.updates_sent += 1;
        Some(OutboundUpdate {
            peer,
            conn: outbox.conn,
            slot,
            commit_id,
            message,
        })
    }

    /// A due retry (if its commit is still current) or the next queued slot.
    fn next_due(outbox: &mut Outbox, slots: &[Option<Slot>], now: Duration) -> Option<SlotNumber> {
        while let Some((&(when, slot), &commit)) = outbox.retries.first_key_value() {
            if when > now {
                break;
            }
            outbox.retries.remove(&(when, slot));
            let current = Self::commit_of(slots, slot);
            if current == Some(commit) && !outbox.queued.contains(&slot) {
                return Some(slot);
            }
        }
        let slot = outbox.queue.pop_front()?;
        outbox.queued.remove(&slot);
        Some(slot)
    }

    fn commit_of(slots: &[Option<Slot>], slot: SlotNumber) -> Option<u64> {
        match slots.get(slot as usize)?.as_ref()? {
            Slot::Occupied(occupied) => Some(occupied.commit_id),
            Slot::Cleared { commit_id, .. } => Some(*commit_id),
        }
    }

    fn message_for(slots: &[Option<Slot>], slot: SlotNumber) -> Option<(u64, UpdateMessage)> {
        match slots.get(slot as usize)?.as_ref()? {
            Slot::Occupied(occupied) if occupied.push => Some((
                occupied.commit_id,
                UpdateMessage::Push(occupied.artifact.clone()),
            )),
            Slot::Occupied(occupied) => Some((
                occupied.commit_id,
                UpdateMessage::Advert(occupied.artifact.advert.clone()),
            )),
            Slot::Cleared { id, commit_id } => {
                Some((*commit_id, UpdateMessage::Cleared(id.clone())))
            }
        }
    }

    /// The outcome of an update sent by [`Sender::poll_update`]. A failure is retried after a
    /// backoff unless the slot changed since (its newer state is queued already).
    pub fn update_done(&mut self, update: &OutboundUpdate, delivered: bool, now: Duration) {
        let Some(outbox) = self.outboxes.get_mut(&update.peer) else {
            return;
        };
        if outbox.conn != update.conn {
            return;
        }
        if outbox.in_flight.get(&update.slot) == Some(&update.commit_id) {
            outbox.in_flight.remove(&update.slot);
        }
        if delivered {
            outbox.failures = 0;
            return;
        }
        self.stats.updates_failed += 1;
        outbox.failures = outbox.failures.saturating_add(1);
        if Self::commit_of(&self.slots, update.slot) != Some(update.commit_id) {
            return;
        }
        let when = now + self.config.backoff.delay(outbox.failures);
        outbox.retries.insert((when, update.slot), update.commit_id);
        self.stats.updates_retried += 1;
    }

    /// When the earliest retry or pending clear is due (for the driver's timer).
    pub fn next_retry_at(&self) -> Option<Duration> {
        let clear = self.pending_clears.front().map(|(due, _, _)| *due);
        self.outboxes
            .values()
            .filter(|outbox| outbox.in_flight.len() < self.config.updates_in_flight_per_peer_max)
            .filter_map(|outbox| outbox.retries.first_key_value().map(|((when, _), _)| *when))
            .chain(clear)
            .min()
    }

    /// True when some peer has a queued update and room to send it.
    pub fn has_ready(&self) -> bool {
        self.outboxes.values().any(|outbox| {
            !outbox.queue.is_empty()
                && outbox.in_flight.len() < self.config.updates_in_flight_per_peer_max
        })
    }

    /// The bytes of an advertised artifact (or the `offset..offset + length` part of it; length 0
    /// is all of it) for a peer's fetch. Zero-copy: a slice of the slot's buffer.
    pub fn serve(&mut self, id: &ArtifactId, offset: u64, length: u64) -> Result<Buf, ServeError> {
        let found = self
            .by_id
            .get(id)
            .and_then(|slot| match self.slots[*slot as usize].as_ref() {
                Some(Slot::Occupied(occupied)) => Some(occupied.artifact.payload.clone()),
                _ => None,
            });
        let Some(payload) = found else {
            self.stats.fetches_not_found += 1;
            return Err(ServeError::NotFound);
        };
        let size_bytes = payload.len() as u64;
        if length == 0 && offset == 0 {
            self.stats.fetches_served += 1;
            return Ok(payload);
        }
        let end = offset.checked_add(length).filter(|end| *end <= size_bytes);
        let Some(end) = end.filter(|_| length > 0) else {
            return Err(ServeError::BadRange {
                offset,
                length,
                size_bytes,
            });
        };
        self.stats.fetches_served += 1;
        Ok(payload.slice(offset as usize..end as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smallvec::SmallVec;

    fn config() -> SenderConfig {
        SenderConfig {
            slots_max: 4,
            push_threshold_bytes: 8,
            updates_in_flight_per_peer_max: 2,
            backoff: Backoff {
                initial: Duration::from_millis(10),
                max: Duration::from_millis(80),
            },
        }
    }

    fn artifact(name: &str, size: usize) -> Artifact {
        Artifact {
            advert: Advert {
                id: ArtifactId::from_slice(name.as_bytes()),
                attributes: SmallVec::new(),
                size_bytes: size as u64,
            },
            payload: Buf::from_vec(vec![7; size]),
        }
    }

    fn peer(n: u8) -> NodeId {
        NodeId([n; 32])
    }

    fn drain(sender: &mut Sender, now: Duration) -> Vec<OutboundUpdate> {
        let mut out = Vec::new();
        while let Some(update) = sender.poll_update(now) {
            out.push(update);
        }
        out
    }

    #[test]
    fn small_artifacts_are_pushed_large_ones_advertised() {
        let mut sender = Sender::new(ArtifactKind(1), config());
        sender.peer_connected(peer(1), ConnId(1));
        sender.add(artifact("a", 4), false).unwrap();
        sender.add(artifact("b", 100), false).unwrap();
        let sent = drain(&mut sender, Duration::ZERO);
        assert_eq!(sent.len(), 2);
        assert!(matches!(sent[0].message, UpdateMessage::Push(_)));
        assert!(matches!(sent[1].message, UpdateMessage::Advert(_)));
        assert!(sent[0].commit_id < sent[1].commit_id);
    }

    #[test]
    fn table_is_bounded_and_aborts_free_slots_and_tell_peers() {
        let mut sender = Sender::new(ArtifactKind(1), config());
        for i in 0..4 {
            sender.add(artifact(&format!("x{i}"), 1), false).unwrap();
        }
        assert_eq!(
            sender.add(artifact("over", 1), false),
            Err(SlotTableFull { slots_max: 4 })
        );
        sender.peer_connected(peer(1), ConnId(1));
        let first = drain(&mut sender, Duration::ZERO);
        assert_eq!(first.len(), 2, "in-flight bound per peer");
        for update in &first {
            sender.update_done(update, true, Duration::ZERO);
        }
        assert!(sender.abort(&ArtifactId::from_slice(b"x0"), Duration::ZERO));
        let slot = sender.add(artifact("new", 1), false).unwrap();
        assert_eq!(slot, 0, "the freed slot is reused");
        let rest = drain(&mut sender, CLEAR_COALESCE);
        // x2, x3 and slot 0 once (its newest state, not the intermediate clear).
        assert_eq!(rest.len(), 2);
        for update in &rest {
            sender.update_done(update, true, Duration::ZERO);
        }
        let last = drain(&mut sender, CLEAR_COALESCE);
        assert_eq!(last.len(), 1, "the reuse replaced the clear: {last:?}");
        assert!(matches!(&last[0].message, UpdateMessage::Push(a) if a.id().as_bytes() == b"new"));
    }

    #[test]
    fn poll_updates_groups_by_peer_within_the_in_flight_bound() {
        let mut sender = Sender::new(ArtifactKind(1), config());
        sender.peer_connected(peer(1), ConnId(1));
        sender.peer_connected(peer(2), ConnId(2));
        for name in ["a", "b", "c"] {
            sender.add(artifact(name, 1), false).unwrap();
        }
        let mut out = Vec::new();
        sender.poll_updates(Duration::ZERO, &mut out);
        let peers: Vec<u8> = out.iter().map(|update| update.peer.0[0]).collect();
        assert_eq!(peers, [1, 1, 2, 2], "two per peer (the bound), grouped");
    }

    #[test]
    fn a_cleared_slot_names_what_it_held() {
        let mut sender = Sender::new(ArtifactKind(1), config());
        sender.peer_connected(peer(1), ConnId(1));
        sender.add(artifact("gone", 1), false).unwrap();
        let added = drain(&mut sender, Duration::ZERO);
        sender.update_done(&added[0], true, Duration::ZERO);
        sender.abort(&ArtifactId::from_slice(b"gone"), Duration::ZERO);
        assert!(
            drain(&mut sender, Duration::ZERO).is_empty(),
            "coalescing delay"
        );
        assert_eq!(sender.next_retry_at(), Some(CLEAR_COALESCE));
        let cleared = drain(&mut sender, CLEAR_COALESCE);
        assert_eq!(
            cleared[0].message,
            UpdateMessage::Cleared(ArtifactId::from_slice(b"gone"))
        );
        assert!(cleared[0].commit_id > added[0].commit_id);
    }

    #[test]
    fn reconnect_resends_the_whole_table_and_stale_connections_are_ignored() {
        let mut sender = Sender::new(ArtifactKind(1), config());
        sender.add(artifact("a", 1), false).unwrap();
        sender.peer_connected(peer(1), ConnId(5));
        let first = drain(&mut sender, Duration::ZERO);
        sender.update_done(&first[0], true, Duration::ZERO);
        assert!(drain(&mut sender, Duration::ZERO).is_empty());
        sender.peer_connected(peer(1), ConnId(4));
        assert!(drain(&mut sender, Duration::ZERO).is_empty(), "older conn");
        sender.peer_connected(peer(1), ConnId(6));
        let again = drain(&mut sender, Duration::ZERO);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].conn, ConnId(6));
        // An outcome for the old connection does not disturb the new one.
        sender.update_done(&first[0], false, Duration::ZERO);
        assert_eq!(sender.stats().updates_failed, 0);
    }

    #[test]
    fn failures_retry_with_backoff_unless_superseded() {
        let mut sender = Sender::new(ArtifactKind(1), config());
        sender.peer_connected(peer(1), ConnId(1));
        sender.add(artifact("a", 1), false).unwrap();
        let sent = drain(&mut sender, Duration::ZERO);
        sender.update_done(&sent[0], false, Duration::ZERO);
        assert!(drain(&mut sender, Duration::from_millis(5)).is_empty());
        assert_eq!(sender.next_retry_at(), Some(Duration::from_millis(10)));
        let retried = drain(&mut sender, Duration::from_millis(10));
        assert_eq!(retried.len(), 1);
        assert_eq!(retried[0].commit_id, sent[0].commit_id);
        sender.update_done(&retried[0], false, Duration::from_millis(10));
        // Second failure: 20 ms. Meanwhile the artifact is aborted: the retry is dropped and the
        // clear goes out instead.
        sender.abort(&ArtifactId::from_slice(b"a"), Duration::from_millis(10));
        let next = drain(&mut sender, Duration::from_millis(10) + CLEAR_COALESCE);
        assert_eq!(next.len(), 1);
        assert!(matches!(next[0].message, UpdateMessage::Cleared(_)));
    }

    #[test]
    fn serve_returns_slices_and_refuses_bad_ranges() {
        let mut sender = Sender::new(ArtifactKind(1), config());
        let mut payload = vec![0u8; 100];
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte = i as u8;
        }
        let mut big = artifact("big", 100);
        big.payload = Buf::from_vec(payload);
        sender.add(big.clone(), false).unwrap();
        let id = big.id().clone();
        assert_eq!(sender.serve(&id, 0, 0).unwrap(), big.payload);
        let part = sender.serve(&id, 10, 5).unwrap();
        assert_eq!(&part[..], &[10, 11, 12, 13, 14]);
        assert!(part.same_storage(&big.payload));
        assert!(matches!(
            sender.serve(&id, 99, 2),
            Err(ServeError::BadRange { .. })
        ));
        assert!(matches!(
            sender.serve(&id, u64::MAX, 2),
            Err(ServeError::BadRange { .. })
        ));
        assert_eq!(
            sender.serve(&ArtifactId::from_slice(b"nope"), 0, 0),
            Err(ServeError::NotFound)
        );
    }
}
