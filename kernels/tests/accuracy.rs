//! Every kernel of every supported variant against `kernels::reference`, by the
//! normalised error ||out - ref||_2 / ||ref||_2 on odd shapes (the habit of
//! ggml's test-backend-ops). Tolerances, per op:
//!   matmul (all weight dtypes)  1e-6  f32 sums in a fixed lane order vs f64
//!   rmsnorm                     1e-6
//!   rope                        exact: same f32 formula, no fused ops
//!   to_f32                      exact: widening is exact for every input
//!   silu_mul, softmax           1e-6  polynomial exp (about 2 ulp) vs f64 exp
//!   attention                   1e-6  f32 dots, polynomial exp, f32 sums vs f64
mod common;

use common::*;
use kernels::check::normalised_error;
use kernels::{reference, AttnSeq, DType, Pool, Weights};

const MATMUL_TOL: f64 = 1e-6;
const NORM_TOL: f64 = 1e-6;
const EXP_TOL: f64 = 1e-6;
const ATTN_TOL: f64 = 1e-6;

/// Checks errors against a tolerance and reports the worst one seen on stderr
/// (`cargo test -p kernels --test accuracy -- --nocapture` shows them).
struct Worst {
    op: &'static str,
    variant: kernels::Variant,
    tol: f64,
    worst: f64,
}

impl Worst {
    fn new(op: &'static str, variant: kernels::Variant, tol: f64) -> Worst {
        Worst { op, variant, tol, worst: 0.0 }
    }
    fn check(&mut self, err: f64, ctx: impl Fn() -> String) {
        self.worst = self.worst.max(err);
        assert!(err <= self.tol, "{} {} {}: normalised error {err:e} > {:e}", self.op, self.variant, ctx(), self.tol);
    }
}

impl Drop for Worst {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            eprintln!(
                "{:>9} {:>6}: worst normalised error {:.2e} (tolerance {:.0e})",
                self.op,
                self.variant.name(),
                self.worst,
                self.tol
            );
        }
    }
}

#[test]
fn matmul_matches_reference() {
    let pool = Pool::new(2);
    let mut rng = Rng::new(1);
    let shapes: &[(usize, usize, usize)] = &[
        (1, 1, 1),
        (1, 3, 7),
        (3, 7, 17),
        (7, 17, 33),
        (17, 33, 65),
        (33, 65, 127),
        (5, 127, 576),
        (65, 576, 33),
        (1, 576, 1536),
        (13, 1536, 576),
        (64, 192, 576),
    ];
    for kern in all_kernels() {
        let mut worst = Worst::new("matmul", kern.variant(), MATMUL_TOL);
        for dtype in DTYPES {
            for &(m, n, k) in shapes {
                let x = rng.vec(m * k);
                let (wb, wf) = weight_bytes(&rng.vec(n * k), dtype);
                let w = Weights::new(&wb, dtype, n, k).unwrap();
                let mut y = vec![f32::NAN; m * n];
                kern.matmul(&pool, &x, m, w, &mut y).unwrap();
                let mut want = vec![0.0; m * n];
                reference::matmul(&x, m, Weights::from_f32(&wf, n, k).unwrap(), &mut want).unwrap();
                worst.check(normalised_error(&y, &want), || format!("{dtype:?} m={m} n={n} k={k}"));
            }
        }
    }
}

/// bf16/f16 widening is exact, so weights of those dtypes give the very bits of
/// f32 weights holding the same values, on the on-the-fly path (few rows) and on
/// the convert-first path (many rows).
#[test]
fn matmul_half_weights_equal_f32_weights_bitwise() {
    let pool = Pool::new(2);
    let mut rng = Rng::new(2);
    for kern in all_kernels() {
        for dtype in [DType::BF16, DType::F16] {
            for &(m, n, k) in &[(1, 37, 577), (3, 13, 64), (9, 37, 577), (64, 30, 100)] {
                let x = rng.vec(m * k);
                let (wb, wf) = weight_bytes(&rng.vec(n * k), dtype);
                let mut y_half = vec![0.0; m * n];
                kern.matmul(&pool, &x, m, Weights::new(&wb, dtype, n, k).unwrap(), &mut y_half).unwrap();
                let mut y_f32 = vec![0.0; m * n];
                kern.matmul(&pool, &x, m, Weights::from_f32(&wf, n, k).unwrap(), &mut y_f32).unwrap();
                assert_bits_eq(&y_half, &y_f32, &format!("{} {dtype:?} m={m} n={n} k={k}", kern.variant()));
            }
        }
    }
}

/// Weight data at an odd address (as in an mmap'd safetensors file).
#[test]
fn matmul_unaligned_weights() {
    let pool = Pool::new(1);
    let mut rng = Rng::new(3);
    let (m, n, k) = (5, 19, 45);
    for kern in all_kernels() {
        for dtype in DTYPES {
            let x = rng.vec(m * k);
            let (wb, wf) = weight_bytes(&rng.vec(n * k), dtype);
            let mut shifted = vec![0u8; wb.len() + 1];
            shifted[1..].copy_from_slice(&wb);
            let mut y = vec![0.0; m * n];
            kern.matmul(&pool, &x, m, Weights::new(&shifted[1..], dtype, n, k).unwrap(), &mut y).unwrap();
            let mut want = vec![0.0; m * n];
            kern.matmul(&pool, &x, m, Weights::from_f32(&wf, n, k).unwrap(), &mut want).unwrap();
            assert_bits_eq(&y, &want, &format!("{} {dtype:?} unaligned", kern.variant()));
        }
    }
}

#[test]
fn to_f32_all_f16_and_bf16_bit_patterns() {
    let src: Vec<u8> = (0..=u16::MAX).flat_map(|h| h.to_le_bytes()).collect();
    for kern in all_kernels() {
        for (dtype, conv) in
            [(DType::F16, reference::f16_to_f32 as fn(u16) -> f32), (DType::BF16, reference::bf16_to_f32)]
        {
            // odd offsets and lengths exercise the vector tails and unaligned loads
            for (start, len) in [(0usize, 65536usize), (1, 65535), (3, 13)] {
                let bytes = &src[2 * start..2 * (start + len)];
                let mut dst = vec![0.0f32; len];
                kern.to_f32(bytes, dtype, &mut dst).unwrap();
                for (i, &d) in dst.iter().enumerate() {
                    let h = (start + i) as u16;
                    let want = conv(h);
                    let same = d.to_bits() == want.to_bits() || (d.is_nan() && want.is_nan());
                    assert!(same, "{} {dtype:?} {h:#06x}: {d:e} vs {want:e}", kern.variant());
                }
            }
        }
        // f16 spot checks: smallest subnormal, largest subnormal, max, inf
        let mut d = [0.0f32; 4];
        let s: Vec<u8> = [0x0001u16, 0x03ff, 0x7bff, 0xfc00].iter().flat_map(|h| h.to_le_bytes()).collect();
        kern.to_f32(&s, DType::F16, &mut d).unwrap();
        assert_eq!(d, [2f32.powi(-24), 1023.0 * 2f32.powi(-24), 65504.0, f32::NEG_INFINITY]);
        // f32 passes through, at an odd address
        let vals = [1.5f32, -0.0, f32::INFINITY, 1e-42];
        let mut bytes = vec![0u8];
        bytes.extend(vals.iter().flat_map(|v| v.to_le_bytes()));
        kern.to_f32(&bytes[1..], DType::F32, &mut d).unwrap();
        assert_bits_eq(&d, &vals, "f32 passthrough");
    }
}

#[test]
fn rmsnorm_matches_reference() {
    let mut rng = Rng::new(4);
    for kern in all_kernels() {
        let mut worst = Worst::new("rmsnorm", kern.variant(), NORM_TOL);
        for &(rows, dim) in &[(1, 1), (3, 7), (2, 17), (5, 33), (1, 64), (4, 65), (2, 576), (3, 1536)] {
            let x: Vec<f32> = rng.vec(rows * dim).iter().map(|v| v * 10.0).collect();
            let w = rng.vec(dim);
            let mut out = vec![0.0; rows * dim];
            kern.rmsnorm(&x, &w, 1e-5, &mut out).unwrap();
            let mut want = vec![0.0; rows * dim];
            reference::rmsnorm(&x, &w, 1e-5, &mut want).unwrap();
            worst.check(normalised_error(&out, &want), || format!("rows={rows} dim={dim}"));
            // in place gives the same bits
            let mut inplace = x.clone();
            let copy = inplace.clone();
            kern.rmsnorm(&copy, &w, 1e-5, &mut inplace).unwrap();
            assert_bits_eq(&inplace, &out, "rmsnorm in place");
        }
    }
}

#[test]
fn rope_matches_reference_exactly() {
    let mut rng = Rng::new(5);
    for kern in all_kernels() {
        for &(rows, heads, hd) in &[(1, 1, 2), (3, 2, 6), (2, 3, 48), (5, 9, 64), (2, 1, 34), (1, 2, 128)] {
            let x = rng.vec(rows * heads * hd);
            let cos = rng.vec(rows * hd / 2);
            let sin = rng.vec(rows * hd / 2);
            let mut got = x.clone();
            kern.rope(&mut got, rows, heads, hd, &cos, &sin).unwrap();
            let mut want = x.clone();
            reference::rope(&mut want, rows, heads, hd, &cos, &sin).unwrap();
            assert_bits_eq(&got, &want, &format!("{} rope rows={rows} heads={heads} hd={hd}", kern.variant()));
        }
    }
}

#[test]
fn silu_mul_matches_reference() {
    let mut rng = Rng::new(6);
    for kern in all_kernels() {
        let mut worst = Worst::new("silu_mul", kern.variant(), EXP_TOL);
        for n in [1, 7, 17, 33, 1536, 1537] {
            let gate: Vec<f32> = rng.vec(n).iter().map(|v| v * 12.0).collect();
            let up = rng.vec(n);
            let mut out = vec![0.0; n];
            kern.silu_mul(&gate, &up, &mut out).unwrap();
            let mut want = vec![0.0; n];
            reference::silu_mul(&gate, &up, &mut want).unwrap();
            worst.check(normalised_error(&out, &want), || format!("n={n}"));
        }
        // extremes: exp overflow and underflow stay finite and signed right
        let gate = [-200.0f32, -90.0, -88.5, 0.0, 88.5, 200.0];
        let mut out = [0.0f32; 6];
        kern.silu_mul(&gate, &[1.0; 6], &mut out).unwrap();
        assert!(out.iter().all(|v| v.is_finite()), "{out:?}");
        assert!(out[0].abs() < 1e-30 && out[1].abs() < 1e-30 && out[3] == 0.0 && out[5] == 200.0, "{out:?}");
    }
}

#[test]
fn softmax_matches_reference() {
    let mut rng = Rng::new(7);
    for kern in all_kernels() {
        let mut worst = Worst::new("softmax", kern.variant(), EXP_TOL);
        for n in [1, 2, 7, 16, 17, 33, 100, 1025] {
            let x: Vec<f32> = rng.vec(n).iter().map(|v| v * 20.0).collect();
            let mut got = x.clone();
            kern.softmax(&mut got);
            let mut want = x.clone();
            reference::softmax(&mut want);
            worst.check(normalised_error(&got, &want), || format!("n={n}"));
        }
        // masked entries (-inf) get exactly 0
        let mut x = vec![1.0, f32::NEG_INFINITY, 3.0, f32::NEG_INFINITY, 0.5];
        kern.softmax(&mut x);
        assert!(x[1] == 0.0 && x[3] == 0.0 && (x.iter().sum::<f32>() - 1.0).abs() < 1e-6, "{x:?}");
        kern.softmax(&mut []);
    }
}

/// Random sequences: (q, k, v, n_q, pos0) with n_ctx >= pos0 + n_q.
fn attn_inputs(
    rng: &mut Rng,
    n_q: usize,
    pos0: usize,
    extra: usize,
    heads: usize,
    kv: usize,
    hd: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n_ctx = pos0 + n_q + extra;
    (rng.vec(n_q * heads * hd), rng.vec(n_ctx * kv * hd), rng.vec(n_ctx * kv * hd))
}

#[test]
fn attention_matches_reference() {
    let pool = Pool::new(3);
    let mut rng = Rng::new(8);
    for kern in all_kernels() {
        let mut worst = Worst::new("attention", kern.variant(), ATTN_TOL);
        for &(heads, kv, hd) in &[(9, 3, 64), (4, 4, 48), (6, 2, 33), (2, 1, 128), (3, 1, 8)] {
            let specs = [(5usize, 0usize, 2usize), (1, 17, 0), (23, 40, 3)];
            let data: Vec<_> = specs.iter().map(|&(nq, p, e)| attn_inputs(&mut rng, nq, p, e, heads, kv, hd)).collect();
            let mut outs: Vec<Vec<f32>> = specs.iter().map(|&(nq, _, _)| vec![f32::NAN; nq * heads * hd]).collect();
            let mut wants = outs.clone();
            let scale = 1.0 / (hd as f32).sqrt();
            {
                let mut seqs: Vec<AttnSeq> = data
                    .iter()
                    .zip(outs.iter_mut())
                    .zip(&specs)
                    .map(|(((q, k, v), out), &(n_q, pos0, _))| AttnSeq { q, k, v, out, n_q, pos0 })
                    .collect();
                kern.attention(&pool, &mut seqs, heads, kv, hd, scale).unwrap();
            }
            {
                let mut seqs: Vec<AttnSeq> = data
                    .iter()
                    .zip(wants.iter_mut())
                    .zip(&specs)
                    .map(|(((q, k, v), out), &(n_q, pos0, _))| AttnSeq { q, k, v, out, n_q, pos0 })
                    .collect();
                reference::attention(&mut seqs, heads, kv, hd, scale).unwrap();
            }
            for (i, (o, w)) in outs.iter().zip(&wants).enumerate() {
                worst.check(normalised_error(o, w), || format!("heads={heads} kv={kv} hd={hd} seq {i}"));
            }
        }
    }
}

/// f16 weights with subnormals, signed zeros, the largest normal and
/// infinities give the bits of f32 weights holding the same values (inf and
/// NaN outputs included), on both widening paths.
#[test]
fn matmul_f16_special_weights_equal_f32_weights_bitwise() {
    let pool = Pool::new(2);
    let mut rng = Rng::new(9);
    let specials = [0x0001u16, 0x0002, 0x03ff, 0x8001, 0x83ff, 0x0000, 0x8000, 0x7bff, 0xfbff, 0x0400, 0x7c00, 0xfc00];
    let (n, k) = (14, 61);
    let mut bits: Vec<u16> = (0..n * k).map(|i| specials[i % 9]).collect(); // no infinities yet
    let rows_with_inf = [3usize, 11];
    for &r in &rows_with_inf {
        bits[r * k + 7] = specials[10 + r % 2];
    }
    let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
    let vals: Vec<f32> = bits.iter().map(|&b| reference::f16_to_f32(b)).collect();
    for kern in all_kernels() {
        for m in [1, 5, 40] {
            let x = rng.vec(m * k);
            let mut y_half = vec![0.0; m * n];
            kern.matmul(&pool, &x, m, Weights::new(&bytes, DType::F16, n, k).unwrap(), &mut y_half).unwrap();
            let mut y_f32 = vec![0.0; m * n];
            kern.matmul(&pool, &x, m, Weights::from_f32(&vals, n, k).unwrap(), &mut y_f32).unwrap();
            assert_bits_eq(&y_half, &y_f32, &format!("{} f16 specials m={m}", kern.variant()));
            assert!(y_half[3].is_infinite() && y_half[11].is_infinite(), "{:?}", &y_half[..n]);
            assert!(y_half[0].is_finite());
        }
    }
}
