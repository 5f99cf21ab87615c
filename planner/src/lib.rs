//! faascale planner: multicast and execution planning, pure Rust, no I/O.
//!
//! Today it holds the shared description of a model as blocks (`layout`): the contract
//! between the packed file format (`pipeline`), the transport (`rdma`) and the planners.
//! Multicast and execution planning (issue 4) are not implemented yet.

pub mod layout;

pub use layout::{
    default_chunk_bytes, ExecBlock, LayoutError, ModelLayout, TransferBlock, BLOCK_ALIGN_BYTES, MODEL_LAYOUT_VERSION,
};
