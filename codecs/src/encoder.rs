//! The encoder: one reusable FlatBuffers builder, so that encoding a message on the hot path
//! allocates nothing once the builder has grown to the largest message seen.
//!
//! The `encode_*` methods live beside their decoders (in `envelope` and `payload`); this module
//! holds the builder and the finishing steps they share. Each returns the finished bytes borrowed
//! from the encoder, so the caller copies them exactly once, straight into the buffer it sends
//! (a pooled buffer, a `Vec`), and they stay valid until the encoder's next use.

use flatbuffers::{FlatBufferBuilder, WIPOffset};

use crate::error::{check_encode_limit, EncodeError};
use crate::limits::CodecLimits;

/// Initial capacity of the builder: the common envelopes and payload messages fit without the
/// builder growing.
const BUILDER_CAPACITY_BYTES: usize = 1 << 10;

/// Length of the little-endian u32 that precedes a size-prefixed payload message.
pub(crate) const SIZE_PREFIX_BYTES: usize = 4;

/// Encodes envelopes and payload messages with one builder. Keep one per shard (it is cheap but
/// not free to create) and reuse it for every message; it is `Send` but needs `&mut` to use.
///
/// The encoder enforces the same [`CodecLimits`] as the decoders, so a message it produces is
/// accepted by a peer running with the same limits.
pub struct Encoder {
    pub(crate) builder: FlatBufferBuilder<'static>,
    limits: CodecLimits,
}

impl Encoder {
    pub fn new(limits: CodecLimits) -> Encoder {
        Encoder {
            builder: FlatBufferBuilder::with_capacity(BUILDER_CAPACITY_BYTES),
            limits,
        }
    }

    pub fn limits(&self) -> &CodecLimits {
        &self.limits
    }

    /// Clears the builder for the next message; keeps its memory.
    pub(crate) fn start(&mut self) -> &mut FlatBufferBuilder<'static> {
        self.builder.reset();
        &mut self.builder
    }

    /// Finishes the message rooted at `root` (envelope form: no prefix) and returns its bytes,
    /// which stay valid until the next encode.
    pub(crate) fn finish<T>(&mut self, root: WIPOffset<T>) -> Result<&[u8], EncodeError> {
        self.builder.finish_minimal(root);
        let message = self.builder.finished_data();
        check_encode_limit(
            "message_bytes_max",
            message.len(),
            self.limits.message_bytes_max,
        )?;
        Ok(message)
    }

    /// Finishes the message rooted at `root` behind its little-endian u32 length (payload form:
    /// raw bytes may follow it in the same body) and returns the bytes, prefix included.
    pub(crate) fn finish_size_prefixed<T>(
        &mut self,
        root: WIPOffset<T>,
    ) -> Result<&[u8], EncodeError> {
        self.builder.finish_size_prefixed(root, None);
        let message = self.builder.finished_data();
        check_encode_limit(
            "message_bytes_max",
            message.len() - SIZE_PREFIX_BYTES,
            self.limits.message_bytes_max,
        )?;
        Ok(message)
    }
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder::new(CodecLimits::default())
    }
}
