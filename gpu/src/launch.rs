//! Kernel launches: the configuration and argument checks (pure functions, tested without a GPU) and the
//! launch itself.

use std::ffi::c_void;

use crate::bounds;
use crate::error::GpuError;
use crate::memory::{DeviceBuffer, DeviceRepr};
use crate::module::Function;
use crate::result;
use crate::stream::{same_context, Stream};

/// A device's launch limits (from `cuDeviceGetAttribute`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchLimits {
    pub max_threads_per_block: u32,
    pub max_block_dim: [u32; 3],
    pub max_grid_dim: [u32; 3],
    /// Shared memory per block without opting in (48 KiB on current GPUs).
    pub max_shared_bytes_per_block: u32,
    /// Shared memory per block after `Function::set_max_dynamic_shared_bytes`.
    pub max_shared_bytes_per_block_optin: u32,
    pub warp_size: u32,
}

/// One function's limits (from `cuFuncGetAttribute`): register use can lower the thread count below the
/// device's, and dynamic shared memory above 48 KiB needs an opt-in per function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionLimits {
    pub max_threads_per_block: u32,
    pub static_shared_bytes: u32,
    pub max_dynamic_shared_bytes: u32,
}

/// Grid and block dimensions and dynamic shared memory of one launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
}

impl LaunchConfig {
    /// A 1-D launch of `block_x` threads per block covering `n` elements (one thread each).
    pub fn for_elements(n: usize, block_x: u32) -> Result<LaunchConfig, GpuError> {
        if n == 0 || block_x == 0 {
            return Err(GpuError::InvalidInput {
                op: "LaunchConfig::for_elements",
                reason: format!("{n} elements with {block_x} threads per block: both must be positive"),
            });
        }
        let blocks = n.div_ceil(block_x as usize);
        let grid_x = u32::try_from(blocks).map_err(|_| GpuError::InvalidInput {
            op: "LaunchConfig::for_elements",
            reason: format!("{n} elements need {blocks} blocks of {block_x}: more than a u32 grid"),
        })?;
        Ok(LaunchConfig { grid: [grid_x, 1, 1], block: [block_x, 1, 1], shared_bytes: 0 })
    }
}

/// Check `cfg` against the device and function limits; the reason names the first limit broken.
pub fn validate_config(
    function: &str,
    cfg: &LaunchConfig,
    device: &LaunchLimits,
    func: &FunctionLimits,
) -> Result<(), GpuError> {
    let fail = |reason: String| Err(GpuError::LaunchConfig { function: function.to_string(), reason });
    for (i, axis) in ['x', 'y', 'z'].into_iter().enumerate() {
        if cfg.grid[i] == 0 || cfg.block[i] == 0 {
            return fail(format!("grid {:?} and block {:?} must be at least 1 on every axis", cfg.grid, cfg.block));
        }
        if cfg.block[i] > device.max_block_dim[i] {
            return fail(format!(
                "block.{axis} = {} exceeds the device limit {}",
                cfg.block[i], device.max_block_dim[i]
            ));
        }
        if cfg.grid[i] > device.max_grid_dim[i] {
            return fail(format!("grid.{axis} = {} exceeds the device limit {}", cfg.grid[i], device.max_grid_dim[i]));
        }
    }
    let threads = cfg.block.iter().map(|&b| b as u64).product::<u64>();
    if threads > device.max_threads_per_block as u64 {
        return fail(format!(
            "{threads} threads per block {:?} exceed the device limit {}",
            cfg.block, device.max_threads_per_block
        ));
    }
    if threads > func.max_threads_per_block as u64 {
        return fail(format!(
            "{threads} threads per block {:?} exceed this function's limit {} (register use)",
            cfg.block, func.max_threads_per_block
        ));
    }
    if cfg.shared_bytes > func.max_dynamic_shared_bytes {
        return fail(format!(
            "{} bytes of dynamic shared memory exceed this function's limit {} (raise it with \
             Function::set_max_dynamic_shared_bytes, up to {} minus static use)",
            cfg.shared_bytes, func.max_dynamic_shared_bytes, device.max_shared_bytes_per_block_optin
        ));
    }
    let total_shared = cfg.shared_bytes as u64 + func.static_shared_bytes as u64;
    if total_shared > device.max_shared_bytes_per_block_optin as u64 {
        return fail(format!(
            "{} dynamic + {} static bytes of shared memory exceed the device limit {}",
            cfg.shared_bytes, func.static_shared_bytes, device.max_shared_bytes_per_block_optin
        ));
    }
    Ok(())
}

/// Check the sizes of the arguments given against the kernel's parameter sizes.
pub fn validate_args(function: &str, expected_sizes: &[usize], given_sizes: &[usize]) -> Result<(), GpuError> {
    let fail = |reason: String| Err(GpuError::LaunchArgs { function: function.to_string(), reason });
    if expected_sizes.len() != given_sizes.len() {
        return fail(format!("kernel takes {} parameters, {} given", expected_sizes.len(), given_sizes.len()));
    }
    for (i, (&want, &got)) in expected_sizes.iter().zip(given_sizes).enumerate() {
        if want != got {
            return fail(format!("parameter {i} is {want} bytes, argument is {got} bytes"));
        }
    }
    Ok(())
}

/// Kernel arguments, in parameter order. Each value is copied into storage owned here; the driver copies
/// them again during `cuLaunchKernel`, so the list can be dropped or reused after the launch returns.
#[derive(Debug, Default)]
pub struct KernelArgs {
    /// One 8-byte-aligned slot per argument.
    slots: Vec<Box<[u64]>>,
    sizes: Vec<usize>,
    /// Device ordinals of buffers passed, checked against the launch's device.
    devices: Vec<i32>,
}

impl KernelArgs {
    pub fn new() -> KernelArgs {
        KernelArgs::default()
    }

    /// A scalar argument (`u32`, `f32`, ...), passed by value.
    pub fn push<T: DeviceRepr>(&mut self, value: T) -> &mut Self {
        let size = size_of::<T>();
        let mut slot = vec![0u64; size.div_ceil(8).max(1)].into_boxed_slice();
        // SAFETY: the slot holds at least `size` bytes; `T` is plain data (DeviceRepr), copied byte-wise.
        unsafe {
            std::ptr::copy_nonoverlapping((&value as *const T).cast::<u8>(), slot.as_mut_ptr().cast::<u8>(), size)
        };
        self.slots.push(slot);
        self.sizes.push(size);
        self
    }

    /// A pointer argument: the device address of `buf[0]`.
    pub fn push_buffer<T: DeviceRepr>(&mut self, buf: &DeviceBuffer<T>) -> &mut Self {
        self.devices.push(buf.context().device().ordinal());
        self.push(buf.device_ptr())
    }

    /// A pointer argument: the device address of `buf[offset]` (`offset <= len`), bounds-checked.
    pub fn push_buffer_at<T: DeviceRepr>(
        &mut self,
        buf: &DeviceBuffer<T>,
        offset: usize,
    ) -> Result<&mut Self, GpuError> {
        let addr = bounds::element_address(buf.device_ptr(), offset, buf.len(), size_of::<T>())?;
        self.devices.push(buf.context().device().ordinal());
        Ok(self.push(addr))
    }

    /// Sizes in bytes of the arguments so far.
    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }

    pub fn len(&self) -> usize {
        self.sizes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sizes.is_empty()
    }

    /// One pointer per argument, as `kernelParams` expects.
    fn pointers(&mut self) -> Vec<*mut c_void> {
        self.slots.iter_mut().map(|s| s.as_mut_ptr().cast::<c_void>()).collect()
    }
}

/// Launch `func` on `stream`, after checking the configuration against the device and function limits and
/// the argument sizes against the kernel's parameters (when the driver can report them: CUDA 12.4+).
/// Nothing reaches the driver unless every check passes.
///
/// # Safety
/// The kernel runs arbitrary device code: each argument must have the type the kernel's parameter declares
/// (sizes are checked, meanings cannot be), and every pointer argument must cover all the memory the kernel
/// reads or writes for this configuration. Buffers wait for queued kernels before they are freed.
pub unsafe fn launch(
    func: &Function,
    cfg: LaunchConfig,
    stream: &Stream,
    args: &mut KernelArgs,
) -> Result<(), GpuError> {
    let ctx = func.context();
    same_context("launch", ctx, stream.context())?;
    let device = ctx.device().ordinal();
    if let Some(&other) = args.devices.iter().find(|&&d| d != device) {
        return Err(GpuError::ContextMismatch { op: "launch", left_device: device, right_device: other });
    }
    validate_config(func.name(), &cfg, ctx.limits(), &func.limits())?;
    if let Some(expected) = func.param_sizes() {
        validate_args(func.name(), expected, args.sizes())?;
    }
    let mut ptrs = args.pointers();
    let params = if ptrs.is_empty() { std::ptr::null_mut() } else { ptrs.as_mut_ptr() };
    let (f, s) = (func.raw(), stream.raw());
    // SAFETY: `f` and `s` are live and in the same context (checked); `params` holds one pointer per argument
    // into `args`, alive for the call; the kernel's memory contract is the caller's.
    ctx.run(|| unsafe { result::launch_kernel(f, cfg.grid, cfg.block, cfg.shared_bytes, s, params) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// H100 SXM limits (as cuDeviceGetAttribute reports them).
    fn h100() -> LaunchLimits {
        LaunchLimits {
            max_threads_per_block: 1024,
            max_block_dim: [1024, 1024, 64],
            max_grid_dim: [2147483647, 65535, 65535],
            max_shared_bytes_per_block: 49152,
            max_shared_bytes_per_block_optin: 232448,
            warp_size: 32,
        }
    }

    fn func() -> FunctionLimits {
        FunctionLimits { max_threads_per_block: 1024, static_shared_bytes: 1024, max_dynamic_shared_bytes: 48128 }
    }

    fn cfg(grid: [u32; 3], block: [u32; 3], shared_bytes: u32) -> LaunchConfig {
        LaunchConfig { grid, block, shared_bytes }
    }

    fn reason(r: Result<(), GpuError>) -> String {
        match r {
            Err(GpuError::LaunchConfig { reason, .. }) | Err(GpuError::LaunchArgs { reason, .. }) => reason,
            other => panic!("expected a launch error, got {other:?}"),
        }
    }

    #[test]
    fn configurations_within_limits_pass() {
        validate_config("k", &cfg([1, 1, 1], [1, 1, 1], 0), &h100(), &func()).unwrap();
        validate_config("k", &cfg([2147483647, 65535, 65535], [1024, 1, 1], 48128), &h100(), &func()).unwrap();
        validate_config("k", &cfg([8, 8, 1], [16, 16, 4], 0), &h100(), &func()).unwrap();
    }

    #[test]
    fn each_limit_is_enforced_and_named() {
        let (d, f) = (h100(), func());
        assert!(reason(validate_config("k", &cfg([0, 1, 1], [32, 1, 1], 0), &d, &f)).contains("at least 1"));
        assert!(reason(validate_config("k", &cfg([1, 1, 1], [32, 0, 1], 0), &d, &f)).contains("at least 1"));
        assert!(reason(validate_config("k", &cfg([1, 1, 1], [1, 1, 65], 0), &d, &f)).contains("block.z = 65"));
        assert!(reason(validate_config("k", &cfg([1, 65536, 1], [1, 1, 1], 0), &d, &f)).contains("grid.y = 65536"));
        assert!(reason(validate_config("k", &cfg([1, 1, 1], [64, 32, 1], 0), &d, &f)).contains("2048 threads"));
        let small = FunctionLimits { max_threads_per_block: 256, ..f };
        assert!(
            reason(validate_config("k", &cfg([1, 1, 1], [512, 1, 1], 0), &d, &small)).contains("function's limit 256")
        );
        assert!(reason(validate_config("k", &cfg([1, 1, 1], [32, 1, 1], 48129), &d, &f)).contains("dynamic shared"));
        let opted = FunctionLimits { max_dynamic_shared_bytes: 232448, ..f };
        assert!(reason(validate_config("k", &cfg([1, 1, 1], [32, 1, 1], 232448), &d, &opted)).contains("static"));
    }

    #[test]
    fn a_launch_error_names_the_function() {
        let e = validate_config("vec_add", &cfg([1, 1, 1], [2048, 1, 1], 0), &h100(), &func()).unwrap_err();
        assert!(e.to_string().starts_with("launch of vec_add: block.x = 2048"), "{e}");
    }

    #[test]
    fn one_dimensional_configs_cover_every_element() {
        let c = LaunchConfig::for_elements(1000, 256).unwrap();
        assert_eq!((c.grid, c.block), ([4, 1, 1], [256, 1, 1]));
        assert_eq!(LaunchConfig::for_elements(1024, 256).unwrap().grid[0], 4);
        assert!(LaunchConfig::for_elements(0, 256).is_err());
        assert!(LaunchConfig::for_elements(10, 0).is_err());
        if usize::BITS > 32 {
            assert!(LaunchConfig::for_elements(usize::MAX, 1).is_err());
        }
    }

    #[test]
    fn argument_lists_must_match_parameter_sizes() {
        validate_args("k", &[8, 8, 4], &[8, 8, 4]).unwrap();
        assert!(reason(validate_args("k", &[8, 8, 4], &[8, 8])).contains("takes 3 parameters, 2 given"));
        assert!(reason(validate_args("k", &[8, 8, 4], &[8, 4, 4])).contains("parameter 1 is 8 bytes, argument is 4"));
    }

    #[test]
    fn kernel_args_hold_values_byte_for_byte() {
        let mut a = KernelArgs::new();
        a.push(7u32).push(1.5f32).push(0x1122334455667788u64).push(half::bf16::from_f32(2.0));
        assert_eq!(a.sizes(), &[4, 4, 8, 2]);
        let ptrs = a.pointers();
        // SAFETY: each pointer addresses a slot holding a value of the pushed type.
        unsafe {
            assert_eq!(*(ptrs[0] as *const u32), 7);
            assert_eq!(*(ptrs[1] as *const f32), 1.5);
            assert_eq!(*(ptrs[2] as *const u64), 0x1122334455667788);
            assert_eq!(*(ptrs[3] as *const half::bf16), half::bf16::from_f32(2.0));
        }
    }
}
