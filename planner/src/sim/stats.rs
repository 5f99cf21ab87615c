//! Percentiles and the per-system summary.

use serde::Serialize;

/// The p-th percentile (0 ≤ p ≤ 100) of `sorted` by nearest rank; 0 when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// What one simulated system achieved on a trace.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub system: String,
    pub seed: u64,
    pub requests: usize,
    pub ttft_s_p50: f64,
    pub ttft_s_p90: f64,
    pub ttft_s_p99: f64,
    pub ttft_s_mean: f64,
    /// Time per output token after the first, mean and p90 over requests.
    pub tpot_s_mean: f64,
    pub tpot_s_p90: f64,
    /// Output tokens per second over the simulated time.
    pub throughput_tokens_per_s: f64,
    pub slo_ttft_s: f64,
    /// Fraction of requests whose TTFT met `slo_ttft_s`.
    pub slo_attainment: f64,
    /// Σ over nodes of (release − grant) × GPUs per node; loading included.
    pub gpu_seconds: f64,
    /// From the first arrival to the last completion.
    pub duration_s: f64,
    /// Start-ups (one per scale-out decision, several nodes each).
    pub scale_outs: usize,
    /// Nodes started in all (warm and cold).
    pub nodes_started: usize,
    pub nodes_started_warm: usize,
    /// Most nodes given to models at once.
    pub peak_nodes: usize,
    /// Requests first served by an execute-while-load pipeline.
    pub served_by_pipelines: usize,
    /// Wall-clock seconds the simulation took.
    pub sim_wall_s: f64,
    /// Every request's TTFT, sorted (for CDFs; not in the JSON).
    #[serde(skip)]
    pub ttft_sorted_s: Vec<f64>,
}
