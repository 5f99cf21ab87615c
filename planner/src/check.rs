//! An independent checker of multicast plans and their evaluations, written apart from the
//! planners and the evaluator: it replays the plan on its own set of holdings and checks the
//! evaluator's times against the link model with its own interval bookkeeping.

use crate::cluster::Cluster;
use crate::eval::Evaluation;
use crate::multicast::{MulticastPlan, TransferSource};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Every violation found (empty: the plan is sound).
pub fn check(plan: &MulticastPlan, cluster: &Cluster, ev: &Evaluation, latency_s: f64) -> Vec<String> {
    let mut bad = Vec::new();
    let nb = plan.block_bytes.len();
    // Holdings replay.
    let mut held: HashSet<(u32, u32)> = HashSet::new();
    for x in 0..plan.num_nodes {
        for b in 0..nb {
            if plan.initial.holds(x, b) {
                held.insert((x as u32, b as u32));
            }
        }
    }
    let mut got_by: HashMap<(u32, u32), u32> = HashMap::new();
    let mut received: HashMap<(u32, u32), u32> = HashMap::new();
    for (i, t) in plan.transfers.iter().enumerate() {
        if t.id as usize != i {
            bad.push(format!("transfer at index {i} has id {}", t.id));
        }
        if t.block as usize >= nb || t.to as usize >= plan.num_nodes {
            bad.push(format!("transfer {i}: block {} or node {} out of range", t.block, t.to));
            continue;
        }
        if let TransferSource::Node(s) = t.from {
            if s == t.to {
                bad.push(format!("transfer {i}: node {s} sends to itself"));
            }
            if !held.contains(&(s, t.block)) {
                bad.push(format!("transfer {i}: node {s} sends block {} before holding it", t.block));
            }
            if t.after != got_by.get(&(s, t.block)).copied() {
                bad.push(format!("transfer {i}: after = {:?}, expected {:?}", t.after, got_by.get(&(s, t.block))));
            }
        }
        if held.contains(&(t.to, t.block)) {
            bad.push(format!("transfer {i}: node {} receives block {} it already holds", t.to, t.block));
        }
        held.insert((t.to, t.block));
        got_by.insert((t.to, t.block), t.id);
        *received.entry((t.to, t.block)).or_default() += 1;
    }
    for &r in &plan.receivers {
        for b in 0..nb as u32 {
            let initially = plan.initial.holds(r as usize, b as usize);
            let n = received.get(&(r, b)).copied().unwrap_or(0);
            if (initially && n != 0) || (!initially && n != 1) {
                bad.push(format!("receiver {r} gets block {b} {n} times"));
            }
        }
    }
    // Per-node schedules list exactly that node's transfers, in id order.
    let mut sends: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let mut recvs: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for t in &plan.transfers {
        if let TransferSource::Node(s) = t.from {
            sends.entry(s).or_default().push(t.id);
        }
        recvs.entry(t.to).or_default().push(t.id);
    }
    for (x, s) in plan.nodes.iter().enumerate() {
        let x = x as u32;
        if s.sends != sends.get(&x).cloned().unwrap_or_default()
            || s.recvs != recvs.get(&x).cloned().unwrap_or_default()
        {
            bad.push(format!("node {x}: schedule does not list its transfers in order"));
        }
    }
    // Timing: link model, causality, completion.
    if ev.transfer_times.len() != plan.transfers.len() {
        bad.push("evaluation has a different number of transfers".into());
        return bad;
    }
    const EPS: f64 = 1e-9;
    let mut nic_out: BTreeMap<u32, Vec<(f64, f64)>> = BTreeMap::new();
    let mut nic_in: BTreeMap<u32, Vec<(f64, f64)>> = BTreeMap::new();
    let mut block_at: HashMap<(u32, u32), f64> = HashMap::new();
    for t in &plan.transfers {
        let (start, end) = ev.transfer_times[t.id as usize];
        let bytes = plan.block_bytes.get(t.block as usize).copied().unwrap_or(0) as f64;
        let rx = match cluster.nodes.get(t.to as usize) {
            Some(n) => n,
            None => continue,
        };
        let max_rate = match t.from {
            TransferSource::Node(s) => cluster.nodes.get(s as usize).map_or(0.0, |n| n.nic_bps.min(rx.nic_bps)),
            TransferSource::Host => rx.pcie_bps,
            TransferSource::Ssd => rx.ssd_bps.min(rx.pcie_bps),
            TransferSource::Remote => cluster.remote_store_bps.min(rx.nic_bps),
        };
        if end - start < latency_s + bytes / max_rate - EPS * (1.0 + end) {
            bad.push(format!("transfer {}: {:.9} s is faster than the link allows", t.id, end - start));
        }
        if let TransferSource::Node(s) = t.from {
            let ready = if plan.initial.holds(s as usize, t.block as usize) {
                0.0
            } else {
                block_at.get(&(s, t.block)).copied().unwrap_or(f64::INFINITY)
            };
            if start + EPS * (1.0 + start) < ready {
                bad.push(format!("transfer {}: starts at {start} before node {s} holds block {}", t.id, t.block));
            }
            nic_out.entry(s).or_default().push((start, end));
        }
        if matches!(t.from, TransferSource::Node(_) | TransferSource::Remote) {
            nic_in.entry(t.to).or_default().push((start, end));
        }
        block_at.insert((t.to, t.block), end);
    }
    for (what, m) in [("sends", nic_out), ("receives", nic_in)] {
        for (x, mut v) in m {
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            for w in v.windows(2) {
                if w[1].0 + EPS * (1.0 + w[1].0) < w[0].1 {
                    bad.push(format!("node {x} {what} two transfers at once ({:?} and {:?})", w[0], w[1]));
                    break;
                }
            }
        }
    }
    let mut latest: f64 = 0.0;
    for &r in &plan.receivers {
        let mut t_r: f64 = 0.0;
        for b in 0..nb as u32 {
            if !plan.initial.holds(r as usize, b as usize) {
                t_r = t_r.max(block_at.get(&(r, b)).copied().unwrap_or(f64::INFINITY));
            }
        }
        latest = latest.max(t_r);
    }
    if (latest - ev.complete_s).abs() > EPS * (1.0 + latest) {
        bad.push(format!("complete_s {} but the last receiver completes at {latest}", ev.complete_s));
    }
    if ev.complete_s + EPS * (1.0 + ev.complete_s) < ev.lower_bound_s && plan.epoch == 0 {
        bad.push(format!("complete_s {} is below the lower bound {}", ev.complete_s, ev.lower_bound_s));
    }
    if ev.first_copy_s > ev.complete_s + EPS {
        bad.push(format!("first_copy_s {} after complete_s {}", ev.first_copy_s, ev.complete_s));
    }
    bad
}

/// The fuzz target's case: decodes small parameters from `data` by hand, builds a plan with
/// every planner input that byte string names, evaluates it, checks it, then replans after
/// the deaths the bytes name and checks that too. `Err` names the first violation.
pub fn check_bytes(data: &[u8]) -> Result<(), String> {
    use crate::cluster::{Cluster, Holdings, ModelPlacement, Tier};
    use crate::multicast::{plan_with, Algo, Forwarding, MulticastRequest, PlanError, PlanOptions};
    const EPS: f64 = 1e-9;
    let byte = |i: usize| data.get(i).copied().unwrap_or(0) as usize;
    let n = 1 + byte(0) % 48;
    let k = 1 + byte(1) % n;
    let algo = Algo::ALL[byte(2) % 5];
    let exec_blocks = 1 + byte(3) % 6;
    let pages_per_block = 1 + byte(4) % 12;
    let chunk_pages = 1 + byte(5) % 4;
    let latency_s = [0.0, 1e-5, 1e-3][byte(6) % 3];
    let mut cluster = Cluster::uniform(n, 1e9, 1e8 * (1 + byte(7) % 20) as f64);
    for (i, node) in cluster.nodes.iter_mut().enumerate() {
        node.nic_bps *= (1 + byte(8 + i % 16) % 8) as f64;
        node.ssd_bps = if byte(24 + i % 8) % 3 == 0 { 0.0 } else { 5e8 };
    }
    let tiers = (0..n)
        .map(|i| {
            (0..exec_blocks).map(|e| [Tier::Gpu, Tier::Host, Tier::Ssd, Tier::Remote][byte(32 + i + e) % 4]).collect()
        })
        .collect();
    cluster.models.push(ModelPlacement { model: "f".into(), tiers });
    let spec: Vec<(std::ops::Range<u32>, u64)> = (0..exec_blocks)
        .map(|e| (e as u32..e as u32 + 1, (pages_per_block + byte(40 + e) % 3) as u64 * 4096 - byte(48 + e) as u64))
        .collect();
    let layout = crate::ModelLayout::new("f", exec_blocks as u32, &spec, 0, chunk_pages as u64 * 4096)
        .map_err(|e| format!("layout: {e}"))?;
    let sources: Vec<u32> = (0..k as u32).collect();
    let receivers: Vec<u32> = (k as u32..n as u32).collect();
    let req = MulticastRequest { cluster: &cluster, layout: &layout, sources: &sources, receivers: &receivers };
    let piece_bytes = 512 * (1 + byte(64) as u64 % 16);
    let forwarding =
        if byte(63) % 2 == 1 { Forwarding::CutThrough { piece_bytes } } else { Forwarding::StoreAndForward };
    let opts = PlanOptions { forwarding, latency_s };
    let p = plan_with(algo, &req, &opts).map_err(|e| format!("plan: {e}"))?;
    let ev = crate::eval::evaluate(&p, &cluster, latency_s)?;
    let bad = check(&p, &cluster, &ev, latency_s);
    if let Some(b) = bad.first() {
        return Err(format!("{algo:?} n={n} k={k} {forwarding:?}: {b}"));
    }
    if plan_with(algo, &req, &opts).map_err(|e| e.to_string())? != p {
        return Err("same inputs gave another plan".into());
    }
    // Cut-through never makes a plan slower, and with pieces of a whole block it is
    // store-and-forward exactly.
    let cut = crate::eval::evaluate_with(&p, &cluster, latency_s, Forwarding::CutThrough { piece_bytes })?;
    if cut.complete_s > ev.complete_s + EPS * (1.0 + ev.complete_s)
        || cut.first_copy_s > ev.first_copy_s + EPS * (1.0 + ev.first_copy_s)
    {
        return Err(format!(
            "cut-through ({piece_bytes} B pieces) is slower: complete {} > {} or first copy {} > {}",
            cut.complete_s, ev.complete_s, cut.first_copy_s, ev.first_copy_s
        ));
    }
    let whole = p.block_bytes.iter().copied().max().unwrap_or(1).max(1);
    let same = crate::eval::evaluate_with(&p, &cluster, latency_s, Forwarding::CutThrough { piece_bytes: whole })?;
    if same.transfer_times != ev.transfer_times {
        return Err("cut-through with whole-block pieces differs from store-and-forward".into());
    }
    // Deaths at some moment, then replan from what survivors hold.
    let frac = byte(56) as f64 / 200.0;
    let holdings: Holdings = ev.holdings_at(n, ev.complete_s * frac);
    let dead: Vec<u32> = (0..n as u32).filter(|&i| byte(57 + i as usize / 8) >> (i % 8) & 1 == 1).collect();
    match p.replan(&holdings, &dead) {
        Ok(q) => {
            let ev2 = crate::eval::evaluate(&q, &cluster, latency_s)?;
            if let Some(b) = check(&q, &cluster, &ev2, latency_s).first() {
                return Err(format!("replan {algo:?} n={n} k={k} dead={dead:?}: {b}"));
            }
            if q.transfers
                .iter()
                .any(|t| dead.contains(&t.to) || matches!(t.from, crate::TransferSource::Node(x) if dead.contains(&x)))
            {
                return Err("replan uses a dead node".into());
            }
        }
        Err(PlanError::Lost(blocks)) => {
            for b in blocks {
                if (0..n).any(|x| !dead.contains(&(x as u32)) && holdings.holds(x, b as usize)) {
                    return Err(format!("replan says block {b} is lost, but a survivor holds it"));
                }
            }
        }
        Err(e) => return Err(format!("replan: {e}")),
    }
    Ok(())
}
