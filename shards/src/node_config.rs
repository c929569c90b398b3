//! The node config file of `icn node`: who this node is, where its registry lives, which
//! transport it speaks, and (optionally) which tuning profile it runs with.
//!
//! ```toml
//! identity_dir = "node-0"            # holds node_key.pem and node_cert.pem (icn keygen)
//! registry_path = "registry.toml"    # followed for new versions
//! subnet_id = "local"
//! transport = "quic"                 # or "tcp"
//! tuning_profile = "lan.toml"        # optional; the compiled defaults otherwise
//!
//! state_dir = "state"               # optional (default "state"): checkpoints and syncs
//!
//! [workload]                         # optional: run the reference workload (see p2p.rs)
//! block_interval_ms = 500
//! block_bytes = 262144
//! ingress_per_s = 200
//! ingress_bytes = 512
//!
//! [state]                            # optional: checkpoint a reference state, sync when
//! checkpoint_interval_heights = 20   # behind (see state_sync/reference.rs); needs [workload]
//! genesis = true                     # false: a joiner that syncs before it follows
//! ```
//!
//! Relative paths are taken relative to the config file's folder, so a node directory can move.
//! Listen addresses are not here: they come from this node's entry in the registry, so the
//! registry stays the one place that says where a node is. Unknown keys are errors.

use std::path::{Path, PathBuf};

use icn_engine::registry::SubnetId;
use serde::Deserialize;

use crate::p2p::WorkloadConfig;
use crate::state_sync::reference::StateWorkloadConfig;

/// Which transport a node runs between peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    Quic,
    Tcp,
}

impl TransportKind {
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Quic => "quic",
            TransportKind::Tcp => "tcp",
        }
    }
}

impl std::str::FromStr for TransportKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "quic" => Ok(TransportKind::Quic),
            "tcp" => Ok(TransportKind::Tcp),
            other => Err(format!(
                "unknown transport {other:?} (expected quic or tcp)"
            )),
        }
    }
}

/// A loaded node config, paths resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    pub identity_dir: PathBuf,
    pub registry_path: PathBuf,
    pub subnet_id: SubnetId,
    pub transport: TransportKind,
    pub tuning_profile: Option<PathBuf>,
    /// The reference workload this node runs, if any.
    pub workload: Option<WorkloadConfig>,
    /// Where checkpoints and syncs in progress live.
    pub state_dir: PathBuf,
    /// The reference state workload (checkpoints, syncs when behind), if any.
    pub state: Option<StateWorkloadConfig>,
}

/// `state_dir` when the file does not say.
pub const STATE_DIR_DEFAULT: &str = "state";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeConfigFile {
    identity_dir: PathBuf,
    registry_path: PathBuf,
    subnet_id: String,
    transport: TransportKind,
    #[serde(default)]
    tuning_profile: Option<PathBuf>,
    #[serde(default)]
    workload: Option<WorkloadConfig>,
    #[serde(default)]
    state_dir: Option<PathBuf>,
    #[serde(default)]
    state: Option<StateWorkloadConfig>,
}

/// Why a node config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum NodeConfigError {
    #[error("cannot read node config {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("node config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl NodeConfig {
    /// Reads `path`; relative paths inside are resolved against its folder.
    pub fn load(path: &Path) -> Result<NodeConfig, NodeConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| NodeConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        NodeConfig::from_toml(&text, base).map_err(|message| NodeConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses config text; relative paths are resolved against `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<NodeConfig, String> {
        let file: NodeConfigFile =
            toml::from_str(text).map_err(|error| error.message().to_string())?;
        if file.subnet_id.trim().is_empty() {
            return Err("subnet_id is empty".into());
        }
        let resolve = |path: PathBuf| {
            if path.is_absolute() {
                path
            } else {
                base.join(path)
            }
        };
        Ok(NodeConfig {
            identity_dir: resolve(file.identity_dir),
            registry_path: resolve(file.registry_path),
            subnet_id: SubnetId(file.subnet_id),
            transport: file.transport,
            tuning_profile: file.tuning_profile.map(resolve),
            workload: file.workload,
            state_dir: resolve(
                file.state_dir
                    .unwrap_or_else(|| PathBuf::from(STATE_DIR_DEFAULT)),
            ),
            state: file.state,
        })
    }

    /// The config as TOML text (absolute paths stay absolute, relative ones relative).
    pub fn to_toml(&self) -> String {
        let quote = |path: &Path| toml::Value::String(path.display().to_string()).to_string();
        let mut text = format!(
            "identity_dir = {}\nregistry_path = {}\nsubnet_id = {}\ntransport = \"{}\"\n",
            quote(&self.identity_dir),
            quote(&self.registry_path),
            toml::Value::String(self.subnet_id.0.clone()),
            self.transport.name(),
        );
        if let Some(profile) = &self.tuning_profile {
            text.push_str(&format!("tuning_profile = {}\n", quote(profile)));
        }
        text.push_str(&format!("state_dir = {}\n", quote(&self.state_dir)));
        if let Some(workload) = &self.workload {
            text.push_str("\n[workload]\n");
            text.push_str(&toml::to_string(workload).expect("plain integers serialize"));
        }
        if let Some(state) = &self.state {
            text.push_str("\n[state]\n");
            text.push_str(&toml::to_string(state).expect("plain values serialize"));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "/srv/icn";

    #[test]
    fn relative_paths_resolve_against_the_config_folder() {
        let text = r#"
            identity_dir = "node-0"
            registry_path = "/etc/icn/registry.toml"
            subnet_id = "local"
            transport = "tcp"
            tuning_profile = "profiles/lan.toml"

            [workload]
            block_interval_ms = 250
            block_bytes = 1000
            ingress_per_s = 5
            ingress_bytes = 100
        "#;
        let config = NodeConfig::from_toml(text, Path::new(BASE)).unwrap();
        let with_state = format!("{text}\n[state]\ngenesis = false\nlarge_files = 3\n");
        let state = NodeConfig::from_toml(&with_state, Path::new(BASE)).unwrap();
        let expected = StateWorkloadConfig {
            genesis: false,
            large_files: 3,
            ..StateWorkloadConfig::default()
        };
        assert_eq!(state.state, Some(expected));
        let again = NodeConfig::from_toml(&state.to_toml(), Path::new("/elsewhere")).unwrap();
        assert_eq!(again, state);
        assert_eq!(config.identity_dir, Path::new("/srv/icn/node-0"));
        assert_eq!(config.registry_path, Path::new("/etc/icn/registry.toml"));
        assert_eq!(config.subnet_id, SubnetId("local".into()));
        assert_eq!(config.transport, TransportKind::Tcp);
        assert_eq!(
            config.tuning_profile.as_deref(),
            Some(Path::new("/srv/icn/profiles/lan.toml"))
        );
        assert_eq!(config.workload.map(|w| w.block_interval_ms), Some(250));
        assert_eq!(config.state_dir, Path::new("/srv/icn/state"));
        assert_eq!(config.state, None);
        let again = NodeConfig::from_toml(&config.to_toml(), Path::new("/elsewhere")).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let base = "identity_dir = \"a\"\nregistry_path = \"r\"\nsubnet_id = \"s\"\n";
        let unknown = format!("{base}transport = \"quic\"\nlisten = \"x\"\n");
        let error = NodeConfig::from_toml(&unknown, Path::new(BASE)).unwrap_err();
        assert!(error.contains("listen"), "{error}");
        let bad = format!("{base}transport = \"udp\"\n");
        let error = NodeConfig::from_toml(&bad, Path::new(BASE)).unwrap_err();
        assert!(error.contains("udp"), "{error}");
        let error = NodeConfig::from_toml(base, Path::new(BASE)).unwrap_err();
        assert!(error.contains("transport"), "{error}");
        let empty =
            "identity_dir = \"a\"\nregistry_path = \"r\"\nsubnet_id = \" \"\ntransport = \"quic\"";
        assert!(NodeConfig::from_toml(empty, Path::new(BASE)).is_err());
    }

    #[test]
    fn load_names_the_file() {
        let error = NodeConfig::load(Path::new("/nonexistent/icn-node.toml")).unwrap_err();
        assert!(error.to_string().contains("/nonexistent/icn-node.toml"));
    }
}
