//! The reference replica behind the public HTTP API (issue 5).

pub mod canisters;
