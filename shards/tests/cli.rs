//! The `icn` binary, driven as an operator would: exit codes, files written, output printed.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const ICN: &str = env!("CARGO_BIN_EXE_icn");

/// The longest any one command in these tests may run before it counts as hung.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A fresh folder under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("icn-cli-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `icn args...` to completion, killing it if it outlives [`COMMAND_TIMEOUT`].
fn icn(args: &[&str]) -> Output {
    let child = Command::new(ICN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_bounded(child, COMMAND_TIMEOUT)
}

fn wait_bounded(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while matches!(child.try_wait(), Ok(None)) {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("icn ran longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path_arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn keygen_writes_a_private_key_and_refuses_to_overwrite() {
    let dir = TempDir::new("keygen");
    let out = dir.0.join("id");
    let first = icn(&["keygen", "--out", path_arg(&out)]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    let node_id = text(&first.stdout).trim().to_string();
    assert_eq!(node_id.len(), 64, "prints the node id in hex: {node_id}");
    let mode = std::fs::metadata(out.join("node_key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let key_before = std::fs::read(out.join("node_key.pem")).unwrap();

    let second = icn(&["keygen", "--out", path_arg(&out)]);
    assert_eq!(second.status.code(), Some(1));
    assert!(text(&second.stderr).contains("refusing to overwrite"));
    assert_eq!(std::fs::read(out.join("node_key.pem")).unwrap(), key_before);

    let usage = icn(&["keygen"]);
    assert_eq!(
        usage.status.code(),
        Some(2),
        "missing --out is a usage error"
    );
}

#[test]
fn registry_changes_produce_versions_and_hand_out_the_subnet_key() {
    let dir = TempDir::new("registry");
    let registry = dir.0.join("registry.toml");
    let create = icn(&[
        "registry",
        "create",
        "--dir",
        path_arg(&dir.0),
        "--nodes",
        "2",
    ]);
    assert_eq!(create.status.code(), Some(0), "{}", text(&create.stderr));
    assert!(text(&create.stdout).contains("registry version 1"));
    assert!(text(&create.stdout).contains("subnet local (2 nodes)"));
    // One subnet key, its secret in every node's folder and its public half in the registry.
    let key_file = |node_dir: &Path| node_dir.join("subnet_bls_key.pem");
    let node0_key = std::fs::read_to_string(key_file(&dir.0.join("node-0"))).unwrap();
    assert_eq!(
        std::fs::read_to_string(key_file(&dir.0.join("node-1"))).unwrap(),
        node0_key
    );
    let mode = std::fs::metadata(key_file(&dir.0.join("node-0")))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let toml = std::fs::read_to_string(&registry).unwrap();
    assert!(
        toml.contains("public_key = \"308182301d06"),
        "a DER BLS key: {toml}"
    );

    let extra = dir.0.join("extra");
    let keygen = icn(&["keygen", "--out", path_arg(&extra)]);
    let extra_id = text(&keygen.stdout).trim().to_string();
    let add = icn(&[
        "registry",
        "add",
        "--registry",
        path_arg(&registry),
        "--node-dir",
        path_arg(&extra),
        "--quic",
        "127.0.0.1:5100",
        "--tcp",
        "127.0.0.1:5101",
    ]);
    assert_eq!(add.status.code(), Some(0), "{}", text(&add.stderr));
    assert!(text(&add.stdout).contains("registry version 2: added"));
    // The joining node's folder sits beside node-<i>/: the key is copied from there.
    assert!(
        text(&add.stdout).contains("subnet key: copied"),
        "{}",
        text(&add.stdout)
    );
    assert_eq!(
        std::fs::read_to_string(key_file(&extra)).unwrap(),
        node0_key
    );

    let again = icn(&[
        "registry",
        "add",
        "--registry",
        path_arg(&registry),
        "--node-dir",
        path_arg(&extra),
        "--quic",
        "127.0.0.1:5100",
        "--tcp",
        "127.0.0.1:5101",
    ]);
    assert_eq!(again.status.code(), Some(1), "a duplicate node is refused");
    assert!(
        text(&again.stderr).contains("duplicate"),
        "{}",
        text(&again.stderr)
    );

    let remove = icn(&[
        "registry",
        "remove",
        "--registry",
        path_arg(&registry),
        "--node",
        &extra_id[..12],
    ]);
    assert_eq!(remove.status.code(), Some(0), "{}", text(&remove.stderr));
    assert!(text(&remove.stdout).contains("registry version 3: removed"));

    let show = icn(&["registry", "show", "--registry", path_arg(&registry)]);
    let shown = text(&show.stdout);
    assert!(shown.starts_with("registry version 3"), "{shown}");
    assert!(shown.contains("subnet local (2 nodes)"), "{shown}");
    assert!(!shown.contains(&extra_id), "{shown}");

    let missing = icn(&[
        "registry",
        "remove",
        "--registry",
        path_arg(&registry),
        "--node",
        &extra_id,
    ]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("is not in the registry"));
    // A node whose folder has no keyed sibling is added with a line saying what to copy.
    let apart = TempDir::new("registry-apart");
    let lone = apart.0.join("lone");
    assert!(icn(&["keygen", "--out", path_arg(&lone)]).status.success());
    let lone_add = icn(&[
        "registry",
        "add",
        "--registry",
        path_arg(&registry),
        "--node-dir",
        path_arg(&lone),
        "--quic",
        "127.0.0.1:5110",
        "--tcp",
        "127.0.0.1:5111",
    ]);
    assert_eq!(
        lone_add.status.code(),
        Some(0),
        "{}",
        text(&lone_add.stderr)
    );
    let said = text(&lone_add.stdout);
    assert!(
        said.contains("registry version 4: added")
            && said.contains("subnet_bls_key.pem is missing")
            && said.contains("install -m 600"),
        "{said}"
    );
    assert!(!key_file(&lone).exists());
}

#[test]
fn config_check_accepts_the_shipped_profiles_and_names_a_bad_knob() {
    let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tuning/profiles");
    let mut checked = 0;
    for entry in std::fs::read_dir(&profiles).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "toml") {
            let check = icn(&["config", "check", path_arg(&path)]);
            assert_eq!(check.status.code(), Some(0), "{}", text(&check.stderr));
            assert!(text(&check.stdout).contains("valid"));
            checked += 1;
        }
    }
    assert!(checked >= 3, "default, lan and wan at least");

    let dir = TempDir::new("config");
    let bad = dir.0.join("bad.toml");
    std::fs::write(&bad, "[quic]\nidle_timeout_ms = 5\n").unwrap();
    let check = icn(&["config", "check", path_arg(&bad)]);
    assert_eq!(check.status.code(), Some(1));
    assert!(
        text(&check.stderr).contains("quic.idle_timeout_ms"),
        "{}",
        text(&check.stderr)
    );
    assert_eq!(icn(&["config", "check"]).status.code(), Some(2));
}

/// MB/s of each status line (`[   1s]   12.3 MB/s ...`).
fn status_rates(stdout: &str) -> Vec<f64> {
    stdout
        .lines()
        .filter(|line| line.starts_with('[') && line.contains("MB/s"))
        .filter_map(|line| {
            let before = line.split("MB/s").next()?;
            before.split_whitespace().last()?.parse().ok()
        })
        .collect()
}

#[test]
fn demo_moves_data_and_ends_by_itself() {
    let started = Instant::now();
    let demo = icn(&["demo", "--seconds", "3", "--message-bytes", "16384"]);
    let stdout = text(&demo.stdout);
    assert_eq!(
        demo.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&demo.stderr)
    );
    let rates = status_rates(&stdout);
    assert!(rates.len() >= 2, "status lines: {stdout}");
    assert!(
        rates.iter().filter(|rate| **rate > 0.0).count() >= 2,
        "{stdout}"
    );
    assert!(stdout.contains("peers 2/2"), "{stdout}");
    assert!(started.elapsed() < COMMAND_TIMEOUT);
}

#[test]
fn subnet_gossips_the_workload_to_every_node() {
    let started = Instant::now();
    let subnet = icn(&[
        "subnet",
        "--nodes",
        "3",
        "--seconds",
        "4",
        "--block-interval-ms",
        "200",
        "--block-bytes",
        "3000000",
        "--ingress-per-s",
        "50",
    ]);
    let stdout = text(&subnet.stdout);
    assert_eq!(
        subnet.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&subnet.stderr)
    );
    let rates = status_rates(&stdout);
    assert_eq!(rates.len(), 4, "status lines: {stdout}");
    // 3 MB blocks (chunked) five times a second to two receivers each: far above 1 MB/s once
    // the mesh is up.
    assert!(rates.iter().any(|rate| *rate > 1.0), "{stdout}");
    assert!(stdout.contains("peers 6/6"), "{stdout}");
    for kind in ["block", "notarization", "ingress"] {
        assert!(stdout.contains(kind), "no {kind} deliveries: {stdout}");
    }
    assert!(started.elapsed() < COMMAND_TIMEOUT);
}

#[test]
fn node_adopts_registry_versions_and_stops_within_a_second_of_sigterm() {
    let dir = TempDir::new("node");
    let create = icn(&[
        "registry",
        "create",
        "--dir",
        path_arg(&dir.0),
        "--nodes",
        "2",
    ]);
    assert_eq!(create.status.code(), Some(0), "{}", text(&create.stderr));
    let registry = dir.0.join("registry.toml");
    let other_id = std::fs::read_to_string(dir.0.join("registry.toml"))
        .unwrap()
        .lines()
        .filter_map(|line| line.strip_prefix("node_id = \""))
        .nth(1)
        .unwrap()
        .trim_end_matches('"')
        .to_string();
    std::fs::write(
        dir.0.join("fast.toml"),
        "[registry]\npoll_interval_ms = 100\n",
    )
    .unwrap();
    let config = dir.0.join("node.toml");
    std::fs::write(
        &config,
        "identity_dir = \"node-0\"\nregistry_path = \"registry.toml\"\nsubnet_id = \"local\"\n\
         transport = \"quic\"\ntuning_profile = \"fast.toml\"\n",
    )
    .unwrap();
    let mut node = Command::new(ICN)
        .args(["node", "--config", path_arg(&config)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = node.stdout.take().unwrap();
    let (line_tx, line_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = line_tx.send(line);
        }
    });
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match line_rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    };
    let ready = wait_for(" ready: ");
    let removed = ready && {
        let remove = icn(&[
            "registry",
            "remove",
            "--registry",
            path_arg(&registry),
            "--node",
            &other_id,
        ]);
        remove.status.success() && wait_for("registry version 2 adopted")
    };
    if !removed {
        let _ = node.kill();
        let output = node.wait_with_output().unwrap();
        panic!(
            "ready {ready}, removal adopted {removed}: {}",
            text(&output.stderr)
        );
    }

    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    unsafe {
        libc::kill(node.id() as libc::pid_t, libc::SIGTERM);
    }
    let signalled = Instant::now();
    let output = wait_bounded(node, Duration::from_secs(10));
    let took = signalled.elapsed();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(took < Duration::from_secs(1), "stopped after {took:?}");
}

#[test]
fn node_config_errors_name_the_problem() {
    let dir = TempDir::new("node-config");
    let config = dir.0.join("node.toml");
    std::fs::write(&config, "identity_dir = \"x\"\nlisten = 1\n").unwrap();
    let run = icn(&["node", "--config", path_arg(&config)]);
    assert_eq!(run.status.code(), Some(1));
    assert!(
        text(&run.stderr).contains("listen"),
        "{}",
        text(&run.stderr)
    );
}

/// Options of a synthetic state small enough for a CLI test: 4 files of 3 chunks of 64 KiB and
/// 40 small files grouped into shared chunks.
const SYNTH_OPTIONS: [&str; 12] = [
    "--seed",
    "3",
    "--large-files",
    "4",
    "--large-file-bytes",
    "196608",
    "--small-files",
    "40",
    "--small-file-bytes-max",
    "4096",
    "--changed-permille",
    "300",
];

fn synth(dir: &Path, height: &str, extra: &[&str]) -> Output {
    let mut args = vec!["state", "synth", path_arg(dir), "--height", height];
    args.extend(SYNTH_OPTIONS);
    args.extend(extra);
    icn(&args)
}

#[test]
fn state_manifest_prints_the_same_manifest_for_the_same_synthetic_state() {
    let dir = TempDir::new("state-manifest");
    let (a, b) = (dir.0.join("a"), dir.0.join("b"));
    for target in [&a, &b] {
        let out = synth(target, "2", &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("files 44"),
            "{}",
            text(&out.stdout)
        );
    }
    let refused = synth(&a, "2", &[]);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "a non-empty directory is refused"
    );

    let manifest =
        |dir: &Path| icn(&["state", "manifest", path_arg(dir), "--chunk-bytes", "65536"]);
    let (out_a, out_b) = (manifest(&a), manifest(&b));
    assert_eq!(out_a.status.code(), Some(0), "{}", text(&out_a.stderr));
    let printed = text(&out_a.stdout);
    assert_eq!(printed, text(&out_b.stdout));
    let lines: Vec<&str> = printed.lines().collect();
    let root = lines[0].strip_prefix("root ").expect("root line first");
    assert_eq!(root.len(), 64);
    let counts: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&counts[..2], ["files", "44"]);
    let chunks: usize = counts[3].parse().unwrap();
    assert!(chunks > 12, "4 x 3 large chunks and some groups: {chunks}");
    assert_eq!(lines.len(), 2 + 44 + chunks);
    assert!(lines[2].starts_with("file 0 196608 ") && lines[2].ends_with("large/00/00000000.bin"));
    assert!(lines[2 + 44].starts_with("chunk 0 file 0 offset 0 size 65536 "));

    // Another height of the same options has another root.
    let c = dir.0.join("c");
    let out = synth(&c, "3", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let other = text(&manifest(&c).stdout);
    assert_ne!(other.lines().next(), Some(lines[0]));

    let bad_chunk = icn(&["state", "manifest", path_arg(&a), "--chunk-bytes", "100"]);
    assert_eq!(bad_chunk.status.code(), Some(2));
    std::os::unix::fs::symlink(a.join("large"), a.join("link")).unwrap();
    let symlinked = manifest(&a);
    assert_eq!(symlinked.status.code(), Some(1));
    assert!(
        text(&symlinked.stderr).contains("symlink"),
        "{}",
        text(&symlinked.stderr)
    );
}

#[test]
fn state_verify_passes_a_checkpoint_and_lists_what_differs() {
    let dir = TempDir::new("state-verify");
    let store = dir.0.join("store");
    for height in ["1", "2"] {
        let out = synth(&store, height, &["--store", "--chunk-bytes", "65536"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert!(text(&out.stdout).starts_with(&format!("checkpoint {height} root ")));
    }
    let checkpoint = store.join("checkpoints/00000000000000000002");
    let out = icn(&["state", "verify", path_arg(&checkpoint)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok"), "{}", text(&out.stdout));

    // The root verify prints is the one `state manifest` computes from the files.
    let manifest = icn(&[
        "state",
        "manifest",
        path_arg(&checkpoint.join("state")),
        "--chunk-bytes",
        "65536",
    ]);
    let root = text(&manifest.stdout).lines().next().unwrap().to_string();
    assert!(
        text(&out.stdout).starts_with(&root),
        "{root} vs {}",
        text(&out.stdout)
    );

    let victim = checkpoint.join("state/large/01/00000001.bin");
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[70_000] ^= 0xff;
    std::fs::remove_file(&victim).unwrap();
    std::fs::write(&victim, &bytes).unwrap();
    let out = icn(&["state", "verify", path_arg(&checkpoint)]);
    assert_eq!(out.status.code(), Some(1));
    let listed = text(&out.stdout);
    assert!(
        listed.contains("file large/01/00000001.bin: content hash differs"),
        "{listed}"
    );
    assert!(listed.contains("chunk 4: hash differs"), "{listed}");
    assert!(
        text(&out.stderr).contains("2 differences"),
        "{}",
        text(&out.stderr)
    );
}
