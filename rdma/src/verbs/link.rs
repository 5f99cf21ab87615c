//! A verbs link: one RC queue pair to one peer, connected over an authenticated bootstrap
//! connection (`tcp::Conn`), moving byte ranges with RDMA WRITE WITH IMM (immediate = the
//! caller's tag) and reporting completions as events. The data path the executor can drive.
//!
//! Bootstrap, on a fresh authenticated connection, both sides the same (no one waits on the other
//! to speak first: each sends, then reads):
//! 1. create the QP, move it to INIT and post every receive it has room for;
//! 2. send our [`VerbsEndpoint`] (the QP and the landing region we offer) as one `Message` frame, read
//!    the peer's;
//! 3. INIT → RTR → RTS towards it;
//! 4. send [`LINK_READY`], read the peer's: after it, the peer has receives posted and is past RTR,
//!    so a write cannot reach a QP that would drop it.
//!
//! A side whose setup fails sends [`LINK_FAILED`] and its error instead of whatever it owed, so
//! the peer returns that reason rather than waiting on a connection that keep-alives hold open.
//!
//! Bounds: at most the granted send depth of writes in flight ([`VerbsLink::write`] refuses more
//! until [`VerbsLink::poll`] has reaped completions); every arrival re-posts its receive at once.
//! A receiver that does not poll for longer than the RNR window (`rnr_retry` × `min_rnr_timer`,
//! about 4 ms with the defaults) makes the sender's write fail with "RNR retry counter
//! exceeded": there is no credit protocol on top, so the receiving side must poll continuously.
//! After any error completion the QP is in the error state: the link keeps that error and returns
//! it from every later call.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cq::{CompletionQueue, WorkCompletion};
use super::endpoint::VerbsEndpoint;
use super::error::VerbsError;
use super::memory::{MemoryRegion, ProtectionDomain};
use super::qp::{QpConfig, QueuePair, RemoteRegion};
use super::sys;
use crate::error::{Error, Result};
use crate::tcp::{Conn, Incoming};

/// The second bootstrap message: "my QP is at RTS and my receives are posted".
pub const LINK_READY: [u8; 8] = *b"FSVREADY";
/// Sent instead of the endpoint or the ready message by a side whose setup failed, followed by the
/// error's text (at most [`MAX_FAILURE_BYTES`] in all).
pub const LINK_FAILED: [u8; 8] = *b"FSVFAIL ";
pub const MAX_FAILURE_BYTES: usize = 1024;
/// How a protocol error caused by the peer's failure message starts.
const PEER_FAILED: &str = "the peer could not set up its side of the verbs link: ";
/// Receive work requests carry this bit in their id, sends never: an error completion's opcode is
/// undefined, so the id is what tells them apart on the shared CQ.
const RECV_WR_BIT: u64 = 1 << 63;
/// Completions taken per `ibv_poll_cq` call.
const POLL_BATCH: usize = 32;

/// Where the link's QP lives and how deep its queues are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkConfig {
    /// Port number (1-based) of the device the protection domain belongs to.
    pub port: u8,
    /// Source GID index on RoCE; `None` picks the first RoCE v2 GID.
    pub gid_index: Option<u32>,
    pub qp: QpConfig,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig { port: 1, gid_index: None, qp: QpConfig::default() }
    }
}

/// What [`VerbsLink::poll`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// A write this side posted has completed: its bytes are in the peer's region and the source
    /// range may be reused.
    Sent { wr_id: u64, tag: u32 },
    /// A write of the peer's, tagged `tag`, has landed whole in the region this side offered.
    Arrived { tag: u32, len: u32 },
}

/// One connected RC queue pair and the regions at both ends.
pub struct VerbsLink {
    qp: QueuePair,
    cq: Arc<CompletionQueue>,
    /// Offered to the peer: kept registered while the peer may write into it.
    landing: Arc<MemoryRegion>,
    remote: RemoteRegion,
    peer: String,
    next_wr_id: u64,
    /// Tags of posted writes not yet completed, by work request id (at most the send depth).
    in_flight: HashMap<u64, u32>,
    next_recv_id: u64,
    failed: Option<VerbsError>,
}

fn protocol(peer: &str, reason: String) -> Error {
    Error::Protocol { peer: peer.to_string(), reason }
}

/// The next `Message` frame of the bootstrap; anything else is a protocol error naming `what`.
fn recv_message(conn: &mut Conn, what: &str) -> Result<Vec<u8>> {
    let peer = conn.reader.peer().to_string();
    match conn.reader.recv()? {
        Incoming::Message(m) if m.starts_with(&LINK_FAILED) => {
            let why = String::from_utf8_lossy(&m[LINK_FAILED.len()..]).into_owned();
            Err(protocol(&peer, format!("{PEER_FAILED}{why}")))
        }
        Incoming::Message(m) => Ok(m),
        Incoming::Control(c) => Err(protocol(&peer, format!("expected {what}, got control message {c:?}"))),
        Incoming::Write(d) => Err(protocol(&peer, format!("expected {what}, got a {}-byte write", d.len))),
        Incoming::Close(why) => Err(protocol(&peer, format!("closed while we expected {what}: {why}"))),
    }
}

impl VerbsLink {
    /// Builds the QP in `pd`, exchanges endpoints over `conn` and connects (see the module docs).
    /// `landing` is the region the peer may write into (registered with remote write in `pd`).
    /// Every step is bounded by `conn`'s timeout.
    pub fn connect(
        conn: &mut Conn,
        pd: &Arc<ProtectionDomain>,
        landing: Arc<MemoryRegion>,
        config: LinkConfig,
    ) -> Result<VerbsLink> {
        match Self::setup(conn, pd, landing, config) {
            Ok(link) => Ok(link),
            Err(e) => {
                // The peer is blocked reading our endpoint or our ready message, and keep-alive pings
                // keep its reads from timing out: tell it why instead (best effort; a peer that sent
                // the failure itself, or has gone, does not read it).
                if !matches!(&e, Error::Protocol { reason, .. } if reason.starts_with(PEER_FAILED)) {
                    let mut why = LINK_FAILED.to_vec();
                    why.extend_from_slice(e.to_string().as_bytes());
                    why.truncate(MAX_FAILURE_BYTES);
                    let _ = conn.writer.message(&why);
                }
                Err(e)
            }
        }
    }

    fn setup(
        conn: &mut Conn,
        pd: &Arc<ProtectionDomain>,
        landing: Arc<MemoryRegion>,
        config: LinkConfig,
    ) -> Result<VerbsLink> {
        let peer = conn.reader.peer().to_string();
        if !Arc::ptr_eq(landing.pd(), pd) {
            return Err(VerbsError::InvalidArgument {
                call: "VerbsLink::connect",
                what: "the landing region is registered in another protection domain".to_string(),
            }
            .into());
        }
        // Room for both queues at the depths providers round up to (powers of two, as mlx5).
        let entries = config
            .qp
            .max_send_wr
            .checked_next_power_of_two()
            .zip(config.qp.max_recv_wr.checked_next_power_of_two())
            .and_then(|(s, r)| s.checked_add(r))
            .ok_or_else(|| VerbsError::InvalidArgument {
                call: "ibv_create_cq",
                what: format!("queue depths {} + {} overflow", config.qp.max_send_wr, config.qp.max_recv_wr),
            })?;
        let cq = CompletionQueue::new(pd.context(), entries)?;
        let mut qp = QueuePair::new(pd, &cq, &cq, config.port, config.gid_index, config.qp)?;
        qp.to_init()?;
        let mut link = VerbsLink {
            remote: RemoteRegion { addr: 0, len: 0, rkey: 0 },
            landing,
            cq,
            peer: peer.clone(),
            next_wr_id: 0,
            in_flight: HashMap::new(),
            next_recv_id: 0,
            failed: None,
            qp,
        };
        for _ in 0..link.qp.recv_depth() {
            link.post_recv()?;
        }

        conn.writer.message(&link.qp.endpoint(Some(&link.landing)).to_bytes())?;
        let theirs = recv_message(conn, "the peer's verbs endpoint")?;
        let remote = VerbsEndpoint::from_bytes(&theirs)?;
        link.qp.to_rtr(&remote)?;
        link.qp.to_rts()?;
        link.remote = RemoteRegion::from(&remote);

        conn.writer.message(&LINK_READY)?;
        let ready = recv_message(conn, "the peer's link-ready message")?;
        if ready != LINK_READY {
            return Err(protocol(&peer, format!("expected the link-ready message, got {} other bytes", ready.len())));
        }
        Ok(link)
    }

    fn post_recv(&mut self) -> std::result::Result<(), VerbsError> {
        let id = RECV_WR_BIT | self.next_recv_id;
        self.next_recv_id = (self.next_recv_id + 1) & !RECV_WR_BIT;
        self.qp.post_recv(id)
    }

    /// The peer's landing region as it described it.
    pub fn remote(&self) -> RemoteRegion {
        self.remote
    }

    pub fn peer(&self) -> &str {
        &self.peer
    }

    pub fn queue_pair(&self) -> &QueuePair {
        &self.qp
    }

    /// Writes posted and not yet reported as [`LinkEvent::Sent`].
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Posts an RDMA WRITE WITH IMM of `src[src_offset .. src_offset + len]` to the peer's region
    /// at `dst_offset`, carrying `tag`; returns its work request id (reported back in
    /// [`LinkEvent::Sent`]). Refused when the send queue is full (poll first) or the link failed.
    ///
    /// # Safety
    /// `src` must stay registered and the source range unwritten by the CPU until the write's
    /// `Sent` event (or the link's failure) has been seen.
    pub unsafe fn write(
        &mut self,
        src: &MemoryRegion,
        src_offset: usize,
        len: u32,
        dst_offset: u64,
        tag: u32,
    ) -> std::result::Result<u64, VerbsError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.in_flight.len() >= self.qp.send_depth() as usize {
            return Err(VerbsError::InvalidArgument {
                call: "VerbsLink::write",
                what: format!(
                    "{} writes in flight fill the send queue; poll for completions first",
                    self.in_flight.len()
                ),
            });
        }
        let wr_id = self.next_wr_id;
        // SAFETY: the caller keeps the source registered and untouched until completion.
        unsafe { self.qp.post_write_with_imm(wr_id, src, src_offset, len, self.remote, dst_offset, tag) }?;
        self.next_wr_id = (self.next_wr_id + 1) & !RECV_WR_BIT;
        self.in_flight.insert(wr_id, tag);
        Ok(wr_id)
    }

    /// Reaps ready completions without waiting, appending one event each to `events`; returns
    /// how many were appended. The first error completion fails the link.
    pub fn poll(&mut self, events: &mut Vec<LinkEvent>) -> std::result::Result<usize, VerbsError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut wc = [WorkCompletion::default(); POLL_BATCH];
        let n = match self.cq.poll(&mut wc) {
            Ok(n) => n,
            Err(e) => return Err(self.fail(e)),
        };
        let before = events.len();
        for c in &wc[..n] {
            if let Err(e) = c.result() {
                return Err(self.fail(e));
            }
            let event = if c.wr_id() & RECV_WR_BIT != 0 {
                match (c.opcode(), c.imm()) {
                    (sys::IBV_WC_RECV_RDMA_WITH_IMM, Some(tag)) => LinkEvent::Arrived { tag, len: c.byte_len() },
                    _ => return Err(self.fail(unexpected(c))),
                }
            } else {
                match (c.opcode(), self.in_flight.remove(&c.wr_id())) {
                    (sys::IBV_WC_RDMA_WRITE, Some(tag)) => LinkEvent::Sent { wr_id: c.wr_id(), tag },
                    _ => return Err(self.fail(unexpected(c))),
                }
            };
            if let LinkEvent::Arrived { .. } = event {
                if let Err(e) = self.post_recv() {
                    return Err(self.fail(e));
                }
            }
            events.push(event);
        }
        Ok(events.len() - before)
    }

    /// Polls until at least one event has been appended or `timeout_ms` has passed.
    pub fn wait(&mut self, events: &mut Vec<LinkEvent>, timeout_ms: u64) -> std::result::Result<usize, VerbsError> {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            let n = self.poll(events)?;
            if n > 0 {
                return Ok(n);
            }
            if Instant::now() >= deadline {
                return Err(VerbsError::Timeout { what: "a completion on the verbs link", timeout_ms });
            }
            std::thread::yield_now();
        }
    }

    fn fail(&mut self, e: VerbsError) -> VerbsError {
        self.failed = Some(e.clone());
        e
    }
}

fn unexpected(c: &WorkCompletion) -> VerbsError {
    VerbsError::UnexpectedCompletion { qpn: c.qp_num(), wr_id: c.wr_id(), opcode: c.opcode() }
}

impl std::fmt::Debug for VerbsLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerbsLink")
            .field("peer", &self.peer)
            .field("qp", &self.qp)
            .field("remote", &self.remote)
            .field("in_flight", &self.in_flight.len())
            .field("failed", &self.failed)
            .finish()
    }
}
