//! Receiver side: which transfer this node lets its senders start next (`Go`), which it tells
//! them to skip (`Skip`: the block is held already), in receive-list order, one at a time over
//! TCP (two over verbs), the next one early when the current one is almost here.

use super::{tag_of, verbs_path, ConnWriter, Control, Endpoint, Shared, State};
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

impl Shared {
    /// Receiver side: grants the first transfer of this epoch's receive list whose block is
    /// missing and whose sender is alive; when `near_end` names that transfer (its last bytes are
    /// arriving), grants the one after it instead, so the next sender starts a round trip early.
    pub(super) fn advance_grants(&self, near_end: Option<u64>) {
        if !self.running.load(Ordering::Acquire) || self.stop.load(Ordering::Acquire) {
            return;
        }
        let mut msgs: Vec<(u32, Control)> = Vec::new();
        let send: Vec<(ConnWriter, Control)> = {
            let mut st = self.lock();
            if st.grants.recv_epoch != st.epoch {
                st.grants.recv_epoch = st.epoch;
                st.grants.recv_idx = 0;
                st.grants.granted.clear();
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
                if st.grants.granted.insert(tag) {
                    msgs.push((from, Control::Skip { tag }));
                }
                true
            };
            loop {
                let i = st.grants.recv_idx;
                if i >= recvs.len() || !skip(&mut st, i, &mut msgs) {
                    break;
                }
                st.grants.recv_idx += 1;
            }
            let mut j = st.grants.recv_idx;
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
                if !st.grants.granted.contains(&tag) {
                    // over verbs the block is claimed for this write before the grant lets it land
                    if self.verbs.is_some() && !verbs_path::claim(self, &mut st.recv.claims, from, &t, tag) {
                        break;
                    }
                    st.grants.granted.insert(tag);
                    msgs.push((from, Control::Go { tag }));
                }
                granted_now += 1;
                j += 1;
            }
            let mut out = Vec::new();
            for (from, m) in msgs.drain(..) {
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
