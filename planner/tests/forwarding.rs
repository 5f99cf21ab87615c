//! Cut-through forwarding: the evaluator's model of it, and faascale's choice of group shape
//! (binomial pipeline or pipelined chain) made by `group_times`.

use planner::*;
use proptest::prelude::*;

const MIB: u64 = 1 << 20;

fn request_parts(
    n: usize,
    k: usize,
    bytes: u64,
    exec_blocks: usize,
    chunk: u64,
) -> (Cluster, ModelLayout, Vec<u32>, Vec<u32>) {
    let cluster = Cluster::uniform(n, 125e6, 1e9);
    let layout = uniform_layout("m", bytes, exec_blocks, Some(chunk)).unwrap();
    (cluster, layout, (0..k as u32).collect(), (k as u32..n as u32).collect())
}

fn cut(piece_bytes: u64) -> PlanOptions {
    PlanOptions { forwarding: Forwarding::CutThrough { piece_bytes }, latency_s: DEFAULT_LATENCY_S }
}

fn rel_close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// The bench's case: 1 source, 8 receivers on 1 Gbit/s links, 256 MiB in 2 MiB transfer blocks,
/// 64 KiB pieces. The chain's extra seven hops cost 3.7 ms; the binomial pipeline's three extra
/// ticks 50 ms. faascale plans a chain here, and a binomial pipeline when stored and forwarded.
#[test]
fn one_source_to_eight_is_a_chain_only_with_cut_through() {
    let (cluster, layout, s, r) = request_parts(9, 1, 256 * MIB, 16, 2 * MIB);
    let req = MulticastRequest { cluster: &cluster, layout: &layout, sources: &s, receivers: &r };
    let shapes = faascale_shapes(&req, &cut(64 << 10));
    assert_eq!(shapes.len(), 1);
    assert_eq!(shapes[0].0, GroupShape::Chain, "{:?}", shapes[0].1);
    let t = shapes[0].1;
    assert!((t.chain_s - t.binomial_s) < -0.04, "{t:?}");
    let saf = faascale_shapes(&req, &PlanOptions::default());
    assert_eq!(saf[0].0, GroupShape::Binomial, "{:?}", saf[0].1);

    let chain = plan_with(Algo::Faascale, &req, &cut(64 << 10)).unwrap();
    let nccl = plan(Algo::Nccl, &req).unwrap();
    // same transfers as the nccl chain (one group: no rotation), still named faascale
    assert_eq!(chain.algo, Algo::Faascale);
    assert_eq!(chain.transfers, nccl.transfers);
    assert_eq!(plan_with(Algo::Faascale, &req, &PlanOptions::default()).unwrap(), plan(Algo::Faascale, &req).unwrap());
}

/// The closed forms are what the evaluator computes for a chain (both forwardings) and a bound
/// on what it computes for the binomial pipeline, on uniform links.
#[test]
fn group_times_match_the_evaluator() {
    for n in [2usize, 3, 4, 5, 8, 9, 17, 33] {
        for blocks in [1u64, 2, 7, 16, 40] {
            let (cluster, layout, s, r) = request_parts(n, 1, blocks * MIB, 1, MIB);
            let req = MulticastRequest { cluster: &cluster, layout: &layout, sources: &s, receivers: &r };
            let bytes: Vec<u64> = layout.transfer_blocks.iter().map(|t| t.len).collect();
            for (opts, fwd) in [
                (PlanOptions::default(), Forwarding::StoreAndForward),
                (cut(64 << 10), Forwarding::CutThrough { piece_bytes: 64 << 10 }),
            ] {
                let times = group_times(n, &bytes, 125e6, &opts);
                let chain = plan(Algo::Nccl, &req).unwrap();
                let ev = evaluate_with(&chain, &cluster, opts.latency_s, fwd).unwrap();
                assert!(
                    rel_close(ev.complete_s, times.chain_s),
                    "n={n} b={blocks} {fwd:?}: {} vs {times:?}",
                    ev.complete_s
                );
                let bin = plan(Algo::Binomial, &req).unwrap();
                let ev = evaluate_with(&bin, &cluster, opts.latency_s, fwd).unwrap();
                assert!(
                    ev.complete_s <= times.binomial_s * (1.0 + 1e-9),
                    "n={n} b={blocks} {fwd:?}: {} vs {times:?}",
                    ev.complete_s
                );
            }
        }
    }
}

#[test]
fn store_and_forward_never_picks_a_chain() {
    for n in 2..=1000usize {
        for blocks in [1usize, 2, 3, 64, 128] {
            let t = group_times(n, &vec![2 * MIB; blocks], 125e6, &PlanOptions::default());
            assert_eq!(t.shape(), GroupShape::Binomial, "n={n} b={blocks}: {t:?}");
        }
    }
}

#[test]
fn bad_options_are_refused() {
    let (cluster, layout, s, r) = request_parts(4, 1, 8 * MIB, 2, MIB);
    let req = MulticastRequest { cluster: &cluster, layout: &layout, sources: &s, receivers: &r };
    let e = plan_with(Algo::Faascale, &req, &cut(0)).unwrap_err();
    assert!(e.to_string().contains("pieces of 0 bytes"), "{e}");
    for latency_s in [-1.0, f64::NAN, f64::INFINITY] {
        let e = plan_with(Algo::Faascale, &req, &PlanOptions { latency_s, ..cut(4096) }).unwrap_err();
        assert!(e.to_string().contains("latency"), "{e}");
    }
    let p = plan(Algo::Nccl, &req).unwrap();
    assert!(evaluate_with(&p, &cluster, 0.0, Forwarding::CutThrough { piece_bytes: 0 }).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The shape faascale picks is, by the cut-through evaluator, no slower than the other one
    /// (within 1 %: the binomial time is a bound, not always reached), and the plan passes the
    /// independent checker.
    #[test]
    fn the_chosen_shape_is_the_faster(n in 2usize..40, k in 1usize..4, blocks in 1u64..48, piece_kib in prop::sample::select(vec![4u64, 64, 256, 1024, 4096])) {
        let k = k.min(n - 1).max(1);
        let (cluster, layout, s, r) = request_parts(n, k, blocks * MIB, 1, MIB);
        let req = MulticastRequest { cluster: &cluster, layout: &layout, sources: &s, receivers: &r };
        let opts = cut(piece_kib << 10);
        let fwd = opts.forwarding;
        let p = plan_with(Algo::Faascale, &req, &opts).unwrap();
        let ev = evaluate(&p, &cluster, opts.latency_s).unwrap();
        let bad = check::check(&p, &cluster, &ev, opts.latency_s);
        prop_assert!(bad.is_empty(), "{:?}", &bad[..bad.len().min(3)]);
        if k == 1 {
            let chosen = evaluate_with(&p, &cluster, opts.latency_s, fwd).unwrap().complete_s;
            let chain = evaluate_with(&plan(Algo::Nccl, &req).unwrap(), &cluster, opts.latency_s, fwd).unwrap().complete_s;
            let bin = evaluate_with(&plan(Algo::Faascale, &req).unwrap(), &cluster, opts.latency_s, fwd).unwrap().complete_s;
            prop_assert!(chosen <= chain.min(bin) * 1.01, "chosen {chosen}, chain {chain}, binomial {bin}");
        }
    }

    /// Cut-through never slows a plan, and with whole-block pieces it is store-and-forward.
    #[test]
    fn cut_through_is_never_slower(n in 2usize..24, k in 1usize..4, blocks in 1u64..24, algo in 0usize..4, piece_kib in 1u64..2048) {
        let k = k.min(n - 1).max(1);
        let (mut cluster, layout, s, r) = request_parts(n, k, blocks * MIB, 2, MIB / 2);
        for (i, node) in cluster.nodes.iter_mut().enumerate() {
            node.nic_bps *= 1.0 + (i % 3) as f64;
        }
        let req = MulticastRequest { cluster: &cluster, layout: &layout, sources: &s, receivers: &r };
        let p = plan(Algo::ALL[algo], &req).unwrap();
        let saf = evaluate(&p, &cluster, DEFAULT_LATENCY_S).unwrap();
        let ct = evaluate_with(&p, &cluster, DEFAULT_LATENCY_S, Forwarding::CutThrough { piece_bytes: piece_kib << 10 }).unwrap();
        prop_assert!(ct.complete_s <= saf.complete_s * (1.0 + 1e-12));
        prop_assert!(ct.first_copy_s <= saf.first_copy_s * (1.0 + 1e-12));
        let whole = evaluate_with(&p, &cluster, DEFAULT_LATENCY_S, Forwarding::CutThrough { piece_bytes: MIB }).unwrap();
        prop_assert_eq!(whole.transfer_times, saf.transfer_times);
    }
}
