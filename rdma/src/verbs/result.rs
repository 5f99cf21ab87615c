//! Layer 2 of 3: one function per libibverbs call, returning `Result<_, VerbsError>`.
//!
//! Return conventions follow the libibverbs man pages: constructors return NULL and set errno;
//! `ibv_close_device` returns -1 and sets errno; the other destroy/modify/query calls and
//! `ibv_post_*` return 0 or an errno value (some providers return -1 and set errno, so a
//! non-positive failure reads errno); `ibv_poll_cq` returns a negative value on error.
//! No function here allocates or frees anything it does not return.

use std::ffi::{c_int, CStr};
use std::ptr::{self, NonNull};

use super::error::VerbsError;
use super::sys::{self, Lib};

pub type Result<T> = std::result::Result<T, VerbsError>;

/// The loaded library, or why it is absent.
pub fn lib() -> Result<&'static Lib> {
    sys::lib().map_err(VerbsError::from)
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Turns an "0 or errno" return into the errno (reading `errno` when the provider returned -1).
fn rc_errno(rc: c_int) -> i32 {
    if rc > 0 {
        rc
    } else {
        last_errno()
    }
}

/// `ibv_get_device_list`: the list and its length. Free it with [`free_device_list`].
pub fn get_device_list() -> Result<(NonNull<*mut sys::ibv_device>, usize)> {
    let lib = lib()?;
    let mut n: c_int = 0;
    // SAFETY: n is a valid out-pointer.
    let list = unsafe { (lib.ibv_get_device_list)(&mut n) };
    match NonNull::new(list) {
        Some(list) => Ok((list, usize::try_from(n).unwrap_or(0))),
        None => Err(VerbsError::GetDeviceList { errno: last_errno() }),
    }
}

/// `ibv_free_device_list`.
///
/// # Safety
/// `list` came from [`get_device_list`] and is not used afterwards (contexts opened from it stay
/// valid, as the man page states).
pub unsafe fn free_device_list(list: NonNull<*mut sys::ibv_device>) -> Result<()> {
    let lib = lib()?;
    // SAFETY: the caller meets the `# Safety` contract above, which is all this libibverbs call
    // requires; the function pointer comes from the loaded library (`lib()`).
    unsafe { (lib.ibv_free_device_list)(list.as_ptr()) };
    Ok(())
}

/// `ibv_get_device_name`, copied into a `String`.
///
/// # Safety
/// `device` is an entry of a live device list.
pub unsafe fn get_device_name(device: NonNull<sys::ibv_device>) -> Result<String> {
    let lib = lib()?;
    // SAFETY: the caller meets the `# Safety` contract above; the name is NUL-terminated and lives as long as the list.
    let p = unsafe { (lib.ibv_get_device_name)(device.as_ptr()) };
    if p.is_null() {
        return Ok(String::new());
    }
    // SAFETY: non-null, NUL-terminated (see above); copied at once.
    Ok(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// `ibv_open_device`.
///
/// # Safety
/// `device` is an entry of a live device list.
pub unsafe fn open_device(device: NonNull<sys::ibv_device>, name: &str) -> Result<NonNull<sys::ibv_context>> {
    let lib = lib()?;
    // SAFETY: the caller meets the `# Safety` contract above, which is all this libibverbs call
    // requires; the function pointer comes from the loaded library (`lib()`).
    let ctx = unsafe { (lib.ibv_open_device)(device.as_ptr()) };
    NonNull::new(ctx).ok_or_else(|| VerbsError::OpenDevice { device: name.to_string(), errno: last_errno() })
}

/// `ibv_close_device`.
///
/// # Safety
/// `ctx` is open, every object created in it is destroyed, and it is not used afterwards.
pub unsafe fn close_device(ctx: NonNull<sys::ibv_context>, name: &str) -> Result<()> {
    let lib = lib()?;
    // SAFETY: the caller meets the `# Safety` contract above, which is all this libibverbs call
    // requires; the function pointer comes from the loaded library (`lib()`).
    let rc = unsafe { (lib.ibv_close_device)(ctx.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(VerbsError::CloseDevice { device: name.to_string(), errno: rc_errno(rc) })
    }
}

/// `ibv_query_device`.
///
/// # Safety
/// `ctx` is open.
pub unsafe fn query_device(ctx: NonNull<sys::ibv_context>, name: &str) -> Result<sys::ibv_device_attr> {
    let lib = lib()?;
    // SAFETY: ibv_device_attr is plain data; all-zero is a valid value.
    let mut attr: sys::ibv_device_attr = unsafe { std::mem::zeroed() };
    // SAFETY: the caller meets the `# Safety` contract above; attr is a valid out-pointer of the declared type.
    let rc = unsafe { (lib.ibv_query_device)(ctx.as_ptr(), &mut attr) };
    if rc == 0 {
        Ok(attr)
    } else {
        Err(VerbsError::QueryDevice { device: name.to_string(), errno: rc_errno(rc) })
    }
}

/// `ibv_query_port`, through the exported compat symbol on a zeroed full struct, as verbs.h's
/// inline does when the provider lacks the extended entry (see [`sys::Lib`]).
///
/// # Safety
/// `ctx` is open.
pub unsafe fn query_port(ctx: NonNull<sys::ibv_context>, name: &str, port: u8) -> Result<sys::ibv_port_attr> {
    let lib = lib()?;
    // SAFETY: ibv_port_attr is plain data; all-zero is a valid value (and the header's inline
    // zeroes it before this same call).
    let mut attr: sys::ibv_port_attr = unsafe { std::mem::zeroed() };
    // SAFETY: the caller meets the `# Safety` contract above; the symbol writes at most sizeof(_compat_ibv_port_attr), a
    // prefix of ibv_port_attr.
    let rc = unsafe { (lib.ibv_query_port)(ctx.as_ptr(), port, &mut attr) };
    if rc == 0 {
        Ok(attr)
    } else {
        Err(VerbsError::QueryPort { device: name.to_string(), port, errno: rc_errno(rc) })
    }
}

/// `ibv_query_gid`: the GID at `index` of `port`'s table.
///
/// # Safety
/// `ctx` is open.
pub unsafe fn query_gid(ctx: NonNull<sys::ibv_context>, name: &str, port: u8, index: u32) -> Result<[u8; 16]> {
    let lib = lib()?;
    let c_index = c_int::try_from(index).map_err(|_| VerbsError::InvalidArgument {
        call: "ibv_query_gid",
        what: format!("GID index {index} does not fit a C int"),
    })?;
    let mut gid = sys::ibv_gid { raw: [0; 16] };
    // SAFETY: the caller meets the `# Safety` contract above; gid is a valid out-pointer.
    let rc = unsafe { (lib.ibv_query_gid)(ctx.as_ptr(), port, c_index, &mut gid) };
    if rc == 0 {
        // SAFETY: every bit pattern of the union is a valid [u8; 16].
        Ok(unsafe { gid.raw })
    } else {
        Err(VerbsError::QueryGid { device: name.to_string(), port, index, errno: rc_errno(rc) })
    }
}

/// `ibv_query_gid_ex` (inline over `_ibv_query_gid_ex`): the GID entry at `index`, `Ok(None)`
/// for an empty entry (ENODATA). Errors with `Load(MissingSymbol)` on rdma-core < 32.
///
/// # Safety
/// `ctx` is open.
pub unsafe fn query_gid_ex(
    ctx: NonNull<sys::ibv_context>,
    name: &str,
    port: u8,
    index: u32,
) -> Result<Option<sys::ibv_gid_entry>> {
    let lib = lib()?;
    let f = lib._ibv_query_gid_ex.ok_or(VerbsError::Load(sys::LoadError::MissingSymbol {
        library: lib.name.to_string(),
        symbol: "_ibv_query_gid_ex",
    }))?;
    // SAFETY: plain data; all-zero is valid.
    let mut entry: sys::ibv_gid_entry = unsafe { std::mem::zeroed() };
    // SAFETY: the caller meets the `# Safety` contract above; entry is a valid out-pointer of the size passed (as the inline
    // passes sizeof(*entry)); flags 0 as documented.
    let rc = unsafe { f(ctx.as_ptr(), u32::from(port), index, &mut entry, 0, std::mem::size_of_val(&entry)) };
    match rc {
        0 => Ok(Some(entry)),
        _ if rc_errno(rc) == libc::ENODATA => Ok(None),
        _ => Err(VerbsError::QueryGidEx { device: name.to_string(), port, index, errno: rc_errno(rc) }),
    }
}

/// `ibv_alloc_pd`.
///
/// # Safety
/// `ctx` is open.
pub unsafe fn alloc_pd(ctx: NonNull<sys::ibv_context>, name: &str) -> Result<NonNull<sys::ibv_pd>> {
    let lib = lib()?;
    // SAFETY: the caller meets the `# Safety` contract above, which is all this libibverbs call
    // requires; the function pointer comes from the loaded library (`lib()`).
    let pd = unsafe { (lib.ibv_alloc_pd)(ctx.as_ptr()) };
    NonNull::new(pd).ok_or_else(|| VerbsError::AllocPd { device: name.to_string(), errno: last_errno() })
}

/// `ibv_dealloc_pd`.
///
/// # Safety
/// `pd` is live, has no MR or QP left, and is not used afterwards.
pub unsafe fn dealloc_pd(pd: NonNull<sys::ibv_pd>) -> Result<()> {
    let lib = lib()?;
    // SAFETY: the caller meets the `# Safety` contract above, which is all this libibverbs call
    // requires; the function pointer comes from the loaded library (`lib()`).
    let rc = unsafe { (lib.ibv_dealloc_pd)(pd.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(VerbsError::DeallocPd { errno: rc_errno(rc) })
    }
}

/// `ibv_reg_mr` (the exported symbol, which the macro calls for access flags below
/// `IBV_ACCESS_OPTIONAL_FIRST`; others are refused here).
///
/// # Safety
/// `pd` is live; `[addr, addr + len)` is memory of this process (host, or GPU memory mapped by
/// nvidia-peermem) that stays allocated until the region is deregistered.
pub unsafe fn reg_mr(
    pd: NonNull<sys::ibv_pd>,
    addr: *mut u8,
    len: usize,
    access: c_int,
    device_memory: bool,
) -> Result<NonNull<sys::ibv_mr>> {
    let lib = lib()?;
    if access & !(sys::IBV_ACCESS_OPTIONAL_FIRST - 1) != 0 {
        return Err(VerbsError::InvalidArgument {
            call: "ibv_reg_mr",
            what: format!("access flags {access:#x} include optional flags, which need ibv_reg_mr_iova2"),
        });
    }
    // SAFETY: the caller meets the `# Safety` contract above, which is all this libibverbs call
    // requires; the function pointer comes from the loaded library (`lib()`).
    let mr = unsafe { (lib.ibv_reg_mr)(pd.as_ptr(), addr.cast(), len, access) };
    NonNull::new(mr).ok_or_else(|| VerbsError::RegMr {
        addr: addr as usize,
        len,
        access,
        device_memory,
        errno: last_errno(),
    })
}

/// `ibv_dereg_mr`.
///
/// # Safety
/// `mr` is live, no posted work request uses it any more, and it is not used afterwards.
pub unsafe fn dereg_mr(mr: NonNull<sys::ibv_mr>) -> Result<()> {
    let lib = lib()?;
    // SAFETY: mr is live (caller contract); read lkey for the error before it is freed.
    let lkey = unsafe { (*mr.as_ptr()).lkey };
    // SAFETY: the caller meets the `# Safety` contract above, which is all this libibverbs call
    // requires; the function pointer comes from the loaded library (`lib()`).
    let rc = unsafe { (lib.ibv_dereg_mr)(mr.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(VerbsError::DeregMr { lkey, errno: rc_errno(rc) })
    }
}

/// `ibv_create_cq` with no completion channel (completions are polled) on vector 0.
///
/// # Safety
/// `ctx` is open.
pub unsafe fn create_cq(ctx: NonNull<sys::ibv_context>, cqe: u32) -> Result<NonNull<sys::ibv_cq>> {
    let lib = lib()?;
    let c_cqe = c_int::try_from(cqe).map_err(|_| VerbsError::InvalidArgument {
        call: "ibv_create_cq",
        what: format!("{cqe} entries does not fit a C int"),
    })?;
    // SAFETY: the caller meets the `# Safety` contract above; null cq_context and channel are allowed.
    let cq = unsafe { (lib.ibv_create_cq)(ctx.as_ptr(), c_cqe, ptr::null_mut(), ptr::null_mut(), 0) };
    NonNull::new(cq).ok_or_else(|| VerbsError::CreateCq { cqe, errno: last_errno() })
}

/// `ibv_destroy_cq`.
///
/// # Safety
/// `cq` is live, no QP uses it any more, and it is not used afterwards.
pub unsafe fn destroy_cq(cq: NonNull<sys::ibv_cq>) -> Result<()> {
    let lib = lib()?;
    // SAFETY: the caller meets the `# Safety` contract above, which is all this libibverbs call
    // requires; the function pointer comes from the loaded library (`lib()`).
    let rc = unsafe { (lib.ibv_destroy_cq)(cq.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(VerbsError::DestroyCq { errno: rc_errno(rc) })
    }
}

/// `ibv_create_qp`. On success `attr.cap` holds the capacities actually granted.
///
/// # Safety
/// `pd` is live; `attr`'s CQ pointers are live CQs of the same context.
pub unsafe fn create_qp(pd: NonNull<sys::ibv_pd>, attr: &mut sys::ibv_qp_init_attr) -> Result<NonNull<sys::ibv_qp>> {
    let lib = lib()?;
    let (max_send_wr, max_recv_wr) = (attr.cap.max_send_wr, attr.cap.max_recv_wr);
    // SAFETY: the caller meets the `# Safety` contract above; attr is a valid in/out pointer.
    let qp = unsafe { (lib.ibv_create_qp)(pd.as_ptr(), attr) };
    NonNull::new(qp).ok_or_else(|| VerbsError::CreateQp { max_send_wr, max_recv_wr, errno: last_errno() })
}

fn state_name(state: sys::ibv_qp_state) -> &'static str {
    match state {
        sys::IBV_QPS_RESET => "RESET",
        sys::IBV_QPS_INIT => "INIT",
        sys::IBV_QPS_RTR => "RTR",
        sys::IBV_QPS_RTS => "RTS",
        sys::IBV_QPS_ERR => "ERR",
        _ => "other state",
    }
}

/// `ibv_modify_qp`.
///
/// # Safety
/// `qp` is live.
pub unsafe fn modify_qp(qp: NonNull<sys::ibv_qp>, attr: &mut sys::ibv_qp_attr, mask: c_int) -> Result<()> {
    let lib = lib()?;
    // SAFETY: the caller meets the `# Safety` contract above, which is all this libibverbs call
    // requires; the function pointer comes from the loaded library (`lib()`).
    let qpn = unsafe { (*qp.as_ptr()).qp_num };
    // SAFETY: the caller meets the `# Safety` contract above; attr is valid for the fields `mask` names.
    let rc = unsafe { (lib.ibv_modify_qp)(qp.as_ptr(), attr, mask) };
    if rc == 0 {
        Ok(())
    } else {
        Err(VerbsError::ModifyQp { qpn, to_state: state_name(attr.qp_state), mask, errno: rc_errno(rc) })
    }
}

/// `ibv_destroy_qp`.
///
/// # Safety
/// `qp` is live and not used afterwards.
pub unsafe fn destroy_qp(qp: NonNull<sys::ibv_qp>) -> Result<()> {
    let lib = lib()?;
    // SAFETY: the caller meets the `# Safety` contract above, which is all this libibverbs call
    // requires; the function pointer comes from the loaded library (`lib()`).
    let qpn = unsafe { (*qp.as_ptr()).qp_num };
    // SAFETY: the caller meets the `# Safety` contract above, which is all this libibverbs call
    // requires; the function pointer comes from the loaded library (`lib()`).
    let rc = unsafe { (lib.ibv_destroy_qp)(qp.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(VerbsError::DestroyQp { qpn, errno: rc_errno(rc) })
    }
}

/// `ibv_post_send` of one work request (the inline verb, rewritten in [`sys::ibv_post_send`]).
///
/// # Safety
/// `qp` is live; `wr` and its SGE list are valid; the memory the SGEs name is registered and is
/// neither freed nor written by the CPU until the request's completion has been polled.
pub unsafe fn post_send(qp: NonNull<sys::ibv_qp>, wr: &mut sys::ibv_send_wr) -> Result<()> {
    let mut bad: *mut sys::ibv_send_wr = ptr::null_mut();
    // SAFETY: the caller meets the `# Safety` contract above, which is all this libibverbs call
    // requires; the function pointer comes from the loaded library (`lib()`).
    let (qpn, wr_id) = (unsafe { (*qp.as_ptr()).qp_num }, wr.wr_id);
    // SAFETY: the caller meets the `# Safety` contract above; bad is a valid out-pointer.
    let rc = unsafe { sys::ibv_post_send(qp.as_ptr(), wr, &mut bad) };
    if rc == 0 {
        Ok(())
    } else {
        Err(VerbsError::PostSend { qpn, wr_id, errno: rc_errno(rc) })
    }
}

/// `ibv_post_recv` of one work request (the inline verb, rewritten in [`sys::ibv_post_recv`]).
///
/// # Safety
/// `qp` is live; `wr` and its SGE list are valid; memory the SGEs name (if any) is registered
/// and stays valid until the completion has been polled.
pub unsafe fn post_recv(qp: NonNull<sys::ibv_qp>, wr: &mut sys::ibv_recv_wr) -> Result<()> {
    let mut bad: *mut sys::ibv_recv_wr = ptr::null_mut();
    // SAFETY: the caller meets the `# Safety` contract above, which is all this libibverbs call
    // requires; the function pointer comes from the loaded library (`lib()`).
    let (qpn, wr_id) = (unsafe { (*qp.as_ptr()).qp_num }, wr.wr_id);
    // SAFETY: the caller meets the `# Safety` contract above; bad is a valid out-pointer.
    let rc = unsafe { sys::ibv_post_recv(qp.as_ptr(), wr, &mut bad) };
    if rc == 0 {
        Ok(())
    } else {
        Err(VerbsError::PostRecv { qpn, wr_id, errno: rc_errno(rc) })
    }
}

/// `ibv_poll_cq` into `wc` (at most `wc.len()` entries, capped at `i32::MAX`): how many were
/// written.
///
/// # Safety
/// `cq` is live.
pub unsafe fn poll_cq(cq: NonNull<sys::ibv_cq>, wc: &mut [sys::ibv_wc]) -> Result<usize> {
    let n = c_int::try_from(wc.len()).unwrap_or(c_int::MAX);
    // SAFETY: the caller meets the `# Safety` contract above; wc has room for n entries.
    let rc = unsafe { sys::ibv_poll_cq(cq.as_ptr(), n, wc.as_mut_ptr()) };
    usize::try_from(rc).map_err(|_| VerbsError::PollCq { rc })
}

/// `ibv_wc_status_str`, or the number when the library is absent.
pub fn wc_status_str(status: sys::ibv_wc_status) -> String {
    let Ok(lib) = lib() else { return format!("status {status}") };
    // SAFETY: returns a static NUL-terminated string for any value ("unknown" if out of range).
    let p = unsafe { (lib.ibv_wc_status_str)(status) };
    if p.is_null() {
        return format!("status {status}");
    }
    // SAFETY: non-null static C string.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}
