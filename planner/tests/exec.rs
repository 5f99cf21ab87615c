//! Properties of execution plans (`planner::exec`): pipelines only use blocks their nodes
//! hold, cover the model in order, are load balanced within ±1, and are deterministic.

use planner::exec::{covers, exec_arrivals, shapes};
use planner::*;
use proptest::prelude::*;

const K4: u64 = BLOCK_ALIGN_BYTES;

fn holds(h: &[Vec<bool>], node: u32, r: &std::ops::Range<u32>) -> bool {
    r.clone().all(|b| h.get(node as usize).and_then(|row| row.get(b as usize)).copied().unwrap_or(false))
}

/// The fewest contiguous stages, each held whole by one of `nodes`, that cover `[0, b)`
/// (`None`: the nodes together miss a block), by dynamic programming.
pub fn fewest_stages(h: &[Vec<bool>], nodes: &[u32], b: usize) -> Option<usize> {
    let mut best: Vec<Option<usize>> = vec![None; b + 1];
    best[0] = Some(0);
    for q in 1..=b {
        best[q] = (0..q)
            .filter(|&p| nodes.iter().any(|&n| holds(h, n, &(p as u32..q as u32))))
            .filter_map(|p| best[p].map(|c| c + 1))
            .min();
    }
    best[b]
}

/// Whether `ps` may be the cover: the only pipeline, multi-stage, no local instance, with the
/// fewest stages possible.
fn is_cover(h: &[Vec<bool>], nodes: &[u32], b: usize, ps: &[ExecPipeline]) -> bool {
    ps.len() == 1
        && ps[0].stages.len() > 1
        && !nodes.iter().any(|&n| holds(h, n, &(0..b as u32)))
        && fewest_stages(h, nodes, b) == Some(ps[0].stages.len())
}

/// Every guarantee of `form_pipelines` the module documents, for one moment.
fn check_moment(h: &[Vec<bool>], nodes: &[u32], b: usize, ps: &[ExecPipeline]) {
    let allowed = shapes(b);
    let full: Vec<u32> = nodes.iter().copied().filter(|&n| holds(h, n, &(0..b as u32))).collect();
    let mut locals = Vec::new();
    let mut load = std::collections::BTreeMap::<u32, usize>::new();
    let mut seen_multi = std::collections::BTreeSet::<u32>::new();
    for p in ps {
        assert!(covers(&p.stages, b as u32), "{p:?} does not cover [0, {b})");
        for s in &p.stages {
            assert!(nodes.contains(&s.node), "{p:?} uses a node that is not a candidate");
            assert!(holds(h, s.node, &s.blocks), "node {} lacks blocks {:?}", s.node, s.blocks);
        }
        if p.stages.len() == 1 {
            locals.push(p.stages[0].node);
        } else if is_cover(h, nodes, b, ps) {
            // The fewest-stage cover: checked by `exec_cover.rs`; here only its stages' holdings
            // (above) and that adjacent stages are on different nodes.
            assert!(p.stages.windows(2).all(|w| w[0].node != w[1].node), "adjacent stages on one node: {p:?}");
        } else {
            let n = p.stages.len();
            assert!(allowed.contains(&n), "{n} stages; shapes {allowed:?}");
            for (i, s) in p.stages.iter().enumerate() {
                assert_eq!(s.blocks, exec::stage_range(i, n, b));
                assert!(i == 0 || p.stages[i - 1].node != s.node, "adjacent stages on one node: {p:?}");
                assert!(!full.contains(&s.node), "a full holder in a multi-stage pipeline");
                *load.entry(s.node).or_default() += 1;
            }
            // Each kept pipeline brings a node no earlier multi-stage pipeline uses.
            assert!(p.stages.iter().any(|s| !seen_multi.contains(&s.node)), "{p:?} brings no new node");
            seen_multi.extend(p.stages.iter().map(|s| s.node));
        }
    }
    let mut full_sorted = full.clone();
    full_sorted.sort();
    full_sorted.dedup();
    locals.sort();
    assert_eq!(locals, full_sorted, "local instances are exactly the full holders, once each");
    if !load.is_empty() {
        let lo = *load.values().min().unwrap();
        let hi = *load.values().max().unwrap();
        let total: usize = load.values().sum();
        assert!(hi - lo <= 1, "stage counts {load:?} differ by more than 1");
        assert!(hi <= total.div_ceil(load.len()), "a node carries more than ⌈{total}/{}⌉", load.len());
    }
    // Preference: if a shape-S pipeline exists whose stages all use one node each from an
    // otherwise unused set, the greedy forms at least one multi-stage pipeline.
    if !ps.iter().any(|p| p.stages.len() > 1) {
        for &s in &allowed {
            let some_node_per_stage = (0..s).all(|i| {
                let r = exec::stage_range(i, s, b);
                nodes.iter().any(|&n| !full.contains(&n) && holds(h, n, &r))
            });
            // With one stage-holder per stage the greedy's first pipeline only fails balance.
            if some_node_per_stage {
                let distinct: std::collections::BTreeSet<u32> = (0..s)
                    .filter_map(|i| {
                        let r = exec::stage_range(i, s, b);
                        let c: Vec<u32> =
                            nodes.iter().copied().filter(|&n| !full.contains(&n) && holds(h, n, &r)).collect();
                        (c.len() == 1).then(|| c[0])
                    })
                    .collect();
                // Only asserted when every stage has a single possible node each, all distinct:
                // then the pipeline is forced and balanced (one stage per node).
                let forced = (0..s).all(|i| {
                    let r = exec::stage_range(i, s, b);
                    nodes.iter().filter(|&&n| !full.contains(&n) && holds(h, n, &r)).count() == 1
                });
                if forced && distinct.len() == s {
                    panic!("a forced balanced {s}-stage pipeline was missed");
                }
            }
        }
    }
}

#[test]
fn interleaved_halves_make_one_eight_stage_pipeline() {
    // Node 0 holds the even blocks, node 1 the odd ones: what a k = 2 multicast gives first.
    let h = vec![(0..8).map(|b| b % 2 == 0).collect::<Vec<_>>(), (0..8).map(|b| b % 2 == 1).collect()];
    let ps = form_pipelines(&h, &[0, 1], 8);
    assert_eq!(ps.len(), 1);
    let nodes: Vec<u32> = ps[0].stages.iter().map(|s| s.node).collect();
    assert_eq!(nodes, vec![0, 1, 0, 1, 0, 1, 0, 1]);
    check_moment(&h, &[0, 1], 8, &ps);
}

#[test]
fn eight_single_block_holders_make_one_pipeline_and_full_holders_are_local() {
    let mut h: Vec<Vec<bool>> = (0..8).map(|n| (0..8).map(|b| b == n).collect()).collect();
    h.push(vec![true; 8]);
    let nodes: Vec<u32> = (0..9).collect();
    let ps = form_pipelines(&h, &nodes, 8);
    assert_eq!(ps.len(), 2);
    assert_eq!(ps[0].stages, vec![StageSpan { node: 8, blocks: 0..8 }]);
    assert_eq!(ps[1].stages.iter().map(|s| s.node).collect::<Vec<_>>(), (0..8).collect::<Vec<_>>());
    check_moment(&h, &nodes, 8, &ps);
}

#[test]
fn preference_eight_then_four_then_two() {
    // 8 single-block holders, 4 two-block holders, 2 half holders: one pipeline of each shape.
    let mut h: Vec<Vec<bool>> = (0..8).map(|n| (0..8).map(|b| b == n).collect()).collect();
    h.extend((0..4).map(|q| (0..8).map(|b| b / 2 == q).collect::<Vec<_>>()));
    h.extend((0..2).map(|q| (0..8).map(|b| b / 4 == q).collect::<Vec<_>>()));
    let nodes: Vec<u32> = (0..14).collect();
    let ps = form_pipelines(&h, &nodes, 8);
    let lens: Vec<usize> = ps.iter().map(|p| p.stages.len()).collect();
    // The single-block holders make the first 8-stage pipeline; the others a second one
    // (two-block holders on alternate stages with half holders between).
    assert_eq!(lens, vec![8, 8], "{ps:?}");
    check_moment(&h, &nodes, 8, &ps);
}

#[test]
fn fewer_blocks_than_eight_gives_b_stages_and_long_stages() {
    let h: Vec<Vec<bool>> = (0..3).map(|n| (0..3).map(|b| b == n).collect()).collect();
    let ps = form_pipelines(&h, &[0, 1, 2], 3);
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0].stages.len(), 3);
    // 16 blocks, 2 halves: a 2-stage pipeline whose stages span 8 blocks each.
    let h: Vec<Vec<bool>> = (0..2).map(|n| (0..16).map(|b| b / 8 == n).collect()).collect();
    let ps = form_pipelines(&h, &[0, 1], 16);
    assert_eq!(ps[0].stages, vec![StageSpan { node: 0, blocks: 0..8 }, StageSpan { node: 1, blocks: 8..16 }]);
}

#[test]
fn nothing_held_or_no_blocks_gives_nothing() {
    assert!(form_pipelines(&[vec![false; 4]], &[0], 4).is_empty());
    assert!(form_pipelines(&[], &[0, 5], 4).is_empty());
    assert!(form_pipelines(&[vec![true; 4]], &[0], 0).is_empty());
    assert!(exec_plan_from_arrivals(&[vec![Some(0.0)]], &[0], 0).is_err());
    assert!(exec_plan_from_arrivals(&[vec![Some(0.0)]], &[3], 1).is_err());
    assert!(exec_plan_from_arrivals(&[vec![Some(f64::NAN)]], &[0], 1).is_err());
}

/// The plan's pipelines at every event time are exactly what `form_pipelines` gives then, and
/// every stage's node holds its blocks from the pipeline's `valid_from_s` on.
fn check_plan(arr: &[Vec<Option<f64>>], receivers: &[u32], b: usize, plan: &ExecPlan) {
    plan.validate().unwrap();
    let mut times: Vec<f64> = receivers.iter().flat_map(|&r| arr[r as usize].iter().flatten().copied()).collect();
    times.sort_by(f64::total_cmp);
    times.dedup();
    for p in &plan.pipelines {
        assert!(times.contains(&p.valid_from_s));
        for s in &p.stages {
            for blk in s.blocks.clone() {
                let a = arr[s.node as usize][blk as usize];
                assert!(
                    a.is_some_and(|a| a <= p.valid_from_s),
                    "node {} lacks block {blk} at {}",
                    s.node,
                    p.valid_from_s
                );
            }
        }
        if let Some(u) = p.valid_until_s {
            assert!(u > p.valid_from_s && times.contains(&u));
        }
    }
    let mut rs = receivers.to_vec();
    rs.dedup();
    for &t in &times {
        let held: Vec<Vec<bool>> =
            arr.iter().map(|row| row.iter().map(|a| a.is_some_and(|a| a <= t)).collect()).collect();
        let mut want: Vec<Vec<StageSpan>> = form_pipelines(&held, &rs, b).into_iter().map(|p| p.stages).collect();
        let mut got: Vec<Vec<StageSpan>> = plan.pipelines_at(t).map(|p| p.stages.clone()).collect();
        want.sort_by_key(|s| format!("{s:?}"));
        got.sort_by_key(|s| format!("{s:?}"));
        assert_eq!(got, want, "at {t}");
        let formed: Vec<ExecPipeline> = plan.pipelines_at(t).cloned().collect();
        check_moment(&held, &rs, b, &formed);
    }
    for r in receivers {
        let done = arr[*r as usize].iter().try_fold(f64::NEG_INFINITY, |m, a| a.map(|a| m.max(a)));
        let h = plan.handoffs.iter().find(|h| h.node == *r).map(|h| h.at_s);
        assert_eq!(h, done, "receiver {r}");
        if let Some(d) = done {
            assert!(plan.pipelines_at(d).any(|p| p.stages == vec![StageSpan { node: *r, blocks: 0..b as u32 }]));
        }
    }
}

fn holdings_strategy() -> impl Strategy<Value = (usize, Vec<Vec<bool>>, Vec<u32>)> {
    (1usize..14, 1usize..10, 0u8..3).prop_flat_map(|(b, n, mode)| {
        let row = match mode {
            // Independent blocks.
            0 => proptest::collection::vec(any::<bool>(), b).boxed(),
            // A contiguous range.
            1 => (0..b, 0..=b).prop_map(move |(x, y)| (0..b).map(|i| i >= x.min(y) && i < x.max(y)).collect()).boxed(),
            // Residue classes, as a k-way multicast hands them out.
            _ => (1usize..4, 0usize..4).prop_map(move |(k, g)| (0..b).map(|i| i % k == g % k).collect()).boxed(),
        };
        (Just(b), proptest::collection::vec(row, n), proptest::collection::vec(0u32..n as u32 + 1, 0..n + 2))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    #[test]
    fn pipelines_at_one_moment_keep_every_guarantee((b, h, nodes) in holdings_strategy()) {
        let ps = form_pipelines(&h, &nodes, b);
        let mut cands = Vec::new();
        for n in &nodes { if !cands.contains(n) { cands.push(*n); } }
        check_moment(&h, &cands, b, &ps);
        prop_assert_eq!(&ps, &form_pipelines(&h, &nodes, b));
    }

    #[test]
    fn plans_over_time_keep_every_guarantee(
        b in 1usize..12,
        n in 1usize..8,
        seed in proptest::collection::vec(proptest::option::weighted(0.85, 0u8..6), 0..96),
    ) {
        let arr: Vec<Vec<Option<f64>>> =
            (0..n).map(|x| (0..b).map(|e| seed.get(x * b + e).copied().unwrap_or(Some(1)).map(f64::from)).collect()).collect();
        let receivers: Vec<u32> = (0..n as u32).collect();
        let plan = exec_plan_from_arrivals(&arr, &receivers, b).unwrap();
        check_plan(&arr, &receivers, b, &plan);
        prop_assert_eq!(&plan, &exec_plan_from_arrivals(&arr, &receivers, b).unwrap());
        let json = serde_json::to_string(&plan).unwrap();
        prop_assert_eq!(&plan, &serde_json::from_str::<ExecPlan>(&json).unwrap());
    }

    #[test]
    fn multicast_plans_give_sound_exec_plans(
        k in 1usize..4, extra in 1usize..10, b in 1usize..12, tb in 1u64..3, algo in 0usize..5,
    ) {
        let n = k + extra;
        let c = Cluster::uniform(n, 50e9, 10e9);
        let l = uniform_layout("m", b as u64 * tb * K4, b, Some(K4)).unwrap();
        let s: Vec<u32> = (0..k as u32).collect();
        let r: Vec<u32> = (k as u32..n as u32).collect();
        let p = plan(Algo::ALL[algo], &MulticastRequest { cluster: &c, layout: &l, sources: &s, receivers: &r }).unwrap();
        let ev = evaluate(&p, &c, DEFAULT_LATENCY_S).unwrap();
        let ep = exec_plan(&ev, &l, &r).unwrap();
        let arr = exec_arrivals(&ev, &l).unwrap();
        check_plan(&arr, &r, b, &ep);
        prop_assert_eq!(ep.handoffs.len(), r.len());
    }
}

#[test]
fn faascale_k2_pipelines_from_the_first_collective_copy() {
    // 2 sources, 2 receivers, 8 execution blocks of one transfer block each: group 0 gets the
    // even blocks first, group 1 the odd ones, so together they hold the model before either
    // holds all of it.
    let (n, k, b) = (4usize, 2usize, 8usize);
    let c = Cluster::uniform(n, 50e9, 10e9);
    let l = uniform_layout("m", b as u64 * 64 * K4, b, Some(64 * K4)).unwrap();
    assert_eq!(l.transfer_blocks.len(), b);
    let s: Vec<u32> = (0..k as u32).collect();
    let r: Vec<u32> = (k as u32..n as u32).collect();
    let p = plan(Algo::Faascale, &MulticastRequest { cluster: &c, layout: &l, sources: &s, receivers: &r }).unwrap();
    let ev = evaluate(&p, &c, DEFAULT_LATENCY_S).unwrap();
    let first_done = r.iter().map(|&x| ev.per_node_complete_s[x as usize].unwrap()).fold(f64::INFINITY, f64::min);
    assert!(ev.first_copy_s < first_done, "first copy {} not before {first_done}", ev.first_copy_s);
    let ep = exec_plan(&ev, &l, &r).unwrap();
    check_plan(&exec_arrivals(&ev, &l).unwrap(), &r, b, &ep);
    let multi: Vec<&ExecPipeline> = ep.pipelines_at(ev.first_copy_s).filter(|p| p.stages.len() > 1).collect();
    assert!(!multi.is_empty(), "no multi-stage pipeline at first_copy_s: {ep:?}");
    assert!(multi.iter().any(|p| p.valid_from_s == ev.first_copy_s));
    // Nothing multi-stage before the first collective copy.
    assert!(ep.pipelines.iter().all(|p| p.stages.len() == 1 || p.valid_from_s >= ev.first_copy_s));
    assert_eq!(ep.handoffs.len(), r.len());
    assert!(ep.handoffs.iter().all(|h| h.at_s == ev.per_node_complete_s[h.node as usize].unwrap()));
}

#[test]
fn faascale_k2_larger_groups_pipeline_before_completion() {
    // 2 sources, 6 receivers in 2 groups of 3, 8 execution blocks. (With 16 blocks an
    // 8-stage pipeline's stages span 2 consecutive blocks, which no receiver holds at the
    // first collective copy: parity interleaving; pipelines then form later.)
    let (n, k, b) = (8usize, 2usize, 8usize);
    let c = Cluster::uniform(n, 50e9, 10e9);
    let l = uniform_layout("m", b as u64 * 16 * K4, b, Some(16 * K4)).unwrap();
    let s: Vec<u32> = (0..k as u32).collect();
    let r: Vec<u32> = (k as u32..n as u32).collect();
    let p = plan(Algo::Faascale, &MulticastRequest { cluster: &c, layout: &l, sources: &s, receivers: &r }).unwrap();
    let ev = evaluate(&p, &c, DEFAULT_LATENCY_S).unwrap();
    let ep = exec_plan(&ev, &l, &r).unwrap();
    check_plan(&exec_arrivals(&ev, &l).unwrap(), &r, b, &ep);
    let first_done = ep.handoffs.first().unwrap().at_s;
    assert!(ev.first_copy_s < first_done);
    assert!(ep.pipelines.iter().any(|p| p.stages.len() > 1 && p.valid_from_s == ev.first_copy_s), "{ep:?}");
}
