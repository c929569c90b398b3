//! The `transport` suite: systems, cases, and the loop that runs every point.
//!
//! A [`System`] runs one case end to end (server and client, warm-up, one measured run) and
//! reports a [`Measurement`]. The suite repeats each point, keeps the raw runs and reports the
//! median. Systems are listed in [`registered_systems`]: the icn transports are added there with
//! one [`icn::IcnPair`] impl each.

pub mod case;
pub mod crypto_ceiling;
pub mod icn;
pub mod icn_systems;
pub mod load;
pub mod plain_tcp;
pub mod quinn_tokio;

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::host::{self, Placement};
use crate::report::{PointReport, RunRecord};
pub use case::{Budget, CaseKind, CaseSpec};
pub use load::Measurement;

/// Every system name of the transport suite (BENCH.md), in report order.
pub const SYSTEM_NAMES: [&str; 6] = [
    "icn-quic",
    "icn-quic-nogso",
    "icn-tcp-tls",
    "plain-tcp",
    "quinn-tokio",
    "crypto-ceiling",
];

/// (system, baseline) pairs whose ratios the report prints.
pub const RATIO_PAIRS: [(&str, &str); 7] = [
    ("icn-quic", "quinn-tokio"),
    ("icn-quic", "crypto-ceiling"),
    ("icn-quic-nogso", "quinn-tokio"),
    ("icn-quic", "icn-quic-nogso"),
    ("icn-tcp-tls", "plain-tcp"),
    ("quinn-tokio", "plain-tcp"),
    ("quinn-tokio", "crypto-ceiling"),
];

/// One thing the suite measures: a transport stack (or a ceiling) that can run the cases.
pub trait System {
    /// Its name in reports (one of [`SYSTEM_NAMES`]).
    fn name(&self) -> &'static str;

    /// Whether the case means anything for this system (a case it skips is left out of the
    /// report, never filled in).
    fn supports(&self, _case: CaseKind) -> bool {
        true
    }

    /// Sets up server and client, warms up, and measures one run of `spec`.
    fn run(&self, spec: &CaseSpec, placement: Placement) -> Result<Measurement, String>;

    /// The knobs that matter for this system, printed in the report's config.
    fn config(&self) -> BTreeMap<String, Value> {
        BTreeMap::new()
    }
}

/// The systems built into this binary, in report order.
///
/// Registration point for the icn transports: each is one `IcnPair` impl wrapped in
/// [`icn::IcnSystem`], e.g. `Box::new(icn::IcnSystem::new("icn-quic", QuicPair::new(true)))`.
pub fn registered_systems() -> Vec<Box<dyn System>> {
    registered_systems_spinning(icn_tuning::ENGINE_SPIN_BEFORE_PARK_US_DEFAULT)
}

/// [`registered_systems`] with the icn executors' `engine.spin_before_park_us` set to `spin_us`.
pub fn registered_systems_spinning(spin_us: u64) -> Vec<Box<dyn System>> {
    let mut systems: Vec<Box<dyn System>> = Vec::new();
    // Identities are generated here; failing to make one is a broken BoringSSL, worth a loud stop.
    let quic = |gso| icn_systems::QuicPair::new(gso).expect("generate node identities");
    let icn = |name, pair| icn::IcnSystem::new(name, pair).spin_before_park_us(spin_us);
    systems.push(Box::new(icn("icn-quic", quic(true))));
    systems.push(Box::new(icn("icn-quic-nogso", quic(false))));
    let tcp = icn_systems::TcpPair::new().expect("generate node identities and registry");
    systems.push(Box::new(
        icn::IcnSystem::new("icn-tcp-tls", tcp).spin_before_park_us(spin_us),
    ));
    systems.extend([
        Box::new(plain_tcp::PlainTcp) as Box<dyn System>,
        Box::new(quinn_tokio::QuinnTokio),
        Box::new(crypto_ceiling::CryptoCeiling),
    ]);
    systems
}

/// Orders systems by [`SYSTEM_NAMES`] so reports always list them the same way.
pub fn report_order(name: &str) -> usize {
    SYSTEM_NAMES
        .iter()
        .position(|&known| known == name)
        .unwrap_or(SYSTEM_NAMES.len())
}

/// The suite-wide knobs for the report's config.
pub fn suite_config(
    cases: &[CaseSpec],
    repetitions: usize,
    placement: Placement,
    systems: &[Box<dyn System>],
) -> Value {
    let mut config = serde_json::Map::new();
    config.insert(
        "build".into(),
        json!(if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }),
    );
    config.insert("repetitions".into(), json!(repetitions));
    config.insert("server_core".into(), json!(placement.server_core));
    config.insert("client_core".into(), json!(placement.client_core));
    config.insert(
        "bulk_messages_in_flight".into(),
        json!(case::BULK_MESSAGES_IN_FLIGHT),
    );
    config.insert(
        "median".into(),
        json!("run with the median goodput; errors summed over runs"),
    );
    for spec in cases {
        config.insert(spec.kind.name().into(), case_config(spec));
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

fn case_config(spec: &CaseSpec) -> Value {
    let budget = |budget: Budget| match budget {
        Budget::Ops(ops) => {
            json!({ "ops": ops, "request_bytes_total": ops * spec.request_bytes as u64 })
        }
        Budget::Time(duration) => json!({ "seconds": duration.as_secs_f64() }),
    };
    json!({
        "request_bytes": spec.request_bytes,
        "response_bytes": spec.response_bytes,
        "in_flight": spec.in_flight,
        "warmup": budget(spec.warmup),
        "measure": budget(spec.measure),
        "time_cap_s": spec.time_cap.as_secs_f64(),
    })
}

/// Runs every supported (system, case) point `repetitions` times. `progress` hears one line per
/// run (the CLI prints them on stderr so stdout stays a table plus, with `--json`, one JSON line).
pub fn run_points(
    systems: &[Box<dyn System>],
    cases: &[CaseSpec],
    repetitions: usize,
    placement: Placement,
    progress: &mut dyn FnMut(&str),
) -> Vec<PointReport> {
    let mut points = Vec::new();
    for spec in cases {
        for system in systems.iter().filter(|s| s.supports(spec.kind)) {
            let raw: Vec<RunRecord> = (0..repetitions)
                .map(|repetition| {
                    let record = run_once(system.as_ref(), spec, placement);
                    progress(&format!(
                        "{} {} run {}/{}: {}",
                        system.name(),
                        spec.kind.name(),
                        repetition + 1,
                        repetitions,
                        record.one_line()
                    ));
                    record
                })
                .collect();
            points.push(PointReport::from_runs(system.name(), spec.kind.name(), raw));
        }
    }
    points
}

fn run_once(system: &dyn System, spec: &CaseSpec, placement: Placement) -> RunRecord {
    match system.run(spec, placement) {
        Ok(measurement) => RunRecord::from_measurement(&measurement, host::peak_rss_bytes()),
        Err(error) => RunRecord::failed(error),
    }
}
