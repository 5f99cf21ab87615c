//! Devices: enumeration and queries (no context needed).

use std::fmt;

use crate::error::GpuError;
use crate::launch::LaunchLimits;
use crate::result;
use crate::sys::{self, CUdevice};

/// One CUDA device, by ordinal. Querying needs only `cuInit`, not a context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device {
    ordinal: i32,
    raw: CUdevice,
}

/// What callers need to know to choose and size a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: i32,
    pub name: String,
    /// `domain:bus:device.function`, as `nvidia-smi` prints it.
    pub pci_bus_id: String,
    pub compute_capability: (u32, u32),
    pub sm_count: u32,
    pub total_memory_bytes: u64,
    pub limits: LaunchLimits,
    /// The device can map page-locked host memory (DEVICEMAP flags work).
    pub can_map_host_memory: bool,
    /// `cuMemHostRegister` is supported.
    pub host_register_supported: bool,
    /// `cuMemHostRegister` with the READ_ONLY flag is supported (needed to pin read-only file mappings).
    pub read_only_host_register_supported: bool,
}

impl fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} (sm_{}{}, {} SMs, {:.1} GiB, PCI {})",
            self.ordinal,
            self.name,
            self.compute_capability.0,
            self.compute_capability.1,
            self.sm_count,
            self.total_memory_bytes as f64 / (1u64 << 30) as f64,
            self.pci_bus_id
        )
    }
}

impl Device {
    /// Number of CUDA devices (initialises the driver first).
    pub fn count() -> Result<usize, GpuError> {
        result::init()?;
        let n = result::device_count()?;
        Ok(n.max(0) as usize)
    }

    /// Device `ordinal` (initialises the driver first). An ordinal past the device count is refused here with
    /// the count in the message.
    pub fn get(ordinal: i32) -> Result<Device, GpuError> {
        let count = Device::count()?;
        if ordinal < 0 || ordinal as usize >= count {
            return Err(GpuError::InvalidInput {
                op: "Device::get",
                reason: format!("device ordinal {ordinal} out of range: {count} device(s)"),
            });
        }
        Ok(Device { ordinal, raw: result::device_get(ordinal)? })
    }

    pub fn ordinal(&self) -> i32 {
        self.ordinal
    }

    /// The driver's handle.
    pub fn raw(&self) -> CUdevice {
        self.raw
    }

    /// `cuDeviceGetAttribute`, raw.
    pub fn attribute(&self, attrib: sys::CUdevice_attribute) -> Result<i32, GpuError> {
        result::device_attribute(self.raw, attrib)
    }

    /// An attribute that must be a non-negative count or size.
    fn attribute_u32(&self, attrib: sys::CUdevice_attribute, what: &'static str) -> Result<u32, GpuError> {
        let v = self.attribute(attrib)?;
        u32::try_from(v).map_err(|_| GpuError::InvalidInput {
            op: "cuDeviceGetAttribute",
            reason: format!("device {} reported {what} = {v}", self.ordinal),
        })
    }

    pub fn name(&self) -> Result<String, GpuError> {
        result::device_name(self.raw)
    }

    pub fn pci_bus_id(&self) -> Result<String, GpuError> {
        result::device_pci_bus_id(self.raw)
    }

    pub fn total_memory_bytes(&self) -> Result<u64, GpuError> {
        Ok(result::device_total_mem(self.raw)? as u64)
    }

    pub fn sm_count(&self) -> Result<u32, GpuError> {
        self.attribute_u32(sys::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, "multiprocessor count")
    }

    pub fn compute_capability(&self) -> Result<(u32, u32), GpuError> {
        Ok((
            self.attribute_u32(sys::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, "compute capability major")?,
            self.attribute_u32(sys::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, "compute capability minor")?,
        ))
    }

    /// Block, grid and shared-memory limits that [`crate::launch::validate_config`] checks before every launch.
    pub fn launch_limits(&self) -> Result<LaunchLimits, GpuError> {
        use sys::*;
        Ok(LaunchLimits {
            max_threads_per_block: self
                .attribute_u32(CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK, "max threads per block")?,
            max_block_dim: [
                self.attribute_u32(CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X, "max block dim x")?,
                self.attribute_u32(CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y, "max block dim y")?,
                self.attribute_u32(CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z, "max block dim z")?,
            ],
            max_grid_dim: [
                self.attribute_u32(CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X, "max grid dim x")?,
                self.attribute_u32(CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y, "max grid dim y")?,
                self.attribute_u32(CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z, "max grid dim z")?,
            ],
            max_shared_bytes_per_block: self
                .attribute_u32(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK, "max shared memory per block")?,
            max_shared_bytes_per_block_optin: self.attribute_u32(
                CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
                "max shared memory per block (opt-in)",
            )?,
            warp_size: self.attribute_u32(CU_DEVICE_ATTRIBUTE_WARP_SIZE, "warp size")?,
        })
    }

    /// Everything in [`DeviceInfo`], one query per field.
    pub fn info(&self) -> Result<DeviceInfo, GpuError> {
        Ok(DeviceInfo {
            ordinal: self.ordinal,
            name: self.name()?,
            pci_bus_id: self.pci_bus_id()?,
            compute_capability: self.compute_capability()?,
            sm_count: self.sm_count()?,
            total_memory_bytes: self.total_memory_bytes()?,
            limits: self.launch_limits()?,
            can_map_host_memory: self.attribute(sys::CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY)? != 0,
            host_register_supported: self.attribute(sys::CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED)? != 0,
            read_only_host_register_supported: self
                .attribute(sys::CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED)?
                != 0,
        })
    }
}
