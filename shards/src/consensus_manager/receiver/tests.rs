use super::*;
use crate::artifact::Want;

const MS: Duration = Duration::from_millis(1);

fn config() -> ReceiverConfig {
    ReceiverConfig {
        peer_slots_max: 8,
        peer_advert_bytes_max: 1024,
        tracked_artifacts_max: 4,
        downloads_in_flight_per_peer_max: 2,
        downloads_in_flight_max: 16,
        chunking_threshold_bytes: 100,
        download_chunk_bytes: 40,
        download_timeout_initial: 100 * MS,
        download_timeout_max: 400 * MS,
        backoff: Backoff {
            initial: 10 * MS,
            max: 80 * MS,
        },
        peer_download_bytes_per_s_max: 0,
        download_bytes_per_s_max: 0,
        maybe_later_recheck: 50 * MS,
        artifact_bytes_max: 1 << 20,
    }
}

fn peer(n: u8) -> NodeId {
    NodeId([n; 32])
}

/// Content check used throughout: the payload must be `id` repeated to the advertised size.
fn content(id: &[u8], size: usize) -> Buf {
    Buf::from_vec(id.iter().copied().cycle().take(size).collect())
}

fn matches(advert: &Advert, payload: &[u8]) -> bool {
    payload == &content(advert.id.as_bytes(), advert.size_bytes as usize)[..]
}

fn wanted(_: &Advert) -> Want {
    Want::Wanted
}

fn advert(id: &str, size: u64) -> UpdateMessage {
    UpdateMessage::Advert(Advert {
        id: ArtifactId::from_slice(id.as_bytes()),
        attributes: SmallVec::new(),
        size_bytes: size,
    })
}

fn update(slot: u64, commit_id: u64, message: UpdateMessage) -> InboundUpdate {
    InboundUpdate {
        slot,
        commit_id,
        message,
    }
}

fn send(
    receiver: &mut Receiver,
    from: u8,
    conn: u64,
    update: InboundUpdate,
) -> Result<(), UpdateRefused> {
    receiver.handle_update(
        peer(from),
        ConnId(conn),
        update,
        Duration::ZERO,
        &wanted,
        &matches,
    )
}

fn fetches(receiver: &mut Receiver, now: Duration) -> Vec<Fetch> {
    let mut out = Vec::new();
    while let Some(fetch) = receiver.poll_fetch(now) {
        out.push(fetch);
    }
    out
}

fn events(receiver: &mut Receiver) -> Vec<ReceiverEvent> {
    let mut out = Vec::new();
    while let Some(event) = receiver.poll_event() {
        out.push(event);
    }
    out
}

fn answer(receiver: &mut Receiver, fetch: &Fetch, size: usize, now: Duration) {
    let whole = content(fetch.artifact.as_bytes(), size);
    let bytes = if fetch.length == 0 {
        whole
    } else {
        whole.slice(fetch.offset as usize..(fetch.offset + fetch.length) as usize)
    };
    receiver.fetch_done(fetch.id, Some(bytes), now, &matches);
}

#[test]
fn one_download_per_id_however_many_advertise_it() {
    let mut receiver = Receiver::new(config());
    for from in 1..=3 {
        send(&mut receiver, from, 1, update(0, 1, advert("a", 10))).unwrap();
    }
    let started = fetches(&mut receiver, Duration::ZERO);
    assert_eq!(started.len(), 1);
    assert_eq!(receiver.advertisers(&ArtifactId::from_slice(b"a")).len(), 3);
    answer(&mut receiver, &started[0], 10, MS);
    let delivered = events(&mut receiver);
    assert!(
        matches!(&delivered[..], [ReceiverEvent::Deliver { artifact, .. }] if artifact.payload.len() == 10)
    );
    // Re-adverts and a reconnect of one advertiser do not start it again.
    send(&mut receiver, 1, 2, update(0, 1, advert("a", 10))).unwrap();
    assert!(fetches(&mut receiver, 2 * MS).is_empty());
    assert_eq!(receiver.stats().fetches_started, 1);
}

#[test]
fn stale_updates_are_ignored() {
    let mut receiver = Receiver::new(config());
    send(&mut receiver, 1, 5, update(0, 10, advert("new", 10))).unwrap();
    send(&mut receiver, 1, 5, update(0, 9, advert("old", 10))).unwrap();
    send(&mut receiver, 1, 4, update(1, 50, advert("old-conn", 10))).unwrap();
    assert_eq!(receiver.stats().updates_stale, 2);
    assert_eq!(receiver.tracked(), 1);
    assert_eq!(receiver.peer_slots(peer(1)), 1);
}

#[test]
fn withdrawn_adverts_cancel_downloads_and_remove_delivered_artifacts() {
    let mut receiver = Receiver::new(config());
    send(&mut receiver, 1, 1, update(0, 1, advert("a", 10))).unwrap();
    send(&mut receiver, 1, 1, update(1, 2, advert("b", 10))).unwrap();
    let started = fetches(&mut receiver, Duration::ZERO);
    assert_eq!(started.len(), 2);
    let a = started
        .iter()
        .find(|f| f.artifact.as_bytes() == b"a")
        .unwrap();
    answer(&mut receiver, a, 10, MS);
    events(&mut receiver);
    // Peer 1 clears slot 1 ("b", still downloading) and its connection to "a" goes.
    send(
        &mut receiver,
        1,
        1,
        update(1, 3, UpdateMessage::Cleared(ArtifactId::from_slice(b"b"))),
    )
    .unwrap();
    receiver.peer_disconnected(peer(1));
    let after = events(&mut receiver);
    assert!(after
        .iter()
        .any(|e| matches!(e, ReceiverEvent::CancelFetch(_))));
    assert!(
        after.contains(&ReceiverEvent::RemoveUnvalidated(ArtifactId::from_slice(
            b"a"
        )))
    );
    assert_eq!(receiver.tracked(), 0);
    assert_eq!(receiver.fetches_in_flight(), 0);
}

#[test]
fn bounds_are_enforced_and_offenders_named() {
    let mut receiver = Receiver::new(config());
    assert_eq!(
        send(&mut receiver, 1, 1, update(8, 1, advert("x", 10))),
        Err(UpdateRefused::Offence(Offence::SlotTableOverflow))
    );
    let huge = "h".repeat(600);
    send(&mut receiver, 2, 1, update(0, 1, advert(&huge, 10))).unwrap();
    assert_eq!(
        send(
            &mut receiver,
            2,
            1,
            update(1, 2, advert(&"i".repeat(600), 10))
        ),
        Err(UpdateRefused::Offence(Offence::SlotTableOverflow))
    );
    assert_eq!(
        send(&mut receiver, 3, 1, update(0, 1, advert("big", 2 << 20))),
        Err(UpdateRefused::Offence(Offence::ArtifactTooLarge))
    );
    for (slot, id) in ["p", "q", "r"].iter().enumerate() {
        send(
            &mut receiver,
            4,
            1,
            update(slot as u64, slot as u64 + 1, advert(id, 10)),
        )
        .unwrap();
    }
    assert_eq!(receiver.tracked(), 4);
    assert_eq!(
        send(&mut receiver, 4, 1, update(5, 9, advert("s", 10))),
        Err(UpdateRefused::Busy)
    );
    let penalties: Vec<_> = events(&mut receiver)
        .into_iter()
        .filter(|e| matches!(e, ReceiverEvent::Penalize { .. }))
        .collect();
    assert_eq!(penalties.len(), 3);
}

#[test]
fn failed_fetches_retry_elsewhere_with_growing_deadlines() {
    let mut receiver = Receiver::new(config());
    send(&mut receiver, 1, 1, update(0, 1, advert("a", 10))).unwrap();
    send(&mut receiver, 2, 1, update(0, 1, advert("a", 10))).unwrap();
    let first = fetches(&mut receiver, Duration::ZERO);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].timeout, 100 * MS);
    receiver.fetch_done(first[0].id, None, MS, &matches);
    assert!(fetches(&mut receiver, 5 * MS).is_empty(), "backoff");
    assert_eq!(receiver.next_wakeup(), Some(11 * MS));
    let second = fetches(&mut receiver, 11 * MS);
    assert_eq!(second.len(), 1);
    assert_ne!(second[0].peer, first[0].peer, "the failed peer is avoided");
    assert_eq!(second[0].timeout, 200 * MS);
}

#[test]
fn large_artifacts_come_in_chunks_from_several_peers() {
    let mut receiver = Receiver::new(config());
    for from in 1..=3 {
        send(&mut receiver, from, 1, update(0, 1, advert("big", 110))).unwrap();
    }
    let chunks = fetches(&mut receiver, Duration::ZERO);
    assert_eq!(chunks.len(), 3);
    let ranges: Vec<(u64, u64)> = chunks.iter().map(|f| (f.offset, f.length)).collect();
    assert_eq!(ranges, [(0, 40), (40, 40), (80, 30)]);
    let peers: std::collections::BTreeSet<NodeId> = chunks.iter().map(|f| f.peer).collect();
    assert_eq!(peers.len(), 3, "one chunk per advertiser");
    for fetch in &chunks {
        answer(&mut receiver, fetch, 110, MS);
    }
    let delivered = events(&mut receiver);
    assert!(
        matches!(&delivered[..], [ReceiverEvent::Deliver { artifact, .. }] if matches(&artifact.advert, &artifact.payload))
    );
}

#[test]
fn a_peer_serving_bad_chunks_is_found_and_penalized() {
    let mut receiver = Receiver::new(config());
    for from in 1..=2 {
        send(&mut receiver, from, 1, update(0, 1, advert("big", 80))).unwrap();
    }
    let mut now = Duration::ZERO;
    let mut penalized = None;
    for _round in 0..10 {
        for fetch in fetches(&mut receiver, now) {
            if fetch.peer == peer(2) {
                // Right length, wrong bytes.
                let length = if fetch.length == 0 { 80 } else { fetch.length };
                let bytes = Buf::from_vec(vec![0; length as usize]);
                receiver.fetch_done(fetch.id, Some(bytes), now, &matches);
            } else {
                answer(&mut receiver, &fetch, 80, now);
            }
        }
        for event in events(&mut receiver) {
            match event {
                ReceiverEvent::Penalize { peer, offence } => penalized = Some((peer, offence)),
                ReceiverEvent::Deliver { artifact, .. } => {
                    assert!(matches(&artifact.advert, &artifact.payload));
                    assert_eq!(penalized, Some((peer(2), Offence::InvalidArtifact)));
                    return;
                }
                _ => {}
            }
        }
        now += 100 * MS;
    }
    panic!("never delivered; penalized = {penalized:?}");
}

#[test]
fn pushed_artifacts_are_checked_and_deduplicated() {
    let mut receiver = Receiver::new(config());
    let good = Artifact {
        advert: Advert {
            id: ArtifactId::from_slice(b"p"),
            attributes: SmallVec::new(),
            size_bytes: 3,
        },
        payload: content(b"p", 3),
    };
    let mut bad = good.clone();
    bad.payload = Buf::copy_from_slice(b"xyz");
    send(&mut receiver, 1, 1, update(0, 1, UpdateMessage::Push(bad))).unwrap();
    send(
        &mut receiver,
        2,
        1,
        update(0, 1, UpdateMessage::Push(good.clone())),
    )
    .unwrap();
    send(&mut receiver, 3, 1, update(0, 1, UpdateMessage::Push(good))).unwrap();
    let all = events(&mut receiver);
    assert_eq!(
        all.iter()
            .filter(|e| matches!(e, ReceiverEvent::Deliver { .. }))
            .count(),
        1
    );
    assert!(all.contains(&ReceiverEvent::Penalize {
        peer: peer(1),
        offence: Offence::InvalidArtifact
    }));
    assert_eq!(receiver.stats().duplicate_pushes, 1);
    assert!(fetches(&mut receiver, Duration::ZERO).is_empty());
}

#[test]
fn maybe_later_is_asked_again() {
    let mut receiver = Receiver::new(config());
    let later = |_: &Advert| Want::MaybeLater;
    receiver
        .handle_update(
            peer(1),
            ConnId(1),
            update(0, 1, advert("m", 10)),
            Duration::ZERO,
            &later,
            &matches,
        )
        .unwrap();
    assert!(fetches(&mut receiver, Duration::ZERO).is_empty());
    assert_eq!(receiver.next_wakeup(), Some(50 * MS));
    receiver.recheck(50 * MS, &wanted);
    assert_eq!(fetches(&mut receiver, 50 * MS).len(), 1);
}

#[test]
fn a_reconnect_does_not_lose_count_of_fetches_in_flight() {
    let mut receiver = Receiver::new(config());
    send(&mut receiver, 1, 1, update(0, 1, advert("a", 10))).unwrap();
    send(&mut receiver, 2, 1, update(0, 1, advert("a", 10))).unwrap();
    let first = fetches(&mut receiver, Duration::ZERO);
    assert_eq!(first.len(), 1);
    let busy = first[0].peer.0[0];
    // The fetching peer reconnects (a newer connection) while the fetch runs on the old one;
    // the other advertiser keeps the download alive, so the fetch is not cancelled. Then the
    // reconnected peer advertises three more artifacts only it has.
    send(&mut receiver, busy, 2, update(0, 1, advert("a", 10))).unwrap();
    for (slot, id) in ["b", "c", "d"].iter().enumerate() {
        send(
            &mut receiver,
            busy,
            2,
            update(slot as u64 + 1, slot as u64 + 2, advert(id, 10)),
        )
        .unwrap();
    }
    // The old fetch still counts: one more fits under the per-peer bound of 2.
    assert_eq!(fetches(&mut receiver, MS).len(), 1);
    receiver.fetch_done(first[0].id, None, MS, &matches);
    assert_eq!(receiver.fetches_in_flight(), 1);
    // The failed fetch freed its slot: the busy peer takes exactly one more (bound 2).
    let next = fetches(&mut receiver, 100 * MS);
    let to_busy = next.iter().filter(|f| f.peer.0[0] == busy).count();
    assert_eq!(to_busy, 1, "{next:?}");
}
