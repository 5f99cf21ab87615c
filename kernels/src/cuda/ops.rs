//! Safe launchers, one per op: each takes a [`gpu::Stream`], typed device views and shapes, checks
//! the `.cu` file's contract with [`super::check`] and only then queues the kernel.

use std::collections::HashMap;
use std::sync::Arc;

use gpu::{Context, DeviceBuffer, DeviceRepr, Function, KernelArgs, LaunchConfig, Module, Stream};
use half::bf16;

use super::check::{self, DecodeSeq, PrefillSeq, Span};
use super::launch::*;
use super::{CudaOpError, FsAttnSeq, FsDecodeSeq, MODULES};

// SAFETY: two u64 then four u32: no padding (32 bytes, checked in tests), every bit pattern valid.
unsafe impl DeviceRepr for FsAttnSeq {}
// SAFETY: two u64 then two u32: no padding (24 bytes, checked in tests), every bit pattern valid.
unsafe impl DeviceRepr for FsDecodeSeq {}

/// Elements a kernel can write: f32 or bf16 (entry-point suffix `_f32` / `_bf16`).
pub trait OutElem: DeviceRepr {
    const SUFFIX: &'static str;
    /// The value widened to f32 (exact).
    fn widen(self) -> f32;
}
impl OutElem for f32 {
    const SUFFIX: &'static str = "f32";
    fn widen(self) -> f32 {
        self
    }
}
impl OutElem for bf16 {
    const SUFFIX: &'static str = "bf16";
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

/// A read-only range `[offset, offset + len)` of a device buffer.
#[derive(Clone, Copy)]
pub struct View<'a, T: DeviceRepr> {
    buf: &'a DeviceBuffer<T>,
    offset: usize,
    len: usize,
}

impl<'a, T: DeviceRepr> View<'a, T> {
    pub fn whole(buf: &'a DeviceBuffer<T>) -> Self {
        View { buf, offset: 0, len: buf.len() }
    }
    /// `len` elements from `offset`, bounds-checked.
    pub fn part(buf: &'a DeviceBuffer<T>, offset: usize, len: usize) -> Result<Self, CudaOpError> {
        gpu::bounds::check_range("View::part", "buffer", offset, len, buf.len())?;
        Ok(View { buf, offset, len })
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    fn span(&self) -> Span {
        Span::new(self.buf.device_ptr() + (self.offset * size_of::<T>()) as u64, self.len, size_of::<T>())
    }
    fn ctx(&self) -> &Arc<Context> {
        self.buf.context()
    }
}

/// A writable range of a device buffer.
pub struct ViewMut<'a, T: DeviceRepr> {
    buf: &'a mut DeviceBuffer<T>,
    offset: usize,
    len: usize,
}

impl<'a, T: DeviceRepr> ViewMut<'a, T> {
    pub fn whole(buf: &'a mut DeviceBuffer<T>) -> Self {
        let len = buf.len();
        ViewMut { buf, offset: 0, len }
    }
    pub fn part(buf: &'a mut DeviceBuffer<T>, offset: usize, len: usize) -> Result<Self, CudaOpError> {
        gpu::bounds::check_range("ViewMut::part", "buffer", offset, len, buf.len())?;
        Ok(ViewMut { buf, offset, len })
    }
    fn span(&self) -> Span {
        Span::new(self.buf.device_ptr() + (self.offset * size_of::<T>()) as u64, self.len, size_of::<T>())
    }
    fn ctx(&self) -> &Arc<Context> {
        self.buf.context()
    }
}

/// Whether a GEMM/GEMV stores its result or adds it to the output (`_acc`, f32 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    Store,
    Accumulate,
}

/// The PTX modules of `kernels/cuda`, loaded (JIT-compiled) once for one context, and their
/// functions by entry name.
pub struct CudaKernels {
    ctx: Arc<Context>,
    _modules: Vec<Module>,
    functions: HashMap<&'static str, Function>,
}

fn same_ctx(op: &'static str, stream: &Stream, other: &Arc<Context>) -> Result<(), CudaOpError> {
    if stream.context().raw() == other.raw() {
        Ok(())
    } else {
        Err(CudaOpError::Shape { op, reason: "a buffer belongs to another context (device) than the stream".into() })
    }
}

impl CudaKernels {
    /// Loads every module of [`MODULES`] into `ctx`. A PTX the driver rejects gives the JIT log.
    pub fn load(ctx: &Arc<Context>) -> Result<CudaKernels, CudaOpError> {
        let mut modules = Vec::with_capacity(MODULES.len());
        let mut functions = HashMap::new();
        for m in MODULES {
            let module = Module::from_ptx(ctx, m.ptx).map_err(|e| CudaOpError::Load { module: m.op, source: e })?;
            for &e in m.entries {
                let f = module.function(e).map_err(|err| CudaOpError::Load { module: m.op, source: err })?;
                functions.insert(e, f);
            }
            modules.push(module);
        }
        Ok(CudaKernels { ctx: ctx.clone(), _modules: modules, functions })
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    fn function(&self, name: &str) -> Result<&Function, CudaOpError> {
        self.functions.get(name).ok_or_else(|| CudaOpError::Shape {
            op: "CudaKernels::function",
            reason: format!("no entry point {name} in the loaded modules"),
        })
    }

    /// # Safety
    /// `args` match the entry point's parameters and every pointer covers what the kernel touches
    /// for this configuration (the callers check the contract first).
    unsafe fn go(
        &self,
        stream: &Stream,
        name: &str,
        grid: [u32; 3],
        block: u32,
        args: &mut KernelArgs,
    ) -> Result<(), CudaOpError> {
        let f = self.function(name)?;
        same_ctx("launch", stream, &self.ctx)?;
        let cfg = LaunchConfig { grid, block: [block, 1, 1], shared_bytes: 0 };
        // SAFETY: the caller's contract above.
        unsafe { gpu::launch(f, cfg, stream, args) }.map_err(CudaOpError::from)
    }

    /// `C[m, n] (=|+=) A[m, k] · W[n, k]ᵀ` with the tensor-core GEMM (prefill).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_bf16<O: OutElem>(
        &self,
        stream: &Stream,
        a: View<bf16>,
        w: View<bf16>,
        c: ViewMut<O>,
        m: usize,
        n: usize,
        k: usize,
        epi: Epilogue,
    ) -> Result<(), CudaOpError> {
        self.matmul("gemm_bf16", stream, a, w, c, [m, n, k], epi)
    }

    /// As [`Self::gemm_bf16`] with the GEMV kernel (decode; any m, same bits whatever m).
    #[allow(clippy::too_many_arguments)]
    pub fn gemv_bf16<O: OutElem>(
        &self,
        stream: &Stream,
        x: View<bf16>,
        w: View<bf16>,
        y: ViewMut<O>,
        m: usize,
        n: usize,
        k: usize,
        epi: Epilogue,
    ) -> Result<(), CudaOpError> {
        self.matmul("gemv_bf16", stream, x, w, y, [m, n, k], epi)
    }

    #[allow(clippy::too_many_arguments)]
    fn matmul<O: OutElem>(
        &self,
        op: &'static str,
        stream: &Stream,
        a: View<bf16>,
        w: View<bf16>,
        c: ViewMut<O>,
        [m, n, k]: [usize; 3],
        epi: Epilogue,
    ) -> Result<(), CudaOpError> {
        let dims = check::matmul(op, a.span(), w.span(), c.span(), m, n, k)?;
        let suffix = match (epi, O::SUFFIX) {
            (Epilogue::Store, s) => s.to_string(),
            (Epilogue::Accumulate, "f32") => "f32_acc".to_string(),
            (Epilogue::Accumulate, s) => {
                return Err(CudaOpError::Shape { op, reason: format!("accumulate needs an f32 output, not {s}") })
            }
        };
        for ctx in [a.ctx(), w.ctx(), c.ctx()] {
            same_ctx(op, stream, ctx)?;
        }
        let grid = if op == "gemm_bf16" {
            [n.div_ceil(GEMM_TILE_N as usize) as u32, m.div_ceil(GEMM_TILE_M as usize) as u32, 1]
        } else {
            [n.div_ceil(GEMV_WEIGHT_ROWS as usize) as u32, m.div_ceil(GEMV_X_ROWS as usize) as u32, 1]
        };
        let mut args = KernelArgs::new();
        args.push(a.span().addr).push(w.span().addr).push(c.span().addr).push(dims[0]).push(dims[1]).push(dims[2]);
        // SAFETY: check::matmul verified lengths, alignment and overlap of A, W and C for m, n, k.
        unsafe { self.go(stream, &format!("fs_{op}_{suffix}"), grid, BLOCK_THREADS, &mut args) }
    }

    /// `out = rmsnorm(x) · weight`, x f32 [rows, dim].
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm<O: OutElem>(
        &self,
        stream: &Stream,
        x: View<f32>,
        weight: View<bf16>,
        out: ViewMut<O>,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<(), CudaOpError> {
        let [r, d] = check::rmsnorm(x.span(), weight.span(), out.span(), rows, dim)?;
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(CudaOpError::Shape { op: "rmsnorm", reason: format!("eps = {eps}: must be finite and >= 0") });
        }
        for ctx in [x.ctx(), weight.ctx(), out.ctx()] {
            same_ctx("rmsnorm", stream, ctx)?;
        }
        let mut args = KernelArgs::new();
        args.push(x.span().addr).push(weight.span().addr).push(out.span().addr).push(r).push(d).push(eps);
        // SAFETY: checked by check::rmsnorm.
        unsafe { self.go(stream, &format!("fs_rmsnorm_{}", O::SUFFIX), [rows as u32, 1, 1], BLOCK_THREADS, &mut args) }
    }

    /// RoPE in place on x [rows, n_heads, head_dim]; `pos` u32 [rows] on the device must hold
    /// positions below [`check::ROPE_MAX_POSITION`] (the caller uploads them from checked values).
    #[allow(clippy::too_many_arguments)]
    pub fn rope<O: OutElem>(
        &self,
        stream: &Stream,
        x: ViewMut<O>,
        pos: View<u32>,
        inv_freq: View<f32>,
        rows: usize,
        n_heads: usize,
        head_dim: usize,
    ) -> Result<(), CudaOpError> {
        let [r, h, d] = check::rope(x.span(), pos.span(), inv_freq.span(), rows, n_heads, head_dim)?;
        for ctx in [x.ctx(), pos.ctx(), inv_freq.ctx()] {
            same_ctx("rope", stream, ctx)?;
        }
        let mut args = KernelArgs::new();
        args.push(x.span().addr).push(pos.span().addr).push(inv_freq.span().addr).push(r).push(h).push(d);
        // SAFETY: checked by check::rope.
        unsafe { self.go(stream, &format!("fs_rope_{}", O::SUFFIX), [rows as u32, 1, 1], BLOCK_THREADS, &mut args) }
    }

    /// `out = silu(gate) · up`, n elements.
    pub fn silu_mul<O: OutElem>(
        &self,
        stream: &Stream,
        gate: View<f32>,
        up: View<f32>,
        out: ViewMut<O>,
        n: usize,
    ) -> Result<(), CudaOpError> {
        let grid = check::silu_mul(gate.span(), up.span(), out.span(), n)?;
        for ctx in [gate.ctx(), up.ctx(), out.ctx()] {
            same_ctx("silu_mul", stream, ctx)?;
        }
        let mut args = KernelArgs::new();
        args.push(gate.span().addr).push(up.span().addr).push(out.span().addr).push(n as u64);
        // SAFETY: checked by check::silu_mul.
        unsafe { self.go(stream, &format!("fs_silu_mul_{}", O::SUFFIX), [grid, 1, 1], BLOCK_THREADS, &mut args) }
    }

    /// Gathers rows of `table` for `ids`, then waits for the stream and refuses an id ≥ vocab
    /// (the kernel zeroes that row and reports the lowest such row in `bad_row`).
    #[allow(clippy::too_many_arguments)]
    pub fn embedding<O: OutElem>(
        &self,
        stream: &Stream,
        table: View<bf16>,
        ids: View<u32>,
        out: ViewMut<O>,
        bad_row: &mut DeviceBuffer<u32>,
        rows: usize,
        dim: usize,
        vocab: usize,
    ) -> Result<(), CudaOpError> {
        let [r, d] = check::embedding(table.span(), ids.span(), out.span(), rows, dim, vocab)?;
        for ctx in [table.ctx(), ids.ctx(), out.ctx(), bad_row.context()] {
            same_ctx("embedding", stream, ctx)?;
        }
        stream.memset_d32(bad_row, 0, 1, u32::MAX)?;
        let mut args = KernelArgs::new();
        args.push(table.span().addr).push(ids.span().addr).push(out.span().addr).push(r).push(d);
        args.push(vocab as u32).push(bad_row.device_ptr());
        // SAFETY: checked by check::embedding; bad_row holds at least one u32 (DeviceBuffer is never empty).
        unsafe {
            self.go(stream, &format!("fs_embedding_{}", O::SUFFIX), [rows as u32, 1, 1], BLOCK_THREADS, &mut args)?
        };
        let mut bad = [0u32];
        stream.copy_dtoh(bad_row, 0, &mut bad)?;
        if bad[0] != u32::MAX {
            let row = bad[0] as usize;
            let mut id = [0u32];
            stream.copy_dtoh(ids.buf, ids.offset + row.min(rows - 1), &mut id)?;
            return Err(CudaOpError::BadTokenId { row, id: id[0], vocab });
        }
        Ok(())
    }

    /// Causal GQA prefill over `seqs`; `descs` is device workspace for the descriptors (at least
    /// `seqs.len()` entries; uploaded here, which waits for the stream).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_prefill<O: OutElem>(
        &self,
        stream: &Stream,
        q: View<f32>,
        k: View<bf16>,
        v: View<bf16>,
        out: ViewMut<O>,
        descs: &mut DeviceBuffer<FsAttnSeq>,
        rows: usize,
        seqs: &[PrefillSeq],
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        scale: f32,
    ) -> Result<(), CudaOpError> {
        let op = "attention_prefill";
        let (host, grid) = check::attention_prefill(
            q.span(),
            k.span(),
            v.span(),
            out.span(),
            rows,
            seqs,
            n_heads,
            n_kv_heads,
            head_dim,
        )?;
        check_scale(op, scale)?;
        check::buffer(op, "descriptor workspace", Span::new(descs.device_ptr(), descs.len(), 32), host.len(), 8)?;
        for ctx in [q.ctx(), k.ctx(), v.ctx(), out.ctx(), descs.context()] {
            same_ctx(op, stream, ctx)?;
        }
        stream.copy_htod(&host, descs, 0)?;
        let mut args = KernelArgs::new();
        args.push(q.span().addr).push(descs.device_ptr()).push(out.span().addr);
        args.push(n_heads as i32).push(n_kv_heads as i32).push(scale);
        let name = format!("fs_attn_prefill_h{head_dim}_{}", O::SUFFIX);
        // SAFETY: check::attention_prefill verified q/out rows and every sequence's K/V range.
        unsafe { self.go(stream, &name, grid, BLOCK_THREADS, &mut args) }
    }

    /// GQA decode (split-K over 512-key chunks, then the merge); `descs`, `part_ml` and `part_acc`
    /// are device workspaces (sizes from [`check::attention_decode`]; too small is an error).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_decode<O: OutElem>(
        &self,
        stream: &Stream,
        q: View<f32>,
        k: View<bf16>,
        v: View<bf16>,
        out: ViewMut<O>,
        ws: &mut DecodeWorkspace,
        rows: usize,
        seqs: &[DecodeSeq],
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        scale: f32,
    ) -> Result<(), CudaOpError> {
        let op = "attention_decode";
        let plan = check::attention_decode(
            q.span(),
            k.span(),
            v.span(),
            out.span(),
            rows,
            seqs,
            n_heads,
            n_kv_heads,
            head_dim,
        )?;
        check_scale(op, scale)?;
        check::buffer(
            op,
            "descriptor workspace",
            Span::new(ws.descs.device_ptr(), ws.descs.len(), 24),
            plan.descs.len(),
            8,
        )?;
        check::buffer(
            op,
            "part_ml workspace",
            Span::new(ws.part_ml.device_ptr(), ws.part_ml.len(), 4),
            plan.part_ml_len,
            4,
        )?;
        check::buffer(
            op,
            "part_acc workspace",
            Span::new(ws.part_acc.device_ptr(), ws.part_acc.len(), 4),
            plan.part_acc_len,
            4,
        )?;
        for ctx in [q.ctx(), k.ctx(), v.ctx(), out.ctx(), ws.descs.context()] {
            same_ctx(op, stream, ctx)?;
        }
        stream.copy_htod(&plan.descs, &mut ws.descs, 0)?;
        let mut args = KernelArgs::new();
        args.push(q.span().addr)
            .push(ws.descs.device_ptr())
            .push(ws.part_ml.device_ptr())
            .push(ws.part_acc.device_ptr());
        args.push(n_heads as i32).push(n_kv_heads as i32).push(plan.max_chunks as i32).push(scale);
        // SAFETY: check::attention_decode verified q, every K/V range, and the workspace sizes.
        unsafe { self.go(stream, &format!("fs_attn_decode_partial_h{head_dim}"), plan.grid, plan.block_x, &mut args)? };
        let mut args = KernelArgs::new();
        args.push(ws.part_ml.device_ptr())
            .push(ws.part_acc.device_ptr())
            .push(ws.descs.device_ptr())
            .push(out.span().addr);
        args.push(n_heads as i32).push(head_dim as i32).push(plan.max_chunks as i32);
        let grid = [seqs.len() as u32, n_heads as u32, 1];
        // SAFETY: as above; the combine reads what the partial wrote, on the same stream.
        unsafe {
            self.go(stream, &format!("fs_attn_decode_combine_{}", O::SUFFIX), grid, ATTN_COMBINE_THREADS, &mut args)
        }
    }

    /// Per-row argmax of f32 logits [rows, vocab] into `index` (and `value`).
    pub fn argmax(
        &self,
        stream: &Stream,
        logits: View<f32>,
        index: ViewMut<u32>,
        value: Option<ViewMut<f32>>,
        rows: usize,
        vocab: usize,
    ) -> Result<(), CudaOpError> {
        let [r, v] = check::argmax(logits.span(), index.span(), value.as_ref().map(|x| x.span()), rows, vocab)?;
        same_ctx("argmax", stream, logits.ctx())?;
        same_ctx("argmax", stream, index.ctx())?;
        let mut args = KernelArgs::new();
        args.push(logits.span().addr).push(index.span().addr).push(value.as_ref().map_or(0u64, |x| x.span().addr));
        args.push(r).push(v);
        // SAFETY: checked by check::argmax; a null value pointer is allowed by the kernel.
        unsafe { self.go(stream, "fs_argmax_f32", [rows as u32, 1, 1], BLOCK_THREADS, &mut args) }
    }
}

fn check_scale(op: &'static str, scale: f32) -> Result<(), CudaOpError> {
    if scale.is_finite() && scale > 0.0 {
        Ok(())
    } else {
        Err(CudaOpError::Shape { op, reason: format!("scale = {scale}: must be finite and positive") })
    }
}

/// Device workspace of [`CudaKernels::attention_decode`], sized for `max_seqs` sequences of up
/// to `max_keys` keys each.
pub struct DecodeWorkspace {
    descs: DeviceBuffer<FsDecodeSeq>,
    part_ml: DeviceBuffer<f32>,
    part_acc: DeviceBuffer<f32>,
}

impl DecodeWorkspace {
    pub fn new(
        ctx: &Arc<Context>,
        max_seqs: usize,
        n_heads: usize,
        head_dim: usize,
        max_keys: usize,
    ) -> Result<Self, CudaOpError> {
        let chunks = max_keys.max(1).div_ceil(ATTN_DECODE_CHUNK_KEYS as usize);
        let e = check::mul(
            "DecodeWorkspace",
            check::mul("DecodeWorkspace", max_seqs.max(1), n_heads.max(1), "seqs * heads")?,
            chunks,
            "entries",
        )?;
        Ok(DecodeWorkspace {
            descs: DeviceBuffer::alloc(ctx, max_seqs.max(1))?,
            part_ml: DeviceBuffer::alloc(ctx, e * 2)?,
            part_acc: DeviceBuffer::alloc(
                ctx,
                check::mul("DecodeWorkspace", e, head_dim.max(1), "entries * head_dim")?,
            )?,
        })
    }
}
