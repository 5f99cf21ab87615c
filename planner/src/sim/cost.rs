//! The compute cost model: how long a prefill and a decode step take on one GPU.
//!
//! Calibrated on `../shared/data/calibration/h200-llama2-layer-ms.json` (one NVIDIA H200,
//! PyTorch 2.11 eager, bf16, per layer, median of 20 runs) and the figures of that directory's
//! README (same card, same day):
//! - prefill: the measured per-layer times at T = 128, 512 and 2048 tokens, interpolated
//!   linearly in T, extrapolated past 2048 with the 512→2048 slope, and the T = 128 figure
//!   below 128 (eager launches dominate there). At T ≥ 512 prefill is near compute-bound, so a
//!   fused engine would not be much faster: we keep the measurement.
//! - decode: eager PyTorch was launch-bound at small batch (7B, b = 1: 0.33 ms per layer where
//!   reading the layer's 405 MB takes about 0.1 ms), so decode uses a roofline instead: the
//!   larger of (weights + the batch's KV cache) / HBM bytes/s and 2 · parameters · batch /
//!   GEMM FLOP/s, plus a fixed per-layer overhead. HBM bytes/s: the device-to-device copy
//!   figure, 4.16 TB/s (README); FLOP/s: cuBLAS bf16 GEMM 4096³, 635 TFLOP/s (README); the
//!   overhead, 20 µs per layer, is our assumption (about 8 kernels at 2.5 µs each). The
//!   measured eager figure at b = 128 (7B: 0.66 ms) is checked against this roofline in a test.
//! - the LM head (vocabulary × hidden bf16 weights) is read once per step at HBM rate.
//!
//! A node with several GPUs is costed as one GPU (no tensor-parallel speed-up is assumed).

/// A model the simulator knows: Llama-2 shapes (Touvron et al., 2023, Table 1 and the HF
/// configs) with the measured per-layer weight bytes and times.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    pub name: &'static str,
    pub layers: u32,
    pub hidden: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub vocab: u32,
    pub max_context: u32,
    /// Weight bytes of one decoder layer (calibration file, `layer_bytes`).
    pub layer_bytes: u64,
    /// Prefill, ms per layer at T = 128, 512, 2048 (calibration file).
    pub prefill_ms_per_layer: [f64; 3],
    /// Eager decode, ms per layer, b = 128, context 1024 (calibration file; used only to check
    /// the roofline).
    pub eager_decode_b128_ms_per_layer: f64,
}

impl ModelSpec {
    /// Embedding table plus LM head, bf16 (untied in Llama-2).
    pub fn embed_bytes(&self) -> u64 {
        2 * 2 * u64::from(self.vocab) * u64::from(self.hidden)
    }

    /// Every weight byte: layers, embedding, head.
    pub fn model_bytes(&self) -> u64 {
        u64::from(self.layers) * self.layer_bytes + self.embed_bytes()
    }

    /// KV cache bytes per token per layer (K and V, bf16).
    pub fn kv_bytes_per_token_layer(&self) -> u64 {
        2 * 2 * u64::from(self.kv_heads) * u64::from(self.head_dim)
    }

    /// Bytes of one token's hidden state on the wire between pipeline stages (bf16).
    pub fn hidden_bytes_per_token(&self) -> u64 {
        2 * u64::from(self.hidden)
    }
}

/// The models `--model` accepts.
pub fn models() -> [ModelSpec; 3] {
    [
        ModelSpec {
            name: "llama-2-7b",
            layers: 32,
            hidden: 4096,
            kv_heads: 32,
            head_dim: 128,
            vocab: 32_000,
            max_context: 4096,
            layer_bytes: 404_766_720,
            prefill_ms_per_layer: [0.19548879861831664, 0.365122389793396, 1.3611831665039062],
            eager_decode_b128_ms_per_layer: 0.6642839908599854,
        },
        ModelSpec {
            name: "llama-2-13b",
            layers: 40,
            hidden: 5120,
            kv_heads: 40,
            head_dim: 128,
            vocab: 32_000,
            max_context: 4096,
            layer_bytes: 634_408_960,
            prefill_ms_per_layer: [0.2834439992904663, 0.5591487884521484, 2.0400344848632814],
            eager_decode_b128_ms_per_layer: 0.8904591560363769,
        },
        ModelSpec {
            name: "llama-2-70b",
            layers: 80,
            hidden: 8192,
            kv_heads: 8,
            head_dim: 128,
            vocab: 32_000,
            max_context: 4096,
            layer_bytes: 1_711_308_800,
            prefill_ms_per_layer: [0.6968544006347657, 1.2895888328552245, 5.559091186523437],
            eager_decode_b128_ms_per_layer: 0.8299615859985352,
        },
    ]
}

/// A model by name, or an error listing the known ones.
pub fn model_by_name(name: &str) -> Result<ModelSpec, String> {
    models().into_iter().find(|m| m.name == name).ok_or_else(|| {
        let known: Vec<&str> = models().iter().map(|m| m.name).collect();
        format!("unknown model {name:?}; known: {}", known.join(", "))
    })
}

/// The GPU figures the roofline uses.
#[derive(Clone, Debug, PartialEq)]
pub struct Gpu {
    pub hbm_bytes_per_s: f64,
    pub gemm_flop_per_s: f64,
    pub overhead_s_per_layer: f64,
}

impl Gpu {
    /// NVIDIA H200, from the calibration README (see the module comment).
    pub const H200: Gpu = Gpu { hbm_bytes_per_s: 4.16e12, gemm_flop_per_s: 635e12, overhead_s_per_layer: 20e-6 };
}

/// Prefill of `tokens` prompt tokens (one sequence, or the sum over a batch) over `layers`
/// layers, seconds.
pub fn prefill_s(m: &ModelSpec, layers: u32, tokens: u32) -> f64 {
    let [a, b, c] = m.prefill_ms_per_layer;
    let t = f64::from(tokens);
    let ms = if t <= 128.0 {
        a
    } else if t <= 512.0 {
        a + (b - a) * (t - 128.0) / 384.0
    } else {
        b + (c - b) * (t - 512.0) / 1536.0
    };
    ms * 1e-3 * f64::from(layers)
}

/// One decode step over `layers` layers for `batch` sequences whose contexts total
/// `context_tokens`, seconds (roofline, see the module comment).
pub fn decode_step_s(m: &ModelSpec, gpu: &Gpu, layers: u32, batch: u32, context_tokens: u64) -> f64 {
    let bytes = m.layer_bytes as f64 + context_tokens as f64 * m.kv_bytes_per_token_layer() as f64;
    let params = m.layer_bytes as f64 / 2.0;
    let per_layer = (bytes / gpu.hbm_bytes_per_s).max(2.0 * params * f64::from(batch) / gpu.gemm_flop_per_s)
        + gpu.overhead_s_per_layer;
    per_layer * f64::from(layers)
}

/// The LM head's share of a step (read once per step), seconds.
pub fn head_s(m: &ModelSpec, gpu: &Gpu) -> f64 {
    (m.embed_bytes() / 2) as f64 / gpu.hbm_bytes_per_s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_published_models() {
        let gb = |m: &ModelSpec| m.model_bytes() as f64 / 1e9;
        let [a, b, c] = models();
        assert!((gb(&a) - 13.48).abs() < 0.05, "{}", gb(&a));
        assert!((gb(&b) - 26.03).abs() < 0.05, "{}", gb(&b));
        assert!((gb(&c) - 137.96).abs() < 0.1, "{}", gb(&c));
        assert!(model_by_name("llama-3").unwrap_err().contains("llama-2-7b"));
    }

    #[test]
    fn prefill_interpolates_the_measurements() {
        let m = &models()[0];
        assert!((prefill_s(m, 1, 512) * 1e3 - 0.365122389793396).abs() < 1e-12);
        assert!((prefill_s(m, 32, 2048) * 1e3 - 32.0 * 1.3611831665039062).abs() < 1e-9);
        assert_eq!(prefill_s(m, 1, 10), prefill_s(m, 1, 128));
        let mut last = 0.0;
        for t in (1..8192).step_by(37) {
            let x = prefill_s(m, 1, t);
            assert!(x >= last);
            last = x;
        }
    }

    #[test]
    fn decode_roofline_against_eager_measurements() {
        for m in models() {
            // b = 1: the roofline is the weight read, well under eager's launch-bound figure.
            let b1 = decode_step_s(&m, &Gpu::H200, 1, 1, 1024) * 1e3;
            let weights_ms = m.layer_bytes as f64 / 4.16e12 * 1e3;
            assert!(b1 > weights_ms && b1 < weights_ms + 0.05, "{}: {b1}", m.name);
            // b = 128 over 1024 tokens each: eager is no longer launch-bound; the roofline is
            // below it but within 2.5×.
            let b128 = decode_step_s(&m, &Gpu::H200, 1, 128, 128 * 1024) * 1e3;
            let eager = m.eager_decode_b128_ms_per_layer;
            assert!(b128 < eager && b128 * 2.5 > eager, "{}: roofline {b128} ms, eager {eager} ms", m.name);
        }
    }
}
