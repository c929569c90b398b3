//! The gossip suite's text table and progress lines: MB/s and artifacts/s delivered to all
//! receivers together, delivery latency in milliseconds.

use std::fmt::Write;

use crate::report::table::{finish_summary, header_line};
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
    if let Some(ops) = run.ops_per_s {
        parts.push(format!("{ops:.0} deliveries/s"));
    }
    if let Some(latency) = run.latency_us {
        parts.push(format!(
            "p50 {:.2} ms p99 {:.2} ms",
            latency.p50 / 1e3,
            latency.p99 / 1e3
        ));
    }
    if let Some(cpu) = run.cpu_s_per_gib {
        parts.push(format!("{cpu:.2} CPU-s/GiB"));
    }
    finish_summary(parts, run)
}

/// The per-point table followed by the ratios.
pub fn render(report: &SuiteReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", header_line("gossip", "", report));
    let _ = writeln!(
        out,
        "{:<12} {:<9} {:>9} {:>11} {:>9} {:>9} {:>9} {:>10} {:>8} {:>6} {:>7}",
        "system",
        "case",
        "MB/s",
        "deliv/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "CPU-s/GiB",
        "RSS MiB",
        "errors",
        "others"
    );
    for point in &report.runs {
        let run = &point.median;
        let latency = |pick: fn(&crate::stats::LatencySummary) -> f64| {
            optional(run.latency_us.as_ref().map(|l| pick(l) / 1e3), 2)
        };
        let _ = writeln!(
            out,
            "{:<12} {:<9} {:>9} {:>11} {:>9} {:>9} {:>9} {:>10} {:>8} {:>6} {:>7}",
            point.system,
            point.case,
            optional(run.goodput_bytes_per_s.map(|b| b / BYTES_PER_MB), 1),
            optional(run.ops_per_s, 0),
            latency(|l| l.p50),
            latency(|l| l.p99),
            latency(|l| l.p999),
            optional(run.cpu_s_per_gib, 2),
            optional(run.peak_rss_bytes.map(|b| b as f64 / BYTES_PER_MIB), 0),
            run.errors,
            optional(run.extra.get(OTHER_PROCESSES_CORES).copied(), 2)
        );
    }
    let _ = writeln!(
        out,
        "(MB/s and deliv/s: artifact bytes and artifacts delivered to all receivers together; \
         latency: producer insert to each receiver's delivery; others: cores' worth of CPU other \
         processes used during the run)"
    );
    if !report.ratios.is_empty() {
        let _ = writeln!(out, "\nratios (median against median, same invocation):");
        for ratio in &report.ratios {
            let _ = writeln!(
                out,
                "  {:<9} {:>6} / {:<12} goodput x{}  p99 x{}  CPU/GiB x{}",
                ratio.case,
                ratio.system,
                ratio.baseline,
                optional(ratio.goodput_ratio, 2),
                optional(ratio.p99_ratio, 2),
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
    use crate::stats::LatencyRecorder;
    use crate::transport::load::Measurement;

    fn run(bytes: u64, p99_ms: u64) -> RunRecord {
        let mut latency = LatencyRecorder::new();
        latency.record(Duration::from_millis(p99_ms));
        let measurement = Measurement {
            elapsed: Duration::from_secs(2),
            bytes,
            ops: bytes >> 10,
            latency: Some(latency),
            cpu: Some(Duration::from_secs(1)),
            errors: 0,
            first_error: None,
            extra: BTreeMap::new(),
        };
        RunRecord::from_measurement(&measurement, 64 << 20)
    }

    #[test]
    fn table_shows_rates_latency_and_ratios() {
        let mut report = crate::report::tests::sample_report();
        report.suite = "gossip".into();
        report.runs = vec![
            PointReport::from_runs("icn", "n4-1KiB", vec![run(400_000_000, 2)]),
            PointReport::from_runs("quinn-tokio", "n4-1KiB", vec![run(200_000_000, 4)]),
        ];
        report.ratios = ratios(&report.runs, &crate::gossip::RATIO_PAIRS);
        let text = render(&report);
        let icn = text.lines().find(|l| l.starts_with("icn ")).unwrap();
        assert!(icn.contains("200.0"), "400 MB over 2 s: {icn}");
        assert!(icn.contains("2.00"), "p99 of 2 ms: {icn}");
        assert!(icn.contains(" 64 "), "64 MiB RSS: {icn}");
        assert!(
            text.contains("goodput x2.00  p99 x0.50  CPU/GiB x0.50"),
            "{text}"
        );
        let line = one_line(&report.runs[1].median);
        assert!(line.starts_with("100.0 MB/s"), "{line}");
    }
}
