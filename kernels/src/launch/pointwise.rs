//! Launchers of the row-local and elementwise kernels: rmsnorm, rope,
//! silu_mul, softmax and dtype conversion. They run on the calling thread.

use crate::error::{expect_len, mul, KernelError};
use crate::{DType, Kernels};

impl Kernels {
    /// `out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight`, rows of `weight.len()`.
    pub fn rmsnorm(&self, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) -> Result<(), KernelError> {
        let dim = weight.len();
        if dim == 0 {
            return Err(KernelError::InvalidDim {
                what: "rmsnorm weight length",
                value: 0,
                reason: "must be positive",
            });
        }
        if x.len() % dim != 0 {
            return Err(KernelError::NotMultiple { what: "rmsnorm x", len: x.len(), of: dim });
        }
        expect_len("rmsnorm out", x.len(), out.len())?;
        // SAFETY: x and out hold rows * dim floats, weight dim floats (checked above).
        unsafe { (self.ops.rmsnorm)(x.as_ptr(), weight.as_ptr(), x.len() / dim, dim, eps, out.as_mut_ptr()) };
        Ok(())
    }

    /// Rotary embedding in place, HF/NeoX rotate_half layout; see [`crate::rope`].
    pub fn rope(
        &self,
        x: &mut [f32],
        rows: usize,
        n_heads: usize,
        head_dim: usize,
        cos: &[f32],
        sin: &[f32],
    ) -> Result<(), KernelError> {
        if head_dim % 2 != 0 {
            return Err(KernelError::InvalidDim { what: "rope head_dim", value: head_dim, reason: "must be even" });
        }
        let x_len = mul(mul(rows, n_heads, "rope rows * n_heads")?, head_dim, "rope x size")?;
        expect_len("rope x", x_len, x.len())?;
        let cs_len = rows * (head_dim / 2); // <= x_len, no overflow
        expect_len("rope cos", cs_len, cos.len())?;
        expect_len("rope sin", cs_len, sin.len())?;
        // SAFETY: x holds rows * n_heads * head_dim floats, cos and sin rows * head_dim / 2.
        unsafe { (self.ops.rope)(x.as_mut_ptr(), rows, n_heads, head_dim, cos.as_ptr(), sin.as_ptr()) };
        Ok(())
    }

    /// `out[i] = gate[i] / (1 + exp(-gate[i])) * up[i]`.
    pub fn silu_mul(&self, gate: &[f32], up: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
        expect_len("silu_mul up", gate.len(), up.len())?;
        expect_len("silu_mul out", gate.len(), out.len())?;
        // SAFETY: all three hold gate.len() floats.
        unsafe { (self.ops.silu_mul)(gate.as_ptr(), up.as_ptr(), out.as_mut_ptr(), gate.len()) };
        Ok(())
    }

    /// In-place numerically stable softmax of one row.
    pub fn softmax(&self, x: &mut [f32]) {
        // SAFETY: x holds x.len() floats.
        unsafe { (self.ops.softmax)(x.as_mut_ptr(), x.len()) };
    }

    /// Widens `dst.len()` elements of `dtype` (little-endian, any alignment) to f32.
    pub fn to_f32(&self, src: &[u8], dtype: DType, dst: &mut [f32]) -> Result<(), KernelError> {
        expect_len("to_f32 src (bytes)", mul(dst.len(), dtype.size_bytes(), "to_f32 size")?, src.len())?;
        // SAFETY: src holds dst.len() elements of dtype, dst dst.len() floats.
        unsafe { (self.ops.to_f32)(src.as_ptr(), dtype.code(), dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }
}
