//! Planning speed: 1,000 nodes × 64 execution blocks, k = 8 (target: under 50 ms).
//!
//! `cargo bench -p planner --bench plan_bench` (release profile). Prints, per model size, the
//! best and median planning time over several runs, the evaluation time, and the plan's size.

use planner::*;
use std::time::Instant;

fn main() {
    let (n, k, exec_blocks) = (1000usize, 8usize, 64usize);
    let runs = 11;
    for (name, bytes) in [("llama-2-7b", 13_500_000_000u64), ("llama-2-70b", 138_000_000_000)] {
        let layout = uniform_layout(name, bytes, exec_blocks, None).unwrap();
        let cluster = Cluster::uniform(n, 50e9, 10e9);
        let sources: Vec<u32> = (0..k as u32).collect();
        let receivers: Vec<u32> = (k as u32..n as u32).collect();
        let req = MulticastRequest { cluster: &cluster, layout: &layout, sources: &sources, receivers: &receivers };
        for algo in [Algo::Faascale, Algo::Nccl, Algo::Faasnet] {
            let mut times = Vec::new();
            let mut plan_out = None;
            for _ in 0..runs {
                let t = Instant::now();
                let p = plan(algo, &req).unwrap();
                times.push(t.elapsed().as_secs_f64() * 1e3);
                plan_out = Some(p);
            }
            let p = plan_out.unwrap();
            times.sort_by(f64::total_cmp);
            let t = Instant::now();
            let ev = evaluate(&p, &cluster, DEFAULT_LATENCY_S).unwrap();
            let eval_ms = t.elapsed().as_secs_f64() * 1e3;
            println!(
                "{name} {} nodes k={k} {exec_blocks} exec blocks, {} transfer blocks of {} B: {}: plan best {:.1} ms, median {:.1} ms ({} transfers); evaluate {:.1} ms; complete {:.3} s, first copy {:.3} s",
                n,
                layout.transfer_blocks.len(),
                layout.transfer_blocks[0].len,
                algo.name(),
                times[0],
                times[runs / 2],
                p.transfers.len(),
                eval_ms,
                ev.complete_s,
                ev.first_copy_s
            );
        }
    }
}
