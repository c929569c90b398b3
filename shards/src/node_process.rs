//! Starting and stopping `icn node` processes the way an operator does (one config file per
//! node beside its identity folder, output to a log file), for the process-level tests in
//! `tests/` and the `http` suite of `icn-bench`. Nothing here is used by the node itself.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use icn_engine::registry::SubnetId;

use crate::node_config::{NodeConfig, TransportKind};

/// Node `index`'s identity folder under a subnet folder (`icn subnet`'s layout).
pub fn identity_dir(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("node-{index}"))
}

/// Node `index`'s log file (stdout and stderr) under a subnet folder.
pub fn log_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("node-{index}.log"))
}

/// Writes node `index`'s config (QUIC, the subnet's registry, `tuning` as its profile, state
/// under its identity folder) and starts `exe node --config` on it.
pub fn spawn_node(
    exe: &Path,
    dir: &Path,
    index: usize,
    subnet_id: &SubnetId,
    tuning: &Path,
) -> io::Result<Child> {
    let identity_dir = identity_dir(dir, index);
    let config = NodeConfig {
        identity_dir: identity_dir.clone(),
        registry_path: dir.join("registry.toml"),
        subnet_id: subnet_id.clone(),
        transport: TransportKind::Quic,
        tuning_profile: Some(tuning.to_path_buf()),
        workload: None,
        state_dir: identity_dir.join("state"),
        state: None,
    };
    let path = dir.join(format!("node-{index}.toml"));
    std::fs::write(&path, config.to_toml())?;
    let log = File::create(log_path(dir, index))?;
    let log_err = log.try_clone()?;
    Command::new(exe)
        .arg("node")
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
}

/// Stops node processes: SIGTERM to all, then each gets until `timeout` (from the signal) to
/// exit before it is killed; every child is reaped.
pub fn stop_nodes(children: &mut [Child], timeout: Duration) {
    for child in children.iter() {
        // SAFETY: kill(2) on a child we spawned and have not reaped (its pid cannot have been
        // reused); no memory is involved.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + timeout;
    for child in children.iter_mut() {
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}
