//! The primary context of a device, shared through `Arc` by everything created in it.
//!
//! # Errors in `Drop` (the crate's one policy)
//! Destructors never panic and never return errors: a failing release call is logged with `log::error!`
//! (naming the call, the driver's error name and the handle) and the destructor continues. Once a context is
//! lost (a sticky error), destructors of objects in it skip the driver calls and log at `debug`: the driver
//! would only repeat the sticky error, and the memory is reclaimed when the process ends.

use std::sync::{Arc, OnceLock};

use crate::device::Device;
use crate::error::GpuError;
use crate::launch::LaunchLimits;
use crate::result;
use crate::sys::CUcontext;

/// A retained primary context (`cuDevicePrimaryCtxRetain`), released on drop. Streams, events, buffers and
/// modules hold an `Arc<Context>`, so the context outlives them all.
pub struct Context {
    device: Device,
    raw: CUcontext,
    limits: LaunchLimits,
    /// Set once by the first sticky error: (call, error name).
    lost: OnceLock<(&'static str, String)>,
}

// SAFETY: a CUcontext is a driver handle usable from any thread (the driver API is thread-safe; each thread
// binds it with cuCtxSetCurrent before use, which `bind` does). The only mutable state is a OnceLock.
unsafe impl Send for Context {}
// SAFETY: see `Send`.
unsafe impl Sync for Context {}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("device", &self.device.ordinal()).field("lost", &self.lost.get()).finish()
    }
}

impl Context {
    /// Retain the primary context of device `ordinal` and make it current on the calling thread.
    pub fn new(ordinal: i32) -> Result<Arc<Context>, GpuError> {
        let device = Device::get(ordinal)?;
        let limits = device.launch_limits()?;
        let raw = result::primary_ctx_retain(device.raw())?;
        let ctx = Arc::new(Context { device, raw, limits, lost: OnceLock::new() });
        ctx.bind()?;
        Ok(ctx)
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The device's launch limits (queried once at creation).
    pub fn limits(&self) -> &LaunchLimits {
        &self.limits
    }

    /// The driver's handle.
    pub fn raw(&self) -> CUcontext {
        self.raw
    }

    /// Make this context current on the calling thread (a no-op when it already is).
    pub fn bind(&self) -> Result<(), GpuError> {
        if result::ctx_get_current()? != self.raw {
            // SAFETY: `self.raw` is live: it was retained in `new` and is released only in `drop`.
            unsafe { result::ctx_set_current(self.raw) }?;
        }
        Ok(())
    }

    /// The error that lost this context, if one did.
    pub fn lost(&self) -> Option<GpuError> {
        self.lost.get().map(|(call, name)| GpuError::ContextLost {
            device: self.device.ordinal(),
            first_call: call,
            first_name: name.clone(),
        })
    }

    /// Run driver work in this context: refuse at once if the context is lost, bind it to the calling thread,
    /// run `f`, and record a sticky error so that later work is refused without reaching the driver.
    pub(crate) fn run<T>(&self, f: impl FnOnce() -> Result<T, GpuError>) -> Result<T, GpuError> {
        if let Some(e) = self.lost() {
            return Err(e);
        }
        let r = self.bind().and_then(|()| f());
        if let Err(GpuError::Driver { call, code, name, .. }) = &r {
            if crate::sys::is_sticky(*code) {
                let first = self.lost.get_or_init(|| (*call, name.clone()));
                log::error!("gpu: device {} context lost: {} failed with {}", self.device.ordinal(), first.0, first.1);
            }
        }
        r
    }

    /// Wait for all work in the context (`cuCtxSynchronize`).
    pub fn synchronize(&self) -> Result<(), GpuError> {
        self.run(result::ctx_synchronize)
    }

    /// (free, total) device memory in bytes (`cuMemGetInfo_v2`).
    pub fn mem_info(&self) -> Result<(u64, u64), GpuError> {
        self.run(result::mem_get_info).map(|(f, t)| (f as u64, t as u64))
    }

    /// For destructors of objects in this context: run `f` unless the context is lost, logging any error
    /// (the policy in the module documentation).
    pub(crate) fn release(&self, what: &str, f: impl FnOnce() -> Result<(), GpuError>) {
        if self.lost.get().is_some() {
            log::debug!("gpu: device {}: context lost, {what} left to process exit", self.device.ordinal());
            return;
        }
        if let Err(e) = self.run(f) {
            log::error!("gpu: device {}: releasing {what} failed: {e}", self.device.ordinal());
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        if self.lost.get().is_some() {
            log::debug!("gpu: device {}: context lost, primary context left to process exit", self.device.ordinal());
            return;
        }
        // SAFETY: balances the retain in `new`; every object created in the context holds an Arc to it, so none
        // is alive now.
        if let Err(e) = unsafe { result::primary_ctx_release(self.device.raw()) } {
            log::error!("gpu: device {}: releasing the primary context failed: {e}", self.device.ordinal());
        }
    }
}
