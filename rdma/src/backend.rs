//! Which backend moves a worker's bytes, and why, in one log line.
//!
//! Worker processes use the transport the coordinator's setup names (`control::Transport`), TCP
//! unless asked for verbs (`faascale bench multicast --transport verbs`). The executor's verbs path
//! (`executor::VerbsConfig`: one RDMA WRITE with immediate per transfer block over a
//! `verbs::VerbsLink` per data connection) has run only against a test double of libibverbs
//! (`tests/executor_verbs.rs`, `tests/verbs_mock.rs`), never on RDMA hardware, so it is never
//! chosen on its own: `decide` keeps TCP when TCP was asked for, even with an active port (and
//! says so), takes verbs when verbs was asked for and the probe found an active port, and refuses
//! verbs, with the probe's reason, when there is none.

use crate::control::Transport;
use crate::error::{Error, Result};
use crate::verbs::{self, Probe};

/// The data path chosen for this worker and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub transport: Transport,
    pub reason: String,
}

/// The data path for `requested` given what the verbs probe found: TCP when asked for TCP
/// (whatever the probe says), verbs when asked for verbs and a port is active, an error naming
/// the probe's finding when verbs was asked for and cannot run here.
pub fn decide(requested: &Transport, probe: &Probe) -> Result<Decision> {
    let active = probe.first_active().map(|p| format!("{} port {}", p.device, p.info.port));
    match requested {
        Transport::Tcp => {
            let reason = match &active {
                Some(port) => format!(
                    "TCP as asked; verbs port {port} is active, but the verbs path has run only against a test double, so it is used only when asked for (--transport verbs)"
                ),
                None => format!("TCP as asked; verbs could not run here anyway: {}", finding(probe)),
            };
            Ok(Decision { transport: Transport::Tcp, reason })
        }
        Transport::Verbs { device, port } => {
            let want = format!("{} port {port}", device.as_deref().unwrap_or("(the first listed)"));
            let refuse = |why: String| {
                Err(Error::Transport(format!("the verbs transport cannot open RDMA device {want}: {why}")))
            };
            if active.is_none() {
                return refuse(finding(probe));
            }
            let found = match probe {
                Probe::Available { ports, .. } => ports.iter().any(|p| {
                    p.info.is_active() && p.info.port == *port && device.as_ref().is_none_or(|d| *d == p.device)
                }),
                _ => false,
            };
            if !found {
                return refuse(format!("not an active port ({probe})"));
            }
            Ok(Decision { transport: requested.clone(), reason: format!("verbs as asked; {probe}") })
        }
    }
}

/// What the probe found, without the probe's own "using TCP" conclusion.
fn finding(probe: &Probe) -> String {
    match probe {
        Probe::Available { .. } => probe.to_string(),
        Probe::LibraryAbsent(e) => format!("libibverbs cannot be loaded: {e}"),
        Probe::NoDevice => "libibverbs lists no RDMA device".into(),
        Probe::NoActivePort { ports } => {
            let list: Vec<String> =
                ports.iter().map(|p| format!("{}:{} (state {})", p.device, p.info.port, p.info.state)).collect();
            format!("no ACTIVE port among {}", list.join(" "))
        }
        Probe::Error(e) => format!("probing failed: {e}"),
    }
}

/// Probes verbs, decides with `decide` and logs the decision in one line.
pub fn select(requested: &Transport) -> Result<Decision> {
    let d = decide(requested, &verbs::probe())?;
    log::info!("transport: {}", d.reason);
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verbs::{PortInfo, ProbedPort};

    fn port(device: &str, port: u8, active: bool) -> ProbedPort {
        ProbedPort {
            device: device.into(),
            info: PortInfo {
                port,
                state: if active {
                    verbs::sys::IBV_PORT_ACTIVE
                } else {
                    1 /* IBV_PORT_DOWN */
                },
                active_mtu: verbs::sys::IBV_MTU_1024,
                lid: 0,
                link_layer: verbs::sys::IBV_LINK_LAYER_ETHERNET,
                gid_tbl_len: 16,
                max_msg_bytes: 1 << 30,
            },
        }
    }

    fn available() -> Probe {
        Probe::Available { ports: vec![port("mlx5_0", 1, true), port("mlx5_0", 2, false)], peermem_loaded: false }
    }

    fn verbs_on(device: Option<&str>, port: u8) -> Transport {
        Transport::Verbs { device: device.map(Into::into), port }
    }

    #[test]
    fn tcp_when_asked_even_with_an_active_port_and_the_reason_says_which() {
        let d = decide(&Transport::Tcp, &available()).unwrap();
        assert_eq!(d.transport, Transport::Tcp);
        assert!(d.reason.contains("mlx5_0 port 1 is active"), "{}", d.reason);
        let d = decide(&Transport::Tcp, &Probe::NoDevice).unwrap();
        assert_eq!(d.transport, Transport::Tcp);
        assert!(d.reason.contains("no RDMA device"), "{}", d.reason);
    }

    #[test]
    fn verbs_when_asked_only_on_an_active_port() {
        for t in [verbs_on(None, 1), verbs_on(Some("mlx5_0"), 1)] {
            assert_eq!(decide(&t, &available()).unwrap().transport, t);
        }
        for (t, why) in [(verbs_on(None, 2), "not an active port"), (verbs_on(Some("mlx5_1"), 1), "not an active port")]
        {
            let e = decide(&t, &available()).unwrap_err().to_string();
            assert!(e.contains(why), "{t:?}: {e}");
        }
        let inactive = Probe::NoActivePort { ports: vec![port("rxe0", 1, false)] };
        for (probe, why) in [(Probe::NoDevice, "no RDMA device"), (inactive, "no ACTIVE port among rxe0:1")] {
            let e = decide(&verbs_on(None, 1), &probe).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn the_probe_here_decides_tcp_for_tcp() {
        // Whatever this machine has, asking for TCP gets TCP, with the probe's finding as the reason.
        let probe = verbs::probe();
        let d = decide(&Transport::Tcp, &probe).unwrap();
        assert_eq!(d.transport, Transport::Tcp);
        assert!(d.reason.starts_with("TCP as asked; "), "{}", d.reason);
        assert!(!d.reason.contains("using TCP"), "the reason is the finding, not the probe's conclusion: {}", d.reason);
    }
}
