//! The http suite's text table and progress lines: answers per second, latency of admitted
//! and of refused requests, server memory and CPU, the ratios icn / axum-tokio, and the
//! baseline's per-stage times.

use std::fmt::Write;

use crate::report::table::{finish_summary, header_line};
use crate::report::{RunRecord, SuiteReport};

const BYTES_PER_MIB: f64 = (1u64 << 20) as f64;

/// Short form of a run for progress lines.
pub fn one_line(run: &RunRecord) -> String {
    let mut parts = Vec::new();
    if let Some(ops) = run.ops_per_s {
        parts.push(format!("{ops:.0} ok/s"));
    }
    if let Some(latency) = run.latency_us {
        parts.push(format!(
            "p50 {:.0} us p99 {:.0} us",
            latency.p50, latency.p99
        ));
    }
    if let Some(rejected) = run.extra.get("rejected_per_s").filter(|r| **r > 0.0) {
        parts.push(format!("{rejected:.0} 429/s"));
    }
    if let Some(not_sent) = run.extra.get("not_sent").filter(|n| **n > 0.0) {
        parts.push(format!("{not_sent:.0} not sent"));
    }
    finish_summary(parts, run)
}

/// The per-point table, the ratios, and the baseline's stage breakdown.
pub fn render(report: &SuiteReport) -> String {
    let mut out = String::new();
    let pinned = report
        .config
        .get("pinning")
        .and_then(|p| p.as_str())
        .is_some_and(|p| !p.starts_with("none"));
    let placement = if pinned {
        " (servers on one core, generator on another)"
    } else {
        " (unpinned)"
    };
    let _ = writeln!(out, "{}", header_line("http", placement, report));
    let _ = writeln!(
        out,
        "{:<11} {:<16} {:>9} {:>9} {:>8} {:>8} {:>9} {:>9} {:>8} {:>8} {:>7} {:>7} {:>6} {:>8}",
        "system",
        "case",
        "target/s",
        "ok/s",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "429/s",
        "429 p99",
        "RSS MiB",
        "cpu",
        "us/ok",
        "errors",
        "not sent"
    );
    for point in &report.runs {
        let run = &point.median;
        let latency = run.latency_us;
        let _ = writeln!(
            out,
            "{:<11} {:<16} {:>9} {:>9} {:>8} {:>8} {:>9} {:>9} {:>8} {:>8} {:>7} {:>7} {:>6} {:>8}",
            point.system,
            point.case,
            optional(run.extra.get("target_rate_per_s").copied(), 0),
            optional(run.ops_per_s, 0),
            optional(latency.map(|l| l.p50), 0),
            optional(latency.map(|l| l.p99), 0),
            optional(latency.map(|l| l.p999), 0),
            optional(run.extra.get("rejected_per_s").copied(), 0),
            optional(run.reject_latency_us.map(|l| l.p99), 0),
            optional(run.peak_rss_bytes.map(|b| b as f64 / BYTES_PER_MIB), 0),
            optional(run.extra.get("server_cpu_cores").copied(), 2),
            optional(run.extra.get("server_cpu_us_per_ok").copied(), 0),
            run.errors,
            optional(run.extra.get("not_sent").copied(), 0)
        );
    }
    let _ = writeln!(
        out,
        "(ok/s: 2xx answers per second; latency of 2xx answers from when each was due; 429: \
         refused answers; RSS: servers' peak resident memory in the run; cpu: servers' cores busy; \
         us/ok: servers' CPU microseconds per 2xx answer; not sent: due requests the generator \
         had no free connection (HTTP/2: stream) for; update cases run on icn only: the \
         baseline has no consensus)"
    );
    if !report.ratios.is_empty() {
        let _ = writeln!(
            out,
            "\nratios icn / axum-tokio (median against median, same invocation):"
        );
        for ratio in &report.ratios {
            let _ = writeln!(
                out,
                "  {:<16} ok/s x{}  p99 x{}",
                ratio.case,
                optional(ratio.ops_ratio, 2),
                optional(ratio.p99_ratio, 2)
            );
        }
    }
    let stages: Vec<(&str, &str, &RunRecord)> = report
        .runs
        .iter()
        .filter(|p| {
            p.median.extra.contains_key("axum_stage_sign_us")
                || p.median.extra.contains_key("icn_stage_sign_us")
        })
        .map(|p| (p.system.as_str(), p.case.as_str(), &p.median))
        .collect();
    if !stages.is_empty() {
        let _ = writeln!(
            out,
            "\nwhere a query's time goes (us per answered query; queue: waiting for a slot and \
             for pool threads; icn from its icn_http_stage_us, axum-tokio from its own timers):"
        );
        let _ = writeln!(
            out,
            "  {:<11} {:<16} {:>8} {:>12} {:>8} {:>8} {:>8} {:>8}",
            "system", "case", "queue", "decode+hash", "verify", "execute", "sign", "encode"
        );
        for (system, case, run) in stages {
            let value = |name: String| run.extra.get(&name).copied();
            let (queue, decode, prefix) = if system == "icn" {
                let waits = ["admission", "verify_wait", "sign_wait"]
                    .iter()
                    .map(|s| value(format!("icn_stage_{s}_us")))
                    .try_fold(0.0, |sum, v| v.map(|v| sum + v));
                (waits, value("icn_stage_decode_us".into()), "icn_stage")
            } else {
                (
                    value("axum_stage_queue_us".into()),
                    value("axum_stage_decode_hash_us".into()),
                    "axum_stage",
                )
            };
            let get = |stage: &str| optional(value(format!("{prefix}_{stage}_us")), 1);
            let _ = writeln!(
                out,
                "  {:<11} {:<16} {:>8} {:>12} {:>8} {:>8} {:>8} {:>8}",
                system,
                case,
                optional(queue, 1),
                optional(decode, 1),
                get("verify"),
                get("execute"),
                get("sign"),
                get("encode")
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
    use crate::report::{ratios, PointReport};
    use crate::stats::LatencySummary;

    fn run(ops: f64, p99: f64) -> RunRecord {
        let mut run = RunRecord {
            ops_per_s: Some(ops),
            goodput_bytes_per_s: Some(ops * 100.0),
            latency_us: Some(LatencySummary {
                p50: p99 / 2.0,
                p90: p99,
                p99,
                p999: p99,
            }),
            peak_rss_bytes: Some(64 << 20),
            ..RunRecord::default()
        };
        run.extra.insert("target_rate_per_s".into(), 5000.0);
        run
    }

    #[test]
    fn table_shows_rates_ratios_and_stages() {
        let mut report = crate::report::tests::sample_report();
        report.suite = "http".into();
        let mut axum = run(4000.0, 800.0);
        axum.extra.insert("axum_stage_sign_us".into(), 31.25);
        report.runs = vec![
            PointReport::from_runs("icn", "query-peak", vec![run(6000.0, 400.0)]),
            PointReport::from_runs("axum-tokio", "query-peak", vec![axum]),
            PointReport::from_runs("icn", "update-peak", vec![run(300.0, 90_000.0)]),
        ];
        report.ratios = ratios(&report.runs, &crate::http::RATIO_PAIRS);
        let text = render(&report);
        assert!(
            text.contains("query-peak       ok/s x1.50  p99 x0.50"),
            "{text}"
        );
        assert!(
            !text.contains("update-peak       ok/s"),
            "no baseline for updates: {text}"
        );
        assert!(text.contains("31.2") || text.contains("31.3"), "{text}");
        let icn = text.lines().find(|l| l.starts_with("icn ")).unwrap();
        assert!(icn.contains(" 6000 ") && icn.contains(" 64 "), "{icn}");
    }
}
