//! Reliable-connected queue pairs: RESET → INIT → RTR → RTS, RDMA WRITE with immediate, and
//! zero-length receives that the immediate consumes.
//!
//! Why WRITE with immediate and not READ: the multicast plan is sender-driven (each tick a
//! node forwards a block it holds to its partner). A WRITE moves the block in one direction
//! with no round trip, and the immediate value (the transfer block's id) raises a completion on
//! the receiver the moment the whole block has landed, in order after the data, so the
//! receiver learns "block i is here" without polling memory or a second message. A READ would
//! need the receiver to be told first that the block is ready (an extra message each block),
//! costs a request/response round trip, and is limited by the responder's outstanding-read
//! depth (`max_qp_rd_atom`).

use std::ptr::NonNull;
use std::sync::Arc;

use super::context::PortInfo;
use super::cq::CompletionQueue;
use super::endpoint::{VerbsEndpoint, MAX_24_BIT};
use super::error::VerbsError;
use super::memory::{MemoryRegion, ProtectionDomain};
use super::result::{self, Result};
use super::sys;

/// Queue sizes and the transport's retry bounds (IB spec vol. 1, 9.7.6 / 9.7.5.2.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpConfig {
    pub max_send_wr: u32,
    pub max_recv_wr: u32,
    /// Local ACK timeout, 4.096 µs × 2^timeout; 1..=31 (0, "infinite", is refused). 14 ≈ 67 ms.
    pub timeout: u8,
    /// Transport retries after a timeout, 0..=7.
    pub retry_cnt: u8,
    /// Retries after receiver-not-ready, 0..=6 (7, "infinite", is refused).
    pub rnr_retry: u8,
    /// RNR NAK delay code the receiver asks for, 1..=31 (12 = 0.64 ms; IB spec table 45).
    pub min_rnr_timer: u8,
    /// GRH hop limit on RoCE.
    pub hop_limit: u8,
}

impl Default for QpConfig {
    fn default() -> Self {
        QpConfig {
            max_send_wr: 256,
            max_recv_wr: 256,
            timeout: 14,
            retry_cnt: 7,
            rnr_retry: 6,
            min_rnr_timer: 12,
            hop_limit: 64,
        }
    }
}

impl QpConfig {
    /// Checks every bound (queue depths against the device's `max_qp_wr`); `QueuePair::new`
    /// calls it first.
    pub fn validate(&self, max_qp_wr: u32) -> Result<()> {
        let bad = |what: String| Err(VerbsError::InvalidArgument { call: "ibv_create_qp", what });
        if self.max_send_wr == 0 || self.max_send_wr > max_qp_wr {
            return bad(format!("max_send_wr {} outside 1..={max_qp_wr} (device max_qp_wr)", self.max_send_wr));
        }
        if self.max_recv_wr == 0 || self.max_recv_wr > max_qp_wr {
            return bad(format!("max_recv_wr {} outside 1..={max_qp_wr} (device max_qp_wr)", self.max_recv_wr));
        }
        if !(1..=31).contains(&self.timeout) {
            return bad(format!("timeout {} outside 1..=31", self.timeout));
        }
        if self.retry_cnt > 7 {
            return bad(format!("retry_cnt {} above 7", self.retry_cnt));
        }
        if self.rnr_retry > 6 {
            return bad(format!("rnr_retry {} above 6 (7 retries forever)", self.rnr_retry));
        }
        if !(1..=31).contains(&self.min_rnr_timer) {
            return bad(format!("min_rnr_timer {} outside 1..=31", self.min_rnr_timer));
        }
        if self.hop_limit == 0 {
            return bad("hop_limit 0".to_string());
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum QpState {
    Reset,
    Init,
    ReadyToReceive,
    ReadyToSend,
}

/// A 24-bit packet sequence number from the kernel's random source (time-derived if that fails:
/// a PSN must differ between connections, it need not be secret).
pub fn random_psn() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: b is a valid 4-byte buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    let x = if n == 4 {
        u32::from_le_bytes(b)
    } else {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        t.subsec_nanos() ^ std::process::id().rotate_left(13)
    };
    x & MAX_24_BIT
}

/// A remote region as the peer described it: where a WRITE may land.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteRegion {
    pub addr: u64,
    pub len: u64,
    pub rkey: u32,
}

impl From<&VerbsEndpoint> for RemoteRegion {
    fn from(e: &VerbsEndpoint) -> Self {
        RemoteRegion { addr: e.addr, len: e.len, rkey: e.rkey }
    }
}

/// An RC queue pair (`struct ibv_qp`), holding its PD and CQs.
pub struct QueuePair {
    ptr: NonNull<sys::ibv_qp>,
    pd: Arc<ProtectionDomain>,
    send_cq: Arc<CompletionQueue>,
    recv_cq: Arc<CompletionQueue>,
    port: PortInfo,
    gid_index: u32,
    gid: [u8; 16],
    psn: u32,
    config: QpConfig,
    state: QpState,
    /// Send and receive depths the provider granted (at least what `config` asked), reserved on
    /// `send_cq` and `recv_cq` while the QP lives.
    send_depth: u32,
    recv_depth: u32,
}

// SAFETY: verbs (ibv_post_send/recv included) are thread-safe; state changes take &mut self.
unsafe impl Send for QueuePair {}
// SAFETY: as above; &self methods only post work requests.
unsafe impl Sync for QueuePair {}

impl QueuePair {
    /// Creates an RC QP on `port` (1-based), which must be ACTIVE. On RoCE, `gid_index` names the
    /// source GID; `None` picks the first RoCE v2 GID (IPv4-mapped preferred). On InfiniBand the
    /// QP is addressed by LID and `gid_index` (default 0) is only reported.
    pub fn new(
        pd: &Arc<ProtectionDomain>,
        send_cq: &Arc<CompletionQueue>,
        recv_cq: &Arc<CompletionQueue>,
        port: u8,
        gid_index: Option<u32>,
        config: QpConfig,
    ) -> Result<QueuePair> {
        let ctx = pd.context();
        if !Arc::ptr_eq(ctx, send_cq.context()) || !Arc::ptr_eq(ctx, recv_cq.context()) {
            return Err(VerbsError::InvalidArgument {
                call: "ibv_create_qp",
                what: "completion queues belong to another device context than the protection domain".to_string(),
            });
        }
        config.validate(ctx.query_device()?.max_qp_wr)?;
        let info = ctx.query_port(port)?;
        if !info.is_active() {
            return Err(VerbsError::InvalidArgument {
                call: "ibv_create_qp",
                what: format!("{} port {port} is not ACTIVE (state {})", ctx.name(), info.state),
            });
        }
        let gid_index = match (info.is_roce(), gid_index) {
            (_, Some(i)) => i,
            (true, None) => ctx
                .find_roce_v2_gid_index(port)?
                .ok_or_else(|| VerbsError::NoRoceV2Gid { device: ctx.name().to_string(), port })?,
            (false, None) => 0,
        };
        if gid_index >= info.gid_tbl_len || gid_index > u32::from(u8::MAX) {
            return Err(VerbsError::InvalidArgument {
                call: "ibv_create_qp",
                what: format!("GID index {gid_index} outside the table (length {}, at most 256)", info.gid_tbl_len),
            });
        }
        let gid = ctx.query_gid(port, gid_index)?;
        if info.is_roce() && gid == [0; 16] {
            return Err(VerbsError::NoRoceV2Gid { device: ctx.name().to_string(), port });
        }
        let mut attr = sys::ibv_qp_init_attr {
            qp_context: std::ptr::null_mut(),
            send_cq: send_cq.as_ptr().as_ptr(),
            recv_cq: recv_cq.as_ptr().as_ptr(),
            srq: std::ptr::null_mut(),
            cap: sys::ibv_qp_cap {
                max_send_wr: config.max_send_wr,
                max_recv_wr: config.max_recv_wr,
                max_send_sge: 1,
                max_recv_sge: 1,
                max_inline_data: 0,
            },
            qp_type: sys::IBV_QPT_RC,
            sq_sig_all: 0,
        };
        // SAFETY: pd and both CQs are live (held by Arcs) and of the same context (checked).
        let ptr = unsafe { result::create_qp(pd.as_ptr(), &mut attr) }?;
        let mut qp = QueuePair {
            ptr,
            pd: Arc::clone(pd),
            send_cq: Arc::clone(send_cq),
            recv_cq: Arc::clone(recv_cq),
            port: info,
            gid_index,
            gid,
            psn: random_psn(),
            config,
            state: QpState::Reset,
            send_depth: 0,
            recv_depth: 0,
        };
        // Every request is signalled, so up to the granted depth (providers round up) of each
        // queue can be waiting in its CQ. On refusal, dropping `qp` destroys it.
        qp.send_cq.reserve("send", attr.cap.max_send_wr)?;
        qp.send_depth = attr.cap.max_send_wr;
        qp.recv_cq.reserve("receive", attr.cap.max_recv_wr)?;
        qp.recv_depth = attr.cap.max_recv_wr;
        Ok(qp)
    }

    /// Send queue depth the provider granted (at least `QpConfig::max_send_wr`).
    pub fn send_depth(&self) -> u32 {
        self.send_depth
    }

    /// Receive queue depth the provider granted (at least `QpConfig::max_recv_wr`).
    pub fn recv_depth(&self) -> u32 {
        self.recv_depth
    }

    pub fn qpn(&self) -> u32 {
        // SAFETY: the QP is live for self's lifetime; qp_num is immutable.
        unsafe { (*self.ptr.as_ptr()).qp_num }
    }

    pub fn state(&self) -> QpState {
        self.state
    }

    pub fn port(&self) -> &PortInfo {
        &self.port
    }

    pub fn send_cq(&self) -> &Arc<CompletionQueue> {
        &self.send_cq
    }

    pub fn recv_cq(&self) -> &Arc<CompletionQueue> {
        &self.recv_cq
    }

    /// This side's connection data, offering `region` (if any) for the peer's WRITEs.
    pub fn endpoint(&self, region: Option<&MemoryRegion>) -> VerbsEndpoint {
        VerbsEndpoint {
            qpn: self.qpn(),
            psn: self.psn,
            lid: self.port.lid,
            gid: self.gid,
            gid_index: u8::try_from(self.gid_index).unwrap_or(u8::MAX),
            mtu: self.port.active_mtu,
            roce: self.port.is_roce(),
            rkey: region.map_or(0, |r| r.rkey()),
            addr: region.map_or(0, |r| r.addr()),
            len: region.map_or(0, |r| r.len() as u64),
        }
    }

    fn expect_state(&self, call: &'static str, want: QpState) -> Result<()> {
        if self.state == want {
            Ok(())
        } else {
            Err(VerbsError::InvalidArgument { call, what: format!("QP is {:?}, expected {want:?}", self.state) })
        }
    }

    fn zeroed_attr() -> sys::ibv_qp_attr {
        // SAFETY: ibv_qp_attr is plain data; all-zero is valid (and what the verbs examples use).
        unsafe { std::mem::zeroed() }
    }

    /// RESET → INIT: bind to the port, allow remote writes.
    pub fn to_init(&mut self) -> Result<()> {
        self.expect_state("ibv_modify_qp", QpState::Reset)?;
        let mut a = Self::zeroed_attr();
        a.qp_state = sys::IBV_QPS_INIT;
        a.pkey_index = 0;
        a.port_num = self.port.port;
        a.qp_access_flags = (sys::IBV_ACCESS_LOCAL_WRITE | sys::IBV_ACCESS_REMOTE_WRITE) as u32;
        let mask = sys::IBV_QP_STATE | sys::IBV_QP_PKEY_INDEX | sys::IBV_QP_PORT | sys::IBV_QP_ACCESS_FLAGS;
        // SAFETY: the QP is live; a is valid for the masked fields.
        unsafe { result::modify_qp(self.ptr, &mut a, mask) }?;
        self.state = QpState::Init;
        Ok(())
    }

    /// INIT → RTR: point at the remote QP (RoCE: GRH with the remote GID from our GID index;
    /// InfiniBand: the remote LID), path MTU = the smaller active MTU.
    pub fn to_rtr(&mut self, remote: &VerbsEndpoint) -> Result<()> {
        self.expect_state("ibv_modify_qp", QpState::Init)?;
        remote.validate()?;
        if remote.roce != self.port.is_roce() {
            return Err(VerbsError::LinkLayerMismatch { local_roce: self.port.is_roce(), remote_roce: remote.roce });
        }
        let mut a = Self::zeroed_attr();
        a.qp_state = sys::IBV_QPS_RTR;
        a.path_mtu = self.port.active_mtu.min(remote.mtu);
        a.dest_qp_num = remote.qpn;
        a.rq_psn = remote.psn;
        a.max_dest_rd_atomic = 1;
        a.min_rnr_timer = self.config.min_rnr_timer;
        a.ah_attr.port_num = self.port.port;
        a.ah_attr.sl = 0;
        a.ah_attr.src_path_bits = 0;
        if self.port.is_roce() {
            a.ah_attr.is_global = 1;
            a.ah_attr.dlid = 0;
            a.ah_attr.grh.dgid = sys::ibv_gid { raw: remote.gid };
            a.ah_attr.grh.sgid_index = u8::try_from(self.gid_index).unwrap_or(u8::MAX);
            a.ah_attr.grh.hop_limit = self.config.hop_limit;
            a.ah_attr.grh.traffic_class = 0;
            a.ah_attr.grh.flow_label = 0;
        } else {
            a.ah_attr.is_global = 0;
            a.ah_attr.dlid = remote.lid;
        }
        let mask = sys::IBV_QP_STATE
            | sys::IBV_QP_AV
            | sys::IBV_QP_PATH_MTU
            | sys::IBV_QP_DEST_QPN
            | sys::IBV_QP_RQ_PSN
            | sys::IBV_QP_MAX_DEST_RD_ATOMIC
            | sys::IBV_QP_MIN_RNR_TIMER;
        // SAFETY: the QP is live; a is valid for the masked fields.
        unsafe { result::modify_qp(self.ptr, &mut a, mask) }?;
        self.state = QpState::ReadyToReceive;
        Ok(())
    }

    /// RTR → RTS: our send PSN and the retry bounds.
    pub fn to_rts(&mut self) -> Result<()> {
        self.expect_state("ibv_modify_qp", QpState::ReadyToReceive)?;
        let mut a = Self::zeroed_attr();
        a.qp_state = sys::IBV_QPS_RTS;
        a.timeout = self.config.timeout;
        a.retry_cnt = self.config.retry_cnt;
        a.rnr_retry = self.config.rnr_retry;
        a.sq_psn = self.psn;
        a.max_rd_atomic = 1;
        let mask = sys::IBV_QP_STATE
            | sys::IBV_QP_TIMEOUT
            | sys::IBV_QP_RETRY_CNT
            | sys::IBV_QP_RNR_RETRY
            | sys::IBV_QP_SQ_PSN
            | sys::IBV_QP_MAX_QP_RD_ATOMIC;
        // SAFETY: the QP is live; a is valid for the masked fields.
        unsafe { result::modify_qp(self.ptr, &mut a, mask) }?;
        self.state = QpState::ReadyToSend;
        Ok(())
    }

    /// Runs whichever of INIT, RTR, RTS remain, towards `remote`.
    pub fn connect(&mut self, remote: &VerbsEndpoint) -> Result<()> {
        if self.state == QpState::Reset {
            self.to_init()?;
        }
        if self.state == QpState::Init {
            self.to_rtr(remote)?;
        }
        if self.state == QpState::ReadyToReceive {
            self.to_rts()?;
        }
        Ok(())
    }

    /// Posts a zero-length receive: an incoming WRITE with immediate consumes it and completes
    /// on the receive CQ with the immediate value. Allowed from INIT on, so receives can be
    /// posted before the peer starts writing (otherwise it meets receiver-not-ready).
    pub fn post_recv(&self, wr_id: u64) -> Result<()> {
        if self.state == QpState::Reset {
            return Err(VerbsError::InvalidArgument {
                call: "ibv_post_recv",
                what: "QP is Reset; receives need INIT or later".to_string(),
            });
        }
        let mut wr = sys::ibv_recv_wr { wr_id, next: std::ptr::null_mut(), sg_list: std::ptr::null_mut(), num_sge: 0 };
        // SAFETY: the QP is live; no memory is named.
        unsafe { result::post_recv(self.ptr, &mut wr) }
    }

    /// Posts a signalled RDMA WRITE with immediate of `local[local_offset .. local_offset + len]`
    /// to `remote.addr + remote_offset`; the peer gets `imm` in its receive completion. Ranges,
    /// protection domain, state and the port's message size are checked first.
    ///
    /// # Safety
    /// Until this request's completion (matched by `wr_id`) has been polled from the send CQ,
    /// `local` must not be dropped and the CPU must not write the source range.
    #[allow(clippy::too_many_arguments)] // one argument per field of the work request
    pub unsafe fn post_write_with_imm(
        &self,
        wr_id: u64,
        local: &MemoryRegion,
        local_offset: usize,
        len: u32,
        remote: RemoteRegion,
        remote_offset: u64,
        imm: u32,
    ) -> Result<()> {
        let call = "ibv_post_send";
        let bad = |what: String| Err(VerbsError::InvalidArgument { call, what });
        if self.state != QpState::ReadyToSend {
            return bad(format!("QP is {:?}, WRITE needs ReadyToSend", self.state));
        }
        if !Arc::ptr_eq(local.pd(), &self.pd) {
            return bad("local region is registered in another protection domain".to_string());
        }
        if len > self.port.max_msg_bytes {
            return bad(format!("{len} bytes exceeds the port's max message size {}", self.port.max_msg_bytes));
        }
        match local_offset.checked_add(len as usize) {
            Some(end) if end <= local.len() => {}
            _ => return bad(format!("local range {local_offset}+{len} outside the region ({} bytes)", local.len())),
        }
        match remote_offset.checked_add(u64::from(len)) {
            Some(end) if end <= remote.len => {}
            _ => return bad(format!("remote range {remote_offset}+{len} outside the region ({} bytes)", remote.len)),
        }
        let Some(remote_addr) = remote.addr.checked_add(remote_offset) else {
            return bad(format!("remote address {:#x} + offset {remote_offset} overflows", remote.addr));
        };
        let mut sge = sys::ibv_sge { addr: local.addr() + local_offset as u64, length: len, lkey: local.lkey() };
        // SAFETY: ibv_send_wr is plain data (pointers, integers, unions of those); zero is valid.
        let mut wr: sys::ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = wr_id;
        wr.next = std::ptr::null_mut();
        wr.sg_list = &mut sge;
        wr.num_sge = 1;
        wr.opcode = sys::IBV_WR_RDMA_WRITE_WITH_IMM;
        wr.send_flags = sys::IBV_SEND_SIGNALED;
        wr.imm_data = imm.to_be();
        wr.wr.rdma = sys::ibv_send_wr_rdma { remote_addr, rkey: remote.rkey };
        // SAFETY: the QP is live; sge outlives the call (the provider copies it into the WQE);
        // the caller keeps the source memory valid until completion.
        unsafe { result::post_send(self.ptr, &mut wr) }
    }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        // SAFETY: dropped once; the PD and CQs are still held by this struct's fields, which
        // drop after this body.
        if let Err(e) = unsafe { result::destroy_qp(self.ptr) } {
            log::warn!("{e}");
        }
        self.send_cq.release(self.send_depth);
        self.recv_cq.release(self.recv_depth);
    }
}

impl std::fmt::Debug for QueuePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuePair")
            .field("qpn", &self.qpn())
            .field("state", &self.state)
            .field("port", &self.port.port)
            .field("gid_index", &self.gid_index)
            .finish()
    }
}
