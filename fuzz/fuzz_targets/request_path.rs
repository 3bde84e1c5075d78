//! Raw bytes as an HTTP/1.x request head, through the proxy's checks and policy decision;
//! `check_request_bytes` panics when an invariant of that path is violated.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    l7_proxy::fuzzing::check_request_bytes(bytes);
});
