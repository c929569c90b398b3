use super::*;

const S: Duration = Duration::from_secs(1);

fn id(i: u8) -> NodeId {
    NodeId([i; 32])
}

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4000 + u16::from(i)))
}

fn config() -> PeerManagerConfig {
    PeerManagerConfig {
        connections_max: 64,
        refresh_interval: 5 * S,
        penalty_ban_points: 100,
        penalty_invalid_points: 25,
        penalty_protocol_points: 10,
        penalty_decay_points_per_s: 1,
        ban_initial: 10 * S,
        ban_max: 35 * S,
    }
}

/// A manager for node 0 in a subnet of nodes 0..n.
fn manager(n: u8) -> PeerManager {
    let mut manager = PeerManager::new(config(), id(0));
    manager.set_membership(1, (0..n).map(|i| (id(i), addr(i))), Duration::ZERO);
    manager
}

#[test]
fn config_from_default_tuning() {
    let config = PeerManagerConfig::from_tuning(&icn_tuning::Tuning::default().peers);
    assert_eq!(config.penalty_ban_points, 100);
    assert_eq!(config.points_of(Offence::InvalidArtifact), 25);
    assert_eq!(config.points_of(Offence::BadMessage), 10);
    assert!(config.ban_max >= config.ban_initial);
}

#[test]
fn self_is_never_a_peer_and_small_subnets_are_a_full_mesh() {
    let manager = manager(7);
    let allowed: Vec<NodeId> = manager.allowed().keys().copied().collect();
    assert_eq!(allowed, (1..7).map(id).collect::<Vec<_>>());
    assert_eq!(manager.allowed()[&id(3)], addr(3));
    assert_eq!(manager.generation(), 1);
    assert_eq!(manager.stats(Duration::ZERO).peers_members, 6);
}

#[test]
fn points_decay_linearly_and_never_below_zero() {
    let mut manager = manager(3);
    manager.penalize(id(1), Offence::InvalidArtifact, Duration::ZERO);
    assert_eq!(manager.points(id(1), Duration::ZERO), 25);
    assert_eq!(manager.points(id(1), 10 * S), 15);
    assert_eq!(manager.points(id(1), Duration::from_millis(10_500)), 15);
    manager.penalize(id(1), Offence::BadMessage, 10 * S);
    assert_eq!(manager.points(id(1), 10 * S), 25);
    assert_eq!(manager.points(id(1), 100 * S), 0);
    // Slow offences decay away and never ban.
    for second in 0..100 {
        manager.penalize(id(2), Offence::BadMessage, second * 20 * S);
    }
    assert_eq!(manager.health(id(2)).unwrap().bans, 0);
    assert_eq!(manager.stats(Duration::ZERO).penalties.bad_message, 101);
}

#[test]
fn reaching_the_ban_points_bans_and_the_ban_ends() {
    let mut manager = manager(4);
    let before = manager.generation();
    for _ in 0..3 {
        assert!(!manager.penalize(id(2), Offence::InvalidArtifact, S));
    }
    assert!(manager.is_allowed(id(2)));
    assert!(manager.penalize(id(2), Offence::InvalidArtifact, S));
    assert!(!manager.is_allowed(id(2)));
    assert_eq!(manager.generation(), before + 1);
    assert_eq!(manager.next_wakeup(), Some(11 * S));
    let stats = manager.stats(S);
    assert_eq!((stats.peers_banned, stats.bans_total), (1, 1));
    assert_eq!(stats.penalties.invalid_artifact, 4);
    // Offences while banned are counted but do not extend the ban.
    assert!(!manager.penalize(id(2), Offence::BadMessage, 2 * S));
    assert_eq!(manager.next_wakeup(), Some(11 * S));
    manager.poll(11 * S - Duration::from_millis(1));
    assert!(!manager.is_allowed(id(2)));
    manager.poll(11 * S);
    assert!(manager.is_allowed(id(2)));
    assert_eq!(manager.generation(), before + 2);
    assert_eq!(manager.points(id(2), 11 * S), 0, "a ban clears the points");
    assert_eq!(manager.next_wakeup(), None);
}

#[test]
fn repeated_bans_double_up_to_the_maximum() {
    let mut manager = manager(2);
    let mut now = Duration::ZERO;
    let mut lengths = Vec::new();
    for _ in 0..4 {
        while !manager.penalize(id(1), Offence::InvalidArtifact, now) {}
        let until = manager.health(id(1)).unwrap().banned_until.unwrap();
        lengths.push((until - now).as_secs());
        now = until;
        manager.poll(now);
        assert!(manager.is_allowed(id(1)));
    }
    assert_eq!(lengths, [10, 20, 35, 35]);
    assert_eq!(manager.health(id(1)).unwrap().bans, 4);
}

#[test]
fn connections_max_picks_ring_neighbours_symmetrically() {
    let n = 20u8;
    let mut config = config();
    config.connections_max = 6;
    let sets: Vec<BTreeMap<NodeId, SocketAddr>> = (0..n)
        .map(|local| {
            let mut manager = PeerManager::new(config, id(local));
            manager.set_membership(1, (0..n).map(|i| (id(i), addr(i))), Duration::ZERO);
            manager.allowed().clone()
        })
        .collect();
    for (a, set) in sets.iter().enumerate() {
        assert_eq!(set.len(), 6);
        assert!(!set.contains_key(&id(a as u8)));
        for peer in set.keys() {
            let b = peer.0[0] as usize;
            assert!(sets[b].contains_key(&id(a as u8)), "{a} allows {b} only");
        }
    }
    let zero: Vec<u8> = sets[0].keys().map(|peer| peer.0[0]).collect();
    assert_eq!(zero, [1, 2, 3, 17, 18, 19]);
}

#[test]
fn membership_change_removes_a_peer_and_keeps_the_others_records() {
    let mut manager = manager(4);
    manager.connected(id(1), ConnId(7), S);
    manager.penalize(id(1), Offence::BadMessage, S);
    manager.penalize(id(3), Offence::BadMessage, S);
    let generation = manager.generation();
    manager.set_membership(2, (0..3).map(|i| (id(i), addr(i))), 2 * S);
    assert!(!manager.is_allowed(id(3)));
    assert!(manager.health(id(3)).is_none());
    assert_eq!(manager.generation(), generation + 1);
    let kept = manager.health(id(1)).unwrap();
    assert_eq!((kept.conn, kept.points(2 * S, 1)), (Some(ConnId(7)), 9));
    assert_eq!(manager.stats(2 * S).registry_version, 2);
    // The same membership again changes nothing.
    manager.set_membership(2, (0..3).map(|i| (id(i), addr(i))), 3 * S);
    assert_eq!(manager.generation(), generation + 1);
}

#[test]
fn unknown_peers_are_counted_and_never_stored() {
    let mut manager = manager(3);
    for i in 10..=255u8 {
        assert!(!manager.penalize(id(i), Offence::InvalidArtifact, S));
        manager.connected(id(i), ConnId(u64::from(i)), S);
        manager.rtt_sample(id(i), S, S);
        manager.disconnected(id(i), S);
    }
    let stats = manager.stats(S);
    assert_eq!(stats.peers_members, 2);
    assert_eq!(stats.penalties_unknown_peer_total, 246);
    assert_eq!(stats.events_unknown_peer_total, 3 * 246);
    assert_eq!(stats.penalties.total(), 0);
    assert!(manager.health(id(10)).is_none());
}

#[test]
fn health_follows_connection_events_and_rtt() {
    let mut manager = manager(3);
    manager.connected(id(1), ConnId(1), S);
    manager.rtt_sample(id(1), Duration::from_millis(3), 2 * S);
    manager.disconnected(id(1), 3 * S);
    manager.disconnected(id(1), 4 * S);
    manager.connected(id(1), ConnId(2), 5 * S);
    let health = manager.health(id(1)).unwrap();
    assert_eq!(health.conn, Some(ConnId(2)));
    assert_eq!(health.rtt, Some(Duration::from_millis(3)));
    assert_eq!(health.last_seen, Some(5 * S));
    assert_eq!(health.disconnects, 1, "one connection closed");
    assert_eq!(manager.stats(5 * S).peers_connected, 1);
}

#[test]
fn metrics_name_every_stat() {
    let mut manager = manager(3);
    while !manager.penalize(id(1), Offence::SlotTableOverflow, S) {}
    let metrics = manager.stats(S).metrics();
    let value = |name: &str| metrics.iter().find(|(n, _, _)| *n == name).unwrap().2;
    assert_eq!(value("icn_peers_bans_total"), 1);
    assert_eq!(value("icn_peers_penalties_slot_table_overflow_total"), 10);
    assert_eq!(value("icn_peers_allowed"), 1);
    assert!(metrics
        .iter()
        .all(|(name, _, _)| icn_engine::metrics::is_valid_metric_name(name)));
}
