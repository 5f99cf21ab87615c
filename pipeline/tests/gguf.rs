//! GGUF models against transformers loading the same files (`scripts/make_golden_gguf.py`):
//! SmolLM2-135M-Instruct Q4_1 (fetched by `scripts/fetch_smollm2.sh`, which `scripts/test.sh`
//! runs first) and two tiny files committed with the fixtures.

mod common;
use common::*;
use kernels::check::normalised_error;
use kernels::DType;
use pipeline::gguf::{self, GgufFile, GgufOptions};
use pipeline::{GenRequest, Model, SamplingParams};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn dir() -> PathBuf {
    fixture("smollm2-gguf")
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// The SmolLM2 GGUF. Absent, the test fails (CI fetches it): it never passes silently.
fn smollm2_path() -> PathBuf {
    let p = match std::env::var_os("FAASCALE_SMOLLM2_GGUF") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch_smollm2.sh (scripts/test.sh does) to fetch SmolLM2-135M-Instruct GGUF",
        p.display()
    );
    p
}

fn smollm2() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| gguf::open(&smollm2_path(), GgufOptions::default()).unwrap())
}

fn golden() -> &'static Value {
    static G: OnceLock<Value> = OnceLock::new();
    G.get_or_init(|| read_json(&dir().join("golden.json")))
}

fn check_encode_examples(model_name: &str, tok: &pipeline::tokenizer::Tokenizer, examples: &Value) {
    for ex in examples.as_array().unwrap() {
        let text = ex["text"].as_str().unwrap();
        let want = ids(&ex["ids"]);
        assert_eq!(tok.encode(text).unwrap(), want, "{model_name}: encode {text:?} (tokens {})", ex["tokens"]);
        let decoded = ex["decoded_skip_special_tokens"].as_str().unwrap();
        assert_eq!(tok.decode(&want).unwrap(), decoded, "{model_name}: decode {text:?}");
    }
}

/// Our tokenizer's structure (normalizer, pre-tokenizer, post-processor, decoder, model flags,
/// added tokens within the vocabulary) equals transformers' backend tokenizer.
fn check_structure(model_name: &str, tok: &pipeline::tokenizer::Tokenizer, want: &Value, n_tokens: usize) {
    let ours: Value = serde_json::from_str(&tok.to_json().unwrap()).unwrap();
    for key in ["normalizer", "pre_tokenizer", "post_processor", "decoder"] {
        assert_eq!(ours[key], want[key], "{model_name}: tokenizer {key}");
    }
    let mut model = ours["model"].clone();
    model["vocab"] = model["vocab"].as_object().unwrap().len().into();
    model["merges"] = model["merges"].as_array().unwrap().len().into();
    assert_eq!(model, want["model"], "{model_name}: tokenizer model");
    // transformers appends its tokenizer class's default tokens when the vocabulary lacks them
    // (ids >= the vocabulary size, which the model cannot embed); the loader does not.
    let want_added: Vec<&Value> = want["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| (t["id"].as_u64().unwrap() as usize) < n_tokens)
        .collect();
    let ours_added: Vec<&Value> = ours["added_tokens"].as_array().unwrap().iter().collect();
    assert_eq!(ours_added, want_added, "{model_name}: added tokens");
}

fn check_weights(model_name: &str, model: &Model, samples: &Value) {
    for s in samples.as_array().unwrap() {
        let name = s["tensor"].as_str().unwrap();
        let cols = s["cols"][1].as_u64().unwrap() as usize;
        let t = model.weights.tensor(name, &model_shape(model, name)).unwrap();
        let all = t.to_f32_vec().unwrap();
        let row_len = *t.shape.last().unwrap();
        let row = s["row"].as_u64().unwrap_or(0) as usize;
        let got = &all[row * row_len..row * row_len + cols];
        let want = floats(&s["values"]);
        assert_eq!(
            got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            "{model_name}: {name} row {row}"
        );
    }
}

fn model_shape(model: &Model, name: &str) -> Vec<usize> {
    let c = &model.config;
    let (d, f, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    if name.ends_with("norm.weight") {
        vec![d]
    } else if name.contains("q_proj") {
        vec![c.q_dim(), d]
    } else if name.contains("k_proj") || name.contains("v_proj") {
        vec![c.kv_dim(), d]
    } else if name.contains("o_proj") {
        vec![d, c.q_dim()]
    } else if name.contains("down_proj") {
        vec![d, f]
    } else if name.contains("gate_proj") || name.contains("up_proj") {
        vec![f, d]
    } else {
        vec![v, d]
    }
}

fn top_k(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx[..k].iter().map(|&i| (i as u32, row[i])).collect()
}

fn l2(row: &[f32]) -> f64 {
    row.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt()
}

/// The reference's top-k logits (by id) within `rel` of the row norm... and of each value:
/// |ours - theirs| <= rel * max(|theirs|, 1), and the row norm within `rel`.
fn check_top(what: &str, row: &[f32], want: &Value, rel: f64) {
    let want_ids = ids(&want["ids"]);
    let want_logits = floats(&want["logits"]);
    for (id, w) in want_ids.iter().zip(&want_logits) {
        let g = row[*id as usize];
        let tol = rel * (w.abs() as f64).max(1.0);
        assert!(((g - w).abs() as f64) <= tol, "{what}: logit of token {id}: ours {g}, transformers {w}");
    }
    let norm = want["l2_norm"].as_f64().unwrap();
    assert!((l2(row) - norm).abs() <= rel * norm, "{what}: logits norm {} vs {norm}", l2(row));
    // the same top ids, in the same order where the reference's logits are not near-ties
    let ours: Vec<u32> = top_k(row, want_ids.len()).iter().map(|p| p.0).collect();
    assert_eq!(ours[0], want_ids[0], "{what}: top-1");
    let overlap = ours.iter().filter(|i| want_ids.contains(i)).count();
    assert!(overlap + 1 >= want_ids.len(), "{what}: top-{} ids {ours:?} vs {want_ids:?}", want_ids.len());
}

/// Greedy decode through the engine (prefill, then one token at a time through the KV cache).
fn greedy_case(model: &Model, case: &Value, rel: f64, check_logits: bool) {
    let name = case["name"].as_str().unwrap_or("case");
    let prompt = ids(&case["prompt_ids"]);
    let want = ids(&case["new_tokens"]);
    let mut e = engine(model, 8, &[], 2);
    let mut last = logits_all(&mut e, 1, 0, &prompt).pop().unwrap();
    if check_logits {
        check_top(&format!("{name} prefill"), &last, &case["prefill_last_top"], rel);
    }
    let mut seq = prompt.clone();
    let mut got = vec![];
    for step in 0..want.len() {
        let tok = pipeline::sampler::argmax(&last) as u32;
        got.push(tok);
        assert_eq!(got, want[..=step], "{name}: greedy step {step}");
        seq.push(tok);
        if step + 1 < want.len() {
            last = logits_all(&mut e, 1, seq.len() - 1, &[tok]).pop().unwrap();
        }
    }
    if check_logits {
        check_top(&format!("{name} final decode step"), &last, &case["final_step_top"], rel);
    }
    e.free(1);
    let req = GenRequest { prompt, max_tokens: want.len(), sampling: SamplingParams::default(), ignore_eos: true };
    assert_eq!(e.generate(&[req], 64).unwrap()[0].tokens, want, "{name}: generate()");
}

// ------------------------------------------------------------------ SmolLM2

#[test]
fn smollm2_config_and_metadata() {
    let m = smollm2();
    let g = &golden()["config"];
    let c = &m.config;
    assert_eq!(m.format, pipeline::Format::Gguf);
    assert_eq!(m.format.as_str(), "gguf");
    assert_eq!(c.vocab_size as u64, g["vocab_size"].as_u64().unwrap());
    assert_eq!(c.hidden_size as u64, g["hidden_size"].as_u64().unwrap());
    assert_eq!(c.intermediate_size as u64, g["intermediate_size"].as_u64().unwrap());
    assert_eq!(c.num_hidden_layers as u64, g["num_hidden_layers"].as_u64().unwrap());
    assert_eq!(c.num_attention_heads as u64, g["num_attention_heads"].as_u64().unwrap());
    assert_eq!(c.num_key_value_heads as u64, g["num_key_value_heads"].as_u64().unwrap());
    assert_eq!(c.head_dim as u64, g["head_dim"].as_u64().unwrap());
    assert_eq!(c.rms_norm_eps, g["rms_norm_eps"].as_f64().unwrap());
    assert_eq!(c.rope_theta, g["rope_theta"].as_f64().unwrap());
    assert_eq!(c.max_position_embeddings as u64, g["max_position_embeddings"].as_u64().unwrap());
    assert_eq!(c.tie_word_embeddings, g["tie_word_embeddings"].as_bool().unwrap());
    assert!(!m.weights.contains("lm_head.weight"));
    assert_eq!(c.bos_token_id, Some(g["bos_token_id"].as_u64().unwrap() as u32));
    assert_eq!(c.eos_token_ids, vec![g["eos_token_id"].as_u64().unwrap() as u32]);
    assert_eq!(m.chat_template.as_deref(), golden()["chat_template"].as_str());
}

#[test]
fn smollm2_tokenizer_matches_transformers() {
    let m = smollm2();
    let tok = m.tokenizer.as_ref().expect("GGUF tokenizer");
    check_encode_examples("smollm2", tok, &golden()["tokenizer"]["encode_examples"]);
    check_structure("smollm2", tok, &golden()["tokenizer_structure"], m.config.vocab_size);
    // the chat-template prompt is among the examples, rendered by transformers
    let chat = golden()["tokenizer"]["encode_examples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["chat_template_rendered"] == true)
        .unwrap();
    assert!(chat["text"].as_str().unwrap().contains("What is the capital of France?"));
    assert_eq!(tok.vocab_size(), m.config.vocab_size);
}

#[test]
fn smollm2_chat_template_renders_like_transformers() {
    let m = smollm2();
    let g = golden();
    let chat = g["tokenizer"]["encode_examples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["chat_template_rendered"] == true)
        .unwrap();
    let text = pipeline::chat::render(
        m.chat_template.as_deref().unwrap(),
        &[pipeline::chat::Message::user("What is the capital of France?")],
        true,
        g["special_tokens"]["bos"].as_str().unwrap(),
        g["special_tokens"]["eos"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(text, chat["text"].as_str().unwrap());
    assert_eq!(m.tokenizer.as_ref().unwrap().encode(&text).unwrap(), ids(&chat["ids"]));
}

#[test]
fn smollm2_dequantized_weights_equal_transformers_bit_for_bit() {
    check_weights("smollm2", smollm2(), &golden()["weights"]);
}

#[test]
fn smollm2_greedy_32_tokens_match_transformers() {
    let m = smollm2();
    for case in golden()["greedy"].as_array().unwrap() {
        greedy_case(m, case, 1e-3, true);
    }
    // The chat answer, decoded.
    let chat = &golden()["greedy"][0];
    let text = m.tokenizer.as_ref().unwrap().decode(&ids(&chat["new_tokens"])).unwrap();
    assert!(text.starts_with("The capital of France is Paris."), "{text:?}");
}

#[test]
fn smollm2_bf16_weights_run_close_to_f32() {
    let path = smollm2_path();
    let m = gguf::open(&path, GgufOptions { dtype: DType::BF16, threads: 0 }).unwrap();
    let t = m.weights.tensor("model.layers.0.self_attn.q_proj.weight", &[576, 576]).unwrap();
    assert_eq!(t.dtype, DType::BF16);
    let f =
        smollm2().weights.tensor("model.layers.0.self_attn.q_proj.weight", &[576, 576]).unwrap().to_f32_vec().unwrap();
    let b = t.to_f32_vec().unwrap();
    for (x, y) in f.iter().zip(&b) {
        assert_eq!(half::bf16::from_f32(*x).to_f32(), *y);
    }
    let case = &golden()["greedy"][0];
    let prompt = ids(&case["prompt_ids"]);
    let mut e = engine(&m, 8, &[], 2);
    let last = logits_all(&mut e, 1, 0, &prompt).pop().unwrap();
    let want = &case["prefill_last_top"];
    assert_eq!(pipeline::sampler::argmax(&last) as u64, want["ids"][0].as_u64().unwrap(), "bf16 top-1");
    let norm = want["l2_norm"].as_f64().unwrap();
    assert!((l2(&last) - norm).abs() < 0.05 * norm);
}

// ------------------------------------------------------------------ tiny files

#[test]
fn tiny_spm_matches_transformers() {
    let path = dir().join("tiny-spm.gguf");
    let g = read_json(&dir().join("tiny-spm.json"));
    let m = gguf::open(&path, GgufOptions { dtype: DType::F32, threads: 3 }).unwrap();
    assert!(!m.config.tie_word_embeddings);
    let tok = m.tokenizer.as_ref().unwrap();
    check_encode_examples("tiny-spm", tok, &g["tokenizer"]["encode_examples"]);
    check_structure("tiny-spm", tok, &g["tokenizer_structure"], m.config.vocab_size);
    // the merges derived from scores, in transformers' order
    let ours: Value = serde_json::from_str(&tok.to_json().unwrap()).unwrap();
    assert_eq!(ours["model"]["merges"], g["merges"], "tiny-spm derived merges");
    check_weights("tiny-spm", &m, &g["weights"]);
    assert_eq!(m.chat_template.as_deref(), Some("{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}"));
    let mut e = engine(&m, 2, &[1], 2);
    for (ci, case) in g["cases"].as_array().unwrap().iter().enumerate() {
        let prompt = ids(&case["prompt_ids"]);
        let got = logits_all(&mut e, 1, 0, &prompt);
        for (p, (row, want)) in got.iter().zip(case["prefill_logits"].as_array().unwrap()).enumerate() {
            let err = normalised_error(row, &floats(want));
            assert!(err < 1e-5, "tiny-spm case {ci} position {p}: normalised error {err:.3e}");
        }
        e.free(1);
        let want = ids(&case["new_tokens"]);
        let req = GenRequest { prompt, max_tokens: want.len(), sampling: SamplingParams::default(), ignore_eos: true };
        assert_eq!(e.generate(&[req], 7).unwrap()[0].tokens, want, "tiny-spm case {ci} greedy");
    }
}

#[test]
fn tiny_bpe_tokenizer_matches_transformers() {
    let f = GgufFile::open(&dir().join("tiny-bpe.gguf")).unwrap();
    let g = read_json(&dir().join("tiny-bpe.json"));
    let built = gguf::tokenizer::from_gguf(&f).unwrap();
    let n = built.n_tokens;
    let tok = pipeline::tokenizer::Tokenizer::from_inner(built.tokenizer, f.path());
    check_encode_examples("tiny-bpe", &tok, &g["tokenizer"]["encode_examples"]);
    check_structure("tiny-bpe", &tok, &g["tokenizer_structure"], n);
}

#[test]
fn tiny_spm_uses_alignment_64() {
    let f = GgufFile::open(&dir().join("tiny-spm.gguf")).unwrap();
    assert_eq!((f.version, f.alignment, f.data_offset % 64), (3, 64, 0));
    let types: std::collections::BTreeSet<&str> = f.tensors.iter().map(|t| t.ggml_type.name()).collect();
    assert_eq!(types.into_iter().collect::<Vec<_>>(), ["BF16", "F16", "F32", "Q4_0", "Q4_1", "Q8_0"]);
}

/// Load time of the SmolLM2 GGUF, f32 and bf16 (not a check; run with
/// `cargo test --release -p pipeline --test gguf -- --ignored --nocapture load_time`).
#[test]
#[ignore = "a load-time measurement, not a check; run with --ignored --nocapture"]
fn load_time() {
    let path = smollm2_path();
    let ms = |t: std::time::Instant| t.elapsed().as_secs_f64() * 1e3;
    for round in 0..3 {
        for dtype in [DType::F32, DType::BF16] {
            let t = std::time::Instant::now();
            let m = gguf::open(&path, GgufOptions { dtype, threads: 0 }).unwrap();
            let total = ms(t);
            let t = std::time::Instant::now();
            let f = GgufFile::open(&path).unwrap();
            let parse = ms(t);
            let t = std::time::Instant::now();
            gguf::tokenizer::from_gguf(&f).unwrap();
            let tok = ms(t);
            eprintln!(
                "round {round} {dtype:?}: gguf::open {total:.0} ms (of which parse {parse:.0} ms, tokenizer {tok:.0} ms), {} threads, {} layers",
                kernels::Pool::default_threads(),
                m.config.num_hidden_layers
            );
        }
    }
}
