//! The pools of the replica's blocks and notarization shares (one instance per kind).
//!
//! Artifacts are named like the workload's ([`crate::pool::make_artifact`]): the height, then
//! the SHA-256 of the bytes, so the content check is exact and a share names a block by the
//! hash in its id. What this pool adds over the workload's is that every bound is tied to the
//! replica's progress rather than to whatever heights peers send:
//! - a [`HeightWindow`] shared with the chain: artifacts below the purge floor are refused, and
//!   ones more than `heights_ahead_max` above the executed height wait (`MaybeLater`) instead
//!   of pushing the window up, so a peer cannot make this node purge the heights it still needs;
//! - at most [`PER_SENDER_HEIGHT_MAX`] artifacts per sender and height, so the validated
//!   section holds at most window × members × that many artifacts whatever a peer sends.
//!
//! Validated artifacts are also queued for the chain ([`ConsensusPool::take_new`]), which
//! decodes them and decides what they mean; the pool itself never looks inside.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use icn_engine::NodeId;

use crate::artifact::{Advert, Artifact, ArtifactId, ArtifactKind, ArtifactPool, Transmit, Want};
use crate::pool::{content_matches, height_of};

/// Artifacts one sender may have validated at one height: a maker makes one block per round it
/// is the maker of, and an honest node sends one share per height, so 4 leaves room for rounds
/// passing while bounding what a misbehaving peer can park in the pool.
pub const PER_SENDER_HEIGHT_MAX: usize = 4;

/// The heights the pools accept, moved by the chain as it executes and purges.
#[derive(Debug)]
pub struct HeightWindow {
    executed: Cell<u64>,
    floor: Cell<u64>,
    ahead_max: u64,
}

impl HeightWindow {
    pub fn new(ahead_max: u64) -> Rc<HeightWindow> {
        Rc::new(HeightWindow {
            executed: Cell::new(0),
            floor: Cell::new(0),
            ahead_max,
        })
    }

    pub fn executed(&self) -> u64 {
        self.executed.get()
    }

    pub fn set_executed(&self, height: u64) {
        self.executed.set(height);
    }

    pub fn floor(&self) -> u64 {
        self.floor.get()
    }

    pub fn set_floor(&self, height: u64) {
        self.floor.set(self.floor.get().max(height));
    }

    /// The highest height accepted now.
    pub fn ceiling(&self) -> u64 {
        self.executed.get().saturating_add(self.ahead_max)
    }
}

/// Counters of one consensus pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsensusPoolStats {
    pub produced: u64,
    pub received: u64,
    pub validated: u64,
    /// Bytes that did not match their id, or an id of the wrong shape.
    pub invalid: u64,
    /// Refused for their height (below the floor, or above the window when they arrived).
    pub out_of_window: u64,
    /// Refused because the sender already has [`PER_SENDER_HEIGHT_MAX`] at that height.
    pub over_sender_cap: u64,
    pub purged: u64,
}

pub struct ConsensusPool {
    kind: ArtifactKind,
    window: Rc<HeightWindow>,
    latency_sensitive: bool,
    unvalidated: HashMap<ArtifactId, (Artifact, NodeId)>,
    validated: BTreeMap<(u64, ArtifactId), Artifact>,
    per_sender: HashMap<(u64, NodeId), usize>,
    offered: HashSet<ArtifactId>,
    pending: Vec<Transmit>,
    /// Validated since the chain last looked: the artifact and its sender (`None`: this node).
    new: Vec<(Artifact, Option<NodeId>)>,
    stats: ConsensusPoolStats,
}

impl ConsensusPool {
    pub fn new(kind: ArtifactKind, window: Rc<HeightWindow>, latency_sensitive: bool) -> Self {
        ConsensusPool {
            kind,
            window,
            latency_sensitive,
            unvalidated: HashMap::new(),
            validated: BTreeMap::new(),
            per_sender: HashMap::new(),
            offered: HashSet::new(),
            pending: Vec::new(),
            new: Vec::new(),
            stats: ConsensusPoolStats::default(),
        }
    }

    pub fn stats(&self) -> ConsensusPoolStats {
        self.stats
    }

    pub fn validated_len(&self) -> usize {
        self.validated.len()
    }

    /// An artifact this node made: validated at once, offered to every peer, and queued for
    /// the chain like a received one.
    pub fn produce(&mut self, artifact: Artifact) {
        let Some(height) = height_of(artifact.id()) else {
            return;
        };
        if height < self.window.floor() || self.holds(height, artifact.id()) {
            return;
        }
        self.stats.produced += 1;
        self.offered.insert(artifact.id().clone());
        self.pending.push(Transmit::Deliver {
            artifact: artifact.clone(),
            latency_sensitive: self.latency_sensitive,
        });
        self.validated
            .insert((height, artifact.id().clone()), artifact.clone());
        self.new.push((artifact, None));
    }

    /// What was validated since the last call, in validation order.
    pub fn take_new(&mut self) -> Vec<(Artifact, Option<NodeId>)> {
        std::mem::take(&mut self.new)
    }

    /// Drops every artifact below `height` and withdraws the ones this node offered.
    pub fn purge_below(&mut self, height: u64) {
        self.window.set_floor(height);
        let floor = self.window.floor();
        let kept = self.validated.split_off(&(floor, ArtifactId::default()));
        for ((_, id), _) in std::mem::replace(&mut self.validated, kept) {
            self.stats.purged += 1;
            if self.offered.remove(&id) {
                self.pending.push(Transmit::Abort(id));
            }
        }
        self.per_sender.retain(|(h, _), _| *h >= floor);
        self.unvalidated
            .retain(|id, _| height_of(id).is_some_and(|h| h >= floor));
        self.new
            .retain(|(artifact, _)| height_of(artifact.id()).is_some_and(|h| h >= floor));
    }

    fn holds(&self, height: u64, id: &ArtifactId) -> bool {
        self.validated.contains_key(&(height, id.clone()))
    }
}

impl ArtifactPool for ConsensusPool {
    fn kind(&self) -> ArtifactKind {
        self.kind
    }

    fn want(&self, advert: &Advert) -> Want {
        let Some(height) = height_of(&advert.id) else {
            return Want::Unwanted;
        };
        if height < self.window.floor()
            || self.unvalidated.contains_key(&advert.id)
            || self.holds(height, &advert.id)
        {
            return Want::Unwanted;
        }
        if height > self.window.ceiling() {
            return Want::MaybeLater;
        }
        Want::Wanted
    }

    fn matches(&self, advert: &Advert, payload: &[u8]) -> bool {
        content_matches(advert, payload)
    }

    fn insert_unvalidated(&mut self, from: NodeId, artifact: Artifact) {
        self.stats.received += 1;
        self.unvalidated
            .insert(artifact.id().clone(), (artifact, from));
    }

    fn remove_unvalidated(&mut self, id: &ArtifactId) {
        self.unvalidated.remove(id);
    }

    fn apply(&mut self, _now: Duration) -> Vec<Transmit> {
        let mut incoming: Vec<(ArtifactId, (Artifact, NodeId))> =
            self.unvalidated.drain().collect();
        // Deterministic order (HashMap order is not), so simulations replay exactly.
        incoming.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (id, (artifact, from)) in incoming {
            let valid = content_matches(&artifact.advert, &artifact.payload);
            let Some(height) = height_of(&id).filter(|_| valid) else {
                self.stats.invalid += 1;
                continue;
            };
            if height < self.window.floor() || height > self.window.ceiling() {
                self.stats.out_of_window += 1;
                continue;
            }
            if self.holds(height, &id) {
                continue;
            }
            let count = self.per_sender.entry((height, from)).or_insert(0);
            if *count >= PER_SENDER_HEIGHT_MAX {
                self.stats.over_sender_cap += 1;
                continue;
            }
            *count += 1;
            self.stats.validated += 1;
            self.validated.insert((height, id), artifact.clone());
            self.new.push((artifact, Some(from)));
        }
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use icn_engine::Buf;

    use super::*;
    use crate::pool::make_artifact;

    fn pool() -> (ConsensusPool, Rc<HeightWindow>) {
        let window = HeightWindow::new(2);
        (
            ConsensusPool::new(ArtifactKind(4), window.clone(), true),
            window,
        )
    }

    #[test]
    fn the_window_bounds_what_is_wanted_and_validated() {
        let (mut pool, window) = pool();
        window.set_executed(5);
        window.set_floor(3);
        let peer = NodeId([1; 32]);
        let old = make_artifact(2, Buf::copy_from_slice(b"old"));
        let now = make_artifact(6, Buf::copy_from_slice(b"now"));
        let far = make_artifact(8, Buf::copy_from_slice(b"far"));
        assert_eq!(pool.want(&old.advert), Want::Unwanted);
        assert_eq!(pool.want(&now.advert), Want::Wanted);
        assert_eq!(pool.want(&far.advert), Want::MaybeLater);
        for artifact in [old, now.clone(), far] {
            pool.insert_unvalidated(peer, artifact);
        }
        assert!(
            pool.apply(Duration::ZERO).is_empty(),
            "received is not relayed"
        );
        let new = pool.take_new();
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].0, now);
        assert_eq!(pool.stats().out_of_window, 2);
        assert_eq!(pool.want(&now.advert), Want::Unwanted, "held");
    }

    #[test]
    fn a_sender_parks_a_bounded_number_per_height() {
        let (mut pool, _) = pool();
        let peer = NodeId([1; 32]);
        for i in 0..10u8 {
            pool.insert_unvalidated(peer, make_artifact(1, Buf::copy_from_slice(&[i])));
        }
        let mut lying = make_artifact(1, Buf::copy_from_slice(b"x"));
        lying.payload = Buf::copy_from_slice(b"y");
        pool.insert_unvalidated(NodeId([2; 32]), lying);
        pool.apply(Duration::ZERO);
        assert_eq!(pool.validated_len(), PER_SENDER_HEIGHT_MAX);
        assert_eq!(
            pool.stats().over_sender_cap,
            10 - PER_SENDER_HEIGHT_MAX as u64
        );
        assert_eq!(pool.stats().invalid, 1);
    }

    #[test]
    fn produced_artifacts_are_offered_and_withdrawn_when_purged() {
        let (mut pool, _) = pool();
        let mine = make_artifact(1, Buf::copy_from_slice(b"mine"));
        pool.produce(mine.clone());
        assert!(matches!(
            &pool.apply(Duration::ZERO)[..],
            [Transmit::Deliver {
                latency_sensitive: true,
                ..
            }]
        ));
        assert_eq!(pool.take_new(), vec![(mine.clone(), None)]);
        pool.purge_below(2);
        assert_eq!(
            pool.apply(Duration::ZERO),
            vec![Transmit::Abort(mine.id().clone())]
        );
        assert_eq!(pool.validated_len(), 0);
        assert_eq!(pool.want(&mine.advert), Want::Unwanted, "below the floor");
    }
}
