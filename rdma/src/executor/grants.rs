//! Receiver side: which transfer this node lets its senders start next (`Go`), which it tells
//! them to skip (`Skip`: the block is held already), in receive-list order, one at a time over
//! TCP (two over verbs), the next one early when the current one is almost here.

use super::{tag_of, verbs_path, ConnWriter, Control, Shared, State, TransferSource};
use planner::{MulticastPlan, Transfer};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

/// The receiver's grant state.
#[derive(Default)]
pub(super) struct GrantState {
    /// Position in this epoch's receive list.
    pub(super) recv_idx: usize,
    /// The epoch `recv_idx` and `granted` belong to.
    pub(super) recv_epoch: u64,
    /// Tags granted (`Go`) or skipped (`Skip`) in that epoch.
    pub(super) granted: HashSet<u64>,
    /// Each sender's incoming connection (where grants go).
    pub(super) incoming_by_node: HashMap<u32, ConnWriter>,
    /// Grants waiting for their sender's connection.
    pub(super) pending_grants: HashMap<u32, Vec<Control>>,
}

impl GrantState {
    /// The grants (`Go`) and skips (`Skip`) to send now, to which sender, for `epoch` of `plan` on
    /// node `me`: the first transfer of the receive list whose block is missing and whose sender is
    /// alive; when `near_end` names that transfer (its last bytes are arriving), the one after it
    /// instead, so the next sender starts a round trip early; `window` transfers at a time.
    /// `claim(from, transfer, tag)` runs before a grant and may refuse it (over verbs the block is
    /// claimed for the write first). Pure: no locks, no sockets (the seeded test drives it).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn next(
        &mut self,
        epoch: u64,
        plan: &MulticastPlan,
        me: u32,
        dead: &[bool],
        held: impl Fn(u32) -> bool,
        near_end: Option<u64>,
        window: usize,
        mut claim: impl FnMut(u32, &Transfer, u64) -> bool,
    ) -> Vec<(u32, Control)> {
        if self.recv_epoch != epoch {
            self.recv_epoch = epoch;
            self.recv_idx = 0;
            self.granted.clear();
        }
        let mut msgs: Vec<(u32, Control)> = Vec::new();
        let recvs = &plan.nodes[me as usize].recvs;
        // Whether entry i needs no grant: its block is held (then its sender, if alive and not
        // yet told, gets `Skip`, so its send list does not wait on us) or its sender is dead.
        let skip = |granted: &mut HashSet<u64>, i: usize, msgs: &mut Vec<(u32, Control)>| {
            let t = &plan.transfers[recvs[i] as usize];
            let TransferSource::Node(from) = t.from else { return true };
            if dead.get(from as usize).copied().unwrap_or(true) {
                return true;
            }
            if !held(t.block) {
                return false;
            }
            let tag = tag_of(epoch, t.id);
            if granted.insert(tag) {
                msgs.push((from, Control::Skip { tag }));
            }
            true
        };
        while self.recv_idx < recvs.len() && skip(&mut self.granted, self.recv_idx, &mut msgs) {
            self.recv_idx += 1;
        }
        let mut j = self.recv_idx;
        if j < recvs.len() && near_end == Some(tag_of(epoch, recvs[j])) {
            j += 1;
            while j < recvs.len() && skip(&mut self.granted, j, &mut msgs) {
                j += 1;
            }
        }
        let mut granted_now = 0;
        while j < recvs.len() && granted_now < window {
            if granted_now > 0 && skip(&mut self.granted, j, &mut msgs) {
                j += 1;
                continue;
            }
            let t = plan.transfers[recvs[j] as usize];
            let tag = tag_of(epoch, t.id);
            let TransferSource::Node(from) = t.from else { break };
            if !self.granted.contains(&tag) {
                if !claim(from, &t, tag) {
                    break;
                }
                self.granted.insert(tag);
                msgs.push((from, Control::Go { tag }));
            }
            granted_now += 1;
            j += 1;
        }
        msgs
    }
}

impl Shared {
    /// Receiver side: sends what `GrantState::next` says, to each sender's incoming connection
    /// (or keeps it until that connection is up).
    pub(super) fn advance_grants(&self, near_end: Option<u64>) {
        if !self.running.load(Ordering::Acquire) || self.stop.load(Ordering::Acquire) {
            return;
        }
        let send: Vec<(ConnWriter, Control)> = {
            let mut st = self.lock();
            let plan = st.plans[st.epoch as usize].clone();
            let epoch = st.epoch;
            // Over verbs nothing says "almost there" (a write arrives whole), so two transfers are
            // granted at a time: the next sender's write is posted while the current one lands.
            let window = if self.verbs.is_some() { 2 } else { 1 };
            let State { grants, recv, dead, .. } = &mut *st;
            let msgs = grants.next(
                epoch,
                &plan,
                self.me,
                dead,
                |b| self.is_held(b),
                near_end,
                window,
                |from, t, tag| {
                    // over verbs the block is claimed for this write before the grant lets it land
                    self.verbs.is_none() || verbs_path::claim(self, &mut recv.claims, from, t, tag)
                },
            );
            let mut out = Vec::new();
            for (from, m) in msgs {
                match st.grants.incoming_by_node.get(&from) {
                    Some(w) => out.push((w.clone(), m)),
                    None => st.grants.pending_grants.entry(from).or_default().push(m),
                }
            }
            out
        };
        for (w, m) in send {
            let _ = w.control(&m);
        }
    }
}
