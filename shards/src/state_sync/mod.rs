//! State sync: checkpoints on disk, and catching up with a subnet by downloading one.
//!
//! `store` owns the on-disk layout (adopted checkpoints with their manifests, the scratch space
//! of syncs in progress, the journal of verified chunks that lets a sync resume) and computes
//! manifests incrementally. `synthetic` builds deterministic states for the reference workload,
//! tests and benchmarks. Both are synchronous `std::fs` code: they run when a checkpoint is made,
//! adopted or resumed, not per chunk; the sync driver does the per-chunk I/O itself.

pub mod store;
pub mod synthetic;
