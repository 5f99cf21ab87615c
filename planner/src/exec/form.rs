//! Multi-stage pipelines at one moment, from what each candidate holds: the shaped greedy,
//! then the fewest-stage cover when the greedy and local instances give nothing (see the
//! `exec` module documentation).

use super::{shapes, stage_range, StageSpan};
use std::ops::Range;

/// What the candidates hold at one moment. Candidate `c` is node `nodes[c]`; it holds
/// `held[c]` blocks; `reach[p * n + c]` (block-major, `n` candidates) is the end (exclusive)
/// of the run of consecutive blocks it holds containing `p`, 0 when it does not hold `p`, so
/// it holds `[p, q)` exactly when `reach[p * n + c] >= q`.
pub(crate) struct Moment<'a> {
    pub nodes: &'a [u32],
    pub held: &'a [usize],
    pub reach: &'a [u32],
    pub num_blocks: usize,
}

impl Moment<'_> {
    fn holds(&self, c: usize, r: &Range<u32>) -> bool {
        self.reach[r.start as usize * self.nodes.len() + c] >= r.end
    }

    fn partial(&self, c: usize) -> bool {
        self.held[c] > 0 && self.held[c] < self.num_blocks
    }
}

/// The block-major `reach` of `Moment` for holdings rows (missing entries: not held), and the
/// blocks each row holds.
pub(crate) fn reach_of(rows: &[&[bool]], num_blocks: usize) -> (Vec<u32>, Vec<usize>) {
    let n = rows.len();
    let mut reach = vec![0u32; num_blocks * n];
    let mut held = vec![0usize; n];
    for (c, row) in rows.iter().enumerate() {
        let mut end = 0u32;
        for p in (0..num_blocks).rev() {
            if row.get(p).copied().unwrap_or(false) {
                if end == 0 {
                    end = p as u32 + 1;
                }
                reach[p * n + c] = end;
                held[c] += 1;
            } else {
                end = 0;
            }
        }
    }
    (reach, held)
}

/// Marks block `p` held by candidate `c` of `n` in a block-major `reach` (see `Moment`): the
/// runs on either side join. Returns the joined run.
pub(crate) fn add_block(reach: &mut [u32], n: usize, c: usize, p: usize) -> Range<usize> {
    let end = match reach.get((p + 1) * n + c) {
        Some(&e) if e > 0 => e,
        _ => p as u32 + 1,
    };
    let mut q = p;
    reach[q * n + c] = end;
    while q > 0 && reach[(q - 1) * n + c] > 0 {
        q -= 1;
        reach[q * n + c] = end;
    }
    q..end as usize
}

/// The stage ranges of every multi-stage shape over `num_blocks` blocks.
pub(crate) fn shape_ranges(num_blocks: usize) -> Vec<Range<u32>> {
    shapes(num_blocks).into_iter().flat_map(|s| (0..s).map(move |i| stage_range(i, s, num_blocks))).collect()
}

/// Whether candidate `c` holds some stage of some shape (else the greedy never uses it).
pub(crate) fn holds_a_shape_stage(m: &Moment, c: usize, ranges: &[Range<u32>]) -> bool {
    ranges.iter().any(|r| m.holds(c, r))
}

/// The multi-stage pipelines at one moment, in order of formation: the shaped greedy over the
/// partial candidates; if it forms none and `far` is given, the fewest-stage cover (`cover`).
/// The flag: whether the greedy formed none.
pub(crate) fn form_multi(m: &Moment, far: Option<&[u32]>) -> (Vec<Vec<StageSpan>>, bool) {
    let num_blocks = m.num_blocks;
    let ranges = shape_ranges(num_blocks);
    let n = m.nodes.len();
    // Only candidates holding some shape stage can carry one; candidate order (the last
    // tie-break) is kept. Range by range, the reach rows are read in order.
    let shape_list = shapes(num_blocks);
    let mut any = vec![false; n];
    for r in &ranges {
        let row = &m.reach[r.start as usize * n..(r.start as usize + 1) * n];
        for (a, &e) in any.iter_mut().zip(row) {
            *a |= e >= r.end;
        }
    }
    let elig: Vec<usize> = (0..n).filter(|&c| any[c] && m.partial(c)).collect();
    // The greedy's order among equally loaded nodes: fewest blocks held, then candidate order.
    let mut order: Vec<usize> = (0..elig.len()).collect();
    order.sort_unstable_by_key(|&j| (m.held[elig[j]], j));
    // For each shape stage (in `ranges` order), the eligible nodes holding it, in that order.
    let holders: Vec<Vec<usize>> =
        ranges.iter().map(|r| order.iter().copied().filter(|&j| m.holds(elig[j], r)).collect()).collect();
    let mut out = Vec::new();
    let mut load = vec![0usize; elig.len()];
    // Nodes used so far by load (index: load; index 0 unused).
    let mut hist: Vec<usize> = vec![0];
    let mut first_range = 0;
    for s in shape_list {
        // A stage no node holds: no pipeline of this shape.
        if holders[first_range..first_range + s].iter().any(|h| h.is_empty()) {
            first_range += s;
            continue;
        }
        loop {
            // Stages this pipeline adds, per node: (node index, stages added).
            let mut added: Vec<(usize, usize)> = Vec::with_capacity(s);
            let mut stages = Vec::with_capacity(s);
            let mut prev: Option<usize> = None;
            for i in 0..s {
                let r = stage_range(i, s, num_blocks);
                let trial = |j: usize| load[j] + added.iter().find(|x| x.0 == j).map_or(0, |x| x.1);
                // In holder order the first node with no stage at all is the least loaded.
                let mut best: Option<(usize, usize)> = None; // (load, index into order)
                for (pos, &j) in holders[first_range + i].iter().enumerate() {
                    if Some(j) == prev {
                        continue;
                    }
                    let l = trial(j);
                    if best.is_none_or(|b| l < b.0) {
                        best = Some((l, pos));
                        if l == 0 {
                            break;
                        }
                    }
                }
                let Some((_, pos)) = best else { break };
                let j = holders[first_range + i][pos];
                match added.iter_mut().find(|x| x.0 == j) {
                    Some(x) => x.1 += 1,
                    None => added.push((j, 1)),
                }
                prev = Some(j);
                stages.push(StageSpan { node: m.nodes[elig[j]], blocks: r });
            }
            let complete = stages.len() == s;
            let brings_new = added.iter().any(|x| load[x.0] == 0);
            let mut h = hist.clone();
            for &(j, a) in &added {
                if load[j] > 0 {
                    h[load[j]] -= 1;
                }
                if h.len() <= load[j] + a {
                    h.resize(load[j] + a + 1, 0);
                }
                h[load[j] + a] += 1;
            }
            let lo = h.iter().skip(1).position(|&x| x > 0).map_or(0, |p| p + 1);
            let hi = h.iter().rposition(|&x| x > 0).unwrap_or(0);
            if !(complete && brings_new && hi - lo <= 1) {
                break;
            }
            for &(j, a) in &added {
                load[j] += a;
            }
            hist = h;
            out.push(stages);
        }
        first_range += s;
    }
    if !out.is_empty() {
        return (out, false);
    }
    if let Some(far) = far {
        out.extend(cover(m, far));
    }
    (out, true)
}

/// `far[p]`: the furthest end of a run through `p` of a partial candidate (0: none holds `p`).
pub(crate) fn far_of(m: &Moment) -> Vec<u32> {
    let n = m.nodes.len();
    (0..m.num_blocks).map(|p| (0..n).filter(|&c| m.partial(c)).map(|c| m.reach[p * n + c]).max().unwrap_or(0)).collect()
}

/// Stages over `[0, num_blocks)` with the fewest stages any cover by the partial candidates
/// has, then the shortest longest stage; `None` when they together miss some block. `far`: see
/// `far_of`.
///
/// With stages at most `cap` blocks long, starting each stage where the last ended and making
/// it as long as allowed gives the fewest stages (the usual argument: the greedy's i-th end is
/// never behind any cover's). The fewest over all caps is the count at `cap = num_blocks`; a
/// binary search finds the smallest cap with that count. Each stage goes to the partial
/// candidate holding it with the fewest stages so far, then first in candidate order, other
/// than the previous stage's: one always exists, since a node that alone holds two adjacent
/// stages would hold their union, a cover with one stage fewer.
fn cover(m: &Moment, far: &[u32]) -> Option<Vec<StageSpan>> {
    let num_blocks = m.num_blocks;
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
    let n = m.nodes.len();
    let mut load = vec![0usize; n]; // stages so far
    let mut stages: Vec<StageSpan> = Vec::with_capacity(fewest);
    let mut start = 0u32;
    let mut prev: Option<usize> = None;
    for end in ends(lo) {
        let row = &m.reach[start as usize * n..(start as usize + 1) * n];
        let mut best: Option<(usize, usize)> = None; // (stages, candidate)
        for (c, &e) in row.iter().enumerate() {
            if e < end || Some(c) == prev || !m.partial(c) {
                continue;
            }
            let l = load[c];
            if best.is_none_or(|b| l < b.0) {
                best = Some((l, c));
                if l == 0 {
                    break;
                }
            }
        }
        let (_, c) = best?;
        load[c] += 1;
        stages.push(StageSpan { node: m.nodes[c], blocks: start..end });
        prev = Some(c);
        start = end;
    }
    Some(stages)
}
