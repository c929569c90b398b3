//! RPC messages on a byte stream: frame header, envelope, raw body.
//!
//! Used by the QUIC transport (one message each way per bidirectional stream). The body follows
//! the envelope raw, so a large payload is never copied into an encoder: the sender hands the
//! body `Buf` to the transport as it is, and the receiver reads it straight into one allocation
//! of the announced size, after checking that size against the limit.

use icn_codecs::envelope::{self, Envelope, RequestEnvelope, ResponseEnvelope, RpcStatus};
use icn_codecs::frame::{FrameHeader, FrameKind, FrameLimits, FRAME_HEADER_BYTES};
use icn_codecs::{CodecLimits, DecodeError, Encoder};

use crate::buffer::Buf;
use crate::transport::{Priority, Route, RpcError};

/// Encodes the header and envelope of a request whose body is `body_bytes` long.
pub(crate) fn request_head(
    encoder: &mut Encoder,
    route: Route,
    priority: Priority,
    body_bytes: usize,
) -> Buf {
    let priority = match priority {
        Priority::Low => icn_codecs::Priority::Low,
        Priority::Normal => icn_codecs::Priority::Normal,
        Priority::High => icn_codecs::Priority::High,
    };
    let envelope = RequestEnvelope {
        request_id: 0,
        route: route.0,
        priority,
        deadline_ms: 0,
    };
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + 64);
    encoder
        .encode_frame(&Envelope::Request(envelope), body_bytes as u64, &mut out)
        .expect("a request envelope has no variable-size field");
    Buf::from_vec(out)
}

/// Encodes the header and envelope of a response; `result` is the handler's outcome.
pub(crate) fn response_head(encoder: &mut Encoder, result: &Result<usize, RpcError>) -> Buf {
    let (status, message, body_bytes) = match result {
        Ok(body_bytes) => (RpcStatus::Ok, String::new(), *body_bytes),
        Err(error) => (status_of(error), error.to_string(), 0),
    };
    let message = truncate_utf8(&message, encoder.limits().error_message_bytes_max);
    let envelope = ResponseEnvelope {
        request_id: 0,
        status,
        error_message: message,
    };
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + 64 + message.len());
    encoder
        .encode_frame(&Envelope::Response(envelope), body_bytes as u64, &mut out)
        .expect("the error message was cut to the encoder's limit");
    Buf::from_vec(out)
}

/// The longest prefix of `text` within `bytes_max` bytes that ends on a character boundary.
pub(crate) fn truncate_utf8(text: &str, bytes_max: usize) -> &str {
    if text.len() <= bytes_max {
        return text;
    }
    let mut end = bytes_max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The wire status for a handler's error (shared by the QUIC and TCP transports).
pub(crate) fn status_of(error: &RpcError) -> RpcStatus {
    match error {
        RpcError::NoRoute(_) => RpcStatus::NoRoute,
        RpcError::MessageTooLarge { .. } => RpcStatus::MessageTooLarge,
        RpcError::TooManyInFlight { .. } => RpcStatus::Overloaded,
        RpcError::Cancelled => RpcStatus::Cancelled,
        RpcError::PeerMisbehaved(_) => RpcStatus::BadRequest,
        _ => RpcStatus::HandlerError,
    }
}

/// The caller's view of a response: `route` is the route of our request (a response does not
/// repeat it). Both transports map statuses to errors here, so they fail alike.
pub(crate) fn response_result(
    status: RpcStatus,
    message: &str,
    route: Route,
    body: Buf,
) -> Result<Buf, RpcError> {
    match status {
        RpcStatus::Ok => Ok(body),
        RpcStatus::NoRoute => Err(RpcError::NoRoute(route)),
        RpcStatus::MessageTooLarge => {
            Err(RpcError::Handler(format!("peer refused size: {message}")))
        }
        RpcStatus::Overloaded => Err(RpcError::Handler(format!("peer overloaded: {message}"))),
        RpcStatus::Cancelled => Err(RpcError::Cancelled),
        RpcStatus::BadRequest => Err(RpcError::Handler(format!(
            "peer rejected request: {message}"
        ))),
        RpcStatus::HandlerError => Err(RpcError::Handler(message.to_string())),
    }
}

pub(crate) fn priority_to_codec(priority: Priority) -> icn_codecs::Priority {
    match priority {
        Priority::Low => icn_codecs::Priority::Low,
        Priority::Normal => icn_codecs::Priority::Normal,
        Priority::High => icn_codecs::Priority::High,
    }
}

pub(crate) fn priority_from_codec(priority: icn_codecs::Priority) -> Priority {
    match priority {
        icn_codecs::Priority::Low => Priority::Low,
        icn_codecs::Priority::Normal => Priority::Normal,
        icn_codecs::Priority::High => Priority::High,
    }
}

/// A fully received message.
pub(crate) enum Message {
    Request {
        route: Route,
        priority: Priority,
        body: Buf,
    },
    Response {
        result: Result<Buf, RpcError>,
    },
}

/// Where the assembler is within a message.
enum Stage {
    Header,
    Envelope,
    Body,
    Done,
}

/// Reassembles one message from a stream's bytes, checking limits before allocating.
///
/// The envelope and body are appended to vectors reserved at their announced sizes (already
/// checked against the limits), never zero-filled first: for small RPCs the zeroing cost about as
/// much as the copy out of quiche.
pub(crate) struct Assembler {
    stage: Stage,
    header_bytes: [u8; FRAME_HEADER_BYTES],
    filled: usize,
    header: Option<FrameHeader>,
    envelope: Vec<u8>,
    body: Vec<u8>,
}

/// Where the next stream bytes go.
pub(crate) enum Sink<'a> {
    /// Fill this slice (the fixed-size frame header).
    Slice(&'a mut [u8]),
    /// Append at most `bytes_max` bytes to this vector (its capacity is already reserved).
    Append {
        to: &'a mut Vec<u8>,
        bytes_max: usize,
    },
    /// The message is complete: any further byte is the peer's error.
    Complete,
}

/// What went wrong while reading a message: always the peer's fault.
#[derive(Debug)]
pub(crate) enum AssembleError {
    Decode(DecodeError),
    /// The stream ended before the announced bytes arrived.
    Truncated,
    /// A frame kind that has no place on this stream.
    UnexpectedKind(FrameKind),
}

impl std::fmt::Display for AssembleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AssembleError::Decode(error) => write!(f, "{error}"),
            AssembleError::Truncated => f.write_str("stream ended inside a message"),
            AssembleError::UnexpectedKind(kind) => write!(f, "unexpected frame kind {kind:?}"),
        }
    }
}

impl Assembler {
    pub(crate) fn new() -> Self {
        Assembler {
            stage: Stage::Header,
            header_bytes: [0; FRAME_HEADER_BYTES],
            filled: 0,
            header: None,
            envelope: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Where the next stream bytes should go.
    pub(crate) fn next_sink(&mut self) -> Sink<'_> {
        match self.stage {
            Stage::Header => Sink::Slice(&mut self.header_bytes[self.filled..]),
            Stage::Envelope => Sink::Append {
                bytes_max: self.section_bytes() - self.filled,
                to: &mut self.envelope,
            },
            Stage::Body => Sink::Append {
                bytes_max: self.section_bytes() - self.filled,
                to: &mut self.body,
            },
            Stage::Done => Sink::Complete,
        }
    }

    /// Announced length of the current section.
    fn section_bytes(&self) -> usize {
        let header = self.header.as_ref();
        match self.stage {
            Stage::Header => FRAME_HEADER_BYTES,
            Stage::Envelope => header.map_or(0, |h| usize::from(h.envelope_bytes)),
            Stage::Body => header.map_or(0, |h| h.body_bytes as usize),
            Stage::Done => 0,
        }
    }

    /// Records that `count` bytes were written into the last target, and advances.
    pub(crate) fn advance(
        &mut self,
        count: usize,
        limits: &FrameLimits,
    ) -> Result<(), AssembleError> {
        self.filled += count;
        loop {
            if matches!(self.stage, Stage::Done) || self.filled < self.section_bytes() {
                self.check_appended();
                return Ok(());
            }
            self.filled = 0;
            match self.stage {
                Stage::Header => {
                    let header = FrameHeader::decode(&self.header_bytes, limits)
                        .map_err(AssembleError::Decode)?;
                    if !matches!(header.kind, FrameKind::Request | FrameKind::Response) {
                        return Err(AssembleError::UnexpectedKind(header.kind));
                    }
                    self.envelope = Vec::with_capacity(usize::from(header.envelope_bytes));
                    // The size was checked against body_bytes_max by decode, so this reservation is
                    // bounded by the configured message limit.
                    self.body = Vec::with_capacity(header.body_bytes as usize);
                    self.header = Some(header);
                    self.stage = Stage::Envelope;
                }
                Stage::Envelope => self.stage = Stage::Body,
                Stage::Body => self.stage = Stage::Done,
                Stage::Done => {}
            }
        }
    }

    /// Appending stages count their bytes in the vector itself; `filled` must agree with it.
    fn check_appended(&self) {
        let appended = match self.stage {
            Stage::Envelope => self.envelope.len(),
            Stage::Body => self.body.len(),
            Stage::Header | Stage::Done => return,
        };
        debug_assert_eq!(
            appended, self.filled,
            "advance() count differs from bytes appended"
        );
    }

    pub(crate) fn is_complete(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }

    /// Decodes the completed message. `route` names the route of our own request when this is a
    /// response (the envelope of a response does not repeat it).
    pub(crate) fn finish(
        &mut self,
        limits: &CodecLimits,
        route: Route,
    ) -> Result<Message, AssembleError> {
        let Some(header) = self.header else {
            return Err(AssembleError::Truncated);
        };
        if !self.is_complete() {
            return Err(AssembleError::Truncated);
        }
        let body = Buf::from_vec(std::mem::take(&mut self.body));
        match header.kind {
            FrameKind::Request => {
                let request = envelope::decode_request(&self.envelope, limits)
                    .map_err(AssembleError::Decode)?;
                let priority = priority_from_codec(request.priority);
                Ok(Message::Request {
                    route: Route(request.route),
                    priority,
                    body,
                })
            }
            FrameKind::Response => {
                let response = envelope::decode_response(&self.envelope, limits)
                    .map_err(AssembleError::Decode)?;
                let result = response_result(response.status, response.error_message, route, body);
                Ok(Message::Response { result })
            }
            other => Err(AssembleError::UnexpectedKind(other)),
        }
    }
}

/// `kind` label of each [`DecodeError`] variant, for counters and metrics.
pub const DECODE_ERROR_KINDS: [&str; 10] = [
    "truncated",
    "bad_magic",
    "unsupported_version",
    "unknown_frame_kind",
    "limit_exceeded",
    "invalid_flatbuffer",
    "unknown_enum_value",
    "unexpected_bytes",
    "artifact_length_mismatch",
    "invalid",
];

/// Index of `error`'s kind in [`DECODE_ERROR_KINDS`] (exhaustive: a new variant needs a name).
pub fn decode_error_index(error: &DecodeError) -> usize {
    match error {
        DecodeError::Truncated { .. } => 0,
        DecodeError::BadMagic { .. } => 1,
        DecodeError::UnsupportedVersion { .. } => 2,
        DecodeError::UnknownFrameKind { .. } => 3,
        DecodeError::LimitExceeded { .. } => 4,
        DecodeError::InvalidFlatbuffer(_) => 5,
        DecodeError::UnknownEnumValue { .. } => 6,
        DecodeError::UnexpectedBytes { .. } => 7,
        DecodeError::ArtifactLengthMismatch { .. } => 8,
        DecodeError::Invalid { .. } => 9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` to an assembler in pieces of at most `piece` bytes, the way a stream delivers
    /// them, and returns the assembler.
    fn assemble(bytes: &[u8], piece: usize) -> Result<Assembler, AssembleError> {
        let limits = FrameLimits::default();
        let mut assembler = Assembler::new();
        let mut offset = 0;
        while offset < bytes.len()
            || matches!(assembler.next_sink(), Sink::Append { bytes_max: 0, .. })
        {
            let read = match assembler.next_sink() {
                Sink::Slice(target) => {
                    let read = target.len().min(piece).min(bytes.len() - offset);
                    target[..read].copy_from_slice(&bytes[offset..offset + read]);
                    read
                }
                Sink::Append { to, bytes_max } => {
                    let read = bytes_max.min(piece).min(bytes.len() - offset);
                    let capacity = to.capacity();
                    to.extend_from_slice(&bytes[offset..offset + read]);
                    assert_eq!(to.capacity(), capacity, "the section was reserved whole");
                    read
                }
                Sink::Complete => panic!("bytes after the end of the message"),
            };
            offset += read;
            assembler.advance(read, &limits)?;
        }
        Ok(assembler)
    }

    #[test]
    fn request_assembles_from_any_split() {
        let mut head = request_head(&mut Encoder::default(), Route(9), Priority::High, 300);
        let body: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let mut message = head.to_vec();
        message.extend_from_slice(&body);
        for piece in [1, 7, 64, message.len()] {
            let mut assembler = assemble(&message, piece).unwrap();
            assert!(assembler.is_complete());
            match assembler.finish(&CodecLimits::default(), Route(0)).unwrap() {
                Message::Request {
                    route,
                    priority,
                    body: got,
                } => {
                    assert_eq!((route, priority), (Route(9), Priority::High));
                    assert_eq!(&got[..], &body[..]);
                }
                Message::Response { .. } => panic!("a request decoded as a response"),
            }
        }
        head = response_head(&mut Encoder::default(), &Ok(0));
        let mut assembler = assemble(&head, 5).unwrap();
        match assembler.finish(&CodecLimits::default(), Route(3)).unwrap() {
            Message::Response { result } => assert_eq!(result.map(|b| b.len()), Ok(0)),
            Message::Request { .. } => panic!("a response decoded as a request"),
        }
    }

    #[test]
    fn oversized_body_is_refused_before_reserving() {
        let head = request_head(&mut Encoder::default(), Route(1), Priority::Normal, 2 << 30);
        let error = assemble(&head, head.len())
            .err()
            .expect("over the body limit");
        assert!(
            matches!(
                error,
                AssembleError::Decode(DecodeError::LimitExceeded { .. })
            ),
            "{error}"
        );
    }
}
