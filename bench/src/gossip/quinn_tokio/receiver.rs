//! The receiving side of the baseline's consensus manager as a plain state machine: per-peer
//! slot tables, dedup by artifact id, and which artifacts are being fetched. No I/O: the node
//! driver feeds it updates and fetch results and does what it answers.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use super::wire::WireError;
use crate::gossip::ArtifactId;

/// Highest slot number + 1 a peer may use. Bounds each peer's slot table (about 48 bytes an
/// entry: 200 KiB per peer at worst). An honest producer uses at most its window of slots (128
/// at most in this suite), since a slot is reused once its artifact is purged.
pub const SLOTS_PER_PEER_MAX: u64 = 4096;

/// Fetches one node may have running. Bounds the artifacts being downloaded (at most one
/// stream each), so a peer that keeps re-pointing slots at new adverts cannot grow the download
/// set without end. An honest run needs at most peers x window (6 x 128 in this suite).
pub const DOWNLOADS_IN_FLIGHT_MAX: usize = 4096;

/// What the driver must do after a slot update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateAction {
    /// An older commit than the slot already holds: ignore.
    Stale,
    /// The artifact is already here or on its way: nothing to do.
    Known,
    /// A new pushed artifact: deliver the carried bytes.
    Deliver,
    /// A new advert: fetch the artifact from the peer that sent it.
    Fetch,
}

#[derive(Clone, Copy, Debug)]
struct SlotEntry {
    commit_id: u64,
    id: ArtifactId,
}

#[derive(Clone, Copy, Debug)]
struct ArtifactState {
    /// Slot-table entries that point at it.
    references: u32,
    /// Delivered (or pushed); otherwise a fetch is running.
    held: bool,
}

/// One node's view of its peers' slot tables.
#[derive(Debug)]
pub struct ReceiverCore {
    slots: Vec<HashMap<u64, SlotEntry>>,
    /// Every artifact a slot points at or a fetch is running for: at most
    /// peers x [`SLOTS_PER_PEER_MAX`] + [`DOWNLOADS_IN_FLIGHT_MAX`] entries.
    artifacts: HashMap<ArtifactId, ArtifactState>,
    downloads: usize,
}

impl ReceiverCore {
    pub fn new(nodes: usize) -> ReceiverCore {
        ReceiverCore {
            slots: vec![HashMap::new(); nodes],
            artifacts: HashMap::new(),
            downloads: 0,
        }
    }

    /// Peer `peer` says its `slot` now holds `id` as of `commit_id`.
    pub fn on_update(
        &mut self,
        peer: usize,
        commit_id: u64,
        slot: u64,
        id: ArtifactId,
        pushed: bool,
    ) -> Result<UpdateAction, WireError> {
        if slot >= SLOTS_PER_PEER_MAX {
            return Err(WireError::LimitExceeded {
                limit: "slots_per_peer_max",
                value: slot,
            });
        }
        let new_fetch = !pushed && !self.artifacts.contains_key(&id);
        if new_fetch && self.downloads >= DOWNLOADS_IN_FLIGHT_MAX {
            return Err(WireError::LimitExceeded {
                limit: "downloads_in_flight_max",
                value: self.downloads as u64 + 1,
            });
        }
        let previous = match self.slots[peer].entry(slot) {
            Entry::Occupied(entry) if entry.get().commit_id >= commit_id => {
                return Ok(UpdateAction::Stale)
            }
            Entry::Occupied(mut entry) => Some(entry.insert(SlotEntry { commit_id, id }).id),
            Entry::Vacant(entry) => {
                entry.insert(SlotEntry { commit_id, id });
                None
            }
        };
        if let Some(previous) = previous {
            self.release(&previous);
        }
        Ok(self.reference(id, pushed))
    }

    fn reference(&mut self, id: ArtifactId, pushed: bool) -> UpdateAction {
        match self.artifacts.entry(id) {
            Entry::Occupied(mut entry) => {
                entry.get_mut().references += 1;
                UpdateAction::Known
            }
            Entry::Vacant(entry) => {
                entry.insert(ArtifactState {
                    references: 1,
                    held: pushed,
                });
                if pushed {
                    UpdateAction::Deliver
                } else {
                    self.downloads += 1;
                    UpdateAction::Fetch
                }
            }
        }
    }

    /// A slot stopped pointing at `id`; forget it once nothing refers to it and it is not
    /// being fetched (the producer only reuses a slot after every peer had the artifact).
    fn release(&mut self, id: &ArtifactId) {
        let Entry::Occupied(mut entry) = self.artifacts.entry(*id) else {
            unreachable!("every slot entry references a tracked artifact");
        };
        let state = entry.get_mut();
        state.references -= 1;
        if state.references == 0 && state.held {
            entry.remove();
        }
    }

    /// A fetch of `id` ended; `delivered` says whether the harness accepted the bytes. A failed
    /// fetch forgets the artifact so that a later advert fetches it again.
    pub fn on_fetched(&mut self, id: &ArtifactId, delivered: bool) {
        let Entry::Occupied(mut entry) = self.artifacts.entry(*id) else {
            unreachable!("a fetch runs only for a tracked artifact");
        };
        assert!(!entry.get().held, "one fetch per artifact");
        self.downloads -= 1;
        let state = entry.get_mut();
        state.held = delivered;
        if state.references == 0 || !delivered {
            entry.remove();
        }
    }

    #[cfg(test)]
    pub fn tracked_artifacts(&self) -> usize {
        self.artifacts.len()
    }

    #[cfg(test)]
    pub fn downloads(&self) -> usize {
        self.downloads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ArtifactId {
        ArtifactId([n; 32])
    }

    #[test]
    fn adverts_fetch_once_and_slots_forget() {
        let mut core = ReceiverCore::new(3);
        assert_eq!(
            core.on_update(1, 1, 0, id(1), false),
            Ok(UpdateAction::Fetch)
        );
        // The same artifact from another peer, or again: no second fetch.
        assert_eq!(
            core.on_update(2, 1, 5, id(1), false),
            Ok(UpdateAction::Known)
        );
        assert_eq!(
            core.on_update(1, 1, 0, id(1), false),
            Ok(UpdateAction::Stale)
        );
        assert_eq!(core.downloads(), 1);
        core.on_fetched(&id(1), true);
        assert_eq!((core.downloads(), core.tracked_artifacts()), (0, 1));
        // Both slots move on: the artifact is forgotten.
        assert_eq!(
            core.on_update(1, 2, 0, id(2), true),
            Ok(UpdateAction::Deliver)
        );
        assert_eq!(
            core.on_update(2, 2, 5, id(3), true),
            Ok(UpdateAction::Deliver)
        );
        assert_eq!(core.tracked_artifacts(), 2);
        // A reordered older update for slot 0 does not bring the old artifact back.
        assert_eq!(
            core.on_update(1, 1, 0, id(1), false),
            Ok(UpdateAction::Stale)
        );
    }

    #[test]
    fn a_fetch_outliving_its_slot_is_forgotten_when_it_ends() {
        let mut core = ReceiverCore::new(2);
        assert_eq!(
            core.on_update(1, 1, 0, id(1), false),
            Ok(UpdateAction::Fetch)
        );
        assert_eq!(
            core.on_update(1, 2, 0, id(2), true),
            Ok(UpdateAction::Deliver)
        );
        assert_eq!(core.tracked_artifacts(), 2, "the fetch of 1 still runs");
        core.on_fetched(&id(1), true);
        assert_eq!(core.tracked_artifacts(), 1);
        // A failed fetch lets a later advert try again.
        assert_eq!(
            core.on_update(1, 3, 1, id(4), false),
            Ok(UpdateAction::Fetch)
        );
        core.on_fetched(&id(4), false);
        assert_eq!(
            core.on_update(1, 4, 2, id(4), false),
            Ok(UpdateAction::Fetch)
        );
    }

    #[test]
    fn limits_refuse_abusive_peers() {
        let mut core = ReceiverCore::new(2);
        assert!(core
            .on_update(1, 1, SLOTS_PER_PEER_MAX, id(1), false)
            .is_err());
        for slot in 0..DOWNLOADS_IN_FLIGHT_MAX as u64 {
            let mut artifact = [0u8; 32];
            artifact[..8].copy_from_slice(&slot.to_le_bytes());
            let action = core.on_update(1, 1, slot, ArtifactId(artifact), false);
            assert_eq!(action, Ok(UpdateAction::Fetch));
        }
        let refused = core.on_update(1, 2, 0, id(0xff), false);
        assert!(matches!(
            refused,
            Err(WireError::LimitExceeded {
                limit: "downloads_in_flight_max",
                ..
            })
        ));
        assert_eq!(
            core.downloads(),
            DOWNLOADS_IN_FLIGHT_MAX,
            "a refused advert changes nothing"
        );
    }
}
