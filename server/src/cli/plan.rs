//! `faascale plan --nodes N --sources K --model-bytes X --blocks B --link-gbps G --algo A`
//!
//! Plans a multicast of one model from K source nodes (0 .. K) to the other N − K nodes of a
//! cluster of identical nodes, evaluates it (event-driven link model, per-transfer latency) and
//! prints the times; `--svg` draws one row per node, each received transfer a bar.

use planner::{
    Algo, Cluster, Forwarding, GroupShape, ModelPlacement, MulticastRequest, PlanOptions, Tier, TransferSource,
};
use std::path::PathBuf;

/// Bound on nodes × transfer blocks, so a typo cannot exhaust memory.
const MAX_PLAN_TRANSFERS: u64 = 50_000_000;

#[derive(clap::Args)]
pub struct Args {
    /// Nodes in the cluster, sources included.
    #[arg(long)]
    nodes: usize,
    /// Nodes that already hold the model (nodes 0 .. K).
    #[arg(long, default_value_t = 1)]
    sources: usize,
    /// Model size in bytes.
    #[arg(long)]
    model_bytes: u64,
    /// Execution blocks (the model is cut into this many equal blocks).
    #[arg(long)]
    blocks: usize,
    /// NIC rate of every node, Gbit/s, each direction.
    #[arg(long, allow_hyphen_values = true)]
    link_gbps: f64,
    /// faascale, binomial, nccl, faasnet or serverlessllm.
    #[arg(long, default_value = "faascale")]
    algo: String,
    /// Transfer block size in bytes, a multiple of 4096 (default: planner::default_chunk_bytes;
    /// for nccl, NCCL's own broadcast chunk, planner::NCCL_CHUNK_BYTES = 512 KiB, each chunk's
    /// fixed cost being --latency-us / NCCL_STEPS since NCCL keeps 8 chunks in flight).
    #[arg(long)]
    chunk_bytes: Option<u64>,
    /// Fixed cost of each transfer, microseconds.
    #[arg(long, default_value_t = 10.0, allow_hyphen_values = true)]
    latency_us: f64,
    /// Plan and evaluate for a transport that forwards a block while it arrives, in pieces of
    /// this many bytes (cut-through); without it, store-and-forward (a block moves on only once
    /// it has all landed, as one RDMA WRITE per block does). faascale may then plan chains.
    #[arg(long)]
    piece_bytes: Option<u64>,
    /// serverlessllm: remote store rate, Gbit/s, shared by all loading nodes (default: --link-gbps).
    #[arg(long, allow_hyphen_values = true)]
    remote_gbps: Option<f64>,
    /// serverlessllm: every receiver has the model on a local SSD read at this rate, Gbit/s.
    #[arg(long, allow_hyphen_values = true)]
    ssd_gbps: Option<f64>,
    /// Print one line of JSON with the results.
    #[arg(long)]
    pub json: bool,
    /// Write a timeline: one row per node, one bar per transfer.
    #[arg(long)]
    svg: Option<PathBuf>,
}

fn rate(flag: &str, gbps: f64) -> Result<f64, String> {
    if gbps.is_finite() && gbps > 0.0 {
        Ok(gbps * 1e9 / 8.0)
    } else {
        Err(format!("{flag} {gbps}: must be a positive number of Gbit/s"))
    }
}

pub fn run(a: Args) -> Result<(), String> {
    let algo = Algo::parse(&a.algo).ok_or_else(|| {
        format!("--algo {}: unknown; known: faascale, binomial, nccl, faasnet, serverlessllm", a.algo)
    })?;
    if a.nodes == 0 {
        return Err("--nodes 0: need at least one node".into());
    }
    if a.sources == 0 {
        return Err("--sources 0: need at least one source".into());
    }
    if a.sources > a.nodes {
        return Err(format!("--sources {} is more than --nodes {}", a.sources, a.nodes));
    }
    if a.blocks == 0 {
        return Err("--blocks 0: need at least one execution block".into());
    }
    if a.model_bytes == 0 {
        return Err("--model-bytes 0: the model must have at least one byte".into());
    }
    let nic = rate("--link-gbps", a.link_gbps)?;
    let remote = rate("--remote-gbps", a.remote_gbps.unwrap_or(a.link_gbps))?;
    let ssd = a.ssd_gbps.map(|g| rate("--ssd-gbps", g)).transpose()?;
    if !(a.latency_us.is_finite() && a.latency_us >= 0.0) {
        return Err(format!("--latency-us {}: must be a number ≥ 0", a.latency_us));
    }
    let latency_s = a.latency_us * 1e-6;
    let forwarding = match a.piece_bytes {
        None => Forwarding::StoreAndForward,
        Some(0) => return Err("--piece-bytes 0: a piece needs at least one byte".into()),
        Some(p) => Forwarding::CutThrough { piece_bytes: p },
    };
    // NCCL's chain moves its own chunks with several in flight: a chunk's fixed cost overlaps.
    let (chunk_bytes, latency_s) = match (algo, a.chunk_bytes) {
        (Algo::Nccl, None) => (Some(planner::NCCL_CHUNK_BYTES), latency_s / f64::from(planner::NCCL_STEPS)),
        (_, c) => (c, latency_s),
    };
    let opts = PlanOptions { forwarding, latency_s };
    let layout = planner::uniform_layout("model", a.model_bytes, a.blocks, chunk_bytes)
        .map_err(|e| format!("--model-bytes/--blocks/--chunk-bytes: {e}"))?;
    let n_tb = layout.transfer_blocks.len() as u64;
    if (a.nodes as u64).saturating_mul(n_tb) > MAX_PLAN_TRANSFERS {
        return Err(format!(
            "{} nodes × {n_tb} transfer blocks is more than {MAX_PLAN_TRANSFERS} transfers; use larger --chunk-bytes",
            a.nodes
        ));
    }
    let mut cluster = Cluster::uniform(a.nodes, nic, remote);
    if let Some(ssd) = ssd {
        for node in &mut cluster.nodes {
            node.ssd_bps = ssd;
        }
        let tiers = (0..a.nodes).map(|i| vec![if i < a.sources { Tier::Gpu } else { Tier::Ssd }; a.blocks]).collect();
        cluster.models.push(ModelPlacement { model: "model".into(), tiers });
    }
    let sources: Vec<u32> = (0..a.sources as u32).collect();
    let receivers: Vec<u32> = (a.sources as u32..a.nodes as u32).collect();
    let t0 = std::time::Instant::now();
    let req = MulticastRequest { cluster: &cluster, layout: &layout, sources: &sources, receivers: &receivers };
    let plan = planner::plan_with(algo, &req, &opts).map_err(|e| e.to_string())?;
    let plan_ms = t0.elapsed().as_secs_f64() * 1e3;
    let ev = planner::evaluate_with(&plan, &cluster, latency_s, forwarding)?;
    let first_copy_bound = planner::first_copy_lower_bound_s(&plan, &cluster, latency_s)?;
    let group_shapes: Vec<GroupShape> = match algo {
        Algo::Faascale => planner::faascale_shapes(&req, &opts).into_iter().map(|s| s.0).collect(),
        _ => Vec::new(),
    };
    log::info!(
        "{}: {} nodes ({} sources), {} execution blocks, {n_tb} transfer blocks of {} bytes, {} transfers, planned in {plan_ms:.1} ms",
        algo.name(),
        a.nodes,
        a.sources,
        a.blocks,
        layout.transfer_blocks[0].len,
        plan.transfers.len()
    );
    if let Some(path) = &a.svg {
        std::fs::write(path, svg(&plan, &ev, a.nodes)).map_err(|e| format!("--svg {}: {e}", path.display()))?;
        log::info!("wrote {}", path.display());
    }
    let per_node: Vec<Option<f64>> = ev.per_node_complete_s.clone();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "algo": algo.name(), "nodes": a.nodes, "sources": a.sources, "receivers": receivers.len(),
                "model_bytes": layout.total_bytes, "exec_blocks": a.blocks, "transfer_blocks": n_tb,
                "chunk_bytes": layout.transfer_blocks[0].len, "link_gbps": a.link_gbps, "latency_s": a.latency_us * 1e-6, "chunk_latency_s": latency_s,
                "transfers": plan.transfers.len(), "plan_ms": plan_ms,
                "complete_s": ev.complete_s, "first_copy_s": ev.first_copy_s,
                "first_copy_lower_bound_s": first_copy_bound, "lower_bound_s": ev.lower_bound_s,
                "per_node_complete_s": per_node, "forwarding": forwarding, "group_shapes": group_shapes,
            })
        );
    } else {
        println!(
            "{}: complete {:.4} s (lower bound {:.4} s), first copy {:.4} s (lower bound {:.4} s, {:.2}×)",
            algo.name(),
            ev.complete_s,
            ev.lower_bound_s,
            ev.first_copy_s,
            first_copy_bound,
            ev.first_copy_s / first_copy_bound.max(1e-12)
        );
    }
    Ok(())
}

/// One row per node; each transfer a bar on its receiver's row, coloured by block, from start
/// to end; a tick on the sender's row marks network sends.
fn svg(plan: &planner::MulticastPlan, ev: &planner::Evaluation, nodes: usize) -> String {
    use std::fmt::Write;
    let (left, width, row) = (70.0, 1000.0, 14.0);
    let end = ev.transfer_times.iter().map(|t| t.1).fold(0.0f64, f64::max).max(1e-9);
    let height = row * nodes as f64 + 40.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="sans-serif" font-size="10">"#,
        left + width + 20.0
    );
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="12">{} multicast, {:.4} s (complete)</text>"#,
        plan.algo.name(),
        ev.complete_s
    );
    for i in 0..nodes {
        let y = 20.0 + row * i as f64;
        let _ = writeln!(s, r#"<text x="2" y="{}">node {i}</text>"#, y + row - 3.0);
    }
    let nb = plan.num_blocks().max(1) as f64;
    for (t, &(a, b)) in plan.transfers.iter().zip(&ev.transfer_times) {
        let x = left + a / end * width;
        let w = ((b - a) / end * width).max(0.5);
        let y = 20.0 + row * t.to as f64;
        let hue = (t.block as f64 / nb * 300.0) as u32;
        let from = match t.from {
            TransferSource::Node(x) => format!("node {x}"),
            other => format!("{other:?}"),
        };
        let _ = writeln!(
            s,
            r#"<rect x="{x:.2}" y="{:.1}" width="{w:.2}" height="{:.1}" fill="hsl({hue},70%,50%)"><title>block {} from {from}: {a:.6}–{b:.6} s</title></rect>"#,
            y + 1.0,
            row - 2.0,
            t.block
        );
    }
    s.push_str("</svg>\n");
    s
}
