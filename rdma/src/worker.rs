//! A worker process's side of the control plane: join the coordinator, take the setup, fill or
//! allocate the model region, run the executor, report every verified block, follow replans,
//! stop on `Finish`.

use crate::auth::Secret;
use crate::control::{validate_setup, Control, Faults, Fill, Setup};
use crate::error::{Error, Result};
use crate::executor::{Event, ExecConfig, Executor};
use crate::region::OwnedRegion;
use crate::tcp::{self, Incoming, Listener};
use crossbeam::channel::{bounded, select, Receiver};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Bound on the control connection before the setup names the cluster's timeout.
pub const CONTROL_TIMEOUT_MS: u64 = 10_000;

/// How to reach the coordinator.
pub struct WorkerOptions {
    pub coordinator: SocketAddr,
    pub secret: Secret,
    /// Address the data listener binds (port chosen by the kernel).
    pub bind_ip: IpAddr,
}

/// Runs one worker until the coordinator says `Finish`.
pub fn run(opts: WorkerOptions) -> Result<()> {
    let mut listener = Listener::bind(SocketAddr::new(opts.bind_ip, 0), opts.secret.clone(), CONTROL_TIMEOUT_MS)?;
    let data_addr = listener.local_addr()?;
    let mut ctrl = tcp::connect(opts.coordinator, &opts.secret, CONTROL_TIMEOUT_MS)?;
    ctrl.writer.control(&Control::Join { data_addr: data_addr.to_string(), pid: std::process::id() })?;
    let setup = match ctrl.reader.recv()? {
        Incoming::Control(Control::Setup(s)) => *s,
        other => {
            return Err(Error::Protocol {
                peer: "coordinator".into(),
                reason: format!("expected setup, got {other:?}"),
            })
        }
    };
    if let Err(reason) = validate_setup(&setup) {
        let _ = ctrl.writer.control(&Control::Failed { reason: format!("bad setup: {reason}") });
        return Err(Error::Protocol { peer: "coordinator".into(), reason: format!("bad setup: {reason}") });
    }
    ctrl.set_timeout_ms(setup.timeout_ms)?;
    listener.set_timeout_ms(setup.timeout_ms);
    let node = setup.node;
    let result = prepare(&setup, listener);
    let (exec, _region) = match result {
        Ok(x) => x,
        Err(e) => {
            let _ = ctrl.writer.control(&Control::Failed { reason: e.to_string() });
            return Err(e);
        }
    };
    ctrl.writer.control(&Control::Ready)?;
    let (tx, rx) = bounded(1024);
    let mut reader = ctrl.reader;
    std::thread::Builder::new()
        .name("rdma-control".into())
        .spawn(move || loop {
            let m = reader.recv();
            let end = m.is_err() || matches!(m, Ok(Incoming::Close(_)));
            if tx.send(m).is_err() || end {
                return;
            }
        })
        .map_err(|e| Error::Process { op: "spawn control reader", err: e })?;
    let r = event_loop(node, &setup.faults, exec, &ctrl.writer, &rx);
    if let Err(e) = &r {
        let _ = ctrl.writer.control(&Control::Failed { reason: e.to_string() });
    }
    ctrl.writer.close("worker exits");
    r
}

/// Allocates (or maps, or fills) the region and starts the executor.
fn prepare(setup: &Setup, listener: Listener) -> Result<(Executor, OwnedRegion)> {
    // Refused here, before the region is made, when verbs is asked for and cannot run.
    let transport = crate::backend::select(&setup.transport)?;
    let layout = Arc::new(setup.layout.clone());
    let end = layout.end_offset() as usize;
    let me = setup.node as usize;
    let holds_any = (0..layout.transfer_blocks.len()).any(|b| setup.plan.initial.holds(me, b));
    let region = if holds_any {
        match &setup.fill {
            Fill::Pattern { seed } => {
                let mut r = OwnedRegion::zeroed(end)?;
                let start = layout.data_offset() as usize;
                let mut chunk = vec![0u8; (8 << 20).min(end - start)];
                let mut at = start;
                while at < end {
                    let n = chunk.len().min(end - at);
                    crate::control::pattern::fill(*seed, at as u64, &mut chunk[..n]);
                    r.fill(at, &chunk[..n])?;
                    at += n;
                }
                r
            }
            Fill::File { path } => {
                let r = OwnedRegion::map_file(std::path::Path::new(path))?;
                if r.region().len() < end {
                    return Err(Error::Region(format!(
                        "{path}: {} bytes, the layout ends at byte {end}",
                        r.region().len()
                    )));
                }
                r
            }
        }
    } else {
        let mut r = OwnedRegion::zeroed(end)?;
        // Touch every page now, so page faults are not counted in the transfer.
        let zeros = vec![0u8; (8 << 20).min(end)];
        let mut at = 0;
        while at < end {
            let n = zeros.len().min(end - at);
            r.fill(at, &zeros[..n])?;
            at += n;
        }
        r
    };
    let peers = setup
        .peers
        .iter()
        .map(|p| {
            p.parse::<SocketAddr>()
                .map_err(|e| Error::Protocol { peer: "coordinator".into(), reason: format!("peer address {p}: {e}") })
        })
        .collect::<Result<Vec<_>>>()?;
    let exec = Executor::start(
        ExecConfig {
            node: setup.node,
            layout,
            plan: setup.plan.clone(),
            peers,
            region: region.region().clone(),
            secret: listener.secret().clone(),
            timeout_ms: setup.timeout_ms,
            corrupt_transfers: setup.faults.corrupt_transfers.clone(),
            // as the coordinator said (TCP unless asked for verbs: `backend`)
            verbs: crate::executor::VerbsConfig::from_transport(&transport.transport),
        },
        listener,
    )?;
    Ok((exec, region))
}

fn event_loop(
    node: u32,
    faults: &Faults,
    mut exec: Executor,
    ctrl: &tcp::ConnWriter,
    rx: &Receiver<Result<Incoming>>,
) -> Result<()> {
    let mut got = 0u32;
    let events = exec.events().clone();
    loop {
        select! {
            recv(rx) -> m => {
                let m = m.map_err(|_| Error::Closed { peer: "coordinator".into(), during: "the multicast" })?;
                match m? {
                    Incoming::Control(Control::Start) => exec.go(),
                    Incoming::Control(Control::Replan { plan, dead }) => {
                        log::info!("node {node}: epoch {} without nodes {dead:?}", plan.epoch);
                        exec.replan(*plan, &dead)?;
                    }
                    Incoming::Control(Control::Finish) => {
                        exec.stop();
                        return Ok(());
                    }
                    Incoming::Control(Control::Failed { reason }) => {
                        exec.stop();
                        return Err(Error::Multicast(format!("the coordinator gave up: {reason}")));
                    }
                    Incoming::Close(reason) => {
                        return Err(Error::Closed { peer: format!("coordinator ({reason})"), during: "the multicast" })
                    }
                    other => {
                        return Err(Error::Protocol { peer: "coordinator".into(), reason: format!("unexpected {other:?}") })
                    }
                }
            }
            recv(events) -> e => {
                let Ok(e) = e else { return Err(Error::Multicast("the executor stopped".into())) };
                match e {
                    Event::Held { block } => {
                        ctrl.control(&Control::Holding { block })?;
                        got += 1;
                        if faults.kill_after_blocks == Some(got) {
                            log::warn!("node {node}: test hook: killing myself after {got} blocks");
                            // SAFETY: kill(2) on our own pid; nothing is dereferenced.
                            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
                        }
                        if faults.stall_after_blocks == Some(got) {
                            log::warn!("node {node}: test hook: stopping myself (silent peer) after {got} blocks");
                            // SAFETY: as above; the coordinator's owner kills the stopped process.
                            unsafe { libc::kill(libc::getpid(), libc::SIGSTOP) };
                        }
                    }
                    Event::Done { refetched } => ctrl.control(&Control::Done { refetched })?,
                    Event::PeerDead { node: x, reason } => ctrl.control(&Control::PeerDead { node: x, reason })?,
                }
            }
            default(Duration::from_secs(3600)) => {
                return Err(Error::Multicast("no word from the coordinator or the executor for an hour".into()))
            }
        }
    }
}
