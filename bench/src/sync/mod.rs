//! The `sync` suite: one node catches up with a checkpoint served by 1, 3 or 6 peers on
//! loopback, against a quinn + tokio chunk fetcher and the local copy ceiling.
//!
//! # Workload (identical for every system; docs/benchmarks.md, "The sync suite")
//!
//! - One synthetic state per invocation ([`state::SyncState`]): mostly 1 MiB files (so 1 MiB
//!   chunks) plus a tail of small files grouped into shared chunks; at least 2 GiB in full
//!   mode, about 256 MiB with `--quick`. Sources serve hardlinked copies of it.
//! - Case `peers<P>`: P source nodes and one syncing node, all on 127.0.0.1. The syncing
//!   client (quinn) is a thread on the first usable core; icn's syncing node runs one shard
//!   per core, as `icn node`. Each source is pinned off the core that receives its chunks
//!   ([`source_cores`]), as the remote machine it stands for. The syncing node
//!   starts from an empty directory (deleted after the run) and ends holding the whole state,
//!   every chunk checked against the manifest before it is written, every file fsynced.
//! - Measured from the start of the sync (connections already up) to the state being
//!   complete on disk: goodput is state bytes over that time (BENCH.md), CPU is the whole
//!   process's per GiB of state, memory is the rise of the resident set at its peak.
//! - Every run has a deadline ([`state::run_timeout`]); a run that misses it is reported with
//!   an error, never left hanging.

pub mod icn;
pub mod quinn_tokio;
pub mod raw_ceiling;
pub mod state;
pub mod table;

use std::collections::BTreeMap;

use icn_shards::state_sync::synthetic::SyntheticSpec;
use serde_json::{json, Value};

use crate::report::{PointReport, RunRecord};
pub use state::{Run, SyncState};

/// Every system name of the sync suite (BENCH.md), in report order.
pub const SYSTEM_NAMES: [&str; 3] = ["icn", "quinn-tokio", "raw-ceiling"];

/// (system, baseline) pairs whose ratios the report prints.
pub const RATIO_PAIRS: [(&str, &str); 3] = [
    ("icn", "quinn-tokio"),
    ("icn", "raw-ceiling"),
    ("quinn-tokio", "raw-ceiling"),
];

/// Peer counts of the suite's cases.
pub const PEER_COUNTS: [usize; 3] = [1, 3, 6];

/// Chunk size of the state: icn-tuning's default, as the IC.
pub const CHUNK_BYTES: u32 = icn_tuning::STATE_SYNC_CHUNK_BYTES_DEFAULT as u32;

/// Chunk requests the quinn baseline keeps in flight per peer: the IC's state sync setting.
pub const QUINN_CHUNKS_IN_FLIGHT_PER_PEER: usize = 10;

/// Repetitions of each point.
pub const REPETITIONS_QUICK: usize = 1;
pub const REPETITIONS_FULL: usize = 3;

/// The targets of issue #4, printed beside the ratios (never asserted: a benchmark reports).
pub fn target(system: &str, baseline: &str, case: &str) -> Option<f64> {
    match (system, baseline, case) {
        ("icn", "quinn-tokio", "peers1") => Some(1.0),
        ("icn", "quinn-tokio", _) => Some(1.3),
        ("icn", "raw-ceiling", _) => Some(0.5),
        _ => None,
    }
}

/// The state of a run: 2 GiB of 1 MiB files plus 4096 small files (full), or 256 MiB plus 512
/// (quick). Small files are up to 16 KiB (one in 16 empty), about 32 MiB (full) of tail
/// grouped into shared chunks.
pub fn state_spec(quick: bool) -> SyntheticSpec {
    let (large_files, small_files) = if quick { (256, 512) } else { (2048, 4096) };
    SyntheticSpec {
        seed: 0x005e_c51c,
        large_files,
        large_file_bytes: 1 << 20,
        small_files,
        small_file_bytes_max: 16 << 10,
        changed_per_checkpoint_permille: 0,
    }
}

/// One case: `peers<P>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SyncCase {
    pub peers: usize,
}

impl SyncCase {
    pub fn all() -> Vec<SyncCase> {
        PEER_COUNTS
            .iter()
            .map(|&peers| SyncCase { peers })
            .collect()
    }

    pub fn name(&self) -> String {
        format!("peers{}", self.peers)
    }

    pub fn parse(name: &str) -> Option<SyncCase> {
        let peers: usize = name.strip_prefix("peers")?.parse().ok()?;
        PEER_COUNTS.contains(&peers).then_some(SyncCase { peers })
    }
}

/// Cores for a run's threads: thread 0 (the syncing node or client) on the first usable core,
/// thread i on the i-th round-robin; all unpinned when fewer than two cores may be used (the
/// gossip suite's placement).
pub fn thread_cores(threads: usize) -> Vec<Option<usize>> {
    let ids: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .iter()
        .map(|core| core.id)
        .collect();
    (0..threads)
        .map(|thread| (ids.len() >= 2).then(|| ids[thread % ids.len()]))
        .collect()
}

/// Cores for the source threads of a run, source i off `serving[i]`: the core of the syncing
/// side's thread that receives its chunks (the quinn client's core; for icn, the core of the
/// syncing node's shard that owns the source's connection). Sources stand in for other
/// machines, so none shares the core of the thread it feeds: each takes the other usable cores
/// round-robin (on 2 cores, the other core). All unpinned when fewer than two cores may be
/// used.
pub fn source_cores(serving: &[Option<usize>]) -> Vec<Option<usize>> {
    let ids: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .iter()
        .map(|core| core.id)
        .collect();
    if ids.len() < 2 {
        return vec![None; serving.len()];
    }
    let mut taken: BTreeMap<Option<usize>, usize> = BTreeMap::new();
    serving
        .iter()
        .map(|serving| {
            let others: Vec<usize> = ids
                .iter()
                .copied()
                .filter(|core| Some(*core) != *serving)
                .collect();
            let turn = taken.entry(*serving).or_insert(0);
            let core = others[*turn % others.len()];
            *turn += 1;
            Some(core)
        })
        .collect()
}

/// A state-sync stack (or the ceiling) the suite can measure.
pub trait SyncSystem: Send + Sync {
    /// Its name in reports (one of [`SYSTEM_NAMES`]).
    fn name(&self) -> &'static str;

    /// Moves the whole `state` from `case.peers` sources into a fresh destination, verified and
    /// on disk, and reports the measured run (or why it could not be set up).
    fn run(&self, state: &SyncState, case: SyncCase) -> Result<Run, String>;

    /// The knobs that matter for this system, printed in the report's config.
    fn config(&self, state: &SyncState) -> BTreeMap<String, Value>;
}

/// The systems built into this binary, in report order.
pub fn registered_systems() -> Vec<Box<dyn SyncSystem>> {
    vec![
        Box::new(icn::IcnSync),
        Box::new(quinn_tokio::QuinnSync),
        Box::new(raw_ceiling::RawCeiling),
    ]
}

pub fn report_order(name: &str) -> usize {
    SYSTEM_NAMES
        .iter()
        .position(|&known| known == name)
        .unwrap_or(SYSTEM_NAMES.len())
}

/// The requested systems in report order; an unknown name is an error.
pub fn select_systems(
    registered: Vec<Box<dyn SyncSystem>>,
    names: &[String],
) -> Result<Vec<Box<dyn SyncSystem>>, String> {
    for name in names {
        if !registered.iter().any(|system| system.name() == name) {
            return Err(format!(
                "unknown sync system {name}; known: {}",
                SYSTEM_NAMES.join(", ")
            ));
        }
    }
    let mut chosen: Vec<Box<dyn SyncSystem>> = registered
        .into_iter()
        .filter(|system| names.is_empty() || names.iter().any(|name| name == system.name()))
        .collect();
    chosen.sort_by_key(|system| report_order(system.name()));
    Ok(chosen)
}

/// The requested cases in report order (all when none are named).
pub fn select_cases(names: &[String]) -> Result<Vec<SyncCase>, String> {
    if names.is_empty() {
        return Ok(SyncCase::all());
    }
    let mut cases = names
        .iter()
        .map(|name| {
            SyncCase::parse(name).ok_or_else(|| {
                let known: Vec<String> = SyncCase::all().iter().map(SyncCase::name).collect();
                format!("unknown sync case {name}; known: {}", known.join(", "))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    cases.sort();
    cases.dedup();
    Ok(cases)
}

/// The suite-wide knobs for the report's config.
pub fn suite_config(
    state: &SyncState,
    repetitions: usize,
    systems: &[Box<dyn SyncSystem>],
) -> Value {
    let mut config = serde_json::Map::new();
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let spec = &state.spec;
    config.insert("build".into(), json!(build));
    config.insert("repetitions".into(), json!(repetitions));
    config.insert(
        "median".into(),
        json!("run with the median goodput; errors summed over runs"),
    );
    config.insert(
        "state".into(),
        json!({
            "state_bytes": state.state_bytes(),
            "chunks": state.chunk_count(),
            "chunk_bytes": state.chunk_bytes,
            "files": state.manifest.files.len(),
            "large_files": spec.large_files,
            "large_file_bytes": spec.large_file_bytes,
            "small_files": spec.small_files,
            "small_file_bytes_max": spec.small_file_bytes_max,
            "build_s": state.build_s,
        }),
    );
    config.insert(
        "goodput".into(),
        json!("state bytes adopted / seconds from the start of the sync to the state complete on disk (files fsynced)"),
    );
    config.insert(
        "peak_rss_bytes".into(),
        json!("rise of the process's resident memory at its peak during the run over its level at the start (VmHWM reset per run)"),
    );
    config.insert(
        "placement".into(),
        json!("quinn client on the first usable core, icn's syncing node one shard per core; each source off the core that receives its chunks, round-robin over the others; unpinned with < 2 cores"),
    );
    config.insert(
        "run_timeout_s".into(),
        json!(state::run_timeout(state.state_bytes()).as_secs_f64()),
    );
    for system in systems {
        config.insert(
            system.name().into(),
            Value::Object(system.config(state).into_iter().collect()),
        );
    }
    Value::Object(config)
}

/// Runs every (case, system) point `repetitions` times; `progress` hears one line per run.
pub fn run_points(
    state: &SyncState,
    systems: &[Box<dyn SyncSystem>],
    cases: &[SyncCase],
    repetitions: usize,
    progress: &mut dyn FnMut(&str),
) -> Vec<PointReport> {
    let mut points = Vec::new();
    for case in cases {
        for system in systems {
            let raw: Vec<RunRecord> = (0..repetitions)
                .map(|repetition| {
                    let record = match system.run(state, *case) {
                        Ok(run) => record(&run),
                        Err(error) => RunRecord::failed(error),
                    };
                    progress(&format!(
                        "{} {} run {}/{}: {}",
                        system.name(),
                        case.name(),
                        repetition + 1,
                        repetitions,
                        table::one_line(&record)
                    ));
                    record
                })
                .collect();
            points.push(PointReport::from_runs(system.name(), &case.name(), raw));
        }
    }
    points
}

/// A run as the report keeps it: the common record, with `peak_rss_bytes` the run's own rise.
fn record(run: &Run) -> RunRecord {
    let mut record = RunRecord::from_measurement(&run.measurement, 0);
    record.peak_rss_bytes = run.peak_rss_growth_bytes;
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_and_systems_follow_bench_md() {
        let names: Vec<String> = SyncCase::all().iter().map(SyncCase::name).collect();
        assert_eq!(names, ["peers1", "peers3", "peers6"]);
        for name in &names {
            assert_eq!(SyncCase::parse(name).map(|c| c.name()).as_ref(), Some(name));
        }
        for bad in ["peers2", "peers", "p1", "peers1x"] {
            assert_eq!(SyncCase::parse(bad), None, "{bad}");
        }
        let chosen = select_cases(&["peers6".into(), "peers1".into()]).unwrap();
        assert_eq!(chosen, [SyncCase { peers: 1 }, SyncCase { peers: 6 }]);
        assert!(select_cases(&["n4-1KiB".into()]).is_err());
        let systems: Vec<&str> = registered_systems().iter().map(|s| s.name()).collect();
        assert_eq!(systems, SYSTEM_NAMES);
        let chosen =
            select_systems(registered_systems(), &["raw-ceiling".into(), "icn".into()]).unwrap();
        assert_eq!(chosen[0].name(), "icn");
        assert!(select_systems(registered_systems(), &["nope".into()]).is_err());
    }

    #[test]
    fn state_sizes_follow_the_brief() {
        let full = state_spec(false).state_bytes();
        assert!(full >= 2 << 30, "full state {full} bytes");
        let quick = state_spec(true).state_bytes();
        assert!(
            (256 << 20..300 << 20).contains(&quick),
            "quick state {quick}"
        );
        assert_eq!(target("icn", "quinn-tokio", "peers1"), Some(1.0));
        assert_eq!(target("icn", "quinn-tokio", "peers6"), Some(1.3));
        assert_eq!(target("icn", "raw-ceiling", "peers3"), Some(0.5));
    }
}
