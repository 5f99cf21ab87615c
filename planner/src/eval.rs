//! The one evaluator of multicast plans: event-driven, continuous time.
//!
//! Link model: each NIC sends one transfer at a time and receives one at a time, at
//! min(sender NIC, receiver NIC) bytes/s, plus a fixed per-transfer latency. A node works
//! through its sends and its receives in plan order; a transfer starts when its sender holds
//! the block and both NICs are free. Local loads (host memory, SSD) use the receiver's PCIe
//! path, one at a time, at PCIe (or min(SSD, PCIe)) bytes/s; remote-store loads take the
//! store (one at a time at its full rate, so readers share it in turn) and the receiver's NIC.
//! Because the plan's transfer order is topological and agrees with every node's order, one
//! pass in that order computes exactly the times of this event-driven schedule. Forwarding is
//! store-and-forward (`evaluate`) or cut-through in pieces (`evaluate_with`).

use crate::cluster::Cluster;
use crate::multicast::{Forwarding, MulticastPlan, TransferSource};
use serde::{Deserialize, Serialize};

/// Default per-transfer latency (seconds).
pub const DEFAULT_LATENCY_S: f64 = 10e-6;

/// Times of one plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Every surviving receiver holds the whole model.
    pub complete_s: f64,
    /// The receivers together hold every block (execute-while-load can begin).
    pub first_copy_s: f64,
    /// Model bytes / the fastest rate at which the slowest receiver can ingest.
    pub lower_bound_s: f64,
    /// For each node, when it holds every block (`None`: never); sources: 0.
    pub per_node_complete_s: Vec<Option<f64>>,
    /// `(start, end)` of each transfer, by id.
    pub transfer_times: Vec<(f64, f64)>,
    /// `arrival[node * num_blocks + block]`: when the node holds the block (0 if it did at
    /// the start of the epoch).
    pub arrival: Vec<Option<f64>>,
    pub num_blocks: usize,
}

impl Evaluation {
    pub fn arrival(&self, node: usize, block: usize) -> Option<f64> {
        self.arrival.get(node * self.num_blocks + block).copied().flatten()
    }

    /// What each node holds at time `t` (blocks that arrived by `t`).
    pub fn holdings_at(&self, num_nodes: usize, t: f64) -> crate::Holdings {
        let mut h = crate::Holdings::empty(num_nodes, self.num_blocks);
        for x in 0..num_nodes {
            for b in 0..self.num_blocks {
                if let Some(a) = self.arrival(x, b).filter(|&a| a <= t) {
                    h.set(x, b, a);
                }
            }
        }
        h
    }
}

/// Evaluates `plan` on `cluster` with `latency_s` per transfer, store-and-forward: a node sends
/// a block on once it holds all of it.
pub fn evaluate(plan: &MulticastPlan, cluster: &Cluster, latency_s: f64) -> Result<Evaluation, String> {
    evaluate_with(plan, cluster, latency_s, Forwarding::StoreAndForward)
}

/// Evaluates `plan` with the given forwarding. Cut-through (pieces of p bytes): a node may
/// start sending a block on once the first piece of it has landed (the incoming transfer's
/// start + latency + p / its rate), and that send ends no sooner than the whole block is held
/// plus one piece at the outgoing rate; a block still counts as held only when all of it has
/// landed. With p at least a block this is store-and-forward exactly.
pub fn evaluate_with(
    plan: &MulticastPlan,
    cluster: &Cluster,
    latency_s: f64,
    forwarding: Forwarding,
) -> Result<Evaluation, String> {
    evaluate_busy(plan, cluster, latency_s, forwarding, None)
}

/// `evaluate_with` on links that are not idle at the start: `link_free_s[node]` is
/// `(uplink free at, downlink free at)`, seconds from the start of the plan (a NIC still
/// carrying an earlier start-up's transfers). A NIC is one resource: each direction carries one
/// transfer at a time, so a transfer on a busy link waits for it.
pub fn evaluate_busy(
    plan: &MulticastPlan,
    cluster: &Cluster,
    latency_s: f64,
    forwarding: Forwarding,
    link_free_s: Option<&[(f64, f64)]>,
) -> Result<Evaluation, String> {
    let n = plan.num_nodes;
    let nb = plan.num_blocks();
    if cluster.nodes.len() != n {
        return Err(format!("the plan has {n} nodes, the cluster {}", cluster.nodes.len()));
    }
    if !(latency_s.is_finite() && latency_s >= 0.0) {
        return Err(format!("latency {latency_s} must be finite and not negative"));
    }
    if plan.initial.num_nodes != n || plan.initial.num_blocks != nb {
        return Err("the plan's initial holdings do not match its size".into());
    }
    let piece = match forwarding {
        Forwarding::StoreAndForward => None,
        Forwarding::CutThrough { piece_bytes: 0 } => return Err("cut-through pieces of 0 bytes".into()),
        Forwarding::CutThrough { piece_bytes } => Some(piece_bytes as f64),
    };
    let mut arrival: Vec<Option<f64>> = (0..n * nb).map(|i| plan.initial.since[i].map(|_| 0.0)).collect();
    // When the first piece of the copy that `arrival` counts was there to forward (cut-through
    // only: store-and-forward, the hot path of planning and simulation, does without it).
    let mut first_piece: Vec<f64> = if piece.is_some() { vec![0.0; n * nb] } else { Vec::new() };
    let mut send_free = vec![0.0f64; n];
    let mut recv_free = vec![0.0f64; n];
    if let Some(busy) = link_free_s {
        if busy.len() != n {
            return Err(format!("link occupancy for {} nodes, the plan has {n}", busy.len()));
        }
        for (x, &(up, down)) in busy.iter().enumerate() {
            if !(up.is_finite() && down.is_finite()) {
                return Err(format!("node {x}: link free times {up}, {down} are not finite"));
            }
            send_free[x] = up.max(0.0);
            recv_free[x] = down.max(0.0);
        }
    }
    let mut local_free = vec![0.0f64; n];
    let mut remote_free = 0.0f64;
    let mut local_used = vec![false; n];
    let mut times = Vec::with_capacity(plan.transfers.len());
    for t in &plan.transfers {
        let (to, blk) = (t.to as usize, t.block as usize);
        if to >= n || blk >= nb {
            return Err(format!("transfer {} names node {to} or block {blk} out of range", t.id));
        }
        let bytes = plan.block_bytes[blk] as f64;
        let rx = &cluster.nodes[to];
        let mut landed_first = None;
        let (start, end) = match t.from {
            TransferSource::Node(s) => {
                let s = s as usize;
                if s >= n {
                    return Err(format!("transfer {} sends from node {s}, which does not exist", t.id));
                }
                let held = arrival[s * nb + blk]
                    .ok_or_else(|| format!("transfer {}: node {s} sends block {blk} it never holds before", t.id))?;
                let rate = cluster.nodes[s].nic_bps.min(rx.nic_bps);
                let (start, end) = match piece {
                    None => {
                        let start = held.max(send_free[s]).max(recv_free[to]);
                        (start, start + latency_s + bytes / rate)
                    }
                    Some(p) => {
                        let start = first_piece[s * nb + blk].min(held).max(send_free[s]).max(recv_free[to]);
                        let end = (start + latency_s + bytes / rate).max(held + p.min(bytes) / rate);
                        landed_first = Some(start + latency_s + p.min(bytes) / rate);
                        (start, end)
                    }
                };
                send_free[s] = end;
                recv_free[to] = end;
                (start, end)
            }
            TransferSource::Host | TransferSource::Ssd => {
                let rate = if t.from == TransferSource::Host { rx.pcie_bps } else { rx.ssd_bps.min(rx.pcie_bps) };
                if rate <= 0.0 {
                    return Err(format!("transfer {}: node {to} has no path for a local load", t.id));
                }
                local_used[to] = true;
                let start = local_free[to];
                let end = start + latency_s + bytes / rate;
                local_free[to] = end;
                (start, end)
            }
            TransferSource::Remote => {
                let rate = cluster.remote_store_bps.min(rx.nic_bps);
                if rate <= 0.0 {
                    return Err(format!("transfer {}: the remote store has rate 0", t.id));
                }
                let start = remote_free.max(recv_free[to]);
                let end = start + latency_s + bytes / rate;
                remote_free = end;
                recv_free[to] = end;
                (start, end)
            }
        };
        let a = &mut arrival[to * nb + blk];
        if a.is_none_or(|old| end < old) {
            *a = Some(end);
            if piece.is_some() {
                first_piece[to * nb + blk] = landed_first.unwrap_or(end);
            }
        }
        times.push((start, end));
    }
    let per_node: Vec<Option<f64>> =
        (0..n).map(|x| (0..nb).try_fold(0.0f64, |m, b| arrival[x * nb + b].map(|a| m.max(a)))).collect();
    let mut complete: f64 = 0.0;
    let mut lower: f64 = 0.0;
    let model = plan.model_bytes() as f64;
    for &r in &plan.receivers {
        let r = r as usize;
        complete = complete.max(per_node[r].unwrap_or(f64::INFINITY));
        let node = &cluster.nodes[r];
        let mut ingest = node.nic_bps;
        if local_used[r] {
            ingest = ingest.max(node.pcie_bps);
        }
        lower = lower.max(model / ingest);
    }
    let mut first_copy: f64 = 0.0;
    if !plan.receivers.is_empty() {
        for b in 0..nb {
            let first =
                plan.receivers.iter().filter_map(|&r| arrival[r as usize * nb + b]).fold(f64::INFINITY, f64::min);
            first_copy = first_copy.max(first);
        }
    }
    Ok(Evaluation {
        complete_s: complete,
        first_copy_s: first_copy,
        lower_bound_s: lower,
        per_node_complete_s: per_node,
        transfer_times: times,
        arrival,
        num_blocks: nb,
    })
}

/// A lower bound on `Evaluation::first_copy_s` for `plan` (seconds): the receivers together
/// hold a copy only once S bytes (the model, less blocks a receiver holds at the start) have entered the set of receivers from outside
/// it, so no sooner than S / C + one latency, where C is the rate at which bytes can enter:
/// the network part min(Σ uplinks of the nodes that hold blocks at the start and send,
/// Σ downlinks of the receivers) (k sources of rate R: k·R), plus each receiver's local path
/// where the plan loads locally (host memory at PCIe rate, SSD at min(SSD, PCIe)), plus the
/// remote store's rate where it is used. 0 for a plan without receivers.
pub fn first_copy_lower_bound_s(plan: &MulticastPlan, cluster: &Cluster, latency_s: f64) -> Result<f64, String> {
    let n = plan.num_nodes;
    if cluster.nodes.len() != n {
        return Err(format!("the plan has {n} nodes, the cluster {}", cluster.nodes.len()));
    }
    if plan.receivers.is_empty() {
        return Ok(0.0);
    }
    let mut is_rx = vec![false; n];
    for &r in &plan.receivers {
        if let Some(x) = is_rx.get_mut(r as usize) {
            *x = true;
        }
    }
    let mut sender = vec![false; n];
    let (mut host, mut ssd, mut remote) = (vec![false; n], vec![false; n], false);
    for t in &plan.transfers {
        let to = t.to as usize;
        if to >= n {
            return Err(format!("transfer {} names node {to} out of range", t.id));
        }
        match t.from {
            TransferSource::Node(s) if (s as usize) < n && !is_rx[s as usize] => sender[s as usize] = true,
            TransferSource::Node(_) => {}
            TransferSource::Host => host[to] = true,
            TransferSource::Ssd => ssd[to] = true,
            TransferSource::Remote => remote = true,
        }
    }
    let up: f64 = (0..n).filter(|&x| sender[x]).map(|x| cluster.nodes[x].nic_bps).sum();
    let down: f64 = plan.receivers.iter().map(|&r| cluster.nodes[r as usize].nic_bps).sum();
    let mut rate = up.min(down);
    for &r in &plan.receivers {
        let node = &cluster.nodes[r as usize];
        if host[r as usize] {
            rate += node.pcie_bps;
        } else if ssd[r as usize] {
            rate += node.ssd_bps.min(node.pcie_bps);
        }
    }
    if remote {
        rate += cluster.remote_store_bps;
    }
    if rate.is_nan() || rate <= 0.0 {
        return Err("no path brings the model to the receivers".into());
    }
    // Blocks some receiver already holds need not enter (a replanned epoch).
    let nb = plan.num_blocks();
    let missing: u64 = (0..nb)
        .filter(|&b| !plan.receivers.iter().any(|&r| plan.initial.holds(r as usize, b)))
        .map(|b| plan.block_bytes[b])
        .sum();
    if missing == 0 {
        return Ok(0.0);
    }
    Ok(missing as f64 / rate + latency_s)
}
