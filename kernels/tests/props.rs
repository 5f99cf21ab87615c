//! Property tests: matmul and attention against the reference and invariant,
//! on random shapes.
mod common;

use common::{weight_bytes, Rng};
use kernels::check::normalised_error;
use kernels::{reference, AttnSeq, DType, Kernels, Pool, Variant, Weights};
use proptest::prelude::*;

fn dtype_strategy() -> impl Strategy<Value = DType> {
    prop_oneof![Just(DType::F32), Just(DType::BF16), Just(DType::F16)]
}

fn variant_strategy() -> impl Strategy<Value = Variant> {
    prop::sample::select(Variant::supported())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn matmul_close_to_reference_and_row_invariant(
        m in 1usize..40, n in 1usize..50, k in 1usize..300, dtype in dtype_strategy(),
        variant in variant_strategy(), threads in 1usize..4, seed in any::<u64>(), row in any::<prop::sample::Index>(),
    ) {
        let kern = Kernels::new(variant).unwrap();
        let pool = Pool::new(threads);
        let mut rng = Rng::new(seed);
        let x = rng.vec(m * k);
        let (wb, wf) = weight_bytes(&rng.vec(n * k), dtype);
        let w = Weights::new(&wb, dtype, n, k).unwrap();
        let mut y = vec![0.0; m * n];
        kern.matmul(&pool, &x, m, w, &mut y).unwrap();
        let mut want = vec![0.0; m * n];
        reference::matmul(&x, m, Weights::from_f32(&wf, n, k).unwrap(), &mut want).unwrap();
        prop_assert!(normalised_error(&y, &want) <= 1e-6);
        let r = row.index(m);
        let mut alone = vec![0.0; n];
        kern.matmul(&pool, &x[r * k..(r + 1) * k], 1, w, &mut alone).unwrap();
        prop_assert!(y[r * n..(r + 1) * n].iter().zip(&alone).all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    #[test]
    fn attention_close_to_reference_and_decode_invariant(
        kv in 1usize..4, group in 1usize..4, hd in 1usize..80, pos0 in 0usize..40, n_q in 1usize..12,
        variant in variant_strategy(), seed in any::<u64>(), qi in any::<prop::sample::Index>(),
    ) {
        let kern = Kernels::new(variant).unwrap();
        let pool = Pool::new(2);
        let heads = kv * group;
        let mut rng = Rng::new(seed);
        let n_ctx = pos0 + n_q;
        let q = rng.vec(n_q * heads * hd);
        let (k, v) = (rng.vec(n_ctx * kv * hd), rng.vec(n_ctx * kv * hd));
        let scale = 1.0 / (hd as f32).sqrt();
        let mut out = vec![0.0; q.len()];
        kern.attention(&pool, &mut [AttnSeq { q: &q, k: &k, v: &v, out: &mut out, n_q, pos0 }], heads, kv, hd, scale).unwrap();
        let mut want = vec![0.0; q.len()];
        reference::attention(&mut [AttnSeq { q: &q, k: &k, v: &v, out: &mut want, n_q, pos0 }], heads, kv, hd, scale).unwrap();
        prop_assert!(normalised_error(&out, &want) <= 1e-6, "err {}", normalised_error(&out, &want));
        let i = qi.index(n_q);
        let row = heads * hd;
        let mut one = vec![0.0; row];
        kern.attention(&pool, &mut [AttnSeq { q: &q[i * row..(i + 1) * row], k: &k, v: &v, out: &mut one, n_q: 1, pos0: pos0 + i }], heads, kv, hd, scale).unwrap();
        prop_assert!(out[i * row..(i + 1) * row].iter().zip(&one).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
