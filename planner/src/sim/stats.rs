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
    /// Moves of in-flight requests off an ending pipeline (each pays a re-prefill).
    pub moved_requests: usize,
    /// Admissions to a pipeline expected to finish (a move at the pipeline's end included) no
    /// sooner than waiting for the local instance ready soonest (0 with `pipeline_routing`).
    pub pipeline_admissions_later: usize,
    /// Wall-clock seconds the simulation took.
    pub sim_wall_s: f64,
    /// Every request's TTFT, sorted (for CDFs; not in the JSON).
    #[serde(skip)]
    pub ttft_sorted_s: Vec<f64>,
}

/// Bootstrap replicates behind every confidence interval.
pub const BOOTSTRAP_REPS: usize = 1000;

/// The k-th smallest (1-based) of the multiset holding `counts[g]` copies of each sorted group
/// `groups[g]`, searched among the values of `all` (every value, sorted).
fn kth_of_union(groups: &[Vec<f64>], counts: &[u32], all: &[f64], k: u64) -> f64 {
    let below = |v: f64| -> u64 {
        groups.iter().zip(counts).map(|(g, &c)| u64::from(c) * g.partition_point(|&x| x <= v) as u64).sum()
    };
    let (mut lo, mut hi) = (0usize, all.len() - 1);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if below(all[mid]) >= k {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    all[lo]
}

fn nearest_rank(n: u64, p: f64) -> u64 {
    (((p / 100.0) * n as f64).ceil() as u64).clamp(1, n.max(1))
}

/// The p-th percentile (nearest rank) of every value of every group pooled, and its 95 %
/// bootstrap confidence interval: with two or more groups (runs with different seeds) the
/// replicates resample whole groups with replacement (requests of one run are not
/// independent); with one group they resample its values. Each `groups[g]` must be sorted.
/// Deterministic in `seed`. (0, [0, 0]) when there are no values.
pub fn pooled_percentile_ci(groups: &[Vec<f64>], p: f64, reps: usize, seed: u64) -> (f64, [f64; 2]) {
    let mut all: Vec<f64> = groups.iter().flatten().copied().collect();
    if all.is_empty() {
        return (0.0, [0.0, 0.0]);
    }
    all.sort_by(f64::total_cmp);
    let point = percentile(&all, p);
    let mut rng = super::rng::Rng::new(seed ^ 0x626f_6f74);
    let mut reps_out = Vec::with_capacity(reps);
    if groups.len() >= 2 {
        let mut counts = vec![0u32; groups.len()];
        for _ in 0..reps {
            counts.iter_mut().for_each(|c| *c = 0);
            for _ in 0..groups.len() {
                counts[rng.below(groups.len() as u64) as usize] += 1;
            }
            let n: u64 = groups.iter().zip(&counts).map(|(g, &c)| u64::from(c) * g.len() as u64).sum();
            if n == 0 {
                continue;
            }
            reps_out.push(kth_of_union(groups, &counts, &all, nearest_rank(n, p)));
        }
    } else {
        let g = &all;
        let mut sample = vec![0.0; g.len()];
        for _ in 0..reps {
            for x in sample.iter_mut() {
                *x = g[rng.below(g.len() as u64) as usize];
            }
            let k = nearest_rank(g.len() as u64, p) as usize - 1;
            let (_, v, _) = sample.select_nth_unstable_by(k, f64::total_cmp);
            reps_out.push(*v);
        }
    }
    (point, ci95(reps_out, point))
}

/// Σ num / Σ den over groups (a pooled fraction, or with den = 1 the mean of per-run values),
/// with its 95 % bootstrap interval over groups (degenerate with one group: one run shows no
/// run-to-run variation).
pub fn pooled_ratio_ci(groups: &[(f64, f64)], reps: usize, seed: u64) -> (f64, [f64; 2]) {
    let (num, den) = groups.iter().fold((0.0, 0.0), |a, g| (a.0 + g.0, a.1 + g.1));
    if den <= 0.0 {
        return (0.0, [0.0, 0.0]);
    }
    let point = num / den;
    if groups.len() < 2 {
        return (point, [point, point]);
    }
    let mut rng = super::rng::Rng::new(seed ^ 0x0072_6174_696f);
    let mut out = Vec::with_capacity(reps);
    for _ in 0..reps {
        let (mut a, mut b) = (0.0, 0.0);
        for _ in 0..groups.len() {
            let g = groups[rng.below(groups.len() as u64) as usize];
            a += g.0;
            b += g.1;
        }
        if b > 0.0 {
            out.push(a / b);
        }
    }
    (point, ci95(out, point))
}

/// The 2.5th and 97.5th percentiles of the replicates (the point itself when there are none).
fn ci95(mut reps: Vec<f64>, point: f64) -> [f64; 2] {
    if reps.is_empty() {
        return [point, point];
    }
    reps.sort_by(f64::total_cmp);
    [percentile(&reps, 2.5), percentile(&reps, 97.5)]
}

/// One system over several seeds: every request of every seed pooled, with 95 % bootstrap
/// confidence intervals (`*_ci`, over seeds; see `pooled_percentile_ci`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Pooled {
    pub system: String,
    pub seeds: Vec<u64>,
    /// Requests of all seeds.
    pub requests: usize,
    pub ttft_s_p50: f64,
    pub ttft_s_p50_ci: [f64; 2],
    pub ttft_s_p90: f64,
    pub ttft_s_p90_ci: [f64; 2],
    pub ttft_s_p99: f64,
    pub ttft_s_p99_ci: [f64; 2],
    pub ttft_s_mean: f64,
    /// Mean over requests of all seeds.
    pub tpot_s_mean: f64,
    pub slo_ttft_s: f64,
    /// Fraction of all requests whose TTFT met the SLO.
    pub slo_attainment: f64,
    pub slo_attainment_ci: [f64; 2],
    /// Mean over seeds of one run's GPU-seconds.
    pub gpu_seconds: f64,
    pub gpu_seconds_ci: [f64; 2],
    /// Mean over seeds.
    pub throughput_tokens_per_s: f64,
    pub scale_outs: usize,
    pub nodes_started: usize,
    pub peak_nodes: usize,
    pub served_by_pipelines: usize,
    pub moved_requests: usize,
    pub pipeline_admissions_later: usize,
    /// The seed whose run has the median P90 TTFT (what the plots show).
    pub median_seed: u64,
    pub sim_wall_s: f64,
}

impl Pooled {
    /// Pools `runs` (one system, one run per seed; not empty).
    pub fn from_runs(runs: &[Summary]) -> Pooled {
        let groups: Vec<Vec<f64>> = runs.iter().map(|r| r.ttft_sorted_s.clone()).collect();
        let seed = runs.iter().fold(0u64, |a, r| a.rotate_left(7) ^ r.seed);
        let (p50, p50_ci) = pooled_percentile_ci(&groups, 50.0, BOOTSTRAP_REPS, seed);
        let (p90, p90_ci) = pooled_percentile_ci(&groups, 90.0, BOOTSTRAP_REPS, seed + 1);
        let (p99, p99_ci) = pooled_percentile_ci(&groups, 99.0, BOOTSTRAP_REPS, seed + 2);
        let slo: Vec<(f64, f64)> =
            runs.iter().map(|r| (r.slo_attainment * r.requests as f64, r.requests as f64)).collect();
        let (slo, slo_ci) = pooled_ratio_ci(&slo, BOOTSTRAP_REPS, seed + 3);
        let gpu: Vec<(f64, f64)> = runs.iter().map(|r| (r.gpu_seconds, 1.0)).collect();
        let (gpu, gpu_ci) = pooled_ratio_ci(&gpu, BOOTSTRAP_REPS, seed + 4);
        let requests: usize = runs.iter().map(|r| r.requests).sum();
        let n = requests.max(1) as f64;
        let mut by_p90: Vec<&Summary> = runs.iter().collect();
        by_p90.sort_by(|a, b| a.ttft_s_p90.total_cmp(&b.ttft_s_p90).then(a.seed.cmp(&b.seed)));
        let k = runs.len() as f64;
        Pooled {
            system: runs[0].system.clone(),
            seeds: runs.iter().map(|r| r.seed).collect(),
            requests,
            ttft_s_p50: p50,
            ttft_s_p50_ci: p50_ci,
            ttft_s_p90: p90,
            ttft_s_p90_ci: p90_ci,
            ttft_s_p99: p99,
            ttft_s_p99_ci: p99_ci,
            ttft_s_mean: runs.iter().map(|r| r.ttft_s_mean * r.requests as f64).sum::<f64>() / n,
            tpot_s_mean: runs.iter().map(|r| r.tpot_s_mean * r.requests as f64).sum::<f64>() / n,
            slo_ttft_s: runs[0].slo_ttft_s,
            slo_attainment: slo,
            slo_attainment_ci: slo_ci,
            gpu_seconds: gpu,
            gpu_seconds_ci: gpu_ci,
            throughput_tokens_per_s: runs.iter().map(|r| r.throughput_tokens_per_s).sum::<f64>() / k,
            scale_outs: runs.iter().map(|r| r.scale_outs).sum(),
            nodes_started: runs.iter().map(|r| r.nodes_started).sum(),
            peak_nodes: runs.iter().map(|r| r.peak_nodes).max().unwrap_or(0),
            served_by_pipelines: runs.iter().map(|r| r.served_by_pipelines).sum(),
            moved_requests: runs.iter().map(|r| r.moved_requests).sum(),
            pipeline_admissions_later: runs.iter().map(|r| r.pipeline_admissions_later).sum(),
            median_seed: by_p90[(by_p90.len() - 1) / 2].seed,
            sim_wall_s: runs.iter().map(|r| r.sim_wall_s).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_runs_give_a_point_interval() {
        let g: Vec<f64> = (1..=100).map(f64::from).collect();
        let groups = vec![g; 16];
        let (p, ci) = pooled_percentile_ci(&groups, 90.0, 500, 1);
        assert_eq!((p, ci), (90.0, [90.0, 90.0]));
    }

    #[test]
    fn seed_level_bootstrap_matches_theory() {
        // 16 runs, run g all at value g: the pooled median is 8; resampling 16 runs with
        // replacement puts the median's 95 % interval around 5 .. 12.
        let groups: Vec<Vec<f64>> = (1..=16).map(|g| vec![f64::from(g); 50]).collect();
        let (p, [lo, hi]) = pooled_percentile_ci(&groups, 50.0, 2000, 7);
        assert_eq!(p, 8.0);
        assert!((3.0..=7.0).contains(&lo) && (10.0..=14.0).contains(&hi), "[{lo}, {hi}]");
        // The mean of 1 ..= 16: 8.5, standard error sqrt((16² − 1) / 12) / 4 = 1.15, so the
        // interval is about 8.5 ± 2.26.
        let runs: Vec<(f64, f64)> = (1..=16).map(|g| (f64::from(g), 1.0)).collect();
        let (m, [lo, hi]) = pooled_ratio_ci(&runs, 4000, 3);
        assert_eq!(m, 8.5);
        assert!((lo - 6.24).abs() < 0.5 && (hi - 10.76).abs() < 0.5, "[{lo}, {hi}]");
        // One run: resample its values; the interval holds the point.
        let one = vec![(1..=1000).map(f64::from).collect::<Vec<_>>()];
        let (p, [lo, hi]) = pooled_percentile_ci(&one, 90.0, 1000, 5);
        assert!(lo <= p && p <= hi && hi - lo < 60.0 && hi - lo > 10.0, "{p} [{lo}, {hi}]");
    }
}
