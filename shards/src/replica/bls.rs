//! The subnet's BLS12-381 key, in exactly the scheme IC agents verify certificates with.
//!
//! The IC signs certified state with min-sig BLS over BLS12-381: signatures are points of G1
//! (48 bytes compressed), public keys points of G2 (96 bytes compressed), and a message is
//! mapped to G1 by the hash-to-curve suite `BLS12381G1_XMD:SHA-256_SSWU_RO_` (RFC 9380) with the
//! domain separation tag [`DST`]. A signature `s = sk · H(m)` verifies under `pk = sk · g2` when
//! `e(s, g2) = e(H(m), pk)`. Agents (agent-rs through `ic_bls12_381`, agent-js through noble)
//! do exactly this, so any deviation here (another DST, the signature in G2, an uncompressed
//! encoding) would make every certificate the replica issues unverifiable.
//!
//! The public key travels DER-encoded ([`PublicKey::to_der`]): a fixed 37-byte prefix naming the
//! IC's BLS algorithm and curve OIDs, then the 96 key bytes. Agents check the prefix byte for
//! byte instead of parsing ASN.1, so the encoding must be exactly this one. The subnet id is the
//! self-authenticating principal of that DER key ([`PublicKey::subnet_id`]).
//!
//! The IC's real subnets hold their key as threshold shares; the reference replica has one
//! secret shared with the subnet's nodes. [`SecretKey`] is stored in a small text file
//! ([`SecretKey::save`] documents the format) created with mode 0600.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ic_bls12_381::hash_to_curve::{ExpandMsgXmd, HashToCurve};
use ic_bls12_381::{multi_miller_loop, G1Affine, G1Projective, G2Affine, G2Prepared, Gt, Scalar};
use icn_codecs::ic::Principal;
use sha2::{Digest, Sha256, Sha512};
use zeroize::Zeroize;

/// The domain separation tag of the IC's BLS signatures: the basic scheme ("NUL") of the IETF
/// BLS signature draft, with signatures in G1.
pub const DST: &[u8] = b"BLS_SIG_BLS12381G1_XMD:SHA-256_SSWU_RO_NUL_";

/// A compressed G1 point: the signature.
pub const SIGNATURE_BYTES: usize = 48;
/// A compressed G2 point: the public key.
pub const PUBLIC_KEY_BYTES: usize = 96;
/// A secret scalar, big-endian.
pub const SECRET_KEY_BYTES: usize = 32;

/// The DER prefix of an IC BLS public key: `SEQUENCE { SEQUENCE { OID 1.3.6.1.4.1.44668.5.3.1.2.1
/// (the IC's BLS12-381 min-sig algorithm), OID 1.3.6.1.4.1.44668.5.3.2.1 (the curve) },
/// BIT STRING (97 bytes: no unused bits, then the key) }`.
pub const DER_PREFIX: [u8; 37] = [
    0x30, 0x81, 0x82, // SEQUENCE, 130 bytes
    0x30, 0x1d, // SEQUENCE, 29 bytes: the algorithm identifier
    0x06, 0x0d, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0xdc, 0x7c, 0x05, 0x03, 0x01, 0x02, 0x01, 0x06,
    0x0c, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0xdc, 0x7c, 0x05, 0x03, 0x02, 0x01, 0x03, 0x61,
    0x00, // BIT STRING, 97 bytes, 0 unused bits
];
/// The whole DER public key.
pub const DER_PUBLIC_KEY_BYTES: usize = DER_PREFIX.len() + PUBLIC_KEY_BYTES;

/// File name of the subnet's secret key inside a node's identity directory.
pub const SECRET_KEY_FILE_NAME: &str = "subnet_bls_key.pem";

/// Keys derived from a seed hash it under this separator, so a seed reused elsewhere (an
/// Ed25519 seed in a test, say) never yields a related BLS key.
const SEED_DOMAIN: &[u8] = b"icn-subnet-bls12381-keygen-v1";
const PEM_BEGIN: &str = "-----BEGIN ICN BLS12-381 SECRET KEY-----";
const PEM_END: &str = "-----END ICN BLS12-381 SECRET KEY-----";

/// Why bytes are not a key or signature, or a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BlsError {
    #[error("{what} must be {expected} bytes, found {found}")]
    WrongLength {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    /// Not the compressed encoding of a point in the prime-order subgroup (or a scalar >= r).
    #[error("{what} is not a valid encoding")]
    Invalid { what: &'static str },
    /// The identity point or the zero scalar: valid encodings that no honest key produces and
    /// that would make verification meaningless.
    #[error("{what} is the identity (or zero), which is never a valid key or signature")]
    Degenerate { what: &'static str },
    #[error("DER public key does not start with the IC's BLS12-381 prefix")]
    WrongDerPrefix,
    #[error("the signature does not verify under the public key")]
    BadSignature,
    #[error("{path}: {action}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is readable by others (mode {mode:o}); it must be 0600")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{path} is not a secret key file: {detail}")]
    BadFile { path: PathBuf, detail: &'static str },
    #[error("the OS random number generator failed: {0}")]
    Rng(#[from] boring::error::ErrorStack),
}

/// The subnet's secret key: a non-zero scalar modulo the group order r. Wiped from memory on
/// drop; `Debug` prints only the public key.
pub struct SecretKey {
    scalar: Scalar,
}

/// A public key: a G2 point in the prime-order subgroup, not the identity. Keeps its
/// compressed bytes, which are what DER encodings and registry entries carry.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey {
    point: G2Affine,
    bytes: [u8; PUBLIC_KEY_BYTES],
}

/// A signature: a G1 point in the prime-order subgroup.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature {
    point: G1Affine,
    bytes: [u8; SIGNATURE_BYTES],
}

impl SecretKey {
    /// A fresh key from the OS random number generator (BoringSSL's, seeded by the kernel).
    pub fn generate() -> Result<SecretKey, BlsError> {
        let mut seed = [0u8; 32];
        boring::rand::rand_bytes(&mut seed)?;
        let key = SecretKey::from_seed(&seed);
        seed.zeroize();
        Ok(key)
    }

    /// The key a 32-byte seed determines: SHA-512 of a domain separator, the seed and a counter,
    /// read as a little-endian 512-bit integer and reduced modulo r. Reducing 512 bits leaves a
    /// bias below 2^-250; the counter moves on only in the (2^-255 likely) case the result is
    /// zero. Deterministic, so tests and `icn subnet` can rebuild a subnet's key from a seed.
    pub fn from_seed(seed: &[u8; 32]) -> SecretKey {
        for counter in 0u32.. {
            let mut wide: [u8; 64] = Sha512::new()
                .chain_update(SEED_DOMAIN)
                .chain_update(seed)
                .chain_update(counter.to_be_bytes())
                .finalize()
                .into();
            let scalar = Scalar::from_bytes_wide(&wide);
            wide.zeroize();
            if scalar != Scalar::zero() {
                return SecretKey { scalar };
            }
        }
        unreachable!("2^32 consecutive zero scalars from SHA-512")
    }

    /// Parses the big-endian encoding of the scalar (what [`SecretKey::to_bytes`] writes).
    pub fn from_bytes(bytes: &[u8]) -> Result<SecretKey, BlsError> {
        let mut le: [u8; SECRET_KEY_BYTES] =
            bytes.try_into().map_err(|_| BlsError::WrongLength {
                what: "secret key",
                expected: SECRET_KEY_BYTES,
                found: bytes.len(),
            })?;
        le.reverse();
        let scalar = Option::<Scalar>::from(Scalar::from_bytes(&le));
        le.zeroize();
        let scalar = scalar.ok_or(BlsError::Invalid { what: "secret key" })?;
        if scalar == Scalar::zero() {
            return Err(BlsError::Degenerate { what: "secret key" });
        }
        Ok(SecretKey { scalar })
    }

    /// The scalar, big-endian (the order of the IETF BLS drafts' I2OSP).
    pub fn to_bytes(&self) -> [u8; SECRET_KEY_BYTES] {
        let mut bytes = self.scalar.to_bytes();
        bytes.reverse();
        bytes
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_point(G2Affine::from(G2Affine::generator() * self.scalar))
    }

    /// Signs `message`: `sk · H(message)`.
    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature::from_point(G1Affine::from(hash_to_g1(message) * self.scalar))
    }

    /// Writes the key to `path`, which must not exist yet: created with mode 0600 (so it is
    /// never readable by others, not even between creation and a chmod), written and fsynced.
    /// The format is three lines of text:
    ///
    /// ```text
    /// -----BEGIN ICN BLS12-381 SECRET KEY-----
    /// <64 lowercase hex digits: the scalar, big-endian>
    /// -----END ICN BLS12-381 SECRET KEY-----
    /// ```
    ///
    /// PEM-like armour makes the file recognisable and hard to confuse with the node's Ed25519
    /// key; hex rather than base64 because there is no ASN.1 structure to wrap.
    pub fn save(&self, path: &Path) -> Result<(), BlsError> {
        let io = |action| {
            move |source| BlsError::Io {
                action,
                path: path.to_path_buf(),
                source,
            }
        };
        let mut text = format!("{PEM_BEGIN}\n{}\n{PEM_END}\n", hex(&self.to_bytes()));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io("create"))?;
        let written = file.write_all(text.as_bytes()).map_err(io("write"));
        text.zeroize();
        written?;
        file.sync_all().map_err(io("sync"))
    }

    /// Reads a key written by [`SecretKey::save`]. Refuses a file that group or others can
    /// read, as ssh does, because a leaked subnet key lets anyone forge the subnet's state.
    pub fn load(path: &Path) -> Result<SecretKey, BlsError> {
        let io = |action| {
            move |source| BlsError::Io {
                action,
                path: path.to_path_buf(),
                source,
            }
        };
        let mode = fs::metadata(path).map_err(io("stat"))?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(BlsError::TooOpen {
                path: path.to_path_buf(),
                mode: mode & 0o777,
            });
        }
        let mut text = fs::read_to_string(path).map_err(io("read"))?;
        let parsed = parse_key_text(&text);
        text.zeroize();
        parsed.map_err(|detail| BlsError::BadFile {
            path: path.to_path_buf(),
            detail,
        })
    }
}

fn parse_key_text(text: &str) -> Result<SecretKey, &'static str> {
    let mut lines = text.lines().map(str::trim).filter(|line| !line.is_empty());
    if lines.next() != Some(PEM_BEGIN) {
        return Err("missing the BEGIN line");
    }
    let body = lines.next().ok_or("missing the key line")?;
    if lines.next() != Some(PEM_END) {
        return Err("missing the END line");
    }
    if lines.next().is_some() {
        return Err("text after the END line");
    }
    let mut bytes = unhex(body).ok_or("the key line is not hex")?;
    let key = SecretKey::from_bytes(&bytes).map_err(|_| "the key is not a non-zero scalar below r");
    bytes.zeroize();
    key
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.scalar.zeroize();
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {:?})", self.public_key())
    }
}

/// Maps a message to G1 with the IC's suite and tag.
pub fn hash_to_g1(message: &[u8]) -> G1Projective {
    hash_to_g1_with_tag(message, DST)
}

/// The suite `BLS12381G1_XMD:SHA-256_SSWU_RO_` under any tag (RFC 9380's test vectors use
/// their own).
fn hash_to_g1_with_tag(message: &[u8], dst: &[u8]) -> G1Projective {
    <G1Projective as HashToCurve<ExpandMsgXmd<Sha256>>>::hash_to_curve(message, dst)
}

impl PublicKey {
    fn from_point(point: G2Affine) -> PublicKey {
        PublicKey {
            point,
            bytes: point.to_compressed(),
        }
    }

    /// Parses a compressed G2 point, checking that it lies in the prime-order subgroup and is
    /// not the identity (under which the identity signature would verify for every message).
    pub fn from_bytes(bytes: &[u8]) -> Result<PublicKey, BlsError> {
        let array: &[u8; PUBLIC_KEY_BYTES] =
            bytes.try_into().map_err(|_| BlsError::WrongLength {
                what: "public key",
                expected: PUBLIC_KEY_BYTES,
                found: bytes.len(),
            })?;
        let point = Option::<G2Affine>::from(G2Affine::from_compressed(array))
            .ok_or(BlsError::Invalid { what: "public key" })?;
        if bool::from(point.is_identity()) {
            return Err(BlsError::Degenerate { what: "public key" });
        }
        Ok(PublicKey {
            point,
            bytes: *array,
        })
    }

    pub fn to_bytes(&self) -> [u8; PUBLIC_KEY_BYTES] {
        self.bytes
    }

    /// The DER encoding agents expect (root key, `/subnet/<id>/public_key`).
    pub fn to_der(&self) -> [u8; DER_PUBLIC_KEY_BYTES] {
        let mut der = [0; DER_PUBLIC_KEY_BYTES];
        der[..DER_PREFIX.len()].copy_from_slice(&DER_PREFIX);
        der[DER_PREFIX.len()..].copy_from_slice(&self.bytes);
        der
    }

    /// Parses a DER public key the way agents do: the exact prefix, then the 96 key bytes.
    pub fn from_der(der: &[u8]) -> Result<PublicKey, BlsError> {
        if der.len() != DER_PUBLIC_KEY_BYTES {
            return Err(BlsError::WrongLength {
                what: "DER public key",
                expected: DER_PUBLIC_KEY_BYTES,
                found: der.len(),
            });
        }
        let (prefix, key) = der.split_at(DER_PREFIX.len());
        if prefix != DER_PREFIX {
            return Err(BlsError::WrongDerPrefix);
        }
        PublicKey::from_bytes(key)
    }

    /// The subnet id this key names: the self-authenticating principal of its DER encoding.
    pub fn subnet_id(&self) -> Principal {
        Principal::self_authenticating(&self.to_der())
    }

    /// Checks `e(signature, g2) = e(H(message), pk)` as one product of two Miller loops and a
    /// single final exponentiation: `e(signature, -g2) · e(H(message), pk) = 1`.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<(), BlsError> {
        let hashed = G1Affine::from(hash_to_g1(message));
        let minus_g2 = G2Prepared::from(-G2Affine::generator());
        let key = G2Prepared::from(self.point);
        let product = multi_miller_loop(&[(&signature.point, &minus_g2), (&hashed, &key)])
            .final_exponentiation();
        if product == Gt::identity() {
            Ok(())
        } else {
            Err(BlsError::BadSignature)
        }
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", hex(&self.bytes))
    }
}

impl Signature {
    fn from_point(point: G1Affine) -> Signature {
        Signature {
            point,
            bytes: point.to_compressed(),
        }
    }

    /// Parses a compressed G1 point in the prime-order subgroup. The identity is refused: it is
    /// the signature of the zero key, which [`PublicKey::from_bytes`] never accepts.
    pub fn from_bytes(bytes: &[u8]) -> Result<Signature, BlsError> {
        let array: &[u8; SIGNATURE_BYTES] =
            bytes.try_into().map_err(|_| BlsError::WrongLength {
                what: "signature",
                expected: SIGNATURE_BYTES,
                found: bytes.len(),
            })?;
        let point = Option::<G1Affine>::from(G1Affine::from_compressed(array))
            .ok_or(BlsError::Invalid { what: "signature" })?;
        if bool::from(point.is_identity()) {
            return Err(BlsError::Degenerate { what: "signature" });
        }
        Ok(Signature {
            point,
            bytes: *array,
        })
    }

    pub fn to_bytes(&self) -> [u8; SIGNATURE_BYTES] {
        self.bytes
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", hex(&self.bytes))
    }
}

/// Verifies `signature` (raw bytes) over `message` under a DER public key: the whole check an
/// agent makes of a certificate's signature, with every parse failure an error.
pub fn verify_der(der_public_key: &[u8], message: &[u8], signature: &[u8]) -> Result<(), BlsError> {
    PublicKey::from_der(der_public_key)?.verify(message, &Signature::from_bytes(signature)?)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("icn-bls-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn sign_then_verify_round_trips_and_wrong_inputs_fail() {
        let key = SecretKey::from_seed(&[7; 32]);
        let public = key.public_key();
        let signature = key.sign(b"certified state");
        assert_eq!(public.verify(b"certified state", &signature).ok(), Some(()));
        assert!(matches!(
            public.verify(b"certified statf", &signature),
            Err(BlsError::BadSignature)
        ));
        let other = SecretKey::from_seed(&[8; 32]).public_key();
        assert!(matches!(
            other.verify(b"certified state", &signature),
            Err(BlsError::BadSignature)
        ));
        // Through the byte encodings, as a certificate carries them.
        let der = public.to_der();
        assert!(verify_der(&der, b"certified state", &signature.to_bytes()).is_ok());
        assert!(verify_der(&der, b"", &signature.to_bytes()).is_err());
        // BLS signatures are deterministic: the same key signs the same bytes alike.
        assert_eq!(key.sign(b"certified state"), signature);
    }

    /// RFC 9380 appendix J.9.1 (suite `BLS12381G1_XMD:SHA-256_SSWU_RO_`): the points are
    /// `x ‖ y`, which is the uncompressed encoding of a point that is not the identity.
    #[test]
    fn hash_to_curve_matches_the_rfc_9380_vectors() {
        const TAG: &[u8] = b"QUUX-V01-CS02-with-BLS12381G1_XMD:SHA-256_SSWU_RO_";
        for (message, x, y) in [
            (
                &b""[..],
                "052926add2207b76ca4fa57a8734416c8dc95e24501772c814278700eed6d1e4e8cf62d9c09db0fac349612b759e79a1",
                "08ba738453bfed09cb546dbb0783dbb3a5f1f566ed67bb6be0e8c67e2e81a4cc68ee29813bb7994998f3eae0c9c6a265",
            ),
            (
                b"abc",
                "03567bc5ef9c690c2ab2ecdf6a96ef1c139cc0b2f284dca0a9a7943388a49a3aee664ba5379a7655d3c68900be2f6903",
                "0b9c15f3fe6e5cf4211f346271d7b01c8f3b28be689c8429c85b67af215533311f0b8dfaaa154fa6b88176c229f2885d",
            ),
        ] {
            let point = G1Affine::from(hash_to_g1_with_tag(message, TAG));
            assert_eq!(hex(&point.to_uncompressed()), format!("{x}{y}"), "{message:?}");
        }
        // The IC's tag gives another point for the same message.
        assert_ne!(
            G1Affine::from(hash_to_g1(b"abc")),
            G1Affine::from(hash_to_g1_with_tag(b"abc", TAG))
        );
    }

    proptest::proptest! {
        /// Arbitrary bytes as a DER key, a raw key or a signature are errors, never panics.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..160)) {
            let _ = PublicKey::from_der(&bytes);
            let _ = PublicKey::from_bytes(&bytes);
            let _ = Signature::from_bytes(&bytes);
            let _ = SecretKey::from_bytes(&bytes);
            let mut der = DER_PREFIX.to_vec();
            der.extend(bytes.iter().cycle().take(PUBLIC_KEY_BYTES));
            let signature: Vec<u8> = bytes.iter().rev().cycle().take(SIGNATURE_BYTES).copied().collect();
            proptest::prop_assert!(verify_der(&der, &bytes, &signature).is_err());
        }
    }

    /// agent-rs verifies certificate signatures with `ic_verify_bls_signature`; our keys,
    /// signatures and secret encoding must be interchangeable with its.
    #[test]
    fn agent_rs_verifier_accepts_our_signatures_and_we_accept_its() {
        use ic_verify_bls_signature as agent;
        let key = SecretKey::from_seed(&[9; 32]);
        let message = b"\x0Dic-state-root some root hash";
        let signature = key.sign(message);
        let public = key.public_key();
        assert_eq!(
            agent::verify_bls_signature(&signature.to_bytes(), message, &public.to_bytes()),
            Ok(())
        );
        assert!(
            agent::verify_bls_signature(&signature.to_bytes(), b"other", &public.to_bytes())
                .is_err()
        );
        // The same big-endian secret encoding: their key from our bytes is our key.
        let theirs = agent::PrivateKey::deserialize(&key.to_bytes()).unwrap();
        assert_eq!(theirs.public_key().serialize(), public.to_bytes());
        assert_eq!(theirs.serialize(), key.to_bytes());
        let their_signature = theirs.sign(b"from agent-rs");
        let parsed = Signature::from_bytes(&their_signature.serialize()).unwrap();
        assert!(public.verify(b"from agent-rs", &parsed).is_ok());
    }

    #[test]
    fn seeds_determine_keys_and_generated_keys_differ() {
        let a = SecretKey::from_seed(&[1; 32]);
        let b = SecretKey::from_seed(&[1; 32]);
        assert_eq!(a.to_bytes(), b.to_bytes());
        assert_ne!(a.to_bytes(), SecretKey::from_seed(&[2; 32]).to_bytes());
        let fresh = SecretKey::generate().unwrap();
        let again = SecretKey::generate().unwrap();
        assert_ne!(fresh.to_bytes(), again.to_bytes());
        let restored = SecretKey::from_bytes(&fresh.to_bytes()).unwrap();
        assert_eq!(restored.public_key(), fresh.public_key());
    }

    #[test]
    fn encodings_round_trip_and_bad_bytes_are_errors() {
        let key = SecretKey::from_seed(&[3; 32]);
        let public = key.public_key();
        assert_eq!(PublicKey::from_bytes(&public.to_bytes()).unwrap(), public);
        assert_eq!(PublicKey::from_der(&public.to_der()).unwrap(), public);
        let signature = key.sign(b"m");
        assert_eq!(
            Signature::from_bytes(&signature.to_bytes()).unwrap(),
            signature
        );

        assert!(matches!(
            PublicKey::from_bytes(&[0; 95]),
            Err(BlsError::WrongLength { found: 95, .. })
        ));
        assert!(matches!(
            PublicKey::from_der(&public.to_der()[1..]),
            Err(BlsError::WrongLength { .. })
        ));
        let mut der = public.to_der();
        der[10] ^= 1;
        assert!(matches!(
            PublicKey::from_der(&der),
            Err(BlsError::WrongDerPrefix)
        ));
        // The compressed identity (infinity flag set) is a valid encoding but refused.
        let mut identity_g2 = [0u8; 96];
        identity_g2[0] = 0xc0;
        assert!(matches!(
            PublicKey::from_bytes(&identity_g2),
            Err(BlsError::Degenerate { .. })
        ));
        let mut identity_g1 = [0u8; 48];
        identity_g1[0] = 0xc0;
        assert!(matches!(
            Signature::from_bytes(&identity_g1),
            Err(BlsError::Degenerate { .. })
        ));
        // Not on the curve / no compression flag.
        assert!(matches!(
            Signature::from_bytes(&[0x80; 48]),
            Err(BlsError::Invalid { .. })
        ));
        assert!(matches!(
            Signature::from_bytes(&[0; 48]),
            Err(BlsError::Invalid { .. })
        ));
        // An altered key either fails to parse or is another key the signature fails under.
        let mut flipped = public.to_bytes();
        flipped[95] ^= 1;
        if let Ok(altered) = PublicKey::from_bytes(&flipped) {
            assert!(altered.verify(b"m", &signature).is_err());
        }
        // Scalars: zero and r itself are refused, r - 1 is accepted.
        assert!(matches!(
            SecretKey::from_bytes(&[0; 32]),
            Err(BlsError::Degenerate { .. })
        ));
        let r = unhex("73eda753299d7d483339d80809a1d80553bda402fffe5bfeffffffff00000001").unwrap();
        assert!(matches!(
            SecretKey::from_bytes(&r),
            Err(BlsError::Invalid { .. })
        ));
        let mut r_minus_1 = r.clone();
        r_minus_1[31] = 0;
        assert!(SecretKey::from_bytes(&r_minus_1).is_ok());
        assert!(matches!(
            SecretKey::from_bytes(&[1; 31]),
            Err(BlsError::WrongLength { .. })
        ));
    }

    #[test]
    fn der_prefix_is_the_ic_one_and_names_the_subnet() {
        // The prefix of the IC mainnet root key as agents embed it.
        assert_eq!(
            hex(&DER_PREFIX),
            "308182301d060d2b0601040182dc7c0503010201060c2b0601040182dc7c05030201036100"
        );
        let public = SecretKey::from_seed(&[4; 32]).public_key();
        let id = public.subnet_id();
        assert!(id.is_self_authenticating());
        assert_eq!(id, Principal::self_authenticating(&public.to_der()));
    }

    #[test]
    fn key_files_round_trip_with_mode_0600_and_bad_files_are_refused() {
        let dir = temp_dir("file");
        let path = dir.join(SECRET_KEY_FILE_NAME);
        let key = SecretKey::from_seed(&[5; 32]);
        key.save(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let loaded = SecretKey::load(&path).unwrap();
        assert_eq!(loaded.to_bytes(), key.to_bytes());
        // Never overwrites.
        assert!(matches!(
            key.save(&path),
            Err(BlsError::Io {
                action: "create",
                ..
            })
        ));
        // Group-readable: refused.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            SecretKey::load(&path),
            Err(BlsError::TooOpen { mode: 0o640, .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        for (text, detail) in [
            ("", "missing the BEGIN line"),
            (&format!("{PEM_BEGIN}\n"), "missing the key line"),
            (
                &format!("{PEM_BEGIN}\nzz\n{PEM_END}\n"),
                "the key line is not hex",
            ),
            (
                &format!("{PEM_BEGIN}\n{}\n", "00".repeat(32)),
                "missing the END line",
            ),
            (
                &format!("{PEM_BEGIN}\n{}\n{PEM_END}\n", "00".repeat(32)),
                "the key is not a non-zero scalar below r",
            ),
            (
                &format!("{PEM_BEGIN}\n{}\n{PEM_END}\nmore\n", hex(&key.to_bytes())),
                "text after the END line",
            ),
        ] {
            fs::write(&path, text).unwrap();
            match SecretKey::load(&path) {
                Err(BlsError::BadFile { detail: found, .. }) => {
                    assert_eq!(found, detail, "{text:?}")
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
        assert!(matches!(
            SecretKey::load(&dir.join("missing")),
            Err(BlsError::Io { action: "stat", .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let key = SecretKey::from_seed(&[6; 32]);
        let text = format!("{key:?}");
        assert!(!text.contains(&hex(&key.to_bytes())));
        assert!(text.contains(&hex(&key.public_key().to_bytes())));
    }
}
