//! `plain-tcp`: blocking std TCP over loopback, no TLS, the same request/response pattern framed
//! with a 4-byte length. The loopback ceiling every encrypted transport is compared with.
//!
//! One connection; the client keeps `in_flight` requests outstanding by pipelining them on that
//! connection (responses come back in order, so a FIFO of send times gives each latency). Both
//! ends buffer writes and flush only before they would block on a read, which is how a
//! pipelining TCP client is written when syscalls matter.

use std::collections::VecDeque;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Instant;

use super::case::{Budget, CaseSpec};
use super::load::{Gate, Measurement, PhaseStart, WorkerOutcome};
use super::System;
use crate::host::{pin_current_thread, Placement};

/// Largest frame either end accepts: a peer announcing more is refused (bulk frames are 1 MiB).
pub const FRAME_BYTES_MAX: usize = 2 << 20;

/// Bytes of the length prefix.
const HEADER_BYTES: usize = 4;

/// Read and write buffer of each end: batches the small RPC frames into fewer syscalls; large
/// frames bypass it.
const SOCKET_BUFFER_BYTES: usize = 64 << 10;

pub struct PlainTcp;

impl System for PlainTcp {
    fn name(&self) -> &'static str {
        "plain-tcp"
    }

    fn run(&self, spec: &CaseSpec, placement: Placement) -> Result<Measurement, String> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        let response_bytes = spec.response_bytes;
        let server = thread::Builder::new()
            .name("plain-tcp-server".into())
            .spawn(move || {
                pin_current_thread(placement.server_core);
                let (stream, _) = listener.accept()?;
                serve(stream, response_bytes)
            })
            .map_err(|e| e.to_string())?;
        let spec = spec.clone();
        let client = thread::Builder::new()
            .name("plain-tcp-client".into())
            .spawn(move || {
                pin_current_thread(placement.client_core);
                let stream = TcpStream::connect(address).map_err(|e| format!("connect: {e}"))?;
                run_client(stream, &spec)
            })
            .map_err(|e| e.to_string())?;
        let measurement = client
            .join()
            .map_err(|_| "client thread panicked".to_string())
            .and_then(|measured| measured);
        if measurement.is_err() {
            // The client may have failed before connecting: a connection that closes at once
            // lets the server's accept return and the server see end of stream.
            let _ = TcpStream::connect(address);
        }
        let served = server
            .join()
            .map_err(|_| "server thread panicked".to_string())?;
        let mut measurement = measurement?;
        if let Err(error) = served {
            measurement.errors += 1;
            measurement
                .first_error
                .get_or_insert(format!("server: {error}"));
        }
        Ok(measurement)
    }
}

/// Answers each request frame with a `response_bytes` frame until the client closes.
fn serve(stream: TcpStream, response_bytes: usize) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::with_capacity(SOCKET_BUFFER_BYTES, stream.try_clone()?);
    let mut writer = BufWriter::with_capacity(SOCKET_BUFFER_BYTES, stream);
    let response = frame(response_bytes);
    let mut request = vec![0u8; FRAME_BYTES_MAX];
    loop {
        match read_frame(&mut reader, &mut writer, &mut request) {
            Ok(_) => writer.write_all(&response)?,
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(error) => return Err(error),
        }
    }
}

/// Warm-up, then the measured phase, on one connection.
fn run_client(stream: TcpStream, spec: &CaseSpec) -> Result<Measurement, String> {
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut reader = BufReader::with_capacity(
        SOCKET_BUFFER_BYTES,
        stream.try_clone().map_err(|e| e.to_string())?,
    );
    let mut writer = BufWriter::with_capacity(SOCKET_BUFFER_BYTES, stream);
    let mut pipe = Pipeline {
        reader: &mut reader,
        writer: &mut writer,
        request: frame(spec.request_bytes),
    };
    pipe.phase(spec, spec.warmup)
        .map_err(|e| format!("warm-up: {e}"))?;
    let start = PhaseStart::now();
    let outcome = pipe
        .phase(spec, spec.measure)
        .map_err(|e| format!("measure: {e}"))?;
    Ok(start.finish(outcome))
}

struct Pipeline<'a> {
    reader: &'a mut BufReader<TcpStream>,
    writer: &'a mut BufWriter<TcpStream>,
    request: Vec<u8>,
}

impl Pipeline<'_> {
    /// Keeps up to `in_flight` requests outstanding until the budget is spent, then drains.
    fn phase(&mut self, spec: &CaseSpec, budget: Budget) -> io::Result<WorkerOutcome> {
        let gate = Gate::new(budget, spec.time_cap);
        let mut sent_at: VecDeque<Instant> = VecDeque::with_capacity(spec.in_flight);
        let mut response = vec![0u8; spec.response_bytes.max(1)];
        let mut outcome = WorkerOutcome::default();
        while sent_at.len() < spec.in_flight && gate.take() {
            self.send(&mut sent_at)?;
        }
        while let Some(started) = sent_at.pop_front() {
            let length = read_frame(self.reader, self.writer, &mut response)?;
            if length == spec.response_bytes {
                outcome.record_ok(started.elapsed(), spec.bytes_per_op());
            } else {
                outcome.record_error(format!(
                    "response of {length} bytes, expected {}",
                    spec.response_bytes
                ));
            }
            if gate.take() {
                self.send(&mut sent_at)?;
            }
        }
        self.writer.flush()?;
        outcome.finished = Some(Instant::now());
        Ok(outcome)
    }

    fn send(&mut self, sent_at: &mut VecDeque<Instant>) -> io::Result<()> {
        sent_at.push_back(Instant::now());
        self.writer.write_all(&self.request)
    }
}

/// A frame: little-endian u32 length, then that many bytes (zeros: content does not matter).
fn frame(payload_bytes: usize) -> Vec<u8> {
    assert!(
        payload_bytes <= FRAME_BYTES_MAX,
        "frame larger than FRAME_BYTES_MAX"
    );
    let mut frame = vec![0u8; HEADER_BYTES + payload_bytes];
    frame[..HEADER_BYTES].copy_from_slice(&(payload_bytes as u32).to_le_bytes());
    frame
}

/// Reads one frame into `into` and returns its length. Flushes `writer` first when the bytes
/// already buffered cannot satisfy the read, so neither end ever blocks holding unsent data.
/// A length over the buffer (bounded by [`FRAME_BYTES_MAX`]) is the peer's error.
fn read_frame(
    reader: &mut BufReader<TcpStream>,
    writer: &mut BufWriter<TcpStream>,
    into: &mut [u8],
) -> io::Result<usize> {
    let mut header = [0u8; HEADER_BYTES];
    if reader.buffer().len() < HEADER_BYTES {
        writer.flush()?;
    }
    reader.read_exact(&mut header)?;
    let length = u32::from_le_bytes(header) as usize;
    if length > into.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("peer sent a {length}-byte frame, limit {}", into.len()),
        ));
    }
    if reader.buffer().len() < length {
        writer.flush()?;
    }
    reader.read_exact(&mut into[..length])?;
    Ok(length)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::transport::case::CaseKind;

    #[test]
    fn smoke_runs_every_case() {
        let placement = Placement::detect();
        for kind in CaseKind::ALL {
            let spec = CaseSpec::tiny(kind, 16);
            let started = Instant::now();
            let measurement = PlainTcp.run(&spec, placement).unwrap();
            assert_eq!(measurement.errors, 0, "{:?}", measurement.first_error);
            assert_eq!(measurement.ops, 16);
            assert_eq!(measurement.bytes, 16 * spec.bytes_per_op());
            assert_eq!(measurement.latency.as_ref().map(|l| l.count()), Some(16));
            assert!(started.elapsed() < Duration::from_secs(2));
        }
    }

    #[test]
    fn oversized_frame_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let server = thread::spawn(move || serve(listener.accept().unwrap().0, 8));
        let mut client = TcpStream::connect(address).unwrap();
        client.write_all(&(u32::MAX).to_le_bytes()).unwrap();
        let error = server.join().unwrap().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }
}
