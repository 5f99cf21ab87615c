//! Element types of weights and the borrowed weight-matrix view.

use crate::error::{expect_len, mul, KernelError};

/// Element type of a weight matrix (little-endian in memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// bfloat16: the top 16 bits of a binary32.
    BF16,
    /// IEEE binary16.
    F16,
}

impl DType {
    /// Bytes per element.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }

    /// The code the C kernels use for this dtype (FS_F32, FS_BF16, FS_F16 in csrc/fs_common.h).
    pub(crate) fn code(self) -> i32 {
        match self {
            DType::F32 => 0,
            DType::BF16 => 1,
            DType::F16 => 2,
        }
    }
}

/// A row-major weight matrix `[rows, cols]` of `dtype`, borrowed as raw
/// little-endian bytes at any alignment (it may point into an mmap'd file).
#[derive(Clone, Copy, Debug)]
pub struct Weights<'a> {
    /// `rows * cols * dtype.size_bytes()` bytes.
    pub data: &'a [u8],
    /// Element type.
    pub dtype: DType,
    /// Number of rows (output features of a matmul).
    pub rows: usize,
    /// Number of columns (input features of a matmul).
    pub cols: usize,
}

impl<'a> Weights<'a> {
    /// Checks that `data` holds exactly `rows * cols` elements of `dtype`.
    pub fn new(data: &'a [u8], dtype: DType, rows: usize, cols: usize) -> Result<Self, KernelError> {
        let w = Weights { data, dtype, rows, cols };
        w.check()?;
        Ok(w)
    }

    /// Views an f32 slice as weights (`data.len() == rows * cols`).
    pub fn from_f32(data: &'a [f32], rows: usize, cols: usize) -> Result<Self, KernelError> {
        // SAFETY: any f32 bit pattern is 4 valid bytes; the byte slice covers exactly
        // the memory of `data` and borrows it for the same lifetime.
        let bytes = unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data)) };
        Weights::new(bytes, DType::F32, rows, cols)
    }

    /// Re-checks the invariant of `new` (the fields are public, so a caller may
    /// have built an inconsistent value by hand).
    pub(crate) fn check(&self) -> Result<(), KernelError> {
        let elems = mul(self.rows, self.cols, "weights rows * cols")?;
        let bytes = mul(elems, self.dtype.size_bytes(), "weights bytes")?;
        expect_len("weights data (bytes)", bytes, self.data.len())
    }
}
