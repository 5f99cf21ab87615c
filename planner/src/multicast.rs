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

/// NCCL's pipeline chunk for a broadcast (ring or chain) with its Simple protocol, bytes: the
/// channel buffer `NCCL_BUFFSIZE` (default 4 MiB, NCCL's environment-variable documentation)
/// split into `NCCL_STEPS` = 8 slots, times `BROADCAST_CHUNKSTEPS` = 1 (NCCL's
/// `src/include/collectives.h` and `device.h`): 4 MiB / 8 × 1 = 512 KiB. Predictions of an NCCL
/// chain (`faascale plan --algo nccl`, the simulator's `nccl`) cut the model into chunks of
/// this size, not into the planner's transfer blocks (`default_chunk_bytes`, a rule for the
/// binomial pipeline).
pub const NCCL_CHUNK_BYTES: u64 = 512 << 10;

/// Chunks NCCL keeps in flight per peer (`NCCL_STEPS`): a chunk's fixed cost overlaps the
/// other slots' transfers, so a prediction charges `latency / NCCL_STEPS` per chunk.
pub const NCCL_STEPS: u32 = 8;

/// Where a transfer's bytes come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferSource {
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
    pub from: TransferSource,
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

/// How the transport moves a block that a node is still receiving. The faascale planner shapes
/// each group for it (`group_times`); the other algorithms ignore it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Forwarding {
    /// A node sends a block on only once it holds all of it (one RDMA WRITE with immediate per
    /// transfer block: the receiver learns of the block when the whole write has landed).
    StoreAndForward,
    /// A node forwards a block while it arrives, in pieces of `piece_bytes` (the TCP executor).
    CutThrough { piece_bytes: u64 },
}

/// What the planner assumes of the transport.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlanOptions {
    pub forwarding: Forwarding,
    /// Fixed cost of each transfer (and of each hop of a forwarded piece), seconds.
    pub latency_s: f64,
}

impl Default for PlanOptions {
    fn default() -> PlanOptions {
        PlanOptions { forwarding: Forwarding::StoreAndForward, latency_s: crate::eval::DEFAULT_LATENCY_S }
    }
}

/// The two shapes the faascale planner chooses between for a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupShape {
    Binomial,
    Chain,
}

/// Predicted completion of one group under the evaluator's link model (`eval`), seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupTimes {
    pub binomial_s: f64,
    pub chain_s: f64,
}

impl GroupTimes {
    /// The faster shape; a tie goes to the binomial pipeline (it spreads blocks over more nodes
    /// sooner, and its depth grows with log n, not n).
    pub fn shape(&self) -> GroupShape {
        if self.chain_s < self.binomial_s {
            GroupShape::Chain
        } else {
            GroupShape::Binomial
        }
    }
}

/// When a group of `members` nodes (its source included) finishes receiving blocks of
/// `block_bytes` over links of `rate_bps`, as a binomial pipeline and as a pipelined chain.
///
/// Both move every block over every receiver's link once: sum(bytes)/rate + b · latency. On top
/// of that the binomial pipeline needs ⌈log2 n⌉ − 1 more ticks (its measured bound,
/// `Binomial`), whatever the forwarding; the chain needs n − 2 more hops, each a whole block
/// when stored and forwarded, a piece when cut through. So the chain wins only by cut-through
/// and while n − 2 pieces cost less than ⌈log2 n⌉ − 1 blocks (blocks of 2 MiB, pieces of
/// 64 KiB: groups of up to about 200 nodes).
pub fn group_times(members: usize, block_bytes: &[u64], rate_bps: f64, opts: &PlanOptions) -> GroupTimes {
    if members < 2 || block_bytes.is_empty() || rate_bps.is_nan() || rate_bps <= 0.0 {
        return GroupTimes { binomial_s: 0.0, chain_s: 0.0 };
    }
    let lat = opts.latency_s.max(0.0);
    let sum: u64 = block_bytes.iter().sum();
    let max = block_bytes.iter().copied().max().unwrap_or(0);
    let all = sum as f64 / rate_bps + block_bytes.len() as f64 * lat;
    let tick = max as f64 / rate_bps + lat;
    let log2 = usize::BITS - (members - 1).leading_zeros(); // ⌈log2 n⌉ for n ≥ 2
    let hop = match opts.forwarding {
        Forwarding::StoreAndForward => tick,
        Forwarding::CutThrough { piece_bytes } => piece_bytes.clamp(1, max.max(1)) as f64 / rate_bps + lat,
    };
    GroupTimes { binomial_s: all + (log2 as f64 - 1.0) * tick, chain_s: all + (members - 2) as f64 * hop }
}

/// Builds a plan with algorithm `algo` for a store-and-forward transport
/// (`plan_with(algo, req, &PlanOptions::default())`).
pub fn plan(algo: Algo, req: &MulticastRequest) -> Result<MulticastPlan, PlanError> {
    plan_with(algo, req, &PlanOptions::default())
}

/// The shape faascale gives each group of `plan_with(Algo::Faascale, req, opts)`, in group
/// order (groups without receivers left out), with the predicted times it chose by.
pub fn faascale_shapes(req: &MulticastRequest, opts: &PlanOptions) -> Vec<(GroupShape, GroupTimes)> {
    let bytes: Vec<u64> = req.layout.transfer_blocks.iter().map(|t| t.len).collect();
    split_groups(req.receivers, req.sources.len())
        .into_iter()
        .enumerate()
        .filter(|(_, m)| !m.is_empty())
        .map(|(g, m)| {
            let rate = std::iter::once(req.sources[g])
                .chain(m.iter().copied())
                .filter_map(|x| req.cluster.nodes.get(x as usize))
                .map(|n| n.nic_bps)
                .fold(f64::INFINITY, f64::min);
            let times = group_times(m.len() + 1, &bytes, rate, opts);
            (times.shape(), times)
        })
        .collect()
}

/// Builds a plan with algorithm `algo` for a transport that forwards as `opts` says.
///
/// The plan's order is the order in which transfers are made: groups run in lock step, tick
/// by tick, and at each tick group 0's transfers come first, then group 1's, and so on (each
/// group's in its own order). Transfers are numbered, linked and scheduled as they are made.
///
/// faascale makes each group (one source, its receivers, blocks in the group's rotated order) a
/// binomial pipeline, or a pipelined chain where `group_times` predicts the chain faster: only
/// with cut-through forwarding (`Forwarding::CutThrough`); a store-and-forward plan is always
/// binomial pipelines.
pub fn plan_with(algo: Algo, req: &MulticastRequest, opts: &PlanOptions) -> Result<MulticastPlan, PlanError> {
    if !(opts.latency_s.is_finite() && opts.latency_s >= 0.0) {
        return invalid(format!("latency {} s must be finite and not negative", opts.latency_s));
    }
    if opts.forwarding == (Forwarding::CutThrough { piece_bytes: 0 }) {
        return invalid("cut-through forwarding with pieces of 0 bytes".into());
    }
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
    // Every planner moves each block to each receiver exactly once.
    let total = match req.receivers.len().checked_mul(nb) {
        Some(t) if t < u32::MAX as usize => t,
        _ => {
            return invalid(format!(
                "{} receivers × {nb} transfer blocks: more transfers than a plan can number",
                req.receivers.len()
            ))
        }
    };
    let mut sink = Sink::new(n, nb, total);
    match algo {
        Algo::Faascale | Algo::Binomial | Algo::Nccl | Algo::Faasnet => {
            let k = if algo == Algo::Binomial { 1 } else { req.sources.len() };
            let ids: Vec<u32> = (0..nb as u32).collect();
            let exec_keys: Vec<u32> = req.layout.transfer_blocks.iter().map(|t| t.exec_block).collect();
            let shapes = if algo == Algo::Faascale { faascale_shapes(req, opts) } else { Vec::new() };
            let mut runs = Vec::with_capacity(k);
            for (g, members) in split_groups(req.receivers, k).into_iter().enumerate() {
                if members.is_empty() {
                    continue;
                }
                let mut group = Vec::with_capacity(members.len() + 1);
                group.push(req.sources[g]);
                group.extend_from_slice(members);
                runs.push(match algo {
                    Algo::Faascale => {
                        let order = rotated_order_by(&exec_keys, k, g);
                        match shapes.get(runs.len()).map(|s| s.0) {
                            Some(GroupShape::Chain) => Run::Chain(Chain { group, order }),
                            _ => Run::Binomial(Box::new(Binomial::new(group, order))),
                        }
                    }
                    Algo::Binomial => Run::Binomial(Box::new(Binomial::new(group, ids.clone()))),
                    Algo::Nccl => Run::Chain(Chain { group, order: ids.clone() }),
                    _ => Run::Tree(Tree::new(group, ids.clone())),
                });
            }
            let mut t = 0usize;
            loop {
                let mut any = false;
                for run in &mut runs {
                    if run.active(t) {
                        any = true;
                        run.step(t, &mut sink)?;
                    }
                }
                if !any {
                    break;
                }
                t += 1;
            }
        }
        Algo::Serverlessllm => {
            let place = req.cluster.placement(&req.layout.name);
            for (pos, t) in req.layout.transfer_blocks.iter().enumerate() {
                for &r in req.receivers {
                    let tier = place
                        .and_then(|p| p.tiers.get(r as usize))
                        .and_then(|row| row.get(t.exec_block as usize))
                        .copied()
                        .unwrap_or(Tier::Remote);
                    let node = &req.cluster.nodes[r as usize];
                    let from = match tier {
                        Tier::Gpu | Tier::Host if node.pcie_bps > 0.0 => TransferSource::Host,
                        Tier::Ssd if node.ssd_bps > 0.0 && node.pcie_bps > 0.0 => TransferSource::Ssd,
                        _ => TransferSource::Remote,
                    };
                    if from == TransferSource::Remote && req.cluster.remote_store_bps <= 0.0 {
                        return invalid(format!("node {r} must load from the remote store, whose rate is 0"));
                    }
                    sink.push(pos as u32, from, r, t.id);
                }
            }
        }
    }
    let initial = Holdings::with_sources(n, nb, req.sources);
    Ok(sink.finish(
        algo,
        0,
        req.layout.transfer_blocks.iter().map(|t| t.len).collect(),
        req.receivers.to_vec(),
        initial,
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

/// One group's planner, run tick by tick.
enum Run {
    Binomial(Box<Binomial>),
    Chain(Chain),
    Tree(Tree),
}

impl Run {
    /// Whether the group may still make transfers at tick `t` or later.
    fn active(&self, t: usize) -> bool {
        match self {
            Run::Binomial(x) => x.done < x.group.len(),
            Run::Chain(x) => x.group.len() >= 2 && t < x.order.len() + x.group.len() - 2,
            Run::Tree(x) => x.group.len() >= 2 && t < x.order.len() + x.levels.len(),
        }
    }

    /// Makes the group's transfers of tick `t`, in order.
    fn step(&mut self, t: usize, sink: &mut Sink) -> Result<(), PlanError> {
        match self {
            Run::Binomial(x) => x.step(t, sink)?,
            Run::Chain(x) => x.step(t, sink),
            Run::Tree(x) => x.step(t, sink),
        }
        Ok(())
    }
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
struct Binomial {
    group: Vec<u32>,
    order: Vec<u32>,
    /// ⌊log2 n⌋
    l: usize,
    /// 2^l
    cube: usize,
    /// `twin[v]`: the extra member of vertex v, if any.
    twin: Vec<Option<usize>>,
    /// 64-bit words per member in `have`.
    words: usize,
    /// Bit `pos` of member m's row (`have[m * words ..][pos / 64]`, bit `pos % 64`): m holds
    /// block `order[pos]`.
    have: Vec<u64>,
    /// 1 + highest position held (0: none).
    top: Vec<usize>,
    count: Vec<usize>,
    /// Members holding every block.
    done: usize,
    /// Scratch of `step`: (sending member, receiving member, position).
    deliveries: Vec<(usize, usize, usize)>,
    up: Vec<bool>,
    down: Vec<Option<usize>>,
    /// `sender[v]`: the member of vertex v that sends to the hypercube this tick.
    sender: Vec<usize>,
    /// Ticks after which the group is declared stuck.
    cap: usize,
}

/// The highest position below `top` whose bit is set in `word(i)` (the i-th 64-bit word of a
/// bit row): the newest block a predicate over bit rows selects.
#[inline]
fn highest_below(top: usize, word: impl Fn(usize) -> u64) -> Option<usize> {
    if top == 0 {
        return None;
    }
    let mut w = (top - 1) / 64;
    let mut mask = u64::MAX >> (63 - (top - 1) % 64);
    loop {
        let m = word(w) & mask;
        if m != 0 {
            return Some(w * 64 + 63 - m.leading_zeros() as usize);
        }
        if w == 0 {
            return None;
        }
        w -= 1;
        mask = u64::MAX;
    }
}

impl Binomial {
    fn new(group: Vec<u32>, order: Vec<u32>) -> Binomial {
        let n = group.len();
        let b = order.len();
        let l = if n == 0 { 0 } else { usize::BITS as usize - 1 - n.leading_zeros() as usize };
        let cube = 1usize << l;
        let mut twin: Vec<Option<usize>> = vec![None; cube];
        for e in 0..n.saturating_sub(cube) {
            twin[e + 1] = Some(cube + e);
        }
        let words = b.div_ceil(64);
        let mut have = vec![0u64; n * words];
        let mut top = vec![0usize; n];
        let mut count = vec![0usize; n];
        // Nothing to do for fewer than two members or no block.
        let done = if n < 2 || b == 0 {
            n
        } else {
            for pos in 0..b {
                have[pos / 64] |= 1 << (pos % 64);
            }
            top[0] = b;
            count[0] = b;
            1
        };
        Binomial {
            group,
            order,
            l,
            cube,
            twin,
            words,
            have,
            top,
            count,
            done,
            deliveries: Vec::with_capacity(2 * n),
            up: vec![false; n],
            down: vec![None; n],
            sender: vec![0usize; cube],
            cap: 4 * (b + n) + 16,
        }
    }

    fn step(&mut self, t: usize, sink: &mut Sink) -> Result<(), PlanError> {
        let (n, b, l, cube, words) = (self.group.len(), self.order.len(), self.l, self.cube, self.words);
        if t > self.cap {
            return invalid(format!("internal: binomial pipeline over {n} nodes did not finish in {} ticks", self.cap));
        }
        let Binomial { twin, have, top, count, deliveries, up, down, sender, .. } = self;
        deliveries.clear();
        up.iter_mut().for_each(|x| *x = false);
        down.iter_mut().for_each(|x| *x = None);
        let dim = if l == 0 { 0 } else { 1usize << (t % l) };
        // word i of member m's row; of a missing member, nothing
        let row = |m: Option<usize>, i: usize| m.map_or(0, |m| have[m * words + i]);
        let holds = |m: usize, x: usize| have[m * words + x / 64] >> (x % 64) & 1 == 1;
        // Each vertex first picks its sending member: the member holding the newest block that
        // neither member of the partner vertex holds (ties: alternate by tick).
        for v in 0..cube.min(n) {
            let p = v ^ dim;
            sender[v] = v;
            if p == v || p >= n {
                continue;
            }
            if let Some(e) = twin[v] {
                let tops = top[v].max(top[e]);
                let (pe, vs, es) = (twin[p], Some(v), Some(e));
                let want = highest_below(tops, |i| (row(vs, i) | row(es, i)) & !(row(Some(p), i) | row(pe, i)));
                sender[v] = match want {
                    Some(x) if holds(v, x) && !holds(e, x) => v,
                    Some(x) if holds(e, x) && !holds(v, x) => e,
                    _ if t % 2 == 1 => e,
                    _ => v,
                };
            }
        }
        // (sending member, receiving member) of each vertex pair
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
                let (ss, rs) = (Some(s), Some(r));
                highest_below(top[s], |i| row(ss, i) & !row(rs, i) & !row(other, i))
                    .or_else(|| highest_below(top[s], |i| row(ss, i) & !row(rs, i)))
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
                        if let Some(pos) = highest_below(top[s], |i| row(Some(s), i) & !row(Some(r), i)) {
                            deliveries.push((s, r, pos));
                            up[s] = true;
                            down[r] = Some(pos);
                        }
                    }
                }
            }
        }
        for &(s, r, pos) in deliveries.iter() {
            let (w, bit) = (r * words + pos / 64, 1u64 << (pos % 64));
            debug_assert!(have[w] & bit == 0);
            have[w] |= bit;
            top[r] = top[r].max(pos + 1);
            count[r] += 1;
            if count[r] == b {
                self.done += 1;
            }
            sink.push(t as u32, TransferSource::Node(self.group[s]), self.group[r], self.order[pos]);
        }
        Ok(())
    }
}

/// Pipelined chain: at tick t member i sends block t − i to member i + 1.
struct Chain {
    group: Vec<u32>,
    order: Vec<u32>,
}

impl Chain {
    fn step(&mut self, t: usize, sink: &mut Sink) {
        let (n, b) = (self.group.len(), self.order.len());
        // members i < n − 1 with 0 ≤ t − i < b
        for i in (t + 1).saturating_sub(b)..(n - 1).min(t + 1) {
            sink.push(t as u32, TransferSource::Node(self.group[i]), self.group[i + 1], self.order[t - i]);
        }
    }
}

/// Binary tree in heap order (member i's children are 2i + 1 and 2i + 2); each node forwards
/// each block to its children as soon as it has it, blocks in order, left child first: member
/// i at depth d sends block j at tick j + d.
struct Tree {
    group: Vec<u32>,
    order: Vec<u32>,
    /// `levels[d]`: the members at depth d (2^d − 1 .. 2^(d+1) − 1, cut at n).
    levels: Vec<std::ops::Range<usize>>,
}

impl Tree {
    fn new(group: Vec<u32>, order: Vec<u32>) -> Tree {
        let n = group.len();
        let mut levels = Vec::new();
        let mut lo = 0usize;
        while lo < n {
            let hi = (2 * lo + 1).min(n);
            levels.push(lo..hi);
            lo = hi;
        }
        Tree { group, order, levels }
    }

    /// Tick t's transfers in the order of (block position, member, child): deepest senders
    /// (oldest blocks) first.
    fn step(&mut self, t: usize, sink: &mut Sink) {
        let (n, b) = (self.group.len(), self.order.len());
        for d in (0..self.levels.len().min(t + 1)).rev() {
            let j = t - d;
            if j >= b {
                break; // shallower levels have younger positions still ≥ b
            }
            for i in self.levels[d].clone() {
                if 2 * i + 1 >= n {
                    break;
                }
                for c in [2 * i + 1, 2 * i + 2] {
                    if c < n {
                        sink.push(t as u32, TransferSource::Node(self.group[i]), self.group[c], self.order[j]);
                    }
                }
            }
        }
    }
}

/// Receives transfers in plan order: numbers them and links `after`; `finish` builds the
/// per-node schedules in one pass over the transfers, each list allocated at its exact length.
struct Sink {
    nb: usize,
    /// `via[node * nb + block]`: 1 + the id of the transfer that brought `block` to `node`
    /// (0: none yet; zero so that rows never written cost no memory).
    via: Vec<u32>,
    transfers: Vec<Transfer>,
    /// Per node: how many transfers it sends, receives.
    sends: Vec<u32>,
    recvs: Vec<u32>,
}

impl Sink {
    /// For `n` nodes, `nb` blocks and room for `capacity` transfers (the caller keeps the
    /// count below `u32::MAX`).
    fn new(n: usize, nb: usize, capacity: usize) -> Sink {
        Sink { nb, via: vec![0; n * nb], transfers: Vec::with_capacity(capacity), sends: vec![0; n], recvs: vec![0; n] }
    }

    #[inline(always)]
    fn push(&mut self, tick: u32, from: TransferSource, to: u32, block: u32) {
        let id = self.transfers.len() as u32;
        let after = match from {
            TransferSource::Node(s) => {
                self.sends[s as usize] += 1;
                self.via[s as usize * self.nb + block as usize].checked_sub(1)
            }
            _ => None,
        };
        self.via[to as usize * self.nb + block as usize] = id + 1;
        self.recvs[to as usize] += 1;
        self.transfers.push(Transfer { id, block, from, to, after, tick });
    }

    fn finish(
        self,
        algo: Algo,
        epoch: u64,
        block_bytes: Vec<u64>,
        receivers: Vec<u32>,
        initial: Holdings,
    ) -> MulticastPlan {
        drop(self.via);
        let mut nodes: Vec<NodeSchedule> = self
            .sends
            .iter()
            .zip(&self.recvs)
            .map(|(&s, &r)| NodeSchedule {
                sends: Vec::with_capacity(s as usize),
                recvs: Vec::with_capacity(r as usize),
            })
            .collect();
        for t in &self.transfers {
            if let TransferSource::Node(s) = t.from {
                nodes[s as usize].sends.push(t.id);
            }
            nodes[t.to as usize].recvs.push(t.id);
        }
        MulticastPlan {
            version: PLAN_TYPES_VERSION,
            epoch,
            algo,
            num_nodes: nodes.len(),
            block_bytes,
            receivers,
            initial,
            transfers: self.transfers,
            nodes,
        }
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
        let total: usize = missing.iter().map(Vec::len).sum();
        if total >= u32::MAX as usize {
            return invalid(format!("{total} transfers to make: more than a plan can number"));
        }
        let mut sink = Sink::new(n, nb, total);
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
                    sink.push(round, TransferSource::Node(h), r, b);
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
        Ok(sink.finish(self.algo, self.epoch + 1, self.block_bytes.clone(), receivers, initial))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uniform_layout;
    use proptest::prelude::*;

    proptest! {
        /// The bit-row search finds what a plain scan over the bits finds.
        #[test]
        fn highest_below_is_the_last_set_bit_below_top(
            words in proptest::collection::vec(any::<u64>(), 1..5),
            sparse in 0u32..4,
            top_at in 0usize..400,
        ) {
            // sparse rows (most words zero) reach the scan's lower words
            let row: Vec<u64> = words.iter().enumerate().map(|(i, &w)| if (i as u32) < sparse { 0 } else { w }).collect();
            let top = top_at % (64 * row.len() + 1);
            let naive = (0..top).rev().find(|&x| row[x / 64] >> (x % 64) & 1 == 1);
            prop_assert_eq!(highest_below(top, |i| row[i]), naive);
        }

        /// The lock-step order: transfers by tick, and within a tick by receiver group (the
        /// group whose member receives), each group's in its own order.
        #[test]
        fn transfers_are_ordered_by_tick_then_group(
            n in 2usize..60, k in 1usize..6, e in 1usize..5, t in 1u64..5, a in 0usize..4, shuffle in any::<u64>(),
        ) {
            let k = k.min(n - 1);
            let cluster = Cluster::uniform(n, 50e9, 10e9);
            let layout = uniform_layout("m", e as u64 * t * 4096, e, Some(4096)).unwrap();
            let mut ids: Vec<u32> = (0..n as u32).collect();
            ids.rotate_left((shuffle % n as u64) as usize);
            let (sources, receivers) = ids.split_at(k);
            let algo = [Algo::Faascale, Algo::Binomial, Algo::Nccl, Algo::Faasnet][a];
            let req = MulticastRequest { cluster: &cluster, layout: &layout, sources, receivers };
            let p = plan(algo, &req).unwrap();
            let kk = if algo == Algo::Binomial { 1 } else { k };
            let mut group_of = vec![usize::MAX; n];
            for (g, members) in split_groups(receivers, kk).into_iter().enumerate() {
                for &m in members {
                    group_of[m as usize] = g;
                }
            }
            prop_assert_eq!(p.transfers.len(), receivers.len() * layout.transfer_blocks.len());
            for w in p.transfers.windows(2) {
                let key = |x: &Transfer| (x.tick, group_of[x.to as usize]);
                prop_assert!(key(&w[0]) <= key(&w[1]), "{:?} then {:?}", w[0], w[1]);
            }
        }
    }
}
