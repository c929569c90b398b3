//! Checks a parsed TOML table against the knob metadata before it is deserialized, so that every
//! unknown key, wrong type and out-of-range value is reported at once, each with its dotted name
//! (serde alone stops at the first problem and does not know the section it is in). Offending
//! entries are removed, so the rest can still be deserialized and checked against the rules
//! between knobs.

use crate::knob::{Allowed, KnobMeta, SectionMeta};
use crate::{TuningError, SECTIONS};

/// Every problem in `table` (in key order), each offending entry removed from `table`.
pub(crate) fn take_invalid(table: &mut toml::Table) -> Vec<TuningError> {
    let mut errors = Vec::new();
    table.retain(|key, value| check_entry(key, value, &mut errors));
    errors
}

/// Checks one top-level entry: false when it is no section at all; a section keeps its valid
/// knobs and loses the others.
fn check_entry(key: &str, value: &mut toml::Value, errors: &mut Vec<TuningError>) -> bool {
    let Some(section) = SECTIONS.iter().find(|section| section.name == key) else {
        let known = SECTIONS.iter().map(|section| section.name);
        errors.push(TuningError::UnknownKey {
            key: key.to_string(),
            hint: hint(key, known),
        });
        return false;
    };
    match value {
        toml::Value::Table(knobs) => {
            knobs.retain(|name, value| {
                let error = check_knob(section, name, value);
                let valid = error.is_none();
                errors.extend(error);
                valid
            });
            true
        }
        other => {
            errors.push(TuningError::WrongType {
                knob: section.name,
                expected: "a table",
                found: toml_type_name(other),
            });
            false
        }
    }
}

fn check_knob(section: &SectionMeta, name: &str, value: &toml::Value) -> Option<TuningError> {
    match section.knobs.iter().find(|meta| meta.name == name) {
        Some(meta) => check_value(meta, value),
        None => {
            let known = section.knobs.iter().map(|meta| meta.name);
            Some(TuningError::UnknownKey {
                key: format!("{}.{name}", section.name),
                hint: hint(name, known),
            })
        }
    }
}

fn check_value(meta: &KnobMeta, value: &toml::Value) -> Option<TuningError> {
    match (meta.allowed, value) {
        (Allowed::Range { min, max }, toml::Value::Integer(given)) => {
            let given = i128::from(*given);
            let admitted = i128::from(min) <= given && given <= i128::from(max);
            (!admitted).then_some(TuningError::OutOfRange {
                knob: meta.knob,
                value: given,
                allowed: meta.allowed,
            })
        }
        (Allowed::AnyBool, toml::Value::Boolean(_)) => None,
        (Allowed::OneOf(names), toml::Value::String(given)) => (!names.contains(&given.as_str()))
            .then(|| TuningError::UnknownChoice {
                knob: meta.knob,
                value: given.clone(),
                allowed: meta.allowed,
            }),
        (allowed, other) => Some(TuningError::WrongType {
            knob: meta.knob,
            expected: allowed.expected_toml_type(),
            found: toml_type_name(other),
        }),
    }
}

fn toml_type_name(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a datetime",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// "did you mean `x`?" for a near miss, else the list of keys allowed where `unknown` was written.
fn hint<'a>(unknown: &str, known: impl Iterator<Item = &'a str> + Clone) -> String {
    let nearest = known
        .clone()
        .min_by_key(|candidate| edit_distance(unknown, candidate));
    match nearest {
        Some(candidate) if edit_distance(unknown, candidate) <= 3 => {
            format!("did you mean `{candidate}`?")
        }
        _ => format!("known keys here: {}", known.collect::<Vec<_>>().join(", ")),
    }
}

/// Levenshtein distance over bytes (keys are ASCII; others only make the distance larger).
fn edit_distance(left: &str, right: &str) -> usize {
    let right = right.as_bytes();
    let mut previous: Vec<usize> = (0..=right.len()).collect();
    for (i, left_byte) in left.bytes().enumerate() {
        let mut current = vec![i + 1; right.len() + 1];
        for (j, right_byte) in right.iter().enumerate() {
            let substitution = previous[j] + usize::from(left_byte != *right_byte);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[right.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("idle_timeout", "idle_timeout_ms"), 3);
        assert_eq!(edit_distance("quik", "quic"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn hint_suggests_a_near_miss_or_lists_the_keys() {
        let known = ["engine", "quic", "udp"];
        assert_eq!(hint("quik", known.iter().copied()), "did you mean `quic`?");
        assert_eq!(
            hint("storage", known.iter().copied()),
            "known keys here: engine, quic, udp"
        );
    }
}
