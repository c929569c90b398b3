//! Node identity: an Ed25519 key pair and the self-signed X.509 certificate built from it.
//!
//! A node is named by its raw 32-byte Ed25519 public key ([`NodeId`]). The certificate carries
//! nothing a peer must trust beyond that key: peers accept it because the key is listed in the
//! registry, not because of any CA. The subject CN is the node id in hex, for humans reading certs.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use boring::asn1::Asn1Time;
use boring::bn::{BigNum, MsbOption};
use boring::error::ErrorStack;
use boring::hash::MessageDigest;
use boring::pkey::{Id, PKey, PKeyRef, Private};
use boring::x509::{X509NameBuilder, X509Ref, X509};

use crate::transport::NodeId;

/// File name of the private key inside an identity directory (PEM, PKCS#8, mode 0600).
pub const KEY_FILE_NAME: &str = "node_key.pem";
/// File name of the certificate inside an identity directory (PEM, mode 0644).
pub const CERT_FILE_NAME: &str = "node_cert.pem";

/// How long a generated certificate is valid. Validity is not what makes a peer trusted (the
/// registry is), so it is long enough never to expire while a node runs.
pub const CERT_VALIDITY_DAYS: u32 = 365 * 30;

/// Bits of the random certificate serial number (RFC 5280 allows at most 20 octets).
const SERIAL_BITS: i32 = 127;

/// Why an identity could not be created, read or written.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cryptography failed: {0}")]
    Crypto(#[from] ErrorStack),
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid PEM {what}: {source}")]
    BadPem {
        what: &'static str,
        path: PathBuf,
        source: ErrorStack,
    },
    #[error("the key is {found}, expected Ed25519")]
    NotEd25519 { found: String },
    #[error("the certificate's public key does not match the private key in {path}")]
    KeyMismatch { path: PathBuf },
}

/// A node's key pair and self-signed certificate.
pub struct Identity {
    key: PKey<Private>,
    cert: X509,
    node_id: NodeId,
}

impl Identity {
    /// Creates a fresh Ed25519 key pair and a self-signed certificate for it.
    pub fn generate() -> Result<Identity, IdentityError> {
        let key = PKey::generate(Id::ED25519)?;
        let node_id = node_id_from_key(&key)?;
        let cert = self_signed_cert(&key, &node_id)?;
        Ok(Identity { key, cert, node_id })
    }

    /// Writes the key (created with mode 0600, never readable by others even briefly) and the
    /// certificate (0644) into `dir`, creating `dir` if needed. Refuses to overwrite a key.
    pub fn write(&self, dir: &Path) -> Result<(), IdentityError> {
        fs::create_dir_all(dir).map_err(|source| io_error("create directory", dir, source))?;
        let key_pem = self.key.private_key_to_pem_pkcs8()?;
        let cert_pem = self.cert.to_pem()?;
        write_new_file(&dir.join(KEY_FILE_NAME), &key_pem, 0o600)?;
        write_new_file(&dir.join(CERT_FILE_NAME), &cert_pem, 0o644)?;
        Ok(())
    }

    /// Reads an identity written by [`Identity::write`]; checks that key and certificate match.
    pub fn load(dir: &Path) -> Result<Identity, IdentityError> {
        let key_path = dir.join(KEY_FILE_NAME);
        let cert_path = dir.join(CERT_FILE_NAME);
        let key_pem = fs::read(&key_path).map_err(|source| io_error("read", &key_path, source))?;
        let cert_pem =
            fs::read(&cert_path).map_err(|source| io_error("read", &cert_path, source))?;
        let key = PKey::private_key_from_pem(&key_pem).map_err(|source| IdentityError::BadPem {
            what: "private key",
            path: key_path.clone(),
            source,
        })?;
        let cert = X509::from_pem(&cert_pem).map_err(|source| IdentityError::BadPem {
            what: "certificate",
            path: cert_path.clone(),
            source,
        })?;
        let node_id = node_id_from_key(&key)?;
        if node_id_from_cert(&cert)? != node_id {
            return Err(IdentityError::KeyMismatch { path: key_path });
        }
        Ok(Identity { key, cert, node_id })
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The certificate, for `SslContextBuilder::set_certificate`.
    pub fn cert(&self) -> &X509Ref {
        &self.cert
    }

    /// The private key, for `SslContextBuilder::set_private_key`.
    pub fn key(&self) -> &PKeyRef<Private> {
        &self.key
    }

    /// The certificate as PEM text (what the registry lists).
    pub fn cert_pem(&self) -> Result<String, IdentityError> {
        let pem = self.cert.to_pem()?;
        Ok(String::from_utf8_lossy(&pem).into_owned())
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        write!(f, "Identity({:?})", self.node_id)
    }
}

/// The node id named by a certificate's public key; only Ed25519 keys are accepted.
pub fn node_id_from_cert(cert: &X509Ref) -> Result<NodeId, IdentityError> {
    let key = cert.public_key()?;
    node_id_from_key(&key)
}

/// True when `cert` is signed by its own key (what a node's certificate must be).
pub fn is_self_signed(cert: &X509Ref) -> bool {
    match cert.public_key() {
        Ok(key) => cert.verify(&key).unwrap_or(false),
        Err(_) => false,
    }
}

fn node_id_from_key<T: boring::pkey::HasPublic>(key: &PKeyRef<T>) -> Result<NodeId, IdentityError> {
    if key.id() != Id::ED25519 {
        return Err(IdentityError::NotEd25519 {
            found: format!("{:?}", key.id()),
        });
    }
    let mut raw = [0u8; 32];
    let written = key.raw_public_key(&mut raw)?.len();
    if written != raw.len() {
        return Err(IdentityError::NotEd25519 {
            found: format!("a {written}-byte key"),
        });
    }
    Ok(NodeId(raw))
}

fn self_signed_cert(key: &PKeyRef<Private>, node_id: &NodeId) -> Result<X509, ErrorStack> {
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_text("CN", &node_id.to_hex())?;
    let name = name.build();

    let mut serial = BigNum::new()?;
    serial.rand(SERIAL_BITS, MsbOption::MAYBE_ZERO, false)?;

    let mut builder = X509::builder()?;
    builder.set_version(2)?;
    let serial = serial.to_asn1_integer()?;
    builder.set_serial_number(&serial)?;
    builder.set_subject_name(&name)?;
    builder.set_issuer_name(&name)?;
    builder.set_pubkey(key)?;
    let not_before = Asn1Time::days_from_now(0)?;
    let not_after = Asn1Time::days_from_now(CERT_VALIDITY_DAYS)?;
    builder.set_not_before(&not_before)?;
    builder.set_not_after(&not_after)?;
    // SAFETY: a null EVP_MD is how BoringSSL's X509_sign is told to use the key's own algorithm;
    // Ed25519 signs the message directly and requires exactly that. The pointer is never read.
    let no_digest = unsafe { MessageDigest::from_ptr(std::ptr::null()) };
    builder.sign(key, no_digest)?;
    Ok(builder.build())
}

fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IdentityError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| io_error("create", path, source))?;
    file.write_all(bytes)
        .map_err(|source| io_error("write", path, source))?;
    file.sync_all()
        .map_err(|source| io_error("sync", path, source))
}

fn io_error(action: &'static str, path: &Path, source: std::io::Error) -> IdentityError {
    IdentityError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A fresh directory under the system temp dir, unique per call.
    pub(crate) fn temp_dir(tag: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("icn-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn generated_identity_is_self_signed_ed25519() {
        let id = Identity::generate().unwrap();
        assert_eq!(node_id_from_cert(id.cert()).unwrap(), id.node_id());
        assert!(is_self_signed(id.cert()));
        let cn = id
            .cert()
            .subject_name()
            .entries()
            .next()
            .unwrap()
            .data()
            .as_utf8()
            .unwrap();
        assert_eq!(cn.to_string(), id.node_id().to_hex());
        let other = Identity::generate().unwrap();
        assert_ne!(other.node_id(), id.node_id());
    }

    #[test]
    fn write_then_load_round_trips_with_modes() {
        let dir = temp_dir("identity");
        let id = Identity::generate().unwrap();
        id.write(&dir).unwrap();
        let key_mode = fs::metadata(dir.join(KEY_FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        let cert_mode = fs::metadata(dir.join(CERT_FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
        assert_eq!(cert_mode & 0o777 & !0o022, 0o644 & !0o022);
        let loaded = Identity::load(&dir).unwrap();
        assert_eq!(loaded.node_id(), id.node_id());
        // A second write must not clobber the key.
        assert!(matches!(
            id.write(&dir),
            Err(IdentityError::Io {
                action: "create",
                ..
            })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_files_give_errors_naming_the_path() {
        let dir = temp_dir("identity-bad");
        let missing = Identity::load(&dir).unwrap_err().to_string();
        assert!(missing.contains(KEY_FILE_NAME), "{missing}");

        Identity::generate().unwrap().write(&dir).unwrap();
        fs::write(dir.join(CERT_FILE_NAME), b"not a pem").unwrap();
        let bad = Identity::load(&dir).unwrap_err().to_string();
        assert!(bad.contains(CERT_FILE_NAME), "{bad}");

        // A valid certificate of another identity.
        let other = Identity::generate().unwrap();
        fs::write(dir.join(CERT_FILE_NAME), other.cert_pem().unwrap()).unwrap();
        assert!(matches!(
            Identity::load(&dir),
            Err(IdentityError::KeyMismatch { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn non_ed25519_certificates_are_refused() {
        let rsa = boring::rsa::Rsa::generate(2048).unwrap();
        let key = PKey::from_rsa(rsa).unwrap();
        let mut builder = X509::builder().unwrap();
        builder.set_pubkey(&key).unwrap();
        builder
            .set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        builder
            .set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        builder.sign(&key, MessageDigest::sha256()).unwrap();
        let cert = builder.build();
        assert!(matches!(
            node_id_from_cert(&cert),
            Err(IdentityError::NotEd25519 { .. })
        ));
    }
}
