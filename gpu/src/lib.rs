//! faascale's CUDA driver API wrappers, hand-written; `libcuda.so.1` is loaded at run time.
//!
//! Three layers, as in cudarc:
//! - [`sys`]: raw declarations and the entry-point table, loaded once through `dlopen`;
//! - [`result`]: one function per driver call, each returning `Result<_, GpuError>`;
//! - safe RAII types whose children hold an `Arc` of their parent: [`Context`] (a device's primary context),
//!   [`Stream`], [`Event`], [`DeviceBuffer`], [`PinnedHostBuffer`], [`HostRegistration`], [`Module`] and
//!   [`Function`], with copies and memsets on [`Stream`] and [`launch()`]; and the slab [`pool`].
//!
//! Without a driver every entry point returns [`GpuError::NoDriver`] listing the library names tried; callers
//! use [`probe`] (or [`probe_logged`]) once to choose between the CUDA and CPU paths.
//!
//! Bad input never reaches the driver: copy and memset ranges, launch configurations and kernel argument
//! sizes are checked first, and a context that hit a sticky error is refused with [`GpuError::ContextLost`].
//! Errors in destructors are logged and ignored (see [`context`]).

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod bounds;
pub mod context;
mod copy;
pub mod device;
pub mod error;
pub mod launch;
pub mod memory;
pub mod module;
pub mod pool;
pub mod register;
pub mod result;
pub mod stream;
pub mod sys;

pub use context::Context;
pub use device::{Device, DeviceInfo};
pub use error::GpuError;
pub use launch::{launch, FunctionLimits, KernelArgs, LaunchConfig, LaunchLimits};
pub use memory::{DeviceBuffer, DeviceRepr, PinnedHostBuffer};
pub use module::{Function, Module};
pub use pool::{DevicePool, DeviceSlabs, HostSlabs, MemoryPool, Slab, SlabAllocator};
pub use register::{HostRegistration, RegisterFlags};
pub use stream::{Event, Stream};

/// Every CUDA device with its properties. `Err(NoDriver)` on machines without the driver library; a driver
/// with no usable device answers `Err(Driver { name: "CUDA_ERROR_NO_DEVICE", .. })` from `cuInit`.
pub fn probe() -> Result<Vec<DeviceInfo>, GpuError> {
    let n = Device::count()?;
    (0..n).map(|i| Device::get(i as i32)?.info()).collect()
}

/// [`probe`], with exactly one `info` log line saying which path the process takes and why.
pub fn probe_logged() -> Result<Vec<DeviceInfo>, GpuError> {
    let r = probe();
    match &r {
        Ok(devs) if devs.is_empty() => log::info!("gpu: CUDA driver loaded but no device found; using the CPU path"),
        Ok(devs) => {
            let version = result::driver_version().map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10));
            let list: Vec<String> = devs.iter().map(|d| d.to_string()).collect();
            log::info!(
                "gpu: CUDA driver {} with {} device(s): {}",
                version.unwrap_or_else(|e| format!("(version unknown: {e})")),
                devs.len(),
                list.join("; ")
            );
        }
        Err(e) => log::info!("gpu: {e}; using the CPU path"),
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_libraries_give_no_driver_listing_every_name_tried() {
        let names = ["libfaascale-absent-cuda.so.1", "libfaascale-absent-cuda.so"];
        let e = sys::Driver::load(&names).err().expect("these libraries do not exist");
        let GpuError::NoDriver { tried, reason } = &e else { panic!("expected NoDriver, got {e:?}") };
        assert_eq!(tried, &names);
        for n in names {
            assert!(reason.contains(n), "reason {reason:?} lacks {n}");
        }
        let text = e.to_string();
        assert!(text.starts_with("no CUDA driver: tried libfaascale-absent-cuda.so.1, libfaascale-absent-cuda.so"));
    }

    #[test]
    fn a_library_without_the_entry_points_is_refused_by_symbol() {
        // libc opens everywhere this crate builds, and exports no cu* symbols.
        let e = sys::Driver::load(&["libc.so.6"]).err().expect("libc is not a CUDA driver");
        assert_eq!(e, GpuError::MissingSymbol { library: "libc.so.6".into(), symbol: "cuInit".into() });
    }

    #[test]
    fn probe_answers_without_panicking_and_names_the_default_candidates() {
        match probe() {
            Ok(devs) => {
                // A machine with a driver: the answers must be sane.
                for d in &devs {
                    assert!(!d.name.is_empty() && d.sm_count > 0 && d.total_memory_bytes > 0, "{d:?}");
                }
            }
            Err(GpuError::NoDriver { tried, .. }) => assert_eq!(tried, sys::LIBCUDA_CANDIDATES),
            Err(e @ GpuError::Driver { .. }) => assert_eq!(e.driver_code(), Some(sys::CUDA_ERROR_NO_DEVICE), "{e}"),
            Err(e) => panic!("unexpected probe error: {e}"),
        }
        // Repeated calls give the same answer (the load is cached).
        assert_eq!(probe().is_ok(), probe().is_ok());
    }

    #[test]
    fn without_a_driver_every_entry_point_fails_cleanly() {
        if sys::driver().is_ok() {
            return; // covered by the GPU tests in tests/gpu.rs on a machine with a driver
        }
        assert!(matches!(result::init(), Err(GpuError::NoDriver { .. })));
        assert!(matches!(Context::new(0), Err(GpuError::NoDriver { .. })));
        assert!(matches!(Device::count(), Err(GpuError::NoDriver { .. })));
        assert!(matches!(result::mem_alloc(16), Err(GpuError::NoDriver { .. })));
        assert!(matches!(probe_logged(), Err(GpuError::NoDriver { .. })));
        // Error names still come from the built-in table.
        assert_eq!(result::error_name(sys::CUDA_ERROR_OUT_OF_MEMORY), "CUDA_ERROR_OUT_OF_MEMORY");
        assert_eq!(result::error_description(sys::CUDA_ERROR_OUT_OF_MEMORY), "");
    }
}
