//! The verbs backend's error: one variant per failing C call (named, with errno and the
//! arguments that matter), plus the checks this backend makes before calling C.

use std::fmt;

use super::sys::LoadError;

/// Every way the verbs backend fails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerbsError {
    /// libibverbs could not be loaded (names tried listed) or lacks a symbol.
    Load(LoadError),
    /// `ibv_get_device_list` returned NULL.
    GetDeviceList { errno: i32 },
    /// No device of that name; the names that do exist.
    DeviceNotFound { name: String, available: Vec<String> },
    /// `ibv_open_device` returned NULL.
    OpenDevice { device: String, errno: i32 },
    /// `ibv_close_device` failed.
    CloseDevice { device: String, errno: i32 },
    /// `ibv_query_device` failed.
    QueryDevice { device: String, errno: i32 },
    /// `ibv_query_port` failed.
    QueryPort { device: String, port: u8, errno: i32 },
    /// `ibv_query_gid` failed.
    QueryGid { device: String, port: u8, index: u32, errno: i32 },
    /// `_ibv_query_gid_ex` failed (ENODATA, an empty table entry, is not reported here).
    QueryGidEx { device: String, port: u8, index: u32, errno: i32 },
    /// `ibv_alloc_pd` returned NULL.
    AllocPd { device: String, errno: i32 },
    /// `ibv_dealloc_pd` failed.
    DeallocPd { errno: i32 },
    /// `ibv_reg_mr` returned NULL.
    RegMr { addr: usize, len: usize, access: i32, device_memory: bool, errno: i32 },
    /// `ibv_dereg_mr` failed.
    DeregMr { lkey: u32, errno: i32 },
    /// `ibv_create_cq` returned NULL.
    CreateCq { cqe: u32, errno: i32 },
    /// `ibv_destroy_cq` failed.
    DestroyCq { errno: i32 },
    /// `ibv_create_qp` returned NULL.
    CreateQp { max_send_wr: u32, max_recv_wr: u32, errno: i32 },
    /// `ibv_modify_qp` failed moving `qpn` to `to_state` with attribute mask `mask`.
    ModifyQp { qpn: u32, to_state: &'static str, mask: i32, errno: i32 },
    /// `ibv_destroy_qp` failed.
    DestroyQp { qpn: u32, errno: i32 },
    /// `ibv_post_send` (provider `ops.post_send`) failed.
    PostSend { qpn: u32, wr_id: u64, errno: i32 },
    /// `ibv_post_recv` (provider `ops.post_recv`) failed.
    PostRecv { qpn: u32, wr_id: u64, errno: i32 },
    /// `ibv_poll_cq` (provider `ops.poll_cq`) returned a negative value (on most providers: the
    /// CQ overran and its completions are lost).
    PollCq { rc: i32 },
    /// A work request completed with an error status (`status` is `IBV_WC_*`, `status_text`
    /// libibverbs' words for it); `qpn` is the local QP it was posted on.
    Completion { qpn: u32, wr_id: u64, status: u32, status_text: String, vendor_err: u32 },
    /// A successful completion that is not what was posted (an opcode or id this side never used).
    UnexpectedCompletion { qpn: u32, wr_id: u64, opcode: u32 },
    /// Nothing completed within the bound.
    Timeout { what: &'static str, timeout_ms: u64 },
    /// Creating a QP would let more completions be outstanding on `queue`'s CQ than it holds
    /// (every work request here is signalled, so each one in flight needs a CQ entry).
    CqOvercommitted { queue: &'static str, depth: u32, reserved: u32, capacity: u32 },
    /// Device memory cannot be registered: the nvidia_peermem module is not loaded.
    PeermemAbsent { addr: usize, len: usize },
    /// A request outside what the device, port or region allows (checked before the C call).
    InvalidArgument { call: &'static str, what: String },
    /// A RoCE port and no usable RoCE v2 GID (none given, none found in the GID table).
    NoRoceV2Gid { device: String, port: u8 },
    /// The local and remote ends disagree on the link layer (InfiniBand vs RoCE).
    LinkLayerMismatch { local_roce: bool, remote_roce: bool },
    /// A serialised endpoint that is not valid: which field and why.
    BadEndpoint { field: &'static str, detail: String },
}

fn os(errno: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(errno)
}

impl fmt::Display for VerbsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use VerbsError::*;
        match self {
            Load(e) => write!(f, "{e}"),
            GetDeviceList { errno } => write!(f, "ibv_get_device_list failed: {}", os(*errno)),
            DeviceNotFound { name, available } => {
                write!(f, "no RDMA device named {name:?} (devices: {available:?})")
            }
            OpenDevice { device, errno } => write!(f, "ibv_open_device({device}) failed: {}", os(*errno)),
            CloseDevice { device, errno } => write!(f, "ibv_close_device({device}) failed: {}", os(*errno)),
            QueryDevice { device, errno } => write!(f, "ibv_query_device({device}) failed: {}", os(*errno)),
            QueryPort { device, port, errno } => {
                write!(f, "ibv_query_port({device}, port {port}) failed: {}", os(*errno))
            }
            QueryGid { device, port, index, errno } => {
                write!(f, "ibv_query_gid({device}, port {port}, index {index}) failed: {}", os(*errno))
            }
            QueryGidEx { device, port, index, errno } => {
                write!(f, "ibv_query_gid_ex({device}, port {port}, index {index}) failed: {}", os(*errno))
            }
            AllocPd { device, errno } => write!(f, "ibv_alloc_pd({device}) failed: {}", os(*errno)),
            DeallocPd { errno } => write!(f, "ibv_dealloc_pd failed: {}", os(*errno)),
            RegMr { addr, len, access, device_memory, errno } => write!(
                f,
                "ibv_reg_mr(addr {addr:#x}, {len} bytes, access {access:#x}, {}) failed: {}",
                if *device_memory { "GPU memory" } else { "host memory" },
                os(*errno)
            ),
            DeregMr { lkey, errno } => write!(f, "ibv_dereg_mr(lkey {lkey:#x}) failed: {}", os(*errno)),
            CreateCq { cqe, errno } => write!(f, "ibv_create_cq({cqe} entries) failed: {}", os(*errno)),
            DestroyCq { errno } => write!(f, "ibv_destroy_cq failed: {}", os(*errno)),
            CreateQp { max_send_wr, max_recv_wr, errno } => write!(
                f,
                "ibv_create_qp(RC, {max_send_wr} send / {max_recv_wr} recv work requests) failed: {}",
                os(*errno)
            ),
            ModifyQp { qpn, to_state, mask, errno } => {
                write!(f, "ibv_modify_qp(qpn {qpn:#x} -> {to_state}, mask {mask:#x}) failed: {}", os(*errno))
            }
            DestroyQp { qpn, errno } => write!(f, "ibv_destroy_qp(qpn {qpn:#x}) failed: {}", os(*errno)),
            PostSend { qpn, wr_id, errno } => {
                write!(f, "ibv_post_send(qpn {qpn:#x}, wr_id {wr_id}) failed: {}", os(*errno))
            }
            PostRecv { qpn, wr_id, errno } => {
                write!(f, "ibv_post_recv(qpn {qpn:#x}, wr_id {wr_id}) failed: {}", os(*errno))
            }
            PollCq { rc } => write!(f, "ibv_poll_cq failed (returned {rc}; the completion queue overran?)"),
            Completion { qpn, wr_id, status, status_text, vendor_err } => write!(
                f,
                "work request {wr_id} on qpn {qpn:#x} completed with error: {status_text} (status {status}, \
                 vendor error {vendor_err:#x})"
            ),
            UnexpectedCompletion { qpn, wr_id, opcode } => write!(
                f,
                "unexpected completion on qpn {qpn:#x}: work request {wr_id:#x} with opcode {opcode} was not posted \
                 as such"
            ),
            Timeout { what, timeout_ms } => write!(f, "no {what} within {timeout_ms} ms"),
            CqOvercommitted { queue, depth, reserved, capacity } => write!(
                f,
                "ibv_create_qp: {queue} queue depth {depth} does not fit its completion queue ({reserved} of \
                 {capacity} entries already reserved by other queues); use a larger CQ or shallower queues"
            ),
            PeermemAbsent { addr, len } => write!(
                f,
                "cannot register GPU memory (addr {addr:#x}, {len} bytes): the nvidia_peermem kernel module is \
                 not loaded (/sys/module/nvidia_peermem absent; `modprobe nvidia-peermem`)"
            ),
            InvalidArgument { call, what } => write!(f, "{call}: {what}"),
            NoRoceV2Gid { device, port } => write!(
                f,
                "{device} port {port} is RoCE but no RoCE v2 GID was given or found in its GID table \
                 (assign an IP address to the netdev, or pass a GID index)"
            ),
            LinkLayerMismatch { local_roce, remote_roce } => write!(
                f,
                "link layers differ: local is {}, remote is {}",
                if *local_roce { "RoCE" } else { "InfiniBand" },
                if *remote_roce { "RoCE" } else { "InfiniBand" }
            ),
            BadEndpoint { field, detail } => write!(f, "bad verbs endpoint: {field}: {detail}"),
        }
    }
}

impl std::error::Error for VerbsError {}

impl From<LoadError> for VerbsError {
    fn from(e: LoadError) -> Self {
        VerbsError::Load(e)
    }
}

impl From<&LoadError> for VerbsError {
    fn from(e: &LoadError) -> Self {
        VerbsError::Load(e.clone())
    }
}
