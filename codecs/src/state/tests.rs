use super::*;
use proptest::prelude::*;

fn limits() -> ManifestLimits {
    ManifestLimits::default()
}

/// A manifest over synthetic files: contents are derived from the path so hashes are real.
fn manifest_of(files: &[(&str, u64)], chunk_bytes: u32) -> Manifest {
    let contents: Vec<Vec<u8>> = files
        .iter()
        .map(|(path, size)| {
            (0..*size)
                .map(|i| (i as u8).wrapping_mul(31) ^ path.len() as u8)
                .collect()
        })
        .collect();
    build(
        files.iter().map(|(path, _)| path.to_string()).collect(),
        &contents,
        chunk_bytes,
    )
}

fn build(paths: Vec<String>, contents: &[Vec<u8>], chunk_bytes: u32) -> Manifest {
    let sizes: Vec<u64> = contents.iter().map(|c| c.len() as u64).collect();
    let files = paths
        .into_iter()
        .zip(contents)
        .map(|(path, content)| {
            let mut hasher = FileHasher::new();
            hasher.update(content);
            FileEntry {
                path,
                size: content.len() as u64,
                hash: hasher.finish(),
            }
        })
        .collect::<Vec<_>>();
    let mut manifest = Manifest {
        chunk_bytes,
        files,
        chunks: Vec::new(),
    };
    for plan in plan_chunks(&sizes, chunk_bytes) {
        manifest.chunks.push(ChunkEntry {
            file_index: plan.file_index,
            offset: plan.offset,
            size: plan.size,
            hash: [0; 32],
        });
    }
    for index in 0..manifest.chunks.len() {
        let mut hasher = ChunkHasher::new();
        for segment in manifest.segments(index as u32).unwrap() {
            let content = &contents[segment.file_index as usize];
            hasher
                .update(&content[segment.offset as usize..(segment.offset + segment.len) as usize]);
        }
        manifest.chunks[index].hash = hasher.finish();
    }
    manifest
}

#[test]
fn plan_groups_small_files_and_cuts_large_ones() {
    let plans = plan_chunks(&[10, 0, 20, 100, 5, 250, 0], 100);
    assert_eq!(
        plans,
        vec![
            ChunkPlan {
                file_index: 0,
                offset: 0,
                size: 30
            },
            ChunkPlan {
                file_index: 3,
                offset: 0,
                size: 100
            },
            ChunkPlan {
                file_index: 4,
                offset: 0,
                size: 5
            },
            ChunkPlan {
                file_index: 5,
                offset: 0,
                size: 100
            },
            ChunkPlan {
                file_index: 5,
                offset: 100,
                size: 100
            },
            ChunkPlan {
                file_index: 5,
                offset: 200,
                size: 50
            },
        ]
    );
    // A group closes when the next small file does not fit.
    assert_eq!(
        plan_chunks(&[60, 60], 100),
        vec![
            ChunkPlan {
                file_index: 0,
                offset: 0,
                size: 60
            },
            ChunkPlan {
                file_index: 1,
                offset: 0,
                size: 60
            },
        ]
    );
    assert!(plan_chunks(&[0, 0], 100).is_empty());
}

#[test]
fn segments_of_a_group_chunk_skip_empty_files() {
    let manifest = manifest_of(&[("a", 10), ("b", 0), ("c", 20), ("d", 300)], 100);
    manifest.validate(&limits()).unwrap();
    assert_eq!(
        manifest.segments(0).unwrap(),
        vec![
            Segment {
                file_index: 0,
                offset: 0,
                len: 10
            },
            Segment {
                file_index: 2,
                offset: 0,
                len: 20
            },
        ]
    );
    assert_eq!(
        manifest.segments(3).unwrap(),
        vec![Segment {
            file_index: 3,
            offset: 200,
            len: 100
        }]
    );
    assert_eq!(manifest.segments(4), None);
}

#[test]
fn validate_refuses_bad_paths_and_layouts() {
    let good = manifest_of(&[("a/x", 10), ("b", 150)], 100);
    good.validate(&limits()).unwrap();
    for path in ["", "/abs", "a//b", "a/../b", "./a", "a/.", "nul\0"] {
        let mut bad = good.clone();
        bad.files[0].path = path.to_string();
        assert!(bad.validate(&limits()).is_err(), "path {path:?} accepted");
    }
    let mut unsorted = good.clone();
    unsorted.files.swap(0, 1);
    assert!(unsorted.validate(&limits()).is_err());
    let mut dir_and_file = manifest_of(&[("a", 10), ("a/b", 10)], 100);
    dir_and_file.chunks.clear();
    dir_and_file.chunks.push(ChunkEntry {
        file_index: 0,
        offset: 0,
        size: 20,
        hash: [0; 32],
    });
    assert!(dir_and_file.validate(&limits()).is_err());
    let mut gap = good.clone();
    gap.chunks.remove(1);
    assert!(gap.validate(&limits()).is_err());
    let mut overlap = good.clone();
    overlap.chunks[2].offset -= 1;
    assert!(overlap.validate(&limits()).is_err());
    let mut too_big = good.clone();
    too_big.chunk_bytes = 40;
    assert!(too_big.validate(&limits()).is_err());
    let mut past_end = good.clone();
    past_end.chunks.push(ChunkEntry {
        file_index: 1,
        offset: 150,
        size: 1,
        hash: [0; 32],
    });
    assert!(past_end.validate(&limits()).is_err());
    // A chunk that spans files but starts inside one.
    let mut inside = manifest_of(&[("a", 10), ("b", 10)], 100);
    inside.chunks = vec![
        ChunkEntry {
            file_index: 0,
            offset: 0,
            size: 5,
            hash: [0; 32],
        },
        ChunkEntry {
            file_index: 0,
            offset: 5,
            size: 15,
            hash: [0; 32],
        },
    ];
    assert!(inside.validate(&limits()).is_err());
}

#[test]
fn split_assemble_and_codecs_round_trip() {
    let files: Vec<(String, u64)> = (0..300)
        .map(|i| (format!("dir{:02}/file{i:04}", i % 7), (i * 37 % 500) as u64))
        .collect();
    let mut sorted = files.clone();
    sorted.sort();
    let refs: Vec<(&str, u64)> = sorted.iter().map(|(p, s)| (p.as_str(), *s)).collect();
    let manifest = manifest_of(&refs, 1000);
    manifest.validate(&limits()).unwrap();
    let (meta, pieces) = manifest.split_with(4 << 10, 64);
    assert!(pieces.len() > 5, "{} pieces", pieces.len());
    meta.validate(&limits()).unwrap();
    let decoded_meta = decode_meta_manifest(&encode_meta_manifest(&meta), &limits()).unwrap();
    assert_eq!(decoded_meta, meta);
    let mut decoded = Vec::new();
    for piece in &pieces {
        let bytes = encode_manifest_piece(piece);
        assert!(
            bytes.len() <= (4 << 10) + 1024,
            "piece of {} bytes",
            bytes.len()
        );
        let back = decode_manifest_piece(&bytes, &limits()).unwrap();
        meta.check_piece(&back).unwrap();
        decoded.push(back);
    }
    assert_eq!(
        Manifest::assemble(&meta, decoded, &limits()).unwrap(),
        manifest
    );
    // The default split is one piece for a manifest this small, and the root hash is stable.
    assert_eq!(manifest.split().1.len(), 1);
    assert_eq!(manifest.root_hash(), manifest.clone().root_hash());
}

#[test]
fn check_piece_refuses_tampering() {
    let refs: Vec<(String, u64)> = (0..50).map(|i| (format!("f{i:03}"), 120)).collect();
    let refs: Vec<(&str, u64)> = refs.iter().map(|(p, s)| (p.as_str(), *s)).collect();
    let manifest = manifest_of(&refs, 100);
    let (meta, pieces) = manifest.split_with(1 << 10, 16);
    let mut tampered = pieces[1].clone();
    if let Some(chunk) = tampered.chunks.first_mut() {
        chunk.hash[0] ^= 1;
    } else {
        tampered.files[0].size += 1;
    }
    assert!(meta.check_piece(&tampered).is_err());
    let mut moved = pieces[1].clone();
    moved.first_file += 1;
    assert!(meta.check_piece(&moved).is_err());
    let mut out_of_range = pieces[0].clone();
    out_of_range.index = meta.pieces.len() as u32;
    assert!(meta.check_piece(&out_of_range).is_err());
    // Pieces in the wrong order do not assemble.
    let mut swapped = pieces.clone();
    swapped.swap(0, 1);
    assert!(Manifest::assemble(&meta, swapped, &limits()).is_err());
    assert!(Manifest::assemble(&meta, pieces[1..].to_vec(), &limits()).is_err());
}

#[test]
fn root_hash_depends_on_every_field() {
    let manifest = manifest_of(&[("a", 10), ("b", 150)], 100);
    let root = manifest.root_hash();
    let mut other = manifest.clone();
    other.files[1].hash[5] ^= 1;
    assert_ne!(other.root_hash(), root);
    let mut other = manifest.clone();
    other.files[0].path = "c".into();
    assert_ne!(other.root_hash(), root);
    let mut other = manifest.clone();
    other.chunks[1].hash[0] ^= 1;
    assert_ne!(other.root_hash(), root);
    let (meta, _) = manifest.split();
    let mut other = meta.clone();
    other.chunk_bytes += 1;
    assert_ne!(other.root_hash(), meta.root_hash());
}

#[test]
fn hashes_are_domain_separated() {
    // The same bytes hash differently as a chunk and as a file, and neither is plain SHA-256.
    let bytes = b"state";
    let mut file = FileHasher::new();
    file.update(bytes);
    let file = file.finish();
    assert_ne!(chunk_hash(bytes), file);
    let plain: Hash = Sha256::digest(bytes).into();
    assert_ne!(chunk_hash(bytes), plain);
    // Streaming equals one shot.
    let mut chunk = ChunkHasher::new();
    chunk.update(b"sta");
    chunk.update(b"te");
    assert_eq!(chunk.finish(), chunk_hash(bytes));
}

#[test]
fn meta_manifest_limits_are_enforced() {
    let manifest = manifest_of(&[("a", 10), ("b", 150)], 100);
    let (meta, pieces) = manifest.split();
    let bytes = encode_meta_manifest(&meta);
    let tight = ManifestLimits {
        piece_bytes_max: bytes.len() - 1,
        ..limits()
    };
    assert!(matches!(
        decode_meta_manifest(&bytes, &tight),
        Err(DecodeError::LimitExceeded {
            limit: "piece_bytes_max",
            ..
        })
    ));
    let mut bad = meta.clone();
    bad.version = 2;
    assert!(decode_meta_manifest(&encode_meta_manifest(&bad), &limits()).is_err());
    let mut bad = meta.clone();
    bad.chunk_count += 1;
    assert!(decode_meta_manifest(&encode_meta_manifest(&bad), &limits()).is_err());
    let piece = encode_manifest_piece(&pieces[0]);
    let tight = ManifestLimits {
        piece_entries_max: 3,
        ..limits()
    };
    assert!(decode_manifest_piece(&piece, &tight).is_err());
}

proptest! {
    #[test]
    fn planned_manifests_validate(sizes in proptest::collection::vec(0u64..3000, 0..40), chunk in 1u32..1200) {
        let paths: Vec<String> = (0..sizes.len()).map(|i| format!("f{i:03}")).collect();
        let refs: Vec<(&str, u64)> = paths.iter().map(String::as_str).zip(sizes.iter().copied()).collect();
        let manifest = manifest_of(&refs, chunk);
        prop_assert!(manifest.validate(&limits()).is_ok());
        let covered: u64 = (0..manifest.chunks.len())
            .flat_map(|i| manifest.segments(i as u32).unwrap())
            .map(|segment| segment.len)
            .sum();
        prop_assert_eq!(covered, manifest.state_bytes());
    }

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_meta_manifest(&bytes, &limits());
        let _ = decode_manifest_piece(&bytes, &limits());
    }
}
