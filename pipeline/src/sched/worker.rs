//! The scheduler's thread: each step takes cancellations, plans a batch (decode rows, prefill
//! chunks, admissions, preemptions) under the row and KV budgets, runs it, samples, and ends
//! the sequences that are done.

use super::seq::Seq;
use super::{FinishKind, SchedulerConfig, Shared, State, StepEngine};
use crate::stage::{LogitsRows, StageBatch, StageInput, StageOutput};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

pub(crate) struct Worker {
    engine: Box<dyn StepEngine>,
    shared: Arc<Shared>,
    cfg: SchedulerConfig,
    /// KV budget in the engine's allocation blocks.
    total_blocks: usize,
    block_tokens: usize,
    block_bytes: u64,
    limit_tokens: usize,
    /// The engine wants decode rows and prefill rows in separate batches.
    split: bool,
    eos: Vec<u32>,
    vocab: usize,
    /// Running sequences, oldest admitted first (the newest is preempted first).
    running: Vec<Seq>,
    /// `Shared::cancels` when the queue was last searched for cancelled requests.
    cancels_seen: u64,
    preemptions_total: u64,
    steps_total: u64,
}

/// Rows planned for one running sequence this step: tokens[cached..cached + take].
#[derive(Clone, Copy, Debug)]
struct Planned {
    idx: usize,
    take: usize,
}

impl Worker {
    pub(crate) fn new(
        engine: Box<dyn StepEngine>,
        shared: Arc<Shared>,
        cfg: SchedulerConfig,
        total_blocks: usize,
        block_tokens: usize,
        block_bytes: u64,
        limit_tokens: usize,
    ) -> Worker {
        let eos = engine.config().eos_token_ids.clone();
        let vocab = engine.config().vocab_size;
        let split = engine.limits().split_decode_prefill;
        Worker {
            engine,
            shared,
            cfg,
            total_blocks,
            block_tokens,
            block_bytes,
            limit_tokens,
            split,
            eos,
            vocab,
            running: Vec::new(),
            cancels_seen: 0,
            preemptions_total: 0,
            steps_total: 0,
        }
    }

    fn blocks(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_tokens)
    }

    fn used_blocks(&self) -> usize {
        self.running.iter().map(|s| self.blocks(s.cached)).sum()
    }

    pub(crate) fn run(mut self) {
        loop {
            let mut ended: Vec<(Seq, FinishKind)> = Vec::new();
            let shared = self.shared.clone();
            let mut st = shared.lock();
            let (exit, drain_over) = loop {
                self.take_cancelled_waiting(&mut st, &mut ended);
                let drain_over = st.shutdown.is_some_and(|d| Instant::now() >= d);
                if drain_over {
                    ended.extend(st.waiting.drain(..).map(|s| (s, FinishKind::Cancelled)));
                }
                let work = !self.running.is_empty() || !st.waiting.is_empty();
                if work || !ended.is_empty() {
                    break (false, drain_over);
                }
                if st.shutdown.is_some() {
                    break (true, drain_over);
                }
                st = shared.wake.wait(st).unwrap_or_else(|e| e.into_inner());
            };
            drop(st);
            for (s, kind) in ended {
                s.end(kind);
            }
            // running sequences cancelled (or out of drain time) end before the step
            for s in &mut self.running {
                if drain_over || s.is_cancelled() {
                    s.finish = Some(FinishKind::Cancelled);
                }
            }
            self.end_finished();
            if exit {
                break;
            }
            self.step();
            self.end_finished();
            self.publish();
        }
        self.publish();
    }

    /// Moves requests cancelled while waiting to `ended`, when a cancel happened since last time.
    fn take_cancelled_waiting(&mut self, st: &mut MutexGuard<'_, State>, ended: &mut Vec<(Seq, FinishKind)>) {
        let now = self.shared.cancels.load(Ordering::Acquire);
        if now == self.cancels_seen {
            return;
        }
        self.cancels_seen = now;
        let mut i = 0;
        while i < st.waiting.len() {
            if st.waiting[i].is_cancelled() {
                let s = st.waiting.remove(i).expect("index in range");
                ended.push((s, FinishKind::Cancelled));
            } else {
                i += 1;
            }
        }
    }

    /// Frees and finishes every running sequence marked finished.
    fn end_finished(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if let Some(kind) = self.running[i].finish.take() {
                let s = self.running.remove(i);
                self.engine.free(s.id);
                s.end(kind);
            } else {
                i += 1;
            }
        }
    }

    fn publish(&mut self) {
        let used = self.used_blocks() as u64 * self.block_bytes;
        let held = self.engine.kv_held_bytes();
        let mut st = self.shared.lock();
        st.stats.running = self.running.len();
        st.stats.kv_used_bytes = used;
        st.stats.kv_held_bytes = held;
        st.stats.preemptions_total = self.preemptions_total;
        st.stats.steps_total = self.steps_total;
    }

    /// Preempts the newest running sequence: frees its KV and puts it at the front of the queue
    /// to be re-prefilled with every token it has. Returns the blocks freed.
    fn preempt_newest(&mut self, st: &mut MutexGuard<'_, State>) -> usize {
        let mut s = self.running.pop().expect("a running sequence to preempt");
        let freed = self.blocks(s.cached);
        self.engine.free(s.id);
        s.cached = 0;
        s.preemptions += 1;
        self.preemptions_total += 1;
        st.waiting.push_front(s);
        freed
    }

    /// Plans this step: returns the decode rows and the prefill rows.
    fn plan(&mut self) -> (Vec<Planned>, Vec<Planned>) {
        let shared = self.shared.clone();
        let mut st = shared.lock();
        let mut rows_left = self.cfg.prefill_chunk_tokens;
        let mut free = self.total_blocks.saturating_sub(self.used_blocks());
        let mut decode = Vec::new();
        let mut prefill = Vec::new();
        let mut preempted = false;

        // ---- decode rows first: one per decoding sequence, oldest first ----
        let mut i = 0;
        while i < self.running.len() && rows_left > 0 {
            let s = &self.running[i];
            if !s.is_decode() {
                i += 1;
                continue;
            }
            let need = self.blocks(s.cached + 1) - self.blocks(s.cached);
            if need <= free {
                free -= need;
                rows_left -= 1;
                decode.push(Planned { idx: i, take: 1 });
                i += 1;
            } else {
                // the victim is the newest: this one or a later one, never one planned already
                free += self.preempt_newest(&mut st);
                preempted = true;
            }
        }

        // ---- prefill chunks of the running sequences still prefilling ----
        let mut i = 0;
        while i < self.running.len() && rows_left > 0 {
            let s = &self.running[i];
            if s.is_decode() {
                i += 1;
                continue;
            }
            let (cached, pending) = (s.cached, s.pending());
            let take = self.chunk(cached, pending, pending.min(rows_left), free);
            if take > 0 {
                free -= self.blocks(cached + take) - self.blocks(cached);
                rows_left -= take;
                prefill.push(Planned { idx: i, take });
                i += 1;
            } else if decode.is_empty() && prefill.is_empty() {
                // nothing else can move: make room (the oldest alone always fits the budget)
                free += self.preempt_newest(&mut st);
                preempted = true;
            } else {
                break; // the decoders move on; their ends free blocks
            }
        }

        // ---- waiting requests join, in order, while all their tokens fit ----
        if !preempted && rows_left > 0 {
            let mut room = free.saturating_sub(
                self.running
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| !s.is_decode())
                    .map(|(j, s)| {
                        let planned = prefill.iter().find(|p| p.idx == j).map_or(0, |p| p.take);
                        self.blocks(s.tokens.len()) - self.blocks(s.cached + planned)
                    })
                    .sum(),
            );
            while self.running.len() < self.cfg.max_num_seqs && rows_left > 0 {
                let Some(front) = st.waiting.front() else { break };
                let need_all = self.blocks(front.tokens.len());
                if need_all > room {
                    break;
                }
                let mut s = st.waiting.pop_front().expect("front exists");
                if s.is_cancelled() {
                    s.finish = Some(FinishKind::Cancelled);
                    self.running.push(s); // ended (and finished) after the step, never fed
                    continue;
                }
                let take = self.chunk(0, s.tokens.len(), s.tokens.len().min(rows_left), usize::MAX);
                if take == 0 {
                    st.waiting.push_front(s);
                    break;
                }
                room -= need_all;
                rows_left -= take;
                s.first_scheduled_at.get_or_insert_with(Instant::now);
                prefill.push(Planned { idx: self.running.len(), take });
                self.running.push(s);
            }
        }
        (decode, prefill)
    }

    /// The prefill chunk to feed now for a sequence holding `cached` positions with `pending`
    /// tokens to go: at most `want` rows and what fits in `free` blocks. On an engine that keeps
    /// decode and prefill apart, a prompt token must never look like a decode step (one row of a
    /// sequence it already holds: the GPU would run GEMV instead of GEMM and round differently),
    /// so a continuing chunk has at least 2 rows and never leaves exactly 1 token behind.
    fn chunk(&self, cached: usize, pending: usize, want: usize, free: usize) -> usize {
        let room_tokens = (self.blocks(cached) + free).saturating_mul(self.block_tokens) - cached;
        let mut take = want.min(room_tokens);
        if self.split && take < pending {
            if pending - take == 1 {
                take -= 1;
            }
            if cached > 0 && take < 2 {
                take = 0;
            }
        }
        take
    }

    fn step(&mut self) {
        let (decode, prefill) = self.plan();
        if decode.is_empty() && prefill.is_empty() {
            if !self.running.iter().any(|s| s.finish.is_some()) {
                // Nothing could be scheduled, which the planner never lets happen with work
                // waiting; should it, wait for a change rather than spin.
                log::warn!("scheduler: nothing schedulable with {} running", self.running.len());
                let st = self.shared.lock();
                let _ = self.shared.wake.wait_timeout(st, Duration::from_millis(10));
            }
            return;
        }
        self.steps_total += 1;
        if self.split {
            for part in [decode, prefill] {
                if !part.is_empty() {
                    self.run_batch(&part);
                }
            }
        } else {
            let mut all = decode;
            all.extend(prefill);
            self.run_batch(&all);
        }
    }

    /// Runs one batch and samples for every sequence whose last pending token was in it.
    fn run_batch(&mut self, plan: &[Planned]) {
        let rows: usize = plan.iter().map(|p| p.take).sum();
        let mut batch = StageBatch {
            seq_ids: Vec::with_capacity(rows),
            positions: Vec::with_capacity(rows),
            input: StageInput::Tokens(Vec::with_capacity(rows)),
            logits: LogitsRows::LastOfEachSeq,
        };
        let StageInput::Tokens(tokens) = &mut batch.input else { unreachable!("built as tokens") };
        for p in plan {
            let s = &self.running[p.idx];
            for pos in s.cached..s.cached + p.take {
                batch.seq_ids.push(s.id);
                batch.positions.push(pos as u32);
                tokens.push(s.tokens[pos]);
            }
        }
        let engine = &mut self.engine;
        let out = match catch_unwind(AssertUnwindSafe(|| engine.forward(&batch))) {
            Ok(Ok(out)) => self.check_output(out, plan.len()),
            Ok(Err(e)) => Err(format!("engine: {e}")),
            Err(panic) => Err(format!("engine panicked: {}", panic_message(&*panic))),
        };
        let data = match out {
            Ok(data) => data,
            Err(msg) => {
                log::error!("forward of {rows} rows failed, ending {} sequences: {msg}", plan.len());
                for p in plan {
                    self.running[p.idx].finish = Some(FinishKind::Error(msg.clone()));
                }
                return;
            }
        };
        let (eos, limit, vocab) = (&self.eos, self.limit_tokens, self.vocab);
        for (li, p) in plan.iter().enumerate() {
            let s = &mut self.running[p.idx];
            s.cached += p.take;
            if s.cached == s.tokens.len() && s.finish.is_none() {
                let row = &data[li * vocab..(li + 1) * vocab];
                let tok = s.sampler.sample(row);
                s.accept(tok, row, eos, limit);
            }
        }
    }

    /// The logits of a batch, one row per planned sequence, or why the engine's answer is wrong.
    fn check_output(&self, out: StageOutput, seqs: usize) -> Result<Vec<f32>, String> {
        match out {
            StageOutput::Logits { rows, vocab, data } if rows.len() == seqs && vocab == self.vocab => {
                if data.len() == seqs * vocab {
                    Ok(data)
                } else {
                    Err(format!("{} logits for {seqs} rows of {vocab}", data.len()))
                }
            }
            StageOutput::Logits { rows, vocab, .. } => {
                Err(format!("logits for {} rows of {vocab}, expected {seqs} of {}", rows.len(), self.vocab))
            }
            StageOutput::Hidden(_) => Err("the engine returned hidden states, not logits".into()),
        }
    }
}

impl Drop for Worker {
    /// However the thread ends (a bug that panics included), every sink hears its finish and
    /// `submit` refuses from now on.
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        let kind = || {
            if panicking {
                FinishKind::Error("the scheduler stopped".into())
            } else {
                FinishKind::Cancelled
            }
        };
        let waiting: Vec<Seq> = {
            let mut st = self.shared.lock();
            st.stopped = true;
            st.stats.running = 0;
            st.stats.kv_used_bytes = 0;
            st.waiting.drain(..).collect()
        };
        for s in std::mem::take(&mut self.running) {
            self.engine.free(s.id);
            s.end(kind());
        }
        for s in waiting {
            s.end(kind());
        }
        self.shared.lock().stats.kv_held_bytes = self.engine.kv_held_bytes();
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}
