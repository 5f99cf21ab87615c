//! Any byte string as wire frames, MACed frames with a bit flipped, or control messages: the
//! decoder never panics, never over-reads, never accepts a forged frame (`rdma::fuzzing`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = rdma::fuzzing::check_bytes(data) {
        panic!("{e}");
    }
});
