//! `faascale simulate`: JSON contract for one and several systems, the TTFT CDF plot, the real
//! trace, and clear errors for bad input.

mod common;
use common::{faascale, last_json};

const BURST: &str = "synthetic:rate=2,burst=50,burst_at_s=30,burst_len_s=15,duration_s=90";

#[test]
fn one_system_has_the_contract_fields() {
    let out = faascale(&[
        "simulate",
        "--trace",
        BURST,
        "--system",
        "faascale",
        "--nodes",
        "8",
        "--model",
        "llama-2-7b",
        "--seed",
        "3",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = last_json(&out);
    for k in [
        "ttft_s_p50",
        "ttft_s_p90",
        "ttft_s_p99",
        "gpu_seconds",
        "tpot_s_mean",
        "throughput_tokens_per_s",
        "slo_attainment",
    ] {
        assert!(v[k].as_f64().is_some_and(|x| x >= 0.0), "{k} missing in {v}");
    }
    assert!(v["requests"].as_u64().unwrap() > 100);
    assert!(v["ttft_s_p50"].as_f64() <= v["ttft_s_p99"].as_f64());
    // Same seed, same numbers.
    let again = last_json(&faascale(&[
        "simulate",
        "--trace",
        BURST,
        "--system",
        "faascale",
        "--nodes",
        "8",
        "--model",
        "llama-2-7b",
        "--seed",
        "3",
        "--json",
    ]));
    assert_eq!(v["ttft_s_p90"], again["ttft_s_p90"]);
    assert_eq!(v["gpu_seconds"], again["gpu_seconds"]);
}

#[test]
fn several_systems_and_their_cdfs() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("cdf.svg");
    let out = faascale(&[
        "simulate",
        "--trace",
        BURST,
        "--system",
        "faascale,serverlessllm,faasnet,nccl,always-warm",
        "--nodes",
        "8",
        "--model",
        "llama-2-7b,llama-2-13b",
        "--map",
        "round-robin",
        "--json",
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = last_json(&out);
    let systems = v["systems"].as_object().unwrap();
    assert_eq!(systems.len(), 5);
    for (name, s) in systems {
        assert!(s["ttft_s_p90"].as_f64().is_some(), "{name}: {s}");
        assert_eq!(s["requests"], systems["faascale"]["requests"]);
    }
    // The reference fleet holds every GPU all the time; the scale-out systems hold fewer.
    let warm = systems["always-warm"]["gpu_seconds"].as_f64().unwrap();
    assert!(systems["faascale"]["gpu_seconds"].as_f64().unwrap() < warm);
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"));
    assert_eq!(text.matches("<polyline").count(), 5);
}

/// `--seeds A-B` pools every request of every seed and gives each percentile, SLO and
/// GPU-seconds a 95 % interval that holds the point; it overrides `--seed`.
#[test]
fn seeds_pool_with_confidence_intervals() {
    let run = |extra: &[&str]| {
        let mut args = vec!["simulate", "--trace", BURST, "--system", "faascale,nccl", "--nodes", "8"];
        args.extend_from_slice(&["--model", "llama-2-7b", "--json"]);
        args.extend_from_slice(extra);
        let out = faascale(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        last_json(&out)
    };
    let v = run(&["--seeds", "1-4"]);
    let one = run(&["--seed", "1"]);
    let same = run(&["--seeds", "1-4", "--seed", "9"]);
    for k in ["ttft_s_p90", "ttft_s_p90_ci", "gpu_seconds", "requests"] {
        assert_eq!(v["systems"]["faascale"][k], same["systems"]["faascale"][k], "--seeds overrides --seed: {k}");
    }
    for (name, s) in v["systems"].as_object().unwrap() {
        assert_eq!(s["seeds"].as_array().unwrap().len(), 4, "{name}");
        assert!(s["requests"].as_u64().unwrap() > 2 * one["systems"][name]["requests"].as_u64().unwrap());
        for k in ["ttft_s_p50", "ttft_s_p90", "ttft_s_p99", "slo_attainment", "gpu_seconds"] {
            let x = s[k].as_f64().unwrap();
            let ci = s[format!("{k}_ci")].as_array().unwrap_or_else(|| panic!("{name}: no {k}_ci in {s}"));
            let (lo, hi) = (ci[0].as_f64().unwrap(), ci[1].as_f64().unwrap());
            assert!(lo <= x && x <= hi, "{name} {k}: {x} not in [{lo}, {hi}]");
        }
    }
    let out =
        faascale(&["simulate", "--trace", BURST, "--nodes", "4", "--model", "llama-2-7b", "--seeds", "5-2", "--json"]);
    assert!(last_json(&out)["error"].as_str().unwrap().contains("--seeds"));
}

#[test]
fn replays_the_azure_conversation_trace() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/traces/AzureLLMInferenceTrace_conv.csv");
    if !std::path::Path::new(path).exists() {
        eprintln!("skipped: {path} is not there");
        return;
    }
    let out = faascale(&[
        "simulate",
        "--trace",
        path,
        "--system",
        "faascale,nccl",
        "--nodes",
        "12",
        "--model",
        "llama-2-7b",
        "--speedup",
        "10",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = last_json(&out);
    assert_eq!(v["systems"]["faascale"]["requests"], 19366);
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:00.0,10,5\n2023-11-16 18:00:01.0,ten,5\n",
    )
    .unwrap();
    let bad = bad.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--trace", bad], "line 3"),
        (vec!["--trace", "/nonexistent/trace.csv"], "/nonexistent/trace.csv"),
        (vec!["--trace", "synthetic:rate=-1"], "rate"),
        (vec!["--trace", "synthetic:bogus=1"], "bogus"),
        (vec!["--trace", BURST, "--system", "kubernetes"], "unknown system"),
        (vec!["--trace", BURST, "--model", "gpt-5"], "unknown model"),
        (vec!["--trace", BURST, "--nodes", "0"], "--nodes 0"),
        (vec!["--trace", BURST, "--model", "llama-2-70b"], "--gpus-per-node"),
        (vec!["--trace", BURST, "--speedup", "0"], "--speedup"),
        (vec!["--trace", BURST, "--link-gbps", "-4"], "--link-gbps"),
        (vec!["--trace", BURST, "--map", "sideways"], "--map"),
        (vec!["--trace", BURST, "--seeds", "x-3"], "--seeds"),
        (vec!["--trace", BURST, "--compute-speed", "0"], "--compute-speed"),
        (vec!["--trace", BURST, "--pipeline-routing", "random"], "--pipeline-routing"),
        (vec!["--trace", BURST, "--window-s", "-1"], "--window-s"),
    ];
    for (extra, needle) in cases {
        // Defaults for the flags a case does not give.
        let mut args = vec!["simulate"];
        for (flag, value) in [("--system", "faascale"), ("--nodes", "4"), ("--model", "llama-2-7b")] {
            if !extra.contains(&flag) {
                args.extend_from_slice(&[flag, value]);
            }
        }
        args.extend_from_slice(&extra);
        args.push("--json");
        let out = faascale(&args);
        assert!(!out.status.success(), "{extra:?} succeeded");
        let v = last_json(&out);
        let msg = v["error"].as_str().unwrap_or_else(|| panic!("{extra:?}: {v}"));
        assert!(msg.contains(needle), "{extra:?}: {msg:?} does not name {needle:?}");
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    }
}
