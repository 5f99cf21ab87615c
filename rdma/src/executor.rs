//! The multicast executor: one node's part of a `MulticastPlan`, run block by block.
//!
//! No global lock-step. The node's sender thread walks its send list in plan order; each send
//! waits only until the block starts arriving here (the transfer's `after` dependency), then
//! writes it straight from the region to the receiver: a block this node holds at once, a block
//! still arriving as it lands (cut-through: the sender forwards the prefix the reader has landed,
//! up to a per-block watermark). Each incoming connection has a reader thread that checks every
//! write against the plan and the layout (the transfer must be the peer's to send to us, at the
//! block's offset and length), lands it in the region at the layout's offset, checks the transfer
//! block's crc32c, and only then marks the block held, wakes the sender and publishes "block i is
//! here" to subscribers.
//!
//! Every write is followed by a `Verdict`: whether the sender's copy was verified. A forwarded
//! copy whose landing here then failed (its checksum, or its upstream went away) is sent to the
//! end (zeros once the copy is void) and declared void; the receiver drops it without counting it
//! against us and asks again (`Nack`), and a `Nack` is served only from a held, verified copy: it
//! waits until the block is held, it is never dropped. So nothing unverified is ever held,
//! published or resent, and a corrupt copy stops at the first node whose own check fails.
//!
//! Block states: MISSING → LANDING (one reader claims it; `landed` grows) → HELD (checksum
//! matched; never changes again), or → VOID (the landing failed) → RESETTING → MISSING. A
//! forwarder reads a LANDING block's landed prefix only under a lease (`readers`); a VOID block's
//! bytes are rewritten only after the last lease is gone, and each reset starts a new `attempt`, so
//! a forwarder notices its copy changed under it.
//!
//! Over verbs (`ExecConfig::verbs`, `verbs_path`) each write is one RDMA WRITE WITH IMM of a held
//! block into a block the receiver claimed when it granted the write; the control messages stay
//! on the TCP connection, and nothing is forwarded before it is held.
//!
//! Faults. A write that fails its checksum is refused with a `Nack` and sent again (at most
//! `MAX_REFETCHES` times, then the sender is reported dead). A peer that closes, breaks the
//! protocol or says nothing for `timeout_ms` is reported dead (`Event::PeerDead`); the
//! coordinator then calls the planner's `replan` and hands out a new epoch (`Executor::replan`).
//! Writes of older epochs still land if their block is missing. A block being landed from one
//! peer while another offers it: the offer is drained and remembered, and if the first landing
//! fails the other peer is asked again (`Nack`). Nothing counts as held unless its checksum matched.

use crate::auth::Secret;
use crate::control::Control;
use crate::error::{Error, Result};
use crate::region::{Access, Claim, Region};
use crate::tcp::{ConnReader, ConnWriter, Incoming, Listener};
use crate::wire::WriteDesc;
use crossbeam::channel::{bounded, Receiver, Sender};
use planner::{ModelLayout, MulticastPlan, TransferSource};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

mod grants;
mod receiving;
mod sending;
#[cfg(test)]
mod sim;
mod slots;
mod verbs_path;
use slots::{Slot, SlotState};
pub use verbs_path::VerbsConfig;

/// Times one transfer may fail its checksum before its sender is reported dead.
pub const MAX_REFETCHES: u32 = 3;
/// Most epochs (replans) one multicast may go through.
pub const MAX_EPOCHS: usize = 256;
/// The region id peers name in writes (the executor registers one region: the model).
pub const MODEL_REGION: u32 = 0;
/// A receiver grants its next transfer when this many bytes of the current one are still to come
/// (256 KiB: 1.16× the lower bound, 1 → 8 at 1 Gbit/s; 32 KiB: 1.12×; the grants overlap less).
const EARLY_GRANT_BYTES: usize = 32 << 10;
/// Send buffer of a data connection. The send buffer holds every unacknowledged byte, and on a
/// shaped link those wait in the link's queue, ahead of the grants (`Go`, `Almost`) this node
/// sends its own senders; with the kernel's autotuned buffer (up to 4 MiB, 30 ms at 1 Gbit/s)
/// grants arrived late and the binomial pipeline went 1.21× the lower bound, with 256 KiB 1.16×
/// (both changes, quiet machine: 1.19× → 1.10–1.12×; docs/transport.md, Measurements).
const DATA_SEND_BUFFER_BYTES: usize = 256 << 10;
/// Most grants a sender keeps (a receiver grants one write at a time); also bounds the queue of
/// writes to send again.
const MAX_CREDITS: usize = 4096;
/// Times one write may arrive void (its sender's copy failed while it forwarded it) before the
/// sender is reported dead. A sender forwards each write once; what it sends again comes from a
/// verified copy, so one void per write is all a working sender produces.
pub const MAX_VOIDS: u32 = 2;
/// A relay forwards a block that is still arriving in pieces of at least this many landed bytes
/// (or all that is left), and its reader wakes it when the landed prefix crosses a multiple of it.
pub const FORWARD_MIN_BYTES: usize = 64 << 10;
/// ... and at most this many per `write` call (bounds how long it holds the block's lease).
const FORWARD_MAX_BYTES: usize = 1 << 20;
/// Longest a forwarder waits on one of its bounded waits before it checks `stop` again.
const FORWARD_POLL_MS: u64 = 50;
/// What a forwarder sends for the rest of a write whose copy went void.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// What the executor tells its owner (the worker, which tells the coordinator).
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A block arrived and its checksum matched.
    Held { block: u32 },
    /// Every block is held and verified.
    Done { refetched: u32 },
    /// A peer closed, timed out, broke the protocol or kept sending corrupt blocks.
    PeerDead { node: u32, reason: String },
}

/// What one node needs to run its part.
pub struct ExecConfig {
    pub node: u32,
    pub layout: Arc<ModelLayout>,
    pub plan: MulticastPlan,
    /// Every node's data address, by node id.
    pub peers: Vec<SocketAddr>,
    /// The model's bytes: byte `x` of the layout is byte `x` of the region.
    pub region: Arc<Region>,
    pub secret: Secret,
    pub timeout_ms: u64,
    /// Test hook: epoch-0 transfers this node sends once with a bit flipped.
    pub corrupt_transfers: Vec<u32>,
    /// Move the bytes over RDMA (one WRITE WITH IMM per transfer block, store-and-forward) instead
    /// of TCP; every node of the multicast must say the same. `None`: TCP.
    pub verbs: Option<VerbsConfig>,
}

/// Everything the executor's threads share under one lock, by role.
struct State {
    epoch: u64,
    plans: Vec<Arc<MulticastPlan>>,
    dead: Vec<bool>,
    send: sending::SendState,
    recv: receiving::RecvState,
    grants: grants::GrantState,
}

struct Shared {
    me: u32,
    layout: Arc<ModelLayout>,
    region: Arc<Region>,
    /// The whole region, claimed for the executor's life (for writing unless it is read-only):
    /// inside it the slot states say who may touch which block (see the module docs).
    claim: Claim,
    peers: Vec<SocketAddr>,
    secret: Secret,
    timeout_ms: u64,
    slots: Vec<Slot>,
    held: AtomicUsize,
    receiver: bool,
    st: Mutex<State>,
    cv: Condvar,
    events: Sender<Event>,
    subscribers: Mutex<Vec<Sender<u32>>>,
    /// Counts landing progress and block state changes; forwarders wait on it for more bytes.
    progress: Mutex<u64>,
    progress_cv: Condvar,
    stop: AtomicBool,
    running: AtomicBool,
    listen_addr: SocketAddr,
    /// The verbs data path (`ExecConfig::verbs`); dropped last, after every link.
    verbs: Option<verbs_path::VerbsData>,
}

/// A running executor. Dropping it stops it.
pub struct Executor {
    shared: Arc<Shared>,
    events: Receiver<Event>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn tag_of(epoch: u64, transfer: u32) -> u64 {
    epoch << 32 | transfer as u64
}

fn split_tag(tag: u64) -> (u64, u32) {
    (tag >> 32, tag as u32)
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn event(&self, e: Event) {
        // Bounded: blocks the caller while the owner is behind (back-pressure, not loss).
        let _ = self.events.send_timeout(e, Duration::from_millis(self.timeout_ms.max(1000)));
    }

    fn report_dead(&self, node: u32, reason: String) {
        if self.stop.load(Ordering::Acquire) {
            return;
        }
        let first = {
            let mut st = self.lock();
            let d = st.dead.get_mut(node as usize).map(|d| !std::mem::replace(d, true)).unwrap_or(false);
            if let Some(w) = st.send.out.remove(&node) {
                w.abort();
            }
            d
        };
        if let Some(v) = &self.verbs {
            v.drop_sender_link(node);
            verbs_path::peer_dead(self, node);
        }
        self.cv.notify_all();
        self.advance_grants(None);
        if first {
            log::warn!("node {}: peer {node} dead: {reason}", self.me);
            self.event(Event::PeerDead { node, reason });
        }
    }

    fn plan(&self, epoch: u64) -> Result<Arc<MulticastPlan>> {
        let deadline = Instant::now() + Duration::from_millis(self.timeout_ms);
        let mut st = self.lock();
        loop {
            if let Some(p) = st.plans.get(epoch as usize) {
                return Ok(p.clone());
            }
            if epoch as usize >= MAX_EPOCHS {
                return Err(Error::Multicast(format!("epoch {epoch} is past the bound of {MAX_EPOCHS}")));
            }
            let now = Instant::now();
            if now >= deadline || self.stop.load(Ordering::Acquire) {
                return Err(Error::Multicast(format!("a write names epoch {epoch}, whose plan never arrived")));
            }
            st = self.cv.wait_timeout(st, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

impl Executor {
    /// Starts the executor on an already bound data listener. Blocks the plan's initial holdings
    /// give this node must be in the region already; their checksums are checked here.
    pub fn start(cfg: ExecConfig, listener: Listener) -> Result<Executor> {
        let plan = cfg.plan;
        crate::control::validate_plan(&plan, &cfg.layout).map_err(Error::Multicast)?;
        let n = plan.num_nodes;
        let nb = cfg.layout.transfer_blocks.len();
        if cfg.node as usize >= n || cfg.peers.len() != n {
            return Err(Error::Multicast(format!(
                "node {} with {} peers for a plan of {n} nodes",
                cfg.node,
                cfg.peers.len()
            )));
        }
        let end = cfg.layout.end_offset();
        cfg.region.check(MODEL_REGION, 0, end).map_err(|_| {
            Error::Region(format!("the model ends at byte {end}; the region has {} bytes", cfg.region.len()))
        })?;
        let access = if cfg.region.read_only() { Access::Read } else { Access::Write };
        let claim = cfg.region.claim(MODEL_REGION, 0, cfg.region.len() as u64, access)?;
        let slots: Vec<Slot> = (0..nb).map(|_| Slot::new(SlotState::Missing)).collect();
        let mut held = 0;
        for (b, tb) in cfg.layout.transfer_blocks.iter().enumerate() {
            if plan.initial.holds(cfg.node as usize, b) {
                let crc = crc32c::crc32c(&claim.bytes()?[tb.offset as usize..(tb.offset + tb.len) as usize]);
                if crc != tb.crc32c {
                    return Err(Error::Multicast(format!(
                        "node {} should hold block {b} but its crc32c is {crc:08x}, the layout says {:08x}",
                        cfg.node, tb.crc32c
                    )));
                }
                slots[b].set(SlotState::Held, Ordering::Relaxed);
                held += 1;
            }
        }
        let receiver = plan.receivers.contains(&cfg.node);
        let verbs = match cfg.verbs {
            Some(v) => {
                // the corruption hook sends a flipped copy from a registered scratch block
                let scratch = (!cfg.corrupt_transfers.is_empty())
                    .then(|| cfg.layout.transfer_blocks.iter().map(|t| t.len as usize).max().unwrap_or(0));
                Some(verbs_path::VerbsData::open(v, &cfg.region, scratch)?)
            }
            None => None,
        };
        let (tx, rx) = bounded(2 * nb + 1024);
        let listen_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            me: cfg.node,
            layout: cfg.layout,
            region: cfg.region,
            claim,
            peers: cfg.peers,
            secret: cfg.secret,
            timeout_ms: cfg.timeout_ms,
            slots,
            held: AtomicUsize::new(held),
            receiver,
            st: Mutex::new(State {
                epoch: plan.epoch,
                plans: Vec::new(),
                dead: vec![false; n],
                send: sending::SendState::new(cfg.corrupt_transfers.into_iter().collect()),
                recv: receiving::RecvState::default(),
                grants: grants::GrantState::default(),
            }),
            cv: Condvar::new(),
            events: tx,
            subscribers: Mutex::new(Vec::new()),
            progress: Mutex::new(0),
            progress_cv: Condvar::new(),
            stop: AtomicBool::new(false),
            running: AtomicBool::new(false),
            listen_addr,
            verbs,
        });
        {
            let mut st = shared.lock();
            if plan.epoch as usize != 0 {
                return Err(Error::Multicast(format!("the first plan must be epoch 0, not {}", plan.epoch)));
            }
            st.plans.push(Arc::new(plan));
        }
        if held == nb && receiver {
            shared.event(Event::Done { refetched: 0 });
        }
        let mut threads = Vec::new();
        let s = shared.clone();
        threads.push(spawn("rdma-accept", move || receiving::accept_loop(&s, listener))?);
        let s = shared.clone();
        threads.push(spawn("rdma-send", move || sending::send_loop(&s))?);
        Ok(Executor { shared, events: rx, threads })
    }

    /// Starts sending (receiving runs from `start` on, so every node can be ready before any sends).
    pub fn go(&self) {
        self.shared.running.store(true, Ordering::Release);
        self.shared.cv.notify_all();
        self.shared.advance_grants(None);
    }

    /// Events for the owner, in order.
    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }

    /// A channel that gets every block id once, when the block is held and verified (blocks
    /// already held first). Bounded by the number of blocks, so it never blocks the executor.
    pub fn subscribe(&self) -> Receiver<u32> {
        let nb = self.shared.slots.len();
        let (tx, rx) = bounded(nb.max(1));
        let mut subs = self.shared.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        for b in 0..nb as u32 {
            if self.shared.is_held(b) {
                let _ = tx.try_send(b);
            }
        }
        subs.push(tx);
        rx
    }

    pub fn holds(&self, block: u32) -> bool {
        (block as usize) < self.shared.slots.len() && self.shared.is_held(block)
    }

    /// Bytes `[offset, offset + len)` of the model, once every transfer block overlapping them is
    /// held (a held block is never written again, and bytes outside every block are never
    /// written), so they can be read while the multicast goes on; an error naming a missing block
    /// otherwise. This is how the owner reads the region the executor has claimed.
    pub fn held_bytes(&self, offset: u64, len: u64) -> Result<&[u8]> {
        let sh = &self.shared;
        let range = sh.claim.sub(offset, len)?;
        for (b, tb) in sh.layout.transfer_blocks.iter().enumerate() {
            let overlaps = (tb.offset as usize) < range.end && range.start < (tb.offset + tb.len) as usize;
            if overlaps && !sh.is_held(b as u32) {
                return Err(Error::Multicast(format!("bytes [{offset}, +{len}) include block {b}, which is not held")));
            }
        }
        // SAFETY: every block in the range is held (HELD is final: never written again; the Acquire
        // load in `is_held` pairs with the store that published it after its bytes were in place),
        // and no byte outside every block is ever written by the executor.
        unsafe { sh.claim.bytes_shared(offset, len) }
    }

    pub fn held_count(&self) -> usize {
        self.shared.held.load(Ordering::Acquire)
    }

    /// Switches to the next epoch's plan (from the coordinator, which got it from `replan`).
    pub fn replan(&self, plan: MulticastPlan, dead: &[u32]) -> Result<()> {
        crate::control::validate_plan(&plan, &self.shared.layout).map_err(Error::Multicast)?;
        {
            let mut st = self.shared.lock();
            if plan.epoch != st.plans.len() as u64 {
                return Err(Error::Multicast(format!("replan to epoch {}, expected {}", plan.epoch, st.plans.len())));
            }
            if st.plans.len() >= MAX_EPOCHS {
                return Err(Error::Multicast(format!("more than {MAX_EPOCHS} epochs")));
            }
            if plan.num_nodes != st.dead.len() {
                return Err(Error::Multicast("a replan with a different number of nodes".into()));
            }
            for &d in dead {
                if let Some(x) = st.dead.get_mut(d as usize) {
                    *x = true;
                }
                if let Some(w) = st.send.out.remove(&d) {
                    w.abort();
                }
            }
            st.epoch = plan.epoch;
            st.plans.push(Arc::new(plan));
            // Grants of the new epoch may have come before its plan did: keep those.
            let e = st.epoch;
            let mut dropped: Vec<u64> = st.send.credits.iter().copied().filter(|&t| split_tag(t).0 < e).collect();
            dropped.extend(st.send.retransmit.drain(..));
            st.send.credits.retain(|&t| split_tag(t).0 >= e);
            st.send.skips.retain(|&t| split_tag(t).0 >= e);
            if let Some(v) = &self.shared.verbs {
                for &d in dead {
                    v.drop_sender_link(d);
                }
                // Over verbs each grant and request claimed a block at its receiver: say we will not
                // write these, so the claims end (`Verdict { ok: false }` with no write).
                for tag in dropped {
                    let (ep, id) = split_tag(tag);
                    let to = st.plans.get(ep as usize).and_then(|p| p.transfers.get(id as usize)).map(|t| t.to);
                    if let Some(w) = to.and_then(|to| st.send.out.get(&to)) {
                        let _ = w.control(&Control::Verdict { tag, ok: false });
                    }
                }
            }
        }
        if self.shared.verbs.is_some() {
            for &d in dead {
                verbs_path::peer_dead(&self.shared, d);
            }
        }
        self.shared.cv.notify_all();
        self.shared.advance_grants(None);
        Ok(())
    }

    /// Stops every thread and closes every connection.
    pub fn stop(&mut self) {
        if self.shared.stop.swap(true, Ordering::AcqRel) {
            return;
        }
        // Closed outside the state lock: `close` waits for a write in progress, and a forwarder
        // that holds a connection may take the state lock (to ask peers again) before it lets go.
        let (out, incoming) = {
            let mut st = self.shared.lock();
            (st.send.out.drain().map(|(_, w)| w).collect::<Vec<_>>(), std::mem::take(&mut st.recv.incoming))
        };
        self.shared.cv.notify_all();
        self.shared.bump();
        for w in incoming {
            w.abort();
        }
        for w in out {
            w.close("multicast finished");
        }
        // Wake the accept loop.
        let _ = std::net::TcpStream::connect_timeout(&self.shared.listen_addr, Duration::from_millis(200));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(name.into()).spawn(f).map_err(|e| Error::Process { op: "spawn thread", err: e })
}
