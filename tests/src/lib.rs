//! Shared helpers for icn's integration tests.
//!
//! - [`runtime`]: one view of time (sleep, timeout, now) over glommio's real clock and the
//!   simulator's virtual clock, so that a scenario is written once for every transport.
//! - [`subnet`]: a local registry and identities in a temporary directory, removed on drop.
//! - [`net`]: [`net::TestNet`], N nodes of one transport (QUIC, TCP+TLS, memory), and the drivers
//!   that run a scenario on each.
//! - [`routes`]: the handlers the conformance scenarios call, with probes that record what ran.
//! - [`netns`]: network namespaces joined by a veth pair (root only), for impaired-link tests.
//! - [`processes`]: a local subnet of real `icn node` processes on loopback, for clients of the
//!   public HTTP API.

pub mod net;
pub mod netns;
pub mod processes;
pub mod routes;
pub mod runtime;
pub mod subnet;

/// Serializes the integration tests that load the CPU for seconds (simulations of many nodes,
/// namespace subnets) or whose assertions are about speed (a sync at >= 90% of link capacity):
/// `cargo test` runs tests on as many threads as there are cores, and on a 2-core machine two
/// such tests at once would measure each other. Hold the guard for the whole test; a test that
/// panicked while holding it does not poison the others.
pub fn heavy_test_lock() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
