//! Services, and the node runtime behind the `icn` binary.

pub mod artifact;
pub mod artifact_manager;
pub mod consensus_manager;
pub mod demo;
pub mod http;
pub mod node;
pub mod node_config;
pub mod node_metrics;
#[cfg(any(test, feature = "testing"))]
pub mod node_process;
pub mod node_transport;
pub mod p2p;
pub mod p2p_metrics;
pub mod peer_manager;
pub mod pool;
pub mod replica;
pub mod runtime;
pub mod signal;
pub mod state_sync;
pub mod subnet;
