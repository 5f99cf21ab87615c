//! Helpers shared by the kernel tests: a small deterministic RNG, weight
//! builders for every dtype, the normalised error and the variants to test.
#![allow(dead_code)]

use kernels::{DType, Kernels, Variant};

/// SplitMix64: deterministic, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform()).collect()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Nearest bf16 (round to nearest even) of a finite f32, as bits.
pub fn f32_to_bf16(v: f32) -> u16 {
    let b = v.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// Nearest f16 (round to nearest even) of a finite f32 in f16 range, as bits.
pub fn f32_to_f16(v: f32) -> u16 {
    let sign = if v.is_sign_negative() { 0x8000u16 } else { 0 };
    let a = v.abs() as f64;
    if a == 0.0 {
        return sign;
    }
    // f16 values are multiples of 2^-24 below 2^-14, of 2^(e-10) in [2^e, 2^(e+1)).
    let e = a.log2().floor().max(-14.0) as i32;
    let quantum = 2f64.powi(e - 10);
    let q = (a / quantum).round_ties_even() * quantum;
    let h = if q >= 2f64.powi(-14) {
        let e2 = q.log2().floor() as i32;
        let man = (q / 2f64.powi(e2) - 1.0) * 1024.0;
        (((e2 + 15) as u16) << 10) | man.round() as u16
    } else {
        (q / 2f64.powi(-24)).round() as u16
    };
    sign | h
}

/// Weights of `dtype` near the given f32 values: (little-endian bytes, the exact
/// f32 values the bytes hold).
pub fn weight_bytes(vals: &[f32], dtype: DType) -> (Vec<u8>, Vec<f32>) {
    match dtype {
        DType::F32 => (vals.iter().flat_map(|v| v.to_le_bytes()).collect(), vals.to_vec()),
        DType::BF16 => {
            let bits: Vec<u16> = vals.iter().map(|&v| f32_to_bf16(v)).collect();
            (
                bits.iter().flat_map(|b| b.to_le_bytes()).collect(),
                bits.iter().map(|&b| kernels::reference::bf16_to_f32(b)).collect(),
            )
        }
        DType::F16 => {
            let bits: Vec<u16> = vals.iter().map(|&v| f32_to_f16(v)).collect();
            (
                bits.iter().flat_map(|b| b.to_le_bytes()).collect(),
                bits.iter().map(|&b| kernels::reference::f16_to_f32(b)).collect(),
            )
        }
    }
}

pub const DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

/// The kernels of every variant this machine supports (reports the others).
pub fn all_kernels() -> Vec<Kernels> {
    Variant::ALL
        .into_iter()
        .filter_map(|v| match Kernels::new(v) {
            Ok(k) => Some(k),
            Err(e) => {
                eprintln!("skipping variant {v}: {e}");
                None
            }
        })
        .collect()
}

/// Bitwise equality of f32 slices, with the first difference in the message.
pub fn assert_bits_eq(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    if let Some(i) = (0..a.len()).find(|&i| a[i].to_bits() != b[i].to_bits()) {
        panic!("{what}: element {i} differs: {:e} vs {:e}", a[i], b[i]);
    }
}
