//! Multi-process multicasts on loopback: real worker processes, authenticated connections,
//! checksums verified; and the fault paths (a receiver killed, bits flipped in flight, a silent peer).

use planner::{Algo, Cluster, MulticastRequest};
use rdma::control::{pattern, Faults, Fill};
use rdma::coordinator::{CoordinatorConfig, Report};
use rdma::local::{self, WorkerCommand};
use rdma::Secret;
use std::time::Duration;

fn run(
    algo: Algo,
    nodes: usize,
    sources: usize,
    bytes: u64,
    chunk: u64,
    faults: Vec<Faults>,
    timeout_ms: u64,
) -> rdma::Result<Report> {
    let mut layout = planner::uniform_layout("t", bytes, 4, Some(chunk)).unwrap();
    pattern::checksum_layout(11, &mut layout);
    let cluster = Cluster::uniform(nodes, 1e9, 1e9);
    let src: Vec<u32> = (0..sources as u32).collect();
    let rcv: Vec<u32> = (sources as u32..nodes as u32).collect();
    let plan =
        planner::plan(algo, &MulticastRequest { cluster: &cluster, layout: &layout, sources: &src, receivers: &rcv })
            .unwrap();
    let cfg = CoordinatorConfig {
        layout,
        plan,
        fill: Fill::Pattern { seed: 11 },
        timeout_ms,
        faults,
        join_timeout: Duration::from_secs(20),
        transport: Default::default(),
        deadline: Duration::from_secs(60),
    };
    let cmd = WorkerCommand { exe: env!("CARGO_BIN_EXE_rdma_worker").into(), args: vec![], log: None };
    local::run(&cmd, &Secret::random().unwrap(), cfg)
}

#[test]
fn one_source_four_receivers_every_algorithm_verified() {
    for algo in [Algo::Faascale, Algo::Binomial, Algo::Nccl, Algo::Faasnet] {
        let r = run(algo, 5, 1, 4 << 20, 256 << 10, vec![], 3000).unwrap();
        assert!(r.verified, "{algo:?}: {r:?}");
        assert!(r.dead.is_empty() && r.epochs == 1 && r.refetched == 0, "{algo:?}: {r:?}");
        assert!(r.per_node_complete_s.iter().all(|t| t.is_some()), "{r:?}");
        assert!(r.first_copy_s <= r.complete_s + 1e-9);
    }
}

#[test]
fn two_sources_eight_receivers() {
    let r = run(Algo::Faascale, 10, 2, 8 << 20, 256 << 10, vec![], 3000).unwrap();
    assert!(r.verified && r.dead.is_empty(), "{r:?}");
}

#[test]
fn a_receiver_killed_mid_multicast_does_not_stop_the_others() {
    // node 2 forwards in the binomial pipeline; it dies after receiving 5 of 32 blocks
    let mut faults = vec![Faults::default(); 5];
    faults[2].kill_after_blocks = Some(5);
    let r = run(Algo::Faascale, 5, 1, 8 << 20, 256 << 10, faults, 3000).unwrap();
    assert!(r.verified, "{r:?}");
    assert_eq!(r.dead, vec![2]);
    assert_eq!(r.epochs, 2, "one replan, and no replan for lack of progress: {r:?}");
    assert!(r.per_node_complete_s[2].is_none());
    assert!([1, 3, 4].iter().all(|&x| r.per_node_complete_s[x].is_some()), "{r:?}");
}

#[test]
fn bits_flipped_in_flight_are_detected_and_fetched_again() {
    let mut faults = vec![Faults::default(); 5];
    faults[0].corrupt_transfers = vec![0, 3];
    let r = run(Algo::Faascale, 5, 1, 4 << 20, 256 << 10, faults, 3000).unwrap();
    assert!(r.verified && r.dead.is_empty(), "{r:?}");
    assert!(r.per_node_complete_s.iter().all(|t| t.is_some()), "every receiver verified every block: {r:?}");
    // Exactly one refetch per corrupted transfer, cut-through or not: the receiver of each flipped
    // copy fails its check and asks again (counted). If it had already forwarded part of that copy
    // (cut-through), it declares the forward void (`Verdict { ok: false }`), and the nodes below it
    // drop it without counting it and get a verified copy later, so no further refetch is counted.
    assert_eq!(r.refetched, 2, "{r:?}");
}

#[test]
fn a_silent_peer_times_out_and_is_treated_as_dead() {
    let mut faults = vec![Faults::default(); 5];
    faults[1].stall_after_blocks = Some(3);
    let t0 = std::time::Instant::now();
    let r = run(Algo::Faascale, 5, 1, 8 << 20, 256 << 10, faults, 800).unwrap();
    assert!(r.verified, "{r:?}");
    assert_eq!(r.dead, vec![1]);
    assert!(t0.elapsed() < Duration::from_secs(20));
}

#[test]
fn with_every_receiver_dead_nothing_is_verified() {
    // the only receiver goes silent after its first block: no receiver survives to verify anything
    let mut faults = vec![Faults::default(); 2];
    faults[1].stall_after_blocks = Some(1);
    let r = run(Algo::Nccl, 2, 1, 1 << 20, 256 << 10, faults, 600).unwrap();
    assert!(!r.verified, "{r:?}");
    assert_eq!(r.dead, vec![1]);
}

#[test]
fn a_worker_without_the_secret_cannot_join() {
    // the coordinator's secret differs from the workers': nobody joins, the coordinator says so
    let mut layout = planner::uniform_layout("t", 1 << 20, 1, Some(256 << 10)).unwrap();
    pattern::checksum_layout(1, &mut layout);
    let cluster = Cluster::uniform(2, 1e9, 1e9);
    let plan = planner::plan(
        Algo::Nccl,
        &MulticastRequest { cluster: &cluster, layout: &layout, sources: &[0], receivers: &[1] },
    )
    .unwrap();
    let secret = Secret::random().unwrap();
    let listener = rdma::tcp::Listener::bind("127.0.0.1:0".parse().unwrap(), secret, 1000).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rdma_worker"))
        .args(["--coordinator", &addr.to_string()])
        .env(rdma::auth::SECRET_ENV, "a-different-secret-of-enough-length")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let cfg = CoordinatorConfig {
        layout,
        plan,
        fill: Fill::Pattern { seed: 1 },
        timeout_ms: 1000,
        faults: vec![],
        join_timeout: Duration::from_millis(1500),
        transport: Default::default(),
        deadline: Duration::from_secs(5),
    };
    let e = rdma::coordinator::run(&listener, cfg).unwrap_err().to_string();
    assert!(e.contains("0 of 2 workers joined"), "{e}");
    assert!(!child.wait().unwrap().success(), "the worker must fail its handshake");
}
