//! The reference replica behind the public HTTP API (issue 5): a small, deterministic replica
//! that makes the networking layer's whole path real for unmodified IC agents. It is a reference
//! driver, not a fault-tolerant consensus protocol.
//!
//! - [`bls`]: the subnet's BLS12-381 key in the IC's min-sig scheme (hash-to-curve with the
//!   IC's tag, signatures in G1, keys in G2), its DER encoding, the subnet id it names, and the
//!   secret key file.
//! - [`certification`]: signing each height's state tree once and cutting certificates (pruned
//!   witness + signature) for the paths a reader asks for; the verifier agents' checks amount to
//!   (delegation, root hash, signature, `/time` skew), used by tests.
//! - [`canisters`]: the built-in native canisters (a counter and a key-value store) with Candid
//!   interfaces, executed deterministically, and their state files.
//! - [`keys`]: the subnet key's files: generated for a new local subnet into every member's
//!   identity directory, copied to a joining node, and checked against the registry's public key
//!   when a node loads it.

pub mod bls;
pub mod canisters;
pub mod certification;
pub mod chain;
pub mod checkpoint;
pub mod driver;
pub mod fetch;
pub mod ingress;
pub mod keys;
pub mod metrics;
pub mod pool;
