//! The one path by which remote bytes become FlatBuffers tables: length check, then the
//! verifier with the options of a [`CodecLimits`].

use flatbuffers::{Follow, Verifiable};

use crate::encoder::SIZE_PREFIX_BYTES;
use crate::error::{check_decode_limit, DecodeError};
use crate::limits::CodecLimits;

/// Verifies `bytes` as one message whose root table is `T` and returns the table.
pub(crate) fn root<'a, T>(bytes: &'a [u8], limits: &CodecLimits) -> Result<T::Inner, DecodeError>
where
    T: 'a + Follow<'a> + Verifiable,
{
    check_decode_limit("message_bytes_max", bytes.len(), limits.message_bytes_max)?;
    Ok(flatbuffers::root_with_opts::<T>(
        &limits.verifier_options(),
        bytes,
    )?)
}

/// Verifies the size-prefixed message at the start of `body` (root table `T`) and returns the
/// table and the bytes that follow the message.
pub(crate) fn size_prefixed_root<'a, T>(
    body: &'a [u8],
    limits: &CodecLimits,
) -> Result<(T::Inner, &'a [u8]), DecodeError>
where
    T: 'a + Follow<'a> + Verifiable,
{
    let prefix: [u8; SIZE_PREFIX_BYTES] = body
        .get(..SIZE_PREFIX_BYTES)
        .and_then(|prefix| prefix.try_into().ok())
        .ok_or(DecodeError::Truncated {
            needed: SIZE_PREFIX_BYTES as u64,
            got: body.len() as u64,
        })?;
    let message_bytes = u32::from_le_bytes(prefix) as usize;
    check_decode_limit("message_bytes_max", message_bytes, limits.message_bytes_max)?;
    let message_end = SIZE_PREFIX_BYTES + message_bytes;
    let (message, rest) = body
        .split_at_checked(message_end)
        .ok_or(DecodeError::Truncated {
            needed: message_end as u64,
            got: body.len() as u64,
        })?;
    let table =
        flatbuffers::size_prefixed_root_with_opts::<T>(&limits.verifier_options(), message)?;
    Ok((table, rest))
}

/// Rejects bytes after a message that is the whole body.
pub(crate) fn expect_end(kind: &'static str, rest: &[u8]) -> Result<(), DecodeError> {
    if rest.is_empty() {
        return Ok(());
    }
    Err(DecodeError::UnexpectedBytes {
        kind,
        bytes: rest.len() as u64,
    })
}
