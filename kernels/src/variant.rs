//! Which implementation of the kernels runs: scalar C, AVX2 (+FMA+F16C) or
//! AVX-512 (F/BW/VL/DQ), chosen once per process from the CPU's features and
//! the `FAASCALE_CPU_KERNELS` environment variable.

use std::sync::OnceLock;

use crate::error::KernelError;
use crate::ffi::{self, OpTable};

/// Environment variable that forces a variant: `scalar`, `avx2` or `avx512`.
pub const VARIANT_ENV: &str = "FAASCALE_CPU_KERNELS";

/// One implementation of every kernel. Results of different variants differ in
/// the last bits (different vector widths sum in different orders); within one
/// variant results are batch invariant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    /// Portable C, no SIMD intrinsics (the only one on non-x86 targets).
    Scalar,
    /// 256-bit AVX2 with FMA and F16C.
    Avx2,
    /// 512-bit AVX-512 F/BW/VL/DQ (plus AVX2, FMA, F16C).
    Avx512,
}

impl Variant {
    /// Every variant, slowest first.
    pub const ALL: [Variant; 3] = [Variant::Scalar, Variant::Avx2, Variant::Avx512];

    /// "scalar", "avx2" or "avx512".
    pub fn name(self) -> &'static str {
        match self {
            Variant::Scalar => "scalar",
            Variant::Avx2 => "avx2",
            Variant::Avx512 => "avx512",
        }
    }

    /// Parses a name as printed by [`Variant::name`].
    pub fn from_name(name: &str) -> Result<Variant, KernelError> {
        Variant::ALL
            .into_iter()
            .find(|v| v.name() == name.trim())
            .ok_or_else(|| KernelError::UnknownVariant { name: name.to_string() })
    }

    /// Whether this CPU (and this build's target) can run the variant.
    pub fn is_supported(self) -> bool {
        match self {
            Variant::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Variant::Avx2 => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Variant::Avx512 => {
                Variant::Avx2.is_supported()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512dq")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Variant::Avx2 | Variant::Avx512 => false,
        }
    }

    /// The supported variants, slowest first.
    pub fn supported() -> Vec<Variant> {
        Variant::ALL.into_iter().filter(|v| v.is_supported()).collect()
    }

    /// The fastest supported variant.
    pub fn best() -> Variant {
        Variant::ALL.into_iter().rev().find(|v| v.is_supported()).unwrap_or(Variant::Scalar)
    }

    /// The process-wide variant: `FAASCALE_CPU_KERNELS` if set to a supported
    /// name, else the best supported one (an invalid or unsupported value is
    /// reported once on stderr). Decided on first use, then fixed.
    pub fn selected() -> Variant {
        static SELECTED: OnceLock<Variant> = OnceLock::new();
        *SELECTED.get_or_init(|| {
            let best = Variant::best();
            match std::env::var(VARIANT_ENV) {
                Err(std::env::VarError::NotPresent) => best,
                Err(std::env::VarError::NotUnicode(raw)) => {
                    eprintln!("kernels: {VARIANT_ENV}={raw:?} is not valid text; using {}", best.name());
                    best
                }
                Ok(name) if name.trim().is_empty() => best,
                Ok(name) => match Variant::from_name(&name).and_then(Variant::check_supported) {
                    Ok(v) => v,
                    Err(e) => {
                        eprintln!("kernels: {VARIANT_ENV}: {e}; using {}", best.name());
                        best
                    }
                },
            }
        })
    }

    /// `Ok(self)` if supported, else `UnsupportedVariant`.
    pub fn check_supported(self) -> Result<Variant, KernelError> {
        if self.is_supported() {
            Ok(self)
        } else {
            Err(KernelError::UnsupportedVariant { variant: self.name() })
        }
    }

    /// The kernel table; only called for supported variants (see `Kernels::new`).
    pub(crate) fn table(self) -> &'static OpTable {
        match self {
            Variant::Scalar => &ffi::SCALAR,
            #[cfg(target_arch = "x86_64")]
            Variant::Avx2 => &ffi::AVX2,
            #[cfg(target_arch = "x86_64")]
            Variant::Avx512 => &ffi::AVX512,
            #[cfg(not(target_arch = "x86_64"))]
            Variant::Avx2 | Variant::Avx512 => &ffi::SCALAR,
        }
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A handle on one supported variant's kernels. The free functions of this
/// crate use [`Kernels::selected`]; tests and benchmarks make one per variant.
#[derive(Clone, Copy, Debug)]
pub struct Kernels {
    variant: Variant,
    pub(crate) ops: &'static OpTable,
}

impl Kernels {
    /// The kernels of `variant`, or `UnsupportedVariant` if this CPU lacks its features.
    pub fn new(variant: Variant) -> Result<Kernels, KernelError> {
        variant.check_supported()?;
        Ok(Kernels { variant, ops: variant.table() })
    }

    /// The kernels of [`Variant::selected`].
    pub fn selected() -> Kernels {
        let variant = Variant::selected();
        Kernels { variant, ops: variant.table() }
    }

    /// Which variant these are.
    pub fn variant(&self) -> Variant {
        self.variant
    }
}
