//! Batched signature verification for queries and read_state requests.
//!
//! A shard hands each admitted query's body to its [`VerifyBatcher`] instead of submitting a
//! decode-and-verify job of its own. The batcher keeps the bodies in a pending list (bound
//! `http.verify_queue_max`, depth `icn_http_verify_pending`) and puts one token per body into
//! the CPU pool. A pool thread running a token takes up to `http.verify_batch_max` pending
//! bodies (its own and any queued behind it) and:
//! 1. decodes each and makes every check except Ed25519 signatures, which it sets aside
//!    ([`authenticate_deferred`]);
//! 2. verifies all set-aside signatures of the batch at once ([`verify_ed25519_batch`]);
//! 3. when that fails, verifies each request of the batch on its own (the single path, whose
//!    verdict and error text are the answer) and verifies singly for the next
//!    [`SINGLE_AFTER_FAILURE`], so that a sender of bad signatures cannot make every batch pay
//!    twice;
//! 4. completes each request's own handle.
//!
//! A token whose body another thread already took finds less, or nothing, to do. So batches
//! form only while bodies wait for a thread: on an idle node a token takes its one body, which
//! is verified singly (a batch of one would be slower), and nothing waits for a batch to fill.
//!
//! Calls are not batched (see the `auth` module docs, "Batch verification").

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use icn_codecs::ic::IcLimits;
use icn_tuning::HttpTuning;

use super::auth::{verify_ed25519_batch, Ed25519Check};
use super::metrics::Rejection;
use super::pool::{completion, Completer, CpuPool, JobHandle, PoolFull};
use super::routes::Route;
use super::service::{decode_and_check, PoolTimes, Refusal, SignatureMode, Verified};

/// How long batching pauses after a batch failed.
pub const SINGLE_AFTER_FAILURE: Duration = Duration::from_millis(100);

/// How a request's signatures were verified (label `by` of `icn_http_verified_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifiedBy {
    /// On its own: alone in its batch, batching paused, or no Ed25519 signature to batch.
    Single,
    /// In a batch whose equation held.
    Batch,
    /// In a batch whose equation failed, then on its own.
    Retried,
}

impl VerifiedBy {
    pub const ALL: [VerifiedBy; 3] = [VerifiedBy::Single, VerifiedBy::Batch, VerifiedBy::Retried];

    pub fn label(self) -> &'static str {
        match self {
            VerifiedBy::Single => "single",
            VerifiedBy::Batch => "batch",
            VerifiedBy::Retried => "retried",
        }
    }
}

/// What a batched request gets back.
pub(crate) struct BatchOutcome {
    pub verified: Result<Verified, Refusal>,
    pub times: PoolTimes,
    /// Time it waited behind other work for a pool thread (zero when the batch's token found
    /// a thread idle: the delay control's signal, as for single jobs).
    pub queued: Duration,
    pub by: VerifiedBy,
    /// Requests in its batch.
    pub batch_len: usize,
}

struct Pending {
    id: u64,
    body: Bytes,
    route: Route,
    /// The node's clock (ns since 1970) when the request was admitted.
    now: u64,
    submitted: Instant,
    done: Completer<BatchOutcome>,
}

/// One shard's pending bodies and the batching state (shared with the pool threads).
pub struct VerifyBatcher {
    pending: Mutex<VecDeque<Pending>>,
    /// The pending list's length, kept beside it so the shard's depth gauge reads it without
    /// taking the lock the pool threads drain under.
    pending_len: AtomicUsize,
    pending_max: usize,
    batch_max: usize,
    limits: IcLimits,
    tuning: HttpTuning,
    next_id: AtomicU64,
    epoch: Instant,
    /// Nanoseconds after `epoch` until which requests are verified singly.
    single_until_ns: AtomicU64,
}

impl VerifyBatcher {
    pub(crate) fn new(tuning: HttpTuning, limits: IcLimits) -> Arc<VerifyBatcher> {
        Arc::new(VerifyBatcher {
            pending: Mutex::new(VecDeque::new()),
            pending_len: AtomicUsize::new(0),
            pending_max: tuning.verify_queue_max,
            batch_max: tuning.verify_batch_max.max(1),
            limits,
            tuning,
            next_id: AtomicU64::new(0),
            epoch: Instant::now(),
            single_until_ns: AtomicU64::new(0),
        })
    }

    /// Bodies waiting for a pool thread (bound `http.verify_queue_max`).
    pub fn pending(&self) -> usize {
        self.pending_len.load(Ordering::Relaxed)
    }

    /// Queues `body` and a token for it on `pool`; refused when the pending list or the
    /// pool's queue is full.
    pub(crate) fn submit(
        self: &Arc<Self>,
        pool: &CpuPool,
        body: Bytes,
        route: Route,
        now: u64,
    ) -> Result<JobHandle<BatchOutcome>, PoolFull> {
        let (done, handle) = completion();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut pending = self.lock();
            if pending.len() >= self.pending_max {
                return Err(PoolFull);
            }
            pending.push_back(Pending {
                id,
                body,
                route,
                now,
                submitted: Instant::now(),
                done,
            });
            self.pending_len.store(pending.len(), Ordering::Relaxed);
        }
        let batcher = self.clone();
        match pool.try_run_flagged(move |queued| batcher.run(queued)) {
            Ok(_token) => Ok(handle),
            Err(full) => {
                // Taken back unless a thread already has it (then its answer goes unread).
                let mut pending = self.lock();
                pending.retain(|p| p.id != id);
                self.pending_len.store(pending.len(), Ordering::Relaxed);
                Err(full)
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A token's work on a pool thread (module docs).
    fn run(&self, queued: bool) {
        let start = Instant::now();
        let taken: Vec<Pending> = {
            let mut pending = self.lock();
            let n = pending.len().min(self.batch_max);
            let taken = pending.drain(..n).collect();
            self.pending_len.store(pending.len(), Ordering::Relaxed);
            taken
        };
        if taken.is_empty() {
            return;
        }
        let batch_len = taken.len();
        let batching =
            batch_len > 1 && self.now_ns() >= self.single_until_ns.load(Ordering::Relaxed);
        let mut checks: Vec<Ed25519Check> = Vec::new();
        let mut items: Vec<Item> = taken
            .into_iter()
            .map(|pending| {
                let mut times = PoolTimes {
                    wait: start.saturating_duration_since(pending.submitted),
                    ..PoolTimes::default()
                };
                let queued_for = if queued { times.wait } else { Duration::ZERO };
                let first = checks.len();
                let verified = if batching {
                    let verified = self.check(&pending, &mut times, Some(&mut checks));
                    match verified {
                        // A deferred check may hide an earlier signature failure behind this
                        // error: the single path gives the answer the request would get
                        // alone.
                        Err(ref refusal) if refusal.reason == Some(Rejection::BadSignature) => {
                            checks.truncate(first);
                            self.check(&pending, &mut times, None)
                        }
                        other => other,
                    }
                } else {
                    self.check(&pending, &mut times, None)
                };
                Item {
                    checks: first..checks.len(),
                    pending,
                    verified,
                    times,
                    queued_for,
                    by: VerifiedBy::Single,
                }
            })
            .collect();
        if !checks.is_empty() {
            let verify_started = Instant::now();
            let passed = checks.len() > 1 && verify_ed25519_batch(&checks);
            let spent = verify_started.elapsed();
            if !passed && checks.len() > 1 {
                let until = self
                    .now_ns()
                    .saturating_add(u64::try_from(SINGLE_AFTER_FAILURE.as_nanos()).unwrap_or(0));
                self.single_until_ns.store(until, Ordering::Relaxed);
            }
            let total = checks.len() as u32;
            for item in items.iter_mut().filter(|i| !i.checks.is_empty()) {
                if passed {
                    item.times.verify += spent * item.checks.len() as u32 / total;
                    item.by = VerifiedBy::Batch;
                } else {
                    // A lone deferred check is verified singly, not as a batch of one.
                    item.verified = self.check(&item.pending, &mut item.times, None);
                    if total > 1 {
                        item.by = VerifiedBy::Retried;
                    }
                }
            }
        }
        for item in items {
            item.pending.done.complete(Ok(BatchOutcome {
                verified: item.verified,
                times: item.times,
                queued: item.queued_for,
                by: item.by,
                batch_len,
            }));
        }
    }

    fn check(
        &self,
        pending: &Pending,
        times: &mut PoolTimes,
        deferred: Option<&mut Vec<Ed25519Check>>,
    ) -> Result<Verified, Refusal> {
        let mode = match deferred {
            Some(checks) => SignatureMode::Deferred(checks),
            None => SignatureMode::Now,
        };
        decode_and_check(
            &pending.body,
            pending.route,
            &self.limits,
            &self.tuning,
            pending.now,
            times,
            mode,
        )
    }
}

struct Item {
    pending: Pending,
    verified: Result<Verified, Refusal>,
    times: PoolTimes,
    queued_for: Duration,
    /// This request's set-aside checks in the batch's list.
    checks: Range<usize>,
    by: VerifiedBy,
}

#[cfg(test)]
mod tests {
    use futures_lite::future::block_on;
    use http::StatusCode;
    use icn_codecs::ic::decode_request_envelope;
    use std::borrow::Cow;

    use super::*;
    use crate::http::pool::HeldWorker;
    use crate::http::service::{decode_and_check, SignatureMode};
    use crate::http::testing::{
        call_envelope, fresh_expiry, now_ns, read_state_envelope, test_canister, test_tuning,
        TestKey,
    };

    fn batcher(batch_max: usize) -> Arc<VerifyBatcher> {
        let tuning = HttpTuning {
            verify_batch_max: batch_max,
            verify_queue_max: 64,
            ..test_tuning()
        };
        VerifyBatcher::new(tuning, IcLimits::default())
    }

    fn query(key: Option<&TestKey>) -> Vec<u8> {
        call_envelope(
            key,
            true,
            test_canister(),
            "get",
            b"DIDL\x00\x00",
            fresh_expiry(),
        )
    }

    /// `body` with the first byte of its sender signature flipped.
    fn tampered(body: &[u8]) -> Vec<u8> {
        let mut envelope = decode_request_envelope(body, &IcLimits::default()).unwrap();
        let mut sig = envelope.sender_sig.take().unwrap().into_owned();
        sig[0] ^= 1;
        envelope.sender_sig = Some(Cow::Owned(sig));
        let mut out = Vec::new();
        envelope.encode(&mut out);
        out
    }

    /// Submits `bodies` while the pool's only thread is held, so they all wait and the first
    /// token takes them as one batch (up to the batcher's maximum).
    fn run_held(batcher: &Arc<VerifyBatcher>, bodies: &[(Vec<u8>, Route)]) -> Vec<BatchOutcome> {
        run_held_at(batcher, bodies, now_ns())
    }

    fn run_held_at(
        batcher: &Arc<VerifyBatcher>,
        bodies: &[(Vec<u8>, Route)],
        now: u64,
    ) -> Vec<BatchOutcome> {
        let pool = CpuPool::new(1, 64, "batch-test").unwrap();
        let held = HeldWorker::hold(&pool);
        let handles: Vec<_> = bodies
            .iter()
            .map(|(body, route)| {
                batcher
                    .submit(&pool, Bytes::from(body.clone()), *route, now)
                    .unwrap()
            })
            .collect();
        assert_eq!(batcher.pending(), bodies.len());
        held.release();
        handles.into_iter().map(|h| block_on(h).unwrap()).collect()
    }

    /// What the single path answers for `body`.
    fn single(body: &[u8], route: Route) -> Result<(), (StatusCode, String)> {
        single_at(body, route, now_ns())
    }

    fn single_at(body: &[u8], route: Route, now: u64) -> Result<(), (StatusCode, String)> {
        let tuning = test_tuning();
        decode_and_check(
            body,
            route,
            &IcLimits::default(),
            &tuning,
            now,
            &mut PoolTimes::default(),
            SignatureMode::Now,
        )
        .map(|_| ())
        .map_err(|r| (r.status, r.text()))
    }

    fn verdict(outcome: &BatchOutcome) -> Result<(), (StatusCode, String)> {
        match &outcome.verified {
            Ok(_) => Ok(()),
            Err(r) => Err((r.status, r.text())),
        }
    }

    #[test]
    fn waiting_requests_are_verified_as_one_batch() {
        let keys: Vec<TestKey> = (0..6).map(|_| TestKey::ed25519()).collect();
        let route = Route::Query(test_canister());
        let mut bodies: Vec<(Vec<u8>, Route)> =
            keys.iter().map(|k| (query(Some(k)), route)).collect();
        // Other key types and the anonymous sender ride along, checked at once.
        bodies.push((query(Some(&TestKey::p256())), route));
        bodies.push((query(None), route));
        bodies.push((
            read_state_envelope(Some(&keys[0]), &[&[b"time"]]),
            Route::CanisterReadState(test_canister()),
        ));
        let batcher = batcher(32);
        let outcomes = run_held(&batcher, &bodies);
        for (i, outcome) in outcomes.iter().enumerate() {
            assert_eq!(verdict(outcome), Ok(()), "request {i}");
            assert_eq!(outcome.batch_len, bodies.len());
        }
        let by: Vec<VerifiedBy> = outcomes.iter().map(|o| o.by).collect();
        let mut expected = vec![VerifiedBy::Batch; 6];
        expected.extend([VerifiedBy::Single, VerifiedBy::Single, VerifiedBy::Batch]);
        assert_eq!(by, expected);
        assert_eq!(batcher.pending(), 0);
    }

    #[test]
    fn a_bad_signature_fails_the_batch_and_gets_the_single_paths_answer() {
        let route = Route::Query(test_canister());
        let good: Vec<Vec<u8>> = (0..4).map(|_| query(Some(&TestKey::ed25519()))).collect();
        let bad = tampered(&query(Some(&TestKey::ed25519())));
        let expected_bad = single(&bad, route);
        assert!(
            matches!(&expected_bad, Err((StatusCode::BAD_REQUEST, m)) if m.contains("invalid signature in sender_sig"))
        );
        let mut bodies: Vec<(Vec<u8>, Route)> = good.iter().map(|b| (b.clone(), route)).collect();
        bodies.insert(2, (bad.clone(), route));
        let batcher = batcher(32);
        let outcomes = run_held(&batcher, &bodies);
        for (i, outcome) in outcomes.iter().enumerate() {
            if i == 2 {
                assert_eq!(verdict(outcome), expected_bad);
            } else {
                assert_eq!(verdict(outcome), Ok(()), "request {i}");
            }
            assert_eq!(outcome.by, VerifiedBy::Retried);
        }
        // Batching pauses after a failure: the next batch is verified singly.
        let again = run_held(
            &batcher,
            &[(good[0].clone(), route), (good[1].clone(), route)],
        );
        assert!(again
            .iter()
            .all(|o| o.by == VerifiedBy::Single && o.verified.is_ok()));
    }

    #[test]
    fn garbage_and_wrong_requests_get_the_single_paths_answers() {
        let route = Route::Query(test_canister());
        let key = TestKey::ed25519();
        let wrong_type = call_envelope(
            Some(&key),
            false,
            test_canister(),
            "inc",
            b"DIDL\x00\x00",
            fresh_expiry(),
        );
        let expired = call_envelope(Some(&key), true, test_canister(), "get", b"", 1);
        let bodies: Vec<(Vec<u8>, Route)> = vec![
            (query(Some(&key)), route),
            (b"\xd9\xd9\xf7 not cbor".to_vec(), route),
            (wrong_type, route),
            (expired, route),
            (query(Some(&TestKey::ed25519())), route),
        ];
        let now = now_ns();
        let outcomes = run_held_at(&batcher(32), &bodies, now);
        for ((body, route), outcome) in bodies.iter().zip(&outcomes) {
            assert_eq!(verdict(outcome), single_at(body, *route, now));
        }
        assert!(outcomes[0].verified.is_ok() && outcomes[4].verified.is_ok());
        assert!(outcomes[1..4].iter().all(|o| o.verified.is_err()));
    }

    #[test]
    fn batches_are_bounded_and_an_idle_pool_verifies_singly() {
        let route = Route::Query(test_canister());
        let bodies: Vec<(Vec<u8>, Route)> = (0..7)
            .map(|_| (query(Some(&TestKey::ed25519())), route))
            .collect();
        let outcomes = run_held(&batcher(3), &bodies);
        let lens: Vec<usize> = outcomes.iter().map(|o| o.batch_len).collect();
        assert_eq!(lens, vec![3, 3, 3, 3, 3, 3, 1]);
        assert!(outcomes.iter().all(|o| o.verified.is_ok()));
        assert_eq!(outcomes[6].by, VerifiedBy::Single);
        // Nothing waiting: a lone request is not held back for a batch.
        let pool = CpuPool::new(1, 8, "batch-test").unwrap();
        let batcher = batcher(32);
        let outcome = block_on(
            batcher
                .submit(&pool, Bytes::from(bodies[0].0.clone()), route, now_ns())
                .unwrap(),
        )
        .unwrap();
        assert_eq!((outcome.batch_len, outcome.by), (1, VerifiedBy::Single));
        assert_eq!(outcome.queued, Duration::ZERO);
    }

    #[test]
    fn the_pending_list_is_bounded() {
        let tuning = HttpTuning {
            verify_batch_max: 8,
            verify_queue_max: 2,
            ..test_tuning()
        };
        let batcher = VerifyBatcher::new(tuning, IcLimits::default());
        let pool = CpuPool::new(1, 64, "batch-test").unwrap();
        let held = HeldWorker::hold(&pool);
        let route = Route::Query(test_canister());
        let body = || Bytes::from(query(Some(&TestKey::ed25519())));
        let first = batcher.submit(&pool, body(), route, now_ns()).unwrap();
        let second = batcher.submit(&pool, body(), route, now_ns()).unwrap();
        assert!(matches!(
            batcher.submit(&pool, body(), route, now_ns()),
            Err(PoolFull)
        ));
        assert_eq!(batcher.pending(), 2);
        held.release();
        assert!(block_on(first).unwrap().verified.is_ok());
        assert!(block_on(second).unwrap().verified.is_ok());
        assert_eq!(batcher.pending(), 0);
    }
}
