//! Receiver side: one thread per incoming data connection checks every write against the plan
//! and the layout, lands it (claiming the block: Missing → Landing), checks its crc32c, and holds
//! it, or voids it and asks again (`Nack`), counting refetches and void copies against the sender.

use super::slots::SlotState;
use super::{
    spawn, split_tag, verbs_path, ConnReader, ConnWriter, Control, Error, Incoming, Listener, Result, Shared,
    TransferSource, WriteDesc, EARLY_GRANT_BYTES, FORWARD_MIN_BYTES, MAX_REFETCHES, MAX_VOIDS, MODEL_REGION,
};
use crate::tcp;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a landed copy whose checksum failed counts as (`RecvState::failed_copy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FailedCopy {
    /// The sender said its copy was void (it failed upstream while it forwarded it): not the
    /// sender's fault, not a refetch; `count` voids of this write so far (more than `MAX_VOIDS`:
    /// the sender is dead).
    Void { count: u32 },
    /// The sender vouched for its copy: corrupted on this hop, a refetch; `count` of this write so
    /// far (more than `MAX_REFETCHES`: the sender is dead).
    Corrupt { count: u32 },
}

impl RecvState {
    /// Counts a copy of write `tag` whose checksum failed here, `sender_ok` its verdict. Either
    /// way the write is asked for again (`Nack`) unless its count is past the bound.
    pub(super) fn failed_copy(&mut self, tag: u64, sender_ok: bool) -> FailedCopy {
        if sender_ok {
            self.refetched += 1;
            let c = self.nacks.entry(tag).or_insert(0);
            *c += 1;
            FailedCopy::Corrupt { count: *c }
        } else {
            let c = self.voids.entry(tag).or_insert(0);
            *c += 1;
            FailedCopy::Void { count: *c }
        }
    }
}

/// The receiver's state.
#[derive(Default)]
pub(super) struct RecvState {
    /// Refetches asked for, by tag (a write failing its checksum with an `ok` verdict).
    pub(super) nacks: HashMap<u64, u32>,
    /// Void writes (their sender's copy failed while it forwarded them), by tag.
    pub(super) voids: HashMap<u64, u32>,
    /// Refetches in all (reported in `Done`).
    pub(super) refetched: u32,
    /// Offers of a block drained while another peer was landing it: (peer's writer, tag).
    pub(super) offers: HashMap<u32, Vec<(ConnWriter, u64)>>,
    /// Every incoming connection (aborted on stop).
    pub(super) incoming: Vec<ConnWriter>,
    /// Over verbs: blocks claimed for a peer's write, (peer, transfer id) → (tag, block).
    pub(super) claims: HashMap<(u32, u32), (u64, u32)>,
    /// Over verbs: peers whose link is up (their poller releases their claims).
    pub(super) verbs_links: HashSet<u32>,
}

const MAX_INCOMING_PER_NODE: usize = 4;

pub(super) fn accept_loop(sh: &Arc<Shared>, listener: Listener) {
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
            st.recv.verbs_links.insert(peer);
        }
        st.recv.incoming.push(w.clone());
        st.grants.incoming_by_node.insert(peer, w.clone());
        st.grants.pending_grants.remove(&peer).unwrap_or_default()
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
    if t.to != sh.me || t.from != TransferSource::Node(peer) {
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
    if !slot.transition(SlotState::Missing, SlotState::Landing) {
        r.discard()?;
        w.control(&Control::Almost { tag: d.tag })?;
        // Held: nothing to do. Landing (or a failed landing being reset): remember the offer, asked
        // for again if that landing fails. Missing again (it failed meanwhile): ask again now.
        let ask_now = {
            let mut st = sh.lock();
            match slot.state(Ordering::SeqCst) {
                SlotState::Held => false,
                SlotState::Missing => true,
                _ => {
                    let offers = st.recv.offers.entry(b).or_default();
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
        sh.lock().recv.offers.remove(&b);
        sh.mark_held(b);
        // Verified here, whatever the sender's verdict (a void copy that matches is the block).
        expect_verdict(peer, r, d.tag)?;
        return Ok(());
    }
    // Our copy failed: our own forwards of it end void, and the block is claimed again.
    sh.void_block(b);
    let sender_ok = expect_verdict(peer, r, d.tag)?;
    let reason = format!("block {b} crc32c {crc:08x}, expected {:08x}", tb.crc32c);
    let failed = sh.lock().recv.failed_copy(d.tag, sender_ok);
    match failed {
        FailedCopy::Void { count } => {
            log::info!("node {}: from node {peer}: a void copy ({reason}); asking again", sh.me);
            if count > MAX_VOIDS {
                return Err(bad(format!("write {:#x} arrived void {count} times", d.tag)));
            }
            w.control(&Control::Nack { tag: d.tag, reason: format!("{reason}: your copy was void") })?;
        }
        FailedCopy::Corrupt { count } => {
            log::warn!("node {}: from node {peer}: {reason}; asking again ({count} of {MAX_REFETCHES})", sh.me);
            if count > MAX_REFETCHES {
                return Err(bad(format!("{reason}, {count} times")));
            }
            w.control(&Control::Nack { tag: d.tag, reason })?;
        }
    }
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
pub(super) fn report_protocol(sh: &Shared, peer: u32, w: &ConnWriter, e: Error) {
    // reported first: closing makes the connection's other thread fail too, with a vaguer reason
    sh.report_dead(peer, e.to_string());
    w.close(&e.to_string());
}

/// A frame in a few words (a message's bytes are not worth printing).
pub(super) fn describe(i: &Incoming) -> String {
    match i {
        Incoming::Control(c) => format!("a {} message", c.name()),
        Incoming::Message(m) => format!("a {}-byte channel message", m.len()),
        Incoming::Write(d) => format!("a write of {} bytes (tag {:#x})", d.len, d.tag),
        Incoming::Close(r) => format!("a close ({r})"),
    }
}
