//! The crate's one error type.

use std::fmt;

/// Every failure of the `gpu` crate. Driver failures carry the C call, the `CUresult` code, the name
/// `cuGetErrorName` gives it and the arguments that matter; checks made before calling the driver (bounds,
/// launch limits, pool capacity) have their own variants so no bad input ever reaches the driver.
#[derive(Debug, Clone, PartialEq)]
pub enum GpuError {
    /// No CUDA driver library could be opened: this machine takes the CPU path.
    NoDriver {
        /// Library names tried, in order.
        tried: Vec<String>,
        /// `dlerror()` for each name, `name: reason` joined by `; `.
        reason: String,
    },
    /// A library opened but lacks a required entry point (an old driver, or not a CUDA driver).
    MissingSymbol { library: String, symbol: String },
    /// A driver call returned an error.
    Driver {
        /// The C entry point, with its version suffix (`cuMemAlloc_v2`).
        call: &'static str,
        /// The `CUresult` value.
        code: i32,
        /// `cuGetErrorName` (or the built-in table when the driver does not know the code).
        name: String,
        /// `cuGetErrorString`, empty when unavailable.
        description: String,
        /// The arguments that matter, `key=value` separated by spaces.
        args: String,
    },
    /// An earlier call hit a sticky error: the context is unusable and no further work is sent to it.
    ContextLost {
        device: i32,
        /// The call and error that lost the context.
        first_call: &'static str,
        first_name: String,
    },
    /// A memory range outside a buffer (checked before the driver is called).
    OutOfBounds {
        op: &'static str,
        /// Which operand: `src` or `dst`.
        operand: &'static str,
        offset: usize,
        len: usize,
        capacity: usize,
    },
    /// Two operands belong to different contexts (devices).
    ContextMismatch { op: &'static str, left_device: i32, right_device: i32 },
    /// A launch configuration the device or the function cannot run (checked before `cuLaunchKernel`).
    LaunchConfig { function: String, reason: String },
    /// The argument list does not match the kernel's parameters (count or size).
    LaunchArgs { function: String, reason: String },
    /// PTX that the driver's JIT rejected, with the JIT error log.
    PtxJit { code: i32, name: String, log: String },
    /// A value handed in by the caller that the driver would reject or misread.
    InvalidInput { op: &'static str, reason: String },
    /// The pool could not be reserved: the request does not fit the device's free memory with headroom.
    PoolRefused { slab_bytes: usize, num_slabs: usize, needed_bytes: u64, headroom_bytes: u64, free_bytes: u64 },
    /// Every slab of the pool is in use; the pool never allocates more.
    OutOfPool { slab_bytes: usize, num_slabs: usize },
}

impl GpuError {
    /// True when the failure means the context can no longer be used (a sticky driver error, or a context
    /// already marked lost).
    pub fn is_context_lost(&self) -> bool {
        match self {
            GpuError::Driver { code, .. } => crate::sys::is_sticky(*code),
            GpuError::ContextLost { .. } => true,
            _ => false,
        }
    }

    /// The `CUresult` for driver failures.
    pub fn driver_code(&self) -> Option<i32> {
        match self {
            GpuError::Driver { code, .. } | GpuError::PtxJit { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl fmt::Display for GpuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuError::NoDriver { tried, reason } => {
                write!(f, "no CUDA driver: tried {} ({reason})", tried.join(", "))
            }
            GpuError::MissingSymbol { library, symbol } => {
                write!(f, "{library} is not a usable CUDA driver: it lacks {symbol}")
            }
            GpuError::Driver { call, code, name, description, args } => {
                write!(f, "{call}({args}) failed: {name} ({code})")?;
                if !description.is_empty() {
                    write!(f, ": {description}")?;
                }
                if crate::sys::is_sticky(*code) {
                    write!(f, " [context lost: restart the process to use this GPU again]")?;
                }
                Ok(())
            }
            GpuError::ContextLost { device, first_call, first_name } => write!(
                f,
                "CUDA context of device {device} is lost since {first_call} failed with {first_name}; \
                 no further work is sent to it"
            ),
            GpuError::OutOfBounds { op, operand, offset, len, capacity } => write!(
                f,
                "{op}: {operand} range [{offset}, {offset}+{len}) is outside the buffer of {capacity} elements"
            ),
            GpuError::ContextMismatch { op, left_device, right_device } => {
                write!(f, "{op}: operands belong to devices {left_device} and {right_device}")
            }
            GpuError::LaunchConfig { function, reason } => write!(f, "launch of {function}: {reason}"),
            GpuError::LaunchArgs { function, reason } => write!(f, "arguments for {function}: {reason}"),
            GpuError::PtxJit { code, name, log } => {
                write!(f, "cuModuleLoadDataEx rejected the PTX: {name} ({code})")?;
                if !log.is_empty() {
                    write!(f, "; JIT log: {log}")?;
                }
                Ok(())
            }
            GpuError::InvalidInput { op, reason } => write!(f, "{op}: {reason}"),
            GpuError::PoolRefused { slab_bytes, num_slabs, needed_bytes, headroom_bytes, free_bytes } => write!(
                f,
                "memory pool of {num_slabs} slabs x {slab_bytes} bytes refused: needs {needed_bytes} bytes plus \
                 {headroom_bytes} headroom, {free_bytes} free"
            ),
            GpuError::OutOfPool { slab_bytes, num_slabs } => {
                write!(f, "memory pool exhausted: all {num_slabs} slabs of {slab_bytes} bytes are in use")
            }
        }
    }
}

impl std::error::Error for GpuError {}
