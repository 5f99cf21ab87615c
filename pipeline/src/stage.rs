//! A `Stage` runs execution blocks [a, b) of the model on a ragged batch.
//!
//! This is the unit execute-while-load distributes: one node may run blocks [0, 3), another
//! [3, 8), each keeping the KV cache of its own layers. The first stage takes token ids, the
//! others hidden states `[n, d]`; the last returns logits, the others hidden states.
//!
//! A batch is ragged: row r belongs to sequence `seq_ids[r]` at position `positions[r]`. The
//! rows of one sequence are contiguous and at consecutive positions, starting where that
//! sequence's cache ends (0 for a new sequence), so a prefill chunk and a decode step are the
//! same call. Every check happens before any cache is touched: a refused batch changes nothing.

use crate::blocks::BlockLayout;
use crate::config::ModelConfig;
use crate::error::{PipelineError, Result};
use crate::kv::KvCache;
use crate::weights::{StageWeights, WeightSource};
use kernels::{AttnSeq, Pool};
use std::ops::Range;
use std::sync::Arc;

/// Bounds of one stage.
#[derive(Clone, Copy, Debug)]
pub struct StageLimits {
    /// Sequences held in the KV cache at once.
    pub max_seqs: usize,
    /// Rows (tokens) in one batch.
    pub max_batch_rows: usize,
}

impl Default for StageLimits {
    fn default() -> Self {
        StageLimits { max_seqs: 256, max_batch_rows: 8192 }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum StageInput {
    /// Token ids, one per row (first stage only).
    Tokens(Vec<u32>),
    /// Hidden states `[n, d]` from the previous stage.
    Hidden(Vec<f32>),
}

/// Which rows the last stage turns into logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsRows {
    All,
    LastOfEachSeq,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StageBatch {
    pub seq_ids: Vec<u64>,
    pub positions: Vec<u32>,
    pub input: StageInput,
    pub logits: LogitsRows,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StageOutput {
    /// `[n, d]`, every row of the batch.
    Hidden(Vec<f32>),
    /// `[rows.len(), vocab]`; `rows` are the batch rows they belong to.
    Logits { rows: Vec<usize>, vocab: usize, data: Vec<f32> },
}

/// One contiguous run of a sequence's rows in the batch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Group {
    pub(crate) seq: u64,
    pub(crate) rows: (usize, usize), // [start, end) rows of the batch
    pub(crate) pos0: usize,
    pub(crate) is_new: bool,
}

/// What a stage checks a batch against (shared by the CPU and GPU stages).
pub(crate) struct BatchShape<'a> {
    pub(crate) cfg: &'a ModelConfig,
    pub(crate) blocks: &'a Range<usize>,
    pub(crate) max_rows: usize,
    pub(crate) max_context: usize,
}

/// Checks a batch's shape and cuts it into per-sequence groups of contiguous rows: input kind
/// and length for the stage, token ids below the vocabulary, each sequence's rows contiguous
/// and starting where its cache ends (`held(seq)`: the cached length, `None` if the sequence is
/// new), no sequence past `max_context`.
pub(crate) fn group_rows(b: &StageBatch, s: &BatchShape, held: impl Fn(u64) -> Option<usize>) -> Result<Vec<Group>> {
    let n = b.seq_ids.len();
    let bad = |msg: String| Err(PipelineError::Batch { msg });
    if n == 0 {
        return bad("no rows".into());
    }
    if n > s.max_rows {
        return Err(PipelineError::Limit { what: "rows in one batch", limit: s.max_rows, requested: n });
    }
    if b.positions.len() != n {
        return bad(format!("{} seq_ids but {} positions", n, b.positions.len()));
    }
    let d = s.cfg.hidden_size;
    match (&b.input, s.blocks.start == 0) {
        (StageInput::Tokens(t), true) => {
            if t.len() != n {
                return bad(format!("{n} rows but {} token ids", t.len()));
            }
            if let Some((i, &tok)) = t.iter().enumerate().find(|(_, &t)| t as usize >= s.cfg.vocab_size) {
                return Err(PipelineError::TokenOutOfRange { token: tok, vocab_size: s.cfg.vocab_size, index: i });
            }
        }
        (StageInput::Hidden(h), false) => {
            if h.len() != n * d {
                return bad(format!("{n} rows of width {d} need {} hidden values, got {}", n * d, h.len()));
            }
        }
        (StageInput::Tokens(_), false) => {
            return bad(format!("stage {:?} does not start at block 0: it takes hidden states, not tokens", s.blocks))
        }
        (StageInput::Hidden(_), true) => return bad("the first stage takes token ids, not hidden states".into()),
    }
    let mut groups: Vec<Group> = Vec::new();
    for r in 0..n {
        let (seq, pos) = (b.seq_ids[r], b.positions[r] as usize);
        match groups.last_mut() {
            Some(g) if g.seq == seq => {
                if pos != g.pos0 + (r - g.rows.0) {
                    return bad(format!(
                        "row {r}: sequence {seq} position {pos}, expected {}",
                        g.pos0 + (r - g.rows.0)
                    ));
                }
                g.rows.1 = r + 1;
            }
            _ => {
                if groups.iter().any(|g| g.seq == seq) {
                    return bad(format!("row {r}: rows of sequence {seq} are not contiguous"));
                }
                let cached = held(seq);
                let held = cached.unwrap_or(0);
                if pos != held {
                    return bad(format!(
                        "row {r}: sequence {seq} starts at position {pos} but its cache holds {held} positions"
                    ));
                }
                groups.push(Group { seq, rows: (r, r + 1), pos0: pos, is_new: cached.is_none() });
            }
        }
    }
    for g in &groups {
        let needed = g.pos0 + (g.rows.1 - g.rows.0);
        if needed > s.max_context {
            return Err(PipelineError::ContextOverflow { seq_id: g.seq, needed, max: s.max_context });
        }
    }
    Ok(groups)
}

pub struct Stage {
    cfg: Arc<ModelConfig>,
    pub blocks: Range<usize>,
    pub layout: BlockLayout,
    w: StageWeights,
    cache: KvCache,
    pool: Arc<Pool>,
    limits: StageLimits,
    inv_freq: Vec<f32>, // [head_dim / 2]
}

impl Stage {
    /// Builds the stage for blocks [a, b) once their weights are present in `src`.
    pub fn new(
        cfg: Arc<ModelConfig>,
        src: &dyn WeightSource,
        layout: BlockLayout,
        blocks: Range<usize>,
        pool: Arc<Pool>,
        limits: StageLimits,
    ) -> Result<Self> {
        if layout.num_layers != cfg.num_hidden_layers {
            return Err(PipelineError::Invalid {
                what: "block layout",
                msg: format!("{} layers in the layout, {} in the config", layout.num_layers, cfg.num_hidden_layers),
            });
        }
        let w = StageWeights::load(&cfg, src, &layout, blocks.clone())?;
        let cache = KvCache::new(w.layers.len(), cfg.kv_dim(), limits.max_seqs, cfg.max_position_embeddings);
        let inv_freq = cfg.rope_inv_freq();
        Ok(Stage { cfg, blocks, layout, w, cache, pool, limits, inv_freq })
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
    /// Positions this stage's cache holds for `seq`.
    pub fn seq_len(&self, seq: u64) -> usize {
        self.cache.len_of(seq)
    }
    /// Drops `seq`'s KV cache; returns whether the stage held it.
    pub fn free(&mut self, seq: u64) -> bool {
        self.cache.free(seq)
    }
    pub fn num_seqs(&self) -> usize {
        self.cache.num_seqs()
    }
    pub fn limits(&self) -> StageLimits {
        self.limits
    }
    /// Bytes of KV cache this stage holds (allocated) for all its sequences.
    pub fn kv_bytes(&self) -> u64 {
        self.cache.bytes_held()
    }

    /// Runs the batch through this stage's layers.
    pub fn forward(&mut self, batch: &StageBatch) -> Result<StageOutput> {
        let groups = self.validate(batch)?;
        let result = self.forward_checked(batch, &groups);
        if result.is_err() {
            // A failure after validation is an engine bug; still leave no half-made sequence.
            for g in groups.iter().filter(|g| g.is_new) {
                self.cache.free(g.seq);
            }
        }
        result
    }

    fn validate(&self, b: &StageBatch) -> Result<Vec<Group>> {
        let shape = BatchShape {
            cfg: &self.cfg,
            blocks: &self.blocks,
            max_rows: self.limits.max_batch_rows,
            max_context: self.cfg.max_position_embeddings,
        };
        let groups = group_rows(b, &shape, |seq| self.cache.contains(seq).then(|| self.cache.len_of(seq)))?;
        self.cache.check_room(groups.iter().filter(|g| g.is_new).count())?;
        Ok(groups)
    }

    fn forward_checked(&mut self, b: &StageBatch, groups: &[Group]) -> Result<StageOutput> {
        let cfg = self.cfg.clone();
        let n = b.seq_ids.len();
        let (d, f, qd, kvd, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.q_dim(), cfg.kv_dim(), cfg.head_dim);
        let eps = cfg.rms_norm_eps as f32;
        let pool = self.pool.clone();

        // ---- input: embedding lookup or the previous stage's hidden states ----
        let mut x: Vec<f32> = match &b.input {
            // x: [n, d]
            StageInput::Tokens(tokens) => {
                let embed = self.w.embed.as_ref().expect("first stage has the embedding");
                let mut x = vec![0f32; n * d];
                for (r, &t) in tokens.iter().enumerate() {
                    embed.row_to_f32(t as usize, &mut x[r * d..(r + 1) * d])?;
                }
                x
            }
            StageInput::Hidden(h) => h.clone(),
        };

        // ---- RoPE tables for these rows ----
        let half = hd / 2;
        let mut cos = vec![0f32; n * half]; // [n, head_dim/2]
        let mut sin = vec![0f32; n * half]; // [n, head_dim/2]
        for r in 0..n {
            let p = b.positions[r] as f32;
            for i in 0..half {
                let angle = p * self.inv_freq[i]; // f32 product, as transformers computes it
                cos[r * half + i] = (angle as f64).cos() as f32;
                sin[r * half + i] = (angle as f64).sin() as f32;
            }
        }

        // ---- make room in the cache (all checks passed) ----
        for g in groups {
            self.cache.reserve(g.seq, g.pos0 + (g.rows.1 - g.rows.0))?;
        }

        // ---- scratch buffers, reused by every layer ----
        let mut h = vec![0f32; n * d]; // normed input   [n, d]
        let mut q = vec![0f32; n * qd]; // queries        [n, n_heads * head_dim]
        let mut k = vec![0f32; n * kvd]; // keys          [n, n_kv_heads * head_dim]
        let mut v = vec![0f32; n * kvd]; // values        [n, n_kv_heads * head_dim]
        let mut att = vec![0f32; n * qd]; // attention out [n, n_heads * head_dim]
        let mut o = vec![0f32; n * d]; // projections     [n, d]
        let mut gate = vec![0f32; n * f]; // MLP gate     [n, ffn]
        let mut up = vec![0f32; n * f]; // MLP up         [n, ffn]
        let mut act = vec![0f32; n * f]; // silu(gate)*up [n, ffn]
        let scale = 1.0 / (hd as f32).sqrt();

        for (li, lw) in self.w.layer.iter().enumerate() {
            // ---- attention ----
            kernels::rmsnorm(&x, &lw.attn_norm, eps, &mut h)?;
            kernels::matmul(&pool, &h, n, lw.wq.weights()?, &mut q)?;
            kernels::matmul(&pool, &h, n, lw.wk.weights()?, &mut k)?;
            kernels::matmul(&pool, &h, n, lw.wv.weights()?, &mut v)?;
            if let (Some(bq), Some(bk), Some(bv)) = (&lw.bq, &lw.bk, &lw.bv) {
                add_bias(&mut q, bq);
                add_bias(&mut k, bk);
                add_bias(&mut v, bv);
            }
            kernels::rope(&mut q, n, cfg.num_attention_heads, hd, &cos, &sin)?;
            kernels::rope(&mut k, n, cfg.num_key_value_heads, hd, &cos, &sin)?;
            for g in groups {
                let s = self.cache.get_mut(g.seq).expect("reserved above");
                let (r0, r1) = g.rows;
                s.k[li][g.pos0 * kvd..(g.pos0 + r1 - r0) * kvd].copy_from_slice(&k[r0 * kvd..r1 * kvd]);
                s.v[li][g.pos0 * kvd..(g.pos0 + r1 - r0) * kvd].copy_from_slice(&v[r0 * kvd..r1 * kvd]);
            }
            {
                let mut seqs: Vec<AttnSeq> = Vec::with_capacity(groups.len());
                let mut rest: &mut [f32] = &mut att;
                for g in groups {
                    let (r0, r1) = g.rows;
                    let (out, tail) = std::mem::take(&mut rest).split_at_mut((r1 - r0) * qd);
                    rest = tail;
                    let s = self.cache.get(g.seq).expect("reserved above");
                    let ctx = g.pos0 + (r1 - r0);
                    seqs.push(AttnSeq {
                        q: &q[r0 * qd..r1 * qd],
                        k: &s.k[li][..ctx * kvd],
                        v: &s.v[li][..ctx * kvd],
                        out,
                        n_q: r1 - r0,
                        pos0: g.pos0,
                    });
                }
                kernels::attention(&pool, &mut seqs, cfg.num_attention_heads, cfg.num_key_value_heads, hd, scale)?;
            }
            kernels::matmul(&pool, &att, n, lw.wo.weights()?, &mut o)?;
            add_into(&mut x, &o);

            // ---- MLP ----
            kernels::rmsnorm(&x, &lw.mlp_norm, eps, &mut h)?;
            kernels::matmul(&pool, &h, n, lw.w_gate.weights()?, &mut gate)?;
            kernels::matmul(&pool, &h, n, lw.w_up.weights()?, &mut up)?;
            kernels::silu_mul(&gate, &up, &mut act)?;
            kernels::matmul(&pool, &act, n, lw.w_down.weights()?, &mut o)?;
            add_into(&mut x, &o);
        }

        // ---- commit the new positions ----
        for g in groups {
            let s = self.cache.get_mut(g.seq).expect("reserved above");
            s.len = g.pos0 + (g.rows.1 - g.rows.0);
        }

        if !self.is_last() {
            return Ok(StageOutput::Hidden(x));
        }

        // ---- final norm and LM head on the rows that want logits ----
        let rows: Vec<usize> = match b.logits {
            LogitsRows::All => (0..n).collect(),
            LogitsRows::LastOfEachSeq => groups.iter().map(|g| g.rows.1 - 1).collect(),
        };
        let mut sel = vec![0f32; rows.len() * d]; // [rows, d]
        for (i, &r) in rows.iter().enumerate() {
            sel[i * d..(i + 1) * d].copy_from_slice(&x[r * d..(r + 1) * d]);
        }
        let mut normed = vec![0f32; rows.len() * d]; // [rows, d]
        kernels::rmsnorm(&sel, self.w.final_norm.as_ref().expect("last stage"), eps, &mut normed)?;
        let head = self.w.lm_head.as_ref().expect("last stage");
        let mut logits = vec![0f32; rows.len() * cfg.vocab_size]; // [rows, vocab]
        kernels::matmul(&pool, &normed, rows.len(), head.weights()?, &mut logits)?;
        Ok(StageOutput::Logits { rows, vocab: cfg.vocab_size, data: logits })
    }
}

fn add_bias(y: &mut [f32], bias: &[f32]) {
    for row in y.chunks_exact_mut(bias.len()) {
        for (a, b) in row.iter_mut().zip(bias) {
            *a += *b;
        }
    }
}

fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += *b;
    }
}
