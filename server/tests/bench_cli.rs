//! `faascale bench multicast` on loopback: real worker processes, the JSON contract, the group
//! shapes the planner chose, and clear errors for bad flags.

mod common;
use common::{faascale, last_json};

fn multicast(extra: &[&str]) -> std::process::Output {
    let mut args = vec!["bench", "multicast", "--nodes", "4", "--bytes", "4194304", "--blocks", "4", "--json"];
    args.extend_from_slice(extra);
    faascale(&args)
}

#[test]
fn faascale_plans_chains_for_the_cut_through_executor_and_every_copy_verifies() {
    for (forwarding, shape) in [("cut-through", "chain"), ("store-and-forward", "binomial")] {
        let out = multicast(&[
            "--sources",
            "1",
            "--algo",
            "faascale",
            "--chunk-bytes",
            "262144",
            "--plan-forwarding",
            forwarding,
        ]);
        assert!(out.status.success(), "{forwarding}: {}", String::from_utf8_lossy(&out.stderr));
        let v = last_json(&out);
        assert_eq!(v["verified"], true, "{v}");
        assert_eq!(v["group_shapes"], serde_json::json!([shape]), "{v}");
        assert_eq!(v["plan_forwarding"], forwarding, "{v}");
        assert_eq!(v["per_node_complete_s"].as_array().map(|a| a.len()), Some(4), "{v}");
        assert!(v["complete_s"].as_f64().unwrap() > 0.0, "{v}");
    }
}

#[test]
fn bad_flags_are_clear_errors() {
    for (extra, want) in [
        (vec!["--sources", "1", "--algo", "faascale", "--plan-forwarding", "teleport"], "--plan-forwarding teleport"),
        (vec!["--sources", "0", "--algo", "faascale"], "--sources 0"),
        (vec!["--sources", "1", "--algo", "serverlessllm"], "--algo serverlessllm"),
        (vec!["--sources", "1", "--algo", "faascale", "--transport", "rdma"], "--transport rdma"),
        (vec!["--sources", "1", "--algo", "faascale", "--transport", "verbs", "--verbs-port", "0"], "--verbs-port 0"),
    ] {
        let out = multicast(&extra);
        assert!(!out.status.success(), "{extra:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        let v = last_json(&out);
        let msg = v["error"].as_str().unwrap_or_else(|| panic!("{v}"));
        assert!(msg.contains(want), "expected {want} in {msg}");
    }
}

/// Over verbs every worker needs an RDMA device: where there is none (every machine this project
/// has) the run ends with an error naming the verbs transport and the device, not a hang; where
/// there is one, every copy verifies, planned store-and-forward.
#[test]
fn verbs_works_or_names_the_missing_device() {
    let out = multicast(&["--sources", "1", "--algo", "faascale", "--transport", "verbs", "--timeout-ms", "5000"]);
    let v = last_json(&out);
    if out.status.success() {
        assert_eq!(v["verified"], true, "{v}");
        assert_eq!(v["transport"], "verbs", "{v}");
        assert_eq!(v["plan_forwarding"], "store-and-forward", "{v}");
    } else {
        let msg = v["error"].as_str().unwrap_or_else(|| panic!("{v}"));
        assert!(msg.contains("verbs transport cannot open RDMA device"), "{msg}");
    }
}
