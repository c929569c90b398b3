//! The shard driver of the consensus manager for one artifact kind: binds the sans-I/O
//! [`Sender`] and [`Receiver`] to a transport, a runtime and the kind's pool.
//!
//! Life cycle: [`ConsensusManager::new`] builds the shared state; [`GossipHandle::routes`] adds
//! the kind's two routes to the router the transport is started with; [`GossipHandle::start`]
//! spawns the event loop over the started transport; [`GossipHandle::stop`] ends the loop and
//! every RPC task it spawned, and waits for them.
//!
//! One event loop task per kind does all the bookkeeping: it polls the transport's peer list
//! (new, replaced and closed connections), starts slot-update and fetch RPCs as tasks (each
//! posts its outcome back and wakes the loop), and hands received artifacts to the artifact
//! manager through a bounded inbound queue. While that queue is full no fetch starts and pushed
//! updates are refused as busy (the sender retries), so nothing is lost and nothing grows.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future::or;
use icn_codecs::{CodecLimits, Encoder};
use icn_engine::{Buf, NodeId, Priority, RequestContext, Router, RpcError, Transport};
use icn_tuning::Tuning;

use super::receiver::{
    Fetch, FetchId, FetchOutcome, Offence, Receiver, ReceiverConfig, ReceiverEvent, UpdateRefused,
};
use super::sender::{OutboundUpdate, Sender, SenderConfig, ServeError};
use super::wire::{
    self, decode_batch_answer, decode_fetch, decode_fetch_batch, decode_updates,
    encode_batch_answer, encode_fetch, encode_fetch_batch, encode_updates,
};
use super::LocalMap;
use super::{Backoff, ReceiverStats, SenderStats};
use crate::artifact::{Artifact, ArtifactId, ArtifactKind, ArtifactPool, Transmit};
use crate::runtime::{timeout, Runtime, TaskHandle};
use crate::signal::Signal;

/// Settings of one kind's consensus manager.
#[derive(Clone, Copy, Debug)]
pub struct GossipConfig {
    pub sender: SenderConfig,
    pub receiver: ReceiverConfig,
    pub peer_poll_interval: Duration,
    pub inbound_queue_artifacts_max: usize,
    pub codec_limits: CodecLimits,
    /// RPC priority of this kind's traffic (blocks before ingress).
    pub priority: Priority,
}

impl GossipConfig {
    pub fn from_tuning(tuning: &Tuning, priority: Priority) -> GossipConfig {
        let gossip = &tuning.gossip;
        let ms = Duration::from_millis;
        let backoff = Backoff {
            initial: ms(gossip.retry_backoff_initial_ms),
            max: ms(gossip.retry_backoff_max_ms),
        };
        GossipConfig {
            sender: SenderConfig {
                slots_max: gossip.slots_max,
                push_threshold_bytes: gossip.push_threshold_bytes,
                updates_in_flight_per_peer_max: gossip.updates_in_flight_per_peer_max,
                backoff,
            },
            receiver: ReceiverConfig {
                peer_slots_max: gossip.peer_slots_max,
                peer_advert_bytes_max: gossip.peer_advert_bytes_max,
                tracked_artifacts_max: gossip.tracked_artifacts_max,
                downloads_in_flight_per_peer_max: gossip.downloads_in_flight_per_peer_max,
                downloads_in_flight_max: gossip.downloads_in_flight_max,
                chunking_threshold_bytes: gossip.chunking_threshold_bytes as u64,
                download_chunk_bytes: gossip.download_chunk_bytes as u64,
                download_timeout_initial: ms(gossip.download_timeout_initial_ms),
                download_timeout_max: ms(gossip.download_timeout_max_ms),
                backoff,
                peer_download_bytes_per_s_max: gossip.peer_download_bytes_per_s_max,
                download_bytes_per_s_max: gossip.download_bytes_per_s_max,
                maybe_later_recheck: ms(gossip.maybe_later_recheck_ms),
                artifact_bytes_max: tuning.rpc.message_bytes_max as u64,
                fetch_batch_artifacts_max: gossip.fetch_batch_artifacts_max,
                fetch_batch_bytes_max: gossip.fetch_batch_bytes_max as u64,
            },
            peer_poll_interval: ms(gossip.peer_poll_interval_ms),
            inbound_queue_artifacts_max: gossip.inbound_queue_artifacts_max,
            codec_limits: CodecLimits::default(),
            priority,
        }
    }
}

/// Work for the pool, queued by the consensus manager for the artifact manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolInput {
    Insert { artifact: Artifact, from: NodeId },
    Remove(ArtifactId),
}

/// Counters and depths of one kind's consensus manager.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GossipStats {
    pub sender: SenderStats,
    pub receiver: ReceiverStats,
    pub slots_occupied: usize,
    pub updates_queued: usize,
    pub updates_in_flight: usize,
    pub artifacts_tracked: usize,
    pub downloads_pending: usize,
    pub fetches_in_flight: usize,
    pub inbound_queue_depth: usize,
    pub undecodable_messages: u64,
    pub penalties: u64,
    pub peers: usize,
}

/// Called for every offence a peer commits (the peer manager's reputation input).
pub type PenaltySink = Rc<dyn Fn(NodeId, Offence)>;

struct Inner {
    kind: ArtifactKind,
    config: GossipConfig,
    runtime: Rc<dyn Runtime>,
    pool: Rc<RefCell<dyn ArtifactPool>>,
    penalties: PenaltySink,
    sender: RefCell<Sender>,
    receiver: RefCell<Receiver>,
    encoder: RefCell<Encoder>,
    inbound: RefCell<VecDeque<PoolInput>>,
    /// Wakes the artifact manager when `inbound` gets work.
    inbound_signal: Rc<Signal>,
    /// Wakes the event loop.
    wake: Signal,
    update_outcomes: RefCell<Vec<(Vec<OutboundUpdate>, bool, u64)>>,
    fetch_outcomes: RefCell<Vec<(FetchId, FetchOutcome)>>,
    update_tasks: RefCell<LocalMap<u64, TaskHandle>>,
    fetch_tasks: RefCell<LocalMap<FetchId, TaskHandle>>,
    next_update_task: Cell<u64>,
    stopped: Cell<bool>,
    loop_task: RefCell<Option<TaskHandle>>,
    undecodable_messages: Cell<u64>,
    penalties_total: Cell<u64>,
}

/// Builds a kind's consensus manager.
pub struct ConsensusManager;

impl ConsensusManager {
    #[allow(clippy::new_ret_no_self)]
    pub fn new(
        config: GossipConfig,
        runtime: Rc<dyn Runtime>,
        pool: Rc<RefCell<dyn ArtifactPool>>,
        penalties: PenaltySink,
    ) -> GossipHandle {
        let kind = pool.borrow().kind();
        let inner = Inner {
            kind,
            config,
            runtime,
            pool,
            penalties,
            sender: RefCell::new(Sender::new(kind, config.sender)),
            receiver: RefCell::new(Receiver::new(config.receiver)),
            encoder: RefCell::new(Encoder::new(config.codec_limits)),
            inbound: RefCell::new(VecDeque::new()),
            inbound_signal: Rc::new(Signal::new()),
            wake: Signal::new(),
            update_outcomes: RefCell::new(Vec::new()),
            fetch_outcomes: RefCell::new(Vec::new()),
            update_tasks: RefCell::new(LocalMap::default()),
            fetch_tasks: RefCell::new(LocalMap::default()),
            next_update_task: Cell::new(0),
            stopped: Cell::new(false),
            loop_task: RefCell::new(None),
            undecodable_messages: Cell::new(0),
            penalties_total: Cell::new(0),
        };
        GossipHandle {
            inner: Rc::new(inner),
        }
    }
}

/// A kind's consensus manager, shared by its routes, its event loop and its artifact manager.
#[derive(Clone)]
pub struct GossipHandle {
    inner: Rc<Inner>,
}

impl GossipHandle {
    pub fn kind(&self) -> ArtifactKind {
        self.inner.kind
    }

    /// Adds this kind's slot-update, fetch and batch-fetch routes to `router`.
    pub fn routes(&self, router: Router) -> Router {
        let updates = self.clone();
        let fetches = self.clone();
        let batches = self.clone();
        router
            .route(
                wire::slot_update_route(self.inner.kind),
                move |ctx: RequestContext, body: Buf| {
                    let result = updates.on_update(ctx, body);
                    async move { result }
                },
            )
            .route(
                wire::fetch_route(self.inner.kind),
                move |ctx: RequestContext, body: Buf| {
                    let result = fetches.on_fetch(ctx, body);
                    async move { result }
                },
            )
            .route(
                wire::fetch_batch_route(self.inner.kind),
                move |ctx: RequestContext, body: Buf| {
                    let result = batches.on_fetch_batch(ctx, body);
                    async move { result }
                },
            )
    }

    /// A request body from `peer` that does not decode: counted, the peer penalized, and the
    /// error it is answered with.
    fn undecodable(&self, peer: NodeId, error: impl std::fmt::Display) -> RpcError {
        let inner = &self.inner;
        inner
            .undecodable_messages
            .set(inner.undecodable_messages.get() + 1);
        self.penalize(peer, Offence::BadMessage);
        RpcError::PeerMisbehaved(error.to_string())
    }

    fn on_update(&self, ctx: RequestContext, body: Buf) -> Result<Buf, RpcError> {
        let inner = &self.inner;
        let updates = match decode_updates(&body, inner.kind, &inner.config.codec_limits) {
            Ok(updates) => updates,
            Err(error) => return Err(self.undecodable(ctx.peer, error)),
        };
        if inner.inbound.borrow().len() >= inner.config.inbound_queue_artifacts_max {
            return Err(busy());
        }
        let now = inner.runtime.now();
        let mut refused = None;
        {
            let pool = inner.pool.borrow();
            let want = |advert: &_| pool.want(advert);
            let matches = |advert: &_, payload: &[u8]| pool.matches(advert, payload);
            let mut receiver = inner.receiver.borrow_mut();
            for update in updates {
                // Every update is applied even after a refusal: a retry of the batch finds the
                // applied ones stale, so nothing is applied twice.
                if let Err(error) =
                    receiver.handle_update(ctx.peer, ctx.conn, update, now, &want, &matches)
                {
                    refused = match (refused, error) {
                        (Some(UpdateRefused::Offence(first)), _) => {
                            Some(UpdateRefused::Offence(first))
                        }
                        (_, error) => Some(error),
                    };
                }
            }
        }
        inner.wake.notify();
        match refused {
            None => Ok(Buf::empty()),
            Some(UpdateRefused::Busy) => Err(busy()),
            Some(UpdateRefused::Offence(offence)) => Err(RpcError::PeerMisbehaved(format!(
                "slot update refused: {offence:?}"
            ))),
        }
    }

    fn on_fetch(&self, ctx: RequestContext, body: Buf) -> Result<Buf, RpcError> {
        let inner = &self.inner;
        let request = match decode_fetch(&body, inner.kind, &inner.config.codec_limits) {
            Ok(request) => request,
            Err(error) => return Err(self.undecodable(ctx.peer, error)),
        };
        let served = inner
            .sender
            .borrow_mut()
            .serve(&request.id, request.offset, request.length);
        served.map_err(|error| match error {
            ServeError::NotFound => RpcError::Handler("artifact not advertised".into()),
            ServeError::BadRange { .. } => RpcError::PeerMisbehaved(error.to_string()),
        })
    }

    /// Answers a batch request: every artifact asked for that this node still offers, in order,
    /// until the answer would pass `fetch_batch_bytes_max`; the rest are "not held".
    fn on_fetch_batch(&self, ctx: RequestContext, body: Buf) -> Result<Buf, RpcError> {
        let inner = &self.inner;
        let ids = match decode_fetch_batch(&body, inner.kind, &inner.config.codec_limits) {
            Ok(ids) => ids,
            Err(error) => return Err(self.undecodable(ctx.peer, error)),
        };
        let bytes_max = inner.config.receiver.fetch_batch_bytes_max;
        let mut answer_bytes = 0;
        let artifacts: Vec<Option<Buf>> = {
            let mut sender = inner.sender.borrow_mut();
            ids.iter()
                .map(|id| {
                    let artifact = sender.serve(id, 0, 0).ok()?;
                    let total = answer_bytes + artifact.len() as u64;
                    if total > bytes_max {
                        return None;
                    }
                    answer_bytes = total;
                    Some(artifact)
                })
                .collect()
        };
        encode_batch_answer(&mut inner.encoder.borrow_mut(), &artifacts)
            .map_err(|error| RpcError::Handler(error.to_string()))
    }

    fn penalize(&self, peer: NodeId, offence: Offence) {
        let inner = &self.inner;
        inner.penalties_total.set(inner.penalties_total.get() + 1);
        (inner.penalties)(peer, offence);
    }

    /// Offers `artifact` to every peer (the pool delivered it). Fails when the slot table is
    /// full.
    pub fn deliver(
        &self,
        artifact: Artifact,
        latency_sensitive: bool,
    ) -> Result<(), super::SlotTableFull> {
        let result = self
            .inner
            .sender
            .borrow_mut()
            .add(artifact, latency_sensitive)
            .map(|_| ());
        self.inner.wake.notify();
        result
    }

    /// Withdraws `id` from every peer (the pool aborted it).
    pub fn abort(&self, id: &ArtifactId) -> bool {
        let now = self.inner.runtime.now();
        let removed = self.inner.sender.borrow_mut().abort(id, now);
        self.inner.wake.notify();
        removed
    }

    /// Applies a pool's transmits; returns how many deliveries the full slot table refused.
    pub fn apply_transmits(&self, transmits: Vec<Transmit>) -> usize {
        let mut refused = 0;
        for transmit in transmits {
            match transmit {
                Transmit::Deliver {
                    artifact,
                    latency_sensitive,
                } => {
                    if self.deliver(artifact, latency_sensitive).is_err() {
                        refused += 1;
                    }
                }
                Transmit::Abort(id) => {
                    self.abort(&id);
                }
            }
        }
        refused
    }

    /// Takes up to `max` queued pool inputs (for the artifact manager).
    pub fn take_inbound(&self, max: usize) -> Vec<PoolInput> {
        let mut inbound = self.inner.inbound.borrow_mut();
        let count = inbound.len().min(max);
        let batch: Vec<PoolInput> = inbound.drain(..count).collect();
        if !batch.is_empty() {
            // Room again: fetches may resume.
            self.inner.wake.notify();
        }
        batch
    }

    /// Set when the inbound queue gets work.
    pub fn inbound_signal(&self) -> Rc<Signal> {
        self.inner.inbound_signal.clone()
    }

    pub fn pool(&self) -> Rc<RefCell<dyn ArtifactPool>> {
        self.inner.pool.clone()
    }

    pub fn runtime(&self) -> Rc<dyn Runtime> {
        self.inner.runtime.clone()
    }

    pub fn stats(&self) -> GossipStats {
        let inner = &self.inner;
        let sender = inner.sender.borrow();
        let receiver = inner.receiver.borrow();
        GossipStats {
            sender: sender.stats(),
            receiver: receiver.stats(),
            slots_occupied: sender.occupied(),
            updates_queued: sender.queued_updates(),
            updates_in_flight: inner.update_tasks.borrow().len(),
            artifacts_tracked: receiver.tracked(),
            downloads_pending: receiver.downloads_pending(),
            fetches_in_flight: receiver.fetches_in_flight(),
            inbound_queue_depth: inner.inbound.borrow().len(),
            undecodable_messages: inner.undecodable_messages.get(),
            penalties: inner.penalties_total.get(),
            peers: sender.peers().count(),
        }
    }

    /// Slots the receiver holds for `peer` (at most `peer_slots_max`).
    pub fn peer_slots(&self, peer: NodeId) -> usize {
        self.inner.receiver.borrow().peer_slots(peer)
    }

    /// Advert bytes the receiver holds for `peer` (at most `peer_advert_bytes_max`).
    pub fn peer_advert_bytes(&self, peer: NodeId) -> usize {
        self.inner.receiver.borrow().peer_advert_bytes(peer)
    }

    pub fn config(&self) -> &GossipConfig {
        &self.inner.config
    }

    /// Spawns the event loop over `transport` (started with [`GossipHandle::routes`]).
    pub fn start<T: Transport + 'static>(&self, transport: Rc<T>) {
        let handle = self.clone();
        let task = self
            .inner
            .runtime
            .spawn(Box::pin(async move { handle.run(transport).await }));
        *self.inner.loop_task.borrow_mut() = Some(task);
    }

    /// Ends the event loop and every RPC task, and waits for them.
    pub async fn stop(&self) {
        let inner = &self.inner;
        inner.stopped.set(true);
        inner.wake.notify();
        let loop_task = inner.loop_task.borrow_mut().take();
        if let Some(task) = loop_task {
            task.join().await;
        }
        let tasks: Vec<TaskHandle> = inner
            .update_tasks
            .borrow_mut()
            .drain()
            .map(|(_, task)| task)
            .chain(inner.fetch_tasks.borrow_mut().drain().map(|(_, task)| task))
            .collect();
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            task.join().await;
        }
    }

    async fn run<T: Transport + 'static>(&self, transport: Rc<T>) {
        let inner = &self.inner;
        let mut next_peer_poll = Duration::ZERO;
        while !inner.stopped.get() {
            let now = inner.runtime.now();
            if now >= next_peer_poll {
                self.sync_peers(transport.peers());
                next_peer_poll = now + inner.config.peer_poll_interval;
            }
            self.apply_outcomes(now);
            self.drain_receiver_events();
            self.start_fetches(&transport, now);
            self.start_updates(&transport, now);
            let wakeup = self
                .next_wakeup()
                .map_or(next_peer_poll, |at| at.min(next_peer_poll));
            let sleep = inner.runtime.sleep(wakeup.saturating_sub(now));
            or(inner.wake.wait(), sleep).await;
        }
    }

    fn sync_peers(&self, connected: Vec<(NodeId, icn_engine::ConnId)>) {
        let inner = &self.inner;
        let mut sender = inner.sender.borrow_mut();
        let mut receiver = inner.receiver.borrow_mut();
        let known: Vec<NodeId> = sender.peers().map(|(peer, _)| peer).collect();
        for peer in known {
            if !connected.iter().any(|(p, _)| *p == peer) {
                sender.peer_disconnected(peer);
                receiver.peer_disconnected(peer);
            }
        }
        for (peer, conn) in connected {
            sender.peer_connected(peer, conn);
        }
    }

    fn apply_outcomes(&self, now: Duration) {
        let inner = &self.inner;
        let updates = std::mem::take(&mut *inner.update_outcomes.borrow_mut());
        {
            let mut sender = inner.sender.borrow_mut();
            let mut tasks = inner.update_tasks.borrow_mut();
            for (batch, delivered, task_id) in &updates {
                for update in batch {
                    sender.update_done(update, *delivered, now);
                }
                tasks.remove(task_id);
            }
        }
        let fetches = std::mem::take(&mut *inner.fetch_outcomes.borrow_mut());
        if fetches.is_empty() {
            return;
        }
        let pool = inner.pool.borrow();
        let matches = |advert: &_, payload: &[u8]| pool.matches(advert, payload);
        let mut receiver = inner.receiver.borrow_mut();
        for (fetch, outcome) in fetches {
            inner.fetch_tasks.borrow_mut().remove(&fetch);
            receiver.fetch_done(fetch, outcome, now, &matches);
        }
    }

    fn drain_receiver_events(&self) {
        let inner = &self.inner;
        let now = inner.runtime.now();
        {
            let pool = inner.pool.borrow();
            let want = |advert: &_| pool.want(advert);
            inner.receiver.borrow_mut().recheck(now, &want);
        }
        let mut queued = false;
        loop {
            let event = inner.receiver.borrow_mut().poll_event();
            let Some(event) = event else { break };
            match event {
                ReceiverEvent::Deliver { artifact, from } => {
                    inner
                        .inbound
                        .borrow_mut()
                        .push_back(PoolInput::Insert { artifact, from });
                    queued = true;
                }
                ReceiverEvent::RemoveUnvalidated(id) => {
                    inner.inbound.borrow_mut().push_back(PoolInput::Remove(id));
                    queued = true;
                }
                ReceiverEvent::Penalize { peer, offence } => self.penalize(peer, offence),
                ReceiverEvent::CancelFetch(fetch) => {
                    if let Some(task) = inner.fetch_tasks.borrow_mut().remove(&fetch) {
                        task.abort();
                    }
                }
            }
        }
        if queued {
            inner.inbound_signal.notify();
        }
    }

    fn start_fetches<T: Transport + 'static>(&self, transport: &Rc<T>, now: Duration) {
        let inner = &self.inner;
        // Deliveries may overshoot the queue bound by the artifacts in flight (each ends in at
        // most one delivery; `room` counts artifacts, not requests, so a batch counts in
        // full); no new fetch starts while it is full.
        let room = inner
            .config
            .inbound_queue_artifacts_max
            .saturating_sub(inner.inbound.borrow().len());
        if room == 0 {
            return;
        }
        let mut fetches = Vec::new();
        inner
            .receiver
            .borrow_mut()
            .poll_fetches(now, room, &mut fetches);
        for fetch in fetches {
            let id = fetch.id;
            let task = self.spawn_fetch(transport.clone(), fetch);
            inner.fetch_tasks.borrow_mut().insert(id, task);
        }
    }

    fn spawn_fetch<T: Transport + 'static>(&self, transport: Rc<T>, fetch: Fetch) -> TaskHandle {
        let inner = self.inner.clone();
        let (route, body) = if fetch.is_batch() {
            let body = encode_fetch_batch(
                &mut inner.encoder.borrow_mut(),
                inner.kind,
                &fetch.artifacts,
            );
            (wire::fetch_batch_route(inner.kind), body)
        } else {
            let body = encode_fetch(
                &mut inner.encoder.borrow_mut(),
                inner.kind,
                &fetch.artifacts[0],
                fetch.offset,
                fetch.length,
            );
            (wire::fetch_route(inner.kind), body)
        };
        let runtime = inner.runtime.clone();
        let future = async move {
            let answer = match body {
                Ok(body) => {
                    let rpc = transport.rpc(fetch.peer, route, inner.config.priority, body);
                    timeout(&*runtime, fetch.timeout, rpc)
                        .await
                        .and_then(Result::ok)
                }
                Err(_) => None,
            };
            let outcome = match answer {
                None => FetchOutcome::Failed,
                Some(bytes) if !fetch.is_batch() => FetchOutcome::Bytes(bytes),
                Some(body) => {
                    let config = &inner.config;
                    match decode_batch_answer(
                        &body,
                        fetch.artifacts.len(),
                        &config.codec_limits,
                        config.receiver.fetch_batch_bytes_max,
                    ) {
                        Ok(items) => FetchOutcome::Batch(items),
                        Err(_) => FetchOutcome::Malformed,
                    }
                }
            };
            inner.fetch_outcomes.borrow_mut().push((fetch.id, outcome));
            inner.wake.notify();
        };
        self.inner.runtime.spawn(Box::pin(future))
    }

    /// Sends every update the sender has ready, batched per peer (at most
    /// [`wire::SLOT_UPDATES_PER_MESSAGE_MAX`] updates and about
    /// [`wire::SLOT_UPDATE_BATCH_BYTES_MAX`] bytes per request).
    fn start_updates<T: Transport + 'static>(&self, transport: &Rc<T>, now: Duration) {
        let mut updates = Vec::new();
        self.inner
            .sender
            .borrow_mut()
            .poll_updates(now, &mut updates);
        // Updates come grouped by peer: cut each peer's run into batches.
        let mut batch: Vec<OutboundUpdate> = Vec::new();
        let mut batch_bytes = 0;
        for update in updates {
            let bytes = wire::update_bytes(&update);
            let full = batch.first().is_some_and(|first| first.peer != update.peer)
                || batch.len() >= wire::SLOT_UPDATES_PER_MESSAGE_MAX
                || (batch_bytes + bytes > wire::SLOT_UPDATE_BATCH_BYTES_MAX && !batch.is_empty());
            if full {
                self.send_batch(transport, std::mem::take(&mut batch));
                batch_bytes = 0;
            }
            batch.push(update);
            batch_bytes += bytes;
        }
        if !batch.is_empty() {
            self.send_batch(transport, batch);
        }
    }

    fn send_batch<T: Transport + 'static>(&self, transport: &Rc<T>, batch: Vec<OutboundUpdate>) {
        let inner = &self.inner;
        let id = inner.next_update_task.get();
        inner.next_update_task.set(id + 1);
        let task = self.spawn_update(transport.clone(), batch, id);
        inner.update_tasks.borrow_mut().insert(id, task);
    }

    fn spawn_update<T: Transport + 'static>(
        &self,
        transport: Rc<T>,
        batch: Vec<OutboundUpdate>,
        task_id: u64,
    ) -> TaskHandle {
        let inner = self.inner.clone();
        let body = encode_updates(&mut inner.encoder.borrow_mut(), inner.kind, &batch);
        let route = wire::slot_update_route(inner.kind);
        let peer = batch[0].peer;
        let future = async move {
            let delivered = match body {
                Ok(body) => transport
                    .rpc(peer, route, inner.config.priority, body)
                    .await
                    .is_ok(),
                Err(_) => false,
            };
            // The loop removes the task's handle when it takes the outcome: a task that ran to
            // completion inside spawn must not race the insertion of its own handle.
            inner
                .update_outcomes
                .borrow_mut()
                .push((batch, delivered, task_id));
            inner.wake.notify();
        };
        self.inner.runtime.spawn(Box::pin(future))
    }

    fn next_wakeup(&self) -> Option<Duration> {
        let inner = &self.inner;
        let sender = inner.sender.borrow().next_retry_at();
        let receiver = inner.receiver.borrow().next_wakeup();
        match (sender, receiver) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

fn busy() -> RpcError {
    RpcError::TooManyInFlight { limit: 0 }
}
