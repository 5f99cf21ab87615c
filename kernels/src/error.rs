//! Errors returned by the kernels when they are called with inconsistent
//! arguments. Kernels never panic on bad shapes; they return one of these.

use std::fmt;

/// What was wrong with a kernel call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelError {
    /// A buffer's length is not the one its shape implies.
    ShapeMismatch {
        /// Which buffer (for example "matmul x").
        what: &'static str,
        /// Length the shape implies, in elements (bytes for raw weight data).
        expected: usize,
        /// Length given.
        got: usize,
    },
    /// A length must be a whole multiple of another.
    NotMultiple {
        /// Which buffer or dimension.
        what: &'static str,
        /// The length given.
        len: usize,
        /// What it must be a multiple of.
        of: usize,
    },
    /// A dimension has a value the kernel cannot use.
    InvalidDim {
        /// Which dimension.
        what: &'static str,
        /// The value given.
        value: usize,
        /// Why it is refused, for example "must be even".
        reason: &'static str,
    },
    /// A product of dimensions does not fit in `usize`.
    SizeOverflow {
        /// Which product.
        what: &'static str,
    },
    /// An attention sequence's key/value cache is shorter than its queries need.
    ContextTooShort {
        /// Index of the sequence in the call.
        seq: usize,
        /// Positions needed: pos0 + n_q.
        needed: usize,
        /// Positions the key/value buffers hold.
        got: usize,
    },
    /// A kernel variant name that does not exist.
    UnknownVariant {
        /// The name given.
        name: String,
    },
    /// A kernel variant this CPU (or this build's target) cannot run.
    UnsupportedVariant {
        /// The variant's name.
        variant: &'static str,
    },
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelError::ShapeMismatch { what, expected, got } => {
                write!(f, "{what}: length {got} does not match the shape, which needs {expected}")
            }
            KernelError::NotMultiple { what, len, of } => {
                write!(f, "{what}: length {len} is not a multiple of {of}")
            }
            KernelError::InvalidDim { what, value, reason } => write!(f, "{what} = {value}: {reason}"),
            KernelError::SizeOverflow { what } => write!(f, "{what}: size overflows usize"),
            KernelError::ContextTooShort { seq, needed, got } => {
                write!(f, "attention sequence {seq}: key/value cache holds {got} positions, queries need {needed}")
            }
            KernelError::UnknownVariant { name } => {
                write!(f, "unknown CPU kernel variant {name:?} (expected scalar, avx2 or avx512)")
            }
            KernelError::UnsupportedVariant { variant } => {
                write!(f, "CPU kernel variant {variant} is not supported on this machine")
            }
        }
    }
}

impl std::error::Error for KernelError {}

/// `a * b`, or `SizeOverflow { what }`.
pub(crate) fn mul(a: usize, b: usize, what: &'static str) -> Result<usize, KernelError> {
    a.checked_mul(b).ok_or(KernelError::SizeOverflow { what })
}

/// `Ok` when `got == expected`, else `ShapeMismatch`.
pub(crate) fn expect_len(what: &'static str, expected: usize, got: usize) -> Result<(), KernelError> {
    if expected == got {
        Ok(())
    } else {
        Err(KernelError::ShapeMismatch { what, expected, got })
    }
}
