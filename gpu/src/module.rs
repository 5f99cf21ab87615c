//! PTX modules and their functions.

use std::ffi::CString;
use std::sync::Arc;

use crate::context::Context;
use crate::error::GpuError;
use crate::launch::FunctionLimits;
use crate::result;
use crate::sys::{self, CUfunction, CUmodule};

/// Bytes kept of the JIT error log when PTX is rejected (longer logs are cut by the driver).
pub const JIT_ERROR_LOG_BYTES: usize = 16 * 1024;

/// Kernels with more parameters than this are not probed with `cuFuncGetParamInfo` (their arguments are then
/// not size-checked). The driver's parameter space is 32 KiB, and this project's kernels take a few.
pub const MAX_PROBED_PARAMS: usize = 1024;

struct ModuleInner {
    ctx: Arc<Context>,
    raw: CUmodule,
}

// SAFETY: a CUmodule is a driver handle usable from any thread; it is only unloaded in `drop`.
unsafe impl Send for ModuleInner {}
// SAFETY: see `Send`.
unsafe impl Sync for ModuleInner {}

impl Drop for ModuleInner {
    fn drop(&mut self) {
        let m = self.raw;
        self.ctx.release("module", || {
            // A kernel of this module may still be queued; drain the context before unloading its code.
            result::ctx_synchronize()?;
            // SAFETY: `m` is live and unloaded only here; every Function holds an Arc to this module.
            unsafe { result::module_unload(m) }
        });
    }
}

/// A module JIT-compiled from PTX text, unloaded when it and all its functions are dropped.
#[derive(Clone)]
pub struct Module {
    inner: Arc<ModuleInner>,
}

impl Module {
    /// Load PTX (`cuModuleLoadDataEx`). Rejected PTX gives [`GpuError::PtxJit`] with the JIT's error log.
    pub fn from_ptx(ctx: &Arc<Context>, ptx: &str) -> Result<Module, GpuError> {
        let text = CString::new(ptx).map_err(|e| GpuError::InvalidInput {
            op: "Module::from_ptx",
            reason: format!("PTX contains a NUL byte at offset {}", e.nul_position()),
        })?;
        let raw = ctx.run(|| result::module_load_ptx(&text, JIT_ERROR_LOG_BYTES))?;
        Ok(Module { inner: Arc::new(ModuleInner { ctx: ctx.clone(), raw }) })
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.inner.ctx
    }

    /// The kernel `name` (its `.entry` name in the PTX), with its limits and parameter sizes.
    pub fn function(&self, name: &str) -> Result<Function, GpuError> {
        let cname = CString::new(name).map_err(|_| GpuError::InvalidInput {
            op: "Module::function",
            reason: format!("kernel name {name:?} contains a NUL byte"),
        })?;
        let ctx = &self.inner.ctx;
        let m = self.inner.raw;
        // SAFETY: `m` is live while `self.inner` is.
        let raw = ctx.run(|| unsafe { result::module_get_function(m, &cname) })?;
        let limits = ctx.run(|| query_limits(raw))?;
        let param_sizes = ctx.run(|| probe_params(raw, name))?;
        Ok(Function { module: self.inner.clone(), raw, name: name.to_string(), limits, param_sizes })
    }
}

fn attr_u32(f: CUfunction, attrib: sys::CUfunction_attribute, what: &str) -> Result<u32, GpuError> {
    // SAFETY: `f` is a live function of a loaded module (callers hold the module).
    let v = unsafe { result::func_get_attribute(f, attrib) }?;
    u32::try_from(v).map_err(|_| GpuError::InvalidInput {
        op: "cuFuncGetAttribute",
        reason: format!("driver reported {what} = {v}"),
    })
}

fn query_limits(f: CUfunction) -> Result<FunctionLimits, GpuError> {
    Ok(FunctionLimits {
        max_threads_per_block: attr_u32(f, sys::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, "max threads per block")?,
        static_shared_bytes: attr_u32(f, sys::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, "static shared bytes")?,
        max_dynamic_shared_bytes: attr_u32(
            f,
            sys::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            "max dynamic shared bytes",
        )?,
    })
}

/// Parameter sizes from `cuFuncGetParamInfo`, asking index 0, 1, ... until the driver answers
/// CUDA_ERROR_INVALID_VALUE (past the last parameter). `None` when the driver lacks the call or the kernel
/// has more than [`MAX_PROBED_PARAMS`] parameters.
fn probe_params(f: CUfunction, name: &str) -> Result<Option<Vec<usize>>, GpuError> {
    let mut sizes = Vec::new();
    for index in 0..=MAX_PROBED_PARAMS {
        // SAFETY: `f` is live (see `attr_u32`).
        match unsafe { result::func_get_param_info(f, index) } {
            Ok(Some((_offset, size))) => sizes.push(size),
            Ok(None) => return Ok(None),
            Err(GpuError::Driver { code: sys::CUDA_ERROR_INVALID_VALUE, .. }) => return Ok(Some(sizes)),
            Err(e) => return Err(e),
        }
    }
    log::warn!("gpu: kernel {name} has more than {MAX_PROBED_PARAMS} parameters; its arguments are not size-checked");
    Ok(None)
}

/// A kernel of a loaded module. Holds the module, so the code stays loaded while the function exists.
pub struct Function {
    module: Arc<ModuleInner>,
    raw: CUfunction,
    name: String,
    limits: FunctionLimits,
    param_sizes: Option<Vec<usize>>,
}

// SAFETY: a CUfunction is a driver handle usable from any thread; the module it belongs to is kept alive.
unsafe impl Send for Function {}
// SAFETY: see `Send`; attribute changes go through `&mut self`.
unsafe impl Sync for Function {}

impl Function {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.module.ctx
    }

    pub fn limits(&self) -> FunctionLimits {
        self.limits
    }

    /// Sizes in bytes of the kernel's parameters; `None` when the driver cannot report them (before 12.4).
    pub fn param_sizes(&self) -> Option<&[usize]> {
        self.param_sizes.as_deref()
    }

    /// The driver's handle.
    pub fn raw(&self) -> CUfunction {
        self.raw
    }

    /// Allow up to `bytes` of dynamic shared memory per launch (above the default 48 KiB needs this opt-in);
    /// refused when static plus dynamic shared memory would exceed the device's opt-in limit.
    pub fn set_max_dynamic_shared_bytes(&mut self, bytes: u32) -> Result<(), GpuError> {
        let ctx = self.module.ctx.clone();
        let optin = ctx.limits().max_shared_bytes_per_block_optin as u64;
        if bytes as u64 + self.limits.static_shared_bytes as u64 > optin {
            return Err(GpuError::LaunchConfig {
                function: self.name.clone(),
                reason: format!(
                    "{bytes} dynamic + {} static bytes of shared memory exceed the device's opt-in limit {optin}",
                    self.limits.static_shared_bytes
                ),
            });
        }
        let value = i32::try_from(bytes).map_err(|_| GpuError::InvalidInput {
            op: "Function::set_max_dynamic_shared_bytes",
            reason: format!("{bytes} does not fit an int"),
        })?;
        let f = self.raw;
        // SAFETY: `f` is live while the module is held.
        ctx.run(|| unsafe {
            result::func_set_attribute(f, sys::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, value)
        })?;
        self.limits = ctx.run(|| query_limits(f))?;
        Ok(())
    }
}
