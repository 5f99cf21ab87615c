//! The engine on the GPU: [`GpuStage`] runs execution blocks [a, b) of a Llama-family model with
//! bf16 weights and its KV cache in device memory, taking the same [`StageBatch`] and giving the
//! same [`StageOutput`] as the CPU [`crate::Stage`].
//!
//! Weights are uploaded block by block (`load`): for a packed file each execution block is one
//! contiguous range of the mmap, copied in one DMA into a slab of the stage's weights pool
//! (reserved when the stage is made) and usable as soon as it has landed. A [`PinnedPacked`] file
//! (the warm host cache, page-locked once) is copied as it is; otherwise each block is registered
//! in place for its copy. Other sources copy tensor by tensor. The forward follows docs/gpu.md "Data types
//! along a layer". The matmul kernel is chosen by phase, never by batch size: a batch in which
//! every sequence continues with exactly one row is a decode step (GEMV, split-K decode
//! attention); anything else is prefill (GEMM, prefill attention).

pub mod generate;
pub mod load;
pub mod select;

use crate::blocks::BlockLayout;
use crate::config::ModelConfig;
use crate::error::{PipelineError, Result};
use crate::stage::{group_rows, BatchShape, Group, LogitsRows, StageBatch, StageInput, StageOutput};
use crate::tensor::Tensor;
use crate::weights::{StageWeights, WeightSource};
use ::gpu::{Context, DeviceBuffer, DevicePool, Stream};
use half::bf16;
use kernels::cuda::{
    check::ROPE_MAX_POSITION, CudaKernels, CudaOpError, DecodeSeq, DecodeWorkspace, Epilogue, FsAttnSeq, OutElem,
    PrefillSeq, View, ViewMut,
};
use kernels::DType;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

pub use load::{LoadPath, PinnedPacked, WeightBuf};

fn gpu_err(what: &'static str) -> impl Fn(::gpu::GpuError) -> PipelineError {
    move |e| PipelineError::Gpu { op: what, msg: e.to_string() }
}

fn op_err(e: CudaOpError) -> PipelineError {
    PipelineError::Gpu { op: "kernel launch", msg: e.to_string() }
}

/// Bounds of a GPU stage; the KV cache is allocated up front for all of them.
#[derive(Clone, Copy, Debug)]
pub struct GpuStageLimits {
    pub max_seqs: usize,
    pub max_batch_rows: usize,
    /// Positions per sequence (at most the model's `max_position_embeddings`).
    pub max_context: usize,
    /// Bytes of each slab of the weights pool reserved when the stage is made, one slab per
    /// block, so loading a block allocates nothing; at least the largest block's bytes. 0: no pool
    /// (`GpuStage::new` sizes it from the blocks it is given; a block that does not fit gets a
    /// buffer of its own).
    pub block_slab_bytes: usize,
}

impl GpuStageLimits {
    /// 8 sequences, 2048 rows, and the model's context capped at 4096.
    pub fn for_config(cfg: &ModelConfig) -> Self {
        GpuStageLimits {
            max_seqs: 8,
            max_batch_rows: 2048,
            max_context: cfg.max_position_embeddings.min(4096),
            block_slab_bytes: 0,
        }
    }
}

/// Refuses models the GPU path cannot run, from the config alone: biases (Qwen2), head sizes
/// without attention kernels, groups above 32, widths that are not multiples of 8.
pub fn check_config(cfg: &ModelConfig) -> Result<()> {
    let bad = |msg: String| Err(PipelineError::Invalid { what: "gpu model", msg });
    if cfg.attention_bias {
        return bad(format!(
            "{}: attention biases are not supported on the GPU path (use --device cpu)",
            cfg.arch.hf_name()
        ));
    }
    if !kernels::cuda::launch::ATTN_HEAD_DIMS.contains(&(cfg.head_dim as u32)) {
        return bad(format!("head_dim {}: the CUDA attention kernels support 64 and 128", cfg.head_dim));
    }
    if cfg.num_attention_heads % cfg.num_key_value_heads != 0
        || cfg.num_attention_heads / cfg.num_key_value_heads > kernels::cuda::launch::ATTN_DECODE_MAX_GROUP as usize
    {
        return bad(format!(
            "{} heads over {} kv heads: need a whole group of at most {}",
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            kernels::cuda::launch::ATTN_DECODE_MAX_GROUP
        ));
    }
    for (what, v) in
        [("hidden_size", cfg.hidden_size), ("intermediate_size", cfg.intermediate_size), ("q_dim", cfg.q_dim())]
    {
        if v % 8 != 0 {
            return bad(format!("{what} {v} is not a multiple of 8 (the GEMM/GEMV kernels move 16-byte pieces)"));
        }
    }
    Ok(())
}

/// [`check_config`], and every matrix of `w` must be bf16.
pub fn check_supported(cfg: &ModelConfig, w: &StageWeights) -> Result<()> {
    check_config(cfg)?;
    if let Some((n, t)) = matrices(w).into_iter().find(|(_, t)| t.dtype != DType::BF16) {
        return Err(PipelineError::Invalid {
            what: "gpu model",
            msg: format!("{n} is {:?}: the GPU path needs bf16 weights (for a GGUF model pass --dtype bf16)", t.dtype),
        });
    }
    Ok(())
}

/// The matrices of `w` in upload order: embedding, per layer q k v o gate up down, LM head.
fn matrices(w: &StageWeights) -> Vec<(&'static str, &Tensor)> {
    let mut mats: Vec<(&'static str, &Tensor)> = Vec::new();
    if let Some(e) = &w.embed {
        mats.push(("embedding", e));
    }
    for l in &w.layer {
        mats.extend([("q_proj", &l.wq), ("k_proj", &l.wk), ("v_proj", &l.wv), ("o_proj", &l.wo)]);
        mats.extend([("gate_proj", &l.w_gate), ("up_proj", &l.w_up), ("down_proj", &l.w_down)]);
    }
    if let Some(h) = &w.lm_head {
        mats.push(("lm_head", h));
    }
    mats
}

/// A weight matrix in device memory: `len` elements at `offset` of buffer `buf`.
#[derive(Clone, Copy, Debug)]
struct DevTensor {
    buf: usize,
    offset: usize,
    len: usize,
}

struct DevLayer {
    attn_norm: DeviceBuffer<bf16>,
    mlp_norm: DeviceBuffer<bf16>,
    wq: DevTensor,
    wk: DevTensor,
    wv: DevTensor,
    wo: DevTensor,
    w_gate: DevTensor,
    w_up: DevTensor,
    w_down: DevTensor,
}

/// One block's upload: bytes and how they went.
#[derive(Clone, Copy, Debug)]
pub struct BlockLoad {
    pub block: usize,
    pub bytes: usize,
    pub seconds: f64,
    pub path: LoadPath,
}

struct Scratch {
    x: DeviceBuffer<f32>,       // [R, d] residual stream
    h: DeviceBuffer<bf16>,      // [R, d] normed input
    q: DeviceBuffer<f32>,       // [R, qd]
    k: DeviceBuffer<bf16>,      // [R, kvd]
    v: DeviceBuffer<bf16>,      // [R, kvd]
    att: DeviceBuffer<bf16>,    // [R, qd]
    gate: DeviceBuffer<f32>,    // [R, f]
    up: DeviceBuffer<f32>,      // [R, f]
    act: DeviceBuffer<bf16>,    // [R, f]
    ids: DeviceBuffer<u32>,     // [R]
    pos: DeviceBuffer<u32>,     // [R]
    bad_row: DeviceBuffer<u32>, // [1]
    descs: DeviceBuffer<FsAttnSeq>,
    decode: DecodeWorkspace,
}

/// Device KV cache: per layer one K and one V buffer of `max_seqs` slots × `max_context` rows.
struct DevKv {
    k: Vec<DeviceBuffer<bf16>>,
    v: Vec<DeviceBuffer<bf16>>,
    slots: HashMap<u64, (usize, usize)>, // seq -> (slot, len)
    free: Vec<usize>,
}

pub struct GpuStage {
    cfg: Arc<ModelConfig>,
    pub blocks: Range<usize>,
    pub layout: BlockLayout,
    limits: GpuStageLimits,
    ctx: Arc<Context>,
    stream: Stream,
    k: Arc<CudaKernels>,
    /// The weights pool (one slab per block), when `limits.block_slab_bytes` > 0.
    pool: Option<DevicePool<bf16>>,
    bufs: Vec<WeightBuf>,
    embed: Option<DevTensor>,
    /// One per layer of the stage, `None` until its block is loaded.
    layers: Vec<Option<DevLayer>>,
    first_layer: usize,
    final_norm: Option<DeviceBuffer<bf16>>,
    lm_head: Option<DevTensor>,
    inv_freq: DeviceBuffer<f32>,
    s: Scratch,
    kv: DevKv,
    /// How each block was uploaded.
    pub loads: Vec<BlockLoad>,
}

/// A device context with the kernels loaded, shared by the stages of one device.
pub struct GpuDevice {
    pub ctx: Arc<Context>,
    pub kernels: Arc<CudaKernels>,
}

impl GpuDevice {
    /// Device `ordinal`'s primary context with every PTX module loaded. Without a driver: an error
    /// starting "no CUDA driver".
    pub fn open(ordinal: i32) -> Result<GpuDevice> {
        let ctx = Context::new(ordinal).map_err(gpu_err("opening the device context"))?;
        let kernels = Arc::new(CudaKernels::load(&ctx).map_err(op_err)?);
        Ok(GpuDevice { ctx, kernels })
    }
}

impl GpuStage {
    /// Builds the stage for blocks [a, b): checks that the GPU path supports the model, then
    /// uploads each block's weights (in one piece per block when `block_bytes` gives them)
    /// and allocates the KV cache and scratch for `limits`.
    pub fn new(
        cfg: Arc<ModelConfig>,
        src: &dyn WeightSource,
        block_bytes: Option<&dyn BlockBytes>,
        layout: BlockLayout,
        blocks: Range<usize>,
        dev: &GpuDevice,
        limits: GpuStageLimits,
    ) -> Result<Self> {
        Self::check(&cfg, src, &layout, blocks.clone(), &limits)?;
        let mut limits = limits;
        if limits.block_slab_bytes == 0 {
            if let Some(bb) = block_bytes {
                limits.block_slab_bytes =
                    blocks.clone().filter_map(|b| bb.block_bytes(b)).map(|x| x.len() & !1).max().unwrap_or(0);
            }
        }
        let mut stage = Self::allocate(cfg, layout, blocks.clone(), dev, limits)?;
        for b in blocks {
            let pinned = block_bytes.is_some_and(|s| s.pinned());
            stage.load_block(src, block_bytes.and_then(|s| s.block_bytes(b)), pinned, b)?;
        }
        Ok(stage)
    }

    /// A stage for blocks [a, b) with its KV cache and scratch allocated and no weights yet:
    /// [`GpuStage::load_block`] adds each block as it arrives (execute-while-load), and
    /// `forward` refuses to run until every block is loaded. Checks the config only.
    pub fn allocate(
        cfg: Arc<ModelConfig>,
        layout: BlockLayout,
        blocks: Range<usize>,
        dev: &GpuDevice,
        limits: GpuStageLimits,
    ) -> Result<Self> {
        Self::check_shape(&cfg, &layout, &limits)?;
        let layers = layout.layer_range(blocks.clone())?;
        let ctx = dev.ctx.clone();
        let stream = Stream::new(&ctx).map_err(gpu_err("gpu stream"))?;
        let inv: Vec<f32> = cfg.rope_inv_freq();
        let mut inv_freq = DeviceBuffer::alloc(&ctx, inv.len()).map_err(gpu_err("gpu alloc"))?;
        stream.copy_htod(&inv, &mut inv_freq, 0).map_err(gpu_err("gpu upload"))?;
        let s = Scratch::new(&ctx, &cfg, &limits)?;
        let kv = DevKv::new(&ctx, layers.len(), cfg.kv_dim(), &limits)?;
        let pool = match limits.block_slab_bytes {
            0 => None,
            slab => Some(
                DevicePool::<bf16>::reserve(&ctx, (slab + 1) & !1, blocks.len())
                    .map_err(gpu_err("gpu weights pool"))?,
            ),
        };
        Ok(GpuStage {
            pool,
            layers: (0..layers.len()).map(|_| None).collect(),
            first_layer: layers.start,
            cfg,
            blocks,
            layout,
            limits,
            ctx,
            stream,
            k: dev.kernels.clone(),
            bufs: Vec::new(),
            embed: None,
            final_norm: None,
            lm_head: None,
            inv_freq,
            s,
            kv,
            loads: Vec::new(),
        })
    }

    /// Uploads block `b` of this stage from `src` (in one piece when `bytes` holds the block's
    /// bytes, as a packed file's mmap does; `pinned`: those bytes are page-locked already, see
    /// [`PinnedPacked`]) and waits until it has landed.
    pub fn load_block(
        &mut self,
        src: &dyn WeightSource,
        bytes: Option<&[u8]>,
        pinned: bool,
        b: usize,
    ) -> Result<BlockLoad> {
        if !self.blocks.contains(&b) {
            return Err(PipelineError::Invalid {
                what: "gpu block",
                msg: format!("block {b} is not in this stage's blocks {:?}", self.blocks),
            });
        }
        if self.loads.iter().any(|l| l.block == b) {
            return Err(PipelineError::Invalid { what: "gpu block", msg: format!("block {b} is already loaded") });
        }
        let t0 = Instant::now();
        let bw = StageWeights::load(&self.cfg, src, &self.layout, b..b + 1)?;
        check_supported(&self.cfg, &bw)?;
        let mats: Vec<&Tensor> = matrices(&bw).into_iter().map(|(_, t)| t).collect();
        let (ctx, stream) = (&self.ctx, &self.stream);
        let (placed, nbytes, path) =
            upload_block(ctx, stream, &mats, bytes, pinned, self.pool.as_ref(), &mut self.bufs)?;
        let mut it = placed.into_iter();
        let mut next = || it.next().expect("one placement per matrix");
        if bw.embed.is_some() {
            self.embed = Some(next());
        }
        let up = |v: &[f32]| load::upload_f32_as_bf16(ctx, stream, v).map_err(gpu_err("gpu upload"));
        for (i, l) in bw.layer.iter().enumerate() {
            let local = bw.layers.start + i - self.first_layer;
            self.layers[local] = Some(DevLayer {
                attn_norm: up(&l.attn_norm)?,
                mlp_norm: up(&l.mlp_norm)?,
                wq: next(),
                wk: next(),
                wv: next(),
                wo: next(),
                w_gate: next(),
                w_up: next(),
                w_down: next(),
            });
        }
        if bw.lm_head.is_some() {
            self.lm_head = Some(next());
            let norm = bw.final_norm.as_ref().expect("last block has the final norm");
            self.final_norm = Some(up(norm)?);
        }
        let load = BlockLoad { block: b, bytes: nbytes, seconds: t0.elapsed().as_secs_f64(), path };
        self.loads.push(load);
        Ok(load)
    }

    /// Blocks of this stage not loaded yet.
    pub fn missing_blocks(&self) -> Vec<usize> {
        self.blocks.clone().filter(|b| !self.loads.iter().any(|l| l.block == *b)).collect()
    }

    fn check_shape(cfg: &ModelConfig, layout: &BlockLayout, limits: &GpuStageLimits) -> Result<()> {
        if layout.num_layers != cfg.num_hidden_layers {
            return Err(PipelineError::Invalid {
                what: "block layout",
                msg: format!("{} layers in the layout, {} in the config", layout.num_layers, cfg.num_hidden_layers),
            });
        }
        if limits.max_seqs == 0 || limits.max_batch_rows == 0 || limits.max_context == 0 {
            return Err(PipelineError::Invalid {
                what: "gpu limits",
                msg: format!("{limits:?}: every limit must be positive"),
            });
        }
        if limits.max_context > cfg.max_position_embeddings || limits.max_context > ROPE_MAX_POSITION as usize {
            return Err(PipelineError::Invalid {
                what: "gpu limits",
                msg: format!("max_context {} exceeds the model's {}", limits.max_context, cfg.max_position_embeddings),
            });
        }
        check_config(cfg)
    }

    /// Everything [`GpuStage::new`] checks before touching a device (tested without a GPU).
    pub fn check(
        cfg: &ModelConfig,
        src: &dyn WeightSource,
        layout: &BlockLayout,
        blocks: Range<usize>,
        limits: &GpuStageLimits,
    ) -> Result<StageWeights> {
        Self::check_shape(cfg, layout, limits)?;
        let w = StageWeights::load(cfg, src, layout, blocks)?;
        check_supported(cfg, &w)?;
        Ok(w)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    pub fn is_first(&self) -> bool {
        self.blocks.start == 0
    }
    pub fn is_last(&self) -> bool {
        self.blocks.end == self.layout.num_blocks
    }
    pub fn limits(&self) -> GpuStageLimits {
        self.limits
    }
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }
    pub fn seq_len(&self, seq: u64) -> usize {
        self.kv.slots.get(&seq).map_or(0, |s| s.1)
    }
    pub fn free(&mut self, seq: u64) -> bool {
        match self.kv.slots.remove(&seq) {
            Some((slot, _)) => {
                self.kv.free.push(slot);
                true
            }
            None => false,
        }
    }
    pub fn num_seqs(&self) -> usize {
        self.kv.slots.len()
    }

    /// Runs the batch through this stage's layers (same contract as [`crate::Stage::forward`]).
    pub fn forward(&mut self, batch: &StageBatch) -> Result<StageOutput> {
        let missing = self.missing_blocks();
        if !missing.is_empty() {
            return Err(PipelineError::Invalid {
                what: "gpu stage",
                msg: format!("blocks {missing:?} of {:?} are not loaded yet", self.blocks),
            });
        }
        let groups = self.validate(batch)?;
        let result = self.forward_checked(batch, &groups);
        if result.is_err() {
            for g in groups.iter().filter(|g| g.is_new) {
                self.free(g.seq);
            }
        }
        result
    }

    fn validate(&self, b: &StageBatch) -> Result<Vec<Group>> {
        let shape = BatchShape {
            cfg: &self.cfg,
            blocks: &self.blocks,
            max_rows: self.limits.max_batch_rows,
            max_context: self.limits.max_context,
        };
        let groups = group_rows(b, &shape, |seq| self.kv.slots.get(&seq).map(|s| s.1))?;
        let new = groups.iter().filter(|g| g.is_new).count();
        if self.kv.slots.len() + new > self.limits.max_seqs {
            return Err(PipelineError::Limit {
                what: "sequences in the GPU KV cache",
                limit: self.limits.max_seqs,
                requested: self.kv.slots.len() + new,
            });
        }
        Ok(groups)
    }

    fn forward_checked(&mut self, b: &StageBatch, groups: &[Group]) -> Result<StageOutput> {
        let cfg = self.cfg.clone();
        let n = b.seq_ids.len();
        let (d, f, qd, kvd, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.q_dim(), cfg.kv_dim(), cfg.head_dim);
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let eps = cfg.rms_norm_eps as f32;
        let scale = 1.0 / (hd as f32).sqrt();
        let decode = groups.iter().all(|g| g.rows.1 - g.rows.0 == 1 && !g.is_new);
        let st = &self.stream;
        let k = &*self.k;
        let ge = gpu_err("forward");

        // ---- slots for new sequences (validated: there is room) ----
        for g in groups.iter().filter(|g| g.is_new) {
            let slot = self.kv.free.pop().expect("room checked in validate");
            self.kv.slots.insert(g.seq, (slot, 0));
        }
        let slot_of: Vec<usize> = groups.iter().map(|g| self.kv.slots[&g.seq].0).collect();
        let is_last = self.is_last();
        let ctx_rows = self.limits.max_context;

        let s = &mut self.s;
        st.copy_htod(&b.positions, &mut s.pos, 0).map_err(&ge)?;
        match &b.input {
            StageInput::Tokens(tokens) => {
                st.copy_htod(tokens, &mut s.ids, 0).map_err(&ge)?;
                let e = self.embed.expect("first stage has the embedding");
                k.embedding(
                    st,
                    tview(&self.bufs, e)?,
                    View::part(&s.ids, 0, n).map_err(op_err)?,
                    ViewMut::part(&mut s.x, 0, n * d).map_err(op_err)?,
                    &mut s.bad_row,
                    n,
                    d,
                    cfg.vocab_size,
                )
                .map_err(op_err)?;
            }
            StageInput::Hidden(h) => st.copy_htod(h, &mut s.x, 0).map_err(&ge)?,
        }

        let mm = |k: &CudaKernels, a: View<bf16>, w: View<bf16>, epi, m, nn, kk, out: ViewMut<'_, _>| -> Result<()> {
            mm_any::<f32>(k, st, decode, a, w, out, m, nn, kk, epi)
        };
        for (li, lw) in self.layers.iter().enumerate() {
            let lw = lw.as_ref().expect("every block loaded (checked in forward)");
            // ---- attention ----
            k.rmsnorm(
                st,
                View::part(&s.x, 0, n * d).map_err(op_err)?,
                View::whole(&lw.attn_norm),
                ViewMut::part(&mut s.h, 0, n * d).map_err(op_err)?,
                n,
                d,
                eps,
            )
            .map_err(op_err)?;
            let h = View::part(&s.h, 0, n * d).map_err(op_err)?;
            mm(
                k,
                h,
                tview(&self.bufs, lw.wq)?,
                Epilogue::Store,
                n,
                qd,
                d,
                ViewMut::part(&mut s.q, 0, n * qd).map_err(op_err)?,
            )?;
            mm_any::<bf16>(
                k,
                st,
                decode,
                h,
                tview(&self.bufs, lw.wk)?,
                ViewMut::part(&mut s.k, 0, n * kvd).map_err(op_err)?,
                n,
                kvd,
                d,
                Epilogue::Store,
            )?;
            mm_any::<bf16>(
                k,
                st,
                decode,
                h,
                tview(&self.bufs, lw.wv)?,
                ViewMut::part(&mut s.v, 0, n * kvd).map_err(op_err)?,
                n,
                kvd,
                d,
                Epilogue::Store,
            )?;
            let (pos, inv) = (View::part(&s.pos, 0, n).map_err(op_err)?, View::whole(&self.inv_freq));
            k.rope(st, ViewMut::part(&mut s.q, 0, n * qd).map_err(op_err)?, pos, inv, n, nh, hd).map_err(op_err)?;
            k.rope(st, ViewMut::part(&mut s.k, 0, n * kvd).map_err(op_err)?, pos, inv, n, nkv, hd).map_err(op_err)?;
            // KV append: rows of this batch into each sequence's slot.
            for (g, &slot) in groups.iter().zip(&slot_of) {
                let (r0, r1) = g.rows;
                let dst = (slot * ctx_rows + g.pos0) * kvd;
                st.copy_dtod(&s.k, r0 * kvd, &mut self.kv.k[li], dst, (r1 - r0) * kvd).map_err(&ge)?;
                st.copy_dtod(&s.v, r0 * kvd, &mut self.kv.v[li], dst, (r1 - r0) * kvd).map_err(&ge)?;
            }
            let q = View::part(&s.q, 0, n * qd).map_err(op_err)?;
            let (kc, vc) = (View::whole(&self.kv.k[li]), View::whole(&self.kv.v[li]));
            let att = ViewMut::part(&mut s.att, 0, n * qd).map_err(op_err)?;
            if decode {
                let seqs: Vec<DecodeSeq> = groups
                    .iter()
                    .zip(&slot_of)
                    .map(|(g, &slot)| {
                        let off = slot * ctx_rows * kvd;
                        DecodeSeq { k_offset: off, v_offset: off, q_row: g.rows.0, n_keys: g.pos0 + 1 }
                    })
                    .collect();
                k.attention_decode(st, q, kc, vc, att, &mut s.decode, n, &seqs, nh, nkv, hd, scale).map_err(op_err)?;
            } else {
                let seqs: Vec<PrefillSeq> = groups
                    .iter()
                    .zip(&slot_of)
                    .map(|(g, &slot)| {
                        let off = slot * ctx_rows * kvd;
                        PrefillSeq {
                            k_offset: off,
                            v_offset: off,
                            q_row0: g.rows.0,
                            n_q: g.rows.1 - g.rows.0,
                            pos0: g.pos0,
                        }
                    })
                    .collect();
                k.attention_prefill(st, q, kc, vc, att, &mut s.descs, n, &seqs, nh, nkv, hd, scale).map_err(op_err)?;
            }
            let att = View::part(&s.att, 0, n * qd).map_err(op_err)?;
            mm(
                k,
                att,
                tview(&self.bufs, lw.wo)?,
                Epilogue::Accumulate,
                n,
                d,
                qd,
                ViewMut::part(&mut s.x, 0, n * d).map_err(op_err)?,
            )?;

            // ---- MLP ----
            k.rmsnorm(
                st,
                View::part(&s.x, 0, n * d).map_err(op_err)?,
                View::whole(&lw.mlp_norm),
                ViewMut::part(&mut s.h, 0, n * d).map_err(op_err)?,
                n,
                d,
                eps,
            )
            .map_err(op_err)?;
            let h = View::part(&s.h, 0, n * d).map_err(op_err)?;
            mm(
                k,
                h,
                tview(&self.bufs, lw.w_gate)?,
                Epilogue::Store,
                n,
                f,
                d,
                ViewMut::part(&mut s.gate, 0, n * f).map_err(op_err)?,
            )?;
            mm(
                k,
                h,
                tview(&self.bufs, lw.w_up)?,
                Epilogue::Store,
                n,
                f,
                d,
                ViewMut::part(&mut s.up, 0, n * f).map_err(op_err)?,
            )?;
            k.silu_mul(
                st,
                View::part(&s.gate, 0, n * f).map_err(op_err)?,
                View::part(&s.up, 0, n * f).map_err(op_err)?,
                ViewMut::part(&mut s.act, 0, n * f).map_err(op_err)?,
                n * f,
            )
            .map_err(op_err)?;
            let act = View::part(&s.act, 0, n * f).map_err(op_err)?;
            mm(
                k,
                act,
                tview(&self.bufs, lw.w_down)?,
                Epilogue::Accumulate,
                n,
                d,
                f,
                ViewMut::part(&mut s.x, 0, n * d).map_err(op_err)?,
            )?;
        }

        // ---- commit the new positions ----
        for g in groups {
            if let Some(e) = self.kv.slots.get_mut(&g.seq) {
                e.1 = g.pos0 + (g.rows.1 - g.rows.0);
            }
        }

        if !is_last {
            let mut x = vec![0f32; n * d];
            st.copy_dtoh(&s.x, 0, &mut x).map_err(&ge)?;
            return Ok(StageOutput::Hidden(x));
        }
        let rows: Vec<usize> = match b.logits {
            LogitsRows::All => (0..n).collect(),
            LogitsRows::LastOfEachSeq => groups.iter().map(|g| g.rows.1 - 1).collect(),
        };
        let m = rows.len();
        // final norm of every row into h, then the selected rows packed into the front of att's
        // storage is not possible (different widths): gather them into x's tail-free prefix.
        let norm = self.final_norm.as_ref().expect("last stage");
        k.rmsnorm(
            st,
            View::part(&s.x, 0, n * d).map_err(op_err)?,
            View::whole(norm),
            ViewMut::part(&mut s.h, 0, n * d).map_err(op_err)?,
            n,
            d,
            eps,
        )
        .map_err(op_err)?;
        let mut sel = DeviceBuffer::<bf16>::alloc(&self.ctx, m * d).map_err(&ge)?;
        for (i, &r) in rows.iter().enumerate() {
            st.copy_dtod(&s.h, r * d, &mut sel, i * d, d).map_err(&ge)?;
        }
        let vocab = cfg.vocab_size;
        let mut logits = DeviceBuffer::<f32>::alloc(&self.ctx, m * vocab).map_err(&ge)?;
        let head = tview(&self.bufs, self.lm_head.expect("last stage"))?;
        mm_any::<f32>(
            k,
            st,
            decode,
            View::whole(&sel),
            head,
            ViewMut::whole(&mut logits),
            m,
            vocab,
            d,
            Epilogue::Store,
        )?;
        let mut data = vec![0f32; m * vocab];
        st.copy_dtoh(&logits, 0, &mut data).map_err(&ge)?;
        Ok(StageOutput::Logits { rows, vocab, data })
    }
}

#[allow(clippy::too_many_arguments)]
fn mm_any<O: OutElem>(
    k: &CudaKernels,
    st: &Stream,
    decode: bool,
    a: View<bf16>,
    w: View<bf16>,
    out: ViewMut<O>,
    m: usize,
    n: usize,
    kk: usize,
    epi: Epilogue,
) -> Result<()> {
    if decode {
        k.gemv_bf16(st, a, w, out, m, n, kk, epi).map_err(op_err)
    } else {
        k.gemm_bf16(st, a, w, out, m, n, kk, epi).map_err(op_err)
    }
}

fn tview(bufs: &[WeightBuf], t: DevTensor) -> Result<View<'_, bf16>> {
    View::part(bufs[t.buf].dev(), t.offset, t.len).map_err(op_err)
}

/// The bytes of one execution block in host memory, for sources that store blocks contiguously
/// (a packed file): the GPU stage registers and copies each block in one piece.
pub trait BlockBytes {
    /// Block `block`'s bytes, once present (checksummed); `None` otherwise.
    fn block_bytes(&self, block: usize) -> Option<&[u8]>;
    /// Whether those bytes are page-locked in the stage's context already (copied as they are,
    /// not registered per block). A wrong `true` costs speed only: the driver then copies
    /// pageable memory itself.
    fn pinned(&self) -> bool {
        false
    }
}

impl BlockBytes for PinnedPacked {
    fn block_bytes(&self, block: usize) -> Option<&[u8]> {
        self.file().block_bytes(block)
    }
    fn pinned(&self) -> bool {
        true
    }
}

impl BlockBytes for crate::packed::PackedFile {
    fn block_bytes(&self, block: usize) -> Option<&[u8]> {
        let e = self.layout().exec_blocks.get(block)?;
        if !self.is_present(block) {
            return None;
        }
        let (start, len) = (usize::try_from(e.offset).ok()?, usize::try_from(e.len).ok()?);
        self.bytes().get(start..start.checked_add(len)?)
    }
}

/// Uploads one block's matrices. When `block` holds every matrix at a 16-byte aligned offset (a
/// packed file's execution block) the whole block is copied at once and the matrices are views
/// of it; otherwise each matrix is copied on its own.
fn upload_block(
    ctx: &Arc<Context>,
    stream: &Stream,
    mats: &[&Tensor],
    block: Option<&[u8]>,
    pinned: bool,
    pool: Option<&DevicePool<bf16>>,
    bufs: &mut Vec<WeightBuf>,
) -> Result<(Vec<DevTensor>, usize, LoadPath)> {
    let ge = gpu_err("gpu block upload");
    if let Some(span) = block.map(even) {
        let lo = span.as_ptr() as usize;
        if block_holds_all(span, mats) {
            let mut buf = match pool {
                Some(p) if span.len() <= p.slab_bytes() => WeightBuf::Pooled(p.try_take().map_err(&ge)?),
                _ => WeightBuf::Owned(DeviceBuffer::alloc(ctx, span.len() / 2).map_err(&ge)?),
            };
            let path = load::upload_bf16_into(ctx, stream, span, &mut buf, pinned).map_err(&ge)?;
            bufs.push(buf);
            let id = bufs.len() - 1;
            let placed = mats
                .iter()
                .map(|t| DevTensor {
                    buf: id,
                    offset: (t.bytes().as_ptr() as usize - lo) / 2,
                    len: t.bytes().len() / 2,
                })
                .collect();
            return Ok((placed, span.len(), path));
        }
        log::debug!("gpu: block bytes do not hold every matrix aligned; uploading tensor by tensor");
    }
    let mut placed = Vec::with_capacity(mats.len());
    let mut path = LoadPath::Registered;
    let mut total = 0;
    for t in mats {
        let (buf, p) = load::upload_bf16(ctx, stream, t.bytes()).map_err(&ge)?;
        if p == LoadPath::Staged {
            path = LoadPath::Staged;
        }
        total += t.bytes().len();
        bufs.push(WeightBuf::Owned(buf));
        placed.push(DevTensor { buf: bufs.len() - 1, offset: 0, len: t.bytes().len() / 2 });
    }
    Ok((placed, total, path))
}

/// Whether every matrix lies inside `span` at a 16-byte aligned offset (then the block is copied
/// in one piece and the matrices are views of it).
fn block_holds_all(span: &[u8], mats: &[&Tensor]) -> bool {
    let (lo, hi) = (span.as_ptr() as usize, span.as_ptr() as usize + span.len());
    let inside = |t: &Tensor| {
        let p = t.bytes().as_ptr() as usize;
        p >= lo && p + t.bytes().len() <= hi && (p - lo) % 16 == 0
    };
    !mats.is_empty() && mats.iter().all(|t| inside(t))
}

/// The span rounded down to an even length (a trailing odd byte is never part of a bf16 matrix).
fn even(b: &[u8]) -> &[u8] {
    &b[..b.len() & !1]
}

impl Scratch {
    fn new(ctx: &Arc<Context>, cfg: &ModelConfig, l: &GpuStageLimits) -> Result<Scratch> {
        let ge = gpu_err("gpu scratch allocation");
        let r = l.max_batch_rows;
        let (d, f, qd, kvd) = (cfg.hidden_size, cfg.intermediate_size, cfg.q_dim(), cfg.kv_dim());
        Ok(Scratch {
            x: DeviceBuffer::alloc(ctx, r * d).map_err(&ge)?,
            h: DeviceBuffer::alloc(ctx, r * d).map_err(&ge)?,
            q: DeviceBuffer::alloc(ctx, r * qd).map_err(&ge)?,
            k: DeviceBuffer::alloc(ctx, r * kvd).map_err(&ge)?,
            v: DeviceBuffer::alloc(ctx, r * kvd).map_err(&ge)?,
            att: DeviceBuffer::alloc(ctx, r * qd).map_err(&ge)?,
            gate: DeviceBuffer::alloc(ctx, r * f).map_err(&ge)?,
            up: DeviceBuffer::alloc(ctx, r * f).map_err(&ge)?,
            act: DeviceBuffer::alloc(ctx, r * f).map_err(&ge)?,
            ids: DeviceBuffer::alloc(ctx, r).map_err(&ge)?,
            pos: DeviceBuffer::alloc(ctx, r).map_err(&ge)?,
            bad_row: DeviceBuffer::alloc(ctx, 1).map_err(&ge)?,
            descs: DeviceBuffer::alloc(ctx, l.max_seqs).map_err(&ge)?,
            decode: DecodeWorkspace::new(ctx, l.max_seqs, cfg.num_attention_heads, cfg.head_dim, l.max_context)
                .map_err(op_err)?,
        })
    }
}

impl DevKv {
    fn new(ctx: &Arc<Context>, layers: usize, kvd: usize, l: &GpuStageLimits) -> Result<DevKv> {
        let ge = gpu_err("gpu KV cache allocation");
        let per = l.max_seqs.checked_mul(l.max_context).and_then(|x| x.checked_mul(kvd)).ok_or_else(|| {
            PipelineError::Invalid { what: "gpu limits", msg: format!("{l:?}: KV cache size overflows") }
        })?;
        let mut k = Vec::with_capacity(layers);
        let mut v = Vec::with_capacity(layers);
        for _ in 0..layers {
            k.push(DeviceBuffer::alloc(ctx, per).map_err(&ge)?);
            v.push(DeviceBuffer::alloc(ctx, per).map_err(&ge)?);
        }
        Ok(DevKv { k, v, slots: HashMap::new(), free: (0..l.max_seqs).rev().collect() })
    }
}

#[cfg(test)]
mod tests;
