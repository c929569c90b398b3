//! The knob model: what every knob declares about itself, and the `section!` macro that turns one
//! declaration per knob into the section struct, its `Default`, its validation and its metadata.
//!
//! A knob is written once: name, type, allowed range, default constant and value, doc lines. The
//! macro derives everything else, so the struct, the defaults, the checks and the operator
//! reference cannot drift apart.

use std::fmt;

/// What values a knob admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// An integer in `min..=max`.
    Range { min: u64, max: u64 },
    /// `true` or `false`.
    AnyBool,
    /// One of these names (an enum knob).
    OneOf(&'static [&'static str]),
    /// An integer knob declared without a range; `section!` refuses to compile one.
    Missing,
}

impl Allowed {
    /// True when the declaration is complete; evaluated at compile time by `section!`.
    pub const fn is_declared(&self) -> bool {
        !matches!(self, Allowed::Missing)
    }

    /// True when `value` is admitted (the value's type must match the knob's kind).
    pub fn admits(&self, value: &KnobValue) -> bool {
        match (self, value) {
            (Allowed::Range { min, max }, KnobValue::Integer(v)) => min <= v && v <= max,
            (Allowed::AnyBool, KnobValue::Bool(_)) => true,
            (Allowed::OneOf(names), KnobValue::Choice(name)) => names.contains(name),
            _ => false,
        }
    }

    /// The TOML type an operator must write, for error messages.
    pub fn expected_toml_type(&self) -> &'static str {
        match self {
            Allowed::Range { .. } | Allowed::Missing => "an integer",
            Allowed::AnyBool => "a boolean",
            Allowed::OneOf(_) => "a string",
        }
    }
}

impl fmt::Display for Allowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Allowed::Range { min, max } => write!(f, "{min}..={max}"),
            Allowed::AnyBool => f.write_str("true | false"),
            Allowed::OneOf(names) => f.write_str(&names.join(" | ")),
            Allowed::Missing => f.write_str("(undeclared)"),
        }
    }
}

/// A knob's value, independent of the Rust type of its field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KnobValue {
    Integer(u64),
    Bool(bool),
    Choice(&'static str),
}

impl fmt::Display for KnobValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KnobValue::Integer(v) => write!(f, "{v}"),
            KnobValue::Bool(v) => write!(f, "{v}"),
            KnobValue::Choice(name) => write!(f, "\"{name}\""),
        }
    }
}

/// The Rust types a knob field may have.
pub trait KnobType: Copy {
    /// The allowed values when the declaration names no range: complete for bools and enums,
    /// `Missing` for integers (which must declare their range).
    const ALLOWED_BY_TYPE: Allowed;
    /// The largest value the field's type holds; a declared range must fit inside it.
    const TYPE_MAX: u64;
    fn knob_value(self) -> KnobValue;
}

macro_rules! integer_knob_type {
    ($($ty:ty),+) => {$(
        impl KnobType for $ty {
            const ALLOWED_BY_TYPE: Allowed = Allowed::Missing;
            const TYPE_MAX: u64 = <$ty>::MAX as u64;
            fn knob_value(self) -> KnobValue {
                KnobValue::Integer(self as u64)
            }
        }
    )+};
}

integer_knob_type!(u8, u16, u32, u64, usize);

impl KnobType for bool {
    const ALLOWED_BY_TYPE: Allowed = Allowed::AnyBool;
    const TYPE_MAX: u64 = 1;
    fn knob_value(self) -> KnobValue {
        KnobValue::Bool(self)
    }
}

/// Everything known about one knob, for validation, TOML checks and the operator reference.
#[derive(Debug, Clone, Copy)]
pub struct KnobMeta {
    /// The section's TOML table, e.g. `quic`.
    pub section: &'static str,
    /// The key inside the section, e.g. `idle_timeout_ms`.
    pub name: &'static str,
    /// The dotted name used in every message, e.g. `quic.idle_timeout_ms`.
    pub knob: &'static str,
    /// The name of the default constant, e.g. `QUIC_IDLE_TIMEOUT_MS_DEFAULT`.
    pub default_const: &'static str,
    pub allowed: Allowed,
    /// The compiled default (a function because `KnobType::knob_value` is not const).
    pub default: fn() -> KnobValue,
    /// The doc comment lines, as written.
    pub doc: &'static [&'static str],
}

impl KnobMeta {
    /// The doc comment as one line of text.
    pub fn doc_text(&self) -> String {
        let lines: Vec<&str> = self.doc.iter().map(|line| line.trim()).collect();
        lines.join(" ")
    }

    /// The unit, read from the name's suffix (`None` for a bool or enum knob, and for an
    /// integer knob whose name lacks a unit, which a test forbids).
    pub fn unit(&self) -> Option<&'static str> {
        match self.allowed {
            Allowed::Range { .. } | Allowed::Missing => unit_of_name(self.name),
            Allowed::AnyBool => Some("bool"),
            Allowed::OneOf(_) => Some("enum"),
        }
    }
}

/// Name suffixes that state a unit, longest first, and the unit each one means.
pub const UNIT_SUFFIXES: &[(&str, &str)] = &[
    ("_datagrams_max", "datagrams"),
    ("_messages_max", "messages"),
    ("_streams_max", "streams"),
    ("_bytes_per_s_max", "bytes/s"),
    ("_bytes_max", "bytes"),
    ("_bytes", "bytes"),
    ("_digits", "digits"),
    ("_count", "count"),
    ("_max", "count"),
    ("_points_per_s", "points/s"),
    ("_points", "points"),
    ("_ms", "ms"),
    ("_us", "µs"),
];

/// The unit an integer knob's name states, if any.
pub fn unit_of_name(name: &str) -> Option<&'static str> {
    UNIT_SUFFIXES
        .iter()
        .find(|(suffix, _)| name.ends_with(suffix))
        .map(|(_, unit)| *unit)
}

/// One section of the configuration (one TOML table).
#[derive(Debug, Clone, Copy)]
pub struct SectionMeta {
    pub name: &'static str,
    pub doc: &'static [&'static str],
    pub knobs: &'static [KnobMeta],
}

impl SectionMeta {
    pub fn doc_text(&self) -> String {
        let lines: Vec<&str> = self.doc.iter().map(|line| line.trim()).collect();
        lines.join(" ")
    }
}

/// Picks the declared range, or the type's own allowed set when none is declared.
macro_rules! knob_allowed {
    ($ty:ident) => {
        <$ty as $crate::knob::KnobType>::ALLOWED_BY_TYPE
    };
    ($ty:ident, $min:tt, $max:tt) => {
        $crate::knob::Allowed::Range {
            min: $min as u64,
            max: $max as u64,
        }
    };
}

/// Compile-time checks of one declared range: sane, fits the type, holds the default.
macro_rules! knob_range_asserts {
    ($knob:expr, $ty:ident, $default:ident) => {};
    ($knob:expr, $ty:ident, $default:ident, $min:tt, $max:tt) => {
        const _: () = {
            assert!(
                ($min as u64) <= ($max as u64),
                concat!("empty range: ", $knob)
            );
            assert!(
                ($max as u64) <= <$ty as $crate::knob::KnobType>::TYPE_MAX,
                concat!("range exceeds the field type: ", $knob)
            );
            assert!(
                ($default as u64) >= ($min as u64),
                concat!("default below range: ", $knob)
            );
            assert!(
                ($default as u64) <= ($max as u64),
                concat!("default above range: ", $knob)
            );
        };
    };
}

/// Declares one configuration section.
///
/// ```text
/// section! {
///     /// Section doc.
///     pub struct QuicTuning in "quic" {
///         /// What it bounds, worst-case memory, why this value.
///         idle_timeout_ms: u64 in 1_000..=600_000 = QUIC_IDLE_TIMEOUT_MS_DEFAULT = 10_000;
///         /// A bool or enum knob declares no range.
///         gso_enabled: bool = UDP_GSO_ENABLED_DEFAULT = true;
///     }
/// }
/// ```
///
/// Generates the default constants, the struct (`serde(default, deny_unknown_fields)`),
/// `Default`, `KNOBS` (metadata), `SECTION`, `knob_values()` and `validate_ranges()`.
macro_rules! section {
    (
        $(#[doc = $section_doc:literal])*
        pub struct $section:ident in $key:literal {
            $(
                $(#[doc = $doc:literal])+
                $name:ident : $ty:ident $(in $min:tt ..= $max:tt)? = $default:ident = $value:expr;
            )+
        }
    ) => {
        $(
            #[doc = concat!("Default of `", $key, ".", stringify!($name), "`.")]
            $(#[doc = $doc])+
            pub const $default: $ty = $value;

            knob_range_asserts!(
                concat!($key, ".", stringify!($name)), $ty, $default $(, $min, $max)?
            );
            const _: () = assert!(
                knob_allowed!($ty $(, $min, $max)?).is_declared(),
                concat!("integer knob without a range: ", $key, ".", stringify!($name)),
            );
        )+

        $(#[doc = $section_doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $section {
            $(
                $(#[doc = $doc])+
                pub $name: $ty,
            )+
        }

        impl Default for $section {
            fn default() -> Self {
                Self { $($name: $default,)+ }
            }
        }

        impl $section {
            /// This section's knobs, in declaration order.
            pub const KNOBS: &'static [$crate::knob::KnobMeta] = &[$(
                $crate::knob::KnobMeta {
                    section: $key,
                    name: stringify!($name),
                    knob: concat!($key, ".", stringify!($name)),
                    default_const: stringify!($default),
                    allowed: knob_allowed!($ty $(, $min, $max)?),
                    default: || $crate::knob::KnobType::knob_value($default),
                    doc: &[$($doc),+],
                },
            )+];

            pub const SECTION: $crate::knob::SectionMeta = $crate::knob::SectionMeta {
                name: $key,
                doc: &[$($section_doc),*],
                knobs: Self::KNOBS,
            };

            /// Each knob's metadata with its current value, in declaration order.
            pub fn knob_values(&self) -> Vec<(&'static $crate::knob::KnobMeta, $crate::knob::KnobValue)> {
                let values = [$($crate::knob::KnobType::knob_value(self.$name)),+];
                Self::KNOBS.iter().zip(values).collect()
            }

            /// Pushes one error per knob whose value is outside its allowed set.
            pub fn validate_ranges(&self, errors: &mut Vec<$crate::error::TuningError>) {
                for (meta, value) in self.knob_values() {
                    if let Some(error) = $crate::error::TuningError::check(meta, value) {
                        errors.push(error);
                    }
                }
            }
        }
    };
}
