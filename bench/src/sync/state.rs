//! The state every system of the sync suite moves, the directories runs write into, and the
//! per-run meter (wall clock, process CPU, resident-memory high-water mark).
//!
//! One synthetic state is built per invocation into a checkpoint store in a temporary directory
//! (`state_sync::synthetic::write_state` + `CheckpointStore::create`, so its manifest and root
//! hash are exactly what an icn node would serve). Source nodes get hardlinked copies of that
//! store (checkpoint files are never written in place, so sharing inodes is safe and costs no
//! disk); every run writes into a fresh destination directory that is deleted after it.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use icn_codecs::state::{Hash, Manifest, Segment};
use icn_shards::state_sync::direct::{DirectScratch, DirectWriter};
use icn_shards::state_sync::store::CheckpointStore;
use icn_shards::state_sync::synthetic::{write_state, SyntheticSpec};

use crate::transport::load::{Measurement, PhaseStart, WorkerOutcome};

/// Height of the one checkpoint the suite builds (any height works; the sync target is it).
pub const STATE_HEIGHT: u64 = 1;

/// Checkpoints the stores keep. The sources hold one; the syncing node adopts one.
pub const CHECKPOINTS_KEPT: usize = 2;

/// A directory removed (with everything under it) when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory under the system's temporary directory.
    pub fn new(label: &str) -> io::Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "icn-bench-sync-{label}-{}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The state of one invocation: its checkpoint store, manifest and root hash, and the source
/// copies made so far. Everything here is `Send + Sync` (the manifest is shared by `Arc`), so
/// baseline threads can read it directly.
pub struct SyncState {
    /// Holds the template store and every copy; removed when the state is dropped.
    dir: TempDir,
    template_root: PathBuf,
    /// Where the checkpoint's files lie inside a store, relative to the store's root.
    state_relative: PathBuf,
    pub spec: SyntheticSpec,
    pub chunk_bytes: u32,
    pub height: u64,
    pub root_hash: Hash,
    pub manifest: Arc<Manifest>,
    /// Seconds the state took to build (write, hash, fsync); reported, never measured against.
    pub build_s: f64,
    sources: std::sync::Mutex<Vec<PathBuf>>,
    next_destination: std::sync::atomic::AtomicU64,
}

impl SyncState {
    /// Builds the state of `spec` with chunks of `chunk_bytes` in a new temporary directory.
    pub fn build(spec: SyntheticSpec, chunk_bytes: u32) -> Result<SyncState, String> {
        let started = Instant::now();
        let dir = TempDir::new("state").map_err(|e| format!("temporary directory: {e}"))?;
        let template_root = dir.path().join("template");
        let mut store = CheckpointStore::open(&template_root, chunk_bytes, CHECKPOINTS_KEPT)
            .map_err(|e| format!("opening the template store: {e}"))?;
        let checkpoint = store
            .create(STATE_HEIGHT, |out, _| {
                write_state(out, &spec, STATE_HEIGHT, None)
            })
            .map_err(|e| format!("building the synthetic state: {e}"))?;
        let state_relative = checkpoint
            .dir
            .strip_prefix(&template_root)
            .map_err(|_| "checkpoint outside its store".to_string())?
            .to_path_buf();
        Ok(SyncState {
            template_root,
            state_relative,
            spec,
            chunk_bytes,
            height: STATE_HEIGHT,
            root_hash: checkpoint.root_hash,
            manifest: Arc::new(checkpoint.manifest.clone()),
            build_s: started.elapsed().as_secs_f64(),
            sources: std::sync::Mutex::new(Vec::new()),
            next_destination: std::sync::atomic::AtomicU64::new(0),
            dir,
        })
    }

    /// Total bytes of the state's files: what a completed sync adopts.
    pub fn state_bytes(&self) -> u64 {
        self.manifest.state_bytes()
    }

    pub fn chunk_count(&self) -> u32 {
        self.manifest.chunks.len() as u32
    }

    /// The checkpoint's files in the template store (the raw ceiling reads these).
    pub fn template_state_dir(&self) -> PathBuf {
        self.template_root.join(&self.state_relative)
    }

    /// Roots of the first `count` source stores: hardlinked copies of the template, made on
    /// first use and kept for the whole invocation (sources only read them).
    pub fn source_stores(&self, count: usize) -> Result<Vec<PathBuf>, String> {
        let mut sources = self
            .sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while sources.len() < count {
            let root = self.dir.path().join(format!("source-{}", sources.len()));
            link_copy(&self.template_root, &root)
                .map_err(|e| format!("copying the store for a source: {e}"))?;
            sources.push(root);
        }
        Ok(sources[..count].to_vec())
    }

    /// The checkpoint's files inside a source store made by [`SyncState::source_stores`].
    pub fn state_dir_in(&self, store_root: &Path) -> PathBuf {
        store_root.join(&self.state_relative)
    }

    /// A new, empty directory for one run's destination; deleted when the guard drops.
    pub fn destination(&self) -> Result<TempDir, String> {
        let n = self
            .next_destination
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.dir.path().join(format!("destination-{n}"));
        fs::create_dir_all(&path).map_err(|e| format!("destination directory: {e}"))?;
        Ok(TempDir(path))
    }
}

/// Copies a directory tree, hardlinking its files.
fn link_copy(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            link_copy(&entry.path(), &target)?;
        } else {
            fs::hard_link(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Where file `index` of `manifest` lies under `base` (manifest paths are `/`-separated and were
/// validated when the manifest was built or decoded).
pub fn file_path(base: &Path, manifest: &Manifest, index: u32) -> PathBuf {
    let mut path = base.to_path_buf();
    path.extend(manifest.files[index as usize].path.split('/'));
    path
}

/// Creates every file of `manifest` under `base` at its full length (the destination layout
/// both baselines write into with positional writes, as icn's scratch space does).
pub fn create_files(base: &Path, manifest: &Manifest) -> io::Result<()> {
    for index in 0..manifest.files.len() as u32 {
        let path = file_path(base, manifest, index);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        File::create(&path)?.set_len(manifest.files[index as usize].size)?;
    }
    Ok(())
}

/// fsyncs every file of `manifest` under `base`: the baselines end as icn's adoption does, with
/// the state on disk, so every system's time includes the flush.
pub fn sync_files(base: &Path, manifest: &Manifest) -> io::Result<()> {
    for index in 0..manifest.files.len() as u32 {
        File::open(file_path(base, manifest, index))?.sync_all()?;
    }
    Ok(())
}

/// Reads chunk `index` of `manifest` from the files under `base` into `out` (resized to the
/// chunk), one `pread` per segment. An index outside the manifest is an error.
pub fn read_chunk_into(
    base: &Path,
    manifest: &Manifest,
    index: u32,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let segments = segments(manifest, index)?;
    out.resize(manifest.chunks[index as usize].size as usize, 0);
    let mut at = 0usize;
    for segment in segments {
        let len = segment.len as usize;
        File::open(file_path(base, manifest, segment.file_index))?
            .read_exact_at(&mut out[at..at + len], segment.offset)?;
        at += len;
    }
    Ok(())
}

/// Writes chunk `index` (one buffer) as icn's syncing node does: each segment whose offset and
/// length are aligned with `O_DIRECT` through `direct` (icn's `state_sync::direct` write), the
/// rest with `pwrite`.
pub fn write_chunk_like_icn(
    base: &Path,
    manifest: &Manifest,
    index: u32,
    bytes: &[u8],
    direct: &mut DirectScratch,
) -> io::Result<()> {
    let segments = segments(manifest, index)?;
    if bytes.len() as u64 != u64::from(manifest.chunks[index as usize].size) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("chunk {index} of {} bytes", bytes.len()),
        ));
    }
    let mut at = 0usize;
    for segment in segments {
        let len = segment.len as usize;
        let part = &bytes[at..at + len];
        at += len;
        let path = file_path(base, manifest, segment.file_index);
        if DirectWriter::aligned(segment.offset, len) {
            direct.write(&path, segment.offset, part)?;
        } else {
            OpenOptions::new()
                .write(true)
                .open(path)?
                .write_all_at(part, segment.offset)?;
        }
    }
    Ok(())
}

/// Writes chunk `index`, given as consecutive `pieces` (e.g. the buffers a QUIC stream handed
/// out), into the files under `base` with one `pwrite` per (segment, piece) overlap.
pub fn write_chunk_pieces<P: AsRef<[u8]>>(
    base: &Path,
    manifest: &Manifest,
    index: u32,
    pieces: &[P],
) -> io::Result<()> {
    let segments = segments(manifest, index)?;
    let total: usize = pieces.iter().map(|piece| piece.as_ref().len()).sum();
    if total as u64 != u64::from(manifest.chunks[index as usize].size) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("chunk {index} of {total} bytes"),
        ));
    }
    let mut piece_index = 0usize;
    let mut piece_at = 0usize;
    for segment in segments {
        let file =
            OpenOptions::new()
                .write(true)
                .open(file_path(base, manifest, segment.file_index))?;
        let mut offset = segment.offset;
        let mut left = segment.len as usize;
        while left > 0 {
            let piece = pieces[piece_index].as_ref();
            let take = (piece.len() - piece_at).min(left);
            file.write_all_at(&piece[piece_at..piece_at + take], offset)?;
            offset += take as u64;
            left -= take;
            piece_at += take;
            if piece_at == piece.len() {
                piece_index += 1;
                piece_at = 0;
            }
        }
    }
    Ok(())
}

fn segments(manifest: &Manifest, index: u32) -> io::Result<Vec<Segment>> {
    manifest.segments(index).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "chunk {index} is not in the manifest ({} chunks)",
                manifest.chunks.len()
            ),
        )
    })
}

/// Resident memory of the process from /proc/self/status (`VmRSS` or `VmHWM`), in bytes.
fn status_bytes(field: &str) -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    parse_status_kib(&status, field).map(|kib| kib * 1024)
}

fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

extern "C" {
    /// mimalloc's `mi_collect`: frees what the allocator keeps cached and gives purgeable
    /// memory back to the OS.
    fn mi_collect(force: bool);
}

/// Returns the memory earlier runs freed but the allocator kept (icn-bench runs on mimalloc,
/// which caches freed segments for reuse), so that a run's resident-memory rise is its own and
/// not lowered by reusing what an earlier run left resident. In the test binary, which runs on
/// the system allocator, this collects mimalloc's (empty) heap and changes nothing.
fn release_retained_memory() {
    // Links mimalloc's static library into every binary of this crate, so the symbol exists.
    let _ = &mimalloc::MiMalloc;
    // SAFETY: mi_collect takes no pointers and may be called from any thread at any time.
    unsafe { mi_collect(true) };
}

/// Measures one run: wall clock and process CPU (as every suite does), and how far resident
/// memory rose above where it stood at the start. The kernel's high-water mark (`VmHWM`) is
/// reset at the start by writing 5 to /proc/self/clear_refs, so the growth is this run's own
/// peak, not an earlier run's (ru_maxrss never goes down).
pub struct RunMeter {
    phase: PhaseStart,
    rss_start: Option<u64>,
    hwm_reset: bool,
}

impl RunMeter {
    pub fn start() -> RunMeter {
        release_retained_memory();
        let hwm_reset = fs::write("/proc/self/clear_refs", "5").is_ok();
        RunMeter {
            rss_start: status_bytes("VmRSS"),
            hwm_reset,
            phase: PhaseStart::now(),
        }
    }

    /// Closes the run: `bytes` adopted in `ops` chunks, ending now.
    pub fn finish(self, bytes: u64, ops: u64, errors: u64, first_error: Option<String>) -> Run {
        let outcome = WorkerOutcome {
            ops,
            bytes,
            errors,
            first_error,
            finished: Some(Instant::now()),
            ..WorkerOutcome::default()
        };
        let measurement = self.phase.finish(outcome);
        let peak_rss_growth_bytes = match (self.hwm_reset, self.rss_start, status_bytes("VmHWM")) {
            (true, Some(start), Some(peak)) => Some(peak.saturating_sub(start)),
            _ => None,
        };
        let mut measurement = measurement;
        if let Some(start) = self.rss_start {
            measurement
                .extra
                .insert("rss_at_start_bytes".into(), start as f64);
        }
        Run {
            measurement,
            peak_rss_growth_bytes,
        }
    }
}

/// One measured run of a system.
#[derive(Debug)]
pub struct Run {
    pub measurement: Measurement,
    /// Rise of the process's resident memory at its peak during the run over its level at the
    /// start; `None` where the kernel's high-water mark could not be reset.
    pub peak_rss_growth_bytes: Option<u64>,
}

/// How long a run may take before it is abandoned and reported as failed: generous for a
/// loopback sync (10 MB/s is far below every system) but finite.
pub fn run_timeout(state_bytes: u64) -> Duration {
    Duration::from_secs(30) + Duration::from_secs_f64(state_bytes as f64 / 10e6)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use icn_codecs::state::chunk_hash;

    pub(crate) fn tiny_spec() -> SyntheticSpec {
        SyntheticSpec {
            seed: 7,
            large_files: 3,
            large_file_bytes: 1 << 20,
            small_files: 40,
            small_file_bytes_max: 3_000,
            changed_per_checkpoint_permille: 0,
        }
    }

    #[test]
    fn state_copies_and_chunk_round_trip() {
        let state = SyncState::build(tiny_spec(), 1 << 20).unwrap();
        assert_eq!(state.state_bytes(), tiny_spec().state_bytes());
        assert!(state.chunk_count() >= 4, "3 large + a small-file chunk");
        let sources = state.source_stores(2).unwrap();
        assert_eq!(sources.len(), 2);
        let source_dir = state.state_dir_in(&sources[1]);
        let destination = state.destination().unwrap();
        create_files(destination.path(), &state.manifest).unwrap();
        let mut buffer = Vec::new();
        for index in 0..state.chunk_count() {
            read_chunk_into(&source_dir, &state.manifest, index, &mut buffer).unwrap();
            assert_eq!(
                chunk_hash(&buffer),
                state.manifest.chunks[index as usize].hash
            );
            let (a, b) = buffer.split_at(buffer.len() / 3);
            write_chunk_pieces(destination.path(), &state.manifest, index, &[a, b]).unwrap();
        }
        sync_files(destination.path(), &state.manifest).unwrap();
        for index in 0..state.manifest.files.len() as u32 {
            let written = fs::read(file_path(destination.path(), &state.manifest, index)).unwrap();
            let source = fs::read(file_path(&source_dir, &state.manifest, index)).unwrap();
            assert!(written == source, "file {index} differs");
        }
        assert!(read_chunk_into(&source_dir, &state.manifest, 10_000, &mut buffer).is_err());
        assert!(
            write_chunk_pieces(destination.path(), &state.manifest, 0, &[&buffer[..10]]).is_err()
        );
        let path = destination.path().to_path_buf();
        drop(destination);
        assert!(!path.exists(), "destination removed after the run");
    }

    #[test]
    fn meter_reports_growth() {
        assert_eq!(
            parse_status_kib("Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t 1024 kB\n", "VmRSS"),
            Some(1024)
        );
        assert_eq!(parse_status_kib("VmRSS:\n", "VmRSS"), None);
        let meter = RunMeter::start();
        let block = vec![1u8; 32 << 20];
        std::hint::black_box(&block);
        let run = meter.finish(1 << 20, 1, 0, None);
        drop(block);
        assert_eq!(run.measurement.bytes, 1 << 20);
        if let Some(growth) = run.peak_rss_growth_bytes {
            assert!(growth >= 16 << 20, "32 MiB touched, growth {growth}");
        }
    }
}
