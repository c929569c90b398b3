//! Checkpoints on disk: the ones a node has adopted (and serves), and the scratch space of the
//! syncs that will become new ones.
//!
//! Layout under the store's root:
//!
//! ```text
//! checkpoints/<height:020>/state/          the checkpoint's files
//! checkpoints/<height:020>/manifest.bin    its manifest, encoded as it is served
//! sync/<height:020>-<root hex>/state/      files of a sync in progress, created at full length
//! sync/<height:020>-<root hex>/manifest.bin
//! sync/<height:020>-<root hex>/journal     chunks verified so far, u32 LE each
//! tmp/                                     checkpoints being built or deleted
//! ```
//!
//! Every change that makes a checkpoint appear or disappear is one `rename` of a whole directory,
//! preceded by fsyncs of what it holds, so after a crash a checkpoint is either all there with its
//! manifest or not there at all; `tmp/` is emptied on open. `manifest.bin` is the meta-manifest and
//! then each piece, every one prefixed by its length as u32 LE: the encodings a node serves, so
//! serving a manifest is a slice of memory, never a re-encoding.
//!
//! Manifests are computed incrementally ([`compute_manifest`]): a new checkpoint carries its
//! unchanged files over as hardlinks of the previous checkpoint's, and a file that is the same inode
//! under the same path keeps its hashes without being read. Only the bytes that changed are hashed.
//!
//! All of this is synchronous `std::fs` code. It runs when a checkpoint is made, adopted or a sync
//! resumes; the sync driver writes and reads chunks on the hot path itself.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use icn_codecs::state::{
    decode_manifest_piece, decode_meta_manifest, encode_manifest_piece, encode_meta_manifest,
    plan_chunks, validate_path, ChunkEntry, ChunkHasher, ChunkPlan, FileEntry, FileHasher, Hash,
    Manifest, ManifestLimits, ManifestPiece, MetaManifest,
};

/// Adopted checkpoints, one directory per height.
const CHECKPOINTS_DIR: &str = "checkpoints";
/// Scratch space of syncs in progress, one directory per (height, root).
const SYNC_DIR: &str = "sync";
/// Checkpoints being built, and checkpoints being deleted (moved here first so that a crash
/// mid-delete cannot leave half a checkpoint where `open` would load it).
const TMP_DIR: &str = "tmp";
/// A checkpoint's or scratch's files.
const STATE_DIR: &str = "state";
/// The encoded meta-manifest and pieces.
const MANIFEST_FILE: &str = "manifest.bin";
/// Written first and renamed over `manifest.bin`, so a reader never sees half of it.
const MANIFEST_TMP_FILE: &str = "manifest.bin.tmp";
/// A scratch's verified chunk indexes.
const JOURNAL_FILE: &str = "journal";
/// Digits of a height in a directory name: u64::MAX has 20, and zero padding makes the byte
/// order of the names the order of the heights.
const HEIGHT_DIGITS: usize = 20;

/// A checkpoint: the files of the state at one height and its manifest, in memory decoded and
/// encoded.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub height: u64,
    pub root_hash: Hash,
    /// The directory holding the state's files.
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub meta: MetaManifest,
    /// Served as is to peers asking for the meta-manifest.
    pub encoded_meta: Vec<u8>,
    /// Served as is to peers asking for a piece.
    pub encoded_pieces: Vec<Vec<u8>>,
}

impl Checkpoint {
    /// Where file `file_index` of the manifest lies. Panics on an index outside the manifest:
    /// callers take indexes from the manifest itself.
    pub fn file_path(&self, file_index: u32) -> PathBuf {
        manifest_file_path(&self.dir, &self.manifest, file_index)
    }

    /// Reads chunk `index` (a peer's request: an index out of range is an error, not a panic).
    pub fn read_chunk(&self, index: u32) -> io::Result<Vec<u8>> {
        read_manifest_chunk(&self.dir, &self.manifest, index)
    }
}

/// What [`compute_manifest`] had to do: how much it read and how much it took from the
/// previous checkpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ManifestStats {
    /// Files hashed from their content (not carried over; empty ones need no read).
    pub files_read: u64,
    /// Files whose hash came from the previous checkpoint (same path, same inode).
    pub files_reused: u64,
    /// Chunks whose bytes were hashed.
    pub chunks_hashed: u64,
    /// Chunks whose hash came from the previous checkpoint.
    pub chunks_reused: u64,
    /// Bytes read from the files.
    pub bytes_read: u64,
}

/// A checkpoint being built ([`CheckpointStore::begin_create`]): owns plain paths and a copy
/// of the previous checkpoint, so [`PendingCheckpoint::build`] may run on any thread.
pub struct PendingCheckpoint {
    height: u64,
    building: PathBuf,
    chunk_bytes: u32,
    previous: Option<Checkpoint>,
    built: Option<(Manifest, ManifestStats, EncodedManifest)>,
}

impl PendingCheckpoint {
    pub fn height(&self) -> u64 {
        self.height
    }

    /// `fill` writes the state's files into the empty build directory (hardlinking unchanged
    /// files from the previous checkpoint, its second argument); then the manifest is computed
    /// incrementally, the files fsynced and the manifest written.
    pub fn build(
        &mut self,
        fill: impl FnOnce(&Path, Option<&Checkpoint>) -> io::Result<()>,
    ) -> io::Result<()> {
        let state = self.building.join(STATE_DIR);
        fill(&state, self.previous.as_ref())?;
        let (manifest, stats) = compute_manifest(&state, self.chunk_bytes, self.previous.as_ref())?;
        sync_tree(&state)?;
        let encoded = EncodedManifest::new(&manifest);
        write_manifest_file(&self.building, &encoded)?;
        self.built = Some((manifest, stats, encoded));
        Ok(())
    }
}

/// The adopted checkpoints under one root directory, and the scratch spaces of syncs.
pub struct CheckpointStore {
    root: PathBuf,
    chunk_bytes: u32,
    kept: usize,
    limits: ManifestLimits,
    checkpoints: BTreeMap<u64, Rc<Checkpoint>>,
    /// What computing the manifest of the last checkpoint `create` made took.
    last_create_stats: Option<ManifestStats>,
}

impl CheckpointStore {
    /// Opens (creating it if needed) the store under `root`: loads every adopted checkpoint and
    /// its manifest, and empties `tmp/` (checkpoints a crash left half built or half deleted).
    /// New checkpoints get chunks of `chunk_bytes`; at most `kept` (at least 1) are kept.
    pub fn open(root: &Path, chunk_bytes: u32, kept: usize) -> io::Result<CheckpointStore> {
        if chunk_bytes == 0 || chunk_bytes > ManifestLimits::default().chunk_bytes_max {
            return Err(invalid_input(format!(
                "chunk_bytes {chunk_bytes} out of range"
            )));
        }
        for dir in [CHECKPOINTS_DIR, SYNC_DIR] {
            fs::create_dir_all(root.join(dir))?;
        }
        let tmp = root.join(TMP_DIR);
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        let mut store = CheckpointStore {
            root: root.to_path_buf(),
            chunk_bytes,
            kept: kept.max(1),
            limits: ManifestLimits::default(),
            checkpoints: BTreeMap::new(),
            last_create_stats: None,
        };
        for entry in fs::read_dir(root.join(CHECKPOINTS_DIR))? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(height) = name.to_str().and_then(parse_height) else {
                return Err(invalid_data(format!(
                    "{}: not a checkpoint directory name",
                    entry.path().display()
                )));
            };
            let checkpoint = load_checkpoint(&entry.path(), height, &store.limits)?;
            store.checkpoints.insert(height, Rc::new(checkpoint));
        }
        Ok(store)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Heights of the adopted checkpoints, ascending.
    pub fn heights(&self) -> Vec<u64> {
        self.checkpoints.keys().copied().collect()
    }

    pub fn checkpoint(&self, height: u64) -> Option<Rc<Checkpoint>> {
        self.checkpoints.get(&height).cloned()
    }

    /// How much the manifest of the last checkpoint made by [`CheckpointStore::create`] read
    /// and reused (for logs and benchmarks: incremental checkpoints should read little).
    pub fn last_create_stats(&self) -> Option<ManifestStats> {
        self.last_create_stats
    }

    /// The highest adopted checkpoint.
    pub fn latest(&self) -> Option<Rc<Checkpoint>> {
        self.checkpoints.values().next_back().cloned()
    }

    /// Makes a checkpoint of this node's own state at `height`. `fill` writes the state's
    /// files into an empty directory; it may hardlink unchanged files from the latest checkpoint
    /// (its second argument), which is what lets the manifest reuse their hashes. The manifest
    /// is then computed incrementally against that checkpoint and persisted, the directory is
    /// renamed into place atomically, and checkpoints beyond `kept` are deleted. `height` must be
    /// above the latest checkpoint's. A deleted checkpoint's files are gone even while an `Rc`
    /// of it is still held: reads from it then fail with `NotFound`.
    pub fn create(
        &mut self,
        height: u64,
        fill: impl FnOnce(&Path, Option<&Checkpoint>) -> io::Result<()>,
    ) -> io::Result<Rc<Checkpoint>> {
        let mut pending = self.begin_create(height)?;
        pending.build(fill)?;
        self.finish_create(pending)
    }

    /// [`CheckpointStore::create`] in three steps, so that the slow middle one (writing and
    /// hashing files, fsyncing them) can run on another thread while the shard goes on: this
    /// one checks the height and prepares an empty build directory.
    pub fn begin_create(&self, height: u64) -> io::Result<PendingCheckpoint> {
        self.check_new_height(height)?;
        let building = self.root.join(TMP_DIR).join(height_name(height));
        if building.exists() {
            fs::remove_dir_all(&building)?;
        }
        fs::create_dir_all(building.join(STATE_DIR))?;
        Ok(PendingCheckpoint {
            height,
            building,
            chunk_bytes: self.chunk_bytes,
            previous: self.latest().map(|latest| Checkpoint::clone(&latest)),
            built: None,
        })
    }

    /// The last step of [`CheckpointStore::create`]: renames the built directory into place,
    /// loads it and deletes checkpoints beyond `kept`. Fails (and removes the build) when a
    /// checkpoint at or above its height appeared meanwhile (a sync was adopted).
    pub fn finish_create(&mut self, pending: PendingCheckpoint) -> io::Result<Rc<Checkpoint>> {
        let PendingCheckpoint {
            height,
            building,
            built,
            ..
        } = pending;
        let (manifest, stats, encoded) = match built {
            Some(built) => built,
            None => return Err(invalid_input("the checkpoint was not built".into())),
        };
        let target = match self.check_new_height(height) {
            Ok(target) => target,
            Err(error) => {
                let _ = fs::remove_dir_all(&building);
                return Err(error);
            }
        };
        self.last_create_stats = Some(stats);
        fs::rename(&building, &target)?;
        sync_dir(&self.root.join(CHECKPOINTS_DIR))?;
        let checkpoint = Rc::new(encoded.into_checkpoint(height, target.join(STATE_DIR), manifest));
        self.checkpoints.insert(height, checkpoint.clone());
        self.collect_garbage()?;
        Ok(checkpoint)
    }

    /// Starts the scratch space of a sync of the state (`height`, `root`), or resumes the one a
    /// previous run left: its manifest (if it was fetched) and its journal are kept. A scratch
    /// whose manifest never made it to disk, or does not load or hash to `root`, is emptied and
    /// starts over.
    pub fn scratch(&mut self, height: u64, root: Hash) -> io::Result<Scratch> {
        let dir = self.scratch_dir(height, &root);
        fs::create_dir_all(&dir)?;
        let manifest_path = dir.join(MANIFEST_FILE);
        let loaded = match read_manifest_file(&dir, &self.limits) {
            Ok(loaded) if loaded.meta.root_hash() == root => Some(loaded),
            // manifest.bin is written atomically, so a bad one is disk damage or meddling: the
            // scratch is only a cache of what peers serve, and it starts over.
            Ok(_) => None,
            Err(error) if error.kind() == io::ErrorKind::InvalidData => None,
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => return Err(error),
        };
        if loaded.is_none() {
            remove_if_exists(&manifest_path)?;
            let state = dir.join(STATE_DIR);
            if state.exists() {
                fs::remove_dir_all(&state)?;
            }
            remove_if_exists(&dir.join(JOURNAL_FILE))?;
            remove_if_exists(&dir.join(MANIFEST_TMP_FILE))?;
        }
        let journal = match loaded {
            Some(_) => Some(open_journal(&dir.join(JOURNAL_FILE))?),
            None => None,
        };
        Ok(Scratch {
            height,
            root,
            dir,
            loaded,
            journal,
            limits: self.limits,
        })
    }

    /// Makes a finished sync's state a checkpoint: fsyncs its files, drops its journal, renames
    /// its directory into `checkpoints/` atomically and deletes checkpoints beyond `kept`; its
    /// height must be above the latest checkpoint's. The
    /// caller guarantees that every chunk was verified; the manifest was checked against the
    /// root hash when it was set.
    pub fn adopt(&mut self, scratch: Scratch) -> io::Result<Rc<Checkpoint>> {
        // A scratch without a manifest has no state tree yet: adopt_flushed refuses it.
        if scratch.loaded.is_some() {
            sync_tree(&scratch.state_dir())?;
        }
        self.adopt_flushed(scratch)
    }

    /// [`CheckpointStore::adopt`] for a caller that already made the scratch's
    /// [`Scratch::state_dir`] durable after its last write ([`sync_tree`] or [`flush_tree`]; the
    /// state sync driver runs `flush_tree` on a thread of its own). It skips that second pass: fsync of a clean file is not free (on a disk with a
    /// volatile write cache every call flushes it), and a large state has thousands of files.
    pub fn adopt_flushed(&mut self, mut scratch: Scratch) -> io::Result<Rc<Checkpoint>> {
        let Some(loaded) = scratch.loaded.take() else {
            return Err(invalid_input(format!(
                "sync {} has no manifest yet",
                scratch.dir.display()
            )));
        };
        let target = self.check_new_height(scratch.height)?;
        drop(scratch.journal.take());
        // manifest.bin was written (and fsynced) by set_manifest; the journal only matters to a
        // sync in progress.
        remove_if_exists(&scratch.dir.join(JOURNAL_FILE))?;
        fs::rename(&scratch.dir, &target)?;
        sync_dir(&self.root.join(CHECKPOINTS_DIR))?;
        sync_dir(&self.root.join(SYNC_DIR))?;
        let checkpoint = Rc::new(Checkpoint {
            height: scratch.height,
            root_hash: scratch.root,
            dir: target.join(STATE_DIR),
            manifest: loaded.manifest,
            meta: loaded.meta,
            encoded_meta: loaded.encoded_meta,
            encoded_pieces: loaded.encoded_pieces,
        });
        self.checkpoints.insert(scratch.height, checkpoint.clone());
        self.collect_garbage()?;
        Ok(checkpoint)
    }

    /// Deletes every sync scratch space except `keep`'s: a sync that is no longer needed (the
    /// subnet moved on, or the node caught up otherwise) gives its disk space back.
    pub fn discard_scratches(&mut self, keep: Option<(u64, Hash)>) -> io::Result<()> {
        let keep = keep.map(|(height, root)| scratch_name(height, &root));
        for entry in fs::read_dir(self.root.join(SYNC_DIR))? {
            let entry = entry?;
            if keep
                .as_deref()
                .is_some_and(|keep| entry.file_name() == keep)
            {
                continue;
            }
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(entry.path())?;
            } else {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    /// Heights of the syncs that have a scratch space (to resume after a restart), with their
    /// roots.
    pub fn scratches(&self) -> io::Result<Vec<(u64, Hash)>> {
        let mut found = Vec::new();
        for entry in fs::read_dir(self.root.join(SYNC_DIR))? {
            if let Some(key) = entry?.file_name().to_str().and_then(parse_scratch_name) {
                found.push(key);
            }
        }
        found.sort();
        Ok(found)
    }

    /// Checkpoints only ascend: a new one must be above the latest. One below it would be
    /// the first to go when the store is full (possibly at once), and a state older than one the
    /// node has is never worth adopting. Returns the new checkpoint's directory.
    fn check_new_height(&self, height: u64) -> io::Result<PathBuf> {
        if let Some(&latest) = self.checkpoints.keys().next_back() {
            if height <= latest {
                return Err(invalid_input(format!(
                    "checkpoint {height} is not above the latest, {latest}"
                )));
            }
        }
        let target = self.checkpoint_dir(height);
        if target.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", target.display()),
            ));
        }
        Ok(target)
    }

    fn checkpoint_dir(&self, height: u64) -> PathBuf {
        self.root.join(CHECKPOINTS_DIR).join(height_name(height))
    }

    fn scratch_dir(&self, height: u64, root: &Hash) -> PathBuf {
        self.root.join(SYNC_DIR).join(scratch_name(height, root))
    }

    /// Deletes the oldest checkpoints until `kept` remain. Each is moved into `tmp/` first, so
    /// that a crash mid-delete leaves nothing `open` would take for a checkpoint.
    fn collect_garbage(&mut self) -> io::Result<()> {
        while self.checkpoints.len() > self.kept {
            let (&height, _) = self.checkpoints.iter().next().expect("more than kept >= 1");
            let doomed = self
                .root
                .join(TMP_DIR)
                .join(format!("deleting-{}", height_name(height)));
            if doomed.exists() {
                fs::remove_dir_all(&doomed)?;
            }
            fs::rename(self.checkpoint_dir(height), &doomed)?;
            self.checkpoints.remove(&height);
            sync_dir(&self.root.join(CHECKPOINTS_DIR))?;
            fs::remove_dir_all(&doomed)?;
        }
        Ok(())
    }
}

/// The scratch space of one sync: the state's files as they are being fetched, the manifest
/// once it is known, and the journal of verified chunks.
pub struct Scratch {
    pub height: u64,
    pub root: Hash,
    dir: PathBuf,
    loaded: Option<LoadedManifest>,
    journal: Option<File>,
    limits: ManifestLimits,
}

impl Scratch {
    /// The manifest, once fetched (or loaded from disk on resume).
    pub fn manifest(&self) -> Option<&Manifest> {
        self.loaded.as_ref().map(|loaded| &loaded.manifest)
    }

    /// The directory the state's files are written into.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join(STATE_DIR)
    }

    /// The encoded meta-manifest, to serve while the sync is partial.
    pub fn encoded_meta(&self) -> Option<&[u8]> {
        self.loaded
            .as_ref()
            .map(|loaded| loaded.encoded_meta.as_slice())
    }

    /// An encoded piece, to serve while the sync is partial.
    pub fn encoded_piece(&self, index: u32) -> Option<&[u8]> {
        let loaded = self.loaded.as_ref()?;
        loaded.encoded_pieces.get(index as usize).map(Vec::as_slice)
    }

    /// Persists the fetched manifest (its meta-manifest and every piece already checked against
    /// the root hash, `manifest` assembled from them), creates every file at its full length
    /// (sparse until written) with its directories, and an empty journal. The files and journal
    /// are created before `manifest.bin` appears, so a scratch found with a manifest on resume
    /// always has its files.
    pub fn set_manifest(
        &mut self,
        meta: &MetaManifest,
        pieces: &[ManifestPiece],
        manifest: Manifest,
    ) -> io::Result<()> {
        if self.loaded.is_some() {
            return Err(invalid_input("the sync's manifest is already set".into()));
        }
        if meta.root_hash() != self.root {
            return Err(invalid_input(
                "meta-manifest does not hash to the sync's root".into(),
            ));
        }
        check_pieces(meta, pieces, &manifest, &self.limits)?;
        let encoded = EncodedManifest {
            meta: meta.clone(),
            encoded_meta: encode_meta_manifest(meta),
            encoded_pieces: pieces.iter().map(encode_manifest_piece).collect(),
        };
        let state = self.dir.join(STATE_DIR);
        fs::create_dir_all(&state)?;
        for (index, file) in manifest.files.iter().enumerate() {
            let path = manifest_file_path(&state, &manifest, index as u32);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            let created = File::create(&path)?;
            created.set_len(file.size)?;
        }
        sync_tree(&state)?;
        let journal = File::create(self.dir.join(JOURNAL_FILE))?;
        journal.sync_all()?;
        write_manifest_file(&self.dir, &encoded)?;
        self.journal = Some(open_journal(&self.dir.join(JOURNAL_FILE))?);
        self.loaded = Some(LoadedManifest {
            manifest,
            meta: encoded.meta,
            encoded_meta: encoded.encoded_meta,
            encoded_pieces: encoded.encoded_pieces,
        });
        Ok(())
    }

    /// Where file `file_index` of the manifest lies. Panics when no manifest is set or the
    /// index is outside it: callers take indexes from the manifest.
    pub fn file_path(&self, file_index: u32) -> PathBuf {
        let manifest = self.manifest().expect("the sync's manifest is set");
        manifest_file_path(&self.dir.join(STATE_DIR), manifest, file_index)
    }

    /// The chunks recorded in the journal whose bytes on disk still hash right, ascending and
    /// without repeats. Each is read and hashed again: the journal is appended without fsync
    /// (see [`Scratch::record_verified`]), and a chunk whose bytes did not survive a crash is
    /// left out, so it is fetched again. Empty before the manifest is set.
    pub fn verified_chunks(&self) -> io::Result<Vec<u32>> {
        let Some(loaded) = &self.loaded else {
            return Ok(Vec::new());
        };
        let journal = fs::read(self.dir.join(JOURNAL_FILE))?;
        let chunk_count = loaded.manifest.chunks.len();
        let mut seen = vec![false; chunk_count];
        // A crash mid-append can leave a partial last entry (cut off when the scratch is
        // opened); it is ignored.
        for entry in journal.chunks_exact(4) {
            let index = u32::from_le_bytes(entry.try_into().expect("4 bytes"));
            if let Some(slot) = seen.get_mut(index as usize) {
                *slot = true;
            }
        }
        let state = self.dir.join(STATE_DIR);
        let mut verified = Vec::new();
        for (index, _) in seen.iter().enumerate().filter(|(_, seen)| **seen) {
            let index = index as u32;
            let bytes = read_manifest_chunk(&state, &loaded.manifest, index)?;
            if icn_codecs::state::chunk_hash(&bytes) == loaded.manifest.chunks[index as usize].hash
            {
                verified.push(index);
            }
        }
        Ok(verified)
    }

    /// Appends verified chunks to the journal (u32 LE each, in one write). Not fsynced: the
    /// journal is only a hint that [`Scratch::verified_chunks`] checks against the bytes on
    /// disk, so losing its tail costs refetching those chunks, never a wrong state.
    pub fn record_verified(&mut self, chunks: &[u32]) -> io::Result<()> {
        let Some(journal) = self.journal.as_mut() else {
            return Err(invalid_input("the sync's manifest is not set".into()));
        };
        let mut bytes = Vec::with_capacity(chunks.len() * 4);
        for chunk in chunks {
            bytes.extend_from_slice(&chunk.to_le_bytes());
        }
        journal.write_all(&bytes)
    }

    /// Reads chunk `index` from the scratch, to serve it while the sync is partial. The caller
    /// serves only chunks it verified (recorded or returned by `verified_chunks`).
    pub fn read_chunk(&self, index: u32) -> io::Result<Vec<u8>> {
        let Some(loaded) = &self.loaded else {
            return Err(invalid_input("the sync's manifest is not set".into()));
        };
        read_manifest_chunk(&self.dir.join(STATE_DIR), &loaded.manifest, index)
    }
}

/// Checks that `manifest` is the one `meta` and `pieces` describe: every piece belongs to the
/// meta-manifest, the pieces hold exactly the manifest's entries, and the manifest is valid. The
/// driver verified all of this when it fetched them; restating it here keeps a mix-up of two
/// syncs' manifests from ever reaching the disk.
fn check_pieces(
    meta: &MetaManifest,
    pieces: &[ManifestPiece],
    manifest: &Manifest,
    limits: &ManifestLimits,
) -> io::Result<()> {
    let mismatch = |what: &str| invalid_input(format!("manifest: {what}"));
    if pieces.len() != meta.pieces.len() {
        return Err(mismatch("piece count differs from the meta-manifest"));
    }
    let (mut files, mut chunks) = (0usize, 0usize);
    for piece in pieces {
        meta.check_piece(piece)
            .map_err(|error| mismatch(&error.to_string()))?;
        let same_files = manifest.files.get(files..files + piece.files.len()) == Some(&piece.files);
        let same_chunks =
            manifest.chunks.get(chunks..chunks + piece.chunks.len()) == Some(&piece.chunks);
        if !same_files || !same_chunks {
            return Err(mismatch("the pieces hold other entries than the manifest"));
        }
        files += piece.files.len();
        chunks += piece.chunks.len();
    }
    if files != manifest.files.len()
        || chunks != manifest.chunks.len()
        || manifest.chunk_bytes != meta.chunk_bytes
    {
        return Err(mismatch("the manifest holds more than its pieces"));
    }
    manifest
        .validate(limits)
        .map_err(|error| mismatch(&error.to_string()))
}

/// Opens a journal to append to. A crash mid-append can leave part of an entry at the end;
/// it is cut off, or every entry appended after it would be read misaligned.
fn open_journal(path: &Path) -> io::Result<File> {
    let journal = OpenOptions::new().append(true).create(true).open(path)?;
    let len = journal.metadata()?.len();
    if !len.is_multiple_of(4) {
        journal.set_len(len - len % 4)?;
    }
    Ok(journal)
}

/// A manifest with its meta-manifest and encodings, as loaded from `manifest.bin`.
struct LoadedManifest {
    manifest: Manifest,
    meta: MetaManifest,
    encoded_meta: Vec<u8>,
    encoded_pieces: Vec<Vec<u8>>,
}

/// A manifest's meta-manifest and encodings, ready to be written to `manifest.bin`.
struct EncodedManifest {
    meta: MetaManifest,
    encoded_meta: Vec<u8>,
    encoded_pieces: Vec<Vec<u8>>,
}

impl EncodedManifest {
    fn new(manifest: &Manifest) -> EncodedManifest {
        let (meta, pieces) = manifest.split();
        EncodedManifest {
            encoded_meta: encode_meta_manifest(&meta),
            encoded_pieces: pieces.iter().map(encode_manifest_piece).collect(),
            meta,
        }
    }

    fn into_checkpoint(self, height: u64, dir: PathBuf, manifest: Manifest) -> Checkpoint {
        Checkpoint {
            height,
            root_hash: self.meta.root_hash(),
            dir,
            manifest,
            meta: self.meta,
            encoded_meta: self.encoded_meta,
            encoded_pieces: self.encoded_pieces,
        }
    }
}

/// Writes `dir/manifest.bin` atomically: a temporary file, fsynced, renamed, then the directory
/// fsynced.
fn write_manifest_file(dir: &Path, encoded: &EncodedManifest) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(
        4 + encoded.encoded_meta.len()
            + encoded
                .encoded_pieces
                .iter()
                .map(|piece| 4 + piece.len())
                .sum::<usize>(),
    );
    for part in std::iter::once(&encoded.encoded_meta).chain(&encoded.encoded_pieces) {
        let len = u32::try_from(part.len()).expect("an encoded piece is far below 4 GiB");
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(part);
    }
    let tmp = dir.join(MANIFEST_TMP_FILE);
    let mut file = File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join(MANIFEST_FILE))?;
    sync_dir(dir)
}

/// Reads and checks `dir/manifest.bin`: every part decoded with `limits`, every piece checked
/// against the meta-manifest, the whole assembled and validated.
fn read_manifest_file(dir: &Path, limits: &ManifestLimits) -> io::Result<LoadedManifest> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = fs::read(&path)?;
    let corrupt = |what: String| invalid_data(format!("{}: {what}", path.display()));
    let mut rest = bytes.as_slice();
    let mut next_part = |what: &str| -> io::Result<Vec<u8>> {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(corrupt(format!("ends before the {what}")));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if len > tail.len() {
            return Err(corrupt(format!("the {what} is cut short")));
        }
        let (part, tail) = tail.split_at(len);
        rest = tail;
        Ok(part.to_vec())
    };
    let encoded_meta = next_part("meta-manifest")?;
    let meta = decode_meta_manifest(&encoded_meta, limits)
        .map_err(|error| corrupt(format!("meta-manifest: {error}")))?;
    let mut encoded_pieces = Vec::with_capacity(meta.pieces.len());
    let mut pieces = Vec::with_capacity(meta.pieces.len());
    for index in 0..meta.pieces.len() {
        let encoded = next_part("piece")?;
        let piece = decode_manifest_piece(&encoded, limits)
            .map_err(|error| corrupt(format!("piece {index}: {error}")))?;
        if piece.index as usize != index {
            return Err(corrupt(format!("piece {index} says it is {}", piece.index)));
        }
        meta.check_piece(&piece)
            .map_err(|error| corrupt(format!("piece {index}: {error}")))?;
        encoded_pieces.push(encoded);
        pieces.push(piece);
    }
    if !rest.is_empty() {
        return Err(corrupt(format!(
            "{} bytes after the last piece",
            rest.len()
        )));
    }
    let manifest = Manifest::assemble(&meta, pieces, limits)
        .map_err(|error| corrupt(format!("manifest: {error}")))?;
    Ok(LoadedManifest {
        manifest,
        meta,
        encoded_meta,
        encoded_pieces,
    })
}

fn load_checkpoint(dir: &Path, height: u64, limits: &ManifestLimits) -> io::Result<Checkpoint> {
    let loaded = read_manifest_file(dir, limits)?;
    Ok(Checkpoint {
        height,
        root_hash: loaded.meta.root_hash(),
        dir: dir.join(STATE_DIR),
        manifest: loaded.manifest,
        meta: loaded.meta,
        encoded_meta: loaded.encoded_meta,
        encoded_pieces: loaded.encoded_pieces,
    })
}

/// Joins a manifest path onto `base` one component at a time. Manifest paths are validated
/// (relative, no empty, `.` or `..` components) before any manifest reaches this module; the
/// assertion restates that invariant where a path leaves the checkpoint directory otherwise.
fn manifest_file_path(base: &Path, manifest: &Manifest, file_index: u32) -> PathBuf {
    let file = &manifest.files[file_index as usize];
    let mut path = base.to_path_buf();
    for component in file.path.split('/') {
        assert!(
            !component.is_empty() && component != "." && component != "..",
            "manifest path {:?} was not validated",
            file.path
        );
        path.push(component);
    }
    path
}

/// Reads chunk `index` of `manifest` from the files under `base`.
fn read_manifest_chunk(base: &Path, manifest: &Manifest, index: u32) -> io::Result<Vec<u8>> {
    let Some(segments) = manifest.segments(index) else {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "chunk {index} is not in the manifest ({} chunks)",
                manifest.chunks.len()
            ),
        ));
    };
    let mut bytes = vec![0u8; manifest.chunks[index as usize].size as usize];
    let mut at = 0usize;
    for segment in segments {
        let path = manifest_file_path(base, manifest, segment.file_index);
        let file = File::open(&path)?;
        let len = segment.len as usize;
        file.read_exact_at(&mut bytes[at..at + len], segment.offset)
            .map_err(|error| with_path(error, &path))?;
        at += len;
    }
    Ok(bytes)
}

/// One regular file found under a directory being hashed.
struct FoundFile {
    /// Relative, `/`-separated.
    path: String,
    size: u64,
    device: u64,
    inode: u64,
}

/// Lists every regular file under `dir` (recursively), sorted by path bytes. Symlinks and other
/// file types are an error: a checkpoint is plain files, and a link could point outside it.
fn list_files(dir: &Path) -> io::Result<Vec<FoundFile>> {
    let mut found = Vec::new();
    let mut pending = vec![(dir.to_path_buf(), String::new())];
    while let Some((absolute, relative)) = pending.pop() {
        for entry in fs::read_dir(&absolute)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(invalid_data(format!(
                    "{}: file name is not UTF-8",
                    entry.path().display()
                )));
            };
            let path = if relative.is_empty() {
                name.to_string()
            } else {
                format!("{relative}/{name}")
            };
            let metadata = fs::symlink_metadata(entry.path())?;
            let kind = metadata.file_type();
            if kind.is_dir() {
                pending.push((entry.path(), path));
            } else if kind.is_file() {
                validate_path(&path, &ManifestLimits::default())
                    .map_err(|error| invalid_data(format!("{path}: {error}")))?;
                found.push(FoundFile {
                    path,
                    size: metadata.len(),
                    device: metadata.dev(),
                    inode: metadata.ino(),
                });
            } else {
                return Err(invalid_data(format!(
                    "{}: not a regular file or directory (symlinks are refused)",
                    entry.path().display()
                )));
            }
        }
    }
    found.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

/// Where one chunk lies in files, by index into a list of file sizes.
fn plan_segments(sizes: &[u64], plan: &ChunkPlan) -> Vec<(usize, u64, u64)> {
    let mut segments = Vec::with_capacity(1);
    let mut left = u64::from(plan.size);
    let mut file = plan.file_index as usize;
    let mut offset = plan.offset;
    while left > 0 {
        let len = (sizes[file] - offset).min(left);
        if len > 0 {
            segments.push((file, offset, len));
        }
        left -= len;
        file += 1;
        offset = 0;
    }
    segments
}

/// What to hash in one pass over the files.
struct HashJob<'a> {
    dir: &'a Path,
    paths: Vec<&'a str>,
    sizes: Vec<u64>,
    plans: &'a [ChunkPlan],
    chunk_bytes: u32,
    /// Files whose hash is needed.
    hash_file: Vec<bool>,
    /// Chunks whose hash is needed.
    hash_chunk: Vec<bool>,
}

/// Hashes of one pass: `None` where not asked for.
struct Hashed {
    files: Vec<Option<Hash>>,
    chunks: Vec<Option<Hash>>,
    bytes_read: u64,
}

impl HashJob<'_> {
    /// Reads the files in chunk order, once, feeding each segment to its chunk's hasher and its
    /// file's hasher where either is wanted; files are read front to back, so their hashers see
    /// their bytes in order. A file that got shorter since it was listed is an error.
    fn run(&self) -> io::Result<Hashed> {
        let mut files: Vec<Option<Hash>> = vec![None; self.sizes.len()];
        let mut chunks = vec![None; self.plans.len()];
        let mut file_hashers: HashMap<usize, FileHasher> = HashMap::new();
        let mut open: Option<(usize, File)> = None;
        let mut buffer = vec![0u8; self.chunk_bytes as usize];
        let mut bytes_read = 0u64;
        for (chunk_index, plan) in self.plans.iter().enumerate() {
            let mut chunk_hasher = self.hash_chunk[chunk_index].then(ChunkHasher::new);
            for (file, offset, len) in plan_segments(&self.sizes, plan) {
                if chunk_hasher.is_none() && !self.hash_file[file] {
                    continue;
                }
                if open.as_ref().is_none_or(|(index, _)| *index != file) {
                    open = Some((file, File::open(self.path(file))?));
                }
                let (_, handle) = open.as_ref().expect("opened above");
                let bytes = &mut buffer[..len as usize];
                handle
                    .read_exact_at(bytes, offset)
                    .map_err(|error| with_path(error, &self.path(file)))?;
                bytes_read += len;
                if let Some(hasher) = chunk_hasher.as_mut() {
                    hasher.update(bytes);
                }
                if self.hash_file[file] {
                    file_hashers.entry(file).or_default().update(bytes);
                    if offset + len == self.sizes[file] {
                        let hasher = file_hashers.remove(&file).expect("inserted above");
                        files[file] = Some(hasher.finish());
                    }
                }
            }
            chunks[chunk_index] = chunk_hasher.map(ChunkHasher::finish);
        }
        // Empty files are in no chunk.
        for (file, hash) in files.iter_mut().enumerate() {
            if self.hash_file[file] && self.sizes[file] == 0 {
                *hash = Some(FileHasher::new().finish());
            }
        }
        debug_assert!(
            file_hashers.is_empty(),
            "every hashed file was read to its end"
        );
        Ok(Hashed {
            files,
            chunks,
            bytes_read,
        })
    }

    fn path(&self, file: usize) -> PathBuf {
        let mut path = self.dir.to_path_buf();
        path.extend(self.paths[file].split('/'));
        path
    }
}

/// Computes the manifest of the files under `dir`: regular files only (symlinks and other types
/// are an error), paths sorted by bytes and `/`-separated, chunks planned by codecs'
/// [`plan_chunks`]. A file of `previous` under the same path that is the same inode (a hardlink:
/// how a checkpoint carries unchanged files over) keeps its file hash, and the chunks that lie
/// exactly where they lay in `previous` over such files keep their hashes; only the rest is
/// read, in one pass. Returns the manifest and what it read and reused.
pub fn compute_manifest(
    dir: &Path,
    chunk_bytes: u32,
    previous: Option<&Checkpoint>,
) -> io::Result<(Manifest, ManifestStats)> {
    if chunk_bytes == 0 {
        return Err(invalid_input("chunk_bytes must be positive".into()));
    }
    let found = list_files(dir)?;
    let sizes: Vec<u64> = found.iter().map(|file| file.size).collect();
    let plans = plan_chunks(&sizes, chunk_bytes);
    // For each file, the index of the same file (path and inode) in `previous`.
    let carried: Vec<Option<u32>> = match previous {
        Some(previous) => carried_files(&found, previous)?,
        None => vec![None; found.len()],
    };
    let reused_chunks: Vec<Option<Hash>> = match previous {
        Some(previous) => plans
            .iter()
            .map(|plan| reused_chunk_hash(previous, &sizes, &carried, plan))
            .collect(),
        None => vec![None; plans.len()],
    };
    let job = HashJob {
        dir,
        paths: found.iter().map(|file| file.path.as_str()).collect(),
        sizes: sizes.clone(),
        plans: &plans,
        chunk_bytes,
        hash_file: carried.iter().map(Option::is_none).collect(),
        hash_chunk: reused_chunks.iter().map(Option::is_none).collect(),
    };
    let hashed = job.run()?;
    let mut stats = ManifestStats {
        bytes_read: hashed.bytes_read,
        ..ManifestStats::default()
    };
    let files = found
        .iter()
        .zip(hashed.files)
        .zip(&carried)
        .map(|((file, hash), carried)| {
            let hash = match (hash, carried) {
                (Some(hash), _) => {
                    stats.files_read += 1;
                    hash
                }
                (None, Some(index)) => {
                    stats.files_reused += 1;
                    previous.expect("carried implies previous").manifest.files[*index as usize].hash
                }
                (None, None) => unreachable!("a file not carried over is hashed"),
            };
            FileEntry {
                path: file.path.clone(),
                size: file.size,
                hash,
            }
        })
        .collect();
    let chunks = plans
        .iter()
        .zip(hashed.chunks)
        .zip(reused_chunks)
        .map(|((plan, hashed), reused)| {
            let hash = match (hashed, reused) {
                (Some(hash), _) => {
                    stats.chunks_hashed += 1;
                    hash
                }
                (None, Some(hash)) => {
                    stats.chunks_reused += 1;
                    hash
                }
                (None, None) => unreachable!("a chunk not reused is hashed"),
            };
            ChunkEntry {
                file_index: plan.file_index,
                offset: plan.offset,
                size: plan.size,
                hash,
            }
        })
        .collect();
    let manifest = Manifest {
        chunk_bytes,
        files,
        chunks,
    };
    manifest
        .validate(&ManifestLimits::default())
        .map_err(|error| invalid_data(format!("{}: {error}", dir.display())))?;
    Ok((manifest, stats))
}

/// For each found file, the index of the same file in `previous`: same path, same size, same
/// inode on the same device.
fn carried_files(found: &[FoundFile], previous: &Checkpoint) -> io::Result<Vec<Option<u32>>> {
    let by_path: HashMap<&str, usize> = previous
        .manifest
        .files
        .iter()
        .enumerate()
        .map(|(index, file)| (file.path.as_str(), index))
        .collect();
    let mut carried = Vec::with_capacity(found.len());
    for file in found {
        let Some(&index) = by_path.get(file.path.as_str()) else {
            carried.push(None);
            continue;
        };
        if previous.manifest.files[index].size != file.size {
            carried.push(None);
            continue;
        }
        let same_inode = match fs::symlink_metadata(previous.file_path(index as u32)) {
            Ok(metadata) => metadata.ino() == file.inode && metadata.dev() == file.device,
            Err(error) if error.kind() == io::ErrorKind::NotFound => false,
            Err(error) => return Err(error),
        };
        carried.push(same_inode.then_some(index as u32));
    }
    Ok(carried)
}

/// The previous hash of a chunk whose files were all carried over and that covers exactly the
/// same parts of the same files as a chunk of `previous`.
fn reused_chunk_hash(
    previous: &Checkpoint,
    sizes: &[u64],
    carried: &[Option<u32>],
    plan: &ChunkPlan,
) -> Option<Hash> {
    let segments = plan_segments(sizes, plan);
    let (first_file, first_offset, _) = *segments.first()?;
    let previous_first = carried[first_file]?;
    let chunks = &previous.manifest.chunks;
    // Chunks are in file order: find the one starting at (previous_first, first_offset).
    let index = chunks
        .binary_search_by(|chunk| {
            (chunk.file_index, chunk.offset).cmp(&(previous_first, first_offset))
        })
        .ok()?;
    if chunks[index].size != plan.size {
        return None;
    }
    let previous_segments = previous.manifest.segments(index as u32)?;
    if previous_segments.len() != segments.len() {
        return None;
    }
    let same = segments
        .iter()
        .zip(&previous_segments)
        .all(|(&(file, offset, len), old)| {
            carried[file] == Some(old.file_index) && offset == old.offset && len == old.len
        });
    same.then_some(chunks[index].hash)
}

/// What [`verify_checkpoint`] found.
#[derive(Clone, Debug)]
pub struct VerifyReport {
    pub height: Option<u64>,
    /// The root hash `manifest.bin` declares.
    pub root_hash: Hash,
    pub files: usize,
    pub chunks: usize,
    pub state_bytes: u64,
    /// Empty when the files match the manifest.
    pub differences: Vec<Difference>,
}

impl VerifyReport {
    pub fn passed(&self) -> bool {
        self.differences.is_empty()
    }
}

/// One way a checkpoint's files differ from its manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Difference {
    /// A file the manifest lists is not there.
    MissingFile {
        path: String,
    },
    /// A file is there that the manifest does not list.
    ExtraFile {
        path: String,
    },
    FileSize {
        path: String,
        expected: u64,
        found: u64,
    },
    FileHash {
        path: String,
    },
    /// A chunk's bytes hash differently from the manifest's chunk hash.
    ChunkHash {
        index: u32,
    },
    /// A chunk that could not be checked because one of its files is missing or has the wrong
    /// size.
    ChunkUnreadable {
        index: u32,
    },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::MissingFile { path } => write!(f, "file {path}: missing"),
            Difference::ExtraFile { path } => write!(f, "file {path}: not in the manifest"),
            Difference::FileSize {
                path,
                expected,
                found,
            } => write!(f, "file {path}: {found} bytes, manifest says {expected}"),
            Difference::FileHash { path } => write!(f, "file {path}: content hash differs"),
            Difference::ChunkHash { index } => write!(f, "chunk {index}: hash differs"),
            Difference::ChunkUnreadable { index } => {
                write!(f, "chunk {index}: not checked, one of its files differs")
            }
        }
    }
}

/// Checks a checkpoint directory (`manifest.bin` and `state/`) against its manifest: every file
/// listed, present at its size, with its hash; nothing else present; every chunk hashing right.
/// Everything is read again, nothing reused.
pub fn verify_checkpoint(checkpoint_dir: &Path) -> io::Result<VerifyReport> {
    let loaded = read_manifest_file(checkpoint_dir, &ManifestLimits::default())?;
    let manifest = &loaded.manifest;
    let state = checkpoint_dir.join(STATE_DIR);
    let found = list_files(&state)?;
    let mut differences = Vec::new();
    let mut found_sizes: HashMap<&str, u64> = found
        .iter()
        .map(|file| (file.path.as_str(), file.size))
        .collect();
    let mut intact = Vec::with_capacity(manifest.files.len());
    for file in &manifest.files {
        match found_sizes.remove(file.path.as_str()) {
            None => {
                differences.push(Difference::MissingFile {
                    path: file.path.clone(),
                });
                intact.push(false);
            }
            Some(size) if size != file.size => {
                differences.push(Difference::FileSize {
                    path: file.path.clone(),
                    expected: file.size,
                    found: size,
                });
                intact.push(false);
            }
            Some(_) => intact.push(true),
        }
    }
    let mut extra: Vec<&str> = found_sizes.into_keys().collect();
    extra.sort_unstable();
    differences.extend(extra.into_iter().map(|path| Difference::ExtraFile {
        path: path.to_string(),
    }));
    let plans: Vec<ChunkPlan> = manifest
        .chunks
        .iter()
        .map(|chunk| ChunkPlan {
            file_index: chunk.file_index,
            offset: chunk.offset,
            size: chunk.size,
        })
        .collect();
    let sizes: Vec<u64> = manifest.files.iter().map(|file| file.size).collect();
    let readable: Vec<bool> = plans
        .iter()
        .map(|plan| {
            plan_segments(&sizes, plan)
                .iter()
                .all(|&(file, _, _)| intact[file])
        })
        .collect();
    let job = HashJob {
        dir: &state,
        paths: manifest
            .files
            .iter()
            .map(|file| file.path.as_str())
            .collect(),
        sizes,
        plans: &plans,
        chunk_bytes: manifest.chunk_bytes,
        hash_file: intact.clone(),
        hash_chunk: readable.clone(),
    };
    let hashed = job.run()?;
    for (file, hash) in manifest.files.iter().zip(&hashed.files) {
        if hash.is_some_and(|hash| hash != file.hash) {
            differences.push(Difference::FileHash {
                path: file.path.clone(),
            });
        }
    }
    for (index, (chunk, hash)) in manifest.chunks.iter().zip(&hashed.chunks).enumerate() {
        let index = index as u32;
        match hash {
            None => differences.push(Difference::ChunkUnreadable { index }),
            Some(hash) if *hash != chunk.hash => differences.push(Difference::ChunkHash { index }),
            Some(_) => {}
        }
    }
    let height = checkpoint_dir
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(parse_height);
    Ok(VerifyReport {
        height,
        root_hash: loaded.meta.root_hash(),
        files: manifest.files.len(),
        chunks: manifest.chunks.len(),
        state_bytes: manifest.state_bytes(),
        differences,
    })
}

/// A hash in lowercase hex.
pub fn hash_hex(hash: &Hash) -> String {
    hash.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn parse_hash_hex(text: &str) -> Option<Hash> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut hash = [0u8; 32];
    for (index, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * index..2 * index + 2], 16).ok()?;
    }
    Some(hash)
}

fn height_name(height: u64) -> String {
    format!("{height:0width$}", width = HEIGHT_DIGITS)
}

fn parse_height(name: &str) -> Option<u64> {
    if name.len() != HEIGHT_DIGITS || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

fn scratch_name(height: u64, root: &Hash) -> String {
    format!("{}-{}", height_name(height), hash_hex(root))
}

fn parse_scratch_name(name: &str) -> Option<(u64, Hash)> {
    let (height, root) = name.split_once('-')?;
    Some((parse_height(height)?, parse_hash_hex(root)?))
}

/// fsyncs every file and directory under `dir`, and `dir` itself: before a rename makes a
/// directory a checkpoint, everything it holds must be on disk. Files that are hardlinks of an
/// older checkpoint are clean, so their fsync costs little (but each fsync still flushes the
/// device's cache: see [`flush_tree`]).
pub fn sync_tree(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            sync_tree(&entry.path())?;
        } else if kind.is_file() {
            File::open(entry.path())?.sync_all()?;
        }
    }
    sync_dir(dir)
}

/// Makes everything under `dir` durable, as [`sync_tree`] does, with one `syncfs` of the file
/// system that holds it: all its dirty data and metadata are written and the device's cache is
/// flushed once, where `sync_tree` flushes it once per file (about 0.5 s for the 6,144 files of
/// the sync bench's 2 GiB state on this project's VMs, whose ext4 has no journal, even with
/// every file clean). It also writes whatever else is dirty on that file system. Falls back to
/// [`sync_tree`] where `syncfs` fails.
pub fn flush_tree(dir: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let handle = File::open(dir)?;
    // SAFETY: `handle` is an open descriptor for the whole call.
    if unsafe { libc::syncfs(handle.as_raw_fd()) } == 0 {
        return Ok(());
    }
    sync_tree(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

fn with_path(error: io::Error, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

fn invalid_data(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn invalid_input(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

#[cfg(test)]
mod tests;
