//! Fetching ingress a notarized block names and this node lacks, sans I/O.
//!
//! Blocks carry request ids only; a receiver rebuilds a block from its own ingress pool. A call
//! that never reached this node by gossip (a push lost to a reconnect, a pool that was full when
//! the advert came, a node that joined late) would leave it unable to execute a block the rest
//! of the subnet executed, until a checkpoint let it sync past. [`IngressFetcher`] decides what
//! to ask of whom; the driver sends the requests (route `replica/ingress`), verifies what comes
//! back exactly as it verifies gossiped ingress, and reports the outcome here.
//!
//! Policy:
//! - the wanted set is what the chain reports missing now ([`IngressFetcher::set_missing`]
//!   replaces it, so an id that arrived by gossip or whose height executed is forgotten), at
//!   most `tracked_max` ids;
//! - an id is asked of one peer at a time (never twice at once), first of the block's maker
//!   (the one node sure to have held it), then of the other connected members, each once per
//!   cycle, starting at a member derived from the id so that many missing ids spread their load;
//! - a failed id (timeout, error, an answer without it or with something else in its place)
//!   waits a backoff that doubles per failure and then goes to the next peer;
//! - at most `in_flight_max` requests are outstanding, each for at most `ids_per_request_max`
//!   ids to one peer.

use std::collections::BTreeMap;
use std::time::Duration;

use icn_codecs::ic::RequestId;
use icn_engine::NodeId;

use crate::consensus_manager::Backoff;

/// The fetcher's bounds (tuning `replica.ingress_fetch_*`).
#[derive(Clone, Copy, Debug)]
pub struct FetchConfig {
    pub ids_per_request_max: usize,
    pub in_flight_max: usize,
    pub tracked_max: usize,
    pub timeout: Duration,
    pub backoff: Backoff,
}

/// Counters of ingress fetching.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FetchStats {
    /// Fetch requests sent.
    pub requests: u64,
    /// Request ids asked for, summed over requests.
    pub requested: u64,
    /// Fetched envelopes that passed verification and are now held in the ingress pool (or
    /// were executed meanwhile).
    pub received: u64,
    /// Fetched envelopes refused: not a call, a request id not asked for or sent twice, a bad
    /// signature, or an expiry outside the window (all but the last penalize the peer).
    pub invalid: u64,
    /// Requests that failed as a whole: timeout, transport error, an answer that does not
    /// decode (penalized), or no verification capacity.
    pub failed: u64,
    /// Missing ids not tracked because `tracked_max` ids already were.
    pub dropped_full: u64,
    /// Fetch requests this node answered.
    pub served: u64,
}

/// One request to send: ask `peer` for `ids`; report the outcome under `fetch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchRequest {
    pub fetch: u64,
    pub peer: NodeId,
    pub ids: Vec<RequestId>,
}

#[derive(Debug)]
struct Wanted {
    /// The maker of the block that names it, asked first.
    maker: Option<NodeId>,
    /// Peers asked in the current cycle (at most the subnet's members).
    asked: Vec<NodeId>,
    failures: u32,
    not_before: Duration,
    in_flight: bool,
}

pub struct IngressFetcher {
    config: FetchConfig,
    wanted: BTreeMap<RequestId, Wanted>,
    /// Outstanding requests: the peer and the ids (bound `in_flight_max`).
    in_flight: BTreeMap<u64, (NodeId, Vec<RequestId>)>,
    next_fetch: u64,
    stats: FetchStats,
}

impl IngressFetcher {
    pub fn new(config: FetchConfig) -> IngressFetcher {
        IngressFetcher {
            config,
            wanted: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            next_fetch: 0,
            stats: FetchStats::default(),
        }
    }

    pub fn config(&self) -> &FetchConfig {
        &self.config
    }

    pub fn stats(&self) -> FetchStats {
        self.stats
    }

    pub fn stats_mut(&mut self) -> &mut FetchStats {
        &mut self.stats
    }

    /// Requests outstanding (bound `in_flight_max`).
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Ids tracked (bound `tracked_max`).
    pub fn tracked(&self) -> usize {
        self.wanted.len()
    }

    /// Whether `id` is being fetched or waits to be.
    pub fn is_wanted(&self, id: &RequestId) -> bool {
        self.wanted.contains_key(id)
    }

    /// The ids the chain misses now, each with the maker of a block naming it. Replaces the
    /// wanted set: ids no longer missing are forgotten unless a request for them is out (its
    /// answer is still welcome; the id is dropped when it comes back).
    pub fn set_missing(&mut self, missing: &[(RequestId, Option<NodeId>)]) {
        if missing.is_empty() && self.wanted.is_empty() {
            return;
        }
        let mut current: BTreeMap<RequestId, Option<NodeId>> = BTreeMap::new();
        for (id, maker) in missing {
            let entry = current.entry(*id).or_insert(*maker);
            if entry.is_none() {
                *entry = *maker;
            }
        }
        self.wanted
            .retain(|id, wanted| wanted.in_flight || current.contains_key(id));
        for (id, maker) in current {
            if let Some(wanted) = self.wanted.get_mut(&id) {
                if wanted.maker.is_none() {
                    wanted.maker = maker;
                }
                continue;
            }
            if self.wanted.len() >= self.config.tracked_max {
                self.stats.dropped_full += 1;
                continue;
            }
            self.wanted.insert(
                id,
                Wanted {
                    maker,
                    asked: Vec::new(),
                    failures: 0,
                    not_before: Duration::ZERO,
                    in_flight: false,
                },
            );
        }
    }

    /// The requests to send now. `peers`: the members this node is connected to, itself
    /// excluded, sorted by id.
    pub fn poll(&mut self, now: Duration, peers: &[NodeId]) -> Vec<FetchRequest> {
        let room = self
            .config
            .in_flight_max
            .saturating_sub(self.in_flight.len());
        if room == 0 || peers.is_empty() {
            return Vec::new();
        }
        // Group the due ids by the peer each goes to, in id order.
        let mut batches: BTreeMap<NodeId, Vec<RequestId>> = BTreeMap::new();
        for (id, wanted) in &mut self.wanted {
            if wanted.in_flight || wanted.not_before > now {
                continue;
            }
            let peer = match choose_peer(id, wanted, peers) {
                Some(peer) => peer,
                None => {
                    // Every connected peer was asked: start a new cycle.
                    wanted.asked.clear();
                    match choose_peer(id, wanted, peers) {
                        Some(peer) => peer,
                        None => continue,
                    }
                }
            };
            batches.entry(peer).or_default().push(*id);
        }
        let mut requests = Vec::new();
        'peers: for (peer, ids) in batches {
            for chunk in ids.chunks(self.config.ids_per_request_max.max(1)) {
                if requests.len() >= room {
                    break 'peers;
                }
                for id in chunk {
                    if let Some(wanted) = self.wanted.get_mut(id) {
                        wanted.in_flight = true;
                        wanted.asked.push(peer);
                    }
                }
                let fetch = self.next_fetch;
                self.next_fetch += 1;
                self.in_flight.insert(fetch, (peer, chunk.to_vec()));
                self.stats.requests += 1;
                self.stats.requested += chunk.len() as u64;
                requests.push(FetchRequest {
                    fetch,
                    peer,
                    ids: chunk.to_vec(),
                });
            }
        }
        requests
    }

    /// The answer to `fetch` was verified: `received` are the ids now held (any other id of
    /// the request failed with this peer and goes to the next one after its backoff).
    pub fn on_answer(&mut self, now: Duration, fetch: u64, received: &[RequestId]) {
        let Some((_, ids)) = self.in_flight.remove(&fetch) else {
            return;
        };
        for id in ids {
            if received.contains(&id) {
                self.wanted.remove(&id);
            } else {
                self.fail(now, &id);
            }
        }
    }

    /// `fetch` failed as a whole (timeout, transport error, undecodable answer).
    pub fn on_failure(&mut self, now: Duration, fetch: u64) {
        let Some((_, ids)) = self.in_flight.remove(&fetch) else {
            return;
        };
        self.stats.failed += 1;
        for id in ids {
            self.fail(now, &id);
        }
    }

    fn fail(&mut self, now: Duration, id: &RequestId) {
        let Some(wanted) = self.wanted.get_mut(id) else {
            return;
        };
        wanted.in_flight = false;
        wanted.failures = wanted.failures.saturating_add(1);
        wanted.not_before = now + self.config.backoff.delay(wanted.failures);
    }

    /// When the next id becomes due (for the driver's wake-up), if any waits.
    pub fn next_due(&self) -> Option<Duration> {
        self.wanted
            .values()
            .filter(|wanted| !wanted.in_flight)
            .map(|wanted| wanted.not_before)
            .min()
    }
}

/// The maker if connected and not yet asked this cycle, otherwise the first peer not asked,
/// starting at a position derived from the id.
fn choose_peer(id: &RequestId, wanted: &Wanted, peers: &[NodeId]) -> Option<NodeId> {
    if let Some(maker) = wanted.maker {
        if peers.contains(&maker) && !wanted.asked.contains(&maker) {
            return Some(maker);
        }
    }
    let start = usize::from(id.0[0]) % peers.len();
    (0..peers.len())
        .map(|i| peers[(start + i) % peers.len()])
        .find(|peer| !wanted.asked.contains(peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn fetcher(ids_per_request_max: usize, in_flight_max: usize) -> IngressFetcher {
        IngressFetcher::new(FetchConfig {
            ids_per_request_max,
            in_flight_max,
            tracked_max: 8,
            timeout: 100 * MS,
            backoff: Backoff {
                initial: 10 * MS,
                max: 40 * MS,
            },
        })
    }

    fn node(n: u8) -> NodeId {
        NodeId([n; 32])
    }

    fn id(n: u8) -> RequestId {
        RequestId([n; 32])
    }

    #[test]
    fn asks_the_maker_first_and_never_twice_at_once() {
        let mut f = fetcher(2, 4);
        let peers = [node(1), node(2), node(3)];
        f.set_missing(&[
            (id(0), Some(node(2))),
            (id(1), Some(node(2))),
            (id(9), None),
        ]);
        // A second report of the same ids adds nothing.
        f.set_missing(&[
            (id(0), Some(node(2))),
            (id(1), Some(node(2))),
            (id(9), None),
        ]);
        assert_eq!(f.tracked(), 3);
        let requests = f.poll(Duration::ZERO, &peers);
        assert_eq!(requests.len(), 2);
        // id 9 has no maker: it starts at peer 9 % 3 = 0.
        assert_eq!(requests[0].peer, node(1));
        assert_eq!(requests[0].ids, vec![id(9)]);
        assert_eq!(requests[1].peer, node(2));
        assert_eq!(requests[1].ids, vec![id(0), id(1)]);
        assert!(
            f.poll(Duration::ZERO, &peers).is_empty(),
            "in flight already"
        );
        assert_eq!(f.in_flight(), 2);
        assert_eq!(f.stats().requested, 3);
    }

    #[test]
    fn a_failed_id_goes_to_another_peer_after_a_backoff() {
        let mut f = fetcher(8, 4);
        let peers = [node(1), node(2), node(3)];
        f.set_missing(&[(id(4), Some(node(3))), (id(5), Some(node(3)))]);
        let first = f.poll(Duration::ZERO, &peers);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].peer, node(3));
        // The maker answered with id 5 only.
        f.on_answer(MS, first[0].fetch, &[id(5)]);
        assert!(!f.is_wanted(&id(5)));
        assert!(f.is_wanted(&id(4)));
        assert!(f.poll(5 * MS, &peers).is_empty(), "backing off");
        assert_eq!(f.next_due(), Some(11 * MS));
        let second = f.poll(11 * MS, &peers);
        assert_eq!(second.len(), 1);
        assert_ne!(
            second[0].peer,
            node(3),
            "another peer than the one that failed"
        );
        let asked_second = second[0].peer;
        f.on_failure(12 * MS, second[0].fetch);
        // Second failure: 20 ms.
        assert!(f.poll(31 * MS, &peers).is_empty());
        let third = f.poll(32 * MS, &peers);
        assert_eq!(third.len(), 1);
        assert!(third[0].peer != node(3) && third[0].peer != asked_second);
        f.on_failure(33 * MS, third[0].fetch);
        // Every peer was asked: a new cycle starts with the maker again, after 40 ms (capped).
        let fourth = f.poll(73 * MS, &peers);
        assert_eq!(fourth[0].peer, node(3));
        assert_eq!(f.stats().failed, 2);
    }

    #[test]
    fn bounds_hold_and_ids_no_longer_missing_are_forgotten() {
        let mut f = fetcher(1, 2);
        let peers = [node(1)];
        let many: Vec<(RequestId, Option<NodeId>)> = (0..10).map(|n| (id(n), None)).collect();
        f.set_missing(&many);
        assert_eq!(f.tracked(), 8, "tracked_max");
        assert_eq!(f.stats().dropped_full, 2);
        let requests = f.poll(Duration::ZERO, &peers);
        assert_eq!(requests.len(), 2, "in_flight_max, one id each");
        // The block executed (say a checkpoint was adopted): nothing is missing any more, but
        // the two requests out keep their ids until they come back.
        f.set_missing(&[]);
        assert_eq!(f.tracked(), 2);
        f.on_failure(MS, requests[0].fetch);
        f.on_answer(MS, requests[1].fetch, &[]);
        f.set_missing(&[]);
        assert_eq!(f.tracked(), 0);
        assert_eq!(f.in_flight(), 0);
        assert!(f.poll(Duration::from_secs(1), &peers).is_empty());
        // No peer connected: nothing is sent.
        f.set_missing(&many[..1]);
        assert!(f.poll(Duration::from_secs(1), &[]).is_empty());
    }
}
