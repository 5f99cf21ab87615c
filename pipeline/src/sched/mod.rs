//! Continuous batching over a whole model on one node ([`StepEngine`]: the CPU [`crate::Engine`]
//! or [`GpuEngine`]), on a thread of its own. Knows nothing of HTTP.
//!
//! Every step the scheduler builds one ragged batch (two on an engine that keeps decode and
//! prefill apart): first one row for every running sequence that decodes, then prefill chunks
//! of the running sequences still prefilling, then waiting requests join, in arrival order, while
//! fewer than `max_num_seqs` run. Rows per step are bounded by `prefill_chunk_tokens`, so a long
//! prompt is cut into chunks and never stalls the others' decode.
//!
//! KV cache: every sequence's KV is booked in the engine's allocation unit (whole
//! `kv_block_tokens` blocks, exactly what the CPU cache allocates), against `kv_cache_bytes`.
//! A waiting request joins only when all its tokens fit next to the running ones' (so admission
//! waits when the cache is full; nothing is ever allocated past the budget). When a running
//! sequence needs a block and none is free, the newest running sequence is preempted: its KV is
//! freed and it goes back to the front of the queue with its prompt and generated tokens, to be
//! re-prefilled later; its sampler and its output continue where they were, and since the CPU
//! engine is batch invariant (prefill and decode give the same bits), its greedy tokens are
//! unchanged. (On the GPU, decode runs GEMV and prefill GEMM, which round differently: tokens
//! after a preemption may differ there; see docs/gpu.md.)
//!
//! Length limit: prompt + completion ≤ `Scheduler::max_seq_tokens()`, the model's context or
//! what the KV budget holds for one sequence if less. A prompt that leaves no room for one token
//! is refused at submit; `max_tokens` past the limit is not an error: the sequence finishes with
//! [`FinishKind::Context`] when it reaches the limit (an API may refuse such requests itself).
//!
//! Cancellation ([`SeqHandle::cancel`], or [`TokenSink::token`] returning false) ends the
//! sequence and frees its KV before the next step. A failing (or panicking) `forward` ends the
//! sequences of that batch with [`FinishKind::Error`]; the scheduler goes on serving the others.

mod seq;
mod step_engine;
mod worker;

pub use seq::log_softmax_at;
pub use step_engine::{kv_bytes_per_token, EngineLimits, GpuEngine, StepEngine};

use crate::config::ModelConfig;
use crate::error::{PipelineError, Result};
use crate::sampler::{Sampler, SamplingParams};
use seq::Seq;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Stop token ids one request may give.
pub const MAX_STOP_TOKEN_IDS: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Sequences running at once (at most the engine's `max_seqs`).
    pub max_num_seqs: usize,
    /// Requests waiting to start; `submit` past it answers [`SubmitError::QueueFull`].
    /// (Preempted sequences go back to the queue on top of this bound: at most `max_num_seqs`.)
    pub max_queue: usize,
    /// KV budget in bytes. `None`: what the engine allocated up front (GPU), or on the CPU room
    /// for `max_num_seqs` sequences of the whole context, capped at half the system's available
    /// memory at start.
    pub kv_cache_bytes: Option<u64>,
    /// Rows (tokens) per step, decode rows included: at least `max_num_seqs`, at most the
    /// engine's `max_batch_rows`.
    pub prefill_chunk_tokens: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig { max_num_seqs: 64, max_queue: 1024, kv_cache_bytes: None, prefill_chunk_tokens: 512 }
    }
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct SeqRequest {
    pub prompt: Vec<u32>,
    /// At least 1; past the length limit the sequence finishes with `Context` instead.
    pub max_tokens: usize,
    /// Seeded: the same request gives the same tokens.
    pub sampling: SamplingParams,
    /// Keep going past the model's EOS tokens (`stop_token_ids` still stop).
    pub ignore_eos: bool,
    /// More tokens that end the sequence (finish `Eos`, the token included in the output).
    pub stop_token_ids: Vec<u32>,
    /// Report each sampled token's log-probability (log-softmax of the raw logits).
    pub logprobs: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenEvent {
    pub token: u32,
    pub logprob: Option<f32>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum FinishKind {
    /// `max_tokens` generated.
    Length,
    /// An EOS token (unless `ignore_eos`) or one of `stop_token_ids`; the token was sent.
    Eos,
    /// prompt + completion reached `Scheduler::max_seq_tokens()`.
    Context,
    /// Cancelled: `SeqHandle::cancel`, the sink returned false, or shutdown's drain ran out.
    Cancelled,
    /// The engine failed on a batch holding this sequence (or the scheduler stopped).
    Error(String),
}

impl FinishKind {
    /// OpenAI's `finish_reason` for a sequence that ended normally: `stop` or `length`.
    pub fn openai_reason(&self) -> &'static str {
        match self {
            FinishKind::Eos => "stop",
            FinishKind::Length | FinishKind::Context => "length",
            FinishKind::Cancelled => "cancelled",
            FinishKind::Error(_) => "error",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Finish {
    pub kind: FinishKind,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// From `submit` to first being scheduled (to the finish, for one never scheduled).
    pub queue_time_s: f64,
    /// Times the sequence was preempted (and recomputed).
    pub preemptions: u32,
}

/// Receives one sequence's tokens, on the scheduler's thread: must not block.
pub trait TokenSink: Send + 'static {
    /// One generated token. Return false to cancel the sequence (client gone, stop string hit).
    fn token(&mut self, ev: TokenEvent) -> bool;
    /// Called exactly once, last.
    fn finish(&mut self, f: Finish);
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// `max_queue` requests already wait.
    QueueFull,
    /// `shutdown` was called (or the scheduler stopped).
    ShuttingDown,
    /// The request itself is wrong; the message says how.
    Invalid(String),
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::QueueFull => write!(f, "the request queue is full"),
            SubmitError::ShuttingDown => write!(f, "the server is shutting down"),
            SubmitError::Invalid(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for SubmitError {}

/// One submitted request; clones refer to the same sequence.
#[derive(Clone)]
pub struct SeqHandle {
    id: u64,
    flag: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

impl SeqHandle {
    /// Ends the sequence (finish `Cancelled`) and frees its KV before the next step.
    pub fn cancel(&self) {
        if !self.flag.swap(true, Ordering::AcqRel) {
            self.shared.cancels.fetch_add(1, Ordering::AcqRel);
            let _guard = self.shared.lock();
            self.shared.wake.notify_all();
        }
    }
    pub fn id(&self) -> u64 {
        self.id
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedStats {
    pub running: usize,
    pub waiting: usize,
    /// KV booked for the running sequences.
    pub kv_used_bytes: u64,
    /// The KV budget.
    pub kv_total_bytes: u64,
    /// What the engine reports it holds (the CPU engine: exactly `kv_used_bytes` between steps).
    pub kv_held_bytes: Option<u64>,
    pub preemptions_total: u64,
    pub steps_total: u64,
}

/// State shared by the submitters and the scheduler's thread.
pub(crate) struct Shared {
    st: Mutex<State>,
    wake: Condvar,
    /// Bumped by every cancel, so the thread looks through the queue only when one happened.
    cancels: AtomicU64,
}

pub(crate) struct State {
    waiting: VecDeque<Seq>,
    /// Set by `shutdown`: the drain deadline.
    shutdown: Option<Instant>,
    /// The thread has ended: nothing is accepted any more.
    stopped: bool,
    stats: SchedStats,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Scheduler {
    shared: Arc<Shared>,
    cfg: ModelConfig,
    sched: SchedulerConfig,
    limits: EngineLimits,
    max_seq_tokens: usize,
    next_id: AtomicU64,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Scheduler {
    /// Checks `cfg` against the engine and starts the scheduler's thread.
    pub fn start(engine: Box<dyn StepEngine>, cfg: SchedulerConfig) -> Result<Scheduler> {
        let limits = engine.limits();
        let bad = |msg: String| Err(PipelineError::Invalid { what: "scheduler config", msg });
        if cfg.max_num_seqs == 0 || cfg.max_num_seqs > limits.max_seqs {
            return bad(format!("max_num_seqs {} must be in 1..={} (the engine's)", cfg.max_num_seqs, limits.max_seqs));
        }
        if cfg.max_queue == 0 {
            return bad("max_queue must be at least 1".into());
        }
        if cfg.prefill_chunk_tokens < cfg.max_num_seqs || cfg.prefill_chunk_tokens > limits.max_batch_rows {
            return bad(format!(
                "prefill_chunk_tokens {} must be at least max_num_seqs {} and at most the engine's {} rows per batch",
                cfg.prefill_chunk_tokens, cfg.max_num_seqs, limits.max_batch_rows
            ));
        }
        if limits.split_decode_prefill && cfg.prefill_chunk_tokens < 3 {
            // a continuing prefill chunk needs 2 rows and must not leave 1 behind
            return bad(format!(
                "prefill_chunk_tokens {} must be at least 3 on an engine that batches decode and prefill apart",
                cfg.prefill_chunk_tokens
            ));
        }
        let bpt = engine.kv_bytes_per_token();
        let block_tokens = limits.kv_block_tokens.max(1);
        let block_bytes = bpt * block_tokens as u64;
        if block_bytes == 0 {
            return bad("the engine reports 0 KV bytes per token".into());
        }
        let ctx = limits.max_context.min(engine.config().max_position_embeddings);
        // no budget given: room for every sequence at full context, but never more than half
        // the memory the system has available now
        let mut default_bytes = cfg.max_num_seqs as u64 * ctx.div_ceil(block_tokens) as u64 * block_bytes;
        if let Some(avail) = mem_available_bytes() {
            default_bytes = default_bytes.min(avail / 2);
        }
        let mut budget = cfg.kv_cache_bytes.unwrap_or(limits.kv_capacity_bytes.unwrap_or(default_bytes));
        if let Some(cap) = limits.kv_capacity_bytes {
            budget = budget.min(cap);
        }
        let total_blocks = (budget / block_bytes) as usize;
        let max_seq_tokens = ctx.min(total_blocks.saturating_mul(block_tokens));
        if max_seq_tokens < 2 {
            return bad(format!(
                "a KV budget of {budget} bytes holds {} positions ({block_bytes} bytes per block of {block_tokens}); \
                 a sequence needs at least 2",
                total_blocks * block_tokens
            ));
        }
        let shared = Arc::new(Shared {
            st: Mutex::new(State {
                waiting: VecDeque::new(),
                shutdown: None,
                stopped: false,
                stats: SchedStats { kv_total_bytes: total_blocks as u64 * block_bytes, ..Default::default() },
            }),
            wake: Condvar::new(),
            cancels: AtomicU64::new(0),
        });
        let model_cfg = engine.config().clone();
        let w =
            worker::Worker::new(engine, shared.clone(), cfg, total_blocks, block_tokens, block_bytes, max_seq_tokens);
        let thread = std::thread::Builder::new()
            .name("faascale-sched".into())
            .spawn(move || w.run())
            .map_err(|e| PipelineError::Invalid { what: "scheduler thread", msg: e.to_string() })?;
        Ok(Scheduler {
            shared,
            cfg: model_cfg,
            sched: cfg,
            limits,
            max_seq_tokens,
            next_id: AtomicU64::new(1),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Validates `req` and queues it; `sink` hears its tokens and, exactly once, its finish.
    pub fn submit(&self, req: SeqRequest, sink: Box<dyn TokenSink>) -> std::result::Result<SeqHandle, SubmitError> {
        self.validate(&req)?;
        let sampler = Sampler::new(req.sampling).map_err(|e| SubmitError::Invalid(e.to_string()))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let seq = Seq::new(id, req, sampler, sink);
        let flag = seq.cancel.clone();
        let mut st = self.shared.lock();
        if st.shutdown.is_some() || st.stopped {
            return Err(SubmitError::ShuttingDown);
        }
        if st.waiting.len() >= self.sched.max_queue {
            return Err(SubmitError::QueueFull);
        }
        st.waiting.push_back(seq);
        self.shared.wake.notify_all();
        drop(st);
        Ok(SeqHandle { id, flag, shared: self.shared.clone() })
    }

    fn validate(&self, r: &SeqRequest) -> std::result::Result<(), SubmitError> {
        let bad = |m: String| Err(SubmitError::Invalid(m));
        let vocab = self.cfg.vocab_size;
        let limit = self.max_seq_tokens;
        if r.prompt.is_empty() {
            return bad("the prompt has no tokens".into());
        }
        if r.prompt.len() >= limit {
            let ctx = self.limits.max_context.min(self.cfg.max_position_embeddings);
            return bad(if limit == ctx {
                format!(
                    "the prompt has {} tokens but the model's context length is {ctx}: at most {} prompt tokens \
                     leave room for one generated token",
                    r.prompt.len(),
                    ctx - 1
                )
            } else {
                format!(
                    "the prompt has {} tokens but the KV cache budget ({} bytes) holds at most {limit} tokens of \
                     one sequence (the model's context length is {ctx})",
                    r.prompt.len(),
                    self.stats().kv_total_bytes
                )
            });
        }
        if let Some((i, &t)) = r.prompt.iter().enumerate().find(|(_, &t)| t as usize >= vocab) {
            return bad(format!("token id {t} at index {i} of the prompt is out of range (vocabulary size {vocab})"));
        }
        if r.max_tokens == 0 {
            return bad("max_tokens must be at least 1".into());
        }
        if r.stop_token_ids.len() > MAX_STOP_TOKEN_IDS {
            return bad(format!("{} stop token ids; at most {MAX_STOP_TOKEN_IDS}", r.stop_token_ids.len()));
        }
        if let Some(&t) = r.stop_token_ids.iter().find(|&&t| t as usize >= vocab) {
            return bad(format!("stop token id {t} is out of range (vocabulary size {vocab})"));
        }
        if let Err(PipelineError::Invalid { msg, .. }) = r.sampling.validate() {
            return bad(msg);
        }
        Ok(())
    }

    pub fn stats(&self) -> SchedStats {
        let st = self.shared.lock();
        SchedStats { waiting: st.waiting.len(), ..st.stats }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.sched
    }

    pub fn engine_limits(&self) -> EngineLimits {
        self.limits
    }

    /// The most tokens (prompt + completion) one sequence may reach: the model's context, or
    /// what the KV budget holds if less.
    pub fn max_seq_tokens(&self) -> usize {
        self.max_seq_tokens
    }

    /// Stops accepting (`submit` answers `ShuttingDown`); every request already submitted,
    /// running or waiting, goes on until `drain` has passed, then the rest are cancelled.
    /// Returns when the scheduler's thread has ended.
    pub fn shutdown(&self, drain: Duration) {
        {
            let mut st = self.shared.lock();
            let deadline = Instant::now() + drain;
            st.shutdown = Some(st.shutdown.map_or(deadline, |d| d.min(deadline)));
            self.shared.wake.notify_all();
        }
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shutdown(Duration::ZERO);
    }
}

/// `MemAvailable` of /proc/meminfo, in bytes.
fn mem_available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}
