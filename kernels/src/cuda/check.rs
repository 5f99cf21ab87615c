//! The launch contracts of `kernels/cuda/*.cu` as pure functions: shapes, supported sizes, buffer
//! lengths and alignment, checked before anything is queued. Tested without a GPU.

use super::launch::*;
use super::CudaOpError;

/// A range of device memory as a check sees it: the address of its first element and how many
/// elements of `elem_bytes` it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub addr: u64,
    pub len: usize,
    pub elem_bytes: usize,
}

impl Span {
    pub fn new(addr: u64, len: usize, elem_bytes: usize) -> Span {
        Span { addr, len, elem_bytes }
    }
}

fn fail<T>(op: &'static str, reason: String) -> Result<T, CudaOpError> {
    Err(CudaOpError::Shape { op, reason })
}

/// `a * b` or an error naming the product.
pub fn mul(op: &'static str, a: usize, b: usize, what: &str) -> Result<usize, CudaOpError> {
    a.checked_mul(b).ok_or_else(|| CudaOpError::Shape { op, reason: format!("{what} = {a} * {b} overflows") })
}

/// A dimension the kernels take as C `int`: at least `min`, at most `i32::MAX`.
pub fn dim(op: &'static str, what: &str, value: usize, min: usize) -> Result<i32, CudaOpError> {
    if value < min {
        return fail(op, format!("{what} = {value}: must be at least {min}"));
    }
    i32::try_from(value).or_else(|_| fail(op, format!("{what} = {value}: exceeds the kernels' int range")))
}

/// `span` holds at least `needed` elements and its address is a multiple of `align` bytes.
pub fn buffer(op: &'static str, what: &str, span: Span, needed: usize, align: u64) -> Result<(), CudaOpError> {
    if span.len < needed {
        return fail(op, format!("{what} holds {} elements, the shape needs {needed}", span.len));
    }
    if span.addr % align != 0 {
        return fail(op, format!("{what} at {:#x} is not {align}-byte aligned", span.addr));
    }
    Ok(())
}

/// Output must not overlap an input (both counted over the elements the shape uses).
pub fn disjoint(op: &'static str, what: (&str, Span, usize), other: (&str, Span, usize)) -> Result<(), CudaOpError> {
    let (a0, a1) = (what.1.addr, what.1.addr + (what.2 * what.1.elem_bytes) as u64);
    let (b0, b1) = (other.1.addr, other.1.addr + (other.2 * other.1.elem_bytes) as u64);
    if a0 < b1 && b0 < a1 {
        return fail(op, format!("{} [{a0:#x}, {a1:#x}) overlaps {} [{b0:#x}, {b1:#x})", what.0, other.0));
    }
    Ok(())
}

/// GEMM and GEMV: `C[m, n] = A[m, k] · W[n, k]ᵀ`. Returns (m, n, k) as ints.
pub fn matmul(
    op: &'static str,
    a: Span,
    w: Span,
    c: Span,
    m: usize,
    n: usize,
    k: usize,
) -> Result<[i32; 3], CudaOpError> {
    let dims = [dim(op, "m", m, 1)?, dim(op, "n", n, 1)?, dim(op, "k", k, K_MULTIPLE as usize)?];
    if k % K_MULTIPLE as usize != 0 {
        return fail(op, format!("k = {k}: must be a multiple of {K_MULTIPLE}"));
    }
    buffer(op, "A", a, mul(op, m, k, "m * k")?, 16)?;
    buffer(op, "W", w, mul(op, n, k, "n * k")?, 16)?;
    let mn = mul(op, m, n, "m * n")?;
    buffer(op, "C", c, mn, c.elem_bytes as u64)?;
    disjoint(op, ("C", c, mn), ("A", a, m * k))?;
    disjoint(op, ("C", c, mn), ("W", w, n * k))?;
    Ok(dims)
}

/// RMSNorm: x f32 [rows, dim], weight bf16 [dim], out [rows, dim] (distinct from x here).
pub fn rmsnorm(x: Span, weight: Span, out: Span, rows: usize, d: usize) -> Result<[i32; 2], CudaOpError> {
    let op = "rmsnorm";
    let dims = [dim(op, "rows", rows, 1)?, dim(op, "dim", d, 1)?];
    let n = mul(op, rows, d, "rows * dim")?;
    buffer(op, "x", x, n, 4)?;
    buffer(op, "weight", weight, d, 2)?;
    buffer(op, "out", out, n, out.elem_bytes as u64)?;
    disjoint(op, ("out", out, n), ("x", x, n))?;
    Ok(dims)
}

/// RoPE in place: x [rows, n_heads, head_dim], pos u32 [rows], inv_freq f32 [head_dim / 2].
pub fn rope(
    x: Span,
    pos: Span,
    inv_freq: Span,
    rows: usize,
    n_heads: usize,
    hd: usize,
) -> Result<[i32; 3], CudaOpError> {
    let op = "rope";
    let dims = [dim(op, "rows", rows, 1)?, dim(op, "n_heads", n_heads, 1)?, dim(op, "head_dim", hd, 2)?];
    if hd % 2 != 0 || hd > ROPE_MAX_HEAD_DIM as usize {
        return fail(op, format!("head_dim = {hd}: must be even and at most {ROPE_MAX_HEAD_DIM}"));
    }
    let n = mul(op, mul(op, rows, n_heads, "rows * n_heads")?, hd, "rows * n_heads * head_dim")?;
    buffer(op, "x", x, n, x.elem_bytes as u64)?;
    buffer(op, "pos", pos, rows, 4)?;
    buffer(op, "inv_freq", inv_freq, hd / 2, 4)?;
    Ok(dims)
}

/// Largest position RoPE takes (exact as f32).
pub const ROPE_MAX_POSITION: u32 = 1 << 24;

/// SiLU·up: gate, up f32 [n], out [n]; returns the grid size.
pub fn silu_mul(gate: Span, up: Span, out: Span, n: usize) -> Result<u32, CudaOpError> {
    let op = "silu_mul";
    if n == 0 {
        return fail(op, "n = 0: nothing to compute".into());
    }
    buffer(op, "gate", gate, n, 4)?;
    buffer(op, "up", up, n, 4)?;
    buffer(op, "out", out, n, out.elem_bytes as u64)?;
    Ok(n.div_ceil(BLOCK_THREADS as usize).min(1 << 20) as u32)
}

/// Embedding: table bf16 [vocab, dim], ids u32 [rows], out [rows, dim].
pub fn embedding(
    table: Span,
    ids: Span,
    out: Span,
    rows: usize,
    d: usize,
    vocab: usize,
) -> Result<[i32; 2], CudaOpError> {
    let op = "embedding";
    let dims = [dim(op, "rows", rows, 1)?, dim(op, "dim", d, 1)?];
    dim(op, "vocab", vocab, 1)?;
    buffer(op, "table", table, mul(op, vocab, d, "vocab * dim")?, 2)?;
    buffer(op, "ids", ids, rows, 4)?;
    buffer(op, "out", out, mul(op, rows, d, "rows * dim")?, out.elem_bytes as u64)?;
    Ok(dims)
}

/// Attention head configuration shared by prefill and decode: returns the group size g.
pub fn heads(op: &'static str, n_heads: usize, n_kv_heads: usize, hd: usize) -> Result<usize, CudaOpError> {
    dim(op, "n_heads", n_heads, 1)?;
    dim(op, "n_kv_heads", n_kv_heads, 1)?;
    if !ATTN_HEAD_DIMS.contains(&(hd as u32)) {
        return fail(op, format!("head_dim = {hd}: the CUDA attention kernels support {ATTN_HEAD_DIMS:?} only"));
    }
    if n_heads % n_kv_heads != 0 {
        return fail(op, format!("n_heads = {n_heads} is not a multiple of n_kv_heads = {n_kv_heads}"));
    }
    Ok(n_heads / n_kv_heads)
}

/// K/V of one sequence: `rows` rows of `kv_row` elements from element `offset` of `buf`.
pub fn kv_rows(
    op: &'static str,
    what: &str,
    buf: Span,
    offset: usize,
    rows: usize,
    kv_row: usize,
) -> Result<u64, CudaOpError> {
    let end = offset.checked_add(mul(op, rows, kv_row, "keys * kv_row")?);
    match end {
        Some(e) if e <= buf.len => {}
        _ => {
            return fail(
                op,
                format!("{what}: {rows} rows from element {offset} pass the end of the cache ({} elements)", buf.len),
            )
        }
    }
    let addr = buf.addr + (offset * buf.elem_bytes) as u64;
    if addr % 16 != 0 {
        return fail(op, format!("{what} at {addr:#x} is not 16-byte aligned"));
    }
    Ok(addr)
}

/// One sequence of a prefill launch: rows `q_row0 .. q_row0 + n_q` of q/out, query i at position
/// `pos0 + i`, keys and values from element `k_offset` / `v_offset` of the caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefillSeq {
    pub k_offset: usize,
    pub v_offset: usize,
    pub q_row0: usize,
    pub n_q: usize,
    pub pos0: usize,
}

/// One sequence of a decode launch: row `q_row` of q/out over `n_keys` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeSeq {
    pub k_offset: usize,
    pub v_offset: usize,
    pub q_row: usize,
    pub n_keys: usize,
}

/// Prefill: checks every sequence and returns the descriptors and the grid.
#[allow(clippy::too_many_arguments)]
pub fn attention_prefill(
    q: Span,
    k: Span,
    v: Span,
    out: Span,
    rows: usize,
    seqs: &[PrefillSeq],
    n_heads: usize,
    n_kv_heads: usize,
    hd: usize,
) -> Result<(Vec<super::FsAttnSeq>, [u32; 3]), CudaOpError> {
    let op = "attention_prefill";
    let g = heads(op, n_heads, n_kv_heads, hd)?;
    dim(op, "rows", rows, 1)?;
    if seqs.is_empty() || seqs.len() > u16::MAX as usize {
        return fail(op, format!("{} sequences: expected 1 ..= 65535", seqs.len()));
    }
    let row = n_heads * hd;
    let n = mul(op, rows, row, "rows * n_heads * head_dim")?;
    buffer(op, "q", q, n, 8)?;
    buffer(op, "out", out, n, out.elem_bytes as u64)?;
    disjoint(op, ("out", out, n), ("q", q, n))?;
    let kv_row = n_kv_heads * hd;
    let mut descs = Vec::with_capacity(seqs.len());
    let mut max_pairs = 0usize;
    let mut taken = vec![false; rows];
    for (i, s) in seqs.iter().enumerate() {
        if s.n_q == 0 || s.q_row0.checked_add(s.n_q).map_or(true, |e| e > rows) {
            return fail(op, format!("sequence {i}: rows {}..+{} outside the {rows} query rows", s.q_row0, s.n_q));
        }
        if taken[s.q_row0..s.q_row0 + s.n_q].iter().any(|&t| t) {
            return fail(op, format!("sequence {i}: its query rows overlap another sequence's"));
        }
        taken[s.q_row0..s.q_row0 + s.n_q].iter_mut().for_each(|t| *t = true);
        let keys = s.pos0 + s.n_q;
        if keys > u32::MAX as usize / 2 {
            return fail(op, format!("sequence {i}: position {} too large", keys - 1));
        }
        let ka = kv_rows(op, "k", k, s.k_offset, keys, kv_row)?;
        let va = kv_rows(op, "v", v, s.v_offset, keys, kv_row)?;
        descs.push(super::FsAttnSeq {
            k: ka,
            v: va,
            q_row0: s.q_row0 as u32,
            n_q: s.n_q as u32,
            pos0: s.pos0 as u32,
            reserved: 0,
        });
        max_pairs = max_pairs.max(s.n_q * g);
    }
    let gx = max_pairs.div_ceil(ATTN_PAIRS_PER_BLOCK as usize);
    let gx = u32::try_from(gx).or_else(|_| fail(op, format!("{gx} blocks along x")))?;
    Ok((descs, [gx, seqs.len() as u32, n_kv_heads as u32]))
}

/// Decode: checks every sequence and returns the descriptors, max_chunks, the partial's grid and
/// block, and the workspace sizes (part_ml, part_acc elements).
#[allow(clippy::too_many_arguments)]
pub fn attention_decode(
    q: Span,
    k: Span,
    v: Span,
    out: Span,
    rows: usize,
    seqs: &[DecodeSeq],
    n_heads: usize,
    n_kv_heads: usize,
    hd: usize,
) -> Result<DecodePlan, CudaOpError> {
    let op = "attention_decode";
    let g = heads(op, n_heads, n_kv_heads, hd)?;
    if g > ATTN_DECODE_MAX_GROUP as usize {
        return fail(op, format!("group n_heads / n_kv_heads = {g} exceeds {ATTN_DECODE_MAX_GROUP}"));
    }
    dim(op, "rows", rows, 1)?;
    if seqs.is_empty() || seqs.len() > u16::MAX as usize {
        return fail(op, format!("{} sequences: expected 1 ..= 65535", seqs.len()));
    }
    let row = n_heads * hd;
    let n = mul(op, rows, row, "rows * n_heads * head_dim")?;
    buffer(op, "q", q, n, 8)?;
    buffer(op, "out", out, n, out.elem_bytes as u64)?;
    disjoint(op, ("out", out, n), ("q", q, n))?;
    let kv_row = n_kv_heads * hd;
    let mut descs = Vec::with_capacity(seqs.len());
    let mut max_keys = 0usize;
    for (i, s) in seqs.iter().enumerate() {
        if s.q_row >= rows {
            return fail(op, format!("sequence {i}: row {} outside the {rows} query rows", s.q_row));
        }
        if s.n_keys == 0 || s.n_keys > u32::MAX as usize / 2 {
            return fail(op, format!("sequence {i}: n_keys = {}: expected at least 1", s.n_keys));
        }
        let ka = kv_rows(op, "k", k, s.k_offset, s.n_keys, kv_row)?;
        let va = kv_rows(op, "v", v, s.v_offset, s.n_keys, kv_row)?;
        descs.push(super::FsDecodeSeq { k: ka, v: va, q_row: s.q_row as u32, n_keys: s.n_keys as u32 });
        max_keys = max_keys.max(s.n_keys);
    }
    let max_chunks = max_keys.div_ceil(ATTN_DECODE_CHUNK_KEYS as usize);
    let e = mul(op, mul(op, seqs.len(), n_heads, "seqs * n_heads")?, max_chunks, "workspace entries")?;
    let warps = g.div_ceil(ATTN_DECODE_HEADS_PER_WARP as usize) as u32;
    Ok(DecodePlan {
        descs,
        max_chunks: max_chunks as u32,
        grid: [max_chunks as u32, seqs.len() as u32, n_kv_heads as u32],
        block_x: 32 * warps,
        part_ml_len: e * 2,
        part_acc_len: mul(op, e, hd, "workspace entries * head_dim")?,
    })
}

/// What [`attention_decode`] derived from a valid call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodePlan {
    pub descs: Vec<super::FsDecodeSeq>,
    pub max_chunks: u32,
    pub grid: [u32; 3],
    pub block_x: u32,
    pub part_ml_len: usize,
    pub part_acc_len: usize,
}

/// Argmax: logits f32 [rows, vocab], index u32 [rows], value f32 [rows] (optional).
pub fn argmax(
    logits: Span,
    index: Span,
    value: Option<Span>,
    rows: usize,
    vocab: usize,
) -> Result<[i32; 2], CudaOpError> {
    let op = "argmax";
    let dims = [dim(op, "rows", rows, 1)?, dim(op, "vocab", vocab, 1)?];
    buffer(op, "logits", logits, mul(op, rows, vocab, "rows * vocab")?, 4)?;
    buffer(op, "index", index, rows, 4)?;
    if let Some(v) = value {
        buffer(op, "value", v, rows, 4)?;
    }
    Ok(dims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(addr: u64, len: usize, eb: usize) -> Span {
        Span::new(addr, len, eb)
    }
    fn reason(e: CudaOpError) -> String {
        e.to_string()
    }

    #[test]
    fn matmul_checks_k_alignment_lengths_and_overlap() {
        let (a, w, c) = (s(0x1000, 64 * 64, 2), s(0x100000, 128 * 64, 2), s(0x200000, 64 * 128, 4));
        assert_eq!(matmul("gemm", a, w, c, 64, 128, 64).unwrap(), [64, 128, 64]);
        assert!(reason(matmul("gemm", a, w, c, 64, 128, 60).unwrap_err()).contains("multiple of 8"));
        assert!(reason(matmul("gemm", a, w, c, 64, 128, 0).unwrap_err()).contains("at least 8"));
        assert!(reason(matmul("gemm", a, w, c, 0, 128, 64).unwrap_err()).contains("m = 0"));
        assert!(reason(matmul("gemm", a, w, c, 65, 128, 64).unwrap_err()).contains("A holds"));
        assert!(reason(matmul("gemm", s(0x1002, 4096, 2), w, c, 64, 128, 64).unwrap_err()).contains("16-byte"));
        assert!(reason(matmul("gemm", a, w, s(0x1000, 8192, 4), 64, 128, 64).unwrap_err()).contains("overlaps"));
        assert!(matmul("gemm", a, w, c, usize::MAX, 1, 8).is_err());
        assert!(matmul("gemm", a, w, c, 1 << 31, 1, 8).unwrap_err().to_string().contains("int range"));
    }

    #[test]
    fn rope_refuses_odd_or_large_head_dims() {
        let (x, p, f) = (s(0, 4 * 2 * 64, 4), s(0x10000, 4, 4), s(0x20000, 32, 4));
        assert!(rope(x, p, f, 4, 2, 64).is_ok());
        assert!(rope(x, p, f, 4, 2, 63).is_err());
        assert!(rope(s(0, 1 << 20, 4), p, s(0x20000, 512, 4), 1, 1, 514).is_err());
        assert!(rope(x, s(0x10000, 3, 4), f, 4, 2, 64).unwrap_err().to_string().contains("pos holds 3"));
        assert!(rope(x, p, s(0x20000, 31, 4), 4, 2, 64).is_err());
    }

    #[test]
    fn small_ops_check_every_buffer() {
        assert!(rmsnorm(s(0, 10, 4), s(0x100, 5, 2), s(0x1000, 10, 2), 2, 5).is_ok());
        assert!(rmsnorm(s(0, 10, 4), s(0x100, 4, 2), s(0x1000, 10, 2), 2, 5).is_err());
        assert!(rmsnorm(s(0, 10, 4), s(0x100, 5, 2), s(0, 10, 4), 2, 5).unwrap_err().to_string().contains("overlaps"));
        assert_eq!(silu_mul(s(0, 1000, 4), s(0x1000, 1000, 4), s(0x2000, 1000, 2), 1000).unwrap(), 4);
        assert_eq!(silu_mul(s(0, 1 << 30, 4), s(0, 1 << 30, 4), s(0, 1 << 30, 4), 1 << 30).unwrap(), 1 << 20);
        assert!(silu_mul(s(0, 1000, 4), s(0x1000, 999, 4), s(0x2000, 1000, 2), 1000).is_err());
        assert!(silu_mul(s(0, 1, 4), s(0, 1, 4), s(0, 1, 4), 0).is_err());
        assert!(embedding(s(0, 100 * 8, 2), s(0x1000, 3, 4), s(0x2000, 24, 4), 3, 8, 100).is_ok());
        assert!(embedding(s(0, 100 * 8, 2), s(0x1000, 3, 4), s(0x2000, 24, 4), 3, 8, 101).is_err());
        assert!(embedding(s(0, 100 * 8, 2), s(0x1002, 3, 4), s(0x2000, 24, 4), 3, 8, 100).is_err());
        assert!(argmax(s(0, 20, 4), s(0x100, 2, 4), None, 2, 10).is_ok());
        assert!(argmax(s(0, 20, 4), s(0x100, 2, 4), Some(s(0x200, 1, 4)), 2, 10).is_err());
        assert!(argmax(s(0, 20, 4), s(0x100, 2, 4), None, 2, 0).is_err());
    }

    #[test]
    fn attention_checks_heads_rows_and_cache_bounds() {
        let (hd, nh, nkv) = (64, 8, 2);
        let kv = s(0x100000, 100 * nkv * hd, 2);
        let q = s(0x1000, 10 * nh * hd, 4);
        let out = s(0x80000, 10 * nh * hd, 2);
        let seq = |q_row0, n_q, pos0| PrefillSeq { k_offset: 0, v_offset: 0, q_row0, n_q, pos0 };
        let (descs, grid) = attention_prefill(q, kv, kv, out, 10, &[seq(0, 6, 0), seq(6, 4, 90)], nh, nkv, hd).unwrap();
        assert_eq!(grid, [1, 2, 2]);
        assert_eq!(descs[1].pos0, 90);
        assert_eq!(descs[1].k, 0x100000);
        // 90 + 11 keys > 100 rows of the cache
        let e = attention_prefill(q, kv, kv, out, 10, &[seq(0, 6, 0), seq(6, 4, 97)], nh, nkv, hd).unwrap_err();
        assert!(e.to_string().contains("pass the end"), "{e}");
        assert!(attention_prefill(q, kv, kv, out, 10, &[seq(0, 6, 0), seq(5, 4, 0)], nh, nkv, hd).is_err());
        assert!(attention_prefill(q, kv, kv, out, 10, &[seq(0, 11, 0)], nh, nkv, hd).is_err());
        assert!(attention_prefill(q, kv, kv, out, 10, &[], nh, nkv, hd).is_err());
        let e = attention_prefill(q, kv, kv, out, 10, &[seq(0, 6, 0)], nh, nkv, 96).unwrap_err();
        assert!(e.to_string().contains("support [64, 128]"), "{e}");
        assert!(attention_prefill(q, kv, kv, out, 10, &[seq(0, 6, 0)], 9, 2, hd).is_err());
        let odd = PrefillSeq { k_offset: 4, ..seq(0, 1, 0) };
        assert!(attention_prefill(q, kv, kv, out, 10, &[odd], nh, nkv, hd)
            .unwrap_err()
            .to_string()
            .contains("aligned"));

        let d = |q_row, n_keys| DecodeSeq { k_offset: 0, v_offset: 0, q_row, n_keys };
        let plan = attention_decode(q, kv, kv, out, 10, &[d(0, 100), d(1, 1)], nh, nkv, hd).unwrap();
        assert_eq!((plan.max_chunks, plan.block_x, plan.grid), (1, 32, [1, 2, 2]));
        assert_eq!((plan.part_ml_len, plan.part_acc_len), (2 * 8 * 2, 2 * 8 * 64));
        assert!(attention_decode(q, kv, kv, out, 10, &[d(0, 0)], nh, nkv, hd).is_err());
        assert!(attention_decode(q, kv, kv, out, 10, &[d(0, 101)], nh, nkv, hd).is_err());
        assert!(attention_decode(q, kv, kv, out, 10, &[d(10, 1)], nh, nkv, hd).is_err());
        let big = s(0x100000, 2000 * 64, 2);
        let plan =
            attention_decode(s(0x1000, 64 * 64, 4), big, big, s(0x80000, 64 * 64, 2), 1, &[d(0, 1100)], 64, 1, 64)
                .unwrap_err();
        assert!(plan.to_string().contains("exceeds 32"), "{plan}");
        let plan =
            attention_decode(s(0x1000, 32 * 64, 4), big, big, s(0x80000, 32 * 64, 2), 1, &[d(0, 1100)], 32, 1, 64)
                .unwrap();
        assert_eq!((plan.max_chunks, plan.block_x), (3, 256));
    }
}
