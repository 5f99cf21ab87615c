//! A model opened for inference, whatever it came from: config, tensors, tokenizer.
//!
//! Today: a Hugging Face checkpoint directory. The loaders for GGUF files and packed block
//! files produce the same `Model`, so every path through the engine is the same.

use crate::blocks::BlockLayout;
use crate::config::ModelConfig;
use crate::error::{PipelineError, Result};
use crate::safetensors::Checkpoint;
use crate::stage::{Stage, StageLimits};
use crate::tokenizer::Tokenizer;
use crate::weights::WeightSource;
use kernels::Pool;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A Hugging Face directory: config.json, safetensors, tokenizer.json.
    HfDir,
    /// A faascale packed block file (`pipeline::packed`).
    Packed,
    /// A GGUF file (llama.cpp's format), dequantized at load (`pipeline::gguf`).
    Gguf,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::HfDir => "hf",
            Format::Packed => "packed",
            Format::Gguf => "gguf",
        }
    }
}

pub struct Model {
    pub path: PathBuf,
    pub format: Format,
    pub config: Arc<ModelConfig>,
    pub weights: Arc<dyn WeightSource + Send + Sync>,
    /// Without a tokenizer the model runs on token ids.
    pub tokenizer: Option<Tokenizer>,
    /// The chat template string, when the model carries one.
    pub chat_template: Option<String>,
}

impl Model {
    /// Opens a model: a Hugging Face checkpoint directory (or the `config.json` inside one),
    /// a GGUF file (dequantized to f32), or a packed block file (`faascale pack`).
    /// Tensors are memory-mapped, not read; their shapes are checked when a stage is built.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, kernels::DType::F32)
    }

    /// As `open`, with the dtype GGUF weights are dequantized to (F32 or BF16; other
    /// formats keep the dtype they store).
    pub fn open_with(path: &Path, gguf_dtype: kernels::DType) -> Result<Self> {
        if path.is_file() {
            if crate::packed::is_packed_file(path) {
                return crate::packed::open(path);
            }
            if crate::gguf::is_gguf_file(path) {
                return crate::gguf::open(path, crate::gguf::GgufOptions { dtype: gguf_dtype, ..Default::default() });
            }
            if path.file_name().and_then(|n| n.to_str()) == Some("config.json") {
                return Self::open_hf_dir(path.parent().unwrap_or(Path::new(".")));
            }
            return Err(PipelineError::Invalid {
                what: "model path",
                msg: format!(
                    "{} is a file; give a Hugging Face checkpoint directory (expected a GGUF file, a packed file, or config.json)",
                    path.display()
                ),
            });
        }
        Self::open_hf_dir(path)
    }

    pub fn open_hf_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(PipelineError::Io {
                path: dir.to_path_buf(),
                op: "open model directory",
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
            });
        }
        let config = Arc::new(ModelConfig::from_file(&dir.join("config.json"))?);
        let checkpoint = Checkpoint::open(dir)?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = if tok_path.exists() { Some(Tokenizer::from_file(&tok_path)?) } else { None };
        if let Some(t) = &tokenizer {
            // A smaller tokenizer is fine (padded embeddings); a larger one would emit ids
            // the model has no embedding for.
            if t.vocab_size() > config.vocab_size {
                return Err(PipelineError::Tokenizer {
                    path: tok_path,
                    msg: format!("{} tokens, but config.json has vocab_size {}", t.vocab_size(), config.vocab_size),
                });
            }
        }
        let chat_template = read_chat_template(&dir.join("tokenizer_config.json"));
        Ok(Model {
            path: dir.to_path_buf(),
            format: Format::HfDir,
            config,
            weights: Arc::new(checkpoint),
            tokenizer,
            chat_template,
        })
    }

    /// A stage for blocks `blocks` of a `num_blocks`-block layout.
    pub fn stage(
        &self,
        num_blocks: usize,
        blocks: Range<usize>,
        pool: Arc<Pool>,
        limits: StageLimits,
    ) -> Result<Stage> {
        let layout = BlockLayout::new(self.config.num_hidden_layers, num_blocks)?;
        Stage::new(self.config.clone(), self.weights.as_ref(), layout, blocks, pool, limits)
    }
}

/// `chat_template` from tokenizer_config.json, if the file exists and has one.
fn read_chat_template(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("chat_template")?.as_str().map(str::to_string)
}
