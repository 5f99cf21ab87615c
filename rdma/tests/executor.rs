//! Executors in one process (threads, real sockets): subscribers see every block once, a source
//! serves from a memory-mapped file, and a peer that writes what the plan does not allow is cut off
//! with nothing written.

use planner::{Algo, Cluster, MulticastRequest};
use rdma::control::{pattern, Control};
use rdma::executor::{Event, ExecConfig, Executor, MODEL_REGION};
use rdma::tcp::{self, Listener};
use rdma::wire::WriteDesc;
use rdma::{OwnedRegion, Secret};
use std::sync::Arc;
use std::time::Duration;

const SEED: u64 = 3;

fn setup(nodes: usize) -> (Arc<planner::ModelLayout>, planner::MulticastPlan) {
    let mut layout = planner::uniform_layout("m", 2 << 20, 2, Some(256 << 10)).unwrap();
    pattern::checksum_layout(SEED, &mut layout);
    let cluster = Cluster::uniform(nodes, 1e9, 1e9);
    let rcv: Vec<u32> = (1..nodes as u32).collect();
    let plan = planner::plan(
        Algo::Nccl,
        &MulticastRequest { cluster: &cluster, layout: &layout, sources: &[0], receivers: &rcv },
    )
    .unwrap();
    (Arc::new(layout), plan)
}

#[test]
fn a_chain_from_a_mapped_file_reaches_every_subscriber_once() {
    let secret = Secret::new(vec![9; 32]).unwrap();
    let (layout, plan) = setup(3);
    let end = layout.end_offset() as usize;
    let mut bytes = vec![0u8; end];
    pattern::fill(SEED, 0, &mut bytes);
    let path = std::env::temp_dir().join(format!("rdma-exec-src-{}", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let listeners: Vec<Listener> =
        (0..3).map(|_| Listener::bind("127.0.0.1:0".parse().unwrap(), secret.clone(), 2000).unwrap()).collect();
    let peers: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let regions =
        [OwnedRegion::map_file(&path).unwrap(), OwnedRegion::zeroed(end).unwrap(), OwnedRegion::zeroed(end).unwrap()];
    let mut execs = Vec::new();
    for (node, l) in listeners.into_iter().enumerate() {
        let cfg = ExecConfig {
            node: node as u32,
            layout: layout.clone(),
            plan: plan.clone(),
            peers: peers.clone(),
            region: regions[node].region().clone(),
            secret: secret.clone(),
            timeout_ms: 2000,
            corrupt_transfers: vec![],
        };
        execs.push(Executor::start(cfg, l).unwrap());
    }
    let subs: Vec<_> = execs.iter().map(|e| e.subscribe()).collect();
    assert_eq!(subs[0].len(), layout.transfer_blocks.len(), "a source's subscriber sees every block at once");
    for e in &execs {
        e.go();
    }
    for node in 1..3 {
        loop {
            match execs[node].events().recv_timeout(Duration::from_secs(10)).unwrap() {
                Event::Done { refetched } => {
                    assert_eq!(refetched, 0);
                    break;
                }
                Event::Held { .. } => {}
                e => panic!("node {node}: {e:?}"),
            }
        }
        let mut seen: Vec<u32> = subs[node].try_iter().collect();
        seen.sort();
        assert_eq!(seen, (0..layout.transfer_blocks.len() as u32).collect::<Vec<_>>(), "each block once");
        // SAFETY: the multicast is over for this node; nothing writes its region.
        assert_eq!(unsafe { regions[node].bytes(0, end) }.unwrap(), &bytes[..]);
    }
    for mut e in execs {
        e.stop();
    }
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_write_the_plan_does_not_allow_is_refused_and_lands_nowhere() {
    let secret = Secret::new(vec![9; 32]).unwrap();
    let (layout, plan) = setup(2);
    let end = layout.end_offset() as usize;
    let l = Listener::bind("127.0.0.1:0".parse().unwrap(), secret.clone(), 2000).unwrap();
    let addr = l.local_addr().unwrap();
    let region = OwnedRegion::zeroed(end).unwrap();
    let exec = Executor::start(
        ExecConfig {
            node: 1,
            layout: layout.clone(),
            plan: plan.clone(),
            peers: vec!["127.0.0.1:9".parse().unwrap(), addr],
            region: region.region().clone(),
            secret: secret.clone(),
            timeout_ms: 2000,
            corrupt_transfers: vec![],
        },
        l,
    )
    .unwrap();
    exec.go();
    let tb = layout.transfer_blocks[0];
    // (offset, len) that differ from transfer 0's block: more than announced, elsewhere, past the end
    for (i, (offset, len)) in
        [(tb.offset, tb.len + 4096), (tb.offset + 4096, tb.len), (end as u64, tb.len)].into_iter().enumerate()
    {
        let mut c = tcp::connect(addr, &secret, 2000).unwrap();
        c.writer.control(&Control::Iam { node: 0 }).unwrap();
        let payload = vec![0xAB; len as usize];
        let _ = c.writer.write(WriteDesc { region: MODEL_REGION, offset, len, tag: 0 }, &payload);
        // the executor closes the connection with a reason (after granting transfer 0) and reports the peer once
        let got = loop {
            match c.reader.recv() {
                Ok(tcp::Incoming::Control(Control::Go { .. })) => continue,
                other => break other,
            }
        };
        assert!(matches!(got, Ok(tcp::Incoming::Close(ref r)) if r.contains("layout allows")), "{got:?}");
        if i == 0 {
            match exec.events().recv_timeout(Duration::from_secs(5)).unwrap() {
                Event::PeerDead { node: 0, reason } => assert!(reason.contains("layout allows"), "{reason}"),
                e => panic!("{e:?}"),
            }
        }
    }
    // SAFETY: no transfer is running.
    assert!(unsafe { region.bytes(0, end) }.unwrap().iter().all(|&b| b == 0), "nothing was written");
    assert_eq!(exec.held_count(), 0);
}
