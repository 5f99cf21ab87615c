//! Executors in one process (threads, real sockets): subscribers see every block once, a source
//! serves from a memory-mapped file, and a peer that writes what the plan does not allow is cut off
//! with nothing written. Cut-through: a relay forwards a block while it arrives; a corrupt copy it
//! forwarded is declared void, and the receiver gets a verified copy once the relay holds one.

use planner::{Algo, Cluster, MulticastRequest};
use rdma::control::{pattern, Control};
use rdma::executor::{Event, ExecConfig, Executor, FORWARD_MIN_BYTES, MODEL_REGION};
use rdma::region::Access;
use rdma::tcp::{self, Listener};
use rdma::wire::WriteDesc;
use rdma::{OwnedRegion, Secret};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
            verbs: None,
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
        assert_eq!(execs[node].held_bytes(0, end as u64).unwrap(), &bytes[..]);
    }
    for mut e in execs {
        e.stop();
    }
    std::fs::remove_file(&path).unwrap();
}

/// Node 1 of a two-node plan, running alone (node 0's address is a closed port): the test plays
/// node 0 against it. Returns the layout, the plan, node 1's region, its executor and address.
fn lone_receiver(
    secret: &Secret,
) -> (Arc<planner::ModelLayout>, planner::MulticastPlan, OwnedRegion, Executor, std::net::SocketAddr) {
    let (layout, plan) = setup(2);
    let l = Listener::bind("127.0.0.1:0".parse().unwrap(), secret.clone(), 2000).unwrap();
    let addr = l.local_addr().unwrap();
    let region = OwnedRegion::zeroed(layout.end_offset() as usize).unwrap();
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
            verbs: None,
        },
        l,
    )
    .unwrap();
    exec.go();
    (layout, plan, region, exec, addr)
}

#[test]
fn a_write_the_plan_does_not_allow_is_refused_and_lands_nowhere() {
    let secret = Secret::new(vec![9; 32]).unwrap();
    let (layout, _plan, region, exec, addr) = lone_receiver(&secret);
    let end = layout.end_offset() as usize;
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
    assert_eq!(exec.held_count(), 0);
    drop(exec);
    assert!(region.read(0, end).unwrap().iter().all(|&b| b == 0), "nothing was written");
}

/// The id of the transfer of `block` from `from` to `to` in `plan`.
fn transfer(plan: &planner::MulticastPlan, block: u32, from: u32, to: u32) -> u64 {
    plan.transfers
        .iter()
        .find(|t| t.block == block && t.from == planner::TransferSource::Node(from) && t.to == to)
        .unwrap_or_else(|| panic!("no transfer of block {block} from {from} to {to}"))
        .id as u64
}

/// Reads control messages until one `pick` accepts (pings are consumed by `recv`).
fn wait_for<T>(r: &mut tcp::ConnReader, what: &str, mut pick: impl FnMut(&Control) -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        assert!(t0.elapsed() < Duration::from_secs(10), "no {what} within 10 s");
        match r.recv() {
            Ok(tcp::Incoming::Control(c)) => {
                if let Some(x) = pick(&c) {
                    return x;
                }
            }
            other => panic!("waiting for {what}: {other:?}"),
        }
    }
}

fn wait_held(exec: &Executor, block: u32) {
    loop {
        match exec.events().recv_timeout(Duration::from_secs(10)).unwrap() {
            Event::Held { block: b } if b == block => return,
            Event::Held { .. } => {}
            e => panic!("{e:?}"),
        }
    }
}

#[test]
fn a_relay_forwards_while_the_block_arrives_and_a_void_copy_is_sent_again_once_verified() {
    // node 0 (this test, upstream) → node 1 (the executor under test, relay) → node 2 (this test)
    let secret = Secret::new(vec![9; 32]).unwrap();
    let (layout, plan) = setup(3);
    let end = layout.end_offset() as usize;
    let tb = layout.transfer_blocks[0];
    let len = tb.len as usize;
    assert!(len >= 2 * FORWARD_MIN_BYTES);
    let mut good = vec![0u8; len];
    pattern::fill(SEED, tb.offset, &mut good);
    let (t01, t12) = (transfer(&plan, 0, 0, 1), transfer(&plan, 0, 1, 2));
    let relay_l = Listener::bind("127.0.0.1:0".parse().unwrap(), secret.clone(), 2000).unwrap();
    let down_l = Listener::bind("127.0.0.1:0".parse().unwrap(), secret.clone(), 2000).unwrap();
    let relay_addr = relay_l.local_addr().unwrap();
    let region = OwnedRegion::zeroed(end).unwrap();
    let exec = Executor::start(
        ExecConfig {
            node: 1,
            layout: layout.clone(),
            plan: plan.clone(),
            peers: vec!["127.0.0.1:9".parse().unwrap(), relay_addr, down_l.local_addr().unwrap()],
            region: region.region().clone(),
            secret: secret.clone(),
            timeout_ms: 2000,
            corrupt_transfers: vec![],
            verbs: None,
        },
        relay_l,
    )
    .unwrap();
    exec.go();
    // The downstream: grants transfer t12, then reports (1) when at least FORWARD_MIN_BYTES of it
    // arrived, (2) the whole first copy and its verdict, (3) the copy sent again and its verdict.
    let (tx, rx) = crossbeam::channel::bounded::<(Vec<u8>, bool)>(4);
    let (first_tx, first_rx) = crossbeam::channel::bounded::<()>(1);
    let (nacked_tx, nacked_rx) = crossbeam::channel::bounded::<()>(1);
    let down = std::thread::spawn(move || {
        let mut c = down_l.accept().unwrap();
        assert!(matches!(c.reader.recv().unwrap(), tcp::Incoming::Control(Control::Iam { node: 1 })));
        c.writer.control(&Control::Go { tag: t12 }).unwrap();
        let buf = OwnedRegion::zeroed(end).unwrap();
        for round in 0..2 {
            let d = match c.reader.recv().unwrap() {
                tcp::Incoming::Write(d) => d,
                other => panic!("round {round}: {other:?}"),
            };
            assert_eq!((d.tag, d.offset, d.len), (t12, tb.offset, tb.len));
            let mut signalled = round > 0;
            let claim = buf.region().claim(MODEL_REGION, 0, end as u64, Access::Write).unwrap();
            let near_end = || {
                if !signalled {
                    signalled = true;
                    first_tx.send(()).unwrap();
                }
            };
            // SAFETY: this thread is the claim's only user.
            unsafe { c.reader.land_shared(&claim, len - FORWARD_MIN_BYTES, near_end, |_| {}) }.unwrap();
            drop(claim);
            let ok = wait_for(&mut c.reader, "a verdict", |m| match m {
                Control::Verdict { tag, ok } if *tag == t12 => Some(*ok),
                other => panic!("{other:?} where the verdict of {t12} belongs"),
            });
            tx.send((buf.read(tb.offset as usize, len).unwrap(), ok)).unwrap();
            if round == 0 {
                // what a receiver does with a void copy: ask again (the relay does not hold block 0 now)
                c.writer.control(&Control::Nack { tag: t12, reason: "void copy".into() }).unwrap();
                nacked_tx.send(()).unwrap();
            }
        }
    });
    // The upstream sends the first half of block 0 and waits: the relay must forward it now.
    let mut up = tcp::connect(relay_addr, &secret, 2000).unwrap();
    up.writer.control(&Control::Iam { node: 0 }).unwrap();
    wait_for(&mut up.reader, "the grant of t01", |m| matches!(m, Control::Go { tag } if *tag == t01).then_some(()));
    let desc = WriteDesc { region: MODEL_REGION, offset: tb.offset, len: tb.len, tag: t01 };
    let half = len / 2;
    {
        let mut ws = up.writer.write_stream(desc).unwrap();
        ws.send(&good[..half]).unwrap();
        first_rx.recv_timeout(Duration::from_secs(10)).expect("the relay forwards before the block is all there");
        assert!(!exec.holds(0), "forwarded before the relay holds (or could check) the block");
        // the rest, one bit flipped: the relay's checksum fails after it forwarded the first half
        let mut rest = good[half..].to_vec();
        rest[100] ^= 0x04;
        ws.send(&rest).unwrap();
        ws.finish().unwrap();
    }
    up.writer.control(&Control::Verdict { tag: t01, ok: true }).unwrap();
    wait_for(&mut up.reader, "the relay's nack", |m| {
        matches!(m, Control::Nack { tag, .. } if *tag == t01).then_some(())
    });
    let (copy, ok) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(!ok, "the relay declares the copy it forwarded void");
    assert_eq!(&copy[..FORWARD_MIN_BYTES], &good[..FORWARD_MIN_BYTES], "what was forwarded had landed");
    assert_ne!(crc32c::crc32c(&copy), tb.crc32c, "the downstream's own check fails too");
    assert!(!exec.holds(0), "a block whose checksum failed is not held");
    // The downstream asked again while the relay does not hold the block: that request waits.
    nacked_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(rx.try_recv().is_err(), "nothing is sent again from an unverified copy");
    up.writer.write(desc, &good).unwrap();
    up.writer.control(&Control::Verdict { tag: t01, ok: true }).unwrap();
    wait_held(&exec, 0);
    let (copy, ok) = rx.recv_timeout(Duration::from_secs(10)).expect("the request waited for the block, not dropped");
    assert!(ok);
    assert_eq!(copy, good);
    down.join().unwrap();
}

#[test]
fn a_corrupt_copy_stops_at_the_first_check_and_counts_once() {
    // a chain 0 → 1 → 2 → 3; the source flips a bit of its first transfer (block 0 to node 1).
    // Node 1 may forward that copy before its checksum fails; it then declares it void, so nodes
    // 2 and 3 drop it without counting it and get a verified copy later: exactly one refetch.
    let secret = Secret::new(vec![9; 32]).unwrap();
    let (layout, plan) = setup(4);
    let end = layout.end_offset() as usize;
    let mut bytes = vec![0u8; end];
    pattern::fill(SEED, 0, &mut bytes);
    let t01 = transfer(&plan, 0, 0, 1) as u32;
    let listeners: Vec<Listener> =
        (0..4).map(|_| Listener::bind("127.0.0.1:0".parse().unwrap(), secret.clone(), 2000).unwrap()).collect();
    let peers: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let mut regions: Vec<OwnedRegion> = (0..4).map(|_| OwnedRegion::zeroed(end).unwrap()).collect();
    regions[0].fill(0, &bytes).unwrap();
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
            corrupt_transfers: if node == 0 { vec![t01] } else { vec![] },
            verbs: None,
        };
        execs.push(Executor::start(cfg, l).unwrap());
    }
    for e in &execs {
        e.go();
    }
    let mut refetched = vec![];
    for (node, exec) in execs.iter().enumerate().skip(1) {
        loop {
            match exec.events().recv_timeout(Duration::from_secs(10)).unwrap() {
                Event::Done { refetched: r } => {
                    refetched.push(r);
                    break;
                }
                Event::Held { .. } => {}
                e => panic!("node {node}: {e:?}"),
            }
        }
        assert_eq!(exec.held_bytes(0, end as u64).unwrap(), &bytes[..], "node {node}");
    }
    assert_eq!(refetched, vec![1, 0, 0], "only node 1's own check counts");
}

#[test]
fn a_write_without_its_verdict_is_refused() {
    let secret = Secret::new(vec![9; 32]).unwrap();
    let (layout, plan, _region, exec, addr) = lone_receiver(&secret);
    let tb = layout.transfer_blocks[0];
    let tag = transfer(&plan, 0, 0, 1);
    let mut good = vec![0u8; tb.len as usize];
    pattern::fill(SEED, tb.offset, &mut good);
    let mut c = tcp::connect(addr, &secret, 2000).unwrap();
    c.writer.control(&Control::Iam { node: 0 }).unwrap();
    c.writer.write(WriteDesc { region: MODEL_REGION, offset: tb.offset, len: tb.len, tag }, &good).unwrap();
    c.writer.control(&Control::Skip { tag }).unwrap(); // not the write's verdict
    let got = loop {
        match c.reader.recv() {
            Ok(tcp::Incoming::Control(Control::Go { .. } | Control::Almost { .. })) => continue,
            other => break other,
        }
    };
    assert!(matches!(got, Ok(tcp::Incoming::Close(ref r)) if r.contains("verdict")), "{got:?}");
    loop {
        match exec.events().recv_timeout(Duration::from_secs(5)).unwrap() {
            Event::PeerDead { node: 0, reason } => {
                assert!(reason.contains("verdict"), "{reason}");
                break;
            }
            Event::Held { .. } => {}
            e => panic!("{e:?}"),
        }
    }
}
