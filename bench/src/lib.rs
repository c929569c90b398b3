//! icn-bench: load generators, baselines and reports for icn (see docs/benchmarks.md).
//!
//! Suites follow `shared/design/BENCH.md`: every figure is measured in the same invocation as the
//! baselines it is compared with, written as JSON + SVG under `bench/results/`.

pub mod cli;
pub mod gossip;
pub mod host;
pub mod http;
pub mod report;
pub mod stats;
pub mod sync;
pub mod transport;
