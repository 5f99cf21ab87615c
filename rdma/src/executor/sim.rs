//! A deterministic, seeded test of the executor's protocol (VOPR style): whole multicasts of a
//! few nodes run in one thread, with every message delivery, every sender step, link corruption
//! and the death of a node (then a replan to a new epoch) chosen by a seeded generator. The
//! protocol decisions are the executor's own code: `Slot` (claims, leases, void copies, resets,
//! attempts, the forwarder's prefix and verdict), `GrantState::next` (grants and skips per
//! epoch) and `RecvState::failed_copy` (refetches and voids); the threads and sockets around them
//! are replaced by per-connection FIFO queues. A block is 4 pieces; a forwarder sends one piece
//! per step under a lease, as the executor's forwarder sends a landed prefix.
//!
//! Checked at every step: a block is held only when all its pieces are the good bytes; a
//! forwarder reads only pieces of the landing attempt it leased; a slot is reset only with no
//! lease on it; a verdict `ok` only follows good pieces; no live node is declared dead (bounded
//! refetches and voids); and at the end every surviving receiver holds every block. A failure
//! names its seed: `FAASCALE_SIM_SEED=S cargo test -p rdma --lib executor::sim` reruns it alone,
//! `FAASCALE_SIM_SEEDS=N` runs N seeds (default 200).

use super::grants::GrantState;
use super::receiving::{FailedCopy, RecvState};
use super::slots::{Slot, SlotState};
use super::{split_tag, tag_of, Control, MAX_REFETCHES, MAX_VOIDS};
use planner::{Algo, Cluster, Holdings, MulticastPlan, MulticastRequest, TransferSource};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;

const PIECES: usize = 4;
/// Steps one run may take before it counts as stuck.
const MAX_STEPS: usize = 200_000;

/// What a piece of a landed copy holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Piece {
    Good,
    /// Corrupted on a link.
    Bad,
    /// The zeros a forwarder sends for the rest of a void copy.
    Zero,
}

#[derive(Clone, Debug)]
enum Msg {
    /// Receiver → sender.
    Ctl(Control),
    /// Sender → receiver: piece `i` of write `tag`.
    Piece {
        tag: u64,
        i: usize,
        p: Piece,
    },
    Verdict {
        tag: u64,
        ok: bool,
    },
}

/// The planner's SplitMix64, with the draws this test makes (modulo, as the seeds were chosen with).
struct Rng(planner::sim::rng::Rng);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(planner::sim::rng::Rng::new(seed))
    }

    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }
}

/// A write arriving on one connection.
struct Landing {
    tag: u64,
    block: u32,
    /// Claimed (Missing → Landing) here; otherwise drained.
    claimed: bool,
    next: usize,
    crc_ok: Option<bool>,
    ask_now: bool,
}

/// The send in progress (a node has one sender).
struct Send {
    tag: u64,
    block: u32,
    to: u32,
    sent: usize,
    attempt: Option<u32>,
    void: bool,
    sent_bad: bool,
    /// A lease is held and this piece was read under it: the next step sends it, then lets go
    /// (so other actions, a failing landing among them, can run while the lease is held).
    leased: Option<Piece>,
}

struct Node {
    alive: bool,
    slots: Vec<Slot>,
    /// The region: each block's pieces and the attempt that wrote them.
    content: Vec<[Option<(Piece, u32)>; PIECES]>,
    leases: Vec<u32>,
    grants: GrantState,
    recv: RecvState,
    idx: usize,
    cur_epoch: u64,
    credits: HashSet<u64>,
    skips: HashSet<u64>,
    retransmit: VecDeque<u64>,
    sending: Option<Send>,
    landing: HashMap<u32, Landing>,
    offers: HashMap<u32, Vec<(u32, u64)>>,
}

struct World {
    rng: Rng,
    nodes: Vec<Node>,
    plans: Vec<MulticastPlan>,
    epoch: u64,
    dead: Vec<bool>,
    /// FIFO per connection (from, to), as TCP delivers.
    links: BTreeMap<(u32, u32), VecDeque<Msg>>,
    corrupted: HashSet<u64>,
    corruptions_left: u32,
    trace: VecDeque<String>,
    stats: Stats,
}

/// What the runs exercised (the test checks the seeds reach every path).
#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    steps: u64,
    kills: u32,
    refetches: u32,
    voids: u32,
    drained: u32,
    resets_by_last_lease: u32,
    forwarded_while_landing: u32,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, o: Stats) {
        self.steps += o.steps;
        self.kills += o.kills;
        self.refetches += o.refetches;
        self.voids += o.voids;
        self.drained += o.drained;
        self.resets_by_last_lease += o.resets_by_last_lease;
        self.forwarded_while_landing += o.forwarded_while_landing;
    }
}

macro_rules! ensure {
    ($c:expr, $($m:tt)*) => {
        if !$c {
            return Err(format!($($m)*));
        }
    };
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = Rng::new(seed);
        let n = 3 + rng.below(4);
        let nb = 2 + rng.below(3);
        let algo = [Algo::Faascale, Algo::Binomial, Algo::Nccl, Algo::Faasnet][rng.below(4)];
        let layout = planner::uniform_layout("sim", nb as u64 * (64 << 10), nb, Some(64 << 10)).expect("layout");
        let cluster = Cluster::uniform(n, 1e9, 1e9);
        let receivers: Vec<u32> = (1..n as u32).collect();
        let req = MulticastRequest { cluster: &cluster, layout: &layout, sources: &[0], receivers: &receivers };
        let plan = planner::plan(algo, &req).expect("plan");
        let nb = plan.block_bytes.len();
        let nodes = (0..n)
            .map(|i| {
                let holds = |b: usize| plan.initial.holds(i, b);
                Node {
                    alive: true,
                    slots: (0..nb)
                        .map(|b| Slot::new(if holds(b) { SlotState::Held } else { SlotState::Missing }))
                        .collect(),
                    content: (0..nb).map(|b| [holds(b).then_some((Piece::Good, 0)); PIECES]).collect(),
                    leases: vec![0; nb],
                    grants: GrantState::default(),
                    recv: RecvState::default(),
                    idx: 0,
                    cur_epoch: 0,
                    credits: HashSet::new(),
                    skips: HashSet::new(),
                    retransmit: VecDeque::new(),
                    sending: None,
                    landing: HashMap::new(),
                    offers: HashMap::new(),
                }
            })
            .collect();
        let corruptions_left = rng.below(4) as u32;
        let mut w = World {
            rng,
            nodes,
            plans: vec![plan],
            epoch: 0,
            dead: vec![false; n],
            links: BTreeMap::new(),
            corrupted: HashSet::new(),
            corruptions_left,
            trace: VecDeque::new(),
            stats: Stats::default(),
        };
        w.note(format!("{n} nodes, {nb} blocks, {algo:?}, {corruptions_left} corruptions"));
        for me in 0..n as u32 {
            w.advance_grants(me, None);
        }
        w
    }

    fn note(&mut self, s: String) {
        if self.trace.len() == 40 {
            self.trace.pop_front();
        }
        self.trace.push_back(s);
    }

    fn send(&mut self, from: u32, to: u32, m: Msg) {
        if self.nodes[from as usize].alive && self.nodes[to as usize].alive {
            self.links.entry((from, to)).or_default().push_back(m);
        }
    }

    fn held(&self, me: u32, b: u32) -> bool {
        self.nodes[me as usize].slots[b as usize].state(Ordering::SeqCst) == SlotState::Held
    }

    fn advance_grants(&mut self, me: u32, near_end: Option<u64>) {
        if !self.nodes[me as usize].alive {
            return;
        }
        let plan = &self.plans[self.epoch as usize];
        let node = &mut self.nodes[me as usize];
        let slots = &node.slots;
        let held = |b: u32| slots[b as usize].state(Ordering::SeqCst) == SlotState::Held;
        let msgs = node.grants.next(self.epoch, plan, me, &self.dead, held, near_end, 1, |_, _, _| true);
        for (from, m) in msgs {
            self.send(me, from, Msg::Ctl(m));
        }
    }

    /// `Slot::reset` and what the executor does after it: ask again the peers whose offers were drained.
    fn reset(&mut self, me: u32, b: u32) -> Result<(), String> {
        let node = &mut self.nodes[me as usize];
        ensure!(node.leases[b as usize] == 0, "node {me} block {b}: reset under a lease");
        if !node.slots[b as usize].reset() {
            return Ok(());
        }
        node.content[b as usize] = [None; PIECES];
        for (peer, tag) in node.offers.remove(&b).unwrap_or_default() {
            self.send(me, peer, Msg::Ctl(Control::Nack { tag, reason: String::new() }));
        }
        Ok(())
    }

    fn void(&mut self, me: u32, b: u32) -> Result<(), String> {
        if self.nodes[me as usize].slots[b as usize].void() {
            self.reset(me, b)?;
        }
        Ok(())
    }

    /// Lets a forwarder's lease go; the last lease on a void slot resets it.
    fn release(&mut self, me: u32, b: u32) -> Result<(), String> {
        let node = &mut self.nodes[me as usize];
        node.leases[b as usize] -= 1;
        if node.slots[b as usize].release() {
            self.stats.resets_by_last_lease += 1;
            self.reset(me, b)?;
        }
        Ok(())
    }

    fn queue_retransmit(&mut self, me: u32, tag: u64) {
        let node = &mut self.nodes[me as usize];
        if !node.retransmit.contains(&tag) {
            node.retransmit.push_back(tag);
        }
    }

    // ---- the actions

    fn deliver(&mut self, from: u32, to: u32) -> Result<(), String> {
        let Some(mut m) = self.links.get_mut(&(from, to)).and_then(VecDeque::pop_front) else { return Ok(()) };
        if let Msg::Piece { tag, p: p @ Piece::Good, .. } = &mut m {
            if self.corruptions_left > 0 && !self.corrupted.contains(tag) && self.rng.chance(100) {
                self.corruptions_left -= 1;
                self.corrupted.insert(*tag);
                *p = Piece::Bad;
            }
        }
        self.note(format!("{from} → {to}: {m:?}"));
        let me = to;
        match m {
            Msg::Ctl(Control::Go { tag }) => {
                self.nodes[me as usize].credits.insert(tag);
            }
            Msg::Ctl(Control::Skip { tag }) => {
                self.nodes[me as usize].skips.insert(tag);
            }
            Msg::Ctl(Control::Nack { tag, .. }) => self.queue_retransmit(me, tag),
            Msg::Ctl(Control::Almost { .. }) => {}
            Msg::Ctl(other) => return Err(format!("unexpected {other:?}")),
            Msg::Piece { tag, i, p } => self.on_piece(me, from, tag, i, p)?,
            Msg::Verdict { tag, ok } => self.on_verdict(me, from, tag, ok)?,
        }
        Ok(())
    }

    fn on_piece(&mut self, me: u32, from: u32, tag: u64, i: usize, p: Piece) -> Result<(), String> {
        let (epoch, id) = split_tag(tag);
        if i == 0 {
            let t = self.plans[epoch as usize].transfers[id as usize];
            ensure!(
                t.to == me && t.from == TransferSource::Node(from),
                "write {tag:#x} is not {from}'s to send to {me}"
            );
            ensure!(!self.nodes[me as usize].landing.contains_key(&from), "two writes at once on one connection");
            let slot = &self.nodes[me as usize].slots[t.block as usize];
            let claimed = slot.transition(SlotState::Missing, SlotState::Landing);
            if claimed {
                slot.landed.store(0, Ordering::Release);
            }
            let l = Landing { tag, block: t.block, claimed, next: 0, crc_ok: None, ask_now: false };
            self.nodes[me as usize].landing.insert(from, l);
        }
        let node = &mut self.nodes[me as usize];
        let l = node.landing.get_mut(&from).ok_or("a piece without its write")?;
        ensure!(l.tag == tag && l.next == i, "piece {i} of {tag:#x} out of order");
        l.next += 1;
        let (b, claimed, done) = (l.block, l.claimed, l.next == PIECES);
        if claimed {
            let attempt = node.slots[b as usize].attempt();
            node.content[b as usize][i] = Some((p, attempt));
            node.slots[b as usize].landed.store(i as u64 + 1, Ordering::Release);
            if i + 2 == PIECES {
                self.send(me, from, Msg::Ctl(Control::Almost { tag }));
                self.advance_grants(me, Some(tag));
            }
        }
        if !done {
            return Ok(());
        }
        if !claimed {
            self.stats.drained += 1;
            self.send(me, from, Msg::Ctl(Control::Almost { tag }));
            let state = self.nodes[me as usize].slots[b as usize].state(Ordering::SeqCst);
            let node = &mut self.nodes[me as usize];
            match state {
                SlotState::Held => {}
                SlotState::Missing => node.landing.get_mut(&from).expect("present").ask_now = true,
                _ => node.offers.entry(b).or_default().push((from, tag)),
            }
            return Ok(());
        }
        // the checksum is a step of its own (`verify`): a forwarder may look in between
        Ok(())
    }

    /// The landing reader's checksum of a write whose bytes have all landed.
    fn verify(&mut self, me: u32, from: u32) -> Result<(), String> {
        let node = &mut self.nodes[me as usize];
        let Some(l) = node.landing.get_mut(&from) else { return Ok(()) };
        if !l.claimed || l.next < PIECES || l.crc_ok.is_some() {
            return Ok(());
        }
        let b = l.block;
        let ok = node.content[b as usize].iter().all(|c| matches!(c, Some((Piece::Good, _))));
        l.crc_ok = Some(ok);
        self.note(format!("node {me}: block {b} from {from} checked: {ok}"));
        if ok {
            let node = &mut self.nodes[me as usize];
            node.offers.remove(&b);
            node.slots[b as usize].set(SlotState::Held, Ordering::SeqCst);
            self.advance_grants(me, None);
        } else {
            self.void(me, b)?;
        }
        Ok(())
    }

    fn on_verdict(&mut self, me: u32, from: u32, tag: u64, ok: bool) -> Result<(), String> {
        // the reader reads the verdict only after its own check
        self.verify(me, from)?;
        let l = self.nodes[me as usize].landing.remove(&from).ok_or("a verdict without a write")?;
        ensure!(l.tag == tag && l.next == PIECES, "verdict of {tag:#x} before the whole write");
        if !l.claimed {
            if l.ask_now {
                self.send(me, from, Msg::Ctl(Control::Nack { tag, reason: String::new() }));
            }
            return Ok(());
        }
        if l.crc_ok == Some(true) {
            return Ok(());
        }
        match self.nodes[me as usize].recv.failed_copy(tag, ok) {
            FailedCopy::Void { count } => {
                self.stats.voids += 1;
                ensure!(count <= MAX_VOIDS, "write {tag:#x} void {count} times")
            }
            FailedCopy::Corrupt { count } => {
                self.stats.refetches += 1;
                ensure!(count <= MAX_REFETCHES, "write {tag:#x} corrupt {count} times")
            }
        }
        self.send(me, from, Msg::Ctl(Control::Nack { tag, reason: String::new() }));
        Ok(())
    }

    /// One step of node `me`'s sender: a piece of the send in progress, its verdict, or the next send.
    fn sender_step(&mut self, me: u32) -> Result<bool, String> {
        let Some(mut s) = self.nodes[me as usize].sending.take() else { return Ok(self.start_send(me)) };
        if !self.nodes[s.to as usize].alive {
            return Ok(true); // the connection failed: the send ends (`kill` let its lease go)
        }
        let b = s.block as usize;
        if let Some(p) = s.leased.take() {
            s.sent_bad |= p != Piece::Good;
            self.send(me, s.to, Msg::Piece { tag: s.tag, i: s.sent, p });
            s.sent += 1;
            self.release(me, s.block)?;
            self.nodes[me as usize].sending = Some(s);
            return Ok(true);
        }
        if s.sent < PIECES {
            if s.void {
                self.send(me, s.to, Msg::Piece { tag: s.tag, i: s.sent, p: Piece::Zero });
                s.sent += 1;
            } else {
                let node = &mut self.nodes[me as usize];
                node.slots[b].acquire();
                node.leases[b] += 1;
                match node.slots[b].forwardable_prefix(&mut s.attempt, PIECES) {
                    None => s.void = true,
                    Some(upto) if upto > s.sent => {
                        let (p, stamp) = node.content[b][s.sent].ok_or("a landed piece is missing")?;
                        ensure!(
                            Some(stamp) == s.attempt,
                            "node {me} block {b}: read attempt {stamp}'s bytes under a lease on {:?}",
                            s.attempt
                        );
                        if node.slots[b].state(Ordering::SeqCst) == SlotState::Landing {
                            self.stats.forwarded_while_landing += 1;
                        }
                        s.leased = Some(p); // sent, and the lease let go, next step
                    }
                    Some(_) => {}
                }
                if s.leased.is_none() {
                    self.release(me, s.block)?;
                }
            }
            self.nodes[me as usize].sending = Some(s);
            return Ok(true);
        }
        let ok = if s.void { Some(false) } else { self.nodes[me as usize].slots[b].verdict(s.attempt) };
        match ok {
            Some(ok) => {
                ensure!(!(ok && s.sent_bad), "node {me}: verdict ok for a copy with bad pieces");
                self.send(me, s.to, Msg::Verdict { tag: s.tag, ok });
            }
            None => self.nodes[me as usize].sending = Some(s), // still landing here: wait
        }
        Ok(ok.is_some())
    }

    fn start_send(&mut self, me: u32) -> bool {
        let plan = &self.plans[self.epoch as usize];
        let node = &mut self.nodes[me as usize];
        if node.cur_epoch != self.epoch {
            node.cur_epoch = self.epoch;
            node.idx = 0;
        }
        let ready = |tag: u64| {
            let (e, id) = split_tag(tag);
            match self.plans.get(e as usize).and_then(|p| p.transfers.get(id as usize)) {
                Some(t) => {
                    t.from != TransferSource::Node(me)
                        || node.slots[t.block as usize].state(Ordering::SeqCst) == SlotState::Held
                }
                None => true,
            }
        };
        let (tag, retransmit) = if let Some(pos) = node.retransmit.iter().position(|&t| ready(t)) {
            (node.retransmit.remove(pos).expect("in the queue"), true)
        } else {
            let sends = &plan.nodes[me as usize].sends;
            while node.idx < sends.len() && self.dead[plan.transfers[sends[node.idx] as usize].to as usize] {
                node.idx += 1;
            }
            let Some(&id) = sends.get(node.idx) else { return false };
            let t = plan.transfers[id as usize];
            let tag = tag_of(self.epoch, t.id);
            if node.skips.remove(&tag) {
                node.idx += 1;
                return true;
            }
            let state = node.slots[t.block as usize].state(Ordering::SeqCst);
            if !matches!(state, SlotState::Held | SlotState::Landing) || !node.credits.remove(&tag) {
                return false;
            }
            node.idx += 1;
            (tag, false)
        };
        let (e, id) = split_tag(tag);
        let Some(t) = self.plans.get(e as usize).and_then(|p| p.transfers.get(id as usize)).copied() else {
            return true;
        };
        if t.from != TransferSource::Node(me) || self.dead[t.to as usize] {
            return true;
        }
        let state = self.nodes[me as usize].slots[t.block as usize].state(Ordering::SeqCst);
        if state != SlotState::Held && (retransmit || state != SlotState::Landing) {
            self.queue_retransmit(me, tag);
            return true;
        }
        let s =
            Send { tag, block: t.block, to: t.to, sent: 0, attempt: None, void: false, sent_bad: false, leased: None };
        self.nodes[me as usize].sending = Some(s);
        true
    }

    /// Node `k` dies; every survivor learns it and moves to the replanned epoch. False when the
    /// replan cannot be made (a block only `k` held): then `k` does not die.
    fn kill(&mut self, k: u32) -> Result<bool, String> {
        let n = self.nodes.len();
        let nb = self.nodes[0].slots.len();
        let mut holdings = Holdings::empty(n, nb);
        for (i, node) in self.nodes.iter().enumerate() {
            for b in 0..nb {
                if node.alive && i as u32 != k && node.slots[b].state(Ordering::SeqCst) == SlotState::Held {
                    holdings.set(i, b, 0.0);
                }
            }
        }
        let mut dead: Vec<u32> = (0..n as u32).filter(|&i| self.dead[i as usize]).collect();
        dead.push(k);
        let Ok(mut next) = self.plans[self.epoch as usize].replan(&holdings, &dead) else { return Ok(false) };
        self.note(format!("node {k} dies; epoch {}", self.epoch + 1));
        self.stats.kills += 1;
        next.epoch = self.epoch + 1;
        self.nodes[k as usize].alive = false;
        self.dead[k as usize] = true;
        self.links.retain(|&(a, b), _| a != k && b != k);
        for me in 0..n as u32 {
            if !self.nodes[me as usize].alive {
                continue;
            }
            // the reader of k's connection fails: a landing from k is void
            if let Some(l) = self.nodes[me as usize].landing.remove(&k) {
                if l.claimed && l.crc_ok.is_none() {
                    self.void(me, l.block)?;
                }
            }
            let node = &mut self.nodes[me as usize];
            if node.sending.as_ref().is_some_and(|s| s.to == k) {
                let s = node.sending.take().expect("checked");
                if s.leased.is_some() {
                    self.release(me, s.block)?;
                }
            }
            let node = &mut self.nodes[me as usize];
            for offers in node.offers.values_mut() {
                offers.retain(|o| o.0 != k);
            }
        }
        self.plans.push(next);
        self.epoch += 1;
        let e = self.epoch;
        for node in self.nodes.iter_mut().filter(|n| n.alive) {
            node.credits.retain(|&t| split_tag(t).0 >= e);
            node.skips.retain(|&t| split_tag(t).0 >= e);
            node.retransmit.clear();
        }
        for me in 0..n as u32 {
            self.advance_grants(me, None);
        }
        Ok(true)
    }

    fn check_held(&self) -> Result<(), String> {
        for (i, node) in self.nodes.iter().enumerate() {
            for b in 0..node.slots.len() {
                if node.slots[b].state(Ordering::SeqCst) == SlotState::Held {
                    let good = node.content[b].iter().all(|c| matches!(c, Some((Piece::Good, _))));
                    ensure!(good, "node {i} holds block {b} with bytes that are not the block's");
                }
            }
        }
        Ok(())
    }

    fn done(&self) -> bool {
        let nb = self.nodes[0].slots.len() as u32;
        self.plans[0].receivers.iter().all(|&r| !self.nodes[r as usize].alive || (0..nb).all(|b| self.held(r, b)))
    }

    fn run(&mut self) -> Result<(), String> {
        let n = self.nodes.len() as u32;
        let kill_at = self.rng.chance(300).then(|| self.rng.below(60));
        let mut steps = 0;
        while !self.done() {
            ensure!(steps < MAX_STEPS, "no end after {MAX_STEPS} steps");
            steps += 1;
            self.stats.steps += 1;
            if kill_at == Some(steps) {
                let k = 1 + self.rng.below(n as usize - 1) as u32;
                self.kill(k)?;
            }
            let links: Vec<(u32, u32)> = self.links.iter().filter(|(_, q)| !q.is_empty()).map(|(&k, _)| k).collect();
            let senders: Vec<u32> = (0..n).filter(|&i| self.nodes[i as usize].alive).collect();
            let checks: Vec<(u32, u32)> = (0..n)
                .flat_map(|me| {
                    let node = &self.nodes[me as usize];
                    node.landing
                        .iter()
                        .filter(|(_, l)| l.claimed && l.next == PIECES && l.crc_ok.is_none())
                        .map(move |(&from, _)| (me, from))
                })
                .collect();
            let pick = self.rng.below(links.len() + senders.len() + checks.len());
            let progressed = if pick < links.len() {
                let (from, to) = links[pick];
                self.deliver(from, to)?;
                true
            } else if pick < links.len() + senders.len() {
                self.sender_step(senders[pick - links.len()])?
            } else {
                let (me, from) = checks[pick - links.len() - senders.len()];
                self.verify(me, from)?;
                true
            };
            self.check_held()?;
            if !progressed && links.is_empty() {
                // nothing in flight: does any sender still have something to do?
                let mut any = false;
                for &s in &senders {
                    any |= self.sender_step(s)?;
                }
                ensure!(any || self.done(), "stuck: nothing in flight and no sender can move");
            }
        }
        Ok(())
    }
}

fn run_seed(seed: u64) -> Result<Stats, String> {
    let mut w = World::new(seed);
    match w.run() {
        Ok(()) => Ok(w.stats),
        Err(e) => {
            let trace: Vec<String> = w.trace.iter().cloned().collect();
            Err(format!("{e}\nlast steps:\n  {}", trace.join("\n  ")))
        }
    }
}

#[test]
fn seeded_interleavings_drops_and_corruption_keep_the_protocol_safe_and_live() {
    if let Some(seed) = std::env::var("FAASCALE_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        if let Err(e) = run_seed(seed) {
            panic!("seed {seed}: {e}");
        }
        return;
    }
    let seeds: u64 = std::env::var("FAASCALE_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let mut total = Stats::default();
    for seed in 0..seeds {
        match run_seed(seed) {
            Ok(s) => total += s,
            Err(e) => panic!(
                "seed {seed}: {e}\nrerun it alone: FAASCALE_SIM_SEED={seed} cargo test -p rdma --lib executor::sim"
            ),
        }
    }
    eprintln!("{seeds} seeds: {total:?}");
    if seeds >= 200 {
        // the seeds reach every path the test is about
        let t = total;
        assert!(t.kills > 0 && t.refetches > 0 && t.voids > 0 && t.drained > 0, "{t:?}");
        assert!(t.resets_by_last_lease > 0 && t.forwarded_while_landing > 0, "{t:?}");
    }
}
