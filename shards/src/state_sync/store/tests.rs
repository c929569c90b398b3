use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use icn_codecs::state::plan_chunks;

use super::*;
use crate::state_sync::synthetic::{write_state, SyntheticSpec};

/// Small chunks keep the states small while still giving files of several chunks and groups
/// of small files.
const CHUNK_BYTES: u32 = 16 << 10;

/// A fresh folder under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("icn-store-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// About 0.8 MiB: 8 files of 4 chunks, 96 small files grouped into shared chunks, some
/// empty; a fifth of the files change per height.
fn spec() -> SyntheticSpec {
    SyntheticSpec {
        seed: 7,
        large_files: 8,
        large_file_bytes: 4 * u64::from(CHUNK_BYTES),
        small_files: 96,
        small_file_bytes_max: 6 << 10,
        changed_per_checkpoint_permille: 200,
    }
}

/// Creates the synthetic checkpoint at `height`, hardlinking from the latest one when it
/// exists.
fn create_synthetic(store: &mut CheckpointStore, height: u64) -> Rc<Checkpoint> {
    store
        .create(height, |dir, previous| {
            let previous = previous.map(|checkpoint| (checkpoint.dir.as_path(), checkpoint.height));
            write_state(dir, &spec(), height, previous)
        })
        .unwrap()
}

/// Writes chunk `index`'s bytes into the scratch's files, as the driver does.
fn write_chunk(scratch: &Scratch, index: u32, bytes: &[u8]) {
    let manifest = scratch.manifest().unwrap();
    let mut at = 0usize;
    for segment in manifest.segments(index).unwrap() {
        let file = OpenOptions::new()
            .write(true)
            .open(scratch.file_path(segment.file_index))
            .unwrap();
        let len = segment.len as usize;
        file.write_all_at(&bytes[at..at + len], segment.offset)
            .unwrap();
        at += len;
    }
}

fn start_sync(store: &mut CheckpointStore, source: &Checkpoint) -> Scratch {
    let mut scratch = store.scratch(source.height, source.root_hash).unwrap();
    assert!(scratch.manifest().is_none());
    let (meta, pieces) = source.manifest.split();
    scratch
        .set_manifest(&meta, &pieces, source.manifest.clone())
        .unwrap();
    scratch
}

#[test]
fn a_created_checkpoint_is_loaded_again_after_reopening() {
    let dir = TempDir::new("reopen");
    let mut store = CheckpointStore::open(&dir.0, CHUNK_BYTES, 2).unwrap();
    assert!(store.latest().is_none());
    let created = create_synthetic(&mut store, 5);
    assert_eq!(created.manifest.files.len(), spec().file_count() as usize);
    assert_eq!(created.manifest.state_bytes(), spec().state_bytes());
    assert_eq!(created.root_hash, created.manifest.root_hash());
    assert_eq!(
        created.dir,
        dir.0.join("checkpoints/00000000000000000005/state")
    );
    assert!(dir
        .join("checkpoints/00000000000000000005/manifest.bin")
        .is_file());

    drop(store);
    let store = CheckpointStore::open(&dir.0, CHUNK_BYTES, 2).unwrap();
    assert_eq!(store.heights(), vec![5]);
    let loaded = store.latest().unwrap();
    assert_eq!(loaded.root_hash, created.root_hash);
    assert_eq!(loaded.manifest, created.manifest);
    assert_eq!(loaded.meta, created.meta);
    assert_eq!(loaded.encoded_meta, created.encoded_meta);
    assert_eq!(loaded.encoded_pieces, created.encoded_pieces);
    // A chunk read through the manifest is the bytes of its files, and hashes to its entry.
    for index in [0, loaded.manifest.chunks.len() as u32 - 1] {
        let bytes = loaded.read_chunk(index).unwrap();
        assert_eq!(
            icn_codecs::state::chunk_hash(&bytes),
            loaded.manifest.chunks[index as usize].hash
        );
    }
    let first = fs::read(loaded.file_path(0)).unwrap();
    assert_eq!(loaded.read_chunk(0).unwrap(), first[..CHUNK_BYTES as usize]);
    let out_of_range = loaded.read_chunk(loaded.manifest.chunks.len() as u32);
    assert_eq!(out_of_range.unwrap_err().kind(), io::ErrorKind::NotFound);
}

#[test]
fn open_empties_tmp_and_refuses_a_corrupt_manifest() {
    let dir = TempDir::new("tmp");
    let mut store = CheckpointStore::open(&dir.0, CHUNK_BYTES, 2).unwrap();
    create_synthetic(&mut store, 1);
    drop(store);
    fs::create_dir_all(dir.join("tmp/00000000000000000002/state")).unwrap();
    fs::write(dir.join("tmp/00000000000000000002/state/half"), b"x").unwrap();
    let store = CheckpointStore::open(&dir.0, CHUNK_BYTES, 2).unwrap();
    assert_eq!(store.heights(), vec![1]);
    assert_eq!(fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
    drop(store);

    let manifest = dir.join("checkpoints/00000000000000000001/manifest.bin");
    let bytes = fs::read(&manifest).unwrap();
    fs::write(&manifest, &bytes[..bytes.len() - 1]).unwrap();
    let error = CheckpointStore::open(&dir.0, CHUNK_BYTES, 2)
        .err()
        .expect("a cut manifest is refused");
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
}

#[test]
fn an_incremental_manifest_reads_only_changed_files_and_equals_a_full_one() {
    let dir = TempDir::new("incremental");
    let mut store = CheckpointStore::open(&dir.0, CHUNK_BYTES, 2).unwrap();
    let first = create_synthetic(&mut store, 1);
    let next = dir.join("next");
    write_state(&next, &spec(), 2, Some((&first.dir, 1))).unwrap();

    let (incremental, stats) = compute_manifest(&next, CHUNK_BYTES, Some(&first)).unwrap();
    let (full, full_stats) = compute_manifest(&next, CHUNK_BYTES, None).unwrap();
    assert_eq!(incremental, full);
    assert_ne!(incremental.root_hash(), first.root_hash);

    let changed: BTreeSet<u32> = spec().changed_between(1, 2).into_iter().collect();
    let files = spec().file_count() as u64;
    assert!(!changed.is_empty() && (changed.len() as u64) < files);
    assert_eq!(stats.files_read, changed.len() as u64);
    assert_eq!(stats.files_reused, files - changed.len() as u64);
    // Sizes do not change between heights, so the chunk layout is the same and exactly the
    // chunks touching a changed file are hashed again.
    let sizes: Vec<u64> = full.files.iter().map(|file| file.size).collect();
    let touching_changed = plan_chunks(&sizes, CHUNK_BYTES)
        .iter()
        .filter(|plan| {
            plan_segments(&sizes, plan).iter().any(|&(file, _, _)| {
                let path = &full.files[file].path;
                changed
                    .iter()
                    .any(|&index| spec().file_path(index) == *path)
            })
        })
        .count() as u64;
    assert_eq!(stats.chunks_hashed, touching_changed);
    assert_eq!(
        stats.chunks_reused,
        full.chunks.len() as u64 - touching_changed
    );
    assert!(stats.bytes_read < full_stats.bytes_read);
    assert_eq!(full_stats.bytes_read, spec().state_bytes());
    assert_eq!(full_stats.files_reused + full_stats.chunks_reused, 0);
}

#[test]
fn a_file_rewritten_in_place_of_a_hardlink_is_read_again() {
    let dir = TempDir::new("rewritten");
    let mut store = CheckpointStore::open(&dir.0, CHUNK_BYTES, 2).unwrap();
    let first = create_synthetic(&mut store, 1);
    let next = dir.join("next");
    write_state(&next, &spec(), 1, Some((&first.dir, 1))).unwrap();
    // Same content as a fresh copy (a new inode): hashed again, same result.
    let path = spec().file_path(0);
    let copy = fs::read(next.join(&path)).unwrap();
    fs::remove_file(next.join(&path)).unwrap();
    fs::write(next.join(&path), &copy).unwrap();
    let (manifest, stats) = compute_manifest(&next, CHUNK_BYTES, Some(&first)).unwrap();
    assert_eq!(manifest, first.manifest);
    assert_eq!(stats.files_read, 1);
    assert_eq!(stats.chunks_hashed, 4, "the copied file's 4 chunks");
}

#[test]
fn a_scratch_resumes_with_only_the_journaled_chunks_whose_bytes_are_right() {
    let source_dir = TempDir::new("sync-source");
    let mut source = CheckpointStore::open(&source_dir.0, CHUNK_BYTES, 2).unwrap();
    let checkpoint = create_synthetic(&mut source, 3);
    let chunk_count = checkpoint.manifest.chunks.len() as u32;

    let dir = TempDir::new("sync");
    let mut store = CheckpointStore::open(&dir.0, CHUNK_BYTES, 2).unwrap();
    let mut scratch = start_sync(&mut store, &checkpoint);
    assert_eq!(
        scratch.encoded_meta(),
        Some(checkpoint.encoded_meta.as_slice())
    );
    assert_eq!(
        scratch.encoded_piece(0),
        Some(checkpoint.encoded_pieces[0].as_slice())
    );
    // Every file exists at its full length before any chunk arrives.
    for (index, file) in checkpoint.manifest.files.iter().enumerate() {
        let length = fs::metadata(scratch.file_path(index as u32)).unwrap().len();
        assert_eq!(length, file.size);
    }
    let fetched: Vec<u32> = (0..chunk_count).step_by(2).collect();
    for &index in &fetched {
        write_chunk(&scratch, index, &checkpoint.read_chunk(index).unwrap());
    }
    scratch.record_verified(&fetched).unwrap();
    // Repeats, an index past the manifest and half an entry are ignored on resume.
    scratch.record_verified(&[0, chunk_count + 7]).unwrap();
    drop(scratch);
    let journal = dir.0.join(format!(
        "sync/{}/journal",
        scratch_name(3, &checkpoint.root_hash)
    ));
    OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap()
        .write_all(&[1, 0])
        .unwrap();
    // One journaled chunk's bytes did not survive.
    let corrupted = fetched[1];
    let segment = checkpoint.manifest.segments(corrupted).unwrap()[0];
    let path = manifest_file_path(
        &dir.0
            .join("sync")
            .join(scratch_name(3, &checkpoint.root_hash))
            .join(STATE_DIR),
        &checkpoint.manifest,
        segment.file_index,
    );
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(b"not the chunk", segment.offset).unwrap();

    drop(store);
    let mut store = CheckpointStore::open(&dir.0, CHUNK_BYTES, 2).unwrap();
    assert_eq!(store.scratches().unwrap(), vec![(3, checkpoint.root_hash)]);
    let mut scratch = store.scratch(3, checkpoint.root_hash).unwrap();
    assert_eq!(scratch.manifest(), Some(&checkpoint.manifest));
    let expected: Vec<u32> = fetched
        .iter()
        .copied()
        .filter(|&index| index != corrupted)
        .collect();
    assert_eq!(scratch.verified_chunks().unwrap(), expected);
    assert_eq!(
        scratch.read_chunk(expected[0]).unwrap(),
        checkpoint.read_chunk(expected[0]).unwrap()
    );

    // The rest arrives; the adopted state verifies and has the source's root.
    let missing: Vec<u32> = (0..chunk_count)
        .filter(|index| !expected.contains(index))
        .collect();
    for &index in &missing {
        write_chunk(&scratch, index, &checkpoint.read_chunk(index).unwrap());
    }
    scratch.record_verified(&missing).unwrap();
    assert_eq!(
        scratch.verified_chunks().unwrap(),
        (0..chunk_count).collect::<Vec<_>>()
    );
    let adopted = store.adopt(scratch).unwrap();
    assert_eq!(adopted.root_hash, checkpoint.root_hash);
    assert_eq!(store.heights(), vec![3]);
    assert!(store.scratches().unwrap().is_empty());
    let report = verify_checkpoint(adopted.dir.parent().unwrap()).unwrap();
    assert!(report.passed(), "{:?}", report.differences);
    assert_eq!(report.root_hash, checkpoint.root_hash);
    assert_eq!(report.height, Some(3));
    assert!(!adopted.dir.parent().unwrap().join(JOURNAL_FILE).exists());
    drop(store);
    let store = CheckpointStore::open(&dir.0, CHUNK_BYTES, 2).unwrap();
    assert_eq!(store.latest().unwrap().manifest, checkpoint.manifest);
}

#[test]
fn a_scratch_refuses_a_manifest_of_another_root_and_adopt_needs_one() {
    let source_dir = TempDir::new("wrong-root-source");
    let mut source = CheckpointStore::open(&source_dir.0, CHUNK_BYTES, 2).unwrap();
    let checkpoint = create_synthetic(&mut source, 1);
    let dir = TempDir::new("wrong-root");
    let mut store = CheckpointStore::open(&dir.0, CHUNK_BYTES, 2).unwrap();
    let mut scratch = store.scratch(1, [9; 32]).unwrap();
    let (meta, pieces) = checkpoint.manifest.split();
    let error = scratch
        .set_manifest(&meta, &pieces, checkpoint.manifest.clone())
        .unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    assert!(scratch.verified_chunks().unwrap().is_empty());
    assert!(scratch.record_verified(&[0]).is_err());
    assert_eq!(
        store.adopt(scratch).err().map(|error| error.kind()),
        Some(io::ErrorKind::InvalidInput)
    );
    let scratch = store.scratch(1, [9; 32]).unwrap();
    assert_eq!(
        store.adopt_flushed(scratch).err().map(|error| error.kind()),
        Some(io::ErrorKind::InvalidInput)
    );

    // Pieces of another state under the right meta-manifest are refused too.
    let other = create_synthetic(&mut source, 2);
    let mut scratch = store.scratch(1, checkpoint.root_hash).unwrap();
    let (_, other_pieces) = other.manifest.split();
    let error = scratch
        .set_manifest(&meta, &other_pieces, checkpoint.manifest.clone())
        .unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    let error = scratch
        .set_manifest(&meta, &pieces, other.manifest.clone())
        .unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    assert!(scratch.manifest().is_none());
    scratch
        .set_manifest(&meta, &pieces, checkpoint.manifest.clone())
        .unwrap();
}

#[test]
fn a_scratch_with_a_damaged_manifest_starts_over() {
    let source_dir = TempDir::new("damaged-source");
    let mut source = CheckpointStore::open(&source_dir.0, CHUNK_BYTES, 2).unwrap();
    let checkpoint = create_synthetic(&mut source, 6);
    let dir = TempDir::new("damaged");
    let mut store = CheckpointStore::open(&dir.0, CHUNK_BYTES, 2).unwrap();
    let mut scratch = start_sync(&mut store, &checkpoint);
    write_chunk(&scratch, 0, &checkpoint.read_chunk(0).unwrap());
    scratch.record_verified(&[0]).unwrap();
    drop(scratch);
    let scratch_dir = dir
        .0
        .join("sync")
        .join(scratch_name(6, &checkpoint.root_hash));
    fs::write(scratch_dir.join(MANIFEST_FILE), b"\x05\0\0\0junk").unwrap();

    let mut scratch = store.scratch(6, checkpoint.root_hash).unwrap();
    assert!(scratch.manifest().is_none());
    assert!(!scratch_dir.join(STATE_DIR).exists());
    assert!(!scratch_dir.join(JOURNAL_FILE).exists());
    let (meta, pieces) = checkpoint.manifest.split();
    scratch
        .set_manifest(&meta, &pieces, checkpoint.manifest.clone())
        .unwrap();
    assert!(scratch.verified_chunks().unwrap().is_empty());
}

#[test]
fn discarding_scratches_keeps_only_the_one_named() {
    let source_dir = TempDir::new("discard-source");
    let mut source = CheckpointStore::open(&source_dir.0, CHUNK_BYTES, 2).unwrap();
    let checkpoint = create_synthetic(&mut source, 4);
    let dir = TempDir::new("discard");
    let mut store = CheckpointStore::open(&dir.0, CHUNK_BYTES, 2).unwrap();
    start_sync(&mut store, &checkpoint);
    store.scratch(9, [1; 32]).unwrap();
    assert_eq!(store.scratches().unwrap().len(), 2);
    store
        .discard_scratches(Some((4, checkpoint.root_hash)))
        .unwrap();
    assert_eq!(store.scratches().unwrap(), vec![(4, checkpoint.root_hash)]);
    let resumed = store.scratch(4, checkpoint.root_hash).unwrap();
    assert_eq!(resumed.manifest(), Some(&checkpoint.manifest));
    store.discard_scratches(None).unwrap();
    assert!(store.scratches().unwrap().is_empty());
}

#[test]
fn only_the_newest_kept_checkpoints_remain() {
    let dir = TempDir::new("gc");
    let mut store = CheckpointStore::open(&dir.0, CHUNK_BYTES, 2).unwrap();
    for height in 1..=4 {
        create_synthetic(&mut store, height);
    }
    assert_eq!(store.heights(), vec![3, 4]);
    let stats = store.last_create_stats().unwrap();
    assert_eq!(stats.files_read, spec().changed_between(3, 4).len() as u64);
    assert_eq!(
        stats.files_read + stats.files_reused,
        u64::from(spec().file_count())
    );
    let names: Vec<String> = fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(names, vec!["00000000000000000003", "00000000000000000004"]);
    assert_eq!(fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
    // Files carried over by hardlink survive the deletion of the checkpoint they came from.
    let report = verify_checkpoint(&dir.join("checkpoints/00000000000000000004")).unwrap();
    assert!(report.passed(), "{:?}", report.differences);
    for height in [2, 4] {
        let refused = create_synthetic_result(&mut store, height).unwrap_err();
        assert_eq!(
            refused.kind(),
            io::ErrorKind::InvalidInput,
            "heights ascend"
        );
    }
    assert_eq!(store.heights(), vec![3, 4]);
}

fn create_synthetic_result(store: &mut CheckpointStore, height: u64) -> io::Result<Rc<Checkpoint>> {
    store.create(height, |dir, _| write_state(dir, &spec(), height, None))
}

#[test]
fn symlinks_are_refused() {
    let dir = TempDir::new("symlink");
    let state = dir.join("state");
    fs::create_dir_all(state.join("sub")).unwrap();
    fs::write(state.join("sub/file"), b"bytes").unwrap();
    std::os::unix::fs::symlink(state.join("sub/file"), state.join("link")).unwrap();
    let error = compute_manifest(&state, CHUNK_BYTES, None).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    assert!(error.to_string().contains("link"), "{error}");

    let mut store = CheckpointStore::open(&dir.join("store"), CHUNK_BYTES, 2).unwrap();
    let outside = dir.join("state/sub/file");
    let result = store.create(1, |dir, _| {
        std::os::unix::fs::symlink(&outside, dir.join("escape"))
    });
    assert!(result.is_err());
    assert!(store.heights().is_empty());
    assert_eq!(
        fs::read_dir(dir.join("store/checkpoints")).unwrap().count(),
        0
    );
}

#[test]
fn verify_lists_corrupted_missing_and_extra_files() {
    let dir = TempDir::new("verify");
    let mut store = CheckpointStore::open(&dir.0, CHUNK_BYTES, 2).unwrap();
    let checkpoint = create_synthetic(&mut store, 2);
    let checkpoint_dir = checkpoint.dir.parent().unwrap().to_path_buf();
    let clean = verify_checkpoint(&checkpoint_dir).unwrap();
    assert!(clean.passed());
    assert_eq!(clean.files, checkpoint.manifest.files.len());
    assert_eq!(clean.chunks, checkpoint.manifest.chunks.len());

    // One byte flipped in the second chunk of the first (large) file.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(checkpoint.file_path(0))
        .unwrap();
    let mut byte = [0u8];
    let at = u64::from(CHUNK_BYTES) + 100;
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 1], at).unwrap();
    // A small file removed and a stray one added.
    let files = &checkpoint.manifest.files;
    let last = files.iter().rposition(|file| file.size > 0).unwrap() as u32;
    let removed = files[last as usize].clone();
    fs::remove_file(checkpoint.file_path(last)).unwrap();
    fs::write(checkpoint.dir.join("stray"), b"?").unwrap();

    let report = verify_checkpoint(&checkpoint_dir).unwrap();
    assert!(!report.passed());
    let differences = &report.differences;
    assert!(differences.contains(&Difference::FileHash {
        path: checkpoint.manifest.files[0].path.clone()
    }));
    assert!(differences.contains(&Difference::ChunkHash { index: 1 }));
    assert!(differences.contains(&Difference::MissingFile {
        path: removed.path.clone()
    }));
    assert!(differences.contains(&Difference::ExtraFile {
        path: "stray".into()
    }));
    let last_chunk = checkpoint.manifest.chunks.len() as u32 - 1;
    assert!(differences.contains(&Difference::ChunkUnreadable { index: last_chunk }));
    assert_eq!(
        differences.len(),
        5,
        "nothing else differs: {differences:?}"
    );
}

#[test]
fn flushing_a_tree_succeeds_on_a_real_tree_and_fails_on_a_missing_one() {
    let dir = TempDir::new("flush-tree");
    let nested = dir.0.join("a").join("b");
    fs::create_dir_all(&nested).unwrap();
    fs::write(nested.join("f"), b"bytes").unwrap();
    fs::write(dir.0.join("g"), b"more").unwrap();
    flush_tree(&dir.0).unwrap();
    sync_tree(&dir.0).unwrap();
    let missing = dir.0.join("missing");
    assert_eq!(
        flush_tree(&missing).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
}
