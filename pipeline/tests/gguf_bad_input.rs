//! GGUF files made here (`pipeline::gguf::GgufWriter`): a tiny valid llama that loads and runs
//! (and equals the same weights loaded from safetensors), and corrupt variants, each of which
//! must be refused with an error naming the file, the byte offset and what is wrong — never a
//! panic, a hang or an out-of-bounds read.

mod common;
use common::*;
use kernels::DType;
use pipeline::gguf::{self, GgmlType, GgufFile, GgufOptions, GgufWriter, Value, ValueType};
use pipeline::{GenRequest, Model, PipelineError, SamplingParams};
use std::path::Path;

const NAME: &str = "bad.gguf";

fn rand_values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn vocab() -> Vec<String> {
    let b2c = gguf::tokenizer::byte_to_char();
    let mut v: Vec<String> = b2c.iter().map(|c| c.to_string()).collect();
    v.push("Ġt".into());
    v.push("<|endoftext|>".into());
    v
}

/// Metadata of a tiny llama (d 32, 2 heads / 1 kv head, ffn 64, 1 layer) with a byte-level
/// vocabulary of 258 tokens, without tensors.
fn tiny_meta(n_tokens_in_tokenizer: usize) -> GgufWriter {
    let mut w = GgufWriter::new();
    let tokens = vocab();
    let tokens: Vec<&str> = tokens.iter().take(n_tokens_in_tokenizer).map(String::as_str).collect();
    let mut types = vec![1; tokens.len()];
    if let Some(last) = types.last_mut() {
        *last = 3;
    }
    w.kv_str("general.architecture", "llama")
        .kv_str("general.name", "tiny")
        .kv_u32("llama.block_count", 1)
        .kv_u32("llama.context_length", 64)
        .kv_u32("llama.embedding_length", 32)
        .kv_u32("llama.feed_forward_length", 64)
        .kv_u32("llama.attention.head_count", 2)
        .kv_u32("llama.attention.head_count_kv", 1)
        .kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        .kv_f32("llama.rope.freq_base", 10000.0)
        .kv_str("tokenizer.ggml.model", "gpt2")
        .kv_strings("tokenizer.ggml.tokens", &tokens)
        .kv_i32s("tokenizer.ggml.token_type", &types)
        .kv_strings("tokenizer.ggml.merges", &["Ġ t"])
        .kv_u32("tokenizer.ggml.eos_token_id", (tokens.len() - 1) as u32)
        .kv_str("tokenizer.chat_template", "MARKER{{ messages }}");
    w
}

/// The tensors of the tiny llama, in mixed types.
fn tiny_tensors(w: &mut GgufWriter, vocab: usize) {
    let (d, f, kv) = (32, 64, 16);
    w.tensor("token_embd.weight", GgmlType::Q8_0, &[vocab, d], &rand_values(vocab * d, 1, 1.0))
        .tensor(
            "blk.0.attn_norm.weight",
            GgmlType::F32,
            &[d],
            &rand_values(d, 2, 0.1).iter().map(|x| 1.0 + x).collect::<Vec<_>>(),
        )
        .tensor("blk.0.attn_q.weight", GgmlType::Q4_0, &[d, d], &rand_values(d * d, 3, 0.3))
        .tensor("blk.0.attn_k.weight", GgmlType::Q4_1, &[kv, d], &rand_values(kv * d, 4, 0.3))
        .tensor("blk.0.attn_v.weight", GgmlType::F16, &[kv, d], &rand_values(kv * d, 5, 0.3))
        .tensor("blk.0.attn_output.weight", GgmlType::BF16, &[d, d], &rand_values(d * d, 6, 0.3))
        .tensor(
            "blk.0.ffn_norm.weight",
            GgmlType::F32,
            &[d],
            &rand_values(d, 7, 0.1).iter().map(|x| 1.0 + x).collect::<Vec<_>>(),
        )
        .tensor("blk.0.ffn_gate.weight", GgmlType::Q8_0, &[f, d], &rand_values(f * d, 8, 0.3))
        .tensor("blk.0.ffn_up.weight", GgmlType::F32, &[f, d], &rand_values(f * d, 9, 0.3))
        .tensor("blk.0.ffn_down.weight", GgmlType::Q4_1, &[d, f], &rand_values(d * f, 10, 0.3))
        .tensor(
            "output_norm.weight",
            GgmlType::F32,
            &[d],
            &rand_values(d, 11, 0.1).iter().map(|x| 1.0 + x).collect::<Vec<_>>(),
        );
}

fn tiny() -> GgufWriter {
    let mut w = tiny_meta(258);
    tiny_tensors(&mut w, 258);
    w
}

fn parse(bytes: Vec<u8>) -> pipeline::Result<GgufFile> {
    GgufFile::from_bytes(bytes, Path::new(NAME))
}

fn load(bytes: Vec<u8>) -> pipeline::Result<Model> {
    gguf::model_from_file(&parse(bytes)?, GgufOptions::default())
}

/// The error is a GGUF error at `offset` (when given) whose message contains every `parts`.
#[track_caller]
fn expect_err(r: pipeline::Result<impl Sized>, offset: Option<u64>, parts: &[&str]) -> String {
    let e = match r {
        Ok(_) => panic!("expected an error containing {parts:?}"),
        Err(e) => e,
    };
    let msg = e.to_string();
    assert!(msg.contains(NAME), "error does not name the file: {msg}");
    if let Some(off) = offset {
        match &e {
            PipelineError::Gguf { offset: o, .. } => assert_eq!(*o, off, "offset in {msg}"),
            other => panic!("expected a GGUF error at byte {off}, got {other:?}"),
        }
        assert!(msg.contains(&format!("byte {off}")), "{msg}");
    }
    for p in parts {
        assert!(msg.contains(p), "error {msg:?} does not contain {p:?}");
    }
    msg
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).expect("marker present")
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Byte offset of tensor `name`'s info entry, and of its type and offset fields.
fn tensor_fields(bytes: &[u8], name: &str) -> (usize, usize, usize) {
    let f = parse(bytes.to_vec()).unwrap();
    let t = f.tensor_info(name).unwrap();
    let at = t.info_offset as usize;
    let type_at = at + 8 + name.len() + 4 + 8 * t.ne.len();
    (at, type_at, type_at + 4)
}

// ------------------------------------------------------------------ valid files

#[test]
fn tiny_model_loads_tokenizes_and_generates() {
    let m = load(tiny().to_bytes()).unwrap();
    assert_eq!(m.config.vocab_size, 258);
    assert!(m.config.tie_word_embeddings);
    assert_eq!(m.config.eos_token_ids, vec![257]);
    assert_eq!(m.chat_template.as_deref(), Some("MARKER{{ messages }}"));
    let tok = m.tokenizer.as_ref().unwrap();
    // " t" merges to Ġt; <|endoftext|> is special (CONTROL) and skipped on decode
    assert_eq!(tok.encode("a t<|endoftext|>").unwrap(), vec![b'a' as u32, 256, 257]);
    assert_eq!(tok.decode(&[256, 257]).unwrap(), " t");
    let mut e = engine(&m, 1, &[], 1);
    let req =
        GenRequest { prompt: vec![1, 2, 3], max_tokens: 5, sampling: SamplingParams::default(), ignore_eos: true };
    let out = e.generate(&[req], 8).unwrap();
    assert_eq!(out[0].tokens.len(), 5);
    // bf16 and several threads load too
    let m = gguf::model_from_file(&parse(tiny().to_bytes()).unwrap(), GgufOptions { dtype: DType::BF16, threads: 3 })
        .unwrap();
    assert_eq!(m.weights.tensor("model.layers.0.mlp.up_proj.weight", &[64, 32]).unwrap().dtype, DType::BF16);
    assert_eq!(m.weights.tensor("model.norm.weight", &[32]).unwrap().dtype, DType::F32);
}

#[test]
fn version_2_files_parse() {
    let mut w = tiny();
    w.version = 2;
    assert_eq!(parse(w.to_bytes()).unwrap().version, 2);
}

#[test]
fn open_names_the_path_and_refuses_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("missing.gguf");
    let e = gguf::open(&p, GgufOptions::default()).err().unwrap();
    assert!(matches!(e, PipelineError::Io { .. }), "{e}");
    assert!(e.to_string().contains("missing.gguf"));
    let p = dir.path().join("short.gguf");
    std::fs::write(&p, b"GGUF").unwrap();
    let e = gguf::open(&p, GgufOptions::default()).err().unwrap().to_string();
    assert!(e.contains("short.gguf") && e.contains("byte 4") && e.contains("truncated header"), "{e}");
    let p = dir.path().join("empty.gguf");
    std::fs::write(&p, b"").unwrap();
    let e = gguf::open(&p, GgufOptions::default()).err().unwrap().to_string();
    assert!(e.contains("empty.gguf") && e.contains("truncated header"), "{e}");
    let p = dir.path().join("ok.gguf");
    std::fs::write(&p, tiny().to_bytes()).unwrap();
    let m = gguf::open(&p, GgufOptions::default()).unwrap();
    assert_eq!(m.path, p);
}

/// The same weights from a safetensors checkpoint and from a GGUF written the way llama.cpp's
/// converter writes them (Q/K rows permuted, ggml dimension order) give bit-identical logits.
#[test]
fn same_weights_as_safetensors_give_identical_logits() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg_json, _) = pipeline::synth::preset("tiny-llama").unwrap();
    for dtype in [DType::F32, DType::BF16] {
        let hf_dir = dir.path().join(format!("hf-{dtype:?}"));
        let cfg = pipeline::synth::write_checkpoint(&hf_dir, cfg_json.clone(), dtype, 7).unwrap();
        let hf = Model::open(&hf_dir).unwrap();
        let mut w = GgufWriter::new();
        w.kv_str("general.architecture", "llama")
            .kv_u32("llama.block_count", cfg.num_hidden_layers as u32)
            .kv_u32("llama.context_length", cfg.max_position_embeddings as u32)
            .kv_u32("llama.embedding_length", cfg.hidden_size as u32)
            .kv_u32("llama.feed_forward_length", cfg.intermediate_size as u32)
            .kv_u32("llama.attention.head_count", cfg.num_attention_heads as u32)
            .kv_u32("llama.attention.head_count_kv", cfg.num_key_value_heads as u32)
            .kv_u32("llama.rope.dimension_count", cfg.head_dim as u32)
            .kv_f32("llama.attention.layer_norm_rms_epsilon", cfg.rms_norm_eps as f32)
            .kv_f32("llama.rope.freq_base", cfg.rope_theta as f32);
        let ty = if dtype == DType::F32 { GgmlType::F32 } else { GgmlType::BF16 };
        let (d, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let get = |name: &str, shape: &[usize]| hf.weights.tensor(name, shape).unwrap().to_f32_vec().unwrap();
        // llama.cpp's permute: HF row h*hd + s*half + j goes to GGUF row h*hd + 2j + s
        let permute = |w: Vec<f32>, n_head: usize| -> Vec<f32> {
            let rows = w.len() / d;
            let hd = rows / n_head;
            let mut out = vec![0f32; w.len()];
            for h in 0..n_head {
                for s in 0..2 {
                    for j in 0..hd / 2 {
                        let (src, dst) = (h * hd + s * hd / 2 + j, h * hd + 2 * j + s);
                        out[dst * d..(dst + 1) * d].copy_from_slice(&w[src * d..(src + 1) * d]);
                    }
                }
            }
            out
        };
        w.tensor("token_embd.weight", ty, &[v, d], &get("model.embed_tokens.weight", &[v, d]));
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let b = format!("blk.{i}");
            let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
            w.tensor(
                &format!("{b}.attn_norm.weight"),
                GgmlType::F32,
                &[d],
                &get(&format!("{p}.input_layernorm.weight"), &[d]),
            )
            .tensor(
                &format!("{b}.attn_q.weight"),
                ty,
                &[qd, d],
                &permute(get(&format!("{p}.self_attn.q_proj.weight"), &[qd, d]), cfg.num_attention_heads),
            )
            .tensor(
                &format!("{b}.attn_k.weight"),
                ty,
                &[kvd, d],
                &permute(get(&format!("{p}.self_attn.k_proj.weight"), &[kvd, d]), cfg.num_key_value_heads),
            )
            .tensor(
                &format!("{b}.attn_v.weight"),
                ty,
                &[kvd, d],
                &get(&format!("{p}.self_attn.v_proj.weight"), &[kvd, d]),
            )
            .tensor(
                &format!("{b}.attn_output.weight"),
                ty,
                &[d, qd],
                &get(&format!("{p}.self_attn.o_proj.weight"), &[d, qd]),
            )
            .tensor(
                &format!("{b}.ffn_norm.weight"),
                GgmlType::F32,
                &[d],
                &get(&format!("{p}.post_attention_layernorm.weight"), &[d]),
            )
            .tensor(&format!("{b}.ffn_gate.weight"), ty, &[f, d], &get(&format!("{p}.mlp.gate_proj.weight"), &[f, d]))
            .tensor(&format!("{b}.ffn_up.weight"), ty, &[f, d], &get(&format!("{p}.mlp.up_proj.weight"), &[f, d]))
            .tensor(
                &format!("{b}.ffn_down.weight"),
                ty,
                &[d, f],
                &get(&format!("{p}.mlp.down_proj.weight"), &[d, f]),
            );
        }
        w.tensor("output_norm.weight", GgmlType::F32, &[d], &get("model.norm.weight", &[d])).tensor(
            "output.weight",
            ty,
            &[v, d],
            &get("lm_head.weight", &[v, d]),
        );
        let g = gguf::model_from_file(&parse(w.to_bytes()).unwrap(), GgufOptions { dtype, threads: 2 }).unwrap();
        let prompt: Vec<u32> = (0..13).map(|i| (i * 29 + 5) % v as u32).collect();
        let a = logits_all(&mut engine(&hf, 8, &[3], 2), 1, 0, &prompt);
        let b = logits_all(&mut engine(&g, 8, &[], 1), 1, 0, &prompt);
        for (p, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(bits(x), bits(y), "{dtype:?}: position {p}");
        }
    }
}

// ------------------------------------------------------------------ header and metadata

#[test]
fn truncated_header() {
    let b = tiny().to_bytes();
    expect_err(parse(b[..10].to_vec()), Some(10), &["truncated header", "10 bytes"]);
    expect_err(parse(vec![]), Some(0), &["truncated header"]);
}

#[test]
fn bad_magic() {
    let mut b = tiny().to_bytes();
    b[..4].copy_from_slice(b"GGML");
    expect_err(parse(b), Some(0), &["bad magic", "not a GGUF file"]);
}

#[test]
fn unsupported_versions() {
    for v in [0u32, 1, 4, 0xffff_ffff] {
        let mut b = tiny().to_bytes();
        put_u32(&mut b, 4, v);
        expect_err(parse(b), Some(4), &["version"]);
    }
}

#[test]
fn absurd_counts_are_refused_before_allocating() {
    let mut b = tiny().to_bytes();
    put_u64(&mut b, 8, u64::MAX);
    expect_err(parse(b), Some(8), &["tensor count 18446744073709551615"]);
    let mut b = tiny().to_bytes();
    put_u64(&mut b, 16, 1 << 60);
    expect_err(parse(b), Some(16), &["metadata count"]);
}

#[test]
fn huge_string_length() {
    // the first key's length field is at byte 24
    let mut b = tiny().to_bytes();
    put_u64(&mut b, 24, 1 << 62);
    expect_err(parse(b), Some(24), &["the key of metadata entry 0", "has length 4611686018427387904"]);
    let mut b = tiny().to_bytes();
    put_u64(&mut b, 24, u64::MAX);
    expect_err(parse(b), Some(24), &["has length 18446744073709551615"]);
}

#[test]
fn huge_array_count() {
    let mut w = GgufWriter::new();
    w.kv("a", Value::Array(ValueType::U32, vec![Value::U32(1)]));
    let mut b = w.to_bytes();
    // key "a": 24 + 8 + 1; type 4 bytes; element type 4 bytes; count at 41
    assert_eq!(u64::from_le_bytes(b[41..49].try_into().unwrap()), 1);
    put_u64(&mut b, 41, u64::MAX / 2);
    expect_err(parse(b.clone()), Some(41), &["metadata `a`", "cannot fit"]);
    put_u32(&mut b, 37, 8); // array of strings: each at least 8 bytes
    put_u64(&mut b, 41, 1 << 40);
    expect_err(parse(b), Some(41), &["metadata `a`", "string cannot fit"]);
}

#[test]
fn invalid_utf8_key() {
    let mut b = tiny().to_bytes();
    b[33] = 0xff; // second byte of "general.architecture"
    expect_err(parse(b), Some(33), &["the key of metadata entry 0", "not valid UTF-8"]);
}

#[test]
fn invalid_utf8_value_names_the_key() {
    let mut b = tiny().to_bytes();
    let at = find(&b, b"MARKER");
    b[at + 2] = 0xc3; // a lead byte followed by ASCII
    expect_err(parse(b), Some(at as u64 + 2), &["metadata `tokenizer.chat_template`", "not valid UTF-8"]);
    let mut b = tiny().to_bytes();
    let at = find(&b, "Ġt".as_bytes()); // first occurrence: the token list
    b[at + 1] = 0x41; // breaks the two-byte Ġ
    expect_err(parse(b), Some(at as u64), &["tokenizer.ggml.tokens", "not valid UTF-8"]);
}

#[test]
fn bad_value_types() {
    let mut w = GgufWriter::new();
    w.kv("b", Value::Bool(true));
    let mut b = w.to_bytes();
    // key "b" 24..33, type 33..37, value at 37
    b[37] = 2;
    expect_err(parse(b.clone()), Some(37), &["metadata `b`", "bool value 2"]);
    put_u32(&mut b, 33, 13);
    expect_err(parse(b), Some(33), &["metadata `b`", "unknown value type 13"]);
    // arrays of arrays
    let mut w = GgufWriter::new();
    w.kv("n", Value::Array(ValueType::U8, vec![]));
    let mut b = w.to_bytes();
    put_u32(&mut b, 37, 9);
    expect_err(parse(b), Some(37), &["metadata `n`", "arrays of arrays"]);
}

#[test]
fn duplicate_keys_and_tensors() {
    let mut w = tiny();
    w.kv_str("general.name", "again");
    expect_err(parse(w.to_bytes()), None, &["duplicate metadata key `general.name`"]);
    let mut w = tiny();
    w.tensor("output_norm.weight", GgmlType::F32, &[32], &[0.0; 32]);
    expect_err(parse(w.to_bytes()), None, &["duplicate tensor name `output_norm.weight`"]);
}

#[test]
fn bad_alignment() {
    for a in [0u32, 3, 48, 1 << 30] {
        let mut w = tiny();
        w.kv_u32("general.alignment", a);
        expect_err(parse(w.to_bytes()), None, &["general.alignment", "power of two"]);
    }
    let mut w = tiny();
    w.kv("general.alignment", Value::U64(64));
    expect_err(parse(w.to_bytes()), None, &["general.alignment", "uint32"]);
}

// ------------------------------------------------------------------ tensor infos and data

#[test]
fn unknown_ggml_type() {
    let mut w = tiny();
    w.tensor_raw("mystery.weight", 77, &[32], vec![0; 128]);
    let b = w.to_bytes();
    let type_at = find(&b, b"mystery.weight") + "mystery.weight".len() + 4 + 8;
    expect_err(parse(b), Some(type_at as u64), &["tensor `mystery.weight`", "unknown ggml type 77"]);
}

#[test]
fn known_but_unsupported_type_is_named() {
    // ffn_up as Q4_K (256-value blocks of 144 bytes): the reader knows the type, the loader
    // refuses it by name (before comparing shapes).
    let mut w = tiny();
    let i = w.tensors.iter().position(|t| t.name == "blk.0.ffn_up.weight").unwrap();
    w.tensors[i].ggml_type = 12;
    w.tensors[i].ne = vec![256, 8];
    w.tensors[i].data = vec![0; 8 * 144];
    let b = w.to_bytes();
    let f = parse(b.clone()).unwrap();
    let t = f.tensor_info("blk.0.ffn_up.weight").unwrap();
    assert_eq!(t.ggml_type.name(), "Q4_K");
    let at = t.info_offset;
    expect_err(load(b), Some(at), &["tensor `blk.0.ffn_up.weight`", "Q4_K (ggml type 12)", "not supported"]);
}

#[test]
fn row_length_must_be_a_multiple_of_the_block() {
    let mut w = tiny();
    w.tensor_raw("odd.weight", GgmlType::Q8_0.code(), &[33], vec![0; 34]);
    expect_err(parse(w.to_bytes()), None, &["tensor `odd.weight`", "row length 33", "block size 32"]);
}

#[test]
fn too_many_dimensions_and_overflowing_shapes() {
    let mut w = tiny();
    w.tensor_raw("five.weight", 0, &[1, 1, 1, 1, 1], vec![0; 4]);
    expect_err(parse(w.to_bytes()), None, &["tensor `five.weight`", "5 dimensions"]);
    let mut w = tiny();
    w.tensor_raw("big.weight", 0, &[1 << 40, 1 << 40], vec![]);
    expect_err(parse(w.to_bytes()), None, &["tensor `big.weight`", "overflows"]);
    let mut w = tiny();
    w.tensor_raw("big.weight", 0, &[1 << 30, 1 << 31], vec![]);
    expect_err(parse(w.to_bytes()), None, &["tensor `big.weight`", "outside the file"]);
}

#[test]
fn tensor_data_out_of_range() {
    // the last tensor's data cut short
    let b = tiny().to_bytes();
    let f = parse(b.clone()).unwrap();
    let last = f.tensors.iter().max_by_key(|t| t.offset).unwrap().clone();
    expect_err(
        parse(b[..b.len() - 1].to_vec()),
        Some(last.info_offset),
        &[&format!("tensor `{}`", last.name), "outside the file"],
    );
    // an offset far past the end
    let mut b = tiny().to_bytes();
    let (at, _, off_at) = tensor_fields(&b, "blk.0.attn_q.weight");
    put_u64(&mut b, off_at, 1 << 40);
    expect_err(parse(b.clone()), Some(at as u64), &["tensor `blk.0.attn_q.weight`", "outside the file"]);
    put_u64(&mut b, off_at, u64::MAX - 31);
    expect_err(parse(b), Some(at as u64), &["tensor `blk.0.attn_q.weight`", "outside the file"]);
}

#[test]
fn overlapping_and_misaligned_tensor_data() {
    let mut b = tiny().to_bytes();
    let (_, _, q_off) = tensor_fields(&b, "blk.0.attn_q.weight");
    let (_, _, k_off) = tensor_fields(&b, "blk.0.attn_k.weight");
    let q = u64::from_le_bytes(b[q_off..q_off + 8].try_into().unwrap());
    put_u64(&mut b, k_off, q);
    expect_err(parse(b), None, &["overlaps", "blk.0.attn_q.weight", "blk.0.attn_k.weight"]);
    let mut b = tiny().to_bytes();
    put_u64(&mut b, k_off, q + 4);
    expect_err(parse(b), None, &["tensor `blk.0.attn_k.weight`", "not a multiple of the alignment 32"]);
}

// ------------------------------------------------------------------ model-level checks

#[test]
fn vocab_mismatch_is_named() {
    // 257 tokens in the tokenizer, 258 rows in the embedding
    let mut w = tiny_meta(257);
    tiny_tensors(&mut w, 258);
    let b = w.to_bytes();
    let at = parse(b.clone()).unwrap().get("tokenizer.ggml.tokens").unwrap().offset;
    expect_err(load(b), Some(at), &["tokenizer.ggml.tokens", "does not fit the model", "257 tokens", "258 rows"]);
}

#[test]
fn merges_naming_unknown_tokens() {
    for (merge, bad) in [("Ġ zz", "\"zz\""), ("a b", "\"ab\""), ("Ġt", "not two tokens")] {
        let mut w = tiny();
        let i = w.metadata.iter().position(|(k, _)| k == "tokenizer.ggml.merges").unwrap();
        w.metadata[i].1 = Value::Array(ValueType::String, vec![Value::String(merge.into())]);
        let b = w.to_bytes();
        let at = parse(b.clone()).unwrap().get("tokenizer.ggml.merges").unwrap().offset;
        expect_err(load(b), Some(at), &["tokenizer.ggml.merges", "merge 0", bad]);
    }
}

#[test]
fn unsupported_architecture_and_tokenizer_are_named() {
    let mut w = tiny();
    w.metadata[0].1 = Value::String("gpt2".into());
    let b = w.to_bytes();
    expect_err(load(b), Some(24 + 8 + "general.architecture".len() as u64), &["architecture `gpt2` is not supported"]);
    let mut w = tiny();
    let i = w.metadata.iter().position(|(k, _)| k == "tokenizer.ggml.model").unwrap();
    w.metadata[i].1 = Value::String("bert".into());
    expect_err(load(w.to_bytes()), None, &["tokenizer.ggml.model", "`bert` is not supported"]);
    let mut w = tiny();
    w.kv_u32("llama.expert_count", 8);
    expect_err(load(w.to_bytes()), None, &["llama.expert_count", "mixture-of-experts"]);
    let mut w = tiny();
    w.kv_str("llama.rope.scaling.type", "yarn");
    expect_err(load(w.to_bytes()), None, &["llama.rope.scaling.type", "`yarn`"]);
    let mut w = tiny();
    w.tensor("rope_freqs.weight", GgmlType::F32, &[8], &[1.0; 8]);
    expect_err(load(w.to_bytes()), None, &["rope_freqs.weight", "not supported"]);
}

#[test]
fn missing_unknown_and_misshapen_tensors() {
    let mut w = tiny();
    w.tensors.retain(|t| t.name != "blk.0.ffn_up.weight");
    expect_err(load(w.to_bytes()), None, &["missing", "model.layers.0.mlp.up_proj.weight"]);
    let mut w = tiny();
    w.tensor("blk.0.attn_q.bias", GgmlType::F32, &[32], &[0.0; 32]);
    expect_err(load(w.to_bytes()), None, &["tensor `blk.0.attn_q.bias`", "not part of a llama model"]);
    let mut w = tiny();
    let i = w.tensors.iter().position(|t| t.name == "blk.0.attn_k.weight").unwrap();
    w.tensors[i].ne = vec![32, 8];
    w.tensors[i].data.truncate(8 * 20);
    expect_err(load(w.to_bytes()), None, &["tensor `blk.0.attn_k.weight`", "[8, 32]", "[16, 32]"]);
    let mut w = tiny();
    w.metadata.retain(|(k, _)| k != "llama.attention.layer_norm_rms_epsilon");
    expect_err(load(w.to_bytes()), None, &["llama.attention.layer_norm_rms_epsilon", "missing"]);
    let mut w = tiny();
    w.kv_u32("llama.rope.dimension_count", 8);
    expect_err(load(w.to_bytes()), None, &["llama.rope.dimension_count", "partial rotary"]);
    let mut w = tiny();
    w.kv_u32("tokenizer.ggml.bos_token_id", 999);
    expect_err(load(w.to_bytes()), None, &["tokenizer.ggml.bos_token_id", "999"]);
}

// ------------------------------------------------------------------ robustness

/// Every prefix of a valid file is refused with an error naming the file; none panics.
#[test]
fn every_truncation_is_an_error() {
    let b = tiny().to_bytes();
    for n in 0..b.len() {
        match parse(b[..n].to_vec()).and_then(|f| gguf::model_from_file(&f, GgufOptions::default())) {
            Ok(_) => panic!("prefix of {n} of {} bytes accepted", b.len()),
            Err(e) => assert!(e.to_string().contains(NAME), "{e}"),
        }
    }
}

/// Random byte changes in the header, metadata and tensor infos: an error or a model, never a
/// panic, and never an allocation the file cannot back.
#[test]
fn random_corruption_never_panics() {
    let b = tiny().to_bytes();
    let f = parse(b.clone()).unwrap();
    let meta_len = f.data_offset as usize;
    let mut x = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut errors = 0;
    for _ in 0..3000 {
        let mut c = b.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() as usize) % meta_len;
            c[at] = match next() % 4 {
                0 => 0xff,
                1 => 0,
                2 => c[at] ^ (1 << (next() % 8)),
                _ => next() as u8,
            };
        }
        if let Err(e) = parse(c).and_then(|f| gguf::model_from_file(&f, GgufOptions { dtype: DType::F32, threads: 1 }))
        {
            assert!(e.to_string().contains(NAME), "{e}");
            errors += 1;
        }
    }
    eprintln!("{errors} of 3000 corruptions refused");
    assert!(errors > 1000, "only {errors} corruptions refused");
}
