//! `MulticastPlan` and the algorithms that build one: faascale k-way binomial pipelines,
//! binomial (k = 1), NCCL-style chains, FaaSNet binary trees, ServerlessLLM local loads.
//!
//! A plan is a list of transfers in an order that is topological (the transfer that brings a
//! block to a node comes before any transfer that sends it on) and, per node, the ordered
//! lists of its sends and receives. A transport runs it without global lock-step: each node
//! works through its own send list, a send waits only for its block (the transfer named in
//! `after`) and for the receiver to reach it in its receive list.
//!
//! How the baselines use several sources (k > 1): receivers are split into k contiguous
//! groups, one source each, exactly as for faascale; NCCL runs one pipelined chain per group,
//! FaaSNet one binary tree per group, both sending blocks in id order (no rotation: that is
//! faascale's idea). ServerlessLLM ignores the sources: every receiver loads from its own best
//! tier (host memory, else local SSD, else the shared remote store).

use crate::cluster::{Cluster, Holdings, Tier, PLAN_TYPES_VERSION};
use crate::layout::ModelLayout;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Which planner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algo {
    Faascale,
    Binomial,
    Nccl,
    Faasnet,
    Serverlessllm,
}

impl Algo {
    pub const ALL: [Algo; 5] = [Algo::Faascale, Algo::Binomial, Algo::Nccl, Algo::Faasnet, Algo::Serverlessllm];

    pub fn name(self) -> &'static str {
        match self {
            Algo::Faascale => "faascale",
            Algo::Binomial => "binomial",
            Algo::Nccl => "nccl",
            Algo::Faasnet => "faasnet",
            Algo::Serverlessllm => "serverlessllm",
        }
    }

    pub fn parse(s: &str) -> Option<Algo> {
        Algo::ALL.into_iter().find(|a| a.name() == s)
    }
}

/// Where a transfer's bytes come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Endpoint {
    /// Another node, over the network (its NIC sends, the receiver's NIC receives).
    Node(u32),
    /// The receiver's own host memory, over PCIe.
    Host,
    /// The receiver's own SSD, over PCIe.
    Ssd,
    /// The remote store, over the receiver's NIC.
    Remote,
}

/// One transfer block moved to one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Its index in `MulticastPlan::transfers`.
    pub id: u32,
    /// Transfer block id.
    pub block: u32,
    pub from: Endpoint,
    pub to: u32,
    /// The transfer that brings `block` to `from` (None: `from` holds it when the epoch starts,
    /// or `from` is not a node).
    pub after: Option<u32>,
    /// The planner's round (binomial tick, chain step, …); informational.
    pub tick: u32,
}

/// One node's work, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSchedule {
    pub sends: Vec<u32>,
    pub recvs: Vec<u32>,
}

/// A multicast: who sends which transfer block to whom, in what order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MulticastPlan {
    pub version: u32,
    /// Starts at 0; each `replan` adds 1.
    pub epoch: u64,
    pub algo: Algo,
    pub num_nodes: usize,
    /// Bytes of each transfer block (index = block id).
    pub block_bytes: Vec<u64>,
    /// Nodes that must end with every block.
    pub receivers: Vec<u32>,
    /// Who holds what when the epoch starts.
    pub initial: Holdings,
    pub transfers: Vec<Transfer>,
    /// `nodes[i]`: node i's sends and receives, as indexes into `transfers`, in order.
    pub nodes: Vec<NodeSchedule>,
}

/// Why no plan could be made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanError {
    Invalid(String),
    /// `replan`: these blocks are held by no surviving node.
    Lost(Vec<u32>),
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::Invalid(m) => write!(f, "{m}"),
            PlanError::Lost(b) => {
                let shown: Vec<String> = b.iter().take(10).map(|x| x.to_string()).collect();
                write!(f, "{} transfer blocks are held by no surviving node (first: {})", b.len(), shown.join(", "))
            }
        }
    }
}

impl std::error::Error for PlanError {}

fn invalid<T>(m: String) -> Result<T, PlanError> {
    Err(PlanError::Invalid(m))
}

/// What to multicast, from where, to where.
#[derive(Clone, Debug)]
pub struct MulticastRequest<'a> {
    pub cluster: &'a Cluster,
    pub layout: &'a ModelLayout,
    /// Nodes holding the whole model (hot or warm).
    pub sources: &'a [u32],
    /// Nodes that need the model.
    pub receivers: &'a [u32],
}

/// A transfer before ids are assigned.
#[derive(Clone, Copy)]
struct Raw {
    tick: u32,
    from: Endpoint,
    to: u32,
    block: u32,
}

/// Builds a plan with algorithm `algo`.
pub fn plan(algo: Algo, req: &MulticastRequest) -> Result<MulticastPlan, PlanError> {
    req.cluster.validate().map_err(PlanError::Invalid)?;
    req.layout.validate().map_err(|e| PlanError::Invalid(e.to_string()))?;
    let n = req.cluster.nodes.len();
    let mut seen = vec![false; n];
    for &x in req.sources.iter().chain(req.receivers) {
        let i = x as usize;
        if i >= n {
            return invalid(format!("node {x} does not exist (the cluster has {n} nodes)"));
        }
        if seen[i] {
            return invalid(format!("node {x} is named twice among sources and receivers"));
        }
        seen[i] = true;
    }
    if req.sources.is_empty() && algo != Algo::Serverlessllm {
        return invalid(format!("{} needs at least one source", algo.name()));
    }
    let nb = req.layout.transfer_blocks.len();
    if nb > u32::MAX as usize / 2 {
        return invalid("too many transfer blocks".into());
    }
    let ids: Vec<u32> = (0..nb as u32).collect();
    let exec_keys: Vec<u32> = req.layout.transfer_blocks.iter().map(|t| t.exec_block).collect();
    let mut raw = Vec::new();
    match algo {
        Algo::Faascale | Algo::Binomial | Algo::Nccl | Algo::Faasnet => {
            let k = if algo == Algo::Binomial { 1 } else { req.sources.len() };
            let groups = split_groups(req.receivers, k);
            for (g, members) in groups.iter().enumerate() {
                if members.is_empty() {
                    continue;
                }
                let mut group = Vec::with_capacity(members.len() + 1);
                group.push(req.sources[g]);
                group.extend_from_slice(members);
                let mut out = Vec::new();
                match algo {
                    Algo::Faascale => {
                        let order = rotated_order_by(&exec_keys, k, g);
                        binomial_group(&group, &order, &mut out)?
                    }
                    Algo::Binomial => binomial_group(&group, &ids, &mut out)?,
                    Algo::Nccl => chain_group(&group, &ids, &mut out),
                    _ => tree_group(&group, &ids, &mut out),
                }
                raw.push(out);
            }
        }
        Algo::Serverlessllm => {
            let place = req.cluster.placement(&req.layout.name);
            let mut out = Vec::new();
            for (pos, t) in req.layout.transfer_blocks.iter().enumerate() {
                for &r in req.receivers {
                    let tier = place
                        .and_then(|p| p.tiers.get(r as usize))
                        .and_then(|row| row.get(t.exec_block as usize))
                        .copied()
                        .unwrap_or(Tier::Remote);
                    let node = &req.cluster.nodes[r as usize];
                    let from = match tier {
                        Tier::Gpu | Tier::Host if node.pcie_bps > 0.0 => Endpoint::Host,
                        Tier::Ssd if node.ssd_bps > 0.0 && node.pcie_bps > 0.0 => Endpoint::Ssd,
                        _ => Endpoint::Remote,
                    };
                    if from == Endpoint::Remote && req.cluster.remote_store_bps <= 0.0 {
                        return invalid(format!("node {r} must load from the remote store, whose rate is 0"));
                    }
                    out.push(Raw { tick: pos as u32, from, to: r, block: t.id });
                }
            }
            raw.push(out);
        }
    }
    let initial = Holdings::with_sources(n, nb, req.sources);
    Ok(assemble(
        algo,
        0,
        req.layout.transfer_blocks.iter().map(|t| t.len).collect(),
        req.receivers.to_vec(),
        initial,
        raw,
    ))
}

/// Receivers cut into `k` contiguous groups whose sizes differ by at most one.
pub fn split_groups(receivers: &[u32], k: usize) -> Vec<&[u32]> {
    let k = k.max(1);
    let (q, r) = (receivers.len() / k, receivers.len() % k);
    let mut out = Vec::with_capacity(k);
    let mut at = 0;
    for g in 0..k {
        let len = q + usize::from(g < r);
        out.push(&receivers[at..at + len]);
        at += len;
    }
    out
}

/// Blocks in the order group `g` of `k` receives them: block-groups `id mod k` in the rotated
/// order g, g+1, …, g−1, ids increasing within a block-group.
pub fn rotated_order(num_blocks: usize, k: usize, g: usize) -> Vec<u32> {
    let keys: Vec<u32> = (0..num_blocks as u32).collect();
    rotated_order_by(&keys, k, g)
}

/// Transfer blocks in the order group `g` of `k` receives them, transfer block `t` being in
/// block-group `keys[t] mod k`: block-groups in the rotated order g, g+1, …, g−1, ids
/// increasing within a block-group. `plan` keys each transfer block by its *execution* block,
/// so a group receives whole execution blocks first: a node can run a stage only once every
/// transfer block of it has arrived, and keying by transfer block would spread every
/// execution block over all k groups (no stage could run before the very end).
pub fn rotated_order_by(keys: &[u32], k: usize, g: usize) -> Vec<u32> {
    let k = k.max(1);
    let mut order = Vec::with_capacity(keys.len());
    for j in 0..k {
        let bg = (g + j) % k;
        order.extend((0..keys.len()).filter(|&t| keys[t] as usize % k == bg).map(|t| t as u32));
    }
    order
}

/// Binomial pipeline over `group` (group[0] the source, holding everything), sending the
/// blocks `order` in that order. With l = ⌊log2 n⌋, vertices 0 .. 2^l form a hypercube; at
/// tick t vertex x exchanges with x XOR 2^(t mod l). Each sender sends the newest block (in
/// `order`) it holds that its partner lacks; the source injects block t at tick t.
///
/// Groups that are not a power of two: the n − 2^l extra nodes are paired with vertices
/// 1 ..= n − 2^l, and a pair acts as one vertex. Each tick, the member holding the newest block
/// that the partner vertex lacks entirely sends to the hypercube (ties: alternate by tick), the
/// other member receives from it, and over the links left free the members fill each other in
/// (newest first). No NIC sends or receives two blocks in one tick. The tests check the
/// b + ⌈log2 n⌉ − 1 tick bound for every n ≤ 70 and b ≤ 40 exhaustively, and at random
/// beyond; it is measured, not proved here.
fn binomial_group(group: &[u32], order: &[u32], out: &mut Vec<Raw>) -> Result<(), PlanError> {
    let n = group.len();
    let b = order.len();
    if n < 2 || b == 0 {
        return Ok(());
    }
    let l = usize::BITS as usize - 1 - n.leading_zeros() as usize; // ⌊log2 n⌋
    let cube = 1usize << l;
    // twin[v]: the extra member of vertex v, if any.
    let mut twin: Vec<Option<usize>> = vec![None; cube];
    for e in 0..n - cube {
        twin[e + 1] = Some(cube + e);
    }
    let mut have = vec![false; n * b];
    let mut top = vec![0usize; n]; // 1 + highest position held (0: none)
    let mut count = vec![0usize; n];
    have[..b].iter_mut().for_each(|h| *h = true);
    top[0] = b;
    count[0] = b;
    let mut done = 1usize;
    let mut deliveries: Vec<(usize, usize, usize)> = Vec::with_capacity(2 * n);
    let mut up = vec![false; n];
    let mut down: Vec<Option<usize>> = vec![None; n];
    let mut sender = vec![0usize; cube];
    let cap = 4 * (b + n) + 16;
    let mut t = 0usize;
    while done < n {
        if t > cap {
            return invalid(format!("internal: binomial pipeline over {n} nodes did not finish in {cap} ticks"));
        }
        deliveries.clear();
        up.iter_mut().for_each(|x| *x = false);
        down.iter_mut().for_each(|x| *x = None);
        let dim = if l == 0 { 0 } else { 1usize << (t % l) };
        // (receiving member, sending member) of vertex v at tick t
        // Each vertex first picks its sending member: the member holding the newest block that
        // neither member of the partner vertex holds (ties: alternate by tick).
        let holds = |m: usize, x: usize| have[m * b + x];
        let vholds = |v: usize, x: usize| holds(v, x) || twin[v].is_some_and(|e| holds(e, x));
        for v in 0..cube.min(n) {
            let p = v ^ dim;
            sender[v] = v;
            if p == v || p >= n {
                continue;
            }
            if let Some(e) = twin[v] {
                let tops = top[v].max(top[e]);
                let want = (0..tops).rev().find(|&x| vholds(v, x) && !vholds(p, x));
                sender[v] = match want {
                    Some(x) if holds(v, x) && !holds(e, x) => v,
                    Some(x) if holds(e, x) && !holds(v, x) => e,
                    _ if t % 2 == 1 => e,
                    _ => v,
                };
            }
        }
        for v in 0..cube.min(n) {
            let p = v ^ dim;
            if p == v || p >= n {
                continue;
            }
            let s = sender[v];
            let (r, other) = match twin[p] {
                Some(e) if sender[p] == p => (e, Some(p)),
                Some(e) => (p, Some(e)),
                None => (p, None),
            };
            let pick = if v == 0 && t < b {
                Some(t)
            } else {
                (0..top[s])
                    .rev()
                    .find(|&x| holds(s, x) && !holds(r, x) && !other.is_some_and(|o| holds(o, x)))
                    .or_else(|| (0..top[s]).rev().find(|&x| holds(s, x) && !holds(r, x)))
            };
            if let Some(pos) = pick {
                deliveries.push((s, r, pos));
                up[s] = true;
                down[r] = Some(pos);
            }
        }
        // pairs fill each other in over free links
        for (v, tw) in twin.iter().enumerate().skip(1) {
            if let Some(e) = *tw {
                for (s, r) in [(v, e), (e, v)] {
                    if !up[s] && down[r].is_none() {
                        if let Some(pos) = (0..top[s]).rev().find(|&x| have[s * b + x] && !have[r * b + x]) {
                            deliveries.push((s, r, pos));
                            up[s] = true;
                            down[r] = Some(pos);
                        }
                    }
                }
            }
        }
        for &(s, r, pos) in &deliveries {
            debug_assert!(!have[r * b + pos]);
            have[r * b + pos] = true;
            top[r] = top[r].max(pos + 1);
            count[r] += 1;
            if count[r] == b {
                done += 1;
            }
            out.push(Raw { tick: t as u32, from: Endpoint::Node(group[s]), to: group[r], block: order[pos] });
        }
        t += 1;
    }
    Ok(())
}

/// Pipelined chain: at tick t member i sends block t − i to member i + 1.
fn chain_group(group: &[u32], order: &[u32], out: &mut Vec<Raw>) {
    let (n, b) = (group.len(), order.len());
    if n < 2 {
        return;
    }
    for t in 0..b + n - 2 {
        for i in 0..n - 1 {
            if t >= i && t - i < b {
                out.push(Raw { tick: t as u32, from: Endpoint::Node(group[i]), to: group[i + 1], block: order[t - i] });
            }
        }
    }
}

/// Binary tree in heap order (member i's children are 2i + 1 and 2i + 2); each node forwards
/// each block to its children as soon as it has it, blocks in order, left child first.
fn tree_group(group: &[u32], order: &[u32], out: &mut Vec<Raw>) {
    let n = group.len();
    let depth = |mut i: usize| {
        let mut d = 0u32;
        while i > 0 {
            i = (i - 1) / 2;
            d += 1;
        }
        d
    };
    let depths: Vec<u32> = (0..n).map(depth).collect();
    let mut rows: Vec<(u32, Raw)> = Vec::new();
    for (j, &blk) in order.iter().enumerate() {
        for i in 0..n {
            for c in [2 * i + 1, 2 * i + 2] {
                if c < n {
                    let tick = j as u32 + depths[i];
                    rows.push((tick, Raw { tick, from: Endpoint::Node(group[i]), to: group[c], block: blk }));
                }
            }
        }
    }
    rows.sort_by_key(|r| r.0); // stable: keeps per-node order
    out.extend(rows.into_iter().map(|r| r.1));
}

/// Merges per-group transfer lists by tick (stable), numbers them, links `after` and builds
/// the per-node schedules.
fn assemble(
    algo: Algo,
    epoch: u64,
    block_bytes: Vec<u64>,
    receivers: Vec<u32>,
    initial: Holdings,
    groups: Vec<Vec<Raw>>,
) -> MulticastPlan {
    let n = initial.num_nodes;
    let nb = initial.num_blocks;
    // Stable counting sort by tick: groups in order, each group's transfers in its own order.
    let max_tick = groups.iter().flatten().map(|r| r.tick as usize).max().unwrap_or(0);
    let mut start = vec![0usize; max_tick + 2];
    for r in groups.iter().flatten() {
        start[r.tick as usize + 1] += 1;
    }
    for i in 1..start.len() {
        start[i] += start[i - 1];
    }
    let total = start[max_tick + 1];
    let mut all: Vec<Raw> = vec![Raw { tick: 0, from: Endpoint::Host, to: 0, block: 0 }; total];
    for r in groups.iter().flatten() {
        let at = &mut start[r.tick as usize];
        all[*at] = *r;
        *at += 1;
    }
    drop(groups);
    let mut via: Vec<u32> = vec![u32::MAX; n * nb]; // transfer that brought block to node
    let mut nodes = vec![NodeSchedule::default(); n];
    let mut transfers = Vec::with_capacity(all.len());
    for (id, r) in all.into_iter().enumerate() {
        let id = id as u32;
        let after = match r.from {
            Endpoint::Node(s) => {
                let v = via[s as usize * nb + r.block as usize];
                nodes[s as usize].sends.push(id);
                (v != u32::MAX).then_some(v)
            }
            _ => None,
        };
        via[r.to as usize * nb + r.block as usize] = id;
        nodes[r.to as usize].recvs.push(id);
        transfers.push(Transfer { id, block: r.block, from: r.from, to: r.to, after, tick: r.tick });
    }
    MulticastPlan {
        version: PLAN_TYPES_VERSION,
        epoch,
        algo,
        num_nodes: n,
        block_bytes,
        receivers,
        initial,
        transfers,
        nodes,
    }
}

impl MulticastPlan {
    pub fn num_blocks(&self) -> usize {
        self.block_bytes.len()
    }

    /// Bytes of the whole model.
    pub fn model_bytes(&self) -> u64 {
        self.block_bytes.iter().sum()
    }

    /// A new epoch that completes the multicast from what the survivors hold.
    ///
    /// `holdings` says what each node holds now (for instance `Evaluation::holdings_at`);
    /// `dead` nodes send and receive nothing more. Every surviving receiver gets each block it
    /// lacks. Greedy rounds: in each round every survivor sends at most one block and receives
    /// at most one; receivers in order take their lowest missing block that some holder with a
    /// free uplink has (holders tried least-loaded first). Fails with `PlanError::Lost` when a
    /// block a surviving receiver lacks is held by no survivor.
    pub fn replan(&self, holdings: &Holdings, dead: &[u32]) -> Result<MulticastPlan, PlanError> {
        holdings.validate().map_err(PlanError::Invalid)?;
        let (n, nb) = (self.num_nodes, self.num_blocks());
        if holdings.num_nodes != n || holdings.num_blocks != nb {
            return invalid(format!(
                "holdings cover {} nodes × {} blocks, the plan {n} × {nb}",
                holdings.num_nodes, holdings.num_blocks
            ));
        }
        let mut alive = vec![true; n];
        for &d in dead {
            if let Some(a) = alive.get_mut(d as usize) {
                *a = false;
            }
        }
        let receivers: Vec<u32> = self.receivers.iter().copied().filter(|&r| alive[r as usize]).collect();
        let mut initial = Holdings::empty(n, nb);
        for x in (0..n).filter(|&x| alive[x]) {
            for b in 0..nb {
                if let Some(t) = holdings.since(x, b) {
                    initial.set(x, b, t);
                }
            }
        }
        let mut holders: Vec<Vec<u32>> = vec![Vec::new(); nb];
        for x in (0..n).filter(|&x| alive[x]) {
            for (b, h) in holders.iter_mut().enumerate() {
                if initial.holds(x, b) {
                    h.push(x as u32);
                }
            }
        }
        let lost: Vec<u32> = (0..nb)
            .filter(|&b| holders[b].is_empty() && receivers.iter().any(|&r| !initial.holds(r as usize, b)))
            .map(|b| b as u32)
            .collect();
        if !lost.is_empty() {
            return Err(PlanError::Lost(lost));
        }
        let mut have = initial.clone();
        let mut missing: Vec<Vec<u32>> = receivers
            .iter()
            .map(|&r| (0..nb as u32).filter(|&b| !have.holds(r as usize, b as usize)).collect())
            .collect();
        let mut sent = vec![0u64; n];
        let mut busy = vec![u32::MAX; n]; // round in which the uplink was last used
        let mut out = Vec::new();
        let mut round = 0u32;
        let mut newly: Vec<(u32, u32)> = Vec::new();
        while missing.iter().any(|m| !m.is_empty()) {
            newly.clear();
            for (ri, &r) in receivers.iter().enumerate() {
                let mut pick = None;
                for (mi, &b) in missing[ri].iter().enumerate() {
                    let best = holders[b as usize]
                        .iter()
                        .copied()
                        .filter(|&h| busy[h as usize] != round && h != r)
                        .min_by_key(|&h| (sent[h as usize], h));
                    if let Some(h) = best {
                        pick = Some((mi, b, h));
                        break;
                    }
                }
                if let Some((mi, b, h)) = pick {
                    missing[ri].remove(mi);
                    busy[h as usize] = round;
                    sent[h as usize] += 1;
                    out.push(Raw { tick: round, from: Endpoint::Node(h), to: r, block: b });
                    newly.push((r, b));
                }
            }
            if newly.is_empty() {
                return invalid("internal: replan made no progress".into());
            }
            for &(r, b) in &newly {
                have.set(r as usize, b as usize, 0.0);
                holders[b as usize].push(r);
            }
            round += 1;
        }
        Ok(assemble(self.algo, self.epoch + 1, self.block_bytes.clone(), receivers, initial, vec![out]))
    }
}
