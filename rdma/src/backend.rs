//! Which backend moves the bytes: verbs when an RDMA port is active and the verbs data path is
//! wired, else TCP, said in one log line.
//!
//! The executor's data path is TCP today: the verbs layer (`verbs`) can open devices, register
//! memory, connect a `verbs::VerbsLink` over the authenticated bootstrap and post RDMA WRITE
//! with immediate, but the executor does not drive it yet, and none of it has run on RDMA
//! hardware (only against a test double of libibverbs, `tests/verbs_mock.rs`). So on a machine
//! with an active port the line says verbs was found and TCP is used anyway; without libibverbs
//! or a device it says why TCP is used.

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
                "transport: TCP (verbs port {} is active, but the executor's verbs data path is not wired yet)",
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
