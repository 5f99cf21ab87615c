//! The event loop of the simulator.
//!
//! Events, in time order (ties: in the order they were scheduled): a request arrives; the
//! autoscaler runs (every `tick_s`); a start-up group's set of servers changes (a pipeline
//! forms or ends, a node completes its load); a request finishes.
//!
//! Serving model. A *server* is a local instance (one node holding the whole model) or an
//! execute-while-load pipeline of S stages. A local instance has `max_batch` slots; a node
//! shared by several pipelines gives each an equal share of its `max_batch` slots, and a
//! pipeline's slots are the sum of its nodes' shares (several batches are in flight along it:
//! the 2D pipeline). A request takes a free slot (first come, first served, onto the server
//! with the lowest occupancy), then its prefill runs after the server's previous prefill
//! (prefills of one server are serialised; a pipeline overlaps them stage by stage, so its
//! bottleneck is the prefill's compute / S). TTFT = wait + prefill + the hops of the hidden
//! state between stages. Decoding then takes (output − 1) steps at the step time of the batch
//! the request joined (decode interference with later prefills is not modelled). A pipeline
//! that ends lets the requests it carries finish (in faascale they move to a local instance by
//! re-prefill, which costs about one prefill: not modelled).

use super::cost::{decode_step_s, head_s, prefill_s};
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
    Done { server: usize, req: usize },
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
    prefill_free_s: f64,
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
            let s = prefill_s(m, m.layers, 1024) + 127.0 * decode_step_s(m, &cfg.gpu, m.layers, 1, 1024);
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
                Kind::Done { server, req } => {
                    let s = &mut self.servers[server];
                    s.active -= 1;
                    let m = s.model;
                    for &x in &s.nodes.clone() {
                        let n = &mut self.nodes[x as usize];
                        n.busy -= 1;
                        if n.busy == 0 {
                            n.idle_since_s = now;
                        }
                    }
                    let o = &mut self.out[req];
                    o.done = true;
                    o.done_s = now;
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

    fn dispatch(&mut self, m: usize, now: f64) {
        while let Some(&i) = self.queues[m].front() {
            let best = self.model_servers[m]
                .iter()
                .copied()
                .filter(|&s| self.servers[s].active < self.servers[s].slots)
                .min_by(|&a, &b| {
                    let (sa, sb) = (&self.servers[a], &self.servers[b]);
                    let oa = f64::from(sa.active) / f64::from(sa.slots);
                    let ob = f64::from(sb.active) / f64::from(sb.slots);
                    oa.total_cmp(&ob).then(a.cmp(&b))
                });
            let Some(s) = best else { break };
            self.queues[m].pop_front();
            self.admit(i, s, now);
        }
    }

    fn admit(&mut self, i: usize, s: usize, now: f64) {
        let cfg = self.cfg;
        let r = &self.reqs[i];
        let spec = &cfg.models[r.model];
        let input = r.input_tokens.min(spec.max_context - 1).max(1);
        let output = r.output_tokens.min(spec.max_context - input).max(1);
        let sv = &mut self.servers[s];
        let stages = sv.stages.len() as u32;
        let hops = f64::from(stages - 1);
        let compute = prefill_s(spec, spec.layers, input) + head_s(spec, &cfg.gpu);
        let prefill = compute
            + hops * (f64::from(input) * spec.hidden_bytes_per_token() as f64 / cfg.nic_bytes_per_s + cfg.latency_s);
        let start = now.max(sv.prefill_free_s);
        sv.prefill_free_s = start + compute / f64::from(stages);
        sv.active += 1;
        let batch = sv.active.min(sv.slots);
        let micro = batch.div_ceil(stages).max(1);
        let ctx = u64::from(micro) * (u64::from(input) + u64::from(output) / 2);
        let step = decode_step_s(spec, &cfg.gpu, spec.layers, micro, ctx)
            + head_s(spec, &cfg.gpu)
            + hops * (spec.hidden_bytes_per_token() as f64 / cfg.nic_bytes_per_s + cfg.latency_s);
        let first = start + prefill;
        let done = first + f64::from(output - 1) * step;
        for &x in &sv.nodes {
            self.nodes[x as usize].busy += 1;
        }
        self.out[i] = Outcome {
            ttft_s: first - r.arrival_s,
            tpot_s: if output > 1 { step } else { f64::NAN },
            service_s: done - now,
            done_s: 0.0,
            tokens: output,
            done: false,
            piped: stages > 1,
            prefill_floor_s: prefill_s(spec, spec.layers, input),
        };
        self.push(done, Kind::Done { server: s, req: i });
    }

    /// Makes group `g`'s alive servers those its plan gives at `now`.
    fn update_group(&mut self, g: usize, now: f64) {
        let grp = &self.groups[g];
        let m = grp.model;
        let t = now - grp.start_s + 1e-12;
        let nb = self.cfg.blocks as u32;
        let mut want: Vec<Vec<(u32, u32, u32)>> = Vec::new();
        match &grp.plan.exec {
            Some(e) => {
                for p in e.pipelines.iter().filter(|p| p.valid_at(t)) {
                    want.push(p.stages.iter().map(|s| (s.node, s.blocks.start, s.blocks.end)).collect());
                }
            }
            None => {
                for (i, &r) in grp.plan.receivers.iter().enumerate() {
                    if grp.plan.complete_s[i] <= t {
                        want.push(vec![(r, 0, nb)]);
                    }
                }
            }
        }
        // Only nodes still given to this model and this group take part.
        want.retain(|st| {
            st.iter().all(|&(x, _, _)| self.nodes[x as usize].model == Some(m) && self.nodes[x as usize].group == g)
        });
        let current: Vec<usize> = self.groups[g].servers.clone();
        for s in current {
            if !want.contains(&self.servers[s].stages) {
                self.retire(s);
            }
        }
        for st in &want {
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
                    prefill_free_s: now,
                    alive: true,
                });
                self.groups[g].servers.push(id);
                self.model_servers[m].push(id);
            }
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
        })
        .map_err(|e| format!("start-up of {} at {now:.3} s: {e} (seed {})", self.cfg.models[m].name, self.cfg.seed))?;
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
            if !o.done || !(o.ttft_s >= o.prefill_floor_s - 1e-9) || o.done_s + 1e-9 < self.reqs[i].arrival_s + o.ttft_s
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
            sim_wall_s: wall.elapsed().as_secs_f64(),
            ttft_sorted_s: ttft,
        })
    }
}
