//! What the scheduler drives: a whole model on one node that runs ragged batches (a prefill
//! chunk and a decode step are the same call) and keeps each sequence's KV cache. The CPU
//! [`Engine`] and a chain of [`GpuStage`]s ([`GpuEngine`]) implement it.

use crate::config::ModelConfig;
use crate::engine::Engine;
use crate::error::{PipelineError, Result};
use crate::gpu::GpuStage;
use crate::kv::KV_BLOCK_TOKENS;
use crate::stage::{StageBatch, StageInput, StageOutput};

/// Bounds of a [`StepEngine`], fixed for its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineLimits {
    /// Sequences whose KV cache the engine holds at once.
    pub max_seqs: usize,
    /// Rows (tokens) in one `forward`.
    pub max_batch_rows: usize,
    /// Positions one sequence may hold.
    pub max_context: usize,
    /// A sequence holding `n` positions holds `n` rounded up to a multiple of this, times
    /// `kv_bytes_per_token` bytes (the unit the cache grows by).
    pub kv_block_tokens: usize,
    /// KV bytes allocated up front (the GPU's slots), `None` where the cache grows on demand.
    pub kv_capacity_bytes: Option<u64>,
    /// Decode rows and prefill rows must go in separate `forward` calls to keep a sequence's
    /// results independent of its batch (the GPU picks GEMV or GEMM per batch).
    pub split_decode_prefill: bool,
}

pub trait StepEngine: Send {
    fn config(&self) -> &ModelConfig;
    /// Runs a batch through the whole model; returns the last stage's logits.
    fn forward(&mut self, b: &StageBatch) -> Result<StageOutput>;
    /// Drops a sequence's KV cache (no-op for a sequence it does not hold).
    fn free(&mut self, seq: u64);
    /// KV bytes one position of one sequence takes (all layers, keys and values).
    fn kv_bytes_per_token(&self) -> u64;
    fn limits(&self) -> EngineLimits;
    /// KV bytes the engine holds right now, where it can tell (checks the scheduler's books).
    fn kv_held_bytes(&self) -> Option<u64> {
        None
    }
}

/// `positions × layers × (K + V) × kv_dim × elem_bytes` for one position.
pub fn kv_bytes_per_token(cfg: &ModelConfig, elem_bytes: u64) -> u64 {
    cfg.num_hidden_layers as u64 * 2 * cfg.kv_dim() as u64 * elem_bytes
}

impl StepEngine for Engine {
    fn config(&self) -> &ModelConfig {
        Engine::config(self)
    }
    fn forward(&mut self, b: &StageBatch) -> Result<StageOutput> {
        Engine::forward(self, b)
    }
    fn free(&mut self, seq: u64) {
        Engine::free(self, seq)
    }
    fn kv_bytes_per_token(&self) -> u64 {
        kv_bytes_per_token(Engine::config(self), std::mem::size_of::<f32>() as u64)
        // the CPU cache is f32
    }
    fn limits(&self) -> EngineLimits {
        let st = self.stages();
        EngineLimits {
            max_seqs: st.iter().map(|s| s.limits().max_seqs).min().unwrap_or(0),
            max_batch_rows: st.iter().map(|s| s.limits().max_batch_rows).min().unwrap_or(0),
            max_context: Engine::config(self).max_position_embeddings,
            kv_block_tokens: KV_BLOCK_TOKENS,
            kv_capacity_bytes: None,
            split_decode_prefill: false,
        }
    }
    fn kv_held_bytes(&self) -> Option<u64> {
        Some(self.stages().iter().map(|s| s.kv_bytes()).sum())
    }
}

/// A whole model as a chain of [`GpuStage`]s (usually one) on one node; hidden states pass
/// between stages through the host.
pub struct GpuEngine {
    cfg: ModelConfig,
    stages: Vec<GpuStage>,
}

impl GpuEngine {
    /// `stages` must cover blocks [0, B) in order, each starting where the last ended.
    pub fn new(stages: Vec<GpuStage>) -> Result<Self> {
        let bad = |msg: String| Err(PipelineError::Invalid { what: "gpu stages", msg });
        let Some(first) = stages.first() else { return bad("no stages".into()) };
        let mut next = 0;
        for s in &stages {
            if s.blocks.start != next || s.layout != first.layout {
                return bad(format!("stage {:?} does not continue at block {next} of the same layout", s.blocks));
            }
            next = s.blocks.end;
        }
        if next != first.layout.num_blocks {
            return bad(format!("stages end at block {next} of {}", first.layout.num_blocks));
        }
        Ok(GpuEngine { cfg: first.config().clone(), stages })
    }

    pub fn stages(&self) -> &[GpuStage] {
        &self.stages
    }
}

impl StepEngine for GpuEngine {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    fn forward(&mut self, b: &StageBatch) -> Result<StageOutput> {
        let mut out = self.stages[0].forward(b)?;
        for stage in &mut self.stages[1..] {
            let StageOutput::Hidden(h) = out else {
                return Err(PipelineError::Invalid {
                    what: "gpu stages",
                    msg: "a middle stage returned logits".into(),
                });
            };
            let next = StageBatch {
                seq_ids: b.seq_ids.clone(),
                positions: b.positions.clone(),
                input: StageInput::Hidden(h),
                logits: b.logits,
            };
            out = stage.forward(&next)?;
        }
        Ok(out)
    }
    fn free(&mut self, seq: u64) {
        for s in &mut self.stages {
            s.free(seq);
        }
    }
    fn kv_bytes_per_token(&self) -> u64 {
        kv_bytes_per_token(&self.cfg, 2) // the device cache is bf16
    }
    fn limits(&self) -> EngineLimits {
        let max_seqs = self.stages.iter().map(|s| s.limits().max_seqs).min().unwrap_or(0);
        let max_context = self.stages.iter().map(|s| s.limits().max_context).min().unwrap_or(0);
        EngineLimits {
            max_seqs,
            max_batch_rows: self.stages.iter().map(|s| s.limits().max_batch_rows).min().unwrap_or(0),
            max_context,
            kv_block_tokens: 1,
            kv_capacity_bytes: Some(max_seqs as u64 * max_context as u64 * StepEngine::kv_bytes_per_token(self)),
            split_decode_prefill: true,
        }
    }
}
