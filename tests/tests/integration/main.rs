//! icn's integration tests, one binary:
//! - `conformance`: one scenario list run against every transport (QUIC and TCP+TLS on
//!   loopback, memory under the simulator);
//! - `gossip_byzantine`: 7-node subnets with a lying and a flooding member, banned by the peer
//!   manager, on the memory transport;
//! - `gossip_sim`: 7-node subnets gossiping under seeded faults on the memory transport;
//! - `state_sync_sim`: state syncs on the memory transport with real stores (sizes, partial
//!   peers, crashes, byzantine peers, a moving target, restart, incremental);
//! - `http_api`: the public HTTP API front on loopback: an agent session and a flood at 10x
//!   a class's capacity (429s quick, admitted latency bounded);
//! - `http_overload`: query and update floods at ten times capacity against a one-node subnet
//!   of a real `icn node`: quick 429s, admitted requests correct and bounded in latency, memory
//!   and the ingress pool within their limits, every admitted call executed once;
//! - `ic_agent`: the IC's own agent (`ic-agent` from crates.io, unmodified) against a 4-node
//!   subnet of `icn node` processes: status, root key, verified queries, synchronous and
//!   polled updates, read_state, rejects, an update sent to two nodes executing once;
//! - `netns`: QUIC between two network namespaces over a rate-capped, lossy veth pair (root);
//! - `gossip_netns`: 5 `icn node`s in namespaces gossiping through loss, a rate cap and a
//!   partition (root);
//! - `state_sync_netns`: a joiner `icn node` syncing from 3 peers capped at 100 Mbit/s each,
//!   at >= 90% of their aggregate capacity (root).

mod conformance;
mod gossip_byzantine;
mod gossip_netns;
mod gossip_sim;
mod http_api;
mod http_overload;
mod ic_agent;
mod netns;
mod state_sync_netns;
mod state_sync_sim;
