//! One function per driver call, each returning `Result<_, GpuError>`.
//!
//! This is the only place a `CUresult` is turned into an error. Functions that take driver handles or raw
//! pointers are `unsafe`: the handle must be live and the memory valid, which the safe layer guarantees by
//! ownership. Functions that only take plain values are safe: the driver rejects bad values with an error.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;
use std::sync::OnceLock;

use crate::error::GpuError;
use crate::sys::{self, driver, CUcontext, CUdevice, CUdeviceptr, CUevent, CUfunction, CUmodule, CUresult, CUstream};

// ---------------------------------------------------------------------------------------------------------
// Error names
// ---------------------------------------------------------------------------------------------------------

/// The name of a `CUresult` (`CUDA_ERROR_OUT_OF_MEMORY`): `cuGetErrorName` when a driver is loaded and knows
/// the code, else the built-in table, else `CUDA_ERROR_UNRECOGNISED`.
pub fn error_name(code: CUresult) -> String {
    if let Ok(d) = driver() {
        let mut p: *const c_char = ptr::null();
        // SAFETY: `p` is a valid out-pointer; on success the driver stores a static NUL-terminated string.
        let rc = unsafe { (d.cuGetErrorName)(code, &mut p) };
        if rc == sys::CUDA_SUCCESS && !p.is_null() {
            // SAFETY: the driver returned a non-null pointer to a static NUL-terminated string.
            return unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
        }
    }
    builtin_error_name(code)
}

/// The built-in name only (what [`error_name`] falls back to without a driver).
pub fn builtin_error_name(code: CUresult) -> String {
    sys::error_name_builtin(code).map(str::to_string).unwrap_or_else(|| "CUDA_ERROR_UNRECOGNISED".to_string())
}

/// `cuGetErrorString`, empty when the driver is absent or does not know the code.
pub fn error_description(code: CUresult) -> String {
    if let Ok(d) = driver() {
        let mut p: *const c_char = ptr::null();
        // SAFETY: as in `error_name`.
        let rc = unsafe { (d.cuGetErrorString)(code, &mut p) };
        if rc == sys::CUDA_SUCCESS && !p.is_null() {
            // SAFETY: static NUL-terminated string from the driver.
            return unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
        }
    }
    String::new()
}

/// Build the error for a failed call (`code != CUDA_SUCCESS`).
pub fn driver_error(call: &'static str, code: CUresult, args: String) -> GpuError {
    GpuError::Driver { call, code, name: error_name(code), description: error_description(code), args }
}

/// `Ok(())` for `CUDA_SUCCESS`, else the error naming `call` with the arguments `args()` describes.
#[inline]
fn check(call: &'static str, code: CUresult, args: impl FnOnce() -> String) -> Result<(), GpuError> {
    if code == sys::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(driver_error(call, code, args()))
    }
}

fn no_args() -> String {
    String::new()
}

// ---------------------------------------------------------------------------------------------------------
// Initialisation and devices
// ---------------------------------------------------------------------------------------------------------

static INIT: OnceLock<Result<(), GpuError>> = OnceLock::new();

/// `cuInit(0)`, once per process (the driver's answer does not change); loads the library first.
pub fn init() -> Result<(), GpuError> {
    INIT.get_or_init(|| {
        let d = driver()?;
        // SAFETY: cuInit takes a flags value only; 0 is the one documented value.
        check("cuInit", unsafe { (d.cuInit)(0) }, || "flags=0".into())
    })
    .clone()
}

/// `cuDriverGetVersion`: 1000 * major + 10 * minor (13000 for CUDA 13.0).
pub fn driver_version() -> Result<i32, GpuError> {
    let d = driver()?;
    let mut v: c_int = 0;
    // SAFETY: `v` is a valid out-pointer.
    check("cuDriverGetVersion", unsafe { (d.cuDriverGetVersion)(&mut v) }, no_args)?;
    Ok(v)
}

/// `cuDeviceGetCount`.
pub fn device_count() -> Result<i32, GpuError> {
    let d = driver()?;
    let mut n: c_int = 0;
    // SAFETY: `n` is a valid out-pointer.
    check("cuDeviceGetCount", unsafe { (d.cuDeviceGetCount)(&mut n) }, no_args)?;
    Ok(n)
}

/// `cuDeviceGet`.
pub fn device_get(ordinal: i32) -> Result<CUdevice, GpuError> {
    let d = driver()?;
    let mut dev: CUdevice = 0;
    // SAFETY: `dev` is a valid out-pointer; the driver validates the ordinal.
    check("cuDeviceGet", unsafe { (d.cuDeviceGet)(&mut dev, ordinal) }, || format!("ordinal={ordinal}"))?;
    Ok(dev)
}

/// Turn a NUL-terminated (or full) C buffer into a String.
fn c_buf_to_string(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// `cuDeviceGetName` into a 256-byte buffer (the driver truncates longer names).
pub fn device_name(dev: CUdevice) -> Result<String, GpuError> {
    let d = driver()?;
    let mut buf = [0u8; 256];
    // SAFETY: the buffer pointer and its length are passed together; the driver writes at most `len` bytes.
    let rc = unsafe { (d.cuDeviceGetName)(buf.as_mut_ptr().cast(), buf.len() as c_int, dev) };
    check("cuDeviceGetName", rc, || format!("dev={dev}"))?;
    Ok(c_buf_to_string(&buf))
}

/// `cuDeviceGetAttribute`.
pub fn device_attribute(dev: CUdevice, attrib: sys::CUdevice_attribute) -> Result<i32, GpuError> {
    let d = driver()?;
    let mut v: c_int = 0;
    // SAFETY: `v` is a valid out-pointer; the driver validates `attrib` and `dev`.
    let rc = unsafe { (d.cuDeviceGetAttribute)(&mut v, attrib, dev) };
    check("cuDeviceGetAttribute", rc, || format!("attrib={attrib} dev={dev}"))?;
    Ok(v)
}

/// `cuDeviceTotalMem_v2`.
pub fn device_total_mem(dev: CUdevice) -> Result<usize, GpuError> {
    let d = driver()?;
    let mut bytes: usize = 0;
    // SAFETY: `bytes` is a valid out-pointer.
    check("cuDeviceTotalMem_v2", unsafe { (d.cuDeviceTotalMem)(&mut bytes, dev) }, || format!("dev={dev}"))?;
    Ok(bytes)
}

/// `cuDeviceGetPCIBusId`: `domain:bus:device.function` in hex (`0000:18:00.0`).
pub fn device_pci_bus_id(dev: CUdevice) -> Result<String, GpuError> {
    let d = driver()?;
    // The documented form needs 13 bytes plus NUL; 64 leaves room for any future extension.
    let mut buf = [0u8; 64];
    // SAFETY: the buffer pointer and its length are passed together.
    let rc = unsafe { (d.cuDeviceGetPCIBusId)(buf.as_mut_ptr().cast(), buf.len() as c_int, dev) };
    check("cuDeviceGetPCIBusId", rc, || format!("dev={dev}"))?;
    Ok(c_buf_to_string(&buf))
}

// ---------------------------------------------------------------------------------------------------------
// Contexts
// ---------------------------------------------------------------------------------------------------------

/// `cuDevicePrimaryCtxRetain`: the device's primary context, reference-counted by the driver.
pub fn primary_ctx_retain(dev: CUdevice) -> Result<CUcontext, GpuError> {
    let d = driver()?;
    let mut ctx: CUcontext = ptr::null_mut();
    // SAFETY: `ctx` is a valid out-pointer.
    check("cuDevicePrimaryCtxRetain", unsafe { (d.cuDevicePrimaryCtxRetain)(&mut ctx, dev) }, || format!("dev={dev}"))?;
    Ok(ctx)
}

/// `cuDevicePrimaryCtxRelease_v2`.
///
/// # Safety
/// Must balance exactly one earlier successful [`primary_ctx_retain`] of `dev`, and no handle created in the
/// context may be used after the last release.
pub unsafe fn primary_ctx_release(dev: CUdevice) -> Result<(), GpuError> {
    let d = driver()?;
    // SAFETY: the caller balances an earlier retain of `dev` and uses no handle of the context afterwards
    // (this function's contract); `dev` is passed by value.
    check("cuDevicePrimaryCtxRelease_v2", unsafe { (d.cuDevicePrimaryCtxRelease)(dev) }, || format!("dev={dev}"))
}

/// `cuCtxSetCurrent` on the calling thread.
///
/// # Safety
/// `ctx` must be a live context (or null to unbind).
pub unsafe fn ctx_set_current(ctx: CUcontext) -> Result<(), GpuError> {
    let d = driver()?;
    // SAFETY: `ctx` is live or null (this function's contract), the two values the call accepts.
    check("cuCtxSetCurrent", unsafe { (d.cuCtxSetCurrent)(ctx) }, || format!("ctx={ctx:p}"))
}

/// `cuCtxGetCurrent`: the calling thread's current context, null when none.
pub fn ctx_get_current() -> Result<CUcontext, GpuError> {
    let d = driver()?;
    let mut ctx: CUcontext = ptr::null_mut();
    // SAFETY: `ctx` is a valid out-pointer.
    check("cuCtxGetCurrent", unsafe { (d.cuCtxGetCurrent)(&mut ctx) }, no_args)?;
    Ok(ctx)
}

/// `cuCtxSynchronize` on the current context.
pub fn ctx_synchronize() -> Result<(), GpuError> {
    let d = driver()?;
    // SAFETY: no arguments; the driver reports a missing current context as an error.
    check("cuCtxSynchronize", unsafe { (d.cuCtxSynchronize)() }, no_args)
}

// ---------------------------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------------------------

/// `cuMemGetInfo_v2` for the current context: (free, total) bytes.
pub fn mem_get_info() -> Result<(usize, usize), GpuError> {
    let d = driver()?;
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: both out-pointers are valid.
    check("cuMemGetInfo_v2", unsafe { (d.cuMemGetInfo)(&mut free, &mut total) }, no_args)?;
    Ok((free, total))
}

/// `cuMemAlloc_v2` in the current context.
pub fn mem_alloc(bytes: usize) -> Result<CUdeviceptr, GpuError> {
    let d = driver()?;
    let mut p: CUdeviceptr = 0;
    // SAFETY: `p` is a valid out-pointer; the driver validates the size.
    check("cuMemAlloc_v2", unsafe { (d.cuMemAlloc)(&mut p, bytes) }, || format!("bytesize={bytes}"))?;
    Ok(p)
}

/// `cuMemFree_v2`.
///
/// # Safety
/// `ptr` must come from [`mem_alloc`] and not have been freed; no queued work may still use it.
pub unsafe fn mem_free(ptr: CUdeviceptr) -> Result<(), GpuError> {
    let d = driver()?;
    // SAFETY: `ptr` came from `cuMemAlloc_v2`, is not yet freed and no queued work uses it (this function's
    // contract), so freeing it cannot pull memory out from under a kernel or copy.
    check("cuMemFree_v2", unsafe { (d.cuMemFree)(ptr) }, || format!("dptr={ptr:#x}"))
}

/// `cuMemHostAlloc`: page-locked host memory (contents uninitialised).
pub fn mem_host_alloc(bytes: usize, flags: u32) -> Result<*mut c_void, GpuError> {
    let d = driver()?;
    let mut p: *mut c_void = ptr::null_mut();
    // SAFETY: `p` is a valid out-pointer; the driver validates size and flags.
    let rc = unsafe { (d.cuMemHostAlloc)(&mut p, bytes, flags) };
    check("cuMemHostAlloc", rc, || format!("bytesize={bytes} flags={flags:#x}"))?;
    Ok(p)
}

/// `cuMemFreeHost`.
///
/// # Safety
/// `p` must come from [`mem_host_alloc`], not be freed yet, and no queued copy may still use it.
pub unsafe fn mem_free_host(p: *mut c_void) -> Result<(), GpuError> {
    let d = driver()?;
    // SAFETY: `p` came from `cuMemHostAlloc`, is not yet freed and no queued copy reads it (this function's
    // contract).
    check("cuMemFreeHost", unsafe { (d.cuMemFreeHost)(p) }, || format!("p={p:p}"))
}

/// `cuMemHostRegister_v2`: page-lock an existing host range.
///
/// # Safety
/// `[p, p + bytes)` must be mapped host memory that stays mapped until [`mem_host_unregister`].
pub unsafe fn mem_host_register(p: *mut c_void, bytes: usize, flags: u32) -> Result<(), GpuError> {
    let d = driver()?;
    // SAFETY: the caller keeps `[p, p + bytes)` mapped until it is unregistered (this function's contract),
    // so the driver never pins or maps pages that go away while registered.
    check("cuMemHostRegister_v2", unsafe { (d.cuMemHostRegister)(p, bytes, flags) }, || {
        format!("p={p:p} bytesize={bytes} flags={flags:#x}")
    })
}

/// `cuMemHostUnregister`.
///
/// # Safety
/// `p` must be the start of a range registered with [`mem_host_register`]; no queued copy may still use it.
pub unsafe fn mem_host_unregister(p: *mut c_void) -> Result<(), GpuError> {
    let d = driver()?;
    // SAFETY: `p` starts a registered range and no queued copy still reads it (this function's contract).
    check("cuMemHostUnregister", unsafe { (d.cuMemHostUnregister)(p) }, || format!("p={p:p}"))
}

/// `cuMemHostGetDevicePointer_v2` (flags must be 0).
///
/// # Safety
/// `p` must lie in host memory allocated or registered with the DEVICEMAP flag.
pub unsafe fn mem_host_get_device_pointer(p: *mut c_void) -> Result<CUdeviceptr, GpuError> {
    let d = driver()?;
    let mut dp: CUdeviceptr = 0;
    // SAFETY: `dp` is a valid out-pointer; `p` lies in DEVICEMAP host memory (this function's contract); the
    // flags argument must be 0.
    check("cuMemHostGetDevicePointer_v2", unsafe { (d.cuMemHostGetDevicePointer)(&mut dp, p, 0) }, || {
        format!("p={p:p}")
    })?;
    Ok(dp)
}

/// `cuMemcpyHtoDAsync_v2`.
///
/// # Safety
/// `dst..dst+bytes` must be device memory of a live allocation, `src..src+bytes` readable host memory that
/// stays valid and unmodified until the copy completes (pinned memory is read asynchronously), and `stream`
/// a live stream.
pub unsafe fn memcpy_htod_async(
    dst: CUdeviceptr,
    src: *const c_void,
    bytes: usize,
    stream: CUstream,
) -> Result<(), GpuError> {
    let d = driver()?;
    // SAFETY: both ranges are valid for `bytes` and stay valid until the copy completes, and `stream` is live
    // (this function's contract); the driver only reads the host range.
    check("cuMemcpyHtoDAsync_v2", unsafe { (d.cuMemcpyHtoDAsync)(dst, src, bytes, stream) }, || {
        format!("dst={dst:#x} src={src:p} bytes={bytes}")
    })
}

/// `cuMemcpyDtoHAsync_v2`.
///
/// # Safety
/// As [`memcpy_htod_async`] with the roles swapped: `dst` must be writable host memory that nothing else
/// reads or writes until the copy completes.
pub unsafe fn memcpy_dtoh_async(
    dst: *mut c_void,
    src: CUdeviceptr,
    bytes: usize,
    stream: CUstream,
) -> Result<(), GpuError> {
    let d = driver()?;
    // SAFETY: `dst` is writable host memory nobody else touches until the copy completes, `src` a live device
    // range, `stream` live (this function's contract).
    check("cuMemcpyDtoHAsync_v2", unsafe { (d.cuMemcpyDtoHAsync)(dst, src, bytes, stream) }, || {
        format!("dst={dst:p} src={src:#x} bytes={bytes}")
    })
}

/// `cuMemcpyDtoDAsync_v2`.
///
/// # Safety
/// Both ranges must lie in live device allocations; `stream` must be live.
pub unsafe fn memcpy_dtod_async(
    dst: CUdeviceptr,
    src: CUdeviceptr,
    bytes: usize,
    stream: CUstream,
) -> Result<(), GpuError> {
    let d = driver()?;
    // SAFETY: both ranges lie in live device allocations and `stream` is live (this function's contract).
    check("cuMemcpyDtoDAsync_v2", unsafe { (d.cuMemcpyDtoDAsync)(dst, src, bytes, stream) }, || {
        format!("dst={dst:#x} src={src:#x} bytes={bytes}")
    })
}

/// `cuMemsetD8Async`: `count` bytes set to `value`.
///
/// # Safety
/// `dst..dst+count` must lie in a live device allocation; `stream` must be live.
pub unsafe fn memset_d8_async(dst: CUdeviceptr, value: u8, count: usize, stream: CUstream) -> Result<(), GpuError> {
    let d = driver()?;
    // SAFETY: `dst..dst+count` lies in a live device allocation and `stream` is live (this function's contract).
    check("cuMemsetD8Async", unsafe { (d.cuMemsetD8Async)(dst, value, count, stream) }, || {
        format!("dst={dst:#x} value={value:#x} count={count}")
    })
}

/// `cuMemsetD32Async`: `count` 32-bit words set to `value` (`dst` 4-byte aligned).
///
/// # Safety
/// `dst..dst+4*count` must lie in a live device allocation; `stream` must be live.
pub unsafe fn memset_d32_async(dst: CUdeviceptr, value: u32, count: usize, stream: CUstream) -> Result<(), GpuError> {
    let d = driver()?;
    // SAFETY: `dst..dst+4*count` lies in a live device allocation and `stream` is live (this function's
    // contract); a misaligned `dst` is refused by the driver with an error.
    check("cuMemsetD32Async", unsafe { (d.cuMemsetD32Async)(dst, value, count, stream) }, || {
        format!("dst={dst:#x} value={value:#x} count={count}")
    })
}

// ---------------------------------------------------------------------------------------------------------
// Streams and events
// ---------------------------------------------------------------------------------------------------------

/// `cuStreamCreate` in the current context.
pub fn stream_create(flags: u32) -> Result<CUstream, GpuError> {
    let d = driver()?;
    let mut s: CUstream = ptr::null_mut();
    // SAFETY: `s` is a valid out-pointer.
    check("cuStreamCreate", unsafe { (d.cuStreamCreate)(&mut s, flags) }, || format!("flags={flags:#x}"))?;
    Ok(s)
}

/// `cuStreamDestroy_v2`.
///
/// # Safety
/// `s` must be a live stream from [`stream_create`], not used afterwards.
pub unsafe fn stream_destroy(s: CUstream) -> Result<(), GpuError> {
    let d = driver()?;
    // SAFETY: `s` is a live stream that the caller never uses again (this function's contract).
    check("cuStreamDestroy_v2", unsafe { (d.cuStreamDestroy)(s) }, || format!("stream={s:p}"))
}

/// `cuStreamSynchronize`.
///
/// # Safety
/// `s` must be a live stream.
pub unsafe fn stream_synchronize(s: CUstream) -> Result<(), GpuError> {
    let d = driver()?;
    // SAFETY: `s` is a live stream (this function's contract).
    check("cuStreamSynchronize", unsafe { (d.cuStreamSynchronize)(s) }, || format!("stream={s:p}"))
}

/// `cuStreamWaitEvent` (flags 0).
///
/// # Safety
/// `s` and `e` must be live.
pub unsafe fn stream_wait_event(s: CUstream, e: CUevent) -> Result<(), GpuError> {
    let d = driver()?;
    // SAFETY: `s` and `e` are live (this function's contract); flags must be 0.
    check("cuStreamWaitEvent", unsafe { (d.cuStreamWaitEvent)(s, e, 0) }, || format!("stream={s:p} event={e:p}"))
}

/// `cuEventCreate` in the current context.
pub fn event_create(flags: u32) -> Result<CUevent, GpuError> {
    let d = driver()?;
    let mut e: CUevent = ptr::null_mut();
    // SAFETY: `e` is a valid out-pointer.
    check("cuEventCreate", unsafe { (d.cuEventCreate)(&mut e, flags) }, || format!("flags={flags:#x}"))?;
    Ok(e)
}

/// `cuEventDestroy_v2`.
///
/// # Safety
/// `e` must be a live event, not used afterwards.
pub unsafe fn event_destroy(e: CUevent) -> Result<(), GpuError> {
    let d = driver()?;
    // SAFETY: `e` is a live event that the caller never uses again (this function's contract).
    check("cuEventDestroy_v2", unsafe { (d.cuEventDestroy)(e) }, || format!("event={e:p}"))
}

/// `cuEventRecord`.
///
/// # Safety
/// `e` and `s` must be live and belong to the same context.
pub unsafe fn event_record(e: CUevent, s: CUstream) -> Result<(), GpuError> {
    let d = driver()?;
    // SAFETY: `e` and `s` are live in one context (this function's contract).
    check("cuEventRecord", unsafe { (d.cuEventRecord)(e, s) }, || format!("event={e:p} stream={s:p}"))
}

/// `cuEventQuery`: `Ok(true)` when the recorded work is complete, `Ok(false)` for `CUDA_ERROR_NOT_READY`.
///
/// # Safety
/// `e` must be live.
pub unsafe fn event_query(e: CUevent) -> Result<bool, GpuError> {
    let d = driver()?;
    // SAFETY: `e` is a live event (this function's contract).
    let rc = unsafe { (d.cuEventQuery)(e) };
    if rc == sys::CUDA_ERROR_NOT_READY {
        return Ok(false);
    }
    check("cuEventQuery", rc, || format!("event={e:p}"))?;
    Ok(true)
}

/// `cuEventSynchronize`.
///
/// # Safety
/// `e` must be live.
pub unsafe fn event_synchronize(e: CUevent) -> Result<(), GpuError> {
    let d = driver()?;
    // SAFETY: `e` is a live event (this function's contract).
    check("cuEventSynchronize", unsafe { (d.cuEventSynchronize)(e) }, || format!("event={e:p}"))
}

/// `cuEventElapsedTime_v2` (or `cuEventElapsedTime` on drivers before CUDA 12.8): milliseconds from `start`
/// to `end`.
///
/// # Safety
/// Both events must be live.
pub unsafe fn event_elapsed_time(start: CUevent, end: CUevent) -> Result<f32, GpuError> {
    let d = driver()?;
    let mut ms: f32 = 0.0;
    // SAFETY: `ms` is a valid out-pointer and both events are live (this function's contract).
    let rc = unsafe { (d.cuEventElapsedTime)(&mut ms, start, end) };
    let call =
        if d.event_elapsed_symbol == "cuEventElapsedTime" { "cuEventElapsedTime" } else { "cuEventElapsedTime_v2" };
    check(call, rc, || format!("start={start:p} end={end:p}"))?;
    Ok(ms)
}

// ---------------------------------------------------------------------------------------------------------
// Modules, functions, launches
// ---------------------------------------------------------------------------------------------------------

/// `cuModuleLoadDataEx` of NUL-terminated PTX in the current context, with the JIT error log captured (at
/// most `log_bytes` bytes, including the NUL) into [`GpuError::PtxJit`] on failure.
pub fn module_load_ptx(ptx: &CStr, log_bytes: usize) -> Result<CUmodule, GpuError> {
    let d = driver()?;
    let log_bytes = log_bytes.clamp(1, u32::MAX as usize);
    let mut log = vec![0u8; log_bytes];
    let mut options = [sys::CU_JIT_ERROR_LOG_BUFFER, sys::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES];
    // Option values are passed as pointer-sized slots: the buffer pointer, then the size as an integer
    // (`unsigned int` widened into the slot, as the API documents for scalar options).
    let mut values: [*mut c_void; 2] = [log.as_mut_ptr().cast(), log_bytes as *mut c_void];
    let mut module: sys::CUmodule = ptr::null_mut();
    // SAFETY: `ptx` is NUL-terminated and outlives the call; `options`/`values` hold 2 entries each; the log
    // buffer is `log_bytes` long, which is the size passed, so the JIT writes inside it.
    let rc = unsafe {
        (d.cuModuleLoadDataEx)(
            &mut module,
            ptx.as_ptr().cast(),
            options.len() as u32,
            options.as_mut_ptr(),
            values.as_mut_ptr(),
        )
    };
    if rc == sys::CUDA_SUCCESS {
        return Ok(module);
    }
    // On return the size slot holds the bytes the JIT wrote; trust it only within the buffer.
    let written = (values[1] as usize).min(log.len());
    let text = c_buf_to_string(&log[..written]);
    Err(GpuError::PtxJit { code: rc, name: error_name(rc), log: text.trim_end().to_string() })
}

/// `cuModuleUnload`.
///
/// # Safety
/// `m` must be a live module; no function from it may be used afterwards.
pub unsafe fn module_unload(m: CUmodule) -> Result<(), GpuError> {
    let d = driver()?;
    // SAFETY: `m` is a live module whose functions the caller never uses again (this function's contract).
    check("cuModuleUnload", unsafe { (d.cuModuleUnload)(m) }, || format!("module={m:p}"))
}

/// `cuModuleGetFunction`.
///
/// # Safety
/// `m` must be a live module.
pub unsafe fn module_get_function(m: CUmodule, name: &CStr) -> Result<CUfunction, GpuError> {
    let d = driver()?;
    let mut f: CUfunction = ptr::null_mut();
    // SAFETY: `f` is a valid out-pointer, `m` a live module (this function's contract), `name` NUL-terminated
    // and borrowed for the call.
    check("cuModuleGetFunction", unsafe { (d.cuModuleGetFunction)(&mut f, m, name.as_ptr()) }, || {
        format!("name={}", name.to_string_lossy())
    })?;
    Ok(f)
}

/// `cuFuncGetAttribute`.
///
/// # Safety
/// `f` must be a live function (its module loaded).
pub unsafe fn func_get_attribute(f: CUfunction, attrib: sys::CUfunction_attribute) -> Result<i32, GpuError> {
    let d = driver()?;
    let mut v: c_int = 0;
    // SAFETY: `v` is a valid out-pointer and `f` a live function (this function's contract).
    check("cuFuncGetAttribute", unsafe { (d.cuFuncGetAttribute)(&mut v, attrib, f) }, || format!("attrib={attrib}"))?;
    Ok(v)
}

/// `cuFuncSetAttribute`.
///
/// # Safety
/// `f` must be a live function.
pub unsafe fn func_set_attribute(f: CUfunction, attrib: sys::CUfunction_attribute, value: i32) -> Result<(), GpuError> {
    let d = driver()?;
    // SAFETY: `f` is a live function (this function's contract); the driver validates `attrib` and `value`.
    check("cuFuncSetAttribute", unsafe { (d.cuFuncSetAttribute)(f, attrib, value) }, || {
        format!("attrib={attrib} value={value}")
    })
}

/// `cuFuncGetParamInfo` (CUDA 12.4+): (offset, size) in bytes of parameter `index`. `Ok(None)` when the
/// installed driver does not export the call. An index at or past the parameter count is an error
/// (`CUDA_ERROR_INVALID_VALUE`).
///
/// # Safety
/// `f` must be a live function.
pub unsafe fn func_get_param_info(f: CUfunction, index: usize) -> Result<Option<(usize, usize)>, GpuError> {
    let d = driver()?;
    let Some(call) = d.cuFuncGetParamInfo else { return Ok(None) };
    let (mut offset, mut size) = (0usize, 0usize);
    // SAFETY: both out-pointers are valid and `f` is a live function (this function's contract); the driver
    // reports an index past the parameter list as an error.
    check("cuFuncGetParamInfo", unsafe { call(f, index, &mut offset, &mut size) }, || format!("paramIndex={index}"))?;
    Ok(Some((offset, size)))
}

/// `cuLaunchKernel` with `kernelParams` (the `extra` form is not used).
///
/// # Safety
/// `f` and `stream` must be live in the same context; `params` must point to one pointer per kernel
/// parameter, each to a value of that parameter's exact size (the driver copies them during the call); the
/// kernel must only touch memory that stays valid until it completes.
#[allow(clippy::too_many_arguments)]
pub unsafe fn launch_kernel(
    f: CUfunction,
    grid: [u32; 3],
    block: [u32; 3],
    shared_bytes: u32,
    stream: CUstream,
    params: *mut *mut c_void,
) -> Result<(), GpuError> {
    let d = driver()?;
    // SAFETY: `f` and `stream` are live in one context and `params` holds one correctly sized value per kernel
    // parameter, which the driver copies during the call (this function's contract); `extra` is null.
    let rc = unsafe {
        (d.cuLaunchKernel)(
            f,
            grid[0],
            grid[1],
            grid[2],
            block[0],
            block[1],
            block[2],
            shared_bytes,
            stream,
            params,
            ptr::null_mut(),
        )
    };
    check("cuLaunchKernel", rc, || format!("grid={grid:?} block={block:?} sharedMemBytes={shared_bytes}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_names_cover_the_codes_this_crate_handles() {
        assert_eq!(builtin_error_name(sys::CUDA_ERROR_OUT_OF_MEMORY), "CUDA_ERROR_OUT_OF_MEMORY");
        assert_eq!(builtin_error_name(sys::CUDA_ERROR_LAUNCH_FAILED), "CUDA_ERROR_LAUNCH_FAILED");
        assert_eq!(builtin_error_name(sys::CUDA_ERROR_NO_DEVICE), "CUDA_ERROR_NO_DEVICE");
        assert_eq!(builtin_error_name(sys::CUDA_ERROR_INVALID_PTX), "CUDA_ERROR_INVALID_PTX");
        assert_eq!(builtin_error_name(12345), "CUDA_ERROR_UNRECOGNISED");
    }

    #[test]
    fn builtin_table_is_sorted_and_unique() {
        for w in sys::ERROR_NAMES.windows(2) {
            assert!(w[0].0 < w[1].0, "{:?} before {:?}", w[0], w[1]);
        }
        for &(code, name) in sys::ERROR_NAMES {
            assert!(name.starts_with("CUDA_"), "{code}: {name}");
            assert_eq!(sys::error_name_builtin(code), Some(name));
        }
    }

    #[test]
    fn driver_error_names_the_call_code_and_args() {
        let e = driver_error("cuMemAlloc_v2", sys::CUDA_ERROR_OUT_OF_MEMORY, "bytesize=1024".into());
        let GpuError::Driver { call, code, ref name, ref args, .. } = e else { panic!("wrong variant {e:?}") };
        assert_eq!(
            (call, code, name.as_str(), args.as_str()),
            ("cuMemAlloc_v2", 2, "CUDA_ERROR_OUT_OF_MEMORY", "bytesize=1024")
        );
        let text = e.to_string();
        assert!(text.starts_with("cuMemAlloc_v2(bytesize=1024) failed: CUDA_ERROR_OUT_OF_MEMORY (2)"), "{text}");
        assert!(!e.is_context_lost());
    }

    #[test]
    fn sticky_codes_mark_the_context_lost() {
        for code in [sys::CUDA_ERROR_ILLEGAL_ADDRESS, sys::CUDA_ERROR_LAUNCH_FAILED, sys::CUDA_ERROR_ASSERT] {
            let e = driver_error("cuStreamSynchronize", code, String::new());
            assert!(e.is_context_lost(), "{e}");
            assert!(e.to_string().contains("context lost"), "{e}");
        }
        for code in [sys::CUDA_ERROR_INVALID_VALUE, sys::CUDA_ERROR_OUT_OF_MEMORY, sys::CUDA_ERROR_NOT_READY] {
            assert!(!sys::is_sticky(code), "{code}");
        }
    }
}
