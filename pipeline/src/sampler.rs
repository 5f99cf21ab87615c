//! Choosing the next token from logits: greedy, or temperature → top-k → top-p sampling
//! (the order transformers applies them), driven by a seeded generator so a run repeats.

use crate::error::{PipelineError, Result};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 means no limit.
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p; 1 means no limit.
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(PipelineError::Invalid { what: "sampling parameters", msg });
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(format!("temperature {} must be a finite number >= 0", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p {} must be in (0, 1]", self.top_p));
        }
        Ok(())
    }
}

/// SplitMix64: small, fast, and the same on every platform.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1) with 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Index of the largest logit; the lowest index wins a tie. NaN never wins.
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best
}

pub struct Sampler {
    pub params: SamplingParams,
    rng: Rng,
    probs: Vec<(f32, u32)>, // scratch: (probability, token), reused between calls
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        Ok(Sampler { params, rng: Rng::new(params.seed), probs: Vec::new() })
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = self.params;
        if p.temperature == 0.0 || logits.len() <= 1 {
            return argmax(logits) as u32;
        }
        // temperature, then softmax in f64 for a stable sum
        let max = logits.iter().copied().filter(|x| !x.is_nan()).fold(f32::NEG_INFINITY, f32::max);
        self.probs.clear();
        let mut sum = 0f64;
        for (i, &l) in logits.iter().enumerate() {
            let e = if l.is_nan() { 0.0 } else { (((l - max) / p.temperature) as f64).exp() };
            sum += e;
            self.probs.push((e as f32, i as u32));
        }
        // NaN (every logit NaN) or no mass left: fall back to the argmax.
        if sum.is_nan() || sum <= 0.0 {
            return argmax(logits) as u32;
        }
        // most likely first; ties by token id, so the order is total and repeatable
        self.probs.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut keep = self.probs.len();
        if p.top_k > 0 {
            keep = keep.min(p.top_k);
        }
        if p.top_p < 1.0 {
            let mut cum = 0f64;
            for (i, &(e, _)) in self.probs[..keep].iter().enumerate() {
                cum += e as f64 / sum;
                if cum >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
        }
        let kept: f64 = self.probs[..keep].iter().map(|&(e, _)| e as f64).sum();
        let mut target = self.rng.next_f64() * kept;
        for &(e, tok) in &self.probs[..keep] {
            target -= e as f64;
            if target < 0.0 {
                return tok;
            }
        }
        self.probs[keep - 1].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax_lowest_index_on_tie() {
        let mut s = Sampler::new(SamplingParams::default()).unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0]), 1);
    }

    #[test]
    fn seeded_sampling_repeats_and_respects_top_k() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let p = SamplingParams { temperature: 0.8, top_k: 5, top_p: 1.0, seed: 42 };
        let a: Vec<u32> = {
            let mut s = Sampler::new(p).unwrap();
            (0..200).map(|_| s.sample(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(p).unwrap();
            (0..200).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(a, b);
        let mut top: Vec<usize> = (0..50).collect();
        top.sort_by(|&x, &y| logits[y].total_cmp(&logits[x]));
        assert!(a.iter().all(|t| top[..5].contains(&(*t as usize))));
        let distinct: std::collections::BTreeSet<_> = a.iter().collect();
        assert!(distinct.len() > 1, "sampling at temperature 0.8 should not be constant");
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // probabilities ~ [0.7, 0.2, 0.1]: top_p 0.6 keeps only the first
        let logits = [0.7f32.ln(), 0.2f32.ln(), 0.1f32.ln()];
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_k: 0, top_p: 0.6, seed: 1 }).unwrap();
        assert!((0..100).all(|_| s.sample(&logits) == 0));
        // sampling frequencies follow the distribution
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 7 }).unwrap();
        let mut counts = [0usize; 3];
        for _ in 0..20000 {
            counts[s.sample(&logits) as usize] += 1;
        }
        assert!((counts[0] as f64 / 20000.0 - 0.7).abs() < 0.02, "{counts:?}");
        assert!((counts[2] as f64 / 20000.0 - 0.1).abs() < 0.02, "{counts:?}");
    }

    #[test]
    fn bad_parameters_are_refused() {
        for p in [
            SamplingParams { temperature: -1.0, ..Default::default() },
            SamplingParams { temperature: f32::NAN, ..Default::default() },
            SamplingParams { top_p: 0.0, ..Default::default() },
            SamplingParams { top_p: 1.5, ..Default::default() },
        ] {
            assert!(Sampler::new(p).is_err(), "{p:?}");
        }
    }
}
