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
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite};

/// Largest read handed to the socket at once: the size of each shard thread's scratch chunk
/// (`AsyncRead` needs initialised bytes and hyper's buffer is not, so the socket reads into the
/// scratch and the bytes it brought are copied on).
const READ_CHUNK_BYTES: usize = 16 << 10;

thread_local! {
    /// The read scratch chunk of this thread's connections (zeroed once; one 16 KiB chunk per
    /// shard thread, whatever the number of connections).
    static READ_SCRATCH: RefCell<Box<[u8]>> =
        RefCell::new(vec![0; READ_CHUNK_BYTES].into_boxed_slice());
}

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
///
/// # Pipelined answers
///
/// hyper's HTTP/1.1 server sends each answer as soon as it is ready and reads the next request
/// only once that send is done, so a client that pipelines (sends requests without waiting for
/// the answers, as load and attack tools do) costs one `send` per request; under a flood of
/// refused requests those sends are most of the server's work. hyper's own remedy
/// (`pipeline_flush`) skips the flush while request bytes are buffered, also when the
/// connection then closes, which loses the last answer (a 413 refusing a chunked body, for
/// one). With [`HyperIo::coalescing`] the adapter coalesces instead, in its own buffer that it
/// always empties before a shutdown:
///
/// - an answer hyper writes is copied to the adapter's buffer (up to [`COALESCE_BYTES_MAX`];
///   past that the buffer is sent first, and a full socket pushes back on hyper as before);
/// - a flush while the last read brought bytes is reported done but held back: hyper is
///   answering requests it had read, and it reads again by itself once it has answered them
///   all (as it does after any read that was not left waiting), so it goes on to answer the
///   rest of a pipelined burst;
/// - the held answers go out with one `send` when hyper reads, when the buffer is full and at
///   shutdown; a flush after a read that found nothing (hyper waits for the socket) sends at
///   once.
///
/// A client that waits for each answer gets it with hyper's next read, which hyper makes
/// anyway to find the next request: in the same executor turn, or the next one for a refused
/// request whose body hyper still has to skip. Held answers ahead of an admitted request wait
/// for its handler, since hyper reads only after that; hyper's `pipeline_flush` does the same.
pub struct HyperIo<S> {
    stream: S,
    prefix: Vec<u8>,
    prefix_pos: usize,
    activity: Rc<ConnActivity>,
    /// Whether pipelined answers are coalesced (HTTP/1.1 only).
    coalescing: bool,
    /// Answers written by hyper and not yet sent (coalescing only).
    out: Vec<u8>,
    /// Bytes at the front of `out` already sent.
    out_sent: usize,
    /// The last read found no bytes: hyper waits for the socket and reads only when woken.
    read_waiting: bool,
}

/// The most answer bytes a coalescing [`HyperIo`] holds (its own buffer's bound: about 16
/// pipelined 429s or query answers).
pub const COALESCE_BYTES_MAX: usize = 16 << 10;

impl<S> HyperIo<S> {
    pub fn new(stream: S, prefix: Vec<u8>, activity: Rc<ConnActivity>) -> HyperIo<S> {
        HyperIo {
            stream,
            prefix,
            prefix_pos: 0,
            activity,
            coalescing: false,
            out: Vec::new(),
            out_sent: 0,
            read_waiting: true,
        }
    }

    /// Coalesces the answers to pipelined requests (type docs, "Pipelined answers"): for
    /// HTTP/1.1, whose answers go out in request order anyway.
    pub fn coalescing(mut self, enabled: bool) -> HyperIo<S> {
        self.coalescing = enabled;
        self
    }

    /// Whether this flush may be held back: the last read brought bytes, so hyper reads again
    /// by itself once it has answered what it holds (type docs, "Pipelined answers").
    fn hold_flush(&self) -> bool {
        !self.read_waiting
    }
}

impl<S: AsyncWrite + Unpin> HyperIo<S> {
    /// Sends what `out` holds; Pending while the socket is full.
    fn poll_send_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_sent < self.out.len() {
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &self.out[self.out_sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_sent += n;
            self.activity.last_progress.set(Instant::now());
        }
        self.out.clear();
        self.out_sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> hyper::rt::Read for HyperIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.coalescing && this.out_sent < this.out.len() {
            // hyper wants more request bytes: it has answered every request it had, so send
            // the answers first. A full socket does not stop the read (the client may be
            // sending before it reads).
            if let Poll::Ready(Err(e)) = this.poll_send_out(cx) {
                return Poll::Ready(Err(e));
            }
        }
        if this.prefix_pos < this.prefix.len() {
            let rest = &this.prefix[this.prefix_pos..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.prefix_pos += n;
            if this.prefix_pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.prefix_pos = 0;
            }
            this.read_waiting = false;
            return Poll::Ready(Ok(()));
        }
        // The socket reads into this thread's scratch chunk, initialised once, and only the
        // bytes it brought are copied into hyper's (uninitialised) buffer: a few hundred
        // bytes per request instead of zeroing a whole chunk on every read.
        let len = buf.remaining().min(READ_CHUNK_BYTES);
        let stream = &mut this.stream;
        let read = READ_SCRATCH.with(|scratch| {
            // Only a read nested inside another read of this thread could find the scratch
            // taken; it reads into a chunk of its own.
            let mut scratch = scratch.try_borrow_mut();
            let mut own = Vec::new();
            let chunk: &mut [u8] = match scratch.as_mut() {
                Ok(scratch) => &mut scratch[..len],
                Err(_) => {
                    own.resize(len, 0);
                    &mut own
                }
            };
            let read = Pin::new(stream).poll_read(cx, chunk);
            if let Poll::Ready(Ok(n)) = read {
                buf.put_slice(&chunk[..n.min(len)]);
            }
            read
        });
        this.read_waiting = read.is_pending();
        match read {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.activity.note_read(Instant::now());
                }
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
        if this.coalescing {
            if this.out.len() + buf.len() > COALESCE_BYTES_MAX {
                ready!(this.poll_send_out(cx))?;
            }
            if buf.len() <= COALESCE_BYTES_MAX {
                this.out.extend_from_slice(buf);
                return Poll::Ready(Ok(buf.len()));
            }
        }
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &result {
            if *n > 0 {
                this.activity.last_progress.set(Instant::now());
            }
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.coalescing && this.out_sent < this.out.len() {
            if this.hold_flush() {
                return Poll::Ready(Ok(()));
            }
            ready!(this.poll_send_out(cx))?;
        }
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    /// Sends what is held and flushes; the driver closes the socket itself, after draining
    /// unread request bytes (see `server::linger`), so that the last answer is not destroyed
    /// by a reset.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_out(cx))?;
        Pin::new(&mut this.stream).poll_flush(cx)
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

/// Runs hyper's HTTP/2 per-stream tasks on the current shard's executor, in the spawning
/// task's queue.
///
/// The task is queued, not run: glommio's `spawn_local` polls a new task at once, inside the
/// spawner's poll. hyper spawns a stream's task from the connection task while it accepts
/// the streams of what it read; run at once, the stream answers before the next stream is
/// accepted, and h2 flushes that one answer at the end of accepting the next: one `send` per
/// answer. Queued, the stream tasks run after the connection task has accepted everything it
/// read, and their answers go out together on its next poll.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, future: F) {
        let executor = glommio::executor();
        // The current queue exists while one of its tasks runs (hyper spawns from its
        // connection task), so this spawn does not fail.
        if let Ok(task) = executor.spawn_local_into(future, executor.current_task_queue()) {
            task.detach();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A socket double: each read hands out the next scripted chunk (`None`: no bytes yet, so
    /// Pending), each write is recorded whole.
    #[derive(Default)]
    struct Scripted {
        reads: VecDeque<Option<Vec<u8>>>,
        writes: Vec<Vec<u8>>,
    }

    impl AsyncRead for Scripted {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            match self.get_mut().reads.pop_front() {
                Some(Some(bytes)) => {
                    buf[..bytes.len()].copy_from_slice(&bytes);
                    Poll::Ready(Ok(bytes.len()))
                }
                _ => Poll::Pending,
            }
        }
    }

    impl AsyncWrite for Scripted {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().writes.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn read(io: &mut HyperIo<Scripted>) -> Poll<usize> {
        match read_bytes(io) {
            Some(bytes) => Poll::Ready(bytes.len()),
            None => Poll::Pending,
        }
    }

    /// What one `poll_read` put into hyper's buffer (`None`: Pending).
    fn read_bytes<S: AsyncRead + AsyncWrite + Unpin>(io: &mut HyperIo<S>) -> Option<Vec<u8>> {
        use hyper::rt::Read;
        let mut storage = [std::mem::MaybeUninit::<u8>::uninit(); 256];
        let mut buf = hyper::rt::ReadBuf::uninit(&mut storage);
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(io).poll_read(&mut cx, buf.unfilled()) {
            Poll::Ready(result) => {
                result.unwrap();
                Some(buf.filled().to_vec())
            }
            Poll::Pending => None,
        }
    }

    /// A socket whose read first reads another connection's `HyperIo` on the same thread, so
    /// the outer read finds the thread's scratch chunk taken.
    struct Nested {
        inner: HyperIo<Scripted>,
        inner_read: Option<Vec<u8>>,
        bytes: Vec<u8>,
    }

    impl AsyncRead for Nested {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.inner_read = read_bytes(&mut this.inner);
            buf[..this.bytes.len()].copy_from_slice(&this.bytes);
            Poll::Ready(Ok(this.bytes.len()))
        }
    }

    impl AsyncWrite for Nested {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn reads_hand_hyper_exactly_the_bytes_the_socket_brought() {
        let scripted = |reads: Vec<Option<Vec<u8>>>| {
            let stream = Scripted {
                reads: reads.into(),
                ..Scripted::default()
            };
            HyperIo::new(stream, Vec::new(), ConnActivity::new(Instant::now()))
        };
        // Two connections of one thread share its scratch chunk: the second's short read
        // gets its own bytes, nothing left over from the first's longer one.
        let mut first = scripted(vec![Some(vec![b'a'; 200]), None]);
        let mut second = scripted(vec![Some(b"xyz".to_vec())]);
        assert_eq!(read_bytes(&mut first), Some(vec![b'a'; 200]));
        assert_eq!(read_bytes(&mut second), Some(b"xyz".to_vec()));
        assert_eq!(read_bytes(&mut first), None);
        // The replayed prefix comes before the socket's bytes.
        let stream = Scripted {
            reads: VecDeque::from([Some(b"body".to_vec())]),
            ..Scripted::default()
        };
        let mut sniffed = HyperIo::new(stream, b"head".to_vec(), ConnActivity::new(Instant::now()));
        assert_eq!(read_bytes(&mut sniffed), Some(b"head".to_vec()));
        assert_eq!(read_bytes(&mut sniffed), Some(b"body".to_vec()));
        // A read nested in another read of the thread reads into a chunk of its own.
        let nested = Nested {
            inner: scripted(vec![Some(b"inner".to_vec())]),
            inner_read: None,
            bytes: b"outer".to_vec(),
        };
        let mut outer = HyperIo::new(nested, Vec::new(), ConnActivity::new(Instant::now()));
        assert_eq!(read_bytes(&mut outer), Some(b"outer".to_vec()));
        assert_eq!(outer.stream.inner_read, Some(b"inner".to_vec()));
    }

    fn answer(io: &mut HyperIo<Scripted>, bytes: &[u8]) {
        use hyper::rt::Write;
        let mut cx = Context::from_waker(Waker::noop());
        let written = Pin::new(&mut *io).poll_write(&mut cx, bytes);
        assert!(matches!(written, Poll::Ready(Ok(n)) if n == bytes.len()));
        assert!(matches!(
            Pin::new(io).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
    }

    fn written(io: &HyperIo<Scripted>) -> Vec<&[u8]> {
        io.stream.writes.iter().map(Vec::as_slice).collect()
    }

    #[test]
    fn pipelined_answers_go_out_together_when_hyper_reads_again() {
        let stream = Scripted {
            reads: VecDeque::from([Some(b"two requests".to_vec()), None, Some(b"one".to_vec())]),
            ..Scripted::default()
        };
        let mut io =
            HyperIo::new(stream, Vec::new(), ConnActivity::new(Instant::now())).coalescing(true);
        assert_eq!(read(&mut io), Poll::Ready(12));
        // Answers to requests hyper already holds: held while it answers the rest.
        answer(&mut io, b"A");
        answer(&mut io, b"B");
        assert!(written(&io).is_empty());
        // hyper asks for more bytes: the held answers go out first, in one send.
        assert_eq!(read(&mut io), Poll::Pending);
        assert_eq!(written(&io), [b"AB"]);
        // After a read that found nothing, an answer goes out at once.
        answer(&mut io, b"C");
        assert_eq!(written(&io), [&b"AB"[..], b"C"]);
        // A held answer is sent at shutdown (an answer that closes the connection).
        assert_eq!(read(&mut io), Poll::Ready(3));
        answer(&mut io, b"D");
        assert_eq!(written(&io).len(), 2);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(hyper::rt::Write::poll_shutdown(Pin::new(&mut io), &mut cx).is_ready());
        assert_eq!(written(&io), [&b"AB"[..], b"C", b"D"]);
    }

    #[test]
    fn the_hold_is_bounded_and_off_without_coalescing() {
        let big = vec![7u8; COALESCE_BYTES_MAX + 1];
        let stream = Scripted {
            reads: VecDeque::from([Some(b"requests".to_vec())]),
            ..Scripted::default()
        };
        let mut io =
            HyperIo::new(stream, Vec::new(), ConnActivity::new(Instant::now())).coalescing(true);
        assert_eq!(read(&mut io), Poll::Ready(8));
        answer(&mut io, b"A");
        assert!(written(&io).is_empty());
        // An answer past the buffer's bound: what is held goes first, then the answer itself.
        answer(&mut io, &big);
        assert_eq!(written(&io), [&b"A"[..], &big[..]]);
        // Without coalescing (HTTP/2) every write reaches the socket as it comes.
        let stream = Scripted {
            reads: VecDeque::from([Some(b"frames".to_vec())]),
            ..Scripted::default()
        };
        let mut io = HyperIo::new(stream, Vec::new(), ConnActivity::new(Instant::now()));
        assert_eq!(read(&mut io), Poll::Ready(6));
        answer(&mut io, b"A");
        answer(&mut io, b"B");
        assert_eq!(written(&io), [b"A", b"B"]);
    }

    #[test]
    fn hyper_tasks_are_queued_behind_their_spawner_in_its_queue() {
        glommio::LocalExecutorBuilder::default()
            .make()
            .expect("executor")
            .run(async {
                let executor = glommio::executor();
                let queue = executor.create_task_queue(
                    glommio::Shares::default(),
                    glommio::Latency::NotImportant,
                    "spawner",
                );
                let spawner = glommio::spawn_local_into(
                    async move {
                        let ran_in = Rc::new(Cell::new(None));
                        for _ in 0..3 {
                            let ran_in = ran_in.clone();
                            hyper::rt::Executor::execute(&LocalExec, async move {
                                let queue = glommio::executor().current_task_queue();
                                let count = ran_in.get().map_or(0, |(_, n)| n);
                                ran_in.set(Some((queue, count + 1)));
                            });
                        }
                        // Not one has run inside `execute` (glommio's `spawn_local` would have
                        // run each at once, before the spawner accepted the next stream).
                        assert!(ran_in.get().is_none());
                        futures_lite::future::yield_now().await;
                        let (ran_queue, count) = ran_in.get().expect("the tasks ran");
                        assert_eq!(count, 3);
                        assert_eq!(ran_queue, queue);
                    },
                    queue,
                )
                .expect("spawn");
                spawner.await;
            });
    }

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
