//! State sync: a lagging node downloads a certified state (a checkpoint) from its peers.
//!
//! - [`session`]: the sans-I/O protocol core of one sync (manifest, chunk scheduling, checks).
pub mod session;
