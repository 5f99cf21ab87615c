//! ggml tensor types and their dequantization to f32 (or bf16).
//!
//! Supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1. The arithmetic is the one gguf-py (and so
//! transformers' GGUF loader) uses, in f32: `d * q` for Q8_0, `d * (q - 8)` for Q4_0 and
//! `d * q + m` for Q4_1, with `d` and `m` the block's f16 scale and minimum converted exactly to
//! f32. The products are exact in f32 (an f16 scale has 11 significant bits, a quant at most 8),
//! so only Q4_1's addition rounds, once, as in numpy: the results are bit-identical to what
//! transformers loads (checked against it in `tests/gguf.rs`).
//!
//! Block layouts (ggml's `block_q*`): 32 values per block.
//! - Q8_0: `d: f16 | qs: [i8; 32]` (34 bytes); value `i` is `d * qs[i]`.
//! - Q4_0: `d: f16 | qs: [u8; 16]` (18 bytes); value `i < 16` is `d * ((qs[i] & 15) - 8)`,
//!   value `i + 16` is `d * ((qs[i] >> 4) - 8)`.
//! - Q4_1: `d: f16 | m: f16 | qs: [u8; 16]` (20 bytes); low nibbles first as in Q4_0, value
//!   `d * q + m`.

use kernels::DType;

/// A ggml tensor type (the `ggml_type` number in a GGUF tensor info).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GgmlType(u32);

/// Every type ggml defines today: (number, name, elements per block, bytes per block).
/// Numbers that ggml has retired (4, 5, 31-33, 36-38) are unknown.
const TYPES: &[(u32, &str, usize, usize)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
];

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_0: GgmlType = GgmlType(2);
    pub const Q4_1: GgmlType = GgmlType(3);
    pub const Q8_0: GgmlType = GgmlType(8);
    pub const BF16: GgmlType = GgmlType(30);

    /// The type numbered `code`, if ggml defines it.
    pub fn from_u32(code: u32) -> Option<GgmlType> {
        TYPES.iter().any(|t| t.0 == code).then_some(GgmlType(code))
    }

    pub fn code(self) -> u32 {
        self.0
    }

    fn entry(self) -> &'static (u32, &'static str, usize, usize) {
        TYPES.iter().find(|t| t.0 == self.0).expect("GgmlType values come from the table")
    }

    pub fn name(self) -> &'static str {
        self.entry().1
    }

    /// (elements per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        let e = self.entry();
        (e.2, e.3)
    }

    /// Whether this crate can dequantize it.
    pub fn is_supported(self) -> bool {
        matches!(
            self,
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1
        )
    }

    /// Bytes of a row of `cols` values (`cols` a multiple of the block size).
    pub fn row_bytes(self, cols: usize) -> usize {
        let (e, b) = self.block();
        cols / e * b
    }

    pub fn supported_names() -> &'static str {
        "F32, F16, BF16, Q8_0, Q4_0, Q4_1"
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (ggml type {})", self.name(), self.0)
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Reference: one Q8_0 block (34 bytes) to 32 values.
pub fn q8_0_block(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    for (o, &q) in out[..32].iter_mut().zip(&block[2..34]) {
        *o = (q as i8) as f32 * d;
    }
}

/// Reference: one Q4_0 block (18 bytes) to 32 values.
pub fn q4_0_block(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    let qs = &block[2..18];
    for j in 0..16 {
        out[j] = d * ((qs[j] & 0x0f) as i32 - 8) as f32;
        out[j + 16] = d * ((qs[j] >> 4) as i32 - 8) as f32;
    }
}

/// Reference: one Q4_1 block (20 bytes) to 32 values.
pub fn q4_1_block(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    let m = f16_at(block, 2);
    let qs = &block[4..20];
    for j in 0..16 {
        out[j] = d * (qs[j] & 0x0f) as f32 + m;
        out[j + 16] = d * (qs[j] >> 4) as f32 + m;
    }
}

/// One row of `out.len()` values of type `ty` from `src` (exactly `ty.row_bytes(out.len())`
/// bytes). `ty` must be supported.
pub fn dequantize_row(ty: GgmlType, src: &[u8], out: &mut [f32]) {
    debug_assert_eq!(src.len(), ty.row_bytes(out.len()));
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
            }
        }
        GgmlType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(src.chunks_exact(34)) {
                q8_0_block(b, o);
            }
        }
        GgmlType::Q4_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(src.chunks_exact(18)) {
                q4_0_block(b, o);
            }
        }
        GgmlType::Q4_1 => {
            for (o, b) in out.chunks_exact_mut(32).zip(src.chunks_exact(20)) {
                q4_1_block(b, o);
            }
        }
        other => unreachable!("dequantize_row called for unsupported type {other}"),
    }
}

/// Dequantizes a `[rows, cols]` matrix (`cols` = ne[0]) of type `ty` into little-endian bytes of
/// `out` (F32 or BF16, rounded to nearest even). Output row `r` is input row `row_map(r)` when a
/// map is given (the Q/K un-permutation). Rows are spread over `threads` threads; the result does
/// not depend on how many.
pub fn dequantize_matrix(
    ty: GgmlType,
    src: &[u8],
    rows: usize,
    cols: usize,
    row_map: Option<&(dyn Fn(usize) -> usize + Sync)>,
    out: DType,
    threads: usize,
) -> Vec<u8> {
    let in_row = ty.row_bytes(cols);
    assert!(ty.is_supported() && src.len() == in_row * rows, "dequantize_matrix: sizes checked by the caller");
    assert!(matches!(out, DType::F32 | DType::BF16), "dequantize_matrix: output is F32 or BF16");
    let out_row = cols * out.size_bytes();
    let mut dst = vec![0u8; out_row * rows];
    if rows == 0 || cols == 0 {
        return dst;
    }
    let work = |first_row: usize, chunk: &mut [u8]| {
        let mut tmp = vec![0f32; cols];
        for (i, o) in chunk.chunks_exact_mut(out_row).enumerate() {
            let r = first_row + i;
            let s = row_map.map_or(r, |m| m(r));
            dequantize_row(ty, &src[s * in_row..(s + 1) * in_row], &mut tmp);
            match out {
                DType::F32 => {
                    for (b, v) in o.chunks_exact_mut(4).zip(&tmp) {
                        b.copy_from_slice(&v.to_le_bytes());
                    }
                }
                _ => {
                    for (b, v) in o.chunks_exact_mut(2).zip(&tmp) {
                        b.copy_from_slice(&half::bf16::from_f32(*v).to_bits().to_le_bytes());
                    }
                }
            }
        }
    };
    // Small tensors, or one thread: no spawning.
    let threads = threads.max(1).min(rows);
    if threads == 1 || rows * cols < (1 << 16) {
        work(0, &mut dst);
        return dst;
    }
    let rows_per = rows.div_ceil(threads);
    std::thread::scope(|s| {
        for (t, chunk) in dst.chunks_mut(rows_per * out_row).enumerate() {
            let work = &work;
            s.spawn(move || work(t * rows_per, chunk));
        }
    });
    dst
}

/// The row map that undoes llama.cpp's Q/K permutation for `n_head` heads of `rows / n_head`
/// rows each: llama.cpp stores, inside each head, the rotary pairs (i, i + half) of the
/// Hugging Face layout interleaved as rows (2i, 2i + 1). Output (Hugging Face) row
/// `h*hd + s*half + j` comes from GGUF row `h*hd + 2j + s`.
pub fn unpermute_qk_row(n_head: usize, rows: usize) -> impl Fn(usize) -> usize + Sync {
    let hd = rows / n_head;
    let half = hd / 2;
    move |r: usize| {
        let (h, w) = (r / hd, r % hd);
        let (s, j) = (w / half, w % half);
        h * hd + 2 * j + s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16(x: f32) -> [u8; 2] {
        half::f16::from_f32(x).to_bits().to_le_bytes()
    }

    #[test]
    fn q8_0_hand_made_block() {
        let mut b = vec![];
        b.extend_from_slice(&f16(0.5));
        for i in 0..32 {
            b.push((i as i8 - 16) as u8);
        }
        let mut out = [0f32; 32];
        q8_0_block(&b, &mut out);
        for (i, o) in out.iter().enumerate() {
            assert_eq!(*o, (i as f32 - 16.0) * 0.5);
        }
        // -128 and 127
        b[2] = 0x80;
        b[3] = 0x7f;
        q8_0_block(&b, &mut out);
        assert_eq!((out[0], out[1]), (-64.0, 63.5));
    }

    #[test]
    fn q4_0_hand_made_block() {
        let mut b = vec![];
        b.extend_from_slice(&f16(2.0));
        for j in 0..16u8 {
            b.push(j | ((15 - j) << 4));
        }
        let mut out = [0f32; 32];
        q4_0_block(&b, &mut out);
        for j in 0..16 {
            assert_eq!(out[j], 2.0 * (j as f32 - 8.0), "low nibble {j}");
            assert_eq!(out[j + 16], 2.0 * (7.0 - j as f32), "high nibble {j}");
        }
    }

    #[test]
    fn q4_1_hand_made_block() {
        let mut b = vec![];
        b.extend_from_slice(&f16(0.25));
        b.extend_from_slice(&f16(-1.5));
        for j in 0..16u8 {
            b.push(j | (3 << 4));
        }
        let mut out = [0f32; 32];
        q4_1_block(&b, &mut out);
        for j in 0..16 {
            assert_eq!(out[j], 0.25 * j as f32 - 1.5);
            assert_eq!(out[j + 16], 0.75 - 1.5);
        }
        // d * q + m in f32, as numpy computes it (d * q is exact: 11 × 4 significant bits).
        let (d_bits, m_bits) = (0x3555u16, 0xbc00u16); // d = 0.33325195..., m = -1
        let mut b = vec![];
        b.extend_from_slice(&d_bits.to_le_bytes());
        b.extend_from_slice(&m_bits.to_le_bytes());
        b.extend_from_slice(&[0x77; 16]); // q = 7 everywhere
        q4_1_block(&b, &mut out);
        let d = half::f16::from_bits(d_bits).to_f32();
        let want = (d * 7.0) + -1.0;
        assert_eq!(out[0].to_bits(), want.to_bits());
        assert_eq!(out[31].to_bits(), want.to_bits());
    }

    #[test]
    fn float_rows() {
        let vals = [1.0f32, -2.5, 3.0e-5, 65504.0];
        let f32b: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f16b: Vec<u8> = vals.iter().flat_map(|v| f16(*v)).collect();
        let bf16b: Vec<u8> = vals.iter().flat_map(|v| half::bf16::from_f32(*v).to_bits().to_le_bytes()).collect();
        let mut out = [0f32; 4];
        dequantize_row(GgmlType::F32, &f32b, &mut out);
        assert_eq!(out, vals);
        dequantize_row(GgmlType::F16, &f16b, &mut out);
        for (o, v) in out.iter().zip(vals) {
            assert_eq!(*o, half::f16::from_f32(v).to_f32());
        }
        dequantize_row(GgmlType::BF16, &bf16b, &mut out);
        for (o, v) in out.iter().zip(vals) {
            assert_eq!(*o, half::bf16::from_f32(v).to_f32());
        }
    }

    #[test]
    fn matrix_threads_and_row_map_agree_with_rows() {
        // 64 rows of 96 Q4_1 values with pseudo-random bytes (scales kept finite).
        let (rows, cols) = (64usize, 96usize);
        let mut src = vec![0u8; GgmlType::Q4_1.row_bytes(cols) * rows];
        let mut x = 12345u32;
        for (i, b) in src.iter_mut().enumerate() {
            x = x.wrapping_mul(1664525).wrapping_add(1013904223);
            *b = (x >> 24) as u8;
            if i % 20 == 1 || i % 20 == 3 {
                *b &= 0x3b; // high byte of f16 d/m: keep exponent small
            }
        }
        let map = unpermute_qk_row(4, rows);
        let one = dequantize_matrix(GgmlType::Q4_1, &src, rows, cols, Some(&map), DType::F32, 1);
        let many = dequantize_matrix(GgmlType::Q4_1, &src, rows, cols, Some(&map), DType::F32, 3);
        assert_eq!(one, many);
        let rb = GgmlType::Q4_1.row_bytes(cols);
        let mut row = vec![0f32; cols];
        for r in 0..rows {
            dequantize_row(GgmlType::Q4_1, &src[map(r) * rb..(map(r) + 1) * rb], &mut row);
            let got: Vec<f32> = one[r * cols * 4..(r + 1) * cols * 4]
                .chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            assert_eq!(got, row, "row {r}");
        }
        let bf = dequantize_matrix(GgmlType::Q4_1, &src, rows, cols, None, DType::BF16, 2);
        assert_eq!(bf.len(), rows * cols * 2);
    }

    #[test]
    fn unpermute_matches_transformers_reverse_permute() {
        // transformers: w.reshape(n_head, hd/2, 2, cols).swapaxes(2, 1).reshape(rows, cols)
        let (n_head, hd) = (3usize, 8usize);
        let rows = n_head * hd;
        let map = unpermute_qk_row(n_head, rows);
        for h in 0..n_head {
            for s in 0..2 {
                for j in 0..hd / 2 {
                    // output index (h, s, j) takes input index (h, j, s)
                    assert_eq!(map(h * hd + s * hd / 2 + j), h * hd + j * 2 + s);
                }
            }
        }
        let mut seen: Vec<usize> = (0..rows).map(&map).collect();
        seen.sort();
        assert_eq!(seen, (0..rows).collect::<Vec<_>>());
    }

    #[test]
    fn type_table() {
        assert_eq!(GgmlType::from_u32(3).unwrap().name(), "Q4_1");
        assert_eq!(GgmlType::from_u32(12).unwrap().block(), (256, 144));
        assert!(GgmlType::from_u32(4).is_none());
        assert!(GgmlType::from_u32(1000).is_none());
        assert!(!GgmlType::from_u32(12).unwrap().is_supported());
        assert_eq!(GgmlType::Q8_0.row_bytes(64), 68);
    }
}
