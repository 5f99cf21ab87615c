//! A tensor is a typed, shaped view of bytes that live elsewhere (an mmap, a buffer).

use crate::error::{PipelineError, Result};
use kernels::{DType, Weights};
use std::sync::Arc;

/// Bytes shared between tensors: a memory map or an owned buffer.
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// Maps a model file read-only. An empty file gives an empty buffer (not every platform maps
/// zero bytes), so each format's parser reports it as truncated, with its own words.
pub fn map_file(path: &std::path::Path) -> Result<SharedBytes> {
    let io = |op, source| PipelineError::Io { path: path.to_path_buf(), op, source };
    let file = std::fs::File::open(path).map_err(|e| io("open", e))?;
    if file.metadata().map_err(|e| io("stat", e))?.len() == 0 {
        return Ok(Arc::new(Vec::<u8>::new()));
    }
    // SAFETY: a read-only map. Another process truncating the file while it is mapped would
    // fault (SIGBUS) on access; that is the usual mmap contract for model files, and faascale
    // never shrinks or rewrites a model file in place (packing writes a new file and renames).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io("mmap", e))?;
    Ok(Arc::new(map))
}

#[derive(Clone)]
pub struct Tensor {
    buf: SharedBytes,
    offset: usize,
    len: usize,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {:?}, {} bytes)", self.dtype, self.shape, self.len)
    }
}

impl Tensor {
    /// A view of `len` bytes at `offset` of `buf`. The caller has checked the range.
    pub fn from_shared(buf: SharedBytes, offset: usize, len: usize, dtype: DType, shape: Vec<usize>) -> Self {
        assert!(offset + len <= (*buf).as_ref().len(), "tensor range checked by the caller");
        Tensor { buf, offset, len, dtype, shape }
    }

    /// An owned tensor (synthetic checkpoints, tests).
    pub fn from_vec(bytes: Vec<u8>, dtype: DType, shape: Vec<usize>) -> Self {
        let len = bytes.len();
        Tensor { buf: Arc::new(bytes), offset: 0, len, dtype, shape }
    }

    pub fn bytes(&self) -> &[u8] {
        &(*self.buf).as_ref()[self.offset..self.offset + self.len]
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The matrix view the GEMM kernels take: `[rows, cols]` of a rank-2 tensor.
    pub fn weights(&self) -> Result<Weights<'_>> {
        let [rows, cols] = self.shape[..] else {
            return Err(PipelineError::Invalid {
                what: "tensor",
                msg: format!("expected rank 2, got shape {:?}", self.shape),
            });
        };
        Ok(Weights::new(self.bytes(), self.dtype, rows, cols)?)
    }

    /// The whole tensor converted to f32 (norm weights, biases: small tensors).
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.numel()];
        kernels::to_f32(self.bytes(), self.dtype, &mut out)?;
        Ok(out)
    }

    /// Row `r` of a rank-2 tensor converted to f32 into `out` (embedding lookup).
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) -> Result<()> {
        let cols = *self.shape.last().unwrap_or(&0);
        let rows = self.numel().checked_div(cols).unwrap_or(0);
        if r >= rows || out.len() != cols {
            return Err(PipelineError::Invalid {
                what: "row",
                msg: format!("row {r} of {rows}, out len {} vs {cols}", out.len()),
            });
        }
        let size = self.dtype.size_bytes();
        let row = &self.bytes()[r * cols * size..(r + 1) * cols * size];
        Ok(kernels::to_f32(row, self.dtype, out)?)
    }
}
