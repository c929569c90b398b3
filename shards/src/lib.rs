//! Services, and the node runtime behind the `icn` binary.

pub mod demo;
pub mod node;
pub mod node_config;
pub mod node_metrics;
pub mod node_transport;
