//! Which backend moves the bytes: verbs when an RDMA port is active and the verbs data path is
//! wired, else TCP, said in one log line.
//!
//! Worker processes use the transport the coordinator's setup names (`control::Transport`), TCP
//! unless asked for verbs (`faascale bench multicast --transport verbs`). The executor's verbs path
//! (`ExecConfig::verbs`: one RDMA WRITE with immediate per transfer block over a
//! `verbs::VerbsLink` per data connection) has run only against a test double of libibverbs
//! (`tests/executor_verbs.rs`, `tests/verbs_mock.rs`), never on RDMA hardware, so it is not chosen
//! on its own: on a machine with an active port this line says verbs was found and TCP is the
//! default; without libibverbs or a device it says why TCP is used.

use crate::verbs::{self, Probe};

/// The backend chosen for this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    Tcp,
}

/// Probes verbs once and logs the one line saying which backend carries the data and why.
pub fn select() -> Backend {
    let probe = verbs::probe();
    match &probe {
        Probe::Available { .. } => {
            let port = probe.first_active().map(|p| format!("{} port {}", p.device, p.info.port));
            log::info!(
                "transport: TCP by default (verbs port {} is active; the verbs path, chosen with --transport verbs, has run only against a test double)",
                port.unwrap_or_else(|| "?".into())
            );
        }
        // The probe's own line already ends in "using TCP: <why>".
        _ => probe.log(),
    }
    Backend::Tcp
}

#[cfg(test)]
mod tests {
    #[test]
    fn falls_back_to_tcp_without_a_device() {
        // No machine here has an RDMA device; with or without libibverbs the answer is TCP.
        assert_eq!(super::select(), super::Backend::Tcp);
    }
}
