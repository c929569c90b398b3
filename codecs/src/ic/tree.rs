//! Hash trees: how the IC certifies parts of its state.
//!
//! A certificate signs the root hash of a tree and carries a *witness*: the tree with every
//! subtree the reader did not ask for replaced by its hash (`Pruned`). The reader recomputes the
//! root hash from the witness ([`HashTree::digest`]) and looks its paths up in it
//! ([`HashTree::lookup`]); a lookup can prove a value present, prove it absent (when the labels
//! on both sides of where it would be are present), or fail to decide (when a pruned subtree
//! could hold it).
//!
//! CBOR encoding: `[0]` empty, `[1, left, right]` fork, `[2, label, tree]` labeled,
//! `[3, value]` leaf, `[4, hash]` pruned. Digests are SHA-256 with a length-prefixed domain
//! separator per node kind (`"\x11ic-hashtree-empty"`, ...).
//!
//! [`LabeledTree`] is the state itself (nested maps with leaves); [`LabeledTree::witness`]
//! builds the pruned tree that answers a set of read_state paths, with absence proofs for
//! requested labels that do not exist.

use std::borrow::Cow;
use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::cbor::{blob, decode_value_bounded, encode_tagged, encode_value, entry, Value};
use super::error::IcDecodeError;
use super::hash::{Hash, DOMAIN_IC_STATE_ROOT};
use super::limits::IcLimits;
use super::principal::Principal;

const DOMAIN_EMPTY: &[u8] = b"\x11ic-hashtree-empty";
const DOMAIN_FORK: &[u8] = b"\x10ic-hashtree-fork";
const DOMAIN_LABELED: &[u8] = b"\x13ic-hashtree-labeled";
const DOMAIN_LEAF: &[u8] = b"\x10ic-hashtree-leaf";

/// A (possibly pruned) hash tree. Labels and leaves borrow from a decoded certificate or own
/// their bytes when built locally.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashTree<'a> {
    Empty,
    Fork(Box<(HashTree<'a>, HashTree<'a>)>),
    Labeled(Cow<'a, [u8]>, Box<HashTree<'a>>),
    Leaf(Cow<'a, [u8]>),
    Pruned(Hash),
}

/// The outcome of looking a path up in a witness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup<'t> {
    /// The path ends at a leaf with this value.
    Found(&'t [u8]),
    /// The witness proves that nothing is at this path.
    Absent,
    /// A pruned subtree could hold the path; the witness does not decide.
    Unknown,
    /// The path ends at an inner node (a labeled subtree), not at a leaf.
    NotALeaf,
}

fn domain_hash(parts: &[&[u8]]) -> Hash {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

pub fn empty_digest() -> Hash {
    domain_hash(&[DOMAIN_EMPTY])
}

pub fn fork_digest(left: &Hash, right: &Hash) -> Hash {
    domain_hash(&[DOMAIN_FORK, left, right])
}

pub fn labeled_digest(label: &[u8], subtree: &Hash) -> Hash {
    domain_hash(&[DOMAIN_LABELED, label, subtree])
}

pub fn leaf_digest(value: &[u8]) -> Hash {
    domain_hash(&[DOMAIN_LEAF, value])
}

impl<'a> HashTree<'a> {
    pub fn fork(left: HashTree<'a>, right: HashTree<'a>) -> HashTree<'a> {
        HashTree::Fork(Box::new((left, right)))
    }

    pub fn labeled(label: impl Into<Cow<'a, [u8]>>, subtree: HashTree<'a>) -> HashTree<'a> {
        HashTree::Labeled(label.into(), Box::new(subtree))
    }

    pub fn leaf(value: impl Into<Cow<'a, [u8]>>) -> HashTree<'a> {
        HashTree::Leaf(value.into())
    }

    /// The root hash the tree stands for (the spec's `reconstruct`). Recursion follows the
    /// tree's depth, which the decoder bounds by `tree_depth_max`.
    pub fn digest(&self) -> Hash {
        match self {
            HashTree::Empty => empty_digest(),
            HashTree::Fork(pair) => fork_digest(&pair.0.digest(), &pair.1.digest()),
            HashTree::Labeled(label, subtree) => labeled_digest(label, &subtree.digest()),
            HashTree::Leaf(value) => leaf_digest(value),
            HashTree::Pruned(hash) => *hash,
        }
    }

    /// Looks `path` up (the spec's `lookup_path`).
    pub fn lookup<L: AsRef<[u8]>>(&self, path: &[L]) -> Lookup<'_> {
        let mut tree = self;
        for label in path {
            match find_label(tree, label.as_ref()) {
                Find::Found(subtree) => tree = subtree,
                Find::Absent => return Lookup::Absent,
                Find::Unknown => return Lookup::Unknown,
            }
        }
        match tree {
            HashTree::Leaf(value) => Lookup::Found(value),
            HashTree::Empty => Lookup::Absent,
            HashTree::Pruned(_) => Lookup::Unknown,
            HashTree::Fork(_) | HashTree::Labeled(..) => Lookup::NotALeaf,
        }
    }

    /// The CBOR value of the tree (nested arrays, as in certificates).
    pub fn to_value(&self) -> Value<'_> {
        match self {
            HashTree::Empty => Value::Array(vec![Value::Nat(0)]),
            HashTree::Fork(pair) => {
                Value::Array(vec![Value::Nat(1), pair.0.to_value(), pair.1.to_value()])
            }
            HashTree::Labeled(label, subtree) => {
                Value::Array(vec![Value::Nat(2), blob(label), subtree.to_value()])
            }
            HashTree::Leaf(value) => Value::Array(vec![Value::Nat(3), blob(value)]),
            HashTree::Pruned(hash) => Value::Array(vec![Value::Nat(4), blob(hash)]),
        }
    }

    /// Appends the tree's CBOR encoding (untagged, as it appears inside a certificate).
    pub fn encode(&self, out: &mut Vec<u8>) {
        encode_value(&self.to_value(), out);
    }
}

enum Find<'t, 'a> {
    Found(&'t HashTree<'a>),
    Absent,
    Unknown,
}

/// Searches the labeled nodes under `tree`'s forks for `label`. Labels are sorted, so a label
/// is provably absent when the nodes around where it would be are both present (or it would
/// come before the first or after the last of an unpruned sequence).
fn find_label<'t, 'a>(tree: &'t HashTree<'a>, label: &[u8]) -> Find<'t, 'a> {
    // The flattened forks, in order, without materializing them: walk with an explicit stack
    // (forks are at most `tree_depth_max` deep in a decoded tree).
    let mut stack = vec![tree];
    // Whether everything before the current position is known to be smaller than `label`
    // (true at the start: nothing precedes the first node).
    let mut before_proven = true;
    while let Some(node) = stack.pop() {
        match node {
            HashTree::Empty => {}
            HashTree::Fork(pair) => {
                stack.push(&pair.1);
                stack.push(&pair.0);
            }
            HashTree::Labeled(l, subtree) => match l.as_ref().cmp(label) {
                std::cmp::Ordering::Equal => return Find::Found(subtree),
                std::cmp::Ordering::Less => before_proven = true,
                std::cmp::Ordering::Greater => {
                    return if before_proven {
                        Find::Absent
                    } else {
                        Find::Unknown
                    }
                }
            },
            HashTree::Pruned(_) => before_proven = false,
            // A leaf has no labels under it.
            HashTree::Leaf(_) => {}
        }
    }
    // Past the end: absent if nothing pruned follows the last smaller label.
    if before_proven {
        Find::Absent
    } else {
        Find::Unknown
    }
}

/// Decodes a hash tree from its CBOR (optionally self-describe tagged) encoding.
pub fn decode_hash_tree<'a>(
    bytes: &'a [u8],
    limits: &IcLimits,
) -> Result<HashTree<'a>, IcDecodeError> {
    check(
        "certificate_bytes_max",
        bytes.len(),
        limits.certificate_bytes_max,
    )?;
    tree_from_value(decode_value_bounded(
        bytes,
        limits.tree_depth_max,
        limits.cbor_items_max,
    )?)
}

/// Reads a hash tree from a decoded value; recursion follows the value's nesting, which the
/// CBOR decoder bounded.
pub fn tree_from_value(value: Value<'_>) -> Result<HashTree<'_>, IcDecodeError> {
    const FIELD: &str = "tree";
    let items = match value {
        Value::Array(items) => items,
        other => {
            return Err(IcDecodeError::WrongType {
                field: FIELD,
                expected: "array",
                found: other.type_name(),
            })
        }
    };
    let mut items = items.into_iter();
    let kind = match items.next() {
        Some(Value::Nat(kind)) => kind,
        Some(other) => {
            return Err(IcDecodeError::WrongType {
                field: FIELD,
                expected: "nat node kind",
                found: other.type_name(),
            })
        }
        None => {
            return Err(IcDecodeError::InvalidValue {
                field: FIELD,
                detail: "empty node array",
            })
        }
    };
    let arity = match kind {
        0 => 0,
        1 | 2 => 2,
        3 | 4 => 1,
        _ => {
            return Err(IcDecodeError::InvalidValue {
                field: FIELD,
                detail: "node kind is not 0..=4",
            })
        }
    };
    let rest: Vec<Value<'_>> = items.collect();
    if rest.len() != arity {
        return Err(IcDecodeError::InvalidValue {
            field: FIELD,
            detail: "wrong number of elements for the node kind",
        });
    }
    let mut rest = rest.into_iter();
    let mut next = || rest.next().unwrap_or(Value::Null);
    fn bytes(value: Value<'_>) -> Result<Cow<'_, [u8]>, IcDecodeError> {
        match value {
            Value::Bytes(b) => Ok(b),
            other => Err(IcDecodeError::WrongType {
                field: FIELD,
                expected: "blob",
                found: other.type_name(),
            }),
        }
    }
    Ok(match kind {
        0 => HashTree::Empty,
        1 => {
            let left = tree_from_value(next())?;
            HashTree::fork(left, tree_from_value(next())?)
        }
        2 => {
            let label = bytes(next())?;
            HashTree::Labeled(label, Box::new(tree_from_value(next())?))
        }
        3 => HashTree::Leaf(bytes(next())?),
        _ => {
            let hash = bytes(next())?;
            HashTree::Pruned(
                hash.as_ref()
                    .try_into()
                    .map_err(|_| IcDecodeError::InvalidValue {
                        field: FIELD,
                        detail: "pruned hash is not 32 bytes",
                    })?,
            )
        }
    })
}

fn check(limit: &'static str, value: usize, max: usize) -> Result<(), IcDecodeError> {
    if value > max {
        return Err(IcDecodeError::LimitExceeded {
            limit,
            value: value as u64,
            max: max as u64,
        });
    }
    Ok(())
}

/// A certificate: a witness, the subnet's signature over its root hash, and optionally the
/// delegation that proves the signing subnet's key (signed by the root subnet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certificate<'a> {
    pub tree: HashTree<'a>,
    pub signature: Cow<'a, [u8]>,
    pub delegation: Option<CertificateDelegation<'a>>,
}

/// The root subnet's certificate for the signing subnet's public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateDelegation<'a> {
    pub subnet_id: Principal,
    /// A CBOR-encoded [`Certificate`] of the root subnet.
    pub certificate: Cow<'a, [u8]>,
}

impl Certificate<'_> {
    /// The bytes `signature` covers: `"\x0Dic-state-root" ‖ root hash of tree`.
    pub fn signing_bytes(&self) -> Vec<u8> {
        [DOMAIN_IC_STATE_ROOT, &self.tree.digest()[..]].concat()
    }

    /// Appends the certificate's encoding (self-describe tagged, as the IC sends it).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut fields = vec![
            entry("tree", self.tree.to_value()),
            entry("signature", blob(&self.signature)),
        ];
        if let Some(delegation) = &self.delegation {
            fields.push(entry(
                "delegation",
                Value::Map(vec![
                    entry("subnet_id", blob(delegation.subnet_id.as_slice())),
                    entry("certificate", blob(&delegation.certificate)),
                ]),
            ));
        }
        encode_tagged(&Value::Map(fields), out);
    }
}

/// Decodes a certificate (a client's view; also what a canister signature embeds).
pub fn decode_certificate<'a>(
    bytes: &'a [u8],
    limits: &IcLimits,
) -> Result<Certificate<'a>, IcDecodeError> {
    check(
        "certificate_bytes_max",
        bytes.len(),
        limits.certificate_bytes_max,
    )?;
    // The tree is nested inside the certificate map: one more level.
    let value = decode_value_bounded(
        bytes,
        limits.tree_depth_max.saturating_add(1),
        limits.cbor_items_max,
    )?;
    let entries = match value {
        Value::Map(entries) => entries,
        other => {
            return Err(IcDecodeError::WrongType {
                field: "certificate",
                expected: "map",
                found: other.type_name(),
            })
        }
    };
    let mut tree = None;
    let mut signature = None;
    let mut delegation = None;
    for (key, value) in entries {
        let Value::Text(key) = &key else { continue };
        let (slot, field) = match key.as_ref() {
            "tree" => (&mut tree, "tree"),
            "signature" => (&mut signature, "signature"),
            "delegation" => (&mut delegation, "delegation"),
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(IcDecodeError::DuplicateField { field });
        }
    }
    let tree = tree_from_value(tree.ok_or(IcDecodeError::MissingField { field: "tree" })?)?;
    let signature = match signature.ok_or(IcDecodeError::MissingField { field: "signature" })? {
        Value::Bytes(b) => b,
        other => {
            return Err(IcDecodeError::WrongType {
                field: "signature",
                expected: "blob",
                found: other.type_name(),
            })
        }
    };
    let delegation = match delegation {
        None => None,
        Some(value) => {
            let subnet_id = match value.get("subnet_id") {
                Some(Value::Bytes(b)) => {
                    Principal::from_slice(b).map_err(|error| IcDecodeError::Principal {
                        field: "delegation.subnet_id",
                        error,
                    })?
                }
                _ => {
                    return Err(IcDecodeError::MissingField {
                        field: "delegation.subnet_id",
                    })
                }
            };
            let certificate = match value {
                Value::Map(entries) => entries.into_iter().find_map(|(k, v)| match (k, v) {
                    (Value::Text(k), Value::Bytes(b)) if k == "certificate" => Some(b),
                    _ => None,
                }),
                _ => None,
            }
            .ok_or(IcDecodeError::MissingField {
                field: "delegation.certificate",
            })?;
            Some(CertificateDelegation {
                subnet_id,
                certificate,
            })
        }
    };
    Ok(Certificate {
        tree,
        signature,
        delegation,
    })
}

/// The certified state itself: nested maps of labels, with blobs at the leaves. Labels are
/// kept sorted bytewise, the order hash trees require.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabeledTree {
    Leaf(Vec<u8>),
    SubTree(BTreeMap<Vec<u8>, LabeledTree>),
}

/// Paths requested from a [`LabeledTree`], as a trie: a node marked `whole` asks for
/// everything below it.
#[derive(Default)]
struct PathTrie<'p> {
    whole: bool,
    children: BTreeMap<&'p [u8], PathTrie<'p>>,
}

impl LabeledTree {
    /// The full hash tree: each map becomes a balanced binary tree of forks over its labeled
    /// children (in label order), an empty map becomes `Empty`.
    pub fn to_hash_tree(&self) -> HashTree<'static> {
        self.build(&PathTrie {
            whole: true,
            children: BTreeMap::new(),
        })
        .0
    }

    /// The root hash of the full tree.
    pub fn digest(&self) -> Hash {
        self.to_hash_tree().digest()
    }

    /// The witness for `paths`: every requested path's subtree in full, everything else
    /// pruned, plus the neighbours of any requested label that does not exist, so that its
    /// absence is provable. Lookups of requested paths in the witness answer Found or Absent,
    /// never Unknown.
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
        self.build(&trie).0
    }

    /// Returns the (possibly pruned) tree for `requested` and the full subtree's digest.
    fn build(&self, requested: &PathTrie<'_>) -> (HashTree<'static>, Hash) {
        match self {
            LabeledTree::Leaf(value) => {
                let digest = leaf_digest(value);
                // A leaf is revealed whenever a path reaches it, even one that asks for labels
                // below it: the leaf itself proves there is nothing there.
                (HashTree::Leaf(Cow::Owned(value.clone())), digest)
            }
            LabeledTree::SubTree(children) => {
                if children.is_empty() {
                    return (HashTree::Empty, empty_digest());
                }
                let labels: Vec<&Vec<u8>> = children.keys().collect();
                // What to reveal of each child: None (prune), Some(None) (label and hash only,
                // for an absence proof), Some(Some(trie)) (descend).
                let mut reveal: Vec<Option<Option<&PathTrie<'_>>>> = vec![None; labels.len()];
                let everything = PathTrie {
                    whole: true,
                    children: BTreeMap::new(),
                };
                for (index, slot) in reveal.iter_mut().enumerate() {
                    if requested.whole {
                        *slot = Some(Some(&everything));
                    } else if let Some(sub) = requested.children.get(labels[index].as_slice()) {
                        *slot = Some(Some(sub));
                    }
                }
                if !requested.whole {
                    for wanted in requested.children.keys() {
                        if children.contains_key(*wanted) {
                            continue;
                        }
                        let at = labels.partition_point(|l| l.as_slice() < *wanted);
                        for neighbour in [at.checked_sub(1), Some(at)].into_iter().flatten() {
                            if neighbour < labels.len() && reveal[neighbour].is_none() {
                                reveal[neighbour] = Some(None);
                            }
                        }
                    }
                }
                let nodes: Vec<(HashTree<'static>, Hash, bool)> = children
                    .iter()
                    .zip(&reveal)
                    .map(|((label, child), reveal)| {
                        let (sub, sub_digest) = match reveal {
                            Some(Some(trie)) => child.build(trie),
                            _ => {
                                let digest = child.digest();
                                (HashTree::Pruned(digest), digest)
                            }
                        };
                        let digest = labeled_digest(label, &sub_digest);
                        let tree = HashTree::Labeled(Cow::Owned(label.clone()), Box::new(sub));
                        (tree, digest, reveal.is_some())
                    })
                    .collect();
                balanced(nodes)
            }
        }
    }
}

/// Joins labeled nodes into a balanced fork tree, pruning every subtree none of whose nodes is
/// revealed.
fn balanced(mut nodes: Vec<(HashTree<'static>, Hash, bool)>) -> (HashTree<'static>, Hash) {
    fn join(nodes: &mut [(HashTree<'static>, Hash, bool)]) -> (HashTree<'static>, Hash, bool) {
        if nodes.len() == 1 {
            let (tree, digest, revealed) = &mut nodes[0];
            let tree = std::mem::replace(tree, HashTree::Empty);
            return (tree, *digest, *revealed);
        }
        let middle = nodes.len() / 2;
        let (left, right) = nodes.split_at_mut(middle);
        let (left, left_digest, left_revealed) = join(left);
        let (right, right_digest, right_revealed) = join(right);
        let digest = fork_digest(&left_digest, &right_digest);
        let left = if left_revealed {
            left
        } else {
            HashTree::Pruned(left_digest)
        };
        let right = if right_revealed {
            right
        } else {
            HashTree::Pruned(right_digest)
        };
        (
            HashTree::fork(left, right),
            digest,
            left_revealed || right_revealed,
        )
    }
    let (tree, digest, revealed) = join(&mut nodes);
    if revealed {
        (tree, digest)
    } else {
        (HashTree::Pruned(digest), digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn leaf(value: &[u8]) -> LabeledTree {
        LabeledTree::Leaf(value.to_vec())
    }

    fn map(entries: Vec<(&[u8], LabeledTree)>) -> LabeledTree {
        LabeledTree::SubTree(entries.into_iter().map(|(k, v)| (k.to_vec(), v)).collect())
    }

    /// The example tree of the interface specification's "Encoding of certificates" section.
    fn spec_example() -> HashTree<'static> {
        let l = |label: &'static [u8], t| HashTree::labeled(label, t);
        let leaf = |value: &'static [u8]| HashTree::leaf(value);
        HashTree::fork(
            HashTree::fork(
                l(
                    b"a",
                    HashTree::fork(
                        HashTree::fork(l(b"x", leaf(b"hello")), HashTree::Empty),
                        l(b"y", leaf(b"world")),
                    ),
                ),
                l(b"b", leaf(b"good")),
            ),
            HashTree::fork(l(b"c", HashTree::Empty), l(b"d", leaf(b"morning"))),
        )
    }

    #[test]
    fn spec_example_root_hash() {
        assert_eq!(
            hex(&spec_example().digest()),
            "eb5c5b2195e62d996b84c9bcc8259d19a83786a2f59e0878cec84c811f669aa0"
        );
    }

    #[test]
    fn lookups_prove_presence_and_absence() {
        let tree = spec_example();
        assert_eq!(tree.lookup(&[b"a", b"x"]), Lookup::Found(b"hello"));
        assert_eq!(tree.lookup(&[b"d"]), Lookup::Found(b"morning"));
        assert_eq!(tree.lookup(&[b"a", b"z"]), Lookup::Absent);
        assert_eq!(tree.lookup(&[b"bb"]), Lookup::Absent);
        assert_eq!(tree.lookup(&[b"e"]), Lookup::Absent);
        assert_eq!(tree.lookup(&[b"c"]), Lookup::Absent);
        assert_eq!(tree.lookup(&[b"a"]), Lookup::NotALeaf);
        let pruned = HashTree::fork(
            HashTree::Pruned([0; 32]),
            HashTree::labeled(&b"m"[..], HashTree::leaf(&b"v"[..])),
        );
        assert_eq!(pruned.lookup(&[b"a"]), Lookup::Unknown);
        assert_eq!(pruned.lookup(&[b"m"]), Lookup::Found(b"v"));
        assert_eq!(pruned.lookup(&[b"z"]), Lookup::Absent);
    }

    #[test]
    fn encoding_round_trips_and_bad_trees_are_rejected() {
        let tree = spec_example();
        let mut wire = Vec::new();
        tree.encode(&mut wire);
        let limits = IcLimits::default();
        assert_eq!(decode_hash_tree(&wire, &limits).unwrap(), tree);
        for bad in [
            &[0x80][..],               // []
            &[0x81, 0x05],             // [5]
            &[0x82, 0x00, 0x00],       // [0, 0]
            &[0x82, 0x04, 0x41, 0x00], // pruned with a 1-byte hash
            &[0x82, 0x03, 0x01],       // leaf holding a nat
            &[0x83, 0x01, 0x81, 0x00], // fork missing its right child
        ] {
            assert!(decode_hash_tree(bad, &limits).is_err(), "{bad:?}");
        }
        let shallow = IcLimits {
            tree_depth_max: 3,
            ..limits
        };
        assert!(matches!(
            decode_hash_tree(&wire, &shallow),
            Err(IcDecodeError::TooDeep { .. })
        ));
    }

    #[test]
    fn witnesses_reveal_what_was_asked_and_prove_the_rest_absent() {
        let state = map(vec![
            (b"time", leaf(b"\x80\x01")),
            (
                b"request_status",
                map(vec![
                    (
                        &[1; 32],
                        map(vec![(b"status", leaf(b"replied")), (b"reply", leaf(b"r1"))]),
                    ),
                    (&[5; 32], map(vec![(b"status", leaf(b"processing"))])),
                    (&[9; 32], map(vec![(b"status", leaf(b"rejected"))])),
                    (&[11; 32], map(vec![(b"reply", leaf(&[0; 512]))])),
                ]),
            ),
            (b"subnet", map(vec![])),
        ]);
        let full = state.to_hash_tree();
        let root = full.digest();
        assert_eq!(state.digest(), root);
        let absent_id = [3u8; 32];
        let witness = state.witness(&[
            vec![&b"time"[..]],
            vec![&b"request_status"[..], &[1; 32]],
            vec![&b"request_status"[..], &absent_id],
        ]);
        assert_eq!(witness.digest(), root, "a witness proves the same root");
        assert_eq!(witness.lookup(&[&b"time"[..]]), Lookup::Found(b"\x80\x01"));
        assert_eq!(
            witness.lookup(&[&b"request_status"[..], &[1; 32], b"reply"]),
            Lookup::Found(b"r1")
        );
        assert_eq!(
            witness.lookup(&[&b"request_status"[..], &absent_id, b"status"]),
            Lookup::Absent
        );
        assert_eq!(
            witness.lookup(&[&b"request_status"[..], &[9; 32], b"status"]),
            Lookup::Unknown,
            "unrequested entries stay pruned"
        );
        let mut small = Vec::new();
        witness.encode(&mut small);
        let mut big = Vec::new();
        full.encode(&mut big);
        assert!(small.len() < big.len());
        // Everything requested: the witness is the full tree.
        assert_eq!(state.witness(&[Vec::<&[u8]>::new()]), full);
        // Nothing requested: only the root hash.
        assert_eq!(state.witness::<&[u8]>(&[]), HashTree::Pruned(root));
    }

    #[test]
    fn certificates_round_trip() {
        let certificate = Certificate {
            tree: spec_example(),
            signature: Cow::Borrowed(&[7; 48]),
            delegation: Some(CertificateDelegation {
                subnet_id: Principal::from_canister_index(9),
                certificate: Cow::Borrowed(b"root certificate"),
            }),
        };
        let mut wire = Vec::new();
        certificate.encode(&mut wire);
        assert_eq!(
            decode_certificate(&wire, &IcLimits::default()).unwrap(),
            certificate
        );
        let signing = certificate.signing_bytes();
        assert_eq!(&signing[..14], b"\x0Dic-state-root");
        assert_eq!(&signing[14..], &spec_example().digest());
    }
}
