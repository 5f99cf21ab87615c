//! The `faascale` command-line contract: flags, JSON on the last stdout line, clear errors.

use serde_json::Value;
use std::path::Path;
use std::process::Command;

mod common;
use common::{faascale, last_json};

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipeline/tests/fixtures").join(name).to_str().unwrap().to_string()
}

#[test]
fn synth_then_generate_with_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    let out = faascale(&["synth", "--preset", "tiny-qwen2", "--seed", "3", "-o", dir.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j = last_json(&out);
    assert_eq!(j["architecture"], "Qwen2ForCausalLM");
    // same seed, same bytes
    let dir2 = tmp.path().join("m2");
    assert!(faascale(&["synth", "--preset", "tiny-qwen2", "--seed", "3", "-o", dir2.to_str().unwrap()])
        .status
        .success());
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        std::fs::read(dir2.join("model.safetensors")).unwrap()
    );

    let out = faascale(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--tokens",
        "1,2,3",
        "--max-tokens",
        "5",
        "--ignore-eos",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j = last_json(&out);
    assert_eq!(j["prompt_tokens"], serde_json::json!([1, 2, 3]));
    assert_eq!(j["tokens"].as_array().unwrap().len(), 5);
    assert!(j["text"].is_null(), "no tokenizer, so no text");
    assert!(j["ttft_ms"].as_f64().unwrap() > 0.0);
    assert!(j["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn generate_prompt_text_greedy_matches_transformers() {
    // The fixture's golden continuation of its prompt, through the CLI.
    let dir = fixture("tiny-qwen2");
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(&dir).join("golden.json")).unwrap()).unwrap();
    let case = &golden["cases"][2];
    let prompt: Vec<String> = case["prompt_ids"].as_array().unwrap().iter().map(|t| t.to_string()).collect();
    let out = faascale(&[
        "generate",
        "--model",
        &dir,
        "--tokens",
        &prompt.join(","),
        "--max-tokens",
        "16",
        "--temperature",
        "0",
        "--ignore-eos",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j = last_json(&out);
    assert_eq!(j["tokens"], case["greedy"]["new_tokens"]);
    assert!(j["text"].is_string());

    // --prompt is tokenized as-is: same ids as the tokenizer gives
    let ex = &golden["tokenizer"]["encode_examples"][0];
    let out = faascale(&[
        "generate",
        "--model",
        &dir,
        "--prompt",
        ex["text"].as_str().unwrap(),
        "--max-tokens",
        "2",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(last_json(&out)["prompt_tokens"], ex["ids"]);
}

#[test]
fn sampling_is_seeded() {
    let dir = fixture("tiny-llama");
    let run = |seed: &str| {
        let out = faascale(&[
            "generate",
            "--model",
            &dir,
            "--tokens",
            "380,5,9",
            "--max-tokens",
            "12",
            "--temperature",
            "1.0",
            "--top-k",
            "50",
            "--top-p",
            "0.95",
            "--seed",
            seed,
            "--ignore-eos",
            "--json",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        last_json(&out)["tokens"].clone()
    };
    assert_eq!(run("7"), run("7"));
    assert_ne!(run("7"), run("8"), "different seeds should (almost surely) differ over 12 tokens");
}

#[test]
fn bad_input_gets_a_clear_error_and_json() {
    let dir = fixture("tiny-llama");
    let golden_file = format!("{dir}/golden.json");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["generate", "--model", &dir, "--tokens", "1,x,3", "--max-tokens", "2", "--json"], "element 1 `x`"),
        (vec!["generate", "--model", &dir, "--tokens", "1,99999", "--max-tokens", "2", "--json"], "out of range"),
        (
            vec!["generate", "--model", "/nonexistent/model", "--tokens", "1", "--max-tokens", "2", "--json"],
            "/nonexistent/model",
        ),
        (vec!["generate", "--model", &dir, "--tokens", "1", "--max-tokens", "2", "--top-p", "0", "--json"], "top_p"),
        (vec!["synth", "--preset", "nope", "-o", "/tmp/x", "--json"], "unknown preset"),
        (
            vec!["generate", "--model", &golden_file, "--tokens", "1", "--max-tokens", "2", "--json"],
            "expected a GGUF file",
        ),
    ];
    for (args, want) in cases {
        let out = faascale(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "{args:?}: stderr {stderr} should mention {want}");
        let j = last_json(&out);
        assert!(j["error"].as_str().unwrap().contains(want), "{j}");
    }
    // arguments the parser refuses still end in one JSON line when --json was given
    let out = faascale(&["generate", "--model", &dir, "--max-tokens", "2", "--json"]);
    assert!(!out.status.success());
    assert!(
        last_json(&out)["error"].as_str().unwrap().contains("--prompt"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    use std::os::unix::ffi::OsStrExt;
    let bad = std::ffi::OsStr::from_bytes(b"\xff\xfe");
    let out = Command::new(env!("CARGO_BIN_EXE_faascale"))
        .args(["generate", "--model", &dir, "--max-tokens", "2", "--json", "--prompt"])
        .arg(bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(last_json(&out)["error"].as_str().unwrap().contains("UTF-8"));
}

#[test]
fn generate_gives_the_same_tokens_from_a_packed_file() {
    for source in [fixture("tiny-llama"), fixture("smollm2-gguf/tiny-spm.gguf")] {
        same_tokens_packed_or_not(&source);
    }
}

fn same_tokens_packed_or_not(dir: &str) {
    let dir = dir.to_string();
    let tmp = tempfile::tempdir().unwrap();
    let packed = tmp.path().join("tiny.fspack");
    let out = faascale(&["pack", "--model", &dir, "-o", packed.to_str().unwrap(), "--blocks", "2", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = |model: &str| {
        let out = faascale(&[
            "generate",
            "--model",
            model,
            "--prompt",
            "Hello, world",
            "--max-tokens",
            "10",
            "--ignore-eos",
            "--json",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        last_json(&out)
    };
    let (a, b) = (run(&dir), run(packed.to_str().unwrap()));
    assert_eq!(a["prompt_tokens"], b["prompt_tokens"]);
    assert_eq!(a["tokens"], b["tokens"]);
    assert_eq!(a["text"], b["text"]);
}
