//! The inline verbs rewritten in `sys` (ibv_post_send, ibv_post_recv, ibv_poll_cq) dispatch
//! through `ctx->ops` exactly as verbs.h's inlines do. No hardware: a context whose ops table
//! points at test functions stands in for a provider (the table's layout itself is checked
//! against the real header by verbs_layout.rs).

use std::ffi::c_int;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU64, Ordering};

use rdma::verbs::{result, sys, VerbsError, WorkCompletion};

static LAST_WR_ID: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" fn fake_post_send(
    _qp: *mut sys::ibv_qp,
    wr: *mut sys::ibv_send_wr,
    _bad: *mut *mut sys::ibv_send_wr,
) -> c_int {
    // SAFETY: the test passes a valid work request.
    let wr = unsafe { &*wr };
    LAST_WR_ID.store(wr.wr_id, Ordering::SeqCst);
    // SAFETY: the test sets the rdma member.
    let rkey = unsafe { wr.wr.rdma.rkey };
    if wr.opcode == sys::IBV_WR_RDMA_WRITE_WITH_IMM && u32::from_be(wr.imm_data) == 42 && rkey == 7 {
        0
    } else {
        libc::EINVAL
    }
}

unsafe extern "C" fn fake_post_recv(
    _qp: *mut sys::ibv_qp,
    _wr: *mut sys::ibv_recv_wr,
    _bad: *mut *mut sys::ibv_recv_wr,
) -> c_int {
    libc::ENOMEM
}

unsafe extern "C" fn fake_poll_cq(_cq: *mut sys::ibv_cq, n: c_int, wc: *mut sys::ibv_wc) -> c_int {
    if n < 1 {
        return 0;
    }
    // SAFETY: the caller gave room for n >= 1 entries.
    unsafe {
        *wc = sys::ibv_wc {
            wr_id: 9,
            status: sys::IBV_WC_SUCCESS,
            opcode: sys::IBV_WC_RECV_RDMA_WITH_IMM,
            byte_len: 4096,
            imm_data: 0x0102_0304u32.to_be(),
            wc_flags: sys::IBV_WC_WITH_IMM,
            qp_num: 0x77,
            ..Default::default()
        };
    }
    1
}

/// A context, QP and CQ on the heap, linked by raw pointers as a provider links them; freed on
/// drop. `with_entries = false` leaves post_send and poll_cq empty.
struct Fake {
    ctx: *mut sys::ibv_context,
    qp: *mut sys::ibv_qp,
    cq: *mut sys::ibv_cq,
}

impl Fake {
    fn new(with_entries: bool) -> Fake {
        // SAFETY: these structs are plain data (pointers, integers, pthread objects that are
        // never locked here); all-zero is a valid value for each.
        let mut ctx: Box<sys::ibv_context> = Box::new(unsafe { std::mem::zeroed() });
        if with_entries {
            ctx.ops.post_send = Some(fake_post_send);
            ctx.ops.poll_cq = Some(fake_poll_cq);
        }
        ctx.ops.post_recv = Some(fake_post_recv);
        let ctx = Box::into_raw(ctx);
        // SAFETY: as above.
        let mut qp: Box<sys::ibv_qp> = Box::new(unsafe { std::mem::zeroed() });
        qp.context = ctx;
        qp.qp_num = 0x77;
        // SAFETY: as above.
        let mut cq: Box<sys::ibv_cq> = Box::new(unsafe { std::mem::zeroed() });
        cq.context = ctx;
        Fake { ctx, qp: Box::into_raw(qp), cq: Box::into_raw(cq) }
    }

    fn qp(&self) -> NonNull<sys::ibv_qp> {
        NonNull::new(self.qp).unwrap()
    }

    fn cq(&self) -> NonNull<sys::ibv_cq> {
        NonNull::new(self.cq).unwrap()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        // SAFETY: each pointer came from Box::into_raw in Fake::new and is freed once.
        unsafe {
            drop(Box::from_raw(self.qp));
            drop(Box::from_raw(self.cq));
            drop(Box::from_raw(self.ctx));
        }
    }
}

fn write_wr(wr_id: u64, imm: u32) -> sys::ibv_send_wr {
    // SAFETY: plain data, zero is valid.
    let mut wr: sys::ibv_send_wr = unsafe { std::mem::zeroed() };
    wr.wr_id = wr_id;
    wr.opcode = sys::IBV_WR_RDMA_WRITE_WITH_IMM;
    wr.imm_data = imm.to_be();
    wr.wr.rdma = sys::ibv_send_wr_rdma { remote_addr: 0x1000, rkey: 7 };
    wr
}

#[test]
fn post_send_goes_through_the_ops_table() {
    let f = Fake::new(true);
    let qp = f.qp();
    let mut wr = write_wr(5, 42);
    // SAFETY: the fake QP's context and ops are set up; the WR has no SGEs to read.
    unsafe { result::post_send(qp, &mut wr) }.unwrap();
    assert_eq!(LAST_WR_ID.load(Ordering::SeqCst), 5);
    let mut wr = write_wr(6, 43);
    // SAFETY: as above.
    let err = unsafe { result::post_send(qp, &mut wr) }.unwrap_err();
    assert_eq!(err, VerbsError::PostSend { qpn: 0x77, wr_id: 6, errno: libc::EINVAL });
    assert!(err.to_string().contains("ibv_post_send"), "{err}");
}

#[test]
fn post_recv_error_names_the_call_and_errno() {
    let f = Fake::new(true);
    let mut wr = sys::ibv_recv_wr { wr_id: 3, next: ptr::null_mut(), sg_list: ptr::null_mut(), num_sge: 0 };
    // SAFETY: fake QP with ops set up.
    let err = unsafe { result::post_recv(f.qp(), &mut wr) }.unwrap_err();
    assert_eq!(err, VerbsError::PostRecv { qpn: 0x77, wr_id: 3, errno: libc::ENOMEM });
}

#[test]
fn poll_cq_reads_completions_and_immediates() {
    let f = Fake::new(true);
    let mut wc = [sys::ibv_wc::default(); 4];
    // SAFETY: fake CQ with ops set up.
    let n = unsafe { result::poll_cq(f.cq(), &mut wc) }.unwrap();
    assert_eq!(n, 1);
    let c = WorkCompletion::from(wc[0]);
    assert!(c.is_success());
    assert_eq!((c.wr_id(), c.byte_len(), c.qp_num()), (9, 4096, 0x77));
    assert_eq!(c.opcode(), sys::IBV_WC_RECV_RDMA_WITH_IMM);
    assert_eq!(c.imm(), Some(0x0102_0304), "immediate converted from network order");
    // SAFETY: as above; an empty slice asks for nothing.
    assert_eq!(unsafe { result::poll_cq(f.cq(), &mut []) }.unwrap(), 0);
    let no_imm = WorkCompletion::from(sys::ibv_wc { wc_flags: 0, imm_data: 5, ..wc[0] });
    assert_eq!(no_imm.imm(), None);
}

#[test]
fn a_provider_without_the_entry_is_an_error_not_a_crash() {
    let f = Fake::new(false);
    let mut wr = write_wr(1, 42);
    // SAFETY: fake QP; the missing entry is handled before any call.
    let err = unsafe { result::post_send(f.qp(), &mut wr) }.unwrap_err();
    assert!(matches!(err, VerbsError::PostSend { errno, .. } if errno == libc::EOPNOTSUPP));
    let mut wc = [sys::ibv_wc::default(); 1];
    // SAFETY: as above.
    let err = unsafe { result::poll_cq(f.cq(), &mut wc) }.unwrap_err();
    assert_eq!(err, VerbsError::PollCq { rc: -libc::EOPNOTSUPP });
}
