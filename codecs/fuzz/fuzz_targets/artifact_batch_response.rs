#![no_main]

use libfuzzer_sys::fuzz_target;

// Decodes; on success re-encodes and asserts the round trip (see icn_codecs::fuzzing).
fuzz_target!(|data: &[u8]| {
    let _ = icn_codecs::fuzzing::artifact_batch_response(data);
});
