//! `first_copy_lower_bound_s` is a lower bound: no plan's evaluation beats it; and the NCCL
//! chain of the start-up planner is the evaluator's time for an NCCL-chunked chain plan.

use planner::multicast::{plan, Algo, MulticastRequest};
use planner::sim::rng::Rng;
use planner::startup::nccl_chain;
use planner::{
    evaluate, evaluate_busy, first_copy_lower_bound_s, uniform_layout, Cluster, Forwarding, ModelPlacement, Tier,
};

#[test]
fn no_plan_beats_the_first_copy_bound() {
    let mut rng = Rng::new(11);
    for case in 0..300 {
        let n = 2 + rng.below(24) as usize;
        let k = 1 + rng.below(n as u64 - 1) as usize;
        let blocks = 1 + rng.below(8) as usize;
        let bytes = (1 + rng.below(64)) << 20;
        let mut cluster = Cluster::uniform(n, [1e9, 12.5e9, 50e9][rng.below(3) as usize], 1.25e9);
        for node in &mut cluster.nodes {
            node.nic_bps *= 1.0 + rng.below(3) as f64; // uneven NICs
            node.ssd_bps = [0.0, 2e9, 5e9][rng.below(3) as usize];
        }
        let tiers = (0..n).map(|i| vec![if i < k { Tier::Host } else { Tier::Ssd }; blocks]).collect();
        cluster.models.push(ModelPlacement { model: "m".into(), tiers });
        let layout = uniform_layout("m", bytes, blocks, Some(1 << 20)).unwrap();
        let sources: Vec<u32> = (0..k as u32).collect();
        let receivers: Vec<u32> = (k as u32..n as u32).collect();
        let latency = [0.0, 10e-6][rng.below(2) as usize];
        for algo in planner::Algo::ALL {
            let req = MulticastRequest { cluster: &cluster, layout: &layout, sources: &sources, receivers: &receivers };
            let p = plan(algo, &req).unwrap();
            let ev = evaluate(&p, &cluster, latency).unwrap();
            let bound = first_copy_lower_bound_s(&p, &cluster, latency).unwrap();
            assert!(
                bound > 0.0 && bound <= ev.first_copy_s * (1.0 + 1e-9),
                "case {case} {algo:?}: {bound} > {}",
                ev.first_copy_s
            );
        }
    }
}

#[test]
fn nccl_chain_is_the_evaluators_chain_in_nccl_chunks() {
    let n = 5;
    let cluster = Cluster::uniform(n, 12.5e9, 1.25e9);
    // 4 execution blocks of 3 MiB each: 6 NCCL chunks of 512 KiB each.
    let layout = uniform_layout("m", 12 << 20, 4, Some(planner::NCCL_CHUNK_BYTES)).unwrap();
    let chain: Vec<u32> = (0..n as u32).collect();
    let busy: Vec<(f64, f64)> = (0..n).map(|x| (0.001 * x as f64, 0.002 * (n - x) as f64)).collect();
    let lat = 10e-6;
    let rows = nccl_chain(&cluster, &layout, &chain, &busy, lat);
    let req = MulticastRequest { cluster: &cluster, layout: &layout, sources: &chain[..1], receivers: &chain[1..] };
    let p = plan(Algo::Nccl, &req).unwrap();
    let ev =
        evaluate_busy(&p, &cluster, lat / f64::from(planner::NCCL_STEPS), Forwarding::StoreAndForward, Some(&busy))
            .unwrap();
    let arr = planner::exec::exec_arrivals(&ev, &layout).unwrap();
    for d in 1..n {
        for e in 0..4 {
            let want = arr[d][e].unwrap();
            assert!((rows[d - 1][e] - want).abs() < 1e-12, "member {d} block {e}: {} vs {want}", rows[d - 1][e]);
        }
    }
}
