//! Raw libibverbs declarations and the run-time loaded function table.
//!
//! Layer 1 of 3 (sys / result / safe). Everything here mirrors rdma-core's `infiniband/verbs.h`
//! (checked against rdma-core 44 by `rdma/tests/verbs_layout.rs`, which compiles a C program
//! against the real header and compares every size, offset and constant declared below).
//! Only what the backend uses is declared; structs the backend reads or writes are declared in
//! full so their sizes can be checked, structs it only passes by pointer are opaque.
//!
//! The library is opened with `dlopen` on first use, never at link time: the default build and
//! machines without rdma-core work, and verbs selection falls back to TCP.

#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::fmt;
use std::sync::OnceLock;

use libc::{pthread_cond_t, pthread_mutex_t};

// ---------------------------------------------------------------------------------------------
// Constants (enums in verbs.h; enum types with only non-negative values are `unsigned int`
// in the C ABI, those with a -1 member are `int`)
// ---------------------------------------------------------------------------------------------

pub const IBV_SYSFS_NAME_MAX: usize = 64;
pub const IBV_SYSFS_PATH_MAX: usize = 256;

pub type ibv_node_type = c_int;
pub type ibv_transport_type = c_int;

/// `enum ibv_mtu`: path MTU codes, 256 << (code - 1) bytes.
pub type ibv_mtu = c_uint;
pub const IBV_MTU_256: ibv_mtu = 1;
pub const IBV_MTU_512: ibv_mtu = 2;
pub const IBV_MTU_1024: ibv_mtu = 3;
pub const IBV_MTU_2048: ibv_mtu = 4;
pub const IBV_MTU_4096: ibv_mtu = 5;

pub type ibv_port_state = c_uint;
pub const IBV_PORT_NOP: ibv_port_state = 0;
pub const IBV_PORT_DOWN: ibv_port_state = 1;
pub const IBV_PORT_INIT: ibv_port_state = 2;
pub const IBV_PORT_ARMED: ibv_port_state = 3;
pub const IBV_PORT_ACTIVE: ibv_port_state = 4;
pub const IBV_PORT_ACTIVE_DEFER: ibv_port_state = 5;

/// `ibv_port_attr.link_layer` values (an anonymous enum in verbs.h).
pub const IBV_LINK_LAYER_UNSPECIFIED: u8 = 0;
pub const IBV_LINK_LAYER_INFINIBAND: u8 = 1;
pub const IBV_LINK_LAYER_ETHERNET: u8 = 2;

pub type ibv_gid_type = c_uint;
pub const IBV_GID_TYPE_IB: ibv_gid_type = 0;
pub const IBV_GID_TYPE_ROCE_V1: ibv_gid_type = 1;
pub const IBV_GID_TYPE_ROCE_V2: ibv_gid_type = 2;

pub type ibv_wc_status = c_uint;
pub const IBV_WC_SUCCESS: ibv_wc_status = 0;
pub const IBV_WC_LOC_LEN_ERR: ibv_wc_status = 1;
pub const IBV_WC_LOC_QP_OP_ERR: ibv_wc_status = 2;
pub const IBV_WC_LOC_PROT_ERR: ibv_wc_status = 4;
pub const IBV_WC_WR_FLUSH_ERR: ibv_wc_status = 5;
pub const IBV_WC_REM_ACCESS_ERR: ibv_wc_status = 10;
pub const IBV_WC_RETRY_EXC_ERR: ibv_wc_status = 12;
pub const IBV_WC_RNR_RETRY_EXC_ERR: ibv_wc_status = 13;
pub const IBV_WC_GENERAL_ERR: ibv_wc_status = 21;

pub type ibv_wc_opcode = c_uint;
pub const IBV_WC_SEND: ibv_wc_opcode = 0;
pub const IBV_WC_RDMA_WRITE: ibv_wc_opcode = 1;
pub const IBV_WC_RDMA_READ: ibv_wc_opcode = 2;
pub const IBV_WC_RECV: ibv_wc_opcode = 1 << 7;
pub const IBV_WC_RECV_RDMA_WITH_IMM: ibv_wc_opcode = (1 << 7) + 1;

/// `enum ibv_wc_flags`.
pub const IBV_WC_GRH: c_uint = 1 << 0;
pub const IBV_WC_WITH_IMM: c_uint = 1 << 1;

/// `enum ibv_access_flags`.
pub const IBV_ACCESS_LOCAL_WRITE: c_int = 1;
pub const IBV_ACCESS_REMOTE_WRITE: c_int = 1 << 1;
pub const IBV_ACCESS_REMOTE_READ: c_int = 1 << 2;
pub const IBV_ACCESS_REMOTE_ATOMIC: c_int = 1 << 3;
/// `IBV_ACCESS_OPTIONAL_FIRST`: flags from here on make the `ibv_reg_mr` macro call
/// `ibv_reg_mr_iova2` instead; this backend never sets them.
pub const IBV_ACCESS_OPTIONAL_FIRST: c_int = 1 << 20;

pub type ibv_qp_type = c_uint;
pub const IBV_QPT_RC: ibv_qp_type = 2;
pub const IBV_QPT_UC: ibv_qp_type = 3;
pub const IBV_QPT_UD: ibv_qp_type = 4;

/// `enum ibv_qp_attr_mask`: which `ibv_qp_attr` fields `ibv_modify_qp` reads.
pub const IBV_QP_STATE: c_int = 1 << 0;
pub const IBV_QP_ACCESS_FLAGS: c_int = 1 << 3;
pub const IBV_QP_PKEY_INDEX: c_int = 1 << 4;
pub const IBV_QP_PORT: c_int = 1 << 5;
pub const IBV_QP_AV: c_int = 1 << 7;
pub const IBV_QP_PATH_MTU: c_int = 1 << 8;
pub const IBV_QP_TIMEOUT: c_int = 1 << 9;
pub const IBV_QP_RETRY_CNT: c_int = 1 << 10;
pub const IBV_QP_RNR_RETRY: c_int = 1 << 11;
pub const IBV_QP_RQ_PSN: c_int = 1 << 12;
pub const IBV_QP_MAX_QP_RD_ATOMIC: c_int = 1 << 13;
pub const IBV_QP_MIN_RNR_TIMER: c_int = 1 << 15;
pub const IBV_QP_SQ_PSN: c_int = 1 << 16;
pub const IBV_QP_MAX_DEST_RD_ATOMIC: c_int = 1 << 17;
pub const IBV_QP_DEST_QPN: c_int = 1 << 20;

pub type ibv_qp_state = c_uint;
pub const IBV_QPS_RESET: ibv_qp_state = 0;
pub const IBV_QPS_INIT: ibv_qp_state = 1;
pub const IBV_QPS_RTR: ibv_qp_state = 2;
pub const IBV_QPS_RTS: ibv_qp_state = 3;
pub const IBV_QPS_ERR: ibv_qp_state = 6;

pub type ibv_mig_state = c_uint;

pub type ibv_wr_opcode = c_uint;
pub const IBV_WR_RDMA_WRITE: ibv_wr_opcode = 0;
pub const IBV_WR_RDMA_WRITE_WITH_IMM: ibv_wr_opcode = 1;
pub const IBV_WR_SEND: ibv_wr_opcode = 2;
pub const IBV_WR_SEND_WITH_IMM: ibv_wr_opcode = 3;
pub const IBV_WR_RDMA_READ: ibv_wr_opcode = 4;

/// `enum ibv_send_flags`.
pub const IBV_SEND_FENCE: c_uint = 1 << 0;
pub const IBV_SEND_SIGNALED: c_uint = 1 << 1;
pub const IBV_SEND_SOLICITED: c_uint = 1 << 2;
pub const IBV_SEND_INLINE: c_uint = 1 << 3;

// ---------------------------------------------------------------------------------------------
// Structs
// ---------------------------------------------------------------------------------------------

/// `union ibv_gid`: 16 bytes, aligned to 8 by its `__be64` member.
#[repr(C)]
#[derive(Clone, Copy)]
pub union ibv_gid {
    pub raw: [u8; 16],
    pub global: ibv_gid_global,
}

/// The `global` member of `union ibv_gid` (both fields big-endian).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ibv_gid_global {
    pub subnet_prefix: u64,
    pub interface_id: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ibv_gid_entry {
    pub gid: ibv_gid,
    pub gid_index: u32,
    pub port_num: u32,
    pub gid_type: ibv_gid_type,
    pub ndev_ifindex: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct _ibv_device_ops {
    pub _dummy1: Option<unsafe extern "C" fn(*mut ibv_device, c_int) -> *mut ibv_context>,
    pub _dummy2: Option<unsafe extern "C" fn(*mut ibv_context)>,
}

#[repr(C)]
pub struct ibv_device {
    pub _ops: _ibv_device_ops,
    pub node_type: ibv_node_type,
    pub transport_type: ibv_transport_type,
    pub name: [c_char; IBV_SYSFS_NAME_MAX],
    pub dev_name: [c_char; IBV_SYSFS_NAME_MAX],
    pub dev_path: [c_char; IBV_SYSFS_PATH_MAX],
    pub ibdev_path: [c_char; IBV_SYSFS_PATH_MAX],
}

/// Entries this backend never calls are kept, untyped, so that `post_send`, `post_recv` and
/// `poll_cq` sit at their real offsets and `struct ibv_context` has its real size.
type UnusedOp = Option<unsafe extern "C" fn()>;

#[repr(C)]
pub struct ibv_context_ops {
    pub _compat_query_device: UnusedOp,
    pub _compat_query_port: UnusedOp,
    pub _compat_alloc_pd: UnusedOp,
    pub _compat_dealloc_pd: UnusedOp,
    pub _compat_reg_mr: UnusedOp,
    pub _compat_rereg_mr: UnusedOp,
    pub _compat_dereg_mr: UnusedOp,
    pub alloc_mw: UnusedOp,
    pub bind_mw: UnusedOp,
    pub dealloc_mw: UnusedOp,
    pub _compat_create_cq: UnusedOp,
    pub poll_cq: Option<unsafe extern "C" fn(cq: *mut ibv_cq, num_entries: c_int, wc: *mut ibv_wc) -> c_int>,
    pub req_notify_cq: UnusedOp,
    pub _compat_cq_event: UnusedOp,
    pub _compat_resize_cq: UnusedOp,
    pub _compat_destroy_cq: UnusedOp,
    pub _compat_create_srq: UnusedOp,
    pub _compat_modify_srq: UnusedOp,
    pub _compat_query_srq: UnusedOp,
    pub _compat_destroy_srq: UnusedOp,
    pub post_srq_recv: UnusedOp,
    pub _compat_create_qp: UnusedOp,
    pub _compat_query_qp: UnusedOp,
    pub _compat_modify_qp: UnusedOp,
    pub _compat_destroy_qp: UnusedOp,
    pub post_send:
        Option<unsafe extern "C" fn(qp: *mut ibv_qp, wr: *mut ibv_send_wr, bad_wr: *mut *mut ibv_send_wr) -> c_int>,
    pub post_recv:
        Option<unsafe extern "C" fn(qp: *mut ibv_qp, wr: *mut ibv_recv_wr, bad_wr: *mut *mut ibv_recv_wr) -> c_int>,
    pub _compat_create_ah: UnusedOp,
    pub _compat_destroy_ah: UnusedOp,
    pub _compat_attach_mcast: UnusedOp,
    pub _compat_detach_mcast: UnusedOp,
    pub _compat_async_event: UnusedOp,
}

#[repr(C)]
pub struct ibv_context {
    pub device: *mut ibv_device,
    pub ops: ibv_context_ops,
    pub cmd_fd: c_int,
    pub async_fd: c_int,
    pub num_comp_vectors: c_int,
    pub mutex: pthread_mutex_t,
    pub abi_compat: *mut c_void,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ibv_device_attr {
    pub fw_ver: [c_char; 64],
    pub node_guid: u64,
    pub sys_image_guid: u64,
    pub max_mr_size: u64,
    pub page_size_cap: u64,
    pub vendor_id: u32,
    pub vendor_part_id: u32,
    pub hw_ver: u32,
    pub max_qp: c_int,
    pub max_qp_wr: c_int,
    pub device_cap_flags: c_uint,
    pub max_sge: c_int,
    pub max_sge_rd: c_int,
    pub max_cq: c_int,
    pub max_cqe: c_int,
    pub max_mr: c_int,
    pub max_pd: c_int,
    pub max_qp_rd_atom: c_int,
    pub max_ee_rd_atom: c_int,
    pub max_res_rd_atom: c_int,
    pub max_qp_init_rd_atom: c_int,
    pub max_ee_init_rd_atom: c_int,
    pub atomic_cap: c_uint,
    pub max_ee: c_int,
    pub max_rdd: c_int,
    pub max_mw: c_int,
    pub max_raw_ipv6_qp: c_int,
    pub max_raw_ethy_qp: c_int,
    pub max_mcast_grp: c_int,
    pub max_mcast_qp_attach: c_int,
    pub max_total_mcast_qp_attach: c_int,
    pub max_ah: c_int,
    pub max_fmr: c_int,
    pub max_map_per_fmr: c_int,
    pub max_srq: c_int,
    pub max_srq_wr: c_int,
    pub max_srq_sge: c_int,
    pub max_pkeys: u16,
    pub local_ca_ack_delay: u8,
    pub phys_port_cnt: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ibv_port_attr {
    pub state: ibv_port_state,
    pub max_mtu: ibv_mtu,
    pub active_mtu: ibv_mtu,
    pub gid_tbl_len: c_int,
    pub port_cap_flags: u32,
    pub max_msg_sz: u32,
    pub bad_pkey_cntr: u32,
    pub qkey_viol_cntr: u32,
    pub pkey_tbl_len: u16,
    pub lid: u16,
    pub sm_lid: u16,
    pub lmc: u8,
    pub max_vl_num: u8,
    pub sm_sl: u8,
    pub subnet_timeout: u8,
    pub init_type_reply: u8,
    pub active_width: u8,
    pub active_speed: u8,
    pub phys_state: u8,
    pub link_layer: u8,
    pub flags: u8,
    pub port_cap_flags2: u16,
}

#[repr(C)]
pub struct ibv_pd {
    pub context: *mut ibv_context,
    pub handle: u32,
}

#[repr(C)]
pub struct ibv_mr {
    pub context: *mut ibv_context,
    pub pd: *mut ibv_pd,
    pub addr: *mut c_void,
    pub length: usize,
    pub handle: u32,
    pub lkey: u32,
    pub rkey: u32,
}

/// Opaque: this backend polls and never creates completion channels.
#[repr(C)]
pub struct ibv_comp_channel {
    _private: [u8; 0],
}

/// Opaque: this backend uses no shared receive queue.
#[repr(C)]
pub struct ibv_srq {
    _private: [u8; 0],
}

#[repr(C)]
pub struct ibv_cq {
    pub context: *mut ibv_context,
    pub channel: *mut ibv_comp_channel,
    pub cq_context: *mut c_void,
    pub handle: u32,
    pub cqe: c_int,
    pub mutex: pthread_mutex_t,
    pub cond: pthread_cond_t,
    pub comp_events_completed: u32,
    pub async_events_completed: u32,
}

#[repr(C)]
pub struct ibv_qp {
    pub context: *mut ibv_context,
    pub qp_context: *mut c_void,
    pub pd: *mut ibv_pd,
    pub send_cq: *mut ibv_cq,
    pub recv_cq: *mut ibv_cq,
    pub srq: *mut ibv_srq,
    pub handle: u32,
    pub qp_num: u32,
    pub state: ibv_qp_state,
    pub qp_type: ibv_qp_type,
    pub mutex: pthread_mutex_t,
    pub cond: pthread_cond_t,
    pub events_completed: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ibv_qp_cap {
    pub max_send_wr: u32,
    pub max_recv_wr: u32,
    pub max_send_sge: u32,
    pub max_recv_sge: u32,
    pub max_inline_data: u32,
}

#[repr(C)]
pub struct ibv_qp_init_attr {
    pub qp_context: *mut c_void,
    pub send_cq: *mut ibv_cq,
    pub recv_cq: *mut ibv_cq,
    pub srq: *mut ibv_srq,
    pub cap: ibv_qp_cap,
    pub qp_type: ibv_qp_type,
    pub sq_sig_all: c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ibv_global_route {
    pub dgid: ibv_gid,
    pub flow_label: u32,
    pub sgid_index: u8,
    pub hop_limit: u8,
    pub traffic_class: u8,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ibv_ah_attr {
    pub grh: ibv_global_route,
    pub dlid: u16,
    pub sl: u8,
    pub src_path_bits: u8,
    pub static_rate: u8,
    pub is_global: u8,
    pub port_num: u8,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ibv_qp_attr {
    pub qp_state: ibv_qp_state,
    pub cur_qp_state: ibv_qp_state,
    pub path_mtu: ibv_mtu,
    pub path_mig_state: ibv_mig_state,
    pub qkey: u32,
    pub rq_psn: u32,
    pub sq_psn: u32,
    pub dest_qp_num: u32,
    pub qp_access_flags: c_uint,
    pub cap: ibv_qp_cap,
    pub ah_attr: ibv_ah_attr,
    pub alt_ah_attr: ibv_ah_attr,
    pub pkey_index: u16,
    pub alt_pkey_index: u16,
    pub en_sqd_async_notify: u8,
    pub sq_draining: u8,
    pub max_rd_atomic: u8,
    pub max_dest_rd_atomic: u8,
    pub min_rnr_timer: u8,
    pub port_num: u8,
    pub timeout: u8,
    pub retry_cnt: u8,
    pub rnr_retry: u8,
    pub alt_port_num: u8,
    pub alt_timeout: u8,
    pub rate_limit: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ibv_sge {
    pub addr: u64,
    pub length: u32,
    pub lkey: u32,
}

/// `wr.rdma` of `struct ibv_send_wr`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ibv_send_wr_rdma {
    pub remote_addr: u64,
    pub rkey: u32,
}

/// `wr.atomic` of `struct ibv_send_wr` (declared so the union has its real size).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ibv_send_wr_atomic {
    pub remote_addr: u64,
    pub compare_add: u64,
    pub swap: u64,
    pub rkey: u32,
}

/// `wr.ud` of `struct ibv_send_wr`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ibv_send_wr_ud {
    pub ah: *mut c_void,
    pub remote_qpn: u32,
    pub remote_qkey: u32,
}

/// The `wr` union of `struct ibv_send_wr`.
#[repr(C)]
#[derive(Clone, Copy)]
pub union ibv_send_wr_wr {
    pub rdma: ibv_send_wr_rdma,
    pub atomic: ibv_send_wr_atomic,
    pub ud: ibv_send_wr_ud,
}

/// `struct ibv_mw_bind_info`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ibv_mw_bind_info {
    pub mr: *mut ibv_mr,
    pub addr: u64,
    pub length: u64,
    pub mw_access_flags: c_uint,
}

/// `bind_mw` member of the last, anonymous union of `struct ibv_send_wr`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ibv_send_wr_bind_mw {
    pub mw: *mut c_void,
    pub rkey: u32,
    pub bind_info: ibv_mw_bind_info,
}

/// `tso` member of the last, anonymous union of `struct ibv_send_wr`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ibv_send_wr_tso {
    pub hdr: *mut c_void,
    pub hdr_sz: u16,
    pub mss: u16,
}

/// The last, anonymous union of `struct ibv_send_wr` (C names its members `bind_mw` and `tso`).
#[repr(C)]
#[derive(Clone, Copy)]
pub union ibv_send_wr_bind_mw_or_tso {
    pub bind_mw: ibv_send_wr_bind_mw,
    pub tso: ibv_send_wr_tso,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ibv_send_wr {
    pub wr_id: u64,
    pub next: *mut ibv_send_wr,
    pub sg_list: *mut ibv_sge,
    pub num_sge: c_int,
    pub opcode: ibv_wr_opcode,
    pub send_flags: c_uint,
    /// Anonymous union `{ __be32 imm_data; uint32_t invalidate_rkey; }`: immediate data in
    /// network byte order for `*_WITH_IMM` opcodes.
    pub imm_data: u32,
    pub wr: ibv_send_wr_wr,
    /// `union { struct { uint32_t remote_srqn; } xrc; } qp_type`.
    pub qp_type: u32,
    pub bind_mw_or_tso: ibv_send_wr_bind_mw_or_tso,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ibv_recv_wr {
    pub wr_id: u64,
    pub next: *mut ibv_recv_wr,
    pub sg_list: *mut ibv_sge,
    pub num_sge: c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ibv_wc {
    pub wr_id: u64,
    pub status: ibv_wc_status,
    pub opcode: ibv_wc_opcode,
    pub vendor_err: u32,
    pub byte_len: u32,
    /// Anonymous union `{ __be32 imm_data; uint32_t invalidated_rkey; }`: immediate data in
    /// network byte order when `wc_flags & IBV_WC_WITH_IMM`.
    pub imm_data: u32,
    pub qp_num: u32,
    pub src_qp: u32,
    pub wc_flags: c_uint,
    pub pkey_index: u16,
    pub slid: u16,
    pub sl: u8,
    pub dlid_path_bits: u8,
}

// ---------------------------------------------------------------------------------------------
// Inline verbs, rewritten
// ---------------------------------------------------------------------------------------------
//
// verbs.h defines ibv_post_send, ibv_post_recv and ibv_poll_cq as `static inline` functions:
// they are not exported by libibverbs.so, so dlsym cannot find them. Each is one indirect call
// through the provider's function table in `qp->context->ops` / `cq->context->ops` (the data
// path never enters libibverbs itself), which is what these functions do.

/// `ibv_post_send`: returns 0 or an errno value, and sets `*bad_wr` to the first failing request.
///
/// # Safety
/// `qp` must be a live QP from `ibv_create_qp`; `wr` a valid, null-terminated list whose SGEs
/// name registered memory that stays valid until the requests complete.
pub unsafe fn ibv_post_send(qp: *mut ibv_qp, wr: *mut ibv_send_wr, bad_wr: *mut *mut ibv_send_wr) -> c_int {
    // SAFETY: the caller guarantees `qp` is live, so `qp->context` is the live context it was
    // created in, whose ops table the provider filled at ibv_open_device.
    match unsafe { (*(*qp).context).ops.post_send } {
        // SAFETY: forwarded caller contract, the same call the C inline makes.
        Some(f) => unsafe { f(qp, wr, bad_wr) },
        None => libc::EOPNOTSUPP,
    }
}

/// `ibv_post_recv`: returns 0 or an errno value, and sets `*bad_wr` to the first failing request.
///
/// # Safety
/// As [`ibv_post_send`], for the receive queue.
pub unsafe fn ibv_post_recv(qp: *mut ibv_qp, wr: *mut ibv_recv_wr, bad_wr: *mut *mut ibv_recv_wr) -> c_int {
    // SAFETY: as in ibv_post_send.
    match unsafe { (*(*qp).context).ops.post_recv } {
        // SAFETY: forwarded caller contract.
        Some(f) => unsafe { f(qp, wr, bad_wr) },
        None => libc::EOPNOTSUPP,
    }
}

/// `ibv_poll_cq`: returns the number of completions written to `wc` (at most `num_entries`),
/// or a negative value on error.
///
/// # Safety
/// `cq` must be a live CQ from `ibv_create_cq` and `wc` must have room for `num_entries` entries.
pub unsafe fn ibv_poll_cq(cq: *mut ibv_cq, num_entries: c_int, wc: *mut ibv_wc) -> c_int {
    // SAFETY: the caller guarantees `cq` is live, so `cq->context` is its live context.
    match unsafe { (*(*cq).context).ops.poll_cq } {
        // SAFETY: forwarded caller contract.
        Some(f) => unsafe { f(cq, num_entries, wc) },
        None => -libc::EOPNOTSUPP,
    }
}

// ---------------------------------------------------------------------------------------------
// The dlopen table
// ---------------------------------------------------------------------------------------------

/// Library names tried, in order: the runtime soname (package `libibverbs1`), then the
/// development symlink (package `libibverbs-dev`).
pub const LIBRARY_NAMES: [&str; 2] = ["libibverbs.so.1", "libibverbs.so"];

/// Exported libibverbs functions this backend calls.
///
/// Two entry points are macros in verbs.h and are bound to the symbols the macros expand to:
/// - `ibv_query_port` is a macro over the inline `___ibv_query_port`, which calls the provider's
///   `query_port` through `struct verbs_context` (private to rdma-core, laid out before
///   `struct ibv_context` in memory) or, when that entry is absent, zeroes the attribute struct
///   and calls the exported `ibv_query_port` symbol. We take the second path always: zero the
///   full `ibv_port_attr` and call the exported symbol, which fills every field up to `flags`
///   (the `_compat_ibv_port_attr` prefix), including `link_layer`. Only `port_cap_flags2`,
///   which this backend does not read, stays zero.
/// - `ibv_reg_mr` is a macro that calls the exported `ibv_reg_mr` when no flag of
///   `IBV_ACCESS_OPTIONAL_RANGE` is set, which is always so here.
///
/// `ibv_query_gid_ex` is inline over `_ibv_query_gid_ex` (rdma-core ≥ 32); it is optional.
pub struct Lib {
    /// The name that `dlopen` accepted.
    pub name: String,
    pub ibv_get_device_list: unsafe extern "C" fn(num_devices: *mut c_int) -> *mut *mut ibv_device,
    pub ibv_free_device_list: unsafe extern "C" fn(list: *mut *mut ibv_device),
    pub ibv_get_device_name: unsafe extern "C" fn(device: *mut ibv_device) -> *const c_char,
    pub ibv_open_device: unsafe extern "C" fn(device: *mut ibv_device) -> *mut ibv_context,
    pub ibv_close_device: unsafe extern "C" fn(context: *mut ibv_context) -> c_int,
    pub ibv_query_device: unsafe extern "C" fn(context: *mut ibv_context, attr: *mut ibv_device_attr) -> c_int,
    pub ibv_query_port: unsafe extern "C" fn(context: *mut ibv_context, port: u8, attr: *mut ibv_port_attr) -> c_int,
    pub ibv_query_gid:
        unsafe extern "C" fn(context: *mut ibv_context, port: u8, index: c_int, gid: *mut ibv_gid) -> c_int,
    pub _ibv_query_gid_ex: Option<
        unsafe extern "C" fn(
            context: *mut ibv_context,
            port: u32,
            index: u32,
            entry: *mut ibv_gid_entry,
            flags: u32,
            entry_size: usize,
        ) -> c_int,
    >,
    pub ibv_alloc_pd: unsafe extern "C" fn(context: *mut ibv_context) -> *mut ibv_pd,
    pub ibv_dealloc_pd: unsafe extern "C" fn(pd: *mut ibv_pd) -> c_int,
    pub ibv_reg_mr:
        unsafe extern "C" fn(pd: *mut ibv_pd, addr: *mut c_void, length: usize, access: c_int) -> *mut ibv_mr,
    pub ibv_dereg_mr: unsafe extern "C" fn(mr: *mut ibv_mr) -> c_int,
    pub ibv_create_cq: unsafe extern "C" fn(
        context: *mut ibv_context,
        cqe: c_int,
        cq_context: *mut c_void,
        channel: *mut ibv_comp_channel,
        comp_vector: c_int,
    ) -> *mut ibv_cq,
    pub ibv_destroy_cq: unsafe extern "C" fn(cq: *mut ibv_cq) -> c_int,
    pub ibv_create_qp: unsafe extern "C" fn(pd: *mut ibv_pd, attr: *mut ibv_qp_init_attr) -> *mut ibv_qp,
    pub ibv_modify_qp: unsafe extern "C" fn(qp: *mut ibv_qp, attr: *mut ibv_qp_attr, attr_mask: c_int) -> c_int,
    pub ibv_destroy_qp: unsafe extern "C" fn(qp: *mut ibv_qp) -> c_int,
    pub ibv_wc_status_str: unsafe extern "C" fn(status: ibv_wc_status) -> *const c_char,
}

/// Why libibverbs could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// No candidate name could be opened; each name with its `dlerror()` text.
    NotFound { tried: Vec<(String, String)> },
    /// The library opened but lacks a required symbol (an rdma-core too old or not rdma-core).
    MissingSymbol { library: String, symbol: &'static str },
    /// [`lib_from`] named other libraries than the one the process-wide table came from.
    AlreadyLoaded { loaded: String, requested: Vec<String> },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::NotFound { tried } => {
                write!(f, "libibverbs not found (install rdma-core's libibverbs1); tried")?;
                for (i, (name, why)) in tried.iter().enumerate() {
                    write!(f, "{} {name} ({why})", if i == 0 { "" } else { "," })?;
                }
                Ok(())
            }
            LoadError::MissingSymbol { library, symbol } => {
                write!(f, "{library} has no symbol {symbol} (rdma-core too old?)")
            }
            LoadError::AlreadyLoaded { loaded, requested } => write!(
                f,
                "libibverbs is already loaded from {loaded}; cannot load it from {} as well",
                requested.join(", ")
            ),
        }
    }
}

impl std::error::Error for LoadError {}

static LIB: OnceLock<Result<Lib, LoadError>> = OnceLock::new();

/// The process-wide table, loaded on first use from [`LIBRARY_NAMES`]; a failure is kept too,
/// so a missing library is looked for once.
pub fn lib() -> Result<&'static Lib, &'static LoadError> {
    LIB.get_or_init(|| load_from(&LIBRARY_NAMES)).as_ref()
}

/// Loads the process-wide table from `names` (a configured path, or a test double) instead of
/// [`LIBRARY_NAMES`]. Must come before any other verbs call: once the table is loaded, naming
/// other libraries is refused with [`LoadError::AlreadyLoaded`] rather than silently ignored.
/// Calling it again with the same names returns the same table (or the same error).
pub fn lib_from(names: &[&str]) -> Result<&'static Lib, LoadError> {
    let mut ours = false;
    let r = LIB.get_or_init(|| {
        ours = true;
        load_from(names)
    });
    let from_these = match r {
        Ok(l) => names.contains(&l.name.as_str()),
        Err(LoadError::NotFound { tried }) => tried.iter().map(|(n, _)| n.as_str()).eq(names.iter().copied()),
        Err(LoadError::MissingSymbol { library, .. }) => names.contains(&library.as_str()),
        Err(LoadError::AlreadyLoaded { .. }) => ours,
    };
    if !from_these {
        let loaded = match r {
            Ok(l) => l.name.clone(),
            Err(e) => format!("(failed: {e})"),
        };
        return Err(LoadError::AlreadyLoaded { loaded, requested: names.iter().map(|n| n.to_string()).collect() });
    }
    r.as_ref().map_err(Clone::clone)
}

fn dlerror_text() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string valid until the next dl* call on
    // this thread; it is copied at once.
    let p = unsafe { libc::dlerror() };
    if p.is_null() {
        "unknown dlopen error".to_string()
    } else {
        // SAFETY: non-null, NUL-terminated (see above).
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// Opens the first of `names` that `dlopen` accepts and resolves the table from it.
/// [`lib`] calls this once with [`LIBRARY_NAMES`]; tests call it with other names.
pub fn load_from(names: &[&str]) -> Result<Lib, LoadError> {
    let mut tried = Vec::with_capacity(names.len());
    for &name in names {
        let Ok(cname) = CString::new(name) else {
            tried.push((name.to_string(), "name contains a NUL byte".to_string()));
            continue;
        };
        // SAFETY: cname is NUL-terminated. The handle is never closed: the table's function
        // pointers live as long as the process.
        let handle = unsafe { libc::dlopen(cname.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            tried.push((name.to_string(), dlerror_text()));
            continue;
        }
        return resolve(handle, name);
    }
    Err(LoadError::NotFound { tried })
}

/// A function pointer of type `F` from a non-null `dlsym` result.
///
/// # Safety
/// `F` must be an `extern "C"` function pointer type matching the symbol's C prototype.
unsafe fn fn_from_symbol<F: Copy>(p: *mut c_void) -> F {
    assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>(), "F must be a function pointer");
    // SAFETY: sizes are equal (asserted); the caller guarantees F is the symbol's type.
    unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) }
}

fn resolve(handle: *mut c_void, name: &str) -> Result<Lib, LoadError> {
    let sym = |symbol: &'static str| -> Result<*mut c_void, LoadError> {
        let c = CString::new(symbol).expect("symbol names are literals without NUL");
        // SAFETY: handle is a live dlopen handle and c is NUL-terminated.
        let p = unsafe { libc::dlsym(handle, c.as_ptr()) };
        if p.is_null() {
            Err(LoadError::MissingSymbol { library: name.to_string(), symbol })
        } else {
            Ok(p)
        }
    };
    macro_rules! func {
        ($symbol:literal) => {
            // SAFETY: the symbol is the libibverbs function of that name, whose C prototype
            // (verbs.h) the field type declares; dlsym gave its default (newest) version.
            unsafe { fn_from_symbol(sym($symbol)?) }
        };
    }
    let query_gid_ex = sym("_ibv_query_gid_ex").ok();
    let table = (|| -> Result<Lib, LoadError> {
        Ok(Lib {
            name: name.to_string(),
            ibv_get_device_list: func!("ibv_get_device_list"),
            ibv_free_device_list: func!("ibv_free_device_list"),
            ibv_get_device_name: func!("ibv_get_device_name"),
            ibv_open_device: func!("ibv_open_device"),
            ibv_close_device: func!("ibv_close_device"),
            ibv_query_device: func!("ibv_query_device"),
            ibv_query_port: func!("ibv_query_port"),
            ibv_query_gid: func!("ibv_query_gid"),
            // SAFETY: as in func!, for `_ibv_query_gid_ex` (verbs.h prototype) when present.
            _ibv_query_gid_ex: query_gid_ex.map(|p| unsafe { fn_from_symbol(p) }),
            ibv_alloc_pd: func!("ibv_alloc_pd"),
            ibv_dealloc_pd: func!("ibv_dealloc_pd"),
            ibv_reg_mr: func!("ibv_reg_mr"),
            ibv_dereg_mr: func!("ibv_dereg_mr"),
            ibv_create_cq: func!("ibv_create_cq"),
            ibv_destroy_cq: func!("ibv_destroy_cq"),
            ibv_create_qp: func!("ibv_create_qp"),
            ibv_modify_qp: func!("ibv_modify_qp"),
            ibv_destroy_qp: func!("ibv_destroy_qp"),
            ibv_wc_status_str: func!("ibv_wc_status_str"),
        })
    })();
    if table.is_err() {
        // SAFETY: handle came from dlopen and no pointer resolved from it escapes.
        unsafe { libc::dlclose(handle) };
    }
    table
}
