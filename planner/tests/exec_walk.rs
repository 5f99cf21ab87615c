//! `exec_plan_from_arrivals` (which forms pipelines only when they can change) gives exactly
//! what the straightforward walk gives: `form_pipelines` at every distinct arrival time, a
//! pipeline staying open while it is formed again, stage for stage.

use planner::exec::exec_arrivals;
use planner::*;
use proptest::prelude::*;

const K4: u64 = BLOCK_ALIGN_BYTES;

fn holds(h: &[Vec<bool>], node: u32, blocks: std::ops::Range<u32>) -> bool {
    h.get(node as usize).is_some_and(|row| blocks.clone().all(|b| row.get(b as usize).copied().unwrap_or(false)))
}

/// The straightforward greedy (`form_pipelines` before it kept runs and holder lists), with
/// the library's cover where it forms nothing and no node holds the whole model.
fn reference_form(holdings: &[Vec<bool>], nodes: &[u32], num_blocks: usize) -> Vec<ExecPipeline> {
    let mut out = Vec::new();
    if num_blocks == 0 || num_blocks > u32::MAX as usize {
        return out;
    }
    let b = num_blocks as u32;
    let mut cands: Vec<u32> = Vec::with_capacity(nodes.len());
    for &n in nodes {
        if !cands.contains(&n) {
            cands.push(n);
        }
    }
    let pipe = |stages: Vec<StageSpan>| ExecPipeline { stages, valid_from_s: 0.0, valid_until_s: None };
    let mut partial: Vec<(u32, usize)> = Vec::new();
    for &n in &cands {
        if holds(holdings, n, 0..b) {
            out.push(pipe(vec![StageSpan { node: n, blocks: 0..b }]));
        } else {
            let held = holdings.get(n as usize).map_or(0, |r| r.iter().take(num_blocks).filter(|&&x| x).count());
            if held > 0 {
                partial.push((n, held));
            }
        }
    }
    let locals = out.len();
    let mut load = vec![0usize; partial.len()];
    for s in exec::shapes(num_blocks) {
        loop {
            let mut trial = load.clone();
            let mut stages = Vec::with_capacity(s);
            for i in 0..s {
                let r = exec::stage_range(i, s, num_blocks);
                let prev = stages.last().map(|st: &StageSpan| st.node);
                let best = (0..partial.len())
                    .filter(|&j| Some(partial[j].0) != prev && holds(holdings, partial[j].0, r.clone()))
                    .min_by_key(|&j| (trial[j], partial[j].1, j));
                let Some(j) = best else { break };
                trial[j] += 1;
                stages.push(StageSpan { node: partial[j].0, blocks: r });
            }
            let complete = stages.len() == s;
            let brings_new = (0..load.len()).any(|j| load[j] == 0 && trial[j] > 0);
            let used = trial.iter().copied().filter(|&x| x > 0);
            let (lo, hi) = used.fold((usize::MAX, 0), |(lo, hi), x| (lo.min(x), hi.max(x)));
            if !(complete && brings_new && hi - lo <= 1) {
                break;
            }
            load = trial;
            out.push(pipe(stages));
        }
    }
    if out.is_empty() && locals == 0 {
        return form_pipelines(holdings, nodes, num_blocks);
    }
    out
}

/// The straightforward walk (what `exec_plan_from_arrivals` did before it went incremental).
fn reference(arrival: &[Vec<Option<f64>>], receivers: &[u32], num_blocks: usize) -> Result<ExecPlan, String> {
    if num_blocks == 0 || num_blocks > u32::MAX as usize {
        return Err(format!("{num_blocks} execution blocks; need at least 1"));
    }
    let mut times: Vec<f64> = Vec::new();
    let mut handoffs = Vec::new();
    let mut seen: Vec<u32> = Vec::new();
    for &r in receivers {
        if seen.contains(&r) {
            continue;
        }
        seen.push(r);
        let row = arrival.get(r as usize).ok_or_else(|| format!("receiver {r} has no arrival times"))?;
        if row.len() != num_blocks {
            return Err(format!("receiver {r}: {} arrival times for {num_blocks} blocks", row.len()));
        }
        for a in row.iter().flatten() {
            if !a.is_finite() {
                return Err(format!("receiver {r}: arrival time {a} is not finite"));
            }
            times.push(*a);
        }
        if let Some(done) = row.iter().try_fold(f64::NEG_INFINITY, |m, a| a.map(|a| m.max(a))) {
            handoffs.push(Handoff { node: r, at_s: done });
        }
    }
    times.sort_by(f64::total_cmp);
    times.dedup();
    handoffs.sort_by(|a, b| a.at_s.total_cmp(&b.at_s).then(a.node.cmp(&b.node)));
    let mut pipelines: Vec<ExecPipeline> = Vec::new();
    let mut open: Vec<usize> = Vec::new();
    for &t in &times {
        let held: Vec<Vec<bool>> =
            arrival.iter().map(|row| row.iter().map(|a| a.is_some_and(|a| a <= t)).collect()).collect();
        let formed = reference_form(&held, &seen, num_blocks);
        let mut still_open = Vec::new();
        for &i in &open {
            if formed.iter().any(|p| p.stages == pipelines[i].stages) {
                still_open.push(i);
            } else {
                pipelines[i].valid_until_s = Some(t);
            }
        }
        for mut p in formed {
            if still_open.iter().any(|&i| pipelines[i].stages == p.stages) {
                continue;
            }
            p.valid_from_s = t;
            still_open.push(pipelines.len());
            pipelines.push(p);
        }
        open = still_open;
    }
    Ok(ExecPlan { version: EXEC_PLAN_VERSION, num_blocks: num_blocks as u32, pipelines, handoffs })
}

fn same(arr: &[Vec<Option<f64>>], receivers: &[u32], b: usize) -> Result<(), TestCaseError> {
    let fast = exec_plan_from_arrivals(arr, receivers, b);
    let slow = reference(arr, receivers, b);
    prop_assert_eq!(&fast, &slow);
    Ok(())
}

fn holdings_strategy() -> impl Strategy<Value = (usize, Vec<Vec<bool>>, Vec<u32>)> {
    (1usize..40, 1usize..24, 0u8..4).prop_flat_map(|(b, n, mode)| {
        let row = match mode {
            0 => proptest::collection::vec(any::<bool>(), b).boxed(),
            1 => (0..b, 0..=b).prop_map(move |(x, y)| (0..b).map(|i| i >= x.min(y) && i < x.max(y)).collect()).boxed(),
            2 => (1usize..4, 0usize..4).prop_map(move |(k, g)| (0..b).map(|i| i % k == g % k).collect()).boxed(),
            // Mostly held: many nodes hold many shape stages.
            _ => proptest::collection::vec(proptest::bool::weighted(0.9), b).boxed(),
        };
        (Just(b), proptest::collection::vec(row, n), proptest::collection::vec(0u32..n as u32 + 1, 0..n + 3))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn form_pipelines_gives_the_straightforward_greedy((b, h, nodes) in holdings_strategy()) {
        prop_assert_eq!(form_pipelines(&h, &nodes, b), reference_form(&h, &nodes, b));
    }

    #[test]
    fn random_arrivals_give_the_reference_plan(
        b in 1usize..20,
        n in 1usize..12,
        // Few distinct times, so that many arrivals tie; 0 as both 0.0 and -0.0.
        seed in proptest::collection::vec(proptest::option::weighted(0.9, -1i8..12), 0..240),
        receivers in proptest::collection::vec(0u32..14, 0..16),
    ) {
        let arr: Vec<Vec<Option<f64>>> = (0..n)
            .map(|x| (0..b).map(|e| seed.get(x * b + e).copied().unwrap_or(Some(3)).map(|v| if v < 0 { -0.0 } else { f64::from(v) })).collect())
            .collect();
        same(&arr, &receivers, b)?;
    }

    #[test]
    fn rows_of_runs_give_the_reference_plan(
        b in 1usize..40,
        n in 1usize..10,
        starts in proptest::collection::vec((0usize..40, 0u32..8, 1u32..5), 1..10),
    ) {
        // Each node receives its blocks in order from a start, one per step (chains and
        // binomial pipelines look like this), so runs grow and shapes form.
        let arr: Vec<Vec<Option<f64>>> = (0..n)
            .map(|x| {
                let (s, t0, dt) = starts[x % starts.len()];
                (0..b).map(|e| Some(f64::from(t0 + dt * ((e + b - s % b) % b) as u32))).collect()
            })
            .collect();
        let receivers: Vec<u32> = (0..n as u32).collect();
        same(&arr, &receivers, b)?;
    }

    #[test]
    fn multicast_plans_give_the_reference_plan(
        k in 1usize..4, extra in 1usize..24, b in 1usize..24, tb in 1u64..3, algo in 0usize..5,
    ) {
        let n = k + extra;
        let c = Cluster::uniform(n, 50e9, 10e9);
        let l = uniform_layout("m", b as u64 * tb * K4, b, Some(K4)).unwrap();
        let s: Vec<u32> = (0..k as u32).collect();
        let r: Vec<u32> = (k as u32..n as u32).collect();
        let p = plan(Algo::ALL[algo], &MulticastRequest { cluster: &c, layout: &l, sources: &s, receivers: &r }).unwrap();
        let ev = evaluate(&p, &c, DEFAULT_LATENCY_S).unwrap();
        let arr = exec_arrivals(&ev, &l).unwrap();
        same(&arr, &r, b)?;
        prop_assert_eq!(exec_plan(&ev, &l, &r).unwrap(), reference(&arr, &r, b).unwrap());
    }
}

#[test]
fn bad_inputs_give_the_reference_errors() {
    let ok = vec![vec![Some(0.0), Some(1.0)]];
    for (arr, rs, b) in [
        (ok.clone(), vec![0u32], 0usize),
        (ok.clone(), vec![3], 2),
        (ok.clone(), vec![0], 3),
        (vec![vec![Some(0.0), Some(f64::INFINITY)]], vec![0], 2),
        (vec![vec![Some(f64::NAN), None]], vec![0, 0], 2),
    ] {
        let fast = exec_plan_from_arrivals(&arr, &rs, b);
        assert!(fast.is_err(), "{arr:?} {rs:?} {b}");
        assert_eq!(fast, reference(&arr, &rs, b));
    }
}
