//! Batch invariance, bitwise, for every supported variant: a row's output does
//! not depend on m, on the rows next to it, on the pool's thread count, or (for
//! attention) on whether a query is processed in a prefill chunk or alone.
mod common;

use common::*;
use kernels::{AttnSeq, DType, Kernels, Pool, Weights};

fn pools() -> Vec<Pool> {
    vec![Pool::new(1), Pool::new(2), Pool::new(3)]
}

/// Reference rows: every row of `x` alone (m = 1) on a 1-thread pool.
fn rows_alone(kern: &Kernels, pool: &Pool, x: &[f32], k: usize, w: Weights) -> Vec<Vec<f32>> {
    x.chunks(k)
        .map(|row| {
            let mut y = vec![0.0; w.rows];
            kern.matmul(pool, row, 1, w, &mut y).unwrap();
            y
        })
        .collect()
}

#[test]
fn matmul_row_is_independent_of_batch_and_threads() {
    let pools = pools();
    let mut rng = Rng::new(11);
    // (n, k): k with and without a vector tail, n with and without tile edges
    for &(n, k) in &[(17, 7), (66, 33), (37, 576), (30, 1536)] {
        for dtype in DTYPES {
            let rows = 70;
            let x = rng.vec(rows * k);
            let (wb, _) = weight_bytes(&rng.vec(n * k), dtype);
            let w = Weights::new(&wb, dtype, n, k).unwrap();
            for kern in all_kernels() {
                let alone = rows_alone(&kern, &pools[0], &x, k, w);
                for pool in &pools {
                    for m in [1, 2, 3, 4, 5, 8, 13, 33, 64, 70] {
                        // a batch of m rows picked at random (neighbours differ each time)
                        let pick: Vec<usize> = (0..m).map(|_| rng.below(rows)).collect();
                        let xb: Vec<f32> = pick.iter().flat_map(|&r| x[r * k..(r + 1) * k].to_vec()).collect();
                        let mut y = vec![0.0; m * n];
                        kern.matmul(pool, &xb, m, w, &mut y).unwrap();
                        for (i, &r) in pick.iter().enumerate() {
                            let what = format!(
                                "{} {dtype:?} n={n} k={k} m={m} threads={} row {r} at {i}",
                                kern.variant(),
                                pool.threads()
                            );
                            assert_bits_eq(&y[i * n..(i + 1) * n], &alone[r], &what);
                        }
                    }
                }
            }
        }
    }
}

/// The same x row next to rows of wildly different magnitude (which would show
/// any cross-row sharing of partial sums) gives the same bits.
#[test]
fn matmul_neighbours_do_not_leak() {
    let pool = Pool::new(2);
    let mut rng = Rng::new(12);
    let (n, k) = (24, 100);
    let (wb, _) = weight_bytes(&rng.vec(n * k), DType::BF16);
    let w = Weights::new(&wb, DType::BF16, n, k).unwrap();
    let row = rng.vec(k);
    for kern in all_kernels() {
        let mut alone = vec![0.0; n];
        kern.matmul(&pool, &row, 1, w, &mut alone).unwrap();
        for big in [0.0f32, 1e30, -1e-30, f32::NAN] {
            let mut x = vec![big; 12 * k];
            x[5 * k..6 * k].copy_from_slice(&row);
            let mut y = vec![0.0; 12 * n];
            kern.matmul(&pool, &x, 12, w, &mut y).unwrap();
            assert_bits_eq(&y[5 * n..6 * n], &alone, &format!("{} neighbours {big}", kern.variant()));
        }
    }
}

struct Cache {
    k: Vec<f32>,
    v: Vec<f32>,
}

/// Runs attention for one sequence's queries `first..first + n_q` (positions
/// pos0 = first) on `cache`, returning out.
fn attend(
    kern: &Kernels,
    pool: &Pool,
    q_all: &[f32],
    cache: &Cache,
    first: usize,
    n_q: usize,
    shape: (usize, usize, usize),
) -> Vec<f32> {
    let (heads, kv, hd) = shape;
    let row = heads * hd;
    let mut out = vec![f32::NAN; n_q * row];
    let mut seqs = [AttnSeq {
        q: &q_all[first * row..(first + n_q) * row],
        k: &cache.k,
        v: &cache.v,
        out: &mut out,
        n_q,
        pos0: first,
    }];
    kern.attention(pool, &mut seqs, heads, kv, hd, 0.125).unwrap();
    out
}

#[test]
fn attention_query_same_in_prefill_chunk_and_decode() {
    let pools = pools();
    let mut rng = Rng::new(13);
    for &shape in &[(9usize, 3usize, 64usize), (4, 2, 48), (2, 2, 33)] {
        let (heads, kv, hd) = shape;
        let n_ctx = 45;
        let q_all = rng.vec(n_ctx * heads * hd);
        let cache = Cache { k: rng.vec(n_ctx * kv * hd), v: rng.vec(n_ctx * kv * hd) };
        let row = heads * hd;
        for kern in all_kernels() {
            // decode: each position alone
            let alone: Vec<Vec<f32>> =
                (0..n_ctx).map(|p| attend(&kern, &pools[0], &q_all, &cache, p, 1, shape)).collect();
            for pool in &pools {
                // prefill chunks of several sizes starting at several positions
                for &(first, n_q) in &[(0, n_ctx), (0, 1), (3, 7), (10, 16), (29, 16), (44, 1)] {
                    let out = attend(&kern, pool, &q_all, &cache, first, n_q, shape);
                    for i in 0..n_q {
                        let what = format!(
                            "{} {shape:?} threads={} chunk ({first},{n_q}) query {i}",
                            kern.variant(),
                            pool.threads()
                        );
                        assert_bits_eq(&out[i * row..(i + 1) * row], &alone[first + i], &what);
                    }
                }
            }
        }
    }
}

/// Several sequences in one call give each the bits it gets alone.
#[test]
fn attention_sequences_are_independent() {
    let pool = Pool::new(3);
    let mut rng = Rng::new(14);
    let (heads, kv, hd) = (6, 2, 64);
    let row = heads * hd;
    let specs = [(12usize, 0usize), (1, 30), (5, 7)];
    let data: Vec<(Vec<f32>, Cache)> = specs
        .iter()
        .map(|&(nq, p)| (rng.vec(nq * row), Cache { k: rng.vec((nq + p) * kv * hd), v: rng.vec((nq + p) * kv * hd) }))
        .collect();
    for kern in all_kernels() {
        let alone: Vec<Vec<f32>> = data
            .iter()
            .zip(&specs)
            .map(|((q, c), &(nq, p))| {
                let mut out = vec![0.0; nq * row];
                let mut s = [AttnSeq { q, k: &c.k, v: &c.v, out: &mut out, n_q: nq, pos0: p }];
                kern.attention(&pool, &mut s, heads, kv, hd, 0.1).unwrap();
                out
            })
            .collect();
        let mut outs: Vec<Vec<f32>> = specs.iter().map(|&(nq, _)| vec![0.0; nq * row]).collect();
        let mut seqs: Vec<AttnSeq> = data
            .iter()
            .zip(outs.iter_mut())
            .zip(&specs)
            .map(|(((q, c), out), &(n_q, pos0))| AttnSeq { q, k: &c.k, v: &c.v, out, n_q, pos0 })
            .collect();
        kern.attention(&pool, &mut seqs, heads, kv, hd, 0.1).unwrap();
        drop(seqs);
        for (o, a) in outs.iter().zip(&alone) {
            assert_bits_eq(o, a, &format!("{} multi-sequence", kern.variant()));
        }
    }
}

#[test]
fn rmsnorm_rows_are_independent() {
    let mut rng = Rng::new(15);
    let dim = 77;
    let x = rng.vec(9 * dim);
    let w = rng.vec(dim);
    for kern in all_kernels() {
        let mut all = vec![0.0; x.len()];
        kern.rmsnorm(&x, &w, 1e-6, &mut all).unwrap();
        for r in 0..9 {
            let mut one = vec![0.0; dim];
            kern.rmsnorm(&x[r * dim..(r + 1) * dim], &w, 1e-6, &mut one).unwrap();
            assert_bits_eq(&all[r * dim..(r + 1) * dim], &one, "rmsnorm row");
        }
    }
}
