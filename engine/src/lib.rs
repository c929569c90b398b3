//! icn-engine: the thread-per-core substrate.
//!
//! Shard executors (glommio, one per core, pinned), cross-shard rings, the buffer pool, io_uring UDP
//! with GSO/GRO, metrics, node identity and registry, and the three transports behind one trait.

pub mod buffer;
pub mod config;
pub mod http_admin;
pub mod identity;
pub mod metrics;
pub mod registry;
pub mod shard;
pub mod sim;
pub mod tls;
pub mod transport;
pub mod udp;

pub use buffer::{Buf, BufMut, BufferPool};
pub use transport::{ConnId, NodeId, Priority, RequestContext, Route, Router, RpcError, Transport};
