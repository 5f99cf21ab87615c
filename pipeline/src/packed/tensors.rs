//! Which tensors a model has, in which execution block, from its config alone: the same
//! Hugging Face names and shapes `weights::StageWeights` asks for. The writer packs these
//! (and nothing else); `faascale inspect` counts them for any model format.

use crate::blocks::BlockLayout;
use crate::config::ModelConfig;

/// One tensor to store: `name` in the packed file, read from the source as `source_name`
/// (they differ only for a tied LM head, stored as a copy of the embedding).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub source_name: String,
    pub shape: Vec<usize>,
    /// Execution block of `layout`.
    pub block: usize,
}

pub const EMBED: &str = "model.embed_tokens.weight";
pub const LM_HEAD: &str = "lm_head.weight";

/// The tensors of `cfg` cut into `layout`'s blocks, in storage order: block 0 the embedding
/// then its layers; each block its layers in order; the last block then the final norm and
/// `lm_head.weight` (read from the embedding when `source_has_lm_head` is false).
pub fn model_tensors(cfg: &ModelConfig, layout: &BlockLayout, source_has_lm_head: bool) -> Vec<TensorSpec> {
    let (d, f, v, qd, kvd) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.q_dim(), cfg.kv_dim());
    let last = layout.num_blocks - 1;
    let mut out = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, block: usize| {
        out.push(TensorSpec { source_name: name.clone(), name, shape, block });
    };
    push(EMBED.into(), vec![v, d], 0);
    for b in 0..layout.num_blocks {
        for i in layout.block_layers(b) {
            let p = format!("model.layers.{i}");
            push(format!("{p}.input_layernorm.weight"), vec![d], b);
            push(format!("{p}.self_attn.q_proj.weight"), vec![qd, d], b);
            push(format!("{p}.self_attn.k_proj.weight"), vec![kvd, d], b);
            push(format!("{p}.self_attn.v_proj.weight"), vec![kvd, d], b);
            if cfg.attention_bias {
                push(format!("{p}.self_attn.q_proj.bias"), vec![qd], b);
                push(format!("{p}.self_attn.k_proj.bias"), vec![kvd], b);
                push(format!("{p}.self_attn.v_proj.bias"), vec![kvd], b);
            }
            push(format!("{p}.self_attn.o_proj.weight"), vec![d, qd], b);
            push(format!("{p}.post_attention_layernorm.weight"), vec![d], b);
            push(format!("{p}.mlp.gate_proj.weight"), vec![f, d], b);
            push(format!("{p}.mlp.up_proj.weight"), vec![f, d], b);
            push(format!("{p}.mlp.down_proj.weight"), vec![d, f], b);
        }
    }
    push("model.norm.weight".into(), vec![d], last);
    let head_source = if source_has_lm_head || !cfg.tie_word_embeddings { LM_HEAD } else { EMBED };
    out.push(TensorSpec { name: LM_HEAD.into(), source_name: head_source.into(), shape: vec![v, d], block: last });
    out
}
