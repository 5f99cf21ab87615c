//! CPU kernels (placeholder while being written).
