//! Which tensors a stage needs, under their Hugging Face names, with shapes from the config.
//!
//! Matrices stay in their stored dtype (f32, bf16 or f16) as views of the memory-mapped
//! file; norm weights and biases, a few KB each, are converted to f32 once.

use crate::blocks::BlockLayout;
use crate::config::ModelConfig;
use crate::error::Result;
use crate::tensor::Tensor;
use std::ops::Range;

/// Anything that can hand out tensors by name with a checked shape: a safetensors checkpoint
/// (below), a GGUF file (`gguf::GgufWeights`) or a packed block file (`packed::PackedFile`).
pub trait WeightSource {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor>;
    fn contains(&self, name: &str) -> bool;
}

impl WeightSource for crate::safetensors::Checkpoint {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.get(name, shape)
    }
    fn contains(&self, name: &str) -> bool {
        crate::safetensors::Checkpoint::contains(self, name)
    }
}

pub struct LayerWeights {
    pub attn_norm: Vec<f32>,  // [d]
    pub wq: Tensor,           // [n_heads * head_dim, d]
    pub wk: Tensor,           // [n_kv_heads * head_dim, d]
    pub wv: Tensor,           // [n_kv_heads * head_dim, d]
    pub bq: Option<Vec<f32>>, // [n_heads * head_dim]   (Qwen2)
    pub bk: Option<Vec<f32>>, // [n_kv_heads * head_dim] (Qwen2)
    pub bv: Option<Vec<f32>>, // [n_kv_heads * head_dim] (Qwen2)
    pub wo: Tensor,           // [d, n_heads * head_dim]
    pub mlp_norm: Vec<f32>,   // [d]
    pub w_gate: Tensor,       // [ffn, d]
    pub w_up: Tensor,         // [ffn, d]
    pub w_down: Tensor,       // [d, ffn]
}

/// The weights of execution blocks [a, b): the embedding when a == 0, the final norm and
/// LM head when b == B (a tied head is the embedding matrix, read again).
pub struct StageWeights {
    pub layers: Range<usize>,
    pub embed: Option<Tensor>,        // [vocab, d]
    pub layer: Vec<LayerWeights>,     // one per layer in `layers`
    pub final_norm: Option<Vec<f32>>, // [d]
    pub lm_head: Option<Tensor>,      // [vocab, d]
}

impl StageWeights {
    pub fn load(cfg: &ModelConfig, src: &dyn WeightSource, layout: &BlockLayout, blocks: Range<usize>) -> Result<Self> {
        let layers = layout.layer_range(blocks.clone())?;
        let (d, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let first = blocks.start == 0;
        let last = blocks.end == layout.num_blocks;
        let embed = if first || (last && cfg.tie_word_embeddings && !src.contains("lm_head.weight")) {
            Some(src.tensor("model.embed_tokens.weight", &[v, d])?)
        } else {
            None
        };
        let mut layer = Vec::with_capacity(layers.len());
        for i in layers.clone() {
            let p = format!("model.layers.{i}");
            let bias = |name: &str, n: usize| -> Result<Option<Vec<f32>>> {
                if cfg.attention_bias {
                    Ok(Some(src.tensor(&format!("{p}.self_attn.{name}.bias"), &[n])?.to_f32_vec()?))
                } else {
                    Ok(None)
                }
            };
            layer.push(LayerWeights {
                attn_norm: src.tensor(&format!("{p}.input_layernorm.weight"), &[d])?.to_f32_vec()?,
                wq: src.tensor(&format!("{p}.self_attn.q_proj.weight"), &[qd, d])?,
                wk: src.tensor(&format!("{p}.self_attn.k_proj.weight"), &[kvd, d])?,
                wv: src.tensor(&format!("{p}.self_attn.v_proj.weight"), &[kvd, d])?,
                bq: bias("q_proj", qd)?,
                bk: bias("k_proj", kvd)?,
                bv: bias("v_proj", kvd)?,
                wo: src.tensor(&format!("{p}.self_attn.o_proj.weight"), &[d, qd])?,
                mlp_norm: src.tensor(&format!("{p}.post_attention_layernorm.weight"), &[d])?.to_f32_vec()?,
                w_gate: src.tensor(&format!("{p}.mlp.gate_proj.weight"), &[f, d])?,
                w_up: src.tensor(&format!("{p}.mlp.up_proj.weight"), &[f, d])?,
                w_down: src.tensor(&format!("{p}.mlp.down_proj.weight"), &[d, f])?,
            });
        }
        let (final_norm, lm_head) = if last {
            let norm = src.tensor("model.norm.weight", &[d])?.to_f32_vec()?;
            let head = if cfg.tie_word_embeddings && !src.contains("lm_head.weight") {
                embed.clone().expect("tied embedding loaded above when there is no lm_head.weight")
            } else {
                src.tensor("lm_head.weight", &[v, d])?
            };
            (Some(norm), Some(head))
        } else {
            (None, None)
        };
        let embed = if first { embed } else { None };
        Ok(StageWeights { layers, embed, layer, final_norm, lm_head })
    }
}
