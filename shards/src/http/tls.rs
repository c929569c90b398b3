//! TLS 1.3 for the API (BoringSSL), as a poll-based byte stream that hyper can drive.
//!
//! BoringSSL's `SslStream` is synchronous, so it runs over [`MemoryBio`], a pair of
//! in-memory ciphertext buffers: bytes read from the socket are appended to the input, and
//! records BoringSSL produces collect in the output until they are written to the socket. An
//! empty input reads as `WouldBlock` (BoringSSL's `WANT_READ`), which is the cue to poll the
//! socket. Nothing blocks the shard, and memory per connection is one input buffer (one TLS
//! record) plus at most one pending write's records, because a write waits until earlier
//! output has reached the socket.
//!
//! The server presents the node's certificate (self-signed Ed25519, as on the node-to-node
//! transports), does not ask clients for certificates, and selects `h2` or `http/1.1` by ALPN.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use boring::error::ErrorStack;
use boring::ssl::{
    select_next_proto, AlpnError, ErrorCode, HandshakeError, Ssl, SslContext, SslContextBuilder,
    SslMethod, SslOptions, SslSessionCacheMode, SslStream, SslStreamBuilder, SslVerifyMode,
    SslVersion,
};
use futures_lite::{AsyncRead, AsyncWrite};
use icn_engine::identity::Identity;

/// ALPN protocols offered, in preference order (wire format: length-prefixed).
const ALPN_API: &[u8] = b"\x02h2\x08http/1.1";

/// A TLS record holds at most 16 KiB of plaintext plus overhead; the input holds one.
const INPUT_BYTES: usize = 17 << 10;

/// The API's server context: TLS 1.3 only, the node's certificate, ALPN h2 / http/1.1.
pub fn api_tls_context(identity: &Identity) -> Result<SslContext, ErrorStack> {
    let mut builder = SslContextBuilder::new(SslMethod::tls())?;
    builder.set_min_proto_version(Some(SslVersion::TLS1_3))?;
    builder.set_max_proto_version(Some(SslVersion::TLS1_3))?;
    builder.set_certificate(identity.cert())?;
    builder.set_private_key(identity.key())?;
    builder.check_private_key()?;
    builder.set_verify(SslVerifyMode::NONE);
    // Tickets would let a client skip the handshake's CPU cost on our side, but cost state
    // and key rotation; API clients are short-lived agents, so keep it simple.
    builder.set_session_cache_mode(SslSessionCacheMode::OFF);
    builder.set_options(SslOptions::NO_TICKET);
    builder.set_alpn_select_callback(|_ssl, offered| {
        select_next_proto(ALPN_API, offered).ok_or(AlpnError::NOACK)
    });
    Ok(builder.build())
}

/// Ciphertext buffers between BoringSSL and the socket.
pub struct MemoryBio {
    input: Box<[u8]>,
    start: usize,
    end: usize,
    output: Vec<u8>,
}

impl MemoryBio {
    /// A bio whose input already holds `prefix` (bytes read while choosing the protocol).
    fn with_prefix(prefix: &[u8]) -> MemoryBio {
        let mut input = vec![0; INPUT_BYTES.max(prefix.len())].into_boxed_slice();
        input[..prefix.len()].copy_from_slice(prefix);
        MemoryBio {
            input,
            start: 0,
            end: prefix.len(),
            output: Vec::new(),
        }
    }

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

impl Read for MemoryBio {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.start == self.end {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.end - self.start);
        buf[..n].copy_from_slice(&self.input[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }
}

impl Write for MemoryBio {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads socket bytes into the bio's input; `Ok(0)`: the peer closed.
fn poll_fill<S: AsyncRead + Unpin>(
    socket: &mut S,
    cx: &mut Context<'_>,
    bio: &mut MemoryBio,
) -> Poll<io::Result<usize>> {
    let polled = Pin::new(socket).poll_read(cx, bio.input_space());
    if let Poll::Ready(Ok(n)) = polled {
        bio.end += n;
    }
    polled
}

/// Writes the bio's pending output to the socket.
fn poll_drain<S: AsyncWrite + Unpin>(
    socket: &mut S,
    cx: &mut Context<'_>,
    bio: &mut MemoryBio,
) -> Poll<io::Result<()>> {
    while !bio.output.is_empty() {
        match Pin::new(&mut *socket).poll_write(cx, &bio.output) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => {
                bio.output.drain(..n);
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    }
    Poll::Ready(Ok(()))
}

/// Runs the server side of a handshake; `prefix` holds the first bytes already read.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    context: &SslContext,
    mut socket: S,
    prefix: &[u8],
) -> io::Result<TlsStream<S>> {
    let ssl = Ssl::new(context).map_err(io::Error::other)?;
    let mut mid = SslStreamBuilder::new(ssl, MemoryBio::with_prefix(prefix)).setup_accept();
    loop {
        match mid.handshake() {
            Ok(mut tls) => {
                std::future::poll_fn(|cx| poll_drain(&mut socket, cx, tls.get_mut())).await?;
                return Ok(TlsStream { socket, tls });
            }
            Err(HandshakeError::WouldBlock(next)) => mid = next,
            Err(HandshakeError::Failure(mut failed)) => {
                // Best effort: let the client see our alert.
                let _ =
                    std::future::poll_fn(|cx| poll_drain(&mut socket, cx, failed.get_mut())).await;
                return Err(io::Error::other(format!(
                    "TLS handshake failed: {}",
                    failed.error()
                )));
            }
            Err(HandshakeError::SetupFailure(e)) => return Err(io::Error::other(e)),
        }
        std::future::poll_fn(|cx| poll_drain(&mut socket, cx, mid.get_mut())).await?;
        let n = std::future::poll_fn(|cx| poll_fill(&mut socket, cx, mid.get_mut())).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// An established server-side TLS connection.
pub struct TlsStream<S> {
    socket: S,
    tls: SslStream<MemoryBio>,
}

impl<S> TlsStream<S> {
    /// The protocol ALPN selected (`h2`, `http/1.1`), if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.tls.ssl().selected_alpn_protocol()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            let outcome = this.tls.ssl_read(buf);
            // Reading can make BoringSSL answer (alerts, key updates): send it when possible,
            // without making the read wait for the socket's write side.
            let _ = poll_drain(&mut this.socket, cx, this.tls.get_mut());
            match outcome {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => return Poll::Ready(Ok(0)),
                Err(e) if e.code() == ErrorCode::WANT_READ => {}
                Err(e) => return Poll::Ready(Err(io::Error::other(format!("TLS read: {e}")))),
            }
            match poll_fill(&mut this.socket, cx, this.tls.get_mut()) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(0)),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Earlier records must reach the socket first: this bounds buffered output.
        match poll_drain(&mut this.socket, cx, this.tls.get_mut()) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        let n = this
            .tls
            .ssl_write(buf)
            .map_err(|e| io::Error::other(format!("TLS write: {e}")))?;
        let _ = poll_drain(&mut this.socket, cx, this.tls.get_mut());
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match poll_drain(&mut this.socket, cx, this.tls.get_mut()) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.socket).poll_flush(cx),
            other => other,
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // close_notify once; then flush it like any other record.
        if !this
            .tls
            .get_shutdown()
            .contains(boring::ssl::ShutdownState::SENT)
        {
            let _ = this.tls.shutdown();
        }
        match poll_drain(&mut this.socket, cx, this.tls.get_mut()) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.socket).poll_flush(cx),
            other => other,
        }
    }
}
