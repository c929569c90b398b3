//! `crypto-ceiling`: BoringSSL AES-128-GCM seal + open of full-size QUIC packets on one core.
//!
//! Every QUIC byte is sealed once by the sender and opened once by the receiver, so the bytes
//! per second one core can seal *and* open is a ceiling on the goodput per core of both ends
//! together that no QUIC stack can beat (header protection, framing, acks and I/O all come on
//! top). The packet is laid out as QUIC's short-header 1-RTT packet: 13 header bytes
//! authenticated as associated data, then the sealed payload, then a 16-byte tag, 1452 bytes in
//! all. The same buffer is sealed and opened again and again with the nonce incremented (as the
//! packet number does), with no allocation per packet.

use std::thread;
use std::time::Instant;

use boring::aead::{AeadCtx, Algorithm};
use serde_json::{json, Value};

use super::case::{quic, Budget, CaseKind, CaseSpec};
use super::load::{Gate, Measurement, PhaseStart, WorkerOutcome};
use super::System;
use crate::host::{pin_current_thread, Placement};

/// Short header: 1 flags byte, 8-byte connection id, 4-byte packet number.
const HEADER_BYTES: usize = 13;
const TAG_BYTES: usize = 16;
/// Payload bytes sealed per packet (everything between header and tag).
pub const SEALED_BYTES: usize = quic::PACKET_BYTES as usize - HEADER_BYTES - TAG_BYTES;
/// Packets between two looks at the clock and the budget (a clock read per packet would be a
/// measurable share of a ~0.3 us packet).
const PACKETS_PER_CHECK: u64 = 64;

pub struct CryptoCeiling;

impl System for CryptoCeiling {
    fn name(&self) -> &'static str {
        "crypto-ceiling"
    }

    /// Only bulk: the ceiling is about full-size packets.
    fn supports(&self, case: CaseKind) -> bool {
        case == CaseKind::Bulk1MiB
    }

    fn run(&self, spec: &CaseSpec, placement: Placement) -> Result<Measurement, String> {
        let spec = spec.clone();
        thread::Builder::new()
            .name("crypto-ceiling".into())
            .spawn(move || {
                pin_current_thread(placement.client_core);
                let mut sealer = PacketSealer::new()?;
                sealer.phase(&spec, spec.warmup)?;
                let start = PhaseStart::now();
                let outcome = sealer.phase(&spec, spec.measure)?;
                let mut measurement = start.finish(outcome);
                measurement.latency = None;
                Ok(measurement)
            })
            .map_err(|e| e.to_string())?
            .join()
            .map_err(|_| "crypto thread panicked".to_string())?
    }

    fn config(&self) -> std::collections::BTreeMap<String, Value> {
        std::collections::BTreeMap::from([
            (
                "aead".into(),
                json!("AES-128-GCM (BoringSSL EVP_AEAD), seal + open on one core"),
            ),
            ("packet_bytes".into(), json!(quic::PACKET_BYTES)),
            ("sealed_bytes_per_packet".into(), json!(SEALED_BYTES)),
            ("associated_data_bytes".into(), json!(HEADER_BYTES)),
        ])
    }
}

struct PacketSealer {
    context: AeadCtx,
    header: [u8; HEADER_BYTES],
    payload: Vec<u8>,
    tag: [u8; TAG_BYTES],
    nonce: [u8; 12],
    packet_number: u64,
}

impl PacketSealer {
    fn new() -> Result<PacketSealer, String> {
        let key = [0x42u8; 16];
        let context = AeadCtx::new_default_tag(&Algorithm::aes_128_gcm(), &key)
            .map_err(|e| format!("AEAD init: {e}"))?;
        Ok(PacketSealer {
            context,
            header: [0x40; HEADER_BYTES],
            payload: vec![0x17; SEALED_BYTES],
            tag: [0; TAG_BYTES],
            nonce: [0; 12],
            packet_number: 0,
        })
    }

    /// Seals and opens packets until the budget (of 1 MiB messages, or of time) is spent.
    fn phase(&mut self, spec: &CaseSpec, budget: Budget) -> Result<WorkerOutcome, String> {
        let packets_budget = match budget {
            Budget::Ops(messages) => {
                let bytes = messages * spec.request_bytes as u64;
                Budget::Ops(
                    bytes
                        .div_ceil(SEALED_BYTES as u64)
                        .div_ceil(PACKETS_PER_CHECK),
                )
            }
            time => time,
        };
        let gate = Gate::new(packets_budget, spec.time_cap);
        let mut outcome = WorkerOutcome::default();
        while gate.take() {
            for _ in 0..PACKETS_PER_CHECK {
                self.seal_and_open_one()?;
            }
            outcome.ops += PACKETS_PER_CHECK;
            outcome.bytes += PACKETS_PER_CHECK * SEALED_BYTES as u64;
        }
        outcome.finished = Some(Instant::now());
        Ok(outcome)
    }

    fn seal_and_open_one(&mut self) -> Result<(), String> {
        self.packet_number += 1;
        self.nonce[4..].copy_from_slice(&self.packet_number.to_be_bytes());
        self.context
            .seal_in_place_mut(&self.nonce, &mut self.payload, &mut self.tag, &self.header)
            .map_err(|e| format!("seal: {e}"))?;
        self.context
            .open_in_place_mut(&self.nonce, &mut self.payload, &self.tag, &self.header)
            .map_err(|e| format!("open of our own packet failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_layout_fills_the_quic_packet() {
        assert_eq!(HEADER_BYTES + SEALED_BYTES + TAG_BYTES, 1452);
    }

    #[test]
    fn round_trip_restores_the_payload_and_a_bad_tag_is_refused() {
        let mut sealer = PacketSealer::new().unwrap();
        sealer.packet_number = 7;
        sealer.nonce[4..].copy_from_slice(&8u64.to_be_bytes());
        let plain = sealer.payload.clone();
        sealer.seal_and_open_one().unwrap();
        assert_eq!(sealer.payload, plain);
        let nonce = sealer.nonce;
        sealer
            .context
            .seal_in_place_mut(&nonce, &mut sealer.payload, &mut sealer.tag, &[])
            .unwrap();
        assert_ne!(sealer.payload, plain, "sealing changes the bytes");
        sealer.tag[0] ^= 1;
        let refused =
            sealer
                .context
                .open_in_place_mut(&nonce, &mut sealer.payload, &sealer.tag, &[]);
        assert!(refused.is_err());
    }

    #[test]
    fn smoke_measures_bytes_without_latency() {
        let spec = CaseSpec::tiny(CaseKind::Bulk1MiB, 4);
        let measurement = CryptoCeiling.run(&spec, Placement::detect()).unwrap();
        assert_eq!(measurement.errors, 0);
        assert!(
            measurement.bytes >= 4 << 20,
            "sealed at least the 4 MiB asked for"
        );
        assert!(measurement.latency.is_none());
        assert!(measurement.cpu.is_some());
    }
}
