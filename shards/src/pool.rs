//! An in-memory artifact pool: the pool behind the reference workload and the tests.
//!
//! Artifacts are named by height and content: an id is the height (8 bytes, little endian)
//! followed by the SHA-256 of the payload, and the attributes carry the height. So the content
//! check is exact (a peer cannot pass off other bytes), the bouncer can refuse what is too old,
//! and purging by height bounds the pool: only the newest `heights_kept` heights stay, older
//! artifacts are dropped and, if this node offered them, withdrawn from its peers (abort).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use icn_engine::{Buf, NodeId};
use smallvec::SmallVec;

use crate::artifact::{Advert, Artifact, ArtifactId, ArtifactKind, ArtifactPool, Transmit, Want};

/// Bytes of an id: height + SHA-256.
pub const ID_BYTES: usize = 8 + 32;

/// Settings of one pool.
#[derive(Clone, Copy, Debug)]
pub struct MemoryPoolConfig {
    pub kind: ArtifactKind,
    /// Offer artifacts received from peers to the other peers as well (once validated).
    pub relay: bool,
    /// Push this kind's artifacts whatever their size.
    pub latency_sensitive: bool,
    /// Heights kept; older artifacts are purged (and aborted if offered). At least 1.
    pub heights_kept: u64,
}

/// Counters of a pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub produced: u64,
    pub received: u64,
    pub validated: u64,
    pub invalid: u64,
    pub removed_unvalidated: u64,
    pub purged: u64,
}

/// Called once per artifact when it becomes validated: the artifact, the peer it came from
/// (`None` for this node's own), and the pool's `now`.
pub type ValidatedObserver = Box<dyn FnMut(&Artifact, Option<NodeId>, Duration)>;

pub struct MemoryPool {
    config: MemoryPoolConfig,
    unvalidated: HashMap<ArtifactId, (Artifact, NodeId)>,
    validated: BTreeMap<(u64, ArtifactId), Artifact>,
    /// Ids this node put in its slot table (to abort them when purged).
    offered: HashMap<ArtifactId, u64>,
    pending: Vec<Transmit>,
    /// Artifacts below this height are refused and purged.
    floor_height: u64,
    observer: Option<ValidatedObserver>,
    stats: PoolStats,
}

/// Builds an artifact of `height` with `payload`, named as this pool names artifacts.
pub fn make_artifact(height: u64, payload: Buf) -> Artifact {
    let hash = boring::sha::sha256(&payload);
    let mut id = SmallVec::<[u8; 40]>::new();
    id.extend_from_slice(&height.to_le_bytes());
    id.extend_from_slice(&hash);
    Artifact {
        advert: Advert {
            id: ArtifactId(id),
            attributes: SmallVec::from_slice(&height.to_le_bytes()),
            size_bytes: payload.len() as u64,
        },
        payload,
    }
}

/// Whether `payload` is the artifact `advert` names, as [`make_artifact`] names artifacts: the
/// height in the attributes matches the id's, and the length and SHA-256 are the advert's.
pub fn content_matches(advert: &Advert, payload: &[u8]) -> bool {
    let Some(height) = height_of(&advert.id) else {
        return false;
    };
    advert.attributes.as_slice() == height.to_le_bytes()
        && payload.len() as u64 == advert.size_bytes
        && boring::sha::sha256(payload) == advert.id.as_bytes()[8..]
}

/// The height an id names, if it has the pool's shape.
pub fn height_of(id: &ArtifactId) -> Option<u64> {
    if id.len() != ID_BYTES {
        return None;
    }
    let bytes: [u8; 8] = id.as_bytes()[..8].try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

impl MemoryPool {
    pub fn new(config: MemoryPoolConfig) -> MemoryPool {
        assert!(config.heights_kept >= 1);
        MemoryPool {
            config,
            unvalidated: HashMap::new(),
            validated: BTreeMap::new(),
            offered: HashMap::new(),
            pending: Vec::new(),
            floor_height: 0,
            observer: None,
            stats: PoolStats::default(),
        }
    }

    pub fn set_observer(&mut self, observer: ValidatedObserver) {
        self.observer = Some(observer);
    }

    pub fn stats(&self) -> PoolStats {
        self.stats
    }

    pub fn validated_len(&self) -> usize {
        self.validated.len()
    }

    pub fn unvalidated_len(&self) -> usize {
        self.unvalidated.len()
    }

    pub fn has_validated(&self, id: &ArtifactId) -> bool {
        height_of(id).is_some_and(|height| self.validated.contains_key(&(height, id.clone())))
    }

    pub fn validated_ids(&self) -> impl Iterator<Item = &ArtifactId> {
        self.validated.keys().map(|(_, id)| id)
    }

    /// Adds an artifact this node made: validated at once and offered to every peer.
    pub fn produce(&mut self, artifact: Artifact, now: Duration) {
        let Some(height) = height_of(artifact.id()) else {
            return;
        };
        if height < self.floor_height
            || self
                .validated
                .contains_key(&(height, artifact.id().clone()))
        {
            return;
        }
        self.stats.produced += 1;
        self.accept(height, artifact, None, now);
    }

    /// Drops everything below `height` (aborting what this node offered).
    pub fn purge_below(&mut self, height: u64) {
        if height <= self.floor_height {
            return;
        }
        self.floor_height = height;
        let kept = self.validated.split_off(&(height, ArtifactId::default()));
        let purged = std::mem::replace(&mut self.validated, kept);
        for ((_, id), _) in purged {
            self.stats.purged += 1;
            if self.offered.remove(&id).is_some() {
                self.pending.push(Transmit::Abort(id));
            }
        }
        self.unvalidated
            .retain(|id, _| height_of(id).is_some_and(|h| h >= height));
    }

    fn accept(&mut self, height: u64, artifact: Artifact, from: Option<NodeId>, now: Duration) {
        self.stats.validated += 1;
        if let Some(observer) = self.observer.as_mut() {
            observer(&artifact, from, now);
        }
        let offer = from.is_none() || self.config.relay;
        if offer {
            self.offered.insert(artifact.id().clone(), height);
            self.pending.push(Transmit::Deliver {
                artifact: artifact.clone(),
                latency_sensitive: self.config.latency_sensitive,
            });
        }
        self.validated
            .insert((height, artifact.id().clone()), artifact);
        let top = height.saturating_add(1);
        if top > self.config.heights_kept {
            self.purge_below(top - self.config.heights_kept);
        }
    }

    fn content_matches(advert: &Advert, payload: &[u8]) -> bool {
        content_matches(advert, payload)
    }
}

impl ArtifactPool for MemoryPool {
    fn kind(&self) -> ArtifactKind {
        self.config.kind
    }

    fn want(&self, advert: &Advert) -> Want {
        let Some(height) = height_of(&advert.id) else {
            return Want::Unwanted;
        };
        if height < self.floor_height
            || self.unvalidated.contains_key(&advert.id)
            || self.validated.contains_key(&(height, advert.id.clone()))
        {
            return Want::Unwanted;
        }
        Want::Wanted
    }

    fn matches(&self, advert: &Advert, payload: &[u8]) -> bool {
        Self::content_matches(advert, payload)
    }

    fn insert_unvalidated(&mut self, from: NodeId, artifact: Artifact) {
        self.stats.received += 1;
        self.unvalidated
            .insert(artifact.id().clone(), (artifact, from));
    }

    fn remove_unvalidated(&mut self, id: &ArtifactId) {
        if self.unvalidated.remove(id).is_some() {
            self.stats.removed_unvalidated += 1;
        }
    }

    fn apply(&mut self, now: Duration) -> Vec<Transmit> {
        let mut incoming: Vec<(ArtifactId, (Artifact, NodeId))> =
            self.unvalidated.drain().collect();
        // Deterministic order (HashMap order is not), so simulations replay exactly.
        incoming.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (id, (artifact, from)) in incoming {
            let valid = Self::content_matches(&artifact.advert, &artifact.payload);
            let Some(height) = height_of(&id).filter(|_| valid) else {
                self.stats.invalid += 1;
                continue;
            };
            if height < self.floor_height || self.validated.contains_key(&(height, id)) {
                continue;
            }
            self.accept(height, artifact, Some(from), now);
        }
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(relay: bool) -> MemoryPool {
        MemoryPool::new(MemoryPoolConfig {
            kind: ArtifactKind(1),
            relay,
            latency_sensitive: false,
            heights_kept: 2,
        })
    }

    #[test]
    fn content_check_is_exact() {
        let artifact = make_artifact(5, Buf::copy_from_slice(b"payload"));
        let pool = pool(false);
        assert!(pool.matches(&artifact.advert, b"payload"));
        assert!(!pool.matches(&artifact.advert, b"payloaX"));
        let mut lying = artifact.advert.clone();
        lying.attributes = SmallVec::from_slice(&6u64.to_le_bytes());
        assert!(!pool.matches(&lying, b"payload"));
    }

    #[test]
    fn produce_offers_and_purge_aborts() {
        let mut pool = pool(false);
        let a = make_artifact(1, Buf::copy_from_slice(b"a"));
        pool.produce(a.clone(), Duration::ZERO);
        assert!(matches!(
            &pool.apply(Duration::ZERO)[..],
            [Transmit::Deliver { .. }]
        ));
        assert_eq!(pool.want(&a.advert), Want::Unwanted, "held already");
        pool.produce(make_artifact(2, Buf::copy_from_slice(b"b")), Duration::ZERO);
        pool.produce(make_artifact(3, Buf::copy_from_slice(b"c")), Duration::ZERO);
        let transmits = pool.apply(Duration::ZERO);
        assert!(transmits.contains(&Transmit::Abort(a.id().clone())));
        assert!(!pool.has_validated(a.id()));
        assert_eq!(pool.validated_len(), 2);
    }

    #[test]
    fn received_artifacts_validate_and_relay_only_when_asked() {
        for relay in [false, true] {
            let mut pool = pool(relay);
            let a = make_artifact(1, Buf::copy_from_slice(b"a"));
            let mut bad = make_artifact(1, Buf::copy_from_slice(b"b"));
            bad.payload = Buf::copy_from_slice(b"x");
            pool.insert_unvalidated(NodeId([1; 32]), a.clone());
            pool.insert_unvalidated(NodeId([1; 32]), bad);
            let transmits = pool.apply(Duration::ZERO);
            assert_eq!(transmits.len(), usize::from(relay));
            assert!(pool.has_validated(a.id()));
            assert_eq!(pool.stats().invalid, 1);
        }
    }
}
