//! faascale transport: memory regions, an authenticated versioned wire protocol, the TCP
//! backend, bounded message channels, the multicast executor that runs a planner
//! `MulticastPlan`, and the coordinator that hands the plan out.
//!
//! - `region`: caller-made (pointer, length, host/device) regions and their registry.
//! - `auth`: the cluster secret, HMAC-SHA256 keys.
//! - `wire`: frames (versioned header, sequence number, MAC), a pure decoder.
//! - `control`: control messages (JSON in MACed frames).
//! - `tcp`: authenticated connections over blocking sockets, keep-alive, timeouts.
//! - `channel`: bounded message channels over a connection.
//! - `peer`: one-sided writes and reads of a peer's registered regions, with completions.
//! - `executor`: one node's part of a multicast, block by block, checksums verified.
//! - `coordinator`, `worker`: the control plane; `local`: a cluster of worker processes.
//! - `backend`: the one log line choosing verbs or TCP (TCP until the verbs data path is wired).
//! - `verbs`, `testbed`: the verbs backend and the netns test bed (written separately).

pub mod auth;
pub mod backend;
pub mod channel;
pub mod control;
pub mod coordinator;
pub mod error;
pub mod executor;
pub mod fuzzing;
pub mod local;
pub mod peer;
pub mod region;
pub mod tcp;
pub mod testbed;
pub mod verbs;
pub mod wire;
pub mod worker;

pub use auth::Secret;
pub use error::{Error, Result};
pub use region::{MemKind, OwnedRegion, Region, RegionId, Registry};
