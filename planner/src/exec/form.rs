//! Multi-stage pipelines at one moment, from what each partial node holds: the shaped greedy,
//! then the fewest-stage cover when the greedy and local instances give nothing (see the
//! `exec` module documentation).

use super::{shapes, stage_range, StageSpan};
use std::ops::Range;

/// A candidate that holds some blocks but not all: `reach[p]` is the end (exclusive) of the
/// run of consecutive held blocks containing `p`, 0 when `p` is not held. So the node holds
/// `[p, q)` exactly when `reach[p] >= q`.
pub(crate) struct Partial<'a> {
    pub node: u32,
    /// Blocks held.
    pub held: usize,
    pub reach: &'a [u32],
}

impl Partial<'_> {
    fn holds(&self, r: &Range<u32>) -> bool {
        self.reach.get(r.start as usize).is_some_and(|&e| e >= r.end)
    }
}

/// `reach` of a holdings row (see `Partial`), over `num_blocks` blocks (missing entries: not
/// held), and the number of blocks held.
pub(crate) fn reach_row(row: &[bool], num_blocks: usize) -> (Vec<u32>, usize) {
    let mut reach = vec![0u32; num_blocks];
    let mut end = 0u32;
    let mut held = 0;
    for p in (0..num_blocks).rev() {
        if row.get(p).copied().unwrap_or(false) {
            if end == 0 {
                end = p as u32 + 1;
            }
            reach[p] = end;
            held += 1;
        } else {
            end = 0;
        }
    }
    (reach, held)
}

/// Marks block `p` held in `reach` (see `Partial`): the runs on either side join.
pub(crate) fn add_block(reach: &mut [u32], p: usize) {
    let end = match reach.get(p + 1) {
        Some(&e) if e > 0 => e,
        _ => p as u32 + 1,
    };
    let mut q = p;
    reach[q] = end;
    while q > 0 && reach[q - 1] > 0 {
        q -= 1;
        reach[q] = end;
    }
}

/// The stage ranges of every multi-stage shape over `num_blocks` blocks.
pub(crate) fn shape_ranges(num_blocks: usize) -> Vec<Range<u32>> {
    shapes(num_blocks).into_iter().flat_map(|s| (0..s).map(move |i| stage_range(i, s, num_blocks))).collect()
}

/// Whether a node with `reach` holds some stage of some shape (else the greedy never uses it).
pub(crate) fn holds_a_shape_stage(reach: &[u32], ranges: &[Range<u32>]) -> bool {
    ranges.iter().any(|r| reach.get(r.start as usize).is_some_and(|&e| e >= r.end))
}

/// The multi-stage pipelines at one moment, in order of formation: the shaped greedy over
/// `partial` (in candidate order); if it forms none and `allow_cover`, the fewest-stage cover
/// (`cover`), when the partial nodes together hold every block. The flag: whether the greedy
/// formed none.
pub(crate) fn form_multi(partial: &[Partial], num_blocks: usize, allow_cover: bool) -> (Vec<Vec<StageSpan>>, bool) {
    let ranges = shape_ranges(num_blocks);
    // Only nodes holding some shape stage can carry one; the order (the last tie-break) is kept.
    let elig: Vec<&Partial> = partial.iter().filter(|p| holds_a_shape_stage(p.reach, &ranges)).collect();
    let mut out = Vec::new();
    let mut load = vec![0usize; elig.len()];
    for s in shapes(num_blocks) {
        loop {
            let mut trial = load.clone();
            let mut stages = Vec::with_capacity(s);
            for i in 0..s {
                let r = stage_range(i, s, num_blocks);
                let prev = stages.last().map(|st: &StageSpan| st.node);
                let best = (0..elig.len())
                    .filter(|&j| Some(elig[j].node) != prev && elig[j].holds(&r))
                    .min_by_key(|&j| (trial[j], elig[j].held, j));
                let Some(j) = best else { break };
                trial[j] += 1;
                stages.push(StageSpan { node: elig[j].node, blocks: r });
            }
            let complete = stages.len() == s;
            let brings_new = (0..load.len()).any(|j| load[j] == 0 && trial[j] > 0);
            let used = trial.iter().copied().filter(|&x| x > 0);
            let (lo, hi) = used.fold((usize::MAX, 0), |(lo, hi), x| (lo.min(x), hi.max(x)));
            if !(complete && brings_new && hi - lo <= 1) {
                break;
            }
            load = trial;
            out.push(stages);
        }
    }
    if !out.is_empty() {
        return (out, false);
    }
    if allow_cover {
        out.extend(cover(partial, num_blocks));
    }
    (out, true)
}

/// Stages over `[0, num_blocks)` with the fewest stages any cover by `partial` has, then the
/// shortest longest stage; `None` when the partial nodes together miss some block.
///
/// `far[p]`: the furthest end of a stage starting at `p` (the longest run through `p` of a
/// node holding `p`). With stages at most `cap` blocks long, starting each stage where the
/// last ended and making it as long as allowed gives the fewest stages (the usual argument:
/// the greedy's i-th end is never behind any cover's). The fewest over all caps is the count
/// at `cap = num_blocks`; a binary search finds the smallest cap with that count. Each stage
/// goes to the node holding it with the fewest stages so far (ties: fewest blocks held, then
/// candidate order) other than the previous stage's: one always exists, since a node that
/// alone holds two adjacent stages would hold their union, a cover with one stage fewer.
fn cover(partial: &[Partial], num_blocks: usize) -> Option<Vec<StageSpan>> {
    let mut far = vec![0u32; num_blocks];
    for p in partial {
        for (f, &e) in far.iter_mut().zip(p.reach) {
            *f = (*f).max(e);
        }
    }
    if far.iter().enumerate().any(|(p, &e)| e as usize <= p) {
        return None;
    }
    let ends = |cap: usize| -> Vec<u32> {
        let mut out = Vec::new();
        let mut p = 0usize;
        while p < num_blocks {
            let e = (far[p] as usize).min(p + cap);
            out.push(e as u32);
            p = e;
        }
        out
    };
    let fewest = ends(num_blocks).len();
    let (mut lo, mut hi) = (num_blocks.div_ceil(fewest), num_blocks);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if ends(mid).len() == fewest {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let mut load = vec![0usize; partial.len()];
    let mut stages: Vec<StageSpan> = Vec::with_capacity(fewest);
    let mut start = 0u32;
    for end in ends(lo) {
        let r = start..end;
        let prev = stages.last().map(|s| s.node);
        let j = (0..partial.len())
            .filter(|&j| Some(partial[j].node) != prev && partial[j].holds(&r))
            .min_by_key(|&j| (load[j], partial[j].held, j))?;
        load[j] += 1;
        stages.push(StageSpan { node: partial[j].node, blocks: r });
        start = end;
    }
    Some(stages)
}
