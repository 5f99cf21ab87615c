//! Plain Rust versions of every kernel: obviously correct, slow, the yardstick
//! of the accuracy tests. Same signatures as the crate's functions minus the
//! pool. Sums are accumulated in f64 and rounded once; elementwise formulas are
//! evaluated in f32 exactly as documented.

use crate::error::{expect_len, mul, KernelError};
use crate::{AttnSeq, DType, Weights};

/// f16 bits to f32, by the definition of binary16.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0f64 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let man = (h & 0x3ff) as f64;
    let v = match exp {
        0 => man * 2f64.powi(-24),
        31 if man == 0.0 => f64::INFINITY,
        31 => return f32::from_bits(0x7f80_0000 | (u32::from(h & 0x8000) << 16) | (u32::from(h & 0x3ff) << 13)),
        e => (1.0 + man / 1024.0) * 2f64.powi(e - 15),
    };
    (sign * v) as f32
}

/// bf16 bits to f32.
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// Element `i` of little-endian data of `dtype`.
fn elem(data: &[u8], dtype: DType, i: usize) -> f32 {
    match dtype {
        DType::F32 => f32::from_le_bytes(data[4 * i..4 * i + 4].try_into().unwrap()),
        DType::BF16 => bf16_to_f32(u16::from_le_bytes([data[2 * i], data[2 * i + 1]])),
        DType::F16 => f16_to_f32(u16::from_le_bytes([data[2 * i], data[2 * i + 1]])),
    }
}

/// Converts `dst.len()` elements of `dtype` to f32.
pub fn to_f32(src: &[u8], dtype: DType, dst: &mut [f32]) -> Result<(), KernelError> {
    expect_len("to_f32 src (bytes)", mul(dst.len(), dtype.size_bytes(), "to_f32 size")?, src.len())?;
    for (i, d) in dst.iter_mut().enumerate() {
        *d = elem(src, dtype, i);
    }
    Ok(())
}

/// `y[m, n] = x[m, k] · w[n, k]^T`, each dot product summed in f64.
pub fn matmul(x: &[f32], m: usize, w: Weights, y: &mut [f32]) -> Result<(), KernelError> {
    w.check()?;
    let (n, k) = (w.rows, w.cols);
    expect_len("matmul x", mul(m, k, "matmul m * k")?, x.len())?;
    expect_len("matmul y", mul(m, n, "matmul m * n")?, y.len())?;
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k).map(|kk| f64::from(x[i * k + kk]) * f64::from(elem(w.data, w.dtype, j * k + kk))).sum();
            y[i * n + j] = s as f32;
        }
    }
    Ok(())
}

/// `out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight`.
pub fn rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) -> Result<(), KernelError> {
    let dim = weight.len();
    if dim == 0 {
        return Err(KernelError::InvalidDim { what: "rmsnorm weight length", value: 0, reason: "must be positive" });
    }
    if x.len() % dim != 0 {
        return Err(KernelError::NotMultiple { what: "rmsnorm x", len: x.len(), of: dim });
    }
    expect_len("rmsnorm out", x.len(), out.len())?;
    for (xr, or) in x.chunks(dim).zip(out.chunks_mut(dim)) {
        let ms: f64 = xr.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / dim as f64;
        let inv = 1.0 / (ms + f64::from(eps)).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(weight) {
            *o = (f64::from(v) * inv * f64::from(g)) as f32;
        }
    }
    Ok(())
}

/// Rotary embedding, HF/NeoX rotate_half layout, in f32 as documented on [`crate::rope`].
pub fn rope(
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
    expect_len("rope x", mul(mul(rows, n_heads, "rope rows * n_heads")?, head_dim, "rope x size")?, x.len())?;
    let half = head_dim / 2;
    expect_len("rope cos", rows * half, cos.len())?;
    expect_len("rope sin", rows * half, sin.len())?;
    for r in 0..rows {
        for h in 0..n_heads {
            let v = &mut x[(r * n_heads + h) * head_dim..][..head_dim];
            for i in 0..half {
                let (a, b) = (v[i], v[i + half]);
                let (c, s) = (cos[r * half + i], sin[r * half + i]);
                v[i] = a * c - b * s;
                v[i + half] = b * c + a * s;
            }
        }
    }
    Ok(())
}

/// `out[i] = gate[i] / (1 + exp(-gate[i])) * up[i]`, in f64.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
    expect_len("silu_mul up", gate.len(), up.len())?;
    expect_len("silu_mul out", gate.len(), out.len())?;
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        let g = f64::from(g);
        *o = (g / (1.0 + (-g).exp()) * f64::from(u)) as f32;
    }
    Ok(())
}

/// In-place softmax of one row, in f64.
pub fn softmax(x: &mut [f32]) {
    let mx = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let e: Vec<f64> = x.iter().map(|&v| (f64::from(v) - f64::from(mx)).exp()).collect();
    let sum: f64 = e.iter().sum();
    for (o, v) in x.iter_mut().zip(e) {
        *o = (v / sum) as f32;
    }
}

/// Causal grouped-query attention, in f64, one (sequence, query, head) at a time.
pub fn attention(
    seqs: &mut [AttnSeq],
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f32,
) -> Result<(), KernelError> {
    if n_kv_heads == 0 {
        return Err(KernelError::InvalidDim { what: "attention n_kv_heads", value: 0, reason: "must be positive" });
    }
    if n_heads % n_kv_heads != 0 {
        return Err(KernelError::NotMultiple { what: "attention n_heads", len: n_heads, of: n_kv_heads });
    }
    let group = n_heads / n_kv_heads;
    let (q_row, kv_row) = (n_heads * head_dim, n_kv_heads * head_dim);
    for (si, s) in seqs.iter_mut().enumerate() {
        expect_len("attention q", mul(s.n_q, q_row, "attention q size")?, s.q.len())?;
        expect_len("attention out", s.q.len(), s.out.len())?;
        expect_len("attention v (same length as k)", s.k.len(), s.v.len())?;
        if kv_row == 0 {
            continue;
        }
        if s.k.len() % kv_row != 0 {
            return Err(KernelError::NotMultiple { what: "attention k", len: s.k.len(), of: kv_row });
        }
        let needed = s.pos0 + s.n_q;
        if s.k.len() / kv_row < needed {
            return Err(KernelError::ContextTooShort { seq: si, needed, got: s.k.len() / kv_row });
        }
        for qi in 0..s.n_q {
            for h in 0..n_heads {
                let q = &s.q[(qi * n_heads + h) * head_dim..][..head_dim];
                let kv = (h / group) * head_dim;
                let n_keys = s.pos0 + qi + 1;
                let scores: Vec<f64> = (0..n_keys)
                    .map(|t| {
                        let kt = &s.k[t * kv_row + kv..][..head_dim];
                        q.iter().zip(kt).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum::<f64>() * f64::from(scale)
                    })
                    .collect();
                let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let p: Vec<f64> = scores.iter().map(|&s| (s - mx).exp()).collect();
                let sum: f64 = p.iter().sum();
                let out = &mut s.out[(qi * n_heads + h) * head_dim..][..head_dim];
                for (d, o) in out.iter_mut().enumerate() {
                    let acc: f64 = (0..n_keys).map(|t| p[t] * f64::from(s.v[t * kv_row + kv + d])).sum();
                    *o = (acc / sum) as f32;
                }
            }
        }
    }
    Ok(())
}
