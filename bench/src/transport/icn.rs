//! Runs any icn [`Transport`] through the suite's cases on two glommio executors.
//!
//! An icn system is one [`IcnPair`] impl: how to start the serving transport (given the
//! [`Router`] the bench built) and how to start a client transport connected to it. Everything
//! else (executors pinned to the server and client cores, warm-up, closed-loop load, latency,
//! CPU, shutdown) is here and identical for every icn transport:
//!
//! - bulk-1MiB: `rpc` with a 1 MiB request and an empty response, `BULK_MESSAGES_IN_FLIGHT`
//!   concurrent tasks;
//! - rpc-1KiB-x1 / -x64: 1 KiB request, 1 KiB response, 1 or 64 concurrent tasks on the client
//!   executor.
//!
//! ```text
//! struct QuicPair { gso: bool, /* identities, registry */ }
//! impl IcnPair for QuicPair {
//!     type Rendezvous = (SocketAddr, NodeId);
//!     type Server = QuicTransport;
//!     type Client = QuicTransport;
//!     async fn start_server(&self, router: Router) -> Result<(QuicTransport, (SocketAddr, NodeId)), String> { .. }
//!     async fn start_client(&self, to: (SocketAddr, NodeId)) -> Result<(QuicTransport, NodeId), String> { .. }
//! }
//! // in registered_systems(): Box::new(IcnSystem::new("icn-quic", QuicPair { gso: true, .. }))
//! ```

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement as GlommioPlacement};
use icn_engine::{Buf, NodeId, Priority, Route, Router, RpcError, Transport};
use icn_tuning::EngineTuning;
use serde_json::Value;

use super::case::{Budget, CaseSpec};
use super::load::{
    closed_loop_worker, merge_workers, Gate, Measurement, PhaseStart, WorkerOutcome,
};
use super::System;
use crate::host::Placement;

/// The route every bench request goes to.
pub const BENCH_ROUTE: Route = Route(0xbe);

/// io_uring memory of each bench executor: the memlock limit here is 8 MiB for all executors of
/// the process together.
pub const EXECUTOR_IO_MEMORY_BYTES: usize = 512 << 10;

/// How long the client waits for the server executor to hand over its rendezvous.
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);

/// How often the idle server executor looks at the stop flag (negligible CPU).
const STOP_POLL: Duration = Duration::from_millis(20);

/// How to bring up one icn transport as a server and a client connected to it.
///
/// Both methods run inside a glommio executor (server on the server core, client on the client
/// core), so they may create `!Send` transports. `Self` is shared by both executors.
#[allow(async_fn_in_trait)]
pub trait IcnPair: Send + Sync + 'static {
    /// What the client needs to reach the server (address, identity, certificate...).
    type Rendezvous: Send + 'static;
    /// Whatever keeps the server alive; dropped when the run ends.
    type Server: 'static;
    type Client: Transport + 'static;

    /// Starts serving `router` and says how to reach it.
    async fn start_server(
        &self,
        router: Router,
    ) -> Result<(Self::Server, Self::Rendezvous), String>;

    /// Connects to the server; returns the client transport and the server's node id.
    async fn start_client(&self, to: Self::Rendezvous) -> Result<(Self::Client, NodeId), String>;

    /// Knobs of this transport for the report's config.
    fn config(&self) -> BTreeMap<String, Value> {
        BTreeMap::new()
    }
}

/// An icn transport as a [`System`] of the suite.
pub struct IcnSystem<P: IcnPair> {
    name: &'static str,
    pair: Arc<P>,
    /// The executors' busy-poll before parking (`engine.spin_before_park_us`), as a node runs them.
    spin_before_park: Option<Duration>,
}

impl<P: IcnPair> IcnSystem<P> {
    pub fn new(name: &'static str, pair: P) -> Self {
        IcnSystem {
            name,
            pair: Arc::new(pair),
            spin_before_park: icn_engine::config::spin_before_park(&EngineTuning::default()),
        }
    }

    /// Overrides `engine.spin_before_park_us` for this system's executors (0: off).
    pub fn spin_before_park_us(mut self, spin_us: u64) -> Self {
        self.spin_before_park = (spin_us > 0).then(|| Duration::from_micros(spin_us));
        self
    }
}

impl<P: IcnPair> System for IcnSystem<P> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(&self, spec: &CaseSpec, placement: Placement) -> Result<Measurement, String> {
        run_pair(self.pair.clone(), spec, placement, self.spin_before_park)
    }

    fn config(&self) -> BTreeMap<String, Value> {
        let mut config = self.pair.config();
        let spin_us = self
            .spin_before_park
            .map_or(0, |spin| spin.as_micros() as u64);
        config.insert("engine.spin_before_park_us".into(), Value::from(spin_us));
        config
    }
}

/// The serving side of every bench case: answers each request with `response_bytes` bytes. The
/// response is one shared buffer handed out by reference, so serving costs no copy.
pub fn bench_router(response_bytes: usize) -> Router {
    let response = Buf::from_vec(vec![0u8; response_bytes]);
    Router::new().route(BENCH_ROUTE, move |_context, _request| {
        let response = response.clone();
        async move { Ok::<Buf, RpcError>(response) }
    })
}

/// Warm-up then one measured phase of `spec`, from a client transport to `peer`.
pub async fn drive_case<T: Transport + 'static>(
    client: Rc<T>,
    peer: NodeId,
    spec: &CaseSpec,
) -> Measurement {
    let request = Buf::from_vec(vec![0u8; spec.request_bytes]);
    let warmup = phase(&client, peer, spec, spec.warmup, &request).await;
    let start = PhaseStart::now();
    let outcome = phase(&client, peer, spec, spec.measure, &request).await;
    let mut measurement = start.finish(outcome);
    if warmup.errors > 0 {
        measurement.first_error.get_or_insert(format!(
            "warm-up: {} errors, first: {}",
            warmup.errors,
            warmup.first_error.unwrap_or_default()
        ));
    }
    measurement
}

/// `in_flight` closed-loop tasks on the current executor, one RPC at a time each.
async fn phase<T: Transport + 'static>(
    client: &Rc<T>,
    peer: NodeId,
    spec: &CaseSpec,
    budget: Budget,
    request: &Buf,
) -> WorkerOutcome {
    let gate = Arc::new(Gate::new(budget, spec.time_cap));
    let tasks: Vec<_> = (0..spec.in_flight)
        .map(|_| {
            let (client, gate, request) = (client.clone(), gate.clone(), request.clone());
            let (bytes_per_op, response_bytes) = (spec.bytes_per_op(), spec.response_bytes);
            glommio::spawn_local(async move {
                closed_loop_worker(&gate, bytes_per_op, || {
                    one_rpc(client.clone(), peer, request.clone(), response_bytes)
                })
                .await
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await);
    }
    merge_workers(&outcomes)
}

async fn one_rpc<T: Transport>(
    client: Rc<T>,
    peer: NodeId,
    request: Buf,
    response_bytes: usize,
) -> Result<(), String> {
    let response = client
        .rpc(peer, BENCH_ROUTE, Priority::Normal, request)
        .await
        .map_err(|e| e.to_string())?;
    if response.len() != response_bytes {
        return Err(format!(
            "response of {} bytes, expected {response_bytes}",
            response.len()
        ));
    }
    Ok(())
}

/// Server executor on the server core, client executor on the client core; the client drives
/// the case, then tells the server to stop.
pub fn run_pair<P: IcnPair>(
    pair: Arc<P>,
    spec: &CaseSpec,
    placement: Placement,
    spin_before_park: Option<Duration>,
) -> Result<Measurement, String> {
    let (rendezvous_sender, rendezvous_receiver) = mpsc::channel::<Result<P::Rendezvous, String>>();
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let (pair, stop, response_bytes) = (pair.clone(), stop.clone(), spec.response_bytes);
        executor("icn-bench-server", placement.server_core, spin_before_park)
            .spawn(move || async move {
                icn_engine::shard::spawn_wake_tick(icn_engine::shard::WAKE_TICK_DEFAULT);
                let started = pair.start_server(bench_router(response_bytes)).await;
                let kept_alive = match started {
                    Ok((server, rendezvous)) => {
                        let _ = rendezvous_sender.send(Ok(rendezvous));
                        server
                    }
                    Err(error) => {
                        let _ = rendezvous_sender.send(Err(error));
                        return;
                    }
                };
                while !stop.load(Ordering::Acquire) {
                    glommio::timer::sleep(STOP_POLL).await;
                }
                drop(kept_alive);
            })
            .map_err(|e| format!("server executor: {e}"))?
    };
    let measured = run_client_side(
        pair,
        &rendezvous_receiver,
        spec,
        placement,
        spin_before_park,
    );
    stop.store(true, Ordering::Release);
    let joined = server.join().map_err(|e| format!("server executor: {e}"));
    let measurement = measured?;
    joined?;
    Ok(measurement)
}

fn run_client_side<P: IcnPair>(
    pair: Arc<P>,
    rendezvous: &mpsc::Receiver<Result<P::Rendezvous, String>>,
    spec: &CaseSpec,
    placement: Placement,
    spin_before_park: Option<Duration>,
) -> Result<Measurement, String> {
    let to = rendezvous
        .recv_timeout(SETUP_TIMEOUT)
        .map_err(|_| "server did not start in time".to_string())??;
    let spec = spec.clone();
    executor("icn-bench-client", placement.client_core, spin_before_park)
        .spawn(move || async move {
            icn_engine::shard::spawn_wake_tick(icn_engine::shard::WAKE_TICK_DEFAULT);
            let (client, peer) = pair.start_client(to).await?;
            Ok(drive_case(Rc::new(client), peer, &spec).await)
        })
        .map_err(|e| format!("client executor: {e}"))?
        .join()
        .map_err(|e| format!("client executor: {e}"))?
}

fn executor(name: &str, core: Option<usize>, spin: Option<Duration>) -> LocalExecutorBuilder {
    let placement = core.map_or(GlommioPlacement::Unbound, GlommioPlacement::Fixed);
    let builder = LocalExecutorBuilder::new(placement)
        .name(name)
        .io_memory(EXECUTOR_IO_MEMORY_BYTES);
    icn_engine::shard::with_spin_before_park(builder, spin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::case::CaseKind;
    use icn_engine::{ConnId, RequestContext};

    /// A transport whose "network" is a direct call into the router on the same executor: enough
    /// to check the driver's accounting without any real transport.
    struct DirectTransport {
        router: Router,
        fail_every: Option<u64>,
        calls: std::cell::Cell<u64>,
    }

    impl Transport for DirectTransport {
        fn local_id(&self) -> NodeId {
            NodeId([1; 32])
        }

        async fn rpc(
            &self,
            peer: NodeId,
            route: Route,
            priority: Priority,
            request: Buf,
        ) -> Result<Buf, RpcError> {
            self.calls.set(self.calls.get() + 1);
            if self
                .fail_every
                .is_some_and(|n| self.calls.get().is_multiple_of(n))
            {
                return Err(RpcError::Timeout);
            }
            glommio::yield_if_needed().await;
            let context = RequestContext {
                peer,
                conn: ConnId(1),
                route,
                priority,
            };
            self.router.dispatch(context, request).await
        }

        fn peers(&self) -> Vec<(NodeId, ConnId)> {
            vec![(NodeId([2; 32]), ConnId(1))]
        }
    }

    fn drive(kind: CaseKind, ops: u64, fail_every: Option<u64>) -> Measurement {
        let spec = CaseSpec::tiny(kind, ops);
        LocalExecutorBuilder::default()
            .io_memory(EXECUTOR_IO_MEMORY_BYTES)
            .spawn(move || async move {
                let router = bench_router(spec.response_bytes);
                let client = DirectTransport {
                    router,
                    fail_every,
                    calls: Default::default(),
                };
                drive_case(Rc::new(client), NodeId([2; 32]), &spec).await
            })
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn driver_counts_every_case() {
        for kind in CaseKind::ALL {
            let spec = CaseSpec::tiny(kind, 128);
            let measurement = drive(kind, 128, None);
            assert_eq!(
                measurement.errors, 0,
                "{kind:?}: {:?}",
                measurement.first_error
            );
            assert_eq!(measurement.ops, 128);
            assert_eq!(measurement.bytes, 128 * spec.bytes_per_op());
            assert_eq!(measurement.latency.map(|l| l.count()), Some(128));
        }
    }

    #[test]
    fn driver_reports_failed_rpcs() {
        let measurement = drive(CaseKind::Rpc1KiBx1, 100, Some(10));
        assert_eq!(measurement.ops + measurement.errors, 100);
        assert_eq!(measurement.errors, 10);
        assert_eq!(measurement.first_error.as_deref(), Some("timed out"));
    }

    /// A pair whose client answers itself (no network between the executors): exercises
    /// `run_pair`'s executors, rendezvous, stop and error paths.
    struct LoopbackPair {
        refuse_to_serve: bool,
    }

    impl IcnPair for LoopbackPair {
        type Rendezvous = usize;
        type Server = Router;
        type Client = DirectTransport;

        async fn start_server(&self, router: Router) -> Result<(Router, usize), String> {
            if self.refuse_to_serve {
                return Err("no port for you".into());
            }
            let probe = RequestContext {
                peer: NodeId([1; 32]),
                conn: ConnId(1),
                route: BENCH_ROUTE,
                priority: Priority::Normal,
            };
            let response_bytes = router
                .dispatch(probe, Buf::empty())
                .await
                .map_err(|e| e.to_string())?
                .len();
            Ok((router, response_bytes))
        }

        async fn start_client(
            &self,
            response_bytes: usize,
        ) -> Result<(DirectTransport, NodeId), String> {
            let client = DirectTransport {
                router: bench_router(response_bytes),
                fail_every: None,
                calls: Default::default(),
            };
            Ok((client, NodeId([2; 32])))
        }
    }

    #[test]
    fn pair_runs_on_two_executors_and_reports_setup_errors() {
        let spec = CaseSpec::tiny(CaseKind::Rpc1KiBx64, 256);
        let system = IcnSystem::new(
            "icn-loopback",
            LoopbackPair {
                refuse_to_serve: false,
            },
        );
        let measurement = system.run(&spec, Placement::detect()).unwrap();
        assert_eq!((measurement.ops, measurement.errors), (256, 0));
        let refused = IcnSystem::new(
            "icn-loopback",
            LoopbackPair {
                refuse_to_serve: true,
            },
        );
        assert_eq!(
            refused.run(&spec, Placement::detect()).unwrap_err(),
            "no port for you"
        );
    }

    #[test]
    fn router_answers_with_the_case_response() {
        let router = bench_router(1024);
        let context = RequestContext {
            peer: NodeId([2; 32]),
            conn: ConnId(1),
            route: BENCH_ROUTE,
            priority: Priority::Normal,
        };
        let response = LocalExecutorBuilder::default()
            .io_memory(EXECUTOR_IO_MEMORY_BYTES)
            .make()
            .unwrap()
            .run(async move {
                router
                    .dispatch(context, Buf::from_vec(vec![0; 1 << 20]))
                    .await
            });
        assert_eq!(response.map(|b| b.len()), Ok(1024));
    }
}
