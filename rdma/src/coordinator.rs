//! The coordinator (the future manager's multicast role): admits workers over authenticated
//! control connections, hands out membership, the layout and the plan, starts epoch 0, collects
//! "block held" reports, and when a worker dies (closed, silent, reported dead by a peer) calls
//! the planner's `replan` on what the survivors hold and hands out the new epoch.
//!
//! Times are taken on the coordinator's clock, from the moment it sends `Start`: a block counts
//! for `first_copy_s` and a node for `per_node_complete_s` when its report arrives.

use crate::control::{Control, Faults, Fill, Setup};
use crate::error::{Error, Result};
use crate::tcp::{Conn, ConnWriter, Incoming, Listener};
use crossbeam::channel::{bounded, RecvTimeoutError};
use planner::{ModelLayout, MulticastPlan};
use serde::Serialize;
use std::time::{Duration, Instant};

/// Deaths reported within this window are handled by one replan.
const DEATH_WINDOW_MS: u64 = 50;
/// Most replans one multicast may take.
const MAX_REPLANS: u64 = 32;

pub struct CoordinatorConfig {
    pub layout: ModelLayout,
    pub plan: MulticastPlan,
    pub fill: Fill,
    /// A peer silent this long is dead.
    pub timeout_ms: u64,
    /// Test hooks, by node id (missing: none).
    pub faults: Vec<Faults>,
    /// Workers must join within this.
    pub join_timeout: Duration,
    /// The whole multicast must end within this.
    pub deadline: Duration,
    /// How the workers move the bytes.
    pub transport: crate::control::Transport,
}

/// What happened.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// At least one receiver survived, and every *surviving* receiver held every block with its
    /// checksum matched. Receivers declared dead (`dead`) are not counted: a run where some
    /// receivers died can still be `verified`; check `dead` as well.
    pub verified: bool,
    pub complete_s: f64,
    pub first_copy_s: f64,
    /// Sources: 0; dead nodes: null.
    pub per_node_complete_s: Vec<Option<f64>>,
    pub dead: Vec<u32>,
    pub epochs: u64,
    pub refetched: u32,
    /// Process id of each node.
    pub pids: Vec<u32>,
    pub model_bytes: u64,
    pub transfer_blocks: usize,
}

struct Worker {
    writer: ConnWriter,
    alive: bool,
    done: Option<f64>,
}

/// Admits `plan.num_nodes` workers on `listener` and runs the multicast to the end.
pub fn run(listener: &Listener, cfg: CoordinatorConfig) -> Result<Report> {
    crate::control::validate_plan(&cfg.plan, &cfg.layout).map_err(Error::Multicast)?;
    let n = cfg.plan.num_nodes;
    let nb = cfg.layout.transfer_blocks.len();
    // ---- admission
    listener.set_nonblocking(true)?;
    let join_deadline = Instant::now() + cfg.join_timeout;
    let mut conns: Vec<(Conn, String, u32)> = Vec::with_capacity(n);
    while conns.len() < n {
        if Instant::now() > join_deadline {
            return Err(Error::Multicast(format!(
                "only {} of {n} workers joined within {:?}",
                conns.len(),
                cfg.join_timeout
            )));
        }
        let s = match listener.accept_raw() {
            Ok(s) => s,
            Err(Error::Io { err, .. }) if err.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) => return Err(e),
        };
        let _ = s.set_nonblocking(false);
        let mut conn = match crate::tcp::accept_handshake(s, listener.secret(), cfg.timeout_ms) {
            Ok(c) => c,
            Err(e) => {
                log::warn!("coordinator: refused a connection: {e}");
                continue;
            }
        };
        match conn.reader.recv() {
            Ok(Incoming::Control(Control::Join { data_addr, pid })) => {
                if data_addr.parse::<std::net::SocketAddr>().is_err() {
                    conn.writer.close("bad data address");
                    continue;
                }
                conn.set_timeout_ms(cfg.timeout_ms)?;
                conns.push((conn, data_addr, pid));
            }
            other => {
                log::warn!("coordinator: {}: expected join, got {other:?}", conn.reader.peer());
                conn.writer.close("expected join");
            }
        }
    }
    listener.set_nonblocking(false)?;
    let peers: Vec<String> = conns.iter().map(|c| c.1.clone()).collect();
    let pids: Vec<u32> = conns.iter().map(|c| c.2).collect();
    // ---- setup
    let (tx, rx) = bounded::<(u32, Result<Incoming>)>(4 * n + 4 * nb + 1024);
    let mut workers = Vec::with_capacity(n);
    for (node, (conn, _, _)) in conns.into_iter().enumerate() {
        let setup = Setup {
            node: node as u32,
            peers: peers.clone(),
            layout: cfg.layout.clone(),
            plan: cfg.plan.clone(),
            fill: cfg.fill.clone(),
            timeout_ms: cfg.timeout_ms,
            faults: cfg.faults.get(node).cloned().unwrap_or_default(),
            transport: cfg.transport.clone(),
        };
        conn.writer.control(&Control::Setup(Box::new(setup)))?;
        workers.push(Worker { writer: conn.writer, alive: true, done: None });
        let tx = tx.clone();
        let mut r = conn.reader;
        std::thread::Builder::new()
            .name(format!("coord-{node}"))
            .spawn(move || loop {
                let m = r.recv();
                let end = m.is_err() || matches!(m, Ok(Incoming::Close(_)));
                if tx.send((node as u32, m)).is_err() || end {
                    return;
                }
            })
            .map_err(|e| Error::Process { op: "spawn coordinator reader", err: e })?;
    }
    drop(tx);
    let ready_deadline = Instant::now() + Duration::from_millis(cfg.timeout_ms.max(1000)) + cfg.join_timeout;
    let mut ready = vec![false; n];
    while ready.iter().any(|r| !r) {
        let left = ready_deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((x, Ok(Incoming::Control(Control::Ready)))) => ready[x as usize] = true,
            Ok((x, Ok(Incoming::Control(Control::Failed { reason })))) => {
                return Err(abort(&workers, format!("node {x} could not get ready: {reason}")))
            }
            Ok((x, Ok(other))) => return Err(abort(&workers, format!("node {x}: expected ready, got {other:?}"))),
            Ok((x, Err(e))) => return Err(abort(&workers, format!("node {x} before start: {e}"))),
            Err(_) => return Err(abort(&workers, "workers were not ready in time".into())),
        }
    }
    // ---- run
    let t0 = Instant::now();
    for w in &workers {
        w.writer.control(&Control::Start)?;
    }
    let mut holdings = cfg.plan.initial.clone();
    let receivers = cfg.plan.receivers.clone();
    let mut is_receiver = vec![false; n];
    for &r in &receivers {
        is_receiver[r as usize] = true;
    }
    let mut covered = vec![false; nb];
    let mut covered_count = 0usize;
    let mut first_copy_s = None;
    let mut plan = cfg.plan.clone();
    let mut pending_deaths: Option<Instant> = None;
    let mut refetched = 0u32;
    let mut last_progress = Instant::now();
    let deadline = t0 + cfg.deadline;
    let stall = Duration::from_millis(2 * cfg.timeout_ms + 500);
    let mut replans = 0u64;
    loop {
        let all_done = receivers.iter().all(|&r| !workers[r as usize].alive || workers[r as usize].done.is_some());
        if all_done && pending_deaths.is_none() {
            break;
        }
        if Instant::now() > deadline {
            return Err(abort(&workers, format!("the multicast did not finish within {:?}", cfg.deadline)));
        }
        let msg = rx.recv_timeout(Duration::from_millis(10));
        let now_s = t0.elapsed().as_secs_f64();
        match msg {
            Ok((x, m)) => {
                let xi = x as usize;
                if !workers[xi].alive {
                    continue;
                }
                match m {
                    Ok(Incoming::Control(Control::Holding { block })) => {
                        if block as usize >= nb {
                            kill(
                                &mut workers,
                                x,
                                format!("reported block {block}, the layout has {nb}"),
                                &mut pending_deaths,
                            );
                            continue;
                        }
                        last_progress = Instant::now();
                        if !holdings.holds(xi, block as usize) {
                            holdings.set(xi, block as usize, now_s);
                            if is_receiver[xi] && !covered[block as usize] {
                                covered[block as usize] = true;
                                covered_count += 1;
                                if covered_count == nb {
                                    first_copy_s = Some(now_s);
                                }
                            }
                        }
                    }
                    Ok(Incoming::Control(Control::Done { refetched: r })) => {
                        if !is_receiver[xi] || !holdings.complete(xi) {
                            kill(
                                &mut workers,
                                x,
                                "said done without reporting every block".into(),
                                &mut pending_deaths,
                            );
                            continue;
                        }
                        refetched += r;
                        workers[xi].done = Some(now_s);
                        last_progress = Instant::now();
                    }
                    Ok(Incoming::Control(Control::PeerDead { node, reason })) => {
                        if (node as usize) < n && workers[node as usize].alive {
                            kill(&mut workers, node, format!("reported by node {x}: {reason}"), &mut pending_deaths);
                        }
                    }
                    Ok(Incoming::Control(Control::Failed { reason })) => {
                        kill(&mut workers, x, format!("failed: {reason}"), &mut pending_deaths)
                    }
                    Ok(Incoming::Close(reason)) => {
                        kill(&mut workers, x, format!("closed: {reason}"), &mut pending_deaths)
                    }
                    Ok(other) => {
                        kill(&mut workers, x, format!("sent {other:?} during the multicast"), &mut pending_deaths)
                    }
                    Err(e) => kill(&mut workers, x, e.to_string(), &mut pending_deaths),
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err(abort(&workers, "every worker connection is gone".into()));
            }
        }
        let stalled = last_progress.elapsed() > stall;
        let deaths_due = pending_deaths.is_some_and(|t| t.elapsed() >= Duration::from_millis(DEATH_WINDOW_MS));
        if deaths_due || stalled {
            if replans >= MAX_REPLANS {
                return Err(abort(&workers, format!("{MAX_REPLANS} replans and still not complete")));
            }
            replans += 1;
            pending_deaths = None;
            last_progress = Instant::now();
            let dead: Vec<u32> = (0..n as u32).filter(|&x| !workers[x as usize].alive).collect();
            plan = match plan.replan(&holdings, &dead) {
                Ok(p) => p,
                Err(e) => return Err(abort(&workers, format!("replan without nodes {dead:?}: {e}"))),
            };
            log::warn!(
                "coordinator: epoch {} without nodes {dead:?}{}: {} transfers",
                plan.epoch,
                if stalled { " (no progress)" } else { "" },
                plan.transfers.len()
            );
            let msg = Control::Replan { plan: Box::new(plan.clone()), dead: dead.clone() };
            for x in 0..n {
                if workers[x].alive {
                    if let Err(e) = workers[x].writer.control(&msg) {
                        kill(&mut workers, x as u32, e.to_string(), &mut pending_deaths);
                    }
                }
            }
        }
    }
    for w in workers.iter().filter(|w| w.alive) {
        let _ = w.writer.control(&Control::Finish);
    }
    let per_node: Vec<Option<f64>> = (0..n)
        .map(|x| {
            if !workers[x].alive {
                None
            } else if is_receiver[x] {
                workers[x].done
            } else {
                Some(0.0)
            }
        })
        .collect();
    let verified = receivers.iter().any(|&r| workers[r as usize].alive)
        && receivers.iter().all(|&r| !workers[r as usize].alive || workers[r as usize].done.is_some());
    let last_done = receivers.iter().filter_map(|&r| workers[r as usize].done).fold(0.0f64, f64::max);
    Ok(Report {
        verified,
        complete_s: last_done,
        first_copy_s: first_copy_s.unwrap_or(last_done),
        per_node_complete_s: per_node,
        dead: (0..n as u32).filter(|&x| !workers[x as usize].alive).collect(),
        epochs: plan.epoch + 1,
        refetched,
        pids,
        model_bytes: cfg.layout.total_bytes,
        transfer_blocks: nb,
    })
}

fn kill(workers: &mut [Worker], x: u32, reason: String, pending: &mut Option<Instant>) {
    let w = &mut workers[x as usize];
    if !w.alive {
        return;
    }
    log::warn!("coordinator: node {x} is dead: {reason}");
    w.alive = false;
    let _ = w.writer.control(&Control::Failed { reason: format!("declared dead: {reason}") });
    w.writer.abort();
    pending.get_or_insert_with(Instant::now);
}

fn abort(workers: &[Worker], reason: String) -> Error {
    for w in workers {
        let _ = w.writer.control(&Control::Failed { reason: reason.clone() });
        w.writer.abort();
    }
    Error::Multicast(reason)
}
