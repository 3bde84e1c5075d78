//! Raw bytes as a client's DNS query, through the DNS proxy's policing: parse, match on the
//! wire labels, re-encode or answer. `fuzz_query` panics when an invariant is violated
//! (an allowed query must re-encode to exactly the checked question; a built answer must
//! parse and echo the ID).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    dns_proxy::message::fuzz_query(bytes);
});
