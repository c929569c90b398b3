//! The RPC envelope: the FlatBuffers table between a frame's header and its body.
//!
//! Each frame kind has one envelope type; [`Envelope`] is their union, [`decode_envelope`] picks
//! the table by the frame kind, and [`decode_frame`] does header, envelope and body in one call.

use crate::encoder::Encoder;
use crate::error::{check_decode_limit, check_encode_limit, DecodeError, EncodeError};
use crate::frame::{encode_frame, split_frame, FrameHeader, FrameKind, FrameLimits};
use crate::generated::wire;
use crate::limits::CodecLimits;
use crate::verify;

/// Declares a Rust enum mirroring a FlatBuffers enum, with the checked conversion from the wire
/// (an unknown value is the peer's error, not a silent default).
macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident, $wire:path, $field:literal, { $($variant:ident = $value:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum $name {
            $($variant = $value),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn to_wire(self) -> $wire {
                $wire(self as u8)
            }

            pub fn from_wire(value: $wire) -> Result<$name, DecodeError> {
                match value.0 {
                    $($value => Ok($name::$variant),)+
                    other => Err(DecodeError::UnknownEnumValue { field: $field, value: other }),
                }
            }
        }
    };
}

wire_enum!(
    /// Scheduling priority of a request; mirrors `icn.wire.Priority`.
    Priority, wire::Priority, "RpcRequest.priority", { Low = 0, Normal = 1, High = 2 }
);

wire_enum!(
    /// How an RPC ended; mirrors `icn.wire.RpcStatus` (see the schema for each value's meaning).
    RpcStatus, wire::RpcStatus, "RpcResponse.status", {
        Ok = 0,
        NoRoute = 1,
        MessageTooLarge = 2,
        HandlerError = 3,
        Overloaded = 4,
        Cancelled = 5,
        BadRequest = 6,
    }
);

wire_enum!(
    /// Why a node closes a connection; mirrors `icn.wire.GoawayReason`.
    GoawayReason, wire::GoawayReason, "Goaway.reason", {
        Shutdown = 0,
        NotInSubnet = 1,
        ProtocolError = 2,
        Idle = 3,
        Replaced = 4,
    }
);

/// Envelope of a Request frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestEnvelope {
    pub request_id: u64,
    pub route: u16,
    pub priority: Priority,
    /// Milliseconds the client still waits; 0 means no deadline.
    pub deadline_ms: u32,
}

/// Envelope of a Response frame; borrows its error message from the received bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseEnvelope<'a> {
    pub request_id: u64,
    pub status: RpcStatus,
    /// Empty for `Ok`.
    pub error_message: &'a str,
}

/// Envelope of a Cancel frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CancelEnvelope {
    pub request_id: u64,
}

/// Envelope of a Ping frame and of the Pong frame that answers it with the same nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartbeatEnvelope {
    pub nonce: u64,
}

/// Envelope of a Goaway frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoawayEnvelope<'a> {
    pub reason: GoawayReason,
    /// The highest request id the sender still serves; later ones will not be answered.
    pub last_request_id: u64,
    pub message: &'a str,
}

/// The envelope of any frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Envelope<'a> {
    Request(RequestEnvelope),
    Response(ResponseEnvelope<'a>),
    Cancel(CancelEnvelope),
    Ping(HeartbeatEnvelope),
    Pong(HeartbeatEnvelope),
    Goaway(GoawayEnvelope<'a>),
}

impl Envelope<'_> {
    pub fn kind(&self) -> FrameKind {
        match self {
            Envelope::Request(_) => FrameKind::Request,
            Envelope::Response(_) => FrameKind::Response,
            Envelope::Cancel(_) => FrameKind::Cancel,
            Envelope::Ping(_) => FrameKind::Ping,
            Envelope::Pong(_) => FrameKind::Pong,
            Envelope::Goaway(_) => FrameKind::Goaway,
        }
    }

    /// Whether a frame with this envelope may carry a body: a request, and a successful
    /// response. Everything else is control and carries none.
    pub fn allows_body(&self) -> bool {
        match self {
            Envelope::Request(_) => true,
            Envelope::Response(response) => response.status == RpcStatus::Ok,
            _ => false,
        }
    }
}

/// A whole decoded frame, borrowing from the received bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub header: FrameHeader,
    pub envelope: Envelope<'a>,
    pub body: &'a [u8],
}

pub fn decode_request(bytes: &[u8], limits: &CodecLimits) -> Result<RequestEnvelope, DecodeError> {
    let table = verify::root::<wire::RpcRequest>(bytes, limits)?;
    Ok(RequestEnvelope {
        request_id: table.request_id(),
        route: table.route(),
        priority: Priority::from_wire(table.priority())?,
        deadline_ms: table.deadline_ms(),
    })
}

pub fn decode_response<'a>(
    bytes: &'a [u8],
    limits: &CodecLimits,
) -> Result<ResponseEnvelope<'a>, DecodeError> {
    let table = verify::root::<wire::RpcResponse>(bytes, limits)?;
    let error_message = table.error_message().unwrap_or_default();
    check_decode_limit(
        "error_message_bytes_max",
        error_message.len(),
        limits.error_message_bytes_max,
    )?;
    Ok(ResponseEnvelope {
        request_id: table.request_id(),
        status: RpcStatus::from_wire(table.status())?,
        error_message,
    })
}

pub fn decode_cancel(bytes: &[u8], limits: &CodecLimits) -> Result<CancelEnvelope, DecodeError> {
    let table = verify::root::<wire::Cancel>(bytes, limits)?;
    Ok(CancelEnvelope {
        request_id: table.request_id(),
    })
}

pub fn decode_heartbeat(
    bytes: &[u8],
    limits: &CodecLimits,
) -> Result<HeartbeatEnvelope, DecodeError> {
    let table = verify::root::<wire::Heartbeat>(bytes, limits)?;
    Ok(HeartbeatEnvelope {
        nonce: table.nonce(),
    })
}

pub fn decode_goaway<'a>(
    bytes: &'a [u8],
    limits: &CodecLimits,
) -> Result<GoawayEnvelope<'a>, DecodeError> {
    let table = verify::root::<wire::Goaway>(bytes, limits)?;
    let message = table.message().unwrap_or_default();
    check_decode_limit(
        "error_message_bytes_max",
        message.len(),
        limits.error_message_bytes_max,
    )?;
    Ok(GoawayEnvelope {
        reason: GoawayReason::from_wire(table.reason())?,
        last_request_id: table.last_request_id(),
        message,
    })
}

/// Decodes the envelope of a frame of `kind`.
pub fn decode_envelope<'a>(
    kind: FrameKind,
    bytes: &'a [u8],
    limits: &CodecLimits,
) -> Result<Envelope<'a>, DecodeError> {
    Ok(match kind {
        FrameKind::Request => Envelope::Request(decode_request(bytes, limits)?),
        FrameKind::Response => Envelope::Response(decode_response(bytes, limits)?),
        FrameKind::Cancel => Envelope::Cancel(decode_cancel(bytes, limits)?),
        FrameKind::Ping => Envelope::Ping(decode_heartbeat(bytes, limits)?),
        FrameKind::Pong => Envelope::Pong(decode_heartbeat(bytes, limits)?),
        FrameKind::Goaway => Envelope::Goaway(decode_goaway(bytes, limits)?),
    })
}

/// Decodes the whole frame at the start of `bytes`: header (checked against `frame_limits`),
/// envelope (verified with `codec_limits`) and body. Bytes after the frame are left alone;
/// `frame.header.frame_bytes()` says how many were used.
pub fn decode_frame<'a>(
    bytes: &'a [u8],
    frame_limits: &FrameLimits,
    codec_limits: &CodecLimits,
) -> Result<Frame<'a>, DecodeError> {
    let (header, envelope_bytes, body) = split_frame(bytes, frame_limits)?;
    let envelope = decode_envelope(header.kind, envelope_bytes, codec_limits)?;
    if !envelope.allows_body() && !body.is_empty() {
        return Err(DecodeError::UnexpectedBytes {
            kind: header.kind.name(),
            bytes: body.len() as u64,
        });
    }
    Ok(Frame {
        header,
        envelope,
        body,
    })
}

impl Encoder {
    pub fn encode_request(&mut self, request: &RequestEnvelope) -> Result<&[u8], EncodeError> {
        let builder = self.start();
        let args = wire::RpcRequestArgs {
            request_id: request.request_id,
            route: request.route,
            priority: request.priority.to_wire(),
            deadline_ms: request.deadline_ms,
        };
        let root = wire::RpcRequest::create(builder, &args);
        self.finish(root)
    }

    pub fn encode_response(
        &mut self,
        response: &ResponseEnvelope<'_>,
    ) -> Result<&[u8], EncodeError> {
        let limit = self.limits().error_message_bytes_max;
        check_encode_limit(
            "error_message_bytes_max",
            response.error_message.len(),
            limit,
        )?;
        let builder = self.start();
        let error_message = (!response.error_message.is_empty())
            .then(|| builder.create_string(response.error_message));
        let args = wire::RpcResponseArgs {
            request_id: response.request_id,
            status: response.status.to_wire(),
            error_message,
        };
        let root = wire::RpcResponse::create(builder, &args);
        self.finish(root)
    }

    pub fn encode_cancel(&mut self, cancel: &CancelEnvelope) -> Result<&[u8], EncodeError> {
        let builder = self.start();
        let args = wire::CancelArgs {
            request_id: cancel.request_id,
        };
        let root = wire::Cancel::create(builder, &args);
        self.finish(root)
    }

    pub fn encode_heartbeat(
        &mut self,
        heartbeat: &HeartbeatEnvelope,
    ) -> Result<&[u8], EncodeError> {
        let builder = self.start();
        let args = wire::HeartbeatArgs {
            nonce: heartbeat.nonce,
        };
        let root = wire::Heartbeat::create(builder, &args);
        self.finish(root)
    }

    pub fn encode_goaway(&mut self, goaway: &GoawayEnvelope<'_>) -> Result<&[u8], EncodeError> {
        let limit = self.limits().error_message_bytes_max;
        check_encode_limit("error_message_bytes_max", goaway.message.len(), limit)?;
        let builder = self.start();
        let message = (!goaway.message.is_empty()).then(|| builder.create_string(goaway.message));
        let args = wire::GoawayArgs {
            reason: goaway.reason.to_wire(),
            last_request_id: goaway.last_request_id,
            message,
        };
        let root = wire::Goaway::create(builder, &args);
        self.finish(root)
    }

    /// Encodes the envelope alone (no frame header).
    pub fn encode_envelope(&mut self, envelope: &Envelope<'_>) -> Result<&[u8], EncodeError> {
        match envelope {
            Envelope::Request(request) => self.encode_request(request),
            Envelope::Response(response) => self.encode_response(response),
            Envelope::Cancel(cancel) => self.encode_cancel(cancel),
            Envelope::Ping(heartbeat) | Envelope::Pong(heartbeat) => {
                self.encode_heartbeat(heartbeat)
            }
            Envelope::Goaway(goaway) => self.encode_goaway(goaway),
        }
    }

    /// Appends a frame's header and envelope to `out`; the caller sends `body_bytes` of body
    /// after them from its own buffer. On error `out` is left as it was.
    pub fn encode_frame(
        &mut self,
        envelope: &Envelope<'_>,
        body_bytes: u64,
        out: &mut Vec<u8>,
    ) -> Result<FrameHeader, EncodeError> {
        if !envelope.allows_body() && body_bytes != 0 {
            return Err(EncodeError::UnexpectedBody {
                kind: envelope.kind().name(),
                bytes: body_bytes,
            });
        }
        let envelope_bytes = self.encode_envelope(envelope)?;
        encode_frame(envelope.kind(), envelope_bytes, body_bytes, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flatbuffers::{FlatBufferBuilder, InvalidFlatbuffer};
    use proptest::prelude::*;

    fn limits() -> CodecLimits {
        CodecLimits::default()
    }

    fn any_priority() -> impl Strategy<Value = Priority> {
        proptest::sample::select(Priority::ALL)
    }

    fn any_status() -> impl Strategy<Value = RpcStatus> {
        proptest::sample::select(RpcStatus::ALL)
    }

    fn any_reason() -> impl Strategy<Value = GoawayReason> {
        proptest::sample::select(GoawayReason::ALL)
    }

    fn any_message() -> impl Strategy<Value = String> {
        proptest::string::string_regex("\\PC{0,40}").expect("valid regex")
    }

    fn any_request() -> impl Strategy<Value = RequestEnvelope> {
        (any::<u64>(), any::<u16>(), any_priority(), any::<u32>()).prop_map(
            |(request_id, route, priority, deadline_ms)| RequestEnvelope {
                request_id,
                route,
                priority,
                deadline_ms,
            },
        )
    }

    proptest! {
        #[test]
        fn request_round_trips(request in any_request()) {
            let mut encoder = Encoder::default();
            let bytes = encoder.encode_request(&request).unwrap();
            prop_assert_eq!(decode_request(bytes, &limits()), Ok(request));
        }

        #[test]
        fn response_round_trips(request_id: u64, status in any_status(), message in any_message()) {
            let response = ResponseEnvelope { request_id, status, error_message: &message };
            let mut encoder = Encoder::default();
            let bytes = encoder.encode_response(&response).unwrap();
            prop_assert_eq!(decode_response(bytes, &limits()), Ok(response));
        }

        #[test]
        fn cancel_and_heartbeat_round_trip(request_id: u64, nonce: u64) {
            let mut encoder = Encoder::default();
            let cancel = CancelEnvelope { request_id };
            prop_assert_eq!(decode_cancel(encoder.encode_cancel(&cancel).unwrap(), &limits()), Ok(cancel));
            let heartbeat = HeartbeatEnvelope { nonce };
            let bytes = encoder.encode_heartbeat(&heartbeat).unwrap();
            prop_assert_eq!(decode_heartbeat(bytes, &limits()), Ok(heartbeat));
        }

        #[test]
        fn goaway_round_trips(reason in any_reason(), last_request_id: u64, message in any_message()) {
            let goaway = GoawayEnvelope { reason, last_request_id, message: &message };
            let mut encoder = Encoder::default();
            let bytes = encoder.encode_goaway(&goaway).unwrap();
            prop_assert_eq!(decode_goaway(bytes, &limits()), Ok(goaway));
        }

        #[test]
        fn request_frame_round_trips(request in any_request(), body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let envelope = Envelope::Request(request);
            let mut wire = Vec::new();
            let header = Encoder::default().encode_frame(&envelope, body.len() as u64, &mut wire).unwrap();
            wire.extend_from_slice(&body);
            let frame = decode_frame(&wire, &FrameLimits::default(), &limits()).unwrap();
            prop_assert_eq!(frame, Frame { header, envelope, body: &body });
            prop_assert_eq!(header.frame_bytes() as usize, wire.len());
        }

        #[test]
        fn garbage_never_panics(kind in proptest::sample::select(FrameKind::ALL.to_vec()),
                                bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = decode_envelope(kind, &bytes, &limits());
        }

        #[test]
        fn every_truncated_envelope_is_an_error(cut_fraction in 0.0f64..1.0) {
            let mut encoder = Encoder::default();
            // "bad" + NUL fills the last 4 bytes exactly: no trailing padding that a cut could
            // remove without harm, so every cut removes something the message refers to.
            let response = ResponseEnvelope { request_id: 9, status: RpcStatus::HandlerError, error_message: "bad" };
            let bytes = encoder.encode_response(&response).unwrap();
            let cut = (bytes.len() as f64 * cut_fraction) as usize;
            prop_assert!(decode_response(&bytes[..cut], &limits()).is_err());
        }
    }

    #[test]
    fn every_frame_kind_round_trips() {
        let envelopes = [
            Envelope::Request(RequestEnvelope {
                request_id: 1,
                route: 2,
                priority: Priority::High,
                deadline_ms: 3,
            }),
            Envelope::Response(ResponseEnvelope {
                request_id: 1,
                status: RpcStatus::Ok,
                error_message: "",
            }),
            Envelope::Cancel(CancelEnvelope { request_id: 1 }),
            Envelope::Ping(HeartbeatEnvelope { nonce: 7 }),
            Envelope::Pong(HeartbeatEnvelope { nonce: 7 }),
            Envelope::Goaway(GoawayEnvelope {
                reason: GoawayReason::Replaced,
                last_request_id: 4,
                message: "newer connection",
            }),
        ];
        let mut encoder = Encoder::default();
        for envelope in envelopes {
            let mut wire = Vec::new();
            let header = encoder.encode_frame(&envelope, 0, &mut wire).unwrap();
            assert_eq!(header.kind, envelope.kind());
            let frame = decode_frame(&wire, &FrameLimits::default(), &limits()).unwrap();
            assert_eq!(frame.envelope, envelope);
        }
    }

    #[test]
    fn unknown_enum_values_are_rejected() {
        let mut builder = FlatBufferBuilder::new();
        let args = wire::RpcRequestArgs {
            priority: wire::Priority(3),
            ..Default::default()
        };
        let root = wire::RpcRequest::create(&mut builder, &args);
        builder.finish_minimal(root);
        assert_eq!(
            decode_request(builder.finished_data(), &limits()),
            Err(DecodeError::UnknownEnumValue {
                field: "RpcRequest.priority",
                value: 3
            })
        );
        builder.reset();
        let args = wire::RpcResponseArgs {
            status: wire::RpcStatus(200),
            ..Default::default()
        };
        let root = wire::RpcResponse::create(&mut builder, &args);
        builder.finish_minimal(root);
        assert!(matches!(
            decode_response(builder.finished_data(), &limits()),
            Err(DecodeError::UnknownEnumValue { value: 200, .. })
        ));
    }

    #[test]
    fn long_error_messages_are_refused_on_both_sides() {
        let small = CodecLimits {
            error_message_bytes_max: 8,
            ..limits()
        };
        let response = ResponseEnvelope {
            request_id: 1,
            status: RpcStatus::HandlerError,
            error_message: "a message of more than eight bytes",
        };
        let bytes = Encoder::default()
            .encode_response(&response)
            .unwrap()
            .to_vec();
        assert_eq!(
            decode_response(&bytes, &small),
            Err(DecodeError::LimitExceeded {
                limit: "error_message_bytes_max",
                value: 34,
                max: 8
            })
        );
        let result = Encoder::new(small)
            .encode_response(&response)
            .map(<[u8]>::to_vec);
        assert!(matches!(
            result,
            Err(EncodeError::LimitExceeded { value: 34, .. })
        ));
    }

    #[test]
    fn oversized_and_garbage_envelopes_get_their_error_kinds() {
        let small = CodecLimits {
            message_bytes_max: 16,
            ..limits()
        };
        let garbage = [0xffu8; 64];
        assert!(matches!(
            decode_cancel(&garbage, &small),
            Err(DecodeError::LimitExceeded {
                limit: "message_bytes_max",
                value: 64,
                ..
            })
        ));
        assert!(matches!(
            decode_cancel(&garbage, &limits()),
            Err(DecodeError::InvalidFlatbuffer(_))
        ));
        assert!(matches!(
            decode_heartbeat(&[], &limits()),
            Err(DecodeError::InvalidFlatbuffer(_))
        ));
    }

    #[test]
    fn verifier_options_come_from_the_limits() {
        let bytes = Encoder::default()
            .encode_cancel(&CancelEnvelope { request_id: 5 })
            .unwrap()
            .to_vec();
        let no_tables = CodecLimits {
            tables_max: 0,
            ..limits()
        };
        assert_eq!(
            decode_cancel(&bytes, &no_tables),
            Err(DecodeError::InvalidFlatbuffer(
                InvalidFlatbuffer::TooManyTables
            ))
        );
        let tiny_apparent = CodecLimits {
            apparent_bytes_max: 4,
            ..limits()
        };
        assert_eq!(
            decode_cancel(&bytes, &tiny_apparent),
            Err(DecodeError::InvalidFlatbuffer(
                InvalidFlatbuffer::ApparentSizeTooLarge
            ))
        );
    }

    #[test]
    fn control_frames_carry_no_body() {
        let cancel = Envelope::Cancel(CancelEnvelope { request_id: 1 });
        let mut wire = Vec::new();
        assert_eq!(
            Encoder::default().encode_frame(&cancel, 3, &mut wire),
            Err(EncodeError::UnexpectedBody {
                kind: "Cancel",
                bytes: 3
            })
        );
        assert!(wire.is_empty());
        // A peer that sends one anyway: build the frame by hand.
        let mut encoder = Encoder::default();
        let envelope = encoder
            .encode_cancel(&CancelEnvelope { request_id: 1 })
            .unwrap();
        encode_frame(FrameKind::Cancel, envelope, 3, &mut wire).unwrap();
        wire.extend_from_slice(&[1, 2, 3]);
        assert_eq!(
            decode_frame(&wire, &FrameLimits::default(), &limits()),
            Err(DecodeError::UnexpectedBytes {
                kind: "Cancel",
                bytes: 3
            })
        );
        let failed = Envelope::Response(ResponseEnvelope {
            request_id: 1,
            status: RpcStatus::Overloaded,
            error_message: "",
        });
        assert!(encoder.encode_frame(&failed, 1, &mut Vec::new()).is_err());
    }

    #[test]
    fn encoder_reuses_its_builder() {
        let mut encoder = Encoder::default();
        let first = encoder
            .encode_cancel(&CancelEnvelope { request_id: 1 })
            .unwrap()
            .to_vec();
        encoder
            .encode_goaway(&GoawayEnvelope {
                reason: GoawayReason::Idle,
                last_request_id: 3,
                message: "idle for too long",
            })
            .unwrap();
        let again = encoder
            .encode_cancel(&CancelEnvelope { request_id: 1 })
            .unwrap();
        assert_eq!(
            again,
            &first[..],
            "reset leaves nothing behind from the previous message"
        );
    }
}
