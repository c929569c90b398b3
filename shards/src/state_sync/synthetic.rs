//! Deterministic synthetic states: the reference workload's checkpoints, and the states tests and
//! `icn-bench sync` move around.
//!
//! A state is `large_files` files of `large_file_bytes` (1 MiB chunks, the bulk of the bytes) and
//! `small_files` files of up to `small_file_bytes_max` (grouped into shared chunks), spread over a
//! few subdirectories. Each file has a version: the last height at or below the state's height at
//! which it changed, where whether file `i` changes at height `h` is a pure function of
//! `(seed, i, h)` (about `changed_per_checkpoint_permille` per thousand files change at each
//! height). A file's bytes are a PRNG stream keyed by `(seed, i, version)`. So every node builds
//! exactly the same state for a height without talking to anyone, and the files that differ
//! between two heights are known in advance (what incremental-sync tests assert on).
//!
//! Bytes come from wyrand, one 64-bit step per 8 bytes into a 1 MiB buffer, so writing a state
//! costs about as much as the page cache takes to absorb it.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Subdirectories the large files are spread over.
const LARGE_FILE_DIRS: u32 = 4;
/// Subdirectories the small files are spread over.
const SMALL_FILE_DIRS: u32 = 16;
/// One small file in this many is empty.
pub const EMPTY_FILE_ONE_IN: u64 = 16;
/// Bytes generated per write.
const WRITE_BUFFER_BYTES: usize = 1 << 20;
/// Domain constants that keep the PRNG keys of sizes, changes and contents apart.
const KEY_SIZE: u64 = 0x5349_5a45;
const KEY_CHANGE: u64 = 0x4348_4e47;
const KEY_CONTENT: u64 = 0x434f_4e54;

/// The shape of a synthetic state and how fast it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyntheticSpec {
    pub seed: u64,
    pub large_files: u32,
    pub large_file_bytes: u64,
    pub small_files: u32,
    /// A small file's length is drawn once per file: empty for one in
    /// [`EMPTY_FILE_ONE_IN`] (real states have empty files, and they are in no chunk),
    /// otherwise uniform in `1 ..= small_file_bytes_max`.
    pub small_file_bytes_max: u64,
    /// Per thousand files, how many change at each height.
    pub changed_per_checkpoint_permille: u32,
}

impl Default for SyntheticSpec {
    /// 64 MiB of large files and 256 small ones up to 16 KiB, 5% changing per height: a
    /// state that builds in well under a second, for demos and quick runs.
    fn default() -> Self {
        SyntheticSpec {
            seed: 0,
            large_files: 16,
            large_file_bytes: 4 << 20,
            small_files: 256,
            small_file_bytes_max: 16 << 10,
            changed_per_checkpoint_permille: 50,
        }
    }
}

impl SyntheticSpec {
    pub fn file_count(&self) -> u32 {
        self.large_files + self.small_files
    }

    /// The path of file `index`, relative to the state directory.
    pub fn file_path(&self, index: u32) -> String {
        if index < self.large_files {
            format!("large/{:02}/{index:08}.bin", index % LARGE_FILE_DIRS)
        } else {
            let small = index - self.large_files;
            format!("small/{:02}/{small:08}.bin", small % SMALL_FILE_DIRS)
        }
    }

    /// The length of file `index` (the same at every height).
    pub fn file_bytes(&self, index: u32) -> u64 {
        if index < self.large_files {
            self.large_file_bytes
        } else {
            let draw = mix(&[self.seed, KEY_SIZE, u64::from(index)]);
            if draw.is_multiple_of(EMPTY_FILE_ONE_IN) || self.small_file_bytes_max == 0 {
                return 0;
            }
            1 + (draw / EMPTY_FILE_ONE_IN) % self.small_file_bytes_max
        }
    }

    /// Total length of the files of a state.
    pub fn state_bytes(&self) -> u64 {
        (0..self.file_count())
            .map(|index| self.file_bytes(index))
            .sum()
    }

    /// Whether file `index` changes at `height` (every file is written at height 0).
    pub fn changes_at(&self, index: u32, height: u64) -> bool {
        if height == 0 {
            return true;
        }
        let draw = mix(&[self.seed, KEY_CHANGE, u64::from(index), height]);
        draw % 1000 < u64::from(self.changed_per_checkpoint_permille)
    }

    /// The version of file `index` at `height`: the last height at or below it at which the file
    /// changed. Walks down from `height`; with p per thousand changing per height the walk takes
    /// 1000/p steps on average, and stops at 0 when nothing changes.
    pub fn file_version(&self, index: u32, height: u64) -> u64 {
        if self.changed_per_checkpoint_permille == 0 {
            return 0;
        }
        let mut version = height;
        while !self.changes_at(index, version) {
            version -= 1;
        }
        version
    }

    /// The files whose content differs between the states at heights `a` and `b`.
    pub fn changed_between(&self, a: u64, b: u64) -> Vec<u32> {
        (0..self.file_count())
            .filter(|&index| self.file_version(index, a) != self.file_version(index, b))
            .collect()
    }
}

/// Writes the state at `height` into `dir` (subdirectories created as needed). A file whose
/// version is the same at `previous`'s height is hardlinked from `previous`'s directory (which
/// must hold the same spec's state at that height) instead of being written again, which is how
/// a checkpoint carries unchanged files over and what lets its manifest reuse their hashes.
pub fn write_state(
    dir: &Path,
    spec: &SyntheticSpec,
    height: u64,
    previous: Option<(&Path, u64)>,
) -> io::Result<()> {
    let mut buffer = vec![0u8; WRITE_BUFFER_BYTES];
    for index in 0..spec.file_count() {
        let relative = spec.file_path(index);
        let path = join(dir, &relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let version = spec.file_version(index, height);
        if let Some((previous_dir, previous_height)) = previous {
            if spec.file_version(index, previous_height) == version {
                let source = join(previous_dir, &relative);
                let same_length = fs::symlink_metadata(&source)
                    .is_ok_and(|meta| meta.is_file() && meta.len() == spec.file_bytes(index));
                if same_length {
                    fs::hard_link(&source, &path)?;
                    continue;
                }
            }
        }
        write_file(&path, spec, index, version, &mut buffer)?;
    }
    Ok(())
}

/// Writes file `index` at `version`: its PRNG stream, `file_bytes(index)` long.
fn write_file(
    path: &Path,
    spec: &SyntheticSpec,
    index: u32,
    version: u64,
    buffer: &mut [u8],
) -> io::Result<()> {
    let mut file = File::create(path)?;
    let mut rng = WyRand(mix(&[spec.seed, KEY_CONTENT, u64::from(index), version]));
    let mut left = spec.file_bytes(index);
    while left > 0 {
        let len = (buffer.len() as u64).min(left) as usize;
        rng.fill(&mut buffer[..len]);
        file.write_all(&buffer[..len])?;
        left -= len as u64;
    }
    Ok(())
}

fn join(dir: &Path, relative: &str) -> PathBuf {
    let mut path = dir.to_path_buf();
    path.extend(relative.split('/'));
    path
}

/// wyrand: one multiply per 64 bits, statistically good enough for test data and far faster
/// than the disk.
struct WyRand(u64);

impl WyRand {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let product = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        (product >> 64) as u64 ^ product as u64
    }

    fn fill(&mut self, bytes: &mut [u8]) {
        let mut words = bytes.chunks_exact_mut(8);
        for word in &mut words {
            word.copy_from_slice(&self.next().to_le_bytes());
        }
        let tail = words.into_remainder();
        if !tail.is_empty() {
            let last = self.next().to_le_bytes();
            tail.copy_from_slice(&last[..tail.len()]);
        }
    }
}

/// Folds several words into one well-mixed key (splitmix64's finalizer after each word).
fn mix(words: &[u64]) -> u64 {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for &word in words {
        state = splitmix(state ^ word);
    }
    state
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests;
