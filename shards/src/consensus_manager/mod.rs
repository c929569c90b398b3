//! The consensus manager: gets every artifact of one kind to every peer, with bounded memory and
//! no duplicated downloads, while peers are slow, flapping or malicious.
//!
//! Behaviour follows the IC's "abortable broadcast" (arXiv 2410.22080), in icn's wire format:
//! - The [`sender::Sender`] keeps the node's own slot table: each artifact the pool delivers
//!   takes a slot; small (or latency-sensitive) artifacts are pushed inside their slot update,
//!   larger ones advertised. An abort frees the slot *and tells the peers* (`slot_cleared`), which
//!   the IC does not. A new or reconnected peer is sent the whole table.
//! - The [`receiver::Receiver`] keeps every peer's slot table (bounded per peer, for every kind),
//!   asks the pool's bouncer about each new id, and downloads wanted ones from the peers that
//!   advertise them: in parallel, chunked above a threshold, small ones due from the same peer
//!   batched into one request, with per-peer and total in-flight limits and bandwidth budgets, retries with backoff and growing deadlines, and a content
//!   check that penalizes the peer that served bad bytes.
//! - The [`driver`] binds both to a [`icn_engine::Transport`] and a [`crate::runtime::Runtime`]:
//!   three routes per kind (slot update, fetch, batch fetch), RPC tasks, timers and connection
//!   tracking.
//!
//! Both cores are sans-I/O (fed `now` and messages, polled for actions), so a whole simulated
//! subnet runs on one thread with a virtual clock.

pub mod driver;
pub mod receiver;
pub mod sender;
pub mod wire;

use std::collections::HashMap;
use std::time::Duration;

pub use driver::{ConsensusManager, GossipConfig, GossipHandle, GossipStats};
pub use receiver::{
    Fetch, FetchId, FetchOutcome, InboundUpdate, Offence, Receiver, ReceiverConfig, ReceiverEvent,
    ReceiverStats, UpdateRefused,
};
pub use sender::{
    OutboundUpdate, Sender, SenderConfig, SenderStats, ServeError, SlotNumber, SlotTableFull,
    UpdateMessage,
};

/// A map keyed by what this node assigns (fetch ids, task ids, its own slot numbers) or by the
/// registry's node ids: FxHash, unseeded and the cheapest to compute (a multiply per word),
/// which is safe because no remote peer chooses these keys. The maps on the per-artifact path
/// are looked up several times per artifact per peer, so the hasher shows in the 1 KiB gossip
/// profile.
pub(crate) type LocalMap<K, V> = rustc_hash::FxHashMap<K, V>;
/// A set of [`LocalMap`] keys.
pub(crate) type LocalSet<K> = rustc_hash::FxHashSet<K>;
/// A map keyed by what remote peers choose (artifact ids, a peer's slot numbers): foldhash with
/// a per-process random seed, close to FxHash's speed, where an unseeded hash would let a peer
/// pick keys that all collide and make every lookup walk its whole (bounded) table.
pub(crate) type RemoteMap<K, V> = HashMap<K, V, foldhash::quality::RandomState>;

/// Exponential backoff: `initial`, doubling per failure, capped at `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait after the `failures`-th consecutive failure (1 -> `initial`).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        self.initial.saturating_mul(1u32 << doublings).min(self.max)
    }
}

/// A byte budget refilled at `rate` bytes per second, holding at most one second of it. A
/// request may overdraw it (a large chunk is never starved by a small budget); the debt delays
/// the next one. Rate 0 means unlimited.
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    rate_bytes_per_s: u64,
    tokens: i128,
    last: Duration,
}

impl TokenBucket {
    pub fn new(rate_bytes_per_s: u64) -> TokenBucket {
        TokenBucket {
            rate_bytes_per_s,
            tokens: rate_bytes_per_s as i128,
            last: Duration::ZERO,
        }
    }

    pub fn refill(&mut self, now: Duration) {
        if self.rate_bytes_per_s == 0 || now <= self.last {
            return;
        }
        let elapsed_ns = (now - self.last).as_nanos() as i128;
        let rate = self.rate_bytes_per_s as i128;
        self.tokens = (self.tokens + elapsed_ns * rate / 1_000_000_000).min(rate);
        self.last = now;
    }

    pub fn has_tokens(&self) -> bool {
        self.rate_bytes_per_s == 0 || self.tokens > 0
    }

    /// Whether the bucket would have tokens at `now` (without mutating it).
    pub fn has_tokens_at(&self, now: Duration) -> bool {
        let mut copy = *self;
        copy.refill(now);
        copy.has_tokens()
    }

    pub fn take(&mut self, bytes: u64) {
        if self.rate_bytes_per_s != 0 {
            self.tokens -= bytes as i128;
        }
    }

    /// When the bucket has tokens again (now if it has).
    pub fn ready_at(&self, now: Duration) -> Duration {
        if self.has_tokens() {
            return now;
        }
        let deficit = (1 - self.tokens) as u128;
        let wait_ns = deficit * 1_000_000_000 / self.rate_bytes_per_s as u128;
        now + Duration::from_nanos(wait_ns.min(u64::MAX as u128) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let backoff = Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
        };
        let delays: Vec<u64> = (1..=5)
            .map(|n| backoff.delay(n).as_millis() as u64)
            .collect();
        assert_eq!(delays, [10, 20, 40, 50, 50]);
        assert_eq!(backoff.delay(u32::MAX), Duration::from_millis(50));
    }

    #[test]
    fn token_bucket_allows_overdraft_then_waits() {
        let mut bucket = TokenBucket::new(1000);
        bucket.refill(Duration::ZERO);
        assert!(bucket.has_tokens());
        bucket.take(3000);
        assert!(!bucket.has_tokens());
        let ready = bucket.ready_at(Duration::ZERO);
        assert_eq!(ready, Duration::from_nanos(2_001_000_000));
        bucket.refill(ready);
        assert!(bucket.has_tokens());
        let unlimited = TokenBucket::new(0);
        assert!(unlimited.has_tokens());
    }
}
