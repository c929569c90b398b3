use std::path::{Path, PathBuf};

use super::*;

const KNOBS_BEGIN: &str = "<!-- knobs:begin -->\n";
const KNOBS_END: &str = "<!-- knobs:end -->";

/// A path relative to this crate's folder.
fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A path relative to the workspace root.
fn workspace_path(relative: &str) -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir
        .parent()
        .expect("crate sits in the workspace")
        .join(relative)
}

fn bless_requested() -> bool {
    std::env::var("ICN_BLESS").is_ok_and(|value| value == "1")
}

fn messages(errors: &[TuningError]) -> Vec<String> {
    errors.iter().map(ToString::to_string).collect()
}

/// Parses `text`, expects exactly one error, and returns its message.
fn single_error(text: &str) -> (TuningError, String) {
    let errors = Tuning::from_toml_str(text).expect_err("should be rejected");
    assert_eq!(errors.len(), 1, "{:?}", messages(&errors));
    let message = errors[0].to_string();
    (errors[0].clone(), message)
}

#[test]
fn defaults_validate() {
    assert_eq!(Tuning::default().validate(), Ok(()));
}

#[test]
fn defaults_are_the_named_constants() {
    let tuning = Tuning::default();
    assert_eq!(tuning.quic.idle_timeout_ms, QUIC_IDLE_TIMEOUT_MS_DEFAULT);
    assert_eq!(tuning.udp.udp_payload_bytes_max, 1452);
    assert_eq!(tuning.engine.io_memory_bytes, 512 * KIB);
    assert_eq!(tuning.rpc.message_bytes_max, 128 * MIB);
    assert!(tuning.rpc.message_bytes_max >= 100_000_000);
    for (meta, value) in tuning.knob_values() {
        assert_eq!(value, (meta.default)(), "{}", meta.knob);
    }
}

#[test]
fn out_of_range_in_struct_names_knob_range_and_value() {
    let mut tuning = Tuning::default();
    tuning.quic.idle_timeout_ms = 10;
    tuning.metrics.histogram_significant_digits = 6;
    let errors = tuning.validate().expect_err("out of range");
    let messages = messages(&errors);
    assert!(
        messages.contains(
            &"quic.idle_timeout_ms = 10 is outside the allowed range 1000..=600000".into()
        ),
        "{messages:?}"
    );
    assert!(
        messages.contains(
            &"metrics.histogram_significant_digits = 6 is outside the allowed range 1..=5".into()
        ),
        "{messages:?}"
    );
}

#[test]
fn out_of_range_in_toml_names_knob_range_and_value() {
    let (error, message) = single_error("[udp]\nudp_payload_bytes_max = 1500\n");
    assert_eq!(
        message,
        "udp.udp_payload_bytes_max = 1500 is outside the allowed range 1200..=1472"
    );
    assert!(matches!(
        error,
        TuningError::OutOfRange {
            knob: "udp.udp_payload_bytes_max",
            value: 1500,
            ..
        }
    ));
    let (_, message) = single_error("[engine]\nbuffers_max = -3\n");
    assert_eq!(
        message,
        "engine.buffers_max = -3 is outside the allowed range 16..=1048576"
    );
}

#[test]
fn keep_alive_must_be_below_idle_timeout() {
    let (error, message) =
        single_error("[quic]\nidle_timeout_ms = 2000\nkeep_alive_interval_ms = 2000\n");
    assert!(matches!(
        error,
        TuningError::Conflict {
            knob: "quic.keep_alive_interval_ms",
            other: "quic.idle_timeout_ms",
            ..
        }
    ));
    assert!(
        message.starts_with(
            "quic.keep_alive_interval_ms = 2000 must be less than quic.idle_timeout_ms = 2000"
        ),
        "{message}"
    );
}

#[test]
fn connection_window_must_cover_stream_window() {
    let (_, message) = single_error("[quic]\nstream_window_bytes = 33554432\n");
    assert!(
        message.starts_with(
            "quic.connection_window_bytes = 16777216 must be at least quic.stream_window_bytes = 33554432"
        ),
        "{message}"
    );
}

#[test]
fn backoff_max_must_cover_initial() {
    let (_, message) = single_error("[tcp]\nreconnect_backoff_initial_ms = 10000\n");
    assert!(
        message.starts_with("tcp.reconnect_backoff_max_ms = 5000 must be at least tcp.reconnect_backoff_initial_ms = 10000"),
        "{message}"
    );
}

#[test]
fn requests_in_flight_must_fit_streams() {
    let (_, message) = single_error("[rpc]\nrequests_in_flight_max = 2000\n");
    assert!(
        message.starts_with(
            "rpc.requests_in_flight_max = 2000 must be at most quic.bidi_streams_max = 1000"
        ),
        "{message}"
    );
}

#[test]
fn buffer_pool_over_cap_is_refused() {
    let (error, message) = single_error("[engine]\nbuffer_bytes = 1048576\nbuffers_max = 2048\n");
    assert!(matches!(
        error,
        TuningError::OverCap {
            what: "buffer pool",
            value_bytes: 2147483648,
            ..
        }
    ));
    assert!(
        message.contains("engine.buffers_max × engine.buffer_bytes"),
        "{message}"
    );
    assert!(message.contains("cap of 1073741824 bytes"), "{message}");
}

#[test]
fn gso_send_over_64k_is_refused_only_with_gso() {
    let (_, message) = single_error("[udp]\nsend_batch_datagrams_max = 64\n");
    assert!(message.starts_with("GSO send = 92928 bytes"), "{message}");
    let tuning =
        Tuning::from_toml_str("[udp]\nsend_batch_datagrams_max = 64\ngso_enabled = false\n");
    assert!(tuning.is_ok(), "{tuning:?}");
}

#[test]
fn histogram_size_follows_hdrhistogram_layout() {
    let mut metrics = MetricsTuning::default();
    assert_eq!(metrics.histogram_bytes(), 17 * 1024 * 8);
    // A coarser low end (8 µs = 2^3) needs three buckets fewer: 14 instead of 17.
    metrics.histogram_lowest_us = 8;
    assert_eq!(metrics.histogram_bytes(), 14 * 1024 * 8);
    assert_eq!(
        metrics.histogram_bytes() as usize,
        hdrhistogram::Histogram::<u64>::new_with_bounds(8, metrics.latency_max_us, 3)
            .unwrap()
            .distinct_values()
            * 8
    );
    metrics.histogram_lowest_us = 1;
    metrics.histogram_significant_digits = 5;
    assert_eq!(metrics.histogram_bytes(), 10 << 20);
    let tuning = Tuning {
        metrics,
        ..Tuning::default()
    };
    let errors = tuning.validate().expect_err("over the histogram cap");
    assert!(
        matches!(
            errors[..],
            [TuningError::OverCap {
                what: "latency histogram",
                ..
            }]
        ),
        "{errors:?}"
    );
}

#[test]
fn unknown_key_names_the_key() {
    let (error, message) = single_error("[quic]\nidle_timeout = 5000\n");
    assert!(matches!(&error, TuningError::UnknownKey { key, .. } if key == "quic.idle_timeout"));
    assert!(
        message.starts_with("unknown key `quic.idle_timeout`"),
        "{message}"
    );
    assert!(
        message.contains("idle_timeout_ms"),
        "known keys listed: {message}"
    );
    let (_, message) = single_error("[quik]\nidle_timeout_ms = 5000\n");
    assert!(message.starts_with("unknown key `quik`"), "{message}");
    let (_, message) = single_error("storage = 4\n");
    assert!(
        message.starts_with("unknown key `storage` (known keys here: engine, udp, quic"),
        "{message}"
    );
}

#[test]
fn structs_deny_unknown_fields_without_the_table_check() {
    let error =
        toml::from_str::<Tuning>("[quic]\nidle_timeout = 5000\n").expect_err("unknown field");
    assert!(error.to_string().contains("idle_timeout"), "{error}");
}

#[test]
fn wrong_type_names_the_knob() {
    let (error, message) = single_error("[quic]\nidle_timeout_ms = \"10s\"\n");
    assert!(matches!(
        error,
        TuningError::WrongType {
            knob: "quic.idle_timeout_ms",
            ..
        }
    ));
    assert_eq!(
        message,
        "quic.idle_timeout_ms has the wrong type: expected an integer, found a string"
    );
    let (_, message) = single_error("[udp]\ngso_enabled = 1\n");
    assert_eq!(
        message,
        "udp.gso_enabled has the wrong type: expected a boolean, found an integer"
    );
    let (_, message) = single_error("quic = 5\n");
    assert_eq!(
        message,
        "quic has the wrong type: expected a table, found an integer"
    );
}

#[test]
fn unknown_enum_value_lists_the_allowed_ones() {
    let (_, message) = single_error("[quic]\ncongestion_control = \"vegas\"\n");
    assert_eq!(
        message,
        "quic.congestion_control = \"vegas\" is not one of the allowed values cubic | reno | bbr2"
    );
    let tuning =
        Tuning::from_toml_str("[quic]\ncongestion_control = \"bbr2\"\n").expect("bbr2 is known");
    assert_eq!(tuning.quic.congestion_control, CongestionControl::Bbr2);
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = "[quic]\nidle_timeout = 1\nhandshake_timeout_ms = 1\n[udp]\ngro_enabled = \"yes\"\n";
    let errors = Tuning::from_toml_str(text).expect_err("three problems");
    assert_eq!(errors.len(), 3, "{:?}", messages(&errors));
    let mut tuning = Tuning::default();
    tuning.quic.keep_alive_interval_ms = 20_000;
    tuning.tcp.keep_alive_interval_ms = 20_000;
    tuning.rpc.message_bytes_max = 0;
    // The range of rpc.message_bytes_max, and the three rules that a state-sync chunk, a
    // manifest piece and an ingress fetch answer fit in one message, besides the two
    // keep-alive rules.
    assert_eq!(tuning.validate().expect_err("six problems").len(), 6);
}

#[test]
fn rules_are_checked_beside_single_knob_errors() {
    let text = "[quic]\ncongestion_control = \"vegas\"\nkeep_alive_interval_ms = 50000\n";
    let errors = Tuning::from_toml_str(text).expect_err("two problems");
    let messages = messages(&errors);
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(
        messages[1].starts_with("quic.keep_alive_interval_ms = 50000 must be less than"),
        "{messages:?}"
    );
}

#[test]
fn rules_over_a_rejected_knob_are_not_reported() {
    // The rule would compare 2000 with the default 1000 standing in for the rejected value.
    let text = "[quic]\nbidi_streams_max = \"many\"\n[rpc]\nrequests_in_flight_max = 2000\n";
    let (error, _) = single_error(text);
    assert!(matches!(
        error,
        TuningError::WrongType {
            knob: "quic.bidi_streams_max",
            ..
        }
    ));
}

#[test]
fn syntax_errors_say_where() {
    let (error, message) = single_error("[quic\nidle_timeout_ms = 5000\n");
    assert!(matches!(error, TuningError::Syntax { .. }));
    assert!(message.contains("line 1"), "{message}");
}

#[test]
fn toml_round_trip() {
    let mut tuning = Tuning::default();
    tuning.engine.shard_count = 3;
    tuning.udp.gso_enabled = false;
    tuning.quic.congestion_control = CongestionControl::Reno;
    tuning.metrics.latency_max_us = 9_000_000;
    let text = tuning.to_toml_string();
    assert_eq!(Tuning::from_toml_str(&text), Ok(tuning));
    assert!(
        text.contains("[quic]\n") && text.contains("congestion_control = \"reno\"\n"),
        "{text}"
    );
    // serde's derived form agrees with the hand-rendered one.
    let serde_text = toml::to_string(&tuning).expect("serializable");
    assert_eq!(Tuning::from_toml_str(&serde_text), Ok(tuning));
}

#[test]
fn empty_profile_is_the_default() {
    assert_eq!(Tuning::from_toml_str(""), Ok(Tuning::default()));
}

#[test]
fn default_profile_is_the_compiled_default() {
    let path = repo_path("profiles/default.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    assert_fresh(&path, &text, &default_profile_toml());
    let text = std::fs::read_to_string(&path).expect("default.toml readable");
    assert_eq!(Tuning::from_toml_str(&text), Ok(Tuning::default()));
    let table: toml::Table = text.parse().expect("default.toml parses");
    for meta in Tuning::knobs() {
        let written = table
            .get(meta.section)
            .and_then(|section| section.get(meta.name));
        assert_eq!(
            written.map(ToString::to_string),
            Some((meta.default)().to_string()),
            "{}",
            meta.knob
        );
    }
}

#[test]
fn lan_and_wan_profiles_validate_and_lean_the_right_way() {
    let default = Tuning::default();
    let lan =
        Tuning::load(repo_path("profiles/lan.toml")).unwrap_or_else(|error| panic!("{error}"));
    let wan =
        Tuning::load(repo_path("profiles/wan.toml")).unwrap_or_else(|error| panic!("{error}"));
    assert!(lan.quic.idle_timeout_ms < default.quic.idle_timeout_ms);
    assert!(lan.quic.handshake_timeout_ms < default.quic.handshake_timeout_ms);
    assert!(lan.quic.initial_rtt_ms < default.quic.initial_rtt_ms);
    assert!(wan.quic.stream_window_bytes > default.quic.stream_window_bytes);
    assert!(wan.quic.connection_window_bytes > default.quic.connection_window_bytes);
    assert!(wan.quic.idle_timeout_ms > default.quic.idle_timeout_ms);
    assert!(wan.rpc.request_timeout_ms > default.rpc.request_timeout_ms);
}

#[test]
fn every_profile_in_the_folder_validates() {
    let entries = std::fs::read_dir(repo_path("profiles")).expect("profiles folder");
    let mut checked = 0;
    for entry in entries {
        let path = entry.expect("entry").path();
        if path
            .extension()
            .is_some_and(|extension| extension == "toml")
        {
            Tuning::load(&path).unwrap_or_else(|error| panic!("{error}"));
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "expected default, lan and wan; found {checked}"
    );
}

#[test]
fn knob_names_state_their_unit() {
    for meta in Tuning::knobs() {
        match meta.allowed {
            Allowed::Range { .. } => {
                assert!(
                    unit_of_name(meta.name).is_some(),
                    "{} lacks a unit suffix",
                    meta.knob
                )
            }
            Allowed::AnyBool | Allowed::OneOf(_) => {}
            Allowed::Missing => panic!("{} has no declared range", meta.knob),
        }
        assert!(meta.unit().is_some(), "{}", meta.knob);
    }
}

#[test]
fn knob_metadata_is_complete_and_unique() {
    let mut names: Vec<&str> = Tuning::knobs().map(|meta| meta.knob).collect();
    let count = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), count, "duplicate knob names");
    for meta in Tuning::knobs() {
        assert_eq!(meta.knob, format!("{}.{}", meta.section, meta.name));
        assert!(
            meta.doc_text().len() >= 30,
            "{} needs a real doc line",
            meta.knob
        );
        assert!(
            meta.default_const.ends_with("_DEFAULT"),
            "{}",
            meta.default_const
        );
    }
    for section in SECTIONS {
        assert!(
            !section.doc_text().is_empty(),
            "section {} needs a doc",
            section.name
        );
    }
}

#[test]
fn rules_name_integer_knobs() {
    let tuning = Tuning::default();
    for rule in CROSS_RULES {
        for knob in [rule.knob, rule.other] {
            assert!(
                matches!(tuning.value_of(knob), Some(KnobValue::Integer(_))),
                "rule names {knob}"
            );
        }
    }
}

#[test]
fn load_errors_name_the_path() {
    let path = repo_path("profiles/no-such-profile.toml");
    let error = Tuning::load(&path).expect_err("missing file");
    let message = error.to_string();
    assert!(message.contains("no-such-profile.toml"), "{message}");
    assert!(matches!(error.errors[..], [TuningError::Io { .. }]));
}

#[test]
fn check_file_summarises_or_lists_every_error() {
    let summary = check_file(repo_path("profiles/wan.toml")).expect("wan is valid");
    assert!(summary.contains("wan.toml: valid"), "{summary}");
    assert!(summary.contains("quic.stream_window_bytes = "), "{summary}");
    assert!(summary.contains("buffer pool: "), "{summary}");

    let path = std::env::temp_dir().join(format!("icn-tuning-check-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "[quic]\nidle_timeout = 1\n[rpc]\nmessage_bytes_max = 1\n",
    )
    .expect("temp file");
    let report = check_file(&path).expect_err("two problems");
    std::fs::remove_file(&path).expect("temp file removed");
    assert!(report.contains("2 problems"), "{report}");
    assert!(
        report.contains("unknown key `quic.idle_timeout`"),
        "{report}"
    );
    assert!(
        report.contains("rpc.message_bytes_max = 1 is outside"),
        "{report}"
    );
    assert!(report.contains(&path.display().to_string()), "{report}");
}

#[test]
fn reference_lists_every_knob() {
    let reference = reference_markdown();
    for meta in Tuning::knobs() {
        assert!(
            reference.contains(&format!("| `{}` |", meta.knob)),
            "{}",
            meta.knob
        );
    }
    assert!(reference.contains("| `udp.udp_payload_bytes_max` | `1452` | 1200..=1472 | bytes |"));
}

#[test]
fn operations_doc_reference_is_fresh() {
    let path = workspace_path("docs/operations.md");
    let doc = std::fs::read_to_string(&path).expect("docs/operations.md readable");
    let begin = doc.find(KNOBS_BEGIN).expect("knobs:begin marker") + KNOBS_BEGIN.len();
    let end = doc.find(KNOBS_END).expect("knobs:end marker");
    assert!(begin <= end, "markers out of order");
    let expected = format!("{}{}{}", &doc[..begin], reference_markdown(), &doc[end..]);
    assert_fresh(&path, &doc, &expected);
}

/// Fails when a generated file is stale; rewrites it instead when `ICN_BLESS=1`.
fn assert_fresh(path: &Path, actual: &str, expected: &str) {
    if actual == expected {
        return;
    }
    if bless_requested() {
        std::fs::write(path, expected).expect("rewrite generated file");
        return;
    }
    panic!(
        "{} is stale (generated from tuning/src/sections.rs); run `ICN_BLESS=1 cargo test -p icn-tuning` to rewrite it",
        path.display()
    );
}

#[test]
fn human_bytes_is_exact_or_one_decimal() {
    assert_eq!(human_bytes(512 * 1024), "512 KiB");
    assert_eq!(human_bytes(128 << 20), "128 MiB");
    assert_eq!(human_bytes(1452), "1.4 KiB");
    assert_eq!(human_bytes(100), "100 B");
}
