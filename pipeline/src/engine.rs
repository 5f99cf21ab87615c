//! Generation over a chain of stages on one node: prefill, then batched decode of every
//! live sequence, with sampling and stopping. Execute-while-load runs the same stages on
//! different nodes; here they simply follow one another.

use crate::config::ModelConfig;
use crate::error::{PipelineError, Result};
use crate::sampler::{Sampler, SamplingParams};
use crate::stage::{LogitsRows, Stage, StageBatch, StageInput, StageOutput};
use std::sync::Arc;
use std::time::Instant;

pub struct Engine {
    cfg: Arc<ModelConfig>,
    stages: Vec<Stage>,
    next_seq: u64,
}

#[derive(Clone, Debug)]
pub struct GenRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub ignore_eos: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// Produced `max_tokens` tokens.
    Length,
    /// Produced an end-of-sequence token (included in `tokens`).
    Eos,
    /// Reached the model's context length first.
    Context,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Length => "length",
            FinishReason::Eos => "stop",
            FinishReason::Context => "context",
        }
    }
}

#[derive(Clone, Debug)]
pub struct GenResult {
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
    /// From the start of `generate` to this request's first token.
    pub ttft_ms: f64,
    /// Tokens after the first over the time they took (0 when there were none).
    pub decode_tokens_per_s: f64,
}

impl Engine {
    /// `stages` must cover blocks [0, B) in order, each starting where the last ended.
    pub fn new(stages: Vec<Stage>) -> Result<Self> {
        let Some(first) = stages.first() else {
            return Err(PipelineError::Invalid { what: "stages", msg: "no stages".into() });
        };
        let cfg = Arc::new(first.config().clone());
        let mut next = 0;
        for s in &stages {
            if s.blocks.start != next || s.layout != first.layout {
                return Err(PipelineError::Invalid {
                    what: "stages",
                    msg: format!("stage {:?} does not continue at block {next} of the same layout", s.blocks),
                });
            }
            next = s.blocks.end;
        }
        if next != first.layout.num_blocks {
            return Err(PipelineError::Invalid {
                what: "stages",
                msg: format!("stages end at block {next} of {}", first.layout.num_blocks),
            });
        }
        Ok(Engine { cfg, stages, next_seq: 1 })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The stages, first to last.
    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    /// Runs a batch through every stage; the output is the last stage's logits.
    pub fn forward(&mut self, batch: &StageBatch) -> Result<StageOutput> {
        let mut out = self.stages[0].forward(batch)?;
        for i in 1..self.stages.len() {
            let StageOutput::Hidden(h) = out else { unreachable!("only the last stage returns logits") };
            let next = StageBatch {
                seq_ids: batch.seq_ids.clone(),
                positions: batch.positions.clone(),
                input: StageInput::Hidden(h),
                logits: batch.logits,
            };
            out = self.stages[i].forward(&next)?;
        }
        Ok(out)
    }

    /// Drops a sequence from every stage's cache.
    pub fn free(&mut self, seq: u64) {
        for s in &mut self.stages {
            s.free(seq);
        }
    }

    fn check(&self, r: &GenRequest, i: usize) -> Result<()> {
        let bad = |msg: String| Err(PipelineError::Invalid { what: "request", msg });
        if r.prompt.is_empty() {
            return bad(format!("request {i}: the prompt has no tokens"));
        }
        if r.max_tokens == 0 {
            return bad(format!("request {i}: max_tokens must be at least 1"));
        }
        if let Some((j, &t)) = r.prompt.iter().enumerate().find(|(_, &t)| t as usize >= self.cfg.vocab_size) {
            return Err(PipelineError::TokenOutOfRange { token: t, vocab_size: self.cfg.vocab_size, index: j });
        }
        if r.prompt.len() > self.cfg.max_position_embeddings {
            return Err(PipelineError::ContextOverflow {
                seq_id: i as u64,
                needed: r.prompt.len(),
                max: self.cfg.max_position_embeddings,
            });
        }
        r.sampling.validate()
    }

    /// Generates for every request at once: one prefill batch (chunked at the stage's row
    /// limit), then decode steps that batch every sequence still running.
    pub fn generate(&mut self, requests: &[GenRequest], max_batch_rows: usize) -> Result<Vec<GenResult>> {
        for (i, r) in requests.iter().enumerate() {
            self.check(r, i)?;
        }
        let max_rows = max_batch_rows.max(1);
        let start = Instant::now();
        let seqs: Vec<u64> = requests
            .iter()
            .map(|_| {
                self.next_seq += 1;
                self.next_seq
            })
            .collect();
        let mut samplers: Vec<Sampler> = requests.iter().map(|r| Sampler::new(r.sampling)).collect::<Result<_>>()?;
        let mut results: Vec<GenResult> = requests
            .iter()
            .map(|_| GenResult {
                tokens: Vec::new(),
                finish: FinishReason::Length,
                ttft_ms: 0.0,
                decode_tokens_per_s: 0.0,
            })
            .collect();
        let mut first_at = vec![start; requests.len()];
        let outcome = self.run(requests, &seqs, &mut samplers, &mut results, &mut first_at, start, max_rows);
        for &s in &seqs {
            self.free(s);
        }
        outcome?;
        Ok(results)
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        reqs: &[GenRequest],
        seqs: &[u64],
        samplers: &mut [Sampler],
        results: &mut [GenResult],
        first_at: &mut [Instant],
        start: Instant,
        max_rows: usize,
    ) -> Result<()> {
        let ctx = self.cfg.max_position_embeddings;
        let mut last_at = vec![start; reqs.len()]; // when each request's newest token came
        let eos = self.cfg.eos_token_ids.clone();
        // ---- prefill: pack prompt rows into batches of at most max_rows ----
        let mut cursor = vec![0usize; reqs.len()]; // prompt tokens already sent, per request
        let mut pending: Vec<usize> = (0..reqs.len()).collect();
        while !pending.is_empty() {
            let mut batch = StageBatch {
                seq_ids: vec![],
                positions: vec![],
                input: StageInput::Tokens(vec![]),
                logits: LogitsRows::LastOfEachSeq,
            };
            let StageInput::Tokens(tokens) = &mut batch.input else { unreachable!() };
            let mut finishing = Vec::new(); // requests whose last prompt row is in this batch
            for &i in &pending {
                let room = max_rows - batch.seq_ids.len();
                if room == 0 {
                    break;
                }
                let take = room.min(reqs[i].prompt.len() - cursor[i]);
                for p in cursor[i]..cursor[i] + take {
                    batch.seq_ids.push(seqs[i]);
                    batch.positions.push(p as u32);
                    tokens.push(reqs[i].prompt[p]);
                }
                cursor[i] += take;
                if cursor[i] == reqs[i].prompt.len() {
                    finishing.push(i);
                }
            }
            let out = self.forward(&batch)?;
            let StageOutput::Logits { rows, vocab, data } = out else { unreachable!("last stage returns logits") };
            for (li, &row) in rows.iter().enumerate() {
                let seq = batch.seq_ids[row];
                let Some(&i) = finishing.iter().find(|&&i| seqs[i] == seq) else { continue };
                let tok = samplers[i].sample(&data[li * vocab..(li + 1) * vocab]);
                results[i].tokens.push(tok);
                first_at[i] = Instant::now();
                last_at[i] = first_at[i];
                results[i].ttft_ms = start.elapsed().as_secs_f64() * 1e3;
                if !reqs[i].ignore_eos && eos.contains(&tok) {
                    results[i].finish = FinishReason::Eos;
                }
            }
            pending.retain(|&i| cursor[i] < reqs[i].prompt.len());
        }

        // ---- decode: one row per running sequence ----
        let running = |i: usize, results: &[GenResult]| -> bool {
            results[i].finish != FinishReason::Eos
                && results[i].finish != FinishReason::Context
                && results[i].tokens.len() < reqs[i].max_tokens
        };
        loop {
            let mut live: Vec<usize> = Vec::new();
            for i in 0..reqs.len() {
                if !running(i, results) {
                    continue;
                }
                // the newest token goes in at position prompt + generated - 1
                if reqs[i].prompt.len() + results[i].tokens.len() > ctx {
                    results[i].finish = FinishReason::Context;
                    continue;
                }
                live.push(i);
            }
            if live.is_empty() {
                break;
            }
            for chunk in live.chunks(max_rows) {
                let batch = StageBatch {
                    seq_ids: chunk.iter().map(|&i| seqs[i]).collect(),
                    positions: chunk
                        .iter()
                        .map(|&i| (reqs[i].prompt.len() + results[i].tokens.len() - 1) as u32)
                        .collect(),
                    input: StageInput::Tokens(
                        chunk.iter().map(|&i| *results[i].tokens.last().expect("first token sampled")).collect(),
                    ),
                    logits: LogitsRows::LastOfEachSeq,
                };
                let StageOutput::Logits { vocab, data, .. } = self.forward(&batch)? else { unreachable!() };
                for (li, &i) in chunk.iter().enumerate() {
                    let tok = samplers[i].sample(&data[li * vocab..(li + 1) * vocab]);
                    results[i].tokens.push(tok);
                    last_at[i] = Instant::now();
                    if !reqs[i].ignore_eos && eos.contains(&tok) {
                        results[i].finish = FinishReason::Eos;
                    }
                }
            }
        }
        for (i, r) in results.iter_mut().enumerate() {
            let secs = last_at[i].duration_since(first_at[i]).as_secs_f64();
            if r.tokens.len() > 1 && secs > 0.0 {
                r.decode_tokens_per_s = (r.tokens.len() - 1) as f64 / secs;
            }
        }
        Ok(())
    }
}
