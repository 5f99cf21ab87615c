//! Start-up by locality: how new instances of a model get its blocks, and when they can serve.
//!
//! Given the nodes that serve the model now (hot: weights in GPU memory), the nodes that keep it
//! in host memory (warm) and the nodes to start, `plan_start`:
//! 1. warm receivers load from their own host memory over PCIe. With execute-while-load
//!    (`Algo::Faascale`) the W warm receivers load *different* parts first: receiver j starts at
//!    execution block ⌊j·B/W⌋ and wraps around, so after about 1/W of the PCIe time they
//!    together hold a copy and pipeline across each other;
//! 2. cold receivers get the model by multicast from up to `max_sources` holders, hot ones
//!    first (their NICs are idle while their GPUs serve), then warm ones (RDMA from host
//!    memory), with the chosen algorithm: k = min(holders, cold receivers, `max_sources`)
//!    sources, each feeding one group. With no holder at all, or with `Algo::Serverlessllm`,
//!    each cold receiver loads from its own SSD if it has one, else from the shared remote
//!    store;
//!    The holders are taken in order of when their uplink is free (`link_free_s`: a NIC that is
//!    still sending an earlier start-up is one resource, not a fresh source), hot before warm
//!    on ties. `Algo::Nccl` is a pipelined chain per source in NCCL's own chunks
//!    (`NCCL_CHUNK_BYTES`, a fixed cost of latency / `NCCL_STEPS` each), computed in closed
//!    form (the evaluator's recurrence for a chain); the others are planned and evaluated with
//!    `evaluate_busy`, which starts every link at its `link_free_s`;
//! 3. with `Algo::Faascale`, the execution plan over all receivers (warm and cold together)
//!    says which pipelines serve from when; with the other algorithms a receiver serves only
//!    once it holds the whole model.
//!
//! Times are seconds from the start.

use crate::cluster::{Cluster, ModelPlacement, Tier};
use crate::eval::evaluate_busy;
use crate::exec::{exec_arrivals, exec_plan_from_arrivals, ExecPlan};
use crate::layout::ModelLayout;
use crate::multicast::{plan, Algo, Forwarding, MulticastRequest, TransferSource, NCCL_CHUNK_BYTES, NCCL_STEPS};

/// What to start.
#[derive(Clone, Debug)]
pub struct StartRequest<'a> {
    /// Node rates; `cluster.nodes[i]` for every node named below.
    pub cluster: &'a Cluster,
    pub layout: &'a ModelLayout,
    /// Nodes serving the model from GPU memory.
    pub hot: &'a [u32],
    /// Nodes holding the model in host memory, not among the receivers.
    pub warm: &'a [u32],
    /// Receivers that hold the model in host memory.
    pub warm_receivers: &'a [u32],
    /// Receivers that do not hold it.
    pub cold_receivers: &'a [u32],
    pub algo: Algo,
    /// The most multicast sources (k).
    pub max_sources: usize,
    pub latency_s: f64,
    /// `(uplink free at, downlink free at)` of every cluster node, seconds from the start (links
    /// still carrying earlier start-ups); `None`: every link idle.
    pub link_free_s: Option<&'a [(f64, f64)]>,
}

/// How the receivers start.
#[derive(Clone, Debug, PartialEq)]
pub struct StartPlan {
    /// Warm receivers then cold receivers, in the request's order.
    pub receivers: Vec<u32>,
    /// `arrival[i][e]`: when `receivers[i]` holds execution block `e`.
    pub arrival: Vec<Vec<f64>>,
    /// When `receivers[i]` holds the whole model.
    pub complete_s: Vec<f64>,
    /// The multicast sources chosen (empty: none used).
    pub sources: Vec<u32>,
    /// With `Algo::Faascale`: the pipelines over the receivers; stage nodes are cluster node ids.
    pub exec: Option<ExecPlan>,
    /// `(node, uplink busy until, downlink busy until)` for every node whose NIC this start-up
    /// uses, seconds from the start.
    pub link_busy_s: Vec<(u32, f64, f64)>,
}

impl StartPlan {
    /// The earliest moment a request can be served by these receivers.
    pub fn first_serve_s(&self) -> f64 {
        let local = self.complete_s.iter().copied().fold(f64::INFINITY, f64::min);
        let piped = self.exec.as_ref().and_then(|e| e.pipelines.first()).map_or(f64::INFINITY, |p| p.valid_from_s);
        local.min(piped)
    }
}

/// Plans the start of the receivers (see the module comment).
pub fn plan_start(req: &StartRequest) -> Result<StartPlan, String> {
    let n = req.cluster.nodes.len();
    let nb = req.layout.exec_blocks.len();
    let all = req.hot.iter().chain(req.warm).chain(req.warm_receivers).chain(req.cold_receivers);
    let mut seen = vec![false; n];
    for &x in all {
        let i = x as usize;
        if i >= n {
            return Err(format!("node {x} does not exist (the cluster has {n} nodes)"));
        }
        if seen[i] {
            return Err(format!("node {x} is named twice among hot, warm and receiving nodes"));
        }
        seen[i] = true;
    }
    if req.warm_receivers.is_empty() && req.cold_receivers.is_empty() {
        return Err("no receivers to start".into());
    }
    if req.max_sources == 0 {
        return Err("max_sources is 0".into());
    }
    if let Some(l) = req.link_free_s {
        if l.len() != n {
            return Err(format!("link occupancy for {} nodes, the cluster has {n}", l.len()));
        }
    }
    let free = |x: u32| req.link_free_s.map_or((0.0, 0.0), |l| l[x as usize]);
    let mut receivers = Vec::new();
    let mut arrival: Vec<Vec<f64>> = Vec::new();

    // 1. Warm receivers: PCIe from host memory, rotated starts with execute-while-load.
    let w = req.warm_receivers.len();
    for (j, &r) in req.warm_receivers.iter().enumerate() {
        let pcie = req.cluster.nodes[r as usize].pcie_bps;
        if pcie.is_nan() || pcie <= 0.0 {
            return Err(format!("warm node {r} has no PCIe rate"));
        }
        let first = if req.algo == Algo::Faascale { j * nb / w } else { 0 };
        let mut row = vec![0.0; nb];
        let mut t = 0.0;
        for step in 0..nb {
            let e = (first + step) % nb;
            t += req.latency_s + req.layout.exec_blocks[e].len as f64 / pcie;
            row[e] = t;
        }
        receivers.push(r);
        arrival.push(row);
    }

    // 2. Cold receivers: multicast from holders, else each from its own SSD or the remote store.
    let mut sources = Vec::new();
    let mut link_busy_s: Vec<(u32, f64, f64)> = Vec::new();
    if !req.cold_receivers.is_empty() {
        let mut holders: Vec<u32> = req.hot.iter().chain(req.warm).copied().collect();
        // Soonest-free uplink first; the sort is stable, so hot before warm on ties.
        holders.sort_by(|&a, &b| free(a).0.total_cmp(&free(b).0));
        let k = holders.len().min(req.cold_receivers.len()).min(req.max_sources);
        let algo = if k == 0 { Algo::Serverlessllm } else { req.algo };
        if algo != Algo::Serverlessllm {
            sources = holders[..k].to_vec();
        }
        // A small cluster of just the sources and the cold receivers: the plan's size does not
        // grow with the rest of the cluster.
        let members: Vec<u32> = sources.iter().chain(req.cold_receivers).copied().collect();
        let sub = Cluster {
            version: req.cluster.version,
            nodes: members.iter().map(|&x| req.cluster.nodes[x as usize].clone()).collect(),
            remote_store_bps: req.cluster.remote_store_bps,
            models: vec![ModelPlacement {
                model: req.layout.name.clone(),
                tiers: members
                    .iter()
                    .map(|&x| {
                        let node = &req.cluster.nodes[x as usize];
                        vec![if node.ssd_bps > 0.0 { Tier::Ssd } else { Tier::Remote }; nb]
                    })
                    .collect(),
            }],
        };
        let src_local: Vec<u32> = (0..sources.len() as u32).collect();
        let rcv_local: Vec<u32> = (sources.len() as u32..members.len() as u32).collect();
        let busy: Vec<(f64, f64)> = members.iter().map(|&x| free(x)).collect();
        let mut up = vec![0.0f64; members.len()];
        let mut down = vec![0.0f64; members.len()];
        let rows: Vec<Vec<f64>> = if algo == Algo::Nccl {
            let groups = crate::multicast::split_groups(&rcv_local, sources.len());
            let mut rows = vec![Vec::new(); req.cold_receivers.len()];
            for (g, m) in groups.into_iter().enumerate() {
                let mut chain = vec![src_local[g]];
                chain.extend_from_slice(m);
                for (d, row) in nccl_chain(&sub, req.layout, &chain, &busy, req.latency_s).into_iter().enumerate() {
                    let last = row.iter().copied().fold(0.0, f64::max);
                    let (from, to) = (chain[d] as usize, chain[d + 1] as usize);
                    up[from] = up[from].max(last);
                    down[to] = down[to].max(last);
                    rows[to - sources.len()] = row;
                }
            }
            rows
        } else {
            let mc = plan(
                algo,
                &MulticastRequest { cluster: &sub, layout: req.layout, sources: &src_local, receivers: &rcv_local },
            )
            .map_err(|e| e.to_string())?;
            let ev = evaluate_busy(&mc, &sub, req.latency_s, Forwarding::StoreAndForward, Some(&busy))?;
            for (t, &(_, end)) in mc.transfers.iter().zip(&ev.transfer_times) {
                match t.from {
                    TransferSource::Node(x) => {
                        up[x as usize] = up[x as usize].max(end);
                        down[t.to as usize] = down[t.to as usize].max(end);
                    }
                    TransferSource::Remote => down[t.to as usize] = down[t.to as usize].max(end),
                    TransferSource::Host | TransferSource::Ssd => {}
                }
            }
            let exec_arr = exec_arrivals(&ev, req.layout)?;
            let mut rows = Vec::with_capacity(req.cold_receivers.len());
            for (i, &r) in req.cold_receivers.iter().enumerate() {
                let row: Option<Vec<f64>> = exec_arr[sources.len() + i].iter().copied().collect();
                rows.push(row.ok_or_else(|| format!("node {r} never receives the whole model"))?);
            }
            rows
        };
        for (i, &x) in members.iter().enumerate() {
            if up[i] > 0.0 || down[i] > 0.0 {
                link_busy_s.push((x, up[i], down[i]));
            }
        }
        for (&r, row) in req.cold_receivers.iter().zip(rows) {
            receivers.push(r);
            arrival.push(row);
        }
    }

    let complete_s: Vec<f64> = arrival.iter().map(|row| row.iter().copied().fold(0.0, f64::max)).collect();
    let exec = if req.algo == Algo::Faascale {
        // Local indices (receiver i is row i), mapped back to cluster node ids afterwards.
        let rows: Vec<Vec<Option<f64>>> = arrival.iter().map(|row| row.iter().map(|&a| Some(a)).collect()).collect();
        let local: Vec<u32> = (0..receivers.len() as u32).collect();
        let mut e = exec_plan_from_arrivals(&rows, &local, nb)?;
        for p in &mut e.pipelines {
            for s in &mut p.stages {
                s.node = receivers[s.node as usize];
            }
        }
        for h in &mut e.handoffs {
            h.node = receivers[h.node as usize];
        }
        Some(e)
    } else {
        None
    };
    Ok(StartPlan { receivers, arrival, complete_s, sources, exec, link_busy_s })
}

/// An NCCL chain `chain[0] → chain[1] → …` in NCCL's chunks: `rows[d][e]`, when `chain[d + 1]`
/// holds execution block `e`. Each execution block is cut into chunks of `NCCL_CHUNK_BYTES`
/// (the last one shorter) and sent in order; the evaluator's recurrence for a chain with
/// store-and-forward hops: hop d of chunk j ends at max(hop d − 1 of chunk j, hop d of chunk
/// j − 1, the link's free time) + latency / `NCCL_STEPS` + bytes / min(NIC rates).
pub fn nccl_chain(
    cluster: &Cluster,
    layout: &ModelLayout,
    chain: &[u32],
    link_free_s: &[(f64, f64)],
    latency_s: f64,
) -> Vec<Vec<f64>> {
    let lat = latency_s / f64::from(NCCL_STEPS);
    let chunks: Vec<(u64, usize)> = layout
        .exec_blocks
        .iter()
        .enumerate()
        .flat_map(|(e, b)| {
            let n = b.len.div_ceil(NCCL_CHUNK_BYTES).max(1);
            (0..n).map(move |i| ((b.len - i * NCCL_CHUNK_BYTES).min(NCCL_CHUNK_BYTES), e))
        })
        .collect();
    let nb = layout.exec_blocks.len();
    // `prev[j]`: when the previous member held chunk j (the source: from the start).
    let mut prev = vec![0.0f64; chunks.len()];
    let mut rows = Vec::with_capacity(chain.len().saturating_sub(1));
    for d in 1..chain.len() {
        let (s, r) = (chain[d - 1] as usize, chain[d] as usize);
        let rate = cluster.nodes[s].nic_bps.min(cluster.nodes[r].nic_bps);
        let mut t = link_free_s[s].0.max(link_free_s[r].1).max(0.0);
        let mut row = vec![0.0f64; nb];
        for (j, &(bytes, e)) in chunks.iter().enumerate() {
            t = t.max(prev[j]) + lat + bytes as f64 / rate;
            prev[j] = t;
            row[e] = t;
        }
        rows.push(row);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(n: usize) -> (Cluster, ModelLayout) {
        let c = Cluster::uniform(n, 50e9, 1.25e9);
        let l = crate::uniform_layout("m", 13_480_000_000, 8, None).unwrap();
        (c, l)
    }

    #[test]
    fn warm_nodes_pipeline_before_they_complete() {
        let (c, l) = setup(8);
        let req = StartRequest {
            cluster: &c,
            layout: &l,
            hot: &[],
            warm: &[],
            warm_receivers: &[0, 1, 2, 3],
            cold_receivers: &[],
            algo: Algo::Faascale,
            max_sources: 8,
            latency_s: 10e-6,
            link_free_s: None,
        };
        let p = plan_start(&req).unwrap();
        let pcie_s = 13.48e9 / 54.6e9;
        assert!(p.complete_s.iter().all(|&t| (t - pcie_s).abs() < 1e-3), "{:?}", p.complete_s);
        // Four warm nodes each load a different quarter first: a pipeline after a quarter.
        assert!((p.first_serve_s() - pcie_s / 4.0).abs() < 1e-3, "{}", p.first_serve_s());
        let nccl = plan_start(&StartRequest { algo: Algo::Nccl, ..req }).unwrap();
        assert!((nccl.first_serve_s() - pcie_s).abs() < 1e-3);
        assert!(nccl.exec.is_none());
    }

    #[test]
    fn cold_nodes_multicast_from_hot_then_warm_sources() {
        let (c, l) = setup(12);
        let req = StartRequest {
            cluster: &c,
            layout: &l,
            hot: &[0],
            warm: &[1],
            warm_receivers: &[],
            cold_receivers: &[2, 3, 4, 5, 6, 7, 8, 9],
            algo: Algo::Faascale,
            max_sources: 8,
            latency_s: 10e-6,
            link_free_s: None,
        };
        let p = plan_start(&req).unwrap();
        assert_eq!(p.sources, vec![0, 1]);
        let lower = 13.48e9 / 50e9;
        let done = p.complete_s.iter().copied().fold(0.0, f64::max);
        assert!(done >= lower && done < 1.2 * lower, "{done} vs {lower}");
        // Two sources: the receivers together hold a copy after about half the time.
        assert!(p.first_serve_s() < 0.65 * lower, "{}", p.first_serve_s());
        let one = plan_start(&StartRequest { max_sources: 1, ..req.clone() }).unwrap();
        assert_eq!(one.sources, vec![0]);
        assert!(one.first_serve_s() > p.first_serve_s());
        // Every pipeline stage runs on a receiver holding its blocks by then.
        let e = p.exec.as_ref().unwrap();
        for pipe in &e.pipelines {
            for s in &pipe.stages {
                let i = p.receivers.iter().position(|&r| r == s.node).unwrap();
                for b in s.blocks.clone() {
                    assert!(p.arrival[i][b as usize] <= pipe.valid_from_s + 1e-12);
                }
            }
        }
    }

    #[test]
    fn no_holder_loads_from_storage_and_bad_input_is_refused() {
        let (mut c, l) = setup(4);
        for node in &mut c.nodes {
            node.ssd_bps = 5e9;
        }
        let req = StartRequest {
            cluster: &c,
            layout: &l,
            hot: &[],
            warm: &[],
            warm_receivers: &[],
            cold_receivers: &[0, 1],
            algo: Algo::Faascale,
            max_sources: 8,
            latency_s: 10e-6,
            link_free_s: None,
        };
        let p = plan_start(&req).unwrap();
        assert!(p.sources.is_empty());
        assert!(p.complete_s.iter().all(|&t| (t - 13.48e9 / 5e9).abs() < 0.01), "{:?}", p.complete_s);
        assert!(plan_start(&StartRequest { cold_receivers: &[0, 9], ..req.clone() }).unwrap_err().contains("node 9"));
        assert!(plan_start(&StartRequest { hot: &[0], ..req.clone() }).unwrap_err().contains("twice"));
        assert!(plan_start(&StartRequest { cold_receivers: &[], ..req.clone() }).is_err());
    }

    /// A NIC is one resource: a second start-up whose only source is still sending the first
    /// one's blocks completes later than on idle links, by about the first's remaining time.
    #[test]
    fn nic_sharing_slows_concurrent_start_ups() {
        let (c, l) = setup(8);
        let first = plan_start(&StartRequest {
            cluster: &c,
            layout: &l,
            hot: &[0],
            warm: &[],
            warm_receivers: &[],
            cold_receivers: &[1, 2, 3],
            algo: Algo::Faascale,
            max_sources: 8,
            latency_s: 10e-6,
            link_free_s: None,
        })
        .unwrap();
        let mut busy = vec![(0.0, 0.0); 8];
        for &(x, up, down) in &first.link_busy_s {
            busy[x as usize] = (up, down);
        }
        assert!(busy[0].0 > 0.25, "the source's uplink is busy: {:?}", busy[0]);
        let second = StartRequest {
            cluster: &c,
            layout: &l,
            hot: &[0],
            warm: &[],
            warm_receivers: &[],
            cold_receivers: &[4, 5],
            algo: Algo::Faascale,
            max_sources: 8,
            latency_s: 10e-6,
            link_free_s: None,
        };
        let idle = plan_start(&second).unwrap();
        let shared = plan_start(&StartRequest { link_free_s: Some(&busy), ..second.clone() }).unwrap();
        let done = |p: &StartPlan| p.complete_s.iter().copied().fold(0.0, f64::max);
        assert!(done(&shared) >= done(&idle) + busy[0].0 - 1e-9, "{} vs {}", done(&shared), done(&idle));
        // With a second holder free, the planner takes it first.
        let other = plan_start(&StartRequest { hot: &[0, 6], link_free_s: Some(&busy), ..second.clone() }).unwrap();
        assert_eq!(other.sources, vec![6, 0]);
        for algo in [Algo::Nccl, Algo::Faasnet] {
            let a = plan_start(&StartRequest { algo, ..second.clone() }).unwrap();
            let b = plan_start(&StartRequest { algo, link_free_s: Some(&busy), ..second.clone() }).unwrap();
            assert!(done(&b) >= done(&a) + busy[0].0 - 1e-9, "{algo:?}");
        }
    }
}
