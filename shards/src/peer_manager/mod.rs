//! The peer manager: which registry members a node keeps connections to, how healthy each one
//! is, and how misbehaving peers are punished.
//!
//! [`PeerManager`] is sans-I/O: it is fed the subnet's membership (from the registry), connection
//! events, RTT samples and penalties, each with `now`, and answers with the allowed peer set and a
//! generation that changes whenever that set does. The [`driver`] does the timing and applies the
//! set to a transport (QUIC: `set_allowed_peers`; memory: `MemoryNetwork::block`).
//!
//! Reputation: each offence adds points (an invalid artifact `penalty_invalid_points`, any other
//! offence `penalty_protocol_points`); points decay linearly at `penalty_decay_points_per_s`. At
//! `penalty_ban_points` the peer is banned: left out of the allowed set (so disconnected and
//! refused) for `ban_initial`, doubling with every further ban of the same peer up to `ban_max`.
//! A ban clears the points: the peer comes back with a clean score but a longer next ban.
//!
//! Topology: every node derives the same graph from the same registry version. Members are
//! sorted by id into a ring; a node allows the members within `connections_max / 2` ring steps on
//! either side (all members when there are at most `connections_max` others). Ring distance is
//! symmetric, so two nodes allow each other or neither, and the ring keeps the graph connected.
//! A banned peer is left out without replacement, so the topology does not shift under a ban.
//! With `connections_max` = 1 and more than two members a node connects to nobody (one
//! neighbour cannot be chosen symmetrically); the tuning default (64) covers any IC subnet.
//!
//! Memory: every map is keyed by registry members of this subnet only; a penalty or event for a
//! non-member is counted and dropped, so remote input cannot grow state beyond the registry.

pub mod driver;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use icn_engine::registry::{Registry, SubnetId};
use icn_engine::{ConnId, NodeId};
use icn_tuning::PeersTuning;

use crate::consensus_manager::Offence;

pub use driver::{PeerManagerHandle, PeerTransport, RegistrySource};

/// Settings of one node's peer manager (from icn-tuning's peers section).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerManagerConfig {
    pub connections_max: usize,
    pub refresh_interval: Duration,
    pub penalty_ban_points: u64,
    pub penalty_invalid_points: u64,
    pub penalty_protocol_points: u64,
    pub penalty_decay_points_per_s: u64,
    pub ban_initial: Duration,
    pub ban_max: Duration,
}

impl PeerManagerConfig {
    pub fn from_tuning(peers: &PeersTuning) -> PeerManagerConfig {
        let ms = Duration::from_millis;
        PeerManagerConfig {
            connections_max: peers.connections_max,
            refresh_interval: ms(peers.refresh_interval_ms),
            penalty_ban_points: peers.penalty_ban_points,
            penalty_invalid_points: peers.penalty_invalid_points,
            penalty_protocol_points: peers.penalty_protocol_points,
            penalty_decay_points_per_s: peers.penalty_decay_points_per_s,
            ban_initial: ms(peers.ban_initial_ms),
            ban_max: ms(peers.ban_max_ms.max(peers.ban_initial_ms)),
        }
    }

    /// Points one offence costs.
    pub fn points_of(&self, offence: Offence) -> u64 {
        match offence {
            Offence::InvalidArtifact => self.penalty_invalid_points,
            Offence::SlotTableOverflow | Offence::ArtifactTooLarge | Offence::BadMessage => {
                self.penalty_protocol_points
            }
        }
    }

    /// Length of a peer's `bans`-th ban (1 -> `ban_initial`), doubling, capped at `ban_max`.
    pub fn ban_length(&self, bans: u32) -> Duration {
        let doublings = bans.saturating_sub(1).min(30);
        self.ban_initial
            .saturating_mul(1u32 << doublings)
            .min(self.ban_max)
    }
}

/// Penalties by offence (one counter per [`Offence`] variant).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffenceCounts {
    pub invalid_artifact: u64,
    pub slot_table_overflow: u64,
    pub artifact_too_large: u64,
    pub bad_message: u64,
}

impl OffenceCounts {
    fn add(&mut self, offence: Offence) {
        let counter = match offence {
            Offence::InvalidArtifact => &mut self.invalid_artifact,
            Offence::SlotTableOverflow => &mut self.slot_table_overflow,
            Offence::ArtifactTooLarge => &mut self.artifact_too_large,
            Offence::BadMessage => &mut self.bad_message,
        };
        *counter += 1;
    }

    pub fn total(&self) -> u64 {
        self.invalid_artifact
            + self.slot_table_overflow
            + self.artifact_too_large
            + self.bad_message
    }
}

/// What the node knows about one member of its subnet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerHealth {
    /// Where the registry says the peer listens (QUIC address).
    pub addr: SocketAddr,
    /// The current connection, if connected.
    pub conn: Option<ConnId>,
    /// Latest round-trip time sample.
    pub rtt: Option<Duration>,
    /// Last connection event or RTT sample.
    pub last_seen: Option<Duration>,
    /// Connections to this peer that closed.
    pub disconnects: u64,
    /// Penalty points at `points_at` (in thousandths, so that decay is exact in integers).
    points_milli: u64,
    points_at: Duration,
    /// Bans so far; the next one lasts `ban_length(bans + 1)`.
    pub bans: u32,
    pub banned_until: Option<Duration>,
    pub penalties: OffenceCounts,
}

impl PeerHealth {
    fn new(addr: SocketAddr) -> PeerHealth {
        PeerHealth {
            addr,
            conn: None,
            rtt: None,
            last_seen: None,
            disconnects: 0,
            points_milli: 0,
            points_at: Duration::ZERO,
            bans: 0,
            banned_until: None,
            penalties: OffenceCounts::default(),
        }
    }

    /// Penalty points at `now`, after decay (rounded up: a fraction still counts).
    pub fn points(&self, now: Duration, decay_points_per_s: u64) -> u64 {
        self.decayed_milli(now, decay_points_per_s).div_ceil(1000)
    }

    fn decayed_milli(&self, now: Duration, decay_points_per_s: u64) -> u64 {
        let elapsed_ms = now.saturating_sub(self.points_at).as_millis();
        let forgiven = elapsed_ms.saturating_mul(u128::from(decay_points_per_s));
        let forgiven = u64::try_from(forgiven).unwrap_or(u64::MAX);
        self.points_milli.saturating_sub(forgiven)
    }

    pub fn is_banned(&self, now: Duration) -> bool {
        self.banned_until.is_some_and(|until| until > now)
    }
}

/// Counters and gauges of the peer manager, published by the node (see [`PeerStats::metrics`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    pub registry_version: u64,
    /// Registry members of this subnet, self excluded.
    pub peers_members: usize,
    pub peers_allowed: usize,
    pub peers_connected: usize,
    pub peers_banned: usize,
    pub bans_total: u64,
    pub penalties: OffenceCounts,
    /// Penalties naming a node that is not a member (counted, otherwise ignored).
    pub penalties_unknown_peer_total: u64,
    /// Connection events and RTT samples naming a non-member (counted, otherwise ignored).
    pub events_unknown_peer_total: u64,
    /// Changes of the allowed set.
    pub allowed_set_changes_total: u64,
}

impl PeerStats {
    /// (name, help, value) of every metric, named like the engine's standard metrics.
    pub fn metrics(&self) -> [(&'static str, &'static str, u64); 12] {
        let penalties = &self.penalties;
        [
            (
                "icn_peers_registry_version",
                "Registry version the peer set comes from.",
                self.registry_version,
            ),
            (
                "icn_peers_members",
                "Members of this node's subnet, itself excluded.",
                self.peers_members as u64,
            ),
            (
                "icn_peers_allowed",
                "Peers this node accepts connections with.",
                self.peers_allowed as u64,
            ),
            (
                "icn_peers_connected",
                "Peers this node is connected to.",
                self.peers_connected as u64,
            ),
            (
                "icn_peers_banned",
                "Peers banned now.",
                self.peers_banned as u64,
            ),
            ("icn_peers_bans_total", "Bans imposed.", self.bans_total),
            (
                "icn_peers_penalties_invalid_artifact_total",
                "Penalties for content that did not match its advert.",
                penalties.invalid_artifact,
            ),
            (
                "icn_peers_penalties_slot_table_overflow_total",
                "Penalties for slot updates over the per-peer bounds.",
                penalties.slot_table_overflow,
            ),
            (
                "icn_peers_penalties_artifact_too_large_total",
                "Penalties for adverts larger than the largest message.",
                penalties.artifact_too_large,
            ),
            (
                "icn_peers_penalties_bad_message_total",
                "Penalties for undecodable messages.",
                penalties.bad_message,
            ),
            (
                "icn_peers_penalties_unknown_peer_total",
                "Penalties naming a node outside the subnet (dropped).",
                self.penalties_unknown_peer_total,
            ),
            (
                "icn_peers_allowed_set_changes_total",
                "Changes of the allowed peer set.",
                self.allowed_set_changes_total,
            ),
        ]
    }
}

/// The sans-I/O peer manager of one node (see the module docs).
pub struct PeerManager {
    config: PeerManagerConfig,
    local: NodeId,
    /// Members of the subnet except this node; bounded by the registry's subnet size.
    members: BTreeMap<NodeId, PeerHealth>,
    allowed: BTreeMap<NodeId, SocketAddr>,
    generation: u64,
    stats: PeerStats,
}

impl PeerManager {
    pub fn new(config: PeerManagerConfig, local: NodeId) -> PeerManager {
        PeerManager {
            config,
            local,
            members: BTreeMap::new(),
            allowed: BTreeMap::new(),
            generation: 0,
            stats: PeerStats::default(),
        }
    }

    pub fn config(&self) -> &PeerManagerConfig {
        &self.config
    }

    /// Adopts the subnet's membership (registry `version`): members that left are forgotten
    /// (and disconnected, as they leave the allowed set); new ones start with a clean record.
    pub fn set_membership(
        &mut self,
        version: u64,
        members: impl IntoIterator<Item = (NodeId, SocketAddr)>,
        now: Duration,
    ) {
        let mut next = BTreeMap::new();
        for (id, addr) in members {
            if id == self.local {
                continue;
            }
            let mut health = self
                .members
                .remove(&id)
                .unwrap_or_else(|| PeerHealth::new(addr));
            health.addr = addr;
            next.insert(id, health);
        }
        self.members = next;
        self.stats.registry_version = version;
        self.recompute(now);
    }

    /// Adopts the membership of `subnet` in `registry` (QUIC addresses).
    pub fn set_registry(&mut self, registry: &Registry, subnet: &SubnetId, now: Duration) {
        let members = registry
            .nodes(subnet)
            .iter()
            .map(|record| (record.node_id, record.quic_addr));
        self.set_membership(registry.version(), members, now);
    }

    pub fn connected(&mut self, peer: NodeId, conn: ConnId, now: Duration) {
        let Some(health) = self.member_mut(peer) else {
            return;
        };
        health.conn = Some(conn);
        health.last_seen = Some(now);
    }

    pub fn disconnected(&mut self, peer: NodeId, now: Duration) {
        let Some(health) = self.member_mut(peer) else {
            return;
        };
        if health.conn.take().is_some() {
            health.disconnects += 1;
            health.last_seen = Some(now);
        }
    }

    pub fn rtt_sample(&mut self, peer: NodeId, rtt: Duration, now: Duration) {
        let Some(health) = self.member_mut(peer) else {
            return;
        };
        health.rtt = Some(rtt);
        health.last_seen = Some(now);
    }

    /// Charges `offence` to `peer`; bans it when its points reach `penalty_ban_points`.
    /// Returns true if this banned the peer.
    pub fn penalize(&mut self, peer: NodeId, offence: Offence, now: Duration) -> bool {
        let config = self.config;
        let Some(health) = self.members.get_mut(&peer) else {
            self.stats.penalties_unknown_peer_total += 1;
            return false;
        };
        self.stats.penalties.add(offence);
        health.penalties.add(offence);
        if health.is_banned(now) {
            // Already out; late reports of its in-flight traffic do not lengthen the ban.
            return false;
        }
        let decayed = health.decayed_milli(now, config.penalty_decay_points_per_s);
        health.points_milli =
            decayed.saturating_add(config.points_of(offence).saturating_mul(1000));
        health.points_at = now;
        if health.points_milli < config.penalty_ban_points.saturating_mul(1000) {
            return false;
        }
        health.bans = health.bans.saturating_add(1);
        health.banned_until = Some(now + config.ban_length(health.bans));
        health.points_milli = 0;
        self.stats.bans_total += 1;
        self.recompute(now);
        true
    }

    /// Lifts the bans that ended by `now` (call at [`PeerManager::next_wakeup`]).
    pub fn poll(&mut self, now: Duration) {
        let mut lifted = false;
        for health in self.members.values_mut() {
            if health.banned_until.is_some_and(|until| until <= now) {
                health.banned_until = None;
                lifted = true;
            }
        }
        if lifted {
            self.recompute(now);
        }
    }

    /// When the next ban ends, if any peer is banned.
    pub fn next_wakeup(&self) -> Option<Duration> {
        self.members.values().filter_map(|h| h.banned_until).min()
    }

    /// Peers this node accepts connections with, and their addresses.
    pub fn allowed(&self) -> &BTreeMap<NodeId, SocketAddr> {
        &self.allowed
    }

    pub fn is_allowed(&self, peer: NodeId) -> bool {
        self.allowed.contains_key(&peer)
    }

    /// Members of the subnet (self excluded) and their addresses.
    pub fn members(&self) -> impl Iterator<Item = (NodeId, SocketAddr)> + '_ {
        self.members.iter().map(|(id, health)| (*id, health.addr))
    }

    /// Bumped whenever the allowed set changes: the driver applies the set when this moves.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn health(&self, peer: NodeId) -> Option<&PeerHealth> {
        self.members.get(&peer)
    }

    /// Penalty points of `peer` at `now` (0 for a non-member).
    pub fn points(&self, peer: NodeId, now: Duration) -> u64 {
        self.members.get(&peer).map_or(0, |health| {
            health.points(now, self.config.penalty_decay_points_per_s)
        })
    }

    pub fn stats(&self, now: Duration) -> PeerStats {
        let mut stats = self.stats;
        stats.peers_members = self.members.len();
        stats.peers_allowed = self.allowed.len();
        stats.peers_connected = self.members.values().filter(|h| h.conn.is_some()).count();
        stats.peers_banned = self.members.values().filter(|h| h.is_banned(now)).count();
        stats
    }

    fn member_mut(&mut self, peer: NodeId) -> Option<&mut PeerHealth> {
        let health = self.members.get_mut(&peer);
        if health.is_none() {
            self.stats.events_unknown_peer_total += 1;
        }
        health
    }

    /// Re-derives the allowed set; bumps the generation if it changed.
    fn recompute(&mut self, now: Duration) {
        let neighbours = ring_neighbours(
            self.local,
            self.members.keys().copied(),
            self.config.connections_max,
        );
        let allowed: BTreeMap<NodeId, SocketAddr> = neighbours
            .into_iter()
            .filter_map(|id| {
                let health = &self.members[&id];
                (!health.is_banned(now)).then_some((id, health.addr))
            })
            .collect();
        debug_assert!(allowed.len() <= self.config.connections_max);
        debug_assert!(!allowed.contains_key(&self.local));
        if allowed != self.allowed {
            self.allowed = allowed;
            self.generation += 1;
            self.stats.allowed_set_changes_total += 1;
        }
    }
}

/// The members within `connections_max / 2` steps of `local` on the ring of sorted ids (all of
/// them when they are at most `connections_max`). `members` excludes `local`.
pub fn ring_neighbours(
    local: NodeId,
    members: impl Iterator<Item = NodeId>,
    connections_max: usize,
) -> Vec<NodeId> {
    let mut ring: Vec<NodeId> = members.filter(|id| *id != local).collect();
    if ring.len() <= connections_max {
        return ring;
    }
    ring.push(local);
    ring.sort_unstable();
    ring.dedup();
    let size = ring.len();
    let position = ring.binary_search(&local).expect("local was inserted");
    let reach = connections_max / 2;
    let mut neighbours: Vec<NodeId> = (1..=reach)
        .flat_map(|step| [(position + step) % size, (position + size - step) % size])
        .map(|index| ring[index])
        .collect();
    neighbours.sort_unstable();
    neighbours.dedup();
    neighbours
}

#[cfg(test)]
mod tests;
