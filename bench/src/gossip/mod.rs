//! The `gossip` suite: N nodes in one process broadcast artifacts to each other, IC-style.
//!
//! # Workload (identical for every system; docs/benchmarks.md, "The gossip suite")
//!
//! - N nodes (case `n4-*`, `n7-*`; `n13-*` on request), each on its own thread with its own
//!   runtime, pinned round-robin to the cores the process may use; one connection per node pair,
//!   all on 127.0.0.1.
//! - Every node produces: it inserts artifacts of the case's size (a 12-byte header naming the
//!   producer and a sequence number, then pseudo-random bytes; id = SHA-256 of the content) in a
//!   closed loop, at most [`case::window_for`] artifacts not yet delivered to every peer.
//! - An artifact under [`case::PUSH_THRESHOLD_BYTES`] rides in its slot update; anything else is
//!   advertised (id + size) and the receiver fetches it from the producer. Only producers
//!   advertise (no relaying), so each receiver gets each artifact exactly once.
//! - A receiver delivers an artifact when it holds the whole content and the harness has checked
//!   it against the id. Delivering twice is an error.
//! - Measured after a warm-up: delivered bytes/s and artifacts/s summed over receivers, latency
//!   from the producer's insert to each receiver's delivery, process CPU per GiB delivered, peak
//!   RSS, errors. Then producers stop, everything in flight must arrive (or it counts as an
//!   error), and every node shuts down.
//!
//! # Adding a system (how `icn` plugs in)
//!
//! A system implements [`GossipSystem`]; the harness ([`harness`]) does everything else: it makes
//! and verifies artifacts, keeps the windows, measures, and reports. The contract:
//!
//! 1. `run` gets one [`NodeHarness`] per node. For each, start a thread (pin it to
//!    [`NodeHarness::core`]) with the system's runtime (glommio: one `LocalExecutor` per node with
//!    a small `io_memory`, since the memlock limit is shared) and bring the node up: bind, learn
//!    the other nodes' addresses (through channels `run` sets up), connect to every peer.
//! 2. When a node is connected to all its peers it calls [`NodeHarness::ready`]. The warm-up
//!    starts when every node has (or the run fails after [`harness::SETUP_TIMEOUT`]).
//! 3. The node's consensus manager loops on [`NodeHarness::next_event`]:
//!    [`PoolEvent::Insert`]: send the artifact to every peer (push or advert, see
//!    [`GossipSpec::pushed`]) and serve fetches of it; [`PoolEvent::Purge`]: every peer has it,
//!    stop serving it; `None`: the run is over, shut the node down.
//! 4. Receivers call [`NodeHarness::deliver`] once per artifact they hold in full (dedup is the
//!    system's job; a duplicate counts as an error), and [`NodeHarness::record_error`] for every
//!    failed operation (send, fetch, bad message).
//! 5. `run` returns when every node thread has ended, with any system figures worth reporting
//!    (e.g. packets lost) as extra fields, or `Err` when the network could not be brought up.
//!
//! The icn system lives in `icn.rs` of this module.

pub mod case;
pub mod harness;
pub mod icn;
pub mod quinn_tokio;
pub mod table;

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::host;
use crate::report::{PointReport, RunRecord};
pub use case::{GossipCase, GossipSpec};
pub use harness::{Artifact, ArtifactId, NodeHarness, PoolEvent};

/// Every system name of the gossip suite (BENCH.md), in report order.
pub const SYSTEM_NAMES: [&str; 2] = ["icn", "quinn-tokio"];

/// (system, baseline) pairs whose ratios the report prints.
pub const RATIO_PAIRS: [(&str, &str); 1] = [("icn", "quinn-tokio")];

/// A gossip stack the suite can measure. See the module docs for the contract.
pub trait GossipSystem: Send + Sync {
    /// Its name in reports (one of [`SYSTEM_NAMES`]).
    fn name(&self) -> &'static str;

    /// Runs one node per handle until [`NodeHarness::next_event`] says the run is over; returns
    /// system-specific figures for the report, or why the network could not be brought up.
    fn run(&self, nodes: Vec<NodeHarness>) -> Result<BTreeMap<String, f64>, String>;

    /// The knobs that matter for this system, printed in the report's config.
    fn config(&self) -> BTreeMap<String, Value> {
        BTreeMap::new()
    }
}

/// The systems built into this binary, in report order.
pub fn registered_systems() -> Vec<Box<dyn GossipSystem>> {
    vec![Box::new(icn::IcnGossip), Box::new(quinn_tokio::QuinnGossip)]
}

/// Orders systems by [`SYSTEM_NAMES`].
pub fn report_order(name: &str) -> usize {
    SYSTEM_NAMES
        .iter()
        .position(|&known| known == name)
        .unwrap_or(SYSTEM_NAMES.len())
}

/// The requested systems in report order; a known name that is not built in is an error (so a
/// comparison never silently loses its subject).
pub fn select_systems(
    registered: Vec<Box<dyn GossipSystem>>,
    names: &[String],
) -> Result<Vec<Box<dyn GossipSystem>>, String> {
    for name in names {
        if !registered.iter().any(|system| system.name() == name) {
            return Err(if SYSTEM_NAMES.contains(&name.as_str()) {
                format!("gossip system {name} is not built into this icn-bench yet")
            } else {
                format!(
                    "unknown gossip system {name}; known: {}",
                    SYSTEM_NAMES.join(", ")
                )
            });
        }
    }
    let mut chosen: Vec<Box<dyn GossipSystem>> = registered
        .into_iter()
        .filter(|system| names.is_empty() || names.iter().any(|name| name == system.name()))
        .collect();
    chosen.sort_by_key(|system| report_order(system.name()));
    Ok(chosen)
}

/// The requested cases in report order (the default set when none are named).
pub fn select_cases(names: &[String]) -> Result<Vec<GossipCase>, String> {
    if names.is_empty() {
        return Ok(GossipCase::defaults());
    }
    let mut cases = names
        .iter()
        .map(|name| {
            GossipCase::parse(name).ok_or_else(|| {
                format!(
                    "unknown gossip case {name}; known: {}",
                    GossipCase::known_names().join(", ")
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    cases.sort();
    cases.dedup();
    Ok(cases)
}

/// The suite-wide knobs for the report's config.
pub fn suite_config(
    specs: &[GossipSpec],
    repetitions: usize,
    systems: &[Box<dyn GossipSystem>],
) -> Value {
    let mut config = serde_json::Map::new();
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    config.insert("build".into(), json!(build));
    config.insert("repetitions".into(), json!(repetitions));
    config.insert(
        "median".into(),
        json!("run with the median goodput; errors summed over runs"),
    );
    config.insert(
        "push_threshold_bytes".into(),
        json!(case::PUSH_THRESHOLD_BYTES),
    );
    config.insert(
        "push_rule".into(),
        json!("artifact bytes < push_threshold_bytes: pushed in the slot update; else advert + fetch from the producer"),
    );
    config.insert(
        "artifact_id".into(),
        json!("SHA-256 of the content (BoringSSL)"),
    );
    config.insert(
        "placement".into(),
        json!("node i pinned to the i-th usable core, round-robin (unpinned with < 2 cores)"),
    );
    config.insert("relaying".into(), json!(false));
    for spec in specs {
        config.insert(
            spec.case.name(),
            json!({
                "nodes": spec.case.nodes,
                "artifact_bytes": spec.case.artifact_bytes,
                "window_artifacts_per_producer": spec.window,
                "pushed": spec.pushed(),
                "warmup_s": spec.warmup.as_secs_f64(),
                "measure_s": spec.measure.as_secs_f64(),
                "drain_timeout_s": spec.drain_timeout.as_secs_f64(),
            }),
        );
    }
    for system in systems {
        let knobs = system.config();
        if !knobs.is_empty() {
            config.insert(
                system.name().into(),
                Value::Object(knobs.into_iter().collect()),
            );
        }
    }
    Value::Object(config)
}

/// Runs every (system, case) point `repetitions` times; `progress` hears one line per run.
pub fn run_points(
    systems: &[Box<dyn GossipSystem>],
    specs: &[GossipSpec],
    repetitions: usize,
    progress: &mut dyn FnMut(&str),
) -> Vec<PointReport> {
    let mut points = Vec::new();
    for spec in specs {
        for system in systems {
            let raw: Vec<RunRecord> = (0..repetitions)
                .map(|repetition| {
                    let record = match harness::run_case(system.as_ref(), spec) {
                        Ok(measurement) => {
                            RunRecord::from_measurement(&measurement, host::peak_rss_bytes())
                        }
                        Err(error) => RunRecord::failed(error),
                    };
                    progress(&format!(
                        "{} {} run {}/{}: {}",
                        system.name(),
                        spec.case.name(),
                        repetition + 1,
                        repetitions,
                        table::one_line(&record)
                    ));
                    record
                })
                .collect();
            points.push(PointReport::from_runs(
                system.name(),
                &spec.case.name(),
                raw,
            ));
        }
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_refuses_unknown_and_missing_systems() {
        let chosen = select_systems(registered_systems(), &["quinn-tokio".into()]).unwrap();
        assert_eq!(chosen.len(), 1);
        let missing = select_systems(registered_systems(), &["icn".into()]);
        if registered_systems().iter().all(|s| s.name() != "icn") {
            assert!(missing.err().unwrap().contains("not built"));
        }
        assert!(select_systems(registered_systems(), &["nope".into()])
            .err()
            .unwrap()
            .contains("unknown"));
        let cases = select_cases(&["n7-1MiB".into(), "n4-4MiB".into(), "n4-4MiB".into()]).unwrap();
        let names: Vec<String> = cases.iter().map(GossipCase::name).collect();
        assert_eq!(names, ["n4-4MiB", "n7-1MiB"]);
        assert_eq!(select_cases(&[]).unwrap().len(), 8);
        assert!(select_cases(&["bulk-1MiB".into()]).is_err());
    }

    #[test]
    fn config_records_the_workload() {
        let specs: Vec<GossipSpec> = GossipCase::defaults()
            .into_iter()
            .map(|case| GossipSpec::standard(case, true))
            .collect();
        let config = suite_config(&specs, 1, &registered_systems());
        assert_eq!(config["n4-1KiB"]["window_artifacts_per_producer"], 128);
        assert_eq!(config["n7-4MiB"]["window_artifacts_per_producer"], 1);
        assert_eq!(config["push_threshold_bytes"], 1024);
        assert!(config["quinn-tokio"].is_object());
    }
}
