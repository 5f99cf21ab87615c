//! `faascale plan`: JSON on the last stdout line, every algorithm, SVG output, clear errors.

use std::process::Output;

mod common;
use common::{faascale, last_json};

fn plan(extra: &[&str]) -> Output {
    let mut args = vec![
        "plan",
        "--nodes",
        "9",
        "--sources",
        "2",
        "--model-bytes",
        "100000000",
        "--blocks",
        "8",
        "--link-gbps",
        "400",
    ];
    args.extend_from_slice(extra);
    faascale(&args)
}

#[test]
fn every_algorithm_reports_times_at_or_above_the_bound() {
    for algo in ["faascale", "binomial", "nccl", "faasnet", "serverlessllm"] {
        let out = plan(&["--algo", algo, "--json", "--chunk-bytes", "4194304"]);
        assert!(out.status.success(), "{algo}: {}", String::from_utf8_lossy(&out.stderr));
        let v = last_json(&out);
        let complete = v["complete_s"].as_f64().unwrap();
        let first = v["first_copy_s"].as_f64().unwrap();
        let lower = v["lower_bound_s"].as_f64().unwrap();
        assert!(complete >= lower && first <= complete && lower > 0.0, "{algo}: {v}");
        // The first collective copy leaves k = 2 uplinks (serverlessllm: the local tiers).
        let first_lower = v["first_copy_lower_bound_s"].as_f64().unwrap();
        assert!(first_lower > 0.0 && first_lower <= first, "{algo}: {v}");
        // 100 MB (padded to pages) at 50 GB/s
        assert!((lower - 0.002).abs() < 1e-4, "{lower}");
        let per_node = v["per_node_complete_s"].as_array().unwrap();
        assert_eq!(per_node.len(), 9);
        assert_eq!(per_node[0].as_f64(), Some(0.0), "sources hold the model from the start");
        assert_eq!(v["transfer_blocks"], 24);
        assert_eq!(v["algo"], algo);
    }
}

/// nccl without --chunk-bytes moves NCCL's own 512 KiB chunks; k sources bound the first copy
/// at S / (k·R) + latency, which faascale's k-way multicast nearly reaches and a chain does not.
#[test]
fn nccl_uses_its_own_chunks_and_the_first_copy_bound_is_k_way() {
    let v = last_json(&plan(&["--algo", "nccl", "--json"]));
    assert_eq!(v["chunk_bytes"], 524288, "{v}");
    let f = last_json(&plan(&["--algo", "faascale", "--json"]));
    let bound = f["first_copy_lower_bound_s"].as_f64().unwrap();
    // 100 MB (padded) over 2 uplinks of 50 GB/s, plus 10 µs.
    assert!((bound - (0.001 + 10e-6)).abs() < 1e-4, "{f}");
    assert!(f["first_copy_s"].as_f64().unwrap() < 1.5 * bound, "{f}");
    assert!(v["first_copy_s"].as_f64().unwrap() > 1.5 * bound, "{v}");
}

#[test]
fn faascale_first_copy_comes_early() {
    let v = last_json(&plan(&["--algo", "faascale", "--json", "--chunk-bytes", "1048576"]));
    let (first, complete) = (v["first_copy_s"].as_f64().unwrap(), v["complete_s"].as_f64().unwrap());
    assert!(first < 0.75 * complete, "{v}");
}

/// With cut-through pieces faascale plans each small group (here 2 sources, groups of 5 and 4
/// nodes) as a chain, which beats its store-and-forward binomial pipelines; the JSON says which
/// shapes and forwarding.
#[test]
fn cut_through_turns_a_small_group_into_a_chain() {
    let args = ["--algo", "faascale", "--json", "--chunk-bytes", "1048576"];
    let saf = last_json(&plan(&args));
    let mut with_pieces = args.to_vec();
    with_pieces.extend(["--piece-bytes", "65536"]);
    let ct = last_json(&plan(&with_pieces));
    assert_eq!(saf["group_shapes"], serde_json::json!(["binomial", "binomial"]), "{saf}");
    assert_eq!(saf["forwarding"], "store_and_forward", "{saf}");
    assert_eq!(ct["group_shapes"], serde_json::json!(["chain", "chain"]), "{ct}");
    assert_eq!(ct["forwarding"]["cut_through"]["piece_bytes"], 65536, "{ct}");
    let (a, b) = (saf["complete_s"].as_f64().unwrap(), ct["complete_s"].as_f64().unwrap());
    let lower = ct["lower_bound_s"].as_f64().unwrap();
    assert!(b < a && b >= lower, "store-and-forward {a}, cut-through {b}, bound {lower}");
}

#[test]
fn svg_has_a_row_per_node_and_a_bar_per_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.svg");
    let out = plan(&["--algo", "binomial", "--json", "--svg", path.to_str().unwrap()]);
    assert!(out.status.success());
    let v = last_json(&out);
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<rect").count() as u64, v["transfers"].as_u64().unwrap());
    assert_eq!(svg.matches(">node ").count(), 9);
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    let base = |nodes: &str, sources: &str, blocks: &str, gbps: &str| {
        faascale(&[
            "plan",
            "--nodes",
            nodes,
            "--sources",
            sources,
            "--model-bytes",
            "1000000",
            "--blocks",
            blocks,
            "--link-gbps",
            gbps,
            "--json",
        ])
    };
    for (out, want) in [
        (base("0", "1", "8", "400"), "--nodes"),
        (base("4", "5", "8", "400"), "--sources"),
        (base("4", "0", "8", "400"), "--sources"),
        (base("4", "1", "0", "400"), "--blocks"),
        (base("4", "1", "8", "0"), "--link-gbps"),
        (base("4", "1", "8", "-3"), "--link-gbps"),
        (base("4", "1", "8", "nan"), "--link-gbps"),
        (plan(&["--algo", "carrier-pigeon", "--json"]), "--algo"),
        (plan(&["--chunk-bytes", "1000", "--json"]), "chunk"),
        (plan(&["--chunk-bytes", "0", "--json"]), "chunk"),
        (plan(&["--piece-bytes", "0", "--json"]), "--piece-bytes"),
        (faascale(&["plan", "--nodes", "-2", "--model-bytes", "1", "--blocks", "1", "--link-gbps", "1", "--json"]), ""),
    ] {
        assert!(!out.status.success(), "{want}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        let v = last_json(&out);
        let msg = v["error"].as_str().unwrap_or_else(|| panic!("{v}"));
        assert!(msg.contains(want), "expected {want} in {msg}");
    }
    // without --json: an error on stderr, nothing on stdout
    let out = faascale(&["plan", "--nodes", "0", "--model-bytes", "1", "--blocks", "1", "--link-gbps", "1"]);
    assert!(!out.status.success() && out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nodes"));
}

#[test]
fn single_node_cluster_has_nothing_to_move() {
    let out = faascale(&[
        "plan",
        "--nodes",
        "1",
        "--sources",
        "1",
        "--model-bytes",
        "4096",
        "--blocks",
        "1",
        "--link-gbps",
        "1",
        "--json",
    ]);
    assert!(out.status.success());
    let v = last_json(&out);
    assert_eq!(v["complete_s"].as_f64(), Some(0.0));
    assert_eq!(v["transfers"], 0);
}
