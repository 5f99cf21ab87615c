//! Seeded random checkpoints of a given shape (`faascale synth`): for tests, benchmarks, and
//! machines that cannot hold a real model. Same seed, same bytes.

use crate::config::ModelConfig;
use crate::error::{PipelineError, Result};
use crate::sampler::Rng;
use kernels::DType;
use serde_json::{json, Value};
use std::path::Path;

/// Presets by name: `smollm2-135m` (SmolLM2-135M's shape), `tiny-llama`, `tiny-qwen2`.
pub const PRESETS: &[&str] = &["smollm2-135m", "tiny-llama", "tiny-qwen2"];

pub fn preset(name: &str) -> Option<(Value, DType)> {
    Some(match name {
        "smollm2-135m" => (
            json!({
                "architectures": ["LlamaForCausalLM"], "model_type": "llama",
                "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
                "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                "head_dim": 64, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
                "max_position_embeddings": 8192, "tie_word_embeddings": true,
                "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "torch_dtype": "bfloat16"
            }),
            DType::BF16,
        ),
        "tiny-llama" => (
            json!({
                "architectures": ["LlamaForCausalLM"], "model_type": "llama",
                "vocab_size": 384, "hidden_size": 64, "intermediate_size": 176,
                "num_hidden_layers": 8, "num_attention_heads": 4, "num_key_value_heads": 2,
                "head_dim": 16, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                "max_position_embeddings": 256, "tie_word_embeddings": false,
                "bos_token_id": 1, "eos_token_id": [2, 3], "hidden_act": "silu", "torch_dtype": "bfloat16"
            }),
            DType::BF16,
        ),
        "tiny-qwen2" => (
            json!({
                "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
                "vocab_size": 384, "hidden_size": 48, "intermediate_size": 112,
                "num_hidden_layers": 8, "num_attention_heads": 6, "num_key_value_heads": 2,
                "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
                "max_position_embeddings": 256, "tie_word_embeddings": true,
                "bos_token_id": null, "eos_token_id": 2, "hidden_act": "silu", "torch_dtype": "float32"
            }),
            DType::F32,
        ),
        _ => return None,
    })
}

pub fn dtype_from_torch(name: &str) -> Option<DType> {
    match name {
        "float32" | "f32" => Some(DType::F32),
        "bfloat16" | "bf16" => Some(DType::BF16),
        "float16" | "f16" => Some(DType::F16),
        _ => None,
    }
}

fn torch_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
    }
}

fn encode(values: impl Iterator<Item = f32>, dtype: DType, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * dtype.size_bytes());
    for v in values {
        match dtype {
            DType::F32 => out.extend_from_slice(&v.to_le_bytes()),
            DType::BF16 => out.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
            DType::F16 => out.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
        }
    }
    out
}

/// Writes `config.json` and `model.safetensors` for `config` into `dir`, weights drawn
/// uniformly with standard deviation 0.02 (norm weights around 1), from `seed`.
pub fn write_checkpoint(dir: &Path, mut config: Value, dtype: DType, seed: u64) -> Result<ModelConfig> {
    let cfg_path = dir.join("config.json");
    if let Some(obj) = config.as_object_mut() {
        obj.insert("torch_dtype".into(), json!(torch_name(dtype)));
    }
    let text = serde_json::to_string_pretty(&config).expect("serialisable");
    let cfg = ModelConfig::from_json_str(&text, &cfg_path)?;
    std::fs::create_dir_all(dir).map_err(|source| PipelineError::Io {
        path: dir.to_path_buf(),
        op: "create directory",
        source,
    })?;
    std::fs::write(&cfg_path, text + "\n").map_err(|source| PipelineError::Io {
        path: cfg_path.clone(),
        op: "write",
        source,
    })?;

    let mut rng = Rng::new(seed);
    let mut tensors: Vec<(String, DType, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, mean: f32, std: f32, dt: DType, rng: &mut Rng| {
        let n: usize = shape.iter().product();
        let a = std * 3f32.sqrt();
        let vals = (0..n).map(|_| mean + a * (2.0 * rng.next_f64() as f32 - 1.0));
        tensors.push((name, dt, shape, encode(vals, dt, n)));
    };
    let (d, f, v, qd, kvd) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.q_dim(), cfg.kv_dim());
    add("model.embed_tokens.weight".into(), vec![v, d], 0.0, 0.02, dtype, &mut rng);
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        add(format!("{p}.input_layernorm.weight"), vec![d], 1.0, 0.05, dtype, &mut rng);
        add(format!("{p}.self_attn.q_proj.weight"), vec![qd, d], 0.0, 0.02, dtype, &mut rng);
        add(format!("{p}.self_attn.k_proj.weight"), vec![kvd, d], 0.0, 0.02, dtype, &mut rng);
        add(format!("{p}.self_attn.v_proj.weight"), vec![kvd, d], 0.0, 0.02, dtype, &mut rng);
        if cfg.attention_bias {
            add(format!("{p}.self_attn.q_proj.bias"), vec![qd], 0.0, 0.02, dtype, &mut rng);
            add(format!("{p}.self_attn.k_proj.bias"), vec![kvd], 0.0, 0.02, dtype, &mut rng);
            add(format!("{p}.self_attn.v_proj.bias"), vec![kvd], 0.0, 0.02, dtype, &mut rng);
        }
        add(format!("{p}.self_attn.o_proj.weight"), vec![d, qd], 0.0, 0.02, dtype, &mut rng);
        add(format!("{p}.post_attention_layernorm.weight"), vec![d], 1.0, 0.05, dtype, &mut rng);
        add(format!("{p}.mlp.gate_proj.weight"), vec![f, d], 0.0, 0.02, dtype, &mut rng);
        add(format!("{p}.mlp.up_proj.weight"), vec![f, d], 0.0, 0.02, dtype, &mut rng);
        add(format!("{p}.mlp.down_proj.weight"), vec![d, f], 0.0, 0.02, dtype, &mut rng);
    }
    add("model.norm.weight".into(), vec![d], 1.0, 0.05, dtype, &mut rng);
    if !cfg.tie_word_embeddings {
        add("lm_head.weight".into(), vec![v, d], 0.0, 0.02, dtype, &mut rng);
    }
    crate::safetensors::write(&dir.join("model.safetensors"), &tensors)?;
    Ok(cfg)
}
