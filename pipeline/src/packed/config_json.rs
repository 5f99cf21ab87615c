//! `ModelConfig` written back as a Hugging Face `config.json` object, in a canonical form
//! that `ModelConfig::from_json_str` reads back to the identical config (checked by the
//! writer for every file it packs). A packed model may come from GGUF, which has no
//! config.json, so the header stores this form rather than any original text.

use crate::config::{ModelConfig, RopeScaling};
use serde_json::{json, Value};

pub fn config_to_json(c: &ModelConfig) -> Value {
    let rope_scaling = match &c.rope_scaling {
        RopeScaling::None => Value::Null,
        RopeScaling::Linear { factor } => json!({ "rope_type": "linear", "factor": factor }),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => json!({
            "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor, "original_max_position_embeddings": original_max_position_embeddings,
        }),
    };
    json!({
        "architectures": [c.arch.hf_name()],
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "rope_scaling": rope_scaling,
        // Already the smaller of the context and any sliding window: no window is written.
        "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": c.tie_word_embeddings,
        "attention_bias": c.attention_bias,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_ids,
        "hidden_act": "silu",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn round_trip(c: &ModelConfig) -> ModelConfig {
        ModelConfig::from_json_str(&config_to_json(c).to_string(), Path::new("config.json")).unwrap()
    }

    #[test]
    fn presets_and_rope_variants_round_trip() {
        for name in crate::synth::PRESETS {
            let (v, _) = crate::synth::preset(name).unwrap();
            let c = ModelConfig::from_json_str(&v.to_string(), Path::new("config.json")).unwrap();
            assert_eq!(round_trip(&c), c, "{name}");
            for rope in [
                RopeScaling::Linear { factor: 2.5 },
                RopeScaling::Llama3 {
                    factor: 8.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 8192.0,
                },
            ] {
                let c2 = ModelConfig {
                    rope_scaling: rope,
                    rms_norm_eps: 1.234567e-6,
                    rope_theta: 500000.0,
                    bos_token_id: None,
                    ..c.clone()
                };
                assert_eq!(round_trip(&c2), c2, "{name}");
            }
        }
        // Mistral: the sliding window already folded into the context length.
        let m = ModelConfig::from_json_str(
            r#"{"architectures": ["MistralForCausalLM"], "vocab_size": 100, "hidden_size": 64, "intermediate_size": 96,
                "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 32768, "sliding_window": 4096}"#,
            Path::new("config.json"),
        )
        .unwrap();
        assert_eq!(round_trip(&m), m);
    }
}
