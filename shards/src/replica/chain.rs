//! The replica's ordering and execution core, sans I/O: it is fed blocks and shares as the
//! pools validate them, and the clock, and it answers with the block or share to send and the
//! heights it executed.
//!
//! The protocol is a reference driver for the networking layer, not a Byzantine fault-tolerant
//! consensus (docs/ARCHITECTURE.md says what it does not survive):
//! - Heights follow execution: height `h + 1` is proposed once a node executed `h`. Rounds run
//!   on the wall clock from the parent's time, so every node (with synchronized clocks) agrees
//!   on the round whenever it joined: round 0 starts `block_interval` after the parent's time
//!   (that paces the subnet), round `r` `r` round timeouts later. The maker of round `r` is the
//!   member at `(h + 1 + r) mod n` of the members sorted by id, so a stopped maker is passed
//!   over after one round timeout. (The genesis state's time is 0, so height 1's rounds count
//!   from the epoch: a large, but common, number.)
//! - A block names its parent (the hash of the block executed at `h`) and orders ingress by
//!   request id. A node sends a notarization share for the lowest-round block it holds whose
//!   round has started, that extends its own executed tip, comes from that round's maker,
//!   carries a time later than its parent's and close to the node's clock, and names at most
//!   `block_ingress_max` distinct calls, none executed yet and all validated in its own ingress
//!   pool. It shares once per height, except that two rounds after its share, if the height
//!   has still not executed, it moves its share to a lower-round block it has since received
//!   (shares that split between two rounds' blocks would otherwise stall the height forever).
//! - A block executes once `n - f` members (f = (n - 1) / 3; 3 of 4) sent shares for it and the
//!   node holds every ingress it names. With one share per node per height, two blocks of one
//!   height can never both gather `n - f` shares from honest nodes, so every node executes the
//!   same chain. The moved share weakens that: it is safe as long as shares arrive within two
//!   round timeouts (a quorum for the first block is then seen by all before anyone moves).
//!   This is a reference driver's trade, documented in docs/ARCHITECTURE.md.
//!
//! Execution is deterministic: every call's outcome depends only on the state and the block.
//! Calls already executed (by request id) or expired at the block's time are skipped, so an
//! identical request sent to two nodes executes once. Request statuses are kept until their
//! ingress expiry passes the state's time, which is the retention the interface specification
//! asks for (a request can never be resubmitted after its expiry).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use icn_codecs::ic::hash::leb128;
use icn_codecs::ic::{LabeledTree, Principal, RequestId};
use icn_codecs::replica::{
    decode_replica_block, decode_replica_share, encode_replica_block, encode_replica_share, Hash,
    ReplicaBlock, ReplicaLimits, ReplicaShare,
};
use icn_codecs::DecodeError;
use icn_engine::{Buf, NodeId};

use super::bls::PublicKey;
use super::canisters::{CallKind, CallOutcome, Canisters, Reject};
use super::certification::base_state;
use super::ingress::IngressPool;
use crate::artifact::Artifact;
use crate::pool::make_artifact;

/// The chain's settings; every node of a subnet must use the same block bounds.
#[derive(Clone, Copy, Debug)]
pub struct ChainConfig {
    pub local: NodeId,
    pub block_interval: Duration,
    pub round_timeout: Duration,
    pub block_ingress_max: usize,
    pub request_statuses_max: usize,
    pub block_time_skew_ns: u64,
}

impl ChainConfig {
    pub fn limits(&self) -> ReplicaLimits {
        ReplicaLimits::for_block_ingress(self.block_ingress_max)
    }
}

/// How a call ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestOutcome {
    Replied(Vec<u8>),
    Rejected(Reject),
}

/// A request's certified status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestStatus {
    pub sender: Principal,
    pub canister: Principal,
    pub ingress_expiry: u64,
    pub height: u64,
    pub outcome: RequestOutcome,
}

/// The replicated state after the last executed height.
#[derive(Clone, Debug)]
pub struct ExecutedState {
    pub height: u64,
    /// Artifact hash of the block executed at `height` (zeros at genesis).
    pub tip: Hash,
    /// The state's time: the block's time, nanoseconds since 1970.
    pub time_ns: u64,
    pub canisters: Canisters,
    pub statuses: BTreeMap<RequestId, RequestStatus>,
    by_expiry: BTreeSet<(u64, RequestId)>,
}

impl ExecutedState {
    pub fn genesis(canisters: Canisters, time_ns: u64) -> ExecutedState {
        ExecutedState {
            height: 0,
            tip: [0; 32],
            time_ns,
            canisters,
            statuses: BTreeMap::new(),
            by_expiry: BTreeSet::new(),
        }
    }

    /// A state from its parts (a checkpoint read back).
    pub fn from_parts(
        height: u64,
        tip: Hash,
        time_ns: u64,
        canisters: Canisters,
        statuses: BTreeMap<RequestId, RequestStatus>,
    ) -> ExecutedState {
        let by_expiry = statuses
            .iter()
            .map(|(id, status)| (status.ingress_expiry, *id))
            .collect();
        ExecutedState {
            height,
            tip,
            time_ns,
            canisters,
            statuses,
            by_expiry,
        }
    }

    /// Drops the statuses whose ingress expiry is before `time_ns`.
    fn prune_statuses(&mut self, time_ns: u64) {
        let kept = self.by_expiry.split_off(&(time_ns, RequestId([0; 32])));
        for (_, id) in std::mem::replace(&mut self.by_expiry, kept) {
            self.statuses.remove(&id);
        }
    }

    /// The state tree certified at this height: `/time`, `/subnet/<id>/{public_key,
    /// canister_ranges, node/<node>/public_key}` and `/request_status/<id>/...`.
    pub fn tree(
        &self,
        subnet_key: &PublicKey,
        ranges: &[(Principal, Principal)],
        nodes: &[NodeId],
    ) -> LabeledTree {
        let mut root = base_state(self.time_ns, subnet_key, ranges);
        let node_subtree: BTreeMap<Vec<u8>, LabeledTree> = nodes
            .iter()
            .map(|node| {
                let der = node_public_key_der(node);
                let principal = Principal::self_authenticating(&der);
                (
                    principal.as_slice().to_vec(),
                    LabeledTree::SubTree(BTreeMap::from([(
                        b"public_key".to_vec(),
                        LabeledTree::Leaf(der),
                    )])),
                )
            })
            .collect();
        if let Some(LabeledTree::SubTree(subnets)) = root.get_mut(b"subnet".as_slice()) {
            if let Some(LabeledTree::SubTree(subnet)) = subnets.values_mut().next() {
                subnet.insert(b"node".to_vec(), LabeledTree::SubTree(node_subtree));
            }
        }
        let statuses: BTreeMap<Vec<u8>, LabeledTree> = self
            .statuses
            .iter()
            .map(|(id, status)| (id.0.to_vec(), LabeledTree::SubTree(status_leaves(status))))
            .collect();
        root.insert(b"request_status".to_vec(), LabeledTree::SubTree(statuses));
        LabeledTree::SubTree(root)
    }
}

/// The leaves under `/request_status/<id>`, as the interface specification names them.
fn status_leaves(status: &RequestStatus) -> BTreeMap<Vec<u8>, LabeledTree> {
    let leaf = |bytes: &[u8]| LabeledTree::Leaf(bytes.to_vec());
    match &status.outcome {
        RequestOutcome::Replied(reply) => BTreeMap::from([
            (b"reply".to_vec(), leaf(reply)),
            (b"status".to_vec(), leaf(b"replied")),
        ]),
        RequestOutcome::Rejected(reject) => {
            let mut code = Vec::new();
            leb128(reject.code.as_u64(), &mut code);
            BTreeMap::from([
                (b"error_code".to_vec(), leaf(reject.error_code.as_bytes())),
                (b"reject_code".to_vec(), LabeledTree::Leaf(code)),
                (b"reject_message".to_vec(), leaf(reject.message.as_bytes())),
                (b"status".to_vec(), leaf(b"rejected")),
            ])
        }
    }
}

/// A node's Ed25519 public key (its id) in DER, as the state tree and agents carry it.
pub fn node_public_key_der(node: &NodeId) -> Vec<u8> {
    const ED25519_SPKI_PREFIX: [u8; 12] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    [&ED25519_SPKI_PREFIX[..], &node.0[..]].concat()
}

/// A node's principal: the self-authenticating id of its DER public key.
pub fn node_principal(node: &NodeId) -> Principal {
    Principal::self_authenticating(&node_public_key_der(node))
}

/// Counters of the chain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChainStats {
    pub blocks_made: u64,
    pub shares_sent: u64,
    pub blocks_received: u64,
    pub shares_received: u64,
    /// Blocks or shares that did not decode, or came from a node that may not send them.
    pub invalid: u64,
    pub heights_executed: u64,
    pub calls_executed: u64,
    pub calls_rejected: u64,
    /// Ordered calls skipped: already executed, or expired at the block's time.
    pub calls_skipped: u64,
    /// Rounds that passed before a height executed (a silent or slow maker), summed over the
    /// heights after the first.
    pub stalled_rounds: u64,
    /// Shares moved to a lower-round block after a split (see the module docs).
    pub shares_moved: u64,
}

/// Why a received artifact was refused (the peer is penalized for it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    Decode(DecodeError),
    NotMember,
    WrongMaker,
    /// A share naming another node than the peer that sent it.
    NotSharer,
}

#[derive(Clone, Copy, Debug)]
struct SharedVote {
    block_round: u64,
    sent_in_round: u64,
}

struct BlockEntry {
    hash: Hash,
    block: ReplicaBlock,
}

/// What a step asks the driver to do.
#[derive(Debug, Default)]
pub struct StepOutput {
    /// A block this node made: add it to the block pool.
    pub block: Option<Artifact>,
    /// A share this node made: add it to the share pool.
    pub share: Option<Artifact>,
    /// Heights executed in this step, with the calls each ordered.
    pub executed: Vec<(u64, Vec<RequestId>)>,
    /// Calls a notarized block names that this node does not hold (it cannot execute yet),
    /// each with that block's maker, the peer most likely to hold it: the driver fetches them.
    pub missing_ingress: Vec<(RequestId, Option<NodeId>)>,
}

pub struct Chain {
    config: ChainConfig,
    members: Vec<NodeId>,
    state: ExecutedState,
    blocks: BTreeMap<u64, Vec<BlockEntry>>,
    shares: BTreeMap<(u64, Hash), BTreeSet<NodeId>>,
    /// The block this node vouched for last, per height, and that block's round and the round
    /// the share was sent in.
    shared: BTreeMap<u64, SharedVote>,
    /// (height, round) of the blocks this node made.
    made: BTreeSet<(u64, u64)>,
    stats: ChainStats,
}

impl Chain {
    pub fn new(config: ChainConfig, members: &[NodeId], state: ExecutedState) -> Chain {
        let mut chain = Chain {
            config,
            members: Vec::new(),
            state,
            blocks: BTreeMap::new(),
            shares: BTreeMap::new(),
            shared: BTreeMap::new(),
            made: BTreeSet::new(),
            stats: ChainStats::default(),
        };
        chain.set_members(members);
        chain
    }

    /// The subnet's members (from the registry); the local node need not be one.
    pub fn set_members(&mut self, members: &[NodeId]) {
        let mut sorted = members.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        self.members = sorted;
    }

    pub fn members(&self) -> &[NodeId] {
        &self.members
    }

    pub fn state(&self) -> &ExecutedState {
        &self.state
    }

    pub fn stats(&self) -> ChainStats {
        self.stats
    }

    /// Shares a block needs: n - f with f = (n - 1) / 3.
    pub fn quorum(&self) -> usize {
        let n = self.members.len();
        n - n.saturating_sub(1) / 3
    }

    /// The maker of `height` in `round`.
    pub fn maker_of(&self, height: u64, round: u64) -> Option<NodeId> {
        if self.members.is_empty() {
            return None;
        }
        let n = self.members.len() as u64;
        let index = (height % n + round % n) % n;
        Some(self.members[index as usize])
    }

    /// The round of the next height at wall-clock `wall_ns`; `None` before round 0 starts
    /// (`block_interval` after the executed state's time).
    pub fn round_at(&self, wall_ns: u64) -> Option<u64> {
        let start = self
            .state
            .time_ns
            .saturating_add(duration_ns(self.config.block_interval));
        let elapsed = wall_ns.checked_sub(start)?;
        Some(elapsed / duration_ns(self.config.round_timeout).max(1))
    }

    /// Replaces the executed state with `state` (a synced checkpoint ahead of this node):
    /// execution resumes from its height, and everything about older heights is dropped.
    pub fn adopt(&mut self, state: ExecutedState) {
        let height = state.height;
        self.state = state;
        self.blocks = self.blocks.split_off(&(height + 1));
        self.shares = self.shares.split_off(&(height + 1, [0; 32]));
        self.shared = self.shared.split_off(&(height + 1));
        self.made = self.made.split_off(&(height + 1, 0));
    }

    /// A block the block pool validated; `from` is the peer that sent it (`None`: this node).
    pub fn on_block(&mut self, artifact: &Artifact, from: Option<NodeId>) -> Result<(), Refused> {
        let result = self.accept_block(artifact, from);
        if result.is_err() {
            self.stats.invalid += 1;
        }
        result
    }

    fn accept_block(&mut self, artifact: &Artifact, from: Option<NodeId>) -> Result<(), Refused> {
        let maker = from.unwrap_or(self.config.local);
        let block = decode_replica_block(&artifact.payload, &self.config.limits())
            .map_err(Refused::Decode)?;
        if !self.members.contains(&maker) {
            return Err(Refused::NotMember);
        }
        if self.maker_of(block.height, block.round) != Some(maker) {
            return Err(Refused::WrongMaker);
        }
        if from.is_some() {
            self.stats.blocks_received += 1;
        }
        if block.height <= self.state.height {
            return Ok(());
        }
        let hash = artifact_hash(artifact);
        let entries = self.blocks.entry(block.height).or_default();
        if !entries.iter().any(|entry| entry.hash == hash) {
            entries.push(BlockEntry { hash, block });
            entries.sort_by_key(|entry| entry.block.round);
        }
        Ok(())
    }

    /// A share the share pool validated; `from` as for [`Chain::on_block`].
    pub fn on_share(&mut self, artifact: &Artifact, from: Option<NodeId>) -> Result<(), Refused> {
        let result = self.accept_share(artifact, from);
        if result.is_err() {
            self.stats.invalid += 1;
        }
        result
    }

    fn accept_share(&mut self, artifact: &Artifact, from: Option<NodeId>) -> Result<(), Refused> {
        let sharer = from.unwrap_or(self.config.local);
        let share = decode_replica_share(&artifact.payload, &self.config.limits())
            .map_err(Refused::Decode)?;
        if share.node != sharer.0 {
            return Err(Refused::NotSharer);
        }
        if !self.members.contains(&sharer) {
            return Err(Refused::NotMember);
        }
        if from.is_some() {
            self.stats.shares_received += 1;
        }
        if share.height > self.state.height {
            self.shares
                .entry((share.height, share.block))
                .or_default()
                .insert(sharer);
        }
        Ok(())
    }

    /// Executes what can be executed, then makes this node's block and share for the next
    /// height if they are due. `wall_ns` is this node's clock (nanoseconds since 1970).
    pub fn step(&mut self, wall_ns: u64, ingress: &IngressPool) -> StepOutput {
        let mut output = StepOutput::default();
        while let Some(index) = self.executable(ingress, &mut output.missing_ingress) {
            let next = self.state.height + 1;
            let entry = self.blocks.get_mut(&next).map(|e| e.swap_remove(index));
            let Some(entry) = entry else { break };
            let ordered = entry
                .block
                .ingress
                .iter()
                .map(|id| RequestId(*id))
                .collect();
            if next > 1 {
                self.stats.stalled_rounds += entry.block.round;
            }
            self.execute(&entry, ingress);
            output.executed.push((next, ordered));
            output.missing_ingress.clear();
        }
        let next = self.state.height + 1;
        let Some(round) = self.round_at(wall_ns) else {
            return output;
        };
        if self.maker_of(next, round) == Some(self.config.local)
            && self.members.contains(&self.config.local)
            && !self.made.contains(&(next, round))
        {
            let artifact = self.make_block(next, round, wall_ns, ingress);
            self.made.insert((next, round));
            self.stats.blocks_made += 1;
            // Our own block counts at once (the pool queues it for us too; a second sight of
            // it is ignored).
            let _ = self.on_block(&artifact, None);
            output.block = Some(artifact);
        }
        if self.members.contains(&self.config.local) {
            // Below this round a block may get this node's share: any round at first; after a
            // share, only lower rounds, and only two rounds after it was sent.
            let below = match self.shared.get(&next) {
                None => Some(round + 1),
                Some(vote) if round >= vote.sent_in_round + 2 => Some(vote.block_round),
                Some(_) => None,
            };
            let choice = below.and_then(|below| self.vote(next, below, wall_ns, ingress));
            if let Some((hash, block_round)) = choice {
                let share = encode_replica_share(&ReplicaShare {
                    height: next,
                    block: hash,
                    node: self.config.local.0,
                });
                let artifact = make_artifact(next, Buf::from_vec(share));
                let moved = self.shared.insert(
                    next,
                    SharedVote {
                        block_round,
                        sent_in_round: round,
                    },
                );
                if moved.is_some() {
                    self.stats.shares_moved += 1;
                }
                self.stats.shares_sent += 1;
                let _ = self.on_share(&artifact, None);
                output.share = Some(artifact);
            }
        }
        output
    }

    /// The index (in `blocks[next]`) of a block that can execute now: it extends the tip, has a
    /// quorum of shares, and every call it names is here. Calls a notarized block misses are
    /// added to `missing`.
    fn executable(
        &self,
        ingress: &IngressPool,
        missing: &mut Vec<(RequestId, Option<NodeId>)>,
    ) -> Option<usize> {
        let next = self.state.height + 1;
        let quorum = self.quorum();
        let entries = self.blocks.get(&next)?;
        for (index, entry) in entries.iter().enumerate() {
            if entry.block.parent != self.state.tip {
                continue;
            }
            let shares = self
                .shares
                .get(&(next, entry.hash))
                .map_or(0, BTreeSet::len);
            if shares < quorum {
                continue;
            }
            let maker = self.maker_of(next, entry.block.round);
            let absent: Vec<(RequestId, Option<NodeId>)> = entry
                .block
                .ingress
                .iter()
                .map(|id| RequestId(*id))
                .filter(|id| !ingress.contains(id))
                .map(|id| (id, maker))
                .collect();
            if absent.is_empty() {
                return Some(index);
            }
            missing.extend(absent);
        }
        None
    }

    /// The lowest-round eligible block at `next` whose round is below `below` (see the module
    /// docs): its hash and round.
    fn vote(
        &self,
        next: u64,
        below: u64,
        wall_ns: u64,
        ingress: &IngressPool,
    ) -> Option<(Hash, u64)> {
        let entries = self.blocks.get(&next)?;
        entries
            .iter()
            .filter(|entry| entry.block.round < below)
            .find(|entry| self.eligible(&entry.block, wall_ns, ingress))
            .map(|entry| (entry.hash, entry.block.round))
    }

    fn eligible(&self, block: &ReplicaBlock, wall_ns: u64, ingress: &IngressPool) -> bool {
        if block.parent != self.state.tip
            || block.time_ns <= self.state.time_ns
            || block.time_ns.abs_diff(wall_ns) > self.config.block_time_skew_ns
            || block.ingress.len() > self.config.block_ingress_max
        {
            return false;
        }
        let mut seen = BTreeSet::new();
        block.ingress.iter().all(|id| {
            let id = RequestId(*id);
            seen.insert(id) && ingress.contains(&id) && !self.state.statuses.contains_key(&id)
        })
    }

    fn make_block(&self, height: u64, round: u64, wall_ns: u64, ingress: &IngressPool) -> Artifact {
        let time_ns = wall_ns.max(self.state.time_ns.saturating_add(1));
        let room = self
            .config
            .request_statuses_max
            .saturating_sub(self.statuses_after_prune(time_ns));
        let max = self.config.block_ingress_max.min(room);
        let ids = ingress.candidates(time_ns, max, |id| !self.state.statuses.contains_key(id));
        let block = ReplicaBlock {
            height,
            round,
            parent: self.state.tip,
            time_ns,
            ingress: ids.iter().map(|id| id.0).collect(),
        };
        make_artifact(height, Buf::from_vec(encode_replica_block(&block)))
    }

    /// Statuses left once those expired at `time_ns` are pruned.
    fn statuses_after_prune(&self, time_ns: u64) -> usize {
        let expired = self
            .state
            .by_expiry
            .range(..(time_ns, RequestId([0; 32])))
            .count();
        self.state.statuses.len() - expired
    }

    fn execute(&mut self, entry: &BlockEntry, ingress: &IngressPool) {
        let block = &entry.block;
        let state = &mut self.state;
        state.prune_statuses(block.time_ns);
        for id in &block.ingress {
            let id = RequestId(*id);
            let Some(call) = ingress.get(&id) else {
                continue;
            };
            let content = &call.content;
            if state.statuses.contains_key(&id)
                || content.ingress_expiry < block.time_ns
                || state.statuses.len() >= self.config.request_statuses_max
            {
                self.stats.calls_skipped += 1;
                continue;
            }
            // An unknown canister or method is a DestinationInvalid reject from the canisters.
            let outcome = state.canisters.execute(
                &content.canister_id,
                &content.method_name,
                &content.arg,
                CallKind::Update,
            );
            let outcome = match outcome {
                CallOutcome::Reply(reply) => RequestOutcome::Replied(reply),
                CallOutcome::Reject(reject) => {
                    self.stats.calls_rejected += 1;
                    RequestOutcome::Rejected(reject)
                }
            };
            self.stats.calls_executed += 1;
            state.by_expiry.insert((content.ingress_expiry, id));
            state.statuses.insert(
                id,
                RequestStatus {
                    sender: content.sender,
                    canister: content.canister_id,
                    ingress_expiry: content.ingress_expiry,
                    height: block.height,
                    outcome,
                },
            );
        }
        state.height = block.height;
        state.tip = entry.hash;
        state.time_ns = block.time_ns;
        self.stats.heights_executed += 1;
        let height = state.height;
        self.blocks = self.blocks.split_off(&(height + 1));
        self.shares = self.shares.split_off(&(height + 1, [0; 32]));
        self.shared = self.shared.split_off(&(height + 1));
        self.made = self.made.split_off(&(height + 1, 0));
    }
}

fn duration_ns(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// The SHA-256 part of an artifact id made by [`make_artifact`].
pub fn artifact_hash(artifact: &Artifact) -> Hash {
    let mut hash = [0; 32];
    let id = artifact.id().as_bytes();
    if id.len() == 40 {
        hash.copy_from_slice(&id[8..]);
    }
    hash
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::rc::Rc;

    use icn_codecs::ic::CallContent;

    use super::*;
    use crate::artifact::ArtifactKind;
    use crate::artifact::ArtifactPool;
    use crate::replica::canisters::{counter_canister_id, CanisterLimits};
    use crate::replica::ingress::IngressLimits;
    use crate::replica::pool::{ConsensusPool, HeightWindow};

    const MS: Duration = Duration::from_millis(1);
    const T0: u64 = 1_764_000_000_000_000_000;

    /// A node as the driver runs it: its chain, and pools that dedupe and bound what arrives.
    struct Node {
        chain: Chain,
        ingress: IngressPool,
        window: Rc<HeightWindow>,
        blocks: ConsensusPool,
        shares: ConsensusPool,
        up: bool,
    }

    /// `n` nodes that see each other's blocks and shares at once (no network), stepped in
    /// lockstep every millisecond of virtual time.
    fn subnet(n: u8) -> Vec<Node> {
        let members: Vec<NodeId> = (1..=n).map(|i| NodeId([i; 32])).collect();
        members
            .iter()
            .map(|local| (local, HeightWindow::new(8)))
            .map(|(local, window)| Node {
                blocks: ConsensusPool::new(ArtifactKind(4), window.clone(), true),
                shares: ConsensusPool::new(ArtifactKind(5), window.clone(), true),
                window,
                chain: Chain::new(
                    ChainConfig {
                        local: *local,
                        block_interval: 10 * MS,
                        round_timeout: 100 * MS,
                        block_ingress_max: 10,
                        request_statuses_max: 1000,
                        block_time_skew_ns: 1_000_000_000,
                    },
                    &members,
                    ExecutedState::genesis(Canisters::new(CanisterLimits::default()), T0),
                ),
                ingress: IngressPool::new(
                    ArtifactKind(3),
                    IngressLimits {
                        messages_max: 100,
                        bytes_max: 1 << 20,
                    },
                    Rc::new(|_: &RequestId| false),
                ),
                up: true,
            })
            .collect()
    }

    fn increment(nonce: u8) -> (RequestId, CallContent<'static>) {
        let content = CallContent {
            canister_id: counter_canister_id(),
            method_name: Cow::Owned("increment".into()),
            arg: Cow::Owned(b"DIDL\x00\x00".to_vec()),
            sender: Principal::ANONYMOUS,
            nonce: Some(Cow::Owned(vec![nonce])),
            ingress_expiry: T0 + 60_000_000_000,
        };
        (RequestId([nonce; 32]), content)
    }

    /// Runs `ms` milliseconds; returns the blocks made.
    fn run(nodes: &mut [Node], from_ms: u64, ms: u64) -> u64 {
        let mut made = 0;
        for t in from_ms..from_ms + ms {
            let wall = T0 + t * 1_000_000;
            for i in 0..nodes.len() {
                if !nodes[i].up {
                    continue;
                }
                let out = {
                    let node = &mut nodes[i];
                    node.blocks.apply(Duration::ZERO);
                    node.shares.apply(Duration::ZERO);
                    for (artifact, from) in node.blocks.take_new() {
                        node.chain.on_block(&artifact, from).unwrap();
                    }
                    for (artifact, from) in node.shares.take_new() {
                        node.chain.on_share(&artifact, from).unwrap();
                    }
                    let out = node.chain.step(wall, &node.ingress);
                    node.window.set_executed(node.chain.state().height);
                    if let Some(block) = &out.block {
                        node.blocks.produce(block.clone());
                    }
                    if let Some(share) = &out.share {
                        node.shares.produce(share.clone());
                    }
                    node.blocks.take_new();
                    node.shares.take_new();
                    out
                };
                let from = nodes[i].chain.config.local;
                let receivers: Vec<usize> = (0..nodes.len())
                    .filter(|j| *j != i && nodes[*j].up)
                    .collect();
                for j in receivers {
                    if let Some(block) = &out.block {
                        nodes[j].blocks.insert_unvalidated(from, block.clone());
                    }
                    if let Some(share) = &out.share {
                        nodes[j].shares.insert_unvalidated(from, share.clone());
                    }
                }
                made += u64::from(out.block.is_some());
            }
        }
        made
    }

    fn counter(node: &Node) -> u64 {
        let reply =
            node.chain
                .state()
                .canisters
                .query(&counter_canister_id(), "get", b"DIDL\x00\x00");
        match reply {
            CallOutcome::Reply(bytes) => candid::decode_one::<u64>(&bytes).unwrap(),
            other => panic!("get failed: {other:?}"),
        }
    }

    #[test]
    fn four_nodes_execute_the_same_chain_and_each_call_once() {
        let mut nodes = subnet(4);
        assert_eq!(nodes[0].chain.quorum(), 3);
        // The same call reaches two nodes (sent to both by a client), another reaches one.
        for (node, nonce) in [(0, 1), (1, 1), (2, 2)] {
            let (id, content) = increment(nonce);
            nodes[node]
                .ingress
                .add_local(id, content, Buf::copy_from_slice(&[nonce]))
                .unwrap();
        }
        // Gossip: everybody gets every call.
        for nonce in [1, 2] {
            for node in &mut nodes {
                let (id, content) = increment(nonce);
                node.ingress
                    .add_local(id, content, Buf::copy_from_slice(&[nonce]))
                    .unwrap();
            }
        }
        run(&mut nodes, 0, 200);
        let height = nodes[0].chain.state().height;
        assert!(
            height >= 5,
            "only {height} heights in 200 ms at a 10 ms pace"
        );
        for node in &nodes {
            assert_eq!(counter(node), 2, "two distinct calls, each executed once");
            assert_eq!(node.chain.state().statuses.len(), 2);
            assert!(node.chain.state().height.abs_diff(height) <= 1);
        }
        let tips: BTreeSet<_> = nodes
            .iter()
            .filter(|n| n.chain.state().height == height)
            .map(|n| n.chain.state().tip)
            .collect();
        assert_eq!(tips.len(), 1, "one chain");
    }

    #[test]
    fn a_notarized_block_naming_a_call_not_held_reports_it_missing_with_its_maker() {
        let mut nodes = subnet(4);
        // Nodes 0-2 hold the call; node 3 never got it.
        for node in &mut nodes[..3] {
            let (id, content) = increment(9);
            node.ingress
                .add_local(id, content, Buf::copy_from_slice(&[9]))
                .unwrap();
        }
        run(&mut nodes, 0, 100);
        let (id, content) = increment(9);
        assert!(nodes[0].chain.state().statuses.contains_key(&id));
        let stuck = nodes[3].chain.state().height;
        let ordered_at = nodes[0].chain.state().statuses[&id].height;
        assert_eq!(
            stuck + 1,
            ordered_at,
            "node 3 stops before the block naming the call"
        );
        let wall = T0 + 100 * 1_000_000;
        let node = &mut nodes[3];
        let out = node.chain.step(wall, &node.ingress);
        assert!(out.executed.is_empty());
        let block = &nodes[3].chain.blocks[&ordered_at][0].block;
        let maker = nodes[3].chain.maker_of(ordered_at, block.round);
        assert!(out.missing_ingress.contains(&(id, maker)));
        // Once the call is here (fetched), the block and those after it execute.
        nodes[3]
            .ingress
            .add_local(id, content, Buf::copy_from_slice(&[9]))
            .unwrap();
        let node = &mut nodes[3];
        let out = node.chain.step(wall, &node.ingress);
        assert!(out.missing_ingress.is_empty());
        assert_eq!(out.executed.first().map(|(h, _)| *h), Some(ordered_at));
        assert_eq!(counter(&nodes[3]), 1);
    }

    #[test]
    fn a_stopped_maker_is_passed_over_after_a_round_timeout() {
        let mut nodes = subnet(4);
        run(&mut nodes, 0, 50);
        let before = nodes[0].chain.state().height;
        // Stop the maker of the next height.
        let next = before + 1;
        let maker = nodes[0].chain.maker_of(next, 0).unwrap();
        let stopped = nodes
            .iter()
            .position(|n| n.chain.config.local == maker)
            .unwrap();
        nodes[stopped].up = false;
        run(&mut nodes, 50, 1000);
        let live: Vec<&Node> = nodes.iter().filter(|n| n.up).collect();
        let after = live[0].chain.state().height;
        assert!(after > before + 5, "stuck at {after} (from {before})");
        assert!(live.iter().all(|n| n.chain.stats().stalled_rounds >= 1));
    }

    #[test]
    fn a_block_from_the_wrong_maker_or_a_stranger_is_refused() {
        let nodes = subnet(4);
        let mut chain = Chain::new(
            nodes[0].chain.config,
            nodes[0].chain.members(),
            nodes[0].chain.state().clone(),
        );
        let block = ReplicaBlock {
            height: 1,
            round: 0,
            parent: [0; 32],
            time_ns: T0 + 1,
            ingress: Vec::new(),
        };
        let artifact = make_artifact(1, Buf::from_vec(encode_replica_block(&block)));
        let right = chain.maker_of(1, 0).unwrap();
        let wrong = chain.maker_of(1, 1).unwrap();
        assert_eq!(
            chain.on_block(&artifact, Some(wrong)),
            Err(Refused::WrongMaker)
        );
        assert_eq!(
            chain.on_block(&artifact, Some(NodeId([99; 32]))),
            Err(Refused::NotMember)
        );
        assert_eq!(chain.on_block(&artifact, Some(right)), Ok(()));
        let garbage = make_artifact(1, Buf::copy_from_slice(b"garbage"));
        assert!(matches!(
            chain.on_block(&garbage, Some(right)),
            Err(Refused::Decode(_))
        ));
        assert!(matches!(
            chain.on_share(&garbage, Some(right)),
            Err(Refused::Decode(_))
        ));
    }

    #[test]
    fn the_state_tree_names_statuses_nodes_and_time() {
        let mut nodes = subnet(4);
        for node in &mut nodes {
            let (id, content) = increment(7);
            node.ingress
                .add_local(id, content, Buf::copy_from_slice(&[7]))
                .unwrap();
        }
        run(&mut nodes, 0, 100);
        let key = crate::replica::bls::SecretKey::from_seed(&[1; 32]).public_key();
        let members: Vec<NodeId> = nodes.iter().map(|n| n.chain.config.local).collect();
        let tree = nodes[0].chain.state().tree(
            &key,
            &[(counter_canister_id(), counter_canister_id())],
            &members,
        );
        let LabeledTree::SubTree(root) = tree else {
            panic!("root is a subtree")
        };
        let Some(LabeledTree::SubTree(statuses)) = root.get(b"request_status".as_slice()) else {
            panic!("no request_status")
        };
        let Some(LabeledTree::SubTree(status)) = statuses.get([7u8; 32].as_slice()) else {
            panic!("no status")
        };
        assert_eq!(
            status.get(b"status".as_slice()),
            Some(&LabeledTree::Leaf(b"replied".to_vec()))
        );
        let Some(LabeledTree::SubTree(subnets)) = root.get(b"subnet".as_slice()) else {
            panic!("no subnet")
        };
        let Some(LabeledTree::SubTree(subnet)) = subnets.get(key.subnet_id().as_slice()) else {
            panic!("no subnet entry")
        };
        let Some(LabeledTree::SubTree(node_keys)) = subnet.get(b"node".as_slice()) else {
            panic!("no node keys")
        };
        assert_eq!(node_keys.len(), 4);
        assert!(node_keys.contains_key(node_principal(&members[0]).as_slice()));
        assert!(root.contains_key(b"time".as_slice()));
    }
}
