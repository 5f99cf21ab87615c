//! `faascale bench multicast --nodes N --sources K --bytes BYTES --blocks B --algo A
//! [--chunk-bytes C] [--netns --link-mbit M] [--worker-cpu CORES] [--json]`
//!
//! Runs a real multicast: this binary starts N `faascale worker` processes, acts as the
//! coordinator (authenticated control connections, the planner's plan handed out), and the
//! workers move the model between each other over authenticated TCP, every transfer block's
//! crc32c checked. Nodes 0 .. K are sources (they fill their memory with a seeded pattern whose
//! checksums the coordinator computes); the others receive. Prints one line of JSON last.

use planner::{Algo, Cluster, Forwarding, GroupShape, MulticastRequest, PlanOptions};
use rdma::control::{pattern, Faults, Fill, Transport};
use rdma::coordinator::CoordinatorConfig;
use std::path::PathBuf;
use std::time::Duration;

/// Bound on nodes × transfer blocks (plan size and per-block control messages).
const MAX_TRANSFERS: u64 = 2_000_000;
/// Most worker processes one bench starts.
const MAX_NODES: usize = 64;
/// Bound on the model size one bench moves (each node holds a copy in memory).
const MAX_TOTAL_BYTES: u64 = 64 << 30;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Multicast a model from K sources to N − K receivers through real worker processes.
    ///
    /// `verified` in the result is true when every surviving receiver held every block with its
    /// checksum matched; receivers declared dead are listed in `dead` and not counted.
    Multicast(MulticastArgs),
    /// Load an OpenAI-compatible server with streamed completions; report tokens/s, TTFT, ITL.
    Serve(super::bench_serve::Args),
    /// Hand one decode step's hidden state between two stage processes on loopback, and time it.
    Hop(super::bench_hop::Args),
}

impl Args {
    pub fn json(&self) -> bool {
        match &self.what {
            What::Multicast(m) => m.json,
            What::Serve(s) => s.json,
            What::Hop(h) => h.json,
        }
    }
}

#[derive(clap::Args)]
struct MulticastArgs {
    /// Nodes (worker processes), sources included.
    #[arg(long)]
    nodes: usize,
    /// Nodes 0 .. K hold the model at the start.
    #[arg(long, default_value_t = 1)]
    sources: usize,
    /// Model size in bytes.
    #[arg(long)]
    bytes: u64,
    /// Execution blocks (the model is cut into this many equal blocks).
    #[arg(long)]
    blocks: usize,
    /// faascale, binomial, nccl or faasnet.
    #[arg(long, default_value = "faascale")]
    algo: String,
    /// What the faascale planner assumes of the transport: cut-through (what the executor does:
    /// a relay forwards a block while it arrives, in pieces of at least 64 KiB) or
    /// store-and-forward (as over RDMA WRITE per block; faascale then plans binomial pipelines).
    /// Default: cut-through over TCP, store-and-forward over verbs.
    #[arg(long)]
    plan_forwarding: Option<String>,
    /// How the workers move the bytes: tcp, or verbs (RDMA WRITE with immediate per transfer
    /// block; needs an RDMA device on every worker; never yet run on RDMA hardware).
    #[arg(long, default_value = "tcp")]
    transport: String,
    /// verbs: the RDMA device (default: the first one listed).
    #[arg(long)]
    verbs_device: Option<String>,
    /// verbs: the port, 1-based.
    #[arg(long, default_value_t = 1)]
    verbs_port: u8,
    /// Transfer block size in bytes, a multiple of 4096 (default: planner::default_chunk_bytes).
    #[arg(long)]
    chunk_bytes: Option<u64>,
    /// Run each worker in its own network namespace joined by shaped veth links (needs root).
    #[arg(long)]
    netns: bool,
    /// With --netns: every link's rate, Mbit/s each direction.
    #[arg(long)]
    link_mbit: Option<u32>,
    /// Run each worker in its own CPU cgroup with a quota of this many cores (a float, e.g. 0.3: each worker a
    /// node of fixed size; needs root and a cgroup hierarchy with the cpu controller). Default: no quota: this
    /// bench measures transfers, not compute (the serving benches default to 0.3).
    #[arg(long)]
    worker_cpu: Option<f64>,
    /// A peer silent this long is dead, milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// File holding the cluster secret (default: FAASCALE_CLUSTER_SECRET, else a fresh random one).
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// Seed of the model bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one line of JSON with the results.
    #[arg(long)]
    json: bool,
    /// Test hook: NODE:BLOCKS, that worker kills itself after receiving BLOCKS blocks.
    #[arg(long, hide = true)]
    fault_kill: Vec<String>,
    /// Test hook: NODE:BLOCKS, that worker stops (SIGSTOP, a silent peer) after BLOCKS blocks.
    #[arg(long, hide = true)]
    fault_stall: Vec<String>,
    /// Test hook: NODE:TRANSFER, that worker flips a bit of epoch-0 transfer TRANSFER once.
    #[arg(long, hide = true)]
    fault_corrupt: Vec<String>,
}

pub fn run(a: Args) -> Result<(), String> {
    match a.what {
        What::Multicast(m) => multicast(m),
        What::Serve(s) => super::bench_serve::run(s),
        What::Hop(h) => super::bench_hop::run(h),
    }
}

fn node_pair(flag: &str, s: &str, nodes: usize) -> Result<(usize, u32), String> {
    let (x, y) = s.split_once(':').ok_or_else(|| format!("{flag} {s}: expected NODE:COUNT"))?;
    let node: usize = x.parse().map_err(|e| format!("{flag} {s}: node: {e}"))?;
    let count: u32 = y.parse().map_err(|e| format!("{flag} {s}: count: {e}"))?;
    if node >= nodes {
        return Err(format!("{flag} {s}: node {node} does not exist (--nodes {nodes})"));
    }
    Ok((node, count))
}

/// Checks `--worker-cpu` before anything is started.
fn check_worker_cpu(worker_cpu: Option<f64>) -> Result<(), String> {
    match worker_cpu {
        Some(cores) => {
            rdma::testbed::Testbed::check_worker_cpu(cores).map(|_| ()).map_err(|e| format!("--worker-cpu: {e}"))
        }
        None => Ok(()),
    }
}

/// The workers as nodes 0 .. N of a test bed. With `--netns` (`options.link_mbit`): workers in namespaces
/// 0 .. N, the coordinator (this process's listener) in namespace N, every namespace on one bridge by a veth
/// shaped to M both ways. Without: loopback. With `--worker-cpu`, each worker in its node's CPU cgroup.
fn run_testbed(
    cmd: &rdma::local::WorkerCommand,
    secret: &rdma::Secret,
    cfg: CoordinatorConfig,
    nodes: usize,
    options: rdma::testbed::TestbedOptions,
) -> rdma::Result<rdma::coordinator::Report> {
    use rdma::testbed::Testbed;
    let tb_nodes = if options.link_mbit.is_some() { nodes + 1 } else { nodes };
    let tb = Testbed::with_options(tb_nodes, &options)
        .map_err(|e| rdma::Error::Multicast(format!("test bed (--netns/--worker-cpu): {e}")))?;
    let listener = match tb.namespace(nodes) {
        Some(ns) => {
            rdma::local::bind_in_netns(ns, std::net::SocketAddr::new(tb.addr(nodes), 0), secret, cfg.timeout_ms)?
        }
        None => rdma::tcp::Listener::bind(std::net::SocketAddr::new(tb.addr(0), 0), secret.clone(), cfg.timeout_ms)?,
    };
    let addr = listener.local_addr()?;
    log::info!(
        "test bed: {tb_nodes} nodes, links {}, worker CPU quota {}; coordinator at {addr}",
        options.link_mbit.map_or("loopback".to_string(), |m| format!("{m} Mbit/s")),
        options.worker_cpu.map_or("none".to_string(), |c| format!("{c} cores")),
    );
    let commands = (0..nodes)
        .map(|i| rdma::local::worker_command(tb.command(i, &cmd.exe), cmd, secret, addr, tb.addr(i)))
        .collect();
    let r = rdma::local::run_commands(&listener, commands, cfg);
    drop(listener);
    if let Err(e) = tb.close() {
        log::warn!("removing the test bed: {e}");
    }
    r
}

fn multicast(a: MulticastArgs) -> Result<(), String> {
    let algo = Algo::parse(&a.algo)
        .filter(|x| *x != Algo::Serverlessllm)
        .ok_or_else(|| format!("--algo {}: unknown; known: faascale, binomial, nccl, faasnet", a.algo))?;
    if a.nodes < 2 || a.nodes > MAX_NODES {
        return Err(format!("--nodes {}: need 2 ..= {MAX_NODES}", a.nodes));
    }
    if a.sources == 0 || a.sources >= a.nodes {
        return Err(format!("--sources {}: need 1 ..= --nodes − 1 = {}", a.sources, a.nodes - 1));
    }
    if a.blocks == 0 {
        return Err("--blocks 0: need at least one execution block".into());
    }
    let transport = match a.transport.as_str() {
        "tcp" => Transport::Tcp,
        "verbs" if a.verbs_port == 0 => return Err("--verbs-port 0: ports are numbered from 1".into()),
        "verbs" => Transport::Verbs { device: a.verbs_device.clone(), port: a.verbs_port },
        x => return Err(format!("--transport {x}: unknown; known: tcp, verbs")),
    };
    let plan_forwarding = a.plan_forwarding.clone().unwrap_or_else(|| {
        if transport == Transport::Tcp {
            "cut-through".into()
        } else {
            "store-and-forward".into()
        }
    });
    let forwarding = match plan_forwarding.as_str() {
        "cut-through" => Forwarding::CutThrough { piece_bytes: rdma::executor::FORWARD_MIN_BYTES as u64 },
        "store-and-forward" => Forwarding::StoreAndForward,
        x => return Err(format!("--plan-forwarding {x}: unknown; known: cut-through, store-and-forward")),
    };
    if a.bytes == 0 || a.bytes > MAX_TOTAL_BYTES {
        return Err(format!("--bytes {}: need 1 ..= {MAX_TOTAL_BYTES}", a.bytes));
    }
    if !(100..=3_600_000).contains(&a.timeout_ms) {
        return Err(format!("--timeout-ms {}: need 100 ..= 3600000", a.timeout_ms));
    }
    if a.link_mbit.is_some() != a.netns {
        return Err(
            "--netns and --link-mbit M go together: each worker in its own namespace, links shaped to M Mbit/s".into(),
        );
    }
    check_worker_cpu(a.worker_cpu)?;
    let mut layout = planner::uniform_layout("bench", a.bytes, a.blocks, a.chunk_bytes)
        .map_err(|e| format!("--bytes/--blocks/--chunk-bytes: {e}"))?;
    let n_tb = layout.transfer_blocks.len() as u64;
    if (a.nodes as u64).saturating_mul(n_tb) > MAX_TRANSFERS {
        return Err(format!(
            "{} nodes × {n_tb} transfer blocks is more than {MAX_TRANSFERS}; use larger --chunk-bytes",
            a.nodes
        ));
    }
    let mut faults = vec![Faults::default(); a.nodes];
    for s in &a.fault_kill {
        let (x, c) = node_pair("--fault-kill", s, a.nodes)?;
        faults[x].kill_after_blocks = Some(c);
    }
    for s in &a.fault_stall {
        let (x, c) = node_pair("--fault-stall", s, a.nodes)?;
        faults[x].stall_after_blocks = Some(c);
    }
    for s in &a.fault_corrupt {
        let (x, c) = node_pair("--fault-corrupt", s, a.nodes)?;
        faults[x].corrupt_transfers.push(c);
    }
    let secret = match (&a.secret_file, std::env::var_os(rdma::auth::SECRET_ENV)) {
        (Some(p), _) => rdma::Secret::from_file(p),
        (None, Some(_)) => rdma::Secret::from_env(),
        (None, None) => rdma::Secret::random(),
    }
    .map_err(|e| e.to_string())?;
    let t = std::time::Instant::now();
    pattern::checksum_layout(a.seed, &mut layout);
    log::info!("checksummed {} transfer blocks in {:.2} s", n_tb, t.elapsed().as_secs_f64());
    // Link rates only shape the plan's timing model; the algorithms above do not depend on them.
    let nic_bps = a.link_mbit.map_or(10e9 / 8.0, |m| m as f64 * 1e6 / 8.0);
    let cluster = Cluster::uniform(a.nodes, nic_bps, nic_bps);
    let sources: Vec<u32> = (0..a.sources as u32).collect();
    let receivers: Vec<u32> = (a.sources as u32..a.nodes as u32).collect();
    let opts = PlanOptions { forwarding, latency_s: planner::DEFAULT_LATENCY_S };
    let req = MulticastRequest { cluster: &cluster, layout: &layout, sources: &sources, receivers: &receivers };
    let plan = planner::plan_with(algo, &req, &opts).map_err(|e| e.to_string())?;
    let group_shapes: Vec<GroupShape> = match algo {
        Algo::Faascale => planner::faascale_shapes(&req, &opts).into_iter().map(|s| s.0).collect(),
        Algo::Nccl => vec![GroupShape::Chain; sources.len().min(receivers.len())],
        _ => Vec::new(),
    };
    log::info!("group shapes: {group_shapes:?} (planned for {forwarding:?})");
    log::info!(
        "{}: {} nodes ({} sources), {} transfer blocks of {} bytes, {} transfers",
        algo.name(),
        a.nodes,
        a.sources,
        n_tb,
        layout.transfer_blocks[0].len,
        plan.transfers.len()
    );
    let n_transfers = plan.transfers.len();
    let chunk = layout.transfer_blocks[0].len;
    let total = layout.total_bytes;
    let cfg = CoordinatorConfig {
        layout,
        plan,
        fill: Fill::Pattern { seed: a.seed },
        timeout_ms: a.timeout_ms,
        faults,
        join_timeout: Duration::from_secs(30),
        transport: transport.clone(),
        deadline: Duration::from_secs(3600),
    };
    let exe = std::env::current_exe().map_err(|e| format!("finding the faascale binary to start workers: {e}"))?;
    let cmd = rdma::local::WorkerCommand {
        exe,
        args: vec!["worker".into()],
        log: Some(if log::max_level() >= log::LevelFilter::Info { "warn".into() } else { "error".into() }),
    };
    let r = match (a.link_mbit, a.worker_cpu) {
        (None, None) => rdma::local::run(&cmd, &secret, cfg),
        (link_mbit, worker_cpu) => {
            run_testbed(&cmd, &secret, cfg, a.nodes, rdma::testbed::TestbedOptions { link_mbit, worker_cpu })
        }
    }
    .map_err(|e| e.to_string())?;
    if !r.verified {
        return Err(format!(
            "not every surviving receiver verified every block (dead nodes: {:?}, per-node completion: {:?})",
            r.dead, r.per_node_complete_s
        ));
    }
    let lower_bound_s = a.link_mbit.map(|m| a.bytes as f64 * 8.0 / (m as f64 * 1e6));
    let n_recv = receivers.len() - r.dead.iter().filter(|&&d| d as usize >= a.sources).count();
    let aggregate_gbps = if r.complete_s > 0.0 { n_recv as f64 * total as f64 * 8.0 / r.complete_s / 1e9 } else { 0.0 };
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "algo": algo.name(), "nodes": a.nodes, "sources": a.sources, "receivers": receivers.len(),
                "bytes": a.bytes, "model_bytes": total, "exec_blocks": a.blocks, "transfer_blocks": n_tb,
                "chunk_bytes": chunk, "transfers": n_transfers, "transport": a.transport,
                "netns": a.netns, "link_mbit": a.link_mbit, "worker_cpu": a.worker_cpu,
                "verified": r.verified, "complete_s": r.complete_s, "first_copy_s": r.first_copy_s,
                "lower_bound_s": lower_bound_s, "per_node_complete_s": r.per_node_complete_s,
                "aggregate_recv_gbps": aggregate_gbps, "dead": r.dead, "epochs": r.epochs,
                "refetched": r.refetched, "plan_forwarding": plan_forwarding, "group_shapes": group_shapes,
            })
        );
    } else {
        println!(
            "{}: {} → {} nodes, {} bytes: verified by every surviving receiver {} (dead: {:?}), complete {:.4} s, first copy {:.4} s{}, aggregate receive {:.2} Gbit/s",
            algo.name(),
            a.sources,
            receivers.len(),
            total,
            r.verified,
            r.dead,
            r.complete_s,
            r.first_copy_s,
            lower_bound_s.map_or(String::new(), |l| format!(", lower bound {l:.4} s")),
            aggregate_gbps
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_flags_name_the_flag_and_the_problem() {
        assert_eq!(node_pair("--fault-kill", "2:5", 4), Ok((2, 5)));
        let e = node_pair("--fault-kill", "7:5", 4).unwrap_err();
        assert!(e.contains("--fault-kill 7:5") && e.contains("does not exist"), "{e}");
        assert!(node_pair("--fault-stall", "x", 4).unwrap_err().contains("NODE:COUNT"));
        assert!(node_pair("--fault-corrupt", "1:-3", 4).unwrap_err().contains("count"));
    }

    #[test]
    fn worker_cpu_is_checked_before_anything_starts() {
        assert_eq!(check_worker_cpu(None), Ok(()));
        assert_eq!(check_worker_cpu(Some(0.01)), Ok(()));
        for bad in [0.0, -1.0, 1e9, f64::NAN] {
            let e = check_worker_cpu(Some(bad)).unwrap_err();
            assert!(e.starts_with("--worker-cpu: ") && e.contains("worker CPU quota"), "{e}");
        }
    }
}
