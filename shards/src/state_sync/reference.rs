//! The reference state workload of `icn node`: the state a node checkpoints, and when it syncs.
//!
//! Standing in for a replica's execution, the state at checkpoint height `h` is the synthetic
//! state of `h` ([`super::synthetic`]): a pure function of the seed and the height, so every node
//! that follows the subnet builds the same checkpoint (same root hash) on its own, writing only
//! the files that changed since its previous checkpoint. Heights come from the wall clock (as
//! in the P2P workload), one checkpoint every `checkpoint_interval_heights`.
//!
//! A node *follows* while it holds the previous checkpoint: it then builds the next one itself
//! when its height comes. A node that holds nothing (a joiner, `genesis = false`) or whose
//! newest checkpoint is more than one interval behind the newest state advertised by at least
//! `sync_quorum` peers (standing in for a catch-up package: in a replica, a certified height and
//! root hash) sets that state as its sync target; once the sync adopted it, it follows again.
//! Genesis nodes (`genesis = true`, the default) build their first checkpoint at the first
//! checkpoint height after they start.

use std::rc::Rc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::driver::StateSync;
use super::synthetic::{write_state, SyntheticSpec};
use crate::p2p::unix_us;
use crate::runtime::Runtime;

/// The `[state]` table of a node config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateWorkloadConfig {
    /// A checkpoint every this many heights (heights last `block_interval_ms`).
    pub checkpoint_interval_heights: u64,
    /// Whether this node starts the subnet (builds its first checkpoint itself) or joins it
    /// later (syncs before it follows).
    pub genesis: bool,
    /// Peers that must advertise the same (height, root) before a lagging node syncs it.
    pub sync_quorum: usize,
    pub seed: u64,
    pub large_files: u32,
    pub large_file_bytes: u64,
    pub small_files: u32,
    pub small_file_bytes_max: u64,
    /// Files rewritten per checkpoint, per mille.
    pub changed_per_checkpoint_permille: u32,
}

impl Default for StateWorkloadConfig {
    fn default() -> Self {
        StateWorkloadConfig {
            checkpoint_interval_heights: 20,
            genesis: true,
            sync_quorum: 1,
            seed: 1,
            large_files: 64,
            large_file_bytes: 1 << 20,
            small_files: 256,
            small_file_bytes_max: 4 << 10,
            changed_per_checkpoint_permille: 50,
        }
    }
}

/// Largest synthetic state a node config may ask for (every node writes it to its disk).
pub const STATE_BYTES_MAX: u64 = 64 << 30;

impl StateWorkloadConfig {
    pub fn spec(&self) -> SyntheticSpec {
        SyntheticSpec {
            seed: self.seed,
            large_files: self.large_files,
            large_file_bytes: self.large_file_bytes,
            small_files: self.small_files,
            small_file_bytes_max: self.small_file_bytes_max,
            changed_per_checkpoint_permille: self.changed_per_checkpoint_permille,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(1..=1_000_000).contains(&self.checkpoint_interval_heights) {
            return Err(format!(
                "state.checkpoint_interval_heights must be 1..=1000000, not {}",
                self.checkpoint_interval_heights
            ));
        }
        if !(1..=1024).contains(&self.sync_quorum) {
            return Err(format!(
                "state.sync_quorum must be 1..=1024, not {}",
                self.sync_quorum
            ));
        }
        if self.changed_per_checkpoint_permille > 1000 {
            return Err(format!(
                "state.changed_per_checkpoint_permille must be 0..=1000, not {}",
                self.changed_per_checkpoint_permille
            ));
        }
        let bytes = u64::from(self.large_files)
            .saturating_mul(self.large_file_bytes)
            .saturating_add(u64::from(self.small_files).saturating_mul(self.small_file_bytes_max));
        if bytes > STATE_BYTES_MAX {
            return Err(format!(
                "the [state] files add up to {bytes} bytes, above the {STATE_BYTES_MAX} the reference workload allows"
            ));
        }
        if self.large_files.saturating_add(self.small_files) > 1 << 20 {
            return Err("the [state] table asks for more than 1048576 files".into());
        }
        Ok(())
    }
}

/// What the state loop decides on one tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateStep {
    Nothing,
    /// Build checkpoint `height` locally (the node follows).
    Create(u64),
    /// Sync this state (the node lags).
    Sync(u64, [u8; 32]),
}

/// The decision, as a pure function: `now_height` from the clock, `latest` the newest
/// checkpoint held, `adverts` the (height, root, advertisers) the peers offer (full, not
/// partial), `syncing` whether a sync runs.
pub fn decide(
    config: &StateWorkloadConfig,
    now_height: u64,
    latest: Option<u64>,
    started_without_state: bool,
    adverts: &[(u64, [u8; 32], usize)],
) -> StateStep {
    let interval = config.checkpoint_interval_heights;
    let due = now_height - now_height % interval;
    let newest_offered = adverts
        .iter()
        .filter(|(_, _, advertisers)| *advertisers >= config.sync_quorum)
        .max_by_key(|(height, _, _)| *height);
    let lagging = match latest {
        None => !config.genesis,
        Some(latest) => newest_offered.is_some_and(|(height, _, _)| *height > latest + interval),
    };
    if lagging {
        return match newest_offered {
            Some((height, root, _)) if latest.is_none_or(|latest| *height > latest) => {
                StateStep::Sync(*height, *root)
            }
            _ => StateStep::Nothing,
        };
    }
    match latest {
        // Normally the next checkpoint; after a stall with nobody ahead to sync from, the due
        // one (the state of any height can be built from the one before).
        Some(latest) if due > latest => StateStep::Create(due),
        None if config.genesis && started_without_state && due > 0 => StateStep::Create(due),
        _ => StateStep::Nothing,
    }
}

/// The whole states the peers advertise: (height, root hash, how many peers advertise it).
pub fn offered_states(sync: &StateSync) -> Vec<(u64, [u8; 32], usize)> {
    let mut offered: Vec<(u64, [u8; 32], usize)> = Vec::new();
    for (_, advert) in sync.peer_adverts() {
        if advert.partial {
            continue;
        }
        match offered
            .iter_mut()
            .find(|(height, root, _)| *height == advert.height && *root == advert.root_hash)
        {
            Some(entry) => entry.2 += 1,
            None => offered.push((advert.height, advert.root_hash, 1)),
        }
    }
    offered
}

/// Runs the reference state workload until the task is dropped.
pub async fn run_reference_state(
    sync: StateSync,
    config: StateWorkloadConfig,
    block_interval_ms: u64,
    runtime: Rc<dyn Runtime>,
) {
    let spec = config.spec();
    let started_without_state = sync.latest_height().is_none();
    let tick = Duration::from_millis(block_interval_ms.clamp(10, 1_000));
    loop {
        let now_height = unix_us() / 1_000 / block_interval_ms;
        let offered = offered_states(&sync);
        let step = decide(
            &config,
            now_height,
            sync.latest_height(),
            started_without_state,
            &offered,
        );
        match step {
            StateStep::Nothing => {}
            StateStep::Create(height) if !sync.is_syncing() => {
                let result = sync
                    .create_checkpoint(height, move |dir, previous| {
                        write_state(
                            dir,
                            &spec,
                            height,
                            previous.map(|p| (p.dir.as_path(), p.height)),
                        )
                    })
                    .await;
                if let Err(error) = result {
                    eprintln!("icn: state: building checkpoint {height} failed: {error}");
                }
            }
            StateStep::Create(_) => {}
            StateStep::Sync(height, root) => {
                if sync.target() != Some((height, root)) {
                    println!(
                        "state sync: lagging (newest checkpoint {:?}), syncing height {height}",
                        sync.latest_height()
                    );
                    sync.set_target(height, root);
                }
            }
        }
        runtime.sleep(tick).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(genesis: bool) -> StateWorkloadConfig {
        StateWorkloadConfig {
            checkpoint_interval_heights: 10,
            genesis,
            sync_quorum: 2,
            ..StateWorkloadConfig::default()
        }
    }

    #[test]
    fn genesis_nodes_build_and_follow() {
        let c = config(true);
        assert_eq!(decide(&c, 25, None, true, &[]), StateStep::Create(20));
        assert_eq!(decide(&c, 29, Some(20), true, &[]), StateStep::Nothing);
        assert_eq!(decide(&c, 30, Some(20), true, &[]), StateStep::Create(30));
        // A peer a little ahead (it built 30 first) is no reason to sync.
        let ahead = [(30, [1; 32], 3)];
        assert_eq!(
            decide(&c, 30, Some(20), true, &ahead),
            StateStep::Create(30)
        );
    }

    #[test]
    fn joiners_and_laggards_sync_the_newest_state_a_quorum_offers() {
        let c = config(false);
        assert_eq!(decide(&c, 55, None, true, &[]), StateStep::Nothing);
        let offers = [(50, [5; 32], 3), (60, [6; 32], 1), (40, [4; 32], 4)];
        assert_eq!(
            decide(&c, 65, None, true, &offers),
            StateStep::Sync(50, [5; 32])
        );
        // A genesis node restarted far behind syncs too.
        let g = config(true);
        assert_eq!(
            decide(&g, 65, Some(20), false, &offers),
            StateStep::Sync(50, [5; 32])
        );
        // One interval behind: it builds the next checkpoint itself.
        assert_eq!(
            decide(&g, 50, Some(40), false, &offers),
            StateStep::Create(50)
        );
    }

    #[test]
    fn validation_names_the_field() {
        let c = StateWorkloadConfig {
            checkpoint_interval_heights: 0,
            ..StateWorkloadConfig::default()
        };
        let error = c.validate().unwrap_err();
        assert!(error.contains("checkpoint_interval_heights"), "{error}");
        let c = StateWorkloadConfig {
            large_files: 1 << 20,
            large_file_bytes: 1 << 30,
            ..StateWorkloadConfig::default()
        };
        assert!(c.validate().is_err());
        StateWorkloadConfig::default().validate().unwrap();
    }
}
