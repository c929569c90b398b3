//! The registry: which nodes exist, which subnet each belongs to, and where to reach them.
//!
//! A registry is versioned: every change produces a new version (`version + 1`), and peers are
//! accepted or refused against the version a node currently holds. The file is TOML:
//!
//! ```toml
//! version = 1
//! [[subnets]]
//! id = "local"
//! public_key = "308182301d06..."                # optional; the subnet's DER public key in hex
//! [[subnets.nodes]]
//! node_id = "<64 hex chars: the raw Ed25519 public key>"
//! cert_pem = "-----BEGIN CERTIFICATE-----..."   # optional; checked against node_id
//! quic_addr = "127.0.0.1:4100"
//! tcp_addr = "127.0.0.1:4101"
//! http_addr = "127.0.0.1:4102"                  # optional
//! metrics_addr = "127.0.0.1:4103"               # optional
//! ```
//!
//! The subnet's public key is opaque bytes here: the engine only carries it, bounded by
//! [`SUBNET_PUBLIC_KEY_BYTES_MAX`], so that nodes and tools agree on it through the same versioned
//! file as on membership. What the bytes mean (the reference replica stores a DER-encoded
//! BLS12-381 key that certifies the subnet's state) is for the layer that signs and verifies.
//!
//! Nothing here touches an executor: [`RegistryWatcher::poll_changed`] is a plain method that a
//! shard driver calls every [`RegistryWatcher::poll_interval`].

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use boring::x509::X509;
use serde::{Deserialize, Serialize};

use crate::identity::{self, Identity, IdentityError};
use crate::transport::NodeId;

/// Longest subnet public key a registry entry may carry. The reference replica's DER-encoded
/// BLS12-381 key is 133 bytes; the bound leaves room for other key types while keeping a
/// corrupt or hostile registry file from making every node hold megabytes per subnet.
pub const SUBNET_PUBLIC_KEY_BYTES_MAX: usize = 1024;

/// The name of a subnet, as written in the registry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SubnetId(pub String);

impl std::fmt::Display for SubnetId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One node's entry: its key and where it listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    pub node_id: NodeId,
    /// The node's self-signed certificate, when the registry lists it (the key alone suffices).
    pub cert_pem: Option<String>,
    pub quic_addr: SocketAddr,
    pub tcp_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
}

/// A subnet and its members, in registry order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subnet {
    pub id: SubnetId,
    /// The subnet's public key (DER), when it has one: what clients verify the subnet's
    /// certificates against. Opaque to the engine; at most [`SUBNET_PUBLIC_KEY_BYTES_MAX`] bytes.
    pub public_key: Option<Vec<u8>>,
    pub nodes: Vec<NodeRecord>,
}

/// One validated version of the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registry {
    version: u64,
    subnets: Vec<Subnet>,
    /// Node -> (subnet index, node index), built at validation.
    index: HashMap<NodeId, (usize, usize)>,
}

/// Why a registry could not be loaded, saved or changed. Errors name the offending entry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid registry: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("registry entry {entry}: {message}")]
    Invalid { entry: String, message: String },
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    version: u64,
    #[serde(default)]
    subnets: Vec<SubnetFile>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubnetFile {
    id: String,
    /// Lowercase hex of the DER public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    public_key: Option<String>,
    #[serde(default)]
    nodes: Vec<NodeFile>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    node_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cert_pem: Option<String>,
    quic_addr: String,
    tcp_addr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metrics_addr: Option<String>,
}

impl Registry {
    /// Builds and validates a registry from its parts.
    pub fn new(version: u64, subnets: Vec<Subnet>) -> Result<Registry, RegistryError> {
        let index = build_index(&subnets)?;
        for subnet in &subnets {
            check_public_key(subnet)?;
            for node in &subnet.nodes {
                check_cert(subnet, node)?;
            }
        }
        Ok(Registry {
            version,
            subnets,
            index,
        })
    }

    /// Reads and validates a registry file.
    pub fn load(path: &Path) -> Result<Registry, RegistryError> {
        let text = fs::read_to_string(path).map_err(|source| RegistryError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|error| match error {
            RegistryError::Parse { message, .. } => RegistryError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates registry text.
    pub fn from_toml(text: &str) -> Result<Registry, RegistryError> {
        let file: RegistryFile = toml::from_str(text).map_err(|error| RegistryError::Parse {
            path: PathBuf::from("<text>"),
            message: error.to_string(),
        })?;
        let mut subnets = Vec::with_capacity(file.subnets.len());
        for subnet in file.subnets {
            let nodes = subnet
                .nodes
                .into_iter()
                .enumerate()
                .map(|(i, node)| parse_node(&subnet.id, i, node))
                .collect::<Result<Vec<_>, _>>()?;
            let public_key = subnet
                .public_key
                .as_deref()
                .map(|text| parse_public_key(&subnet.id, text))
                .transpose()?;
            subnets.push(Subnet {
                id: SubnetId(subnet.id),
                public_key,
                nodes,
            });
        }
        Registry::new(file.version, subnets)
    }

    pub fn to_toml(&self) -> String {
        let file = RegistryFile {
            version: self.version,
            subnets: self.subnets.iter().map(subnet_to_file).collect(),
        };
        toml::to_string_pretty(&file).expect("a registry always serializes")
    }

    /// Writes the registry atomically: a temporary file beside `path`, synced, then renamed, so a
    /// watcher never reads half a file.
    pub fn save(&self, path: &Path) -> Result<(), RegistryError> {
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let io = |action, source| RegistryError::Io {
            action,
            path: tmp.clone(),
            source,
        };
        let mut file = fs::File::create(&tmp).map_err(|e| io("create", e))?;
        file.write_all(self.to_toml().as_bytes())
            .map_err(|e| io("write", e))?;
        file.sync_all().map_err(|e| io("sync", e))?;
        fs::rename(&tmp, path).map_err(|source| RegistryError::Io {
            action: "rename into",
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn subnets(&self) -> &[Subnet] {
        &self.subnets
    }

    /// The entry of `subnet`, when the registry lists it.
    pub fn subnet(&self, subnet: &SubnetId) -> Option<&Subnet> {
        self.subnets.iter().find(|s| &s.id == subnet)
    }

    pub fn subnet_of(&self, node: NodeId) -> Option<&SubnetId> {
        self.index.get(&node).map(|&(s, _)| &self.subnets[s].id)
    }

    pub fn is_member(&self, subnet: &SubnetId, node: NodeId) -> bool {
        self.subnet_of(node) == Some(subnet)
    }

    pub fn node(&self, node: NodeId) -> Option<&NodeRecord> {
        self.index
            .get(&node)
            .map(|&(s, n)| &self.subnets[s].nodes[n])
    }

    /// The members of `subnet` (empty when the subnet does not exist).
    pub fn nodes(&self, subnet: &SubnetId) -> &[NodeRecord] {
        self.subnets
            .iter()
            .find(|s| &s.id == subnet)
            .map(|s| &s.nodes[..])
            .unwrap_or(&[])
    }

    /// A new version with `record` added to `subnet` (created when missing).
    pub fn add_node(
        &self,
        subnet: &SubnetId,
        record: NodeRecord,
    ) -> Result<Registry, RegistryError> {
        let mut subnets = self.subnets.clone();
        match subnets.iter_mut().find(|s| &s.id == subnet) {
            Some(s) => s.nodes.push(record),
            None => subnets.push(Subnet {
                id: subnet.clone(),
                public_key: None,
                nodes: vec![record],
            }),
        }
        Registry::new(self.version + 1, subnets)
    }

    /// A new version without `node`.
    pub fn remove_node(&self, node: NodeId) -> Result<Registry, RegistryError> {
        if !self.index.contains_key(&node) {
            return Err(RegistryError::Invalid {
                entry: node.to_hex(),
                message: "is not in the registry".into(),
            });
        }
        let mut subnets = self.subnets.clone();
        for subnet in &mut subnets {
            subnet.nodes.retain(|n| n.node_id != node);
        }
        Registry::new(self.version + 1, subnets)
    }

    /// A new version in which `subnet` has `public_key` (replacing the one it had, if any).
    ///
    /// The registry never generates keys: whoever owns the key scheme (the reference replica's
    /// tools) makes the key pair, hands the secret to the subnet's nodes and records the public
    /// half here, so the engine stays free of any particular signature scheme.
    pub fn with_subnet_public_key(
        &self,
        subnet: &SubnetId,
        public_key: Vec<u8>,
    ) -> Result<Registry, RegistryError> {
        let mut subnets = self.subnets.clone();
        let entry = subnets
            .iter_mut()
            .find(|s| &s.id == subnet)
            .ok_or_else(|| RegistryError::Invalid {
                entry: format!("subnet {subnet}"),
                message: "is not in the registry".into(),
            })?;
        entry.public_key = Some(public_key);
        Registry::new(self.version + 1, subnets)
    }

    /// A copy of this registry with a different version (for tests and tools that stage edits).
    pub fn with_version(&self, version: u64) -> Registry {
        Registry {
            version,
            ..self.clone()
        }
    }

    /// Generates `n` identities under `dir/node-<i>/` and a version-1 registry with one subnet
    /// `local` on loopback. Node `i` gets ports `base_port + 4i` (QUIC), `+1` (TCP), `+2` (HTTP)
    /// and `+3` (metrics). The registry is also saved as `dir/registry.toml`.
    pub fn create_local_subnet(
        dir: &Path,
        n: usize,
        base_port: u16,
    ) -> Result<Registry, RegistryError> {
        let last_port = base_port as usize + 4 * n;
        if last_port > u16::MAX as usize {
            return Err(RegistryError::Invalid {
                entry: format!("base_port {base_port}"),
                message: format!("{n} nodes need ports up to {last_port}"),
            });
        }
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let identity = Identity::generate()?;
            identity.write(&dir.join(format!("node-{i}")))?;
            let port = base_port + 4 * i as u16;
            let addr = |offset: u16| SocketAddr::from(([127, 0, 0, 1], port + offset));
            nodes.push(NodeRecord {
                node_id: identity.node_id(),
                cert_pem: Some(identity.cert_pem()?),
                quic_addr: addr(0),
                tcp_addr: addr(1),
                http_addr: Some(addr(2)),
                metrics_addr: Some(addr(3)),
            });
        }
        let registry = Registry::new(
            1,
            vec![Subnet {
                id: SubnetId("local".into()),
                public_key: None,
                nodes,
            }],
        )?;
        registry.save(&dir.join("registry.toml"))?;
        Ok(registry)
    }
}

fn build_index(subnets: &[Subnet]) -> Result<HashMap<NodeId, (usize, usize)>, RegistryError> {
    let mut index = HashMap::new();
    for (s, subnet) in subnets.iter().enumerate() {
        if subnets[..s].iter().any(|earlier| earlier.id == subnet.id) {
            return Err(RegistryError::Invalid {
                entry: format!("subnet {}", subnet.id),
                message: "is listed twice".into(),
            });
        }
        for (n, node) in subnet.nodes.iter().enumerate() {
            if index.insert(node.node_id, (s, n)).is_some() {
                return Err(RegistryError::Invalid {
                    entry: format!("subnet {} node {}", subnet.id, node.node_id.to_hex()),
                    message: "duplicate node id".into(),
                });
            }
        }
    }
    Ok(index)
}

fn check_cert(subnet: &Subnet, node: &NodeRecord) -> Result<(), RegistryError> {
    let Some(pem) = &node.cert_pem else {
        return Ok(());
    };
    let invalid = |message: String| RegistryError::Invalid {
        entry: format!("subnet {} node {}", subnet.id, node.node_id.to_hex()),
        message,
    };
    let cert = X509::from_pem(pem.as_bytes()).map_err(|e| invalid(format!("bad cert_pem: {e}")))?;
    let cert_id = identity::node_id_from_cert(&cert).map_err(|e| invalid(e.to_string()))?;
    if cert_id != node.node_id {
        return Err(invalid(format!(
            "cert_pem belongs to {}, not this node_id",
            cert_id.to_hex()
        )));
    }
    if !identity::is_self_signed(&cert) {
        return Err(invalid("cert_pem is not self-signed".into()));
    }
    Ok(())
}

fn check_public_key(subnet: &Subnet) -> Result<(), RegistryError> {
    match &subnet.public_key {
        Some(key) if key.is_empty() || key.len() > SUBNET_PUBLIC_KEY_BYTES_MAX => {
            Err(RegistryError::Invalid {
                entry: format!("subnet {}", subnet.id),
                message: format!(
                    "public_key is {} bytes; it must be 1 to {SUBNET_PUBLIC_KEY_BYTES_MAX}",
                    key.len()
                ),
            })
        }
        _ => Ok(()),
    }
}

/// Decodes the hex `public_key` of a subnet entry. The length is checked before decoding so an
/// oversized field is refused without allocating for it; [`check_public_key`] checks the bytes
/// of registries built in code the same way.
fn parse_public_key(subnet: &str, text: &str) -> Result<Vec<u8>, RegistryError> {
    let invalid = |message: String| RegistryError::Invalid {
        entry: format!("subnet {subnet}"),
        message,
    };
    let text = text.trim();
    if text.len() > 2 * SUBNET_PUBLIC_KEY_BYTES_MAX {
        return Err(invalid(format!(
            "public_key has {} hex characters; at most {} are allowed",
            text.len(),
            2 * SUBNET_PUBLIC_KEY_BYTES_MAX
        )));
    }
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(
            "public_key is not hex (an even number of 0-9, a-f characters)".into(),
        ));
    }
    Ok(text
        .as_bytes()
        .chunks_exact(2)
        .map(|pair| (hex_value(pair[0]) << 4) | hex_value(pair[1]))
        .collect())
}

/// The value of one ASCII hex digit; the caller has checked that it is one.
fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_node(subnet: &str, position: usize, node: NodeFile) -> Result<NodeRecord, RegistryError> {
    let entry = format!("subnet {subnet} node #{position} ({})", node.node_id);
    let invalid = |message: String| RegistryError::Invalid {
        entry: entry.clone(),
        message,
    };
    let node_id = NodeId::from_hex(&node.node_id)
        .ok_or_else(|| invalid("node_id is not 64 hex characters".into()))?;
    let addr = |field: &str, text: &str| -> Result<SocketAddr, RegistryError> {
        text.parse()
            .map_err(|e| invalid(format!("{field} {text:?}: {e}")))
    };
    let optional =
        |field: &str, text: &Option<String>| -> Result<Option<SocketAddr>, RegistryError> {
            text.as_deref().map(|t| addr(field, t)).transpose()
        };
    Ok(NodeRecord {
        node_id,
        quic_addr: addr("quic_addr", &node.quic_addr)?,
        tcp_addr: addr("tcp_addr", &node.tcp_addr)?,
        http_addr: optional("http_addr", &node.http_addr)?,
        metrics_addr: optional("metrics_addr", &node.metrics_addr)?,
        cert_pem: node.cert_pem,
    })
}

fn subnet_to_file(subnet: &Subnet) -> SubnetFile {
    SubnetFile {
        id: subnet.id.0.clone(),
        public_key: subnet.public_key.as_deref().map(to_hex),
        nodes: subnet
            .nodes
            .iter()
            .map(|node| NodeFile {
                node_id: node.node_id.to_hex(),
                cert_pem: node.cert_pem.clone(),
                quic_addr: node.quic_addr.to_string(),
                tcp_addr: node.tcp_addr.to_string(),
                http_addr: node.http_addr.map(|a| a.to_string()),
                metrics_addr: node.metrics_addr.map(|a| a.to_string()),
            })
            .collect(),
    }
}

/// Follows a registry file: re-reads it when it changes and keeps the newest valid version.
///
/// A file that fails to parse or validate, or that carries a version not newer than the current
/// one, is ignored (the error is kept in [`RegistryWatcher::last_error`]): a node never rolls back
/// to an older membership because somebody wrote a stale file.
pub struct RegistryWatcher {
    path: PathBuf,
    poll_interval: Duration,
    current: Arc<Registry>,
    /// (mtime, length) of the file when it was last read.
    seen: Option<(SystemTime, u64)>,
    last_error: Option<String>,
}

impl RegistryWatcher {
    /// Loads `path` now; the caller polls every `poll_interval`.
    pub fn new(path: &Path, poll_interval: Duration) -> Result<RegistryWatcher, RegistryError> {
        let seen = file_stamp(path);
        let current = Arc::new(Registry::load(path)?);
        Ok(RegistryWatcher {
            path: path.to_path_buf(),
            poll_interval,
            current,
            seen,
            last_error: None,
        })
    }

    pub fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    pub fn current(&self) -> Arc<Registry> {
        self.current.clone()
    }

    /// Why the most recent change of the file was not adopted, if it was not.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Re-reads the file if it changed since the last poll; returns the new registry when a newer
    /// valid version was adopted.
    pub fn poll_changed(&mut self) -> Option<Arc<Registry>> {
        let stamp = file_stamp(&self.path);
        if stamp.is_none() || stamp == self.seen {
            return None;
        }
        self.seen = stamp;
        match Registry::load(&self.path) {
            Ok(next) if next.version() > self.current.version() => {
                self.last_error = None;
                self.current = Arc::new(next);
                Some(self.current.clone())
            }
            Ok(next) => {
                self.last_error = Some(format!(
                    "{}: version {} is not newer than {}",
                    self.path.display(),
                    next.version(),
                    self.current.version()
                ));
                None
            }
            Err(error) => {
                self.last_error = Some(error.to_string());
                None
            }
        }
    }
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::tests::temp_dir;

    fn local(n: usize) -> (PathBuf, Registry) {
        let dir = temp_dir("registry");
        let registry = Registry::create_local_subnet(&dir, n, 40_000).unwrap();
        (dir, registry)
    }

    #[test]
    fn local_subnet_round_trips_through_the_file() {
        let (dir, registry) = local(3);
        let loaded = Registry::load(&dir.join("registry.toml")).unwrap();
        assert_eq!(loaded, registry);
        let subnet = SubnetId("local".into());
        assert_eq!(loaded.nodes(&subnet).len(), 3);
        for (i, node) in loaded.nodes(&subnet).iter().enumerate() {
            assert!(loaded.is_member(&subnet, node.node_id));
            assert_eq!(loaded.subnet_of(node.node_id), Some(&subnet));
            let identity = Identity::load(&dir.join(format!("node-{i}"))).unwrap();
            assert_eq!(identity.node_id(), node.node_id);
            assert_eq!(node.tcp_addr.port(), 40_001 + 4 * i as u16);
        }
        assert!(!loaded.is_member(&subnet, NodeId([9; 32])));
        assert!(!loaded.is_member(&SubnetId("other".into()), loaded.nodes(&subnet)[0].node_id));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn changes_produce_new_versions() {
        let (dir, v1) = local(2);
        let subnet = SubnetId("local".into());
        let removed = v1.nodes(&subnet)[1].clone();
        let v2 = v1.remove_node(removed.node_id).unwrap();
        assert_eq!(v2.version(), 2);
        assert!(!v2.is_member(&subnet, removed.node_id));
        let v3 = v2.add_node(&subnet, removed.clone()).unwrap();
        assert_eq!(v3.version(), 3);
        assert!(v3.is_member(&subnet, removed.node_id));
        assert!(
            v3.add_node(&subnet, removed.clone()).is_err(),
            "duplicate must be refused"
        );
        assert!(v2.remove_node(removed.node_id).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn invalid_entries_are_named() {
        let (dir, registry) = local(2);
        let text = registry.to_toml();
        let subnet = SubnetId("local".into());
        let first = registry.nodes(&subnet)[0].clone();
        let second = registry.nodes(&subnet)[1].clone();

        let dup = text.replace(&second.node_id.to_hex(), &first.node_id.to_hex());
        let err = Registry::from_toml(&dup).unwrap_err().to_string();
        assert!(
            err.contains("duplicate") && err.contains(&first.node_id.to_hex()),
            "{err}"
        );

        let bad_addr = text.replace(&first.tcp_addr.to_string(), "127.0.0.1:notaport");
        let err = Registry::from_toml(&bad_addr).unwrap_err().to_string();
        assert!(
            err.contains("tcp_addr") && err.contains(&first.node_id.to_hex()),
            "{err}"
        );

        // Swap the certificates: each no longer matches its node id.
        let mut swapped = registry.clone();
        let (a, b) = (first.cert_pem.clone(), second.cert_pem.clone());
        swapped.subnets[0].nodes[0].cert_pem = b;
        swapped.subnets[0].nodes[1].cert_pem = a;
        let err = Registry::from_toml(&swapped.to_toml())
            .unwrap_err()
            .to_string();
        assert!(err.contains("cert_pem belongs to"), "{err}");

        let err = Registry::from_toml("version = 1\n[[subnets]]\nid = 3").unwrap_err();
        assert!(matches!(err, RegistryError::Parse { .. }));
        let path = dir.join("broken.toml");
        fs::write(&path, "version = ").unwrap();
        let err = Registry::load(&path).unwrap_err().to_string();
        assert!(err.contains("broken.toml"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn subnet_public_key_round_trips_and_is_optional() {
        let (dir, v1) = local(2);
        let subnet = SubnetId("local".into());
        assert_eq!(v1.subnet(&subnet).unwrap().public_key, None);
        assert!(
            !v1.to_toml().contains("public_key"),
            "an absent key is not written"
        );
        assert_eq!(Registry::from_toml(&v1.to_toml()).unwrap(), v1);
        assert!(v1.subnet(&SubnetId("other".into())).is_none());

        let key: Vec<u8> = (0..=255u8).chain([0x0a, 0xf0]).collect();
        let v2 = v1.with_subnet_public_key(&subnet, key.clone()).unwrap();
        assert_eq!(v2.version(), 2);
        assert_eq!(v2.subnet(&subnet).unwrap().public_key, Some(key.clone()));
        let text = v2.to_toml();
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert!(text.contains(&format!("public_key = \"{hex}\"")), "{text}");
        let path = dir.join("registry.toml");
        v2.save(&path).unwrap();
        assert_eq!(Registry::load(&path).unwrap(), v2);
        // Upper-case hex is read as well; it is written back in lower case.
        let upper = Registry::from_toml(&text.replace(&hex, &hex.to_uppercase())).unwrap();
        assert_eq!(upper, v2);

        // Keys survive other changes, and a subnet must exist to get one.
        let v3 = v2.remove_node(v2.nodes(&subnet)[0].node_id).unwrap();
        assert_eq!(v3.subnet(&subnet).unwrap().public_key, Some(key));
        let err = v1
            .with_subnet_public_key(&SubnetId("other".into()), vec![1])
            .unwrap_err()
            .to_string();
        assert!(err.contains("subnet other"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_subnet_public_keys_are_refused_with_the_subnet_named() {
        let (dir, v1) = local(1);
        let subnet = SubnetId("local".into());
        let text = v1
            .with_subnet_public_key(&subnet, vec![0xab; 4])
            .unwrap()
            .to_toml();
        for (bad, expected) in [
            ("abababzz", "not hex"),
            ("abababa", "not hex"),
            ("", "0 bytes"),
            (
                &"ab".repeat(SUBNET_PUBLIC_KEY_BYTES_MAX + 1),
                "hex characters",
            ),
        ] {
            let err = Registry::from_toml(&text.replace("abababab", bad))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("subnet local")
                    && err.contains("public_key")
                    && err.contains(expected),
                "{bad:?}: {err}"
            );
        }
        // The bound is inclusive, and registries built in code are held to it too.
        let longest = "cd".repeat(SUBNET_PUBLIC_KEY_BYTES_MAX);
        assert!(Registry::from_toml(&text.replace("abababab", &longest)).is_ok());
        let err = v1
            .with_subnet_public_key(&subnet, vec![0; SUBNET_PUBLIC_KEY_BYTES_MAX + 1])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("subnet local") && err.contains("1025 bytes"),
            "{err}"
        );
        assert!(v1.with_subnet_public_key(&subnet, Vec::new()).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn watcher_adopts_newer_versions_only() {
        let (dir, v1) = local(2);
        let path = dir.join("registry.toml");
        let mut watcher = RegistryWatcher::new(&path, Duration::from_millis(10)).unwrap();
        assert_eq!(watcher.poll_changed(), None);

        let v2 = v1.remove_node(v1.subnets()[0].nodes[0].node_id).unwrap();
        v2.save(&path).unwrap();
        assert_eq!(watcher.poll_changed().map(|r| r.version()), Some(2));
        assert_eq!(
            watcher.poll_changed(),
            None,
            "an unchanged file is not re-adopted"
        );

        // A stale version and a broken file are both ignored.
        v1.with_version(2).save(&path).unwrap();
        fs::write(
            &path,
            format!("{}\n# padding so the length changes\n", v1.to_toml()),
        )
        .unwrap();
        assert_eq!(watcher.poll_changed(), None);
        assert!(watcher.last_error().unwrap().contains("not newer"));
        fs::write(&path, "garbage").unwrap();
        assert_eq!(watcher.poll_changed(), None);
        assert_eq!(watcher.current().version(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }
}
