//! State manifests: what a checkpoint holds, how it is cut into chunks, and the hashes that
//! make a state's identity.
//!
//! A checkpoint is a directory of files at a height. Its [`Manifest`] lists the files (sorted by
//! path, each with its length and content hash) and the chunks (in file order, each with its
//! place and hash). Files of at least `chunk_bytes` are cut into chunks of `chunk_bytes` (the
//! last one shorter); smaller files are grouped, in path order, into chunks of at most
//! `chunk_bytes` that hold whole files ([`plan_chunks`]). A large manifest is split into
//! [`ManifestPiece`]s; the [`MetaManifest`] lists the pieces' hashes, and the state's root hash
//! is the hash of the meta-manifest.
//!
//! Every hash is SHA-256 over a domain separator (its length as one byte, then the tag) and
//! the fields in a fixed big-endian layout, never over the FlatBuffers bytes: two nodes that
//! encode the same manifest differently still agree on the root hash, and a receiver checks a
//! piece by recomputing its hash from what it decoded. docs/protocol.md gives the layouts.
//!
//! Decoders take [`ManifestLimits`] and return [`DecodeError`]s; [`Manifest::validate`] checks
//! everything a writer relies on (paths that stay inside the checkpoint directory, strictly
//! sorted and unique; chunks that cover every byte of every file exactly once).

use flatbuffers::{FlatBufferBuilder, VerifierOptions};
use sha2::{Digest, Sha256};

use crate::error::{check_decode_limit, DecodeError};
use crate::generated::wire;
use crate::payload::HASH_BYTES;

/// A SHA-256 digest.
pub type Hash = [u8; HASH_BYTES];

/// The manifest format this code writes and accepts.
pub const MANIFEST_VERSION: u32 = 1;

/// Pieces are cut near this many encoded bytes. Part of the protocol, not a knob: pieces are
/// part of a state's identity, so every node must cut them the same way.
pub const PIECE_BYTES_TARGET: usize = 128 << 10;

/// At most this many entries (files and chunks) per piece we cut; with the byte target this
/// keeps a piece far below the decoders' limits.
pub const PIECE_ENTRIES_TARGET: usize = 4096;

/// The `piece` of a ManifestRequest that asks for the meta-manifest instead of a piece.
pub const META_MANIFEST_PIECE: u32 = u32::MAX;

const DOMAIN_CHUNK: &str = "icn-state-chunk";
const DOMAIN_FILE: &str = "icn-state-file";
const DOMAIN_PIECE: &str = "icn-state-manifest-piece";
const DOMAIN_META: &str = "icn-state-meta-manifest";

/// Bytes a file entry takes in a piece besides its path (offsets, size, hash, vtable), used
/// to cut pieces near a byte target.
const FILE_ENTRY_OVERHEAD_BYTES: usize = 72;
/// Bytes a chunk entry takes in a piece (a 48-byte struct stored inline).
const CHUNK_ENTRY_BYTES: usize = 48;
/// Bytes a piece reference takes in the meta-manifest (a 40-byte struct stored inline).
const PIECE_REF_BYTES: usize = 40;
/// Bytes of a piece or meta-manifest besides its entries (root, vtable, scalars, vector lengths).
const MESSAGE_OVERHEAD_BYTES: usize = 128;

fn hasher(domain: &str) -> Sha256 {
    let mut hasher = Sha256::new();
    hasher.update([domain.len() as u8]);
    hasher.update(domain.as_bytes());
    hasher
}

/// Hashes a chunk's bytes as they are read (a chunk of grouped files is fed file by file).
#[derive(Clone)]
pub struct ChunkHasher(Sha256);

impl ChunkHasher {
    pub fn new() -> ChunkHasher {
        ChunkHasher(hasher(DOMAIN_CHUNK))
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(self) -> Hash {
        self.0.finalize().into()
    }
}

impl Default for ChunkHasher {
    fn default() -> Self {
        ChunkHasher::new()
    }
}

/// The hash of one whole chunk.
pub fn chunk_hash(bytes: &[u8]) -> Hash {
    let mut hasher = ChunkHasher::new();
    hasher.update(bytes);
    hasher.finish()
}

/// Hashes a file's content as it is read; the length is hashed last, so the file can be
/// streamed without knowing it up front.
#[derive(Clone)]
pub struct FileHasher {
    hasher: Sha256,
    bytes: u64,
}

impl FileHasher {
    pub fn new() -> FileHasher {
        FileHasher {
            hasher: hasher(DOMAIN_FILE),
            bytes: 0,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.bytes += bytes.len() as u64;
    }

    pub fn finish(mut self) -> Hash {
        self.hasher.update(self.bytes.to_be_bytes());
        self.hasher.finalize().into()
    }
}

impl Default for FileHasher {
    fn default() -> Self {
        FileHasher::new()
    }
}

/// One file of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Relative to the checkpoint directory, `/`-separated, no `.` or `..` components.
    pub path: String,
    pub size: u64,
    pub hash: Hash,
}

/// One chunk: `size` bytes from byte `offset` of file `file_index` on, continuing through the
/// following files when the chunk groups small files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkEntry {
    pub file_index: u32,
    pub offset: u64,
    pub size: u32,
    pub hash: Hash,
}

/// The part of one file that a chunk covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub file_index: u32,
    pub offset: u64,
    pub len: u64,
}

/// Where a chunk lies, before its hash is known: the plan a checkpoint writer reads files by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkPlan {
    pub file_index: u32,
    pub offset: u64,
    pub size: u32,
}

/// Cuts files of the given sizes (in manifest order) into chunks of at most `chunk_bytes`:
/// a file of at least `chunk_bytes` gets its own chunks, smaller files are grouped in order
/// while the group fits in one chunk, and empty files are in no chunk.
pub fn plan_chunks(file_sizes: &[u64], chunk_bytes: u32) -> Vec<ChunkPlan> {
    assert!(chunk_bytes > 0, "chunk_bytes must be positive");
    let chunk = u64::from(chunk_bytes);
    let mut plans = Vec::new();
    // The group being built: its first file and its length so far.
    let mut group: Option<(u32, u64)> = None;
    for (index, &size) in file_sizes.iter().enumerate() {
        let index = index as u32;
        if size == 0 {
            continue;
        }
        if size >= chunk {
            if let Some((first, bytes)) = group.take() {
                plans.push(ChunkPlan {
                    file_index: first,
                    offset: 0,
                    size: bytes as u32,
                });
            }
            let mut offset = 0;
            while offset < size {
                let len = chunk.min(size - offset);
                plans.push(ChunkPlan {
                    file_index: index,
                    offset,
                    size: len as u32,
                });
                offset += len;
            }
            continue;
        }
        group = match group {
            Some((first, bytes)) if bytes + size <= chunk => Some((first, bytes + size)),
            Some((first, bytes)) => {
                plans.push(ChunkPlan {
                    file_index: first,
                    offset: 0,
                    size: bytes as u32,
                });
                Some((index, size))
            }
            None => Some((index, size)),
        };
    }
    if let Some((first, bytes)) = group {
        plans.push(ChunkPlan {
            file_index: first,
            offset: 0,
            size: bytes as u32,
        });
    }
    plans
}

/// Bounds on manifests received from peers (and on the ones we build, so that peers with the
/// same limits accept ours).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManifestLimits {
    /// Length of one encoded piece or meta-manifest.
    pub piece_bytes_max: usize,
    /// Files and chunks in one piece together (each a table or struct the verifier visits).
    pub piece_entries_max: usize,
    /// Pieces in one manifest (entries of the meta-manifest).
    pub pieces_max: usize,
    /// Files in one manifest.
    pub files_max: u32,
    /// Chunks in one manifest.
    pub chunks_max: u32,
    /// Length of a file path.
    pub path_bytes_max: usize,
    /// The largest chunk size a manifest may declare (a chunk is held whole in memory).
    pub chunk_bytes_max: u32,
}

impl ManifestLimits {
    pub const PIECE_BYTES_MAX_DEFAULT: usize = 1 << 20;
    pub const PIECE_ENTRIES_MAX_DEFAULT: usize = 1 << 15;
    pub const PIECES_MAX_DEFAULT: usize = 1 << 14;
    pub const FILES_MAX_DEFAULT: u32 = 1 << 24;
    pub const CHUNKS_MAX_DEFAULT: u32 = 1 << 26;
    pub const PATH_BYTES_MAX_DEFAULT: usize = 1 << 10;
    pub const CHUNK_BYTES_MAX_DEFAULT: u32 = 16 << 20;

    fn verifier_options(&self) -> VerifierOptions {
        VerifierOptions {
            max_depth: 8,
            max_tables: self.piece_entries_max + 8,
            max_apparent_size: self.piece_bytes_max,
            ignore_missing_null_terminator: false,
        }
    }
}

impl Default for ManifestLimits {
    fn default() -> Self {
        ManifestLimits {
            piece_bytes_max: Self::PIECE_BYTES_MAX_DEFAULT,
            piece_entries_max: Self::PIECE_ENTRIES_MAX_DEFAULT,
            pieces_max: Self::PIECES_MAX_DEFAULT,
            files_max: Self::FILES_MAX_DEFAULT,
            chunks_max: Self::CHUNKS_MAX_DEFAULT,
            path_bytes_max: Self::PATH_BYTES_MAX_DEFAULT,
            chunk_bytes_max: Self::CHUNK_BYTES_MAX_DEFAULT,
        }
    }
}

fn invalid(kind: &'static str, detail: &'static str) -> DecodeError {
    DecodeError::Invalid { kind, detail }
}

/// Checks that `path` names a file strictly inside the checkpoint directory.
pub fn validate_path(path: &str, limits: &ManifestLimits) -> Result<(), DecodeError> {
    check_decode_limit("path_bytes_max", path.len(), limits.path_bytes_max)?;
    if path.is_empty() {
        return Err(invalid("ManifestFile", "empty path"));
    }
    if path.contains('\0') {
        return Err(invalid("ManifestFile", "path contains NUL"));
    }
    for component in path.split('/') {
        if component.is_empty() || component == "." || component == ".." {
            return Err(invalid(
                "ManifestFile",
                "path is absolute or has an empty, '.' or '..' component",
            ));
        }
    }
    Ok(())
}

/// A whole manifest: every file and every chunk of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub chunk_bytes: u32,
    pub files: Vec<FileEntry>,
    pub chunks: Vec<ChunkEntry>,
}

impl Manifest {
    /// Total length of the files.
    pub fn state_bytes(&self) -> u64 {
        self.files.iter().map(|file| file.size).sum()
    }

    /// Checks everything a writer relies on: limits, paths inside the directory and strictly
    /// sorted, chunk sizes within `1 ..= chunk_bytes`, and chunks that cover every byte of
    /// every file exactly once, in order (a chunk that spans files holds whole files).
    pub fn validate(&self, limits: &ManifestLimits) -> Result<(), DecodeError> {
        const KIND: &str = "Manifest";
        check_decode_limit("files_max", self.files.len(), limits.files_max as usize)?;
        check_decode_limit("chunks_max", self.chunks.len(), limits.chunks_max as usize)?;
        if self.chunk_bytes == 0 || self.chunk_bytes > limits.chunk_bytes_max {
            return Err(DecodeError::LimitExceeded {
                limit: "chunk_bytes_max",
                value: u64::from(self.chunk_bytes),
                max: u64::from(limits.chunk_bytes_max),
            });
        }
        let mut previous: Option<&str> = None;
        for file in &self.files {
            validate_path(&file.path, limits)?;
            if previous.is_some_and(|previous| previous >= file.path.as_str()) {
                return Err(invalid(KIND, "file paths are not strictly sorted"));
            }
            // A path may not also be a directory of another path ("a" and "a/b").
            if let Some(previous) = previous {
                if file.path.len() > previous.len()
                    && file.path.starts_with(previous)
                    && file.path.as_bytes()[previous.len()] == b'/'
                {
                    return Err(invalid(KIND, "a file path is also a directory"));
                }
            }
            previous = Some(&file.path);
        }
        let files = &self.files;
        let mut file = 0usize;
        let mut offset = 0u64;
        let skip_done = |file: &mut usize, offset: &mut u64| {
            while *file < files.len() && *offset == files[*file].size {
                *file += 1;
                *offset = 0;
            }
        };
        for chunk in &self.chunks {
            skip_done(&mut file, &mut offset);
            if file == files.len() {
                return Err(invalid(KIND, "a chunk lies past the last file"));
            }
            if chunk.file_index as usize != file || chunk.offset != offset {
                return Err(invalid(
                    KIND,
                    "chunks overlap, leave a gap or are out of order",
                ));
            }
            if chunk.size == 0 || chunk.size > self.chunk_bytes {
                return Err(invalid(KIND, "a chunk is empty or larger than chunk_bytes"));
            }
            let size = u64::from(chunk.size);
            let remaining = files[file].size - offset;
            if size <= remaining {
                offset += size;
                continue;
            }
            if offset != 0 {
                return Err(invalid(KIND, "a chunk spanning files starts inside a file"));
            }
            let mut left = size - remaining;
            file += 1;
            while left > 0 {
                let Some(next) = files.get(file) else {
                    return Err(invalid(KIND, "a chunk lies past the last file"));
                };
                if next.size > left {
                    return Err(invalid(KIND, "a chunk spanning files ends inside a file"));
                }
                left -= next.size;
                file += 1;
            }
            offset = 0;
        }
        skip_done(&mut file, &mut offset);
        if file != files.len() {
            return Err(invalid(KIND, "chunks do not cover every file"));
        }
        Ok(())
    }

    /// The parts of files that chunk `chunk_index` covers, in order (empty files left out).
    /// The manifest must be valid ([`Manifest::validate`]); `None` for an index out of range.
    pub fn segments(&self, chunk_index: u32) -> Option<Vec<Segment>> {
        let chunk = self.chunks.get(chunk_index as usize)?;
        let mut segments = Vec::with_capacity(1);
        let mut left = u64::from(chunk.size);
        let mut file = chunk.file_index as usize;
        let mut offset = chunk.offset;
        while left > 0 {
            let size = self.files.get(file)?.size;
            let len = (size - offset).min(left);
            if len > 0 {
                segments.push(Segment {
                    file_index: file as u32,
                    offset,
                    len,
                });
            }
            left -= len;
            file += 1;
            offset = 0;
        }
        Some(segments)
    }

    /// Splits the manifest into pieces the way every node does ([`PIECE_BYTES_TARGET`],
    /// [`PIECE_ENTRIES_TARGET`]) and builds the meta-manifest that lists them.
    pub fn split(&self) -> (MetaManifest, Vec<ManifestPiece>) {
        self.split_with(PIECE_BYTES_TARGET, PIECE_ENTRIES_TARGET)
    }

    /// Splits the manifest into pieces of about `piece_bytes_target` encoded bytes each (at
    /// least one entry per piece, at most `piece_entries_max` entries). Only tests cut pieces
    /// differently from [`Manifest::split`].
    pub fn split_with(
        &self,
        piece_bytes_target: usize,
        piece_entries_max: usize,
    ) -> (MetaManifest, Vec<ManifestPiece>) {
        let entries_max = piece_entries_max.max(1);
        let mut pieces = Vec::new();
        let mut piece = ManifestPiece::empty(0, 0, 0);
        let mut bytes = MESSAGE_OVERHEAD_BYTES;
        let mut full = |piece: &mut ManifestPiece, bytes: &mut usize, entry: usize| {
            let entries = piece.files.len() + piece.chunks.len();
            if entries > 0 && (*bytes + entry > piece_bytes_target || entries >= entries_max) {
                let next = ManifestPiece::empty(
                    piece.index + 1,
                    piece.first_file + piece.files.len() as u32,
                    piece.first_chunk + piece.chunks.len() as u32,
                );
                pieces.push(std::mem::replace(piece, next));
                *bytes = MESSAGE_OVERHEAD_BYTES;
            }
            *bytes += entry;
        };
        for file in &self.files {
            full(
                &mut piece,
                &mut bytes,
                file.path.len() + FILE_ENTRY_OVERHEAD_BYTES,
            );
            piece.files.push(file.clone());
        }
        for chunk in &self.chunks {
            full(&mut piece, &mut bytes, CHUNK_ENTRY_BYTES);
            piece.chunks.push(*chunk);
        }
        if !piece.files.is_empty() || !piece.chunks.is_empty() || pieces.is_empty() {
            pieces.push(piece);
        }
        let meta = MetaManifest {
            version: MANIFEST_VERSION,
            chunk_bytes: self.chunk_bytes,
            file_count: self.files.len() as u32,
            chunk_count: self.chunks.len() as u32,
            state_bytes: self.state_bytes(),
            pieces: pieces
                .iter()
                .map(|piece| PieceRef {
                    hash: piece.hash(),
                    file_count: piece.files.len() as u32,
                    chunk_count: piece.chunks.len() as u32,
                })
                .collect(),
        };
        (meta, pieces)
    }

    /// Puts a manifest back together from its meta-manifest and all its pieces, each of which
    /// was checked with [`MetaManifest::check_piece`], and validates the result.
    pub fn assemble(
        meta: &MetaManifest,
        pieces: Vec<ManifestPiece>,
        limits: &ManifestLimits,
    ) -> Result<Manifest, DecodeError> {
        if pieces.len() != meta.pieces.len() {
            return Err(invalid(
                "Manifest",
                "piece count differs from the meta-manifest",
            ));
        }
        let mut files = Vec::with_capacity(meta.file_count as usize);
        let mut chunks = Vec::with_capacity(meta.chunk_count as usize);
        for piece in pieces {
            meta.check_piece(&piece)?;
            files.extend(piece.files);
            chunks.extend(piece.chunks);
        }
        let manifest = Manifest {
            chunk_bytes: meta.chunk_bytes,
            files,
            chunks,
        };
        manifest.validate(limits)?;
        if manifest.state_bytes() != meta.state_bytes {
            return Err(invalid("Manifest", "state_bytes differs from the files"));
        }
        Ok(manifest)
    }

    /// The root hash of the state this manifest describes.
    pub fn root_hash(&self) -> Hash {
        self.split().0.root_hash()
    }
}

/// A contiguous run of a manifest's files and chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestPiece {
    pub index: u32,
    pub first_file: u32,
    pub first_chunk: u32,
    pub files: Vec<FileEntry>,
    pub chunks: Vec<ChunkEntry>,
}

impl ManifestPiece {
    fn empty(index: u32, first_file: u32, first_chunk: u32) -> ManifestPiece {
        ManifestPiece {
            index,
            first_file,
            first_chunk,
            files: Vec::new(),
            chunks: Vec::new(),
        }
    }

    /// The piece's hash over its fields (see the module docs).
    pub fn hash(&self) -> Hash {
        let mut hasher = hasher(DOMAIN_PIECE);
        hasher.update(self.index.to_be_bytes());
        hasher.update(self.first_file.to_be_bytes());
        hasher.update((self.files.len() as u32).to_be_bytes());
        for file in &self.files {
            hasher.update((file.path.len() as u32).to_be_bytes());
            hasher.update(file.path.as_bytes());
            hasher.update(file.size.to_be_bytes());
            hasher.update(file.hash);
        }
        hasher.update(self.first_chunk.to_be_bytes());
        hasher.update((self.chunks.len() as u32).to_be_bytes());
        for chunk in &self.chunks {
            hasher.update(chunk.file_index.to_be_bytes());
            hasher.update(chunk.offset.to_be_bytes());
            hasher.update(chunk.size.to_be_bytes());
            hasher.update(chunk.hash);
        }
        hasher.finalize().into()
    }
}

/// What the meta-manifest says about one piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PieceRef {
    pub hash: Hash,
    pub file_count: u32,
    pub chunk_count: u32,
}

/// The root of a state: the manifest's shape and its pieces' hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaManifest {
    pub version: u32,
    pub chunk_bytes: u32,
    pub file_count: u32,
    pub chunk_count: u32,
    pub state_bytes: u64,
    pub pieces: Vec<PieceRef>,
}

impl MetaManifest {
    /// The state's root hash: the hash of the meta-manifest's fields.
    pub fn root_hash(&self) -> Hash {
        let mut hasher = hasher(DOMAIN_META);
        hasher.update(self.version.to_be_bytes());
        hasher.update(self.chunk_bytes.to_be_bytes());
        hasher.update(self.file_count.to_be_bytes());
        hasher.update(self.chunk_count.to_be_bytes());
        hasher.update(self.state_bytes.to_be_bytes());
        hasher.update((self.pieces.len() as u32).to_be_bytes());
        for piece in &self.pieces {
            hasher.update(piece.hash);
            hasher.update(piece.file_count.to_be_bytes());
            hasher.update(piece.chunk_count.to_be_bytes());
        }
        hasher.finalize().into()
    }

    /// Checks the meta-manifest's own consistency: version, limits, and piece counts that add
    /// up to the file and chunk counts.
    pub fn validate(&self, limits: &ManifestLimits) -> Result<(), DecodeError> {
        const KIND: &str = "MetaManifest";
        if self.version != MANIFEST_VERSION {
            return Err(invalid(KIND, "unsupported manifest version"));
        }
        if self.chunk_bytes == 0 || self.chunk_bytes > limits.chunk_bytes_max {
            return Err(DecodeError::LimitExceeded {
                limit: "chunk_bytes_max",
                value: u64::from(self.chunk_bytes),
                max: u64::from(limits.chunk_bytes_max),
            });
        }
        check_decode_limit("pieces_max", self.pieces.len(), limits.pieces_max)?;
        check_decode_limit(
            "files_max",
            self.file_count as usize,
            limits.files_max as usize,
        )?;
        check_decode_limit(
            "chunks_max",
            self.chunk_count as usize,
            limits.chunks_max as usize,
        )?;
        let (mut files, mut chunks) = (0u64, 0u64);
        for piece in &self.pieces {
            let entries = piece.file_count as usize + piece.chunk_count as usize;
            check_decode_limit("piece_entries_max", entries, limits.piece_entries_max)?;
            files += u64::from(piece.file_count);
            chunks += u64::from(piece.chunk_count);
        }
        if files != u64::from(self.file_count) || chunks != u64::from(self.chunk_count) {
            return Err(invalid(KIND, "piece counts do not add up"));
        }
        // Every chunk holds at least one byte and at most chunk_bytes.
        let chunk_count = u64::from(self.chunk_count);
        if self.state_bytes < chunk_count
            || self.state_bytes > chunk_count * u64::from(self.chunk_bytes)
        {
            return Err(invalid(KIND, "state_bytes does not fit the chunk count"));
        }
        Ok(())
    }

    /// Where piece `index` starts: its first file and first chunk.
    pub fn piece_start(&self, index: u32) -> Option<(u32, u32)> {
        let before = self.pieces.get(..index as usize)?;
        Some(before.iter().fold((0, 0), |(files, chunks), piece| {
            (files + piece.file_count, chunks + piece.chunk_count)
        }))
    }

    /// Checks a received piece against this (validated) meta-manifest: its index, its place,
    /// its entry counts and its hash.
    pub fn check_piece(&self, piece: &ManifestPiece) -> Result<(), DecodeError> {
        const KIND: &str = "ManifestPiece";
        let Some(expected) = self.pieces.get(piece.index as usize) else {
            return Err(invalid(KIND, "piece index out of range"));
        };
        if self.piece_start(piece.index) != Some((piece.first_file, piece.first_chunk)) {
            return Err(invalid(KIND, "piece starts at the wrong file or chunk"));
        }
        if piece.files.len() != expected.file_count as usize
            || piece.chunks.len() != expected.chunk_count as usize
        {
            return Err(invalid(KIND, "entry counts differ from the meta-manifest"));
        }
        if piece.hash() != expected.hash {
            return Err(invalid(KIND, "hash differs from the meta-manifest"));
        }
        Ok(())
    }
}

/// Encodes a meta-manifest (the response body of a ManifestRequest for
/// [`META_MANIFEST_PIECE`]).
pub fn encode_meta_manifest(meta: &MetaManifest) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::with_capacity(
        MESSAGE_OVERHEAD_BYTES + meta.pieces.len() * PIECE_REF_BYTES,
    );
    let refs: Vec<wire::ManifestPieceRef> = meta
        .pieces
        .iter()
        .map(|piece| {
            wire::ManifestPieceRef::new(
                &wire::Hash32(piece.hash),
                piece.file_count,
                piece.chunk_count,
            )
        })
        .collect();
    let pieces = builder.create_vector(&refs);
    let root = wire::MetaManifest::create(
        &mut builder,
        &wire::MetaManifestArgs {
            version: meta.version,
            chunk_bytes: meta.chunk_bytes,
            file_count: meta.file_count,
            chunk_count: meta.chunk_count,
            state_bytes: meta.state_bytes,
            pieces: Some(pieces),
        },
    );
    builder.finish_minimal(root);
    builder.finished_data().to_vec()
}

/// Decodes and validates a meta-manifest ([`MetaManifest::validate`]).
pub fn decode_meta_manifest(
    bytes: &[u8],
    limits: &ManifestLimits,
) -> Result<MetaManifest, DecodeError> {
    check_decode_limit("piece_bytes_max", bytes.len(), limits.piece_bytes_max)?;
    let table =
        flatbuffers::root_with_opts::<wire::MetaManifest>(&limits.verifier_options(), bytes)?;
    let refs = table.pieces().unwrap_or_default();
    check_decode_limit("pieces_max", refs.len(), limits.pieces_max)?;
    let meta = MetaManifest {
        version: table.version(),
        chunk_bytes: table.chunk_bytes(),
        file_count: table.file_count(),
        chunk_count: table.chunk_count(),
        state_bytes: table.state_bytes(),
        pieces: refs
            .iter()
            .map(|piece| PieceRef {
                hash: piece.hash().0,
                file_count: piece.file_count(),
                chunk_count: piece.chunk_count(),
            })
            .collect(),
    };
    meta.validate(limits)?;
    Ok(meta)
}

/// Encodes a manifest piece (the response body of a ManifestRequest for that piece).
pub fn encode_manifest_piece(piece: &ManifestPiece) -> Vec<u8> {
    let estimate = MESSAGE_OVERHEAD_BYTES
        + piece.chunks.len() * CHUNK_ENTRY_BYTES
        + piece
            .files
            .iter()
            .map(|file| file.path.len() + FILE_ENTRY_OVERHEAD_BYTES)
            .sum::<usize>();
    let mut builder = FlatBufferBuilder::with_capacity(estimate);
    let files: Vec<_> = piece
        .files
        .iter()
        .map(|file| {
            let path = builder.create_string(&file.path);
            let hash = wire::Hash32(file.hash);
            wire::ManifestFile::create(
                &mut builder,
                &wire::ManifestFileArgs {
                    path: Some(path),
                    size: file.size,
                    hash: Some(&hash),
                },
            )
        })
        .collect();
    let files = builder.create_vector(&files);
    let chunks: Vec<wire::ManifestChunk> = piece
        .chunks
        .iter()
        .map(|chunk| {
            wire::ManifestChunk::new(
                chunk.file_index,
                chunk.size,
                chunk.offset,
                &wire::Hash32(chunk.hash),
            )
        })
        .collect();
    let chunks = builder.create_vector(&chunks);
    let root = wire::ManifestPiece::create(
        &mut builder,
        &wire::ManifestPieceArgs {
            index: piece.index,
            first_file: piece.first_file,
            files: Some(files),
            first_chunk: piece.first_chunk,
            chunks: Some(chunks),
        },
    );
    builder.finish_minimal(root);
    builder.finished_data().to_vec()
}

/// Decodes a manifest piece and checks its paths; whether it belongs to a state is
/// [`MetaManifest::check_piece`]'s job.
pub fn decode_manifest_piece(
    bytes: &[u8],
    limits: &ManifestLimits,
) -> Result<ManifestPiece, DecodeError> {
    check_decode_limit("piece_bytes_max", bytes.len(), limits.piece_bytes_max)?;
    let table =
        flatbuffers::root_with_opts::<wire::ManifestPiece>(&limits.verifier_options(), bytes)?;
    let file_tables = table.files().unwrap_or_default();
    let chunk_structs = table.chunks().unwrap_or_default();
    check_decode_limit(
        "piece_entries_max",
        file_tables.len() + chunk_structs.len(),
        limits.piece_entries_max,
    )?;
    let mut files = Vec::with_capacity(file_tables.len());
    for file in file_tables.iter() {
        let path = file.path();
        validate_path(path, limits)?;
        files.push(FileEntry {
            path: path.to_owned(),
            size: file.size(),
            hash: file.hash().0,
        });
    }
    let chunks = chunk_structs
        .iter()
        .map(|chunk| ChunkEntry {
            file_index: chunk.file_index(),
            offset: chunk.offset(),
            size: chunk.size(),
            hash: chunk.hash().0,
        })
        .collect();
    Ok(ManifestPiece {
        index: table.index(),
        first_file: table.first_file(),
        first_chunk: table.first_chunk(),
        files,
        chunks,
    })
}

#[cfg(test)]
mod tests;
