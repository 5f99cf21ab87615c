//! A Hugging Face checkpoint directory opened for inference: config, tensors, tokenizer.

use crate::blocks::BlockLayout;
use crate::config::ModelConfig;
use crate::error::{PipelineError, Result};
use crate::safetensors::Checkpoint;
use crate::stage::{Stage, StageLimits};
use crate::tokenizer::Tokenizer;
use kernels::Pool;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct Model {
    pub dir: PathBuf,
    pub config: Arc<ModelConfig>,
    pub checkpoint: Checkpoint,
    /// `tokenizer.json` when the directory has one; without it the model runs on token ids.
    pub tokenizer: Option<Tokenizer>,
}

impl Model {
    /// Opens a checkpoint directory (or the `config.json` inside one). Tensors are mapped,
    /// not read; their shapes are checked when a stage is built from them.
    pub fn open(path: &Path) -> Result<Self> {
        let dir = if path.is_file() {
            if path.file_name().and_then(|n| n.to_str()) != Some("config.json") {
                return Err(PipelineError::Invalid {
                    what: "model path",
                    msg: format!(
                        "{} is a file; give a Hugging Face checkpoint directory (GGUF and packed model files are not supported yet)",
                        path.display()
                    ),
                });
            }
            path.parent().unwrap_or(Path::new(".")).to_path_buf()
        } else {
            path.to_path_buf()
        };
        if !dir.is_dir() {
            return Err(PipelineError::Io {
                path: dir,
                op: "open model directory",
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
            });
        }
        let config = Arc::new(ModelConfig::from_file(&dir.join("config.json"))?);
        let checkpoint = Checkpoint::open(&dir)?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = if tok_path.exists() { Some(Tokenizer::from_file(&tok_path)?) } else { None };
        Ok(Model { dir, config, checkpoint, tokenizer })
    }

    /// A stage for blocks `blocks` of a `num_blocks`-block layout.
    pub fn stage(&self, num_blocks: usize, blocks: Range<usize>, pool: Arc<Pool>, limits: StageLimits) -> Result<Stage> {
        let layout = BlockLayout::new(self.config.num_hidden_layers, num_blocks)?;
        Stage::new(self.config.clone(), &self.checkpoint, layout, blocks, pool, limits)
    }
}
