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
//! 3. with `Algo::Faascale`, the execution plan over all receivers (warm and cold together)
//!    says which pipelines serve from when; with the other algorithms a receiver serves only
//!    once it holds the whole model.
//!
//! Times are seconds from the start.

use crate::cluster::{Cluster, ModelPlacement, Tier};
use crate::eval::evaluate;
use crate::exec::{exec_arrivals, exec_plan_from_arrivals, ExecPlan};
use crate::layout::ModelLayout;
use crate::multicast::{plan, Algo, MulticastRequest};

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
    let mut receivers = Vec::new();
    let mut arrival: Vec<Vec<f64>> = Vec::new();

    // 1. Warm receivers: PCIe from host memory, rotated starts with execute-while-load.
    let w = req.warm_receivers.len();
    for (j, &r) in req.warm_receivers.iter().enumerate() {
        let pcie = req.cluster.nodes[r as usize].pcie_bps;
        if !(pcie > 0.0) {
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
    if !req.cold_receivers.is_empty() {
        let holders: Vec<u32> = req.hot.iter().chain(req.warm).copied().collect();
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
        let mc = plan(
            algo,
            &MulticastRequest { cluster: &sub, layout: req.layout, sources: &src_local, receivers: &rcv_local },
        )
        .map_err(|e| e.to_string())?;
        let ev = evaluate(&mc, &sub, req.latency_s)?;
        let exec_arr = exec_arrivals(&ev, req.layout)?;
        for (i, &r) in req.cold_receivers.iter().enumerate() {
            let row = &exec_arr[sources.len() + i];
            let row: Option<Vec<f64>> = row.iter().copied().collect();
            let row = row.ok_or_else(|| format!("node {r} never receives the whole model"))?;
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
    Ok(StartPlan { receivers, arrival, complete_s, sources, exec })
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
        };
        let p = plan_start(&req).unwrap();
        assert!(p.sources.is_empty());
        assert!(p.complete_s.iter().all(|&t| (t - 13.48e9 / 5e9).abs() < 0.01), "{:?}", p.complete_s);
        assert!(plan_start(&StartRequest { cold_receivers: &[0, 9], ..req.clone() }).unwrap_err().contains("node 9"));
        assert!(plan_start(&StartRequest { hot: &[0], ..req.clone() }).unwrap_err().contains("twice"));
        assert!(plan_start(&StartRequest { cold_receivers: &[], ..req.clone() }).is_err());
    }
}
