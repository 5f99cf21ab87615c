//! A multicast worker process for the crate's multi-process tests (`faascale worker` is the
//! same thing inside the product binary): `rdma_worker --coordinator ADDR [--bind IP]`, the
//! cluster secret in FAASCALE_CLUSTER_SECRET.

use std::process::ExitCode;

struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!("[rdma_worker {} {}] {}", std::process::id(), r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

static LOG: StderrLog = StderrLog;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut coordinator = None;
    let mut bind = "127.0.0.1".to_string();
    let _ = log::set_logger(&LOG);
    log::set_max_level(log::LevelFilter::Warn);
    let mut i = 0;
    while i < args.len() {
        match (args[i].as_str(), args.get(i + 1)) {
            ("--coordinator", Some(v)) => coordinator = Some(v.clone()),
            ("--bind", Some(v)) => bind = v.clone(),
            ("--log", Some(_)) => {}
            (a, _) => {
                eprintln!("rdma_worker: unknown or incomplete argument {a}");
                return ExitCode::from(2);
            }
        }
        i += 2;
    }
    let run = || -> Result<(), String> {
        let coordinator = coordinator.ok_or("--coordinator ADDR is required")?;
        let opts = rdma::worker::WorkerOptions {
            coordinator: coordinator.parse().map_err(|e| format!("--coordinator {coordinator}: {e}"))?,
            bind_ip: bind.parse().map_err(|e| format!("--bind {bind}: {e}"))?,
            secret: rdma::Secret::from_env().map_err(|e| e.to_string())?,
        };
        rdma::worker::run(opts).map_err(|e| e.to_string())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rdma_worker: {e}");
            ExitCode::FAILURE
        }
    }
}
