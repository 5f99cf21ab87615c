//! `Cluster` (nodes, links, tiers) and `Holdings` (who holds which transfer block, since when).

use serde::{Deserialize, Serialize};

/// The version of `Cluster`, `Holdings` and `MulticastPlan` this code writes and accepts.
pub const PLAN_TYPES_VERSION: u32 = 1;

/// Where a node keeps a model's execution block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tier {
    /// In GPU memory (hot).
    Gpu,
    /// In (pinned) host memory (warm).
    Host,
    /// On the node's local SSD (cold).
    Ssd,
    /// Only in the remote store (cold).
    Remote,
}

/// One machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// NIC bytes per second, each direction (full duplex).
    pub nic_bps: f64,
    /// Host↔GPU bytes per second.
    pub pcie_bps: f64,
    /// Local SSD read bytes per second (0: no SSD).
    pub ssd_bps: f64,
    pub gpus: u32,
    pub gpu_mem_bytes: u64,
    pub host_mem_bytes: u64,
}

/// Where each node keeps each execution block of one model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelPlacement {
    pub model: String,
    /// `tiers[node][exec_block]`.
    pub tiers: Vec<Vec<Tier>>,
}

/// The machines, the remote store and where models live.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    pub version: u32,
    pub nodes: Vec<Node>,
    /// Remote store bytes per second, shared by all readers.
    pub remote_store_bps: f64,
    pub models: Vec<ModelPlacement>,
}

impl Cluster {
    /// `n` identical nodes with NIC rate `nic_bps`; PCIe 54.6 GB/s (measured pinned host→device
    /// on an H200), no SSD, 1 GPU of 80 GB, 1 TB host memory; remote store at `remote_store_bps`.
    pub fn uniform(n: usize, nic_bps: f64, remote_store_bps: f64) -> Cluster {
        let node =
            Node { nic_bps, pcie_bps: 54.6e9, ssd_bps: 0.0, gpus: 1, gpu_mem_bytes: 80 << 30, host_mem_bytes: 1 << 40 };
        Cluster { version: PLAN_TYPES_VERSION, nodes: vec![node; n], remote_store_bps, models: Vec::new() }
    }

    /// Checks the version, rates (finite, ≥ 0; NICs > 0) and placements' shapes.
    pub fn validate(&self) -> Result<(), String> {
        if self.version != PLAN_TYPES_VERSION {
            return Err(format!(
                "cluster version {} is not supported (this build reads {PLAN_TYPES_VERSION})",
                self.version
            ));
        }
        if self.nodes.is_empty() {
            return Err("the cluster has no nodes".into());
        }
        let ok = |x: f64| x.is_finite() && x >= 0.0;
        for (i, n) in self.nodes.iter().enumerate() {
            if !(n.nic_bps.is_finite() && n.nic_bps > 0.0) {
                return Err(format!("node {i}: NIC rate {} must be positive", n.nic_bps));
            }
            if !ok(n.pcie_bps) || !ok(n.ssd_bps) {
                return Err(format!("node {i}: PCIe and SSD rates must be finite and not negative"));
            }
        }
        if !ok(self.remote_store_bps) {
            return Err(format!("remote store rate {} must be finite and not negative", self.remote_store_bps));
        }
        for m in &self.models {
            if m.tiers.len() != self.nodes.len() {
                return Err(format!(
                    "model {}: tiers for {} nodes, cluster has {}",
                    m.model,
                    m.tiers.len(),
                    self.nodes.len()
                ));
            }
        }
        Ok(())
    }

    pub fn placement(&self, model: &str) -> Option<&ModelPlacement> {
        self.models.iter().find(|m| m.model == model)
    }
}

/// Which node holds which transfer block, and since when (seconds, on the caller's clock).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Holdings {
    pub version: u32,
    pub num_nodes: usize,
    pub num_blocks: usize,
    /// `since[node * num_blocks + block]`: `Some(t)` when held since `t`.
    pub since: Vec<Option<f64>>,
}

impl Holdings {
    pub fn empty(num_nodes: usize, num_blocks: usize) -> Holdings {
        Holdings { version: PLAN_TYPES_VERSION, num_nodes, num_blocks, since: vec![None; num_nodes * num_blocks] }
    }

    /// `sources` hold every block since time 0.
    pub fn with_sources(num_nodes: usize, num_blocks: usize, sources: &[u32]) -> Holdings {
        let mut h = Holdings::empty(num_nodes, num_blocks);
        for &s in sources {
            for b in 0..num_blocks {
                h.set(s as usize, b, 0.0);
            }
        }
        h
    }

    pub fn holds(&self, node: usize, block: usize) -> bool {
        self.since(node, block).is_some()
    }

    pub fn since(&self, node: usize, block: usize) -> Option<f64> {
        if node < self.num_nodes && block < self.num_blocks {
            self.since[node * self.num_blocks + block]
        } else {
            None
        }
    }

    /// Marks `node` as holding `block` since `t` (keeps an earlier time).
    pub fn set(&mut self, node: usize, block: usize, t: f64) {
        if node < self.num_nodes && block < self.num_blocks {
            let s = &mut self.since[node * self.num_blocks + block];
            *s = Some(s.map_or(t, |old| old.min(t)));
        }
    }

    /// Whether `node` holds every block.
    pub fn complete(&self, node: usize) -> bool {
        (0..self.num_blocks).all(|b| self.holds(node, b))
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.version != PLAN_TYPES_VERSION {
            return Err(format!("holdings version {} is not supported", self.version));
        }
        if self.since.len() != self.num_nodes * self.num_blocks {
            return Err(format!(
                "holdings have {} entries for {} nodes × {} blocks",
                self.since.len(),
                self.num_nodes,
                self.num_blocks
            ));
        }
        Ok(())
    }
}
