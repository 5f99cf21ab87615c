//! The multicast executor over verbs (`ExecConfig::verbs`), every node in this process, against
//! the libibverbs double (`mock_ibverbs/mock_ibverbs.c`): each transfer block one RDMA WRITE WITH
//! IMM into a block the receiver claimed first, control over the authenticated TCP connection.
//! The double is not a NIC: these say the protocol and the teardown are right, nothing about
//! timing on hardware.

use planner::{Algo, Cluster, Forwarding, MulticastRequest, PlanOptions};
use rdma::control::{pattern, Control};
use rdma::executor::{Event, ExecConfig, Executor, VerbsConfig};
use rdma::tcp::{self, Listener};
use rdma::verbs::{Access, Context, LinkConfig, MemoryKind, MemoryRegion, ProtectionDomain, VerbsLink};
use rdma::{OwnedRegion, Secret};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "mock_ibverbs/harness.rs"]
mod harness;
use harness::{assert_clean, counter, setup};

const SEED: u64 = 5;

fn layout_and_plan(nodes: usize, algo: Algo) -> (Arc<planner::ModelLayout>, planner::MulticastPlan) {
    let mut layout = planner::uniform_layout("m", 3 << 20, 3, Some(256 << 10)).unwrap();
    pattern::checksum_layout(SEED, &mut layout);
    let cluster = Cluster::uniform(nodes, 1e9, 1e9);
    let rcv: Vec<u32> = (1..nodes as u32).collect();
    let req = MulticastRequest { cluster: &cluster, layout: &layout, sources: &[0], receivers: &rcv };
    let opts = PlanOptions { forwarding: Forwarding::StoreAndForward, ..PlanOptions::default() };
    let plan = planner::plan_with(algo, &req, &opts).unwrap();
    (Arc::new(layout), plan)
}

/// Node `node`'s configuration (3 s timeout), over verbs unless `verbs` is `None`.
fn config(
    node: usize,
    layout: &Arc<planner::ModelLayout>,
    plan: &planner::MulticastPlan,
    peers: &[std::net::SocketAddr],
    region: &OwnedRegion,
    corrupt_transfers: Vec<u32>,
    verbs: Option<VerbsConfig>,
) -> ExecConfig {
    ExecConfig {
        node: node as u32,
        layout: layout.clone(),
        plan: plan.clone(),
        peers: peers.to_vec(),
        region: region.region().clone(),
        secret: Secret::new(vec![7; 32]).unwrap(),
        timeout_ms: 3000,
        corrupt_transfers,
        verbs,
    }
}

/// Waits (bounded) until the double says every verbs object is gone, then checks it: links,
/// regions, domains and contexts torn down, in an order the double accepts.
fn wait_released() {
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter("mock_live_objects") != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_clean();
}

struct Run {
    execs: Vec<Executor>,
    regions: Vec<OwnedRegion>,
    bytes: Vec<u8>,
    path: std::path::PathBuf,
}

/// Starts `nodes` executors over verbs (node `tcp_node`, if any, over TCP); node 0 serves from a
/// read-only mapped file, the others land into zeroed memory.
fn start(nodes: usize, algo: Algo, corrupt: Vec<u32>, tcp_node: Option<usize>) -> (Run, planner::MulticastPlan) {
    let secret = Secret::new(vec![7; 32]).unwrap();
    let (layout, plan) = layout_and_plan(nodes, algo);
    let end = layout.end_offset() as usize;
    let mut bytes = vec![0u8; end];
    pattern::fill(SEED, 0, &mut bytes);
    let path = std::env::temp_dir().join(format!("rdma-verbs-src-{}-{algo:?}-{nodes}", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let listeners: Vec<Listener> =
        (0..nodes).map(|_| Listener::bind("127.0.0.1:0".parse().unwrap(), secret.clone(), 3000).unwrap()).collect();
    let peers: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let mut regions = vec![OwnedRegion::map_file(&path).unwrap()];
    regions.extend((1..nodes).map(|_| OwnedRegion::zeroed(end).unwrap()));
    let mut execs = Vec::new();
    for (node, l) in listeners.into_iter().enumerate() {
        let corrupt = if node == 0 { corrupt.clone() } else { vec![] };
        let verbs = (tcp_node != Some(node)).then(VerbsConfig::default);
        let cfg = config(node, &layout, &plan, &peers, &regions[node], corrupt, verbs);
        execs.push(Executor::start(cfg, l).unwrap());
    }
    (Run { execs, regions, bytes, path }, plan)
}

impl Run {
    /// Waits for every receiver's `Done`; returns each one's refetch count.
    fn finish(&self) -> Vec<u32> {
        let mut refetched = Vec::new();
        for node in 1..self.execs.len() {
            loop {
                match self.execs[node].events().recv_timeout(Duration::from_secs(20)).unwrap() {
                    Event::Done { refetched: r } => {
                        refetched.push(r);
                        break;
                    }
                    Event::Held { .. } => {}
                    e => panic!("node {node}: {e:?}"),
                }
            }
            let got = self.execs[node].held_bytes(0, self.bytes.len() as u64).unwrap();
            assert!(got == &self.bytes[..], "node {node}: its region differs from the source");
        }
        refetched
    }

    /// Stops every executor and checks that every verbs object was released.
    fn stop(self) {
        let Run { execs, regions, path, .. } = self;
        drop(execs);
        wait_released();
        drop(regions);
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn binomial_pipelines_and_chains_over_verbs_land_every_block_verified() {
    let Some(_guard) = setup() else { return };
    for (nodes, algo) in [(5, Algo::Faascale), (4, Algo::Nccl), (6, Algo::Faasnet)] {
        let (writes, kib, errors) =
            (counter("mock_writes_delivered"), counter("mock_kib_moved"), counter("mock_error_completions"));
        let (run, plan) = start(nodes, algo, vec![], None);
        let subs: Vec<_> = run.execs.iter().map(|e| e.subscribe()).collect();
        for e in &run.execs {
            e.go();
        }
        assert_eq!(run.finish(), vec![0; nodes - 1], "{algo:?}: nothing refetched");
        for (node, s) in subs.iter().enumerate().skip(1) {
            let mut seen: Vec<u32> = s.try_iter().collect();
            seen.sort();
            assert_eq!(seen, (0..12).collect::<Vec<u32>>(), "{algo:?} node {node}: each block published once");
        }
        // every block went as one RDMA write per transfer of the plan, none over TCP, none failed
        assert_eq!(counter("mock_writes_delivered") - writes, plan.transfers.len() as i32, "{algo:?}");
        assert_eq!(counter("mock_kib_moved") - kib, (nodes as i32 - 1) * (3 << 10), "{algo:?}");
        assert_eq!(counter("mock_error_completions"), errors, "{algo:?}");
        run.stop();
    }
}

#[test]
fn a_corrupt_write_fails_its_check_and_is_written_again() {
    let Some(_guard) = setup() else { return };
    let (layout, plan) = layout_and_plan(3, Algo::Nccl);
    drop(layout);
    let t01 = plan.transfers.iter().find(|t| t.block == 0 && t.to == 1).unwrap().id;
    let writes = counter("mock_writes_delivered");
    let (run, _) = start(3, Algo::Nccl, vec![t01], None);
    for e in &run.execs {
        e.go();
    }
    // store-and-forward: the corrupt copy never leaves node 1, so only node 1 refetches
    assert_eq!(run.finish(), vec![1, 0]);
    assert_eq!(counter("mock_writes_delivered") - writes, plan.transfers.len() as i32 + 1, "one write again");
    run.stop();
}

#[test]
fn a_node_on_tcp_among_verbs_nodes_is_a_clear_error() {
    let Some(_guard) = setup() else { return };
    let (run, _) = start(2, Algo::Nccl, vec![], Some(1));
    for e in &run.execs {
        e.go();
    }
    let reason = loop {
        match run.execs[1].events().recv_timeout(Duration::from_secs(10)).unwrap() {
            Event::PeerDead { node: 0, reason } => break reason,
            Event::Held { .. } => {}
            e => panic!("{e:?}"),
        }
    };
    assert!(reason.contains("channel message"), "{reason}");
    run.stop();
}

/// A peer that writes a block it was not granted (and the receiver so never claimed) is cut off
/// and the block is not taken as held. (Its bytes did land, as RDMA writes do: only
/// authenticated peers get a link, and a claimed block is never written by anyone else.)
#[test]
fn a_write_that_was_not_granted_is_refused() {
    let Some(_guard) = setup() else { return };
    let secret = Secret::new(vec![7; 32]).unwrap();
    let (layout, plan) = layout_and_plan(2, Algo::Nccl);
    let l = Listener::bind("127.0.0.1:0".parse().unwrap(), secret.clone(), 3000).unwrap();
    let addr = l.local_addr().unwrap();
    let region = OwnedRegion::zeroed(layout.end_offset() as usize).unwrap();
    let peers = ["127.0.0.1:9".parse().unwrap(), addr];
    let exec =
        Executor::start(config(1, &layout, &plan, &peers, &region, vec![], Some(VerbsConfig::default())), l).unwrap();
    exec.go();
    // play node 0
    let mut conn = tcp::connect(addr, &secret, 3000).unwrap();
    conn.writer.control(&Control::Iam { node: 0 }).unwrap();
    let ctx = Context::open(None).unwrap();
    let pd = ProtectionDomain::new(&ctx).unwrap();
    let mut src = vec![0u8; layout.end_offset() as usize];
    pattern::fill(SEED, 0, &mut src);
    // SAFETY: `src` outlives the region (dropped after it below) and is not touched meanwhile.
    let mr = Arc::new(
        unsafe { MemoryRegion::register(&pd, src.as_mut_ptr(), src.len(), MemoryKind::Host, Access::REMOTE_WRITE) }
            .unwrap(),
    );
    let mut link = VerbsLink::connect(&mut conn, &pd, mr.clone(), LinkConfig::default()).unwrap();
    let last = layout.transfer_blocks.len() as u32 - 1;
    let t = plan.transfers.iter().find(|t| t.block == last).unwrap();
    let tb = layout.transfer_blocks[last as usize];
    // SAFETY: `src` stays registered and unwritten until the completion below.
    unsafe { link.write(&mr, tb.offset as usize, tb.len as u32, tb.offset, t.id) }.unwrap();
    let mut events = Vec::new();
    link.wait(&mut events, 3000).unwrap();
    let reason = match exec.events().recv_timeout(Duration::from_secs(10)).unwrap() {
        Event::PeerDead { node: 0, reason } => reason,
        e => panic!("{e:?}"),
    };
    assert!(reason.contains("did not grant"), "{reason}");
    assert!(!exec.holds(last), "an ungranted write is never held");
    drop(link);
    drop(mr);
    drop((pd, ctx));
    drop(src);
    drop(exec);
    wait_released();
}

/// Node 2 of a chain 0 → 1 → 2 → 3 never comes up. Node 1 reports it dead; node 3 had already
/// claimed blocks for node 2's writes (their grants waiting for its connection). The test plays
/// the coordinator: replan without node 2 from what the others hold. Node 3's claims for node 2
/// end, so the new plan's writes land, and everyone still alive completes verified.
#[test]
fn a_dead_sender_s_claims_end_and_a_replan_completes() {
    let Some(_guard) = setup() else { return };
    let secret = Secret::new(vec![7; 32]).unwrap();
    let (layout, plan) = layout_and_plan(4, Algo::Nccl);
    let end = layout.end_offset() as usize;
    let mut bytes = vec![0u8; end];
    pattern::fill(SEED, 0, &mut bytes);
    let listeners: Vec<Listener> =
        (0..4).map(|_| Listener::bind("127.0.0.1:0".parse().unwrap(), secret.clone(), 3000).unwrap()).collect();
    let peers: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let mut regions: Vec<OwnedRegion> = (0..4).map(|_| OwnedRegion::zeroed(end).unwrap()).collect();
    regions[0].fill(0, &bytes).unwrap();
    let mut execs: Vec<Option<Executor>> = Vec::new();
    for (node, l) in listeners.into_iter().enumerate() {
        if node == 2 {
            drop(l); // its port refuses connections
            execs.push(None);
            continue;
        }
        let cfg = config(node, &layout, &plan, &peers, &regions[node], vec![], Some(VerbsConfig::default()));
        execs.push(Some(Executor::start(cfg, l).unwrap()));
    }
    let live = |n: usize| execs[n].as_ref().unwrap();
    for n in [0, 1, 3] {
        live(n).go();
    }
    let mut done = [false; 4];
    loop {
        match live(1).events().recv_timeout(Duration::from_secs(10)).unwrap() {
            Event::PeerDead { node: 2, .. } => break,
            Event::Done { .. } => done[1] = true,
            Event::Held { .. } => {}
            e => panic!("{e:?}"),
        }
    }
    assert_eq!(live(3).held_count(), 0, "node 3's only sender is node 2");
    let nb = layout.transfer_blocks.len();
    let mut holdings = planner::Holdings::empty(4, nb);
    for n in [0, 1, 3] {
        for b in 0..nb {
            if live(n).holds(b as u32) {
                holdings.set(n, b, 0.0);
            }
        }
    }
    let next = plan.replan(&holdings, &[2]).unwrap();
    for n in [0, 1, 3] {
        live(n).replan(next.clone(), &[2]).unwrap();
    }
    for n in [1, 3] {
        while !done[n] {
            let e = live(n).events().recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| {
                let held: Vec<usize> = [0, 1, 3].iter().map(|&m| live(m).held_count()).collect();
                let missing: Vec<u32> = (0..nb as u32).filter(|&b| !live(n).holds(b)).collect();
                panic!("node {n} not done after 10 s: held by nodes 0, 1, 3: {held:?}; node {n} lacks {missing:?}")
            });
            match e {
                Event::Done { .. } => done[n] = true,
                Event::Held { .. } | Event::PeerDead { node: 2, .. } => {}
                e => panic!("node {n}: {e:?}"),
            }
        }
        assert!(live(n).held_bytes(0, end as u64).unwrap() == &bytes[..], "node {n}");
    }
    drop(execs);
    wait_released();
}
