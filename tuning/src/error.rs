//! Validation and loading errors. Each names the knob (`quic.idle_timeout_ms`), what is allowed
//! and what was given, so an operator can fix a file without reading code.

use std::fmt;
use std::path::PathBuf;

use crate::knob::{Allowed, KnobMeta, KnobValue};

/// How two knobs must relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    LessThan,
    AtLeast,
    AtMost,
}

impl Relation {
    pub fn holds(self, left: u64, right: u64) -> bool {
        match self {
            Relation::LessThan => left < right,
            Relation::AtLeast => left >= right,
            Relation::AtMost => left <= right,
        }
    }
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Relation::LessThan => "less than",
            Relation::AtLeast => "at least",
            Relation::AtMost => "at most",
        })
    }
}

/// One problem with a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TuningError {
    /// An integer knob outside its range (i128: TOML integers may be negative, fields may be u64).
    #[error("{knob} = {value} is outside the allowed range {allowed}")]
    OutOfRange {
        knob: &'static str,
        value: i128,
        allowed: Allowed,
    },

    /// An enum knob set to a name it does not know.
    #[error("{knob} = \"{value}\" is not one of the allowed values {allowed}")]
    UnknownChoice {
        knob: &'static str,
        value: String,
        allowed: Allowed,
    },

    /// A value of the wrong TOML type (or a section that is not a table).
    #[error("{knob} has the wrong type: expected {expected}, found {found}")]
    WrongType {
        knob: &'static str,
        expected: &'static str,
        found: &'static str,
    },

    /// A key that names no section or knob (a typo would otherwise be silently ignored).
    #[error("unknown key `{key}` ({hint})")]
    UnknownKey { key: String, hint: String },

    /// Two knobs that break a rule tying them together.
    #[error("{knob} = {value} must be {relation} {other} = {other_value}: {why}")]
    Conflict {
        knob: &'static str,
        value: u64,
        relation: Relation,
        other: &'static str,
        other_value: u64,
        why: &'static str,
    },

    /// A worst-case memory figure derived from several knobs that exceeds its cap.
    #[error(
        "{what} = {value_bytes} bytes (from {knobs}) exceeds the cap of {cap_bytes} bytes: {why}"
    )]
    OverCap {
        what: &'static str,
        knobs: &'static str,
        value_bytes: u64,
        cap_bytes: u64,
        why: &'static str,
    },

    /// The text is not TOML (the message carries line and column).
    #[error("not valid TOML: {message}")]
    Syntax { message: String },

    /// A configuration file that cannot be read.
    #[error("cannot read {}: {message}", path.display())]
    Io { path: PathBuf, message: String },
}

impl TuningError {
    /// The knob (or section) this error is about, when it is about exactly one.
    pub fn knob(&self) -> Option<&str> {
        match self {
            TuningError::OutOfRange { knob, .. }
            | TuningError::UnknownChoice { knob, .. }
            | TuningError::WrongType { knob, .. } => Some(knob),
            TuningError::UnknownKey { key, .. } => Some(key),
            _ => None,
        }
    }

    /// True when this error involves `knob`, or any knob of the section named `knob`.
    pub fn mentions(&self, knob: &str) -> bool {
        let names = |name: &str| {
            name == knob
                || name
                    .strip_prefix(knob)
                    .is_some_and(|rest| rest.starts_with('.'))
        };
        match self {
            TuningError::Conflict {
                knob: left, other, ..
            } => names(left) || names(other),
            TuningError::OverCap { knobs, .. } => {
                let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
                knobs.split(|c: char| !is_name_char(c)).any(names)
            }
            _ => self.knob().is_some_and(names),
        }
    }

    /// The error for `value` of the knob `meta`, or `None` when the value is allowed.
    pub fn check(meta: &KnobMeta, value: KnobValue) -> Option<TuningError> {
        if meta.allowed.admits(&value) {
            return None;
        }
        Some(match value {
            KnobValue::Integer(v) => TuningError::OutOfRange {
                knob: meta.knob,
                value: v.into(),
                allowed: meta.allowed,
            },
            KnobValue::Choice(name) => TuningError::UnknownChoice {
                knob: meta.knob,
                value: name.to_string(),
                allowed: meta.allowed,
            },
            KnobValue::Bool(_) => TuningError::WrongType {
                knob: meta.knob,
                expected: meta.allowed.expected_toml_type(),
                found: "a boolean",
            },
        })
    }
}

/// A configuration file that could not be loaded: its path and every problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub path: PathBuf,
    pub errors: Vec<TuningError>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.errors.len();
        let noun = if count == 1 { "problem" } else { "problems" };
        write!(f, "{}: {count} {noun}", self.path.display())?;
        for error in &self.errors {
            write!(f, "\n  - {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}
