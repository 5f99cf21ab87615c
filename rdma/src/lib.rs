//! faascale transport: memory regions, an authenticated versioned wire protocol, the TCP
//! backend, bounded message channels, the multicast executor that runs a planner
//! `MulticastPlan`, and the coordinator that hands the plan out.
//!
//! - `region`: caller-made (pointer, length, host/device) regions, their registry, and claims
//!   (who may read or write which bytes: every access goes through one).
//! - `auth`: the cluster secret, HMAC-SHA256 keys.
//! - `wire`: frames (versioned header, sequence number, MAC), a pure decoder.
//! - `control`: control messages (JSON in MACed frames).
//! - `tcp`: authenticated connections over blocking sockets, keep-alive, timeouts.
//! - `channel`: bounded message channels over a connection.
//! - `peer`: one-sided writes and reads of a peer's registered regions, with completions.
//! - `executor`: one node's part of a multicast, block by block, checksums verified.
//! - `coordinator`, `worker`: the control plane; `local`: a cluster of worker processes.
//! - `backend`: the default data path (TCP; verbs only when asked for) and why, in one log line.
//! - `verbs`: the verbs (RDMA) backend; the executor's verbs data path is wired
//!   (`executor::VerbsConfig`) but has run only against a test double of libibverbs.
//! - `testbed` (cargo feature `testbed`): the root `ip netns`/`tc` test bed; `fuzzing` (cargo
//!   feature `fuzzing`): the wire decoder's properties for the fuzz target.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod auth;
pub mod backend;
pub mod channel;
pub mod control;
pub mod coordinator;
pub mod error;
pub mod executor;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod local;
pub mod peer;
pub mod region;
pub mod tcp;
#[cfg(feature = "testbed")]
pub mod testbed;
pub mod verbs;
pub mod wire;
pub mod worker;

pub use auth::Secret;
pub use error::{Error, Result};
pub use region::{MemKind, OwnedRegion, Region, RegionId, Registry};
