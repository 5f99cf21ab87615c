//! The engine against transformers: fixtures made by `scripts/make_golden.py` (tiny random
//! Llama with GQA and Llama-3 RoPE in bf16, sharded; tiny Qwen2 with biases and tied
//! embeddings in f32), logits within normalised error 1e-4 and identical greedy tokens.

mod common;
use common::*;
use kernels::check::normalised_error;
use pipeline::{GenRequest, Model, SamplingParams};
use serde_json::Value;

const TOLERANCE: f64 = 1e-4;

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}
fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn check_fixture(name: &str, threads: usize, cuts: &[usize]) {
    let dir = fixture(name);
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    let model = Model::open(&dir).unwrap();
    let mut e = engine(&model, 8, cuts, threads);
    for (ci, case) in golden["cases"].as_array().unwrap().iter().enumerate() {
        let prompt = ids(&case["prompt_ids"]);
        // prefill logits at every prompt position
        let got = logits_all(&mut e, 1, 0, &prompt);
        let want: Vec<Vec<f32>> = case["prefill_logits"].as_array().unwrap().iter().map(floats).collect();
        assert_eq!(got.len(), want.len());
        for (p, (g, w)) in got.iter().zip(&want).enumerate() {
            let err = normalised_error(g, w);
            assert!(err < TOLERANCE, "{name} case {ci} position {p}: normalised error {err:.3e}");
        }
        // greedy decode through the KV cache, token by token
        let new_tokens = ids(&case["greedy"]["new_tokens"]);
        let mut seq = prompt.clone();
        let mut last = got.last().unwrap().clone();
        for (step, &want_tok) in new_tokens.iter().enumerate() {
            let tok = pipeline::sampler::argmax(&last) as u32;
            assert_eq!(tok, want_tok, "{name} case {ci} greedy step {step}");
            seq.push(tok);
            if step + 1 < new_tokens.len() {
                last = logits_all(&mut e, 1, seq.len() - 1, &[tok]).pop().unwrap();
            }
        }
        // the final step's logits (decode path) match too
        let final_len = case["greedy"]["final_step_input_len"].as_u64().unwrap() as usize;
        assert_eq!(final_len, seq.len() - 1);
        let err = normalised_error(&last, &floats(&case["greedy"]["final_step_logits"]));
        assert!(err < TOLERANCE, "{name} case {ci} final decode step: normalised error {err:.3e}");
        e.free(1);
        // and the engine's own generate loop gives the same tokens
        let req = GenRequest {
            prompt: prompt.clone(),
            max_tokens: new_tokens.len(),
            sampling: SamplingParams::default(),
            ignore_eos: true,
        };
        assert_eq!(e.generate(&[req], 7).unwrap()[0].tokens, new_tokens, "{name} case {ci} generate()");
    }
}

#[test]
fn tiny_llama_matches_transformers() {
    check_fixture("tiny-llama", 2, &[]);
}

#[test]
fn tiny_qwen2_matches_transformers() {
    check_fixture("tiny-qwen2", 2, &[]);
}

#[test]
fn split_stages_and_one_thread_match_transformers_too() {
    check_fixture("tiny-llama", 1, &[3]);
    check_fixture("tiny-qwen2", 3, &[2, 5]);
}

#[test]
fn tokenizer_matches_hugging_face() {
    for name in ["tiny-llama", "tiny-qwen2"] {
        let dir = fixture(name);
        let golden: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
        let model = Model::open(&dir).unwrap();
        let tok = model.tokenizer.as_ref().expect("fixture has tokenizer.json");
        for ex in golden["tokenizer"]["encode_examples"].as_array().unwrap() {
            let text = ex["text"].as_str().unwrap();
            assert_eq!(tok.encode(text).unwrap(), ids(&ex["ids"]), "{name}: encode {text:?}");
            assert_eq!(
                tok.decode(&ids(&ex["ids"])).unwrap(),
                ex["decoded_skip_special_tokens"].as_str().unwrap(),
                "{name}: decode {text:?}"
            );
        }
    }
}
