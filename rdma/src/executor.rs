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
use crate::tcp::{self, ConnReader, ConnWriter, Incoming, Listener};
use crate::wire::WriteDesc;
use crossbeam::channel::{bounded, Receiver, Sender};
use planner::{Endpoint, ModelLayout, MulticastPlan};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

mod verbs_path;
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

const MISSING: u8 = 0;
const LANDING: u8 = 1;
const HELD: u8 = 2;
/// The landing failed; the bytes wait for the last forwarder's lease to go before they are reused.
const VOID: u8 = 3;
/// One thread is turning a VOID block back into a MISSING one.
const RESETTING: u8 = 4;

/// One transfer block's state on this node (see the module docs).
struct Slot {
    state: AtomicU8,
    /// Bytes of the current landing in the region (a prefix of the block); set by the landing
    /// reader with `Release` after the bytes are in place, read by forwarders with `Acquire`.
    landed: AtomicU64,
    /// Bumped by every reset: a forwarder's copy is current while the attempt it started on is.
    attempt: AtomicU32,
    /// Forwarders reading the landed prefix now (leases).
    readers: AtomicU32,
}

impl Slot {
    fn new(state: u8) -> Slot {
        Slot {
            state: AtomicU8::new(state),
            landed: AtomicU64::new(0),
            attempt: AtomicU32::new(0),
            readers: AtomicU32::new(0),
        }
    }
}

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

struct State {
    epoch: u64,
    plans: Vec<Arc<MulticastPlan>>,
    retransmit: VecDeque<u64>,
    dead: Vec<bool>,
    corrupt: HashSet<u32>,
    nacks: HashMap<u64, u32>,
    /// Receiver side: void writes (their sender's copy failed while it forwarded them), by tag.
    voids: HashMap<u64, u32>,
    refetched: u32,
    out: HashMap<u32, ConnWriter>,
    /// Offers of a block drained while another peer was landing it: (peer's writer, tag).
    offers: HashMap<u32, Vec<(ConnWriter, u64)>>,
    incoming: Vec<ConnWriter>,
    /// Sender side: writes the receivers said they are ready for.
    credits: HashSet<u64>,
    /// Sender side: writes the receivers said they do not need (they hold the block already).
    skips: HashSet<u64>,
    /// Sender side: the last write sent (receiver, tag, when) until its receiver says `Almost`:
    /// the next write to another receiver waits for it, so the uplink carries one stream at a
    /// time (the socket buffer would otherwise let two transfers share it, and both arrive late).
    awaiting: Option<(u32, u64, Instant)>,
    /// Receiver side: position in this epoch's receive list, the grant outstanding.
    recv_idx: usize,
    recv_epoch: u64,
    granted: HashSet<u64>,
    /// Receiver side: each sender's incoming connection (where grants go), and grants waiting for one.
    incoming_by_node: HashMap<u32, ConnWriter>,
    pending_grants: HashMap<u32, Vec<Control>>,
    /// Receiver side over verbs: blocks claimed for a peer's write, (peer, transfer id) → (tag, block).
    claims: HashMap<(u32, u32), (u64, u32)>,
    /// Receiver side over verbs: peers whose link is up (their poller releases their claims).
    verbs_links: HashSet<u32>,
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

/// See `Shared::lease`.
struct Lease<'a> {
    sh: &'a Shared,
    b: u32,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let s = &self.sh.slots[self.b as usize];
        if s.readers.fetch_sub(1, Ordering::SeqCst) == 1 && s.state.load(Ordering::SeqCst) == VOID {
            self.sh.reset_block(self.b);
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_held(&self, b: u32) -> bool {
        self.slots[b as usize].state.load(Ordering::Acquire) == HELD
    }

    /// Whether a send of `b` may start: held, or arriving (forwarded as it lands).
    fn forwardable(&self, b: u32) -> bool {
        match self.slots[b as usize].state.load(Ordering::Acquire) {
            HELD => true,
            // over verbs a block moves on only once all of it is here and verified
            LANDING => self.verbs.is_none(),
            _ => false,
        }
    }

    /// Wakes forwarders waiting for landing progress or a block's verdict.
    fn bump(&self) {
        let mut g = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        *g = g.wrapping_add(1);
        drop(g);
        self.progress_cv.notify_all();
    }

    fn progress_seen(&self) -> u64 {
        *self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits at most `max` for a `bump` after `seen` was read.
    fn wait_progress(&self, seen: u64, max: Duration) {
        let g = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        if *g == seen {
            let _ = self.progress_cv.wait_timeout(g, max);
        }
    }

    /// A lease on block `b`'s bytes: while it lives, a VOID block is not reset (its bytes are not
    /// rewritten). Check the state after taking it (the SeqCst increment pairs with the SeqCst
    /// store of VOID and load of `readers` in `void_block`: one of the two sees the other).
    fn lease(&self, b: u32) -> Lease<'_> {
        self.slots[b as usize].readers.fetch_add(1, Ordering::SeqCst);
        Lease { sh: self, b }
    }

    /// The landing of `b` failed: its bytes are void. Reset at once if nobody forwards them,
    /// otherwise the last lease resets it.
    fn void_block(&self, b: u32) {
        let s = &self.slots[b as usize];
        s.state.store(VOID, Ordering::SeqCst);
        if s.readers.load(Ordering::SeqCst) == 0 {
            self.reset_block(b);
        }
        self.bump();
    }

    /// VOID → MISSING (once, by whoever gets there first), then asks peers whose offers of `b`
    /// were drained meanwhile to send it again.
    fn reset_block(&self, b: u32) {
        let s = &self.slots[b as usize];
        if s.state.compare_exchange(VOID, RESETTING, Ordering::SeqCst, Ordering::SeqCst).is_err() {
            return;
        }
        s.landed.store(0, Ordering::Relaxed);
        s.attempt.fetch_add(1, Ordering::Relaxed);
        // publishes the two stores above to whoever sees MISSING (and then claims the block)
        s.state.store(MISSING, Ordering::SeqCst);
        self.ask_offers_again(b);
        self.bump();
    }

    /// A landing of `b` failed: ask the peers whose offers were drained meanwhile to send it again.
    fn ask_offers_again(&self, b: u32) {
        let offers = self.lock().offers.remove(&b).unwrap_or_default();
        for (w, tag) in offers {
            let _ = w.control(&Control::Nack { tag, reason: format!("block {b}: the landing it waited for failed") });
        }
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
            if let Some(w) = st.out.remove(&node) {
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

    /// Receiver side: grants the first transfer of this epoch's receive list whose block is
    /// missing and whose sender is alive; when `near_end` names that transfer (its last bytes are
    /// arriving), grants the one after it instead, so the next sender starts a round trip early.
    fn advance_grants(&self, near_end: Option<u64>) {
        if !self.running.load(Ordering::Acquire) || self.stop.load(Ordering::Acquire) {
            return;
        }
        let mut msgs: Vec<(u32, Control)> = Vec::new();
        let send: Vec<(ConnWriter, Control)> = {
            let mut st = self.lock();
            if st.recv_epoch != st.epoch {
                st.recv_epoch = st.epoch;
                st.recv_idx = 0;
                st.granted.clear();
            }
            let plan = st.plans[st.epoch as usize].clone();
            let epoch = st.epoch;
            let recvs = &plan.nodes[self.me as usize].recvs;
            // Whether entry i needs no grant: its block is held (then its sender, if alive and not
            // yet told, gets `Skip`, so its send list does not wait on us) or its sender is dead.
            let skip = |st: &mut State, i: usize, msgs: &mut Vec<(u32, Control)>| {
                let t = &plan.transfers[recvs[i] as usize];
                let Endpoint::Node(from) = t.from else { return true };
                if st.dead.get(from as usize).copied().unwrap_or(true) {
                    return true;
                }
                if !self.is_held(t.block) {
                    return false;
                }
                let tag = tag_of(epoch, t.id);
                if st.granted.insert(tag) {
                    msgs.push((from, Control::Skip { tag }));
                }
                true
            };
            loop {
                let i = st.recv_idx;
                if i >= recvs.len() || !skip(&mut st, i, &mut msgs) {
                    break;
                }
                st.recv_idx += 1;
            }
            let mut j = st.recv_idx;
            if j < recvs.len() && near_end == Some(tag_of(epoch, recvs[j])) {
                j += 1;
                while j < recvs.len() && skip(&mut st, j, &mut msgs) {
                    j += 1;
                }
            }
            // Over verbs nothing says "almost there" (a write arrives whole), so two transfers are
            // granted at a time: the next sender's write is posted while the current one lands.
            let window = if self.verbs.is_some() { 2 } else { 1 };
            let mut granted_now = 0;
            while j < recvs.len() && granted_now < window {
                if granted_now > 0 && skip(&mut st, j, &mut msgs) {
                    j += 1;
                    continue;
                }
                let t = plan.transfers[recvs[j] as usize];
                let tag = tag_of(epoch, t.id);
                let Endpoint::Node(from) = t.from else { break };
                if !st.granted.contains(&tag) {
                    // over verbs the block is claimed for this write before the grant lets it land
                    if self.verbs.is_some() && !verbs_path::claim(self, &mut st.claims, from, &t, tag) {
                        break;
                    }
                    st.granted.insert(tag);
                    msgs.push((from, Control::Go { tag }));
                }
                granted_now += 1;
                j += 1;
            }
            let mut out = Vec::new();
            for (from, m) in msgs.drain(..) {
                match st.incoming_by_node.get(&from) {
                    Some(w) => out.push((w.clone(), m)),
                    None => st.pending_grants.entry(from).or_default().push(m),
                }
            }
            out
        };
        for (w, m) in send {
            let _ = w.control(&m);
        }
    }

    /// Marks a verified block held, publishes it, wakes the sender.
    fn mark_held(&self, b: u32) {
        {
            let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
            self.slots[b as usize].state.store(HELD, Ordering::SeqCst);
            subs.retain(|s| s.try_send(b).is_ok() || !s.is_full());
        }
        self.bump();
        // The event goes out before the count moves, so whoever completes the count has seen
        // every other block's event queued first: `Done` is never ahead of a `Held`.
        self.event(Event::Held { block: b });
        let n = self.held.fetch_add(1, Ordering::AcqRel) + 1;
        drop(self.lock());
        self.cv.notify_all();
        self.advance_grants(None);
        if n == self.slots.len() && self.receiver {
            let refetched = self.lock().refetched;
            self.event(Event::Done { refetched });
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
        let slots: Vec<Slot> = (0..nb).map(|_| Slot::new(MISSING)).collect();
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
                slots[b].state.store(HELD, Ordering::Relaxed);
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
                retransmit: VecDeque::new(),
                dead: vec![false; n],
                corrupt: cfg.corrupt_transfers.into_iter().collect(),
                nacks: HashMap::new(),
                voids: HashMap::new(),
                refetched: 0,
                out: HashMap::new(),
                offers: HashMap::new(),
                incoming: Vec::new(),
                credits: HashSet::new(),
                skips: HashSet::new(),
                awaiting: None,
                recv_idx: 0,
                recv_epoch: 0,
                granted: HashSet::new(),
                incoming_by_node: HashMap::new(),
                pending_grants: HashMap::new(),
                claims: HashMap::new(),
                verbs_links: HashSet::new(),
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
        threads.push(spawn("rdma-accept", move || accept_loop(&s, listener))?);
        let s = shared.clone();
        threads.push(spawn("rdma-send", move || send_loop(&s))?);
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
                if let Some(w) = st.out.remove(&d) {
                    w.abort();
                }
            }
            st.epoch = plan.epoch;
            st.plans.push(Arc::new(plan));
            // Grants of the new epoch may have come before its plan did: keep those.
            let e = st.epoch;
            let mut dropped: Vec<u64> = st.credits.iter().copied().filter(|&t| split_tag(t).0 < e).collect();
            dropped.extend(st.retransmit.drain(..));
            st.credits.retain(|&t| split_tag(t).0 >= e);
            st.skips.retain(|&t| split_tag(t).0 >= e);
            if let Some(v) = &self.shared.verbs {
                for &d in dead {
                    v.drop_sender_link(d);
                }
                // Over verbs each grant and request claimed a block at its receiver: say we will not
                // write these, so the claims end (`Verdict { ok: false }` with no write).
                for tag in dropped {
                    let (ep, id) = split_tag(tag);
                    let to = st.plans.get(ep as usize).and_then(|p| p.transfers.get(id as usize)).map(|t| t.to);
                    if let Some(w) = to.and_then(|to| st.out.get(&to)) {
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
            (st.out.drain().map(|(_, w)| w).collect::<Vec<_>>(), std::mem::take(&mut st.incoming))
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

// ---------------------------------------------------------------- sending

fn send_loop(sh: &Arc<Shared>) {
    let me = sh.me as usize;
    let mut cur_epoch = u64::MAX;
    let mut idx = 0usize;
    loop {
        let (tag, retransmit) = {
            let mut st = sh.lock();
            loop {
                if sh.stop.load(Ordering::Acquire) {
                    return;
                }
                if !sh.running.load(Ordering::Acquire) {
                    st = sh.cv.wait_timeout(st, Duration::from_millis(50)).unwrap_or_else(|p| p.into_inner()).0;
                    continue;
                }
                if st.epoch != cur_epoch {
                    cur_epoch = st.epoch;
                    idx = 0;
                }
                // A write to send again goes first, once its block is held here (only a verified copy
                // is sent again; one whose block is still missing waits, it is not dropped).
                if let Some(pos) = st.retransmit.iter().position(|&t| retransmit_ready(sh, &st, t)) {
                    let t = st.retransmit.remove(pos).expect("the position is in the queue");
                    break (t, true);
                }
                let plan = st.plans[cur_epoch as usize].clone();
                let sends = &plan.nodes[me].sends;
                while idx < sends.len() && st.dead[plan.transfers[sends[idx] as usize].to as usize] {
                    idx += 1;
                }
                let mut connect_to = None;
                if idx < sends.len() {
                    let t = &plan.transfers[sends[idx] as usize];
                    let tag = tag_of(cur_epoch, t.id);
                    let busy = match st.awaiting {
                        Some((p, _, since)) => {
                            p != t.to && !st.dead[p as usize] && since.elapsed() < Duration::from_millis(sh.timeout_ms)
                        }
                        None => false,
                    };
                    if st.skips.remove(&tag) {
                        idx += 1;
                        continue;
                    }
                    if !st.out.contains_key(&t.to) {
                        // connect early, so the receiver's grant can reach us
                        connect_to = Some(t.to);
                    } else if !busy && sh.forwardable(t.block) && st.credits.remove(&tag) {
                        idx += 1;
                        // (over verbs each send waits for its completion: one at a time anyway)
                        if sh.verbs.is_none() {
                            st.awaiting = Some((t.to, tag, Instant::now()));
                        }
                        break (tag, false);
                    }
                }
                if let Some(to) = connect_to {
                    drop(st);
                    if let Err(e) = writer_to(sh, to) {
                        sh.report_dead(to, format!("connect: {e}"));
                    }
                    st = sh.lock();
                    continue;
                }
                st = sh.cv.wait_timeout(st, Duration::from_millis(200)).unwrap_or_else(|p| p.into_inner()).0;
            }
        };
        send_one(sh, tag, retransmit);
    }
}

/// Whether a write to send again can go now: its block is held (or the tag names nothing we
/// send, which `send_one` drops).
fn retransmit_ready(sh: &Shared, st: &State, tag: u64) -> bool {
    let (epoch, id) = split_tag(tag);
    match st.plans.get(epoch as usize).and_then(|p| p.transfers.get(id as usize)) {
        Some(t) => t.from != Endpoint::Node(sh.me) || sh.is_held(t.block),
        None => true,
    }
}

/// Queues a write to send again (once its block is held), at most once, within the bound.
fn queue_retransmit(sh: &Shared, tag: u64) {
    let mut st = sh.lock();
    if st.retransmit.contains(&tag) {
        return;
    }
    if st.retransmit.len() >= MAX_CREDITS {
        log::error!("node {}: {MAX_CREDITS} writes queued to send again; dropping {tag:#x}", sh.me);
        return;
    }
    st.retransmit.push_back(tag);
    drop(st);
    sh.cv.notify_all();
}

fn send_one(sh: &Arc<Shared>, tag: u64, retransmit: bool) {
    let (epoch, id) = split_tag(tag);
    let Some(plan) = sh.lock().plans.get(epoch as usize).cloned() else { return };
    let Some(t) = plan.transfers.get(id as usize) else { return };
    if t.from != Endpoint::Node(sh.me) {
        log::warn!("node {}: asked to send {tag:#x}, which is not ours to send", sh.me);
        return;
    }
    let state = sh.slots[t.block as usize].state.load(Ordering::SeqCst);
    if state != HELD && (retransmit || state != LANDING) {
        // Sent again only from a verified copy; a landing that failed since this send was picked
        // leaves nothing to forward. Either way: send it once the block is held, never drop it.
        queue_retransmit(sh, tag);
        return;
    }
    let corrupt = epoch == 0 && sh.lock().corrupt.remove(&id);
    let to = t.to;
    let tb = sh.layout.transfer_blocks[t.block as usize];
    let writer = match writer_to(sh, to) {
        Ok(w) => w,
        Err(e) => {
            sh.report_dead(to, format!("connect: {e}"));
            return;
        }
    };
    if let Some(v) = &sh.verbs {
        if state != HELD {
            queue_retransmit(sh, tag);
            return;
        }
        match verbs_path::send(sh, v, t, tag, corrupt) {
            Ok(()) => {}
            Err(_) if sh.stop.load(Ordering::Acquire) => {}
            Err(e) => sh.report_dead(to, format!("writing block {} over verbs: {e}", t.block)),
        }
        return;
    }
    let range = match sh.region.check(MODEL_REGION, tb.offset, tb.len) {
        Ok(r) => r,
        Err(e) => {
            log::error!("node {}: {e}", sh.me);
            return;
        }
    };
    if corrupt {
        log::warn!("node {}: test hook: flipping a bit of transfer {id} (block {}) in flight", sh.me, t.block);
    }
    let desc = WriteDesc { region: MODEL_REGION, offset: tb.offset, len: tb.len, tag };
    let r = forward(sh, t.block, range, &writer, desc, corrupt)
        .and_then(|ok| writer.control(&Control::Verdict { tag, ok }).map(|_| ok));
    match r {
        Ok(true) => {}
        Ok(false) => log::warn!(
            "node {}: our copy of block {} failed while we forwarded it to node {to}; sent as void",
            sh.me,
            t.block
        ),
        Err(_) if sh.stop.load(Ordering::Acquire) => {}
        Err(e) => sh.report_dead(to, format!("sending block {}: {e}", t.block)),
    }
}

/// Sends block `b` (its bytes are `range` of the region) as one write on `writer`: a held block
/// at once, a block still landing as it lands, never past the landed watermark. Returns the
/// write's verdict: whether what went out is this node's verified copy. A copy that fails
/// meanwhile (its landing's checksum, or no progress for half the timeout: its upstream is gone)
/// is void: the rest of the write is zeros, and the verdict says so.
fn forward(
    sh: &Shared,
    b: u32,
    range: Range<usize>,
    writer: &ConnWriter,
    desc: WriteDesc,
    corrupt: bool,
) -> Result<bool> {
    let slot = &sh.slots[b as usize];
    let len = range.len();
    let stall = Duration::from_millis((sh.timeout_ms / 2).max(1));
    let poll = Duration::from_millis(FORWARD_POLL_MS);
    let flip_at = corrupt.then_some(len / 2);
    let stopped = || Error::Multicast("the executor is stopping".into());
    let mut stream = writer.write_stream(desc)?;
    let mut sent = 0usize;
    // the landing attempt whose bytes we forward (taken under the first lease)
    let mut attempt: Option<u32> = None;
    let mut void = false;
    let mut last = Instant::now();
    while sent < len {
        if sh.stop.load(Ordering::Acquire) {
            return Err(stopped());
        }
        if void {
            let n = (len - sent).min(ZEROS.len());
            stream.send(&ZEROS[..n])?;
            sent += n;
            continue;
        }
        let seen = sh.progress_seen();
        {
            let _lease = sh.lease(b);
            let state = slot.state.load(Ordering::SeqCst);
            let a = slot.attempt.load(Ordering::SeqCst);
            if !matches!(state, HELD | LANDING) || *attempt.get_or_insert(a) != a {
                void = true;
                continue;
            }
            let upto = if state == HELD { len } else { (slot.landed.load(Ordering::Acquire) as usize).min(len) };
            if upto > sent && (upto - sent >= FORWARD_MIN_BYTES || upto == len) {
                let end = upto.min(sent + FORWARD_MAX_BYTES);
                // SAFETY: bytes `[sent, end)` of the block lie below the landed watermark of the attempt we hold a lease on
                // (or the block is held): those bytes are in place (the reader published the
                // watermark with Release after they landed, we read it with Acquire) and nothing
                // writes them while the lease lives (a failed landing's bytes are rewritten only
                // after a reset, which waits for every lease; a held block is never rewritten).
                let bytes = unsafe { sh.claim.bytes_shared((range.start + sent) as u64, (end - sent) as u64)? };
                match flip_at {
                    Some(m) if (sent..end).contains(&m) => {
                        let mut copy = bytes.to_vec();
                        copy[m - sent] ^= 0x10;
                        stream.send(&copy)?;
                    }
                    _ => stream.send(bytes)?,
                }
                sent = end;
                last = Instant::now();
                continue;
            }
        }
        if last.elapsed() >= stall {
            log::warn!("node {}: block {b} made no progress for {} ms while we forwarded it", sh.me, stall.as_millis());
            void = true;
            continue;
        }
        sh.wait_progress(seen, poll);
    }
    stream.finish()?;
    if void {
        return Ok(false);
    }
    // Everything went out; the verdict is this node's own check of the same landing.
    loop {
        let seen = sh.progress_seen();
        let state = slot.state.load(Ordering::SeqCst);
        let a = slot.attempt.load(Ordering::SeqCst);
        if attempt.is_some_and(|x| x != a) || !matches!(state, HELD | LANDING) {
            return Ok(false);
        }
        if state == HELD {
            return Ok(true);
        }
        if sh.stop.load(Ordering::Acquire) {
            return Err(stopped());
        }
        if last.elapsed() >= stall {
            return Ok(false);
        }
        sh.wait_progress(seen, poll);
    }
}

/// The connection to `to`, opened (and authenticated) on first use.
fn writer_to(sh: &Arc<Shared>, to: u32) -> Result<ConnWriter> {
    if let Some(w) = sh.lock().out.get(&to) {
        return Ok(w.clone());
    }
    let addr = *sh.peers.get(to as usize).ok_or_else(|| Error::Multicast(format!("no address for node {to}")))?;
    let mut conn = tcp::connect(addr, &sh.secret, sh.timeout_ms)?;
    conn.writer.set_send_buffer(DATA_SEND_BUFFER_BYTES)?;
    conn.writer.control(&Control::Iam { node: sh.me })?;
    if let Some(v) = &sh.verbs {
        let link = v.connect(&mut conn)?;
        v.add_sender_link(to, link);
    }
    let w = conn.writer.clone();
    let s = sh.clone();
    let mut reader = conn.reader;
    let w2 = w.clone();
    // in `out` before its reader runs, so a replan sees every grant this connection brings
    sh.lock().out.insert(to, w.clone());
    if let Err(e) = spawn("rdma-nacks", move || nack_loop(&s, to, &mut reader, &w2)) {
        sh.lock().out.remove(&to);
        return Err(e);
    }
    Ok(w)
}

/// Reads what a receiver says back on our connection to it: requests to send again.
fn nack_loop(sh: &Arc<Shared>, to: u32, r: &mut ConnReader, w: &ConnWriter) {
    loop {
        match r.recv() {
            Ok(Incoming::Control(Control::Nack { tag, reason })) => {
                log::warn!("node {}: node {to} asks again for {tag:#x}: {reason}", sh.me);
                if sh.verbs.is_some() && split_tag(tag).0 < sh.lock().epoch {
                    // as for a grant of an epoch we have left: its claim ends with our decline
                    decline(sh, w, to, tag);
                    continue;
                }
                queue_retransmit(sh, tag);
            }
            Ok(Incoming::Control(Control::Almost { tag })) => {
                let mut st = sh.lock();
                if st.awaiting.is_some_and(|a| a.1 == tag) {
                    st.awaiting = None;
                }
                drop(st);
                sh.cv.notify_all();
            }
            Ok(Incoming::Control(Control::Go { tag })) => {
                let mut st = sh.lock();
                if sh.verbs.is_some() && split_tag(tag).0 < st.epoch {
                    // A grant of an epoch we have left (it crossed our replan): over verbs the
                    // receiver claimed the block for it, so say we will not write it.
                    drop(st);
                    decline(sh, w, to, tag);
                    continue;
                }
                if st.credits.len() < MAX_CREDITS {
                    st.credits.insert(tag);
                }
                drop(st);
                sh.cv.notify_all();
            }
            Ok(Incoming::Control(Control::Skip { tag })) => {
                let mut st = sh.lock();
                if st.skips.len() < MAX_CREDITS {
                    st.skips.insert(tag);
                }
                drop(st);
                sh.cv.notify_all();
            }
            Ok(Incoming::Close(_)) => return,
            Ok(other) => {
                log::warn!("node {}: node {to} sent {other:?} on a data connection; closing it", sh.me);
                return;
            }
            Err(Error::Timeout { .. }) => {
                // Pings keep an alive receiver's connection busy; silence means it is dead.
                sh.report_dead(to, "silent on our data connection".into());
                return;
            }
            Err(_) => return,
        }
    }
}

/// Over verbs: tells receiver `to` (on `w`, our connection to it: the one its grant came over,
/// which may not be in `out` yet) we will not write `tag` (a `Verdict { ok: false }` with no
/// write), so the block it claimed for that write is free again.
fn decline(sh: &Shared, w: &ConnWriter, to: u32, tag: u64) {
    log::info!("node {}: declining {tag:#x} to node {to}: a grant of an epoch we have left", sh.me);
    let _ = w.control(&Control::Verdict { tag, ok: false });
}

// ---------------------------------------------------------------- receiving

const MAX_INCOMING_PER_NODE: usize = 4;

fn accept_loop(sh: &Arc<Shared>, listener: Listener) {
    let max_conns = MAX_INCOMING_PER_NODE * sh.peers.len() + 4;
    let live = Arc::new(AtomicUsize::new(0));
    loop {
        let s = match listener.accept_raw() {
            Ok(s) => s,
            Err(e) => {
                if sh.stop.load(Ordering::Acquire) {
                    return;
                }
                log::warn!("node {}: {e}", sh.me);
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if sh.stop.load(Ordering::Acquire) {
            return;
        }
        if live.load(Ordering::Acquire) >= max_conns {
            log::warn!("node {}: {max_conns} data connections open; refusing another", sh.me);
            continue;
        }
        live.fetch_add(1, Ordering::AcqRel);
        let (s2, live2, secret, ms) = (sh.clone(), live.clone(), listener.secret().clone(), listener.timeout_ms());
        let r = spawn("rdma-recv", move || {
            match tcp::accept_handshake(s, &secret, ms) {
                Ok(conn) => serve(&s2, conn),
                Err(e) => log::warn!("node {}: refused a data connection: {e}", s2.me),
            }
            live2.fetch_sub(1, Ordering::AcqRel);
        });
        if let Err(e) = r {
            log::error!("node {}: {e}", sh.me);
        }
    }
}

/// One incoming data connection: the peer names itself, then sends writes.
fn serve(sh: &Arc<Shared>, mut conn: tcp::Conn) {
    let peer = match conn.reader.recv() {
        Ok(Incoming::Control(Control::Iam { node })) if (node as usize) < sh.peers.len() && node != sh.me => node,
        Ok(other) => {
            let reason = format!("a data connection must start with iam (a node id other than ours), not {other:?}");
            log::warn!("node {}: {}: {reason}", sh.me, conn.reader.peer());
            conn.writer.close(&reason);
            return;
        }
        Err(e) => {
            log::warn!("node {}: {e}", sh.me);
            return;
        }
    };
    let link = match &sh.verbs {
        Some(v) => match v.connect(&mut conn) {
            Ok(l) => Some(l),
            Err(e) => {
                if !sh.stop.load(Ordering::Acquire) {
                    report_protocol(sh, peer, &conn.writer, e);
                }
                return;
            }
        },
        None => None,
    };
    let w = conn.writer.clone();
    let pending = {
        let mut st = sh.lock();
        if link.is_some() {
            if st.dead.get(peer as usize).copied().unwrap_or(true) {
                // its claims were released when it was declared dead: it may not write again
                drop(st);
                w.close(&format!("node {peer} was declared dead"));
                return;
            }
            st.verbs_links.insert(peer);
        }
        st.incoming.push(w.clone());
        st.incoming_by_node.insert(peer, w.clone());
        st.pending_grants.remove(&peer).unwrap_or_default()
    };
    for m in pending {
        let _ = w.control(&m);
    }
    if let Some(link) = link {
        verbs_path::serve(sh, peer, link, conn);
        return;
    }
    let mut r = conn.reader;
    loop {
        let res = match r.recv() {
            Ok(Incoming::Write(d)) => on_write(sh, peer, d, &mut r, &w),
            Ok(Incoming::Close(_)) => return,
            Ok(other) => Err(Error::Protocol {
                peer: format!("node {peer}"),
                reason: format!("only writes are allowed on a data connection, got {}", describe(&other)),
            }),
            Err(e) => Err(e),
        };
        if let Err(e) = res {
            if sh.stop.load(Ordering::Acquire) {
                return;
            }
            w.close(&e.to_string());
            sh.report_dead(peer, e.to_string());
            return;
        }
    }
}

fn on_write(sh: &Arc<Shared>, peer: u32, d: WriteDesc, r: &mut ConnReader, w: &ConnWriter) -> Result<()> {
    let (epoch, id) = split_tag(d.tag);
    let plan = sh.plan(epoch)?;
    let bad = |reason: String| Error::Protocol { peer: format!("node {peer}"), reason };
    let t = plan.transfers.get(id as usize).ok_or_else(|| bad(format!("epoch {epoch} has no transfer {id}")))?;
    if t.to != sh.me || t.from != Endpoint::Node(peer) {
        return Err(bad(format!("transfer {id} of epoch {epoch} is not node {peer}'s to send to node {}", sh.me)));
    }
    let tb = sh.layout.transfer_blocks[t.block as usize];
    if d.region != MODEL_REGION || d.offset != tb.offset || d.len != tb.len {
        return Err(bad(format!(
            "write to region {} [{}, +{}) for block {}, which is region {MODEL_REGION} [{}, +{}) (more or other bytes than the layout allows)",
            d.region, d.offset, d.len, t.block, tb.offset, tb.len
        )));
    }
    let b = t.block;
    let slot = &sh.slots[b as usize];
    if slot.state.compare_exchange(MISSING, LANDING, Ordering::SeqCst, Ordering::SeqCst).is_err() {
        r.discard()?;
        w.control(&Control::Almost { tag: d.tag })?;
        // Held: nothing to do. Landing (or a failed landing being reset): remember the offer, asked
        // for again if that landing fails. Missing again (it failed meanwhile): ask again now.
        let ask_now = {
            let mut st = sh.lock();
            match slot.state.load(Ordering::SeqCst) {
                HELD => false,
                MISSING => true,
                _ => {
                    let offers = st.offers.entry(b).or_default();
                    if offers.len() < MAX_INCOMING_PER_NODE * sh.peers.len() {
                        offers.push((w.clone(), d.tag));
                    }
                    false
                }
            }
        };
        expect_verdict(peer, r, d.tag)?;
        if ask_now {
            w.control(&Control::Nack { tag: d.tag, reason: format!("block {b}: the landing it waited for failed") })?;
        }
        return Ok(());
    }
    // The block is arriving: wake the sender, whose next send may forward it as it lands (the
    // lock orders this after a sender's check of the state, so the wake-up is not lost).
    drop(sh.lock());
    sh.cv.notify_all();
    let len = tb.len as usize;
    let early = (len / 2).min(EARLY_GRANT_BYTES);
    let near_end = || {
        let _ = w.control(&Control::Almost { tag: d.tag });
        sh.advance_grants(Some(d.tag));
    };
    let mut woke = 0usize;
    let progress = |at: usize| {
        // the bytes below `at` are in place: forwarders may read them
        slot.landed.store(at as u64, Ordering::Release);
        if at == len || at / FORWARD_MIN_BYTES != woke / FORWARD_MIN_BYTES {
            woke = at;
            sh.bump();
        }
    };
    // SAFETY: this thread moved the block MISSING → LANDING, so it is the block's only writer until
    // it leaves LANDING (below, on this thread); the write's bytes are the block's (checked against
    // the layout above). Forwarders read only below `landed`, which `progress` publishes (Release)
    // after the bytes are in place, and read it with Acquire.
    if let Err(e) = unsafe { r.land_shared(&sh.claim, early, near_end, progress) } {
        sh.void_block(b);
        return Err(e);
    }
    // SAFETY: the block is still LANDING (ours) and every byte has landed; forwarders only read
    // it, so no one writes the range while we read it.
    let crc = crc32c::crc32c(unsafe { sh.claim.bytes_shared(tb.offset, tb.len)? });
    if crc == tb.crc32c {
        sh.lock().offers.remove(&b);
        sh.mark_held(b);
        // Verified here, whatever the sender's verdict (a void copy that matches is the block).
        expect_verdict(peer, r, d.tag)?;
        return Ok(());
    }
    // Our copy failed: our own forwards of it end void, and the block is claimed again.
    sh.void_block(b);
    let sender_ok = expect_verdict(peer, r, d.tag)?;
    let reason = format!("block {b} crc32c {crc:08x}, expected {:08x}", tb.crc32c);
    if !sender_ok {
        // The sender forwarded a copy that failed upstream of it and said so: not its fault, not a
        // refetch of ours; it sends again once it holds a verified copy.
        let count = {
            let mut st = sh.lock();
            let c = st.voids.entry(d.tag).or_insert(0);
            *c += 1;
            *c
        };
        log::info!("node {}: from node {peer}: a void copy ({reason}); asking again", sh.me);
        if count > MAX_VOIDS {
            return Err(bad(format!("write {:#x} arrived void {count} times", d.tag)));
        }
        w.control(&Control::Nack { tag: d.tag, reason: format!("{reason}: your copy was void") })?;
        return Ok(());
    }
    let count = {
        let mut st = sh.lock();
        st.refetched += 1;
        let c = st.nacks.entry(d.tag).or_insert(0);
        *c += 1;
        *c
    };
    log::warn!("node {}: from node {peer}: {reason}; asking again ({count} of {MAX_REFETCHES})", sh.me);
    if count > MAX_REFETCHES {
        return Err(bad(format!("{reason}, {count} times")));
    }
    w.control(&Control::Nack { tag: d.tag, reason })?;
    Ok(())
}

/// The frame after a write's payload: its verdict (whether the sender's copy was verified).
fn expect_verdict(peer: u32, r: &mut ConnReader, tag: u64) -> Result<bool> {
    match r.recv()? {
        Incoming::Control(Control::Verdict { tag: t, ok }) if t == tag => Ok(ok),
        other => Err(Error::Protocol {
            peer: format!("node {peer}"),
            reason: format!("a write (tag {tag:#x}) must be followed by its verdict, not {}", describe(&other)),
        }),
    }
}

/// Closes a peer's connection for a protocol error and reports it dead.
fn report_protocol(sh: &Shared, peer: u32, w: &ConnWriter, e: Error) {
    // reported first: closing makes the connection's other thread fail too, with a vaguer reason
    sh.report_dead(peer, e.to_string());
    w.close(&e.to_string());
}

/// A frame in a few words (a message's bytes are not worth printing).
fn describe(i: &Incoming) -> String {
    match i {
        Incoming::Control(c) => format!("a {} message", c.name()),
        Incoming::Message(m) => format!("a {}-byte channel message", m.len()),
        Incoming::Write(d) => format!("a write of {} bytes (tag {:#x})", d.len, d.tag),
        Incoming::Close(r) => format!("a close ({r})"),
    }
}
