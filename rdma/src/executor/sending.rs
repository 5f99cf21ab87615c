//! Sender side: the send loop walks this node's send list in plan order, sends each transfer
//! once its receiver granted it and its block is held or landing (cut-through, under a lease),
//! follows every write with its verdict, and sends again what receivers ask for (`Nack`) once the
//! block is held here.

use super::slots::SlotState;
use super::{
    spawn, split_tag, tag_of, verbs_path, ConnReader, ConnWriter, Control, Error, Incoming, Result, Shared, State,
    TransferSource, WriteDesc, DATA_SEND_BUFFER_BYTES, FORWARD_MAX_BYTES, FORWARD_MIN_BYTES, FORWARD_POLL_MS,
    MAX_CREDITS, MODEL_REGION, ZEROS,
};
use crate::tcp;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The sender's state.
pub(super) struct SendState {
    /// Writes to send again (asked for with `Nack`), each once its block is held.
    pub(super) retransmit: VecDeque<u64>,
    /// Writes the receivers said they are ready for.
    pub(super) credits: HashSet<u64>,
    /// Writes the receivers said they do not need (they hold the block already).
    pub(super) skips: HashSet<u64>,
    /// The last write sent (receiver, tag, when) until its receiver says `Almost`: the next write
    /// to another receiver waits for it, so the uplink carries one stream at a time (the socket
    /// buffer would otherwise let two transfers share it, and both arrive late).
    pub(super) awaiting: Option<(u32, u64, Instant)>,
    /// Our connection to each receiver.
    pub(super) out: HashMap<u32, ConnWriter>,
    /// Test hook: epoch-0 transfers sent once with a bit flipped.
    pub(super) corrupt: HashSet<u32>,
}

impl SendState {
    pub(super) fn new(corrupt: HashSet<u32>) -> SendState {
        SendState {
            retransmit: VecDeque::new(),
            credits: HashSet::new(),
            skips: HashSet::new(),
            awaiting: None,
            out: HashMap::new(),
            corrupt,
        }
    }
}

pub(super) fn send_loop(sh: &Arc<Shared>) {
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
                if let Some(pos) = st.send.retransmit.iter().position(|&t| retransmit_ready(sh, &st, t)) {
                    let t = st.send.retransmit.remove(pos).expect("the position is in the queue");
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
                    let busy = match st.send.awaiting {
                        Some((p, _, since)) => {
                            p != t.to && !st.dead[p as usize] && since.elapsed() < Duration::from_millis(sh.timeout_ms)
                        }
                        None => false,
                    };
                    if st.send.skips.remove(&tag) {
                        idx += 1;
                        continue;
                    }
                    if !st.send.out.contains_key(&t.to) {
                        // connect early, so the receiver's grant can reach us
                        connect_to = Some(t.to);
                    } else if !busy && sh.forwardable(t.block) && st.send.credits.remove(&tag) {
                        idx += 1;
                        // (over verbs each send waits for its completion: one at a time anyway)
                        if sh.verbs.is_none() {
                            st.send.awaiting = Some((t.to, tag, Instant::now()));
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
        Some(t) => t.from != TransferSource::Node(sh.me) || sh.is_held(t.block),
        None => true,
    }
}

/// Queues a write to send again (once its block is held), at most once, within the bound.
pub(super) fn queue_retransmit(sh: &Shared, tag: u64) {
    let mut st = sh.lock();
    if st.send.retransmit.contains(&tag) {
        return;
    }
    if st.send.retransmit.len() >= MAX_CREDITS {
        log::error!("node {}: {MAX_CREDITS} writes queued to send again; dropping {tag:#x}", sh.me);
        return;
    }
    st.send.retransmit.push_back(tag);
    drop(st);
    sh.cv.notify_all();
}

fn send_one(sh: &Arc<Shared>, tag: u64, retransmit: bool) {
    let (epoch, id) = split_tag(tag);
    let Some(plan) = sh.lock().plans.get(epoch as usize).cloned() else { return };
    let Some(t) = plan.transfers.get(id as usize) else { return };
    if t.from != TransferSource::Node(sh.me) {
        log::warn!("node {}: asked to send {tag:#x}, which is not ours to send", sh.me);
        return;
    }
    let state = sh.slots[t.block as usize].state(Ordering::SeqCst);
    if state != SlotState::Held && (retransmit || state != SlotState::Landing) {
        // Sent again only from a verified copy; a landing that failed since this send was picked
        // leaves nothing to forward. Either way: send it once the block is held, never drop it.
        queue_retransmit(sh, tag);
        return;
    }
    let corrupt = epoch == 0 && sh.lock().send.corrupt.remove(&id);
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
        if state != SlotState::Held {
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
            let Some(upto) = slot.forwardable_prefix(&mut attempt, len) else {
                void = true;
                continue;
            };
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
        if let Some(ok) = slot.verdict(attempt) {
            return Ok(ok);
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
pub(super) fn writer_to(sh: &Arc<Shared>, to: u32) -> Result<ConnWriter> {
    if let Some(w) = sh.lock().send.out.get(&to) {
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
    sh.lock().send.out.insert(to, w.clone());
    if let Err(e) = spawn("rdma-nacks", move || nack_loop(&s, to, &mut reader, &w2)) {
        sh.lock().send.out.remove(&to);
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
                if st.send.awaiting.is_some_and(|a| a.1 == tag) {
                    st.send.awaiting = None;
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
                if st.send.credits.len() < MAX_CREDITS {
                    st.send.credits.insert(tag);
                }
                drop(st);
                sh.cv.notify_all();
            }
            Ok(Incoming::Control(Control::Skip { tag })) => {
                let mut st = sh.lock();
                if st.send.skips.len() < MAX_CREDITS {
                    st.send.skips.insert(tag);
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
