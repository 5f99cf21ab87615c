//! faascale planner: multicast and execution planning, pure Rust, no I/O.
//!
//! - `layout`: a model as execution blocks and transfer blocks (the contract between the
//!   packed file format, the transport and the planners).
//! - `cluster`: `Cluster` (nodes, links, tiers) and `Holdings` (who holds which transfer block).
//! - `multicast`: `MulticastPlan` (with `replan`) and the algorithms that build one.
//! - `eval`: the one event-driven evaluator of plans.
//! - `check`: an independent checker of plans and evaluations (for tests and fuzzing).
//! - `exec`: `ExecPlan`, execute-while-load pipelines formed from holdings over time.
//!
//! - `startup`: start-up by locality (hot, warm, cold; choice of k and sources).
//! - `autoscale`: the per-model autoscaler (queue length and arrival rate, keep-alive).
//! - `sim`: the deterministic discrete-event simulator that replays traces.

#![forbid(unsafe_code)]

pub mod autoscale;
pub mod check;
pub mod cluster;
pub mod eval;
pub mod exec;
pub mod layout;
pub mod multicast;
pub mod sim;
pub mod startup;

pub use cluster::{Cluster, Holdings, ModelPlacement, Node, Tier, PLAN_TYPES_VERSION};
pub use eval::{evaluate, evaluate_busy, evaluate_with, first_copy_lower_bound_s, Evaluation, DEFAULT_LATENCY_S};
pub use exec::{
    exec_plan, exec_plan_from_arrivals, form_pipelines, ExecPipeline, ExecPlan, Handoff, StageSpan, EXEC_PLAN_VERSION,
};
pub use layout::{
    default_chunk_bytes, ExecBlock, LayoutError, ModelLayout, TransferBlock, BLOCK_ALIGN_BYTES, MODEL_LAYOUT_VERSION,
};
pub use multicast::{
    faascale_shapes, group_times, plan, plan_with, Algo, Forwarding, GroupShape, GroupTimes, MulticastPlan,
    MulticastRequest, NodeSchedule, PlanError, PlanOptions, Transfer, TransferSource, NCCL_CHUNK_BYTES, NCCL_STEPS,
};

/// A model of `model_bytes` in `exec_blocks` equal execution blocks (one layer each), cut
/// into transfer blocks of `chunk_bytes` (default: `default_chunk_bytes`).
pub fn uniform_layout(
    name: &str,
    model_bytes: u64,
    exec_blocks: usize,
    chunk_bytes: Option<u64>,
) -> Result<ModelLayout, LayoutError> {
    if exec_blocks == 0 || exec_blocks > layout::MAX_EXEC_BLOCKS {
        return Err(LayoutError::Invalid(format!(
            "{exec_blocks} execution blocks; need 1 ..= {}",
            layout::MAX_EXEC_BLOCKS
        )));
    }
    if model_bytes == 0 {
        return Err(LayoutError::Invalid("the model has 0 bytes".into()));
    }
    let chunk = chunk_bytes.unwrap_or_else(|| default_chunk_bytes(model_bytes, exec_blocks));
    let per = model_bytes / exec_blocks as u64;
    let rem = model_bytes % exec_blocks as u64;
    let spec: Vec<(std::ops::Range<u32>, u64)> =
        (0..exec_blocks).map(|i| (i as u32..i as u32 + 1, per + u64::from((i as u64) < rem))).collect();
    ModelLayout::new(name, exec_blocks as u32, &spec, 0, chunk)
}
