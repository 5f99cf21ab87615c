//! A transfer block's state on this node, and the leases forwarders hold on its bytes.
//!
//! Missing → Landing (one reader claims it; `landed` grows) → Held (checksum matched; never
//! changes again), or → Void (the landing failed) → Resetting → Missing. A forwarder reads a
//! Landing block's landed prefix only under a lease (`readers`); a Void block's bytes are rewritten
//! only after the last lease is gone, and each reset starts a new `attempt`, so a forwarder
//! notices its copy changed under it. The transitions are `Slot`'s methods, free of threads and
//! sockets, so the seeded protocol test (`sim`) drives the same code the executor runs.

use super::{Control, Event, Shared};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

/// One transfer block's state (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum SlotState {
    Missing = 0,
    /// One reader (or, over verbs, one granted write) is landing it.
    Landing = 1,
    /// Its checksum matched; never written again.
    Held = 2,
    /// The landing failed; the bytes wait for the last forwarder's lease to go before they are reused.
    Void = 3,
    /// One thread is turning a Void block back into a Missing one.
    Resetting = 4,
}

impl SlotState {
    fn from_u8(v: u8) -> SlotState {
        match v {
            0 => SlotState::Missing,
            1 => SlotState::Landing,
            2 => SlotState::Held,
            3 => SlotState::Void,
            4 => SlotState::Resetting,
            _ => unreachable!("a slot stores only SlotState values, not {v}"),
        }
    }
}

/// One transfer block's state on this node.
pub(super) struct Slot {
    state: AtomicU8,
    /// Bytes of the current landing in the region (a prefix of the block); set by the landing
    /// reader with `Release` after the bytes are in place, read by forwarders with `Acquire`.
    pub(super) landed: AtomicU64,
    /// Bumped by every reset: a forwarder's copy is current while the attempt it started on is.
    attempt: AtomicU32,
    /// Forwarders reading the landed prefix now (leases).
    readers: AtomicU32,
}

impl Slot {
    pub(super) fn new(state: SlotState) -> Slot {
        Slot {
            state: AtomicU8::new(state as u8),
            landed: AtomicU64::new(0),
            attempt: AtomicU32::new(0),
            readers: AtomicU32::new(0),
        }
    }

    pub(super) fn state(&self, order: Ordering) -> SlotState {
        SlotState::from_u8(self.state.load(order))
    }

    pub(super) fn set(&self, s: SlotState, order: Ordering) {
        self.state.store(s as u8, order);
    }

    /// `from` → `to` if the slot is in `from` now (SeqCst); whether it was.
    pub(super) fn transition(&self, from: SlotState, to: SlotState) -> bool {
        self.state.compare_exchange(from as u8, to as u8, Ordering::SeqCst, Ordering::SeqCst).is_ok()
    }

    pub(super) fn attempt(&self) -> u32 {
        self.attempt.load(Ordering::SeqCst)
    }

    /// Starts a new attempt (over verbs: a claim ends or is renewed without a reset).
    pub(super) fn next_attempt(&self) {
        self.attempt.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a lease: while it is held, a Void slot is not reset. Check the state after taking it
    /// (the SeqCst increment pairs with the SeqCst store of Void and load of `readers` in `void`:
    /// one of the two sees the other).
    pub(super) fn acquire(&self) {
        self.readers.fetch_add(1, Ordering::SeqCst);
    }

    /// Gives a lease back; true when it was the last one on a Void slot: the caller resets it.
    pub(super) fn release(&self) -> bool {
        self.readers.fetch_sub(1, Ordering::SeqCst) == 1 && self.state(Ordering::SeqCst) == SlotState::Void
    }

    /// The landing failed: the bytes are void. True when no lease is held: the caller resets the
    /// slot now (otherwise the last lease does).
    pub(super) fn void(&self) -> bool {
        self.set(SlotState::Void, Ordering::SeqCst);
        self.readers.load(Ordering::SeqCst) == 0
    }

    /// Void → Missing with a new attempt, once (by whoever gets there first); whether this call did it.
    pub(super) fn reset(&self) -> bool {
        if !self.transition(SlotState::Void, SlotState::Resetting) {
            return false;
        }
        self.landed.store(0, Ordering::Relaxed);
        self.attempt.fetch_add(1, Ordering::Relaxed);
        // publishes the two stores above to whoever sees Missing (and then claims the block)
        self.set(SlotState::Missing, Ordering::SeqCst);
        true
    }

    /// Under a lease: how many bytes of a `len`-byte block a forwarder may send now (the landed
    /// prefix, all of it once held), or `None` when the copy it forwards is void (the landing
    /// failed, or was reset since the forwarder's first look, which set `attempt`).
    pub(super) fn forwardable_prefix(&self, attempt: &mut Option<u32>, len: usize) -> Option<usize> {
        let state = self.state(Ordering::SeqCst);
        let a = self.attempt();
        if !matches!(state, SlotState::Held | SlotState::Landing) || *attempt.get_or_insert(a) != a {
            return None;
        }
        Some(if state == SlotState::Held { len } else { (self.landed.load(Ordering::Acquire) as usize).min(len) })
    }

    /// Once a forwarder sent a whole block of landing `attempt`: its verdict, `Some(true)` once
    /// that landing is held, `Some(false)` when it failed (or was replaced), `None` while it lands.
    pub(super) fn verdict(&self, attempt: Option<u32>) -> Option<bool> {
        let state = self.state(Ordering::SeqCst);
        let a = self.attempt();
        if attempt.is_some_and(|x| x != a) || !matches!(state, SlotState::Held | SlotState::Landing) {
            return Some(false);
        }
        (state == SlotState::Held).then_some(true)
    }
}

/// See `Shared::lease`.
pub(super) struct Lease<'a> {
    sh: &'a Shared,
    b: u32,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if self.sh.slots[self.b as usize].release() {
            self.sh.reset_block(self.b);
        }
    }
}

impl Shared {
    pub(super) fn is_held(&self, b: u32) -> bool {
        self.slots[b as usize].state(Ordering::Acquire) == SlotState::Held
    }

    /// Whether a send of `b` may start: held, or arriving (forwarded as it lands).
    pub(super) fn forwardable(&self, b: u32) -> bool {
        match self.slots[b as usize].state(Ordering::Acquire) {
            SlotState::Held => true,
            // over verbs a block moves on only once all of it is here and verified
            SlotState::Landing => self.verbs.is_none(),
            _ => false,
        }
    }

    /// Wakes forwarders waiting for landing progress or a block's verdict.
    pub(super) fn bump(&self) {
        let mut g = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        *g = g.wrapping_add(1);
        drop(g);
        self.progress_cv.notify_all();
    }

    pub(super) fn progress_seen(&self) -> u64 {
        *self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits at most `max` for a `bump` after `seen` was read.
    pub(super) fn wait_progress(&self, seen: u64, max: Duration) {
        let g = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        if *g == seen {
            let _ = self.progress_cv.wait_timeout(g, max);
        }
    }

    /// A lease on block `b`'s bytes: while it lives, a Void block is not reset (its bytes are not
    /// rewritten). Check the state after taking it (`Slot::acquire`).
    pub(super) fn lease(&self, b: u32) -> Lease<'_> {
        self.slots[b as usize].acquire();
        Lease { sh: self, b }
    }

    /// The landing of `b` failed: its bytes are void. Reset at once if nobody forwards them,
    /// otherwise the last lease resets it.
    pub(super) fn void_block(&self, b: u32) {
        if self.slots[b as usize].void() {
            self.reset_block(b);
        }
        self.bump();
    }

    /// Void → Missing (once, by whoever gets there first), then asks peers whose offers of `b`
    /// were drained meanwhile to send it again.
    pub(super) fn reset_block(&self, b: u32) {
        if !self.slots[b as usize].reset() {
            return;
        }
        self.ask_offers_again(b);
        self.bump();
    }

    /// A landing of `b` failed: ask the peers whose offers were drained meanwhile to send it again.
    fn ask_offers_again(&self, b: u32) {
        let offers = self.lock().recv.offers.remove(&b).unwrap_or_default();
        for (w, tag) in offers {
            let _ = w.control(&Control::Nack { tag, reason: format!("block {b}: the landing it waited for failed") });
        }
    }

    /// Marks a verified block held, publishes it, wakes the sender.
    pub(super) fn mark_held(&self, b: u32) {
        {
            let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
            self.slots[b as usize].set(SlotState::Held, Ordering::SeqCst);
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
            let refetched = self.lock().recv.refetched;
            self.event(Event::Done { refetched });
        }
    }
}
