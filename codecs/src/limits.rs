//! Bounds the decoders enforce on remote bytes.
//!
//! The values a node runs with come from the tuning crate (which the engine passes down); the
//! defaults here are what tests and fuzzing use and what tuning starts from.

use flatbuffers::VerifierOptions;

/// Upper bound on the bytes a message of ours needs beyond its variable-length fields (size
/// prefix, root offset, vtable, scalars, vector length words and alignment padding). The
/// largest message (SlotUpdate: 7 fields, 2 vectors) takes about 100; a test checks the bound.
pub const MESSAGE_OVERHEAD_BYTES_MAX: usize = 256;

/// Limits for decoding (and, symmetrically, encoding) FlatBuffers messages.
///
/// Worst-case memory: decoders borrow from the input and allocate nothing, so the only memory a
/// message can make us hold is its own bytes, bounded by `message_bytes_max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodecLimits {
    /// Length of one FlatBuffers message (an envelope, or a payload message without its size
    /// prefix and without a pushed artifact). Checked before the verifier runs, so a peer cannot
    /// make us verify a large buffer. 64 KiB: an envelope cannot be longer (its length is a u16
    /// in the frame header), and payload messages are as small as envelopes.
    pub message_bytes_max: usize,
    /// How deep the verifier follows nested tables. Our messages are one table with scalars,
    /// structs, strings and byte vectors (depth 2 at most); 8 leaves room for additions while
    /// bounding the verifier's recursion on hostile input.
    pub table_depth_max: usize,
    /// How many tables the verifier accepts in one message. Ours have exactly one; 8 leaves room
    /// for additions and stops a buffer that points at thousands of tables.
    pub tables_max: usize,
    /// The verifier's "apparent size": the bytes the message would cover if every shared object
    /// were expanded into its own copy. Equal to `message_bytes_max` by default: an honest
    /// message of ours shares nothing, so its apparent size is at most its length.
    pub apparent_bytes_max: usize,
    /// Length of an artifact id (SlotUpdate, ArtifactRequest). Ids are a hash plus a height or
    /// similar; 256 bytes is generous, and bounds the memory a slot table keyed by ids can hold
    /// per entry.
    pub id_bytes_max: usize,
    /// Length of a SlotUpdate's attributes, which the receiver keeps per advert until it decides
    /// to download. 1 KiB per advert bounds that memory.
    pub attributes_bytes_max: usize,
    /// Length of an error message in a Response or a Goaway; 1 KiB is enough for a log line
    /// and keeps a hostile peer from filling our logs.
    pub error_message_bytes_max: usize,
}

impl CodecLimits {
    pub const MESSAGE_BYTES_MAX_DEFAULT: usize = 64 << 10;
    pub const TABLE_DEPTH_MAX_DEFAULT: usize = 8;
    pub const TABLES_MAX_DEFAULT: usize = 8;
    pub const APPARENT_BYTES_MAX_DEFAULT: usize = Self::MESSAGE_BYTES_MAX_DEFAULT;
    pub const ID_BYTES_MAX_DEFAULT: usize = 256;
    pub const ATTRIBUTES_BYTES_MAX_DEFAULT: usize = 1 << 10;
    pub const ERROR_MESSAGE_BYTES_MAX_DEFAULT: usize = 1 << 10;

    /// The options handed to the FlatBuffers verifier for every decode.
    pub fn verifier_options(&self) -> VerifierOptions {
        VerifierOptions {
            max_depth: self.table_depth_max,
            max_tables: self.tables_max,
            max_apparent_size: self.apparent_bytes_max,
            ignore_missing_null_terminator: false,
        }
    }

    /// Checks that the limits are consistent: every message whose fields are within their
    /// bounds must fit in `message_bytes_max`, or an encoder could build a message that its own
    /// decoder rejects.
    pub fn validate(&self) -> Result<(), String> {
        let fields_bytes_max =
            (self.id_bytes_max + self.attributes_bytes_max).max(self.error_message_bytes_max);
        let needed = fields_bytes_max + MESSAGE_OVERHEAD_BYTES_MAX;
        if self.message_bytes_max < needed {
            return Err(format!(
                "message_bytes_max ({}) is below the largest message the field limits allow ({needed})",
                self.message_bytes_max
            ));
        }
        if self.apparent_bytes_max < self.message_bytes_max {
            return Err(format!(
                "apparent_bytes_max ({}) is below message_bytes_max ({})",
                self.apparent_bytes_max, self.message_bytes_max
            ));
        }
        if self.table_depth_max < 2 || self.tables_max < 1 {
            return Err(
                "table_depth_max must be >= 2 and tables_max >= 1 to accept any message".into(),
            );
        }
        Ok(())
    }
}

impl Default for CodecLimits {
    fn default() -> Self {
        CodecLimits {
            message_bytes_max: Self::MESSAGE_BYTES_MAX_DEFAULT,
            table_depth_max: Self::TABLE_DEPTH_MAX_DEFAULT,
            tables_max: Self::TABLES_MAX_DEFAULT,
            apparent_bytes_max: Self::APPARENT_BYTES_MAX_DEFAULT,
            id_bytes_max: Self::ID_BYTES_MAX_DEFAULT,
            attributes_bytes_max: Self::ATTRIBUTES_BYTES_MAX_DEFAULT,
            error_message_bytes_max: Self::ERROR_MESSAGE_BYTES_MAX_DEFAULT,
        }
    }
}

// The defaults must pass `validate`; these are the same checks at compile time.
const _: () = assert!(
    CodecLimits::ID_BYTES_MAX_DEFAULT
        + CodecLimits::ATTRIBUTES_BYTES_MAX_DEFAULT
        + MESSAGE_OVERHEAD_BYTES_MAX
        <= CodecLimits::MESSAGE_BYTES_MAX_DEFAULT
);
const _: () = assert!(
    CodecLimits::ERROR_MESSAGE_BYTES_MAX_DEFAULT + MESSAGE_OVERHEAD_BYTES_MAX
        <= CodecLimits::MESSAGE_BYTES_MAX_DEFAULT
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(CodecLimits::default().validate(), Ok(()));
    }

    #[test]
    fn inconsistent_limits_are_rejected() {
        let limits = CodecLimits {
            message_bytes_max: 512,
            ..CodecLimits::default()
        };
        assert!(limits.validate().unwrap_err().contains("message_bytes_max"));
        let limits = CodecLimits {
            apparent_bytes_max: 1024,
            ..CodecLimits::default()
        };
        assert!(limits
            .validate()
            .unwrap_err()
            .contains("apparent_bytes_max"));
        let limits = CodecLimits {
            tables_max: 0,
            ..CodecLimits::default()
        };
        assert!(limits.validate().is_err());
    }
}
