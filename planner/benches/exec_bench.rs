//! Execution-planning speed: `exec_plan` over a faascale multicast of 1,000 nodes × 64
//! execution blocks (target: under 50 ms), for k = 8 and k = 2 sources.
//!
//! `taskset -c 0 cargo bench -p planner --bench exec_bench` (release profile). Prints, per
//! model size and k, the best and median time of `exec_plan` over several runs, the number of
//! distinct block-arrival times it walks, and the size of the plan it returns.

use planner::*;
use std::time::Instant;

const RUNS: usize = 5;

/// Sorted timings (milliseconds) of `RUNS` runs of `f`, and its last result.
fn time<T>(mut f: impl FnMut() -> T) -> (Vec<f64>, T) {
    let mut ms = Vec::with_capacity(RUNS);
    let mut last = None;
    for _ in 0..RUNS {
        let t = Instant::now();
        let out = f();
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        last = Some(out);
    }
    ms.sort_by(f64::total_cmp);
    (ms, last.expect("RUNS > 0"))
}

fn main() {
    // `cargo bench -p planner --bench exec_bench -- 70b-k2`: only the runs whose label contains it.
    let only: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let (n, exec_blocks) = (1000usize, 64usize);
    for (name, bytes) in [("llama-2-7b", 13_500_000_000u64), ("llama-2-70b", 138_000_000_000)] {
        let layout = uniform_layout(name, bytes, exec_blocks, None).unwrap();
        let cluster = Cluster::uniform(n, 50e9, 10e9);
        for k in [8usize, 2] {
            let label = format!("{}-k{k}", &name[8..]);
            if only.as_ref().is_some_and(|o| !label.contains(o.as_str())) {
                continue;
            }
            let sources: Vec<u32> = (0..k as u32).collect();
            let receivers: Vec<u32> = (k as u32..n as u32).collect();
            let req = MulticastRequest { cluster: &cluster, layout: &layout, sources: &sources, receivers: &receivers };
            let p = plan(Algo::Faascale, &req).unwrap();
            let ev = evaluate(&p, &cluster, DEFAULT_LATENCY_S).unwrap();
            let arr = exec::exec_arrivals(&ev, &layout).unwrap();
            let mut times: Vec<f64> =
                receivers.iter().flat_map(|&r| arr[r as usize].iter().flatten().copied()).collect();
            times.sort_by(f64::total_cmp);
            times.dedup();
            let (ms, e) = time(|| exec_plan(&ev, &layout, &receivers).unwrap());
            let (arr_ms, _) = time(|| exec::exec_arrivals(&ev, &layout).unwrap());
            let (walk_ms, _) = time(|| exec_plan_from_arrivals(&arr, &receivers, exec_blocks).unwrap());
            let multi = e.pipelines.iter().filter(|p| !p.is_local()).count();
            let first_pipeline_s = e.pipelines.iter().map(|p| p.valid_from_s).fold(f64::INFINITY, f64::min);
            let first_local_s = e.handoffs.first().map_or(f64::INFINITY, |h| h.at_s);
            println!(
                "{name} {n} nodes k={k} {exec_blocks} exec blocks ({} transfer blocks): exec_plan best {:.1} ms, median {:.1} ms (exec_arrivals best {:.1} ms, exec_plan_from_arrivals best {:.1} ms); {} arrival times, {} pipelines ({multi} multi-stage); first pipeline {first_pipeline_s:.3} s, first local instance {first_local_s:.3} s, first copy (transfer blocks) {:.3} s",
                layout.transfer_blocks.len(),
                ms[0],
                ms[RUNS / 2],
                arr_ms[0],
                walk_ms[0],
                times.len(),
                e.pipelines.len(),
                ev.first_copy_s
            );
        }
    }
}
