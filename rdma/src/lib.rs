//! faascale transport: verbs and TCP backends and the multicast executor.
//!
//! Not implemented yet (issue 5): this crate is empty on purpose.
