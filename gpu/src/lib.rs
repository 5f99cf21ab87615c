//! faascale CUDA driver wrappers (libcuda loaded at run time).
//!
//! Not implemented yet (issue 6): this crate is empty on purpose; every run uses the CPU path.
