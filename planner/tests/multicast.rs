//! Properties of the multicast planners, the evaluator and `replan`, checked by the
//! independent checker (`planner::check`) and by direct assertions.

use planner::*;
use proptest::prelude::*;

const K4: u64 = BLOCK_ALIGN_BYTES;

fn setup(n: usize, k: usize, exec_blocks: usize, tb_per_block: u64) -> (Cluster, ModelLayout, Vec<u32>, Vec<u32>) {
    let cluster = Cluster::uniform(n, 50e9, 10e9);
    let layout = uniform_layout("m", exec_blocks as u64 * tb_per_block * K4, exec_blocks, Some(K4)).unwrap();
    let sources: Vec<u32> = (0..k as u32).collect();
    let receivers: Vec<u32> = (k as u32..n as u32).collect();
    (cluster, layout, sources, receivers)
}

fn build(algo: Algo, c: &Cluster, l: &ModelLayout, s: &[u32], r: &[u32]) -> MulticastPlan {
    plan(algo, &MulticastRequest { cluster: c, layout: l, sources: s, receivers: r }).unwrap()
}

fn assert_sound(p: &MulticastPlan, c: &Cluster) -> Evaluation {
    let ev = evaluate(p, c, DEFAULT_LATENCY_S).unwrap();
    let bad = check::check(p, c, &ev, DEFAULT_LATENCY_S);
    assert!(bad.is_empty(), "{:?}: {:?}", p.algo, &bad[..bad.len().min(5)]);
    ev
}

/// Ticks a plan spans (1 + the last tick).
fn ticks(p: &MulticastPlan) -> u32 {
    p.transfers.iter().map(|t| t.tick + 1).max().unwrap_or(0)
}

fn ceil_log2(n: usize) -> u32 {
    usize::BITS - (n - 1).leading_zeros()
}

#[test]
fn binomial_meets_the_bound_for_every_small_group() {
    for n in 2..=40usize {
        for b in [1u64, 2, 3, 5, 8, 17, 32] {
            let (c, l, s, r) = setup(n, 1, 1, b);
            let p = build(Algo::Binomial, &c, &l, &s, &r);
            let bound = b as u32 + ceil_log2(n) - 1;
            assert!(ticks(&p) <= bound, "N={n} B={b}: {} ticks > {bound}", ticks(&p));
            let ev = assert_sound(&p, &c);
            let chain = assert_sound(&build(Algo::Nccl, &c, &l, &s, &r), &c);
            assert!(ev.complete_s <= chain.complete_s + 1e-12, "N={n} B={b}: binomial after chain");
        }
    }
}

#[test]
fn faascale_groups_get_rotated_block_groups_first() {
    let (c, l, s, r) = setup(4 + 12, 4, 4, 4); // 16 transfer blocks, 4 groups of 3
    let p = build(Algo::Faascale, &c, &l, &s, &r);
    let ev = assert_sound(&p, &c);
    for (g, src) in s.iter().enumerate() {
        let first: Vec<u32> =
            p.transfers.iter().filter(|t| t.from == TransferSource::Node(*src)).map(|t| t.block).take(4).collect();
        // Block-groups are keyed by execution block: a group gets whole execution blocks first.
        let exec: Vec<u32> = first.iter().map(|&b| l.transfer_blocks[b as usize].exec_block).collect();
        assert!(
            exec.iter().all(|&e| e as usize % 4 == g),
            "group {g} starts with {first:?} (execution blocks {exec:?})"
        );
    }
    assert!(ev.first_copy_s < ev.complete_s / 2.0, "{} vs {}", ev.first_copy_s, ev.complete_s);
}

#[test]
fn bad_requests_are_errors() {
    let (c, l, s, r) = setup(4, 1, 2, 2);
    let req =
        |s: &'static [u32], r: &'static [u32]| MulticastRequest { cluster: &c, layout: &l, sources: s, receivers: r };
    assert!(plan(Algo::Faascale, &req(&[], &[1, 2])).is_err());
    assert!(plan(Algo::Faascale, &req(&[0], &[0, 1])).is_err());
    assert!(plan(Algo::Faascale, &req(&[0], &[9])).is_err());
    assert!(plan(Algo::Nccl, &MulticastRequest { cluster: &c, layout: &l, sources: &s, receivers: &r }).is_ok());
    let mut z = c.clone();
    z.nodes[1].nic_bps = 0.0;
    assert!(plan(Algo::Faascale, &MulticastRequest { cluster: &z, layout: &l, sources: &s, receivers: &r }).is_err());
    assert!(uniform_layout("m", 0, 1, None).is_err());
    assert!(uniform_layout("m", 100, 0, None).is_err());
}

#[test]
fn replan_reports_lost_blocks() {
    let (c, l, s, r) = setup(5, 1, 2, 4);
    let p = build(Algo::Binomial, &c, &l, &s, &r);
    let h = Holdings::with_sources(5, p.num_blocks(), &s);
    match p.replan(&h, &[0]) {
        Err(PlanError::Lost(b)) => assert_eq!(b.len(), 8),
        other => panic!("{other:?}"),
    }
}

#[test]
fn plans_serde_round_trip() {
    let (c, l, s, r) = setup(9, 2, 2, 3);
    let p = build(Algo::Faascale, &c, &l, &s, &r);
    let back: MulticastPlan = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
    assert_eq!(back, p);
    let cb: Cluster = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(cb, c);
    assert!(serde_json::to_string(&p).unwrap().contains("\"version\":1"));
}

#[test]
fn serverlessllm_uses_each_nodes_best_tier() {
    let (mut c, l, s, r) = setup(4, 1, 2, 2);
    c.nodes[2].ssd_bps = 5e9;
    c.models.push(ModelPlacement {
        model: "m".into(),
        tiers: vec![vec![Tier::Gpu; 2], vec![Tier::Host; 2], vec![Tier::Ssd; 2], vec![Tier::Remote; 2]],
    });
    let p = build(Algo::Serverlessllm, &c, &l, &s, &r);
    let from_of = |n: u32| p.transfers.iter().find(|t| t.to == n).unwrap().from;
    assert_eq!(from_of(1), TransferSource::Host);
    assert_eq!(from_of(2), TransferSource::Ssd);
    assert_eq!(from_of(3), TransferSource::Remote);
    assert_sound(&p, &c);
}

fn arb_case() -> impl Strategy<Value = (usize, usize, usize, u64, usize)> {
    (1usize..40, 1usize..6, 1usize..6, 1u64..6, 0usize..5).prop_map(|(n, k, e, t, a)| (n.max(k), k, e, t, a))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn every_plan_is_sound((n, k, e, t, a) in arb_case(), spread in 0u32..4) {
        let (mut c, _, s, r) = setup(n, k, e, t);
        // heterogeneous NICs and uneven block sizes
        for (i, node) in c.nodes.iter_mut().enumerate() {
            node.nic_bps *= 1.0 + ((i as u32 * 7 + spread) % 4) as f64;
        }
        let bytes = e as u64 * t * K4 + 3 * K4 * spread as u64;
        let l = uniform_layout("m", bytes, e, Some(K4 * (1 + spread as u64 % 2))).unwrap();
        let algo = Algo::ALL[a];
        let p = build(algo, &c, &l, &s, &r);
        let ev = assert_sound(&p, &c);
        prop_assert!(ev.complete_s + 1e-12 >= ev.lower_bound_s);
        prop_assert!(ev.first_copy_s <= ev.complete_s + 1e-12);
        // same inputs, same plan
        prop_assert_eq!(build(algo, &c, &l, &s, &r), p);
    }

    #[test]
    fn binomial_group_bound_holds(n in 2usize..70, b in 1u64..40) {
        let (c, l, s, r) = setup(n, 1, 1, b);
        let p = build(Algo::Binomial, &c, &l, &s, &r);
        let bound = b as u32 + ceil_log2(n) - 1;
        prop_assert!(ticks(&p) <= bound, "N={} B={}: {} ticks > {}", n, b, ticks(&p), bound);
        let chain = build(Algo::Nccl, &c, &l, &s, &r);
        prop_assert!(ticks(&p) <= ticks(&chain));
    }

    #[test]
    fn replan_after_any_deaths_completes_from_survivors(
        (n, k, e, t, a) in arb_case(), frac in 0.0f64..1.2, dead_mask in any::<u64>(),
    ) {
        let (c, l, s, r) = setup(n, k, e, t);
        let algo = Algo::ALL[a % 4];
        let p = build(algo, &c, &l, &s, &r);
        let ev = evaluate(&p, &c, DEFAULT_LATENCY_S).unwrap();
        let h = ev.holdings_at(n, ev.complete_s * frac);
        let dead: Vec<u32> = (0..n as u32).filter(|i| dead_mask >> (i % 64) & 1 == 1).collect();
        match p.replan(&h, &dead) {
            Ok(q) => {
                prop_assert_eq!(q.epoch, 1);
                let dead_free = q.transfers.iter().all(|t| {
                    !dead.contains(&t.to) && !matches!(t.from, TransferSource::Node(x) if dead.contains(&x))
                });
                prop_assert!(dead_free);
                prop_assert!(q.receivers.iter().all(|x| !dead.contains(x)));
                prop_assert_eq!(q.receivers.len(), r.iter().filter(|x| !dead.contains(x)).count());
                assert_sound(&q, &c);
                prop_assert_eq!(p.replan(&h, &dead).unwrap(), q);
            }
            Err(PlanError::Lost(blocks)) => {
                prop_assert!(!blocks.is_empty());
                for b in blocks {
                    prop_assert!((0..n).all(|x| dead.contains(&(x as u32)) || !h.holds(x, b as usize)));
                }
            }
            Err(other) => prop_assert!(false, "{}", other),
        }
    }
}

#[test]
fn binomial_bound_holds_for_larger_groups() {
    for n in (2..=300usize).step_by(7).chain([125, 127, 129, 255, 257]) {
        for b in [1u64, 2, 5, 31, 64, 100] {
            let (c, l, s, r) = setup(n, 1, 1, b);
            let p = build(Algo::Binomial, &c, &l, &s, &r);
            let bound = b as u32 + ceil_log2(n) - 1;
            assert!(ticks(&p) <= bound, "N={n} B={b}: {} ticks > {bound}", ticks(&p));
        }
    }
}

/// The fuzz target's decoder and checks (`fuzz/fuzz_targets/plan_check.rs`), on seeded inputs;
/// crashes found by the fuzzer go in the list below as regression inputs.
#[test]
fn fuzz_case_decoder_accepts_arbitrary_bytes() {
    let regressions: &[&[u8]] = &[b"", &[0], &[255; 80], &[47, 3, 2, 5, 11, 3, 1, 19]];
    for r in regressions {
        check::check_bytes(r).unwrap();
    }
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for len in 0..400usize {
        let bytes: Vec<u8> = (0..len % 80)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        check::check_bytes(&bytes).unwrap_or_else(|e| panic!("{bytes:?}: {e}"));
    }
}
