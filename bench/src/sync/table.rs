//! The sync suite's text table and progress lines: MB/s of state adopted, CPU per GiB, the
//! rise of resident memory, and the ratios against the targets.

use std::fmt::Write;

use crate::report::table::finish_summary;
use crate::report::{RunRecord, SuiteReport};
use crate::transport::load::OTHER_PROCESSES_CORES;

const BYTES_PER_MB: f64 = 1e6;
const BYTES_PER_MIB: f64 = (1u64 << 20) as f64;

/// Short form of a run for progress lines.
pub fn one_line(run: &RunRecord) -> String {
    let mut parts = Vec::new();
    if let Some(goodput) = run.goodput_bytes_per_s {
        parts.push(format!("{:.1} MB/s", goodput / BYTES_PER_MB));
    }
    if let Some(seconds) = run.duration_s {
        parts.push(format!("{seconds:.2} s"));
    }
    if let Some(cpu) = run.cpu_s_per_gib {
        parts.push(format!("{cpu:.2} CPU-s/GiB"));
    }
    if let Some(rss) = run.peak_rss_bytes {
        parts.push(format!("RSS +{:.0} MiB", rss as f64 / BYTES_PER_MIB));
    }
    finish_summary(parts, run)
}

/// The per-point table followed by the ratios and their targets.
pub fn render(report: &SuiteReport) -> String {
    let mut out = String::new();
    let state_bytes = report.config["state"]["state_bytes"].as_u64().unwrap_or(0);
    let _ = writeln!(
        out,
        "sync suite ({}), state of {:.0} MiB, {} on {} cores, kernel {}",
        if report.quick { "quick" } else { "full" },
        state_bytes as f64 / BYTES_PER_MIB,
        report.host.cpu,
        report.host.cores,
        report.host.kernel
    );
    let _ = writeln!(
        out,
        "{:<12} {:<7} {:>9} {:>8} {:>10} {:>9} {:>6} {:>7}",
        "system", "case", "MB/s", "s", "CPU-s/GiB", "RSS+ MiB", "errors", "others"
    );
    for point in &report.runs {
        let run = &point.median;
        let _ = writeln!(
            out,
            "{:<12} {:<7} {:>9} {:>8} {:>10} {:>9} {:>6} {:>7}",
            point.system,
            point.case,
            optional(run.goodput_bytes_per_s.map(|b| b / BYTES_PER_MB), 1),
            optional(run.duration_s, 2),
            optional(run.cpu_s_per_gib, 2),
            optional(run.peak_rss_bytes.map(|b| b as f64 / BYTES_PER_MIB), 0),
            run.errors,
            optional(run.extra.get(OTHER_PROCESSES_CORES).copied(), 2)
        );
    }
    let _ = writeln!(
        out,
        "(MB/s: state bytes adopted per second of the whole sync, files fsynced; RSS+: rise of \
         resident memory at its peak during the run; others: cores' worth of CPU other processes \
         used during the run)"
    );
    if !report.ratios.is_empty() {
        let _ = writeln!(out, "\nratios (median against median, same invocation):");
        for ratio in &report.ratios {
            let verdict = match (
                super::target(&ratio.system, &ratio.baseline, &ratio.case),
                ratio.goodput_ratio,
            ) {
                (Some(target), Some(got)) if got >= target => format!("target x{target:.1}: met"),
                (Some(target), _) => format!("target x{target:.1}: not met"),
                (None, _) => String::new(),
            };
            let _ = writeln!(
                out,
                "  {:<7} {:>11} / {:<12} goodput x{}  CPU/GiB x{}  {verdict}",
                ratio.case,
                ratio.system,
                ratio.baseline,
                optional(ratio.goodput_ratio, 2),
                optional(ratio.cpu_per_gib_ratio, 2)
            );
        }
    }
    out
}

fn optional(value: Option<f64>, decimals: usize) -> String {
    value.map_or("-".to_string(), |v| format!("{v:.decimals$}"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::report::{ratios, PointReport};
    use crate::transport::load::Measurement;

    fn run(bytes: u64, seconds: u64) -> RunRecord {
        let measurement = Measurement {
            elapsed: Duration::from_secs(seconds),
            bytes,
            ops: bytes >> 20,
            latency: None,
            cpu: Some(Duration::from_secs(1)),
            errors: 0,
            first_error: None,
            extra: BTreeMap::new(),
        };
        let mut record = RunRecord::from_measurement(&measurement, 0);
        record.peak_rss_bytes = Some(80 << 20);
        record
    }

    #[test]
    fn table_shows_rates_and_targets() {
        let mut report = crate::report::tests::sample_report();
        report.suite = "sync".into();
        report.config = serde_json::json!({"state": {"state_bytes": 1u64 << 30}});
        report.runs = vec![
            PointReport::from_runs("icn", "peers3", vec![run(1 << 30, 2)]),
            PointReport::from_runs("quinn-tokio", "peers3", vec![run(1 << 30, 4)]),
            PointReport::from_runs("raw-ceiling", "peers3", vec![run(1 << 30, 1)]),
        ];
        report.ratios = ratios(&report.runs, &crate::sync::RATIO_PAIRS);
        let text = render(&report);
        assert!(text.contains("state of 1024 MiB"), "{text}");
        let icn = text.lines().find(|l| l.starts_with("icn ")).unwrap();
        assert!(icn.contains("536.9"), "1 GiB over 2 s: {icn}");
        assert!(icn.contains(" 80 "), "RSS growth: {icn}");
        assert!(
            text.contains("quinn-tokio  goodput x2.00  CPU/GiB x1.00  target x1.3: met"),
            "{text}"
        );
        assert!(
            text.contains("raw-ceiling  goodput x0.50  CPU/GiB x1.00  target x0.5: met"),
            "{text}"
        );
        let line = one_line(&report.runs[1].median);
        assert!(line.starts_with("268.4 MB/s, 4.00 s"), "{line}");
    }
}
