//! `config.json` of a Hugging Face checkpoint: Llama, Mistral and Qwen2 causal LMs.
//!
//! Accepts both spellings of RoPE: `rope_theta` + `rope_scaling` (transformers ≤ 4.x) and
//! `rope_parameters` (transformers v5). Supported RoPE types: `default`, `linear`, `llama3`;
//! any other is refused by name rather than computed wrongly.

use crate::error::{PipelineError, Result};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
}

impl Arch {
    pub fn hf_name(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Mistral => "MistralForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (equivalently, every frequency).
    Linear {
        factor: f64,
    },
    /// Llama 3.x frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    /// Longest context the engine accepts: `max_position_embeddings`, or a Mistral/Qwen2
    /// sliding window if that is shorter (the CPU attention has no window, so it refuses
    /// contexts where the window would change the result).
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Qwen2 has biases on the q, k and v projections.
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// Upper bounds on sizes, so a hostile config cannot make the engine allocate without end.
const MAX_DIM: usize = 1 << 20;
const MAX_LAYERS: usize = 4096;
const MAX_VOCAB: usize = 1 << 24;
const MAX_CONTEXT: usize = 1 << 22;

struct Fields<'a> {
    path: &'a Path,
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn err(&self, field: &str, msg: impl Into<String>) -> PipelineError {
        PipelineError::Config { path: self.path.to_path_buf(), field: field.to_string(), msg: msg.into() }
    }
    fn get(&self, field: &str) -> Option<&'a Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }
    fn usize_opt(&self, field: &str, max: usize) -> Result<Option<usize>> {
        let Some(v) = self.get(field) else { return Ok(None) };
        let n = v.as_u64().ok_or_else(|| self.err(field, format!("expected a non-negative integer, got {v}")))?;
        if n == 0 || n as u128 > max as u128 {
            return Err(self.err(field, format!("{n} is out of range 1..={max}")));
        }
        Ok(Some(n as usize))
    }
    fn usize_req(&self, field: &str, max: usize) -> Result<usize> {
        self.usize_opt(field, max)?.ok_or_else(|| self.err(field, "missing"))
    }
    fn f64_in(map: &Map<String, Value>, field: &str) -> Option<f64> {
        map.get(field).and_then(Value::as_f64)
    }
    fn bool_or(&self, field: &str, default: bool) -> Result<bool> {
        match self.get(field) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.err(field, format!("expected true or false, got {v}"))),
        }
    }
    fn token_ids(&self, field: &str) -> Result<Vec<u32>> {
        let to_id = |v: &Value| -> Result<u32> {
            v.as_u64()
                .filter(|&n| n <= u32::MAX as u64)
                .map(|n| n as u32)
                .ok_or_else(|| self.err(field, format!("expected a token id, got {v}")))
        };
        match self.get(field) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items.iter().map(to_id).collect(),
            Some(v) => Ok(vec![to_id(v)?]),
        }
    }
}

impl ModelConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| PipelineError::Io {
            path: path.to_path_buf(),
            op: "read",
            source,
        })?;
        Self::from_json_str(&text, path)
    }

    /// Parses config JSON text; `path` is used only in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| PipelineError::Json { path: path.to_path_buf(), msg: e.to_string() })?;
        let map = value.as_object().ok_or_else(|| PipelineError::Config {
            path: path.to_path_buf(),
            field: "(root)".into(),
            msg: "expected a JSON object".into(),
        })?;
        let f = Fields { path, map };

        let arch = parse_arch(&f)?;
        let hidden_size = f.usize_req("hidden_size", MAX_DIM)?;
        let num_attention_heads = f.usize_req("num_attention_heads", MAX_DIM)?;
        let num_key_value_heads = f.usize_opt("num_key_value_heads", MAX_DIM)?.unwrap_or(num_attention_heads);
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(f.err(
                "num_key_value_heads",
                format!("{num_key_value_heads} does not divide num_attention_heads {num_attention_heads}"),
            ));
        }
        let head_dim = match f.usize_opt("head_dim", MAX_DIM)? {
            Some(d) => d,
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(f.err(
                        "head_dim",
                        format!("absent, and hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}"),
                    ));
                }
                hidden_size / num_attention_heads
            }
        };
        if head_dim % 2 != 0 {
            return Err(f.err("head_dim", format!("{head_dim} is odd; RoPE needs an even head_dim")));
        }
        let (rope_theta, rope_scaling) = parse_rope(&f)?;
        let mut max_position_embeddings = f.usize_opt("max_position_embeddings", MAX_CONTEXT)?.unwrap_or(2048);
        let uses_window = match arch {
            Arch::Mistral => true,
            Arch::Qwen2 => f.bool_or("use_sliding_window", false)?,
            Arch::Llama => false,
        };
        if uses_window {
            if let Some(w) = f.usize_opt("sliding_window", MAX_CONTEXT)? {
                max_position_embeddings = max_position_embeddings.min(w);
            }
        }
        let rms_norm_eps = match f.get("rms_norm_eps") {
            None => 1e-6,
            Some(v) => v
                .as_f64()
                .filter(|e| e.is_finite() && *e >= 0.0)
                .ok_or_else(|| f.err("rms_norm_eps", format!("expected a non-negative number, got {v}")))?,
        };
        let hidden_act = f.get("hidden_act").and_then(Value::as_str).unwrap_or("silu");
        if hidden_act != "silu" {
            return Err(f.err("hidden_act", format!("`{hidden_act}` is not supported (only silu)")));
        }
        if f.bool_or("mlp_bias", false)? {
            return Err(f.err("mlp_bias", "MLP biases are not supported"));
        }
        let attention_bias = match arch {
            Arch::Qwen2 => true,
            _ => f.bool_or("attention_bias", false)?,
        };
        let bos = f.token_ids("bos_token_id")?;
        let cfg = ModelConfig {
            arch,
            vocab_size: f.usize_req("vocab_size", MAX_VOCAB)?,
            hidden_size,
            intermediate_size: f.usize_req("intermediate_size", MAX_DIM)?,
            num_hidden_layers: f.usize_req("num_hidden_layers", MAX_LAYERS)?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings,
            tie_word_embeddings: f.bool_or("tie_word_embeddings", false)?,
            attention_bias,
            bos_token_id: bos.first().copied(),
            eos_token_ids: f.token_ids("eos_token_id")?,
        };
        Ok(cfg)
    }

    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// Parameter count (embedding and head counted once each; a tied head not twice).
    pub fn parameter_count(&self) -> u64 {
        let (d, f, v) = (self.hidden_size as u64, self.intermediate_size as u64, self.vocab_size as u64);
        let (q, kv) = (self.q_dim() as u64, self.kv_dim() as u64);
        let bias = if self.attention_bias { q + 2 * kv } else { 0 };
        let layer = d * q + 2 * d * kv + q * d + bias + 3 * d * f + 2 * d;
        let head = if self.tie_word_embeddings { 0 } else { v * d };
        v * d + self.num_hidden_layers as u64 * layer + d + head
    }

    /// RoPE inverse frequencies, one per rotated pair: `[head_dim / 2]`, as transformers
    /// computes them (`1 / theta^(2i/d)`, then the scaling rule).
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let half = self.head_dim / 2;
        let mut out = Vec::with_capacity(half);
        for i in 0..half {
            // transformers: base ** (arange(0, dim, 2).float() / dim), in f32.
            let exponent = (2 * i) as f32 / self.head_dim as f32;
            let inv = 1.0f32 / (self.rope_theta as f32).powf(exponent);
            out.push(match &self.rope_scaling {
                RopeScaling::None => inv,
                RopeScaling::Linear { factor } => inv / *factor as f32,
                RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                    let (factor, low, high, old) = (
                        *factor as f32,
                        *low_freq_factor as f32,
                        *high_freq_factor as f32,
                        *original_max_position_embeddings as f32,
                    );
                    let low_freq_wavelen = old / low;
                    let high_freq_wavelen = old / high;
                    let wavelen = 2.0 * std::f32::consts::PI / inv;
                    if wavelen < high_freq_wavelen {
                        inv
                    } else if wavelen > low_freq_wavelen {
                        inv / factor
                    } else {
                        let smooth = (old / wavelen - low) / (high - low);
                        (1.0 - smooth) * inv / factor + smooth * inv
                    }
                }
            });
        }
        out
    }
}

fn parse_arch(f: &Fields) -> Result<Arch> {
    let names: Vec<&str> = match f.get("architectures") {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        Some(v) => return Err(f.err("architectures", format!("expected a list of names, got {v}"))),
        None => Vec::new(),
    };
    for name in &names {
        match *name {
            "LlamaForCausalLM" => return Ok(Arch::Llama),
            "MistralForCausalLM" => return Ok(Arch::Mistral),
            "Qwen2ForCausalLM" => return Ok(Arch::Qwen2),
            _ => {}
        }
    }
    match f.get("model_type").and_then(Value::as_str) {
        Some("llama") if names.is_empty() => Ok(Arch::Llama),
        Some("mistral") if names.is_empty() => Ok(Arch::Mistral),
        Some("qwen2") if names.is_empty() => Ok(Arch::Qwen2),
        other => Err(f.err(
            "architectures",
            format!(
                "unsupported architecture {names:?} (model_type {other:?}); supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"
            ),
        )),
    }
}

fn parse_rope(f: &Fields) -> Result<(f64, RopeScaling)> {
    // transformers v5 keeps everything under `rope_parameters`; older configs use
    // `rope_theta` at top level and an optional `rope_scaling` object.
    let (field, params): (&str, Option<&Map<String, Value>>) = match f.get("rope_parameters") {
        Some(Value::Object(m)) => ("rope_parameters", Some(m)),
        Some(v) => return Err(f.err("rope_parameters", format!("expected an object, got {v}"))),
        None => match f.get("rope_scaling") {
            Some(Value::Object(m)) => ("rope_scaling", Some(m)),
            Some(v) => return Err(f.err("rope_scaling", format!("expected an object or null, got {v}"))),
            None => ("rope_scaling", None),
        },
    };
    let theta = params
        .and_then(|m| Fields::f64_in(m, "rope_theta"))
        .or_else(|| f.get("rope_theta").and_then(Value::as_f64))
        .unwrap_or(10000.0);
    if !(theta.is_finite() && theta > 1.0) {
        return Err(f.err("rope_theta", format!("{theta} must be a finite number > 1")));
    }
    let Some(m) = params else { return Ok((theta, RopeScaling::None)) };
    let kind = m.get("rope_type").or_else(|| m.get("type")).and_then(Value::as_str).unwrap_or("default");
    let num = |key: &str| -> Result<f64> {
        Fields::f64_in(m, key)
            .filter(|x| x.is_finite() && *x > 0.0)
            .ok_or_else(|| f.err(&format!("{field}.{key}"), "missing or not a positive number"))
    };
    let scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: num("factor")? },
        "llama3" => {
            let s = RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")?,
            };
            if let RopeScaling::Llama3 { low_freq_factor, high_freq_factor, .. } = s {
                if high_freq_factor <= low_freq_factor {
                    return Err(f.err(&format!("{field}.high_freq_factor"), "must exceed low_freq_factor"));
                }
            }
            s
        }
        other => {
            return Err(f.err(
                &format!("{field}.rope_type"),
                format!("`{other}` is not supported (supported: default, linear, llama3)"),
            ))
        }
    };
    Ok((theta, scaling))
}

/// Directory helpers shared by the loaders.
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("config.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ModelConfig> {
        ModelConfig::from_json_str(text, Path::new("config.json"))
    }

    const BASE: &str = r#""vocab_size": 100, "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 2, "num_attention_heads": 4"#;

    #[test]
    fn llama_defaults_and_derived_head_dim() {
        let c = parse(&format!(r#"{{"architectures": ["LlamaForCausalLM"], {BASE}}}"#)).unwrap();
        assert_eq!(c.arch, Arch::Llama);
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.num_key_value_heads, 4);
        assert_eq!(c.rope_theta, 10000.0);
        assert_eq!(c.rope_scaling, RopeScaling::None);
        assert!(c.eos_token_ids.is_empty());
        assert!(!c.attention_bias);
    }

    #[test]
    fn eos_as_number_list_or_null() {
        for (eos, want) in [("2", vec![2]), ("[2, 7]", vec![2, 7]), ("null", vec![])] {
            let c = parse(&format!(r#"{{"model_type": "llama", {BASE}, "eos_token_id": {eos}}}"#)).unwrap();
            assert_eq!(c.eos_token_ids, want, "eos {eos}");
        }
        assert!(parse(&format!(r#"{{"model_type": "llama", {BASE}, "eos_token_id": "x"}}"#)).is_err());
    }

    #[test]
    fn rope_parameters_v5_and_llama3() {
        let v5 = format!(
            r#"{{"architectures": ["LlamaForCausalLM"], {BASE}, "head_dim": 32,
            "rope_parameters": {{"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
              "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}}}"#
        );
        let c = parse(&v5).unwrap();
        assert_eq!(c.head_dim, 32);
        assert_eq!(c.rope_theta, 500000.0);
        assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
        let old = format!(
            r#"{{"architectures": ["LlamaForCausalLM"], {BASE}, "head_dim": 32, "rope_theta": 500000.0,
            "rope_scaling": {{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}}}"#
        );
        assert_eq!(parse(&old).unwrap(), c);
        // Scaled frequencies: highest frequency unchanged, lowest divided by the factor.
        let plain = ModelConfig { rope_scaling: RopeScaling::None, ..c.clone() }.rope_inv_freq();
        let scaled = c.rope_inv_freq();
        assert_eq!(plain[0], scaled[0]);
        assert!((scaled[15] * 8.0 - plain[15]).abs() <= plain[15] * 1e-6);
    }

    #[test]
    fn unsupported_things_are_named() {
        let e = parse(&format!(r#"{{"architectures": ["GPT2LMHeadModel"], {BASE}}}"#)).unwrap_err();
        assert!(e.to_string().contains("GPT2LMHeadModel"), "{e}");
        let e = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "rope_scaling": {{"rope_type": "yarn", "factor": 2}}}}"#
        ))
        .unwrap_err();
        assert!(e.to_string().contains("yarn"), "{e}");
        let e = parse(&format!(r#"{{"model_type": "llama", {BASE}, "num_key_value_heads": 3}}"#)).unwrap_err();
        assert!(e.to_string().contains("num_key_value_heads"), "{e}");
        let e = parse(r#"{"model_type": "llama", "vocab_size": 10}"#).unwrap_err();
        assert!(e.to_string().contains("hidden_size"), "{e}");
        assert!(parse("[1,2]").is_err());
        assert!(parse("{").is_err());
    }

    #[test]
    fn qwen2_has_bias_and_mistral_window_limits_context() {
        let q = parse(&format!(r#"{{"architectures": ["Qwen2ForCausalLM"], {BASE}, "tie_word_embeddings": true}}"#))
            .unwrap();
        assert!(q.attention_bias && q.tie_word_embeddings);
        let m = parse(&format!(
            r#"{{"architectures": ["MistralForCausalLM"], {BASE}, "max_position_embeddings": 32768, "sliding_window": 4096}}"#
        ))
        .unwrap();
        assert_eq!(m.max_position_embeddings, 4096);
    }
}
