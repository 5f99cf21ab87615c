//! GGUF model files (llama.cpp's format): parsed over a memory map, dequantized at load.
//!
//! `open(path, GgufOptions::default())` gives a `Model` like any other: a `ModelConfig` built
//! from the `llama.*` metadata, the tensors dequantized to f32 (what transformers computes
//! with, so outputs match it) or bf16 and renamed to Hugging Face names, the tokenizer rebuilt
//! from `tokenizer.ggml.*` (see `tokenizer`), and the chat template string.
//!
//! Supported: GGUF v2/v3, architecture `llama` (Llama, SmolLM, Mistral-7B-style files),
//! tensor types F32, F16, BF16, Q8_0, Q4_0, Q4_1. Anything else is refused by name.
//!
//! llama.cpp's converter permutes the rows of the Q and K projections so that its RoPE can
//! rotate adjacent pairs; the Hugging Face layout (and this engine) rotates halves
//! (`rotate_half`). The loader undoes the permutation, as transformers' GGUF loader does.

pub mod dequant;
pub mod reader;
pub mod tokenizer;
pub mod writer;

pub use dequant::GgmlType;
pub use reader::{GgufFile, MetaEntry, TensorInfo, Value, ValueType};
pub use writer::GgufWriter;

use crate::config::ModelConfig;
use crate::error::{PipelineError, Result};
use crate::model::{Format, Model};
use crate::tensor::Tensor;
use crate::weights::WeightSource;
use kernels::DType;
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How to load a GGUF file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GgufOptions {
    /// dtype of the dequantized matrices: `F32` (default; matches transformers) or `BF16`
    /// (half the memory). Norm weights are always kept in f32.
    pub dtype: DType,
    /// Threads that dequantize; 0 = the engine's default (`FAASCALE_THREADS` or every core).
    pub threads: usize,
}

impl Default for GgufOptions {
    fn default() -> Self {
        GgufOptions { dtype: DType::F32, threads: 0 }
    }
}

/// The dequantized tensors of a GGUF file under their Hugging Face names (owned buffers).
pub struct GgufWeights {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl GgufWeights {
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Bytes held by all tensors.
    pub fn nbytes(&self) -> usize {
        self.tensors.values().map(|t| t.bytes().len()).sum()
    }
}

impl WeightSource for GgufWeights {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| PipelineError::MissingTensor { tensor: name.to_string(), dir: self.path.clone() })?;
        if t.shape != shape {
            return Err(PipelineError::TensorShape {
                path: self.path.clone(),
                tensor: name.to_string(),
                expected: shape.to_vec(),
                got: t.shape.clone(),
            });
        }
        Ok(t.clone())
    }

    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// The Hugging Face name of a llama GGUF tensor, and for Q/K which projection it is.
pub fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, leaf) = rest.split_once('.')?;
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) || (layer.len() > 1 && layer.starts_with('0')) {
        return None;
    }
    let hf = match leaf {
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// Upper bounds, as `ModelConfig` has them, checked before anything is sized from them.
const MAX_DIM: u64 = 1 << 20;
const MAX_LAYERS: u64 = 4096;
const MAX_CONTEXT: u64 = 1 << 22;

/// The Hugging Face `config.json` equivalent of a llama GGUF's metadata (what transformers
/// builds from it), with the vocabulary size `vocab` and tied embeddings when the file has no
/// `output.weight`.
pub fn config_json(f: &GgufFile, vocab: usize) -> Result<serde_json::Value> {
    let arch = f.req_str("general.architecture")?;
    if arch != "llama" {
        return Err(f.key_err("general.architecture", format!("architecture `{arch}` is not supported (only `llama`)")));
    }
    let req = |key: &str, max: u64| -> Result<u64> {
        let k = format!("llama.{key}");
        if let Some(Value::Array(..)) = f.value(&k) {
            return Err(f.key_err(&k, "per-layer values are not supported"));
        }
        match f.opt_uint(&k, max)? {
            Some(0) => Err(f.key_err(&k, "must be positive")),
            Some(v) => Ok(v),
            None => Err(f.key_err(&k, "missing")),
        }
    };
    let opt = |key: &str, max: u64| -> Result<Option<u64>> {
        let k = format!("llama.{key}");
        if let Some(Value::Array(..)) = f.value(&k) {
            return Err(f.key_err(&k, "per-layer values are not supported"));
        }
        f.opt_uint(&k, max)
    };
    let layers = req("block_count", MAX_LAYERS)?;
    let hidden = req("embedding_length", MAX_DIM)?;
    let ffn = req("feed_forward_length", MAX_DIM)?;
    let heads = req("attention.head_count", MAX_DIM)?;
    let kv_heads = opt("attention.head_count_kv", MAX_DIM)?.unwrap_or(heads);
    if kv_heads == 0 || heads % kv_heads != 0 {
        return Err(
            f.key_err("llama.attention.head_count_kv", format!("{kv_heads} does not divide the head count {heads}"))
        );
    }
    if let Some(e) = opt("expert_count", u32::MAX as u64)? {
        if e > 0 {
            return Err(f.key_err(
                "llama.expert_count",
                format!("{e} experts: mixture-of-experts llama files are not supported"),
            ));
        }
    }
    let head_dim = match opt("attention.key_length", MAX_DIM)? {
        Some(k) => k,
        None => {
            if hidden % heads != 0 {
                return Err(f.key_err(
                    "llama.attention.head_count",
                    format!("{heads} heads do not divide embedding_length {hidden} and attention.key_length is absent"),
                ));
            }
            hidden / heads
        }
    };
    if let Some(v) = opt("attention.value_length", MAX_DIM)? {
        if v != head_dim {
            return Err(
                f.key_err("llama.attention.value_length", format!("{v} differs from the key length {head_dim}"))
            );
        }
    }
    if let Some(r) = opt("rope.dimension_count", MAX_DIM)? {
        if r != head_dim {
            return Err(f.key_err(
                "llama.rope.dimension_count",
                format!("{r} differs from the head size {head_dim}: partial rotary embeddings are not supported"),
            ));
        }
    }
    let eps = f
        .opt_f64("llama.attention.layer_norm_rms_epsilon")?
        .ok_or_else(|| f.key_err("llama.attention.layer_norm_rms_epsilon", "missing"))?;
    let theta = f.opt_f64("llama.rope.freq_base")?.unwrap_or(10000.0);
    let context = opt("context_length", MAX_CONTEXT)?.unwrap_or(2048);
    let scaling = match f.value("llama.rope.scaling.type") {
        None => None,
        Some(_) => match f.req_str("llama.rope.scaling.type")? {
            "none" => None,
            "linear" => {
                let factor = f
                    .opt_f64("llama.rope.scaling.factor")?
                    .ok_or_else(|| f.key_err("llama.rope.scaling.factor", "missing for linear RoPE scaling"))?;
                Some(json!({"rope_type": "linear", "factor": factor}))
            }
            other => {
                return Err(f.key_err(
                    "llama.rope.scaling.type",
                    format!("RoPE scaling `{other}` is not supported (none, linear)"),
                ))
            }
        },
    };
    if let Some(v) = f.opt_uint("llama.vocab_size", u32::MAX as u64)? {
        if v as usize != vocab {
            return Err(f.key_err("llama.vocab_size", format!("{v} differs from the vocabulary size {vocab}")));
        }
    }
    let tied = f.tensor_info("output.weight").is_none();
    let id = |key: &str| -> Result<Option<u64>> { f.opt_uint(key, u32::MAX as u64) };
    let mut cfg = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": eps,
        "rope_theta": theta,
        "max_position_embeddings": context,
        "tie_word_embeddings": tied,
        "hidden_act": "silu",
        "bos_token_id": id("tokenizer.ggml.bos_token_id")?,
        "eos_token_id": id("tokenizer.ggml.eos_token_id")?,
    });
    if let Some(s) = scaling {
        cfg["rope_scaling"] = s;
    }
    Ok(cfg)
}

/// Opens a GGUF file as a `Model`: parses it, checks every tensor, rebuilds the tokenizer and
/// dequantizes the weights.
/// Whether `path` starts with the GGUF magic (a cheap check for dispatch; `open` validates).
pub fn is_gguf_file(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"GGUF"
}

pub fn open(path: &Path, opts: GgufOptions) -> Result<Model> {
    let f = GgufFile::open(path)?;
    model_from_file(&f, opts)
}

/// `open` for a file already parsed (or built in memory).
pub fn model_from_file(f: &GgufFile, opts: GgufOptions) -> Result<Model> {
    let t0 = std::time::Instant::now();
    if !matches!(opts.dtype, DType::F32 | DType::BF16) {
        return Err(PipelineError::Invalid {
            what: "GGUF load dtype",
            msg: format!("{:?}; use F32 or BF16", opts.dtype),
        });
    }
    let path = f.path().to_path_buf();
    // Architecture first: a file of another architecture is refused by that name.
    let arch = f.req_str("general.architecture")?;
    if arch != "llama" {
        return Err(f.key_err("general.architecture", format!("architecture `{arch}` is not supported (only `llama`)")));
    }
    let embd = f
        .tensor_info("token_embd.weight")
        .ok_or_else(|| f.err(f.metadata_end(), "tensor `token_embd.weight` is missing"))?;
    if embd.ne.len() != 2 {
        return Err(
            f.err(embd.info_offset, format!("tensor `token_embd.weight` has dimensions {:?}, expected 2", embd.ne))
        );
    }
    let embd_rows = embd.ne[1] as usize;
    // The tokenizer must fit the embedding.
    let tok = if f.value("tokenizer.ggml.model").is_some() || f.value("tokenizer.ggml.tokens").is_some() {
        let n = match f.value("tokenizer.ggml.tokens") {
            Some(Value::Array(ValueType::String, items)) => items.len(),
            Some(v) => {
                return Err(
                    f.key_err("tokenizer.ggml.tokens", format!("expected an array of strings, got {}", v.type_desc()))
                )
            }
            None => return Err(f.key_err("tokenizer.ggml.tokens", "missing")),
        };
        if n != embd_rows {
            return Err(f.key_err(
                "tokenizer.ggml.tokens",
                format!(
                    "the tokenizer does not fit the model: {n} tokens, but token_embd.weight has {embd_rows} rows (the vocabulary size)"
                ),
            ));
        }
        Some(tokenizer::from_gguf(f)?)
    } else {
        None
    };
    let cfg_json = config_json(f, embd_rows)?;
    let config = ModelConfig::from_json_str(&cfg_json.to_string(), &path)?;

    // Every tensor: a known name, a supported type, the shape the config implies.
    let (d, ffn, v) = (config.hidden_size, config.intermediate_size, config.vocab_size);
    let (qd, kvd) = (config.q_dim(), config.kv_dim());
    let mut expected: HashMap<String, Vec<usize>> = HashMap::new();
    expected.insert("model.embed_tokens.weight".into(), vec![v, d]);
    expected.insert("model.norm.weight".into(), vec![d]);
    if !config.tie_word_embeddings {
        expected.insert("lm_head.weight".into(), vec![v, d]);
    }
    for i in 0..config.num_hidden_layers {
        let p = format!("model.layers.{i}");
        for (leaf, shape) in [
            ("self_attn.q_proj.weight", vec![qd, d]),
            ("self_attn.k_proj.weight", vec![kvd, d]),
            ("self_attn.v_proj.weight", vec![kvd, d]),
            ("self_attn.o_proj.weight", vec![d, qd]),
            ("mlp.gate_proj.weight", vec![ffn, d]),
            ("mlp.up_proj.weight", vec![ffn, d]),
            ("mlp.down_proj.weight", vec![d, ffn]),
            ("input_layernorm.weight", vec![d]),
            ("post_attention_layernorm.weight", vec![d]),
        ] {
            expected.insert(format!("{p}.{leaf}"), shape);
        }
    }
    let mut plan: Vec<(&TensorInfo, String)> = Vec::with_capacity(f.tensors.len());
    for t in &f.tensors {
        if t.name == "rope_freqs.weight" {
            return Err(f.err(
                t.info_offset,
                "tensor `rope_freqs.weight` (llama.cpp's per-frequency RoPE factors, e.g. Llama 3.1 scaling) is not supported",
            ));
        }
        let hf = hf_name(&t.name).filter(|n| expected.contains_key(n)).ok_or_else(|| {
            f.err(t.info_offset, format!("tensor `{}` is not part of a llama model with this config", t.name))
        })?;
        if !t.ggml_type.is_supported() {
            return Err(f.err(
                t.info_offset,
                format!(
                    "tensor `{}` has type {}, which is not supported (supported: {})",
                    t.name,
                    t.ggml_type,
                    GgmlType::supported_names()
                ),
            ));
        }
        let want = &expected[&hf];
        if &t.shape() != want {
            return Err(f.err(
                t.info_offset,
                format!("tensor `{}` ({hf}) has shape {:?}, the metadata implies {want:?}", t.name, t.shape()),
            ));
        }
        plan.push((t, hf));
    }
    if plan.len() != expected.len() {
        let have: std::collections::HashSet<&str> = plan.iter().map(|(_, n)| n.as_str()).collect();
        let mut missing: Vec<&String> = expected.keys().filter(|n| !have.contains(n.as_str())).collect();
        missing.sort();
        return Err(f.err(
            f.metadata_end(),
            format!(
                "{} tensors are missing, first: {} (GGUF name of a Hugging Face tensor)",
                missing.len(),
                missing[0]
            ),
        ));
    }

    let threads = if opts.threads == 0 { kernels::Pool::default_threads() } else { opts.threads };
    let mut tensors = HashMap::with_capacity(plan.len());
    for (t, hf) in plan {
        let shape = t.shape();
        let (rows, cols) = match shape[..] {
            [n] => (1, n),
            [r, c] => (r, c),
            _ => unreachable!("shapes checked above"),
        };
        let out = if shape.len() == 1 { DType::F32 } else { opts.dtype };
        let n_head = if hf.ends_with("q_proj.weight") {
            Some(config.num_attention_heads)
        } else if hf.ends_with("k_proj.weight") {
            Some(config.num_key_value_heads)
        } else {
            None
        };
        let map = n_head.map(|h| dequant::unpermute_qk_row(h, rows));
        let map_ref: Option<&(dyn Fn(usize) -> usize + Sync)> = map.as_ref().map(|m| m as _);
        let bytes = dequant::dequantize_matrix(t.ggml_type, f.tensor_data(t), rows, cols, map_ref, out, threads);
        tensors.insert(hf, Tensor::from_vec(bytes, out, shape));
    }
    let weights = GgufWeights { path: path.clone(), tensors };
    let chat_template = match f.value("tokenizer.chat_template") {
        None => None,
        Some(_) => Some(f.req_str("tokenizer.chat_template")?.to_string()),
    };
    log::info!(
        "{}: GGUF v{} loaded in {:.2}s ({} tensors, {:.0} MB as {:?})",
        path.display(),
        f.version,
        t0.elapsed().as_secs_f64(),
        weights.tensors.len(),
        weights.nbytes() as f64 / 1e6,
        opts.dtype
    );
    Ok(Model {
        path: path.clone(),
        format: Format::Gguf,
        config: Arc::new(config),
        weights: Arc::new(weights),
        tokenizer: tok.map(|t| crate::tokenizer::Tokenizer::from_inner(t.tokenizer, &path)),
        chat_template,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_hugging_face() {
        assert_eq!(hf_name("blk.12.attn_q.weight").unwrap(), "model.layers.12.self_attn.q_proj.weight");
        assert_eq!(hf_name("blk.0.ffn_norm.weight").unwrap(), "model.layers.0.post_attention_layernorm.weight");
        assert_eq!(hf_name("output.weight").unwrap(), "lm_head.weight");
        assert!(hf_name("blk.x.attn_q.weight").is_none());
        assert!(hf_name("blk.01.attn_q.weight").is_none());
        assert!(hf_name("blk.1.attn_q.bias").is_none());
    }
}
