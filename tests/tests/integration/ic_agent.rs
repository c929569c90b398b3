//! The IC's own Rust agent (`ic-agent` from crates.io, unmodified) against a 4-node subnet of
//! real `icn node` processes, over plain HTTP on loopback (issue 5).
//!
//! An agent that works against the IC must work against icn without a single change: it checks
//! every certificate against the root key (the subnet's BLS key; the certificates carry no
//! delegation), every query response against the signing node's key in the registry, and maps
//! rejects to its own error types. Each behaviour is one test, on a fresh subnet, bounded by
//! [`TEST_TIME_MAX`] on a current-thread tokio runtime. The tests hold the heavy-test lock: four
//! node processes each, several subnets at once would starve a 2-core machine.
//!
//! What ic-agent 0.49 does, which shapes the tests:
//! - it sends every update to `/api/v4/canister/<id>/call` (synchronous) and polls
//!   `/api/v3/.../read_state` only when that answers 202; nothing in the agent selects the
//!   asynchronous `/api/v2/.../call`, so that path is taken by posting an envelope the agent
//!   signed (`update(..).sign()`) and then letting the agent poll it (`Agent::wait`);
//! - a query reject is `AgentError::UncertifiedReject` (it is signed by one node, not
//!   certified); an update reject is `CertifiedReject` when it comes in a certificate (the call
//!   executed) and `UncertifiedReject` when the call endpoint refused it before consensus
//!   (`non_replicated_rejection`).
//!
//! The nodes run the reference replica (their registry lists the subnet's BLS key and their
//! identity folders hold it), so every call goes through gossip, a block, 3 of 4 shares,
//! execution and certification before the agent sees its reply.

use std::future::Future;
use std::io::Read;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use candid::{Decode, Encode, Principal};
use ic_agent::agent::status::Value;
use ic_agent::agent::{CallResponse, EffectiveId, RejectCode, RequestStatusResponse};
use ic_agent::hash_tree::{Label, LookupResult};
use ic_agent::identity::BasicIdentity;
use ic_agent::{Agent, AgentError, Certificate};
use icn_shards::http::testing::request;
use icn_shards::http::IC_API_VERSION;
use icn_tests::processes::ProcessSubnet;

const NODES: usize = 4;
/// The reference replica's built-in counter (`get : () -> (nat64) query`, `increment : () ->
/// (nat64)`) and key-value store.
const COUNTER: &str = "rwlgt-iiaaa-aaaaa-aaaaa-cai";
const KV: &str = "rrkah-fqaaa-aaaaa-aaaaq-cai";
/// One test, subnet start-up excluded: a handful of calls, each certified within a few block
/// times, and the agent's polling backoff.
const TEST_TIME_MAX: Duration = Duration::from_secs(60);
/// How far the certified `/time` may be from this machine's clock (same machine; the margin is
/// for the certified height's age).
const CERTIFIED_TIME_SKEW_MAX: Duration = Duration::from_secs(30);
/// How long another node may take to execute and certify the height that executed a call on
/// the node that answered it (a few block intervals on a loaded machine).
const STATUS_ON_ANOTHER_NODE_MAX: Duration = Duration::from_secs(10);

/// Asks `caught_up` every 20 ms until it says yes or [`STATUS_ON_ANOTHER_NODE_MAX`] passes
/// (the assertion after it then reports what the node still answers).
async fn wait_for_another_node<F: std::future::Future<Output = bool>>(
    mut caught_up: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + STATUS_ON_ANOTHER_NODE_MAX;
    while !caught_up().await && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn counter() -> Principal {
    Principal::from_text(COUNTER).unwrap()
}

fn kv() -> Principal {
    Principal::from_text(KV).unwrap()
}

/// Runs one test's body on a current-thread runtime, failing it after [`TEST_TIME_MAX`].
fn run<F: Future>(body: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        tokio::time::timeout(TEST_TIME_MAX, body)
            .await
            .unwrap_or_else(|_| panic!("the test did not finish within {TEST_TIME_MAX:?}"))
    })
}

/// A fresh Ed25519 identity (a new key from the OS's randomness).
fn ed25519_identity() -> BasicIdentity {
    BasicIdentity::from_raw_key(&ed25519_seed())
}

/// A fresh Ed25519 secret key (to build the same identity for two agents).
fn ed25519_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut seed))
        .expect("reading /dev/urandom");
    seed
}

/// An agent on node `node`'s URL, anonymous unless given an identity, with query signature
/// verification on (the builder's default, set explicitly because the tests rely on it).
fn agent(subnet: &ProcessSubnet, node: usize, identity: Option<BasicIdentity>) -> Agent {
    let builder = Agent::builder()
        .with_url(subnet.url(node))
        .with_verify_query_signatures(true);
    let builder = match identity {
        Some(identity) => builder.with_identity(identity),
        None => builder,
    };
    builder.build().expect("agent")
}

/// [`agent`], then `fetch_root_key`: the only trust a local subnet's agent starts from.
async fn replica_agent(
    subnet: &ProcessSubnet,
    node: usize,
    identity: Option<BasicIdentity>,
) -> Agent {
    let agent = agent(subnet, node, identity);
    agent
        .fetch_root_key()
        .await
        .unwrap_or_else(|e| panic!("fetch_root_key from node {node}: {e:?}"));
    agent
}

/// The subnet's id: with no delegation the root key is the subnet's key, and the subnet id is
/// that key's self-authenticating principal.
fn subnet_principal(agent: &Agent) -> Principal {
    Principal::self_authenticating(agent.read_root_key())
}

async fn counter_value(agent: &Agent) -> u64 {
    let reply = agent
        .query(&counter(), "get")
        .with_arg(Encode!().unwrap())
        .call()
        .await
        .unwrap_or_else(|e| panic!("counter get: {e:?}"));
    Decode!(&reply, u64).expect("get returns a nat64")
}

fn decode_nat64(reply: &[u8]) -> u64 {
    Decode!(reply, u64).expect("increment returns a nat64")
}

/// The leaf at `path` in a certificate's tree.
fn leaf<'c>(certificate: &'c Certificate, path: &[&[u8]]) -> &'c [u8] {
    match certificate.tree.lookup_path(path.iter().copied()) {
        LookupResult::Found(value) => value,
        other => panic!(
            "path {:?} is not a leaf of the certificate: {other:?}",
            path.iter()
                .map(|l| String::from_utf8_lossy(l))
                .collect::<Vec<_>>()
        ),
    }
}

/// An unsigned LEB128 number, as `/time` holds nanoseconds.
fn leb128(bytes: &[u8]) -> u64 {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            assert_eq!(i + 1, bytes.len(), "trailing bytes after a LEB128 number");
            return value;
        }
    }
    panic!("unterminated LEB128 number {bytes:?}");
}

fn reject_of(error: &AgentError) -> &ic_agent::agent::RejectResponse {
    match error {
        AgentError::CertifiedReject { reject, .. }
        | AgentError::UncertifiedReject { reject, .. } => reject,
        other => panic!("expected a reject, got {other:?}"),
    }
}

#[test]
fn status_reports_the_interface_version_and_the_replica_health() {
    let _heavy = icn_tests::heavy_test_lock();
    let subnet = ProcessSubnet::start("ic-agent-status", NODES);
    run(async {
        let agent = agent(&subnet, 0, None);
        let status = agent.status().await.expect("status of node 0");
        assert_eq!(
            status.values.get("ic_api_version").map(|v| &**v),
            Some(&Value::String(IC_API_VERSION.into())),
            "{status}"
        );
        assert_eq!(
            status.impl_version.as_deref(),
            Some(env!("CARGO_PKG_VERSION")),
            "{status}"
        );
        let health = status.replica_health_status.clone();
        assert!(
            matches!(health.as_deref(), Some("starting" | "healthy")),
            "{status}"
        );
        // A node that has no subnet key yet must make fetch_root_key fail, never hand out a
        // made-up key; once it has one, the agent adopts exactly the key the status carries.
        match &status.root_key {
            None => assert!(
                matches!(
                    agent.fetch_root_key().await,
                    Err(AgentError::NoRootKeyInStatus(_))
                ),
                "{status}"
            ),
            Some(key) => {
                agent.fetch_root_key().await.expect("fetch_root_key");
                assert_eq!(&agent.read_root_key(), key);
            }
        }
        // Every node of the subnet answers the same way.
        for node in 1..subnet.len() {
            let other = self::agent(&subnet, node, None).status().await;
            let other = other.unwrap_or_else(|e| panic!("status of node {node}: {e:?}"));
            assert_eq!(
                other.values.get("ic_api_version"),
                status.values.get("ic_api_version")
            );
            assert_eq!(other.root_key, status.root_key);
        }
    });
}

#[test]
fn queries_are_answered_with_node_signatures_the_agent_verifies() {
    let _heavy = icn_tests::heavy_test_lock();
    let subnet = ProcessSubnet::start("ic-agent-query", NODES);
    run(async {
        // Anonymous on node 0, Ed25519 on node 3: both verify the signing node's key, which the
        // agent reads from the subnet's certified state.
        let anonymous = replica_agent(&subnet, 0, None).await;
        let signed = replica_agent(&subnet, 3, Some(ed25519_identity())).await;
        assert_eq!(counter_value(&anonymous).await, 0);
        assert_eq!(counter_value(&signed).await, 0);
        let reply = signed
            .query(&kv(), "list")
            .with_arg(Encode!(&None::<String>, &10u32).unwrap())
            .call_with_verification()
            .await
            .expect("kv list");
        assert_eq!(Decode!(&reply, Vec<String>).unwrap(), Vec::<String>::new());
    });
}

#[test]
fn updates_through_the_synchronous_endpoint_return_certified_replies() {
    let _heavy = icn_tests::heavy_test_lock();
    let subnet = ProcessSubnet::start("ic-agent-sync-call", NODES);
    run(async {
        let agent = replica_agent(&subnet, 1, Some(ed25519_identity())).await;
        let before = counter_value(&agent).await;
        // `call()` alone shows which path answered: a certificate from the v4 endpoint, not a
        // 202 that the agent would have to poll.
        let response = agent
            .update(&counter(), "increment")
            .with_arg(Encode!().unwrap())
            .call()
            .await
            .expect("increment");
        let CallResponse::Response((reply, _certificate)) = response else {
            panic!("the synchronous endpoint answered 202 instead of a certificate: {response:?}")
        };
        assert_eq!(decode_nat64(&reply), before + 1);
        let reply = agent
            .update(&counter(), "increment")
            .with_arg(Encode!().unwrap())
            .call_and_wait()
            .await
            .expect("second increment");
        assert_eq!(decode_nat64(&reply), before + 2);
        assert_eq!(counter_value(&agent).await, before + 2);
    });
}

#[test]
fn updates_through_the_asynchronous_endpoint_are_polled_to_their_reply() {
    let _heavy = icn_tests::heavy_test_lock();
    let subnet = ProcessSubnet::start("ic-agent-async-call", NODES);
    run(async {
        let agent = replica_agent(&subnet, 2, None).await;
        let before = counter_value(&agent).await;
        let signed = agent
            .update(&counter(), "increment")
            .with_arg(Encode!().unwrap())
            .sign()
            .expect("signing the update");
        let path = format!("/api/v2/canister/{COUNTER}/call");
        let answer = request(
            subnet.http_addr(2),
            "POST",
            &path,
            Some(&signed.signed_update),
        );
        assert_eq!(answer.status, 202, "{}", answer.text());
        let (reply, _certificate) = agent
            .wait(&signed.request_id, counter())
            .await
            .expect("polling the request status");
        assert_eq!(decode_nat64(&reply), before + 1);
        assert_eq!(counter_value(&agent).await, before + 1);
    });
}

#[test]
fn read_state_of_request_status_time_and_subnet_paths() {
    let _heavy = icn_tests::heavy_test_lock();
    let subnet = ProcessSubnet::start("ic-agent-read-state", NODES);
    run(async {
        let seed = ed25519_seed();
        let agent = replica_agent(&subnet, 0, Some(BasicIdentity::from_raw_key(&seed))).await;
        let signed = agent
            .update(&counter(), "increment")
            .with_arg(Encode!().unwrap())
            .sign()
            .expect("signing the update");
        let request_id = signed.request_id;
        let reply = agent
            .update_signed(counter(), signed.signed_update)
            .await
            .map(|response| match response {
                CallResponse::Response(reply) => reply,
                CallResponse::Poll(id) => panic!("synchronous call not certified: {id:?}"),
            })
            .expect("increment");

        // The request status, from another node: every node certifies the same state, node 1
        // a moment after node 0 answered (until then its certified tree has no such request and
        // answers Unknown), so the sender polls node 1 until it is there.
        let other = replica_agent(&subnet, 1, Some(BasicIdentity::from_raw_key(&seed))).await;
        let deadline = tokio::time::Instant::now() + STATUS_ON_ANOTHER_NODE_MAX;
        let status = loop {
            let (status, _) = other
                .request_status_raw(&request_id, counter())
                .await
                .expect("request status");
            if !matches!(status, RequestStatusResponse::Unknown)
                || tokio::time::Instant::now() >= deadline
            {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let RequestStatusResponse::Replied(replied) = status else {
            panic!("request status is {status:?}, not replied")
        };
        assert_eq!(replied.arg, reply);
        // Only the request's sender may read it (the interface specification's rule): an
        // anonymous reader is refused with 403.
        let stranger = replica_agent(&subnet, 1, None).await;
        match stranger.request_status_raw(&request_id, counter()).await {
            Err(AgentError::HttpError(payload)) => assert_eq!(payload.status, 403),
            other => panic!("another sender read the request status: {other:?}"),
        }

        // /time: a certified LEB128 timestamp close to this machine's clock.
        let certificate = agent
            .read_state_raw(vec![vec!["time".into()]], counter())
            .await
            .expect("read_state time");
        let certified = Duration::from_nanos(leb128(leaf(&certificate, &[b"time"])));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let skew = now.abs_diff(certified);
        assert!(
            skew < CERTIFIED_TIME_SKEW_MAX,
            "certified time is {skew:?} off"
        );

        // /subnet/<id>/public_key is the root key itself (no delegation on a local subnet).
        let subnet_id = subnet_principal(&agent);
        let paths = vec![vec![
            "subnet".into(),
            Label::from_bytes(subnet_id.as_slice()),
            "public_key".into(),
        ]];
        let certificate = agent
            .read_state_raw(paths, counter())
            .await
            .expect("read_state subnet public key");
        assert!(certificate.delegation.is_none());
        let key = leaf(
            &certificate,
            &[b"subnet", subnet_id.as_slice(), b"public_key"],
        );
        assert_eq!(key, agent.read_root_key().as_slice());

        // /subnet/<id>/canister_ranges through the subnet endpoint, decoded by the agent: the
        // subnet hosts both built-in canisters.
        let ranges = agent
            .read_state_subnet_canister_ranges(subnet_id)
            .await
            .expect("read_state canister ranges");
        for canister in [counter(), kv()] {
            assert!(
                ranges
                    .iter()
                    .any(|(low, high)| *low <= canister && canister <= *high),
                "{canister} is not in {ranges:?}"
            );
        }
        // And /time through the subnet endpoint as well.
        let certificate = agent
            .read_state_raw(vec![vec!["time".into()]], EffectiveId::Subnet(subnet_id))
            .await
            .expect("subnet read_state time");
        leb128(leaf(&certificate, &[b"time"]));
    });
}

#[test]
fn an_unknown_method_is_rejected_with_destination_invalid() {
    let _heavy = icn_tests::heavy_test_lock();
    let subnet = ProcessSubnet::start("ic-agent-reject", NODES);
    run(async {
        let agent = replica_agent(&subnet, 0, None).await;
        let error = agent
            .query(&counter(), "nope")
            .with_arg(Encode!().unwrap())
            .call()
            .await
            .expect_err("a query of an unknown method");
        assert!(
            matches!(error, AgentError::UncertifiedReject { .. }),
            "{error:?}"
        );
        let reject = reject_of(&error);
        assert_eq!(
            reject.reject_code,
            RejectCode::DestinationInvalid,
            "{error:?}"
        );
        assert!(reject.reject_message.contains("nope"), "{error:?}");

        let error = agent
            .update(&counter(), "nope")
            .with_arg(Encode!().unwrap())
            .call_and_wait()
            .await
            .expect_err("an update of an unknown method");
        // Certified if the replica executed it, uncertified if the call endpoint refused it
        // first; the reject code is the same either way.
        let reject = reject_of(&error);
        assert_eq!(
            reject.reject_code,
            RejectCode::DestinationInvalid,
            "{error:?}"
        );
        assert!(reject.reject_message.contains("nope"), "{error:?}");
        assert_eq!(reject.error_code.as_deref(), Some("IC0536"), "{error:?}");
        // The reject changed nothing.
        assert_eq!(counter_value(&agent).await, 0);
    });
}

#[test]
fn the_key_value_store_puts_gets_lists_and_deletes() {
    let _heavy = icn_tests::heavy_test_lock();
    let subnet = ProcessSubnet::start("ic-agent-kv", NODES);
    run(async {
        let writer = replica_agent(&subnet, 0, Some(ed25519_identity())).await;
        let reader = replica_agent(&subnet, 2, None).await;
        let value = vec![0u8, 1, 2, 254, 255];
        let put = |key: &'static str, value: Vec<u8>| {
            let writer = &writer;
            async move {
                let reply = writer
                    .update(&kv(), "put")
                    .with_arg(Encode!(&key, &serde_bytes::ByteBuf::from(value)).unwrap())
                    .call_and_wait()
                    .await
                    .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
                Decode!(&reply).expect("put returns nothing");
            }
        };
        let get = |key: &'static str| {
            let reader = &reader;
            async move {
                let reply = reader
                    .query(&kv(), "get")
                    .with_arg(Encode!(&key).unwrap())
                    .call()
                    .await
                    .unwrap_or_else(|e| panic!("get {key}: {e:?}"));
                Decode!(&reply, Option<serde_bytes::ByteBuf>)
                    .expect("get returns an opt blob")
                    .map(|b| b.into_vec())
            }
        };
        let delete = |key: &'static str| {
            let writer = &writer;
            async move {
                let reply = writer
                    .update(&kv(), "delete")
                    .with_arg(Encode!(&key).unwrap())
                    .call_and_wait()
                    .await
                    .unwrap_or_else(|e| panic!("delete {key}: {e:?}"));
                Decode!(&reply, bool).expect("delete returns a bool")
            }
        };
        put("alpha", value.clone()).await;
        put("beta", b"second".to_vec()).await;
        // The reader's node executes the height a moment after the writer's answered.
        wait_for_another_node(|| async { get("beta").await.is_some() }).await;
        assert_eq!(get("alpha").await, Some(value));
        assert_eq!(get("gamma").await, None);
        let reply = reader
            .query(&kv(), "list")
            .with_arg(Encode!(&None::<String>, &10u32).unwrap())
            .call()
            .await
            .expect("list");
        assert_eq!(
            Decode!(&reply, Vec<String>).unwrap(),
            vec!["alpha".to_string(), "beta".to_string()]
        );
        // Listing from a start key, at most one.
        let reply = reader
            .query(&kv(), "list")
            .with_arg(Encode!(&Some("b".to_string()), &1u32).unwrap())
            .call()
            .await
            .expect("list from b");
        assert_eq!(
            Decode!(&reply, Vec<String>).unwrap(),
            vec!["beta".to_string()]
        );
        assert!(delete("alpha").await);
        assert!(!delete("alpha").await);
        wait_for_another_node(|| async { get("alpha").await.is_none() }).await;
        assert_eq!(get("alpha").await, None);
    });
}

#[test]
fn the_same_signed_update_sent_to_two_nodes_executes_once() {
    let _heavy = icn_tests::heavy_test_lock();
    let subnet = ProcessSubnet::start("ic-agent-dedup", NODES);
    run(async {
        let agent = replica_agent(&subnet, 2, None).await;
        let before = counter_value(&agent).await;
        let signed = agent
            .update(&counter(), "increment")
            .with_arg(Encode!().unwrap())
            .sign()
            .expect("signing the update");
        let path = format!("/api/v2/canister/{COUNTER}/call");
        for node in [0, 1] {
            let answer = request(
                subnet.http_addr(node),
                "POST",
                &path,
                Some(&signed.signed_update),
            );
            assert_eq!(answer.status, 202, "node {node}: {}", answer.text());
        }
        let (reply, _) = agent
            .wait(&signed.request_id, counter())
            .await
            .expect("polling the request status");
        assert_eq!(decode_nat64(&reply), before + 1);
        // Had the copy that went to the other node executed as well (in a later block whose
        // maker still held it), a different increment certified afterwards would read one
        // higher: this catches a re-execution at any height up to that increment's.
        let reply = agent
            .update(&counter(), "increment")
            .with_arg(Encode!().unwrap())
            .call_and_wait()
            .await
            .expect("a second, different increment");
        assert_eq!(decode_nat64(&reply), before + 2);
        assert_eq!(counter_value(&agent).await, before + 2);
    });
}

/// A QUIC node serves the API on every shard (one SO_REUSEPORT listener each), and the shards
/// other than home hand their requests to the home shard's replica. Agents each with a client
/// of their own (own connection) land on either shard as the kernel spreads them; all get the
/// same verified answers, an update through one is seen by all, and both shards hold open
/// API connections.
#[test]
fn every_shard_of_a_node_serves_the_api_in_front_of_the_home_shards_replica() {
    // With 24 connections, all on one of the two shards has odds of 2 in 2^24.
    const AGENTS: usize = 24;
    let _heavy = icn_tests::heavy_test_lock();
    let subnet = ProcessSubnet::start_some(
        "ic-agent-shards",
        NODES,
        NODES,
        "[engine]\nshard_count = 2\n",
    );
    run(async {
        let mut agents = Vec::new();
        for _ in 0..AGENTS {
            let agent = replica_agent(&subnet, 2, Some(ed25519_identity())).await;
            assert_eq!(counter_value(&agent).await, 0);
            agents.push(agent);
        }
        let reply = agents[AGENTS - 1]
            .update(&counter(), "increment")
            .with_arg(Encode!().unwrap())
            .call_and_wait()
            .await
            .expect("increment");
        assert_eq!(decode_nat64(&reply), 1);
        for agent in &agents {
            assert_eq!(counter_value(agent).await, 1);
        }
        // The agents' connections stay open (keep-alive); the gauge is published every second.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let answer = request(subnet.http_addr(2), "GET", "/metrics", None);
        let text = String::from_utf8_lossy(&answer.body).into_owned();
        for shard in 0..2 {
            let prefix = format!("icn_http_connections{{shard=\"{shard}\"}} ");
            let open = text
                .lines()
                .find_map(|line| line.strip_prefix(prefix.as_str()))
                .and_then(|value| value.trim().parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no {prefix}in the metrics"));
            assert!(open >= 1.0, "shard {shard} holds no API connection");
        }
    });
}

/// A node's value of an unlabelled metric, read from `/metrics` on its API port.
fn metric(subnet: &ProcessSubnet, node: usize, name: &str) -> u64 {
    let answer = request(subnet.http_addr(node), "GET", "/metrics", None);
    let text = String::from_utf8_lossy(&answer.body).into_owned();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as u64)
        .unwrap_or_else(|| panic!("node {node} has no {name}"))
}

/// A member that starts after its peers purged the blocks it would need catches up through a
/// replica checkpoint (state sync) and then serves the subnet's state: the agent's query on it
/// returns the counter the others incremented, and it keeps executing with them.
#[test]
fn a_late_member_syncs_a_replica_checkpoint_and_serves_the_subnets_state() {
    // Fast heights and a short history, so the first blocks are purged within seconds.
    const TUNING: &str = "[replica]\nblock_interval_ms = 40\nheights_kept_count = 12\n\
                          checkpoint_interval_count = 5\nheights_ahead_max = 4\n";
    const LATE_WAIT: Duration = Duration::from_secs(45);
    let _heavy = icn_tests::heavy_test_lock();
    let mut subnet = ProcessSubnet::start_some("ic-agent-late", 5, 4, TUNING);
    let increments = 3;
    run(async {
        let agent = replica_agent(&subnet, 0, None).await;
        for _ in 0..increments {
            agent
                .update(&counter(), "increment")
                .with_arg(Encode!().unwrap())
                .call_and_wait()
                .await
                .expect("increment");
        }
    });
    // Past the kept history: block 1 is gone from every pool.
    let start = std::time::Instant::now();
    while metric(&subnet, 0, "icn_replica_executed_height") < 40 {
        assert!(start.elapsed() < LATE_WAIT, "the subnet stopped executing");
        std::thread::sleep(Duration::from_millis(100));
    }
    subnet.start_next();
    let late = 4;
    let start = std::time::Instant::now();
    loop {
        let target = metric(&subnet, 0, "icn_replica_executed_height");
        let reached = metric(&subnet, late, "icn_replica_executed_height");
        if reached >= target {
            break;
        }
        assert!(
            start.elapsed() < LATE_WAIT,
            "the late member is at height {reached}, the subnet at {target}; its log:\n{}",
            std::fs::read_to_string(subnet.log_path(late)).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        metric(&subnet, late, "icn_state_sync_syncs_completed_total") >= 1,
        "the late member caught up without a checkpoint: blocks were not purged"
    );
    run(async {
        let late_agent = replica_agent(&subnet, late, None).await;
        assert_eq!(counter_value(&late_agent).await, increments);
        // And it executes new calls with the others.
        let reply = late_agent
            .update(&counter(), "increment")
            .with_arg(Encode!().unwrap())
            .call_and_wait()
            .await
            .expect("increment through the late member");
        assert_eq!(decode_nat64(&reply), increments + 1);
    });
}
