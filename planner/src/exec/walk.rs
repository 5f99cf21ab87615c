//! `exec_plan_from_arrivals` without re-forming at every arrival: the holdings are kept up to
//! date arrival by arrival, and pipelines are formed again only at the times the formation can
//! change (see `walk`).

use super::form::{add_block, form_multi, holds_a_shape_stage, shape_ranges, Moment};
use super::{ExecPipeline, StageSpan};
use std::collections::HashMap;

/// The pipelines of `exec_plan_from_arrivals` for the candidates `cands` (distinct), whose
/// arrival rows (`rows[c][block]`, finite) are already checked.
///
/// The same result as forming with `form_pipelines` at every distinct arrival time and
/// keeping a pipeline open while it is formed again, for less work:
/// - a local instance, once formed, is formed at every later time (holdings only grow), so it
///   is opened once, when its node completes, and never compared;
/// - the multi-stage pipelines are a function of the partial candidates that hold some shape
///   stage (their order, blocks held and runs), and, only while no local instance exists and
///   the greedy forms nothing, of every partial candidate (the fewest-stage cover). At a time
///   whose arrivals change neither, the multi-stage pipelines are those of the time before,
///   so nothing opens or ends and no formation is needed.
pub(crate) fn walk(rows: &[&[Option<f64>]], cands: &[u32], num_blocks: usize) -> Vec<ExecPipeline> {
    let n = cands.len();
    let mut events: Vec<(f64, u32, u32)> = Vec::new();
    for (c, row) in rows.iter().enumerate() {
        for (b, a) in row.iter().enumerate() {
            if let Some(a) = a {
                events.push((*a, c as u32, b as u32));
            }
        }
    }
    // By time only (the order within a time does not matter): `f64::total_cmp`'s order, as
    // integers.
    events.sort_unstable_by_key(|e| {
        let bits = e.0.to_bits() as i64;
        bits ^ ((((bits >> 63) as u64) >> 1) as i64)
    });
    let ranges = shape_ranges(num_blocks);
    let mut reach = vec![0u32; num_blocks * n];
    // The furthest run end through each block over all candidates: `far_of` while no
    // candidate is full (runs only grow), which is when the cover may be formed.
    let mut far = vec![0u32; num_blocks];
    let mut held = vec![0usize; n];
    let mut stamp = vec![usize::MAX; n];
    let mut any_local = false;
    // Whether the last formation's greedy formed nothing (the cover may apply); true before
    // the first.
    let mut greedy_empty = true;
    let mut pipelines: Vec<ExecPipeline> = Vec::new();
    let mut open: HashMap<Vec<StageSpan>, usize> = HashMap::new();
    let mut changed: Vec<usize> = Vec::new();
    let mut new_full: Vec<usize> = Vec::new();
    let mut i = 0;
    let mut group = 0usize;
    while i < events.len() {
        let t = events[i].0;
        changed.clear();
        new_full.clear();
        // Equal times (as `==`, so 0.0 and -0.0 together) form one group, at its first time.
        while i < events.len() && events[i].0 == t {
            let (_, c, b) = events[i];
            let c = c as usize;
            let run = add_block(&mut reach, n, c, b as usize);
            for f in &mut far[run.clone()] {
                *f = (*f).max(run.end as u32);
            }
            held[c] += 1;
            if stamp[c] != group {
                stamp[c] = group;
                changed.push(c);
            }
            i += 1;
        }
        group += 1;
        let m = Moment { nodes: cands, held: &held, reach: &reach, num_blocks };
        let mut relevant = false;
        for &c in &changed {
            if held[c] == num_blocks {
                new_full.push(c);
            } else if holds_a_shape_stage(&m, c, &ranges) {
                relevant = true;
            }
        }
        let cover_possible = !any_local && greedy_empty;
        if !(relevant || !new_full.is_empty() || cover_possible) {
            continue;
        }
        new_full.sort_unstable();
        any_local |= !new_full.is_empty();
        let (formed, none_shaped) = form_multi(&m, (!any_local).then_some(&far[..]));
        greedy_empty = none_shaped;
        let mut still: HashMap<Vec<StageSpan>, usize> = HashMap::with_capacity(formed.len());
        let mut fresh = Vec::new();
        for stages in formed {
            match open.remove(&stages) {
                Some(idx) => {
                    still.insert(stages, idx);
                }
                None => fresh.push(stages),
            }
        }
        for (_, idx) in open.drain() {
            pipelines[idx].valid_until_s = Some(t);
        }
        for &c in &new_full {
            let stages = vec![StageSpan { node: cands[c], blocks: 0..num_blocks as u32 }];
            pipelines.push(ExecPipeline { stages, valid_from_s: t, valid_until_s: None });
        }
        for stages in fresh {
            still.insert(stages.clone(), pipelines.len());
            pipelines.push(ExecPipeline { stages, valid_from_s: t, valid_until_s: None });
        }
        open = still;
    }
    pipelines
}
