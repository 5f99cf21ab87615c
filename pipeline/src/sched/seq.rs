//! One request inside the scheduler: its tokens so far, how many of them the engine's KV cache
//! holds, its sampler (seeded, carried across preemptions) and its sink.

use super::{Finish, FinishKind, SeqRequest, TokenEvent, TokenSink};
use crate::sampler::Sampler;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub(crate) struct Seq {
    /// The engine's sequence id (unique for the scheduler's life).
    pub(crate) id: u64,
    /// The prompt, then every generated token.
    pub(crate) tokens: Vec<u32>,
    pub(crate) prompt_len: usize,
    /// Positions the engine's KV cache holds (tokens[..cached] have been fed).
    pub(crate) cached: usize,
    pub(crate) max_tokens: usize,
    pub(crate) ignore_eos: bool,
    pub(crate) stop_token_ids: Vec<u32>,
    pub(crate) logprobs: bool,
    pub(crate) sampler: Sampler,
    pub(crate) sink: Box<dyn TokenSink>,
    pub(crate) cancel: Arc<AtomicBool>,
    pub(crate) submitted_at: Instant,
    pub(crate) first_scheduled_at: Option<Instant>,
    pub(crate) preemptions: u32,
    /// Set when the sequence has ended this step; it is removed and its sink finished at the end
    /// of the step.
    pub(crate) finish: Option<FinishKind>,
}

impl Seq {
    pub(crate) fn new(id: u64, req: SeqRequest, sampler: Sampler, sink: Box<dyn TokenSink>) -> Seq {
        Seq {
            id,
            prompt_len: req.prompt.len(),
            tokens: req.prompt,
            cached: 0,
            max_tokens: req.max_tokens,
            ignore_eos: req.ignore_eos,
            stop_token_ids: req.stop_token_ids,
            logprobs: req.logprobs,
            sampler,
            sink,
            cancel: Arc::new(AtomicBool::new(false)),
            submitted_at: Instant::now(),
            first_scheduled_at: None,
            preemptions: 0,
            finish: None,
        }
    }

    pub(crate) fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Tokens not yet fed to the engine (at least 1 while the sequence runs).
    pub(crate) fn pending(&self) -> usize {
        self.tokens.len() - self.cached
    }

    /// A decode step: exactly the newest token left to feed, after a prefill.
    pub(crate) fn is_decode(&self) -> bool {
        self.cached > 0 && self.pending() == 1
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Acquire)
    }

    /// Takes a sampled token: hands it to the sink, then decides whether the sequence ends
    /// (sink refused or handle cancelled, EOS or a stop token, `max_tokens`, the length limit).
    pub(crate) fn accept(&mut self, token: u32, logits: &[f32], eos: &[u32], limit_tokens: usize) {
        self.tokens.push(token);
        let logprob = self.logprobs.then(|| log_softmax_at(logits, token as usize));
        let sink = &mut self.sink;
        let keep = catch_unwind(AssertUnwindSafe(|| sink.token(TokenEvent { token, logprob }))).unwrap_or(false);
        self.finish = if !keep || self.is_cancelled() {
            Some(FinishKind::Cancelled)
        } else if (!self.ignore_eos && eos.contains(&token)) || self.stop_token_ids.contains(&token) {
            Some(FinishKind::Eos)
        } else if self.generated() >= self.max_tokens {
            Some(FinishKind::Length)
        } else if self.tokens.len() >= limit_tokens {
            Some(FinishKind::Context)
        } else {
            None
        };
    }

    /// Calls the sink's `finish` (once: the sequence is consumed).
    pub(crate) fn end(mut self, kind: FinishKind) {
        let now = Instant::now();
        let queue_time_s = self.first_scheduled_at.unwrap_or(now).duration_since(self.submitted_at).as_secs_f64();
        let f = Finish {
            kind,
            prompt_tokens: self.prompt_len,
            completion_tokens: self.generated(),
            queue_time_s,
            preemptions: self.preemptions,
        };
        let sink = &mut self.sink;
        // A sink that panics has only itself to blame; the scheduler goes on.
        let _ = catch_unwind(AssertUnwindSafe(|| sink.finish(f)));
    }
}

/// `log softmax(logits)[t]`, in f64 for a stable sum (NaN logits count as probability 0).
pub fn log_softmax_at(logits: &[f32], t: usize) -> f32 {
    let max = logits.iter().copied().filter(|x| !x.is_nan()).fold(f32::NEG_INFINITY, f32::max);
    let x = match logits.get(t) {
        Some(&x) if !x.is_nan() && max.is_finite() => x,
        _ => return f32::NEG_INFINITY,
    };
    let sum: f64 = logits.iter().filter(|x| !x.is_nan()).map(|&x| (x as f64 - max as f64).exp()).sum();
    (x as f64 - max as f64 - sum.ln()) as f32
}

#[cfg(test)]
mod tests {
    use super::log_softmax_at;

    #[test]
    fn log_softmax_matches_the_definition() {
        let l = [1.0f32, 2.0, 3.0];
        let z: f64 = l.iter().map(|&x| (x as f64).exp()).sum();
        for t in 0..3 {
            let want = (l[t] as f64).exp() / z;
            assert!((log_softmax_at(&l, t) as f64 - want.ln()).abs() < 1e-6);
        }
        assert_eq!(log_softmax_at(&[f32::NAN, 0.0], 0), f32::NEG_INFINITY);
        assert_eq!(log_softmax_at(&[f32::NAN, 0.0], 1), 0.0);
    }
}
