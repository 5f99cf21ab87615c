//! The multicast executor: one node's part of a `MulticastPlan`, run block by block.
//!
//! No global lock-step. The node's sender thread walks its send list in plan order; each send
//! waits only until the node holds the block (which is what the transfer's `after` dependency
//! means), then writes the block straight from the region to the receiver. Each incoming
//! connection has a reader thread that checks every write against the plan and the layout (the
//! transfer must be the peer's to send to us, at the block's offset and length), lands it in the
//! region at the layout's offset, checks the transfer block's crc32c, and only then marks the
//! block held, wakes the sender and publishes "block i is here" to subscribers.
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
use crate::region::Region;
use crate::tcp::{self, ConnReader, ConnWriter, Incoming, Listener};
use crate::wire::WriteDesc;
use crossbeam::channel::{bounded, Receiver, Sender};
use planner::{Endpoint, ModelLayout, MulticastPlan};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

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
/// Most grants a sender keeps (a receiver grants one write at a time).
const MAX_CREDITS: usize = 4096;

const MISSING: u8 = 0;
const LANDING: u8 = 1;
const HELD: u8 = 2;

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
}

struct State {
    epoch: u64,
    plans: Vec<Arc<MulticastPlan>>,
    retransmit: VecDeque<u64>,
    dead: Vec<bool>,
    corrupt: HashSet<u32>,
    nacks: HashMap<u64, u32>,
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
}

struct Shared {
    me: u32,
    layout: Arc<ModelLayout>,
    region: Arc<Region>,
    peers: Vec<SocketAddr>,
    secret: Secret,
    timeout_ms: u64,
    blocks: Vec<AtomicU8>,
    held: AtomicUsize,
    receiver: bool,
    st: Mutex<State>,
    cv: Condvar,
    events: Sender<Event>,
    subscribers: Mutex<Vec<Sender<u32>>>,
    stop: AtomicBool,
    running: AtomicBool,
    listen_addr: SocketAddr,
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

    fn is_held(&self, b: u32) -> bool {
        self.blocks[b as usize].load(Ordering::Acquire) == HELD
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
            if j < recvs.len() {
                let t = plan.transfers[recvs[j] as usize];
                let tag = tag_of(epoch, t.id);
                if let Endpoint::Node(from) = t.from {
                    if st.granted.insert(tag) {
                        msgs.push((from, Control::Go { tag }));
                    }
                }
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
            self.blocks[b as usize].store(HELD, Ordering::Release);
            subs.retain(|s| s.try_send(b).is_ok() || !s.is_full());
        }
        // The event goes out before the count moves, so whoever completes the count has seen
        // every other block's event queued first: `Done` is never ahead of a `Held`.
        self.event(Event::Held { block: b });
        let n = self.held.fetch_add(1, Ordering::AcqRel) + 1;
        self.cv.notify_all();
        self.advance_grants(None);
        if n == self.blocks.len() && self.receiver {
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
        let blocks: Vec<AtomicU8> = (0..nb).map(|_| AtomicU8::new(MISSING)).collect();
        let mut held = 0;
        for (b, tb) in cfg.layout.transfer_blocks.iter().enumerate() {
            if plan.initial.holds(cfg.node as usize, b) {
                let range = cfg.region.check(MODEL_REGION, tb.offset, tb.len)?;
                // SAFETY: nothing writes the region before the executor starts its threads.
                let crc = crc32c::crc32c(unsafe { cfg.region.host_bytes(range)? });
                if crc != tb.crc32c {
                    return Err(Error::Multicast(format!(
                        "node {} should hold block {b} but its crc32c is {crc:08x}, the layout says {:08x}",
                        cfg.node, tb.crc32c
                    )));
                }
                blocks[b].store(HELD, Ordering::Relaxed);
                held += 1;
            }
        }
        let receiver = plan.receivers.contains(&cfg.node);
        let (tx, rx) = bounded(2 * nb + 1024);
        let listen_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            me: cfg.node,
            layout: cfg.layout,
            region: cfg.region,
            peers: cfg.peers,
            secret: cfg.secret,
            timeout_ms: cfg.timeout_ms,
            blocks,
            held: AtomicUsize::new(held),
            receiver,
            st: Mutex::new(State {
                epoch: plan.epoch,
                plans: Vec::new(),
                retransmit: VecDeque::new(),
                dead: vec![false; n],
                corrupt: cfg.corrupt_transfers.into_iter().collect(),
                nacks: HashMap::new(),
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
            }),
            cv: Condvar::new(),
            events: tx,
            subscribers: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            running: AtomicBool::new(false),
            listen_addr,
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
        let nb = self.shared.blocks.len();
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
        (block as usize) < self.shared.blocks.len() && self.shared.is_held(block)
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
            st.retransmit.clear();
            st.credits.retain(|&t| split_tag(t).0 >= e);
            st.skips.retain(|&t| split_tag(t).0 >= e);
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
        {
            let mut st = self.shared.lock();
            for (_, w) in st.out.drain() {
                w.close("multicast finished");
            }
            for w in st.incoming.drain(..) {
                w.abort();
            }
        }
        self.shared.cv.notify_all();
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
        let tag = {
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
                if let Some(t) = st.retransmit.pop_front() {
                    break t;
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
                    } else if !busy && sh.is_held(t.block) && st.credits.remove(&tag) {
                        idx += 1;
                        st.awaiting = Some((t.to, tag, Instant::now()));
                        break tag;
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
        send_one(sh, tag);
    }
}

fn send_one(sh: &Arc<Shared>, tag: u64) {
    let (epoch, id) = split_tag(tag);
    let (plan, corrupt) = {
        let mut st = sh.lock();
        let Some(plan) = st.plans.get(epoch as usize).cloned() else { return };
        let corrupt = epoch == 0 && st.corrupt.remove(&id);
        (plan, corrupt)
    };
    let Some(t) = plan.transfers.get(id as usize) else { return };
    if t.from != Endpoint::Node(sh.me) || !sh.is_held(t.block) {
        return;
    }
    let to = t.to;
    let tb = sh.layout.transfer_blocks[t.block as usize];
    let writer = match writer_to(sh, to) {
        Ok(w) => w,
        Err(e) => {
            sh.report_dead(to, format!("connect: {e}"));
            return;
        }
    };
    let range = match sh.region.check(MODEL_REGION, tb.offset, tb.len) {
        Ok(r) => r,
        Err(e) => {
            log::error!("node {}: {e}", sh.me);
            return;
        }
    };
    // SAFETY: the block is HELD, so no landing writes its range again (held blocks are never reclaimed).
    let bytes = match unsafe { sh.region.host_bytes(range) } {
        Ok(b) => b,
        Err(e) => {
            log::error!("node {}: {e}", sh.me);
            return;
        }
    };
    let desc = WriteDesc { region: MODEL_REGION, offset: tb.offset, len: tb.len, tag };
    let r = if corrupt {
        log::warn!("node {}: test hook: flipping a bit of transfer {id} (block {}) in flight", sh.me, t.block);
        let mut copy = bytes.to_vec();
        let mid = copy.len() / 2;
        copy[mid] ^= 0x10;
        writer.write(desc, &copy)
    } else {
        writer.write(desc, bytes)
    };
    if let Err(e) = r {
        sh.report_dead(to, format!("sending block {}: {e}", t.block));
    }
}

/// The connection to `to`, opened (and authenticated) on first use.
fn writer_to(sh: &Arc<Shared>, to: u32) -> Result<ConnWriter> {
    if let Some(w) = sh.lock().out.get(&to) {
        return Ok(w.clone());
    }
    let addr = *sh.peers.get(to as usize).ok_or_else(|| Error::Multicast(format!("no address for node {to}")))?;
    let conn = tcp::connect(addr, &sh.secret, sh.timeout_ms)?;
    conn.writer.set_send_buffer(DATA_SEND_BUFFER_BYTES)?;
    conn.writer.control(&Control::Iam { node: sh.me })?;
    let w = conn.writer.clone();
    let s = sh.clone();
    let mut reader = conn.reader;
    spawn("rdma-nacks", move || nack_loop(&s, to, &mut reader))?;
    sh.lock().out.insert(to, w.clone());
    Ok(w)
}

/// Reads what a receiver says back on our connection to it: requests to send again.
fn nack_loop(sh: &Arc<Shared>, to: u32, r: &mut ConnReader) {
    loop {
        match r.recv() {
            Ok(Incoming::Control(Control::Nack { tag, reason })) => {
                log::warn!("node {}: node {to} asks again for {tag:#x}: {reason}", sh.me);
                sh.lock().retransmit.push_back(tag);
                sh.cv.notify_all();
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
fn serve(sh: &Arc<Shared>, conn: tcp::Conn) {
    let (mut r, w) = (conn.reader, conn.writer);
    let peer = match r.recv() {
        Ok(Incoming::Control(Control::Iam { node })) if (node as usize) < sh.peers.len() && node != sh.me => node,
        Ok(other) => {
            let reason = format!("a data connection must start with iam (a node id other than ours), not {other:?}");
            log::warn!("node {}: {}: {reason}", sh.me, r.peer());
            w.close(&reason);
            return;
        }
        Err(e) => {
            log::warn!("node {}: {e}", sh.me);
            return;
        }
    };
    let pending = {
        let mut st = sh.lock();
        st.incoming.push(w.clone());
        st.incoming_by_node.insert(peer, w.clone());
        st.pending_grants.remove(&peer).unwrap_or_default()
    };
    for m in pending {
        let _ = w.control(&m);
    }
    loop {
        let res = match r.recv() {
            Ok(Incoming::Write(d)) => on_write(sh, peer, d, &mut r, &w),
            Ok(Incoming::Close(_)) => return,
            Ok(other) => Err(Error::Protocol {
                peer: format!("node {peer}"),
                reason: format!("only writes are allowed on a data connection, got {other:?}"),
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
    let slot = &sh.blocks[b as usize];
    if slot.compare_exchange(MISSING, LANDING, Ordering::AcqRel, Ordering::Acquire).is_err() {
        r.discard()?;
        w.control(&Control::Almost { tag: d.tag })?;
        if slot.load(Ordering::Acquire) == LANDING {
            sh.lock().offers.entry(b).or_default().push((w.clone(), d.tag));
        }
        return Ok(());
    }
    let early = (tb.len as usize / 2).min(EARLY_GRANT_BYTES);
    let near_end = || {
        let _ = w.control(&Control::Almost { tag: d.tag });
        sh.advance_grants(Some(d.tag));
    };
    if let Err(e) = r.land_notify(&sh.region, MODEL_REGION, early, near_end) {
        slot.store(MISSING, Ordering::Release);
        ask_offers_again(sh, b);
        return Err(e);
    }
    let range = sh.region.check(MODEL_REGION, tb.offset, tb.len)?;
    // SAFETY: this thread claimed the block (LANDING), so no one else writes its range.
    let crc = crc32c::crc32c(unsafe { sh.region.host_bytes(range)? });
    if crc == tb.crc32c {
        sh.lock().offers.remove(&b);
        sh.mark_held(b);
        return Ok(());
    }
    slot.store(MISSING, Ordering::Release);
    let count = {
        let mut st = sh.lock();
        st.refetched += 1;
        let c = st.nacks.entry(d.tag).or_insert(0);
        *c += 1;
        *c
    };
    let reason = format!("block {b} crc32c {crc:08x}, expected {:08x}", tb.crc32c);
    log::warn!("node {}: from node {peer}: {reason}; asking again ({count} of {MAX_REFETCHES})", sh.me);
    if count > MAX_REFETCHES {
        return Err(bad(format!("{reason}, {count} times")));
    }
    w.control(&Control::Nack { tag: d.tag, reason })?;
    ask_offers_again(sh, b);
    Ok(())
}

/// A landing of `b` failed: ask the peers whose offers were drained meanwhile to send it again.
fn ask_offers_again(sh: &Arc<Shared>, b: u32) {
    let offers = sh.lock().offers.remove(&b).unwrap_or_default();
    for (w, tag) in offers {
        let _ = w.control(&Control::Nack { tag, reason: format!("block {b}: the landing it waited for failed") });
    }
}
