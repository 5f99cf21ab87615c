//! Reading packed files: whole (`open`) or block by block as blocks arrive (`PackedFile`).

use super::format::{parse_header, PackedHeader, ValidHeader, MAGIC};
use super::tensors::{EMBED, LM_HEAD};
use crate::config::ModelConfig;
use crate::error::{PipelineError, Result};
use crate::model::{Format, Model};
use crate::tensor::{SharedBytes, Tensor};
use crate::tokenizer::Tokenizer;
use crate::weights::WeightSource;
use kernels::DType;
use planner::ModelLayout;
use std::collections::HashMap;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Whether `path` is a file that starts with the packed-file magic (for format dispatch).
pub fn is_packed_file(path: &Path) -> bool {
    let mut magic = [0u8; 8];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && magic == MAGIC
}

/// Opens a packed file as a `Model`, checking the header and every transfer block's crc32c.
pub fn open(path: &Path) -> Result<Model> {
    let file = Arc::new(PackedFile::open_header(path)?);
    file.mark_all_present()?;
    file.into_model()
}

/// A packed file with a validated header whose execution blocks count as present only once
/// their checksums have been verified (`mark_present`, `mark_transfer_present`).
///
/// The bytes are a read-only shared memory map of the file (or any byte image of it), so
/// blocks written into the file after `open_header` — by a receiver, as they arrive — are
/// seen through the map. The file must already have its full length (a receiver writes the
/// preamble and header, then `set_len`s the file, then fills blocks in any order). A block's
/// bytes must be complete before it is marked present and must not change afterwards
/// (tensors handed out are views of them).
pub struct PackedFile {
    path: PathBuf,
    bytes: SharedBytes,
    header: PackedHeader,
    config: Arc<ModelConfig>,
    index: HashMap<String, usize>,
    dtypes: Vec<DType>,
    /// One flag per transfer block: its checksum has been verified.
    present: Vec<AtomicBool>,
}

impl PackedFile {
    /// Maps `path` and validates its preamble, header, block table and tensor index against
    /// the file's size. No block is checked or present yet.
    pub fn open_header(path: &Path) -> Result<Self> {
        Self::from_bytes(path, crate::tensor::map_file(path)?)
    }

    /// Validates a packed-file image held in memory; `path` names it in errors.
    pub fn from_bytes(path: &Path, bytes: SharedBytes) -> Result<Self> {
        let data: &[u8] = (*bytes).as_ref();
        let ValidHeader { header, config, index, dtypes } = parse_header(path, data, data.len() as u64)?;
        let present = (0..header.layout.transfer_blocks.len()).map(|_| AtomicBool::new(false)).collect();
        Ok(PackedFile { path: path.to_path_buf(), bytes, header, config: Arc::new(config), index, dtypes, present })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn header(&self) -> &PackedHeader {
        &self.header
    }
    pub fn layout(&self) -> &ModelLayout {
        &self.header.layout
    }
    pub fn config(&self) -> &Arc<ModelConfig> {
        &self.config
    }
    /// Execution blocks B of the file (pass it to `Model::stage`).
    pub fn num_blocks(&self) -> usize {
        self.header.layout.exec_blocks.len()
    }
    /// The whole file's bytes.
    pub fn bytes(&self) -> &[u8] {
        (*self.bytes).as_ref()
    }

    fn checksum_error(&self, id: usize, got: u32) -> PipelineError {
        let t = &self.header.layout.transfer_blocks[id];
        PipelineError::ChecksumMismatch {
            path: self.path.clone(),
            exec_block: t.exec_block as usize,
            transfer_block: id,
            offset: t.offset,
            len: t.len,
            expected: t.crc32c,
            got,
        }
    }

    fn no_such(&self, what: &'static str, id: usize, count: usize) -> PipelineError {
        PipelineError::Invalid {
            what,
            msg: format!("{}: {what} {id} does not exist ({count} of them)", self.path.display()),
        }
    }

    /// Checks transfer block `id`'s bytes against its crc32c, without marking it present.
    pub fn verify_transfer_block(&self, id: usize) -> Result<()> {
        let t = self
            .header
            .layout
            .transfer_blocks
            .get(id)
            .ok_or_else(|| self.no_such("transfer block", id, self.present.len()))?;
        // In bounds: the layout was checked to end exactly at the end of the bytes.
        let got = crc32c::crc32c(&self.bytes()[t.offset as usize..t.end() as usize]);
        if got != t.crc32c {
            return Err(self.checksum_error(id, got));
        }
        Ok(())
    }

    /// Verifies transfer block `id` and marks it present; returns whether its whole execution
    /// block is now present.
    pub fn mark_transfer_present(&self, id: usize) -> Result<bool> {
        self.verify_transfer_block(id)?;
        self.present[id].store(true, Ordering::Release);
        Ok(self.is_present(self.header.layout.transfer_blocks[id].exec_block as usize))
    }

    /// Checks every transfer block of execution block `block`, without marking anything.
    pub fn verify_block(&self, block: usize) -> Result<()> {
        if block >= self.num_blocks() {
            return Err(self.no_such("execution block", block, self.num_blocks()));
        }
        for t in self.header.layout.transfer_blocks_of(block) {
            self.verify_transfer_block(t.id as usize)?;
        }
        Ok(())
    }

    /// Verifies execution block `block` and marks it present: from now on its tensors are
    /// handed out. On a checksum mismatch nothing is marked and the error names the block,
    /// transfer block and byte range.
    pub fn mark_present(&self, block: usize) -> Result<()> {
        self.verify_block(block)?;
        for t in self.header.layout.transfer_blocks_of(block) {
            self.present[t.id as usize].store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Verifies and marks every block.
    pub fn mark_all_present(&self) -> Result<()> {
        (0..self.num_blocks()).try_for_each(|b| self.mark_present(b))
    }

    /// Whether every transfer block of execution block `block` has been verified.
    pub fn is_present(&self, block: usize) -> bool {
        let tbs = self.header.layout.transfer_blocks_of(block);
        !tbs.is_empty() && tbs.iter().all(|t| self.present[t.id as usize].load(Ordering::Acquire))
    }

    /// Whether blocks [a, b) are all present.
    pub fn blocks_present(&self, blocks: Range<usize>) -> bool {
        blocks.clone().all(|b| self.is_present(b))
    }

    /// A `Model` (format `Packed`) whose weights are this file: tensors of blocks not yet
    /// present are refused until they are. Keep the `Arc` to mark blocks as they arrive.
    pub fn into_model(self: Arc<Self>) -> Result<Model> {
        let tokenizer = match &self.header.tokenizer {
            Some(text) => Some(Tokenizer::from_json_bytes(text.as_bytes(), &self.path)?),
            None => None,
        };
        Ok(Model {
            path: self.path.clone(),
            format: Format::Packed,
            config: self.config.clone(),
            chat_template: self.header.chat_template.clone(),
            tokenizer,
            weights: self,
        })
    }

    /// The index entry of `name` and its dtype.
    fn entry(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    fn view(&self, i: usize, shape: &[usize]) -> Result<Tensor> {
        let e = &self.header.tensors[i];
        let got: Vec<usize> = e.shape.iter().map(|&d| d as usize).collect();
        if got != shape || e.shape.iter().any(|&d| d > usize::MAX as u64) {
            return Err(PipelineError::TensorShape {
                path: self.path.clone(),
                tensor: e.name.clone(),
                expected: shape.to_vec(),
                got,
            });
        }
        let start = self.header.layout.exec_blocks[e.block as usize].offset + e.offset;
        // In bounds: the header check put every tensor inside its block, every block in the file.
        Ok(Tensor::from_shared(self.bytes.clone(), start as usize, e.len as usize, self.dtypes[i], got))
    }
}

impl WeightSource for PackedFile {
    /// Tensors of present blocks only. For a tied model, the embedding is served from the
    /// last block's `lm_head.weight` copy (the same bytes) when block 0 is absent, so a stage
    /// holding only the last block can be built.
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let i = self
            .entry(name)
            .ok_or_else(|| PipelineError::MissingTensor { tensor: name.to_string(), dir: self.path.clone() })?;
        let block = self.header.tensors[i].block as usize;
        if self.is_present(block) {
            return self.view(i, shape);
        }
        if name == EMBED && self.config.tie_word_embeddings {
            if let Some(h) = self.entry(LM_HEAD) {
                let (he, ee) = (&self.header.tensors[h], &self.header.tensors[i]);
                if self.is_present(he.block as usize) && he.shape == ee.shape && he.dtype == ee.dtype {
                    return self.view(h, shape);
                }
            }
        }
        Err(PipelineError::BlockAbsent { path: self.path.clone(), exec_block: block, tensor: name.to_string() })
    }

    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
}
