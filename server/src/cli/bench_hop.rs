//! `faascale bench hop [--hops N] [--warmup N] [--width D] [--rows N] [--json]`
//!
//! Two workers on idle loopback: this process plays stage i and starts a second `faascale`
//! process that plays stage i + 1, joined by a hidden-state link (`worker::link`: the cluster
//! secret's mutual handshake, MACed frames, credits). Each hop hands one decode step's hidden
//! state (by default SmolLM2-135M's: 1 row of width 576) from stage i to stage i + 1, which
//! sends a sampled token back over the same link (the return path), and the next hop starts when
//! it arrives. The stage i + 1 process runs no layers: it takes the argmax of the row it got and
//! its log-probability, so the figures are the data path's alone.
//!
//! - `hop_ms`: from just before stage i encodes the batch to stage i + 1 holding the decoded batch
//!   (encode, MAC, both sockets, the reader thread, decode, the queue); both ends stamp the
//!   system clock (one machine, one clock);
//! - `round_trip_ms`: from the same start to stage i holding the token message.
//!
//! Percentiles over `--hops` hops after `--warmup` unmeasured ones. Prints one line of JSON last
//! with `--json`.

use crate::worker::link::{Hop, Link, LinkConfig, LinkListener};
use pipeline::wire::{SampledToken, WireBatch};
use pipeline::LogitsRows;
use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The goal for `hop_ms_p50` (issue 13).
const TARGET_HOP_MS_P50: f64 = 1.0;
const MAX_HOPS: usize = 1_000_000;
/// Bound on the peer's report (a line of receive stamps).
const MAX_REPORT_BYTES: u64 = 64 << 20;

#[derive(clap::Args)]
pub struct Args {
    /// Measured hops.
    #[arg(long, default_value_t = 1000)]
    hops: usize,
    /// Unmeasured hops first.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// Hidden row width (SmolLM2-135M: 576).
    #[arg(long, default_value_t = 576)]
    width: usize,
    /// Rows per hop (a decode step of a batch of this many sequences).
    #[arg(long, default_value_t = 1)]
    rows: usize,
    /// Bound on every wait of the link, milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    #[arg(long)]
    pub json: bool,
    /// Internal: run as stage i + 1, connecting to this address.
    #[arg(long, hide = true)]
    peer: Option<SocketAddr>,
}

fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn link_config(a: &Args) -> LinkConfig {
    LinkConfig { timeout_ms: a.timeout_ms, ..LinkConfig::default() }
}

pub fn run(a: Args) -> Result<(), String> {
    if !(1..=MAX_HOPS).contains(&a.hops) || a.warmup > MAX_HOPS {
        return Err(format!("--hops {} / --warmup {}: need 1 ..= {MAX_HOPS} and 0 ..= {MAX_HOPS}", a.hops, a.warmup));
    }
    if !(1..=pipeline::wire::MAX_WIDTH).contains(&a.width) || a.rows == 0 {
        return Err(format!(
            "--width {} --rows {}: need a width 1 ..= {}, rows ≥ 1",
            a.width,
            a.rows,
            pipeline::wire::MAX_WIDTH
        ));
    }
    let bytes = pipeline::wire::batch_bytes(a.rows, a.width);
    if bytes > LinkConfig::default().max_frame_bytes {
        return Err(format!(
            "--rows {} --width {}: a {bytes}-byte batch is over the link's frame limit",
            a.rows, a.width
        ));
    }
    link_config(&a).validate().map_err(|e| format!("--timeout-ms: {e}"))?;
    match a.peer {
        Some(addr) => serve(&a, addr),
        None => drive(&a),
    }
}

/// Stage i + 1: takes each batch, stamps it, answers with a token; prints the stamps.
fn serve(a: &Args, addr: SocketAddr) -> Result<(), String> {
    let secret = rdma::Secret::from_env().map_err(|e| e.to_string())?;
    let link = Link::connect(addr, &secret, link_config(a)).map_err(|e| e.to_string())?;
    let total = a.warmup + a.hops;
    let mut stamps = Vec::with_capacity(total);
    for _ in 0..total {
        let b = match link.recv().map_err(|e| e.to_string())? {
            Hop::Batch(b) => b,
            Hop::Tokens { .. } => return Err("stage i + 1 got tokens, expected a batch".into()),
        };
        stamps.push(unix_ns());
        let tokens: Vec<SampledToken> =
            b.hidden.chunks(b.width).zip(&b.seq_ids).map(|(row, &seq_id)| sample(seq_id, row)).collect();
        link.send(&Hop::Tokens { micro_batch: b.micro_batch, tokens }).map_err(|e| e.to_string())?;
    }
    println!("{}", serde_json::json!({ "recv_unix_ns": stamps }));
    Ok(())
}

/// Greedy choice over a row and its log-probability.
fn sample(seq_id: u64, row: &[f32]) -> SampledToken {
    let token = pipeline::sampler::argmax(row);
    let max = row[token] as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    let logprob = if sum.is_finite() && sum >= 1.0 { (-sum.ln()) as f32 } else { 0.0 };
    SampledToken { seq_id, token: token as u32, logprob }
}

/// Stage i: starts stage i + 1, sends the hops, collects the figures.
fn drive(a: &Args) -> Result<(), String> {
    let secret = rdma::Secret::random().map_err(|e| e.to_string())?;
    let listener = LinkListener::bind("127.0.0.1:0".parse().expect("an address"), secret.clone(), link_config(a))
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| format!("finding this executable: {e}"))?;
    let mut child = Command::new(exe)
        .args(["bench", "hop", "--peer", &addr.to_string()])
        .args(["--hops", &a.hops.to_string(), "--warmup", &a.warmup.to_string()])
        .args(["--width", &a.width.to_string(), "--rows", &a.rows.to_string()])
        .args(["--timeout-ms", &a.timeout_ms.to_string()])
        .env(rdma::auth::SECRET_ENV, std::os::unix::ffi::OsStrExt::from_bytes(secret.expose()) as &std::ffi::OsStr)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting the stage i + 1 process: {e}"))?;
    let result = measure(a, &listener);
    let mut out = String::new();
    let read = child.stdout.take().map(|s| s.take(MAX_REPORT_BYTES).read_to_string(&mut out));
    let status = child.wait().map_err(|e| format!("waiting for the stage i + 1 process: {e}"));
    let (send_ns, rtt_ms, batch_bytes) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = child.kill();
            return Err(e);
        }
    };
    if let Some(Err(e)) = read {
        return Err(format!("reading the stage i + 1 process's report: {e}"));
    }
    let status = status?;
    if !status.success() {
        return Err(format!("the stage i + 1 process failed ({status})"));
    }
    let report: serde_json::Value = out
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or("the stage i + 1 process printed no report")?;
    let recv_ns: Vec<u64> = report["recv_unix_ns"]
        .as_array()
        .map(|v| v.iter().filter_map(|x| x.as_u64()).collect())
        .ok_or("the stage i + 1 report has no recv_unix_ns")?;
    if recv_ns.len() != send_ns.len() {
        return Err(format!("{} receive stamps for {} hops", recv_ns.len(), send_ns.len()));
    }
    let hop_ms: Vec<f64> =
        send_ns.iter().zip(&recv_ns).skip(a.warmup).map(|(&s, &r)| (r as f64 - s as f64) / 1e6).collect();
    let rtt_ms: Vec<f64> = rtt_ms[a.warmup..].to_vec();
    let (p50, p99) = (percentile(&hop_ms, 0.50), percentile(&hop_ms, 0.99));
    let (r50, r99) = (percentile(&rtt_ms, 0.50), percentile(&rtt_ms, 0.99));
    let json = serde_json::json!({
        "hops": a.hops,
        "warmup": a.warmup,
        "rows": a.rows,
        "width": a.width,
        "batch_bytes": batch_bytes,
        "hop_ms_p50": p50,
        "hop_ms_p99": p99,
        "hop_ms_max": hop_ms.iter().copied().fold(f64::MIN, f64::max),
        "round_trip_ms_p50": r50,
        "round_trip_ms_p99": r99,
        "target_hop_ms_p50": TARGET_HOP_MS_P50,
        "meets_target": p50 < TARGET_HOP_MS_P50,
    });
    if a.json {
        println!("{json}");
    } else {
        println!(
            "{} hops of {} x {} hidden values ({batch_bytes}-byte batches) between two processes on loopback:\n  \
             hop         p50 {p50:.3} ms  p99 {p99:.3} ms   (target p50 < {TARGET_HOP_MS_P50} ms)\n  \
             round trip  p50 {r50:.3} ms  p99 {r99:.3} ms",
            a.hops, a.rows, a.width
        );
    }
    Ok(())
}

/// Runs the hops; returns each hop's send stamp (unix ns), round trip (ms), and the batch size.
fn measure(a: &Args, listener: &LinkListener) -> Result<(Vec<u64>, Vec<f64>, usize), String> {
    let link = listener.accept().map_err(|e| format!("waiting for the stage i + 1 process: {e}"))?;
    log::info!("bench hop: link to {} up", link.peer());
    // A hidden state's values do not change what the link does with them; a seeded spread of
    // magnitudes like a residual stream's.
    let mut rng = pipeline::sampler::Rng::new(576);
    let hidden: Vec<f32> = (0..a.rows * a.width).map(|_| (rng.next_f64() as f32 - 0.5) * 8.0).collect();
    let total = a.warmup + a.hops;
    let (mut send_ns, mut rtt_ms) = (Vec::with_capacity(total), Vec::with_capacity(total));
    let mut batch_bytes = 0;
    for i in 0..total {
        let b = WireBatch {
            micro_batch: i as u64,
            seq_ids: (0..a.rows as u64).collect(),
            positions: vec![(i % 4096) as u32; a.rows],
            logits: LogitsRows::LastOfEachSeq,
            width: a.width,
            hidden: hidden.clone(),
        };
        batch_bytes = pipeline::wire::batch_bytes(b.rows(), b.width);
        let t0 = Instant::now();
        send_ns.push(unix_ns());
        link.send(&Hop::Batch(b)).map_err(|e| e.to_string())?;
        match link.recv().map_err(|e| e.to_string())? {
            Hop::Tokens { micro_batch, tokens } if micro_batch == i as u64 && tokens.len() == a.rows => {}
            other => return Err(format!("hop {i}: expected {} tokens of micro-batch {i}, got {other:?}", a.rows)),
        }
        // The peer returned its credit before its answer, on the same connection.
        if link.tx.in_flight() != 0 {
            return Err(format!("hop {i}: answered, but the batch's credit did not come back first"));
        }
        rtt_ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    link.close("bench done");
    Ok((send_ns, rtt_ms, batch_bytes))
}

/// Nearest-rank percentile of `v` (not empty).
fn percentile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}
