//! Checks a parsed TOML table against the knob metadata before it is deserialized, so that every
//! unknown key, wrong type and out-of-range value is reported at once, each with its dotted name
//! (serde alone stops at the first problem and does not know the section it is in).

use crate::knob::{Allowed, KnobMeta, SectionMeta};
use crate::{TuningError, SECTIONS};

/// Every problem in `table`, in file order.
pub(crate) fn check_table(table: &toml::Table) -> Vec<TuningError> {
    let mut errors = Vec::new();
    for (key, value) in table {
        let Some(section) = SECTIONS.iter().find(|section| section.name == key) else {
            let known: Vec<&str> = SECTIONS.iter().map(|section| section.name).collect();
            errors.push(TuningError::UnknownKey {
                key: key.clone(),
                known: known.join(", "),
            });
            continue;
        };
        match value {
            toml::Value::Table(knobs) => check_section(section, knobs, &mut errors),
            other => errors.push(TuningError::WrongType {
                knob: section.name,
                expected: "a table",
                found: toml_type_name(other),
            }),
        }
    }
    errors
}

fn check_section(section: &SectionMeta, knobs: &toml::Table, errors: &mut Vec<TuningError>) {
    for (name, value) in knobs {
        match section.knobs.iter().find(|meta| meta.name == name) {
            Some(meta) => errors.extend(check_value(meta, value)),
            None => {
                let known: Vec<&str> = section.knobs.iter().map(|meta| meta.name).collect();
                errors.push(TuningError::UnknownKey {
                    key: format!("{}.{name}", section.name),
                    known: known.join(", "),
                });
            }
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
