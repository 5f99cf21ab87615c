//! Misuse returns a KernelError naming the problem; nothing panics or reads
//! out of bounds.
mod common;

use kernels::{AttnSeq, DType, KernelError, Kernels, Pool, Variant, Weights};

fn kern() -> Kernels {
    Kernels::selected()
}

#[test]
fn weights_length_checked() {
    let data = vec![0u8; 10];
    assert_eq!(
        Weights::new(&data, DType::BF16, 2, 3).unwrap_err(),
        KernelError::ShapeMismatch { what: "weights data (bytes)", expected: 12, got: 10 }
    );
    assert!(Weights::new(&data, DType::BF16, 1, 5).is_ok());
    assert_eq!(
        Weights::new(&data, DType::F32, usize::MAX, 2).unwrap_err(),
        KernelError::SizeOverflow { what: "weights rows * cols" }
    );
    assert_eq!(
        Weights::new(&data, DType::F32, usize::MAX / 2, 1).unwrap_err(),
        KernelError::SizeOverflow { what: "weights bytes" }
    );
    assert_eq!(DType::F32.size_bytes(), 4);
    assert_eq!(DType::BF16.size_bytes(), 2);
    assert_eq!(DType::F16.size_bytes(), 2);
}

#[test]
fn matmul_shapes_checked() {
    let pool = Pool::new(2);
    let wd = vec![0.0f32; 6];
    let w = Weights::from_f32(&wd, 2, 3).unwrap();
    let mut y = vec![0.0; 4];
    assert_eq!(
        kern().matmul(&pool, &[0.0; 5], 2, w, &mut y).unwrap_err(),
        KernelError::ShapeMismatch { what: "matmul x", expected: 6, got: 5 }
    );
    assert_eq!(
        kern().matmul(&pool, &[0.0; 6], 2, w, &mut y[..3]).unwrap_err(),
        KernelError::ShapeMismatch { what: "matmul y", expected: 4, got: 3 }
    );
    // a hand-built inconsistent Weights is caught too
    let bad = Weights { data: &[0u8; 8], dtype: DType::F32, rows: 2, cols: 3 };
    assert!(matches!(kern().matmul(&pool, &[0.0; 6], 2, bad, &mut y), Err(KernelError::ShapeMismatch { .. })));
    assert!(matches!(kern().matmul(&pool, &[], usize::MAX, w, &mut y), Err(KernelError::SizeOverflow { .. })));
    // empty products are fine; k = 0 gives zeros
    kern().matmul(&pool, &[], 0, w, &mut []).unwrap();
    let w0 = Weights::from_f32(&[], 2, 0).unwrap();
    let mut y0 = vec![1.0; 6];
    kern().matmul(&pool, &[], 3, w0, &mut y0).unwrap();
    assert_eq!(y0, vec![0.0; 6]);
}

#[test]
fn pointwise_shapes_checked() {
    let k = kern();
    let mut out = vec![0.0; 6];
    assert_eq!(
        k.rmsnorm(&[0.0; 6], &[], 1e-5, &mut out).unwrap_err(),
        KernelError::InvalidDim { what: "rmsnorm weight length", value: 0, reason: "must be positive" }
    );
    assert_eq!(
        k.rmsnorm(&[0.0; 7], &[1.0; 3], 1e-5, &mut out).unwrap_err(),
        KernelError::NotMultiple { what: "rmsnorm x", len: 7, of: 3 }
    );
    assert_eq!(
        k.rmsnorm(&[0.0; 6], &[1.0; 3], 1e-5, &mut out[..3]).unwrap_err(),
        KernelError::ShapeMismatch { what: "rmsnorm out", expected: 6, got: 3 }
    );
    let mut x = vec![0.0; 12];
    assert_eq!(
        k.rope(&mut x, 2, 2, 3, &[0.0; 2], &[0.0; 2]).unwrap_err(),
        KernelError::InvalidDim { what: "rope head_dim", value: 3, reason: "must be even" }
    );
    assert_eq!(
        k.rope(&mut x, 2, 2, 4, &[0.0; 4], &[0.0; 4]).unwrap_err(),
        KernelError::ShapeMismatch { what: "rope x", expected: 16, got: 12 }
    );
    assert_eq!(
        k.rope(&mut x, 3, 2, 2, &[0.0; 2], &[0.0; 3]).unwrap_err(),
        KernelError::ShapeMismatch { what: "rope cos", expected: 3, got: 2 }
    );
    assert_eq!(
        k.rope(&mut x, 3, 2, 2, &[0.0; 3], &[0.0; 2]).unwrap_err(),
        KernelError::ShapeMismatch { what: "rope sin", expected: 3, got: 2 }
    );
    assert!(matches!(k.rope(&mut x, usize::MAX, 2, 2, &[], &[]), Err(KernelError::SizeOverflow { .. })));
    assert_eq!(
        k.silu_mul(&[0.0; 3], &[0.0; 2], &mut out[..3]).unwrap_err(),
        KernelError::ShapeMismatch { what: "silu_mul up", expected: 3, got: 2 }
    );
    assert_eq!(
        k.silu_mul(&[0.0; 3], &[0.0; 3], &mut out[..2]).unwrap_err(),
        KernelError::ShapeMismatch { what: "silu_mul out", expected: 3, got: 2 }
    );
    assert_eq!(
        k.to_f32(&[0u8; 5], DType::F16, &mut out[..3]).unwrap_err(),
        KernelError::ShapeMismatch { what: "to_f32 src (bytes)", expected: 6, got: 5 }
    );
}

#[test]
fn attention_shapes_checked() {
    let pool = Pool::new(2);
    let k = kern();
    let (q, kv) = (vec![0.0f32; 2 * 4 * 8], vec![0.0f32; 5 * 2 * 8]);
    let mut out = vec![0.0f32; 2 * 4 * 8];
    let mut run = |n_q: usize, pos0: usize, qs: &[f32], ks: &[f32], vs: &[f32], heads: usize, kvh: usize| {
        let n = out.len().min(qs.len());
        let mut seqs = [AttnSeq { q: qs, k: ks, v: vs, out: &mut out[..n], n_q, pos0 }];
        k.attention(&pool, &mut seqs, heads, kvh, 8, 1.0)
    };
    assert!(run(2, 3, &q, &kv, &kv, 4, 2).is_ok());
    assert_eq!(run(2, 4, &q, &kv, &kv, 4, 2).unwrap_err(), KernelError::ContextTooShort { seq: 0, needed: 6, got: 5 });
    assert_eq!(
        run(2, 0, &q, &kv, &kv, 4, 3).unwrap_err(),
        KernelError::NotMultiple { what: "attention n_heads", len: 4, of: 3 }
    );
    assert_eq!(
        run(2, 0, &q, &kv, &kv, 4, 0).unwrap_err(),
        KernelError::InvalidDim { what: "attention n_kv_heads", value: 0, reason: "must be positive" }
    );
    assert_eq!(
        run(2, 0, &q[1..], &kv, &kv, 4, 2).unwrap_err(),
        KernelError::ShapeMismatch { what: "attention q", expected: 64, got: 63 }
    );
    assert_eq!(
        run(2, 0, &q, &kv[1..], &kv[1..], 4, 2).unwrap_err(),
        KernelError::NotMultiple { what: "attention k", len: 79, of: 16 }
    );
    assert_eq!(
        run(2, 0, &q, &kv, &kv[..64], 4, 2).unwrap_err(),
        KernelError::ShapeMismatch { what: "attention v (same length as k)", expected: 80, got: 64 }
    );
    assert!(matches!(run(2, usize::MAX, &q, &kv, &kv, 4, 2), Err(KernelError::SizeOverflow { .. })));
    // the sequence index is reported
    let mut o1 = vec![0.0; 32];
    let mut o2 = vec![0.0; 32];
    let mut seqs = [
        AttnSeq { q: &q[..32], k: &kv, v: &kv, out: &mut o1, n_q: 1, pos0: 0 },
        AttnSeq { q: &q[..32], k: &kv, v: &kv, out: &mut o2, n_q: 1, pos0: 5 },
    ];
    assert_eq!(
        k.attention(&pool, &mut seqs, 4, 2, 8, 1.0).unwrap_err(),
        KernelError::ContextTooShort { seq: 1, needed: 6, got: 5 }
    );
}

#[test]
fn variants_named_and_checked() {
    assert_eq!(Variant::from_name("avx2").unwrap(), Variant::Avx2);
    assert_eq!(Variant::from_name("sse9").unwrap_err(), KernelError::UnknownVariant { name: "sse9".into() });
    assert!(Variant::Scalar.is_supported());
    assert!(["scalar", "avx2", "avx512"].contains(&kernels::variant()));
    for v in Variant::ALL {
        assert_eq!(Kernels::new(v).is_ok(), v.is_supported());
        if !v.is_supported() {
            assert_eq!(Kernels::new(v).unwrap_err(), KernelError::UnsupportedVariant { variant: v.name() });
        }
    }
    let e = KernelError::ShapeMismatch { what: "matmul x", expected: 6, got: 5 };
    assert_eq!(e.to_string(), "matmul x: length 5 does not match the shape, which needs 6");
}
