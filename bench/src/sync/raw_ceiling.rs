//! `raw-ceiling`: the same bytes copied locally by one thread, the most any sync of this state
//! can reach on this machine: every chunk read sequentially from the source files (`pread`),
//! hashed with `chunk_hash` and checked against the manifest, and written into files created
//! at full length in a fresh directory as icn's syncing node writes them (aligned pieces with
//! `O_DIRECT`, the rest with `pwrite`; see `state_sync::direct`), and made durable at the end
//! as icn does (one `syncfs`, `store::flush_tree`). (Until 2026-12-07 it wrote everything with
//! `pwrite` and fsynced every file, which icn's direct writes and syncfs outran.) No network,
//! no encryption, no concurrency: the ceiling is disk and SHA-256, not a transport.

use std::collections::BTreeMap;

use icn_codecs::state::chunk_hash;
use icn_shards::state_sync::direct::DirectScratch;
use icn_shards::state_sync::store::flush_tree;
use serde_json::{json, Value};

use super::state::{self, RunMeter};
use super::{thread_cores, Run, SyncCase, SyncState, SyncSystem};
use crate::host::pin_current_thread;

pub struct RawCeiling;

impl SyncSystem for RawCeiling {
    fn name(&self) -> &'static str {
        "raw-ceiling"
    }

    fn run(&self, state: &SyncState, _case: SyncCase) -> Result<Run, String> {
        let destination = state.destination()?;
        let source = state.template_state_dir();
        let core = thread_cores(1)[0];
        let deadline = std::time::Instant::now() + state::run_timeout(state.state_bytes());
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    pin_current_thread(core);
                    let manifest = &*state.manifest;
                    let meter = RunMeter::start();
                    let mut errors = 0u64;
                    let mut first_error = None;
                    let mut chunks = 0u64;
                    let mut fsync_s = None;
                    let mut buffer = Vec::with_capacity(state.chunk_bytes as usize);
                    let mut direct = DirectScratch::new(state.chunk_bytes as usize);
                    let mut fail = |error: String| {
                        errors += 1;
                        first_error.get_or_insert(error);
                    };
                    match state::create_files(destination.path(), manifest) {
                        Err(error) => fail(format!("creating the files: {error}")),
                        Ok(()) => {
                            for index in 0..state.chunk_count() {
                                if std::time::Instant::now() >= deadline {
                                    fail(format!("deadline passed at chunk {index}"));
                                    break;
                                }
                                let copied =
                                    state::read_chunk_into(&source, manifest, index, &mut buffer)
                                        .map_err(|e| format!("reading chunk {index}: {e}"))
                                        .and_then(|()| {
                                            if chunk_hash(&buffer)
                                                == manifest.chunks[index as usize].hash
                                            {
                                                Ok(())
                                            } else {
                                                Err(format!(
                                                    "chunk {index} does not match the manifest"
                                                ))
                                            }
                                        })
                                        .and_then(|()| {
                                            state::write_chunk_like_icn(
                                                destination.path(),
                                                manifest,
                                                index,
                                                &buffer,
                                                &mut direct,
                                            )
                                            .map_err(|e| format!("writing chunk {index}: {e}"))
                                        });
                                match copied {
                                    Ok(()) => chunks += 1,
                                    Err(error) => fail(error),
                                }
                            }
                            let flush = std::time::Instant::now();
                            if let Err(error) = flush_tree(destination.path()) {
                                fail(format!("fsync: {error}"));
                            }
                            fsync_s = Some(flush.elapsed().as_secs_f64());
                        }
                    }
                    let bytes = if errors == 0 { state.state_bytes() } else { 0 };
                    let mut run = meter.finish(bytes, chunks, errors, first_error);
                    if let Some(seconds) = fsync_s {
                        run.measurement.extra.insert("fsync_s".into(), seconds);
                    }
                    run
                })
                .join()
                .map_err(|_| "raw-ceiling thread panicked".to_string())
        })
    }

    fn config(&self, state: &SyncState) -> BTreeMap<String, Value> {
        BTreeMap::from([
            ("threads".into(), json!(1)),
            (
                "pattern".into(),
                json!("per chunk in manifest order: pread, chunk_hash, compare, write as icn does (aligned pieces O_DIRECT, the rest pwrite); one syncfs at the end, as icn"),
            ),
            ("window_bytes".into(), json!(state.chunk_bytes)),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_ceiling_copies_a_tiny_state() {
        let state = SyncState::build(state::tests::tiny_spec(), 1 << 20).unwrap();
        let run = RawCeiling.run(&state, SyncCase { peers: 1 }).unwrap();
        let measurement = &run.measurement;
        assert_eq!(measurement.errors, 0, "{:?}", measurement.first_error);
        assert_eq!(measurement.bytes, state.state_bytes());
        assert_eq!(measurement.ops, u64::from(state.chunk_count()));
    }
}
