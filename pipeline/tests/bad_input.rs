//! Bad checkpoints and bad requests get a clear error naming what and where; never a panic.

mod common;
use common::*;
use pipeline::{GenRequest, Model, SamplingParams};
use std::fs;

fn open_err(dir: &std::path::Path) -> String {
    match Model::open(dir)
        .and_then(|m| m.stage(8, 0..8, std::sync::Arc::new(kernels::Pool::new(1)), Default::default()).map(|_| ()))
    {
        Ok(()) => panic!("{} should have been refused", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn truncated_and_corrupt_safetensors() {
    let (_tmp, dir) = synth("tiny-llama", 1);
    let st = dir.join("model.safetensors");
    let full = fs::read(&st).unwrap();
    // cut inside the data section, inside the header, and inside the length prefix
    for (cut, want) in [(full.len() - 100, "outside"), (200, "runs past"), (5, "shorter than")] {
        fs::write(&st, &full[..cut]).unwrap();
        let e = open_err(&dir);
        assert!(e.contains("model.safetensors") && e.contains(want), "cut at {cut}: {e}");
    }
    // garbage in the header
    let mut bad = full.clone();
    bad[8] = b'#';
    fs::write(&st, &bad).unwrap();
    let e = open_err(&dir);
    assert!(e.contains("not valid JSON") && e.contains("byte 8"), "{e}");
}

#[test]
fn shapes_that_disagree_with_the_config() {
    let (_tmp, dir) = synth("tiny-llama", 1);
    let cfg_path = dir.join("config.json");
    let text = fs::read_to_string(&cfg_path).unwrap();
    fs::write(&cfg_path, text.replace("\"intermediate_size\": 176", "\"intermediate_size\": 180")).unwrap();
    let e = open_err(&dir);
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight") && e.contains("[180, 64]") && e.contains("[176, 64]"),
        "{e}"
    );
}

#[test]
fn unknown_architecture_and_dtype() {
    let (_tmp, dir) = synth("tiny-llama", 1);
    let cfg_path = dir.join("config.json");
    let text = fs::read_to_string(&cfg_path).unwrap();
    fs::write(&cfg_path, text.replace("LlamaForCausalLM", "FalconForCausalLM")).unwrap();
    let e = open_err(&dir);
    assert!(e.contains("FalconForCausalLM") && e.contains("config.json"), "{e}");

    // an F64 tensor where a matrix should be
    let (_tmp2, dir2) = synth("tiny-llama", 1);
    let st = dir2.join("model.safetensors");
    let f = pipeline::safetensors::SafetensorsFile::open(&st).unwrap();
    let names: Vec<String> = f.tensors.keys().cloned().collect();
    drop(f);
    let bytes = fs::read(&st).unwrap();
    let hlen = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + hlen]).unwrap();
    // q_proj of layer 0 is [64, 64] BF16 = 8192 bytes = 1024 F64 values: same size, other dtype
    let entry = &mut header["model.layers.0.self_attn.q_proj.weight"];
    assert_eq!(entry["dtype"], "BF16");
    entry["dtype"] = "F64".into();
    entry["shape"] = serde_json::json!([32, 32]);
    let mut text = serde_json::to_string(&header).unwrap();
    while text.len() < hlen {
        text.push(' ');
    }
    assert_eq!(text.len(), hlen);
    let mut out = (hlen as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + hlen..]);
    fs::write(&st, out).unwrap();
    let e = open_err(&dir2);
    assert!(e.contains("F64") && e.contains("q_proj"), "{e} ({} tensors)", names.len());
}

#[test]
fn bad_requests() {
    let (_tmp, dir) = synth("tiny-llama", 1);
    let model = Model::open(&dir).unwrap();
    let mut e = engine(&model, 8, &[], 1);
    let req = |prompt: Vec<u32>, max_tokens| GenRequest {
        prompt,
        max_tokens,
        sampling: SamplingParams::default(),
        ignore_eos: true,
    };
    let err = e.generate(&[req(vec![1, 2, 384], 4)], 64).unwrap_err().to_string();
    assert!(err.contains("384") && err.contains("index 2") && err.contains("vocab_size 384"), "{err}");
    let err = e.generate(&[req(vec![1; 257], 4)], 64).unwrap_err().to_string();
    assert!(err.contains("257") && err.contains("256"), "{err}");
    let err = e.generate(&[req(vec![], 4)], 64).unwrap_err().to_string();
    assert!(err.contains("no tokens"), "{err}");
    let bad_sampling = GenRequest { sampling: SamplingParams { top_p: 2.0, ..Default::default() }, ..req(vec![1], 2) };
    assert!(e.generate(&[bad_sampling], 64).unwrap_err().to_string().contains("top_p"));
    // a prompt that fits but whose generation would overrun the context stops there
    let out = e.generate(&[req(vec![1; 250], 20)], 64).unwrap();
    assert_eq!(out[0].finish, pipeline::FinishReason::Context);
    assert_eq!(out[0].tokens.len(), 256 - 250 + 1);
    // after all these, the engine still serves
    assert_eq!(e.generate(&[req(vec![1, 2, 3], 3)], 64).unwrap()[0].tokens.len(), 3);
}

#[test]
fn stage_refuses_malformed_batches_without_changing_its_cache() {
    use pipeline::{LogitsRows, StageBatch, StageInput};
    let (_tmp, dir) = synth("tiny-llama", 1);
    let model = Model::open(&dir).unwrap();
    let mut s = model.stage(8, 0..8, std::sync::Arc::new(kernels::Pool::new(1)), Default::default()).unwrap();
    let b = |seq: Vec<u64>, pos: Vec<u32>, toks: Vec<u32>| StageBatch {
        seq_ids: seq,
        positions: pos,
        input: StageInput::Tokens(toks),
        logits: LogitsRows::All,
    };
    s.forward(&b(vec![1, 1], vec![0, 1], vec![5, 6])).unwrap();
    for (batch, want) in [
        (b(vec![], vec![], vec![]), "no rows"),
        (b(vec![1], vec![5], vec![1]), "cache holds 2"),
        (b(vec![1, 1], vec![2, 4], vec![1, 2]), "expected 3"),
        (b(vec![2, 3, 2], vec![0, 0, 1], vec![1, 2, 3]), "not contiguous"),
        (b(vec![2], vec![0, 1], vec![1]), "positions"),
        (b(vec![2], vec![0], vec![1, 2]), "token ids"),
        (b(vec![2], vec![0], vec![999]), "out of range"),
    ] {
        let e = s.forward(&batch).unwrap_err().to_string();
        assert!(e.contains(want), "{e} should mention {want}");
    }
    assert_eq!(s.seq_len(1), 2);
    assert_eq!(s.num_seqs(), 1, "refused batches leave no new sequences behind");
}
