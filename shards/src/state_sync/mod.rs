//! State sync: checkpoints on disk, and catching up with a subnet by downloading one.
//!
//! - [`session`]: the sans-I/O protocol core of one sync: meta-manifest and pieces checked
//!   against the root hash, chunks fetched in a per-node XOR order from the least loaded
//!   advertiser within in-flight limits, each checked before it is written.
//! - [`driver`]: binds a session and the store to a transport, a runtime and the disk: serves
//!   adverts, manifests and chunks (also the verified chunks of a sync in progress), starts,
//!   resumes, abandons and adopts syncs, writes chunks (1 MiB chunks of large files with
//!   `O_DIRECT` on the threads of [`direct`], the rest with io_uring).
//! - [`store`]: the on-disk layout (adopted checkpoints with their manifests, the scratch space
//!   of syncs in progress, the journal of verified chunks that lets a sync resume), manifests
//!   computed incrementally. Synchronous `std::fs` code: it runs when a checkpoint is made,
//!   adopted or resumed, not per chunk.
//! - [`synthetic`]: deterministic states for the reference workload, tests and benchmarks.
//! - [`reference`]: the reference state workload of `icn node` (checkpoint every N heights,
//!   follow or sync), [`progress`] (progress bar or log lines), [`metrics`] (`icn_state_sync_*`).

pub mod direct;
pub mod driver;
pub mod metrics;
pub mod progress;
pub mod reference;
pub mod session;
pub mod store;
pub mod synthetic;
