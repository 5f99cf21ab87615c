//! Control messages: what the coordinator (the future manager) and workers say to each other,
//! and the few messages workers exchange on data connections. Sent as `Kind::Control` frames,
//! JSON bodies, each frame MACed and sequence-numbered (see `wire`).

use crate::error::{Error, Result};
use planner::{ModelLayout, MulticastPlan};
use serde::{Deserialize, Serialize};

/// Test hooks a coordinator may give one worker, to exercise the fault paths. All off by default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Faults {
    /// Transfer ids (epoch 0) this worker sends once with one bit flipped in flight.
    #[serde(default)]
    pub corrupt_transfers: Vec<u32>,
    /// After holding this many received blocks the worker kills itself (SIGKILL: a crash).
    #[serde(default)]
    pub kill_after_blocks: Option<u32>,
    /// After holding this many received blocks the worker stops itself (SIGSTOP: a silent peer,
    /// its sockets open, nothing sent).
    #[serde(default)]
    pub stall_after_blocks: Option<u32>,
}

impl Faults {
    pub fn any(&self) -> bool {
        !self.corrupt_transfers.is_empty() || self.kill_after_blocks.is_some() || self.stall_after_blocks.is_some()
    }
}

/// How a source fills its region before it serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum Fill {
    /// The deterministic pattern of `pattern::fill` with this seed (benchmarks and tests).
    Pattern { seed: u64 },
    /// A packed model file, memory-mapped read-only: the layout's offsets are file offsets.
    File { path: String },
}

/// What a worker needs to take part in a multicast.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Setup {
    /// This worker's node id.
    pub node: u32,
    /// Every node's data address (`ip:port`), by node id.
    pub peers: Vec<String>,
    pub layout: ModelLayout,
    pub plan: MulticastPlan,
    /// Only read by nodes that hold blocks when epoch 0 starts.
    pub fill: Fill,
    /// A peer silent for this long is dead.
    pub timeout_ms: u64,
    #[serde(default)]
    pub faults: Faults,
    /// How the workers move the bytes (every one the same).
    #[serde(default)]
    pub transport: Transport,
}

/// The data path every worker of a multicast uses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Transport {
    #[default]
    Tcp,
    /// RDMA WRITE with immediate per transfer block (`executor::VerbsConfig`); store-and-forward.
    Verbs {
        /// RDMA device name (`None`: the first one listed).
        device: Option<String>,
        /// Port number, 1-based.
        port: u8,
    },
}

/// One control message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// Worker → coordinator, first message: my data listener and process id.
    Join { data_addr: String, pid: u32 },
    /// Coordinator → worker: membership, layout, plan.
    Setup(Box<Setup>),
    /// Worker → coordinator: region ready, sources filled and checked.
    Ready,
    /// Coordinator → workers: run epoch 0.
    Start,
    /// Worker → coordinator: block verified and held.
    Holding { block: u32 },
    /// Worker → coordinator: every block held, every checksum matched.
    Done { refetched: u32 },
    /// Worker → coordinator: this peer failed (timeout, closed, broke the protocol).
    PeerDead { node: u32, reason: String },
    /// Coordinator → survivors: a new epoch's plan (from `MulticastPlan::replan`).
    Replan { plan: Box<MulticastPlan>, dead: Vec<u32> },
    /// Coordinator → workers: the multicast is over; stop and exit.
    Finish,
    /// Either way: I cannot go on.
    Failed { reason: String },
    /// Data connection, opener → acceptor, first message: the sending node.
    Iam { node: u32 },
    /// Data connection, receiver → sender: the write tagged `tag` failed its checksum; send it again.
    Nack { tag: u64, reason: String },
    /// Data connection, receiver → sender: I am ready for the write tagged `tag` (receivers take
    /// their transfers in plan order, one at a time, as the plan's timing assumes).
    Go { tag: u64 },
    /// Data connection, receiver → sender: I hold the block of the write tagged `tag` already;
    /// skip it.
    Skip { tag: u64 },
    /// Data connection, receiver → sender: the last bytes of the write tagged `tag` are arriving
    /// (or it was not needed): the sender's uplink may start on another receiver.
    Almost { tag: u64 },
    /// Data connection, sender → receiver, right after every write's payload: whether the sender
    /// held a verified copy of what it sent. A relay forwards a block while it is still arriving
    /// (cut-through), before its own checksum is known; `ok: false` says that copy failed (or its
    /// upstream went away): the receiver drops what it got without counting it against the
    /// sender, and asks again (`Nack`), which the sender serves once it holds a verified copy.
    Verdict { tag: u64, ok: bool },
    /// One-sided ops (`peer`), target → initiator: the write tagged `tag` landed (or why not).
    WriteDone { tag: u64, error: Option<String> },
    /// One-sided ops, initiator → target: send me `len` bytes at `offset` of your region `region`.
    ReadReq { tag: u64, region: u32, offset: u64, len: u64 },
    /// One-sided ops, target → initiator: the read tagged `tag` failed.
    ReadFailed { tag: u64, error: String },
}

impl Control {
    pub fn to_body(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("control messages always serialise")
    }

    pub fn from_body(body: &[u8], peer: &str) -> Result<Control> {
        serde_json::from_slice(body)
            .map_err(|e| Error::Protocol { peer: peer.to_string(), reason: format!("control message: {e}") })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Control::Join { .. } => "join",
            Control::Setup(_) => "setup",
            Control::Ready => "ready",
            Control::Start => "start",
            Control::Holding { .. } => "holding",
            Control::Done { .. } => "done",
            Control::PeerDead { .. } => "peer_dead",
            Control::Replan { .. } => "replan",
            Control::Finish => "finish",
            Control::Failed { .. } => "failed",
            Control::Iam { .. } => "iam",
            Control::Nack { .. } => "nack",
            Control::Go { .. } => "go",
            Control::Skip { .. } => "skip",
            Control::Almost { .. } => "almost",
            Control::Verdict { .. } => "verdict",
            Control::WriteDone { .. } => "write_done",
            Control::ReadReq { .. } => "read_req",
            Control::ReadFailed { .. } => "read_failed",
        }
    }
}

/// Checks that a setup is internally consistent before a worker acts on it.
pub fn validate_setup(s: &Setup) -> std::result::Result<(), String> {
    s.layout.validate().map_err(|e| e.to_string())?;
    let p = &s.plan;
    let n = p.num_nodes;
    if s.peers.len() != n {
        return Err(format!("{} peer addresses for a plan of {n} nodes", s.peers.len()));
    }
    if s.node as usize >= n {
        return Err(format!("node id {} is not below the plan's {n} nodes", s.node));
    }
    validate_plan(p, &s.layout)?;
    if !(1..=3_600_000).contains(&s.timeout_ms) {
        return Err(format!("timeout {} ms; need 1 ..= 3600000", s.timeout_ms));
    }
    if let Transport::Verbs { device, port } = &s.transport {
        if *port == 0 {
            return Err("verbs port 0; ports are numbered from 1".into());
        }
        if device.as_ref().is_some_and(|d| d.is_empty() || d.len() > 64) {
            return Err("verbs device name must be 1 ..= 64 bytes".into());
        }
    }
    Ok(())
}

/// Checks that a plan fits a layout: block sizes, node and block ids, transfer ids, schedules.
pub fn validate_plan(p: &MulticastPlan, layout: &ModelLayout) -> std::result::Result<(), String> {
    let n = p.num_nodes;
    let nb = layout.transfer_blocks.len();
    if p.block_bytes.len() != nb || p.block_bytes.iter().zip(&layout.transfer_blocks).any(|(&b, t)| b != t.len) {
        return Err("the plan's block sizes do not match the layout's transfer blocks".into());
    }
    if p.initial.num_nodes != n || p.initial.num_blocks != nb || p.initial.validate().is_err() {
        return Err("the plan's initial holdings do not match its size".into());
    }
    if p.nodes.len() != n {
        return Err(format!("{} node schedules for {n} nodes", p.nodes.len()));
    }
    for (i, t) in p.transfers.iter().enumerate() {
        let from_ok = match t.from {
            planner::TransferSource::Node(x) => (x as usize) < n && x != t.to,
            _ => false,
        };
        if t.id as usize != i || t.block as usize >= nb || t.to as usize >= n || !from_ok {
            return Err(format!("transfer {i} names a bad id, block, node or a non-node source"));
        }
        if t.after.is_some_and(|a| a as usize >= i) {
            return Err(format!("transfer {i} depends on a later transfer"));
        }
    }
    for (x, s) in p.nodes.iter().enumerate() {
        for &id in s.sends.iter().chain(&s.recvs) {
            if id as usize >= p.transfers.len() {
                return Err(format!("node {x}'s schedule names transfer {id}, which does not exist"));
            }
        }
    }
    Ok(())
}

/// The deterministic byte pattern benchmarks and tests fill sources with: byte `i` of the model
/// (absolute offset) is a function of the seed and `i` alone, so anyone can compute any block's
/// checksum without holding the rest.
pub mod pattern {
    fn word(seed: u64, index: u64) -> u64 {
        // splitmix64
        let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fills `out`, which holds the model bytes starting at absolute offset `offset` (a multiple of 8).
    pub fn fill(seed: u64, offset: u64, out: &mut [u8]) {
        debug_assert!(offset & 7 == 0);
        let base = offset / 8;
        let words = (out.len() / 8) as u64;
        let mut chunks = out.chunks_exact_mut(8);
        for (i, c) in (&mut chunks).enumerate() {
            c.copy_from_slice(&word(seed, base + i as u64).to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let n = rest.len();
            let w = word(seed, base + words).to_le_bytes();
            rest.copy_from_slice(&w[..n]);
        }
    }

    /// Fills in the crc32c of every transfer block of `layout` for the pattern with `seed`.
    pub fn checksum_layout(seed: u64, layout: &mut planner::ModelLayout) {
        let max = layout.transfer_blocks.iter().map(|t| t.len).max().unwrap_or(0) as usize;
        let mut buf = vec![0u8; max];
        for t in &mut layout.transfer_blocks {
            let b = &mut buf[..t.len as usize];
            fill(seed, t.offset, b);
            t.crc32c = crc32c::crc32c(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_the_same_whole_or_in_pieces() {
        let mut whole = vec![0u8; 8192];
        pattern::fill(5, 0, &mut whole);
        let mut piece = vec![0u8; 4096];
        pattern::fill(5, 4096, &mut piece);
        assert_eq!(&whole[4096..], &piece[..]);
        let mut other = vec![0u8; 4096];
        pattern::fill(6, 4096, &mut other);
        assert_ne!(piece, other);
    }

    #[test]
    fn control_messages_round_trip_and_garbage_is_a_clear_error() {
        let m = Control::Nack { tag: 1 << 40 | 3, reason: "crc".into() };
        assert_eq!(Control::from_body(&m.to_body(), "p").unwrap(), m);
        let v = Control::Verdict { tag: 7, ok: false };
        assert_eq!(Control::from_body(&v.to_body(), "p").unwrap(), v);
        let e = Control::from_body(b"{\"type\":\"verdict\",\"tag\":7}", "peer 7").unwrap_err().to_string();
        assert!(e.contains("ok"), "a verdict without its ok field: {e}");
        let e = Control::from_body(b"{\"type\":\"launch_missiles\"}", "peer 7").unwrap_err().to_string();
        assert!(e.contains("peer 7") && e.contains("control message"), "{e}");
    }
}
