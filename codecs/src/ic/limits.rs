//! Bounds the IC public-interface decoders enforce on client bytes.
//!
//! As with [`crate::CodecLimits`], a node's values come from the tuning crate; the defaults here
//! follow the IC where it has a bound (1000 read_state paths of at most 127 labels, 20
//! delegations, 32-byte nonces, 2 MiB ingress messages) and are generous elsewhere.
//!
//! Worst-case memory: a decoded body holds at most `cbor_items_max` values of 32 bytes (with
//! vector growth, about 64 bytes each: 8 MiB at the default), and no collection reserves more
//! items than the input could still hold; byte strings borrow from the input. The typed request
//! borrows from the input except for its path and delegation lists, which are smaller than the
//! generic tree. The HTTP layer bounds how many bodies are decoded at once.

/// Limits for decoding request envelopes, certificates and hash trees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcLimits {
    /// Length of one request body. Checked first, so nothing is parsed beyond it. 4 MiB: a
    /// 2 MiB argument plus signatures, delegations and CBOR overhead, with room to spare.
    pub body_bytes_max: usize,
    /// Length of a call's or query's `arg`. 2 MiB, the IC's largest ingress message.
    pub arg_bytes_max: usize,
    /// Length of `method_name`. Canister exports are short; 1 KiB bounds what we log and hash.
    pub method_name_bytes_max: usize,
    /// Length of `nonce`. The IC accepts at most 32 bytes.
    pub nonce_bytes_max: usize,
    /// Number of paths in one read_state request. The interface specification allows 1000.
    pub paths_max: usize,
    /// Labels in one read_state path. The interface specification allows 127.
    pub path_labels_max: usize,
    /// Length of one path label. Real labels are principals, request ids and short names; 1 KiB
    /// leaves room for metadata section names.
    pub label_bytes_max: usize,
    /// Delegations in `sender_delegation`. The IC accepts a chain of at most 20.
    pub delegations_max: usize,
    /// Canister ids in one delegation's `targets`. The IC accepts at most 1000.
    pub delegation_targets_max: usize,
    /// Length of a public key (`sender_pubkey`, a delegation's `pubkey`). DER keys are under
    /// 100 bytes and canister-signature keys carry a canister id and a seed; 1 KiB is ample.
    pub public_key_bytes_max: usize,
    /// Length of a signature (`sender_sig`, a delegation's `signature`). A canister signature
    /// carries a certificate and a witness, a few KiB; 64 KiB bounds it.
    pub signature_bytes_max: usize,
    /// Data items (values and map keys) in one request, certificate or tree body. A maximal
    /// read_state request has 1000 paths of 127 labels, about 128,000 items; 2^17 admits it and
    /// bounds the decoded tree at about 8 MiB however small the items are.
    pub cbor_items_max: usize,
    /// How deep arrays, maps and tags may nest in a request body. An envelope needs 4 (envelope,
    /// content, paths, path); 16 leaves room for unknown fields without allowing deep recursion.
    pub cbor_depth_max: usize,
    /// How deep a hash tree may nest (each fork, label and tree node is one CBOR array level).
    /// The IC builds balanced trees a few dozen levels deep; 128 keeps recursion shallow.
    pub tree_depth_max: usize,
    /// Length of a certificate or hash-tree body (what a client of ours would decode, and what a
    /// canister signature embeds). 4 MiB, like request bodies.
    pub certificate_bytes_max: usize,
}

impl IcLimits {
    pub const BODY_BYTES_MAX_DEFAULT: usize = 4 << 20;
    pub const ARG_BYTES_MAX_DEFAULT: usize = 2 << 20;
    pub const METHOD_NAME_BYTES_MAX_DEFAULT: usize = 1 << 10;
    pub const NONCE_BYTES_MAX_DEFAULT: usize = 32;
    pub const PATHS_MAX_DEFAULT: usize = 1000;
    pub const PATH_LABELS_MAX_DEFAULT: usize = 127;
    pub const LABEL_BYTES_MAX_DEFAULT: usize = 1 << 10;
    pub const DELEGATIONS_MAX_DEFAULT: usize = 20;
    pub const DELEGATION_TARGETS_MAX_DEFAULT: usize = 1000;
    pub const PUBLIC_KEY_BYTES_MAX_DEFAULT: usize = 1 << 10;
    pub const SIGNATURE_BYTES_MAX_DEFAULT: usize = 64 << 10;
    pub const CBOR_ITEMS_MAX_DEFAULT: usize = 1 << 17;
    pub const CBOR_DEPTH_MAX_DEFAULT: usize = 16;
    pub const TREE_DEPTH_MAX_DEFAULT: usize = 128;
    pub const CERTIFICATE_BYTES_MAX_DEFAULT: usize = 4 << 20;

    /// Checks that the limits can accept a request at all: a body must hold an argument of the
    /// maximum size, and the nesting bound must admit the envelope's own structure.
    pub fn validate(&self) -> Result<(), String> {
        if self.body_bytes_max < self.arg_bytes_max {
            return Err(format!(
                "body_bytes_max ({}) is below arg_bytes_max ({})",
                self.body_bytes_max, self.arg_bytes_max
            ));
        }
        // The largest read_state request: each path is an array plus its labels, plus a few
        // dozen items for the envelope and content.
        let read_state_items = self.paths_max * (self.path_labels_max + 1) + 64;
        if self.cbor_items_max < read_state_items {
            return Err(format!(
                "cbor_items_max ({}) is below the {read_state_items} items of the largest read_state request",
                self.cbor_items_max
            ));
        }
        if self.cbor_depth_max < 5 {
            return Err(format!(
                "cbor_depth_max ({}) is below the 5 levels a delegated read_state request needs",
                self.cbor_depth_max
            ));
        }
        if self.tree_depth_max < 2 {
            return Err("tree_depth_max must be >= 2 to accept any non-empty tree".into());
        }
        Ok(())
    }
}

impl Default for IcLimits {
    fn default() -> Self {
        IcLimits {
            body_bytes_max: Self::BODY_BYTES_MAX_DEFAULT,
            arg_bytes_max: Self::ARG_BYTES_MAX_DEFAULT,
            method_name_bytes_max: Self::METHOD_NAME_BYTES_MAX_DEFAULT,
            nonce_bytes_max: Self::NONCE_BYTES_MAX_DEFAULT,
            paths_max: Self::PATHS_MAX_DEFAULT,
            path_labels_max: Self::PATH_LABELS_MAX_DEFAULT,
            label_bytes_max: Self::LABEL_BYTES_MAX_DEFAULT,
            delegations_max: Self::DELEGATIONS_MAX_DEFAULT,
            delegation_targets_max: Self::DELEGATION_TARGETS_MAX_DEFAULT,
            public_key_bytes_max: Self::PUBLIC_KEY_BYTES_MAX_DEFAULT,
            signature_bytes_max: Self::SIGNATURE_BYTES_MAX_DEFAULT,
            cbor_items_max: Self::CBOR_ITEMS_MAX_DEFAULT,
            cbor_depth_max: Self::CBOR_DEPTH_MAX_DEFAULT,
            tree_depth_max: Self::TREE_DEPTH_MAX_DEFAULT,
            certificate_bytes_max: Self::CERTIFICATE_BYTES_MAX_DEFAULT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_combinations_are_not() {
        assert_eq!(IcLimits::default().validate(), Ok(()));
        let small_body = IcLimits {
            body_bytes_max: 1 << 20,
            ..IcLimits::default()
        };
        assert!(small_body
            .validate()
            .unwrap_err()
            .contains("body_bytes_max"));
        let shallow = IcLimits {
            cbor_depth_max: 3,
            ..IcLimits::default()
        };
        assert!(shallow.validate().unwrap_err().contains("cbor_depth_max"));
        let few_items = IcLimits {
            cbor_items_max: 1000,
            ..IcLimits::default()
        };
        assert!(few_items.validate().unwrap_err().contains("cbor_items_max"));
    }
}
