//! The ingress pool: update calls waiting to be ordered, as the IC's CBOR envelopes exactly as
//! their senders signed them.
//!
//! A call accepted over HTTP (already decoded and verified by the front) enters validated and is
//! offered to every peer. A call gossiped by a peer is verified again here before it counts:
//! it is decoded, its request id recomputed from the bytes, its expiry checked against this
//! node's clock and its signature checked, on the verification pool, never on the shard. Only
//! validated ingress goes into blocks, and a block executes only where every ingress it names is
//! validated, so a node never executes a call whose signature it did not check itself.
//!
//! A call a notarized block names and this node lacks is fetched from a peer (the driver's
//! `replica/ingress` route) and gets the same checks ([`verify_fetched`]), with the request id
//! recomputed from the bytes and required to be one the node asked for.
//!
//! An ingress artifact's id is the request id followed by the ingress expiry (8 bytes, little
//! endian), so a receiver's bouncer refuses what it already holds or has executed without
//! downloading it. Bounds: [`IngressLimits`] (messages and bytes); when full, HTTP calls get
//! 429 and gossiped ingress waits (`MaybeLater`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use icn_codecs::ic::{decode_request_envelope, CallContent, IcLimits, RequestContent, RequestId};
use icn_engine::{Buf, NodeId};
use smallvec::SmallVec;

use crate::artifact::{Advert, Artifact, ArtifactId, ArtifactKind, ArtifactPool, Transmit, Want};
use crate::http::auth::{authenticate, check_ingress_expiry};
use crate::http::backend::owned_call;

/// Bytes of an ingress artifact's id: the request id and the expiry.
pub const INGRESS_ID_BYTES: usize = 32 + 8;

/// The ingress pool's bounds (tuning `replica.ingress_pool_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngressLimits {
    pub messages_max: usize,
    pub bytes_max: usize,
}

/// One validated call.
#[derive(Clone, Debug)]
pub struct IngressEntry {
    pub artifact: Artifact,
    pub content: CallContent<'static>,
    /// Monotonic arrival order: block makers take the oldest first.
    pub arrival: u64,
}

impl IngressEntry {
    /// What the entry holds: the envelope plus the decoded argument and method.
    fn bytes(&self) -> usize {
        self.artifact.payload.len() + self.content.arg.len() + self.content.method_name.len()
    }
}

/// Counters of the ingress pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngressStats {
    pub accepted_http: u64,
    pub received: u64,
    pub verified: u64,
    /// Gossiped ingress that failed decoding, expiry or signature checks.
    pub invalid: u64,
    /// Fetched from a peer (a notarized block named them) and verified.
    pub fetched: u64,
    /// Refused because the pool was full.
    pub refused_full: u64,
    pub executed_removed: u64,
    pub expired_removed: u64,
}

/// Says whether a request id was already executed (the state's request statuses).
pub type ExecutedCheck = Rc<dyn Fn(&RequestId) -> bool>;

pub struct IngressPool {
    kind: ArtifactKind,
    limits: IngressLimits,
    executed: ExecutedCheck,
    validated: HashMap<RequestId, IngressEntry>,
    /// (expiry, request id) of every validated entry, for purging by time.
    by_expiry: BTreeSet<(u64, RequestId)>,
    bytes: usize,
    unvalidated: HashMap<ArtifactId, (Artifact, NodeId)>,
    /// Ids taken for verification and not yet answered.
    verifying: HashSet<ArtifactId>,
    offered: HashSet<ArtifactId>,
    pending: Vec<Transmit>,
    arrivals: u64,
    stats: IngressStats,
}

/// The artifact of a call envelope with this request id and expiry.
pub fn ingress_artifact(request_id: &RequestId, expiry: u64, envelope: Buf) -> Artifact {
    let mut id = SmallVec::<[u8; 40]>::new();
    id.extend_from_slice(&request_id.0);
    id.extend_from_slice(&expiry.to_le_bytes());
    Artifact {
        advert: Advert {
            id: ArtifactId(id),
            attributes: SmallVec::new(),
            size_bytes: envelope.len() as u64,
        },
        payload: envelope,
    }
}

/// The request id and expiry an ingress artifact id names.
pub fn parse_ingress_id(id: &ArtifactId) -> Option<(RequestId, u64)> {
    if id.len() != INGRESS_ID_BYTES {
        return None;
    }
    let bytes = id.as_bytes();
    let request: [u8; 32] = bytes[..32].try_into().ok()?;
    let expiry: [u8; 8] = bytes[32..].try_into().ok()?;
    Some((RequestId(request), u64::from_le_bytes(expiry)))
}

/// What verifying a gossiped call needs besides its bytes.
#[derive(Clone, Copy, Debug)]
pub struct IngressCheck {
    pub limits: IcLimits,
    pub expiry_window_ns: u64,
    pub expiry_drift_ns: u64,
}

/// Verifies a gossiped call envelope against the id it was advertised under: decodes it, checks
/// it is a call, that its request id and expiry are the id's, that the expiry is within the
/// window at `now_ns`, and its sender's signature and delegations. CPU-heavy: runs on the
/// verification pool.
pub fn verify_ingress(
    id: &ArtifactId,
    envelope: &[u8],
    check: &IngressCheck,
    now_ns: u64,
) -> Result<CallContent<'static>, IngressRefusal> {
    let wrong = IngressRefusal::Wrong;
    let (request_id, expiry) =
        parse_ingress_id(id).ok_or_else(|| wrong("malformed ingress id".into()))?;
    let decoded = decode_request_envelope(envelope, &check.limits)
        .map_err(|e| wrong(format!("does not decode: {e}")))?;
    let RequestContent::Call(content) = &decoded.content else {
        return Err(wrong(format!(
            "is a {}, not a call",
            decoded.content.request_type()
        )));
    };
    if decoded.request_id != request_id || content.ingress_expiry != expiry {
        return Err(wrong(
            "request id or expiry differ from the advertised id".into(),
        ));
    }
    check_ingress_expiry(
        content.ingress_expiry,
        now_ns,
        check.expiry_window_ns,
        check.expiry_drift_ns,
    )
    .map_err(IngressRefusal::Expired)?;
    authenticate(&decoded, Some(&content.canister_id), now_ns).map_err(|e| wrong(e.to_string()))?;
    Ok(owned_call(content))
}

/// Why a gossiped or fetched envelope was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IngressRefusal {
    /// The peer sent something it should not have: bytes that do not decode, a request that is
    /// not a call, a request id other than the advertised or asked one, or a signature that
    /// does not verify (an honest peer verified the call before offering it). The peer is
    /// penalized.
    Wrong(String),
    /// The call's expiry is outside the window at this node's clock: possibly a matter of
    /// clocks, not of the peer's honesty, so it is refused without a penalty.
    Expired(String),
}

impl std::fmt::Display for IngressRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IngressRefusal::Wrong(why) | IngressRefusal::Expired(why) => f.write_str(why),
        }
    }
}

/// A fetched call that passed verification, ready for [`IngressPool::add_fetched`].
#[derive(Clone, Debug)]
pub struct FetchedCall {
    pub request_id: RequestId,
    pub artifact: Artifact,
    pub content: CallContent<'static>,
}

/// Verifies an envelope a peer sent in answer to an ingress fetch for `asked`: it must decode
/// to a call whose recomputed request id is one of `asked`, within the expiry window at
/// `now_ns`, signed by its sender: the checks gossiped ingress gets ([`verify_ingress`]), with
/// the request id taken from the bytes rather than an advert. CPU-heavy: runs on the
/// verification pool.
pub fn verify_fetched(
    asked: &HashSet<RequestId>,
    envelope: Buf,
    check: &IngressCheck,
    now_ns: u64,
) -> Result<FetchedCall, IngressRefusal> {
    let wrong = IngressRefusal::Wrong;
    let decoded = decode_request_envelope(&envelope, &check.limits)
        .map_err(|e| wrong(format!("does not decode: {e}")))?;
    let RequestContent::Call(content) = &decoded.content else {
        return Err(wrong(format!(
            "is a {}, not a call",
            decoded.content.request_type()
        )));
    };
    if !asked.contains(&decoded.request_id) {
        return Err(wrong("names a request id that was not asked for".into()));
    }
    check_ingress_expiry(
        content.ingress_expiry,
        now_ns,
        check.expiry_window_ns,
        check.expiry_drift_ns,
    )
    .map_err(IngressRefusal::Expired)?;
    authenticate(&decoded, Some(&content.canister_id), now_ns).map_err(|e| wrong(e.to_string()))?;
    let request_id = decoded.request_id;
    let content = owned_call(content);
    let artifact = ingress_artifact(&request_id, content.ingress_expiry, envelope.clone());
    Ok(FetchedCall {
        request_id,
        artifact,
        content,
    })
}

/// Why a call was not added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddError {
    /// The pool holds `messages_max` calls or `bytes_max` bytes.
    Full,
}

impl IngressPool {
    pub fn new(kind: ArtifactKind, limits: IngressLimits, executed: ExecutedCheck) -> IngressPool {
        IngressPool {
            kind,
            limits,
            executed,
            validated: HashMap::new(),
            by_expiry: BTreeSet::new(),
            bytes: 0,
            unvalidated: HashMap::new(),
            verifying: HashSet::new(),
            offered: HashSet::new(),
            pending: Vec::new(),
            arrivals: 0,
            stats: IngressStats::default(),
        }
    }

    pub fn stats(&self) -> IngressStats {
        self.stats
    }

    pub fn limits(&self) -> IngressLimits {
        self.limits
    }

    pub fn len(&self) -> usize {
        self.validated.len()
    }

    pub fn is_empty(&self) -> bool {
        self.validated.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn unvalidated_len(&self) -> usize {
        self.unvalidated.len()
    }

    pub fn verifying_len(&self) -> usize {
        self.verifying.len()
    }

    pub fn get(&self, id: &RequestId) -> Option<&IngressEntry> {
        self.validated.get(id)
    }

    pub fn contains(&self, id: &RequestId) -> bool {
        self.validated.contains_key(id)
    }

    fn is_full_for(&self, bytes: usize) -> bool {
        self.validated.len() >= self.limits.messages_max
            || self.bytes.saturating_add(bytes) > self.limits.bytes_max
    }

    /// A call this node accepted over HTTP (verified by the front): validated at once and
    /// offered to every peer. Adding a call already held is not an error.
    pub fn add_local(
        &mut self,
        request_id: RequestId,
        content: CallContent<'static>,
        envelope: Buf,
    ) -> Result<(), AddError> {
        if self.validated.contains_key(&request_id) {
            return Ok(());
        }
        let artifact = ingress_artifact(&request_id, content.ingress_expiry, envelope);
        let entry = self.entry(artifact, content);
        if self.is_full_for(entry.bytes()) {
            self.stats.refused_full += 1;
            return Err(AddError::Full);
        }
        self.stats.accepted_http += 1;
        self.offered.insert(entry.artifact.id().clone());
        self.pending.push(Transmit::Deliver {
            artifact: entry.artifact.clone(),
            latency_sensitive: false,
        });
        self.insert(request_id, entry);
        Ok(())
    }

    fn entry(&mut self, artifact: Artifact, content: CallContent<'static>) -> IngressEntry {
        self.arrivals += 1;
        IngressEntry {
            artifact,
            content,
            arrival: self.arrivals,
        }
    }

    fn insert(&mut self, request_id: RequestId, entry: IngressEntry) {
        self.bytes += entry.bytes();
        self.by_expiry
            .insert((entry.content.ingress_expiry, request_id));
        self.validated.insert(request_id, entry);
    }

    /// Up to `max` gossiped calls to verify (taken out of the unvalidated section; each comes
    /// back through [`IngressPool::verified`]).
    pub fn take_unverified(&mut self, max: usize) -> Vec<(Artifact, NodeId)> {
        let mut ids: Vec<ArtifactId> = self.unvalidated.keys().take(max).cloned().collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|id| {
                let taken = self.unvalidated.remove(&id)?;
                self.verifying.insert(id);
                Some(taken)
            })
            .collect()
    }

    /// A call taken for verification that could not be verified now (the verification pool
    /// was full): back to the unvalidated section, for a later attempt.
    pub fn retry_later(&mut self, artifact: Artifact, from: NodeId) {
        self.verifying.remove(artifact.id());
        self.unvalidated
            .insert(artifact.id().clone(), (artifact, from));
    }

    /// The outcome of verifying a gossiped call.
    pub fn verified(&mut self, artifact: Artifact, outcome: Result<CallContent<'static>, String>) {
        self.verifying.remove(artifact.id());
        let Some((request_id, _)) = parse_ingress_id(artifact.id()) else {
            self.stats.invalid += 1;
            return;
        };
        let content = match outcome {
            Ok(content) => content,
            Err(_) => {
                self.stats.invalid += 1;
                return;
            }
        };
        if self.validated.contains_key(&request_id) || (self.executed)(&request_id) {
            return;
        }
        let entry = self.entry(artifact, content);
        if self.is_full_for(entry.bytes()) {
            self.stats.refused_full += 1;
            return;
        }
        self.stats.verified += 1;
        self.insert(request_id, entry);
    }

    /// A fetched call that passed [`verify_fetched`]: validated at once (not offered to peers:
    /// like gossiped ingress, it is not relayed). Returns whether the pool holds the call now
    /// (or it was executed already); false when the pool is full.
    pub fn add_fetched(&mut self, call: FetchedCall) -> bool {
        if self.validated.contains_key(&call.request_id) || (self.executed)(&call.request_id) {
            return true;
        }
        let entry = self.entry(call.artifact, call.content);
        if self.is_full_for(entry.bytes()) {
            self.stats.refused_full += 1;
            return false;
        }
        self.stats.fetched += 1;
        self.insert(call.request_id, entry);
        true
    }

    /// Validated calls not yet executed, oldest first, at most `max`, that have not expired at
    /// `time_ns` and pass `keep`.
    pub fn candidates(
        &self,
        time_ns: u64,
        max: usize,
        keep: impl Fn(&RequestId) -> bool,
    ) -> Vec<RequestId> {
        let mut entries: Vec<(&RequestId, &IngressEntry)> = self
            .validated
            .iter()
            .filter(|(id, entry)| entry.content.ingress_expiry >= time_ns && keep(id))
            .collect();
        entries.sort_unstable_by_key(|(_, entry)| entry.arrival);
        entries.into_iter().take(max).map(|(id, _)| *id).collect()
    }

    /// Removes calls (executed ones, once no lagging peer needs them from us any more).
    pub fn remove_executed(&mut self, ids: &[RequestId]) {
        for id in ids {
            if self.remove(id) {
                self.stats.executed_removed += 1;
            }
        }
    }

    /// Removes calls whose expiry is before `time_ns`: no block may order them any more.
    pub fn remove_expired(&mut self, time_ns: u64) {
        let expired: Vec<RequestId> = self
            .by_expiry
            .range(..(time_ns, RequestId([0; 32])))
            .map(|(_, id)| *id)
            .collect();
        for id in expired {
            if self.remove(&id) {
                self.stats.expired_removed += 1;
            }
        }
    }

    fn remove(&mut self, id: &RequestId) -> bool {
        let Some(entry) = self.validated.remove(id) else {
            return false;
        };
        self.bytes -= entry.bytes();
        self.by_expiry.remove(&(entry.content.ingress_expiry, *id));
        let artifact_id = entry.artifact.id();
        if self.offered.remove(artifact_id) {
            self.pending.push(Transmit::Abort(artifact_id.clone()));
        }
        true
    }
}

impl ArtifactPool for IngressPool {
    fn kind(&self) -> ArtifactKind {
        self.kind
    }

    fn want(&self, advert: &Advert) -> Want {
        let Some((request_id, _)) = parse_ingress_id(&advert.id) else {
            return Want::Unwanted;
        };
        if self.validated.contains_key(&request_id)
            || self.unvalidated.contains_key(&advert.id)
            || self.verifying.contains(&advert.id)
            || (self.executed)(&request_id)
        {
            return Want::Unwanted;
        }
        if self.is_full_for(advert.size_bytes as usize) {
            return Want::MaybeLater;
        }
        Want::Wanted
    }

    /// The content check: the envelope's request id and expiry are the id's. Decoding costs
    /// about as much as hashing the bytes; the signature is checked later, off the shard.
    fn matches(&self, advert: &Advert, payload: &[u8]) -> bool {
        let Some((request_id, expiry)) = parse_ingress_id(&advert.id) else {
            return false;
        };
        match decode_request_envelope(payload, &IcLimits::default()) {
            Ok(envelope) => {
                envelope.request_id == request_id
                    && envelope.content.ingress_expiry() == expiry
                    && payload.len() as u64 == advert.size_bytes
            }
            Err(_) => false,
        }
    }

    fn insert_unvalidated(&mut self, from: NodeId, artifact: Artifact) {
        self.stats.received += 1;
        self.unvalidated
            .insert(artifact.id().clone(), (artifact, from));
    }

    fn remove_unvalidated(&mut self, id: &ArtifactId) {
        self.unvalidated.remove(id);
    }

    fn apply(&mut self, _now: Duration) -> Vec<Transmit> {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use icn_codecs::ic::Principal;

    use super::*;

    fn content(nonce: u8, expiry: u64) -> CallContent<'static> {
        CallContent {
            canister_id: Principal::from_canister_index(0),
            method_name: Cow::Owned("increment".into()),
            arg: Cow::Owned(b"DIDL\x00\x00".to_vec()),
            sender: Principal::ANONYMOUS,
            nonce: Some(Cow::Owned(vec![nonce])),
            ingress_expiry: expiry,
        }
    }

    fn pool(messages_max: usize) -> IngressPool {
        IngressPool::new(
            ArtifactKind(3),
            IngressLimits {
                messages_max,
                bytes_max: 1 << 20,
            },
            Rc::new(|id: &RequestId| id.0[0] == 0xee),
        )
    }

    #[test]
    fn local_calls_are_offered_bounded_and_purged_by_expiry() {
        let mut pool = pool(2);
        for (n, expiry) in [(1u8, 100u64), (2, 200)] {
            pool.add_local(
                RequestId([n; 32]),
                content(n, expiry),
                Buf::copy_from_slice(&[n]),
            )
            .unwrap();
        }
        assert_eq!(
            pool.add_local(RequestId([3; 32]), content(3, 300), Buf::empty()),
            Err(AddError::Full)
        );
        assert_eq!(
            pool.add_local(RequestId([1; 32]), content(1, 100), Buf::empty()),
            Ok(()),
            "a call already held is accepted again"
        );
        assert_eq!(pool.apply(Duration::ZERO).len(), 2);
        assert_eq!(
            pool.candidates(150, 10, |_| true),
            vec![RequestId([2; 32])],
            "expired calls are not ordered"
        );
        assert_eq!(
            pool.candidates(0, 1, |_| true),
            vec![RequestId([1; 32])],
            "oldest first"
        );
        pool.remove_expired(150);
        assert_eq!(pool.len(), 1);
        assert!(matches!(
            &pool.apply(Duration::ZERO)[..],
            [Transmit::Abort(_)]
        ));
        pool.remove_executed(&[RequestId([2; 32])]);
        assert!(pool.is_empty());
        assert_eq!(pool.bytes(), 0);
    }

    #[test]
    fn the_bouncer_refuses_held_and_executed_calls() {
        let mut pool = pool(10);
        let held = ingress_artifact(&RequestId([1; 32]), 5, Buf::copy_from_slice(b"x"));
        pool.add_local(
            RequestId([1; 32]),
            content(1, 5),
            Buf::copy_from_slice(b"x"),
        )
        .unwrap();
        assert_eq!(pool.want(&held.advert), Want::Unwanted);
        let executed = ingress_artifact(&RequestId([0xee; 32]), 5, Buf::empty());
        assert_eq!(pool.want(&executed.advert), Want::Unwanted);
        let fresh = ingress_artifact(&RequestId([2; 32]), 5, Buf::empty());
        assert_eq!(pool.want(&fresh.advert), Want::Wanted);
        assert!(!pool.matches(&fresh.advert, b"not cbor"));
    }

    #[test]
    fn fetched_envelopes_are_verified_against_the_ids_asked_for() {
        use crate::http::testing::{call_envelope, fresh_expiry, now_ns, TestKey};
        let check = IngressCheck {
            limits: IcLimits::default(),
            expiry_window_ns: 300_000_000_000,
            expiry_drift_ns: 60_000_000_000,
        };
        let key = TestKey::ed25519();
        let canister = Principal::from_canister_index(0);
        let envelope = |expiry| {
            Buf::from_vec(call_envelope(
                Some(&key),
                false,
                canister,
                "increment",
                b"DIDL\x00\x00",
                expiry,
            ))
        };
        let good = envelope(fresh_expiry());
        let id = decode_request_envelope(&good, &check.limits)
            .unwrap()
            .request_id;
        let asked: HashSet<RequestId> = [id].into();
        let now = now_ns();
        let call = verify_fetched(&asked, good.clone(), &check, now).unwrap();
        assert_eq!(call.request_id, id);
        assert_eq!(
            parse_ingress_id(call.artifact.id()).map(|(r, _)| r),
            Some(id)
        );
        let mut pool = pool(10);
        assert!(pool.add_fetched(call.clone()));
        assert!(pool.contains(&id));
        assert_eq!(pool.stats().fetched, 1);
        assert!(pool.add_fetched(call), "held already");
        assert_eq!(pool.stats().fetched, 1);

        // Another call than the one asked for, garbage, a query, a bad signature: wrong.
        let other = envelope(fresh_expiry());
        assert!(matches!(
            verify_fetched(&asked, other, &check, now),
            Err(IngressRefusal::Wrong(_))
        ));
        assert!(matches!(
            verify_fetched(&asked, Buf::copy_from_slice(b"garbage"), &check, now),
            Err(IngressRefusal::Wrong(_))
        ));
        let query = Buf::from_vec(call_envelope(
            Some(&key),
            true,
            canister,
            "get",
            b"DIDL\x00\x00",
            fresh_expiry(),
        ));
        let query_id = decode_request_envelope(&query, &check.limits)
            .unwrap()
            .request_id;
        assert!(matches!(
            verify_fetched(&[query_id].into(), query, &check, now),
            Err(IngressRefusal::Wrong(_))
        ));
        let mut tampered = good.to_vec();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(matches!(
            verify_fetched(&asked, Buf::from_vec(tampered), &check, now),
            Err(IngressRefusal::Wrong(_))
        ));
        // Expired at this node's clock: refused, but not the peer's fault.
        let old = envelope(now - 3_600_000_000_000);
        let old_id = decode_request_envelope(&old, &check.limits)
            .unwrap()
            .request_id;
        assert!(matches!(
            verify_fetched(&[old_id].into(), old, &check, now),
            Err(IngressRefusal::Expired(_))
        ));
    }

    #[test]
    fn failed_verification_is_counted_and_dropped() {
        let mut pool = pool(10);
        let artifact = ingress_artifact(&RequestId([4; 32]), 5, Buf::copy_from_slice(b"x"));
        pool.insert_unvalidated(NodeId([9; 32]), artifact.clone());
        let taken = pool.take_unverified(8);
        assert_eq!(taken.len(), 1);
        assert_eq!(pool.verifying_len(), 1);
        pool.verified(artifact.clone(), Err("bad signature".into()));
        assert_eq!(pool.stats().invalid, 1);
        assert!(pool.is_empty());
        pool.verified(artifact, Ok(content(4, 5)));
        assert_eq!(pool.len(), 1);
        assert_eq!(pool.verifying_len(), 0);
    }
}
