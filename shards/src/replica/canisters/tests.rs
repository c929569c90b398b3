use std::fs;

use candid::{Decode, Encode};

use super::*;

/// A fresh folder under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("icn-canisters-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Small bounds so the limit tests stay fast and exact.
fn small_limits() -> CanisterLimits {
    CanisterLimits {
        kv_key_bytes_max: 8,
        kv_value_bytes_max: 16,
        kv_keys_max: 3,
        kv_store_bytes_max: 40,
        kv_list_keys_max: 2,
        candid_decoding_cost_max: 4096,
        candid_skipping_cost_max: 1000,
    }
}

fn reply(outcome: CallOutcome) -> Vec<u8> {
    match outcome {
        CallOutcome::Reply(bytes) => bytes,
        CallOutcome::Reject(reject) => panic!("expected a reply, got {reject:?}"),
    }
}

fn reject(outcome: CallOutcome) -> Reject {
    match outcome {
        CallOutcome::Reject(reject) => reject,
        CallOutcome::Reply(bytes) => panic!("expected a reject, got a reply of {bytes:?}"),
    }
}

fn update(canisters: &mut Canisters, canister: Principal, method: &str, arg: Vec<u8>) -> Vec<u8> {
    reply(canisters.execute(&canister, method, &arg, CallKind::Update))
}

fn query(canisters: &Canisters, canister: Principal, method: &str, arg: Vec<u8>) -> Vec<u8> {
    reply(canisters.query(&canister, method, &arg))
}

fn put(canisters: &mut Canisters, key: &str, value: &[u8]) -> CallOutcome {
    let arg = Encode!(&key, &serde_bytes::Bytes::new(value)).unwrap();
    canisters.execute(&kv_canister_id(), "put", &arg, CallKind::Update)
}

fn get(canisters: &Canisters, key: &str) -> Option<Vec<u8>> {
    let bytes = query(canisters, kv_canister_id(), "get", Encode!(&key).unwrap());
    Decode!(&bytes, Option<serde_bytes::ByteBuf>)
        .unwrap()
        .map(ByteBuf::into_vec)
}

fn list(canisters: &Canisters, cursor: Option<&str>, count: u32) -> Vec<String> {
    let arg = Encode!(&cursor, &count).unwrap();
    let bytes = query(canisters, kv_canister_id(), "list", arg);
    Decode!(&bytes, Vec<String>).unwrap()
}

#[test]
fn canister_ids_are_the_documented_ones() {
    assert_eq!(
        counter_canister_id().to_string(),
        "rwlgt-iiaaa-aaaaa-aaaaa-cai"
    );
    assert_eq!(kv_canister_id().to_string(), "rrkah-fqaaa-aaaaa-aaaaq-cai");
    assert_eq!(
        Canisters::state_file_name(&kv_canister_id()),
        "rrkah-fqaaa-aaaaa-aaaaq-cai.bin"
    );
}

#[test]
fn counter_get_increment_add() {
    let mut canisters = Canisters::new(CanisterLimits::default());
    let counter = counter_canister_id();
    let get = |c: &Canisters| Decode!(&query(c, counter, "get", Encode!().unwrap()), u64).unwrap();
    assert_eq!(get(&canisters), 0);
    let bytes = update(&mut canisters, counter, "increment", Encode!().unwrap());
    assert_eq!(Decode!(&bytes, u64).unwrap(), 1);
    let bytes = update(&mut canisters, counter, "add", Encode!(&41u64).unwrap());
    assert_eq!(Decode!(&bytes, u64).unwrap(), 42);
    assert_eq!(get(&canisters), 42);
    // A query method called as an update runs (replicated) and changes nothing.
    let bytes = update(&mut canisters, counter, "get", Encode!().unwrap());
    assert_eq!(Decode!(&bytes, u64).unwrap(), 42);
}

#[test]
fn counter_add_overflow_traps_and_keeps_the_value() {
    let mut canisters = Canisters::new(CanisterLimits::default());
    let counter = counter_canister_id();
    update(
        &mut canisters,
        counter,
        "add",
        Encode!(&(u64::MAX - 1)).unwrap(),
    );
    let before = canisters.state_hash();
    let refused =
        reject(canisters.execute(&counter, "add", &Encode!(&2u64).unwrap(), CallKind::Update));
    assert_eq!(refused.code, RejectCode::CanisterError);
    assert_eq!(refused.error_code, "IC0503");
    assert!(
        refused.message.starts_with(
            "Canister rwlgt-iiaaa-aaaaa-aaaaa-cai trapped explicitly: counter overflow"
        ),
        "{}",
        refused.message
    );
    assert_eq!(canisters.state_hash(), before);
    let bytes = update(&mut canisters, counter, "increment", Encode!().unwrap());
    assert_eq!(Decode!(&bytes, u64).unwrap(), u64::MAX);
    let refused =
        reject(canisters.execute(&counter, "increment", &Encode!().unwrap(), CallKind::Update));
    assert_eq!(refused.code, RejectCode::CanisterError);
}

#[test]
fn kv_put_get_delete() {
    let mut canisters = Canisters::new(CanisterLimits::default());
    assert_eq!(get(&canisters, "a"), None);
    let bytes = reply(put(&mut canisters, "a", b"one"));
    // `put` replies with no values: the empty argument list.
    Decode!(&bytes).unwrap();
    assert_eq!(bytes, Encode!().unwrap());
    assert_eq!(get(&canisters, "a"), Some(b"one".to_vec()));
    reply(put(&mut canisters, "a", b"uno"));
    assert_eq!(get(&canisters, "a"), Some(b"uno".to_vec()));
    assert_eq!(canisters.kv_depths(), KvDepths { keys: 1, bytes: 4 });
    // Empty keys and values are values like any other.
    reply(put(&mut canisters, "", b""));
    assert_eq!(get(&canisters, ""), Some(Vec::new()));

    let kv = kv_canister_id();
    let deleted = update(&mut canisters, kv, "delete", Encode!(&"a").unwrap());
    assert!(Decode!(&deleted, bool).unwrap());
    let deleted = update(&mut canisters, kv, "delete", Encode!(&"a").unwrap());
    assert!(!Decode!(&deleted, bool).unwrap());
    assert_eq!(get(&canisters, "a"), None);
    assert_eq!(canisters.kv_depths(), KvDepths { keys: 1, bytes: 0 });
}

#[test]
fn kv_list_pages_after_the_cursor_and_caps_the_count() {
    let limits = CanisterLimits {
        kv_list_keys_max: 3,
        ..CanisterLimits::default()
    };
    let mut canisters = Canisters::new(limits);
    for key in ["d", "b", "a", "e", "c"] {
        reply(put(&mut canisters, key, key.as_bytes()));
    }
    assert_eq!(list(&canisters, None, 2), ["a", "b"]);
    assert_eq!(list(&canisters, Some("b"), 2), ["c", "d"]);
    // The cursor need not be a stored key.
    assert_eq!(list(&canisters, Some("bb"), 10), ["c", "d", "e"]);
    // Asking for more than the cap returns the cap.
    assert_eq!(list(&canisters, None, u32::MAX), ["a", "b", "c"]);
    assert_eq!(list(&canisters, Some("e"), 10), Vec::<String>::new());
    assert_eq!(list(&canisters, None, 0), Vec::<String>::new());
}

#[test]
fn kv_put_over_each_bound_rejects_and_changes_nothing() {
    let mut canisters = Canisters::new(small_limits());
    // Exactly at the key and value bounds is accepted.
    reply(put(&mut canisters, "12345678", &[7; 16]));
    let before = canisters.state_hash();
    let expect_reject = |outcome: CallOutcome, needle: &str| {
        let refused = reject(outcome);
        assert_eq!(refused.code, RejectCode::CanisterReject);
        assert_eq!(refused.error_code, "IC0406");
        assert!(refused.message.contains(needle), "{}", refused.message);
    };
    expect_reject(put(&mut canisters, "123456789", b"x"), "key of 9 bytes");
    expect_reject(put(&mut canisters, "k", &[0; 17]), "value of 17 bytes");
    assert_eq!(canisters.state_hash(), before);

    // 24 bytes stored; 16 more fit the 40-byte store exactly, one more does not.
    reply(put(&mut canisters, "b", &[1; 15]));
    expect_reject(put(&mut canisters, "c", b"x"), "over its limit of 40 bytes");
    // Overwriting counts the old value out first.
    reply(put(&mut canisters, "b", &[2; 14]));
    reply(put(&mut canisters, "c", b""));
    // Three keys is the bound: a fourth new key is refused, an overwrite is not.
    let full = canisters.state_hash();
    expect_reject(put(&mut canisters, "d", b""), "holds 3 keys");
    assert_eq!(canisters.state_hash(), full);
    reply(put(&mut canisters, "b", &[3; 13]));
    reply(put(&mut canisters, "c", b"y"));
    assert_eq!(canisters.kv_depths(), KvDepths { keys: 3, bytes: 40 });
}

#[test]
fn unknown_canister_and_method_are_destination_invalid() {
    let mut canisters = Canisters::new(CanisterLimits::default());
    let nobody = Principal::from_canister_index(7);
    let refused = reject(canisters.execute(&nobody, "get", &Encode!().unwrap(), CallKind::Query));
    assert_eq!(refused.code, RejectCode::DestinationInvalid);
    assert_eq!(refused.error_code, "IC0301");
    assert_eq!(refused.message, format!("Canister {nobody} not found"));

    let counter = counter_canister_id();
    let refused = reject(canisters.execute(&counter, "nope", &[], CallKind::Update));
    assert_eq!(refused.code, RejectCode::DestinationInvalid);
    assert_eq!(refused.error_code, "IC0536");
    assert_eq!(
        refused.message,
        "Canister rwlgt-iiaaa-aaaaa-aaaaa-cai has no update method 'nope'"
    );
    let refused = reject(canisters.execute(&kv_canister_id(), "nope", &[], CallKind::Query));
    assert_eq!(
        refused.message,
        "Canister rrkah-fqaaa-aaaaa-aaaaq-cai has no query method 'nope'"
    );
}

#[test]
fn update_methods_called_as_queries_are_refused() {
    let mut canisters = Canisters::new(CanisterLimits::default());
    let cases = [
        (counter_canister_id(), "increment", Encode!().unwrap()),
        (counter_canister_id(), "add", Encode!(&1u64).unwrap()),
        (
            kv_canister_id(),
            "put",
            Encode!(&"k", &serde_bytes::Bytes::new(b"v")).unwrap(),
        ),
        (kv_canister_id(), "delete", Encode!(&"k").unwrap()),
    ];
    let before = canisters.state_hash();
    for (canister, method, arg) in cases {
        let refused = reject(canisters.execute(&canister, method, &arg, CallKind::Query));
        assert_eq!(refused.code, RejectCode::DestinationInvalid, "{method}");
        assert_eq!(
            refused.message,
            format!("Canister {canister} has no query method '{method}'")
        );
    }
    assert_eq!(canisters.state_hash(), before);
}

#[test]
fn bad_arguments_trap_with_a_message() {
    let mut canisters = Canisters::new(CanisterLimits::default());
    let counter = counter_canister_id();
    let kv = kv_canister_id();
    let cases: Vec<(Principal, &str, Vec<u8>)> = vec![
        // Not Candid at all.
        (counter, "add", b"garbage".to_vec()),
        (kv, "get", Vec::new()),
        // Candid of the wrong type.
        (counter, "add", Encode!(&"seven").unwrap()),
        (kv, "put", Encode!(&"k").unwrap()),
        (kv, "list", Encode!(&5u32).unwrap()),
        // Truncated.
        (counter, "add", Encode!(&5u64).unwrap()[..9].to_vec()),
    ];
    let before = canisters.state_hash();
    for (canister, method, arg) in cases {
        let refused = reject(canisters.execute(&canister, method, &arg, CallKind::Update));
        assert_eq!(refused.code, RejectCode::CanisterError, "{method} {arg:?}");
        assert!(
            refused.message.starts_with(&format!(
                "Canister {canister} trapped explicitly: failed to decode call arguments: "
            )),
            "{}",
            refused.message
        );
    }
    assert_eq!(canisters.state_hash(), before);
}

#[test]
fn hostile_arguments_hit_the_decoding_bounds() {
    let canisters = Canisters::new(small_limits());
    let kv = kv_canister_id();
    // A text over the decoding cost (4096) is refused while decoding, before any method runs.
    let long_key = "x".repeat(8192);
    let refused = reject(canisters.query(&kv, "get", &Encode!(&long_key).unwrap()));
    assert_eq!(refused.code, RejectCode::CanisterError);
    assert!(
        refused.message.contains("failed to decode"),
        "{}",
        refused.message
    );
    // Extra arguments are skipped (Candid subtyping) within the costs (skipped bytes count 50
    // times against the decoding cost) ...
    let arg = Encode!(&"k", &vec![0u64; 2]).unwrap();
    query(&canisters, kv, "get", arg);
    // ... and refused beyond it.
    let arg = Encode!(&"k", &vec![0u64; 1000]).unwrap();
    let refused = reject(canisters.query(&kv, "get", &arg));
    assert_eq!(refused.code, RejectCode::CanisterError);
    // A vector claiming 2^32 elements with no bytes behind it fails without allocating them.
    let mut arg = b"DIDL\x01\x6d\x71\x01\x00".to_vec();
    arg.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x10]);
    let refused = reject(canisters.query(&kv, "get", &arg));
    assert_eq!(refused.code, RejectCode::CanisterError);
    // Nested `opt` types with a value nested as deep: a shallow one fails the type check, a deep
    // one is refused while the type table is parsed, before any recursion over the value.
    for depth in [3, 10_000] {
        let refused = reject(canisters.query(&kv, "get", &nested_opt_arg(depth)));
        assert_eq!(refused.code, RejectCode::CanisterError, "depth {depth}");
        assert!(
            refused.message.contains("failed to decode"),
            "{}",
            refused.message
        );
    }
}

/// `DIDL` with `depth` chained `opt` types ending in `text`, and a value of that type.
fn nested_opt_arg(depth: u32) -> Vec<u8> {
    let mut arg = b"DIDL".to_vec();
    leb128(&mut arg, depth);
    for index in 1..depth {
        arg.push(0x6e);
        leb128(&mut arg, index);
    }
    arg.extend_from_slice(&[0x6e, 0x71, 0x01, 0x00]);
    arg.extend(std::iter::repeat_n(0x01, depth as usize));
    arg.extend_from_slice(b"\x01k");
    arg
}

fn leb128(out: &mut Vec<u8>, mut value: u32) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[test]
fn the_largest_put_decodes_with_the_default_limits() {
    let limits = CanisterLimits::default();
    let mut canisters = Canisters::new(limits);
    let key = "k".repeat(limits.kv_key_bytes_max);
    let value = vec![0xab; limits.kv_value_bytes_max];
    reply(put(&mut canisters, &key, &value));
    assert_eq!(get(&canisters, &key), Some(value));
}

#[test]
fn candid_interface_is_served_as_a_query() {
    let canisters = Canisters::new(CanisterLimits::default());
    for (canister, did) in [
        (counter_canister_id(), COUNTER_DID),
        (kv_canister_id(), KV_DID),
    ] {
        let bytes = query(
            &canisters,
            canister,
            CANDID_INTERFACE_METHOD,
            Encode!().unwrap(),
        );
        assert_eq!(Decode!(&bytes, String).unwrap(), did);
    }
}

/// A fixed mix of every method, including refused calls, as a block of ingress would bring.
fn run_workload(canisters: &mut Canisters) -> Vec<CallOutcome> {
    let counter = counter_canister_id();
    let kv = kv_canister_id();
    let mut outcomes = Vec::new();
    for i in 0u64..200 {
        let key = format!("key-{:03}", (i * 37) % 64);
        let (canister, method, arg) = match i % 7 {
            0 => (counter, "increment", Encode!().unwrap()),
            1 => (counter, "add", Encode!(&(i * i)).unwrap()),
            2 | 3 => {
                let value = vec![i as u8; (i as usize * 13) % 40];
                (
                    kv,
                    "put",
                    Encode!(&key, &serde_bytes::ByteBuf::from(value)).unwrap(),
                )
            }
            4 => (kv, "delete", Encode!(&key).unwrap()),
            5 => (kv, "list", Encode!(&Some(key), &5u32).unwrap()),
            _ => (kv, "put", b"not candid".to_vec()),
        };
        outcomes.push(canisters.execute(&canister, method, &arg, CallKind::Update));
    }
    outcomes
}

#[test]
fn same_calls_give_identical_state_bytes_and_hash() {
    let mut first = Canisters::new(CanisterLimits::default());
    let mut second = Canisters::new(CanisterLimits::default());
    let initial = first.state_hash();
    let outcomes = run_workload(&mut first);
    assert_eq!(run_workload(&mut second), outcomes);
    assert_eq!(first.state_files(), second.state_files());
    assert_eq!(first.state_hash(), second.state_hash());
    assert_ne!(first.state_hash(), initial);
    // The workload made some state: not a comparison of two empty stores.
    assert!(first.kv_depths().keys > 10);
}

#[test]
fn state_hash_depends_on_every_byte() {
    let mut canisters = Canisters::new(CanisterLimits::default());
    run_workload(&mut canisters);
    let hash = canisters.state_hash();
    // Any change through the canisters' own methods changes the hash ...
    let mut changed = canisters.clone();
    reply(put(&mut changed, "key-000", b"different"));
    assert_ne!(changed.state_hash(), hash);
    let mut changed = canisters.clone();
    update(
        &mut changed,
        counter_canister_id(),
        "increment",
        Encode!().unwrap(),
    );
    assert_ne!(changed.state_hash(), hash);
    // ... and the hash covers every byte of every file: a state that differs in any one byte
    // of its files (and still loads) hashes differently.
    let files = canisters.state_files();
    for (index, file) in files.iter().enumerate() {
        for position in 0..file.bytes.len() {
            let mut mutated = files.clone();
            mutated[index].bytes[position] ^= 0x01;
            if let Ok(loaded) = Canisters::from_state_files(CanisterLimits::default(), &mutated) {
                assert_eq!(loaded.state_files(), mutated);
                assert_ne!(loaded.state_hash(), hash, "file {index} byte {position}");
            }
        }
    }
}

#[test]
fn state_files_round_trip_through_a_directory() {
    let mut canisters = Canisters::new(CanisterLimits::default());
    run_workload(&mut canisters);
    let dir = TempDir::new("round-trip");
    canisters.write_state(&dir.0).unwrap();
    let names: Vec<_> = {
        let mut names: Vec<_> = fs::read_dir(&dir.0)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        names,
        [
            "rrkah-fqaaa-aaaaa-aaaaq-cai.bin",
            "rwlgt-iiaaa-aaaaa-aaaaa-cai.bin"
        ]
    );
    let loaded = Canisters::read_state(&dir.0, CanisterLimits::default()).unwrap();
    assert_eq!(loaded, canisters);
    assert_eq!(loaded.state_hash(), canisters.state_hash());
    assert_eq!(loaded.kv_depths(), canisters.kv_depths());
    // The loaded canisters keep executing where the written ones left off.
    let mut loaded = loaded;
    let next =
        |c: &mut Canisters| update(c, counter_canister_id(), "increment", Encode!().unwrap());
    assert_eq!(next(&mut loaded), next(&mut canisters));
}

#[test]
fn read_state_refuses_missing_oversized_and_corrupt_files() {
    let mut canisters = Canisters::new(small_limits());
    reply(put(&mut canisters, "a", b"1234"));
    let dir = TempDir::new("corrupt");
    canisters.write_state(&dir.0).unwrap();
    let kv_path = dir.0.join(Canisters::state_file_name(&kv_canister_id()));

    // A file over what the limits allow is refused from its length.
    let good = fs::read(&kv_path).unwrap();
    fs::write(&kv_path, vec![0; 1 << 20]).unwrap();
    let error = Canisters::read_state(&dir.0, small_limits()).unwrap_err();
    assert!(matches!(error, StateError::Io { .. }), "{error}");

    // Trailing bytes, a bad magic, and a state over the bounds of the reader's limits.
    let mut trailing = good.clone();
    trailing.push(0);
    fs::write(&kv_path, &trailing).unwrap();
    let error = Canisters::read_state(&dir.0, small_limits()).unwrap_err();
    assert!(error.to_string().contains("trailing"), "{error}");
    fs::write(&kv_path, &good).unwrap();
    let tighter = CanisterLimits {
        kv_value_bytes_max: 3,
        ..small_limits()
    };
    let error = Canisters::read_state(&dir.0, tighter).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("value length of 4 over the limit of 3"),
        "{error}"
    );
    assert_eq!(
        Canisters::read_state(&dir.0, small_limits()).unwrap(),
        canisters
    );

    fs::remove_file(&kv_path).unwrap();
    let error = Canisters::read_state(&dir.0, small_limits()).unwrap_err();
    assert!(matches!(error, StateError::Io { .. }), "{error}");
}

#[test]
fn state_decoding_never_panics_on_truncated_or_shuffled_bytes() {
    let mut canisters = Canisters::new(CanisterLimits::default());
    run_workload(&mut canisters);
    let files = canisters.state_files();
    let mut refused = 0;
    for (index, file) in files.iter().enumerate() {
        for len in 0..file.bytes.len() {
            let mut truncated = files.clone();
            truncated[index].bytes.truncate(len);
            assert!(Canisters::from_state_files(CanisterLimits::default(), &truncated).is_err());
            refused += 1;
        }
    }
    let error = Canisters::from_state_files(CanisterLimits::default(), &files[..1]).unwrap_err();
    assert!(
        matches!(&error, StateError::Missing { name } if name == "rrkah-fqaaa-aaaaa-aaaaq-cai.bin"),
        "{error}"
    );
    assert!(refused > 100);
}

/// The arguments of remote callers go straight into Candid: every truncation and every single
/// bit flip of a valid argument to every method must give a reply or a reject, never a panic,
/// and a reject must leave the state as it was.
#[test]
fn mutated_arguments_never_panic_and_rejects_change_nothing() {
    let counter = counter_canister_id();
    let kv = kv_canister_id();
    let calls: Vec<(Principal, &str, Vec<u8>)> = vec![
        (counter, "get", Encode!().unwrap()),
        (counter, "add", Encode!(&3u64).unwrap()),
        (kv, "get", Encode!(&"key").unwrap()),
        (
            kv,
            "put",
            Encode!(&"key", &serde_bytes::Bytes::new(b"value")).unwrap(),
        ),
        (kv, "delete", Encode!(&"key").unwrap()),
        (kv, "list", Encode!(&Some("a"), &3u32).unwrap()),
    ];
    let mut base = Canisters::new(small_limits());
    reply(put(&mut base, "key", b"old"));
    let mut executed = 0;
    for (canister, method, arg) in calls {
        let mut variants: Vec<Vec<u8>> = (0..arg.len()).map(|len| arg[..len].to_vec()).collect();
        for position in 0..arg.len() {
            for bit in 0..8 {
                let mut flipped = arg.clone();
                flipped[position] ^= 1 << bit;
                variants.push(flipped);
            }
        }
        for variant in variants {
            let mut canisters = base.clone();
            match canisters.execute(&canister, method, &variant, CallKind::Update) {
                CallOutcome::Reply(_) => {}
                CallOutcome::Reject(reject) => {
                    assert_eq!(canisters, base, "{method} {variant:?}: {}", reject.message);
                    assert!(!reject.message.is_empty());
                }
            }
            executed += 1;
        }
    }
    assert!(executed > 500);
}
