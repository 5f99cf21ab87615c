//! Helpers shared by the scheduler's tests: a recording sink, engines over seeded random
//! checkpoints, and a StepEngine double that fails, panics or holds a batch on demand.
#![allow(dead_code)]

use kernels::Pool;
use pipeline::sched::{
    EngineLimits, Finish, FinishKind, SchedStats, Scheduler, SchedulerConfig, SeqRequest, StepEngine, TokenEvent,
    TokenSink,
};
use pipeline::{Engine, Model, ModelConfig, SamplingParams, StageBatch, StageLimits, StageOutput};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a "does not hang" wait may take on a loaded CI machine.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// A seeded random checkpoint of preset `name`, opened.
pub fn synth_model(name: &str, seed: u64) -> (tempfile::TempDir, Model) {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, dtype) = pipeline::synth::preset(name).unwrap();
    pipeline::synth::write_checkpoint(dir.path(), cfg, dtype, seed).unwrap();
    let model = Model::open(dir.path()).unwrap();
    (dir, model)
}

/// The CPU engine over `model` in stages cut at `cuts` of an 8-block layout.
pub fn cpu_engine(model: &Model, cuts: &[usize], threads: usize) -> Engine {
    let pool = Arc::new(Pool::new(threads));
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(8);
    let stages =
        bounds.windows(2).map(|w| model.stage(8, w[0]..w[1], pool.clone(), StageLimits::default()).unwrap()).collect();
    Engine::new(stages).unwrap()
}

pub fn cfg(max_num_seqs: usize, max_queue: usize, kv_cache_bytes: Option<u64>, chunk: usize) -> SchedulerConfig {
    SchedulerConfig { max_num_seqs, max_queue, kv_cache_bytes, prefill_chunk_tokens: chunk }
}

pub fn greedy(prompt: Vec<u32>, max_tokens: usize) -> SeqRequest {
    SeqRequest { prompt, max_tokens, ignore_eos: true, ..Default::default() }
}

pub fn sampled(prompt: Vec<u32>, max_tokens: usize, seed: u64) -> SeqRequest {
    SeqRequest {
        prompt,
        max_tokens,
        sampling: SamplingParams { temperature: 0.9, top_k: 50, top_p: 0.95, seed },
        ignore_eos: true,
        ..Default::default()
    }
}

/// What a sink saw.
#[derive(Default, Debug)]
pub struct Record {
    pub tokens: Vec<u32>,
    pub logprobs: Vec<Option<f32>>,
    pub finishes: Vec<Finish>,
    /// Tokens that arrived after a finish (must stay 0).
    pub late_tokens: usize,
}

#[derive(Clone, Default)]
pub struct Rec(pub Arc<(Mutex<Record>, Condvar)>);

impl Rec {
    pub fn new() -> Rec {
        Rec::default()
    }
    pub fn sink(&self) -> Box<dyn TokenSink> {
        Box::new(RecSink { rec: self.clone(), cancel_after: None })
    }
    /// A sink that returns false on its `n`-th token.
    pub fn sink_cancelling_after(&self, n: usize) -> Box<dyn TokenSink> {
        Box::new(RecSink { rec: self.clone(), cancel_after: Some(n) })
    }
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.0 .0.lock().unwrap()
    }
    /// (finishes, tokens after a finish): (1, 0) once a sequence has ended.
    pub fn finish_counts(&self) -> (usize, usize) {
        let r = self.lock();
        (r.finishes.len(), r.late_tokens)
    }
    /// Waits (up to PATIENCE) for the finish and returns (tokens, finish).
    pub fn wait(&self) -> (Vec<u32>, Finish) {
        let deadline = Instant::now() + PATIENCE;
        let mut r = self.0 .0.lock().unwrap();
        while r.finishes.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no finish within {PATIENCE:?}; tokens so far {:?}", r.tokens);
            r = self.0 .1.wait_timeout(r, left).unwrap().0;
        }
        (r.tokens.clone(), r.finishes[0].clone())
    }
    /// Waits until the sink has seen at least `n` tokens (or a finish).
    pub fn wait_tokens(&self, n: usize) {
        let deadline = Instant::now() + PATIENCE;
        let mut r = self.0 .0.lock().unwrap();
        while r.tokens.len() < n && r.finishes.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "fewer than {n} tokens within {PATIENCE:?}");
            r = self.0 .1.wait_timeout(r, left).unwrap().0;
        }
    }
}

struct RecSink {
    rec: Rec,
    cancel_after: Option<usize>,
}

impl TokenSink for RecSink {
    fn token(&mut self, ev: TokenEvent) -> bool {
        let mut r = self.rec.lock();
        if !r.finishes.is_empty() {
            r.late_tokens += 1;
        }
        r.tokens.push(ev.token);
        r.logprobs.push(ev.logprob);
        let n = r.tokens.len();
        drop(r);
        self.rec.0 .1.notify_all();
        self.cancel_after != Some(n)
    }
    fn finish(&mut self, f: Finish) {
        self.rec.lock().finishes.push(f);
        self.rec.0 .1.notify_all();
    }
}

/// Polls `sched.stats()` until `pred` holds (up to PATIENCE).
pub fn wait_stats(sched: &Scheduler, what: &str, pred: impl Fn(&SchedStats) -> bool) -> SchedStats {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let s = sched.stats();
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}; stats {s:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Runs each request alone (one at a time) on a fresh scheduler: the reference outputs.
pub fn solo(engine: Engine, reqs: &[SeqRequest]) -> Vec<(Vec<u32>, FinishKind)> {
    let sched = Scheduler::start(Box::new(engine), cfg(1, reqs.len().max(1), None, 512)).unwrap();
    reqs.iter()
        .map(|r| {
            let rec = Rec::new();
            sched.submit(r.clone(), rec.sink()).unwrap();
            let (t, f) = rec.wait();
            (t, f.kind)
        })
        .collect()
}

/// Fault injection around a real engine.
pub struct Faults {
    /// A batch holding this token id fails with an error.
    pub fail_on_token: Option<u32>,
    /// A batch holding this token id panics.
    pub panic_on_token: Option<u32>,
    /// While set, `forward` waits (a batch held in flight).
    pub hold: Arc<(Mutex<bool>, Condvar)>,
    /// Forwards run so far.
    pub forwards: Arc<Mutex<usize>>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            fail_on_token: None,
            panic_on_token: None,
            hold: Arc::new((Mutex::new(false), Condvar::new())),
            forwards: Arc::new(Mutex::new(0)),
        }
    }
}

pub fn set_hold(hold: &Arc<(Mutex<bool>, Condvar)>, on: bool) {
    *hold.0.lock().unwrap() = on;
    hold.1.notify_all();
}

pub struct Faulty {
    pub inner: Engine,
    pub faults: Faults,
}

impl StepEngine for Faulty {
    fn config(&self) -> &ModelConfig {
        StepEngine::config(&self.inner)
    }
    fn forward(&mut self, b: &StageBatch) -> pipeline::Result<StageOutput> {
        *self.faults.forwards.lock().unwrap() += 1;
        {
            let (m, cv) = &*self.faults.hold;
            let mut held = m.lock().unwrap();
            while *held {
                held = cv.wait(held).unwrap();
            }
        }
        let has = |t: Option<u32>| match (&b.input, t) {
            (pipeline::StageInput::Tokens(toks), Some(t)) => toks.contains(&t),
            _ => false,
        };
        if has(self.faults.panic_on_token) {
            panic!("injected panic");
        }
        if has(self.faults.fail_on_token) {
            return Err(pipeline::PipelineError::Invalid { what: "test", msg: "injected failure".into() });
        }
        StepEngine::forward(&mut self.inner, b)
    }
    fn free(&mut self, seq: u64) {
        StepEngine::free(&mut self.inner, seq)
    }
    fn kv_bytes_per_token(&self) -> u64 {
        StepEngine::kv_bytes_per_token(&self.inner)
    }
    fn limits(&self) -> EngineLimits {
        StepEngine::limits(&self.inner)
    }
    fn kv_held_bytes(&self) -> Option<u64> {
        StepEngine::kv_held_bytes(&self.inner)
    }
}

/// The CPU engine presented as one that keeps decode and prefill apart (as the GPU does, whose
/// kernel follows the batch's shape); it records every batch that mixes decode-shaped rows (one
/// row of a held sequence) with others, and every prompt token fed in a decode-shaped batch.
/// `prompt_lens`: sequence id -> prompt length, filled by the test.
pub struct SplitChecked {
    pub inner: Engine,
    pub prompt_lens: Arc<Mutex<std::collections::HashMap<u64, usize>>>,
    pub violations: Arc<Mutex<Vec<String>>>,
    pub decode_batches: Arc<Mutex<usize>>,
}

impl StepEngine for SplitChecked {
    fn config(&self) -> &ModelConfig {
        StepEngine::config(&self.inner)
    }
    fn forward(&mut self, b: &StageBatch) -> pipeline::Result<StageOutput> {
        let mut groups: Vec<(u64, usize, u32)> = Vec::new(); // (seq, rows, first position)
        for (&s, &p) in b.seq_ids.iter().zip(&b.positions) {
            match groups.last_mut() {
                Some(g) if g.0 == s => g.1 += 1,
                _ => groups.push((s, 1, p)),
            }
        }
        let held = |s: u64| self.inner.stages()[0].seq_len(s) > 0;
        let decode_shaped = groups.iter().filter(|g| g.1 == 1 && held(g.0)).count();
        let mut bad = self.violations.lock().unwrap();
        if decode_shaped == groups.len() {
            *self.decode_batches.lock().unwrap() += 1;
            let lens = self.prompt_lens.lock().unwrap();
            for g in &groups {
                match lens.get(&g.0) {
                    Some(&n) if (g.2 as usize) >= n => {}
                    _ => bad.push(format!("prompt token of sequence {} at position {} in a decode batch", g.0, g.2)),
                }
            }
        } else if decode_shaped > 0 {
            bad.push(format!("mixed batch {groups:?}"));
        }
        drop(bad);
        StepEngine::forward(&mut self.inner, b)
    }
    fn free(&mut self, seq: u64) {
        StepEngine::free(&mut self.inner, seq)
    }
    fn kv_bytes_per_token(&self) -> u64 {
        StepEngine::kv_bytes_per_token(&self.inner)
    }
    fn limits(&self) -> EngineLimits {
        EngineLimits { split_decode_prefill: true, ..StepEngine::limits(&self.inner) }
    }
    fn kv_held_bytes(&self) -> Option<u64> {
        StepEngine::kv_held_bytes(&self.inner)
    }
}
