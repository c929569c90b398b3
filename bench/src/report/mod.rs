//! The report of a suite run: the JSON object of BENCH.md, a text table, an SVG chart.

pub mod svg;
pub mod table;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::host::HostInfo;
use crate::stats::{median_index, LatencySummary};
use crate::transport::Measurement;

const BYTES_PER_GIB: f64 = (1u64 << 30) as f64;

/// One measured run, or the median of several. Fields that do not apply are `None` and left out.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RunRecord {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goodput_bytes_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<LatencySummary>,
    /// Latency of refused (429) answers, for suites that shed load (BENCH.md, `http`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reject_latency_us: Option<LatencySummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_s_per_gib: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
    pub errors: u64,
    /// Raw facts behind the rates: measured seconds, payload bytes, operations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, f64>,
}

impl RunRecord {
    pub fn from_measurement(measurement: &Measurement, peak_rss_bytes: u64) -> RunRecord {
        let seconds = measurement.elapsed.as_secs_f64();
        let per_second = |count: u64| (count > 0 && seconds > 0.0).then(|| count as f64 / seconds);
        let gib = measurement.bytes as f64 / BYTES_PER_GIB;
        RunRecord {
            goodput_bytes_per_s: per_second(measurement.bytes),
            ops_per_s: per_second(measurement.ops),
            latency_us: measurement
                .latency
                .as_ref()
                .and_then(|latency| latency.summary()),
            reject_latency_us: None,
            cpu_s_per_gib: measurement
                .cpu
                .filter(|_| measurement.bytes > 0)
                .map(|cpu| cpu.as_secs_f64() / gib),
            peak_rss_bytes: Some(peak_rss_bytes),
            errors: measurement.errors,
            duration_s: Some(seconds),
            bytes: Some(measurement.bytes),
            ops: Some(measurement.ops),
            first_error: measurement.first_error.clone(),
            extra: measurement.extra.clone(),
        }
    }

    /// A run that could not even start: one error, no figures.
    pub fn failed(error: String) -> RunRecord {
        RunRecord {
            errors: 1,
            first_error: Some(error),
            ..RunRecord::default()
        }
    }

    /// Short form for progress lines.
    pub fn one_line(&self) -> String {
        let mut parts = Vec::new();
        if let Some(goodput) = self.goodput_bytes_per_s {
            parts.push(format!("{:.2} Gbit/s", goodput * 8e-9));
        }
        if let Some(ops) = self.ops_per_s {
            parts.push(format!("{ops:.0} ops/s"));
        }
        if let Some(latency) = self.latency_us {
            parts.push(format!("p99 {:.1} us", latency.p99));
        }
        if let Some(cpu) = self.cpu_s_per_gib {
            parts.push(format!("{cpu:.2} CPU-s/GiB"));
        }
        parts.push(format!("{} errors", self.errors));
        if let Some(error) = &self.first_error {
            parts.push(format!("first error: {error}"));
        }
        parts.join(", ")
    }
}

/// One (system, case) point: the median run's figures, plus every raw run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PointReport {
    pub system: String,
    pub case: String,
    #[serde(flatten)]
    pub median: RunRecord,
    pub repetitions: usize,
    pub raw: Vec<RunRecord>,
}

impl PointReport {
    /// The median is the run with the median goodput (so its figures belong together), with
    /// `errors` summed over all runs so a failing repetition is never hidden behind a good one.
    pub fn from_runs(system: &str, case: &str, raw: Vec<RunRecord>) -> PointReport {
        let goodputs: Vec<f64> = raw
            .iter()
            .map(|run| run.goodput_bytes_per_s.unwrap_or(0.0))
            .collect();
        let mut median = median_index(&goodputs)
            .map(|i| raw[i].clone())
            .unwrap_or_default();
        median.errors = raw.iter().map(|run| run.errors).sum();
        if median.first_error.is_none() {
            median.first_error = raw.iter().find_map(|run| run.first_error.clone());
        }
        PointReport {
            system: system.to_string(),
            case: case.to_string(),
            median,
            repetitions: raw.len(),
            raw,
        }
    }
}

/// A system's figure divided by a baseline's, for the same case in the same invocation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ratio {
    pub case: String,
    pub system: String,
    pub baseline: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goodput_ratio: Option<f64>,
    /// Operations per second (for `http`: 2xx answers per second).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_per_gib_ratio: Option<f64>,
}

/// Ratios for every listed (system, baseline) pair that both ran the same case.
pub fn ratios(points: &[PointReport], pairs: &[(&str, &str)]) -> Vec<Ratio> {
    let find = |system: &str, case: &str| {
        points
            .iter()
            .find(|p| p.system == system && p.case == case)
            .map(|p| &p.median)
    };
    let divide = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let mut cases: Vec<&str> = Vec::new();
    for point in points {
        if !cases.contains(&point.case.as_str()) {
            cases.push(&point.case);
        }
    }
    let mut out = Vec::new();
    for case in cases {
        for &(system, baseline) in pairs {
            let (Some(a), Some(b)) = (find(system, case), find(baseline, case)) else {
                continue;
            };
            let ratio = Ratio {
                case: case.to_string(),
                system: system.to_string(),
                baseline: baseline.to_string(),
                goodput_ratio: divide(a.goodput_bytes_per_s, b.goodput_bytes_per_s),
                ops_ratio: divide(a.ops_per_s, b.ops_per_s),
                p99_ratio: divide(a.latency_us.map(|l| l.p99), b.latency_us.map(|l| l.p99)),
                cpu_per_gib_ratio: divide(a.cpu_s_per_gib, b.cpu_s_per_gib),
            };
            if ratio.goodput_ratio.is_some() || ratio.p99_ratio.is_some() {
                out.push(ratio);
            }
        }
    }
    out
}

/// The whole JSON object of one suite run (BENCH.md's output contract).
#[derive(Clone, Debug, Serialize)]
pub struct SuiteReport {
    pub suite: String,
    pub quick: bool,
    /// When the run started, UTC, `yyyymmddThhmmss` (also in the file name).
    pub started_utc: String,
    pub host: HostInfo,
    pub config: Value,
    pub runs: Vec<PointReport>,
    pub ratios: Vec<Ratio>,
}

impl SuiteReport {
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("report serializes: maps have string keys")
    }

    /// Writes `<suite>-<stamp>.json` and `.svg` into `dir`; returns both paths.
    pub fn write_files(&self, dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        let stem = format!("{}-{}", self.suite, self.started_utc);
        let json_path = dir.join(format!("{stem}.json"));
        let svg_path = dir.join(format!("{stem}.svg"));
        let pretty = serde_json::to_string_pretty(self).expect("report serializes");
        std::fs::write(&json_path, pretty + "\n")?;
        std::fs::write(&svg_path, svg::chart(self))?;
        Ok((json_path, svg_path))
    }
}

/// `yyyymmddThhmmss` for seconds since the Unix epoch (UTC, proleptic Gregorian calendar).
pub fn utc_stamp(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let second_of_day = unix_seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::stats::LatencyRecorder;

    pub(crate) fn measurement(bytes: u64, ops: u64, with_latency: bool) -> Measurement {
        let mut latency = LatencyRecorder::new();
        for micros in [10, 20, 30] {
            latency.record(Duration::from_micros(micros));
        }
        Measurement {
            elapsed: Duration::from_secs(2),
            bytes,
            ops,
            latency: with_latency.then_some(latency),
            cpu: Some(Duration::from_secs(1)),
            errors: 0,
            first_error: None,
            extra: BTreeMap::new(),
        }
    }

    pub(crate) fn sample_report() -> SuiteReport {
        let rpc = RunRecord::from_measurement(&measurement(1 << 30, 1000, true), 10 << 20);
        let ceiling = RunRecord::from_measurement(&measurement(4 << 30, 100, false), 10 << 20);
        SuiteReport {
            suite: "transport".into(),
            quick: true,
            started_utc: utc_stamp(0),
            host: HostInfo {
                cpu: "Test CPU".into(),
                cores: 2,
                kernel: "6.0".into(),
                memlock_bytes: Some(8 << 20),
            },
            config: serde_json::json!({"build": "test"}),
            runs: vec![
                PointReport::from_runs("plain-tcp", "rpc-1KiB-x1", vec![rpc]),
                PointReport::from_runs("crypto-ceiling", "bulk-1MiB", vec![ceiling]),
            ],
            ratios: vec![],
        }
    }

    #[test]
    fn json_has_the_contract_fields() {
        let report = sample_report();
        let value: Value = serde_json::from_str(&report.to_json_line()).unwrap();
        assert_eq!(value["suite"], "transport");
        assert_eq!(value["quick"], true);
        for key in ["cpu", "cores", "kernel", "memlock_bytes"] {
            assert!(value["host"].get(key).is_some(), "host.{key} missing");
        }
        assert!(value["config"].is_object());
        let run = &value["runs"][0];
        assert_eq!(
            (run["system"].as_str(), run["case"].as_str()),
            (Some("plain-tcp"), Some("rpc-1KiB-x1"))
        );
        for key in [
            "goodput_bytes_per_s",
            "ops_per_s",
            "cpu_s_per_gib",
            "peak_rss_bytes",
            "errors",
        ] {
            assert!(run[key].is_number(), "runs[0].{key} missing");
        }
        for key in ["p50", "p90", "p99", "p999"] {
            assert!(
                run["latency_us"][key].is_number(),
                "latency_us.{key} missing"
            );
        }
        assert_eq!(
            run["goodput_bytes_per_s"].as_f64(),
            Some((1u64 << 29) as f64)
        );
        assert_eq!(run["cpu_s_per_gib"].as_f64(), Some(1.0));
        assert_eq!(run["raw"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn fields_that_do_not_apply_are_left_out() {
        let report = sample_report();
        let value: Value = serde_json::from_str(&report.to_json_line()).unwrap();
        let ceiling = &value["runs"][1];
        assert!(
            ceiling.get("latency_us").is_none(),
            "no latency was measured"
        );
        assert!(ceiling.get("first_error").is_none());
        let failed: Value = serde_json::to_value(RunRecord::failed("refused".into())).unwrap();
        assert_eq!(failed["errors"], 1);
        for key in [
            "goodput_bytes_per_s",
            "ops_per_s",
            "latency_us",
            "cpu_s_per_gib",
        ] {
            assert!(failed.get(key).is_none(), "{key} made up for a failed run");
        }
        let idle = RunRecord::from_measurement(&measurement(0, 0, false), 1);
        assert_eq!((idle.goodput_bytes_per_s, idle.cpu_s_per_gib), (None, None));
    }

    #[test]
    fn median_run_is_reported_and_errors_are_summed() {
        let mut runs: Vec<RunRecord> = [3u64, 1, 2]
            .iter()
            .map(|&gib| RunRecord::from_measurement(&measurement(gib << 30, 1, false), 1))
            .collect();
        runs[1].errors = 4;
        let point = PointReport::from_runs("s", "c", runs);
        assert_eq!(point.median.bytes, Some(2 << 30));
        assert_eq!(point.median.errors, 4);
        assert_eq!(point.repetitions, 3);
    }

    #[test]
    fn ratios_pair_systems_with_baselines() {
        let fast = RunRecord::from_measurement(&measurement(4 << 30, 10, true), 1);
        let slow = RunRecord::from_measurement(&measurement(2 << 30, 10, true), 1);
        let points = vec![
            PointReport::from_runs("icn-tcp-tls", "bulk-1MiB", vec![slow]),
            PointReport::from_runs("plain-tcp", "bulk-1MiB", vec![fast]),
        ];
        let found = ratios(
            &points,
            &[("icn-tcp-tls", "plain-tcp"), ("icn-quic", "quinn-tokio")],
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].goodput_ratio, Some(0.5));
        assert_eq!(found[0].p99_ratio, Some(1.0));
        assert_eq!(found[0].cpu_per_gib_ratio, Some(2.0));
    }

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101T000000");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000");
        assert_eq!(utc_stamp(1_795_568_645), "20261125T010405");
    }

    #[test]
    fn files_are_written_beside_each_other() {
        let dir = std::env::temp_dir().join(format!("icn-bench-report-{}", std::process::id()));
        let (json, svg) = sample_report().write_files(&dir).unwrap();
        assert!(json.ends_with("transport-19700101T000000.json"));
        let text = std::fs::read_to_string(&json).unwrap();
        assert!(serde_json::from_str::<Value>(&text).is_ok());
        assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
