//! Artifacts and the pool interfaces the consensus manager and the artifact manager talk to.
//!
//! An artifact is an opaque byte string with an opaque id, of one *kind* (block proposals,
//! notarization shares, ingress messages, ...). The networking layer never looks inside: the pool
//! that owns a kind decides whether an advertised artifact is wanted (the bouncer), whether bytes
//! match an id, and which artifacts this node offers to its peers (deliver) or withdraws (abort).

use std::fmt;
use std::time::Duration;

use icn_engine::{Buf, NodeId};
use smallvec::SmallVec;

/// Which pool an artifact belongs to; one consensus manager and one artifact manager per kind.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ArtifactKind(pub u8);

/// An artifact's id, chosen by its pool (e.g. a hash and a height); at most the codec's
/// `id_bytes_max` long. Inline up to 40 bytes (a 32-byte hash plus a height) so that the maps
/// keyed by it do not allocate per entry.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ArtifactId(pub SmallVec<[u8; 40]>);

impl ArtifactId {
    pub fn from_slice(bytes: &[u8]) -> ArtifactId {
        ArtifactId(SmallVec::from_slice(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Bytes this id occupies in a map beyond its inline storage (for advert budgets).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for ArtifactId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.0[..self.0.len().min(8)];
        write!(f, "ArtifactId(")?;
        for byte in shown {
            write!(f, "{byte:02x}")?;
        }
        if self.0.len() > shown.len() {
            write!(f, "..")?;
        }
        write!(f, ")")
    }
}

/// What a receiver learns about an artifact before it has the bytes.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Advert {
    pub id: ArtifactId,
    /// Opaque to the networking layer; the bouncer reads it (e.g. a height).
    pub attributes: SmallVec<[u8; 16]>,
    pub size_bytes: u64,
}

/// An artifact with its bytes. The payload is a refcounted buffer: handing it to N peers or to
/// the pool never copies it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Artifact {
    pub advert: Advert,
    pub payload: Buf,
}

impl Artifact {
    pub fn id(&self) -> &ArtifactId {
        &self.advert.id
    }
}

/// The bouncer's answer for an advert.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Want {
    /// Download it now.
    Wanted,
    /// Not yet (e.g. too far ahead); ask again later.
    MaybeLater,
    /// Never (already held, too old): do not download, but keep tracking the advert so that
    /// the id is not fetched when another peer advertises it.
    Unwanted,
}

/// What a pool wants sent after applying its changes.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Transmit {
    /// Offer this artifact to every peer. `latency_sensitive` artifacts are pushed whatever
    /// their size (a notarization share that every node waits for).
    Deliver {
        artifact: Artifact,
        latency_sensitive: bool,
    },
    /// Stop offering this artifact (its slot is freed and the peers are told).
    Abort(ArtifactId),
}

/// The pool of one artifact kind, as the networking layer sees it. Runs on its home shard; the
/// artifact manager drives it (insert, remove, apply) and the consensus manager asks its bouncer
/// and its content check.
pub trait ArtifactPool {
    fn kind(&self) -> ArtifactKind;

    /// The bouncer: should an advertised artifact be downloaded?
    fn want(&self, advert: &Advert) -> Want;

    /// True if `payload` is the artifact `advert` names (e.g. its hash matches the id). A peer
    /// whose bytes fail this is penalized.
    fn matches(&self, advert: &Advert, payload: &[u8]) -> bool;

    /// An artifact received from `from` enters the unvalidated section.
    fn insert_unvalidated(&mut self, from: NodeId, artifact: Artifact);

    /// No peer advertises `id` any more: it leaves the unvalidated section (a validated copy
    /// stays).
    fn remove_unvalidated(&mut self, id: &ArtifactId);

    /// Validates, purges and produces; returns what the consensus manager must send or withdraw.
    fn apply(&mut self, now: Duration) -> Vec<Transmit>;
}
