//! A deterministic discrete-event simulator of serverless LLM serving on a GPU cluster.
//!
//! It replays a request trace against one of five systems and reports TTFT, time per output
//! token, throughput, SLO attainment and GPU-seconds. Loading times come from the planner's own
//! multicast plans and evaluator (`startup::plan_start`), compute times from the cost model
//! calibrated on an H200 (`cost`). See `docs/simulation.md` for the model and its limits.
//!
//! Systems (the same trace, cluster, autoscaler, cost model and keep-alive; only how new nodes
//! get the model and when they may serve differ):
//! - `faascale`: locality start-up, k-way multicast from hot and warm holders, and
//!   execute-while-load pipelines across the nodes still loading;
//! - `nccl`: a pipelined chain per source in NCCL's 512 KiB chunks; a node serves once it holds
//!   the whole model;
//! - `faasnet`: a binary tree per source, block-pipelined; serves once complete;
//! - `serverlessllm`: each node loads from its own best tier (host memory over PCIe, else
//!   its local SSD, else the remote store); serves once complete;
//! - `always-warm`: every node holds a model from the start and is never released (the cost
//!   reference).
//!
//! Shared resources: each node's GPU (prefills of every server using it run one after another),
//! each NIC's uplink and downlink (across concurrent start-ups and hidden-state hops), see
//! `engine`.
//!
//! Deterministic: no hashing, no wall clock in the decisions, ties broken by index. The seed
//! drives the trace (a synthetic trace's arrivals, a real trace's replayed window,
//! `trace::window`) and the mapping of requests to models; `stats::Pooled` pools several seeds
//! with bootstrap confidence intervals.

pub mod cost;
mod engine;
pub mod rng;
pub mod stats;
pub mod trace;

pub use cost::{model_by_name, models, Gpu, ModelSpec};
pub use engine::simulate;
pub use stats::{percentile, pooled_percentile_ci, pooled_ratio_ci, Pooled, Summary};
pub use trace::{parse_azure_csv, reshape, window, ModelMapping, Request, Synthetic, TraceError};

use crate::autoscale::AutoscalePolicy;

/// The systems the simulator compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Faascale,
    Serverlessllm,
    Faasnet,
    Nccl,
    AlwaysWarm,
}

impl System {
    pub const ALL: [System; 5] =
        [System::Faascale, System::Serverlessllm, System::Faasnet, System::Nccl, System::AlwaysWarm];

    pub fn name(self) -> &'static str {
        match self {
            System::Faascale => "faascale",
            System::Serverlessllm => "serverlessllm",
            System::Faasnet => "faasnet",
            System::Nccl => "nccl",
            System::AlwaysWarm => "always-warm",
        }
    }

    pub fn parse(s: &str) -> Result<System, String> {
        System::ALL.into_iter().find(|x| x.name() == s).ok_or_else(|| {
            format!(
                "unknown system {s:?}; known: {}",
                System::ALL.iter().map(|x| x.name()).collect::<Vec<_>>().join(", ")
            )
        })
    }
}

/// Everything a simulation needs besides the trace.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub system: System,
    pub nodes: usize,
    pub gpus_per_node: u32,
    /// GPU memory of one GPU, bytes.
    pub gpu_mem_bytes: u64,
    /// Host memory a node may use to keep models warm, bytes.
    pub host_mem_bytes: u64,
    /// `Request::model` indexes this list.
    pub models: Vec<ModelSpec>,
    /// Execution blocks per model.
    pub blocks: usize,
    pub nic_bytes_per_s: f64,
    pub pcie_bytes_per_s: f64,
    /// Every node's local SSD (holding every model's checkpoint); 0: no SSD.
    pub ssd_bytes_per_s: f64,
    /// The shared remote store.
    pub remote_bytes_per_s: f64,
    pub latency_s: f64,
    pub gpu: Gpu,
    /// Batch slots of one local instance (continuous batching).
    pub max_batch: u32,
    pub autoscale: AutoscalePolicy,
    /// How often the autoscaler runs, seconds.
    pub tick_s: f64,
    /// The most multicast sources per start-up.
    pub max_sources: usize,
    /// Nodes keeping each model in host memory at time 0 (model m on nodes m·w .. m·w + w).
    pub warm_at_start: usize,
    pub slo_ttft_s: f64,
    pub seed: u64,
    /// Compute speed relative to the calibrated H200 (2: every prefill and decode step takes
    /// half as long).
    pub compute_speed: f64,
    /// Send a request to an execute-while-load pipeline only when it is expected to finish
    /// sooner there than on the local instance that will be ready soonest (false: any free
    /// slot, least occupied server first).
    pub pipeline_routing: bool,
}

impl SimConfig {
    /// The paper's setting: 400 Gbit/s NICs, PCIe at the H200's measured 54.6 GB/s, NVMe SSD
    /// at 5 GB/s (our assumption), a 10 Gbit/s remote store (assumption), H800/H100-class
    /// 80 GB GPUs, 1 TB of host memory per node, 8 execution blocks, batches of 32.
    pub fn paper(system: System, nodes: usize, models: Vec<ModelSpec>) -> SimConfig {
        SimConfig {
            system,
            nodes,
            gpus_per_node: 1,
            gpu_mem_bytes: 80_000_000_000,
            host_mem_bytes: 1_000_000_000_000,
            models,
            blocks: 8,
            nic_bytes_per_s: 400e9 / 8.0,
            pcie_bytes_per_s: 54.6e9,
            ssd_bytes_per_s: 5e9,
            remote_bytes_per_s: 10e9 / 8.0,
            latency_s: 10e-6,
            gpu: Gpu::H200,
            max_batch: 32,
            autoscale: AutoscalePolicy::default(),
            tick_s: 0.1,
            max_sources: 8,
            warm_at_start: 1,
            slo_ttft_s: 1.0,
            seed: 0,
            compute_speed: 1.0,
            pipeline_routing: true,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.nodes == 0 {
            return Err("--nodes 0: need at least one node".into());
        }
        if self.nodes > 100_000 {
            return Err(format!("--nodes {}: at most 100000", self.nodes));
        }
        if self.models.is_empty() {
            return Err("no model".into());
        }
        if self.gpus_per_node == 0 || self.gpus_per_node > 64 {
            return Err(format!("--gpus-per-node {}: need 1 ..= 64", self.gpus_per_node));
        }
        if self.blocks == 0 || self.blocks > 1024 {
            return Err(format!("--blocks {}: need 1 ..= 1024", self.blocks));
        }
        let pos = |name: &str, x: f64| {
            if x.is_finite() && x > 0.0 {
                Ok(())
            } else {
                Err(format!("{name} {x} must be a positive number"))
            }
        };
        pos("NIC rate", self.nic_bytes_per_s)?;
        pos("PCIe rate", self.pcie_bytes_per_s)?;
        pos("remote store rate", self.remote_bytes_per_s)?;
        pos("tick", self.tick_s)?;
        pos("SLO", self.slo_ttft_s)?;
        pos("compute speed", self.compute_speed)?;
        if !(self.ssd_bytes_per_s.is_finite() && self.ssd_bytes_per_s >= 0.0) {
            return Err(format!("SSD rate {} must be finite and ≥ 0", self.ssd_bytes_per_s));
        }
        if !(self.latency_s.is_finite() && self.latency_s >= 0.0) {
            return Err(format!("latency {} must be finite and ≥ 0", self.latency_s));
        }
        if self.max_batch == 0 || self.max_batch > 4096 {
            return Err(format!("batch size {}: need 1 ..= 4096", self.max_batch));
        }
        if self.max_sources == 0 {
            return Err("max sources 0: need at least 1".into());
        }
        self.autoscale.validate()?;
        let gpu_bytes = self.gpu_mem_bytes as u128 * self.gpus_per_node as u128;
        for m in &self.models {
            // Weights plus a tenth for the KV cache and activations.
            if m.model_bytes() as u128 * 11 / 10 > gpu_bytes {
                let need = (m.model_bytes() as u128 * 11 / 10).div_ceil(self.gpu_mem_bytes.max(1) as u128);
                return Err(format!(
                    "{} ({:.1} GB) does not fit {} GPU(s) of {:.0} GB per node; pass --gpus-per-node {need} or more",
                    m.name,
                    m.model_bytes() as f64 / 1e9,
                    self.gpus_per_node,
                    self.gpu_mem_bytes as f64 / 1e9
                ));
            }
            if (m.layers as usize) < self.blocks {
                return Err(format!("{}: {} layers cannot make {} execution blocks", m.name, m.layers, self.blocks));
            }
        }
        if self.system == System::AlwaysWarm && self.nodes < self.models.len() {
            return Err(format!(
                "always-warm needs a node per model: {} models, {} nodes",
                self.models.len(),
                self.nodes
            ));
        }
        Ok(())
    }
}
