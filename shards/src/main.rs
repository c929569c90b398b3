//! `icn`: run a node, a local demo subnet, and the tools around them (keys, registry, config,
//! state manifests).
//!
//! Exit codes: 0 success; 1 the command failed (invalid file, refused change, runtime error);
//! 2 usage error (unknown flag, missing argument: clap's own code).

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use icn_engine::identity::{Identity, CERT_FILE_NAME, KEY_FILE_NAME};
use icn_engine::registry::{NodeRecord, Registry, SubnetId};
use icn_engine::shard::{install_signal_handlers, Shutdown};
use icn_engine::NodeId;
use icn_shards::demo::{self, DemoError, DemoOptions, LOCAL_SUBNET};
use icn_shards::node::run_node;
use icn_shards::node_config::{NodeConfig, TransportKind};
use icn_shards::p2p::WorkloadConfig;
use icn_shards::replica::bls::SECRET_KEY_FILE_NAME;
use icn_shards::replica::keys;
use icn_shards::state_sync::reference::StateWorkloadConfig;
use icn_shards::state_sync::store::{
    compute_manifest, hash_hex, verify_checkpoint, CheckpointStore,
};
use icn_shards::state_sync::synthetic::{write_state, SyntheticSpec};
use icn_shards::subnet::{self, SubnetOptions};
use icn_tuning::{STATE_SYNC_CHECKPOINTS_KEPT_COUNT_DEFAULT, STATE_SYNC_CHUNK_BYTES_DEFAULT};
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// The command failed (clap uses 2 for usage errors).
const EXIT_FAILED: u8 = 1;
/// Usage errors found after parsing (values clap cannot check alone).
const EXIT_USAGE: u8 = 2;

/// Chunk sizes `icn state` accepts: the range of the `state_sync.chunk_bytes` knob.
const CHUNK_BYTES_RANGE: std::ops::RangeInclusive<i64> = (4 << 10)..=(16 << 20);

/// Shortest node id prefix `registry remove` accepts, so a typo cannot match by accident.
const NODE_ID_PREFIX_CHARS_MIN: usize = 8;

#[derive(Parser)]
#[command(
    name = "icn",
    version,
    about = "icn: io_uring thread-per-core networking for replica nodes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a node identity (Ed25519 key, mode 0600, and self-signed certificate).
    Keygen {
        /// Folder to write node_key.pem and node_cert.pem into (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Create, change and show registry files.
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// Check tuning profiles.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run a node until SIGINT/SIGTERM.
    Node {
        /// Node config TOML (identity_dir, registry_path, subnet_id, transport, tuning_profile).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a local subnet on loopback and show data moving between its nodes.
    Demo(DemoArgs),
    /// Run a local N-node subnet gossiping the reference workload (blocks, notarization shares,
    /// ingress), printing artifacts/s, MB/s, delivery latency and peers each second.
    Subnet(SubnetArgs),
    /// Compute and check state manifests, and write synthetic states.
    #[command(subcommand)]
    State(StateCommand),
}

#[derive(Subcommand)]
enum StateCommand {
    /// Print the manifest of a directory of files: root hash, counts and bytes, then one line
    /// per file and one per chunk.
    Manifest {
        /// A plain directory of regular files (symlinks are refused).
        dir: PathBuf,
        #[arg(long, default_value_t = STATE_SYNC_CHUNK_BYTES_DEFAULT as u32,
              value_parser = clap::value_parser!(u32).range(CHUNK_BYTES_RANGE))]
        chunk_bytes: u32,
    },
    /// Check a checkpoint directory (manifest.bin and state/) against its files; exit 1 with
    /// the files and chunks that differ.
    Verify {
        /// A checkpoint directory, such as <store>/checkpoints/<height>.
        dir: PathBuf,
    },
    /// Write a deterministic synthetic state (the same bytes on every machine for the same
    /// height and options), for tests and benchmarks.
    Synth(SynthArgs),
}

#[derive(Args)]
struct SynthArgs {
    /// Where to write the state's files; with --store, the checkpoint store's root instead.
    dir: PathBuf,
    #[arg(long)]
    height: u64,
    #[arg(long, default_value_t = SyntheticSpec::default().seed)]
    seed: u64,
    /// Files of --large-file-bytes each.
    #[arg(long, default_value_t = SyntheticSpec::default().large_files)]
    large_files: u32,
    #[arg(long, default_value_t = SyntheticSpec::default().large_file_bytes)]
    large_file_bytes: u64,
    /// Files of up to --small-file-bytes-max each (some empty), grouped into shared chunks.
    #[arg(long, default_value_t = SyntheticSpec::default().small_files)]
    small_files: u32,
    #[arg(long, default_value_t = SyntheticSpec::default().small_file_bytes_max)]
    small_file_bytes_max: u64,
    /// Per thousand files, how many change at each height.
    #[arg(long, default_value_t = SyntheticSpec::default().changed_per_checkpoint_permille,
          value_parser = clap::value_parser!(u32).range(0..=1000))]
    changed_permille: u32,
    /// The same options' state at --previous-height, to hardlink unchanged files from.
    #[arg(long, requires = "previous_height", conflicts_with = "store")]
    previous: Option<PathBuf>,
    #[arg(long, requires = "previous")]
    previous_height: Option<u64>,
    /// Treat DIR as a checkpoint store and add the state as its checkpoint at --height
    /// (unchanged files hardlinked from its latest checkpoint, manifest computed incrementally).
    #[arg(long)]
    store: bool,
    /// Chunk size of the checkpoint's manifest (with --store).
    #[arg(long, default_value_t = STATE_SYNC_CHUNK_BYTES_DEFAULT as u32,
          value_parser = clap::value_parser!(u32).range(CHUNK_BYTES_RANGE))]
    chunk_bytes: u32,
    /// Checkpoints the store keeps (with --store); older ones are deleted.
    #[arg(long, default_value_t = STATE_SYNC_CHECKPOINTS_KEPT_COUNT_DEFAULT)]
    kept: usize,
}

#[derive(Subcommand)]
enum RegistryCommand {
    /// Generate N identities, one subnet BLS key shared by all of them, and a version-1 registry
    /// of one subnet on 127.0.0.1 that lists the key's public half.
    Create {
        /// Folder for node-<i>/ identities (each with the subnet key file) and registry.toml.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1000))]
        nodes: u16,
        /// First port: node i takes base+4i (QUIC), +1 (TCP), +2 (HTTP), +3 (metrics).
        /// A free range is found when omitted.
        #[arg(long)]
        base_port: Option<u16>,
        #[arg(long, default_value = LOCAL_SUBNET)]
        subnet: String,
    },
    /// Add a node (its identity folder and addresses) as a new registry version. When the subnet
    /// has a key and the folder lacks it, a matching key file in a sibling folder (another
    /// node-<i>/) is copied in; otherwise the command says how to copy it.
    Add {
        #[arg(long)]
        registry: PathBuf,
        /// Identity folder written by `icn keygen`.
        #[arg(long)]
        node_dir: PathBuf,
        #[arg(long)]
        quic: SocketAddr,
        #[arg(long)]
        tcp: SocketAddr,
        #[arg(long)]
        http: Option<SocketAddr>,
        #[arg(long)]
        metrics: Option<SocketAddr>,
        /// Subnet to join; may be left out when the registry has exactly one.
        #[arg(long)]
        subnet: Option<String>,
    },
    /// Remove a node as a new registry version.
    Remove {
        #[arg(long)]
        registry: PathBuf,
        /// Node id in hex, or a unique prefix of at least 8 characters.
        #[arg(long)]
        node: String,
    },
    /// Print a registry.
    Show {
        #[arg(long)]
        registry: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a tuning profile; exit 0 when valid, 1 when not.
    Check { file: PathBuf },
}

#[derive(Args)]
struct DemoArgs {
    /// Node processes to start (the load generator is one more registry member).
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// Stop after this many seconds of load; runs until Ctrl-C when omitted.
    #[arg(long)]
    seconds: Option<u64>,
    #[arg(long, default_value = "quic")]
    transport: TransportKind,
    /// Bytes per request.
    #[arg(long, default_value_t = 64 * 1024)]
    message_bytes: usize,
    /// Requests kept in flight to each node.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// First port of the demo registry; a free range is found when omitted.
    #[arg(long)]
    base_port: Option<u16>,
    /// Tuning profile for the nodes and the load generator.
    #[arg(long)]
    tuning: Option<PathBuf>,
}

#[derive(Args)]
struct SubnetArgs {
    /// Node processes to start, each a registry member running the workload.
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// Stop after this many status lines (seconds); runs until Ctrl-C when omitted.
    #[arg(long)]
    seconds: Option<u64>,
    #[arg(long, default_value = "quic")]
    transport: TransportKind,
    /// One height (one block from its rotating maker) per this many milliseconds.
    #[arg(long, default_value_t = WorkloadConfig::default().block_interval_ms)]
    block_interval_ms: u64,
    /// Bytes per block.
    #[arg(long, default_value_t = WorkloadConfig::default().block_bytes)]
    block_bytes: usize,
    /// Ingress artifacts each node makes per second.
    #[arg(long, default_value_t = WorkloadConfig::default().ingress_per_s)]
    ingress_per_s: u32,
    /// Bytes per ingress artifact.
    #[arg(long, default_value_t = WorkloadConfig::default().ingress_bytes)]
    ingress_bytes: usize,
    /// First port of the subnet's registry; a free range is found when omitted.
    #[arg(long)]
    base_port: Option<u16>,
    /// Tuning profile for the nodes.
    #[arg(long)]
    tuning: Option<PathBuf>,
    /// MiB of reference state every node checkpoints (1 MiB files plus a tail of small files);
    /// 0 turns the state and state sync off.
    #[arg(long, default_value_t = 64)]
    state_mib: u32,
    /// Extra registry members started later with no state: they sync it, then follow.
    #[arg(long, default_value_t = 0)]
    joiners: usize,
    /// Seconds after the start when the joiners start.
    #[arg(long, default_value_t = 15)]
    join_after_s: u64,
}

/// A failed command: what to print and the exit code.
struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    fn failed(message: impl std::fmt::Display) -> Failure {
        Failure {
            message: message.to_string(),
            code: EXIT_FAILED,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("icn: error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Keygen { out } => keygen(&out),
        Command::Registry(command) => registry(command),
        Command::Config(ConfigCommand::Check { file }) => config_check(&file),
        Command::Node { config } => node(&config),
        Command::Demo(args) => demo(args),
        Command::Subnet(args) => subnet(args),
        Command::State(command) => state(command),
    }
}

fn state(command: StateCommand) -> Result<(), Failure> {
    match command {
        StateCommand::Manifest { dir, chunk_bytes } => state_manifest(&dir, chunk_bytes),
        StateCommand::Verify { dir } => state_verify(&dir),
        StateCommand::Synth(args) => state_synth(args),
    }
}

fn state_manifest(dir: &Path, chunk_bytes: u32) -> Result<(), Failure> {
    let (manifest, _) = compute_manifest(dir, chunk_bytes, None)
        .map_err(|e| Failure::failed(format!("{}: {e}", dir.display())))?;
    let (meta, _) = manifest.split();
    let mut out = io::BufWriter::new(io::stdout().lock());
    let mut print = || -> io::Result<()> {
        writeln!(out, "root {}", hash_hex(&meta.root_hash()))?;
        writeln!(
            out,
            "files {}  chunks {}  bytes {}  chunk_bytes {}  pieces {}",
            manifest.files.len(),
            manifest.chunks.len(),
            manifest.state_bytes(),
            manifest.chunk_bytes,
            meta.pieces.len()
        )?;
        for (index, file) in manifest.files.iter().enumerate() {
            let hash = hash_hex(&file.hash);
            writeln!(out, "file {index} {} {hash} {}", file.size, file.path)?;
        }
        for (index, chunk) in manifest.chunks.iter().enumerate() {
            writeln!(
                out,
                "chunk {index} file {} offset {} size {} {}",
                chunk.file_index,
                chunk.offset,
                chunk.size,
                hash_hex(&chunk.hash)
            )?;
        }
        out.flush()
    };
    match print() {
        // A reader that stops early (`| head`) is not a failure of the command.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        result => result.map_err(|e| Failure::failed(format!("writing the manifest: {e}"))),
    }
}

fn state_verify(dir: &Path) -> Result<(), Failure> {
    let report =
        verify_checkpoint(dir).map_err(|e| Failure::failed(format!("{}: {e}", dir.display())))?;
    println!(
        "root {}  files {}  chunks {}  bytes {}",
        hash_hex(&report.root_hash),
        report.files,
        report.chunks,
        report.state_bytes
    );
    if report.passed() {
        println!("ok: every file and chunk matches the manifest");
        return Ok(());
    }
    for difference in &report.differences {
        println!("{difference}");
    }
    Err(Failure::failed(format!(
        "{}: {} differences from its manifest",
        dir.display(),
        report.differences.len()
    )))
}

fn state_synth(args: SynthArgs) -> Result<(), Failure> {
    let spec = SyntheticSpec {
        seed: args.seed,
        large_files: args.large_files,
        large_file_bytes: args.large_file_bytes,
        small_files: args.small_files,
        small_file_bytes_max: args.small_file_bytes_max,
        changed_per_checkpoint_permille: args.changed_permille,
    };
    let started = std::time::Instant::now();
    let in_dir = |e: io::Error| Failure::failed(format!("{}: {e}", args.dir.display()));
    if args.store {
        let mut store =
            CheckpointStore::open(&args.dir, args.chunk_bytes, args.kept.max(1)).map_err(in_dir)?;
        let height = args.height;
        let checkpoint = store
            .create(height, |dir, previous| {
                let previous = previous.map(|previous| (previous.dir.as_path(), previous.height));
                write_state(dir, &spec, height, previous)
            })
            .map_err(in_dir)?;
        let stats = store.last_create_stats().unwrap_or_default();
        println!(
            "checkpoint {} root {}  files {}  chunks {}  bytes {}  in {:.2} s",
            checkpoint.height,
            hash_hex(&checkpoint.root_hash),
            checkpoint.manifest.files.len(),
            checkpoint.manifest.chunks.len(),
            checkpoint.manifest.state_bytes(),
            started.elapsed().as_secs_f64()
        );
        println!(
            "manifest: files read {} reused {}  chunks hashed {} reused {}  bytes read {}",
            stats.files_read,
            stats.files_reused,
            stats.chunks_hashed,
            stats.chunks_reused,
            stats.bytes_read
        );
        return Ok(());
    }
    if args.dir.exists()
        && std::fs::read_dir(&args.dir)
            .map_err(in_dir)?
            .next()
            .is_some()
    {
        return Err(Failure::failed(format!(
            "{} is not empty; a state is written into an empty directory",
            args.dir.display()
        )));
    }
    let previous = args.previous.as_deref().zip(args.previous_height);
    write_state(&args.dir, &spec, args.height, previous).map_err(in_dir)?;
    let seconds = started.elapsed().as_secs_f64();
    let bytes = spec.state_bytes();
    println!(
        "height {}  files {}  bytes {}  in {seconds:.2} s ({:.0} MB/s)",
        args.height,
        spec.file_count(),
        bytes,
        bytes as f64 / seconds.max(1e-9) / 1e6
    );
    Ok(())
}

fn subnet(args: SubnetArgs) -> Result<(), Failure> {
    let options = SubnetOptions {
        nodes: args.nodes,
        seconds: args.seconds,
        transport: args.transport,
        workload: WorkloadConfig {
            block_interval_ms: args.block_interval_ms,
            block_bytes: args.block_bytes,
            ingress_per_s: args.ingress_per_s,
            ingress_bytes: args.ingress_bytes,
            ..WorkloadConfig::default()
        },
        base_port: args.base_port,
        tuning_profile: args.tuning,
        state: (args.state_mib > 0).then(|| StateWorkloadConfig {
            large_files: args.state_mib,
            large_file_bytes: 1 << 20,
            ..StateWorkloadConfig::default()
        }),
        joiners: args.joiners,
        join_after: std::time::Duration::from_secs(args.join_after_s),
    };
    let exe = std::env::current_exe()
        .map_err(|e| Failure::failed(format!("cannot find the icn executable: {e}")))?;
    install_signal_handlers();
    subnet::run_subnet(&options, &exe, Shutdown::new()).map_err(|error| match error {
        DemoError::Usage(message) => Failure {
            message,
            code: EXIT_USAGE,
        },
        other => Failure::failed(other),
    })
}

fn keygen(out: &Path) -> Result<(), Failure> {
    for name in [KEY_FILE_NAME, CERT_FILE_NAME] {
        let path = out.join(name);
        if path.exists() {
            return Err(Failure::failed(format!(
                "{} exists; refusing to overwrite an identity",
                path.display()
            )));
        }
    }
    let identity = Identity::generate().map_err(Failure::failed)?;
    identity.write(out).map_err(Failure::failed)?;
    println!("{}", identity.node_id().to_hex());
    Ok(())
}

fn registry(command: RegistryCommand) -> Result<(), Failure> {
    match command {
        RegistryCommand::Create {
            dir,
            nodes,
            base_port,
            subnet,
        } => registry_create(&dir, usize::from(nodes), base_port, subnet),
        RegistryCommand::Add {
            registry,
            node_dir,
            quic,
            tcp,
            http,
            metrics,
            subnet,
        } => {
            let current = Registry::load(&registry).map_err(Failure::failed)?;
            let subnet = pick_subnet(&current, subnet)?;
            let identity = Identity::load(&node_dir).map_err(Failure::failed)?;
            let record = NodeRecord {
                node_id: identity.node_id(),
                cert_pem: Some(identity.cert_pem().map_err(Failure::failed)?),
                quic_addr: quic,
                tcp_addr: tcp,
                http_addr: http,
                metrics_addr: metrics,
            };
            let next = current.add_node(&subnet, record).map_err(Failure::failed)?;
            let copied = keys::copy_subnet_key_from_sibling(&node_dir, &next, &subnet)
                .map_err(Failure::failed)?;
            // The new member must hold exactly the key the registry lists (or none when it lists
            // none); a missing file is only a hint, since the operator may copy it later.
            let key_note = match keys::load_subnet_key(&node_dir, &next, &subnet) {
                Ok(_) => None,
                Err(error @ keys::SubnetKeyError::MissingFile { .. }) => Some(format!(
                    "{error}\n  e.g. install -m 600 <a member's identity dir>/{SECRET_KEY_FILE_NAME} {}/",
                    node_dir.display()
                )),
                Err(error) => return Err(Failure::failed(error)),
            };
            save_and_print(
                &next,
                &registry,
                &format!("added {}", identity.node_id().to_hex()),
            )?;
            if let Some(from) = copied {
                println!(
                    "subnet key: copied {} into {}",
                    from.display(),
                    node_dir.display()
                );
            }
            if let Some(note) = key_note {
                println!("subnet key: {note}");
            }
            Ok(())
        }
        RegistryCommand::Remove { registry, node } => {
            let current = Registry::load(&registry).map_err(Failure::failed)?;
            let node_id = find_node(&current, &node)?;
            let next = current.remove_node(node_id).map_err(Failure::failed)?;
            save_and_print(&next, &registry, &format!("removed {}", node_id.to_hex()))
        }
        RegistryCommand::Show { registry } => {
            let current = Registry::load(&registry).map_err(Failure::failed)?;
            print!("{}", describe(&current));
            Ok(())
        }
    }
}

fn registry_create(
    dir: &Path,
    nodes: usize,
    base_port: Option<u16>,
    subnet: String,
) -> Result<(), Failure> {
    if subnet.trim().is_empty() {
        return Err(Failure {
            message: "--subnet must not be empty".into(),
            code: EXIT_USAGE,
        });
    }
    let path = dir.join("registry.toml");
    if path.exists() {
        return Err(Failure::failed(format!(
            "{} exists; refusing to overwrite a registry",
            path.display()
        )));
    }
    let base_port = match base_port {
        Some(port) => port,
        None => demo::free_base_port(nodes)
            .ok_or_else(|| Failure::failed("no free range of loopback ports found"))?,
    };
    std::fs::create_dir_all(dir).map_err(|e| Failure::failed(format!("{}: {e}", dir.display())))?;
    let registry = keys::create_local_subnet(dir, nodes, base_port, &SubnetId(subnet))
        .map_err(Failure::failed)?;
    print!("{}", describe(&registry));
    println!("written to {}", path.display());
    println!(
        "subnet key: {} in every node-<i>/ (mode 0600; keep it secret: it signs for the subnet)",
        SECRET_KEY_FILE_NAME
    );
    Ok(())
}

fn pick_subnet(registry: &Registry, subnet: Option<String>) -> Result<SubnetId, Failure> {
    match (subnet, registry.subnets()) {
        (Some(name), _) => Ok(SubnetId(name)),
        (None, [only]) => Ok(only.id.clone()),
        (None, subnets) => Err(Failure {
            message: format!(
                "the registry has {} subnets; name one with --subnet",
                subnets.len()
            ),
            code: EXIT_USAGE,
        }),
    }
}

/// The node whose hex id is `text` or starts with it (a unique prefix).
fn find_node(registry: &Registry, text: &str) -> Result<NodeId, Failure> {
    let text = text.trim().to_ascii_lowercase();
    if let Some(id) = NodeId::from_hex(&text) {
        return Ok(id);
    }
    if text.len() < NODE_ID_PREFIX_CHARS_MIN {
        return Err(Failure {
            message: format!(
                "--node {text:?}: give the node id in hex (64 characters) or a prefix of at least {NODE_ID_PREFIX_CHARS_MIN}"
            ),
            code: EXIT_USAGE,
        });
    }
    let matches: Vec<NodeId> = registry
        .subnets()
        .iter()
        .flat_map(|subnet| subnet.nodes.iter().map(|node| node.node_id))
        .filter(|id| id.to_hex().starts_with(&text))
        .collect();
    match matches[..] {
        [id] => Ok(id),
        [] => Err(Failure::failed(format!("no node id starts with {text}"))),
        _ => Err(Failure::failed(format!(
            "{} node ids start with {text}; give more characters",
            matches.len()
        ))),
    }
}

fn save_and_print(registry: &Registry, path: &Path, change: &str) -> Result<(), Failure> {
    registry.save(path).map_err(Failure::failed)?;
    println!(
        "registry version {}: {change} ({})",
        registry.version(),
        path.display()
    );
    Ok(())
}

fn describe(registry: &Registry) -> String {
    let mut out = format!("registry version {}\n", registry.version());
    for subnet in registry.subnets() {
        out.push_str(&format!(
            "subnet {} ({} nodes)\n",
            subnet.id,
            subnet.nodes.len()
        ));
        for node in &subnet.nodes {
            let optional = |addr: Option<SocketAddr>| {
                addr.map(|a| a.to_string()).unwrap_or_else(|| "-".into())
            };
            out.push_str(&format!(
                "  {}  quic {}  tcp {}  http {}  metrics {}\n",
                node.node_id.to_hex(),
                node.quic_addr,
                node.tcp_addr,
                optional(node.http_addr),
                optional(node.metrics_addr),
            ));
        }
    }
    out
}

fn config_check(file: &Path) -> Result<(), Failure> {
    match icn_tuning::check_file(file) {
        Ok(summary) => {
            print!("{summary}");
            Ok(())
        }
        Err(errors) => Err(Failure::failed(errors)),
    }
}

fn node(config: &Path) -> Result<(), Failure> {
    let config = NodeConfig::load(config).map_err(Failure::failed)?;
    install_signal_handlers();
    run_node(&config, Shutdown::new()).map_err(Failure::failed)
}

fn demo(args: DemoArgs) -> Result<(), Failure> {
    let options = DemoOptions {
        nodes: args.nodes,
        seconds: args.seconds,
        transport: args.transport,
        message_bytes: args.message_bytes,
        concurrency: args.concurrency,
        base_port: args.base_port,
        tuning_profile: args.tuning,
    };
    let exe = std::env::current_exe()
        .map_err(|e| Failure::failed(format!("cannot find the icn executable: {e}")))?;
    install_signal_handlers();
    demo::run_demo(&options, &exe, Shutdown::new()).map_err(|error| match error {
        DemoError::Usage(message) => Failure {
            message,
            code: EXIT_USAGE,
        },
        other => Failure::failed(other),
    })
}
