//! `faascale worker --coordinator ADDR [--bind IP] [--secret-file PATH]`: one multicast worker
//! process (spawned by `faascale bench multicast`, later by the manager). The cluster secret
//! comes from `--secret-file` or FAASCALE_CLUSTER_SECRET.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The coordinator's control address, ip:port.
    #[arg(long)]
    coordinator: String,
    /// Address this worker's data listener binds (the port is chosen by the kernel).
    #[arg(long, default_value = "127.0.0.1")]
    bind: String,
    /// File holding the cluster secret (default: the FAASCALE_CLUSTER_SECRET environment variable).
    #[arg(long)]
    secret_file: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<(), String> {
    let coordinator = a.coordinator.parse().map_err(|e| format!("--coordinator {}: {e}", a.coordinator))?;
    let bind_ip = a.bind.parse().map_err(|e| format!("--bind {}: {e}", a.bind))?;
    let secret = rdma::Secret::load(a.secret_file.as_deref()).map_err(|e| e.to_string())?;
    rdma::worker::run(rdma::worker::WorkerOptions { coordinator, secret, bind_ip }).map_err(|e| e.to_string())
}
