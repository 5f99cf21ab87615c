//! `faascale bench hop` on loopback: two real processes joined by a hidden-state link, the JSON
//! contract, and clear errors for bad flags. No timing is asserted (a loaded CI machine decides
//! the figures); only that they are measured and ordered.

mod common;
use common::{faascale, last_json};

#[test]
fn bench_hop_hands_hidden_states_between_two_processes_and_reports_percentiles() {
    let out = faascale(&["bench", "hop", "--hops", "50", "--warmup", "5", "--rows", "2", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = last_json(&out);
    assert_eq!((v["hops"].as_u64(), v["rows"].as_u64(), v["width"].as_u64()), (Some(50), Some(2), Some(576)), "{v}");
    assert_eq!(v["batch_bytes"].as_u64(), Some(24 + 2 * 12 + 4 * 2 * 576), "{v}");
    let f = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {v}"));
    assert!(f("hop_ms_p50") > 0.0 && f("hop_ms_p50") <= f("hop_ms_p99") && f("hop_ms_p99") <= f("hop_ms_max"), "{v}");
    assert!(f("round_trip_ms_p50") > 0.0 && f("round_trip_ms_p50") <= f("round_trip_ms_p99"), "{v}");
    assert!(v["meets_target"].is_boolean(), "{v}");
}

#[test]
fn bench_hop_refuses_bad_flags_with_json_errors() {
    for (args, want) in [
        (vec!["--hops", "0"], "--hops"),
        (vec!["--width", "0"], "--width"),
        (vec!["--rows", "100000"], "frame limit"),
        (vec!["--timeout-ms", "0"], "timeout"),
    ] {
        let mut a = vec!["bench", "hop", "--json"];
        a.extend_from_slice(&args);
        let out = faascale(&a);
        assert!(!out.status.success(), "{args:?}");
        let e = last_json(&out)["error"].as_str().unwrap_or_default().to_string();
        assert!(e.contains(want), "{args:?}: {e}");
    }
}
