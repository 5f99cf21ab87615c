//! `faascale serve --model PATH [--host IP] [--port N] [--served-model-name NAME] [--api-key KEY]
//!     [--io epoll|io-uring] [--device cpu|cuda] [--threads N] [--dtype f32|bf16]
//!     [--max-num-seqs N] [--kv-cache-bytes N] [--max-queue N] [--max-body-bytes N] [--max-connections N]`
//!
//! An OpenAI-compatible server for one model on this node: the HTTP layer (`server::http`) in
//! front, the API (`crate::api`) in the middle, the engine's continuous-batching scheduler
//! (`pipeline::sched`) behind. The port is bound first (`/health` answers 503 while the model
//! loads); when the model is ready the first line of standard output is
//! `{"url": "http://IP:PORT", "model": "NAME"}`. SIGTERM or SIGINT: stop accepting, let requests
//! in flight finish (up to `DRAIN`), exit 0.

use crate::api::handler::{ApiHandler, Ready};
use crate::api::metrics::Metrics;
use crate::api::served::Served;
use kernels::Pool;
use pipeline::sched::{GpuEngine, Scheduler, SchedulerConfig, StepEngine};
use pipeline::{Engine, StageLimits};
use server::http::{HttpConfig, IoBackend, Server};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long requests in flight may take to finish after SIGTERM / SIGINT.
const DRAIN: Duration = Duration::from_secs(30);
/// Open files besides the connections (model files, eventfds, rings, logs).
const SPARE_FDS: u64 = 256;
/// Front threads that parse and tokenise requests.
const FRONT_THREADS: usize = 2;

#[derive(clap::Args)]
pub struct Args {
    /// A Hugging Face checkpoint directory, a GGUF file, or a packed file (faascale pack).
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 lets the kernel choose.
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// The name clients send as `model` (default: the model's file or directory stem).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Every /v1/* request must carry `Authorization: Bearer KEY` (default: FAASCALE_API_KEY).
    #[arg(long)]
    api_key: Option<String>,
    /// The event loop: epoll or io-uring.
    #[arg(long, default_value = "epoll")]
    io: String,
    /// cuda or cpu (default: cuda when a GPU is found and the model runs there, else cpu).
    #[arg(long)]
    device: Option<String>,
    /// Engine threads (default: FAASCALE_THREADS or every core).
    #[arg(long)]
    threads: Option<usize>,
    /// For a GGUF model: dequantize to f32 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Sequences in the running batch at once.
    #[arg(long, default_value_t = 64)]
    max_num_seqs: usize,
    /// KV-cache budget in bytes (default: the whole context for every running sequence on the
    /// CPU; what the GPU allocated).
    #[arg(long)]
    kv_cache_bytes: Option<u64>,
    /// Requests waiting for the running batch; past it 429 with Retry-After.
    #[arg(long, default_value_t = 1024)]
    max_queue: usize,
    /// Largest request body; past it 413.
    #[arg(long, default_value_t = 8 << 20)]
    max_body_bytes: usize,
    /// Open connections at once; past it 503 and close.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
}

/// `NAME`: the directory's name, or the file's stem.
fn default_name(path: &Path) -> String {
    let p = if path.file_name().and_then(|n| n.to_str()) == Some("config.json") {
        path.parent().unwrap_or(path)
    } else {
        path
    };
    let name = if p.is_dir() { p.file_name() } else { p.file_stem() };
    name.and_then(|n| n.to_str()).filter(|n| !n.is_empty()).unwrap_or("model").to_string()
}

fn url_of(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("http://{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("http://[{}]:{}", a.ip(), a.port()),
    }
}

pub fn run(a: Args) -> Result<(), String> {
    // Before any thread starts, so every thread inherits the mask and only the signal thread
    // receives SIGTERM / SIGINT.
    let signals = super::serve_signals::block()?;
    let threads = a.threads.unwrap_or_else(Pool::default_threads);
    if threads == 0 || threads > 1024 {
        return Err(format!("--threads {threads}: expected 1 ..= 1024"));
    }
    let io: IoBackend = a.io.parse().map_err(|e| format!("--io: {e}"))?;
    let ip: IpAddr = a.host.parse().map_err(|e| format!("--host {}: not an IP address: {e}", a.host))?;
    if a.max_num_seqs == 0 {
        return Err("--max-num-seqs must be at least 1".into());
    }
    if a.max_queue == 0 {
        return Err("--max-queue must be at least 1".into());
    }
    if a.max_connections == 0 {
        return Err("--max-connections must be at least 1".into());
    }
    let dtype = super::gguf_dtype(&a.dtype)?;
    let api_key = a.api_key.clone().or_else(|| std::env::var("FAASCALE_API_KEY").ok()).filter(|k| !k.is_empty());
    if api_key.is_none() && !ip.is_loopback() {
        log::warn!(
            "serving on {ip} with no API key: anyone who can reach it may use it (--api-key or FAASCALE_API_KEY)"
        );
    }
    let fds = server::http::raise_fd_limit(a.max_connections as u64 + SPARE_FDS)
        .map_err(|e| format!("--max-connections {}: {e}", a.max_connections))?;
    log::debug!("open-file limit {fds}");

    let handler = ApiHandler::new(api_key, FRONT_THREADS);
    let mut cfg = HttpConfig::new(SocketAddr::new(ip, a.port), io);
    cfg.max_connections = a.max_connections;
    cfg.max_body_bytes = a.max_body_bytes;
    let server = Server::bind(cfg, handler.clone()).map_err(|e| format!("--io {io}: {e}"))?;
    let addr = server.local_addr();
    let http_stop = server.shutdown_handle();
    let http_thread = std::thread::Builder::new()
        .name("http".into())
        .spawn(move || server.run())
        .map_err(|e| format!("start the HTTP thread: {e}"))?;
    log::info!("listening on {} ({io}); loading {}", url_of(addr), a.model.display());

    let t_load = Instant::now();
    let loaded = load(&a, threads, dtype);
    let (served, sched) = match loaded {
        Ok(x) => x,
        Err(e) => {
            http_stop.shutdown(Duration::ZERO);
            let _ = http_thread.join();
            return Err(e);
        }
    };
    let load_s = t_load.elapsed().as_secs_f64();
    let name = served.name.clone();
    let metrics = Arc::new(Metrics::new(&name, load_s));
    let sched = Arc::new(sched);
    handler.set_ready(Ready { served: Arc::new(served), sched: sched.clone(), metrics });
    log::info!("ready in {load_s:.2} s: {} serves `{name}`", url_of(addr));
    // `url` first, as documented (serde_json's maps sort their keys).
    let line = format!(
        "{{\"url\": {}, \"model\": {}}}",
        serde_json::Value::from(url_of(addr)),
        serde_json::Value::from(name.as_str())
    );
    println!("{line}");
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let sig = signals.wait_or(|| http_thread.is_finished());
    if let Some(sig) = sig {
        log::info!("{sig}: draining requests in flight (up to {} s)", DRAIN.as_secs());
        http_stop.shutdown(DRAIN);
        let s = sched.clone();
        let drain = std::thread::spawn(move || s.shutdown(DRAIN));
        let r = http_thread.join().map_err(|_| "the HTTP thread panicked".to_string())?;
        let _ = drain.join();
        r.map_err(|e| e.to_string())?;
        log::info!("drained; exiting");
        Ok(())
    } else {
        sched.shutdown(Duration::ZERO);
        match http_thread.join() {
            Ok(Ok(())) => Err("the HTTP server stopped unexpectedly".into()),
            Ok(Err(e)) => Err(format!("the HTTP server failed: {e}")),
            Err(_) => Err("the HTTP thread panicked".into()),
        }
    }
}

/// Opens the model, builds the engine for its device, starts the scheduler.
fn load(a: &Args, threads: usize, dtype: kernels::DType) -> Result<(Served, Scheduler), String> {
    let device = pipeline::gpu::select::pick_device(a.device.as_deref())?;
    let (mut model, packed) = pipeline::gpu::select::open_model(&a.model, dtype, device)?;
    let cfg = model.config.clone();
    let num_blocks = pipeline::BlockLayout::default_for(cfg.num_hidden_layers).map_err(|e| e.to_string())?.num_blocks;
    let gpu_stage = match device {
        pipeline::gpu::select::Device::Cpu => None,
        d => pipeline::gpu::select::whole_model_stage_with(
            &model,
            packed.as_deref(),
            num_blocks,
            d == pipeline::gpu::select::Device::Cuda,
            a.max_num_seqs,
        )?,
    };
    let (engine, backend): (Box<dyn StepEngine>, String) = match gpu_stage {
        Some(stage) => (Box::new(GpuEngine::new(vec![stage]).map_err(|e| e.to_string())?), "cuda".into()),
        None => {
            let pool = Arc::new(Pool::new(threads));
            let limits = StageLimits::default();
            let stage = model.stage(num_blocks, 0..num_blocks, pool, limits).map_err(|e| e.to_string())?;
            (
                Box::new(Engine::new(vec![stage]).map_err(|e| e.to_string())?),
                format!("cpu-{} x{threads}", kernels::variant()),
            )
        }
    };
    let limits = engine.limits();
    let sched_cfg = SchedulerConfig {
        max_num_seqs: a.max_num_seqs,
        max_queue: a.max_queue,
        kv_cache_bytes: a.kv_cache_bytes,
        prefill_chunk_tokens: 512.max(a.max_num_seqs).min(limits.max_batch_rows),
    };
    let sched = Scheduler::start(engine, sched_cfg).map_err(|e| format!("scheduler: {e}"))?;
    let tokenizer = model.tokenizer.take().ok_or_else(|| {
        format!("{} has no tokenizer: the server needs one to read and write text", a.model.display())
    })?;
    let name = a.served_model_name.clone().unwrap_or_else(|| default_name(&a.model));
    log::info!(
        "{} ({}, {} parameters) on {backend}: context {} tokens per sequence, {} sequences at once",
        a.model.display(),
        cfg.arch.hf_name(),
        cfg.parameter_count(),
        sched.max_seq_tokens(),
        a.max_num_seqs
    );
    let max_seq = sched.max_seq_tokens();
    Ok((Served::new(name, tokenizer, model.chat_template.clone(), &cfg, max_seq), sched))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_urls() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("SmolLM2-135M.Q4_1.gguf");
        std::fs::write(&f, b"x").unwrap();
        assert_eq!(default_name(&f), "SmolLM2-135M.Q4_1");
        let d = dir.path().join("tiny-llama");
        std::fs::create_dir(&d).unwrap();
        assert_eq!(default_name(&d), "tiny-llama");
        assert_eq!(default_name(&d.join("config.json")), "tiny-llama");
        assert_eq!(url_of("127.0.0.1:80".parse().unwrap()), "http://127.0.0.1:80");
        assert_eq!(url_of("[::1]:8".parse().unwrap()), "http://[::1]:8");
    }
}
