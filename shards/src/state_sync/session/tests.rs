use super::*;
use icn_codecs::state::{
    encode_manifest_piece, encode_meta_manifest, plan_chunks, ChunkEntry, ChunkHasher, FileEntry,
    FileHasher,
};

/// A state of `files` files of `size` bytes each, its chunk bytes, and its encoded manifest.
struct State {
    manifest: Manifest,
    chunks: Vec<Vec<u8>>,
    meta: Vec<u8>,
    pieces: Vec<Vec<u8>>,
    root: Hash,
}

fn state(files: u32, size: u64, chunk_bytes: u32) -> State {
    let contents: Vec<Vec<u8>> = (0..files)
        .map(|f| (0..size).map(|i| (i as u8) ^ (f as u8)).collect())
        .collect();
    let sizes: Vec<u64> = contents.iter().map(|c| c.len() as u64).collect();
    let mut manifest = Manifest {
        chunk_bytes,
        files: contents
            .iter()
            .enumerate()
            .map(|(f, content)| {
                let mut hasher = FileHasher::new();
                hasher.update(content);
                FileEntry {
                    path: format!("f{f:04}"),
                    size: content.len() as u64,
                    hash: hasher.finish(),
                }
            })
            .collect(),
        chunks: plan_chunks(&sizes, chunk_bytes)
            .into_iter()
            .map(|plan| ChunkEntry {
                file_index: plan.file_index,
                offset: plan.offset,
                size: plan.size,
                hash: [0; 32],
            })
            .collect(),
    };
    let mut chunks = Vec::new();
    for index in 0..manifest.chunks.len() {
        let mut bytes = Vec::new();
        for segment in manifest.segments(index as u32).unwrap() {
            let content = &contents[segment.file_index as usize];
            bytes.extend_from_slice(
                &content[segment.offset as usize..(segment.offset + segment.len) as usize],
            );
        }
        let mut hasher = ChunkHasher::new();
        hasher.update(&bytes);
        manifest.chunks[index].hash = hasher.finish();
        chunks.push(bytes);
    }
    let (meta, pieces) = manifest.split_with(1 << 10, 16);
    State {
        root: meta.root_hash(),
        meta: encode_meta_manifest(&meta),
        pieces: pieces.iter().map(encode_manifest_piece).collect(),
        manifest,
        chunks,
    }
}

fn node(n: u8) -> NodeId {
    NodeId([n; 32])
}

fn config() -> SessionConfig {
    SessionConfig {
        chunks_in_flight_per_peer_max: 4,
        chunks_in_flight_max: 10,
        backoff: Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        },
        limits: ManifestLimits::default(),
    }
}

/// Hands `bytes` in as the driver does: manifest answers to be checked, chunk answers checked
/// against [`SyncSession::chunk_check`] first (and, when they match, taken as written).
fn answer(
    session: &mut SyncSession,
    peer: NodeId,
    want: Want,
    bytes: &[u8],
) -> Result<Accepted, SyncOffence> {
    let Want::Chunk(chunk) = want else {
        return session.on_answer(peer, want, bytes);
    };
    let check = session
        .chunk_check(chunk)
        .expect("chunks follow the manifest");
    let verdict = if check.matches(bytes) {
        ChunkVerdict::Written
    } else {
        ChunkVerdict::Corrupt
    };
    session.on_chunk(peer, chunk, verdict)
}

/// Serves every request from `state` (corrupting chunks a peer in `bad` serves) until the
/// session completes; returns the requests each peer got.
fn run(session: &mut SyncSession, state: &State, bad: &[NodeId]) -> HashMap<NodeId, usize> {
    let mut asked: HashMap<NodeId, usize> = HashMap::new();
    for _ in 0..10_000 {
        if session.is_complete() {
            return asked;
        }
        let requests = session.poll(Duration::ZERO);
        assert!(!requests.is_empty(), "stalled");
        for (peer, want) in requests {
            *asked.entry(peer).or_default() += 1;
            let mut bytes = match want {
                Want::Meta => state.meta.clone(),
                Want::Piece(i) => state.pieces[i as usize].clone(),
                Want::Chunk(c) => state.chunks[c as usize].clone(),
            };
            if bad.contains(&peer) && matches!(want, Want::Chunk(_)) {
                bytes[0] ^= 1;
            }
            match answer(session, peer, want, &bytes) {
                Ok(Accepted::ManifestReady) => session.start_chunks(),
                Ok(Accepted::ChunkHeld(_)) => {}
                Ok(Accepted::Nothing) => {}
                Err(SyncOffence::BadChunk { .. }) => assert!(bad.contains(&peer)),
                Err(other) => panic!("{other:?}"),
            }
        }
    }
    panic!("did not complete");
}

#[test]
fn fetches_everything_from_several_peers_within_limits() {
    let state = state(40, 300, 100);
    let mut session = SyncSession::new(7, state.root, node(9), config());
    session.set_peers(&[(node(1), false), (node(2), false), (node(3), false)]);
    // Meta first, one request.
    let first = session.poll(Duration::ZERO);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].1, Want::Meta);
    session
        .on_answer(first[0].0, Want::Meta, &state.meta)
        .unwrap();
    // Pieces in parallel, within the per-peer limit.
    let pieces = session.poll(Duration::ZERO);
    assert!(pieces.len() > 1 && pieces.len() <= 12, "{}", pieces.len());
    for (peer, want) in pieces {
        let Want::Piece(i) = want else { panic!() };
        if session
            .on_answer(peer, want, &state.pieces[i as usize])
            .unwrap()
            == Accepted::ManifestReady
        {
            session.start_chunks();
        }
    }
    let asked = run(&mut session, &state, &[]);
    assert!(session.is_complete());
    assert_eq!(session.manifest().unwrap().as_ref(), &state.manifest);
    assert_eq!(session.stats().chunks_fetched, state.chunks.len() as u64);
    // The load is spread: every peer served a fair share.
    for peer in [node(1), node(2), node(3)] {
        assert!(asked[&peer] >= state.chunks.len() / 6, "{asked:?}");
    }
    let (held, total) = session.progress();
    assert_eq!(held, total);
}

#[test]
fn in_flight_limits_hold() {
    let state = state(40, 300, 100);
    let mut session = SyncSession::new(7, state.root, node(9), config());
    session.set_peers(&[(node(1), false), (node(2), false)]);
    let (peer, want) = session.poll(Duration::ZERO)[0];
    session.on_answer(peer, want, &state.meta).unwrap();
    loop {
        let requests = session.poll(Duration::ZERO);
        let mut ready = false;
        for (peer, want) in requests {
            let Want::Piece(i) = want else { panic!() };
            ready |= session
                .on_answer(peer, want, &state.pieces[i as usize])
                .unwrap()
                == Accepted::ManifestReady;
        }
        if ready {
            break;
        }
    }
    session.start_chunks();
    let requests = session.poll(Duration::ZERO);
    // Two peers × 4 per peer, below the total of 10.
    assert_eq!(requests.len(), 8);
    assert!(session.poll(Duration::ZERO).is_empty());
}

#[test]
fn a_corrupting_peer_is_dropped_and_its_chunks_refetched() {
    let state = state(30, 250, 100);
    let mut session = SyncSession::new(3, state.root, node(9), config());
    session.set_peers(&[(node(1), false), (node(2), false), (node(4), false)]);
    run(&mut session, &state, &[node(2)]);
    let stats = session.stats();
    assert!(session.is_complete());
    assert!(stats.corrupted_chunks >= 1);
    assert_eq!(stats.peers_dropped, 1);
    assert_eq!(session.usable_peers(), 2);
}

#[test]
fn a_bad_meta_manifest_drops_its_peer() {
    let state = state(5, 100, 100);
    let other = state_with_seed();
    let mut session = SyncSession::new(3, state.root, node(9), config());
    session.set_peers(&[(node(1), false), (node(2), false)]);
    let (peer, want) = session.poll(Duration::ZERO)[0];
    assert!(matches!(
        session.on_answer(peer, want, &other.meta),
        Err(SyncOffence::BadManifest(_))
    ));
    assert!(matches!(
        session.on_answer(peer, Want::Meta, b"garbage"),
        Err(SyncOffence::BadManifest(_))
    ));
    let (next, want) = session.poll(Duration::ZERO)[0];
    assert_ne!(next, peer);
    session.on_answer(next, want, &state.meta).unwrap();
    assert_eq!(session.stats().peers_dropped, 1);
}

fn state_with_seed() -> State {
    state(6, 100, 100)
}

#[test]
fn failures_back_off_and_partial_misses_move_on() {
    let state = state(10, 100, 100);
    let mut session = SyncSession::new(3, state.root, node(9), config());
    session.set_peers(&[(node(1), true)]);
    let now = Duration::from_secs(5);
    let (peer, want) = session.poll(now)[0];
    assert_eq!(session.on_failure(peer, want, Failure::Timeout, now), None);
    assert!(session.poll(now).is_empty(), "backing off");
    assert_eq!(
        session.next_retry(now),
        Some(now + Duration::from_millis(100))
    );
    let later = now + Duration::from_millis(100);
    let (peer, want) = session.poll(later)[0];
    session.on_answer(peer, want, &state.meta).unwrap();
    for (peer, want) in session.poll(later) {
        let Want::Piece(i) = want else { panic!() };
        if session
            .on_answer(peer, want, &state.pieces[i as usize])
            .unwrap()
            == Accepted::ManifestReady
        {
            session.start_chunks();
        }
    }
    // The partial peer lacks every chunk: each is asked once, then it gets no more requests.
    let mut asked = 0;
    loop {
        let requests = session.poll(later);
        if requests.is_empty() {
            break;
        }
        for (peer, want) in requests {
            asked += 1;
            assert_eq!(
                session.on_failure(peer, want, Failure::Unavailable, later),
                None
            );
        }
    }
    assert_eq!(asked, state.chunks.len());
    assert_eq!(session.stats().unavailable, state.chunks.len() as u64);
    // A new advert from it clears the misses.
    session.set_peers(&[(node(1), true)]);
    assert!(!session.poll(later).is_empty());
}

#[test]
fn held_chunks_are_not_fetched_and_order_depends_on_the_node() {
    let state = state(64, 100, 100);
    let orders: Vec<Vec<Want>> = [node(9), node(10)]
        .into_iter()
        .map(|local| {
            let mut session = SyncSession::new(3, state.root, local, config());
            session.set_peers(&[(node(1), false), (node(2), false), (node(3), false)]);
            let (peer, want) = session.poll(Duration::ZERO)[0];
            session.on_answer(peer, want, &state.meta).unwrap();
            for (peer, want) in session.poll(Duration::ZERO) {
                let Want::Piece(i) = want else { panic!() };
                if session
                    .on_answer(peer, want, &state.pieces[i as usize])
                    .unwrap()
                    == Accepted::ManifestReady
                {
                    session.mark_held(0..32);
                    session.start_chunks();
                }
            }
            let wants: Vec<Want> = session
                .poll(Duration::ZERO)
                .into_iter()
                .map(|(_, w)| w)
                .collect();
            for want in &wants {
                let Want::Chunk(c) = want else { panic!() };
                assert!(*c >= 32, "held chunk {c} fetched");
            }
            assert_eq!(session.stats().chunks_held, 32);
            wants
        })
        .collect();
    assert_ne!(orders[0], orders[1]);
}

#[test]
fn a_full_peer_missing_what_it_advertised_is_dropped() {
    let state = state(10, 100, 100);
    let mut session = SyncSession::new(3, state.root, node(9), config());
    session.set_peers(&[(node(1), false), (node(2), false)]);
    let (peer, want) = session.poll(Duration::ZERO)[0];
    assert_eq!(
        session.on_failure(peer, want, Failure::Unavailable, Duration::ZERO),
        Some(SyncOffence::Missing(Want::Meta))
    );
    assert_eq!(session.stats().missing, 1);
    assert_eq!(session.stats().peers_dropped, 1);
    let (next, _) = session.poll(Duration::ZERO)[0];
    assert_ne!(next, peer);
}

#[test]
fn a_chunk_counts_only_from_the_peer_it_was_asked_of_and_raw_bytes_are_asked_again() {
    let state = state(4, 100, 100);
    let mut session = SyncSession::new(3, state.root, node(9), config());
    session.set_peers(&[(node(1), false)]);
    let mut chunk_requests = Vec::new();
    while chunk_requests.is_empty() {
        for (peer, want) in session.poll(Duration::ZERO) {
            match want {
                Want::Chunk(_) => chunk_requests.push((peer, want)),
                _ => {
                    let bytes = match want {
                        Want::Meta => state.meta.clone(),
                        Want::Piece(i) => state.pieces[i as usize].clone(),
                        Want::Chunk(_) => unreachable!(),
                    };
                    if answer(&mut session, peer, want, &bytes) == Ok(Accepted::ManifestReady) {
                        session.start_chunks();
                    }
                }
            }
        }
    }
    let (peer, Want::Chunk(first)) = chunk_requests[0] else {
        unreachable!()
    };
    let check = session.chunk_check(first).unwrap();
    assert!(check.matches(&state.chunks[first as usize]));
    assert!(!check.matches(&state.chunks[first as usize][1..]));
    // Another peer's verdict on it changes nothing.
    assert_eq!(
        session.on_chunk(node(2), first, ChunkVerdict::Written),
        Ok(Accepted::Nothing)
    );
    assert!(!session.holds(first));
    // Raw bytes through on_answer are not taken: the chunk is released and asked again.
    assert_eq!(
        session.on_answer(peer, Want::Chunk(first), &state.chunks[first as usize]),
        Ok(Accepted::Nothing)
    );
    assert!(!session.holds(first));
    let again: Vec<Want> = session
        .poll(Duration::ZERO)
        .into_iter()
        .map(|(_, want)| want)
        .collect();
    assert!(again.contains(&Want::Chunk(first)), "{again:?}");
    assert_eq!(
        session.on_chunk(peer, first, ChunkVerdict::Written),
        Ok(Accepted::ChunkHeld(first))
    );
    assert!(session.holds(first));
    assert_eq!(session.stats().chunks_fetched, 1);
    assert_eq!(session.stats().bytes_fetched, 100);
}
