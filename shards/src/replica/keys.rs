//! The subnet key's files: made once for a new subnet, handed to every member, and checked
//! against the registry when a node starts.
//!
//! One BLS12-381 key certifies a subnet's state. The registry lists its DER public key in the
//! subnet's entry (opaque bytes to the engine), and every member node keeps the whole secret in
//! its identity directory as [`SECRET_KEY_FILE_NAME`]. There is no threshold signing: any one
//! member can sign for the subnet, which is what a reference replica needs and no more.
//!
//! The registry is the authority. [`load_subnet_key`] refuses a key file the registry does not
//! vouch for, and refuses to run without the file once the registry lists a key, so a node never
//! issues certificates that agents (which verify against the registry's key) would reject, and a
//! stale file left in an identity directory cannot silently take over.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use icn_engine::registry::{Registry, RegistryError, SubnetId};

use super::bls::{BlsError, PublicKey, SecretKey, SECRET_KEY_FILE_NAME};

/// Why a subnet key could not be made, handed out or loaded. Each message names the file and the
/// subnet involved, so an operator knows which node directory and which registry entry to fix.
#[derive(Debug, thiserror::Error)]
pub enum SubnetKeyError {
    #[error(
        "{} exists but the registry lists no public key for subnet {subnet}; \
         remove the file or record its public key in the registry",
        file.display()
    )]
    NotInRegistry { file: PathBuf, subnet: SubnetId },
    #[error(
        "the registry lists a public key for subnet {subnet} but {} is missing; \
         copy the subnet's key file there from another member (mode 0600)",
        file.display()
    )]
    MissingFile { file: PathBuf, subnet: SubnetId },
    #[error(
        "{} holds a key whose public key differs from the one the registry lists for \
         subnet {subnet}; the node would sign with a key the registry does not vouch for",
        file.display()
    )]
    Mismatch { file: PathBuf, subnet: SubnetId },
    #[error("{} (the key of subnet {subnet}): {source}", file.display())]
    File {
        file: PathBuf,
        subnet: SubnetId,
        source: BlsError,
    },
    #[error("the registry's public key for subnet {subnet} is not a BLS12-381 DER key: {source}")]
    RegistryKey { subnet: SubnetId, source: BlsError },
    #[error("generating the key of subnet {subnet}: {source}")]
    Generate { subnet: SubnetId, source: BlsError },
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
}

/// Where a node keeps its copy of the subnet's secret key.
pub fn secret_key_path(identity_dir: &Path) -> PathBuf {
    identity_dir.join(SECRET_KEY_FILE_NAME)
}

/// Generates `n` identities under `dir/node-<i>/`, one subnet key written into each of those
/// directories, and a version-1 registry of one subnet `subnet` on loopback whose entry carries
/// the key's DER public key (ports as in [`Registry::create_local_subnet`]). The registry is
/// saved as `dir/registry.toml`.
///
/// The key is part of version 1 rather than a second version because nobody has read the
/// registry yet: a fresh subnet starts with its key, as `icn registry create` documents.
pub fn create_local_subnet(
    dir: &Path,
    n: usize,
    base_port: u16,
    subnet: &SubnetId,
) -> Result<Registry, SubnetKeyError> {
    let generated = Registry::create_local_subnet(dir, n, base_port)?;
    let key = SecretKey::generate().map_err(|source| SubnetKeyError::Generate {
        subnet: subnet.clone(),
        source,
    })?;
    for i in 0..n {
        let file = secret_key_path(&dir.join(format!("node-{i}")));
        key.save(&file).map_err(|source| SubnetKeyError::File {
            file: file.clone(),
            subnet: subnet.clone(),
            source,
        })?;
    }
    let mut subnets = generated.subnets().to_vec();
    subnets[0].id = subnet.clone();
    subnets[0].public_key = Some(key.public_key().to_der().to_vec());
    let registry = Registry::new(generated.version(), subnets)?;
    registry.save(&dir.join("registry.toml"))?;
    Ok(registry)
}

/// The subnet key a node in `identity_dir` signs with, checked against the registry.
///
/// Returns `None` when the registry lists no key for `subnet` and the directory holds no key
/// file (a subnet without certification). Every other disagreement is an error: a file without a
/// registry key, a registry key without a file, or a file whose public key is not the one the
/// registry lists.
pub fn load_subnet_key(
    identity_dir: &Path,
    registry: &Registry,
    subnet: &SubnetId,
) -> Result<Option<SecretKey>, SubnetKeyError> {
    let file = secret_key_path(identity_dir);
    let listed = registry
        .subnet(subnet)
        .and_then(|entry| entry.public_key.as_deref());
    let present = file_exists(&file, subnet)?;
    let listed = match (listed, present) {
        (None, false) => return Ok(None),
        (None, true) => {
            return Err(SubnetKeyError::NotInRegistry {
                file,
                subnet: subnet.clone(),
            })
        }
        (Some(_), false) => {
            return Err(SubnetKeyError::MissingFile {
                file,
                subnet: subnet.clone(),
            })
        }
        (Some(der), true) => {
            PublicKey::from_der(der).map_err(|source| SubnetKeyError::RegistryKey {
                subnet: subnet.clone(),
                source,
            })?
        }
    };
    let key = SecretKey::load(&file).map_err(|source| SubnetKeyError::File {
        file: file.clone(),
        subnet: subnet.clone(),
        source,
    })?;
    if key.public_key() != listed {
        return Err(SubnetKeyError::Mismatch {
            file,
            subnet: subnet.clone(),
        });
    }
    Ok(Some(key))
}

/// Gives a node joining `subnet` the subnet's key from a sibling node directory, for
/// `icn registry add` on the layout `icn registry create` makes (`<dir>/node-<i>/`).
///
/// Only acts when the registry lists a key for the subnet and `identity_dir` has no key file:
/// the sibling directories of `identity_dir` are tried in name order, and the first key file that
/// loads and matches the registry's key is written into `identity_dir` (mode 0600). Siblings
/// whose file does not match (another subnet's node, a stale key) are skipped, never copied.
/// Returns the file copied from, or `None` when nothing was copied; a node that still lacks the
/// file is then refused at start by [`load_subnet_key`].
pub fn copy_subnet_key_from_sibling(
    identity_dir: &Path,
    registry: &Registry,
    subnet: &SubnetId,
) -> Result<Option<PathBuf>, SubnetKeyError> {
    let target = secret_key_path(identity_dir);
    let listed = registry
        .subnet(subnet)
        .and_then(|entry| entry.public_key.as_ref());
    if listed.is_none() || file_exists(&target, subnet)? {
        return Ok(None);
    }
    let Some(parent) = identity_dir.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(None);
    };
    let Ok(entries) = fs::read_dir(parent) else {
        return Ok(None);
    };
    let mut siblings: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_dir())
        .collect();
    siblings.sort();
    for sibling in siblings {
        if !file_exists(&secret_key_path(&sibling), subnet)? {
            continue;
        }
        if let Ok(Some(key)) = load_subnet_key(&sibling, registry, subnet) {
            key.save(&target).map_err(|source| SubnetKeyError::File {
                file: target.clone(),
                subnet: subnet.clone(),
                source,
            })?;
            return Ok(Some(secret_key_path(&sibling)));
        }
    }
    Ok(None)
}

/// Whether `file` exists; an error other than "not found" (a directory the node may not read)
/// is reported rather than taken for absence, which would hide a key the registry expects.
fn file_exists(file: &Path, subnet: &SubnetId) -> Result<bool, SubnetKeyError> {
    match fs::symlink_metadata(file) {
        Ok(_) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(SubnetKeyError::File {
            file: file.to_path_buf(),
            subnet: subnet.clone(),
            source: BlsError::Io {
                action: "stat",
                path: file.to_path_buf(),
                source,
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A fresh directory under the system temp dir, removed on drop (also when a test fails).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir =
                std::env::temp_dir().join(format!("icn-subnet-key-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn local() -> SubnetId {
        SubnetId("local".into())
    }

    /// A registry of two nodes whose subnet lists no key, and the directory holding it.
    fn keyless(tag: &str) -> (TempDir, Registry) {
        let dir = TempDir::new(tag);
        let registry = Registry::create_local_subnet(&dir.0, 2, 43_000).unwrap();
        (dir, registry)
    }

    #[test]
    fn a_created_subnet_gives_every_member_the_registry_key() {
        let dir = TempDir::new("create");
        let subnet = SubnetId("alpha".into());
        let registry = create_local_subnet(&dir.0, 3, 43_100, &subnet).unwrap();
        assert_eq!(registry.version(), 1);
        assert_eq!(
            Registry::load(&dir.0.join("registry.toml")).unwrap(),
            registry
        );
        let der = registry
            .subnet(&subnet)
            .unwrap()
            .public_key
            .clone()
            .unwrap();
        let public = PublicKey::from_der(&der).unwrap();
        for i in 0..3 {
            let node_dir = dir.0.join(format!("node-{i}"));
            let mode = fs::metadata(secret_key_path(&node_dir))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            let key = load_subnet_key(&node_dir, &registry, &subnet)
                .unwrap()
                .expect("a keyed subnet yields a key");
            assert_eq!(key.public_key(), public);
        }
    }

    #[test]
    fn no_file_and_no_registry_key_is_no_key() {
        let (dir, registry) = keyless("none");
        assert!(load_subnet_key(&dir.0.join("node-0"), &registry, &local())
            .unwrap()
            .is_none());
        // A subnet the registry does not list has no key either.
        let other = SubnetId("other".into());
        assert!(load_subnet_key(&dir.0.join("node-0"), &registry, &other)
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_file_the_registry_does_not_list_is_refused() {
        let (dir, registry) = keyless("unlisted");
        let node_dir = dir.0.join("node-0");
        SecretKey::from_seed(&[1; 32])
            .save(&secret_key_path(&node_dir))
            .unwrap();
        let err = load_subnet_key(&node_dir, &registry, &local()).unwrap_err();
        assert!(matches!(err, SubnetKeyError::NotInRegistry { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(SECRET_KEY_FILE_NAME) && text.contains("subnet local"),
            "{text}"
        );
    }

    #[test]
    fn a_registry_key_without_the_file_is_refused() {
        let (dir, registry) = keyless("missing");
        let der = SecretKey::from_seed(&[2; 32])
            .public_key()
            .to_der()
            .to_vec();
        let registry = registry.with_subnet_public_key(&local(), der).unwrap();
        let err = load_subnet_key(&dir.0.join("node-1"), &registry, &local()).unwrap_err();
        assert!(matches!(err, SubnetKeyError::MissingFile { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("node-1") && text.contains(SECRET_KEY_FILE_NAME),
            "{text}"
        );
        assert!(text.contains("subnet local"), "{text}");
    }

    #[test]
    fn a_file_with_another_key_is_refused() {
        let (dir, registry) = keyless("mismatch");
        let node_dir = dir.0.join("node-0");
        let der = SecretKey::from_seed(&[3; 32])
            .public_key()
            .to_der()
            .to_vec();
        let registry = registry.with_subnet_public_key(&local(), der).unwrap();
        SecretKey::from_seed(&[4; 32])
            .save(&secret_key_path(&node_dir))
            .unwrap();
        let err = load_subnet_key(&node_dir, &registry, &local()).unwrap_err();
        assert!(matches!(err, SubnetKeyError::Mismatch { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(SECRET_KEY_FILE_NAME) && text.contains("subnet local"),
            "{text}"
        );
    }

    #[test]
    fn unreadable_files_and_registry_keys_that_are_not_bls_are_refused() {
        let (dir, registry) = keyless("bad");
        let node_dir = dir.0.join("node-0");
        let key = SecretKey::from_seed(&[5; 32]);
        key.save(&secret_key_path(&node_dir)).unwrap();
        let not_bls = registry
            .with_subnet_public_key(&local(), vec![0x30; 133])
            .unwrap();
        let err = load_subnet_key(&node_dir, &not_bls, &local()).unwrap_err();
        assert!(matches!(err, SubnetKeyError::RegistryKey { .. }), "{err}");
        assert!(err.to_string().contains("subnet local"), "{err}");

        let keyed = registry
            .with_subnet_public_key(&local(), key.public_key().to_der().to_vec())
            .unwrap();
        fs::set_permissions(
            secret_key_path(&node_dir),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let err = load_subnet_key(&node_dir, &keyed, &local()).unwrap_err();
        assert!(
            matches!(
                err,
                SubnetKeyError::File {
                    source: BlsError::TooOpen { .. },
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains(SECRET_KEY_FILE_NAME)
                && err.to_string().contains("subnet local"),
            "{err}"
        );
    }

    #[test]
    fn a_joining_node_gets_the_key_from_a_matching_sibling_only() {
        let dir = TempDir::new("sibling");
        let subnet = local();
        let registry = create_local_subnet(&dir.0, 2, 43_200, &subnet).unwrap();
        // A sibling holding some other key sorts first and must be skipped.
        let stale = dir.0.join("a-stale");
        fs::create_dir_all(&stale).unwrap();
        SecretKey::from_seed(&[6; 32])
            .save(&secret_key_path(&stale))
            .unwrap();
        let joiner = dir.0.join("node-9");
        fs::create_dir_all(&joiner).unwrap();

        let copied = copy_subnet_key_from_sibling(&joiner, &registry, &subnet).unwrap();
        assert_eq!(copied, Some(secret_key_path(&dir.0.join("node-0"))));
        let key = load_subnet_key(&joiner, &registry, &subnet)
            .unwrap()
            .unwrap();
        let der = registry
            .subnet(&subnet)
            .unwrap()
            .public_key
            .clone()
            .unwrap();
        assert_eq!(key.public_key().to_der().to_vec(), der);
        let mode = fs::metadata(secret_key_path(&joiner))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Already present: nothing more is copied.
        assert_eq!(
            copy_subnet_key_from_sibling(&joiner, &registry, &subnet).unwrap(),
            None
        );

        // Only a stale sibling: nothing is copied, and loading then names the missing file.
        let apart = TempDir::new("sibling-apart");
        let apart_stale = apart.0.join("stale");
        fs::create_dir_all(&apart_stale).unwrap();
        SecretKey::from_seed(&[8; 32])
            .save(&secret_key_path(&apart_stale))
            .unwrap();
        let lonely = apart.0.join("joiner");
        fs::create_dir_all(&lonely).unwrap();
        assert_eq!(
            copy_subnet_key_from_sibling(&lonely, &registry, &subnet).unwrap(),
            None
        );
        assert!(matches!(
            load_subnet_key(&lonely, &registry, &subnet),
            Err(SubnetKeyError::MissingFile { .. })
        ));

        // A subnet without a registry key gets nothing, even with key files around.
        let (keyless_dir, keyless_registry) = keyless("sibling-keyless");
        SecretKey::from_seed(&[7; 32])
            .save(&secret_key_path(&keyless_dir.0.join("node-0")))
            .unwrap();
        let lone = keyless_dir.0.join("node-1");
        assert_eq!(
            copy_subnet_key_from_sibling(&lone, &keyless_registry, &subnet).unwrap(),
            None
        );
        assert!(!secret_key_path(&lone).exists());
    }
}
