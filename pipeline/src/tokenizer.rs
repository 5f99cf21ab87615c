//! `tokenizer.json` through Hugging Face's own `tokenizers` crate, so encoding matches
//! transformers exactly. Prompts are encoded as they are: no special tokens added.

use crate::error::{PipelineError, Result};
use std::path::{Path, PathBuf};

pub struct Tokenizer {
    path: PathBuf,
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| PipelineError::Tokenizer { path: path.to_path_buf(), msg: e.to_string() })?;
        Ok(Tokenizer { path: path.to_path_buf(), inner })
    }

    /// Wraps a tokenizer built in memory (from GGUF metadata, from a packed file's header);
    /// `origin` names where it came from, for error messages.
    pub fn from_inner(inner: tokenizers::Tokenizer, origin: &Path) -> Self {
        Tokenizer { path: origin.to_path_buf(), inner }
    }

    /// Parses `tokenizer.json` text held in memory (a packed file's header).
    pub fn from_json_bytes(bytes: &[u8], origin: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| PipelineError::Tokenizer { path: origin.to_path_buf(), msg: e.to_string() })?;
        Ok(Tokenizer { path: origin.to_path_buf(), inner })
    }

    /// The tokenizer as `tokenizer.json` text.
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(false)
            .map_err(|e| PipelineError::Tokenizer { path: self.path.clone(), msg: format!("serialise: {e}") })
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Token ids of `text`, with no BOS or template added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| PipelineError::Tokenizer { path: self.path.clone(), msg: format!("encode: {e}") })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| PipelineError::Tokenizer { path: self.path.clone(), msg: format!("decode: {e}") })
    }

    /// The string of token `id`, if the vocabulary has it.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
