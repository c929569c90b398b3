use std::collections::{HashMap, HashSet};

use super::*;
use crate::metrics::{
    is_valid_label_name, is_valid_metric_name, LabelSpec, MetricsConfig, MetricsSchemaBuilder,
    ShardMetrics,
};
use crate::transport::NodeId;

/// One sample line, parsed back.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

#[derive(Debug, Default)]
struct Exposition {
    help: HashMap<String, String>,
    types: HashMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == wanted)
            .map(|s| s.value)
    }

    fn series_of(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }
}

/// A strict reader of the text format 0.0.4: enough to catch what Prometheus would reject.
fn parse_exposition(text: &str) -> Result<Exposition, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("text must end with a line feed".into());
    }
    let mut exposition = Exposition::default();
    let mut finished_families: HashSet<String> = HashSet::new();
    let mut current_family: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let (keyword, rest) = rest.split_once(' ').ok_or("bad comment")?;
            let (name, text) = rest.split_once(' ').ok_or("comment without text")?;
            if !is_valid_metric_name(name) {
                return Err(format!("bad name in comment: {name}"));
            }
            if current_family.as_deref() != Some(name) {
                if let Some(done) = current_family.take() {
                    finished_families.insert(done);
                }
                if finished_families.contains(name) {
                    return Err(format!("family {name} is not contiguous"));
                }
                current_family = Some(name.to_string());
            }
            let map = match keyword {
                "HELP" => &mut exposition.help,
                "TYPE" => {
                    if !["counter", "gauge", "summary", "histogram", "untyped"].contains(&text) {
                        return Err(format!("bad type {text}"));
                    }
                    if exposition
                        .samples
                        .iter()
                        .any(|s| family_of(&s.name, &exposition.types) == name)
                    {
                        return Err(format!("TYPE of {name} after its samples"));
                    }
                    &mut exposition.types
                }
                _ => return Err(format!("unknown comment {keyword}")),
            };
            if map.insert(name.to_string(), unescape_help(text)?).is_some() {
                return Err(format!("second {keyword} for {name}"));
            }
            continue;
        }
        let sample = parse_sample(line)?;
        let family = family_of(&sample.name, &exposition.types);
        if current_family.as_deref() != Some(family.as_str()) {
            return Err(format!("sample {} outside its family's group", sample.name));
        }
        exposition.samples.push(sample);
    }
    Ok(exposition)
}

/// A summary's `_sum`/`_count` lines belong to the summary's family.
fn family_of(name: &str, types: &HashMap<String, String>) -> String {
    for suffix in ["_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).map(String::as_str) == Some("summary") {
                return base.to_string();
            }
        }
    }
    name.to_string()
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("sample without value")?;
    let name = &line[..name_end];
    if !is_valid_metric_name(name) {
        return Err(format!("bad sample name {name}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(after_brace)?;
        labels = parsed;
        rest = after;
    }
    let value_text = rest.strip_prefix(' ').ok_or("no space before value")?;
    let value = value_text
        .parse::<f64>()
        .map_err(|_| format!("bad value {value_text}"))?;
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

type Labels = Vec<(String, String)>;

/// Parses `a="x",b="y"}`, returning the labels and the text after the brace.
fn parse_labels(mut text: &str) -> Result<(Labels, &str), String> {
    let mut labels: Labels = Vec::new();
    loop {
        if let Some(after) = text.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (name, after_name) = text.split_once("=\"").ok_or("label without =\"")?;
        if !is_valid_label_name(name) || labels.iter().any(|(n, _)| n == name) {
            return Err(format!("bad or repeated label name {name}"));
        }
        let (value, after_value) = read_label_value(after_name)?;
        labels.push((name.to_string(), value));
        text = after_value.strip_prefix(',').unwrap_or(after_value);
    }
}

fn read_label_value(text: &str) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[i + 1..])),
            '\\' => match chars.next().map(|(_, c)| c) {
                Some('\\') => value.push('\\'),
                Some('"') => value.push('"'),
                Some('n') => value.push('\n'),
                other => return Err(format!("bad escape {other:?}")),
            },
            '\n' => return Err("raw line feed in label value".into()),
            c => value.push(c),
        }
    }
    Err("unterminated label value".into())
}

fn unescape_help(text: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                other => return Err(format!("bad help escape {other:?}")),
            },
            (c, false) => out.push(c),
        }
    }
    Ok(out)
}

struct Fixture {
    schema: Arc<MetricsSchema>,
    requests: crate::metrics::CounterId,
    depth: crate::metrics::GaugeId,
    connections: crate::metrics::GaugeId,
    latency: crate::metrics::HistogramId,
    sent: crate::metrics::CounterId,
}

fn fixture(peer_series_max: usize) -> Fixture {
    let config = MetricsConfig {
        peer_series_max,
        ..Default::default()
    };
    let mut b = MetricsSchemaBuilder::new(config).unwrap();
    let route = Some(LabelSpec::bounded("route", 8));
    let help = "Requests served.\nPer route, with a \\ in the help.";
    let requests = b
        .counter("icn_test_requests_total", help, route, Aggregation::Sum)
        .unwrap();
    let queue = Some(LabelSpec::bounded("queue", 4));
    let depth = b
        .gauge(
            "icn_test_queue_depth",
            "Depth.",
            queue,
            Aggregation::PerShard,
        )
        .unwrap();
    let connections = b
        .gauge("icn_test_connections", "Open.", None, Aggregation::Sum)
        .unwrap();
    let route = Some(LabelSpec::bounded("route", 8));
    let latency = b
        .histogram("icn_test_latency_us", "Latency.", route, Aggregation::Sum)
        .unwrap();
    let peer = Some(LabelSpec::peer());
    let sent = b
        .counter("icn_test_sent_bytes_total", "Sent.", peer, Aggregation::Sum)
        .unwrap();
    Fixture {
        schema: b.build(),
        requests,
        depth,
        connections,
        latency,
        sent,
    }
}

#[test]
fn rendering_parses_back_with_escapes_intact() {
    let f = fixture(4);
    let shard = ShardMetrics::new(f.schema.clone(), 0);
    let odd = "a\"b\\c\nd";
    shard.counter_with(f.requests, odd).add(3);
    shard.counter_with(f.requests, "7").inc();
    shard.gauge_with(f.depth, "send").set(-2);
    shard.histogram_with(f.latency, "7").record(250);
    let collector = MetricsCollector::new(f.schema.clone(), 1);
    shard.publish(&collector).unwrap();
    let text = collector.render();
    let parsed = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));

    assert_eq!(parsed.types["icn_test_requests_total"], "counter");
    assert_eq!(parsed.types["icn_test_queue_depth"], "gauge");
    assert_eq!(parsed.types["icn_test_latency_us"], "summary");
    assert_eq!(
        parsed.help["icn_test_requests_total"],
        "Requests served.\nPer route, with a \\ in the help."
    );
    assert_eq!(
        parsed.value("icn_test_requests_total", &[("route", odd)]),
        Some(3.0)
    );
    assert_eq!(
        parsed.value("icn_test_requests_total", &[("route", "7")]),
        Some(1.0)
    );
    assert_eq!(
        parsed.value("icn_test_queue_depth", &[("queue", "send"), ("shard", "0")]),
        Some(-2.0)
    );
    assert_eq!(parsed.value("icn_test_connections", &[]), Some(0.0));
    for q in ["0.5", "0.9", "0.99", "0.999"] {
        let value = parsed
            .value("icn_test_latency_us", &[("route", "7"), ("quantile", q)])
            .unwrap();
        assert!((value - 250.0).abs() <= 2.5, "quantile {q} = {value}");
    }
    assert_eq!(
        parsed.value("icn_test_latency_us_sum", &[("route", "7")]),
        Some(250.0)
    );
    assert_eq!(
        parsed.value("icn_test_latency_us_count", &[("route", "7")]),
        Some(1.0)
    );
    assert!(
        parsed.series_of("icn_test_sent_bytes_total").is_empty(),
        "no peers yet, no series"
    );
    assert!(
        parsed.types.contains_key("icn_test_sent_bytes_total"),
        "family still declared"
    );
}

#[test]
fn the_parser_rejects_what_prometheus_rejects() {
    // Guards the guard: a parser that accepts anything would make the test above vacuous.
    assert!(
        parse_exposition("icn_a 1").is_err(),
        "missing final line feed"
    );
    assert!(parse_exposition("# TYPE icn_a counter\nicn_a{x=\"a\nb\"} 1\n").is_err());
    assert!(parse_exposition("# TYPE icn_a counter\nicn_a{x=\"a\\q\"} 1\n").is_err());
    assert!(parse_exposition("# TYPE icn_a counter\nicn_b 1\n").is_err());
    assert!(parse_exposition("# TYPE icn_a counter\nicn_a one\n").is_err());
    assert!(parse_exposition("# TYPE icn_a counter\nicn_a{x=\"1\",x=\"2\"} 1\n").is_err());
    let split = "# TYPE icn_a counter\nicn_a 1\n# TYPE icn_b gauge\nicn_b 1\n# HELP icn_a again\n";
    assert!(parse_exposition(split).is_err());
    assert!(parse_exposition("# TYPE icn_a counter\nicn_a{x=\"1\"} 1\n").is_ok());
}

#[test]
fn two_shards_merge_by_aggregation() {
    let f = fixture(4);
    let collector = MetricsCollector::new(f.schema.clone(), 2);
    let shards = [
        ShardMetrics::new(f.schema.clone(), 0),
        ShardMetrics::new(f.schema.clone(), 1),
    ];
    for (i, shard) in shards.iter().enumerate() {
        let n = i as u64 + 1;
        shard.counter_with(f.requests, "1").add(10 * n);
        shard.gauge(f.connections).set(5 * n as i64);
        shard.gauge_with(f.depth, "send").set(100 * n as i64);
        let latency = shard.histogram_with(f.latency, "1");
        for value in 1..=1000 {
            latency.record(value + 1000 * i as u64);
        }
        shard.publish(&collector).unwrap();
    }
    let text = collector.render();
    let parsed = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        parsed.value("icn_test_requests_total", &[("route", "1")]),
        Some(30.0)
    );
    assert_eq!(parsed.value("icn_test_connections", &[]), Some(15.0));
    assert_eq!(
        parsed.value("icn_test_queue_depth", &[("queue", "send"), ("shard", "0")]),
        Some(100.0)
    );
    assert_eq!(
        parsed.value("icn_test_queue_depth", &[("queue", "send"), ("shard", "1")]),
        Some(200.0)
    );
    assert_eq!(parsed.series_of("icn_test_queue_depth").len(), 2);
    assert_eq!(
        parsed.value("icn_test_latency_us_count", &[("route", "1")]),
        Some(2000.0)
    );
    let expected_sum = (1..=2000u64).sum::<u64>() as f64;
    assert_eq!(
        parsed.value("icn_test_latency_us_sum", &[("route", "1")]),
        Some(expected_sum)
    );

    // A later publish replaces the shard's earlier snapshot instead of adding to it.
    shards[0].counter_with(f.requests, "1").inc();
    shards[0].publish(&collector).unwrap();
    let parsed = parse_exposition(&collector.render()).unwrap();
    assert_eq!(
        parsed.value("icn_test_requests_total", &[("route", "1")]),
        Some(31.0)
    );
}

#[test]
fn merged_histogram_quantiles_are_within_the_configured_precision() {
    let f = fixture(4);
    let collector = MetricsCollector::new(f.schema.clone(), 2);
    // Shard 0 sees 1..=5000 us, shard 1 sees 5001..=10000 us: only the merge knows the true spread.
    for (i, range) in [(1u64..=5000), (5001..=10000)].into_iter().enumerate() {
        let shard = ShardMetrics::new(f.schema.clone(), i);
        let latency = shard.histogram_with(f.latency, "2");
        range.for_each(|value| latency.record(value));
        shard.publish(&collector).unwrap();
    }
    let parsed = parse_exposition(&collector.render()).unwrap();
    // Two significant digits: each reported value is within 1% of the exact quantile.
    for (q, exact) in [
        ("0.5", 5000.0),
        ("0.9", 9000.0),
        ("0.99", 9900.0),
        ("0.999", 9990.0),
    ] {
        let value = parsed
            .value("icn_test_latency_us", &[("route", "2"), ("quantile", q)])
            .unwrap();
        assert!(
            (value - exact).abs() <= exact * 0.01,
            "p{q}: {value} vs {exact}"
        );
    }
}

#[test]
fn empty_histograms_render_nan_quantiles_and_zero_count() {
    let mut b = MetricsSchemaBuilder::new(MetricsConfig::default()).unwrap();
    let h = b
        .histogram("icn_test_idle_us", "Idle.", None, Aggregation::Sum)
        .unwrap();
    let schema = b.build();
    let shard = ShardMetrics::new(schema.clone(), 0);
    let _ = shard.histogram(h);
    let collector = MetricsCollector::new(schema, 1);
    shard.publish(&collector).unwrap();
    let parsed = parse_exposition(&collector.render()).unwrap();
    assert!(parsed
        .value("icn_test_idle_us", &[("quantile", "0.99")])
        .unwrap()
        .is_nan());
    assert_eq!(parsed.value("icn_test_idle_us_count", &[]), Some(0.0));
}

#[test]
fn peer_cardinality_is_capped_across_shards() {
    let f = fixture(2);
    let collector = MetricsCollector::new(f.schema.clone(), 2);
    let peers: Vec<NodeId> = (1..=5).map(|i| NodeId([i; 32])).collect();
    // Registry churn: shard 0 saw an older registry (peers 1, 2), shard 1 a newer one (3, 4).
    // Each shard is within the cap of 2, but together they hold 4 peers.
    let plan: [(&[NodeId], &[NodeId]); 2] =
        [(&peers[0..2], &peers[0..3]), (&peers[2..4], &peers[2..5])];
    for (i, (registry, traffic)) in plan.into_iter().enumerate() {
        let shard = ShardMetrics::new(f.schema.clone(), i);
        shard.set_registry_peers(registry.iter().copied());
        for peer in traffic {
            shard.counter_for_peer(f.sent, peer).add(100);
        }
        shard.publish(&collector).unwrap();
    }
    let parsed = parse_exposition(&collector.render()).unwrap();
    let series = parsed.series_of("icn_test_sent_bytes_total");
    assert_eq!(series.len(), 3, "cap of 2 peers plus other: {series:?}");
    assert_eq!(
        parsed.value("icn_test_sent_bytes_total", &[("peer", &peers[0].to_hex())]),
        Some(100.0)
    );
    assert_eq!(
        parsed.value("icn_test_sent_bytes_total", &[("peer", &peers[1].to_hex())]),
        Some(100.0)
    );
    // Peer 3 (shard 0: not in its registry; shard 1: folded by the merge), 4 (folded), 5 (not in
    // shard 1's registry cut): nothing is lost.
    assert_eq!(
        parsed.value("icn_test_sent_bytes_total", &[("peer", "other")]),
        Some(400.0)
    );
    let total: f64 = series.iter().map(|s| s.value).sum();
    assert_eq!(total, 600.0);
}

#[test]
fn publish_refuses_foreign_snapshots_and_unknown_shards() {
    let f = fixture(2);
    let other = fixture(2);
    let collector = MetricsCollector::new(f.schema.clone(), 1);
    let foreign = ShardMetrics::new(other.schema, 0).snapshot();
    assert_eq!(
        collector.publish(foreign),
        Err(MetricsError::SchemaMismatch)
    );
    let far = ShardMetrics::new(f.schema.clone(), 5).snapshot();
    let expected = MetricsError::ShardOutOfRange {
        shard: 5,
        shard_count: 1,
    };
    assert_eq!(collector.publish(far), Err(expected));
}

#[test]
fn snapshots_cross_threads() {
    let f = fixture(2);
    let collector = Arc::new(MetricsCollector::new(f.schema.clone(), 2));
    let workers: Vec<_> = (0..2)
        .map(|i| {
            let (schema, collector, requests) = (f.schema.clone(), collector.clone(), f.requests);
            std::thread::spawn(move || {
                let shard = ShardMetrics::new(schema, i);
                shard.counter_with(requests, "9").add(21);
                shard.publish(&collector).unwrap();
            })
        })
        .collect();
    workers.into_iter().for_each(|w| w.join().unwrap());
    let parsed = parse_exposition(&collector.render()).unwrap();
    assert_eq!(
        parsed.value("icn_test_requests_total", &[("route", "9")]),
        Some(42.0)
    );
}
