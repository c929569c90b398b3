//! Buffer pool: pre-allocated, refcounted, bounded.
//!
//! A payload is written once into a [`BufMut`], frozen into a [`Buf`], and from then on shared by
//! reference count: one artifact sent to N peers is one buffer and N handles. Handles are `Send`, so
//! they cross shards through the rings without copying bytes. When the last handle drops, pooled
//! storage goes back to its pool's free list (bounded; surplus storage is freed).

use std::fmt;
use std::ops::{Deref, Range};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam::queue::ArrayQueue;

/// A bounded pool of equally sized buffers.
#[derive(Clone)]
pub struct BufferPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    buffer_bytes: usize,
    buffers_max: usize,
    free: ArrayQueue<Vec<u8>>,
    /// Buffers handed out and not yet returned (the pool's depth metric).
    in_use: AtomicUsize,
}

/// Why a buffer could not be taken from the pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("buffer pool exhausted: {buffers_max} buffers of {buffer_bytes} bytes in use")]
    Exhausted {
        buffers_max: usize,
        buffer_bytes: usize,
    },
}

impl BufferPool {
    /// Creates a pool of `buffers_max` buffers of `buffer_bytes` each, all allocated now.
    pub fn new(buffer_bytes: usize, buffers_max: usize) -> Self {
        assert!(buffer_bytes > 0, "buffer_bytes must be positive");
        assert!(buffers_max > 0, "buffers_max must be positive");
        let free = ArrayQueue::new(buffers_max);
        for _ in 0..buffers_max {
            let pushed = free.push(vec![0u8; buffer_bytes]);
            assert!(pushed.is_ok());
        }
        BufferPool {
            inner: Arc::new(PoolInner {
                buffer_bytes,
                buffers_max,
                free,
                in_use: AtomicUsize::new(0),
            }),
        }
    }

    /// Takes an empty buffer with capacity `buffer_bytes()`, or fails when all are in use.
    pub fn take(&self) -> Result<BufMut, PoolError> {
        let Some(mut storage) = self.inner.free.pop() else {
            return Err(PoolError::Exhausted {
                buffers_max: self.inner.buffers_max,
                buffer_bytes: self.inner.buffer_bytes,
            });
        };
        storage.clear();
        self.inner.in_use.fetch_add(1, Ordering::Relaxed);
        Ok(BufMut {
            storage,
            pool: Some(self.inner.clone()),
        })
    }

    pub fn buffer_bytes(&self) -> usize {
        self.inner.buffer_bytes
    }

    pub fn buffers_max(&self) -> usize {
        self.inner.buffers_max
    }

    /// Buffers currently handed out (mutable or frozen).
    pub fn in_use(&self) -> usize {
        self.inner.in_use.load(Ordering::Relaxed)
    }
}

impl PoolInner {
    fn give_back(&self, mut storage: Vec<u8>) {
        self.in_use.fetch_sub(1, Ordering::Relaxed);
        if storage.capacity() < self.buffer_bytes {
            storage = Vec::with_capacity(self.buffer_bytes);
        }
        // A full free list cannot happen (buffers_max bounds both), but dropping is the safe answer.
        let _ = self.free.push(storage);
    }
}

/// An exclusively owned, writable buffer. Freeze it to share it.
pub struct BufMut {
    storage: Vec<u8>,
    pool: Option<Arc<PoolInner>>,
}

impl BufMut {
    /// An unpooled buffer (for payloads larger than the pool's buffers).
    pub fn with_capacity(capacity: usize) -> Self {
        BufMut {
            storage: Vec::with_capacity(capacity),
            pool: None,
        }
    }

    /// Bytes that still fit without growing a pooled buffer.
    pub fn remaining_capacity(&self) -> usize {
        self.storage.capacity() - self.storage.len()
    }

    /// Appends bytes. A pooled buffer never grows past its pool's buffer size: returns false and
    /// appends nothing when the bytes do not fit.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) -> bool {
        if self.pool.is_some() && bytes.len() > self.remaining_capacity() {
            return false;
        }
        self.storage.extend_from_slice(bytes);
        true
    }

    pub fn len(&self) -> usize {
        self.storage.len()
    }

    pub fn is_empty(&self) -> bool {
        self.storage.is_empty()
    }

    /// Makes the buffer immutable and shareable.
    pub fn freeze(mut self) -> Buf {
        let storage = std::mem::take(&mut self.storage);
        let pool = self.pool.take();
        let end = storage.len();
        Buf {
            shared: Arc::new(Shared { storage, pool }),
            start: 0,
            end,
        }
    }
}

impl Drop for BufMut {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.give_back(std::mem::take(&mut self.storage));
        }
    }
}

impl Deref for BufMut {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.storage
    }
}

struct Shared {
    storage: Vec<u8>,
    pool: Option<Arc<PoolInner>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.give_back(std::mem::take(&mut self.storage));
        }
    }
}

/// An immutable, refcounted view of bytes. Cloning and slicing never copy.
#[derive(Clone)]
pub struct Buf {
    shared: Arc<Shared>,
    start: usize,
    end: usize,
}

impl Buf {
    /// Wraps owned bytes (unpooled) without copying them.
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        let end = bytes.len();
        Buf {
            shared: Arc::new(Shared {
                storage: bytes,
                pool: None,
            }),
            start: 0,
            end,
        }
    }

    /// Copies a slice into a new unpooled buffer.
    pub fn copy_from_slice(bytes: &[u8]) -> Self {
        Self::from_vec(bytes.to_vec())
    }

    pub fn empty() -> Self {
        Self::from_vec(Vec::new())
    }

    /// A sub-range of this buffer sharing the same storage. Panics if the range is out of bounds
    /// (a caller bug, never peer input: callers check lengths first).
    pub fn slice(&self, range: Range<usize>) -> Buf {
        assert!(
            range.start <= range.end && range.end <= self.len(),
            "slice out of bounds"
        );
        Buf {
            shared: self.shared.clone(),
            start: self.start + range.start,
            end: self.start + range.end,
        }
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Handles sharing this storage (1 when this is the only one).
    pub fn ref_count(&self) -> usize {
        Arc::strong_count(&self.shared)
    }

    /// True when both handles view the same storage.
    pub fn same_storage(&self, other: &Buf) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// The bytes as an owned vector. When this is the only handle, it views the whole storage
    /// and the storage is not pooled (a received RPC body, say), the storage itself is returned
    /// without copying; otherwise the viewed bytes are copied.
    pub fn into_vec(self) -> Vec<u8> {
        let whole = self.start == 0 && self.end == self.shared.storage.len();
        if whole && self.shared.pool.is_none() {
            match Arc::try_unwrap(self.shared) {
                // The emptied `Shared` drops with no pool, so nothing is given back.
                Ok(mut shared) => return std::mem::take(&mut shared.storage),
                Err(shared) => return shared.storage.clone(),
            }
        }
        self[..].to_vec()
    }
}

impl Deref for Buf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.shared.storage[self.start..self.end]
    }
}

impl AsRef<[u8]> for Buf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl PartialEq for Buf {
    fn eq(&self, other: &Buf) -> bool {
        self[..] == other[..]
    }
}

impl Eq for Buf {}

impl fmt::Debug for Buf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Buf({} bytes, {} refs)", self.len(), self.ref_count())
    }
}

impl From<Vec<u8>> for Buf {
    fn from(bytes: Vec<u8>) -> Self {
        Buf::from_vec(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_payload_many_handles_one_buffer() {
        let pool = BufferPool::new(1024, 2);
        let mut b = pool.take().unwrap();
        assert!(b.extend_from_slice(b"artifact"));
        let frozen = b.freeze();
        let copies: Vec<Buf> = (0..12).map(|_| frozen.clone()).collect();
        assert_eq!(frozen.ref_count(), 13);
        assert!(copies
            .iter()
            .all(|c| c.same_storage(&frozen) && &c[..] == b"artifact"));
        assert_eq!(pool.in_use(), 1);
        drop(copies);
        drop(frozen);
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn into_vec_hands_over_a_sole_whole_unpooled_storage_and_copies_otherwise() {
        let bytes: Vec<u8> = (0..64u8).collect();
        let address = bytes.as_ptr();
        let sole = Buf::from_vec(bytes.clone());
        let sole_address = sole.as_ptr();
        let vec = sole.into_vec();
        assert_eq!(vec.as_ptr(), sole_address, "the storage itself, not a copy");
        assert_eq!(vec, bytes);
        assert_ne!(address, sole_address);

        let shared = Buf::from_vec(bytes.clone());
        let other = shared.clone();
        let copied = shared.into_vec();
        assert_ne!(copied.as_ptr(), other.as_ptr());
        assert_eq!(copied, bytes);
        assert_eq!(
            &other[..],
            &bytes[..],
            "the other handle still sees its bytes"
        );

        let slice = Buf::from_vec(bytes.clone()).slice(8..16);
        assert_eq!(slice.into_vec(), bytes[8..16].to_vec());

        let pool = BufferPool::new(64, 1);
        let mut pooled = pool.take().unwrap();
        assert!(pooled.extend_from_slice(&bytes));
        let pooled = pooled.freeze();
        assert_eq!(pooled.into_vec(), bytes);
        assert!(
            pool.take().is_ok(),
            "the pooled storage went back to its pool"
        );
    }

    #[test]
    fn pool_is_bounded_and_refills() {
        let pool = BufferPool::new(16, 2);
        let a = pool.take().unwrap();
        let _b = pool.take().unwrap();
        assert_eq!(
            pool.take().err(),
            Some(PoolError::Exhausted {
                buffers_max: 2,
                buffer_bytes: 16
            })
        );
        drop(a);
        assert!(pool.take().is_ok());
    }

    #[test]
    fn pooled_buffer_never_grows() {
        let pool = BufferPool::new(4, 1);
        let mut b = pool.take().unwrap();
        assert!(b.extend_from_slice(b"abcd"));
        assert!(!b.extend_from_slice(b"e"));
        assert_eq!(&b[..], b"abcd");
    }

    #[test]
    fn slices_share_storage() {
        let whole = Buf::from_vec((0u8..100).collect());
        let part = whole.slice(10..20);
        assert_eq!(&part[..], &(10u8..20).collect::<Vec<_>>()[..]);
        assert!(part.same_storage(&whole));
        let inner = part.slice(2..4);
        assert_eq!(&inner[..], &[12, 13]);
    }
}
