//! glommio's `TcpStream` under hyper: the `hyper::rt::Read`/`Write` adapter, the executor that
//! runs hyper's HTTP/2 stream tasks on the shard, and the connection's activity record that
//! the watchdog (header and idle timeouts) reads.
//!
//! hyper's own header timeout needs a `Send` timer, which glommio's timers are not, so the
//! timeouts are enforced here instead: the adapter notes when bytes move and when the first
//! byte of a request head arrives, and [`watchdog`] closes the connection when a deadline
//! passes. This also covers HTTP/2, where hyper has no header timeout at all.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite};

/// Largest read handed to the socket at once. The adapter must initialise the bytes it lends
/// to `AsyncRead` (hyper's buffer is uninitialised), so reads are capped to keep that cheap.
const READ_CHUNK_BYTES: usize = 16 << 10;

/// What the watchdog knows about a connection.
pub struct ConnActivity {
    /// Last time a byte was read or written.
    last_progress: Cell<Instant>,
    /// When the first byte of a request head arrived while no request was in progress.
    head_started: Cell<Option<Instant>>,
    /// Requests whose head was parsed and whose handler has not finished.
    active: Cell<usize>,
    /// HTTP/2: control frames (PING, WINDOW_UPDATE, SETTINGS) move bytes without starting a
    /// request, so bytes neither start a header clock nor count as activity; a connection with
    /// no stream open closes `idle` after its last request ended, however busy its frames are.
    multiplexed: Cell<bool>,
    /// When the last request ended (or the connection started, or switched to HTTP/2).
    idle_since: Cell<Instant>,
    /// Bumped when a deadline moves earlier (a head starts), so the sleeping watchdog
    /// re-computes instead of waking at the later idle deadline.
    generation: Cell<u64>,
    watchdog: RefCell<Option<Waker>>,
}

impl ConnActivity {
    pub fn new(now: Instant) -> Rc<ConnActivity> {
        Rc::new(ConnActivity {
            last_progress: Cell::new(now),
            head_started: Cell::new(None),
            active: Cell::new(0),
            multiplexed: Cell::new(false),
            idle_since: Cell::new(now),
            generation: Cell::new(0),
            watchdog: RefCell::new(None),
        })
    }

    /// The connection speaks HTTP/2 from now on (see `multiplexed`).
    pub(crate) fn set_multiplexed(&self, now: Instant) {
        self.multiplexed.set(true);
        self.head_started.set(None);
        self.idle_since.set(now);
    }

    pub(crate) fn note_read(&self, now: Instant) {
        self.last_progress.set(now);
        if !self.multiplexed.get() && self.active.get() == 0 && self.head_started.get().is_none() {
            self.head_started.set(Some(now));
            self.generation.set(self.generation.get() + 1);
            if let Some(waker) = self.watchdog.borrow_mut().take() {
                waker.wake();
            }
        }
    }

    /// A request head was parsed: the header clock stops until this request is answered.
    pub fn request_started(self: &Rc<Self>) -> ActiveRequest {
        self.active.set(self.active.get() + 1);
        self.head_started.set(None);
        ActiveRequest {
            activity: self.clone(),
        }
    }

    /// Why the connection must close now, if it must.
    pub fn expired(&self, now: Instant, header: Duration, idle: Duration) -> Option<Expiry> {
        if self.active.get() > 0 {
            return None;
        }
        if self.multiplexed.get() {
            return (now.duration_since(self.idle_since.get()) >= idle).then_some(Expiry::Idle);
        }
        match self.head_started.get() {
            Some(started) if now.duration_since(started) >= header => Some(Expiry::Header),
            Some(_) => None,
            None if now.duration_since(self.last_progress.get()) >= idle => Some(Expiry::Idle),
            None => None,
        }
    }

    /// When to look again.
    fn next_check(&self, now: Instant, header: Duration, idle: Duration) -> Instant {
        if self.active.get() > 0 {
            return now + idle;
        }
        if self.multiplexed.get() {
            return self.idle_since.get() + idle;
        }
        match self.head_started.get() {
            Some(started) => started + header,
            None => self.last_progress.get() + idle,
        }
    }
}

/// Which timeout closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    Header,
    Idle,
}

/// One request in progress on a connection; dropping it (the handler finished) restarts the
/// connection's idle clock.
pub struct ActiveRequest {
    activity: Rc<ConnActivity>,
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        let active = self.activity.active.get().saturating_sub(1);
        self.activity.active.set(active);
        let now = Instant::now();
        self.activity.last_progress.set(now);
        self.activity.idle_since.set(now);
    }
}

/// Resolves when the connection has to be closed by a header or idle timeout.
pub async fn watchdog(activity: Rc<ConnActivity>, header: Duration, idle: Duration) -> Expiry {
    loop {
        let now = Instant::now();
        if let Some(expiry) = activity.expired(now, header, idle) {
            return expiry;
        }
        let next = activity
            .next_check(now, header, idle)
            .max(now + Duration::from_millis(1));
        let generation = activity.generation.get();
        let moved = Moved {
            activity: &activity,
            generation,
        };
        futures_lite::future::or(glommio::timer::sleep(next - now), moved).await;
    }
}

/// Resolves when the activity's generation moves past `generation`.
struct Moved<'a> {
    activity: &'a ConnActivity,
    generation: u64,
}

impl Future for Moved<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.activity.generation.get() != self.generation {
            return Poll::Ready(());
        }
        *self.activity.watchdog.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A byte stream under hyper: `prefix` holds bytes already read while sniffing the protocol,
/// replayed before the socket is read again.
pub struct HyperIo<S> {
    stream: S,
    prefix: Vec<u8>,
    prefix_pos: usize,
    activity: Rc<ConnActivity>,
}

impl<S> HyperIo<S> {
    pub fn new(stream: S, prefix: Vec<u8>, activity: Rc<ConnActivity>) -> HyperIo<S> {
        HyperIo {
            stream,
            prefix,
            prefix_pos: 0,
            activity,
        }
    }
}

impl<S: AsyncRead + Unpin> hyper::rt::Read for HyperIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix_pos < this.prefix.len() {
            let rest = &this.prefix[this.prefix_pos..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.prefix_pos += n;
            if this.prefix_pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.prefix_pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        // SAFETY: we only write initialised bytes into the cursor's spare capacity (the chunk
        // is zeroed first), and advance it by exactly the count the socket reported written.
        let spare: &mut [MaybeUninit<u8>] = unsafe { buf.as_mut() };
        let len = spare.len().min(READ_CHUNK_BYTES);
        let chunk = &mut spare[..len];
        for byte in chunk.iter_mut() {
            byte.write(0);
        }
        // SAFETY: every byte of `chunk` was initialised just above.
        let chunk: &mut [u8] = unsafe { &mut *(chunk as *mut [MaybeUninit<u8>] as *mut [u8]) };
        match Pin::new(&mut this.stream).poll_read(cx, chunk) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.activity.note_read(Instant::now());
                }
                // SAFETY: the socket initialised (wrote) the first `n` bytes of the chunk.
                unsafe { buf.advance(n.min(len)) };
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> hyper::rt::Write for HyperIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &result {
            if *n > 0 {
                this.activity.last_progress.set(Instant::now());
            }
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    /// Only flushes: the driver closes the socket itself, after draining unread request
    /// bytes (see `server::linger`), so that the last answer is not destroyed by a reset.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
}

/// A socket shared between hyper (through [`HyperIo`]) and the driver, which takes it back
/// for the lingering close once hyper is done with the connection.
pub struct SharedStream<S>(pub Rc<RefCell<S>>);

impl<S: AsyncRead + Unpin> AsyncRead for SharedStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SharedStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}

/// Runs hyper's HTTP/2 per-stream tasks on the current shard's executor.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, future: F) {
        glommio::spawn_local(future).detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_clock_runs_only_between_requests() {
        let t0 = Instant::now();
        let header = Duration::from_millis(100);
        let idle = Duration::from_millis(1000);
        let activity = ConnActivity::new(t0);
        assert_eq!(activity.expired(t0 + header * 2, header, idle), None);
        activity.note_read(t0 + Duration::from_millis(10));
        assert_eq!(
            activity.expired(t0 + Duration::from_millis(110), header, idle),
            Some(Expiry::Header)
        );
        let request = activity.request_started();
        // A request in progress is bounded by the body and backend deadlines instead.
        assert_eq!(activity.expired(t0 + idle * 5, header, idle), None);
        drop(request);
        let after = Instant::now();
        assert_eq!(activity.expired(after + header * 2, header, idle), None);
        assert_eq!(
            activity.expired(after + idle, header, idle),
            Some(Expiry::Idle)
        );
    }
}
