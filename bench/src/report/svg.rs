//! A hand-written SVG bar chart: goodput and p99 latency per system, grouped by case.
//!
//! Cases differ by orders of magnitude (GB/s bulk against KB/s RPC), so each case group has its
//! own scale; every bar carries its value, and the comparison that matters is within a group.

use std::fmt::Write;

use super::{PointReport, SuiteReport};
use crate::transport::report_order;

const WIDTH: f64 = 960.0;
const PANEL_HEIGHT: f64 = 300.0;
const MARGIN: f64 = 50.0;
const LEGEND_HEIGHT: f64 = 30.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

struct Panel<'a> {
    title: &'a str,
    unit: &'a str,
    value: fn(&PointReport) -> Option<f64>,
}

/// The chart for a suite report.
pub fn chart(report: &SuiteReport) -> String {
    let systems = systems_in_order(&report.runs);
    let cases = cases_in_order(&report.runs);
    let panels = [
        Panel {
            title: "goodput",
            unit: "Gbit/s",
            value: |p| p.median.goodput_bytes_per_s.map(|b| b * 8e-9),
        },
        Panel {
            title: "p99 latency",
            unit: "us",
            value: |p| p.median.latency_us.map(|l| l.p99),
        },
    ];
    let height = MARGIN + LEGEND_HEIGHT + panels.len() as f64 * (PANEL_HEIGHT + MARGIN);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let title = format!(
        "icn-bench {} ({}) {} - {} cores - {}",
        report.suite,
        if report.quick { "quick" } else { "full" },
        report.started_utc,
        report.host.cores,
        report.host.cpu
    );
    let _ = writeln!(
        svg,
        r#"<text x="{MARGIN}" y="20" font-size="14">{}</text>"#,
        escape(&title)
    );
    legend(&mut svg, &systems);
    for (index, panel) in panels.iter().enumerate() {
        let top = MARGIN + LEGEND_HEIGHT + index as f64 * (PANEL_HEIGHT + MARGIN);
        draw_panel(&mut svg, panel, top, &report.runs, &systems, &cases);
    }
    svg.push_str("</svg>\n");
    svg
}

fn systems_in_order(points: &[PointReport]) -> Vec<String> {
    let mut systems: Vec<String> = Vec::new();
    for point in points {
        if !systems.contains(&point.system) {
            systems.push(point.system.clone());
        }
    }
    systems.sort_by_key(|name| report_order(name));
    systems
}

fn cases_in_order(points: &[PointReport]) -> Vec<String> {
    let mut cases: Vec<String> = Vec::new();
    for point in points {
        if !cases.contains(&point.case) {
            cases.push(point.case.clone());
        }
    }
    cases
}

fn legend(svg: &mut String, systems: &[String]) {
    for (index, system) in systems.iter().enumerate() {
        let x = MARGIN + index as f64 * 140.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="32" width="12" height="12" fill="{}"/><text x="{}" y="42">{}</text>"#,
            COLORS[index % COLORS.len()],
            x + 16.0,
            escape(system)
        );
    }
}

fn draw_panel(
    svg: &mut String,
    panel: &Panel,
    top: f64,
    points: &[PointReport],
    systems: &[String],
    cases: &[String],
) {
    let bottom = top + PANEL_HEIGHT;
    let _ = writeln!(
        svg,
        r#"<text x="{MARGIN}" y="{}" font-size="13">{} ({}, each case on its own scale)</text>"#,
        top - 8.0,
        escape(panel.title),
        escape(panel.unit)
    );
    let _ = writeln!(
        svg,
        r##"<line x1="{MARGIN}" y1="{bottom}" x2="{}" y2="{bottom}" stroke="#333"/>"##,
        WIDTH - MARGIN
    );
    let group_width = (WIDTH - 2.0 * MARGIN) / cases.len().max(1) as f64;
    let bar_width = (group_width * 0.8) / systems.len().max(1) as f64;
    for (case_index, case) in cases.iter().enumerate() {
        let group_left = MARGIN + case_index as f64 * group_width + group_width * 0.1;
        let values: Vec<Option<f64>> = systems
            .iter()
            .map(|system| {
                points
                    .iter()
                    .find(|p| &p.case == case && &p.system == system)
                    .and_then(panel.value)
            })
            .collect();
        let max = values.iter().flatten().cloned().fold(0.0f64, f64::max);
        for (system_index, value) in values.iter().enumerate() {
            let Some(value) = value else { continue };
            let bar_height = if max > 0.0 {
                value / max * (PANEL_HEIGHT - 20.0)
            } else {
                0.0
            };
            let x = group_left + system_index as f64 * bar_width;
            let y = bottom - bar_height;
            let _ = writeln!(
                svg,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{bar_height:.1}" fill="{}"><title>{} {}: {} {}</title></rect>"#,
                bar_width * 0.9,
                COLORS[system_index % COLORS.len()],
                escape(&systems[system_index]),
                escape(case),
                format_value(*value),
                escape(panel.unit)
            );
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                x + bar_width * 0.45,
                y - 3.0,
                format_value(*value)
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            group_left + group_width * 0.4,
            bottom + 16.0,
            escape(case)
        );
    }
}

fn format_value(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_report;

    #[test]
    fn chart_is_well_formed_and_has_a_bar_per_value() {
        let mut report = sample_report();
        report.host.cpu = "A<B & \"C\"".into();
        let svg = chart(&report);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("A&lt;B &amp; &quot;C&quot;"));
        // Goodput: 2 bars (both points); p99: 1 bar (the ceiling has no latency); 2 legend boxes.
        let bars = svg.matches("<rect x=").count();
        assert_eq!(bars, 2 + 2 + 1);
        assert_eq!(svg.matches("<title>").count(), 3);
        assert_eq!(svg.matches("<svg").count(), svg.matches("</svg>").count());
    }
}
