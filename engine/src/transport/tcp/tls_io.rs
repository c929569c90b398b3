//! BoringSSL driven over a glommio TCP stream.
//!
//! `SslStream` is synchronous, so it runs over [`MemoryIo`]: ciphertext read from the socket is
//! appended to an input buffer, and ciphertext BoringSSL produces is collected in an output buffer
//! that the writer flushes to the socket. An empty input buffer reads as `WouldBlock`, which
//! BoringSSL reports as `WANT_READ`; that is the signal to read the socket. All socket calls are
//! non-blocking and issued from the executor (glommio's stream tries the syscall, then parks on
//! io_uring readiness), so nothing here ever blocks the shard.
//!
//! The reader and the writer are separate tasks sharing one [`TlsSocket`]; each borrows the
//! `RefCell`s only inside a synchronous step, never across an `.await`.
//!
//! Once the handshake is done the socket is attached to the buffers ([`MemoryIo::attach`]), and
//! BoringSSL's reads and writes try the socket itself first, with non-blocking `recv`/`send`:
//! ciphertext then moves between the kernel and BoringSSL's own record buffers without the
//! extra copy through `input`/`output` (the TCP contexts turn read-ahead on, so BoringSSL asks
//! for whole buffers, not a record header and then its body; a read under
//! [`DIRECT_READ_MIN`] still goes through `input`, filled by one larger `recv`). Only when the
//! socket has nothing (`EAGAIN`) does a read fall back to awaiting readiness, and a write goes to `output` whenever the socket is full,
//! ciphertext is already queued there, or the writer's flush is in flight (so bytes keep their
//! order).

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use boring::ssl::{ErrorCode, HandshakeError, MidHandshakeSslStream, SslStream};
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

/// Ciphertext buffers between BoringSSL and the socket.
pub struct MemoryIo {
    /// Ciphertext received and not yet consumed by BoringSSL: `input[start..end]`.
    input: Box<[u8]>,
    start: usize,
    end: usize,
    /// Ciphertext BoringSSL produced and the socket has not taken yet.
    output: Vec<u8>,
    /// The connected socket, once the handshake is done: tried directly before the buffers.
    socket: Option<RawFd>,
    /// A flush of `output` to the socket is in flight: new ciphertext queues behind it.
    flushing: bool,
}

impl MemoryIo {
    /// `input_bytes` bounds how much ciphertext is read ahead (at least one TLS record).
    pub fn new(input_bytes: usize) -> MemoryIo {
        assert!(
            input_bytes >= MIN_INPUT_BYTES,
            "input buffer smaller than a TLS record"
        );
        MemoryIo {
            input: vec![0; input_bytes].into_boxed_slice(),
            start: 0,
            end: 0,
            output: Vec::new(),
            socket: None,
            flushing: false,
        }
    }

    /// Lets BoringSSL read and write `socket` directly (see the module docs). `socket` must be
    /// the non-blocking stream this connection's buffers are filled from and flushed to, and
    /// stay open as long as these buffers are in use.
    pub fn attach(&mut self, socket: RawFd) {
        self.socket = Some(socket);
    }

    /// One non-blocking `recv` into `buf`; None where the socket has nothing now (or is at its
    /// end, which the awaiting path reports).
    fn recv_direct(socket: RawFd, buf: &mut [u8]) -> Option<io::Result<usize>> {
        loop {
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call.
            let n = unsafe {
                libc::recv(
                    socket,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                return Some(Ok(n as usize));
            }
            if n == 0 {
                return None;
            }
            let error = io::Error::last_os_error();
            match error.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return None,
                _ => return Some(Err(error)),
            }
        }
    }

    /// One non-blocking `send` of `buf`; how much the socket took (0 when it is full or failed:
    /// the rest goes through `output` and its flush, which reports a failure).
    fn send_direct(socket: RawFd, buf: &[u8]) -> usize {
        loop {
            // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the whole call.
            let n = unsafe {
                libc::send(
                    socket,
                    buf.as_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n >= 0 {
                return n as usize;
            }
            if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return 0;
            }
        }
    }

    /// Free space at the end of the input buffer, compacting first when that frees room.
    fn input_space(&mut self) -> &mut [u8] {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.input.len() && self.start > 0 {
            self.input.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        &mut self.input[self.end..]
    }
}

/// A TLS record is at most 16 KiB of plaintext plus overhead; the input buffer must hold one.
pub const MIN_INPUT_BYTES: usize = 17 << 10;

/// BoringSSL reads at least this much directly from the socket; a smaller read (a record
/// header, a small record) fills `input` with one larger `recv` instead, so small records
/// cost one syscall for many rather than two each.
const DIRECT_READ_MIN: usize = 4096;

impl Read for MemoryIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.start == self.end {
            let Some(socket) = self.socket else {
                return Err(io::ErrorKind::WouldBlock.into());
            };
            if buf.len() >= DIRECT_READ_MIN {
                return MemoryIo::recv_direct(socket, buf)
                    .unwrap_or_else(|| Err(io::ErrorKind::WouldBlock.into()));
            }
            match MemoryIo::recv_direct(socket, self.input_space()) {
                Some(Ok(n)) => self.end += n,
                Some(Err(error)) => return Err(error),
                None => return Err(io::ErrorKind::WouldBlock.into()),
            }
        }
        let n = buf.len().min(self.end - self.start);
        buf[..n].copy_from_slice(&self.input[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }
}

impl Write for MemoryIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let sent = match self.socket {
            Some(socket) if !self.flushing && self.output.is_empty() => {
                MemoryIo::send_direct(socket, buf)
            }
            _ => 0,
        };
        self.output.extend_from_slice(&buf[sent..]);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads socket bytes into `io`'s input buffer; `Ok(0)` means the peer closed the stream.
fn poll_fill(
    stream: &RefCell<TcpStream>,
    cx: &mut Context<'_>,
    io: &mut MemoryIo,
) -> Poll<io::Result<usize>> {
    let mut stream = stream.borrow_mut();
    let polled = Pin::new(&mut *stream).poll_read(cx, io.input_space());
    if let Poll::Ready(Ok(n)) = polled {
        io.end += n;
    }
    polled
}

/// Writes all of `bytes` to the socket.
async fn write_all(stream: &RefCell<TcpStream>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *stream.borrow_mut()).poll_write(cx, bytes)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
    }
    Ok(())
}

/// Runs a handshake to completion over `stream`.
pub async fn handshake(
    stream: &RefCell<TcpStream>,
    mut mid: MidHandshakeSslStream<MemoryIo>,
) -> Result<SslStream<MemoryIo>, String> {
    loop {
        let pending = std::mem::take(&mut mid.get_mut().output);
        write_all(stream, &pending)
            .await
            .map_err(|e| format!("handshake write: {e}"))?;
        let n = poll_fn(|cx| poll_fill(stream, cx, mid.get_mut()))
            .await
            .map_err(|e| format!("handshake read: {e}"))?;
        if n == 0 {
            return Err("peer closed the connection during the handshake".into());
        }
        match mid.handshake() {
            Ok(mut done) => {
                let pending = std::mem::take(&mut done.get_mut().output);
                write_all(stream, &pending)
                    .await
                    .map_err(|e| format!("handshake write: {e}"))?;
                return Ok(done);
            }
            Err(HandshakeError::WouldBlock(next)) => mid = next,
            Err(HandshakeError::Failure(mut failed)) => {
                // Best effort: let the peer see our alert.
                let alert = std::mem::take(&mut failed.get_mut().output);
                let _ = write_all(stream, &alert).await;
                return Err(format!("handshake failed: {}", failed.error()));
            }
            Err(HandshakeError::SetupFailure(error)) => return Err(format!("TLS setup: {error}")),
        }
    }
}

/// Starts a handshake: the first `handshake()` call happens before any read, so a client's
/// ClientHello goes out first.
pub fn start(
    mid: MidHandshakeSslStream<MemoryIo>,
) -> Result<MidHandshakeSslStream<MemoryIo>, HandshakeError<MemoryIo>> {
    match mid.handshake() {
        Ok(_) => unreachable!("a handshake cannot finish before any byte was received"),
        Err(HandshakeError::WouldBlock(mid)) => Ok(mid),
        Err(other) => Err(other),
    }
}

/// An established TLS connection shared by one reader and one writer task.
pub struct TlsSocket {
    stream: RefCell<TcpStream>,
    tls: RefCell<SslStream<MemoryIo>>,
    /// Wakes the writer when the reader made BoringSSL produce output (alerts, key updates).
    writer_waker: Cell<Option<Waker>>,
}

impl TlsSocket {
    pub fn new(stream: RefCell<TcpStream>, mut tls: SslStream<MemoryIo>) -> TlsSocket {
        tls.get_mut().attach(stream.borrow().as_raw_fd());
        TlsSocket {
            stream,
            tls: RefCell::new(tls),
            writer_waker: Cell::new(None),
        }
    }

    /// Decrypts into `buf`; `Ok(0)` is a clean end of stream (close_notify or EOF).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        debug_assert!(!buf.is_empty());
        loop {
            let outcome = self.tls.borrow_mut().ssl_read(buf);
            if !self.tls.borrow_mut().get_mut().output.is_empty() {
                self.wake_writer();
            }
            match outcome {
                Ok(n) => return Ok(n),
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => return Ok(0),
                Err(e) if e.code() == ErrorCode::WANT_READ => {}
                Err(e) => return Err(io::Error::other(format!("TLS read: {e}"))),
            }
            let n =
                poll_fn(|cx| poll_fill(&self.stream, cx, self.tls.borrow_mut().get_mut())).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed without close_notify",
                ));
            }
        }
    }

    /// Encrypts all of `plain` and sends it.
    pub async fn write(&self, plain: &[u8]) -> io::Result<()> {
        {
            let mut tls = self.tls.borrow_mut();
            let mut rest = plain;
            while !rest.is_empty() {
                // MemoryIo never refuses output, so BoringSSL takes every byte in one call.
                let n = tls
                    .ssl_write(rest)
                    .map_err(|e| io::Error::other(format!("TLS write: {e}")))?;
                rest = &rest[n..];
            }
        }
        self.flush().await
    }

    /// Sends whatever ciphertext is pending.
    pub async fn flush(&self) -> io::Result<()> {
        let pending = {
            let mut tls = self.tls.borrow_mut();
            let io = tls.get_mut();
            if io.output.is_empty() {
                return Ok(());
            }
            io.flushing = true;
            std::mem::take(&mut io.output)
        };
        let written = write_all(&self.stream, &pending).await;
        self.tls.borrow_mut().get_mut().flushing = false;
        written?;
        // Hand the (now empty) allocation back so the next record reuses it.
        let mut tls = self.tls.borrow_mut();
        let output = &mut tls.get_mut().output;
        if output.is_empty() && output.capacity() < pending.capacity() {
            let mut reuse = pending;
            reuse.clear();
            *output = reuse;
        }
        Ok(())
    }

    /// Sends close_notify and shuts the socket's write side (best effort).
    pub async fn close(&self) {
        let _ = self.tls.borrow_mut().shutdown();
        let _ = self.flush().await;
        let _ = poll_fn(|cx| Pin::new(&mut *self.stream.borrow_mut()).poll_close(cx)).await;
    }

    /// Resolves when the reader asked the writer to flush TLS output.
    pub async fn output_pending(&self) {
        poll_fn(|cx| {
            if !self.tls.borrow_mut().get_mut().output.is_empty() {
                return Poll::Ready(());
            }
            self.writer_waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    fn wake_writer(&self) {
        if let Some(waker) = self.writer_waker.take() {
            waker.wake();
        }
    }
}
