//! Verbs backend: libibverbs.so.1 loaded at run time (dlopen), RC queue pairs, RDMA WRITE with
//! immediate per transfer block, polled completions, GPU memory through nvidia-peermem.
//!
//! Three layers, as in cudarc: [`sys`] (raw declarations checked against rdma-core's verbs.h,
//! the dlopen table, the inline data-path verbs rewritten), [`result`] (one function per C call
//! returning `Result`), and the RAII types below, whose children hold an `Arc` of their parent
//! so teardown runs QP → MR / CQ → PD → context.
//!
//! Typical use, per peer pair (the endpoint bytes travel over the authenticated bootstrap):
//! ```text
//! let ctx = Context::open(Some("mlx5_0"))?;
//! let pd = ProtectionDomain::new(&ctx)?;
//! let cq = CompletionQueue::new(&ctx, 1024)?;
//! let mr = unsafe { MemoryRegion::register(&pd, ptr, len, MemoryKind::Host, Access::REMOTE_WRITE)? };
//! let mut qp = QueuePair::new(&pd, &cq, &cq, 1, None, QpConfig::default())?;
//! send(qp.endpoint(Some(&mr)).to_bytes());  let remote = VerbsEndpoint::from_bytes(&received)?;
//! qp.to_init()?;  for i in 0..n { qp.post_recv(i)? }  qp.to_rtr(&remote)?;  qp.to_rts()?;
//! unsafe { qp.post_write_with_imm(id, &mr, off, len, RemoteRegion::from(&remote), roff, block_id)? };
//! cq.poll(&mut wc)?;
//! ```
//!
//! [`VerbsLink`] packages that sequence for one peer: endpoints over an authenticated
//! `tcp::Conn`, then tagged writes and completion events (the data path the executor can use).
//!
//! Nothing here has run on RDMA hardware: no machine available to this project has an RDMA
//! device or soft-RoCE. What is checked: struct layouts and constants against rdma-core's
//! headers (`tests/verbs_layout.rs`); loading libibverbs and listing (no) devices; the endpoint
//! codec; and everything above end to end against a test double of libibverbs built from
//! rdma-core's own header (`tests/verbs_mock.rs`, `tests/mock_ibverbs/mock_ibverbs.c`), which
//! emulates RC queue pairs inside one process with the documented state machine, attribute
//! masks, key, bounds and access checks, RNR waits and error completions. The double is not a
//! NIC: timing, retransmission and real addressing are untested until `tests/verbs_loopback.rs`
//! runs on a machine with an RDMA port.

pub mod context;
pub mod cq;
pub mod endpoint;
pub mod error;
pub mod link;
pub mod memory;
pub mod qp;
pub mod result;
pub mod sys;

use std::fmt;

pub use context::{device_names, Context, DeviceInfo, PortInfo};
pub use cq::{CompletionQueue, WorkCompletion};
pub use endpoint::{VerbsEndpoint, ENDPOINT_BYTES};
pub use error::VerbsError;
pub use link::{LinkConfig, LinkEvent, VerbsLink, LINK_FAILED, LINK_READY};
pub use memory::{peermem_loaded, Access, MemoryKind, MemoryRegion, ProtectionDomain};
pub use qp::{random_psn, QpConfig, QpState, QueuePair, RemoteRegion};

/// One port of one device, as probed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbedPort {
    pub device: String,
    pub info: PortInfo,
}

/// Whether verbs can carry traffic here, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// At least one ACTIVE port; `ports` lists every port of every device, active ones first.
    Available { ports: Vec<ProbedPort>, peermem_loaded: bool },
    /// libibverbs is not installed (or lacks a symbol): the names tried and why.
    LibraryAbsent(sys::LoadError),
    /// libibverbs loaded but lists no device (no RDMA NIC, no soft-RoCE, or no kernel support).
    NoDevice,
    /// Devices exist but no port is ACTIVE (cable down, no subnet manager, no IP on a RoCE netdev).
    NoActivePort { ports: Vec<ProbedPort> },
    /// A verbs call failed while probing.
    Error(VerbsError),
}

impl Probe {
    /// The first ACTIVE (device, port), when verbs is usable.
    pub fn first_active(&self) -> Option<&ProbedPort> {
        match self {
            Probe::Available { ports, .. } => ports.iter().find(|p| p.info.is_active()),
            _ => None,
        }
    }

    pub fn is_available(&self) -> bool {
        matches!(self, Probe::Available { .. })
    }

    /// The one log line for transport selection: info when verbs is used, info when falling
    /// back to TCP for a normal reason, warn when probing itself failed.
    pub fn log(&self) {
        match self {
            Probe::Error(_) => log::warn!("{self}"),
            _ => log::info!("{self}"),
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::Available { ports, peermem_loaded } => {
                let p = self.first_active().or(ports.first());
                match p {
                    Some(p) => write!(
                        f,
                        "verbs: using {} port {} ({}, MTU {} bytes); GPU memory registration {}",
                        p.device,
                        p.info.port,
                        if p.info.is_roce() { "RoCE" } else { "InfiniBand" },
                        VerbsEndpoint::mtu_bytes(p.info.active_mtu).unwrap_or(0),
                        if *peermem_loaded { "via nvidia_peermem" } else { "unavailable (nvidia_peermem not loaded)" }
                    ),
                    None => write!(f, "verbs: available"),
                }
            }
            Probe::LibraryAbsent(e) => write!(f, "verbs unavailable, using TCP: {e}"),
            Probe::NoDevice => write!(f, "verbs unavailable, using TCP: libibverbs lists no RDMA device"),
            Probe::NoActivePort { ports } => {
                write!(f, "verbs unavailable, using TCP: no ACTIVE port among")?;
                for p in ports {
                    write!(f, " {}:{} (state {})", p.device, p.info.port, p.info.state)?;
                }
                Ok(())
            }
            Probe::Error(e) => write!(f, "verbs unavailable, using TCP: probing failed: {e}"),
        }
    }
}

/// Loads libibverbs, lists devices and queries every port. Never panics; absence of the library
/// or of devices is a normal outcome.
pub fn probe() -> Probe {
    let lib_err = match sys::lib() {
        Ok(_) => None,
        Err(e) => Some(e.clone()),
    };
    if let Some(e) = lib_err {
        return Probe::LibraryAbsent(e);
    }
    let names = match device_names() {
        Ok(n) => n,
        // ENOSYS / ENODEV: the kernel has no uverbs support, which is the same as no device.
        Err(VerbsError::GetDeviceList { errno }) if errno == libc::ENOSYS || errno == libc::ENODEV => {
            return Probe::NoDevice;
        }
        Err(e) => return Probe::Error(e),
    };
    if names.is_empty() {
        return Probe::NoDevice;
    }
    let mut ports = Vec::new();
    let mut first_error = None;
    for name in &names {
        let probed = (|| -> Result<Vec<ProbedPort>, VerbsError> {
            let ctx = Context::open(Some(name))?;
            let dev = ctx.query_device()?;
            (1..=dev.phys_port_cnt)
                .map(|port| Ok(ProbedPort { device: name.clone(), info: ctx.query_port(port)? }))
                .collect()
        })();
        match probed {
            Ok(p) => ports.extend(p),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    // A device that fails to open or answer does not hide a working one.
    ports.sort_by_key(|p| !p.info.is_active());
    match first_error {
        _ if ports.iter().any(|p| p.info.is_active()) => Probe::Available { ports, peermem_loaded: peermem_loaded() },
        Some(e) => Probe::Error(e),
        None => Probe::NoActivePort { ports },
    }
}
