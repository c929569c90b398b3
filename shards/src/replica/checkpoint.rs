//! The replica's state in a state-sync checkpoint: the folder `replica/` of a checkpoint holds
//! the canisters' state files ([`Canisters::write_state`]) and `chain`, the executed height,
//! tip, time and request statuses (`icn_codecs::replica::ChainState`). Every node that executed
//! the same chain writes the same bytes at the same height, so honest nodes advertise the same
//! root hash, and a node that syncs the checkpoint from peers resumes execution from it.
//!
//! Reading is for bytes that came from peers: every bound of this node applies (the canisters'
//! limits, `replica.request_statuses_max`), principals and reject codes are parsed into errors,
//! and nothing panics.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use icn_codecs::ic::{Principal, RequestId};
use icn_codecs::replica::{
    decode_chain_state, encode_chain_state, ChainState, ChainStateLimits, StoredOutcome,
    StoredStatus,
};

use super::canisters::{CanisterLimits, Canisters, Reject, RejectCode};
use super::chain::{ExecutedState, RequestOutcome, RequestStatus};
use super::driver::Replica;
use crate::runtime::Runtime;
use crate::state_sync::driver::StateSync;
use crate::state_sync::reference::offered_states;
use crate::state_sync::synthetic::{write_state, SyntheticSpec};

/// The folder of a checkpoint that holds the replica's files.
pub const REPLICA_DIR: &str = "replica";
/// The chain file inside [`REPLICA_DIR`].
pub const CHAIN_FILE: &str = "chain";
/// Largest chain file read: a status holds at most one reply, and replies are bounded by the
/// largest ingress message; 256 MiB covers the default statuses bound many times over.
pub const CHAIN_FILE_BYTES_MAX: usize = 256 << 20;

/// Error codes a reject may carry (the canisters' and the replica's own); a checkpoint naming
/// another is refused.
const ERROR_CODES: [&str; 4] = ["IC0301", "IC0406", "IC0503", "IC0536"];

/// Writes `state` into checkpoint folder `dir`.
pub fn write_checkpoint(dir: &Path, state: &ExecutedState) -> io::Result<()> {
    let folder = dir.join(REPLICA_DIR);
    std::fs::create_dir_all(&folder)?;
    state
        .canisters
        .write_state(&folder)
        .map_err(io::Error::other)?;
    let chain = ChainState {
        height: state.height,
        tip: state.tip,
        time_ns: state.time_ns,
        statuses: state
            .statuses
            .iter()
            .map(|(id, status)| StoredStatus {
                request_id: id.0,
                sender: status.sender.as_slice().to_vec(),
                canister: status.canister.as_slice().to_vec(),
                ingress_expiry: status.ingress_expiry,
                height: status.height,
                outcome: match &status.outcome {
                    RequestOutcome::Replied(reply) => StoredOutcome::Replied(reply.clone()),
                    RequestOutcome::Rejected(reject) => StoredOutcome::Rejected {
                        code: reject.code as u8,
                        message: reject.message.clone(),
                        error_code: reject.error_code.to_string(),
                    },
                },
            })
            .collect(),
    };
    let path = folder.join(CHAIN_FILE);
    let mut file = std::fs::File::create(&path)?;
    io::Write::write_all(&mut file, &encode_chain_state(&chain))?;
    file.sync_all()
}

/// Why a checkpoint's replica state was refused.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Canisters(#[from] super::canisters::StateError),
    #[error("chain file: {0}")]
    Chain(#[from] icn_codecs::DecodeError),
    #[error("chain file: {0}")]
    Invalid(String),
}

/// Reads the replica state of checkpoint folder `dir`.
pub fn read_checkpoint(
    dir: &Path,
    limits: CanisterLimits,
    statuses_max: usize,
) -> Result<ExecutedState, CheckpointError> {
    let folder = dir.join(REPLICA_DIR);
    let canisters = Canisters::read_state(&folder, limits)?;
    let path = folder.join(CHAIN_FILE);
    let bytes = read_bounded(&path, CHAIN_FILE_BYTES_MAX)
        .map_err(|source| CheckpointError::Io { path, source })?;
    let chain = decode_chain_state(
        &bytes,
        &ChainStateLimits {
            bytes_max: CHAIN_FILE_BYTES_MAX,
            statuses_max,
        },
    )?;
    let mut statuses = BTreeMap::new();
    for stored in chain.statuses {
        let principal = |bytes: &[u8], what: &str| {
            Principal::from_slice(bytes)
                .map_err(|e| CheckpointError::Invalid(format!("request status {what}: {e}")))
        };
        let outcome = match stored.outcome {
            StoredOutcome::Replied(reply) => RequestOutcome::Replied(reply),
            StoredOutcome::Rejected {
                code,
                message,
                error_code,
            } => RequestOutcome::Rejected(Reject {
                code: reject_code(code)?,
                message,
                error_code: ERROR_CODES
                    .into_iter()
                    .find(|known| *known == error_code)
                    .ok_or_else(|| {
                        CheckpointError::Invalid(format!("unknown error code {error_code:?}"))
                    })?,
            }),
        };
        statuses.insert(
            RequestId(stored.request_id),
            RequestStatus {
                sender: principal(&stored.sender, "sender")?,
                canister: principal(&stored.canister, "canister")?,
                ingress_expiry: stored.ingress_expiry,
                height: stored.height,
                outcome,
            },
        );
    }
    Ok(ExecutedState::from_parts(
        chain.height,
        chain.tip,
        chain.time_ns,
        canisters,
        statuses,
    ))
}

fn reject_code(code: u8) -> Result<RejectCode, CheckpointError> {
    Ok(match code {
        1 => RejectCode::SysFatal,
        2 => RejectCode::SysTransient,
        3 => RejectCode::DestinationInvalid,
        4 => RejectCode::CanisterReject,
        5 => RejectCode::CanisterError,
        other => {
            return Err(CheckpointError::Invalid(format!(
                "unknown reject code {other}"
            )))
        }
    })
}

fn read_bounded(path: &Path, bytes_max: usize) -> io::Result<Vec<u8>> {
    let len = std::fs::metadata(path)?.len();
    if len > bytes_max as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{len} bytes, over the limit of {bytes_max}"),
        ));
    }
    std::fs::read(path)
}

/// How often the checkpoint loop looks at the replica and the peers' adverts.
const CHECKPOINT_TICK: Duration = Duration::from_millis(100);

/// Whether `offered` (height, root, advertisers) holds a state a lagging node should sync: the
/// newest one that at least `quorum` peers advertise alike, more than `interval` heights above
/// `executed` (closer than that, replaying blocks from the peers' pools is cheaper).
pub fn sync_target(
    executed: u64,
    interval: u64,
    quorum: usize,
    offered: &[(u64, [u8; 32], usize)],
) -> Option<(u64, [u8; 32])> {
    offered
        .iter()
        .filter(|(height, _, advertisers)| {
            *advertisers >= quorum && *height > executed.saturating_add(interval)
        })
        .max_by_key(|(height, _, _)| *height)
        .map(|(height, root, _)| (*height, *root))
}

/// Feeds the replica's state to state sync and back, until the task is dropped:
/// - every checkpoint height the replica executes becomes a checkpoint (its `replica/` folder,
///   plus the synthetic files of `ballast` when the node config has a `[state]` table, so a
///   sync moves a sizeable state);
/// - when at least f + 1 peers advertise the same checkpoint well ahead of the executed height,
///   it becomes the sync target (f + 1: at least one of them is honest);
/// - a checkpoint ahead of the executed height (synced, or this node's own after a restart) is
///   read back and adopted.
pub async fn run_replica_checkpoints(
    sync: StateSync,
    replica: Rc<Replica>,
    ballast: Option<SyntheticSpec>,
    runtime: Rc<dyn Runtime>,
) {
    let limits = replica.config().canisters;
    let statuses_max = replica.config().chain.request_statuses_max;
    let interval = replica.config().checkpoint_interval.max(1);
    let mut refused: Option<u64> = None;
    loop {
        if let Some(latest) = sync.latest() {
            if latest.height > replica.executed_height() && refused != Some(latest.height) {
                match read_checkpoint(&latest.dir, limits, statuses_max) {
                    Ok(state) if state.height == latest.height => {
                        println!(
                            "replica: resuming from checkpoint {} (executed height was {})",
                            latest.height,
                            replica.executed_height()
                        );
                        replica.adopt(state);
                    }
                    Ok(state) => {
                        eprintln!(
                            "replica: checkpoint {} holds the state of height {}, not adopted",
                            latest.height, state.height
                        );
                        refused = Some(latest.height);
                    }
                    Err(error) => {
                        eprintln!("replica: checkpoint {} not adopted: {error}", latest.height);
                        refused = Some(latest.height);
                    }
                }
            }
        }
        if let Some(state) = replica.take_checkpoint_due() {
            let height = state.height;
            if !sync.is_syncing() && sync.latest_height().is_none_or(|h| h < height) {
                let result = sync
                    .create_checkpoint(height, move |dir, previous| {
                        write_checkpoint(dir, &state)?;
                        if let Some(spec) = ballast {
                            write_state(
                                dir,
                                &spec,
                                height,
                                previous.map(|p| (p.dir.as_path(), p.height)),
                            )?;
                        }
                        Ok(())
                    })
                    .await;
                if let Err(error) = result {
                    eprintln!("replica: checkpoint {height} failed: {error}");
                }
            }
        }
        let members = replica.members().len();
        let quorum = members.saturating_sub(1) / 3 + 1;
        let offered = offered_states(&sync);
        if let Some((height, root)) =
            sync_target(replica.executed_height(), interval, quorum, &offered)
        {
            if sync.target() != Some((height, root)) && sync.latest_height() < Some(height) {
                println!(
                    "replica: executed height {} is behind checkpoint {height} that {quorum}+ peers offer, syncing it",
                    replica.executed_height()
                );
                sync.set_target(height, root);
            }
        }
        runtime.sleep(CHECKPOINT_TICK).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::canisters::{counter_canister_id, CallKind};

    #[test]
    fn a_laggard_syncs_the_newest_checkpoint_a_quorum_offers_well_ahead() {
        let offers = [(50, [5; 32], 2), (60, [6; 32], 1), (40, [4; 32], 3)];
        assert_eq!(sync_target(0, 10, 2, &offers), Some((50, [5; 32])));
        assert_eq!(sync_target(35, 10, 2, &offers), Some((50, [5; 32])));
        assert_eq!(
            sync_target(41, 10, 2, &offers),
            None,
            "close enough to replay"
        );
        assert_eq!(sync_target(0, 10, 4, &offers), None, "no quorum");
    }

    #[test]
    fn a_checkpoint_reads_back_as_the_state_it_was_written_from() {
        let mut canisters = Canisters::new(CanisterLimits::default());
        let counter = counter_canister_id();
        canisters.execute(&counter, "increment", b"DIDL\x00\x00", CallKind::Update);
        let statuses = BTreeMap::from([
            (
                RequestId([1; 32]),
                RequestStatus {
                    sender: Principal::ANONYMOUS,
                    canister: counter,
                    ingress_expiry: 500,
                    height: 4,
                    outcome: RequestOutcome::Replied(b"DIDL".to_vec()),
                },
            ),
            (
                RequestId([2; 32]),
                RequestStatus {
                    sender: Principal::ANONYMOUS,
                    canister: counter,
                    ingress_expiry: 400,
                    height: 5,
                    outcome: RequestOutcome::Rejected(Reject {
                        code: RejectCode::DestinationInvalid,
                        message: "no method".into(),
                        error_code: "IC0536",
                    }),
                },
            ),
        ]);
        let state = ExecutedState::from_parts(5, [9; 32], 1234, canisters, statuses);
        let dir =
            std::env::temp_dir().join(format!("icn-replica-checkpoint-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        write_checkpoint(&dir, &state).unwrap();
        let read = read_checkpoint(&dir, CanisterLimits::default(), 10).unwrap();
        assert_eq!(read.height, 5);
        assert_eq!(read.tip, [9; 32]);
        assert_eq!(read.time_ns, 1234);
        assert_eq!(read.canisters, state.canisters);
        assert_eq!(read.statuses, state.statuses);
        assert!(matches!(
            read_checkpoint(&dir, CanisterLimits::default(), 1),
            Err(CheckpointError::Chain(_))
        ));
        std::fs::write(dir.join(REPLICA_DIR).join(CHAIN_FILE), b"garbage").unwrap();
        assert!(read_checkpoint(&dir, CanisterLimits::default(), 10).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
