//! The reference replica's built-in native canisters: a counter and a key-value store, with
//! Candid interfaces, executed deterministically.
//!
//! The reference replica needs something behind the public HTTP API that real agents can call:
//! queries, updates and rejects, with arguments and replies in Candid as every IC agent and `dfx`
//! speak it. Instead of a Wasm runtime, the canisters are plain Rust: no I/O, no clock, no
//! randomness and no iteration over unordered maps, so every node that executes the same calls
//! in the same order reaches byte-identical state. That state is serialized to one file per
//! canister (deterministic bytes) so checkpoints and state sync can carry it, and hashed into one
//! digest that changes when any byte changes.
//!
//! Canister ids are fixed, the first two ids the IC would assign on a subnet:
//! the counter is index 0 (`rwlgt-iiaaa-aaaaa-aaaaa-cai`), the key-value store index 1
//! (`rrkah-fqaaa-aaaaa-aaaaq-cai`).
//!
//! Errors follow the IC's reject codes and its style of messages, so agents surface them as they
//! would on mainnet: an unknown canister or method is `DestinationInvalid` (3), an argument that
//! does not decode or an arithmetic overflow is a trap, `CanisterError` (5), and a put over a
//! bound is an explicit reject by the canister, `CanisterReject` (4). A rejected or trapped call
//! leaves the state as it was: every method checks everything before it mutates anything.
//!
//! As on the IC, a query method may be called as an update (it then runs in replicated mode and
//! changes nothing), but an update method called as a query is refused, since a query must not
//! change state and here there is no state to throw away afterwards.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};

use candid::de::DecoderConfig;
use candid::utils::{ArgumentDecoder, ArgumentEncoder};
use icn_codecs::canister_state::{
    decode_counter_state, decode_kv_state, encode_counter_state, encode_kv_state,
    CanisterStateError, KvStateLimits,
};
use icn_codecs::ic::principal::Principal;
use icn_tuning::CanistersTuning;
use serde_bytes::ByteBuf;

/// Canister index of the counter: `rwlgt-iiaaa-aaaaa-aaaaa-cai`.
pub const COUNTER_CANISTER_INDEX: u64 = 0;
/// Canister index of the key-value store: `rrkah-fqaaa-aaaaa-aaaaq-cai`.
pub const KV_CANISTER_INDEX: u64 = 1;

/// The counter's canister id.
pub fn counter_canister_id() -> Principal {
    Principal::from_canister_index(COUNTER_CANISTER_INDEX)
}

/// The key-value store's canister id.
pub fn kv_canister_id() -> Principal {
    Principal::from_canister_index(KV_CANISTER_INDEX)
}

/// The counter's Candid interface, as `__get_candid_interface_tmp_hack` returns it.
pub const COUNTER_DID: &str = "service : {
  get : () -> (nat64) query;
  increment : () -> (nat64);
  add : (nat64) -> (nat64);
}
";

/// The key-value store's Candid interface, as `__get_candid_interface_tmp_hack` returns it.
pub const KV_DID: &str = "service : {
  get : (text) -> (opt blob) query;
  put : (text, blob) -> ();
  delete : (text) -> (bool);
  list : (opt text, nat32) -> (vec text) query;
}
";

/// The method agents and `dfx` call to fetch a canister's interface.
pub const CANDID_INTERFACE_METHOD: &str = "__get_candid_interface_tmp_hack";

/// The IC's reject codes (interface specification, "Reject codes"), with their wire values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RejectCode {
    SysFatal = 1,
    SysTransient = 2,
    /// No such canister, or no such method on it.
    DestinationInvalid = 3,
    /// The canister rejected the call explicitly.
    CanisterReject = 4,
    /// The canister trapped (bad argument, overflow).
    CanisterError = 5,
}

impl RejectCode {
    /// The number sent in `reject_code` fields.
    pub fn as_u64(self) -> u64 {
        self as u64
    }
}

/// Why a call produced no reply: what the HTTP API puts in a reject response or a rejected
/// request status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    pub code: RejectCode,
    pub message: String,
    /// The IC's finer error code (`IC0536` and so on), which agents show beside the message.
    pub error_code: &'static str,
}

/// The result of one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    /// The Candid-encoded reply (a `DIDL` blob).
    Reply(Vec<u8>),
    Reject(Reject),
}

/// How a call arrived: as a query (read-only, not replicated) or as an update (ordered in a
/// block and executed by every node).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    Query,
    Update,
}

/// The bounds the canisters enforce, from the `[canisters]` tuning section. They decide whether
/// a call succeeds, so every node of a subnet must use the same values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CanisterLimits {
    pub kv_key_bytes_max: usize,
    pub kv_value_bytes_max: usize,
    pub kv_keys_max: usize,
    pub kv_store_bytes_max: usize,
    pub kv_list_keys_max: u32,
    pub candid_decoding_cost_max: usize,
    pub candid_skipping_cost_max: usize,
}

impl CanisterLimits {
    pub fn from_tuning(tuning: &CanistersTuning) -> CanisterLimits {
        CanisterLimits {
            kv_key_bytes_max: tuning.kv_key_bytes_max,
            kv_value_bytes_max: tuning.kv_value_bytes_max,
            kv_keys_max: tuning.kv_keys_max,
            kv_store_bytes_max: tuning.kv_store_bytes_max,
            kv_list_keys_max: tuning.kv_list_keys_max,
            candid_decoding_cost_max: tuning.candid_decoding_cost_max,
            candid_skipping_cost_max: tuning.candid_skipping_cost_max,
        }
    }

    /// The bounds a key-value state file from a peer must respect: the ones our puts enforce.
    pub fn kv_state_limits(&self) -> KvStateLimits {
        KvStateLimits {
            key_bytes_max: self.kv_key_bytes_max,
            value_bytes_max: self.kv_value_bytes_max,
            keys_max: self.kv_keys_max,
            store_bytes_max: self.kv_store_bytes_max,
        }
    }

    /// The Candid decoder configuration every argument is decoded with: bounded work, bounded
    /// skipping, and short error messages (a hostile argument must not make us format its whole
    /// type into a reject).
    fn decoder_config(&self) -> DecoderConfig {
        let mut config = DecoderConfig::new();
        config
            .set_decoding_quota(self.candid_decoding_cost_max)
            .set_skipping_quota(self.candid_skipping_cost_max)
            .set_full_error_message(false);
        config
    }
}

impl Default for CanisterLimits {
    fn default() -> CanisterLimits {
        CanisterLimits::from_tuning(&CanistersTuning::default())
    }
}

/// How full the key-value store is: the depths a metrics publisher exports next to the bounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvDepths {
    pub keys: usize,
    pub bytes: usize,
}

/// A resolved method. Queries and updates are separate types so that the dispatch of each is
/// exhaustive and a query can only reach code that borrows the canisters immutably.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Query(QueryMethod),
    Update(UpdateMethod),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QueryMethod {
    CounterGet,
    KvGet,
    KvList,
    /// `__get_candid_interface_tmp_hack`, with the canister's interface text.
    CandidInterface(&'static str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UpdateMethod {
    CounterIncrement,
    CounterAdd,
    KvPut,
    KvDelete,
}

/// The counter canister: one `nat64`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Counter {
    value: u64,
}

/// The key-value store canister. A `BTreeMap`, so iteration (listing, serializing) has one order
/// on every node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct KvStore {
    entries: BTreeMap<String, Vec<u8>>,
    /// Bytes of keys plus values, kept beside the map so a put checks its bound in O(1).
    bytes: usize,
}

/// Every built-in canister of a replica, routed by canister id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Canisters {
    limits: CanisterLimits,
    counter: Counter,
    kv: KvStore,
}

/// What a method body returns before the canister id is put into the message: the reply, a
/// trap, or an explicit reject.
enum MethodError {
    Trap(String),
    Reject(String),
}

type MethodResult = Result<Vec<u8>, MethodError>;

impl Canisters {
    /// Canisters in their initial state: the counter at 0, an empty store.
    pub fn new(limits: CanisterLimits) -> Canisters {
        Canisters {
            limits,
            counter: Counter::default(),
            kv: KvStore::default(),
        }
    }

    pub fn limits(&self) -> &CanisterLimits {
        &self.limits
    }

    /// The ids of every built-in canister, in the order their state files are hashed.
    pub fn canister_ids() -> [Principal; 2] {
        [counter_canister_id(), kv_canister_id()]
    }

    /// The store's current fill, for its depth gauges.
    pub fn kv_depths(&self) -> KvDepths {
        KvDepths {
            keys: self.kv.entries.len(),
            bytes: self.kv.bytes,
        }
    }

    /// Executes one call. Queries go through [`Canisters::query`] and cannot change state; an
    /// update may, and only when it replies.
    pub fn execute(
        &mut self,
        canister: &Principal,
        method: &str,
        arg: &[u8],
        kind: CallKind,
    ) -> CallOutcome {
        match kind {
            CallKind::Query => self.query(canister, method, arg),
            CallKind::Update => self.update(canister, method, arg),
        }
    }

    /// Executes a query call. Borrowing `self` immutably is what guarantees a query never
    /// changes state.
    pub fn query(&self, canister: &Principal, method: &str, arg: &[u8]) -> CallOutcome {
        let result = match resolve(canister, method, CallKind::Query) {
            Ok(Method::Query(query)) => self.run_query(query, arg),
            // An update method has no query export, so the IC reports it as missing.
            Ok(Method::Update(_)) => {
                return CallOutcome::Reject(method_not_found(canister, method, CallKind::Query))
            }
            Err(reject) => return CallOutcome::Reject(reject),
        };
        outcome(canister, result)
    }

    fn update(&mut self, canister: &Principal, method: &str, arg: &[u8]) -> CallOutcome {
        let result = match resolve(canister, method, CallKind::Update) {
            Ok(Method::Query(query)) => self.run_query(query, arg),
            Ok(Method::Update(update)) => self.run_update(update, arg),
            Err(reject) => return CallOutcome::Reject(reject),
        };
        outcome(canister, result)
    }

    fn run_query(&self, method: QueryMethod, arg: &[u8]) -> MethodResult {
        let config = self.limits.decoder_config();
        match method {
            QueryMethod::CounterGet => {
                decode::<()>(arg, &config)?;
                encode((self.counter.value,))
            }
            QueryMethod::KvGet => {
                let (key,) = decode::<(String,)>(arg, &config)?;
                let value = self
                    .kv
                    .entries
                    .get(&key)
                    .map(|v| serde_bytes::Bytes::new(v));
                encode((value,))
            }
            QueryMethod::KvList => {
                let (cursor, count) = decode::<(Option<String>, u32)>(arg, &config)?;
                encode((self.kv_list(cursor.as_deref(), count),))
            }
            QueryMethod::CandidInterface(did) => {
                decode::<()>(arg, &config)?;
                encode((did,))
            }
        }
    }

    fn run_update(&mut self, method: UpdateMethod, arg: &[u8]) -> MethodResult {
        let config = self.limits.decoder_config();
        match method {
            UpdateMethod::CounterIncrement => {
                decode::<()>(arg, &config)?;
                self.counter_add(1)
            }
            UpdateMethod::CounterAdd => {
                let (amount,) = decode::<(u64,)>(arg, &config)?;
                self.counter_add(amount)
            }
            UpdateMethod::KvPut => {
                let (key, value) = decode::<(String, ByteBuf)>(arg, &config)?;
                self.kv_put(key, value.into_vec())?;
                encode(())
            }
            UpdateMethod::KvDelete => {
                let (key,) = decode::<(String,)>(arg, &config)?;
                encode((self.kv_delete(&key),))
            }
        }
    }

    fn counter_add(&mut self, amount: u64) -> MethodResult {
        let Some(value) = self.counter.value.checked_add(amount) else {
            return Err(MethodError::Trap(format!(
                "counter overflow: {} + {amount} does not fit in nat64",
                self.counter.value
            )));
        };
        self.counter.value = value;
        encode((value,))
    }

    /// Keys strictly after `cursor` (from the first key without one), at most `count` and at most
    /// `kv_list_keys_max`.
    fn kv_list(&self, cursor: Option<&str>, count: u32) -> Vec<&str> {
        let limit = count.min(self.limits.kv_list_keys_max) as usize;
        let start = match cursor {
            Some(cursor) => Bound::Excluded(cursor),
            None => Bound::Unbounded,
        };
        self.kv
            .entries
            .range::<str, _>((start, Bound::Unbounded))
            .take(limit)
            .map(|(key, _)| key.as_str())
            .collect()
    }

    /// Stores `value` under `key` after checking every bound, so a refused put changes nothing.
    fn kv_put(&mut self, key: String, value: Vec<u8>) -> Result<(), MethodError> {
        let limits = &self.limits;
        if key.len() > limits.kv_key_bytes_max {
            return Err(MethodError::Reject(format!(
                "key of {} bytes exceeds the limit of {} bytes",
                key.len(),
                limits.kv_key_bytes_max
            )));
        }
        if value.len() > limits.kv_value_bytes_max {
            return Err(MethodError::Reject(format!(
                "value of {} bytes exceeds the limit of {} bytes",
                value.len(),
                limits.kv_value_bytes_max
            )));
        }
        let old_bytes = self.kv.entries.get(&key).map(|old| key.len() + old.len());
        if old_bytes.is_none() && self.kv.entries.len() >= limits.kv_keys_max {
            return Err(MethodError::Reject(format!(
                "the store holds {} keys, its limit; delete some first",
                limits.kv_keys_max
            )));
        }
        let bytes = self.kv.bytes - old_bytes.unwrap_or(0) + key.len() + value.len();
        if bytes > limits.kv_store_bytes_max {
            return Err(MethodError::Reject(format!(
                "the store would hold {bytes} bytes, over its limit of {} bytes",
                limits.kv_store_bytes_max
            )));
        }
        self.kv.bytes = bytes;
        self.kv.entries.insert(key, value);
        Ok(())
    }

    fn kv_delete(&mut self, key: &str) -> bool {
        match self.kv.entries.remove(key) {
            Some(value) => {
                self.kv.bytes -= key.len() + value.len();
                true
            }
            None => false,
        }
    }
}

/// Finds a method by canister and name, with the IC's rejects for a missing canister or method.
fn resolve(canister: &Principal, method: &str, kind: CallKind) -> Result<Method, Reject> {
    let methods: &[(&str, Method)] = if *canister == counter_canister_id() {
        &[
            ("get", Method::Query(QueryMethod::CounterGet)),
            ("increment", Method::Update(UpdateMethod::CounterIncrement)),
            ("add", Method::Update(UpdateMethod::CounterAdd)),
            (
                CANDID_INTERFACE_METHOD,
                Method::Query(QueryMethod::CandidInterface(COUNTER_DID)),
            ),
        ]
    } else if *canister == kv_canister_id() {
        &[
            ("get", Method::Query(QueryMethod::KvGet)),
            ("put", Method::Update(UpdateMethod::KvPut)),
            ("delete", Method::Update(UpdateMethod::KvDelete)),
            ("list", Method::Query(QueryMethod::KvList)),
            (
                CANDID_INTERFACE_METHOD,
                Method::Query(QueryMethod::CandidInterface(KV_DID)),
            ),
        ]
    } else {
        return Err(Reject {
            code: RejectCode::DestinationInvalid,
            message: format!("Canister {canister} not found"),
            error_code: "IC0301",
        });
    };
    match methods.iter().find(|(name, _)| *name == method) {
        Some((_, found)) => Ok(*found),
        None => Err(method_not_found(canister, method, kind)),
    }
}

/// Turns a method's result into the IC's outcome, naming the canister as the IC's messages do.
fn outcome(canister: &Principal, result: MethodResult) -> CallOutcome {
    match result {
        Ok(reply) => CallOutcome::Reply(reply),
        Err(MethodError::Trap(message)) => CallOutcome::Reject(Reject {
            code: RejectCode::CanisterError,
            message: format!("Canister {canister} trapped explicitly: {message}"),
            error_code: "IC0503",
        }),
        Err(MethodError::Reject(message)) => CallOutcome::Reject(Reject {
            code: RejectCode::CanisterReject,
            message,
            error_code: "IC0406",
        }),
    }
}

/// Decodes a method's arguments under the bounded configuration; a failure is a trap, as in a
/// Rust canister whose generated entry point cannot decode its arguments.
fn decode<'a, Args: ArgumentDecoder<'a>>(
    arg: &'a [u8],
    config: &DecoderConfig,
) -> Result<Args, MethodError> {
    candid::utils::decode_args_with_config(arg, config)
        .map_err(|error| MethodError::Trap(format!("failed to decode call arguments: {error}")))
}

/// Encodes a reply. Our own reply types always encode; a failure would be our bug, reported as a
/// trap rather than a panic on the executor.
fn encode<Args: ArgumentEncoder>(reply: Args) -> MethodResult {
    candid::utils::encode_args(reply)
        .map_err(|error| MethodError::Trap(format!("failed to encode the reply: {error}")))
}

/// The IC's reject for a method the canister does not export for this kind of call.
fn method_not_found(canister: &Principal, method: &str, kind: CallKind) -> Reject {
    let kind = match kind {
        CallKind::Query => "query",
        CallKind::Update => "update",
    };
    Reject {
        code: RejectCode::DestinationInvalid,
        message: format!(
            "Canister {canister} has no {kind} method '{}'",
            method.escape_debug()
        ),
        error_code: "IC0536",
    }
}

// ----- State files -----

/// Domain separator of the state hash, so it can never equal a hash of anything else.
const STATE_HASH_DOMAIN: &[u8] = b"\x14icn-canisters-state";

/// One canister's serialized state: the file name in a checkpoint and its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// Why a checkpoint's canister files could not be loaded. Files arrive by state sync, so they are
/// treated as untrusted input: every failure is an error value naming the file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("canister state file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("canister state file {name}: missing")]
    Missing { name: String },
    #[error("canister state file {name}: {source}")]
    Invalid {
        name: String,
        source: CanisterStateError,
    },
}

impl Canisters {
    /// The file name of a canister's state: its textual id.
    pub fn state_file_name(canister: &Principal) -> String {
        format!("{canister}.bin")
    }

    /// Every canister's state as deterministic bytes, in [`Canisters::canister_ids`] order.
    pub fn state_files(&self) -> Vec<StateFile> {
        let counter = encode_counter_state(self.counter.value);
        let kv = encode_kv_state(&self.kv.entries);
        vec![
            StateFile {
                name: Canisters::state_file_name(&counter_canister_id()),
                bytes: counter,
            },
            StateFile {
                name: Canisters::state_file_name(&kv_canister_id()),
                bytes: kv,
            },
        ]
    }

    /// SHA-256 over every state file's name and bytes, length-prefixed, under a domain
    /// separator: equal exactly when the states are.
    pub fn state_hash(&self) -> [u8; 32] {
        let mut hasher = boring::sha::Sha256::new();
        hasher.update(STATE_HASH_DOMAIN);
        for file in self.state_files() {
            hasher.update(&(file.name.len() as u64).to_le_bytes());
            hasher.update(file.name.as_bytes());
            hasher.update(&(file.bytes.len() as u64).to_le_bytes());
            hasher.update(&file.bytes);
        }
        hasher.finish()
    }

    /// Rebuilds the canisters from their state files, checking every bound of `limits` (a file
    /// from a peer must not hold more than our own canisters would accept) and that the bytes are
    /// exactly what [`Canisters::state_files`] writes, so loading and writing back is the
    /// identity.
    pub fn from_state_files(
        limits: CanisterLimits,
        files: &[StateFile],
    ) -> Result<Canisters, StateError> {
        let find = |canister: &Principal| {
            let name = Canisters::state_file_name(canister);
            files
                .iter()
                .find(|file| file.name == name)
                .ok_or(StateError::Missing { name })
        };
        let counter_file = find(&counter_canister_id())?;
        let kv_file = find(&kv_canister_id())?;
        let invalid = |file: &StateFile| {
            let name = file.name.clone();
            move |source| StateError::Invalid { name, source }
        };
        let value = decode_counter_state(&counter_file.bytes).map_err(invalid(counter_file))?;
        let (entries, bytes) =
            decode_kv_state(&kv_file.bytes, &limits.kv_state_limits()).map_err(invalid(kv_file))?;
        Ok(Canisters {
            limits,
            counter: Counter { value },
            kv: KvStore { entries, bytes },
        })
    }

    /// Writes one file per canister into `dir` (which must exist), each synced to disk. The
    /// checkpoint store makes the directory appear atomically.
    pub fn write_state(&self, dir: &Path) -> Result<(), StateError> {
        for file in self.state_files() {
            let path = dir.join(&file.name);
            write_synced(&path, &file.bytes).map_err(|source| StateError::Io { path, source })?;
        }
        Ok(())
    }

    /// Loads the state [`Canisters::write_state`] wrote. A file larger than the limits allow is
    /// refused from its length, before it is read.
    pub fn read_state(dir: &Path, limits: CanisterLimits) -> Result<Canisters, StateError> {
        let size_max = limits.kv_state_limits().file_bytes_max();
        let mut files = Vec::with_capacity(2);
        for canister in Canisters::canister_ids() {
            let name = Canisters::state_file_name(&canister);
            let path = dir.join(&name);
            let bytes = read_bounded(&path, size_max).map_err(|source| StateError::Io {
                path: path.clone(),
                source,
            })?;
            files.push(StateFile { name, bytes });
        }
        Canisters::from_state_files(limits, &files)
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn read_bounded(path: &Path, size_max: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len > size_max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{len} bytes, over the limit of {size_max}"),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // `take` guards against a file that grows between the length check and the read.
    file.take(size_max).read_to_end(&mut bytes)?;
    Ok(bytes)
}

impl fmt::Display for CallOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallOutcome::Reply(bytes) => write!(f, "reply of {} bytes", bytes.len()),
            CallOutcome::Reject(reject) => write!(
                f,
                "reject {} ({}): {}",
                reject.code.as_u64(),
                reject.error_code,
                reject.message
            ),
        }
    }
}

#[cfg(test)]
mod tests;
