//! faascale planner: multicast and execution planning, pure Rust, no I/O.
//!
//! Not implemented yet (issue 4): this crate is empty on purpose; nothing here pretends to plan.
