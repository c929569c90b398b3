//! The gossip suite's cases: how many nodes, how big an artifact, and the workload knobs that
//! every system runs with.

use std::time::Duration;

/// Node counts the suite knows. 13 is the IC's smallest application subnet; it is not run by
/// default (13 threads on a 2-core VM measure the scheduler more than the stack).
pub const NODE_COUNTS: [usize; 3] = [4, 7, 13];

/// Node counts run when no `--cases` are given.
pub const DEFAULT_NODE_COUNTS: [usize; 2] = [4, 7];

/// Artifact sizes of the suite, with their names in case names.
pub const ARTIFACT_SIZES: [(usize, &str); 4] = [
    (1 << 10, "1KiB"),
    (64 << 10, "64KiB"),
    (1 << 20, "1MiB"),
    (4 << 20, "4MiB"),
];

/// An artifact strictly smaller than this is pushed with its slot update; anything else is
/// advertised (id + size) and fetched by the receiver. The IC's consensus manager uses the same
/// 1 KiB rule (`ARTIFACT_PUSH_THRESHOLD_BYTES`, on the encoded artifact), so a 1 KiB artifact is
/// advertised, as on the IC. Every system follows it: it is part of the workload.
pub const PUSH_THRESHOLD_BYTES: usize = 1 << 10;

/// Largest artifact the suite produces; receivers refuse adverts for more.
pub const ARTIFACT_BYTES_MAX: usize = 4 << 20;

/// Most nodes one run may have: a delivery is tracked in a 64-bit mask per artifact.
pub const NODES_MAX: usize = 64;

/// Smallest artifact: room for the 12-byte header that names its producer and sequence.
pub const ARTIFACT_BYTES_MIN: usize = 64;

/// Warm-up and measured time of each run, quick and full.
pub const WARMUP_QUICK: Duration = Duration::from_millis(500);
pub const MEASURE_QUICK: Duration = Duration::from_secs(2);
pub const WARMUP_FULL: Duration = Duration::from_secs(1);
pub const MEASURE_FULL: Duration = Duration::from_secs(10);

/// After the measurement producers stop; the run then waits this long at most for every
/// artifact already inserted to reach every receiver. What is still missing then is an error.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Repetitions of each point.
pub const REPETITIONS_QUICK: usize = 1;
pub const REPETITIONS_FULL: usize = 3;

/// Artifacts each producer may have inserted but not yet delivered to every peer (the closed
/// loop's window), about 128 KiB to 4 MiB of content per producer. Enough that links stay busy:
/// every producer has at least one artifact in flight to each of its peers, and small artifacts
/// cover the advert + fetch round trips. Small enough that a run reaches a steady state on a
/// 2-core VM: with 8 x 1 MiB / 4 x 4 MiB windows a 7-node run delivered only the first window of
/// each producer within a quick run (the whole run was start-up transient, and the latency was
/// the queue of 672 MiB of deliveries). Worst-case memory: window x size per producer for the
/// artifacts, plus the receivers' copies in flight.
pub fn window_for(artifact_bytes: usize) -> usize {
    match artifact_bytes {
        0..=4096 => 128,
        4097..=262_144 => 16,
        262_145..=2_097_152 => 2,
        _ => 1,
    }
}

/// One case: `n<nodes>-<size>`, e.g. `n4-1KiB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GossipCase {
    pub nodes: usize,
    pub artifact_bytes: usize,
}

impl GossipCase {
    /// The cases run by default, in report order.
    pub fn defaults() -> Vec<GossipCase> {
        DEFAULT_NODE_COUNTS
            .iter()
            .flat_map(|&nodes| {
                ARTIFACT_SIZES
                    .iter()
                    .map(move |&(artifact_bytes, _)| GossipCase {
                        nodes,
                        artifact_bytes,
                    })
            })
            .collect()
    }

    pub fn name(&self) -> String {
        let size = ARTIFACT_SIZES
            .iter()
            .find(|(bytes, _)| *bytes == self.artifact_bytes)
            .map_or_else(
                || format!("{}B", self.artifact_bytes),
                |(_, name)| name.to_string(),
            );
        format!("n{}-{size}", self.nodes)
    }

    /// A known case name, or `None`.
    pub fn parse(name: &str) -> Option<GossipCase> {
        let (nodes, size) = name.strip_prefix('n')?.split_once('-')?;
        let nodes: usize = nodes.parse().ok()?;
        let &(artifact_bytes, _) = ARTIFACT_SIZES.iter().find(|(_, known)| *known == size)?;
        NODE_COUNTS.contains(&nodes).then_some(GossipCase {
            nodes,
            artifact_bytes,
        })
    }

    /// Every name [`GossipCase::parse`] accepts, for error messages.
    pub fn known_names() -> Vec<String> {
        NODE_COUNTS
            .iter()
            .flat_map(|&nodes| {
                ARTIFACT_SIZES.iter().map(move |&(artifact_bytes, _)| {
                    GossipCase {
                        nodes,
                        artifact_bytes,
                    }
                    .name()
                })
            })
            .collect()
    }
}

/// Everything a run of one case needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GossipSpec {
    pub case: GossipCase,
    /// Per-producer window of artifacts not yet delivered to every peer.
    pub window: usize,
    pub warmup: Duration,
    pub measure: Duration,
    pub drain_timeout: Duration,
}

impl GossipSpec {
    /// The case as the suite runs it.
    pub fn standard(case: GossipCase, quick: bool) -> GossipSpec {
        let (warmup, measure) = if quick {
            (WARMUP_QUICK, MEASURE_QUICK)
        } else {
            (WARMUP_FULL, MEASURE_FULL)
        };
        GossipSpec {
            case,
            window: window_for(case.artifact_bytes),
            warmup,
            measure,
            drain_timeout: DRAIN_TIMEOUT,
        }
    }

    /// Checks what the harness relies on; a spec built by hand (tests) may break it.
    pub fn validate(&self) -> Result<(), String> {
        let case = &self.case;
        if case.nodes < 2 || case.nodes > NODES_MAX {
            return Err(format!("nodes {} outside 2..={NODES_MAX}", case.nodes));
        }
        if case.artifact_bytes < ARTIFACT_BYTES_MIN || case.artifact_bytes > ARTIFACT_BYTES_MAX {
            return Err(format!(
                "artifact of {} bytes outside {ARTIFACT_BYTES_MIN}..={ARTIFACT_BYTES_MAX}",
                case.artifact_bytes
            ));
        }
        if self.window == 0 {
            return Err("window of 0 artifacts".into());
        }
        Ok(())
    }

    /// Whether artifacts of this case ride in their slot update (see [`PUSH_THRESHOLD_BYTES`]).
    pub fn pushed(&self) -> bool {
        self.case.artifact_bytes < PUSH_THRESHOLD_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_defaults_follow_bench_md() {
        let names: Vec<String> = GossipCase::defaults()
            .iter()
            .map(GossipCase::name)
            .collect();
        assert_eq!(
            names,
            [
                "n4-1KiB", "n4-64KiB", "n4-1MiB", "n4-4MiB", "n7-1KiB", "n7-64KiB", "n7-1MiB",
                "n7-4MiB"
            ]
        );
        for name in GossipCase::known_names() {
            assert_eq!(GossipCase::parse(&name).map(|c| c.name()), Some(name));
        }
        assert_eq!(
            GossipCase::parse("n13-4MiB"),
            Some(GossipCase {
                nodes: 13,
                artifact_bytes: 4 << 20
            })
        );
        for bad in ["n5-1KiB", "n4-2KiB", "4-1KiB", "n4", "nx-1KiB", "n4-1KiB-"] {
            assert_eq!(GossipCase::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn windows_and_push_rule() {
        let window = |bytes| {
            GossipSpec::standard(
                GossipCase {
                    nodes: 4,
                    artifact_bytes: bytes,
                },
                true,
            )
            .window
        };
        assert_eq!(
            [
                window(1 << 10),
                window(64 << 10),
                window(1 << 20),
                window(4 << 20)
            ],
            [128, 16, 2, 1]
        );
        let spec = GossipSpec::standard(GossipCase::parse("n4-1KiB").unwrap(), true);
        assert!(!spec.pushed(), "1 KiB is advertised, as on the IC");
        assert!(spec.validate().is_ok());
        let small = GossipSpec {
            case: GossipCase {
                nodes: 4,
                artifact_bytes: 512,
            },
            ..spec.clone()
        };
        assert!(small.pushed());
        let lonely = GossipSpec {
            case: GossipCase {
                nodes: 1,
                artifact_bytes: 512,
            },
            ..spec
        };
        assert!(lonely.validate().is_err());
    }
}
