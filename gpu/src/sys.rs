//! Raw CUDA driver API declarations and the run-time loaded entry-point table.
//!
//! Nothing here is linked at build time: `libcuda.so.1` (or `libcuda.so`) is opened with `dlopen` the first
//! time [`driver`] is called and every entry point is resolved with `dlsym`. The table is kept for the life of
//! the process in a `OnceLock` (the library is never closed: handles into it live in static storage).
//!
//! Where `cuda.h` maps a public name onto a versioned symbol (`#define cuMemAlloc cuMemAlloc_v2`), the table
//! resolves the versioned symbol, because that is the ABI the header compiles to. A field lists its symbol
//! names in order of preference; `cuEventElapsedTime` is `cuEventElapsedTime_v2` in CUDA 13 headers and
//! plain `cuEventElapsedTime` in older drivers, so both are listed.
//!
//! The declarations follow the CUDA 13.0 driver API reference (docs.nvidia.com/cuda/cuda-driver-api).

#![allow(non_camel_case_types, non_snake_case)]

use std::ffi::{c_char, c_int, c_uchar, c_uint, c_void, CStr, CString};
use std::sync::OnceLock;

use crate::error::GpuError;

// ---------------------------------------------------------------------------------------------------------
// Handle and scalar types
// ---------------------------------------------------------------------------------------------------------

/// `CUresult` is a C enum: an `int` in the ABI.
pub type CUresult = c_int;
/// `CUdevice` is an `int` ordinal handle.
pub type CUdevice = c_int;
/// `CUdeviceptr` is `unsigned long long` on every 64-bit platform (`CUdeviceptr_v2`).
pub type CUdeviceptr = u64;
pub type CUdevice_attribute = c_int;
pub type CUfunction_attribute = c_int;
pub type CUjit_option = c_int;

/// Opaque driver object; only pointers to it are ever formed.
#[repr(C)]
pub struct CUctx_st {
    _private: [u8; 0],
}
#[repr(C)]
pub struct CUmod_st {
    _private: [u8; 0],
}
#[repr(C)]
pub struct CUfunc_st {
    _private: [u8; 0],
}
#[repr(C)]
pub struct CUstream_st {
    _private: [u8; 0],
}
#[repr(C)]
pub struct CUevent_st {
    _private: [u8; 0],
}

pub type CUcontext = *mut CUctx_st;
pub type CUmodule = *mut CUmod_st;
pub type CUfunction = *mut CUfunc_st;
pub type CUstream = *mut CUstream_st;
pub type CUevent = *mut CUevent_st;

// ---------------------------------------------------------------------------------------------------------
// CUresult codes used by this crate (values from cuda.h, CUDA 13.0)
// ---------------------------------------------------------------------------------------------------------

pub const CUDA_SUCCESS: CUresult = 0;
pub const CUDA_ERROR_INVALID_VALUE: CUresult = 1;
pub const CUDA_ERROR_OUT_OF_MEMORY: CUresult = 2;
pub const CUDA_ERROR_NOT_INITIALIZED: CUresult = 3;
pub const CUDA_ERROR_DEINITIALIZED: CUresult = 4;
pub const CUDA_ERROR_STUB_LIBRARY: CUresult = 34;
pub const CUDA_ERROR_NO_DEVICE: CUresult = 100;
pub const CUDA_ERROR_INVALID_DEVICE: CUresult = 101;
pub const CUDA_ERROR_INVALID_CONTEXT: CUresult = 201;
pub const CUDA_ERROR_ECC_UNCORRECTABLE: CUresult = 214;
pub const CUDA_ERROR_INVALID_PTX: CUresult = 218;
pub const CUDA_ERROR_UNSUPPORTED_PTX_VERSION: CUresult = 222;
pub const CUDA_ERROR_INVALID_HANDLE: CUresult = 400;
pub const CUDA_ERROR_NOT_FOUND: CUresult = 500;
pub const CUDA_ERROR_NOT_READY: CUresult = 600;
pub const CUDA_ERROR_ILLEGAL_ADDRESS: CUresult = 700;
pub const CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: CUresult = 701;
pub const CUDA_ERROR_LAUNCH_TIMEOUT: CUresult = 702;
pub const CUDA_ERROR_CONTEXT_IS_DESTROYED: CUresult = 709;
pub const CUDA_ERROR_ASSERT: CUresult = 710;
pub const CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED: CUresult = 712;
pub const CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED: CUresult = 713;
pub const CUDA_ERROR_HARDWARE_STACK_ERROR: CUresult = 714;
pub const CUDA_ERROR_ILLEGAL_INSTRUCTION: CUresult = 715;
pub const CUDA_ERROR_MISALIGNED_ADDRESS: CUresult = 716;
pub const CUDA_ERROR_INVALID_ADDRESS_SPACE: CUresult = 717;
pub const CUDA_ERROR_INVALID_PC: CUresult = 718;
pub const CUDA_ERROR_LAUNCH_FAILED: CUresult = 719;
pub const CUDA_ERROR_NOT_PERMITTED: CUresult = 800;
pub const CUDA_ERROR_NOT_SUPPORTED: CUresult = 801;
pub const CUDA_ERROR_EXTERNAL_DEVICE: CUresult = 911;
pub const CUDA_ERROR_UNKNOWN: CUresult = 999;

/// Names of the `CUresult` codes, for messages when `cuGetErrorName` is not available (no driver, or a code
/// the installed driver does not know). Sorted by code; `cuGetErrorName` is preferred whenever it answers.
pub const ERROR_NAMES: &[(CUresult, &str)] = &[
    (0, "CUDA_SUCCESS"),
    (1, "CUDA_ERROR_INVALID_VALUE"),
    (2, "CUDA_ERROR_OUT_OF_MEMORY"),
    (3, "CUDA_ERROR_NOT_INITIALIZED"),
    (4, "CUDA_ERROR_DEINITIALIZED"),
    (5, "CUDA_ERROR_PROFILER_DISABLED"),
    (6, "CUDA_ERROR_PROFILER_NOT_INITIALIZED"),
    (7, "CUDA_ERROR_PROFILER_ALREADY_STARTED"),
    (8, "CUDA_ERROR_PROFILER_ALREADY_STOPPED"),
    (34, "CUDA_ERROR_STUB_LIBRARY"),
    (36, "CUDA_ERROR_CALL_REQUIRES_NEWER_DRIVER"),
    (46, "CUDA_ERROR_DEVICE_UNAVAILABLE"),
    (100, "CUDA_ERROR_NO_DEVICE"),
    (101, "CUDA_ERROR_INVALID_DEVICE"),
    (102, "CUDA_ERROR_DEVICE_NOT_LICENSED"),
    (200, "CUDA_ERROR_INVALID_IMAGE"),
    (201, "CUDA_ERROR_INVALID_CONTEXT"),
    (202, "CUDA_ERROR_CONTEXT_ALREADY_CURRENT"),
    (205, "CUDA_ERROR_MAP_FAILED"),
    (206, "CUDA_ERROR_UNMAP_FAILED"),
    (207, "CUDA_ERROR_ARRAY_IS_MAPPED"),
    (208, "CUDA_ERROR_ALREADY_MAPPED"),
    (209, "CUDA_ERROR_NO_BINARY_FOR_GPU"),
    (210, "CUDA_ERROR_ALREADY_ACQUIRED"),
    (211, "CUDA_ERROR_NOT_MAPPED"),
    (212, "CUDA_ERROR_NOT_MAPPED_AS_ARRAY"),
    (213, "CUDA_ERROR_NOT_MAPPED_AS_POINTER"),
    (214, "CUDA_ERROR_ECC_UNCORRECTABLE"),
    (215, "CUDA_ERROR_UNSUPPORTED_LIMIT"),
    (216, "CUDA_ERROR_CONTEXT_ALREADY_IN_USE"),
    (217, "CUDA_ERROR_PEER_ACCESS_UNSUPPORTED"),
    (218, "CUDA_ERROR_INVALID_PTX"),
    (219, "CUDA_ERROR_INVALID_GRAPHICS_CONTEXT"),
    (220, "CUDA_ERROR_NVLINK_UNCORRECTABLE"),
    (221, "CUDA_ERROR_JIT_COMPILER_NOT_FOUND"),
    (222, "CUDA_ERROR_UNSUPPORTED_PTX_VERSION"),
    (223, "CUDA_ERROR_JIT_COMPILATION_DISABLED"),
    (224, "CUDA_ERROR_UNSUPPORTED_EXEC_AFFINITY"),
    (225, "CUDA_ERROR_UNSUPPORTED_DEVSIDE_SYNC"),
    (226, "CUDA_ERROR_CONTAINED"),
    (300, "CUDA_ERROR_INVALID_SOURCE"),
    (301, "CUDA_ERROR_FILE_NOT_FOUND"),
    (302, "CUDA_ERROR_SHARED_OBJECT_SYMBOL_NOT_FOUND"),
    (303, "CUDA_ERROR_SHARED_OBJECT_INIT_FAILED"),
    (304, "CUDA_ERROR_OPERATING_SYSTEM"),
    (400, "CUDA_ERROR_INVALID_HANDLE"),
    (401, "CUDA_ERROR_ILLEGAL_STATE"),
    (402, "CUDA_ERROR_LOSSY_QUERY"),
    (500, "CUDA_ERROR_NOT_FOUND"),
    (600, "CUDA_ERROR_NOT_READY"),
    (700, "CUDA_ERROR_ILLEGAL_ADDRESS"),
    (701, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"),
    (702, "CUDA_ERROR_LAUNCH_TIMEOUT"),
    (703, "CUDA_ERROR_LAUNCH_INCOMPATIBLE_TEXTURING"),
    (704, "CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED"),
    (705, "CUDA_ERROR_PEER_ACCESS_NOT_ENABLED"),
    (708, "CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE"),
    (709, "CUDA_ERROR_CONTEXT_IS_DESTROYED"),
    (710, "CUDA_ERROR_ASSERT"),
    (711, "CUDA_ERROR_TOO_MANY_PEERS"),
    (712, "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED"),
    (713, "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED"),
    (714, "CUDA_ERROR_HARDWARE_STACK_ERROR"),
    (715, "CUDA_ERROR_ILLEGAL_INSTRUCTION"),
    (716, "CUDA_ERROR_MISALIGNED_ADDRESS"),
    (717, "CUDA_ERROR_INVALID_ADDRESS_SPACE"),
    (718, "CUDA_ERROR_INVALID_PC"),
    (719, "CUDA_ERROR_LAUNCH_FAILED"),
    (720, "CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE"),
    (721, "CUDA_ERROR_TENSOR_MEMORY_LEAK"),
    (800, "CUDA_ERROR_NOT_PERMITTED"),
    (801, "CUDA_ERROR_NOT_SUPPORTED"),
    (802, "CUDA_ERROR_SYSTEM_NOT_READY"),
    (803, "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH"),
    (804, "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE"),
    (805, "CUDA_ERROR_MPS_CONNECTION_FAILED"),
    (806, "CUDA_ERROR_MPS_RPC_FAILURE"),
    (807, "CUDA_ERROR_MPS_SERVER_NOT_READY"),
    (808, "CUDA_ERROR_MPS_MAX_CLIENTS_REACHED"),
    (809, "CUDA_ERROR_MPS_MAX_CONNECTIONS_REACHED"),
    (810, "CUDA_ERROR_MPS_CLIENT_TERMINATED"),
    (811, "CUDA_ERROR_CDP_NOT_SUPPORTED"),
    (812, "CUDA_ERROR_CDP_VERSION_MISMATCH"),
    (900, "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED"),
    (901, "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED"),
    (902, "CUDA_ERROR_STREAM_CAPTURE_MERGE"),
    (903, "CUDA_ERROR_STREAM_CAPTURE_UNMATCHED"),
    (904, "CUDA_ERROR_STREAM_CAPTURE_UNJOINED"),
    (905, "CUDA_ERROR_STREAM_CAPTURE_ISOLATION"),
    (906, "CUDA_ERROR_STREAM_CAPTURE_IMPLICIT"),
    (907, "CUDA_ERROR_CAPTURED_EVENT"),
    (908, "CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD"),
    (909, "CUDA_ERROR_TIMEOUT"),
    (910, "CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE"),
    (911, "CUDA_ERROR_EXTERNAL_DEVICE"),
    (912, "CUDA_ERROR_INVALID_CLUSTER_SIZE"),
    (913, "CUDA_ERROR_FUNCTION_NOT_LOADED"),
    (914, "CUDA_ERROR_INVALID_RESOURCE_TYPE"),
    (915, "CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION"),
    (916, "CUDA_ERROR_KEY_ROTATION"),
    (999, "CUDA_ERROR_UNKNOWN"),
];

/// The name `cuda.h` gives `code`, from the built-in table.
pub fn error_name_builtin(code: CUresult) -> Option<&'static str> {
    ERROR_NAMES.binary_search_by_key(&code, |&(c, _)| c).ok().map(|i| ERROR_NAMES[i].1)
}

/// Codes after which the driver documents that "the process is in an inconsistent state and any further CUDA
/// work will return the same error" (a sticky error): the context is lost and must not be used again.
pub fn is_sticky(code: CUresult) -> bool {
    matches!(
        code,
        CUDA_ERROR_ECC_UNCORRECTABLE
            | CUDA_ERROR_ILLEGAL_ADDRESS
            | CUDA_ERROR_LAUNCH_TIMEOUT
            | CUDA_ERROR_CONTEXT_IS_DESTROYED
            | CUDA_ERROR_ASSERT
            | CUDA_ERROR_HARDWARE_STACK_ERROR
            | CUDA_ERROR_ILLEGAL_INSTRUCTION
            | CUDA_ERROR_MISALIGNED_ADDRESS
            | CUDA_ERROR_INVALID_ADDRESS_SPACE
            | CUDA_ERROR_INVALID_PC
            | CUDA_ERROR_LAUNCH_FAILED
            | CUDA_ERROR_EXTERNAL_DEVICE
    )
}

// ---------------------------------------------------------------------------------------------------------
// Attributes and flags
// ---------------------------------------------------------------------------------------------------------

pub const CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: CUdevice_attribute = 1;
pub const CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X: CUdevice_attribute = 2;
pub const CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y: CUdevice_attribute = 3;
pub const CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z: CUdevice_attribute = 4;
pub const CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: CUdevice_attribute = 5;
pub const CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y: CUdevice_attribute = 6;
pub const CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z: CUdevice_attribute = 7;
pub const CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: CUdevice_attribute = 8;
pub const CU_DEVICE_ATTRIBUTE_WARP_SIZE: CUdevice_attribute = 10;
pub const CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: CUdevice_attribute = 16;
pub const CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY: CUdevice_attribute = 19;
pub const CU_DEVICE_ATTRIBUTE_PCI_BUS_ID: CUdevice_attribute = 33;
pub const CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID: CUdevice_attribute = 34;
pub const CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: CUdevice_attribute = 41;
pub const CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID: CUdevice_attribute = 50;
pub const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: CUdevice_attribute = 75;
pub const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: CUdevice_attribute = 76;
pub const CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: CUdevice_attribute = 97;
pub const CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED: CUdevice_attribute = 99;
pub const CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED: CUdevice_attribute = 113;

pub const CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: CUfunction_attribute = 0;
pub const CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES: CUfunction_attribute = 1;
pub const CU_FUNC_ATTRIBUTE_NUM_REGS: CUfunction_attribute = 4;
pub const CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: CUfunction_attribute = 8;

pub const CU_JIT_INFO_LOG_BUFFER: CUjit_option = 3;
pub const CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES: CUjit_option = 4;
pub const CU_JIT_ERROR_LOG_BUFFER: CUjit_option = 5;
pub const CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES: CUjit_option = 6;

pub const CU_MEMHOSTALLOC_PORTABLE: c_uint = 0x01;
pub const CU_MEMHOSTALLOC_DEVICEMAP: c_uint = 0x02;
pub const CU_MEMHOSTALLOC_WRITECOMBINED: c_uint = 0x04;

pub const CU_MEMHOSTREGISTER_PORTABLE: c_uint = 0x01;
pub const CU_MEMHOSTREGISTER_DEVICEMAP: c_uint = 0x02;
pub const CU_MEMHOSTREGISTER_IOMEMORY: c_uint = 0x04;
pub const CU_MEMHOSTREGISTER_READ_ONLY: c_uint = 0x08;

pub const CU_STREAM_DEFAULT: c_uint = 0x0;
pub const CU_STREAM_NON_BLOCKING: c_uint = 0x1;

pub const CU_EVENT_DEFAULT: c_uint = 0x0;
pub const CU_EVENT_BLOCKING_SYNC: c_uint = 0x1;
pub const CU_EVENT_DISABLE_TIMING: c_uint = 0x2;

// ---------------------------------------------------------------------------------------------------------
// The entry-point table
// ---------------------------------------------------------------------------------------------------------

/// Library names tried, in order, by [`driver`].
pub const LIBCUDA_CANDIDATES: &[&str] = &["libcuda.so.1", "libcuda.so"];

/// Declares `Driver` with one field per entry point and the resolver that fills it. `required` entries fail
/// the load when absent; `optional` ones are `None` (used for calls newer than the oldest driver we accept).
macro_rules! driver_table {
    (
        required { $( $field:ident [$($sym:literal),+] : fn($($arg:ty),*); )* }
        optional { $( $ofield:ident [$($osym:literal),+] : fn($($oarg:ty),*); )* }
    ) => {
        /// Entry points of one loaded driver library. Each field is the function resolved from the first of
        /// its listed symbols that the library exports; `*_symbol` fields name which one was found.
        pub struct Driver {
            /// The candidate name that `dlopen` accepted.
            pub library: String,
            $( pub $field: unsafe extern "C" fn($($arg),*) -> CUresult, )*
            $( pub $ofield: Option<unsafe extern "C" fn($($oarg),*) -> CUresult>, )*
            /// Symbol resolved for `cuEventElapsedTime` (it changed name in CUDA 13).
            pub event_elapsed_symbol: &'static str,
        }

        impl Driver {
            /// Resolve every entry point from an open library handle.
            ///
            /// # Safety
            /// `handle` must be a live handle returned by `dlopen` for a CUDA driver library whose exported
            /// functions have the C signatures declared in this table.
            unsafe fn resolve(handle: *mut c_void, library: &str) -> Result<Driver, GpuError> {
                let mut event_elapsed_symbol = "";
                $(
                    // SAFETY: `handle` is a live dlopen handle (this function's contract).
                    let found = unsafe { find_symbol(handle, &[$($sym),+]) };
                    let (ptr, name) = found.ok_or_else(|| GpuError::MissingSymbol {
                        library: library.to_string(),
                        symbol: [$($sym),+].join(" or "),
                    })?;
                    if stringify!($field) == "cuEventElapsedTime" {
                        event_elapsed_symbol = name;
                    }
                    let $field: unsafe extern "C" fn($($arg),*) -> CUresult =
                        // SAFETY: `ptr` is the non-null address of an exported function whose C signature is
                        // the one declared for this field (cuda.h); function and data pointers have the same
                        // size and representation on every platform this crate builds for (the const
                        // assertion after this macro checks the size).
                        unsafe { std::mem::transmute::<*mut c_void, _>(ptr) };
                )*
                $(
                    // SAFETY: `handle` is a live dlopen handle (this function's contract).
                    let found = unsafe { find_symbol(handle, &[$($osym),+]) };
                    let $ofield: Option<unsafe extern "C" fn($($oarg),*) -> CUresult> =
                        found.map(|(ptr, _)| {
                            // SAFETY: as for the required entries above: a non-null exported function of the
                            // declared C signature, and function pointers are data-pointer sized.
                            unsafe {
                                std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($oarg),*) -> CUresult>(ptr)
                            }
                        });
                )*
                Ok(Driver { library: library.to_string(), $($field,)* $($ofield,)* event_elapsed_symbol })
            }
        }
    };
}

const _: () = assert!(std::mem::size_of::<*mut c_void>() == std::mem::size_of::<unsafe extern "C" fn() -> CUresult>());

driver_table! {
    required {
        cuInit ["cuInit"]: fn(c_uint);
        cuDriverGetVersion ["cuDriverGetVersion"]: fn(*mut c_int);
        cuGetErrorName ["cuGetErrorName"]: fn(CUresult, *mut *const c_char);
        cuGetErrorString ["cuGetErrorString"]: fn(CUresult, *mut *const c_char);
        cuDeviceGetCount ["cuDeviceGetCount"]: fn(*mut c_int);
        cuDeviceGet ["cuDeviceGet"]: fn(*mut CUdevice, c_int);
        cuDeviceGetName ["cuDeviceGetName"]: fn(*mut c_char, c_int, CUdevice);
        cuDeviceGetAttribute ["cuDeviceGetAttribute"]: fn(*mut c_int, CUdevice_attribute, CUdevice);
        cuDeviceTotalMem ["cuDeviceTotalMem_v2"]: fn(*mut usize, CUdevice);
        cuDeviceGetPCIBusId ["cuDeviceGetPCIBusId"]: fn(*mut c_char, c_int, CUdevice);
        cuDevicePrimaryCtxRetain ["cuDevicePrimaryCtxRetain"]: fn(*mut CUcontext, CUdevice);
        cuDevicePrimaryCtxRelease ["cuDevicePrimaryCtxRelease_v2"]: fn(CUdevice);
        cuCtxSetCurrent ["cuCtxSetCurrent"]: fn(CUcontext);
        cuCtxGetCurrent ["cuCtxGetCurrent"]: fn(*mut CUcontext);
        cuCtxSynchronize ["cuCtxSynchronize"]: fn();
        cuMemGetInfo ["cuMemGetInfo_v2"]: fn(*mut usize, *mut usize);
        cuMemAlloc ["cuMemAlloc_v2"]: fn(*mut CUdeviceptr, usize);
        cuMemFree ["cuMemFree_v2"]: fn(CUdeviceptr);
        cuMemHostAlloc ["cuMemHostAlloc"]: fn(*mut *mut c_void, usize, c_uint);
        cuMemFreeHost ["cuMemFreeHost"]: fn(*mut c_void);
        cuMemHostRegister ["cuMemHostRegister_v2"]: fn(*mut c_void, usize, c_uint);
        cuMemHostUnregister ["cuMemHostUnregister"]: fn(*mut c_void);
        cuMemHostGetDevicePointer ["cuMemHostGetDevicePointer_v2"]: fn(*mut CUdeviceptr, *mut c_void, c_uint);
        cuMemcpyHtoDAsync ["cuMemcpyHtoDAsync_v2"]: fn(CUdeviceptr, *const c_void, usize, CUstream);
        cuMemcpyDtoHAsync ["cuMemcpyDtoHAsync_v2"]: fn(*mut c_void, CUdeviceptr, usize, CUstream);
        cuMemcpyDtoDAsync ["cuMemcpyDtoDAsync_v2"]: fn(CUdeviceptr, CUdeviceptr, usize, CUstream);
        cuMemsetD8Async ["cuMemsetD8Async"]: fn(CUdeviceptr, c_uchar, usize, CUstream);
        cuMemsetD32Async ["cuMemsetD32Async"]: fn(CUdeviceptr, c_uint, usize, CUstream);
        cuStreamCreate ["cuStreamCreate"]: fn(*mut CUstream, c_uint);
        cuStreamDestroy ["cuStreamDestroy_v2"]: fn(CUstream);
        cuStreamSynchronize ["cuStreamSynchronize"]: fn(CUstream);
        cuStreamWaitEvent ["cuStreamWaitEvent"]: fn(CUstream, CUevent, c_uint);
        cuEventCreate ["cuEventCreate"]: fn(*mut CUevent, c_uint);
        cuEventDestroy ["cuEventDestroy_v2"]: fn(CUevent);
        cuEventRecord ["cuEventRecord"]: fn(CUevent, CUstream);
        cuEventQuery ["cuEventQuery"]: fn(CUevent);
        cuEventSynchronize ["cuEventSynchronize"]: fn(CUevent);
        cuEventElapsedTime ["cuEventElapsedTime_v2", "cuEventElapsedTime"]: fn(*mut f32, CUevent, CUevent);
        cuModuleLoadDataEx ["cuModuleLoadDataEx"]: fn(*mut CUmodule, *const c_void, c_uint, *mut CUjit_option, *mut *mut c_void);
        cuModuleUnload ["cuModuleUnload"]: fn(CUmodule);
        cuModuleGetFunction ["cuModuleGetFunction"]: fn(*mut CUfunction, CUmodule, *const c_char);
        cuFuncGetAttribute ["cuFuncGetAttribute"]: fn(*mut c_int, CUfunction_attribute, CUfunction);
        cuFuncSetAttribute ["cuFuncSetAttribute"]: fn(CUfunction, CUfunction_attribute, c_int);
        cuLaunchKernel ["cuLaunchKernel"]: fn(CUfunction, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, CUstream, *mut *mut c_void, *mut *mut c_void);
    }
    optional {
        // CUDA 12.4+: lets `launch` check the argument list against the kernel's parameters.
        cuFuncGetParamInfo ["cuFuncGetParamInfo"]: fn(CUfunction, usize, *mut usize, *mut usize);
    }
}

// SAFETY: the table holds only function pointers into a library that stays loaded for the life of the process
// and a String; the CUDA driver API is thread-safe, so the table may be shared between threads.
unsafe impl Send for Driver {}
// SAFETY: see `Send` above; nothing in the table is mutated after loading.
unsafe impl Sync for Driver {}

/// First of `names` that `handle` exports, with the name found.
///
/// # Safety
/// `handle` must be a live `dlopen` handle.
unsafe fn find_symbol(handle: *mut c_void, names: &[&'static str]) -> Option<(*mut c_void, &'static str)> {
    for &name in names {
        let cname = CString::new(name).expect("symbol names are literals without NUL");
        // SAFETY: `handle` is live (caller's contract) and `cname` is a NUL-terminated string.
        let ptr = unsafe { libc::dlsym(handle, cname.as_ptr()) };
        if !ptr.is_null() {
            return Some((ptr, name));
        }
    }
    None
}

/// The text of the last `dlerror()`, or a placeholder when there is none.
fn last_dl_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string owned by libc, valid until the next dl* call on
    // this thread; it is copied at once.
    unsafe {
        let msg = libc::dlerror();
        if msg.is_null() {
            "unknown dlopen failure".to_string()
        } else {
            CStr::from_ptr(msg).to_string_lossy().into_owned()
        }
    }
}

impl Driver {
    /// Open the first loadable library of `candidates` and resolve the table from it.
    ///
    /// Errors: [`GpuError::NoDriver`] when no candidate opens (every name tried and each `dlerror` reason are
    /// listed); [`GpuError::MissingSymbol`] when the library that opened lacks a required entry point (then it
    /// is not a usable CUDA driver, and later candidates are not tried).
    pub fn load(candidates: &[&str]) -> Result<Driver, GpuError> {
        let mut reasons = Vec::with_capacity(candidates.len());
        for &name in candidates {
            let Ok(cname) = CString::new(name) else {
                reasons.push(format!("{name}: name contains a NUL byte"));
                continue;
            };
            // SAFETY: `cname` is NUL-terminated; RTLD_NOW resolves everything up front so a broken library fails
            // here rather than at a later call.
            let handle = unsafe { libc::dlopen(cname.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
            if handle.is_null() {
                // glibc's message already starts with the name; add it only when it does not.
                let msg = last_dl_error();
                reasons.push(if msg.contains(name) { msg } else { format!("{name}: {msg}") });
                continue;
            }
            // SAFETY: `handle` was just returned by dlopen for a library named like the CUDA driver.
            let resolved = unsafe { Driver::resolve(handle, name) };
            if resolved.is_err() {
                // SAFETY: `handle` is live and nothing resolved from it is kept on this path.
                unsafe { libc::dlclose(handle) };
            }
            // On success the handle is deliberately never closed: the table points into the library.
            return resolved;
        }
        Err(GpuError::NoDriver {
            tried: candidates.iter().map(|s| s.to_string()).collect(),
            reason: reasons.join("; "),
        })
    }
}

static DRIVER: OnceLock<Result<Driver, GpuError>> = OnceLock::new();

/// The process-wide driver table, loaded from [`LIBCUDA_CANDIDATES`] on first use.
pub fn driver() -> Result<&'static Driver, GpuError> {
    match DRIVER.get_or_init(|| Driver::load(LIBCUDA_CANDIDATES)) {
        Ok(d) => Ok(d),
        Err(e) => Err(e.clone()),
    }
}

/// Load the process-wide table from `candidates` (for example a configured path to the driver library)
/// instead of the defaults. Must come before any other use of the crate: once the table is loaded, a call
/// naming other libraries is refused with [`GpuError::InvalidInput`] rather than silently ignored.
pub fn driver_from(candidates: &[&str]) -> Result<&'static Driver, GpuError> {
    let mut ours = false;
    let r = DRIVER.get_or_init(|| {
        ours = true;
        Driver::load(candidates)
    });
    let loaded_from_these = match r {
        Ok(d) => candidates.contains(&d.library.as_str()),
        Err(GpuError::NoDriver { tried, .. }) => tried.iter().map(String::as_str).eq(candidates.iter().copied()),
        Err(GpuError::MissingSymbol { library, .. }) => candidates.contains(&library.as_str()),
        Err(_) => ours,
    };
    if !loaded_from_these {
        return Err(GpuError::InvalidInput {
            op: "sys::driver_from",
            reason: format!("the driver table is already loaded from other libraries than {}", candidates.join(", ")),
        });
    }
    match r {
        Ok(d) => Ok(d),
        Err(e) => Err(e.clone()),
    }
}
