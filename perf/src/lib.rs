//! faascale benchmarks.
