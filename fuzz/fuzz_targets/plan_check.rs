//! Any byte string as multicast planner inputs: every plan (and every replan after the deaths
//! the bytes name) passes the independent checker `planner::check`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = planner::check::check_bytes(data) {
        panic!("{e}");
    }
});
