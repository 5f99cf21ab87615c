//! The executor's data path over verbs: each transfer block one RDMA WRITE WITH IMM (immediate =
//! transfer id) from the sender's registered region straight into the receiver's, at the
//! layout's offset. Control (grants, requests to send again, declines) stays on the
//! authenticated TCP connection the link was set up over.
//!
//! An RDMA WRITE lands without the receiver's CPU, so the receiver claims a block (MISSING →
//! LANDING, for one transfer of one peer) *before* it lets the sender write it: when it grants the
//! transfer (`Go`) and when it asks for it again (`Nack`), and never grants a block that is LANDING.
//! A claim ends when the write arrives (checksum matched: HELD; else void, claimed again and asked
//! again), when the sender declines it (a `Verdict { ok: false }` with no write: the sender dropped
//! that grant at a replan and will not write it), or when the sender's link is gone (its QP is
//! destroyed first, so nothing more can land). Writes come only from held, verified copies: the
//! data path stores and forwards (plans for it use `Forwarding::StoreAndForward`).

use super::receiving::{describe, report_protocol};
use super::slots::SlotState;
use super::{split_tag, Shared, MAX_REFETCHES, MODEL_REGION};
use crate::control::Control;
use crate::error::{Error, Result};
use crate::region::{MemKind, Region};
use crate::tcp::{Conn, ConnWriter};
use crate::verbs::{Access, Context, LinkConfig, LinkEvent, MemoryKind, MemoryRegion, ProtectionDomain, VerbsLink};
use planner::Transfer;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where the executor's verbs links live.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerbsConfig {
    /// RDMA device name (`None`: the first one listed).
    pub device: Option<String>,
    pub link: LinkConfig,
}

impl VerbsConfig {
    /// The configuration the coordinator's setup names (`control::Transport`), `None` for TCP.
    pub fn from_transport(t: &crate::control::Transport) -> Option<VerbsConfig> {
        match t {
            crate::control::Transport::Tcp => None,
            crate::control::Transport::Verbs { device, port } => {
                Some(VerbsConfig { device: device.clone(), link: LinkConfig { port: *port, ..LinkConfig::default() } })
            }
        }
    }
}

/// A receiver's completion poller sleeps this long when its queue is empty.
const IDLE_POLL: Duration = Duration::from_micros(50);
/// ... and checks whether its peer was declared dead every this many empty polls (about 50 ms).
const DEAD_CHECK_POLLS: u32 = 1000;
/// Bytes of the landing stub a read-only region offers its peers (nothing is ever written there:
/// a node whose region is read-only holds every block and is granted nothing).
const STUB_BYTES: usize = 4096;

/// The verbs objects of one executor. Field order is teardown order: links (which hold the
/// landing region) go before the regions, the regions before their memory and domain.
pub(super) struct VerbsData {
    pub(super) cfg: VerbsConfig,
    /// Sender side: one link per receiver, used by the sender thread only.
    links: Mutex<HashMap<u32, Arc<Mutex<VerbsLink>>>>,
    /// The model region, registered: the source of our writes and, when writable, where peers write.
    mr: Arc<MemoryRegion>,
    /// What peers may write into: `mr`, or a registered stub when the region is read-only.
    landing: Arc<MemoryRegion>,
    /// Test hook (`corrupt_transfers`): a registered copy of one block with a bit flipped.
    scratch: Option<MemoryRegion>,
    pd: Arc<ProtectionDomain>,
    _scratch_bytes: Option<Box<[u8]>>,
    _stub_bytes: Option<Box<[u8]>>,
}

impl VerbsData {
    /// Opens the device and registers `region` (bytes `0 .. model_end`); with `scratch_bytes`
    /// also a scratch buffer for the corruption test hook.
    pub(super) fn open(cfg: VerbsConfig, region: &Region, scratch_bytes: Option<usize>) -> Result<VerbsData> {
        let ctx = Context::open(cfg.device.as_deref()).map_err(|e| {
            Error::Multicast(format!(
                "the verbs transport cannot open RDMA device {}: {e}",
                cfg.device.as_deref().unwrap_or("(the first one)")
            ))
        })?;
        let pd = ProtectionDomain::new(&ctx)?;
        let kind = match region.kind() {
            MemKind::Host => MemoryKind::Host,
            MemKind::Device => MemoryKind::Device,
        };
        let whole = region.check(MODEL_REGION, 0, region.len() as u64)?;
        let access = if region.read_only() { Access::LOCAL } else { Access::REMOTE_WRITE };
        // SAFETY: the region's memory stays allocated while the executor (which owns this) lives,
        // by `Region::new`'s contract; peers write only blocks this node claimed, which no Rust
        // reference covers while they land.
        let mr = Arc::new(unsafe { MemoryRegion::register(&pd, region.ptr_at(&whole), whole.len(), kind, access) }?);
        let (landing, stub) = if region.read_only() {
            let mut stub = vec![0u8; STUB_BYTES].into_boxed_slice();
            // SAFETY: the stub is a heap allocation owned by the returned value, dropped after the
            // region registered over it (field order); nothing reads or writes it from Rust.
            let m = unsafe {
                MemoryRegion::register(&pd, stub.as_mut_ptr(), STUB_BYTES, MemoryKind::Host, Access::REMOTE_WRITE)
            }?;
            (Arc::new(m), Some(stub))
        } else {
            (mr.clone(), None)
        };
        let (scratch, scratch_mem) = match scratch_bytes {
            Some(n) if n > 0 => {
                let mut mem = vec![0u8; n].into_boxed_slice();
                // SAFETY: as for the stub; the sender thread writes it only between writes it has
                // seen complete.
                let m = unsafe { MemoryRegion::register(&pd, mem.as_mut_ptr(), n, MemoryKind::Host, Access::LOCAL) }?;
                (Some(m), Some(mem))
            }
            _ => (None, None),
        };
        Ok(VerbsData {
            cfg,
            links: Mutex::new(HashMap::new()),
            mr,
            landing,
            scratch,
            pd,
            _scratch_bytes: scratch_mem,
            _stub_bytes: stub,
        })
    }

    /// Sets up the link for one data connection (both sides call this right after `Iam`).
    pub(super) fn connect(&self, conn: &mut Conn) -> Result<VerbsLink> {
        VerbsLink::connect(conn, &self.pd, self.landing.clone(), self.cfg.link)
    }

    pub(super) fn add_sender_link(&self, to: u32, link: VerbsLink) {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).insert(to, Arc::new(Mutex::new(link)));
    }

    /// Drops our link to a dead receiver (its QP is destroyed once a send in progress lets go).
    pub(super) fn drop_sender_link(&self, to: u32) {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).remove(&to);
    }

    fn sender_link(&self, to: u32) -> Option<Arc<Mutex<VerbsLink>>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).get(&to).cloned()
    }
}

/// Receiver side: claims `t`'s block for its sender before the grant or request that lets it
/// write (see the module docs). False when the block is not MISSING (held, or claimed by
/// another transfer): then no grant goes out now.
pub(super) fn claim(
    sh: &Shared,
    claims: &mut HashMap<(u32, u32), (u64, u32)>,
    from: u32,
    t: &Transfer,
    tag: u64,
) -> bool {
    if let Some(&(old, _)) = claims.get(&(from, t.id)) {
        return old == tag;
    }
    let slot = &sh.slots[t.block as usize];
    if !slot.transition(SlotState::Missing, SlotState::Landing) {
        return false;
    }
    slot.landed.store(0, Ordering::Relaxed);
    claims.insert((from, t.id), (tag, t.block));
    true
}

/// Ends a claim without a landing: the block is missing again and may be granted to anyone.
fn release(sh: &Shared, b: u32) {
    let slot = &sh.slots[b as usize];
    if slot.transition(SlotState::Landing, SlotState::Missing) {
        slot.next_attempt();
    }
    sh.bump();
}

/// Sender side: writes transfer `t` (tag `tag`) to its receiver and waits for the write to
/// complete. The block is held here (the caller checked), so its bytes never change.
pub(super) fn send(sh: &Shared, v: &VerbsData, t: &Transfer, tag: u64, corrupt: bool) -> Result<()> {
    let tb = sh.layout.transfer_blocks[t.block as usize];
    let len = u32::try_from(tb.len).map_err(|_| {
        Error::Multicast(format!("block {} of {} bytes is too long for one RDMA write", t.block, tb.len))
    })?;
    let link = v.sender_link(t.to).ok_or_else(|| Error::Multicast(format!("no verbs link to node {}", t.to)))?;
    let mut link = link.lock().unwrap_or_else(|p| p.into_inner());
    let (src, src_offset) = match (&v.scratch, &v._scratch_bytes) {
        (Some(mr), Some(_)) if corrupt => {
            // SAFETY: the block is held, and a held block is never written again.
            let bytes = unsafe { sh.claim.bytes_shared(tb.offset, tb.len)? };
            let dst = mr.addr() as *mut u8;
            // SAFETY: the scratch buffer is ours, registered over `_scratch_bytes`, at least one
            // block long (sized so at start), not the region (no overlap), and nothing reads or
            // writes it now: no write from it is in flight (each send waits for its completion).
            // Written through the raw pointer; no reference to it is made.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len());
                *dst.add(bytes.len() / 2) ^= 0x10;
            }
            log::warn!("node {}: test hook: flipping a bit of transfer {} (block {}) in flight", sh.me, t.id, t.block);
            (mr, 0usize)
        }
        _ => (&*v.mr, tb.offset as usize),
    };
    // SAFETY: `src` stays registered for the executor's life, and its bytes are a held block or
    // the scratch copy, neither written until this write's completion is seen below (or the
    // link has failed, which ends its use).
    let wr_id = unsafe { link.write(src, src_offset, len, tb.offset, t.id) }?;
    let mut events = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_millis(sh.timeout_ms);
    loop {
        if sh.stop.load(Ordering::Acquire) {
            return Err(Error::Multicast("the executor is stopping".into()));
        }
        events.clear();
        // polled with short sleeps rather than spun on: a block takes milliseconds on the wire
        if link.poll(&mut events)? == 0 {
            if std::time::Instant::now() >= deadline {
                return Err(Error::Multicast(format!(
                    "the write of transfer {} to node {} did not complete in {} ms",
                    t.id, t.to, sh.timeout_ms
                )));
            }
            std::thread::sleep(IDLE_POLL);
            continue;
        }
        for e in &events {
            match *e {
                LinkEvent::Sent { wr_id: w, .. } if w == wr_id => {
                    log::trace!("node {}: wrote transfer {} ({tag:#x}) to node {}", sh.me, t.id, t.to);
                    return Ok(());
                }
                LinkEvent::Sent { .. } => {}
                LinkEvent::Arrived { tag, .. } => {
                    return Err(Error::Protocol {
                        peer: format!("node {}", t.to),
                        reason: format!("wrote into us (immediate {tag}) on a link that only carries our writes"),
                    })
                }
            }
        }
    }
}

/// Receiver side of one incoming data connection over verbs: a thread polls the link for
/// arrivals while this one reads the TCP side (declines, close). Returns when either ends;
/// the link is destroyed and the peer's claims released before it does.
pub(super) fn serve(sh: &Arc<Shared>, peer: u32, link: VerbsLink, mut conn: Conn) {
    let gone = Arc::new(AtomicBool::new(false));
    let w = conn.writer.clone();
    let poller = {
        let (sh, gone, w) = (sh.clone(), gone.clone(), w.clone());
        std::thread::Builder::new().name("rdma-verbs-cq".into()).spawn(move || poll_loop(&sh, peer, link, &w, &gone))
    };
    let poller = match poller {
        Ok(h) => h,
        Err(e) => {
            log::error!("node {}: cannot start the verbs poller for node {peer}: {e}", sh.me);
            release_peer(sh, peer);
            return;
        }
    };
    loop {
        if gone.load(Ordering::Acquire) {
            break;
        }
        let res = match conn.reader.recv() {
            Ok(crate::tcp::Incoming::Control(Control::Verdict { tag, ok: false })) => {
                declined(sh, peer, tag);
                Ok(())
            }
            Ok(crate::tcp::Incoming::Close(_)) => break,
            Ok(other) => Err(Error::Protocol {
                peer: format!("node {peer}"),
                reason: format!("only declines may come over TCP on a verbs data connection, got {}", describe(&other)),
            }),
            Err(e) => Err(e),
        };
        if let Err(e) = res {
            if !sh.stop.load(Ordering::Acquire) {
                report_protocol(sh, peer, &w, e);
            }
            break;
        }
    }
    gone.store(true, Ordering::Release);
    let _ = poller.join();
}

fn poll_loop(sh: &Arc<Shared>, peer: u32, mut link: VerbsLink, w: &ConnWriter, gone: &AtomicBool) {
    let mut events = Vec::new();
    let mut idle = 0u32;
    while !gone.load(Ordering::Acquire) && !sh.stop.load(Ordering::Acquire) {
        events.clear();
        match link.poll(&mut events) {
            Err(e) => {
                report_protocol(sh, peer, w, e.into());
                break;
            }
            Ok(0) => {
                idle += 1;
                if idle.is_multiple_of(DEAD_CHECK_POLLS) && sh.lock().dead.get(peer as usize).copied().unwrap_or(true) {
                    break;
                }
                std::thread::sleep(IDLE_POLL);
            }
            Ok(_) => {
                idle = 0;
                let mut failed = None;
                for e in &events {
                    let r = match *e {
                        LinkEvent::Arrived { tag, len } => arrived(sh, peer, tag, len, w),
                        LinkEvent::Sent { .. } => Err(Error::Protocol {
                            peer: format!("node {peer}"),
                            reason: "a send completion on a receive-only link".into(),
                        }),
                    };
                    if let Err(e) = r {
                        failed = Some(e);
                        break;
                    }
                }
                if let Some(e) = failed {
                    report_protocol(sh, peer, w, e);
                    break;
                }
            }
        }
    }
    gone.store(true, Ordering::Release);
    // Destroy the QP before the claims go: after this nothing of this peer's can land.
    drop(link);
    release_peer(sh, peer);
}

/// Every claim of `peer` ends (its link is gone).
fn release_peer(sh: &Shared, peer: u32) {
    let blocks: Vec<u32> = {
        let mut st = sh.lock();
        st.recv.verbs_links.remove(&peer);
        take_claims(&mut st, peer)
    };
    for b in blocks {
        release(sh, b);
    }
    sh.cv.notify_all();
    sh.advance_grants(None);
}

fn take_claims(st: &mut super::State, peer: u32) -> Vec<u32> {
    let mine: Vec<(u32, u32)> = st.recv.claims.keys().filter(|k| k.0 == peer).copied().collect();
    mine.iter().filter_map(|k| st.recv.claims.remove(k)).map(|(_, b)| b).collect()
}

/// `peer` was declared dead. With no link up it can never write (a link set up later is refused,
/// and its grants waiting for a connection are dropped), so its claims end now; with a link up,
/// its poller ends them once the link is destroyed.
pub(super) fn peer_dead(sh: &Shared, peer: u32) {
    let blocks = {
        let mut st = sh.lock();
        if st.recv.verbs_links.contains(&peer) {
            return;
        }
        st.grants.pending_grants.remove(&peer);
        take_claims(&mut st, peer)
    };
    for b in blocks {
        release(sh, b);
    }
}

/// The sender will not write transfer `tag` (it dropped that grant at a replan).
fn declined(sh: &Shared, peer: u32, tag: u64) {
    let (_, id) = split_tag(tag);
    let block = {
        let mut st = sh.lock();
        match st.recv.claims.get(&(peer, id)) {
            Some(&(t, b)) if t == tag => {
                st.recv.claims.remove(&(peer, id));
                Some(b)
            }
            _ => None,
        }
    };
    if let Some(b) = block {
        log::info!("node {}: node {peer} declined {tag:#x} (block {b}); it may be granted again", sh.me);
        release(sh, b);
        sh.advance_grants(None);
    }
}

/// A write of `peer`'s has landed whole: transfer `id` (its immediate), `len` bytes.
fn arrived(sh: &Shared, peer: u32, id: u32, len: u32, w: &ConnWriter) -> Result<()> {
    let bad = |reason: String| Error::Protocol { peer: format!("node {peer}"), reason };
    let (tag, b) = sh
        .lock()
        .recv
        .claims
        .remove(&(peer, id))
        .ok_or_else(|| bad(format!("an RDMA write of transfer {id} that we did not grant")))?;
    let tb = sh.layout.transfer_blocks[b as usize];
    if u64::from(len) != tb.len {
        release(sh, b);
        return Err(bad(format!("transfer {id} wrote {len} bytes; block {b} has {}", tb.len)));
    }
    // SAFETY: the block is claimed for this write, which has completed; nobody else may write it
    // until the claim ends (below, on this thread).
    let crc = crc32c::crc32c(unsafe { sh.claim.bytes_shared(tb.offset, tb.len)? });
    if crc == tb.crc32c {
        sh.mark_held(b);
        return Ok(());
    }
    let reason = format!("block {b} crc32c {crc:08x}, expected {:08x}", tb.crc32c);
    let count = {
        let mut st = sh.lock();
        st.recv.refetched += 1;
        let c = st.recv.nacks.entry(tag).or_insert(0);
        *c += 1;
        *c
    };
    log::warn!("node {}: from node {peer} over verbs: {reason}; asking again ({count} of {MAX_REFETCHES})", sh.me);
    if count > MAX_REFETCHES {
        release(sh, b);
        return Err(bad(format!("{reason}, {count} times")));
    }
    // Claimed again for the same transfer before we ask, so the new write lands on a claim.
    let slot = &sh.slots[b as usize];
    let again = {
        let mut st = sh.lock();
        slot.next_attempt();
        if slot.state(Ordering::SeqCst) == SlotState::Landing {
            st.recv.claims.insert((peer, id), (tag, b));
            true
        } else {
            false
        }
    };
    sh.bump();
    if again {
        w.control(&Control::Nack { tag, reason })?;
    } else if slot.state(Ordering::SeqCst) != SlotState::Held {
        release(sh, b);
    }
    Ok(())
}
