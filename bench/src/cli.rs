//! The `icn-bench` command line.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};

use crate::gossip::{self, GossipSpec};
use crate::host::{HostInfo, Placement};
use crate::http;
use crate::report::{self, SuiteReport};
use crate::sync::{self, SyncState};
use crate::transport::{self, case, CaseKind, CaseSpec, System};

#[derive(Parser, Debug)]
#[command(
    name = "icn-bench",
    about = "icn load generators, baselines and reports"
)]
struct Cli {
    #[command(subcommand)]
    suite: Suite,
}

#[derive(Subcommand, Debug)]
enum Suite {
    /// Transport goodput, RPC rate and latency: icn transports against plain TCP, quinn + tokio
    /// and the AES-GCM ceiling.
    Transport(SuiteArgs),
    /// Artifact broadcast among N nodes in one process (IC consensus-manager style): icn against
    /// quinn + tokio.
    Gossip(SuiteArgs),
    /// State sync of a synthetic checkpoint from 1, 3 or 6 peers on loopback: icn against a
    /// quinn + tokio chunk fetcher and the local read + hash + write ceiling.
    Sync(SuiteArgs),
    /// The public HTTP API under query and update load (open loop, up to 10x the peak): icn
    /// nodes running the reference replica against axum + tokio doing the same work per query.
    Http(SuiteArgs),
    /// Internal: the axum-tokio baseline server of the http suite, as a child process.
    #[command(hide = true)]
    HttpAxumServe {
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
}

#[derive(Args, Debug)]
struct SuiteArgs {
    /// Smoke run: same cases, smaller sizes, one repetition (under a minute).
    #[arg(long)]
    quick: bool,
    /// Print the report's JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
    /// Systems to run (comma-separated); default: every system built in.
    #[arg(long, value_delimiter = ',')]
    systems: Vec<String>,
    /// Cases to run (comma-separated); default: all.
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
    /// Where the JSON and SVG files go.
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
    /// http: servers on core 0 and the load generator on core 1, instead of sharing both.
    #[arg(long)]
    pin: bool,
    /// `engine.spin_before_park_us` of the icn executors (0: park at once); default: the
    /// engine's default.
    #[arg(long, default_value_t = icn_tuning::ENGINE_SPIN_BEFORE_PARK_US_DEFAULT)]
    spin_before_park_us: u64,
}

/// Runs the command line; returns the process exit code (1 when a run had errors or the
/// arguments were wrong, 0 otherwise).
pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.suite {
        Suite::Transport(args) => run_transport(args),
        Suite::Gossip(args) => run_gossip(args),
        Suite::Sync(args) => run_sync(args),
        Suite::Http(args) => run_http(args),
        Suite::HttpAxumServe { listen } => return crate::http::axum_tokio::serve_main(listen),
    };
    match result {
        Ok(errors) if errors > 0 => {
            eprintln!("icn-bench: {errors} failed operations (see the report's errors fields)");
            1
        }
        Ok(_) => 0,
        Err(error) => {
            eprintln!("icn-bench: {error}");
            1
        }
    }
}

/// Runs the transport suite and writes its report; returns the total error count.
fn run_transport(args: SuiteArgs) -> Result<u64, String> {
    let systems = select_systems(
        transport::registered_systems_spinning(args.spin_before_park_us),
        &args.systems,
    )?;
    let kinds = select_cases(&args.cases)?;
    let cases: Vec<CaseSpec> = kinds
        .iter()
        .map(|&kind| CaseSpec::standard(kind, args.quick))
        .collect();
    let repetitions = if args.quick {
        case::REPETITIONS_QUICK
    } else {
        case::REPETITIONS_FULL
    };
    let placement = Placement::detect();
    let started_utc = report::utc_stamp(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs()),
    );
    let config = transport::suite_config(&cases, repetitions, placement, &systems);
    let mut runs = transport::run_points(&systems, &cases, repetitions, placement, &mut |line| {
        eprintln!("{line}")
    });
    runs.sort_by_key(|point| {
        let case_index = kinds.iter().position(|kind| kind.name() == point.case);
        (case_index, transport::report_order(&point.system))
    });
    let ratios = report::ratios(&runs, &transport::RATIO_PAIRS);
    let report = SuiteReport {
        suite: "transport".into(),
        quick: args.quick,
        started_utc,
        host: HostInfo::detect(),
        config,
        runs,
        ratios,
    };
    finish(&report, &args, report::table::render)
}

/// Runs the gossip suite and writes its report; returns the total error count.
fn run_gossip(args: SuiteArgs) -> Result<u64, String> {
    let systems = gossip::select_systems(gossip::registered_systems(), &args.systems)?;
    let specs: Vec<GossipSpec> = gossip::select_cases(&args.cases)?
        .into_iter()
        .map(|case| GossipSpec::standard(case, args.quick))
        .collect();
    let repetitions = if args.quick {
        gossip::case::REPETITIONS_QUICK
    } else {
        gossip::case::REPETITIONS_FULL
    };
    let started_utc = report::utc_stamp(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs()),
    );
    let config = gossip::suite_config(&specs, repetitions, &systems);
    let runs = gossip::run_points(&systems, &specs, repetitions, &mut |line| {
        eprintln!("{line}")
    });
    let ratios = report::ratios(&runs, &gossip::RATIO_PAIRS);
    let report = SuiteReport {
        suite: "gossip".into(),
        quick: args.quick,
        started_utc,
        host: HostInfo::detect(),
        config,
        runs,
        ratios,
    };
    finish(&report, &args, gossip::table::render)
}

/// Runs the sync suite and writes its report; returns the total error count.
fn run_sync(args: SuiteArgs) -> Result<u64, String> {
    let systems = sync::select_systems(sync::registered_systems(), &args.systems)?;
    let cases = sync::select_cases(&args.cases)?;
    let repetitions = if args.quick {
        sync::REPETITIONS_QUICK
    } else {
        sync::REPETITIONS_FULL
    };
    let started_utc = report::utc_stamp(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs()),
    );
    let spec = sync::state_spec(args.quick);
    eprintln!(
        "building the synthetic state ({} MiB)...",
        spec.state_bytes() >> 20
    );
    let state = SyncState::build(spec, sync::CHUNK_BYTES)?;
    eprintln!(
        "state of {} chunks built in {:.1} s",
        state.chunk_count(),
        state.build_s
    );
    let config = sync::suite_config(&state, repetitions, &systems);
    let runs = sync::run_points(&state, &systems, &cases, repetitions, &mut |line| {
        eprintln!("{line}")
    });
    let ratios = report::ratios(&runs, &sync::RATIO_PAIRS);
    let report = SuiteReport {
        suite: "sync".into(),
        quick: args.quick,
        started_utc,
        host: HostInfo::detect(),
        config,
        runs,
        ratios,
    };
    finish(&report, &args, sync::table::render)
}

/// Runs the http suite and writes its report; returns the total error count.
fn run_http(args: SuiteArgs) -> Result<u64, String> {
    let systems = http::select_systems(&args.systems)?;
    let cases = http::select_cases(&args.cases)?;
    let repetitions = if args.quick {
        http::REPETITIONS_QUICK
    } else {
        http::REPETITIONS_FULL
    };
    let started_utc = report::utc_stamp(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs()),
    );
    let pinning = if args.pin {
        http::Pinning::split()?
    } else {
        http::Pinning::Shared
    };
    let (runs, peaks) = http::run_points(
        &systems,
        &cases,
        repetitions,
        args.quick,
        pinning,
        &mut |line| eprintln!("{line}"),
    );
    let ratios = report::ratios(&runs, &http::RATIO_PAIRS);
    let report = SuiteReport {
        suite: "http".into(),
        quick: args.quick,
        started_utc,
        host: HostInfo::detect(),
        config: http::suite_config(args.quick, repetitions, peaks, pinning),
        runs,
        ratios,
    };
    finish(&report, &args, http::table::render)
}

/// Prints the table, writes the JSON and SVG, prints the JSON line if asked; returns the error
/// count.
fn finish(
    report: &SuiteReport,
    args: &SuiteArgs,
    table: fn(&SuiteReport) -> String,
) -> Result<u64, String> {
    print!("{}", table(report));
    let (json_path, svg_path) = report
        .write_files(&args.out_dir)
        .map_err(|e| format!("writing the report: {e}"))?;
    println!("\nwrote {} and {}", json_path.display(), svg_path.display());
    if args.json {
        println!("{}", report.to_json_line());
    }
    Ok(report.runs.iter().map(|point| point.median.errors).sum())
}

/// The requested systems in report order; a known name that is not built in is an error (so a
/// comparison never silently loses its subject).
fn select_systems(
    registered: Vec<Box<dyn System>>,
    names: &[String],
) -> Result<Vec<Box<dyn System>>, String> {
    for name in names {
        if !registered.iter().any(|system| system.name() == name) {
            return Err(if transport::SYSTEM_NAMES.contains(&name.as_str()) {
                format!("system {name} is not built into this icn-bench yet")
            } else {
                format!(
                    "unknown system {name}; known: {}",
                    transport::SYSTEM_NAMES.join(", ")
                )
            });
        }
    }
    let mut chosen: Vec<Box<dyn System>> = registered
        .into_iter()
        .filter(|system| names.is_empty() || names.iter().any(|name| name == system.name()))
        .collect();
    chosen.sort_by_key(|system| transport::report_order(system.name()));
    Ok(chosen)
}

fn select_cases(names: &[String]) -> Result<Vec<CaseKind>, String> {
    if names.is_empty() {
        return Ok(CaseKind::ALL.to_vec());
    }
    let mut kinds = names
        .iter()
        .map(|name| {
            CaseKind::parse(name).ok_or_else(|| {
                let known: Vec<&str> = CaseKind::ALL.iter().map(|kind| kind.name()).collect();
                format!("unknown case {name}; known: {}", known.join(", "))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    kinds.sort();
    kinds.dedup();
    Ok(kinds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_parse() {
        let cli = Cli::try_parse_from([
            "icn-bench",
            "transport",
            "--quick",
            "--json",
            "--systems",
            "plain-tcp,quinn-tokio",
            "--cases",
            "bulk-1MiB",
            "--out-dir",
            "/tmp/x",
        ])
        .unwrap();
        let Suite::Transport(args) = cli.suite else {
            panic!("transport arguments parse as the transport suite");
        };
        assert!(args.quick && args.json);
        assert_eq!(args.systems, ["plain-tcp", "quinn-tokio"]);
        assert_eq!(args.out_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn gossip_arguments_parse() {
        let cli = Cli::try_parse_from([
            "icn-bench",
            "gossip",
            "--quick",
            "--systems",
            "quinn-tokio",
            "--cases",
            "n4-1KiB,n7-4MiB",
        ])
        .unwrap();
        let Suite::Gossip(args) = cli.suite else {
            panic!("gossip arguments parse as the gossip suite");
        };
        assert!(args.quick && !args.json);
        assert_eq!(args.cases, ["n4-1KiB", "n7-4MiB"]);
        assert_eq!(args.out_dir, PathBuf::from("bench/results"));
    }

    #[test]
    fn sync_arguments_parse() {
        let cli = Cli::try_parse_from([
            "icn-bench",
            "sync",
            "--quick",
            "--json",
            "--systems",
            "icn,raw-ceiling",
            "--cases",
            "peers3",
        ])
        .unwrap();
        let Suite::Sync(args) = cli.suite else {
            panic!("sync arguments parse as the sync suite");
        };
        assert!(args.quick && args.json);
        assert_eq!(args.systems, ["icn", "raw-ceiling"]);
        assert_eq!(args.cases, ["peers3"]);
    }

    #[test]
    fn http_arguments_parse() {
        let cli = Cli::try_parse_from([
            "icn-bench",
            "http",
            "--quick",
            "--json",
            "--systems",
            "icn,axum-tokio",
            "--cases",
            "query-10x",
        ])
        .unwrap();
        let Suite::Http(args) = cli.suite else {
            panic!("http arguments parse as the http suite");
        };
        assert!(args.quick && args.json);
        assert_eq!(args.systems, ["icn", "axum-tokio"]);
        let cli = Cli::try_parse_from(["icn-bench", "http-axum-serve", "--listen", "127.0.0.1:0"])
            .unwrap();
        assert!(matches!(cli.suite, Suite::HttpAxumServe { listen } if listen.port() == 0));
    }

    #[test]
    fn selection_refuses_unknown_and_missing_systems() {
        let chosen = select_systems(
            transport::registered_systems(),
            &["crypto-ceiling".into(), "plain-tcp".into()],
        )
        .unwrap();
        let names: Vec<&str> = chosen.iter().map(|s| s.name()).collect();
        assert_eq!(names, ["plain-tcp", "crypto-ceiling"]);
        assert!(select_systems(transport::registered_systems(), &["nope".into()]).is_err());
        assert!(
            select_cases(&["rpc-1KiB-x64".into(), "bulk-1MiB".into()]).unwrap()
                == [CaseKind::Bulk1MiB, CaseKind::Rpc1KiBx64]
        );
        assert!(select_cases(&["bulk".into()]).is_err());
    }
}
