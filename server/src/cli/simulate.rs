//! `faascale simulate --trace PATH --system S[,S2,...] --nodes N --model NAME[,NAME2,...]`
//!
//! Replays a request trace (the Azure LLM inference CSV, or `synthetic[:key=value,...]`) on a
//! simulated cluster with each system and prints TTFT percentiles, time per output token,
//! throughput, SLO attainment and GPU-seconds; `--svg` draws the systems' TTFT CDFs.

use planner::autoscale::AutoscalePolicy;
use planner::sim::{self, ModelMapping, Pooled, SimConfig, Summary, Synthetic, System};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// An Azure LLM inference trace CSV, or `synthetic[:rate=R,burst=X,burst_at_s=T,burst_len_s=L,duration_s=D,input=I,output=O]`.
    #[arg(long)]
    trace: String,
    /// faascale, serverlessllm, faasnet, nccl, always-warm; several separated by commas.
    #[arg(long, default_value = "faascale")]
    system: String,
    /// Nodes in the cluster.
    #[arg(long)]
    nodes: usize,
    /// llama-2-7b, llama-2-13b or llama-2-70b; several separated by commas (requests are mapped onto them).
    #[arg(long)]
    model: String,
    /// Each model named this many times as distinct functions (e.g. 4 × llama-2-7b).
    #[arg(long, default_value_t = 1)]
    copies: usize,
    /// How requests are mapped onto several models: random (seeded) or round-robin.
    #[arg(long, default_value = "random")]
    map: String,
    /// Seed of the synthetic trace's arrivals, of a real trace's window (`--window-s`) and of
    /// the random mapping onto models.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run every seed of `A-B` (or one seed `A`) and pool all their requests; overrides
    /// `--seed`. The JSON gives each percentile, SLO and GPU-seconds a 95 % bootstrap interval
    /// over the seeds (`ttft_s_p90_ci`: [lo, hi]).
    #[arg(long)]
    seeds: Option<String>,
    /// Replay a window of this many seconds of a real trace (as recorded, before --speedup),
    /// its start drawn with the seed; without it the whole trace.
    #[arg(long, allow_hyphen_values = true)]
    window_s: Option<f64>,
    /// Compute speed relative to the calibrated H200 (2: prefill and decode take half as long).
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true)]
    compute_speed: f64,
    /// faascale's routing: `finish` sends a request to an execute-while-load pipeline only
    /// when it is expected to finish sooner there than on the local instance ready soonest;
    /// `any` takes any free slot, least occupied server first.
    #[arg(long, default_value = "finish")]
    pipeline_routing: String,
    /// Divide every arrival time by this (2: the trace runs twice as fast).
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true)]
    speedup: f64,
    /// Replay only the first N requests.
    #[arg(long)]
    limit: Option<usize>,
    /// GPUs per node (a node is one GPU unless this is given).
    #[arg(long, default_value_t = 1)]
    gpus_per_node: u32,
    /// Execution blocks per model.
    #[arg(long, default_value_t = 8)]
    blocks: usize,
    /// NIC rate, Gbit/s each direction.
    #[arg(long, default_value_t = 400.0, allow_hyphen_values = true)]
    link_gbps: f64,
    /// Local SSD read rate, GB/s (0: no SSD).
    #[arg(long, default_value_t = 5.0, allow_hyphen_values = true)]
    ssd_gbytes_per_s: f64,
    /// Shared remote store rate, Gbit/s.
    #[arg(long, default_value_t = 10.0, allow_hyphen_values = true)]
    remote_gbps: f64,
    /// Batch slots of one instance.
    #[arg(long, default_value_t = 32)]
    max_batch: u32,
    /// Seconds an idle node is kept before release.
    #[arg(long, default_value_t = 30.0, allow_hyphen_values = true)]
    keep_alive_s: f64,
    /// Host memory per node for keeping models warm, GB (0: no warm tier).
    #[arg(long, default_value_t = 1000.0, allow_hyphen_values = true)]
    host_mem_gb: f64,
    /// Nodes keeping each model in host memory at the start.
    #[arg(long, default_value_t = 1)]
    warm_nodes: usize,
    /// Most multicast sources (k) per start-up.
    #[arg(long, default_value_t = 8)]
    max_sources: usize,
    /// TTFT objective for SLO attainment, seconds.
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true)]
    slo_ttft_s: f64,
    /// Print one line of JSON with the results.
    #[arg(long)]
    pub json: bool,
    /// Write the TTFT CDFs of the systems.
    #[arg(long)]
    svg: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<(), String> {
    let systems: Vec<System> = a.system.split(',').map(|s| System::parse(s.trim())).collect::<Result<_, _>>()?;
    if systems.is_empty() {
        return Err("--system: name at least one system".into());
    }
    let mut specs = Vec::new();
    if a.copies == 0 || a.copies > 1024 {
        return Err(format!("--copies {}: need 1 ..= 1024", a.copies));
    }
    for name in a.model.split(',') {
        let spec = sim::model_by_name(name.trim()).map_err(|e| format!("--model: {e}"))?;
        for _ in 0..a.copies {
            specs.push(spec.clone());
        }
    }
    let mapping = match a.map.as_str() {
        "random" => ModelMapping::Random,
        "round-robin" => ModelMapping::RoundRobin,
        other => return Err(format!("--map {other}: expected random or round-robin")),
    };
    if !(a.speedup.is_finite() && a.speedup > 0.0) {
        return Err(format!("--speedup {}: must be a positive number", a.speedup));
    }
    let seeds = parse_seeds(a.seeds.as_deref(), a.seed)?;
    if let Some(w) = a.window_s {
        if !(w.is_finite() && w > 0.0) {
            return Err(format!("--window-s {w}: must be a positive number of seconds"));
        }
    }
    if !(a.compute_speed.is_finite() && a.compute_speed > 0.0 && a.compute_speed <= 1000.0) {
        return Err(format!("--compute-speed {}: must be a number in (0, 1000]", a.compute_speed));
    }
    let pipeline_routing = match a.pipeline_routing.as_str() {
        "finish" => true,
        "any" => false,
        other => return Err(format!("--pipeline-routing {other}: expected finish or any")),
    };
    let synthetic = if a.trace.starts_with("synthetic") {
        Some(Synthetic::parse(&a.trace).map_err(|e| format!("--trace: {e}"))?)
    } else {
        None
    };
    let base = match &synthetic {
        Some(_) => Vec::new(),
        None => {
            let text = std::fs::read(&a.trace).map_err(|e| format!("--trace {}: {e}", a.trace))?;
            let text = String::from_utf8(text).map_err(|e| format!("--trace {}: not UTF-8 text: {e}", a.trace))?;
            sim::parse_azure_csv(&text, &a.trace).map_err(|e| e.to_string())?
        }
    };
    let mut traces = Vec::with_capacity(seeds.len());
    for &seed in &seeds {
        let mut reqs = match &synthetic {
            Some(s) => s.generate(seed),
            None => match a.window_s {
                Some(w) => sim::window(&base, w, seed),
                None => base.clone(),
            },
        };
        if let Some(n) = a.limit {
            reqs.truncate(n);
        }
        if reqs.is_empty() {
            return Err(format!("--trace: no requests to replay (seed {seed})"));
        }
        sim::reshape(&mut reqs, a.speedup, specs.len(), mapping, seed);
        traces.push(reqs);
    }
    let gbps = |flag: &str, x: f64| -> Result<f64, String> {
        if x.is_finite() && x > 0.0 {
            Ok(x * 1e9 / 8.0)
        } else {
            Err(format!("{flag} {x}: must be a positive number"))
        }
    };
    let nic = gbps("--link-gbps", a.link_gbps)?;
    let remote = gbps("--remote-gbps", a.remote_gbps)?;
    if !(a.ssd_gbytes_per_s.is_finite() && a.ssd_gbytes_per_s >= 0.0) {
        return Err(format!("--ssd-gbytes-per-s {}: must be a number ≥ 0", a.ssd_gbytes_per_s));
    }
    if !(a.keep_alive_s.is_finite() && a.keep_alive_s >= 0.0) {
        return Err(format!("--keep-alive-s {}: must be a number ≥ 0", a.keep_alive_s));
    }
    if !(a.slo_ttft_s.is_finite() && a.slo_ttft_s > 0.0) {
        return Err(format!("--slo-ttft-s {}: must be a positive number", a.slo_ttft_s));
    }
    if !(a.host_mem_gb.is_finite() && a.host_mem_gb >= 0.0 && a.host_mem_gb <= 1e6) {
        return Err(format!("--host-mem-gb {}: must be a number in 0 ..= 1000000", a.host_mem_gb));
    }
    let mut results: Vec<(Pooled, Summary)> = Vec::new();
    for &system in &systems {
        let mut cfg = SimConfig::paper(system, a.nodes, specs.clone());
        cfg.gpus_per_node = a.gpus_per_node;
        cfg.blocks = a.blocks;
        cfg.nic_bytes_per_s = nic;
        cfg.remote_bytes_per_s = remote;
        cfg.ssd_bytes_per_s = a.ssd_gbytes_per_s * 1e9;
        cfg.max_batch = a.max_batch;
        cfg.autoscale = AutoscalePolicy { keep_alive_s: a.keep_alive_s, max_nodes: a.nodes, ..Default::default() };
        cfg.warm_at_start = a.warm_nodes;
        cfg.host_mem_bytes = (a.host_mem_gb * 1e9) as u64;
        cfg.max_sources = a.max_sources;
        cfg.slo_ttft_s = a.slo_ttft_s;
        cfg.compute_speed = a.compute_speed;
        cfg.pipeline_routing = pipeline_routing;
        let mut runs: Vec<Summary> = Vec::with_capacity(seeds.len());
        for (&seed, reqs) in seeds.iter().zip(&traces) {
            cfg.seed = seed;
            runs.push(sim::simulate(&cfg, reqs).map_err(|e| format!("{}: {e}", system.name()))?);
        }
        let p = Pooled::from_runs(&runs);
        log::info!(
            "{}: {} requests over {} seed(s), TTFT p50 {:.3} s p90 {:.3} s [{:.3}, {:.3}] p99 {:.3} s, SLO {:.1} %, {:.0} GPU-s per run, {} start-ups, {} moves, simulated in {:.2} s",
            p.system,
            p.requests,
            seeds.len(),
            p.ttft_s_p50,
            p.ttft_s_p90,
            p.ttft_s_p90_ci[0],
            p.ttft_s_p90_ci[1],
            p.ttft_s_p99,
            p.slo_attainment * 100.0,
            p.gpu_seconds,
            p.scale_outs,
            p.moved_requests,
            p.sim_wall_s
        );
        let median = runs.iter().position(|r| r.seed == p.median_seed).unwrap_or(0);
        results.push((p, runs.swap_remove(median)));
    }
    println!(
        "{:<14} {:>9} {:>21} {:>9} {:>9} {:>8} {:>12}",
        "system", "p50 s", "p90 s [95% CI]", "p99 s", "TPOT ms", "SLO %", "GPU-s"
    );
    for (s, _) in &results {
        println!(
            "{:<14} {:>9.3} {:>7.3} [{:.3}, {:.3}] {:>9.3} {:>9.1} {:>8.1} {:>12.0}",
            s.system,
            s.ttft_s_p50,
            s.ttft_s_p90,
            s.ttft_s_p90_ci[0],
            s.ttft_s_p90_ci[1],
            s.ttft_s_p99,
            s.tpot_s_mean * 1e3,
            s.slo_attainment * 100.0,
            s.gpu_seconds,
        );
    }
    if let Some(path) = &a.svg {
        let median: Vec<Summary> = results.iter().map(|r| r.1.clone()).collect();
        std::fs::write(path, cdf_svg(&median, &a)).map_err(|e| format!("--svg {}: {e}", path.display()))?;
    }
    if a.json {
        let line = if results.len() == 1 {
            serde_json::to_value(&results[0].0).map_err(|e| e.to_string())?
        } else {
            let mut m = serde_json::Map::new();
            for (s, _) in &results {
                m.insert(s.system.clone(), serde_json::to_value(s).map_err(|e| e.to_string())?);
            }
            serde_json::json!({ "systems": m })
        };
        println!("{line}");
    }
    Ok(())
}

/// `--seeds A-B` (inclusive) or `A`; without it, the one `--seed`.
fn parse_seeds(spec: Option<&str>, seed: u64) -> Result<Vec<u64>, String> {
    let Some(spec) = spec else { return Ok(vec![seed]) };
    let num = |x: &str| x.trim().parse::<u64>().map_err(|_| format!("--seeds {spec}: expected A-B or A"));
    let (a, b) = match spec.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => (num(spec)?, num(spec)?),
    };
    if b < a {
        return Err(format!("--seeds {spec}: the range is empty"));
    }
    if b - a >= 1024 {
        return Err(format!("--seeds {spec}: at most 1024 seeds"));
    }
    Ok((a..=b).collect())
}

/// TTFT CDFs (each system's median seed, see `Pooled::median_seed`), log-scaled TTFT axis from
/// 1 ms to the largest TTFT.
fn cdf_svg(results: &[Summary], a: &Args) -> String {
    use std::fmt::Write;
    let (left, top, width, height) = (60.0, 30.0, 640.0, 360.0);
    let colors = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#7f7f7f"];
    let lo = 1e-3f64;
    let hi = results.iter().filter_map(|s| s.ttft_sorted_s.last().copied()).fold(lo * 10.0, f64::max);
    let (llo, lhi) = (lo.log10(), hi.log10().ceil());
    let x = |t: f64| left + (t.max(lo).log10() - llo) / (lhi - llo) * width;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="11">"#,
        left + width + 160.0,
        top + height + 50.0
    );
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="16">TTFT CDF (median seed): {} on {} nodes, trace {}, speed-up {}</text>"#,
        a.model, a.nodes, a.trace, a.speedup
    );
    let _ = writeln!(s, r#"<rect x="{left}" y="{top}" width="{width}" height="{height}" fill="none" stroke="black"/>"#);
    let mut d = llo as i32;
    while d as f64 <= lhi {
        let t = 10f64.powi(d);
        let xx = x(t);
        let _ = writeln!(
            s,
            r#"<line x1="{xx:.1}" y1="{top}" x2="{xx:.1}" y2="{}" stroke="lightgray"/><text x="{:.1}" y="{}">{}</text>"#,
            top + height,
            xx - 10.0,
            top + height + 14.0,
            if t < 1.0 { format!("{} ms", t * 1e3) } else { format!("{t} s") }
        );
        d += 1;
    }
    for q in [0.0, 0.5, 0.9, 0.99, 1.0] {
        let y = top + height * (1.0 - q);
        let _ = writeln!(
            s,
            r#"<line x1="{left}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="lightgray"/><text x="{}" y="{:.1}">{q}</text>"#,
            left + width,
            left - 34.0,
            y + 4.0
        );
    }
    let _ =
        writeln!(s, r#"<text x="{}" y="{}">TTFT (log scale)</text>"#, left + width / 2.0 - 40.0, top + height + 32.0);
    for (i, r) in results.iter().enumerate() {
        let c = colors[i % colors.len()];
        let n = r.ttft_sorted_s.len().max(1);
        // At most 2,000 points per curve.
        let step = n.div_ceil(2000);
        let mut pts = String::new();
        for (j, &t) in r.ttft_sorted_s.iter().enumerate().step_by(step) {
            let _ = write!(pts, "{:.1},{:.1} ", x(t), top + height * (1.0 - (j + 1) as f64 / n as f64));
        }
        if let Some(&t) = r.ttft_sorted_s.last() {
            let _ = write!(pts, "{:.1},{:.1}", x(t), top);
        }
        let _ = writeln!(s, r#"<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="2"/>"#);
        let y = top + 14.0 + 16.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="12" height="3" fill="{c}"/><text x="{}" y="{}">{} (p90 {:.3} s)</text>"#,
            left + width + 10.0,
            y - 4.0,
            left + width + 26.0,
            y,
            r.system,
            r.ttft_s_p90
        );
    }
    s.push_str("</svg>\n");
    s
}
