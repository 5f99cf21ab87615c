//! Simulation speed: the one-hour Azure conversation trace on 100 nodes (target: under 10 s on
//! one core), each system; plus the same trace 20× faster on 4 models, which makes far more
//! start-ups.
//!
//! `taskset -c 0 cargo bench -p planner --bench sim_bench` (release profile; the simulator is
//! single-threaded). Needs `../shared/data/traces/` beside the checkout (or `FAASCALE_TRACE_DIR`);
//! says so and exits if absent.

use planner::sim::{self, SimConfig, System};
use std::time::Instant;

fn main() {
    // `../shared` beside the checkout, or the directory `FAASCALE_TRACE_DIR` names.
    let dir = std::env::var("FAASCALE_TRACE_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/traces").to_string());
    let path = &format!("{dir}/AzureLLMInferenceTrace_conv.csv");
    let Ok(text) = std::fs::read_to_string(path) else {
        println!("skipped: {path} is not there");
        return;
    };
    let t = Instant::now();
    let base = sim::parse_azure_csv(&text, path).unwrap();
    println!("parsed {} requests in {:.1} ms", base.len(), t.elapsed().as_secs_f64() * 1e3);
    let m = sim::model_by_name("llama-2-7b").unwrap();
    for (label, speedup, copies) in [("1 h, 1 model", 1.0, 1usize), ("20x, 4 models", 20.0, 4)] {
        let mut reqs = base.clone();
        sim::reshape(&mut reqs, speedup, copies, sim::ModelMapping::Random, 0);
        for system in System::ALL {
            let cfg = SimConfig::paper(system, 100, vec![m.clone(); copies]);
            let mut best = f64::INFINITY;
            let mut s = None;
            for _ in 0..3 {
                let t = Instant::now();
                s = Some(sim::simulate(&cfg, &reqs).unwrap());
                best = best.min(t.elapsed().as_secs_f64());
            }
            let s = s.unwrap();
            println!(
                "{label}, 100 nodes, {}: {:.3} s best of 3 ({} requests, {} start-ups, p90 TTFT {:.3} s)",
                system.name(),
                best,
                s.requests,
                s.scale_outs,
                s.ttft_s_p90
            );
        }
    }
}
