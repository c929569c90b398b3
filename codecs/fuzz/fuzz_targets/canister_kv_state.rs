#![no_main]

use libfuzzer_sys::fuzz_target;

// Decodes; on success re-encodes and asserts the same bytes (see icn_codecs::fuzzing).
fuzz_target!(|data: &[u8]| {
    let _ = icn_codecs::fuzzing::canister_kv_state(data);
});
