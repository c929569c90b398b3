//! Chunk writes that bypass the page cache: `O_DIRECT` positional writes on threads of their
//! own, for the aligned part of a sync's writes (the 1 MiB chunks of large files).
//!
//! Why: a buffered write copies every byte into page-cache pages the kernel allocates for it,
//! and the final fsync then writes them all out. On a VM whose free memory the host reclaims
//! (a balloon with free page reporting, as the Firecracker VMs here), each fresh page costs a
//! host fault on first touch: a buffered write of a 2 GiB state ran at about 0.5 GB/s where the
//! same write into pages already cached ran at 6 GB/s, and an `O_DIRECT` write from a reused
//! buffer at 2.4 GB/s with nothing left for the fsync (python, `os.pwrite`, 2,048 x 1 MiB,
//! 2026-12-07). So a chunk whose offset and length are multiples of [`DIRECT_ALIGN`] is copied
//! into a reused aligned buffer on the shard (one memcpy of hot memory) and written with
//! `O_DIRECT` by a writer thread; the rest (small grouped files, unaligned tails) stay buffered.
//!
//! The writes block, so they run on [`WRITER_THREADS`] threads, never on a shard; a shard
//! awaits each write's answer on a one-shot channel. The state sync service starts them with
//! the first chunk it writes, so a node that only serves never runs them. A file system without `O_DIRECT` (tmpfs
//! refuses the open with `EINVAL`) gets a buffered write from the same thread.
//!
//! Bounds: jobs queue on a channel of `queue_max` entries (the state sync's chunk window, so it
//! never fills: a full queue is answered with [`TrySubmit::Full`] and the caller writes
//! buffered); at most `queue_max` buffers are out at once (one per queued or running write),
//! and the pool keeps at most [`POOLED_BUFFERS_MAX`] of them for reuse.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;

use crossbeam::channel::{self, Receiver, Sender, TrySendError};
use futures_channel::oneshot;

/// Alignment of the offsets, lengths and memory of direct writes: the largest logical block
/// size in common use, so it suits every device.
pub const DIRECT_ALIGN: usize = 4096;

/// Threads that carry out direct writes (per node).
pub const WRITER_THREADS: usize = 2;

/// Buffers kept for reuse between writes (each of the chunk size): enough for every writer
/// thread and as many writes waiting behind them.
pub const POOLED_BUFFERS_MAX: usize = 2 * WRITER_THREADS;

/// A heap buffer aligned to [`DIRECT_ALIGN`], as `O_DIRECT` needs; its length is set per use
/// and never exceeds its capacity.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    capacity: usize,
    len: usize,
}

// SAFETY: the buffer owns its allocation outright; nothing else points into it.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `capacity` bytes (rounded up to the alignment), of length 0.
    fn new(capacity: usize) -> AlignedBuf {
        let capacity = capacity.max(1).div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
        let layout = Self::layout(capacity);
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr =
            std::ptr::NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf {
            ptr,
            capacity,
            len: 0,
        }
    }

    fn layout(capacity: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(capacity, DIRECT_ALIGN)
            .expect("an aligned capacity below isize::MAX")
    }

    /// Replaces the contents with `bytes` (at most the capacity).
    fn fill(&mut self, bytes: &[u8]) {
        assert!(
            bytes.len() <= self.capacity,
            "a buffer holds at most its capacity"
        );
        // SAFETY: the allocation holds `capacity` bytes and `bytes` is no longer.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.as_ptr(), bytes.len()) };
        self.len = bytes.len();
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: the first `len` bytes are initialized (zeroed at allocation, then filled).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.capacity)) };
    }
}

struct Job {
    path: PathBuf,
    offset: u64,
    data: AlignedBuf,
    reply: oneshot::Sender<io::Result<()>>,
}

/// What [`DirectWriter::submit`] did with a write.
pub enum TrySubmit {
    /// Queued: its result comes on the receiver.
    Queued(oneshot::Receiver<io::Result<()>>),
    /// The queue is full or the writers stopped: write it another way.
    Full,
}

/// The writer threads of a node and their buffer pool (see the module docs). Cheap to share:
/// clones queue onto the same threads.
#[derive(Clone)]
pub struct DirectWriter {
    jobs: Sender<Job>,
    shared: Arc<Shared>,
}

struct Shared {
    pool: Mutex<Vec<AlignedBuf>>,
    buffer_bytes: usize,
    pool_max: usize,
}

impl Shared {
    fn take(&self, len: usize) -> AlignedBuf {
        if len <= self.buffer_bytes {
            let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
            if let Some(buffer) = pooled {
                return buffer;
            }
            return AlignedBuf::new(self.buffer_bytes);
        }
        AlignedBuf::new(len)
    }

    fn give_back(&self, buffer: AlignedBuf) {
        if buffer.capacity != self.buffer_bytes.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN {
            return;
        }
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < self.pool_max {
            pool.push(buffer);
        }
    }
}

impl DirectWriter {
    /// Starts [`WRITER_THREADS`] writers; `queue_max` bounds queued jobs, `buffer_bytes` is the
    /// size of the buffers pooled (the chunk size). The threads end when
    /// the last clone is dropped.
    pub fn start(queue_max: usize, buffer_bytes: usize) -> io::Result<DirectWriter> {
        let (jobs, queue) = channel::bounded::<Job>(queue_max.max(1));
        let shared = Arc::new(Shared {
            pool: Mutex::new(Vec::new()),
            buffer_bytes: buffer_bytes.max(1),
            pool_max: POOLED_BUFFERS_MAX,
        });
        for index in 0..WRITER_THREADS {
            let queue = queue.clone();
            let shared = shared.clone();
            thread::Builder::new()
                .name(format!("icn-sync-write-{index}"))
                .spawn(move || run_writer(queue, shared))?;
        }
        Ok(DirectWriter { jobs, shared })
    }

    /// Whether a write of `len` bytes at `offset` can go direct.
    pub fn aligned(offset: u64, len: usize) -> bool {
        len > 0 && offset.is_multiple_of(DIRECT_ALIGN as u64) && len.is_multiple_of(DIRECT_ALIGN)
    }

    /// Copies `bytes` into an aligned buffer and queues its write at `offset` of `path` (an
    /// aligned write: see [`DirectWriter::aligned`]).
    pub fn submit(&self, path: PathBuf, offset: u64, bytes: &[u8]) -> TrySubmit {
        let mut data = self.shared.take(bytes.len());
        data.fill(bytes);
        let (reply, answer) = oneshot::channel();
        let job = Job {
            path,
            offset,
            data,
            reply,
        };
        match self.jobs.try_send(job) {
            Ok(()) => TrySubmit::Queued(answer),
            Err(TrySendError::Full(job)) | Err(TrySendError::Disconnected(job)) => {
                self.shared.give_back(job.data);
                TrySubmit::Full
            }
        }
    }
}

/// The writer threads' write for a caller that writes on a thread of its own (the sync
/// bench's local ceiling): an aligned buffer reused across writes.
pub struct DirectScratch(AlignedBuf);

impl DirectScratch {
    pub fn new(capacity: usize) -> DirectScratch {
        DirectScratch(AlignedBuf::new(capacity))
    }

    /// Writes `bytes` at `offset` of `path` as a writer thread does (`O_DIRECT`, buffered where
    /// refused); the write must be aligned ([`DirectWriter::aligned`]).
    pub fn write(&mut self, path: &std::path::Path, offset: u64, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() > self.0.capacity {
            self.0 = AlignedBuf::new(bytes.len());
        }
        self.0.fill(bytes);
        write_direct(path, offset, self.0.as_slice())
    }
}

fn run_writer(queue: Receiver<Job>, shared: Arc<Shared>) {
    while let Ok(job) = queue.recv() {
        let result = write_direct(&job.path, job.offset, job.data.as_slice());
        shared.give_back(job.data);
        // The waiting side may have given up (a cancelled request): nothing to tell.
        let _ = job.reply.send(result);
    }
}

/// One positional write of all of `bytes` with `O_DIRECT`, or buffered where the file system
/// refuses `O_DIRECT`.
fn write_direct(path: &std::path::Path, offset: u64, bytes: &[u8]) -> io::Result<()> {
    let file: File = match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(file) => file,
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
            OpenOptions::new().write(true).open(path)?
        }
        Err(error) => return Err(error),
    };
    file.write_all_at(bytes, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_writes_land_and_buffers_are_reused() {
        let dir = std::env::temp_dir().join(format!("icn-direct-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(3 * DIRECT_ALIGN as u64)
            .unwrap();
        let writer = DirectWriter::start(4, 2 * DIRECT_ALIGN).unwrap();
        let bytes: Vec<u8> = (0..2 * DIRECT_ALIGN).map(|i| (i % 251) as u8).collect();
        assert!(DirectWriter::aligned(DIRECT_ALIGN as u64, bytes.len()));
        assert!(!DirectWriter::aligned(1, bytes.len()));
        assert!(!DirectWriter::aligned(0, 100));
        assert!(!DirectWriter::aligned(0, 0));
        for _ in 0..3 {
            let TrySubmit::Queued(answer) =
                writer.submit(path.clone(), DIRECT_ALIGN as u64, &bytes)
            else {
                panic!("the queue has room");
            };
            futures_lite::future::block_on(answer).unwrap().unwrap();
        }
        let written = std::fs::read(&path).unwrap();
        assert_eq!(&written[DIRECT_ALIGN..], &bytes[..]);
        assert!(written[..DIRECT_ALIGN].iter().all(|b| *b == 0));
        // One buffer served all three writes and is back in the pool.
        assert_eq!(writer.shared.pool.lock().unwrap().len(), 1);
        // A missing file is an error, not a panic.
        let TrySubmit::Queued(answer) = writer.submit(dir.join("missing"), 0, &bytes) else {
            panic!("the queue has room");
        };
        assert!(futures_lite::future::block_on(answer).unwrap().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
