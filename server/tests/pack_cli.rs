//! `faascale pack` and `faascale inspect`: flags, JSON on the last stdout line, progress on
//! stderr, checksums that match the file, clear errors.

use serde_json::Value;
use std::path::Path;
use std::process::Output;

mod common;
use common::{faascale, last_json};

fn ok(out: Output) -> Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    last_json(&out)
}

fn synth(dir: &Path, preset: &str) -> Value {
    ok(faascale(&["synth", "--preset", preset, "--seed", "1", "-o", dir.to_str().unwrap(), "--json"]))
}

#[test]
fn pack_then_inspect_lists_blocks_and_true_checksums() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    let synth_json = synth(&dir, "tiny-llama");
    let file = tmp.path().join("m.fspack");
    let f = file.to_str().unwrap();
    let out = faascale(&[
        "pack",
        "--model",
        dir.to_str().unwrap(),
        "-o",
        f,
        "--blocks",
        "4",
        "--chunk-bytes",
        "8K",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let s = ok(out);
    assert!(stderr.contains("block 4/4 written") && stderr.contains("MB/s"), "progress on stderr: {stderr}");
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(s["blocks"], 4);
    assert_eq!(s["chunk_bytes"], 8192);
    assert_eq!(s["bytes"], bytes.len());
    assert!(s["transfer_blocks"].as_u64().unwrap() > 4);
    assert!(s["seconds"].as_f64().unwrap() > 0.0 && s["mb_per_s"].as_f64().unwrap() > 0.0);

    let v = ok(faascale(&["inspect", f, "--verify", "--json"]));
    assert_eq!(v["format"], "packed");
    assert_eq!(v["architecture"], "LlamaForCausalLM");
    assert_eq!(v["parameters"], synth_json["parameters"]);
    assert_eq!(v["dtypes"]["BF16"]["tensors"], v["tensors"]);
    let p = &v["packed"];
    assert_eq!(p["num_blocks"], 4);
    assert_eq!(p["num_transfer_blocks"], s["transfer_blocks"]);
    assert_eq!(p["file_bytes"], bytes.len());
    assert_eq!(p["verified"], true);
    let blocks = p["blocks"].as_array().unwrap();
    let layers: Vec<Value> = blocks.iter().map(|b| b["layers"].clone()).collect();
    assert_eq!(
        layers,
        vec![
            serde_json::json!([0, 2]),
            serde_json::json!([2, 4]),
            serde_json::json!([4, 6]),
            serde_json::json!([6, 8])
        ]
    );
    let mut next = p["data_offset"].as_u64().unwrap();
    for b in blocks {
        assert_eq!(b["offset"], next, "blocks abut");
        let (off, len) = (b["offset"].as_u64().unwrap(), b["bytes"].as_u64().unwrap());
        assert_eq!(off % 4096, 0);
        let mut t_next = off;
        for t in b["transfer_blocks"].as_array().unwrap() {
            let (to, tl) = (t["offset"].as_u64().unwrap(), t["len"].as_u64().unwrap());
            assert_eq!(to, t_next, "transfer blocks tile the block");
            assert_eq!(
                t["crc32c"],
                pipeline::packed::crc32c(&bytes[to as usize..(to + tl) as usize]),
                "the listed crc32c is the bytes'"
            );
            t_next = to + tl;
        }
        assert_eq!(t_next, off + len);
        next = off + len;
    }
    assert_eq!(next, bytes.len() as u64);

    // human-readable output
    let out = faascale(&["inspect", f]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("block   0  layers [0, 2)") && text.contains("LlamaForCausalLM"), "{text}");
}

#[test]
fn inspect_a_checkpoint_directory_without_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("q");
    synth(&dir, "tiny-qwen2");
    let v = ok(faascale(&["inspect", dir.to_str().unwrap(), "--json"]));
    assert_eq!(v["format"], "hf");
    assert_eq!(v["architecture"], "Qwen2ForCausalLM");
    assert!(v["packed"].is_null());
    assert_eq!(v["tie_word_embeddings"], true);
    // embedding + 8 layers × 12 tensors (with q/k/v biases) + final norm; the tied head is no tensor
    assert_eq!(v["dtypes"]["F32"]["tensors"], 1 + 8 * 12 + 1);
    assert_eq!(v["problems"], serde_json::json!([]));
    let out = faascale(&["inspect", dir.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("no blocks"));

    // packed, the tied head is stored in the last block as a copy
    let file = tmp.path().join("q.fspack");
    ok(faascale(&["pack", "--model", dir.to_str().unwrap(), "-o", file.to_str().unwrap(), "--json"]));
    let v = ok(faascale(&["inspect", file.to_str().unwrap(), "--json"]));
    assert_eq!(v["dtypes"]["F32"]["tensors"], 1 + 8 * 12 + 2);
    assert_eq!(v["packed"]["num_blocks"], 8, "default --blocks");
    assert_eq!(v["packed"]["chunk_bytes"].as_u64().unwrap() % 4096, 0);
    // a packed file packs again, into another block count
    let again = tmp.path().join("q4.fspack");
    let s = ok(faascale(&[
        "pack",
        "--model",
        file.to_str().unwrap(),
        "-o",
        again.to_str().unwrap(),
        "--blocks",
        "2",
        "--json",
    ]));
    assert_eq!(s["blocks"], 2);
}

#[test]
fn bad_input_gets_a_clear_error_and_json() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    synth(&dir, "tiny-llama");
    let d = dir.to_str().unwrap();
    let file = tmp.path().join("m.fspack");
    let f = file.to_str().unwrap();
    ok(faascale(&["pack", "--model", d, "-o", f, "--chunk-bytes", "4096", "--json"]));
    let bytes = std::fs::read(&file).unwrap();
    let mut corrupt = bytes.clone();
    let n = corrupt.len();
    corrupt[n - 10] ^= 0x10;
    let bad = tmp.path().join("bad.fspack");
    std::fs::write(&bad, &corrupt).unwrap();
    let cut = tmp.path().join("cut.fspack");
    std::fs::write(&cut, &bytes[..n / 2]).unwrap();
    let b = bad.to_str().unwrap();
    let c = cut.to_str().unwrap();
    let out_path = tmp.path().join("x.fspack");
    let o = out_path.to_str().unwrap();
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["pack", "--model", d, "-o", o, "--blocks", "0"], vec!["0 blocks"]),
        (vec!["pack", "--model", d, "-o", o, "--blocks", "9"], vec!["9 blocks for 8 layers"]),
        (vec!["pack", "--model", d, "-o", o, "--chunk-bytes", "1000"], vec!["chunk size 1000", "4096"]),
        (vec!["pack", "--model", d, "-o", o, "--chunk-bytes", "4X"], vec!["--chunk-bytes", "unit"]),
        (vec!["pack", "--model", "/no/such/model", "-o", o], vec!["/no/such/model"]),
        (vec!["pack", "--model", b, "-o", o], vec!["checksum mismatch in execution block 7", "bad.fspack"]),
        (vec!["inspect", b, "--verify"], vec!["checksum mismatch in execution block 7"]),
        (vec!["inspect", c], vec!["cut.fspack", "truncated?", "byte"]),
    ];
    for (args, wants) in cases {
        let mut with_json = args.clone();
        with_json.push("--json");
        let out = faascale(&with_json);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = last_json(&out)["error"].as_str().unwrap_or_else(|| panic!("{args:?}: no error field")).to_string();
        for w in wants {
            assert!(err.contains(w), "{args:?}: `{w}` not in: {err}");
        }
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1, "{args:?}: exactly one JSON line");
    }
    assert!(!out_path.exists(), "failed packs leave no output");
    // without --verify, inspect reads only the header: the corrupt block is listed, not checked
    let v = ok(faascale(&["inspect", b, "--json"]));
    assert_eq!(v["packed"]["verified"], false);
}
