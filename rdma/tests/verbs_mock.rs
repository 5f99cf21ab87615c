//! The verbs layer run end to end against a test double of libibverbs (tests/mock_ibverbs/mock_ibverbs.c,
//! compiled here with the system C compiler against rdma-core's own verbs.h): device and port queries, GID
//! selection, memory registration, RC queue pairs through INIT → RTR → RTS with endpoints exchanged as
//! bytes, RDMA WRITE with immediate through the rewritten inline verbs and the provider's ops table, and the
//! ways it fails. The double emulates an RC connection inside one process; it is not a NIC, and passing here
//! says nothing about timing, retries or real hardware (tests/verbs_loopback.rs is for that).

use std::sync::Arc;

use proptest::prelude::*;
use rdma::tcp::{self, Conn};
use rdma::verbs::sys::{self, LoadError};
use rdma::verbs::{
    self, Access, CompletionQueue, Context, LinkConfig, LinkEvent, MemoryKind, MemoryRegion, Probe, ProtectionDomain,
    QpConfig, QpState, QueuePair, RemoteRegion, VerbsEndpoint, VerbsError, VerbsLink, WorkCompletion,
};
use rdma::{Error, Secret};

#[path = "mock_ibverbs/harness.rs"]
mod harness;
use harness::{assert_clean, counter, setup};

const ROCE_PORT: u8 = 1;
const IB_PORT: u8 = 2;
const DOWN_PORT: u8 = 3;
const ROCE_PORT_B: u8 = 4;
const IB_PORT_B: u8 = 5;

/// The other port of the same link layer: the two ends of a pair sit on different ports, so a QP that
/// addresses its own port (GID or LID) instead of the peer's never reaches it.
fn partner(port: u8) -> u8 {
    match port {
        ROCE_PORT => ROCE_PORT_B,
        IB_PORT => IB_PORT_B,
        other => panic!("no partner for port {other}"),
    }
}

/// Host memory registered as a region (the buffer outlives the region: fields drop in order).
struct Buffer {
    mr: MemoryRegion,
    bytes: Vec<u8>,
}

impl Buffer {
    fn new(pd: &Arc<ProtectionDomain>, len: usize, fill: impl Fn(usize) -> u8, access: Access) -> Buffer {
        let mut bytes: Vec<u8> = (0..len).map(fill).collect();
        // SAFETY: the Vec's heap block outlives the region (dropped after `mr`) and is only read by the CPU
        // after the completions that write it have been polled.
        let mr = unsafe { MemoryRegion::register(pd, bytes.as_mut_ptr(), len, MemoryKind::Host, access) }.unwrap();
        Buffer { mr, bytes }
    }

    /// The bytes as they are now (read through the raw pointer: the NIC, here the double, wrote them).
    fn snapshot(&self) -> Vec<u8> {
        // SAFETY: the block is live and no write is in flight when the tests call this.
        unsafe { std::slice::from_raw_parts(self.bytes.as_ptr(), self.bytes.len()) }.to_vec()
    }
}

/// One side of a connection: its QP, CQ and a landing region.
struct Side {
    qp: QueuePair,
    cq: Arc<CompletionQueue>,
    landing: Buffer,
}

struct Pair {
    a: Side,
    b: Side,
    source: Buffer,
    pd: Arc<ProtectionDomain>,
}

const LANDING_BYTES: usize = 64 << 10;
const SOURCE_BYTES: usize = 32 << 10;

fn side(pd: &Arc<ProtectionDomain>, port: u8, cfg: QpConfig) -> Side {
    let cq = CompletionQueue::new(pd.context(), cfg.max_send_wr + cfg.max_recv_wr).unwrap();
    let qp = QueuePair::new(pd, &cq, &cq, port, None, cfg).unwrap();
    let landing = Buffer::new(pd, LANDING_BYTES, |_| 0, Access::REMOTE_WRITE);
    Side { qp, cq, landing }
}

/// Two QPs, on `port` and its partner, their endpoints exchanged as bytes (what the bootstrap carries), B's receives posted,
/// both connected to RTS.
fn pair(port: u8, recvs: u64) -> Pair {
    pair_with(port, recvs, QpConfig { max_send_wr: 16, max_recv_wr: 16, ..QpConfig::default() })
}

fn pair_with(port: u8, recvs: u64, cfg: QpConfig) -> Pair {
    let ctx = Context::open(Some("mock0")).unwrap();
    let pd = ProtectionDomain::new(&ctx).unwrap();
    let mut a = side(&pd, port, cfg);
    let mut b = side(&pd, partner(port), cfg);
    let source = Buffer::new(&pd, SOURCE_BYTES, |i| (i * 7 + i / 251) as u8, Access::LOCAL);
    let wire_a = a.qp.endpoint(Some(&a.landing.mr)).to_bytes();
    let wire_b = b.qp.endpoint(Some(&b.landing.mr)).to_bytes();
    let end_a = VerbsEndpoint::from_bytes(&wire_a).unwrap();
    let end_b = VerbsEndpoint::from_bytes(&wire_b).unwrap();
    b.qp.to_init().unwrap();
    for i in 0..recvs {
        b.qp.post_recv(100 + i).unwrap();
    }
    b.qp.connect(&end_a).unwrap();
    a.qp.connect(&end_b).unwrap();
    assert_eq!((a.qp.state(), b.qp.state()), (QpState::ReadyToSend, QpState::ReadyToSend));
    Pair { a, b, source, pd }
}

/// Polls `cq` until `n` completions have arrived (the double completes inside post_send, so one poll
/// suffices; the bound only turns a missing completion into a failure rather than a hang).
fn take(cq: &CompletionQueue, n: usize) -> Vec<WorkCompletion> {
    let mut got = Vec::new();
    let mut wc = [WorkCompletion::default(); 8];
    for _ in 0..1000 {
        let want = (n - got.len()).min(wc.len());
        let k = cq.poll(&mut wc[..want]).unwrap();
        got.extend_from_slice(&wc[..k]);
        if got.len() >= n {
            break;
        }
    }
    assert_eq!(got.len(), n, "completions: {got:?}");
    got
}

fn remote(e: &Side) -> RemoteRegion {
    RemoteRegion { addr: e.landing.mr.addr(), len: e.landing.mr.len() as u64, rkey: e.landing.mr.rkey() }
}

#[test]
fn probe_and_device_queries_come_through_the_double() {
    let Some(_g) = setup() else { return };
    let p = verbs::probe();
    let Probe::Available { ports, .. } = &p else { panic!("the double's device was not found: {p}") };
    assert_eq!(ports.len(), 5);
    assert!(ports[..4].iter().all(|p| p.info.is_active()), "active ports first: {ports:?}");
    assert_eq!((ports[4].info.port, ports[4].info.is_active()), (DOWN_PORT, false));
    let first = p.first_active().unwrap();
    assert_eq!((first.device.as_str(), first.info.port), ("mock0", ROCE_PORT));
    assert!(p.to_string().starts_with("verbs: using mock0 port 1 (RoCE, MTU 1024 bytes)"), "{p}");

    assert_eq!(verbs::device_names().unwrap(), ["mock0"]);
    let ctx = Context::open(None).unwrap();
    assert_eq!(ctx.name(), "mock0");
    match Context::open(Some("mlx5_0")) {
        Err(VerbsError::DeviceNotFound { name, available }) => {
            assert_eq!((name.as_str(), available), ("mlx5_0", vec!["mock0".to_string()]))
        }
        other => panic!("{other:?}"),
    }
    let dev = ctx.query_device().unwrap();
    assert_eq!((dev.fw_ver.as_str(), dev.phys_port_cnt, dev.max_qp_wr, dev.max_cqe), ("0.1.mock", 5, 16384, 65535));

    // The compat query fills the port struct up to `flags`, link layer included.
    let roce = ctx.query_port(ROCE_PORT).unwrap();
    assert!(roce.is_active() && roce.is_roce());
    assert_eq!((roce.active_mtu, roce.gid_tbl_len, roce.lid, roce.max_msg_bytes), (sys::IBV_MTU_1024, 4, 0, 1 << 31));
    let ib = ctx.query_port(IB_PORT).unwrap();
    assert!(ib.is_active() && !ib.is_roce());
    assert_eq!((ib.lid, ib.active_mtu), (0x17, sys::IBV_MTU_4096));
    assert!(!ctx.query_port(DOWN_PORT).unwrap().is_active());
    assert_eq!(ctx.query_port(9), Err(VerbsError::QueryPort { device: "mock0".into(), port: 9, errno: libc::EINVAL }));

    // GIDs: the IPv4-mapped RoCE v2 entry is preferred; an empty table has none.
    assert_eq!(ctx.find_roce_v2_gid_index(ROCE_PORT).unwrap(), Some(3));
    assert_eq!(ctx.query_gid(ROCE_PORT, 3).unwrap()[10..], [0xff, 0xff, 10, 0, 0, 1]);
    assert_eq!(ctx.find_roce_v2_gid_index(DOWN_PORT).unwrap(), None);
    // ibv_query_gid returns -1 and sets errno: the error carries that errno, not 0 or -1.
    assert_eq!(
        ctx.query_gid(ROCE_PORT, 4),
        Err(VerbsError::QueryGid { device: "mock0".into(), port: ROCE_PORT, index: 4, errno: libc::EINVAL })
    );
    assert_eq!(verbs::result::wc_status_str(sys::IBV_WC_REM_ACCESS_ERR), "remote access error");

    // A second loader call naming another library is refused, not ignored.
    match sys::lib_from(&["libibverbs.so.1"]) {
        Err(LoadError::AlreadyLoaded { loaded, .. }) => assert!(loaded.ends_with("libibverbs-mock.so"), "{loaded}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a second library was accepted"),
    }
    drop(ctx);
    assert_clean();
}

#[test]
fn registration_is_checked_and_released() {
    let Some(_g) = setup() else { return };
    let ctx = Context::open(None).unwrap();
    let pd = ProtectionDomain::new(&ctx).unwrap();
    let a = Buffer::new(&pd, 4096, |_| 1, Access::REMOTE_WRITE);
    let b = Buffer::new(&pd, 4096, |_| 1, Access::LOCAL);
    assert_ne!(a.mr.lkey(), a.mr.rkey());
    assert_ne!(a.mr.lkey(), b.mr.lkey());
    // Memory that is not mapped: the registration fails with the errno and the arguments.
    // SAFETY: the double only checks the range with mincore, it never touches it.
    let unmapped = unsafe {
        let p = libc::mmap(std::ptr::null_mut(), 8192, libc::PROT_READ, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
        assert_ne!(p, libc::MAP_FAILED);
        libc::munmap(p, 8192);
        MemoryRegion::register(&pd, p.cast(), 8192, MemoryKind::Host, Access::REMOTE_WRITE)
    };
    match unmapped {
        Err(VerbsError::RegMr { len: 8192, errno, device_memory: false, .. }) => assert_eq!(errno, libc::EFAULT),
        other => panic!("{other:?}"),
    }
    drop((a, b));
    drop(pd);
    drop(ctx);
    assert_clean();
}

fn write_with_imm_lands_at_the_offset(port: u8) {
    let p = pair(port, 4);
    let writes_before = counter("mock_writes_delivered");
    // 5000 bytes from A's source at 100 into B's landing region at 777, then three more, one of them empty:
    // the PSNs both sides track must stay in step across multi-packet messages.
    let plan: [(usize, u32, u64, u32); 4] =
        [(100, 5000, 777, 0xdead_beef), (0, 1, 0, 1), (SOURCE_BYTES - 4096, 4096, 60_000, 2), (0, 0, 10, 3)];
    for (i, &(src_off, len, dst_off, imm)) in plan.iter().enumerate() {
        // SAFETY: the source buffer outlives the completion, polled below before it is touched.
        unsafe { p.a.qp.post_write_with_imm(i as u64, &p.source.mr, src_off, len, remote(&p.b), dst_off, imm) }
            .unwrap();
    }
    let sent = take(&p.a.cq, plan.len());
    let recv = take(&p.b.cq, plan.len());
    for (i, (s, r)) in sent.iter().zip(&recv).enumerate() {
        s.result().unwrap();
        r.result().unwrap();
        assert_eq!((s.wr_id(), s.opcode(), s.qp_num()), (i as u64, sys::IBV_WC_RDMA_WRITE, p.a.qp.qpn()));
        assert_eq!(r.opcode(), sys::IBV_WC_RECV_RDMA_WITH_IMM);
        assert_eq!((r.wr_id(), r.qp_num()), (100 + i as u64, p.b.qp.qpn()), "receives are consumed in order");
        assert_eq!((r.byte_len(), r.imm()), (plan[i].1, Some(plan[i].3)), "immediate in host order");
        assert_eq!(s.imm(), None);
    }
    let got = p.b.landing.snapshot();
    let src = p.source.snapshot();
    let mut want = vec![0u8; LANDING_BYTES];
    for &(src_off, len, dst_off, _) in &plan {
        want[dst_off as usize..dst_off as usize + len as usize].copy_from_slice(&src[src_off..src_off + len as usize]);
    }
    assert!(got == want, "landing region differs from the plan");
    assert!(p.a.landing.snapshot().iter().all(|&b| b == 0), "A's own region was written");
    assert_eq!(counter("mock_writes_delivered") - writes_before, plan.len() as i32);
    drop(p);
    assert_clean();
}

#[test]
fn write_with_immediate_over_roce_lands_at_the_offset() {
    let Some(_g) = setup() else { return };
    write_with_imm_lands_at_the_offset(ROCE_PORT);
}

#[test]
fn write_with_immediate_over_infiniband_lands_at_the_offset() {
    let Some(_g) = setup() else { return };
    write_with_imm_lands_at_the_offset(IB_PORT);
}

/// Posts one write from A to B and returns A's completion.
fn write_once(p: &Pair, remote: RemoteRegion, dst_off: u64, len: u32) -> WorkCompletion {
    // SAFETY: the source buffer outlives the completion, polled at once.
    unsafe { p.a.qp.post_write_with_imm(7, &p.source.mr, 0, len, remote, dst_off, 99) }.unwrap();
    take(&p.a.cq, 1)[0]
}

fn expect_completion_error(wc: &WorkCompletion, status: u32, text: &str) -> VerbsError {
    let e = wc.result().unwrap_err();
    match &e {
        VerbsError::Completion { status: s, wr_id: 7, status_text, .. } => {
            assert_eq!((*s, status_text.as_str()), (status, text));
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains(text), "{e}");
    e
}

#[test]
fn a_wrong_rkey_is_a_remote_access_error_and_both_queue_pairs_fail() {
    let Some(_g) = setup() else { return };
    let p = pair(ROCE_PORT, 2);
    let bad = RemoteRegion { rkey: remote(&p.b).rkey ^ 0x100, ..remote(&p.b) };
    let wc = write_once(&p, bad, 0, 64);
    let e = expect_completion_error(&wc, sys::IBV_WC_REM_ACCESS_ERR, "remote access error");
    assert!(e.to_string().contains(&format!("qpn {:#x}", p.a.qp.qpn())), "{e}");
    // The responder went to ERR: its posted receives are flushed, its memory untouched.
    for r in take(&p.b.cq, 2) {
        assert_eq!(r.status(), sys::IBV_WC_WR_FLUSH_ERR);
    }
    assert!(p.b.landing.snapshot().iter().all(|&b| b == 0));
    // The requester is in ERR too: what it posts next is flushed, not executed.
    let wc = write_once(&p, remote(&p.b), 0, 64);
    expect_completion_error(&wc, sys::IBV_WC_WR_FLUSH_ERR, "Work Request Flushed Error");
    drop(p);
    assert_clean();
}

#[test]
fn a_peer_that_overstates_its_region_gets_a_remote_access_error() {
    let Some(_g) = setup() else { return };
    let p = pair(ROCE_PORT, 1);
    // The peer claims twice the region it registered; the range check before posting trusts the claim, the
    // (emulated) responder does not.
    let lying = RemoteRegion { len: 2 * LANDING_BYTES as u64, ..remote(&p.b) };
    let wc = write_once(&p, lying, LANDING_BYTES as u64 - 10, 64);
    expect_completion_error(&wc, sys::IBV_WC_REM_ACCESS_ERR, "remote access error");
    drop(p);
    assert_clean();
}

#[test]
fn a_region_without_remote_write_refuses_writes() {
    let Some(_g) = setup() else { return };
    let p = pair(ROCE_PORT, 1);
    let readonly = Buffer::new(&p.pd, 4096, |_| 5, Access { remote_write: false, remote_read: true });
    let target = RemoteRegion { addr: readonly.mr.addr(), len: 4096, rkey: readonly.mr.rkey() };
    let wc = write_once(&p, target, 0, 16);
    expect_completion_error(&wc, sys::IBV_WC_REM_ACCESS_ERR, "remote access error");
    assert!(readonly.snapshot().iter().all(|&b| b == 5));
    drop(readonly);
    drop(p);
    assert_clean();
}

#[test]
fn bad_ranges_and_states_are_refused_before_the_library() {
    let Some(_g) = setup() else { return };
    let p = pair(ROCE_PORT, 1);
    let posts = counter("mock_rejected_posts");
    let writes = counter("mock_writes_delivered");
    let r = remote(&p.b);
    // SAFETY: refused before anything is posted (the remote range passes the landing region's end).
    let e = unsafe { p.a.qp.post_write_with_imm(1, &p.source.mr, 0, 64, r, LANDING_BYTES as u64 - 63, 0) };
    assert!(
        matches!(e, Err(VerbsError::InvalidArgument { call: "ibv_post_send", ref what }) if what.contains("remote range")),
        "{e:?}"
    );
    // SAFETY: refused before anything is posted (the local range passes the source region's end).
    let e = unsafe { p.a.qp.post_write_with_imm(1, &p.source.mr, SOURCE_BYTES - 1, 2, r, 0, 0) };
    assert!(matches!(e, Err(VerbsError::InvalidArgument { ref what, .. }) if what.contains("local range")), "{e:?}");
    // SAFETY: refused before anything is posted (the remote range overflows).
    let e = unsafe { p.a.qp.post_write_with_imm(1, &p.source.mr, 0, 1, RemoteRegion { addr: u64::MAX, ..r }, 1, 0) };
    assert!(matches!(e, Err(VerbsError::InvalidArgument { ref what, .. }) if what.contains("overflows")), "{e:?}");

    // A QP that is not yet ReadyToSend refuses to post.
    let mut c = side(&p.pd, ROCE_PORT, QpConfig { max_send_wr: 4, max_recv_wr: 4, ..QpConfig::default() });
    assert!(matches!(c.qp.post_recv(1), Err(VerbsError::InvalidArgument { call: "ibv_post_recv", .. })));
    c.qp.to_init().unwrap();
    // SAFETY: refused before anything is posted.
    let e = unsafe { c.qp.post_write_with_imm(1, &p.source.mr, 0, 8, r, 0, 0) };
    assert!(matches!(e, Err(VerbsError::InvalidArgument { ref what, .. }) if what.contains("Init")), "{e:?}");
    // Transitions out of order are refused too.
    assert!(matches!(c.qp.to_rts(), Err(VerbsError::InvalidArgument { call: "ibv_modify_qp", .. })));
    assert_eq!((counter("mock_rejected_posts"), counter("mock_writes_delivered")), (posts, writes));
    assert_eq!(counter("mock_rejected_modifies"), 0, "a transition this layer made was refused by the double");
    drop(c);
    drop(p);
    assert_clean();
}

#[test]
fn a_write_without_a_posted_receive_is_receiver_not_ready() {
    let Some(_g) = setup() else { return };
    let p = pair(ROCE_PORT, 0);
    let wc = write_once(&p, remote(&p.b), 0, 64);
    expect_completion_error(&wc, sys::IBV_WC_RNR_RETRY_EXC_ERR, "RNR retry counter exceeded");
    drop(p);
    assert_clean();
}

/// Endpoints altered in transit (each side gets a tampered copy of the other's) connect, their fields being in
/// range, but the writes never reach the peer.
#[test]
fn a_wrong_psn_or_gid_or_qpn_never_arrives() {
    let Some(_g) = setup() else { return };
    type Tamper = fn(&mut VerbsEndpoint);
    let cases: [(&str, Tamper); 3] =
        [("psn", |e| e.psn = (e.psn + 1) & 0xff_ffff), ("gid", |e| e.gid[15] ^= 1), ("qpn", |e| e.qpn ^= 0x40)];
    for (what, tamper) in cases {
        let ctx = Context::open(None).unwrap();
        let pd = ProtectionDomain::new(&ctx).unwrap();
        let cfg = QpConfig { max_send_wr: 4, max_recv_wr: 4, ..QpConfig::default() };
        let mut a = side(&pd, ROCE_PORT, cfg);
        let mut b = side(&pd, ROCE_PORT_B, cfg);
        let src = Buffer::new(&pd, 64, |i| i as u8, Access::LOCAL);
        let mut end_a = a.qp.endpoint(None);
        let mut end_b = b.qp.endpoint(Some(&b.landing.mr));
        tamper(&mut end_a);
        tamper(&mut end_b);
        let end_a = VerbsEndpoint::from_bytes(&end_a.to_bytes()).unwrap();
        let end_b = VerbsEndpoint::from_bytes(&end_b.to_bytes()).unwrap();
        b.qp.to_init().unwrap();
        b.qp.post_recv(1).unwrap();
        b.qp.connect(&end_a).unwrap();
        a.qp.connect(&end_b).unwrap();
        // SAFETY: src outlives the completion, polled at once.
        unsafe { a.qp.post_write_with_imm(7, &src.mr, 0, 64, RemoteRegion::from(&end_b), 0, 1) }.unwrap();
        let wc = take(&a.cq, 1)[0];
        let e = wc.result().unwrap_err();
        assert!(
            matches!(e, VerbsError::Completion { status, .. } if status == sys::IBV_WC_RETRY_EXC_ERR),
            "{what}: {e}"
        );
        assert!(b.landing.snapshot().iter().all(|&x| x == 0), "{what}: bytes arrived");
        assert_eq!(b.cq.poll(&mut [WorkCompletion::default(); 2]).unwrap(), 0, "{what}: receive consumed");
        drop((a, b, src));
    }
    assert_clean();
}

#[test]
fn link_layers_must_match() {
    let Some(_g) = setup() else { return };
    let ctx = Context::open(None).unwrap();
    let pd = ProtectionDomain::new(&ctx).unwrap();
    let cfg = QpConfig { max_send_wr: 4, max_recv_wr: 4, ..QpConfig::default() };
    let mut roce = side(&pd, ROCE_PORT, cfg);
    let ib = side(&pd, IB_PORT, cfg);
    roce.qp.to_init().unwrap();
    assert_eq!(
        roce.qp.to_rtr(&ib.qp.endpoint(None)),
        Err(VerbsError::LinkLayerMismatch { local_roce: true, remote_roce: false })
    );
    match QueuePair::new(&pd, &roce.cq, &roce.cq, DOWN_PORT, None, cfg) {
        Err(VerbsError::InvalidArgument { what, .. }) => assert!(what.contains("not ACTIVE"), "{what}"),
        other => panic!("{other:?}"),
    }
    drop((roce, ib, pd, ctx));
    assert_clean();
}

#[test]
fn queue_pairs_cannot_overcommit_their_completion_queue() {
    let Some(_g) = setup() else { return };
    let ctx = Context::open(None).unwrap();
    let pd = ProtectionDomain::new(&ctx).unwrap();
    // 8 entries asked, 15 granted (rounded up as mlx5 does).
    let cq = CompletionQueue::new(&ctx, 8).unwrap();
    assert_eq!(cq.capacity(), 15);
    let cfg = QpConfig { max_send_wr: 4, max_recv_wr: 4, ..QpConfig::default() };
    let first = QueuePair::new(&pd, &cq, &cq, ROCE_PORT, None, cfg).unwrap();
    assert_eq!((first.send_depth(), first.recv_depth(), cq.reserved()), (4, 4, 8));
    // 5 asked, 8 granted: 8 + 8 would not fit in the 7 entries left.
    let deeper = QpConfig { max_send_wr: 5, ..cfg };
    match QueuePair::new(&pd, &cq, &cq, ROCE_PORT, None, deeper) {
        Err(e @ VerbsError::CqOvercommitted { .. }) => {
            assert_eq!(e, VerbsError::CqOvercommitted { queue: "send", depth: 8, reserved: 8, capacity: 15 });
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(cq.reserved(), 8, "a refused QP keeps no reservation");
    drop(first);
    assert_eq!(cq.reserved(), 0);
    let fits = QueuePair::new(&pd, &cq, &cq, ROCE_PORT, None, deeper).unwrap();
    assert_eq!(cq.reserved(), 12);
    drop(fits);
    drop(cq);
    drop(pd);
    drop(ctx);
    assert_clean();
}

#[test]
fn the_send_queue_depth_is_a_bound() {
    let Some(_g) = setup() else { return };
    let p = pair(ROCE_PORT, 16);
    let depth = p.a.qp.send_depth() as u64;
    let r = remote(&p.b);
    for i in 0..depth {
        // SAFETY: the source outlives the completions polled below.
        unsafe { p.a.qp.post_write_with_imm(i, &p.source.mr, 0, 8, r, 8 * i, i as u32) }.unwrap();
    }
    // Full until a completion is polled.
    // SAFETY: as above.
    let e = unsafe { p.a.qp.post_write_with_imm(depth, &p.source.mr, 0, 8, r, 0, 0) }.unwrap_err();
    assert!(matches!(e, VerbsError::PostSend { errno, wr_id, .. } if errno == libc::ENOMEM && wr_id == depth), "{e}");
    take(&p.a.cq, 1)[0].result().unwrap();
    // The receive queue is bounded the same way: its slots come back as completions are polled.
    assert!(matches!(p.b.qp.post_recv(0), Err(VerbsError::PostRecv { errno: libc::ENOMEM, .. })));
    take(&p.b.cq, depth as usize);
    p.b.qp.post_recv(200).unwrap();
    // SAFETY: as above.
    unsafe { p.a.qp.post_write_with_imm(depth, &p.source.mr, 0, 8, r, 0, 0) }.unwrap();
    take(&p.a.cq, depth as usize);
    assert_eq!(take(&p.b.cq, 1)[0].wr_id(), 200);
    assert_eq!(counter("mock_cq_overruns"), 0);
    drop(p);
    assert_clean();
}

#[test]
fn teardown_order_is_children_first() {
    let Some(_g) = setup() else { return };
    // Dropping the parents' handles first is fine: the children hold Arcs.
    let p = pair(IB_PORT, 1);
    let Pair { a, b, source, pd } = p;
    drop(pd);
    drop(source);
    drop(a);
    assert!(counter("mock_live_objects") > 0);
    drop(b);
    assert_clean();
}

// ---- the link: endpoints over the authenticated bootstrap, then writes with immediate -----------------------

/// One end of a link: its source region and the landing region it offered (dropped after the link, which
/// holds the registration).
struct LinkSide {
    link: VerbsLink,
    source: Buffer,
    landing: Vec<u8>,
}

const LINK_DEPTH: u32 = 8;

fn link_side(conn: &mut Conn, port: u8, fill: u8) -> rdma::Result<LinkSide> {
    link_side_with(
        conn,
        port,
        fill,
        QpConfig { max_send_wr: LINK_DEPTH, max_recv_wr: LINK_DEPTH, ..QpConfig::default() },
    )
}

fn link_side_with(conn: &mut Conn, port: u8, fill: u8, qp: QpConfig) -> rdma::Result<LinkSide> {
    let ctx = Context::open(None)?;
    let pd = ProtectionDomain::new(&ctx)?;
    let mut landing = vec![0u8; LANDING_BYTES];
    // SAFETY: the Vec's heap block outlives the registration: LinkSide drops `link` (the last holder of the
    // region) before `landing`; it is read only after the arrivals that write it have been polled.
    let mr = unsafe {
        MemoryRegion::register(&pd, landing.as_mut_ptr(), LANDING_BYTES, MemoryKind::Host, Access::REMOTE_WRITE)
    }?;
    let source = Buffer::new(&pd, SOURCE_BYTES, |i| (i as u8) ^ fill, Access::LOCAL);
    let link = VerbsLink::connect(conn, &pd, Arc::new(mr), LinkConfig { port, gid_index: None, qp })?;
    Ok(LinkSide { link, source, landing })
}

/// Runs `server` on an accepted authenticated connection in a thread and `client` here; returns both
/// results and the connections (kept open while the links are used).
fn bootstrap<S, C, T, U>(server: S, client: C) -> ((T, Conn), (U, Conn))
where
    S: FnOnce(&mut Conn) -> T + Send + 'static,
    C: FnOnce(&mut Conn) -> U,
    T: Send + 'static,
{
    let secret = Secret::random().unwrap();
    let listener = tcp::Listener::bind("127.0.0.1:0".parse().unwrap(), secret.clone(), 5_000).unwrap();
    let addr = listener.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let mut conn = listener.accept().unwrap();
        (server(&mut conn), conn)
    });
    let mut conn = tcp::connect(addr, &secret, 5_000).unwrap();
    let u = client(&mut conn);
    (t.join().unwrap(), (u, conn))
}

#[test]
fn a_link_connects_over_the_bootstrap_and_moves_tagged_blocks() {
    let Some(_g) = setup() else { return };
    let ((b, _conn_b), (a, _conn_a)) = bootstrap(|c| link_side(c, ROCE_PORT_B, 0x5a), |c| link_side(c, ROCE_PORT, 0));
    let (mut a, mut b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.link.remote().len, LANDING_BYTES as u64);

    // 24 blocks of 1000 bytes, three times the queue depth: the writer waits for completions and the
    // reader re-posts its receives as blocks arrive.
    const BLOCK: u32 = 1000;
    let (mut sent, mut arrived) = (Vec::new(), Vec::new());
    let mut events = Vec::new();
    for i in 0..24u32 {
        while a.link.in_flight() >= LINK_DEPTH as usize {
            a.link.wait(&mut events, 1000).unwrap();
            sent.append(&mut events);
        }
        // SAFETY: the source stays registered and untouched until its Sent event.
        unsafe { a.link.write(&a.source.mr, (i * BLOCK) as usize, BLOCK, u64::from(i * 2 * BLOCK), 500 + i) }.unwrap();
        b.link.poll(&mut events).unwrap();
        arrived.append(&mut events);
    }
    while sent.len() < 24 {
        a.link.wait(&mut events, 1000).unwrap();
        sent.append(&mut events);
    }
    assert_eq!(a.link.in_flight(), 0);
    let tags: Vec<u32> = sent
        .iter()
        .map(|e| match e {
            LinkEvent::Sent { tag, .. } => *tag,
            other => panic!("{other:?} on the writer"),
        })
        .collect();
    assert_eq!(tags, (500..524).collect::<Vec<_>>());
    assert_eq!(arrived, (500..524).map(|tag| LinkEvent::Arrived { tag, len: BLOCK }).collect::<Vec<_>>());
    let src = a.source.snapshot();
    for i in 0..24usize {
        let (s, d) = (i * BLOCK as usize, i * 2 * BLOCK as usize);
        assert!(b.landing[d..d + BLOCK as usize] == src[s..s + BLOCK as usize], "block {i}");
        assert!(b.landing[d + BLOCK as usize..d + 2 * BLOCK as usize].iter().all(|&x| x == 0), "gap after {i}");
    }

    // And back the other way.
    // SAFETY: as above.
    let id = unsafe { b.link.write(&b.source.mr, 0, 64, 4096, 7) }.unwrap();
    assert_eq!(b.link.wait(&mut events, 1000).unwrap(), 1);
    assert_eq!(events.pop(), Some(LinkEvent::Sent { wr_id: id, tag: 7 }));
    assert_eq!(a.link.wait(&mut events, 1000).unwrap(), 1);
    assert_eq!(events.pop(), Some(LinkEvent::Arrived { tag: 7, len: 64 }));
    assert!(a.landing[4096..4160] == b.source.snapshot()[..64]);
    // Nothing more: waiting is bounded.
    assert_eq!(
        a.link.wait(&mut events, 20),
        Err(VerbsError::Timeout { what: "a completion on the verbs link", timeout_ms: 20 })
    );
    drop((a, b));
    assert_clean();
}

#[test]
fn a_link_fails_on_the_first_error_and_stays_failed() {
    let Some(_g) = setup() else { return };
    let ((b, _conn_b), (a, _conn_a)) = bootstrap(|c| link_side(c, IB_PORT_B, 1), |c| link_side(c, IB_PORT, 2));
    let (mut a, b) = (a.unwrap(), b.unwrap());
    let mut events = Vec::new();
    // The receiver never polls: its 8 receives are used up, the 9th write finds none.
    for i in 0..LINK_DEPTH + 1 {
        if a.link.in_flight() == LINK_DEPTH as usize {
            a.link.wait(&mut events, 1000).unwrap();
        }
        // SAFETY: the source stays registered and untouched until the link is dropped.
        unsafe { a.link.write(&a.source.mr, 0, 16, 0, i) }.unwrap();
    }
    let err = loop {
        match a.link.wait(&mut events, 1000) {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert!(matches!(&err, VerbsError::Completion { status, .. } if *status == sys::IBV_WC_RNR_RETRY_EXC_ERR), "{err}");
    assert!(err.to_string().contains("RNR retry counter exceeded"), "{err}");
    // Every later call returns the same error.
    // SAFETY: refused before posting.
    assert_eq!(unsafe { a.link.write(&a.source.mr, 0, 16, 0, 99) }, Err(err.clone()));
    assert_eq!(a.link.poll(&mut events), Err(err));
    // A write beyond the region the peer offered is refused before posting.
    drop(a);
    let ((c, _conn_c), (d, _conn_d)) = bootstrap(|c| link_side(c, IB_PORT_B, 1), |c| link_side(c, IB_PORT, 2));
    let (c, mut d) = (c.unwrap(), d.unwrap());
    // SAFETY: refused before posting.
    let e = unsafe { d.link.write(&d.source.mr, 0, 16, LANDING_BYTES as u64 - 8, 0) }.unwrap_err();
    assert!(matches!(e, VerbsError::InvalidArgument { ref what, .. } if what.contains("remote range")), "{e}");
    // A peer whose QP is gone: the write is never acknowledged.
    drop(c);
    // SAFETY: the source outlives the completion.
    unsafe { d.link.write(&d.source.mr, 0, 16, 0, 1) }.unwrap();
    let e = d.link.wait(&mut events, 1000).unwrap_err();
    assert!(matches!(e, VerbsError::Completion { status, .. } if status == sys::IBV_WC_RETRY_EXC_ERR), "{e}");
    drop((b, d));
    assert_clean();
}

#[test]
fn a_bad_bootstrap_message_is_refused_with_its_reason() {
    let Some(_g) = setup() else { return };
    // Not an endpoint: the length is named.
    let ((sent, _cb), (r, _ca)) =
        bootstrap(|c| c.writer.message(b"not an endpoint").is_ok(), |c| link_side(c, ROCE_PORT, 0));
    assert!(sent);
    match r {
        Err(Error::Verbs(VerbsError::BadEndpoint { field: "length", detail })) => {
            assert!(detail.contains("15 bytes"), "{detail}")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a link connected to a peer that sent garbage"),
    }
    // A valid endpoint whose QP never connects back, then something other than the ready message.
    let ((sent, _cb), (r, _ca)) = bootstrap(
        |c| {
            let e = VerbsEndpoint {
                qpn: 0x123,
                psn: 2,
                lid: 0,
                gid: [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8],
                gid_index: 1,
                mtu: sys::IBV_MTU_1024,
                roce: true,
                rkey: 0,
                addr: 0,
                len: 0,
            };
            c.writer.message(&e.to_bytes()).is_ok() && c.writer.message(b"FSVRE4DY").is_ok()
        },
        |c| link_side(c, ROCE_PORT, 0),
    );
    assert!(sent);
    match r {
        Err(Error::Protocol { reason, .. }) => assert!(reason.contains("link-ready"), "{reason}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("connected without the ready message"),
    }
    assert_clean();
}

#[test]
fn a_writer_waits_out_a_receiver_that_is_briefly_not_ready() {
    let Some(_g) = setup() else { return };
    // RNR window: 6 retries of 81.92 ms; the receive comes 5 ms after the write.
    let cfg = QpConfig { max_send_wr: 4, max_recv_wr: 4, min_rnr_timer: 26, ..QpConfig::default() };
    let p = pair_with(ROCE_PORT, 0, cfg);
    let waits = counter("mock_rnr_waits");
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            p.b.qp.post_recv(42).unwrap();
        });
        // SAFETY: the source outlives the completion, polled below.
        unsafe { p.a.qp.post_write_with_imm(1, &p.source.mr, 0, 256, remote(&p.b), 0, 9) }.unwrap();
    });
    take(&p.a.cq, 1)[0].result().unwrap();
    let r = take(&p.b.cq, 1)[0];
    assert_eq!((r.wr_id(), r.imm()), (42, Some(9)));
    assert!(counter("mock_rnr_waits") > waits, "the write did not wait for the receive");
    drop(p);
    assert_clean();
}

#[test]
fn a_link_carries_blocks_between_two_threads() {
    let Some(_g) = setup() else { return };
    const BLOCK: usize = 128;
    const BLOCKS: usize = LANDING_BYTES / BLOCK;
    // A receiver descheduled for a while must not fail the writer: an RNR window of 6 × 40.96 ms
    // (about 250 ms: on a loaded 2-core machine 6 × 10.24 ms was too short for a descheduled reader).
    let cfg = QpConfig { max_send_wr: LINK_DEPTH, max_recv_wr: LINK_DEPTH, min_rnr_timer: 24, ..QpConfig::default() };
    let ((b, _cb), (a, _ca)) =
        bootstrap(move |c| link_side_with(c, ROCE_PORT_B, 3, cfg), |c| link_side_with(c, ROCE_PORT, 4, cfg));
    let (mut a, mut b) = (a.unwrap(), b.unwrap());
    let src = a.source.snapshot();
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut events = Vec::new();
            let mut tags = Vec::new();
            while tags.len() < BLOCKS {
                b.link.wait(&mut events, 10_000).unwrap();
                for e in events.drain(..) {
                    match e {
                        LinkEvent::Arrived { tag, len } => {
                            assert_eq!(len as usize, BLOCK);
                            tags.push(tag);
                        }
                        other => panic!("{other:?} on the reader"),
                    }
                }
            }
            tags
        });
        let mut events = Vec::new();
        let mut sent = 0;
        for i in 0..BLOCKS {
            while a.link.in_flight() >= LINK_DEPTH as usize {
                sent += a.link.wait(&mut events, 10_000).unwrap();
            }
            let src_off = (i * BLOCK) % SOURCE_BYTES;
            // SAFETY: the source is never written while registered.
            unsafe { a.link.write(&a.source.mr, src_off, BLOCK as u32, (i * BLOCK) as u64, i as u32) }.unwrap();
        }
        while sent < BLOCKS {
            sent += a.link.wait(&mut events, 10_000).unwrap();
        }
        let tags = reader.join().unwrap();
        assert_eq!(tags, (0..BLOCKS as u32).collect::<Vec<_>>(), "arrivals out of order or missing");
    });
    for i in 0..BLOCKS {
        let src_off = (i * BLOCK) % SOURCE_BYTES;
        assert!(b.landing[i * BLOCK..(i + 1) * BLOCK] == src[src_off..src_off + BLOCK], "block {i}");
    }
    drop((a, b));
    assert_clean();
}

#[test]
fn a_side_that_fails_to_set_up_tells_its_peer_why() {
    let Some(_g) = setup() else { return };
    // Before its endpoint: the server's port is down; the client, waiting for the endpoint, gets the reason.
    let ((server, _cb), (client, _ca)) =
        bootstrap(|c| link_side(c, DOWN_PORT, 0).err(), |c| link_side(c, ROCE_PORT, 0).err());
    assert!(matches!(server, Some(Error::Verbs(VerbsError::InvalidArgument { .. }))), "{server:?}");
    match client {
        Some(Error::Protocol { reason, .. }) => {
            assert!(reason.contains("could not set up its side") && reason.contains("not ACTIVE"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // After the exchange: both find the link layers differ, each says so.
    let ((server, _cb), (client, _ca)) =
        bootstrap(|c| link_side(c, IB_PORT, 0).err(), |c| link_side(c, ROCE_PORT, 0).err());
    assert!(matches!(server, Some(Error::Verbs(VerbsError::LinkLayerMismatch { local_roce: false, .. }))));
    assert!(matches!(client, Some(Error::Verbs(VerbsError::LinkLayerMismatch { local_roce: true, .. }))));
    assert_clean();
}

// ---- random write sequences against a model of the landing region ---------------------------------------

/// Writes of random ranges (empty, single bytes, MTU multiples and off-by-one lengths among them), posted in
/// batches up to the queue depths: the landing region must equal a plain copy model, and every immediate must
/// arrive once, in order.
fn random_writes_match_the_model(port: u8, writes: &[(usize, u32, u64, u32)]) -> Result<(), TestCaseError> {
    let p = pair(port, 16);
    let src = p.source.snapshot();
    let mut model = vec![0u8; LANDING_BYTES];
    let mut arrived = Vec::new();
    let mut recv_id = 116;
    for batch in writes.chunks(16) {
        for (i, &(src_off, len, dst_off, tag)) in batch.iter().enumerate() {
            // SAFETY: the source is never written while registered.
            unsafe { p.a.qp.post_write_with_imm(i as u64, &p.source.mr, src_off, len, remote(&p.b), dst_off, tag) }
                .unwrap();
            model[dst_off as usize..dst_off as usize + len as usize]
                .copy_from_slice(&src[src_off..src_off + len as usize]);
        }
        for c in take(&p.a.cq, batch.len()) {
            c.result().unwrap();
        }
        for c in take(&p.b.cq, batch.len()) {
            arrived.push(c.result().unwrap().imm().unwrap());
            p.b.qp.post_recv(recv_id).unwrap();
            recv_id += 1;
        }
    }
    prop_assert_eq!(arrived, writes.iter().map(|w| w.3).collect::<Vec<_>>());
    prop_assert!(p.b.landing.snapshot() == model, "landing region differs from the model");
    Ok(())
}

fn write_strategy() -> impl Strategy<Value = (usize, u32, u64, u32)> {
    let len = prop_oneof![Just(0u32), Just(1), Just(1023), Just(1024), Just(1025), Just(2048), 0u32..8192];
    (len, any::<u32>(), 0.0f64..1.0, 0.0f64..1.0).prop_map(|(len, tag, a, b)| {
        let src_off = ((SOURCE_BYTES - len as usize) as f64 * a) as usize;
        let dst_off = ((LANDING_BYTES - len as usize) as f64 * b) as u64;
        (src_off, len, dst_off, tag)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_write_sequences_land_as_modelled(
        writes in proptest::collection::vec(write_strategy(), 1..40),
        ib in any::<bool>(),
    ) {
        let Some(_g) = setup() else { return Ok(()) };
        random_writes_match_the_model(if ib { IB_PORT } else { ROCE_PORT }, &writes)?;
        assert_clean();
    }
}
