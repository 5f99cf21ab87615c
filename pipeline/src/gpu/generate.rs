//! One request generated on one [`GpuStage`] that holds the whole model: chunked prefill, then
//! one decode step per token, sampled on the host with the CPU engine's [`Sampler`].
//!
//! `Engine` chains CPU `Stage`s; until it is generic over the stage type, `faascale generate
//! --device cuda` uses this loop (same checks, same sampling, same finish reasons).

use super::GpuStage;
use crate::engine::{FinishReason, GenRequest, GenResult};
use crate::error::{PipelineError, Result};
use crate::sampler::Sampler;
use crate::stage::{LogitsRows, StageBatch, StageInput, StageOutput};
use std::time::Instant;

/// Sequence id used for the request (the stage holds nothing else while it runs).
const SEQ: u64 = 1;

/// Generates for `req` on `stage`, which must run every block of the model.
pub fn generate(stage: &mut GpuStage, req: &GenRequest) -> Result<GenResult> {
    if !(stage.is_first() && stage.is_last()) {
        return Err(PipelineError::Invalid {
            what: "gpu stage",
            msg: format!("blocks {:?} are not the whole model", stage.blocks),
        });
    }
    let cfg = stage.config().clone();
    if req.prompt.is_empty() || req.max_tokens == 0 {
        return Err(PipelineError::Invalid { what: "request", msg: "empty prompt or max_tokens 0".into() });
    }
    if let Some((j, &t)) = req.prompt.iter().enumerate().find(|(_, &t)| t as usize >= cfg.vocab_size) {
        return Err(PipelineError::TokenOutOfRange { token: t, vocab_size: cfg.vocab_size, index: j });
    }
    let ctx = stage.limits().max_context;
    if req.prompt.len() > ctx {
        return Err(PipelineError::ContextOverflow { seq_id: SEQ, needed: req.prompt.len(), max: ctx });
    }
    req.sampling.validate()?;
    let mut sampler = Sampler::new(req.sampling)?;
    stage.free(SEQ);
    let out = run(stage, req, &mut sampler, ctx, &cfg.eos_token_ids);
    stage.free(SEQ);
    out
}

fn run(stage: &mut GpuStage, req: &GenRequest, sampler: &mut Sampler, ctx: usize, eos: &[u32]) -> Result<GenResult> {
    let start = Instant::now();
    let rows = stage.limits().max_batch_rows;
    let mut last = None;
    for (c, chunk) in req.prompt.chunks(rows).enumerate() {
        let p0 = c * rows;
        let batch = StageBatch {
            seq_ids: vec![SEQ; chunk.len()],
            positions: (p0..p0 + chunk.len()).map(|p| p as u32).collect(),
            input: StageInput::Tokens(chunk.to_vec()),
            logits: LogitsRows::LastOfEachSeq,
        };
        last = Some(stage.forward(&batch)?);
    }
    let logits = |out: StageOutput| match out {
        StageOutput::Logits { data, .. } => Ok(data),
        StageOutput::Hidden(_) => {
            Err(PipelineError::Invalid { what: "gpu stage", msg: "returned hidden states".into() })
        }
    };
    let mut tokens = vec![sampler.sample(&logits(last.expect("the prompt is not empty"))?)];
    let ttft_ms = start.elapsed().as_secs_f64() * 1e3;
    let first_at = Instant::now();
    let mut finish = FinishReason::Length;
    loop {
        let tok = *tokens.last().expect("one token sampled");
        if !req.ignore_eos && eos.contains(&tok) {
            finish = FinishReason::Eos;
            break;
        }
        if tokens.len() >= req.max_tokens {
            break;
        }
        let pos = req.prompt.len() + tokens.len() - 1;
        if pos + 1 > ctx {
            finish = FinishReason::Context;
            break;
        }
        let batch = StageBatch {
            seq_ids: vec![SEQ],
            positions: vec![pos as u32],
            input: StageInput::Tokens(vec![tok]),
            logits: LogitsRows::LastOfEachSeq,
        };
        tokens.push(sampler.sample(&logits(stage.forward(&batch)?)?));
    }
    let secs = first_at.elapsed().as_secs_f64();
    let decode_tokens_per_s = if tokens.len() > 1 && secs > 0.0 { (tokens.len() - 1) as f64 / secs } else { 0.0 };
    Ok(GenResult { tokens, finish, ttft_ms, decode_tokens_per_s })
}
