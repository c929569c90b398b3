use std::collections::HashMap;

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
        // The tests before the batch tests check single fetches.
        fetch_batch_artifacts_max: 1,
        fetch_batch_bytes_max: 64,
    }
}

/// Batches of up to 3 artifacts and 64 advertised bytes; room for more tracked ids.
fn batch_config() -> ReceiverConfig {
    ReceiverConfig {
        tracked_artifacts_max: 16,
        fetch_batch_artifacts_max: 3,
        ..config()
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
    let whole = content(fetch.artifacts[0].as_bytes(), size);
    let bytes = if fetch.length == 0 {
        whole
    } else {
        whole.slice(fetch.offset as usize..(fetch.offset + fetch.length) as usize)
    };
    receiver.fetch_done(fetch.id, FetchOutcome::Bytes(bytes), now, &matches);
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
        .find(|f| f.artifacts[0].as_bytes() == b"a")
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
    receiver.fetch_done(first[0].id, FetchOutcome::Failed, MS, &matches);
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
                receiver.fetch_done(fetch.id, FetchOutcome::Bytes(bytes), now, &matches);
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
    receiver.fetch_done(first[0].id, FetchOutcome::Failed, MS, &matches);
    assert_eq!(receiver.fetches_in_flight(), 1);
    // The failed fetch freed its slot: the busy peer takes exactly one more (bound 2).
    let next = fetches(&mut receiver, 100 * MS);
    let to_busy = next.iter().filter(|f| f.peer.0[0] == busy).count();
    assert_eq!(to_busy, 1, "{next:?}");
}

/// Every fetch that can start now, batches included (the driver's call).
fn poll_all(receiver: &mut Receiver, now: Duration) -> Vec<Fetch> {
    let mut out = Vec::new();
    receiver.poll_fetches(now, usize::MAX, &mut out);
    out
}

fn ids(fetch: &Fetch) -> Vec<&[u8]> {
    fetch.artifacts.iter().map(ArtifactId::as_bytes).collect()
}

/// The answer an honest peer gives to a batch (sizes from `sizes`).
fn batch_answer(fetch: &Fetch, sizes: &HashMap<&[u8], usize>) -> Vec<Option<Buf>> {
    fetch
        .artifacts
        .iter()
        .map(|id| Some(content(id.as_bytes(), sizes[id.as_bytes()])))
        .collect()
}

fn delivered_ids(events: &[ReceiverEvent]) -> Vec<(Vec<u8>, NodeId)> {
    events
        .iter()
        .filter_map(|event| match event {
            ReceiverEvent::Deliver { artifact, from } => {
                assert!(matches(&artifact.advert, &artifact.payload));
                Some((artifact.advert.id.as_bytes().to_vec(), *from))
            }
            _ => None,
        })
        .collect()
}

fn penalties(events: &[ReceiverEvent]) -> Vec<(NodeId, Offence)> {
    events
        .iter()
        .filter_map(|event| match event {
            ReceiverEvent::Penalize { peer, offence } => Some((*peer, *offence)),
            _ => None,
        })
        .collect()
}

#[test]
fn batches_form_per_peer_within_their_bounds() {
    let mut receiver = Receiver::new(batch_config());
    // Peer 1: four of 10 bytes, one of 50, then one of 70 (over the 64-byte batch bound, under
    // the chunking threshold); peer 2: two of 10.
    let plan: [(u8, &str, u64); 8] = [
        (1, "a", 10),
        (1, "b", 10),
        (1, "c", 10),
        (1, "d", 10),
        (1, "e", 50),
        (2, "f", 10),
        (2, "g", 10),
        (1, "h", 70),
    ];
    for (slot, (from, id, size)) in plan.iter().enumerate() {
        let commit = slot as u64 + 1;
        send(
            &mut receiver,
            *from,
            1,
            update(slot as u64, commit, advert(id, *size)),
        )
        .unwrap();
    }
    let started = poll_all(&mut receiver, Duration::ZERO);
    let shape: Vec<(u8, Vec<&[u8]>)> = started.iter().map(|f| (f.peer.0[0], ids(f))).collect();
    assert_eq!(
        shape,
        [
            (1, vec![&b"a"[..], b"b", b"c"]), // full at 3 ids
            (1, vec![&b"d"[..], b"e"]),       // 60 bytes; nothing else of peer 1's fits
            (2, vec![&b"f"[..], b"g"]),       // only peer 2 advertises them
        ]
    );
    assert!(started
        .iter()
        .all(|f| f.is_batch() && (f.offset, f.length) == (0, 0)));
    // Two batches fill peer 1's window of 2: "h" waits, and a batch counts once.
    assert_eq!(receiver.fetches_in_flight(), 3);
    let stats = receiver.stats();
    assert_eq!((stats.fetches_started, stats.batches_started), (3, 3));
    assert_eq!(stats.batch_artifacts_requested, 7);
    let sizes: HashMap<&[u8], usize> = plan
        .iter()
        .map(|(_, id, size)| (id.as_bytes(), *size as usize))
        .collect();
    let answer = FetchOutcome::Batch(batch_answer(&started[0], &sizes));
    receiver.fetch_done(started[0].id, answer, MS, &matches);
    assert_eq!(delivered_ids(&events(&mut receiver)).len(), 3);
    // Room again: "h" goes alone, as a plain whole-artifact fetch.
    let next = poll_all(&mut receiver, MS);
    assert_eq!(next.len(), 1);
    assert_eq!((ids(&next[0]), next[0].peer), (vec![&b"h"[..]], peer(1)));
    assert!(!next[0].is_batch());
}

#[test]
fn a_batch_item_not_held_is_retried_from_another_peer() {
    let mut receiver = Receiver::new(batch_config());
    for from in 1..=2 {
        for (slot, id) in ["a", "b", "c"].iter().enumerate() {
            let commit = slot as u64 + 1;
            send(
                &mut receiver,
                from,
                1,
                update(slot as u64, commit, advert(id, 10)),
            )
            .unwrap();
        }
    }
    let started = poll_all(&mut receiver, Duration::ZERO);
    assert_eq!(
        started.len(),
        1,
        "one batch to one of the advertisers: {started:?}"
    );
    let batch = &started[0];
    assert_eq!(ids(batch), [&b"a"[..], b"b", b"c"]);
    let (asked, other) = (
        batch.peer,
        if batch.peer == peer(1) {
            peer(2)
        } else {
            peer(1)
        },
    );
    let answers = vec![Some(content(b"a", 10)), None, Some(content(b"c", 10))];
    receiver.fetch_done(batch.id, FetchOutcome::Batch(answers), MS, &matches);
    let after = events(&mut receiver);
    assert_eq!(
        delivered_ids(&after),
        [(b"a".to_vec(), asked), (b"c".to_vec(), asked)]
    );
    assert!(
        penalties(&after).is_empty(),
        "not holding an artifact is no offence"
    );
    assert_eq!(receiver.stats().batch_artifacts_not_held, 1);
    // "b" waits for its backoff, then goes to the other advertiser.
    assert!(poll_all(&mut receiver, 5 * MS).is_empty());
    let retry = poll_all(&mut receiver, 11 * MS);
    assert_eq!(retry.len(), 1);
    assert_eq!((ids(&retry[0]), retry[0].peer), (vec![&b"b"[..]], other));
    answer(&mut receiver, &retry[0], 10, 12 * MS);
    assert_eq!(
        delivered_ids(&events(&mut receiver)),
        [(b"b".to_vec(), other)]
    );
}

#[test]
fn a_wrong_batch_item_blames_only_its_sender() {
    let mut receiver = Receiver::new(batch_config());
    for from in 1..=2 {
        for (slot, id) in ["a", "b"].iter().enumerate() {
            let commit = slot as u64 + 1;
            send(
                &mut receiver,
                from,
                1,
                update(slot as u64, commit, advert(id, 10)),
            )
            .unwrap();
        }
    }
    let started = poll_all(&mut receiver, Duration::ZERO);
    assert_eq!(started.len(), 1);
    let liar = started[0].peer;
    // "a" right, "b" the right length with wrong bytes.
    let answers = vec![Some(content(b"a", 10)), Some(Buf::from_vec(vec![0; 10]))];
    receiver.fetch_done(started[0].id, FetchOutcome::Batch(answers), MS, &matches);
    let after = events(&mut receiver);
    assert_eq!(delivered_ids(&after), [(b"a".to_vec(), liar)]);
    assert_eq!(penalties(&after), [(liar, Offence::InvalidArtifact)]);
    assert_eq!(receiver.stats().invalid_artifacts, 1);
    let retry = poll_all(&mut receiver, 11 * MS);
    assert_eq!(retry.len(), 1);
    assert_ne!(retry[0].peer, liar, "the failed peer is avoided");
    answer(&mut receiver, &retry[0], 10, 12 * MS);
    let last = events(&mut receiver);
    assert_eq!(delivered_ids(&last), [(b"b".to_vec(), retry[0].peer)]);
    assert!(penalties(&last).is_empty());
}

#[test]
fn a_malformed_batch_answer_penalizes_its_sender_and_retries_every_item() {
    let mut receiver = Receiver::new(batch_config());
    for from in 1..=2 {
        for (slot, id) in ["a", "b"].iter().enumerate() {
            let commit = slot as u64 + 1;
            send(
                &mut receiver,
                from,
                1,
                update(slot as u64, commit, advert(id, 10)),
            )
            .unwrap();
        }
    }
    let started = poll_all(&mut receiver, Duration::ZERO);
    let sender = started[0].peer;
    receiver.fetch_done(started[0].id, FetchOutcome::Malformed, MS, &matches);
    assert_eq!(
        penalties(&events(&mut receiver)),
        [(sender, Offence::BadMessage)]
    );
    let retry = poll_all(&mut receiver, 11 * MS);
    assert_eq!(retry.len(), 1);
    assert_eq!(ids(&retry[0]), [&b"a"[..], b"b"]);
    assert_ne!(retry[0].peer, sender);
}

#[test]
fn a_batch_lives_while_any_item_waits_and_late_items_are_still_checked() {
    let mut receiver = Receiver::new(batch_config());
    for (slot, id) in ["a", "b", "c"].iter().enumerate() {
        let commit = slot as u64 + 1;
        send(
            &mut receiver,
            1,
            1,
            update(slot as u64, commit, advert(id, 10)),
        )
        .unwrap();
    }
    let started = poll_all(&mut receiver, Duration::ZERO);
    assert_eq!(ids(&started[0]), [&b"a"[..], b"b", b"c"]);
    // Peer 2 pushes "a" and "c" while the batch is in flight: the batch goes on for "b".
    for (slot, id) in ["a", "c"].iter().enumerate() {
        let pushed = Artifact {
            advert: Advert {
                id: ArtifactId::from_slice(id.as_bytes()),
                attributes: SmallVec::new(),
                size_bytes: 10,
            },
            payload: content(id.as_bytes(), 10),
        };
        let message = UpdateMessage::Push(pushed);
        send(&mut receiver, 2, 1, update(slot as u64, 1, message)).unwrap();
    }
    let pushed = events(&mut receiver);
    assert_eq!(delivered_ids(&pushed).len(), 2);
    assert!(!pushed
        .iter()
        .any(|e| matches!(e, ReceiverEvent::CancelFetch(_))));
    assert_eq!(receiver.fetches_in_flight(), 1);
    // The answer: "a" wrong (late, still checked), "b" right, "c" right (late, ignored).
    let answers = vec![
        Some(Buf::from_vec(vec![0; 10])),
        Some(content(b"b", 10)),
        Some(content(b"c", 10)),
    ];
    receiver.fetch_done(started[0].id, FetchOutcome::Batch(answers), MS, &matches);
    let after = events(&mut receiver);
    assert_eq!(delivered_ids(&after), [(b"b".to_vec(), peer(1))]);
    assert_eq!(penalties(&after), [(peer(1), Offence::InvalidArtifact)]);
    // Once nothing waits on a batch, it is cancelled.
    for (slot, id) in ["d", "e"].iter().enumerate() {
        let commit = slot as u64 + 10;
        send(
            &mut receiver,
            1,
            1,
            update(slot as u64 + 3, commit, advert(id, 10)),
        )
        .unwrap();
    }
    let batch = poll_all(&mut receiver, 2 * MS);
    assert_eq!(ids(&batch[0]), [&b"d"[..], b"e"]);
    receiver.peer_disconnected(peer(1));
    let cancelled: Vec<ReceiverEvent> = events(&mut receiver)
        .into_iter()
        .filter(|e| matches!(e, ReceiverEvent::CancelFetch(_)))
        .collect();
    assert_eq!(cancelled, [ReceiverEvent::CancelFetch(batch[0].id)]);
    assert_eq!(receiver.fetches_in_flight(), 0);
    assert_eq!(receiver.stats().fetches_cancelled, 1);
}
