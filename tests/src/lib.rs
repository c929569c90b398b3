//! Shared helpers for icn's integration tests.
//!
//! - [`runtime`]: one view of time (sleep, timeout, now) over glommio's real clock and the
//!   simulator's virtual clock, so that a scenario is written once for every transport.
//! - [`subnet`]: a local registry and identities in a temporary directory, removed on drop.
//! - [`net`]: [`net::TestNet`], N nodes of one transport (QUIC, TCP+TLS, memory), and the drivers
//!   that run a scenario on each.
//! - [`routes`]: the handlers the conformance scenarios call, with probes that record what ran.
//! - [`netns`]: network namespaces joined by a veth pair (root only), for impaired-link tests.

pub mod net;
pub mod netns;
pub mod routes;
pub mod runtime;
pub mod subnet;
