//! Execution plans for execute-while-load: pipelines over the nodes that are still loading.
//!
//! An execution block is *held* by a node once every one of its transfer blocks has arrived.
//! At one moment, `form_pipelines` turns "which node holds which execution block" into
//! pipelines; `exec_plan` walks the moments at which some receiver completes an execution
//! block and gives each pipeline the interval in which it is valid.
//!
//! # Shapes
//! A pipeline of `S` stages splits `[0, B)` into `S` contiguous ranges, stage `i` being
//! `[i·B/S, (i+1)·B/S)` (integer division), so every stage is non-empty and the stages cover
//! `[0, B)` in order. The shapes tried, in order of preference, are `min(8, B)`, then 4 and 2
//! where smaller than the previous shape. A 1-stage pipeline is a local instance: it is formed
//! for every candidate node that holds the whole model, and only for those.
//!
//! # The greedy (what `form_pipelines` does)
//! 1. Every candidate holding all `B` blocks becomes a 1-stage local instance (in candidate
//!    order); such nodes take no part in multi-stage pipelines.
//! 2. For each shape `S` in preference order, repeatedly build one pipeline: for each stage in
//!    order, take among the other candidates that hold every block of the stage the one with
//!    the fewest stages so far (ties: fewest blocks held, then first in `nodes`), other than
//!    the previous stage's node. A node may carry several stages, of one pipeline or of
//!    several, but never two adjacent stages of one pipeline (that would be a shorter
//!    pipeline in disguise). The pipeline is kept only if (a)
//!    every stage found a node, (b) it uses at least one node that no earlier multi-stage
//!    pipeline uses, and (c) afterwards the stage counts of the nodes used by multi-stage
//!    pipelines still differ by at most 1. The first pipeline not kept ends shape `S`.
//!
//! # The cover (when nothing else forms)
//! If step 1 gives no local instance and step 2 no pipeline, but the partial candidates
//! together hold every block, one pipeline is formed from the fewest contiguous stages that
//! cover `[0, B)`, each held whole by one node, stage boundaries free (so a stage may span
//! several blocks, and stages may differ in length); among such covers, the one whose longest
//! stage is shortest (then the one whose stages end furthest forward). Each stage goes to the
//! node holding it with the fewest stages so far (ties: first in `nodes`; unlike the greedy,
//! not by blocks held: one pipeline leaves no other to keep nodes for), other than the
//! previous stage's node. It has at most `MAX_STAGES` stages whenever some cover of at most
//! `MAX_STAGES` stages exists, and otherwise the fewest possible, more than `MAX_STAGES`:
//! k-way multicasts hand out interleaved blocks (group `g` gets blocks `g, g + k, …` first),
//! so when the new nodes first hold the model together no node may hold two consecutive
//! blocks, and a `B`-stage pipeline is the only one there is (B = 16, k = 2: 16 stages).
//! Serving over it beats serving over none; the shaped pipelines replace it as soon as they
//! form, and local instances when a node completes.
//!
//! # Guarantees (checked by `planner/tests/exec.rs` and `planner/tests/exec_cover.rs`)
//! - Whenever the candidates together hold every block, at least one pipeline is formed.
//! - Every stage's node holds every block of the stage's range.
//! - Adjacent stages of a pipeline are on different nodes.
//! - Every pipeline's stages cover `[0, B)` contiguously, in order; a shaped pipeline with a
//!   shape above, the cover with the fewest stages possible; a 1-stage pipeline is on a node
//!   holding the whole model, and each such node has exactly one.
//! - Load balance: over the nodes used by shaped pipelines, the numbers of stages they
//!   carry differ by at most 1; hence each carries at most ⌈total stages / nodes used⌉.
//!   Local instances carry one stage each and are outside this count; so is the cover, which
//!   is balanced only as far as its choice of nodes allows.
//! - At most one shaped pipeline per partial node (each kept pipeline brings a new node).
//! - Deterministic: the output depends only on the inputs (no randomness; hashing only
//!   to look pipelines up, never to order them).
//!
//! Not guaranteed: that the number of pipelines is the largest possible. The greedy can miss
//! pipelines a search would find (a balance-breaking choice ends a shape early).
//!
//! # Speed
//! `exec_plan_from_arrivals` keeps the holdings up to date arrival by arrival and forms
//! pipelines again only at the times the formation can change (see `walk`); the result is
//! that of forming with `form_pipelines` at every arrival time (`planner/tests/exec_walk.rs`
//! compares the two). `cargo bench -p planner --bench exec_bench` times it at 1,000 nodes ×
//! 64 execution blocks.

use crate::eval::Evaluation;
use crate::layout::ModelLayout;
use serde::{Deserialize, Serialize};
use std::ops::Range;

mod form;
mod walk;

/// The version of `ExecPlan` this code writes and accepts.
pub const EXEC_PLAN_VERSION: u32 = 1;

/// The most stages of a shaped pipeline (the cover has more only when it must).
pub const MAX_STAGES: usize = 8;

/// One stage: `node` runs execution blocks `blocks` (`[start, end)`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StageSpan {
    pub node: u32,
    pub blocks: Range<u32>,
}

/// A pipeline: stages in block order, covering `[0, B)`, valid in `[valid_from_s, valid_until_s)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecPipeline {
    pub stages: Vec<StageSpan>,
    pub valid_from_s: f64,
    /// `None`: valid from `valid_from_s` on, without end.
    pub valid_until_s: Option<f64>,
}

impl ExecPipeline {
    /// A 1-stage pipeline: a local instance.
    pub fn is_local(&self) -> bool {
        self.stages.len() == 1
    }

    /// Whether the pipeline is valid at time `t`.
    pub fn valid_at(&self, t: f64) -> bool {
        t >= self.valid_from_s && self.valid_until_s.is_none_or(|u| t < u)
    }
}

/// A receiver that holds the whole model from `at_s` on and serves as a local instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Handoff {
    pub node: u32,
    pub at_s: f64,
}

/// Pipelines over time, and the hand-offs to local instances.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecPlan {
    /// `EXEC_PLAN_VERSION` when written.
    pub version: u32,
    /// Execution blocks of the model.
    pub num_blocks: u32,
    /// In order of `valid_from_s`, then of formation.
    pub pipelines: Vec<ExecPipeline>,
    /// One per receiver that ever holds the whole model, in order of `at_s`, then of node.
    pub handoffs: Vec<Handoff>,
}

impl ExecPlan {
    /// The pipelines valid at time `t`.
    pub fn pipelines_at(&self, t: f64) -> impl Iterator<Item = &ExecPipeline> {
        self.pipelines.iter().filter(move |p| p.valid_at(t))
    }

    /// Checks the version and that every pipeline covers `[0, num_blocks)` contiguously with a
    /// non-empty validity interval.
    pub fn validate(&self) -> Result<(), String> {
        if self.version != EXEC_PLAN_VERSION {
            return Err(format!(
                "execution plan version {} is not supported (this build reads {EXEC_PLAN_VERSION})",
                self.version
            ));
        }
        for (i, p) in self.pipelines.iter().enumerate() {
            if !covers(&p.stages, self.num_blocks) {
                return Err(format!("pipeline {i} does not cover blocks [0, {}) in order", self.num_blocks));
            }
            if !p.valid_from_s.is_finite() || p.valid_until_s.is_some_and(|u| u.is_nan() || u <= p.valid_from_s) {
                return Err(format!("pipeline {i} has an empty or invalid interval"));
            }
        }
        Ok(())
    }
}

/// Whether `stages` cover `[0, num_blocks)` contiguously, in order, each non-empty.
pub fn covers(stages: &[StageSpan], num_blocks: u32) -> bool {
    let mut next = 0u32;
    for s in stages {
        if s.blocks.start != next || s.blocks.end <= s.blocks.start {
            return false;
        }
        next = s.blocks.end;
    }
    !stages.is_empty() && next == num_blocks
}

/// The multi-stage shapes tried, in order of preference: `min(8, B)`, then 4 and 2 where
/// smaller than the previous one.
pub fn shapes(num_blocks: usize) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::new();
    for s in [num_blocks.min(MAX_STAGES), 4, 2] {
        if s >= 2 && out.last().is_none_or(|&l| s < l) {
            out.push(s);
        }
    }
    out
}

/// The block range of stage `i` of an `s`-stage pipeline over `b` blocks.
pub fn stage_range(i: usize, s: usize, b: usize) -> Range<u32> {
    (i * b / s) as u32..((i + 1) * b / s) as u32
}

/// Pipelines at one moment (see the module documentation for the greedy, the cover and their
/// guarantees).
///
/// `holdings[node][exec_block]`: whether the node holds the block (missing rows or entries:
/// not held); `nodes`: the candidates (a node listed twice counts once). The pipelines come
/// back with `valid_from_s = 0` and no end: local instances first, in candidate order, then
/// multi-stage pipelines in order of formation.
pub fn form_pipelines(holdings: &[Vec<bool>], nodes: &[u32], num_blocks: usize) -> Vec<ExecPipeline> {
    let mut out = Vec::new();
    if num_blocks == 0 || num_blocks > u32::MAX as usize {
        return out;
    }
    let mut cands: Vec<u32> = Vec::with_capacity(nodes.len());
    for &n in nodes {
        if !cands.contains(&n) {
            cands.push(n);
        }
    }
    let pipe = |stages: Vec<StageSpan>| ExecPipeline { stages, valid_from_s: 0.0, valid_until_s: None };
    let rows: Vec<&[bool]> = cands.iter().map(|&n| holdings.get(n as usize).map_or(&[][..], |r| &r[..])).collect();
    // A block past every row is held by none: nothing forms (and the work below stays
    // proportional to the input).
    if rows.iter().all(|r| r.len() < num_blocks) {
        return out;
    }
    let (reach, held) = form::reach_of(&rows, num_blocks);
    let m = form::Moment { nodes: &cands, held: &held, reach: &reach, num_blocks };
    for (c, &n) in cands.iter().enumerate() {
        if held[c] == num_blocks {
            out.push(pipe(vec![StageSpan { node: n, blocks: 0..num_blocks as u32 }]));
        }
    }
    let far = out.is_empty().then(|| form::far_of(&m));
    out.extend(form::form_multi(&m, far.as_deref()).0.into_iter().map(pipe));
    out
}

/// When each node holds each execution block: `[node][exec_block]`, the latest arrival of
/// its transfer blocks (`None`: some transfer block never arrives).
pub fn exec_arrivals(eval: &Evaluation, layout: &ModelLayout) -> Result<Vec<Vec<Option<f64>>>, String> {
    if eval.num_blocks != layout.transfer_blocks.len() {
        return Err(format!(
            "the evaluation has {} transfer blocks, the layout {}",
            eval.num_blocks,
            layout.transfer_blocks.len()
        ));
    }
    let num_nodes = eval.arrival.len().checked_div(eval.num_blocks).unwrap_or(0);
    Ok((0..num_nodes)
        .map(|x| {
            (0..layout.exec_blocks.len())
                .map(|e| {
                    let tbs = layout.transfer_blocks_of(e);
                    if tbs.is_empty() {
                        return None;
                    }
                    tbs.iter().try_fold(0.0f64, |m, t| eval.arrival(x, t.id as usize).map(|a| m.max(a)))
                })
                .collect()
        })
        .collect())
}

/// The execution plan of a multicast's evaluation: see `exec_plan_from_arrivals`.
pub fn exec_plan(eval: &Evaluation, layout: &ModelLayout, receivers: &[u32]) -> Result<ExecPlan, String> {
    let arr = exec_arrivals(eval, layout)?;
    exec_plan_from_arrivals(&arr, receivers, layout.exec_blocks.len())
}

/// The execution plan from `arrival[node][exec_block]` (when the node holds the execution
/// block; `None`: never), over the candidate nodes `receivers`.
///
/// At every distinct time `t` at which some receiver completes an execution block (in
/// increasing order), the pipelines are formed with `form_pipelines` from what the receivers
/// hold at `t` (arrival ≤ t). A pipeline formed at `t` that is formed again, stage for stage,
/// at the next such time stays valid; otherwise it ends there. Pipelines formed at the last
/// time have no end. Every receiver that comes to hold the whole model is handed off at that
/// time, from which it is a 1-stage local instance.
pub fn exec_plan_from_arrivals(
    arrival: &[Vec<Option<f64>>],
    receivers: &[u32],
    num_blocks: usize,
) -> Result<ExecPlan, String> {
    if num_blocks == 0 || num_blocks > u32::MAX as usize {
        return Err(format!("{num_blocks} execution blocks; need at least 1"));
    }
    let mut handoffs = Vec::new();
    let mut seen: Vec<u32> = Vec::new();
    let mut rows: Vec<&[Option<f64>]> = Vec::new();
    let mut is_seen = vec![false; arrival.len()];
    for &r in receivers {
        let row = arrival.get(r as usize).ok_or_else(|| format!("receiver {r} has no arrival times"))?;
        if std::mem::replace(&mut is_seen[r as usize], true) {
            continue;
        }
        seen.push(r);
        if row.len() != num_blocks {
            return Err(format!("receiver {r}: {} arrival times for {num_blocks} blocks", row.len()));
        }
        if let Some(a) = row.iter().flatten().find(|a| !a.is_finite()) {
            return Err(format!("receiver {r}: arrival time {a} is not finite"));
        }
        rows.push(row);
        if let Some(done) = row.iter().try_fold(f64::NEG_INFINITY, |m, a| a.map(|a| m.max(a))) {
            handoffs.push(Handoff { node: r, at_s: done });
        }
    }
    handoffs.sort_by(|a, b| a.at_s.total_cmp(&b.at_s).then(a.node.cmp(&b.node)));
    let pipelines = walk::walk(&rows, &seen, num_blocks);
    Ok(ExecPlan { version: EXEC_PLAN_VERSION, num_blocks: num_blocks as u32, pipelines, handoffs })
}
