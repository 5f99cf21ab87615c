//! Pipelines exist whenever the candidates together hold every block (`planner::exec`):
//! the 8/4/2 shapes first, else the fewest-stage cover.

use planner::exec::{covers, exec_arrivals};
use planner::*;
use proptest::prelude::*;

const K4: u64 = BLOCK_ALIGN_BYTES;

/// A faascale multicast of `b` execution blocks from `k` sources to `receivers` receivers:
/// its evaluation, layout and receivers.
fn faascale(k: usize, receivers: usize, b: usize) -> (Evaluation, ModelLayout, Vec<u32>) {
    let n = k + receivers;
    let c = Cluster::uniform(n, 50e9, 10e9);
    let l = uniform_layout("m", b as u64 * 16 * K4, b, Some(16 * K4)).unwrap();
    let s: Vec<u32> = (0..k as u32).collect();
    let r: Vec<u32> = (k as u32..n as u32).collect();
    let p = plan(Algo::Faascale, &MulticastRequest { cluster: &c, layout: &l, sources: &s, receivers: &r }).unwrap();
    let ev = evaluate(&p, &c, DEFAULT_LATENCY_S).unwrap();
    (ev, l, r)
}

#[test]
fn faascale_b16_k2_has_a_pipeline_at_first_copy() {
    // 16 execution blocks, 2 sources: each group gets one parity class first, so when the new
    // nodes first hold the model together no node holds two consecutive blocks and no 8-, 4-
    // or 2-stage shape fits. The cover serves from then on, until shaped pipelines form.
    for receivers in [2usize, 4, 6, 10] {
        let (ev, l, r) = faascale(2, receivers, 16);
        let arr = exec_arrivals(&ev, &l).unwrap();
        let t = ev.first_copy_s;
        let first_done = r.iter().map(|&x| ev.per_node_complete_s[x as usize].unwrap()).fold(f64::INFINITY, f64::min);
        assert!(t < first_done, "{receivers} receivers: first copy {t} not before {first_done}");
        let ep = exec_plan(&ev, &l, &r).unwrap();
        let at: Vec<&ExecPipeline> = ep.pipelines_at(t).collect();
        assert!(!at.is_empty(), "{receivers} receivers: no pipeline at first_copy_s {t}");
        for p in at {
            assert!(covers(&p.stages, 16) && p.stages.len() > 1, "{p:?}");
            for s in &p.stages {
                assert!(s.blocks.clone().all(|b| arr[s.node as usize][b as usize].is_some_and(|a| a <= t)), "{p:?}");
            }
        }
        // From the first collective copy on, some pipeline is valid at every arrival time.
        let mut times: Vec<f64> = r.iter().flat_map(|&x| arr[x as usize].iter().flatten().copied()).collect();
        times.retain(|&x| x >= t);
        assert!(times.iter().all(|&x| ep.pipelines_at(x).next().is_some()));
    }
}

fn holds(h: &[Vec<bool>], node: u32, r: &std::ops::Range<u32>) -> bool {
    r.clone().all(|b| h.get(node as usize).and_then(|row| row.get(b as usize)).copied().unwrap_or(false))
}

/// The fewest stages of a cover of `[0, b)` by `nodes`, and, among such covers, the shortest
/// longest stage, by dynamic programming (`None`: some block is held by none).
fn best_cover(h: &[Vec<bool>], nodes: &[u32], b: usize) -> Option<(usize, usize)> {
    let mut best: Vec<Option<(usize, usize)>> = vec![None; b + 1];
    best[0] = Some((0, 0));
    for q in 1..=b {
        best[q] = (0..q)
            .filter(|&p| nodes.iter().any(|&n| holds(h, n, &(p as u32..q as u32))))
            .filter_map(|p| best[p].map(|(c, m)| (c + 1, m.max(q - p))))
            .min();
    }
    best[b]
}

#[test]
fn a_split_no_shape_fits_gives_the_fewest_stage_cover() {
    // Node 0 holds [0, 3), node 1 [3, 8): no 8-, 4- or 2-stage shape fits.
    let h = vec![(0..8).map(|b| b < 3).collect::<Vec<_>>(), (0..8).map(|b| b >= 3).collect()];
    let ps = form_pipelines(&h, &[0, 1], 8);
    assert_eq!(ps.len(), 1, "{ps:?}");
    assert_eq!(ps[0].stages, vec![StageSpan { node: 0, blocks: 0..3 }, StageSpan { node: 1, blocks: 3..8 }]);
    // 16 blocks in parity classes: 16 single-block stages, alternating.
    let h: Vec<Vec<bool>> = (0..2).map(|n| (0..16).map(|b| b % 2 == n).collect()).collect();
    let ps = form_pipelines(&h, &[0, 1], 16);
    assert_eq!(ps.len(), 1, "{ps:?}");
    assert_eq!(ps[0].stages.len(), 16);
    assert!(ps[0]
        .stages
        .iter()
        .enumerate()
        .all(|(i, s)| s.node == i as u32 % 2 && s.blocks == (i as u32..i as u32 + 1)));
    // A local instance means no cover; a missing block means nothing at all.
    let mut h2 = h.clone();
    h2.push(vec![true; 16]);
    assert_eq!(form_pipelines(&h2, &[0, 1, 2], 16).len(), 1);
    assert!(form_pipelines(&h2, &[0, 1, 2], 16)[0].is_local());
    h2[1][5] = false;
    assert!(form_pipelines(&h2, &[0, 1], 16).is_empty());
    // More blocks than any row: none holds the last one, nothing forms (and quickly).
    assert!(form_pipelines(&h2, &[0, 1, 2], u32::MAX as usize).is_empty());
}

#[test]
fn shapes_come_before_the_cover_and_the_cover_shortens_its_longest_stage() {
    // Node 0 holds [0, 6), node 1 [2, 8): the 4-stage shape fits, so the greedy forms it.
    let h = vec![(0..8).map(|b| b < 6).collect::<Vec<_>>(), (0..8).map(|b| b >= 2).collect()];
    let ps = form_pipelines(&h, &[0, 1], 8);
    assert_eq!(ps.len(), 1, "{ps:?}");
    assert_eq!(ps[0].stages.len(), 4);
    // 9 blocks, node 0 holds [0, 3), node 1 [2, 9), node 2 [0, 1): no shape fits (8 stages:
    // [1, 2) only on node 0, so [2, 3) goes to node 1, which alone holds [3, 4); 4 stages:
    // [2, 4) and [4, 6) only on node 1; 2 stages: [0, 4) on none). Two stages; the split at 3
    // makes the longest 6, the least possible.
    let h = vec![
        (0..9).map(|b| b < 3).collect::<Vec<_>>(),
        (0..9).map(|b| b >= 2).collect(),
        (0..9).map(|b| b < 1).collect(),
    ];
    let ps = form_pipelines(&h, &[0, 1, 2], 9);
    assert_eq!(ps.len(), 1, "{ps:?}");
    assert_eq!(ps[0].stages, vec![StageSpan { node: 0, blocks: 0..3 }, StageSpan { node: 1, blocks: 3..9 }]);
}

fn covering_holdings() -> impl Strategy<Value = (usize, Vec<Vec<bool>>, Vec<u32>)> {
    (1usize..40, 1usize..8, 0u8..3).prop_flat_map(|(b, n, mode)| {
        let row = match mode {
            0 => proptest::collection::vec(any::<bool>(), b).boxed(),
            1 => (0..b, 0..=b).prop_map(move |(x, y)| (0..b).map(|i| i >= x.min(y) && i < x.max(y)).collect()).boxed(),
            _ => (1usize..9, 0usize..9).prop_map(move |(k, g)| (0..b).map(|i| i % k == g % k).collect()).boxed(),
        };
        (Just(b), proptest::collection::vec(row, n), proptest::collection::vec(0u32..n as u32, 1..n + 2))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(800))]

    #[test]
    fn whenever_the_candidates_cover_every_block_a_pipeline_forms((b, h, nodes) in covering_holdings()) {
        let ps = form_pipelines(&h, &nodes, b);
        let union_covers = (0..b).all(|x| nodes.iter().any(|&n| h[n as usize][x]));
        prop_assert_eq!(!ps.is_empty(), union_covers, "{:?}", ps);
        for p in &ps {
            prop_assert!(covers(&p.stages, b as u32), "{:?}", p);
            for (i, s) in p.stages.iter().enumerate() {
                prop_assert!(nodes.contains(&s.node));
                prop_assert!(holds(&h, s.node, &s.blocks), "node {} lacks {:?}", s.node, s.blocks);
                prop_assert!(i == 0 || p.stages[i - 1].node != s.node, "{:?}", p);
            }
        }
        let local = nodes.iter().any(|&n| holds(&h, n, &(0..b as u32)));
        let shaped = ps.iter().any(|p| {
            let n = p.stages.len();
            n > 1 && exec::shapes(b).contains(&n)
                && p.stages.iter().enumerate().all(|(i, s)| s.blocks == exec::stage_range(i, n, b))
        });
        if union_covers && !local && !shaped {
            // The cover: the fewest stages, then the shortest longest stage.
            prop_assert_eq!(ps.len(), 1);
            let (fewest, longest) = best_cover(&h, &nodes, b).unwrap();
            prop_assert_eq!(ps[0].stages.len(), fewest);
            prop_assert_eq!(ps[0].stages.iter().map(|s| s.blocks.len()).max().unwrap(), longest);
            prop_assert!(fewest > exec::MAX_STAGES || ps[0].stages.len() <= exec::MAX_STAGES);
        }
    }
}
