//! Certifying the replica's state, and checking certificates the way IC agents do.
//!
//! Each height's state is a [`LabeledTree`] (`/time`, `/request_status/...`,
//! `/subnet/<id>/{public_key, canister_ranges}`, `/canister/...`). [`StateCertifier::certify`]
//! signs its root hash once, with the subnet's BLS key over `"\x0Dic-state-root" ‖ root`
//! ([`Certificate::signing_bytes`]); every read_state or synchronous call answer at that height
//! is then a [`CertifiedState::certificate`]: the witness that reveals exactly the paths asked
//! for, and that one signature, CBOR-encoded. A witness reconstructs to the same root hash as
//! the full tree, so one signature per height serves every reader; signing is the expensive
//! part (a scalar multiplication in G1 plus hash-to-curve) and is never done per request.
//!
//! [`CertificateVerifier`] is the other side, the checks an agent makes before it trusts a
//! certificate: decode, follow a delegation if there is one (the root key certifies the
//! subnet's key), reconstruct the root hash, verify the BLS signature, and refuse a `/time`
//! further from the reader's clock than the permitted skew (a replayed old certificate). It is
//! what the tests of this module, and the replica's own end-to-end tests, hold issued
//! certificates to.

use std::borrow::Cow;
use std::collections::BTreeMap;

use icn_codecs::ic::hash::Hash;
use icn_codecs::ic::tree::{empty_digest, fork_digest, labeled_digest, leaf_digest};
use icn_codecs::ic::{
    canister_in_ranges, decode_canister_ranges, decode_certificate, decode_time,
    encode_canister_ranges, encode_time, Certificate, HashTree, IcDecodeError, IcLimits,
    LabeledTree, Lookup, Principal,
};

use super::bls::{BlsError, PublicKey, SecretKey, Signature};

/// Why a certificate is not to be trusted.
#[derive(Debug, thiserror::Error)]
pub enum CertificationError {
    #[error("certificate does not decode: {0}")]
    Decode(#[from] IcDecodeError),
    #[error("certificate signature: {0}")]
    Signature(#[source] BlsError),
    #[error("delegation: {0}")]
    Delegation(&'static str),
    #[error("delegation's public key: {0}")]
    DelegationKey(#[source] BlsError),
    #[error("canister {canister} is outside the delegated subnet's canister ranges")]
    CanisterNotInRange { canister: Principal },
    #[error("certificate has no /time")]
    TimeMissing,
    #[error("certificate /time: {0}")]
    TimeMalformed(#[source] IcDecodeError),
    #[error("delegation's canister ranges: {0}")]
    RangesMalformed(#[source] IcDecodeError),
    /// `/time` is further than the permitted skew from the reader's clock, in either
    /// direction: an old certificate replayed, or a replica whose clock is off.
    #[error("certificate time {time_ns} ns is more than {skew_ns} ns from now ({now_ns} ns)")]
    TimeSkew {
        time_ns: u64,
        now_ns: u64,
        skew_ns: u64,
    },
}

/// Signs state trees with the subnet's key.
pub struct StateCertifier {
    key: SecretKey,
    public: PublicKey,
}

/// A state whose root hash is signed: the source of every certificate issued at its height.
/// It keeps the digest of every node of the hash tree, so that cutting a certificate costs
/// the size of what it reveals (plus a logarithmic number of sibling hashes per level), not a
/// rehash of the whole state: with 10,000 request statuses, rehashing took tens of
/// milliseconds per read_state.
#[derive(Debug)]
pub struct CertifiedState {
    tree: HashedTree,
    signature: Signature,
}

/// A [`LabeledTree`] with every digest of its hash tree computed once.
#[derive(Debug)]
struct HashedTree {
    digest: Hash,
    kind: HashedKind,
}

#[derive(Debug)]
enum HashedKind {
    Leaf(Vec<u8>),
    /// Children in label order. The hash tree joins them into a balanced fork tree, each range
    /// `[lo, hi)` split at `lo + (hi - lo) / 2` (the shape `LabeledTree::to_hash_tree` builds);
    /// `forks` holds the digests of its fork nodes in pre-order, so the fork over `[lo, hi)`
    /// at index `base` has its left half's forks from `base + 1` and its right half's from
    /// `base + (mid - lo)`.
    SubTree {
        labels: Vec<Vec<u8>>,
        children: Vec<HashedTree>,
        /// `labeled_digest(label, child)` per child.
        labeled: Vec<Hash>,
        forks: Vec<Hash>,
    },
}

/// Requested paths as a trie; `whole` asks for everything below a node.
#[derive(Default)]
struct PathTrie<'p> {
    whole: bool,
    children: BTreeMap<&'p [u8], PathTrie<'p>>,
}

/// What a witness shows of one child of a subtree.
#[derive(Clone, Copy)]
enum Reveal<'t, 'p> {
    /// Its label with the child's witness for this trie.
    Descend(&'t PathTrie<'p>),
    /// Only its label and digest: a neighbour that proves a requested label absent.
    LabelOnly,
}

impl HashedTree {
    fn new(tree: LabeledTree) -> HashedTree {
        match tree {
            LabeledTree::Leaf(value) => HashedTree {
                digest: leaf_digest(&value),
                kind: HashedKind::Leaf(value),
            },
            LabeledTree::SubTree(map) => {
                let (labels, children): (Vec<Vec<u8>>, Vec<HashedTree>) = map
                    .into_iter()
                    .map(|(label, child)| (label, HashedTree::new(child)))
                    .unzip();
                let labeled: Vec<Hash> = labels
                    .iter()
                    .zip(&children)
                    .map(|(label, child)| labeled_digest(label, &child.digest))
                    .collect();
                let mut forks = Vec::with_capacity(labeled.len().saturating_sub(1));
                let digest = if labeled.is_empty() {
                    empty_digest()
                } else {
                    fork_digests(&labeled, &mut forks)
                };
                HashedTree {
                    digest,
                    kind: HashedKind::SubTree {
                        labels,
                        children,
                        labeled,
                        forks,
                    },
                }
            }
        }
    }

    /// The witness of this node for `trie`: the same tree `LabeledTree::witness` builds.
    fn witness(&self, trie: &PathTrie<'_>) -> HashTree<'static> {
        let HashedKind::SubTree { labels, .. } = &self.kind else {
            // A leaf is revealed whenever a path reaches it: it proves nothing is below it.
            return self.full();
        };
        if trie.whole {
            return self.full();
        }
        if labels.is_empty() {
            return HashTree::Empty;
        }
        let mut reveal: Vec<(usize, Reveal<'_, '_>)> = Vec::new();
        for (wanted, sub) in &trie.children {
            match labels.binary_search_by(|label| label.as_slice().cmp(wanted)) {
                Ok(index) => reveal.push((index, Reveal::Descend(sub))),
                Err(at) => {
                    // Absent: show the labels on both sides of where it would be.
                    if at > 0 {
                        reveal.push((at - 1, Reveal::LabelOnly));
                    }
                    if at < labels.len() {
                        reveal.push((at, Reveal::LabelOnly));
                    }
                }
            }
        }
        // One entry per index, a descent winning over a neighbour's label.
        reveal.sort_by_key(|(index, how)| (*index, matches!(how, Reveal::LabelOnly)));
        reveal.dedup_by_key(|(index, _)| *index);
        self.join(0, labels.len(), 0, &reveal)
    }

    /// The witness of the fork tree over children `[lo, hi)` whose fork digests start at
    /// `base`, revealing the children in `reveal` (sorted, all within the range).
    fn join(
        &self,
        lo: usize,
        hi: usize,
        base: usize,
        reveal: &[(usize, Reveal<'_, '_>)],
    ) -> HashTree<'static> {
        let HashedKind::SubTree {
            labels,
            children,
            labeled,
            forks,
        } = &self.kind
        else {
            unreachable!("join is only called on subtrees")
        };
        if reveal.is_empty() {
            return HashTree::Pruned(if hi - lo == 1 {
                labeled[lo]
            } else {
                forks[base]
            });
        }
        if hi - lo == 1 {
            let child = &children[lo];
            let sub = match reveal[0].1 {
                Reveal::Descend(trie) => child.witness(trie),
                Reveal::LabelOnly => HashTree::Pruned(child.digest),
            };
            return HashTree::Labeled(Cow::Owned(labels[lo].clone()), Box::new(sub));
        }
        let mid = lo + (hi - lo) / 2;
        let split = reveal.partition_point(|(index, _)| *index < mid);
        HashTree::fork(
            self.join(lo, mid, base + 1, &reveal[..split]),
            self.join(mid, hi, base + (mid - lo), &reveal[split..]),
        )
    }

    /// The whole hash tree under this node.
    fn full(&self) -> HashTree<'static> {
        match &self.kind {
            HashedKind::Leaf(value) => HashTree::Leaf(Cow::Owned(value.clone())),
            HashedKind::SubTree {
                labels, children, ..
            } => {
                if labels.is_empty() {
                    return HashTree::Empty;
                }
                fn all(labels: &[Vec<u8>], children: &[HashedTree]) -> HashTree<'static> {
                    if labels.len() == 1 {
                        return HashTree::Labeled(
                            Cow::Owned(labels[0].clone()),
                            Box::new(children[0].full()),
                        );
                    }
                    let mid = labels.len() / 2;
                    HashTree::fork(
                        all(&labels[..mid], &children[..mid]),
                        all(&labels[mid..], &children[mid..]),
                    )
                }
                all(labels, children)
            }
        }
    }
}

/// Pushes the fork digests over `labeled` in pre-order and returns the root's digest (the
/// single labeled digest when there is one child).
fn fork_digests(labeled: &[Hash], forks: &mut Vec<Hash>) -> Hash {
    if labeled.len() == 1 {
        return labeled[0];
    }
    let at = forks.len();
    forks.push([0; 32]);
    let mid = labeled.len() / 2;
    let left = fork_digests(&labeled[..mid], forks);
    let right = fork_digests(&labeled[mid..], forks);
    forks[at] = fork_digest(&left, &right);
    forks[at]
}

impl StateCertifier {
    pub fn new(key: SecretKey) -> StateCertifier {
        let public = key.public_key();
        StateCertifier { key, public }
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Signs `state`'s root hash. Costs one full hash of the tree (whose digests are kept)
    /// and one BLS signature.
    pub fn certify(&self, state: LabeledTree) -> CertifiedState {
        let tree = HashedTree::new(state);
        let signature = self.key.sign(&state_root_signing_bytes(&tree.digest));
        CertifiedState { tree, signature }
    }
}

/// The bytes a state certificate's signature covers: the `ic-state-root` domain separator
/// (length-prefixed, as every IC domain separator is) followed by the root hash.
pub fn state_root_signing_bytes(root: &Hash) -> Vec<u8> {
    [icn_codecs::ic::hash::DOMAIN_IC_STATE_ROOT, &root[..]].concat()
}

impl CertifiedState {
    pub fn root_hash(&self) -> Hash {
        self.tree.digest
    }

    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// The certificate for `paths` (read_state's `paths`: label sequences), CBOR-encoded and
    /// self-describe tagged as the IC sends it. Each requested path is revealed in full or
    /// proven absent; everything else is pruned to its hash.
    pub fn certificate<P: AsRef<[u8]>>(&self, paths: &[Vec<P>]) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_certificate(paths, &mut out);
        out
    }

    /// The witness for `paths` alone: every requested path's subtree in full or proven
    /// absent, everything else pruned to its hash. The paths come from a decoded read_state,
    /// whose count and labels `IcLimits` (`paths_max`, `path_labels_max`) already bound; the
    /// trie built from them is dropped before this returns.
    pub fn witness<P: AsRef<[u8]>>(&self, paths: &[Vec<P>]) -> HashTree<'static> {
        let mut trie = PathTrie::default();
        for path in paths {
            let mut node = &mut trie;
            for label in path {
                if node.whole {
                    break;
                }
                node = node.children.entry(label.as_ref()).or_default();
            }
            node.whole = true;
            node.children.clear();
        }
        self.tree.witness(&trie)
    }

    /// [`CertifiedState::certificate`] appending to `out`.
    pub fn encode_certificate<P: AsRef<[u8]>>(&self, paths: &[Vec<P>], out: &mut Vec<u8>) {
        let signature = self.signature.to_bytes();
        Certificate {
            tree: self.witness(paths),
            signature: Cow::Borrowed(&signature),
            delegation: None,
        }
        .encode(out);
    }
}

/// The part of the state tree that describes the subnet itself, as read_state serves it at
/// `/subnet/<id>/public_key` and `/subnet/<id>/canister_ranges`, with `/time` beside it: the
/// minimal tree every certified height has. The replica adds `request_status` and `canister`
/// subtrees to the returned map.
pub fn base_state(
    time_ns: u64,
    subnet_key: &PublicKey,
    canister_ranges: &[(Principal, Principal)],
) -> BTreeMap<Vec<u8>, LabeledTree> {
    let subnet = BTreeMap::from([
        (
            b"canister_ranges".to_vec(),
            LabeledTree::Leaf(encode_canister_ranges(canister_ranges)),
        ),
        (
            b"public_key".to_vec(),
            LabeledTree::Leaf(subnet_key.to_der().to_vec()),
        ),
    ]);
    BTreeMap::from([
        (b"time".to_vec(), LabeledTree::Leaf(encode_time(time_ns))),
        (
            b"subnet".to_vec(),
            LabeledTree::SubTree(BTreeMap::from([(
                subnet_key.subnet_id().as_slice().to_vec(),
                LabeledTree::SubTree(subnet),
            )])),
        ),
    ])
}

/// Checks certificates against a root key, as an agent does.
#[derive(Clone, Debug)]
pub struct CertificateVerifier {
    root_key: PublicKey,
    /// How far `/time` may be from the reader's clock (agent-rs allows 5 minutes).
    pub skew_ns: u64,
    pub limits: IcLimits,
}

/// A certificate that passed [`CertificateVerifier::verify`]: its witness can be trusted.
#[derive(Debug)]
pub struct VerifiedCertificate<'a> {
    pub certificate: Certificate<'a>,
    pub time_ns: u64,
    /// The key that signed the tree: the root key, or the delegated subnet's.
    pub signer: PublicKey,
}

impl VerifiedCertificate<'_> {
    pub fn lookup<L: AsRef<[u8]>>(&self, path: &[L]) -> Lookup<'_> {
        self.certificate.tree.lookup(path)
    }
}

impl CertificateVerifier {
    /// Agents' default permitted drift between a certificate's time and the local clock.
    pub const DEFAULT_SKEW_NS: u64 = 5 * 60 * 1_000_000_000;

    pub fn new(root_key: PublicKey) -> CertificateVerifier {
        CertificateVerifier {
            root_key,
            skew_ns: Self::DEFAULT_SKEW_NS,
            limits: IcLimits::default(),
        }
    }

    /// Verifies `bytes` at reader time `now_ns`. `canister`, when given, must lie in the
    /// delegated subnet's canister ranges (agents pass the effective canister id; a
    /// certificate without a delegation is signed by the root key, which may speak for any
    /// canister).
    pub fn verify<'a>(
        &self,
        bytes: &'a [u8],
        now_ns: u64,
        canister: Option<Principal>,
    ) -> Result<VerifiedCertificate<'a>, CertificationError> {
        let certificate = decode_certificate(bytes, &self.limits)?;
        let signer = match &certificate.delegation {
            None => self.root_key,
            Some(delegation) => {
                let inner = decode_certificate(&delegation.certificate, &self.limits)?;
                if inner.delegation.is_some() {
                    return Err(CertificationError::Delegation(
                        "a delegation's certificate has a delegation of its own",
                    ));
                }
                check_signature(&inner, &self.root_key)?;
                let subnet = delegation.subnet_id.as_slice();
                let der = match inner.tree.lookup(&[&b"subnet"[..], subnet, b"public_key"]) {
                    Lookup::Found(der) => der,
                    _ => {
                        return Err(CertificationError::Delegation(
                            "the delegation does not certify the subnet's public key",
                        ))
                    }
                };
                let key = PublicKey::from_der(der).map_err(CertificationError::DelegationKey)?;
                if let Some(canister) = canister {
                    let ranges =
                        match inner
                            .tree
                            .lookup(&[&b"subnet"[..], subnet, b"canister_ranges"])
                        {
                            Lookup::Found(leaf) => decode_canister_ranges(leaf, &self.limits)
                                .map_err(CertificationError::RangesMalformed)?,
                            _ => {
                                return Err(CertificationError::Delegation(
                                    "the delegation does not certify the subnet's canister ranges",
                                ))
                            }
                        };
                    if !canister_in_ranges(&canister, &ranges) {
                        return Err(CertificationError::CanisterNotInRange { canister });
                    }
                }
                key
            }
        };
        check_signature(&certificate, &signer)?;
        let time_ns = match certificate.tree.lookup(&[b"time"]) {
            Lookup::Found(leaf) => decode_time(leaf).map_err(CertificationError::TimeMalformed)?,
            _ => return Err(CertificationError::TimeMissing),
        };
        if time_ns.abs_diff(now_ns) > self.skew_ns {
            return Err(CertificationError::TimeSkew {
                time_ns,
                now_ns,
                skew_ns: self.skew_ns,
            });
        }
        Ok(VerifiedCertificate {
            certificate,
            time_ns,
            signer,
        })
    }
}

/// Reconstructs the root hash of `certificate`'s witness and checks the signature over it.
fn check_signature(
    certificate: &Certificate<'_>,
    key: &PublicKey,
) -> Result<(), CertificationError> {
    let signature =
        Signature::from_bytes(&certificate.signature).map_err(CertificationError::Signature)?;
    key.verify(&certificate.signing_bytes(), &signature)
        .map_err(CertificationError::Signature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::bls::unhex;

    fn fixture(text: &str) -> Vec<u8> {
        unhex(text.trim()).expect("fixture is hex")
    }

    /// A certificate the IC mainnet's NNS subnet issued (a ledger call's request status, with
    /// no delegation: the NNS signs with the root key itself), and the mainnet root key every
    /// agent embeds. Verifying it proves that hash trees, the domain separator, hash-to-curve,
    /// the signature group and the DER parsing are all the IC's.
    const MAINNET_CERTIFICATE: &str = include_str!("testdata/mainnet_nns_certificate.hex");
    const MAINNET_ROOT_KEY: &str = include_str!("testdata/mainnet_root_key.hex");

    #[test]
    fn a_real_mainnet_certificate_verifies_under_the_mainnet_root_key() {
        let bytes = fixture(MAINNET_CERTIFICATE);
        let root = PublicKey::from_der(&fixture(MAINNET_ROOT_KEY)).unwrap();
        let limits = IcLimits::default();
        let decoded = decode_certificate(&bytes, &limits).unwrap();
        assert!(decoded.delegation.is_none());
        let Lookup::Found(time_leaf) = decoded.tree.lookup(&[b"time"]) else {
            panic!("no /time")
        };
        let time_ns = decode_time(time_leaf).unwrap();
        // 2024-12-04 12:59:46 UTC, when the call was answered.
        assert_eq!(time_ns, 1_733_317_186_048_345_409);

        let verifier = CertificateVerifier::new(root);
        let verified = verifier
            .verify(&bytes, time_ns + 1_000_000_000, None)
            .unwrap();
        assert_eq!(verified.time_ns, time_ns);
        assert_eq!(verified.signer, root);
        let request_id =
            fixture("34a44c265c7ff6c8e4ed5c3d442f12b8b52580f800ffb892a89ad56b3167a626");
        assert_eq!(
            verified.lookup(&[&b"request_status"[..], &request_id, b"status"]),
            Lookup::Found(b"replied")
        );

        // Read a day later, the same certificate is a replay.
        assert!(matches!(
            verifier.verify(&bytes, time_ns + 86_400_000_000_000, None),
            Err(CertificationError::TimeSkew { .. })
        ));
        // Another root key, or one altered byte anywhere in the tree, and it fails.
        let other = CertificateVerifier::new(SecretKey::from_seed(&[1; 32]).public_key());
        assert!(matches!(
            other.verify(&bytes, time_ns, None),
            Err(CertificationError::Signature(BlsError::BadSignature))
        ));
        let reply_at = bytes
            .windows(5)
            .position(|w| w == b"DIDL\x0c")
            .expect("the reply is in the tree");
        let mut tampered = bytes.clone();
        tampered[reply_at + 200] ^= 1;
        assert!(matches!(
            verifier.verify(&tampered, time_ns, None),
            Err(CertificationError::Signature(BlsError::BadSignature))
        ));
    }

    fn state(certifier: &StateCertifier, time_ns: u64) -> LabeledTree {
        let ranges = [(
            Principal::from_canister_index(0),
            Principal::from_canister_index(0xfffff),
        )];
        let mut state = base_state(time_ns, certifier.public_key(), &ranges);
        let status = |status: &[u8], reply: &[u8]| {
            LabeledTree::SubTree(BTreeMap::from([
                (b"reply".to_vec(), LabeledTree::Leaf(reply.to_vec())),
                (b"status".to_vec(), LabeledTree::Leaf(status.to_vec())),
            ]))
        };
        state.insert(
            b"request_status".to_vec(),
            LabeledTree::SubTree(BTreeMap::from([
                (
                    [1u8; 32].to_vec(),
                    status(b"replied", b"DIDL\x00\x01\x7d\x05"),
                ),
                (
                    [9u8; 32].to_vec(),
                    status(b"replied", b"DIDL\x00\x01\x7d\x06"),
                ),
            ])),
        );
        LabeledTree::SubTree(state)
    }

    #[test]
    fn issued_certificates_verify_and_reveal_only_what_was_asked() {
        let certifier = StateCertifier::new(SecretKey::from_seed(&[42; 32]));
        let now = 1_750_000_000_000_000_000;
        let tree = state(&certifier, now);
        let certified = certifier.certify(tree.clone());
        assert_eq!(certified.root_hash(), tree.digest());
        let subnet = certifier.public_key().subnet_id();
        let absent = [3u8; 32];
        let bytes = certified.certificate(&[
            vec![&b"time"[..]],
            vec![&b"request_status"[..], &[1; 32]],
            vec![&b"request_status"[..], &absent],
            vec![&b"subnet"[..], subnet.as_slice(), b"public_key"],
        ]);
        // Self-describe tagged, as agents expect.
        assert_eq!(&bytes[..3], &[0xd9, 0xd9, 0xf7]);

        let verifier = CertificateVerifier::new(*certifier.public_key());
        let verified = verifier.verify(&bytes, now, None).unwrap();
        assert_eq!(verified.time_ns, now);
        assert_eq!(
            verified.lookup(&[&b"request_status"[..], &[1; 32], b"reply"]),
            Lookup::Found(b"DIDL\x00\x01\x7d\x05")
        );
        assert_eq!(
            verified.lookup(&[&b"request_status"[..], &absent, b"status"]),
            Lookup::Absent
        );
        assert_eq!(
            verified.lookup(&[&b"request_status"[..], &[9; 32], b"status"]),
            Lookup::Unknown,
            "unrequested statuses stay pruned"
        );
        let Lookup::Found(der) =
            verified.lookup(&[&b"subnet"[..], subnet.as_slice(), b"public_key"])
        else {
            panic!("no subnet key")
        };
        assert_eq!(PublicKey::from_der(der).unwrap(), *certifier.public_key());
        assert_eq!(
            verified.lookup(&[&b"subnet"[..], subnet.as_slice(), b"canister_ranges"]),
            Lookup::Unknown
        );

        // The signature covers "\x0Dic-state-root" ‖ root, and nothing else.
        let mut message = b"\x0Dic-state-root".to_vec();
        message.extend_from_slice(&certified.root_hash());
        assert!(certifier
            .public_key()
            .verify(&message, certified.signature())
            .is_ok());
        assert!(certifier
            .public_key()
            .verify(&certified.root_hash(), certified.signature())
            .is_err());

        // Clock skew, both ways, at the edge.
        let skew = CertificateVerifier::DEFAULT_SKEW_NS;
        assert!(verifier.verify(&bytes, now + skew, None).is_ok());
        assert!(verifier.verify(&bytes, now - skew, None).is_ok());
        assert!(matches!(
            verifier.verify(&bytes, now + skew + 1, None),
            Err(CertificationError::TimeSkew { .. })
        ));
        assert!(matches!(
            verifier.verify(&bytes, now - skew - 1, None),
            Err(CertificationError::TimeSkew { .. })
        ));
        // Under another subnet's key: refused.
        let stranger = CertificateVerifier::new(SecretKey::from_seed(&[43; 32]).public_key());
        assert!(matches!(
            stranger.verify(&bytes, now, None),
            Err(CertificationError::Signature(BlsError::BadSignature))
        ));
    }

    #[test]
    fn certificates_without_time_or_with_bad_signatures_are_refused() {
        let certifier = StateCertifier::new(SecretKey::from_seed(&[44; 32]));
        let verifier = CertificateVerifier::new(*certifier.public_key());
        let no_time = certifier.certify(LabeledTree::SubTree(BTreeMap::from([(
            b"x".to_vec(),
            LabeledTree::Leaf(b"y".to_vec()),
        )])));
        assert!(matches!(
            verifier.verify(&no_time.certificate(&[vec![&b"time"[..]]]), 0, None),
            Err(CertificationError::TimeMissing)
        ));
        // A signature that is not a point, and one of the wrong length.
        for signature in [vec![0u8; 48], vec![0xc0; 47]] {
            let mut bytes = Vec::new();
            Certificate {
                tree: no_time.witness::<&[u8]>(&[]),
                signature: Cow::Owned(signature),
                delegation: None,
            }
            .encode(&mut bytes);
            assert!(matches!(
                verifier.verify(&bytes, 0, None),
                Err(CertificationError::Signature(_))
            ));
        }
        assert!(matches!(
            verifier.verify(b"\xa0", 0, None),
            Err(CertificationError::Decode(_))
        ));
    }

    #[test]
    fn delegations_are_followed_and_checked() {
        let root = StateCertifier::new(SecretKey::from_seed(&[50; 32]));
        let subnet = StateCertifier::new(SecretKey::from_seed(&[51; 32]));
        let now = 1_750_000_000_000_000_000;
        let subnet_id = subnet.public_key().subnet_id();
        let inside = Principal::from_canister_index(0x10);
        let outside = Principal::from_canister_index(0x30);
        // The root subnet's state lists the subnet's key and ranges.
        let mut root_state = base_state(now, root.public_key(), &[]);
        let Some(LabeledTree::SubTree(subnets)) = root_state.get_mut(&b"subnet"[..]) else {
            unreachable!()
        };
        subnets.insert(
            subnet_id.as_slice().to_vec(),
            LabeledTree::SubTree(BTreeMap::from([
                (
                    b"canister_ranges".to_vec(),
                    LabeledTree::Leaf(encode_canister_ranges(&[(
                        Principal::from_canister_index(0),
                        Principal::from_canister_index(0x1f),
                    )])),
                ),
                (
                    b"public_key".to_vec(),
                    LabeledTree::Leaf(subnet.public_key().to_der().to_vec()),
                ),
            ])),
        );
        let root_tree = LabeledTree::SubTree(root_state);
        let root_certified = root.certify(root_tree.clone());
        let delegation_bytes = root_certified.certificate(&[
            vec![&b"subnet"[..], subnet_id.as_slice(), b"public_key"],
            vec![&b"subnet"[..], subnet_id.as_slice(), b"canister_ranges"],
        ]);
        let subnet_certified = subnet.certify(LabeledTree::SubTree(base_state(
            now,
            subnet.public_key(),
            &[],
        )));
        let signature = subnet_certified.signature().to_bytes();
        let delegated = |delegation_certificate: &[u8], subnet_id| {
            let mut bytes = Vec::new();
            Certificate {
                tree: subnet_certified.witness(&[vec![&b"time"[..]]]),
                signature: Cow::Borrowed(&signature[..]),
                delegation: Some(icn_codecs::ic::CertificateDelegation {
                    subnet_id,
                    certificate: Cow::Owned(delegation_certificate.to_vec()),
                }),
            }
            .encode(&mut bytes);
            bytes
        };
        let verifier = CertificateVerifier::new(*root.public_key());
        let bytes = delegated(&delegation_bytes, subnet_id);
        let verified = verifier.verify(&bytes, now, Some(inside)).unwrap();
        assert_eq!(verified.signer, *subnet.public_key());
        assert!(verifier.verify(&bytes, now, None).is_ok());
        assert!(matches!(
            verifier.verify(&bytes, now, Some(outside)),
            Err(CertificationError::CanisterNotInRange { .. })
        ));
        // The delegation names a subnet the root certificate says nothing about.
        let wrong_id = delegated(&delegation_bytes, Principal::from_canister_index(7));
        assert!(matches!(
            verifier.verify(&wrong_id, now, None),
            Err(CertificationError::Delegation(_))
        ));
        // A delegation signed by someone other than the root.
        let forged_root = StateCertifier::new(SecretKey::from_seed(&[52; 32]));
        let forged = forged_root.certify(root_tree).certificate(&[vec![
            &b"subnet"[..],
            subnet_id.as_slice(),
            b"public_key",
        ]]);
        assert!(matches!(
            verifier.verify(&delegated(&forged, subnet_id), now, None),
            Err(CertificationError::Signature(BlsError::BadSignature))
        ));
        // A delegation inside a delegation.
        assert!(matches!(
            verifier.verify(&delegated(&bytes, subnet_id), now, None),
            Err(CertificationError::Delegation(_))
        ));
    }

    /// A small deterministic generator (xorshift64*), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        /// Labels from a small alphabet, so requested paths hit present and absent ones.
        fn label(&mut self) -> Vec<u8> {
            let len = 1 + self.below(2) as usize;
            (0..len).map(|_| b'a' + self.below(6) as u8).collect()
        }

        fn tree(&mut self, depth: u32) -> LabeledTree {
            if depth == 0 || self.below(4) == 0 {
                return LabeledTree::Leaf(self.label());
            }
            let children = self.below(9);
            LabeledTree::SubTree(
                (0..children)
                    .map(|_| (self.label(), self.tree(depth - 1)))
                    .collect(),
            )
        }
    }

    /// The cached-digest witness is exactly the witness `LabeledTree::witness` builds from
    /// scratch, for random trees (empty, single-child and odd-sized subtrees included) and
    /// random sets of present, absent, overlapping and too-deep paths.
    #[test]
    fn cached_witnesses_equal_the_reference_construction() {
        let certifier = StateCertifier::new(SecretKey::from_seed(&[60; 32]));
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..300 {
            let tree = rng.tree(4);
            let certified = certifier.certify(tree.clone());
            assert_eq!(certified.root_hash(), tree.digest());
            for _ in 0..8 {
                let paths: Vec<Vec<Vec<u8>>> = (0..rng.below(4))
                    .map(|_| (0..rng.below(5)).map(|_| rng.label()).collect())
                    .collect();
                let witness = certified.witness(&paths);
                assert_eq!(witness, tree.witness(&paths), "{tree:?} {paths:?}");
                assert_eq!(witness.digest(), tree.digest());
            }
        }
    }
}
