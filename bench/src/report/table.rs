//! The text table printed on stdout.

use std::fmt::Write;

use super::SuiteReport;
use crate::transport::load::OTHER_PROCESSES_CORES;

/// A suite table's first line: the suite, its mode and the host (`placement` follows the core
/// count, e.g. " (unpinned)").
pub fn header_line(suite: &str, placement: &str, report: &SuiteReport) -> String {
    format!(
        "{suite} suite ({}), {} on {} cores{placement}, kernel {}",
        if report.quick { "quick" } else { "full" },
        report.host.cpu,
        report.host.cores,
        report.host.kernel
    )
}

/// The end of a run's one-line summary: its error count and first error, joined with `parts`.
pub fn finish_summary(mut parts: Vec<String>, run: &crate::report::RunRecord) -> String {
    parts.push(format!("{} errors", run.errors));
    if let Some(error) = &run.first_error {
        parts.push(format!("first error: {error}"));
    }
    parts.join(", ")
}

/// The per-point table followed by the ratios.
pub fn render(report: &SuiteReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", header_line("transport", "", report));
    let _ = writeln!(
        out,
        "{:<15} {:<13} {:>9} {:>11} {:>9} {:>9} {:>9} {:>9} {:>10} {:>6} {:>7}",
        "system",
        "case",
        "Gbit/s",
        "ops/s",
        "p50 us",
        "p90 us",
        "p99 us",
        "p99.9 us",
        "CPU-s/GiB",
        "errors",
        "others"
    );
    for point in &report.runs {
        let run = &point.median;
        let latency = |pick: fn(&crate::stats::LatencySummary) -> f64| {
            run.latency_us
                .as_ref()
                .map_or("-".to_string(), |l| format!("{:.1}", pick(l)))
        };
        let _ = writeln!(
            out,
            "{:<15} {:<13} {:>9} {:>11} {:>9} {:>9} {:>9} {:>9} {:>10} {:>6} {:>7}",
            point.system,
            point.case,
            optional(run.goodput_bytes_per_s.map(|b| b * 8e-9), 2),
            optional(run.ops_per_s, 0),
            latency(|l| l.p50),
            latency(|l| l.p90),
            latency(|l| l.p99),
            latency(|l| l.p999),
            optional(run.cpu_s_per_gib, 2),
            run.errors,
            optional(run.extra.get(OTHER_PROCESSES_CORES).copied(), 2)
        );
    }
    let _ = writeln!(
        out,
        "(others: cores' worth of CPU other processes used during the run; high means disturbed)"
    );
    if !report.ratios.is_empty() {
        let _ = writeln!(out, "\nratios (median against median, same invocation):");
        for ratio in &report.ratios {
            let _ = writeln!(
                out,
                "  {:<13} {:>15} / {:<15} goodput x{}  p99 x{}  CPU/GiB x{}",
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
    use super::*;
    use crate::report::tests::sample_report;

    #[test]
    fn table_lists_every_point_and_dashes_what_does_not_apply() {
        let text = render(&sample_report());
        let lines: Vec<&str> = text.lines().collect();
        let tcp = lines.iter().find(|l| l.starts_with("plain-tcp")).unwrap();
        assert!(tcp.contains("4.29"), "2^29 B/s is 4.29 Gbit/s: {tcp}");
        let ceiling = lines
            .iter()
            .find(|l| l.starts_with("crypto-ceiling"))
            .unwrap();
        assert!(
            ceiling.contains(" - "),
            "no latency for the ceiling: {ceiling}"
        );
    }
}
