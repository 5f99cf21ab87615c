//! The event loop of the simulator.
//!
//! Events, in time order (ties: in the order they were scheduled): a request arrives; the
//! autoscaler runs (every `tick_s`); a start-up group's set of servers changes (a pipeline
//! forms or ends, a node completes its load); a request finishes.
//!
//! Serving model. A *server* is a local instance (one node holding the whole model) or an
//! execute-while-load pipeline of S stages. A local instance has `max_batch` slots; a node
//! shared by several pipelines gives each an equal share of its `max_batch` slots, and a
//! pipeline's slots are the sum of its nodes' shares.
//!
//! Every node's GPU is one resource. A prefill runs stage by stage: stage k starts when stage
//! k − 1 has ended and its hidden state has crossed to stage k's node, and when that node's GPU
//! is free of earlier prefills (of any server using it); so a node carrying several stages, or
//! stages of several pipelines, runs them one after another. TTFT = wait + that schedule + the
//! LM head. Decoding then takes its tokens at the step time of the batch the request joined
//! (decode interference with later prefills is not modelled, for any system). A pipeline's
//! step splits its batch into m micro-batches (the best m in 1 ..= S) and is bounded by the
//! busiest GPU: max(one token's trip through all stages and hops, max over nodes of (servers
//! busy on the node) × m × the node's stages' work) — not S × one GPU's throughput.
//!
//! A NIC is one resource: each node's uplink and downlink are busy until the transfers of the
//! start-ups that use them end (`startup::plan_start` starts every link at that time, and picks
//! the multicast sources whose uplinks free soonest); a hidden-state hop into a node whose
//! downlink is still taking the multicast, or out of one whose uplink still forwards it, gets
//! half the link (fair sharing of the two flows), and its bytes push those links' busy times on.
//!
//! When a pipeline ends (a hand-off to local instances, or a reshape), its in-flight requests
//! move: each goes back to the head of the queue with the tokens it has generated and pays a
//! re-prefill of prompt + generated tokens on the server it goes to; its TTFT stays that of
//! its first token if it had one. The old pipeline's slots are gone with it.
//!
//! Routing (`SimConfig::pipeline_routing`): the head of the queue takes a free slot on a local
//! instance if there is one; otherwise it goes to a pipeline only if it is expected to finish
//! sooner there than on the local instance that will be ready soonest (a slot freed by a
//! request in service there, or a node still loading, counting its load), else it waits.

use super::cost::{decode_step_s, head_s, prefill_s, ModelSpec};
use super::stats::{percentile, Summary};
use super::trace::Request;
use super::{SimConfig, System};
use crate::autoscale::Autoscaler;
use crate::cluster::Cluster;
use crate::layout::ModelLayout;
use crate::multicast::Algo;
use crate::startup::{plan_start, StartPlan, StartRequest};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

#[derive(Clone, Copy, Debug)]
enum Kind {
    Arrival(usize),
    Tick,
    GroupChange(usize),
    Done { server: usize, req: usize, gen: u32 },
}

struct Ev {
    t: f64,
    seq: u64,
    kind: Kind,
}

impl PartialEq for Ev {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Ev {}
impl PartialOrd for Ev {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ev {
    // Reversed: BinaryHeap is a max-heap and we want the earliest event first.
    fn cmp(&self, o: &Self) -> Ordering {
        o.t.total_cmp(&self.t).then(o.seq.cmp(&self.seq))
    }
}

struct NodeSt {
    /// The model whose GPU copy this node holds or is receiving.
    model: Option<usize>,
    granted_s: f64,
    /// When it holds the whole model (∞ while unknown or not loading).
    complete_s: f64,
    group: usize,
    /// Models kept in host memory, least recently used first.
    warm: Vec<usize>,
    /// Until when each (model) must stay in host memory: it is a multicast source.
    pins: Vec<(usize, f64)>,
    /// Requests in service on servers using this node.
    busy: u32,
    idle_since_s: f64,
    /// When the GPU is free of the prefills scheduled on it.
    gpu_free_s: f64,
    /// When the NIC's uplink and downlink are free of start-up transfers.
    up_free_s: f64,
    down_free_s: f64,
}

struct Group {
    model: usize,
    start_s: f64,
    plan: StartPlan,
    /// Alive servers of this group.
    servers: Vec<usize>,
}

struct Server {
    model: usize,
    group: usize,
    stages: Vec<(u32, u32, u32)>,
    nodes: Vec<u32>,
    slots: u32,
    active: u32,
    /// The requests in service here.
    reqs: Vec<usize>,
    /// When its plan ends it (∞: a local instance, or a pipeline without end).
    until_s: f64,
    alive: bool,
}

#[derive(Clone, Copy, Default)]
struct Outcome {
    ttft_s: f64,
    tpot_s: f64,
    service_s: f64,
    done_s: f64,
    tokens: u32,
    done: bool,
    piped: bool,
    prefill_floor_s: f64,
    /// Bumped on every admission: a `Done` event of an earlier admission is stale.
    gen: u32,
    /// Tokens generated before the current admission (kept across a move).
    generated: u32,
    /// When the first token came (absolute); ∞ before.
    first_abs_s: f64,
    /// The current admission's decode: `base` tokens held at `decode_from_s`, one per `step_s`.
    decode_from_s: f64,
    step_s: f64,
    base: u32,
    /// Scheduled end of the current admission.
    done_at_s: f64,
    /// Times the request moved off an ending pipeline.
    moves: u32,
}

struct Sim<'a> {
    cfg: &'a SimConfig,
    reqs: &'a [Request],
    cluster: Cluster,
    layouts: Vec<ModelLayout>,
    heap: BinaryHeap<Ev>,
    seq: u64,
    nodes: Vec<NodeSt>,
    groups: Vec<Group>,
    servers: Vec<Server>,
    model_servers: Vec<Vec<usize>>,
    queues: Vec<VecDeque<usize>>,
    scalers: Vec<Autoscaler>,
    out: Vec<Outcome>,
    completed: usize,
    gpu_seconds: f64,
    allocated: usize,
    peak: usize,
    scale_outs: usize,
    started: usize,
    started_warm: usize,
    moved: usize,
    later: usize,
    /// The time of the event being handled.
    clock: f64,
}

/// Runs `cfg.system` on `reqs` (sorted by arrival; `model` indexes `cfg.models`).
pub fn simulate(cfg: &SimConfig, reqs: &[Request]) -> Result<Summary, String> {
    let wall = std::time::Instant::now();
    cfg.validate()?;
    for (i, r) in reqs.iter().enumerate() {
        if r.model >= cfg.models.len() {
            return Err(format!("request {i} names model {} of {}", r.model, cfg.models.len()));
        }
        if !(r.arrival_s.is_finite() && r.arrival_s >= 0.0) {
            return Err(format!("request {i}: arrival {} s", r.arrival_s));
        }
        if i > 0 && r.arrival_s < reqs[i - 1].arrival_s {
            return Err(format!("request {i} arrives before request {}: the trace must be sorted", i - 1));
        }
    }
    let mut cluster = Cluster::uniform(cfg.nodes, cfg.nic_bytes_per_s, cfg.remote_bytes_per_s);
    for n in &mut cluster.nodes {
        n.pcie_bps = cfg.pcie_bytes_per_s;
        n.ssd_bps = cfg.ssd_bytes_per_s;
        n.gpus = cfg.gpus_per_node;
        n.gpu_mem_bytes = cfg.gpu_mem_bytes.saturating_mul(u64::from(cfg.gpus_per_node));
        n.host_mem_bytes = cfg.host_mem_bytes;
    }
    let layouts = cfg
        .models
        .iter()
        .map(|m| crate::uniform_layout(m.name, m.model_bytes(), cfg.blocks, None).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let nm = cfg.models.len();
    let scalers = cfg
        .models
        .iter()
        .map(|m| {
            // Prior service time: a 1,024-token prompt and 128 output tokens at batch 1.
            let s = (prefill_s(m, m.layers, 1024) + 127.0 * decode_step_s(m, &cfg.gpu, m.layers, 1, 1024))
                / cfg.compute_speed;
            Autoscaler::new(cfg.autoscale.clone(), s)
        })
        .collect();
    let mut sim = Sim {
        cfg,
        reqs,
        cluster,
        layouts,
        heap: BinaryHeap::new(),
        seq: 0,
        nodes: (0..cfg.nodes)
            .map(|_| NodeSt {
                model: None,
                granted_s: 0.0,
                complete_s: f64::INFINITY,
                group: usize::MAX,
                warm: Vec::new(),
                pins: Vec::new(),
                busy: 0,
                idle_since_s: 0.0,
                gpu_free_s: 0.0,
                up_free_s: 0.0,
                down_free_s: 0.0,
            })
            .collect(),
        groups: Vec::new(),
        servers: Vec::new(),
        model_servers: vec![Vec::new(); nm],
        queues: vec![VecDeque::new(); nm],
        scalers,
        out: vec![Outcome::default(); reqs.len()],
        completed: 0,
        gpu_seconds: 0.0,
        allocated: 0,
        peak: 0,
        scale_outs: 0,
        started: 0,
        started_warm: 0,
        moved: 0,
        later: 0,
        clock: 0.0,
    };
    sim.init()?;
    sim.run()?;
    sim.summary(wall)
}

impl Sim<'_> {
    fn push(&mut self, t: f64, kind: Kind) {
        self.seq += 1;
        self.heap.push(Ev { t, seq: self.seq, kind });
    }

    fn init(&mut self) -> Result<(), String> {
        let nm = self.cfg.models.len();
        if self.cfg.system == System::AlwaysWarm {
            // Every node serves a model from time 0, models round-robin over nodes.
            for x in 0..self.cfg.nodes {
                let m = x % nm;
                self.grant(x, m, 0.0);
                self.nodes[x].complete_s = 0.0;
                let g = self.groups.len();
                self.groups.push(Group {
                    model: m,
                    start_s: 0.0,
                    plan: StartPlan {
                        receivers: vec![x as u32],
                        arrival: vec![vec![0.0; self.cfg.blocks]],
                        complete_s: vec![0.0],
                        sources: Vec::new(),
                        exec: None,
                        link_busy_s: Vec::new(),
                    },
                    servers: Vec::new(),
                });
                self.nodes[x].group = g;
                self.update_group(g, 0.0);
            }
        } else {
            let w = self.cfg.warm_at_start;
            for m in 0..nm {
                for j in 0..w {
                    let x = (m * w + j) % self.cfg.nodes;
                    self.touch_warm(x, m);
                }
            }
            self.push(0.0, Kind::Tick);
        }
        for i in 0..self.reqs.len() {
            self.push(self.reqs[i].arrival_s, Kind::Arrival(i));
        }
        Ok(())
    }

    fn run(&mut self) -> Result<(), String> {
        let last_arrival = self.reqs.last().map_or(0.0, |r| r.arrival_s);
        // Bound: every event is an arrival, a completion, a group change or a tick, and ticks stop
        // once all requests are done; a runaway loop would show as this many events.
        let max_events: u64 = 1_000_000_000;
        let mut events = 0u64;
        while let Some(ev) = self.heap.pop() {
            events += 1;
            if events > max_events {
                return Err(format!(
                    "more than {max_events} events: the simulation does not end (seed {})",
                    self.cfg.seed
                ));
            }
            let now = ev.t;
            self.clock = now;
            match ev.kind {
                Kind::Arrival(i) => {
                    let m = self.reqs[i].model;
                    self.queues[m].push_back(i);
                    self.scalers[m].on_arrival(now);
                    self.dispatch(m, now);
                }
                Kind::Tick => {
                    for m in 0..self.cfg.models.len() {
                        self.autoscale(m, now)?;
                    }
                    if self.completed < self.reqs.len() || now < last_arrival {
                        self.push(now + self.cfg.tick_s, Kind::Tick);
                    }
                }
                Kind::GroupChange(g) => {
                    self.update_group(g, now);
                    let m = self.groups[g].model;
                    self.dispatch(m, now);
                }
                Kind::Done { server, req, gen } => {
                    if self.out[req].gen != gen || self.out[req].done {
                        continue; // the request moved off this server
                    }
                    self.leave(server, req, now);
                    let m = self.servers[server].model;
                    let o = &mut self.out[req];
                    o.done = true;
                    o.done_s = now;
                    if o.tokens > 1 {
                        o.tpot_s = (now - o.first_abs_s) / f64::from(o.tokens - 1);
                    }
                    self.completed += 1;
                    let service = o.service_s;
                    self.scalers[m].on_completion(service);
                    self.dispatch(m, now);
                }
            }
        }
        if self.completed != self.reqs.len() {
            return Err(format!(
                "{} of {} requests never finished (seed {})",
                self.reqs.len() - self.completed,
                self.reqs.len(),
                self.cfg.seed
            ));
        }
        Ok(())
    }

    fn grant(&mut self, x: usize, m: usize, now: f64) {
        let n = &mut self.nodes[x];
        debug_assert!(n.model.is_none());
        n.model = Some(m);
        n.granted_s = now;
        n.busy = 0;
        n.idle_since_s = now;
        self.allocated += 1;
        self.peak = self.peak.max(self.allocated);
    }

    fn release(&mut self, x: usize, now: f64) {
        let m = self.nodes[x].model.take().expect("release of a free node");
        self.gpu_seconds += (now - self.nodes[x].granted_s) * f64::from(self.cfg.gpus_per_node);
        self.nodes[x].complete_s = f64::INFINITY;
        self.allocated -= 1;
        let g = self.nodes[x].group;
        let ids: Vec<usize> = self.groups[g].servers.clone();
        for s in ids {
            if self.servers[s].nodes.contains(&(x as u32)) {
                self.retire(s);
            }
        }
        // The GPU copy goes back to host memory: the node stays warm for this model.
        self.touch_warm(x, m);
    }

    fn retire(&mut self, s: usize) {
        let sv = &mut self.servers[s];
        sv.alive = false;
        let (m, g) = (sv.model, sv.group);
        self.model_servers[m].retain(|&y| y != s);
        self.groups[g].servers.retain(|&y| y != s);
    }

    /// Marks model `m` as most recently used in node `x`'s host memory, evicting least
    /// recently used models (not pinned as multicast sources) beyond the node's capacity.
    fn touch_warm(&mut self, x: usize, m: usize) {
        let cap = self.cfg.host_mem_bytes;
        let models = &self.cfg.models;
        let n = &mut self.nodes[x];
        n.warm.retain(|&y| y != m);
        if models[m].model_bytes() > cap {
            return;
        }
        n.warm.push(m);
        let mut used: u64 = n.warm.iter().map(|&y| models[y].model_bytes()).sum();
        let mut i = 0;
        while used > cap && i < n.warm.len() {
            let y = n.warm[i];
            if y != m && !n.pins.iter().any(|&(p, _)| p == y) {
                used -= models[y].model_bytes();
                n.warm.remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// Takes request `req` off server `s` (it finished or moves).
    fn leave(&mut self, s: usize, req: usize, now: f64) {
        let sv = &mut self.servers[s];
        sv.active -= 1;
        sv.reqs.retain(|&r| r != req);
        for &x in &sv.nodes {
            let n = &mut self.nodes[x as usize];
            n.busy -= 1;
            if n.busy == 0 {
                n.idle_since_s = now;
            }
        }
    }

    fn spec(&self, i: usize) -> &ModelSpec {
        &self.cfg.models[self.reqs[i].model]
    }

    /// Prompt and output tokens of request `i`, cut to the context.
    fn tokens(&self, i: usize) -> (u32, u32) {
        let r = &self.reqs[i];
        let spec = self.spec(i);
        let input = r.input_tokens.min(spec.max_context - 1).max(1);
        let output = r.output_tokens.min(spec.max_context - input).max(1);
        (input, output)
    }

    /// Layers of execution blocks `lo .. hi`.
    fn layers(&self, spec: &ModelSpec, lo: u32, hi: u32) -> f64 {
        f64::from(spec.layers) * f64::from(hi - lo) / self.cfg.blocks as f64
    }

    /// A hidden-state hop of `tokens` from node `from` into node `x` at `t`: half the link while
    /// the receiver's downlink still takes a multicast (or the sender's uplink still forwards
    /// one).
    fn hop_s(&self, spec: &ModelSpec, from: u32, x: u32, tokens: u32, t: f64) -> f64 {
        let bytes = f64::from(tokens) * spec.hidden_bytes_per_token() as f64;
        let rate = if self.nodes[x as usize].down_free_s > t || self.nodes[from as usize].up_free_s > t {
            self.cfg.nic_bytes_per_s / 2.0
        } else {
            self.cfg.nic_bytes_per_s
        };
        bytes / rate + self.cfg.latency_s
    }

    /// The prefill of `tokens` on server `s` from `now`: (first token time, per stage (node,
    /// GPU busy until)). Commits nothing.
    fn prefill_plan(&self, s: usize, spec: &ModelSpec, tokens: u32, now: f64) -> (f64, Vec<(u32, f64)>) {
        let speed = self.cfg.compute_speed;
        let per_layer = prefill_s(spec, 1, tokens) / speed;
        let mut t = now;
        let mut busy: Vec<(u32, f64)> = Vec::with_capacity(self.servers[s].stages.len());
        for (k, &(x, lo, hi)) in self.servers[s].stages.iter().enumerate() {
            if k > 0 {
                t += self.hop_s(spec, self.servers[s].stages[k - 1].0, x, tokens, t);
            }
            let free = busy.iter().rev().find(|b| b.0 == x).map_or(self.nodes[x as usize].gpu_free_s, |b| b.1);
            let end = t.max(free) + per_layer * self.layers(spec, lo, hi);
            busy.push((x, end));
            t = end;
        }
        (t + head_s(spec, &self.cfg.gpu) / speed, busy)
    }

    /// The decode step of server `s` with `batch` sequences of about `ctx` tokens each, at `now`
    /// (see the module comment: the best micro-batching, bounded by the busiest GPU).
    fn step_s(&self, s: usize, spec: &ModelSpec, batch: u32, ctx: u64, now: f64) -> f64 {
        let cfg = self.cfg;
        let sv = &self.servers[s];
        let head = head_s(spec, &cfg.gpu) / cfg.compute_speed;
        // Servers with requests in service on each node (this one counted once).
        let users: Vec<u32> = sv
            .nodes
            .iter()
            .map(|&x| {
                let others = self.groups[sv.group]
                    .servers
                    .iter()
                    .filter(|&&o| o != s && self.servers[o].active > 0 && self.servers[o].nodes.contains(&x))
                    .count() as u32;
                others + 1
            })
            .collect();
        let hops: f64 = sv.stages.windows(2).map(|w| self.hop_s(spec, w[0].0, w[1].0, 1, now)).sum();
        let stages: Vec<(u32, f64)> = sv.stages.iter().map(|&(x, lo, hi)| (x, self.layers(spec, lo, hi))).collect();
        let per_layer =
            |micro: u32| decode_step_s(spec, &cfg.gpu, 1, micro, u64::from(micro) * ctx) / cfg.compute_speed;
        pipeline_step_s(&stages, &sv.nodes, &users, batch, per_layer, hops, head)
    }

    /// When request `i` (with the tokens it has generated so far) would finish on server `s`
    /// admitted now. On a pipeline that ends before then (its plan says when), the request
    /// moves at the end with the tokens it has by then and finishes on the local instance
    /// ready soonest after it, re-prefill included.
    fn finish_on(&self, s: usize, i: usize, now: f64) -> f64 {
        let spec = self.spec(i);
        let (input, output) = self.tokens(i);
        let g = self.out[i].generated;
        let prompt = (input + g).min(spec.max_context);
        let (first, _) = self.prefill_plan(s, spec, prompt, now);
        let ctx = u64::from(input) + u64::from(output) / 2;
        let step = self.step_s(s, spec, self.servers[s].active + 1, ctx, now);
        let done = first + f64::from(output.saturating_sub(g + 1)) * step;
        let until = self.servers[s].until_s;
        if done <= until {
            return done;
        }
        let held = if until < first {
            g
        } else {
            (g + 1 + ((until - first) / step.max(1e-12)).floor() as u32).min(output.saturating_sub(1))
        };
        self.finish_local_from(i, held, until)
    }

    /// When request `i` would finish on the local instance of its model that will be ready
    /// soonest: a free slot now, a slot freed by a request in service, or a node still loading
    /// (at its load's end). ∞ when there is none.
    fn finish_local(&self, i: usize, now: f64) -> f64 {
        self.finish_local_from(i, self.out[i].generated, now)
    }

    /// `finish_local` for a request holding `held` generated tokens that can start no sooner
    /// than `from`.
    fn finish_local_from(&self, i: usize, held: u32, from: f64) -> f64 {
        let m = self.reqs[i].model;
        let spec = self.spec(i);
        let (input, output) = self.tokens(i);
        let prompt = (input + held).min(spec.max_context);
        let ctx = u64::from(input) + u64::from(output) / 2;
        let speed = self.cfg.compute_speed;
        let full = (prefill_s(spec, spec.layers, prompt) + head_s(spec, &self.cfg.gpu)) / speed;
        let steps = f64::from(output.saturating_sub(held + 1));
        let mut best = f64::INFINITY;
        for &s in &self.model_servers[m] {
            let sv = &self.servers[s];
            if sv.stages.len() != 1 {
                continue;
            }
            let slot = if sv.active < sv.slots {
                from
            } else {
                sv.reqs.iter().map(|&r| self.out[r].done_at_s).fold(f64::INFINITY, f64::min).max(from)
            };
            let x = sv.stages[0].0 as usize;
            let start = slot.max(self.nodes[x].gpu_free_s);
            let step = self.step_s(s, spec, sv.active.min(sv.slots - 1) + 1, ctx, from);
            best = best.min(start + full + steps * step);
        }
        let step1 = (decode_step_s(spec, &self.cfg.gpu, spec.layers, 1, ctx) + head_s(spec, &self.cfg.gpu)) / speed;
        for n in &self.nodes {
            if n.model == Some(m) && n.complete_s > self.clock && n.complete_s.is_finite() {
                best = best.min(n.complete_s.max(n.gpu_free_s).max(from) + full + steps * step1);
            }
        }
        best
    }

    fn dispatch(&mut self, m: usize, now: f64) {
        while let Some(&i) = self.queues[m].front() {
            let free = |sim: &Self, s: usize| sim.servers[s].active < sim.servers[s].slots;
            let occ = |sim: &Self, s: usize| f64::from(sim.servers[s].active) / f64::from(sim.servers[s].slots);
            let pick = if self.cfg.pipeline_routing {
                let local = self.model_servers[m]
                    .iter()
                    .copied()
                    .filter(|&s| self.servers[s].stages.len() == 1 && free(self, s))
                    .min_by(|&a, &b| occ(self, a).total_cmp(&occ(self, b)).then(a.cmp(&b)));
                match local {
                    Some(s) => Some(s),
                    None => {
                        let piped = self.model_servers[m]
                            .iter()
                            .copied()
                            .filter(|&s| self.servers[s].stages.len() > 1 && free(self, s))
                            .map(|s| (s, self.finish_on(s, i, now)))
                            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
                        piped.filter(|&(_, t)| t < self.finish_local(i, now)).map(|p| p.0)
                    }
                }
            } else {
                self.model_servers[m]
                    .iter()
                    .copied()
                    .filter(|&s| free(self, s))
                    .min_by(|&a, &b| occ(self, a).total_cmp(&occ(self, b)).then(a.cmp(&b)))
            };
            let Some(s) = pick else { break };
            // Expected finish there against waiting for a local instance (`pipeline_admissions_later`).
            if self.servers[s].stages.len() > 1 && self.finish_on(s, i, now) >= self.finish_local(i, now) {
                self.later += 1;
            }
            self.queues[m].pop_front();
            self.admit(i, s, now);
        }
    }

    /// Admits request `i` on server `s` at `now`; returns when it will finish.
    fn admit(&mut self, i: usize, s: usize, now: f64) -> f64 {
        let cfg = self.cfg;
        let spec = &cfg.models[self.reqs[i].model];
        let (input, output) = self.tokens(i);
        let g = self.out[i].generated;
        let prompt = (input + g).min(spec.max_context);
        let (first, busy) = self.prefill_plan(s, spec, prompt, now);
        for &(x, end) in &busy {
            let n = &mut self.nodes[x as usize];
            n.gpu_free_s = n.gpu_free_s.max(end);
        }
        // Hidden-state bytes through links still carrying a multicast push them on.
        let hop_s = f64::from(prompt) * spec.hidden_bytes_per_token() as f64 / cfg.nic_bytes_per_s;
        for k in 1..self.servers[s].stages.len() {
            let (from, to) = (self.servers[s].stages[k - 1].0 as usize, self.servers[s].stages[k].0 as usize);
            if self.nodes[to].down_free_s > now {
                self.nodes[to].down_free_s += hop_s;
            }
            if self.nodes[from].up_free_s > now {
                self.nodes[from].up_free_s += hop_s;
            }
        }
        let ctx = u64::from(input) + u64::from(output) / 2;
        let batch = self.servers[s].active + 1;
        let step = self.step_s(s, spec, batch, ctx, now);
        let stages = self.servers[s].stages.len();
        let sv = &mut self.servers[s];
        sv.active += 1;
        sv.reqs.push(i);
        for &x in &sv.nodes {
            self.nodes[x as usize].busy += 1;
        }
        let remaining = output.saturating_sub(g + 1);
        let done = first + f64::from(remaining) * step;
        let r = &self.reqs[i];
        let floor = prefill_s(spec, spec.layers, input) / cfg.compute_speed;
        let o = &mut self.out[i];
        if g == 0 {
            o.first_abs_s = first;
            o.ttft_s = first - r.arrival_s;
            o.piped = stages > 1;
        }
        o.tpot_s = f64::NAN;
        o.service_s = done - now;
        o.tokens = output;
        o.prefill_floor_s = floor;
        o.gen += 1;
        o.decode_from_s = first;
        o.step_s = step;
        o.base = g + 1;
        o.done_at_s = done;
        let gen = o.gen;
        self.push(done, Kind::Done { server: s, req: i, gen });
        done
    }

    /// Moves the requests in service on server `s` off it (it is ending): each keeps the tokens
    /// it has generated by `now` and waits at the head of its queue for a re-prefill.
    fn evict(&mut self, s: usize, now: f64, moved: &mut Vec<usize>) {
        for i in self.servers[s].reqs.clone() {
            self.leave(s, i, now);
            let o = &mut self.out[i];
            let held = if now < o.decode_from_s {
                o.base - 1 // still in its (re-)prefill
            } else {
                let more = if o.step_s > 0.0 { ((now - o.decode_from_s) / o.step_s).floor() as u32 } else { 0 };
                (o.base + more).min(o.tokens.saturating_sub(1))
            };
            o.generated = held;
            o.gen += 1;
            o.moves += 1;
            if held == 0 {
                o.first_abs_s = f64::INFINITY;
            }
            self.moved += 1;
            moved.push(i);
        }
    }

    /// Makes group `g`'s alive servers those its plan gives at `now`.
    fn update_group(&mut self, g: usize, now: f64) {
        let grp = &self.groups[g];
        let m = grp.model;
        let t = now - grp.start_s + 1e-12;
        let nb = self.cfg.blocks as u32;
        let mut want: Vec<Vec<(u32, u32, u32)>> = Vec::new();
        let mut ends: Vec<f64> = Vec::new();
        match &grp.plan.exec {
            Some(e) => {
                for p in e.pipelines.iter().filter(|p| p.valid_at(t)) {
                    want.push(p.stages.iter().map(|s| (s.node, s.blocks.start, s.blocks.end)).collect());
                    ends.push(p.valid_until_s.map_or(f64::INFINITY, |u| grp.start_s + u));
                }
            }
            None => {
                for (i, &r) in grp.plan.receivers.iter().enumerate() {
                    if grp.plan.complete_s[i] <= t {
                        want.push(vec![(r, 0, nb)]);
                        ends.push(f64::INFINITY);
                    }
                }
            }
        }
        // Only nodes still given to this model and this group take part.
        let keep: Vec<bool> = want
            .iter()
            .map(|st| {
                st.iter().all(|&(x, _, _)| self.nodes[x as usize].model == Some(m) && self.nodes[x as usize].group == g)
            })
            .collect();
        let mut k = 0;
        want.retain(|_| {
            k += 1;
            keep[k - 1]
        });
        let mut k = 0;
        ends.retain(|_| {
            k += 1;
            keep[k - 1]
        });
        let current: Vec<usize> = self.groups[g].servers.clone();
        let mut moved = Vec::new();
        for s in current {
            if !want.contains(&self.servers[s].stages) {
                self.evict(s, now, &mut moved);
                self.retire(s);
            }
        }
        for (st, &until_s) in want.iter().zip(&ends) {
            if !self.groups[g].servers.iter().any(|&s| &self.servers[s].stages == st) {
                let mut nodes: Vec<u32> = st.iter().map(|s| s.0).collect();
                nodes.sort_unstable();
                nodes.dedup();
                let id = self.servers.len();
                self.servers.push(Server {
                    model: m,
                    group: g,
                    stages: st.clone(),
                    nodes,
                    slots: 1,
                    active: 0,
                    reqs: Vec::new(),
                    until_s,
                    alive: true,
                });
                self.groups[g].servers.push(id);
                self.model_servers[m].push(id);
            }
        }
        // Moved requests go first, in the order they arrived.
        moved.sort_unstable();
        for &i in moved.iter().rev() {
            self.queues[m].push_front(i);
        }
        // Each node's slots are shared equally by the servers using it.
        let ids = self.groups[g].servers.clone();
        let mut users: Vec<(u32, u32)> = Vec::new();
        for &s in &ids {
            for &x in &self.servers[s].nodes {
                match users.iter_mut().find(|u| u.0 == x) {
                    Some(u) => u.1 += 1,
                    None => users.push((x, 1)),
                }
            }
        }
        for &s in &ids {
            let share: f64 = self.servers[s]
                .nodes
                .iter()
                .map(|x| f64::from(self.cfg.max_batch) / f64::from(users.iter().find(|u| u.0 == *x).map_or(1, |u| u.1)))
                .sum();
            self.servers[s].slots = (share.round() as u32).max(1);
        }
    }

    fn autoscale(&mut self, m: usize, now: f64) -> Result<(), String> {
        let queued = self.queues[m].len();
        let in_service: usize = self.model_servers[m].iter().map(|&s| self.servers[s].active as usize).sum();
        let have: Vec<usize> = (0..self.nodes.len()).filter(|&x| self.nodes[x].model == Some(m)).collect();
        let target = self.scalers[m].target_nodes(now, queued, in_service, self.cfg.max_batch as usize);
        if target > have.len() {
            self.scale_out(m, target - have.len(), now)?;
        } else if target < have.len() {
            let keep = self.cfg.autoscale.keep_alive_s;
            let mut idle: Vec<usize> = have
                .into_iter()
                .filter(|&x| {
                    let n = &self.nodes[x];
                    n.complete_s <= now && n.busy == 0 && n.idle_since_s + keep <= now
                })
                .collect();
            idle.sort_by(|&a, &b| self.nodes[a].idle_since_s.total_cmp(&self.nodes[b].idle_since_s).then(a.cmp(&b)));
            let surplus = self.nodes.iter().filter(|n| n.model == Some(m)).count() - target;
            for &x in idle.iter().take(surplus) {
                self.release(x, now);
            }
        }
        Ok(())
    }

    fn scale_out(&mut self, m: usize, want: usize, now: f64) -> Result<(), String> {
        for n in &mut self.nodes {
            n.pins.retain(|&(_, until)| until > now);
        }
        // Free nodes: those keeping m in host memory first, then empty ones, then the rest.
        let mut free: Vec<usize> = (0..self.nodes.len()).filter(|&x| self.nodes[x].model.is_none()).collect();
        free.sort_by_key(|&x| {
            let n = &self.nodes[x];
            (
                if n.warm.contains(&m) {
                    0
                } else if n.warm.is_empty() {
                    1
                } else {
                    2
                },
                x,
            )
        });
        free.truncate(want);
        if free.is_empty() {
            return Ok(());
        }
        let warm_rx: Vec<u32> = free.iter().filter(|&&x| self.nodes[x].warm.contains(&m)).map(|&x| x as u32).collect();
        let cold_rx: Vec<u32> = free.iter().filter(|&&x| !self.nodes[x].warm.contains(&m)).map(|&x| x as u32).collect();
        let hot: Vec<u32> = (0..self.nodes.len())
            .filter(|&x| self.nodes[x].model == Some(m) && self.nodes[x].complete_s <= now)
            .map(|x| x as u32)
            .collect();
        let warm: Vec<u32> = (0..self.nodes.len())
            .filter(|&x| {
                let n = &self.nodes[x];
                n.warm.contains(&m) && !free.contains(&x) && !hot.contains(&(x as u32))
            })
            .map(|x| x as u32)
            .collect();
        let algo = match self.cfg.system {
            System::Faascale => Algo::Faascale,
            System::Nccl => Algo::Nccl,
            System::Faasnet => Algo::Faasnet,
            System::Serverlessllm | System::AlwaysWarm => Algo::Serverlessllm,
        };
        let link_free: Vec<(f64, f64)> =
            self.nodes.iter().map(|n| ((n.up_free_s - now).max(0.0), (n.down_free_s - now).max(0.0))).collect();
        let plan = plan_start(&StartRequest {
            cluster: &self.cluster,
            layout: &self.layouts[m],
            hot: &hot,
            warm: &warm,
            warm_receivers: &warm_rx,
            cold_receivers: &cold_rx,
            algo,
            max_sources: self.cfg.max_sources,
            latency_s: self.cfg.latency_s,
            link_free_s: Some(&link_free),
        })
        .map_err(|e| format!("start-up of {} at {now:.3} s: {e} (seed {})", self.cfg.models[m].name, self.cfg.seed))?;
        for &(x, up, down) in &plan.link_busy_s {
            let n = &mut self.nodes[x as usize];
            n.up_free_s = n.up_free_s.max(now + up);
            n.down_free_s = n.down_free_s.max(now + down);
        }
        let g = self.groups.len();
        let until = now + plan.complete_s.iter().copied().fold(0.0, f64::max);
        for &s in &plan.sources {
            if !hot.contains(&s) {
                self.nodes[s as usize].pins.push((m, until));
            }
        }
        for (i, &r) in plan.receivers.iter().enumerate() {
            let x = r as usize;
            self.grant(x, m, now);
            self.nodes[x].group = g;
            self.nodes[x].complete_s = now + plan.complete_s[i];
            if warm_rx.contains(&r) {
                self.touch_warm(x, m);
            }
        }
        let mut times: Vec<f64> = plan.complete_s.clone();
        if let Some(e) = &plan.exec {
            for p in &e.pipelines {
                times.push(p.valid_from_s);
                times.extend(p.valid_until_s);
            }
        }
        times.sort_by(f64::total_cmp);
        times.dedup();
        self.scale_outs += 1;
        self.started += plan.receivers.len();
        self.started_warm += warm_rx.len();
        self.groups.push(Group { model: m, start_s: now, plan, servers: Vec::new() });
        for t in times {
            self.push(now + t, Kind::GroupChange(g));
        }
        Ok(())
    }

    fn summary(mut self, wall: std::time::Instant) -> Result<Summary, String> {
        let seed = self.cfg.seed;
        let first = self.reqs.first().map_or(0.0, |r| r.arrival_s);
        let end = self.out.iter().map(|o| o.done_s).fold(self.reqs.last().map_or(0.0, |r| r.arrival_s), f64::max);
        for x in 0..self.nodes.len() {
            if self.nodes[x].model.is_some() {
                self.gpu_seconds += (end - self.nodes[x].granted_s) * f64::from(self.cfg.gpus_per_node);
            }
            if self.nodes[x].busy != 0 {
                return Err(format!("node {x} still counts {} requests in service (seed {seed})", self.nodes[x].busy));
            }
        }
        // Safety checks on every request: done once, after it arrived, no faster than compute.
        let mut ttft = Vec::with_capacity(self.out.len());
        let mut tpot = Vec::with_capacity(self.out.len());
        let mut tokens = 0u64;
        let mut piped = 0;
        for (i, o) in self.out.iter().enumerate() {
            if o.moves > 0 && o.tokens > 1 && o.tpot_s.is_nan() {
                return Err(format!("request {i} moved but has no time per token (seed {seed})"));
            }
            if !o.done
                || o.ttft_s.is_nan()
                || o.ttft_s < o.prefill_floor_s - 1e-9
                || o.done_s + 1e-9 < self.reqs[i].arrival_s + o.ttft_s
            {
                return Err(format!(
                    "request {i}: done {}, TTFT {} s below its prefill {} s or finished before its first token (seed {seed})",
                    o.done, o.ttft_s, o.prefill_floor_s
                ));
            }
            ttft.push(o.ttft_s);
            if !o.tpot_s.is_nan() {
                tpot.push(o.tpot_s);
            }
            tokens += u64::from(o.tokens);
            piped += usize::from(o.piped);
        }
        ttft.sort_by(f64::total_cmp);
        tpot.sort_by(f64::total_cmp);
        let duration = (end - first).max(1e-9);
        let n = ttft.len().max(1) as f64;
        let slo = ttft.iter().filter(|&&t| t <= self.cfg.slo_ttft_s).count() as f64 / n;
        Ok(Summary {
            system: self.cfg.system.name().to_string(),
            seed,
            requests: self.reqs.len(),
            ttft_s_p50: percentile(&ttft, 50.0),
            ttft_s_p90: percentile(&ttft, 90.0),
            ttft_s_p99: percentile(&ttft, 99.0),
            ttft_s_mean: ttft.iter().sum::<f64>() / n,
            tpot_s_mean: tpot.iter().sum::<f64>() / tpot.len().max(1) as f64,
            tpot_s_p90: percentile(&tpot, 90.0),
            throughput_tokens_per_s: tokens as f64 / duration,
            slo_ttft_s: self.cfg.slo_ttft_s,
            slo_attainment: if self.reqs.is_empty() { 1.0 } else { slo },
            gpu_seconds: self.gpu_seconds,
            duration_s: end - first,
            scale_outs: self.scale_outs,
            nodes_started: self.started,
            nodes_started_warm: self.started_warm,
            peak_nodes: self.peak,
            served_by_pipelines: piped,
            moved_requests: self.moved,
            pipeline_admissions_later: self.later,
            sim_wall_s: wall.elapsed().as_secs_f64(),
            ttft_sorted_s: ttft,
        })
    }
}

/// One decode step of a pipeline (a local instance: one stage) with `batch` sequences, seconds.
/// `stages`: (node, layers) in order; `nodes`: its distinct nodes; `users[j]`: servers with
/// requests in service on `nodes[j]` (this one included); `per_layer(micro)`: one layer's step
/// for a micro-batch; `hops`: the hidden state's trip between stages; `head`: the LM head (on
/// the last stage). The batch is split into m micro-batches, the best m in 1 ..= stages: the
/// step is the larger of one token's trip through every stage and hop, and the busiest GPU's
/// work, m × (its stages' work) × its users (a GPU runs its stages one after another, so
/// 8 stages alternating over 2 nodes deliver what 2 GPUs do, not 8).
pub(crate) fn pipeline_step_s(
    stages: &[(u32, f64)],
    nodes: &[u32],
    users: &[u32],
    batch: u32,
    per_layer: impl Fn(u32) -> f64,
    hops: f64,
    head: f64,
) -> f64 {
    let mut best = f64::INFINITY;
    for m in 1..=(stages.len() as u32).min(batch.max(1)) {
        let micro = batch.div_ceil(m).max(1);
        let layer = per_layer(micro);
        let mut work = vec![0.0f64; nodes.len()];
        let mut trip = hops + head;
        for (k, &(x, layers)) in stages.iter().enumerate() {
            let t = layer * layers;
            trip += t;
            let j = nodes.iter().position(|&y| y == x).unwrap_or(0);
            work[j] += t + if k + 1 == stages.len() { head } else { 0.0 };
        }
        let busiest =
            work.iter().zip(users).map(|(w, &u)| w * f64::from(m) * f64::from(u.max(1))).fold(0.0f64, f64::max);
        best = best.min(trip.max(busiest));
    }
    best
}

#[cfg(test)]
mod tests {
    use super::pipeline_step_s;
    use crate::sim::cost::{decode_step_s, head_s, models, Gpu};

    /// A pipeline's decode throughput (sequences per second of step) never beats what its
    /// distinct GPUs deliver as local instances: 8 stages alternating over 2 nodes deliver at
    /// most 2 GPUs' worth, not 8; and a node shared with another busy pipeline halves it.
    #[test]
    fn busiest_gpu_bounds_a_pipeline() {
        let m = &models()[1];
        let layers = f64::from(m.layers);
        let head = head_s(m, &Gpu::H200);
        for batch in [1u32, 8, 32, 64] {
            let per_layer = |micro: u32| decode_step_s(m, &Gpu::H200, 1, micro, u64::from(micro) * 1024);
            let local = pipeline_step_s(&[(0, layers)], &[0], &[1], batch, per_layer, 0.0, head);
            let local_b = |b: u32| pipeline_step_s(&[(0, layers)], &[0], &[1], b, per_layer, 0.0, head);
            let stages: Vec<(u32, f64)> = (0..8).map(|k| (k % 2, layers / 8.0)).collect();
            let piped = pipeline_step_s(&stages, &[0, 1], &[1, 1], batch, per_layer, 0.0, head);
            // Two GPUs as local instances, the batch split between them.
            let two = f64::from(batch) / local_b(batch.div_ceil(2).max(1));
            assert!(f64::from(batch) / piped <= two * 1.0001, "batch {batch}: {piped} vs local {local}");
            // A token's trip is at least a local step over its share of the batch, and the
            // pipeline is never faster per token than one local instance with the whole batch
            // would be when that instance is not compute-bound at batch 1.
            assert!(piped >= local_b(batch.div_ceil(2).max(1)) * 0.9999);
            if batch == 1 {
                assert!(piped >= local * 0.9999);
            }
            let shared = pipeline_step_s(&stages, &[0, 1], &[2, 1], batch, per_layer, 0.0, head);
            assert!(shared >= piped);
        }
    }
}
