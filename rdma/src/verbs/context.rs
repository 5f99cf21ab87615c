//! Devices and opened device contexts (the root of the RAII tree).

use std::ptr::NonNull;
use std::sync::Arc;

use super::error::VerbsError;
use super::result::{self, Result};
use super::sys;

/// What a port offers, from `ibv_query_port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortInfo {
    pub port: u8,
    /// `IBV_PORT_*`; only `IBV_PORT_ACTIVE` carries traffic.
    pub state: u32,
    /// `IBV_MTU_*` code of the active MTU.
    pub active_mtu: u32,
    /// Local identifier (InfiniBand); 0 on RoCE.
    pub lid: u16,
    /// `IBV_LINK_LAYER_*`.
    pub link_layer: u8,
    pub gid_tbl_len: u32,
    /// Largest message the port sends.
    pub max_msg_bytes: u32,
}

impl PortInfo {
    pub fn is_active(&self) -> bool {
        self.state == sys::IBV_PORT_ACTIVE
    }

    /// RoCE (Ethernet link layer): addressed by GID with a global route header.
    pub fn is_roce(&self) -> bool {
        self.link_layer == sys::IBV_LINK_LAYER_ETHERNET
    }
}

/// Device-wide limits, from `ibv_query_device`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub fw_ver: String,
    pub phys_port_cnt: u8,
    pub max_qp_wr: u32,
    pub max_sge: u32,
    pub max_cqe: u32,
    pub max_mr_bytes: u64,
}

/// The device list, freed on drop.
struct DeviceList {
    list: NonNull<*mut sys::ibv_device>,
    len: usize,
}

impl DeviceList {
    fn get() -> Result<Self> {
        let (list, len) = result::get_device_list()?;
        Ok(DeviceList { list, len })
    }

    fn entries(&self) -> impl Iterator<Item = NonNull<sys::ibv_device>> + '_ {
        // SAFETY: ibv_get_device_list returned an array of `len` device pointers (then NULL).
        (0..self.len).filter_map(move |i| NonNull::new(unsafe { *self.list.as_ptr().add(i) }))
    }

    fn names(&self) -> Result<Vec<String>> {
        // SAFETY: entries of this live list.
        self.entries().map(|d| unsafe { result::get_device_name(d) }).collect()
    }
}

impl Drop for DeviceList {
    fn drop(&mut self) {
        // SAFETY: the list came from get_device_list and is dropped once.
        if let Err(e) = unsafe { result::free_device_list(self.list) } {
            log::warn!("{e}");
        }
    }
}

/// Names of the RDMA devices libibverbs lists (empty when there is none).
pub fn device_names() -> Result<Vec<String>> {
    DeviceList::get()?.names()
}

/// An opened device (`struct ibv_context`). Protection domains and completion queues hold an
/// `Arc` of it, so it is closed after them.
///
/// Drop policy for the whole verbs tree: a destroy call that fails in `Drop` is logged with
/// `log::warn!` and the object is abandoned (never retried, never a panic).
pub struct Context {
    ptr: NonNull<sys::ibv_context>,
    name: String,
}

// SAFETY: libibverbs verbs are thread-safe (libibverbs(7): "all verbs are thread safe"); the
// context pointer is only passed to them.
unsafe impl Send for Context {}
// SAFETY: as above; no method takes interior Rust state.
unsafe impl Sync for Context {}

impl Context {
    /// Opens the device called `name`, or the first listed device when `name` is `None`.
    pub fn open(name: Option<&str>) -> Result<Arc<Context>> {
        let list = DeviceList::get()?;
        let names = list.names()?;
        let index = match name {
            Some(n) => names.iter().position(|x| x == n),
            None => (!names.is_empty()).then_some(0),
        }
        .ok_or_else(|| VerbsError::DeviceNotFound {
            name: name.unwrap_or("(any)").to_string(),
            available: names.clone(),
        })?;
        let device = list
            .entries()
            .nth(index)
            .ok_or_else(|| VerbsError::DeviceNotFound { name: names[index].clone(), available: names.clone() })?;
        // SAFETY: device is an entry of the live list; the context outlives the list (the man
        // page allows freeing the list once the devices in use are open).
        let ptr = unsafe { result::open_device(device, &names[index]) }?;
        Ok(Arc::new(Context { ptr, name: names[index].clone() }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn as_ptr(&self) -> NonNull<sys::ibv_context> {
        self.ptr
    }

    pub fn query_device(&self) -> Result<DeviceInfo> {
        // SAFETY: the context is open for self's lifetime.
        let a = unsafe { result::query_device(self.ptr, &self.name) }?;
        // SAFETY: fw_ver is a C char array; reinterpreting c_char as u8 is sound.
        let fw: &[u8] = unsafe { std::slice::from_raw_parts(a.fw_ver.as_ptr().cast(), a.fw_ver.len()) };
        let fw_end = fw.iter().position(|&b| b == 0).unwrap_or(fw.len());
        Ok(DeviceInfo {
            fw_ver: String::from_utf8_lossy(&fw[..fw_end]).into_owned(),
            phys_port_cnt: a.phys_port_cnt,
            max_qp_wr: u32::try_from(a.max_qp_wr).unwrap_or(0),
            max_sge: u32::try_from(a.max_sge).unwrap_or(0),
            max_cqe: u32::try_from(a.max_cqe).unwrap_or(0),
            max_mr_bytes: a.max_mr_size,
        })
    }

    /// Port numbers start at 1.
    pub fn query_port(&self, port: u8) -> Result<PortInfo> {
        // SAFETY: the context is open for self's lifetime.
        let a = unsafe { result::query_port(self.ptr, &self.name, port) }?;
        Ok(PortInfo {
            port,
            state: a.state,
            active_mtu: a.active_mtu,
            lid: a.lid,
            link_layer: a.link_layer,
            gid_tbl_len: u32::try_from(a.gid_tbl_len).unwrap_or(0),
            max_msg_bytes: a.max_msg_sz,
        })
    }

    pub fn query_gid(&self, port: u8, index: u32) -> Result<[u8; 16]> {
        // SAFETY: the context is open for self's lifetime.
        unsafe { result::query_gid(self.ptr, &self.name, port, index) }
    }

    /// The first RoCE v2 GID index of `port` (an IPv4-mapped one preferred, as RoCE v2 over
    /// IPv4 is the common deployment), searched among the first `gid_tbl_len` entries.
    /// `Ok(None)` when there is none.
    pub fn find_roce_v2_gid_index(&self, port: u8) -> Result<Option<u32>> {
        let info = self.query_port(port)?;
        let mut first_v2 = None;
        for index in 0..info.gid_tbl_len {
            // SAFETY: the context is open for self's lifetime.
            let Some(entry) = (unsafe { result::query_gid_ex(self.ptr, &self.name, port, index) })? else {
                continue;
            };
            // SAFETY: every bit pattern of the union is a valid [u8; 16].
            let raw = unsafe { entry.gid.raw };
            if entry.gid_type != sys::IBV_GID_TYPE_ROCE_V2 || raw == [0; 16] {
                continue;
            }
            let ipv4_mapped = raw[..10] == [0; 10] && raw[10..12] == [0xff, 0xff];
            if ipv4_mapped {
                return Ok(Some(index));
            }
            first_v2.get_or_insert(index);
        }
        Ok(first_v2)
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: every child holds an Arc of this context, so none is left; dropped once.
        if let Err(e) = unsafe { result::close_device(self.ptr, &self.name) } {
            log::warn!("{e}");
        }
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("name", &self.name).finish()
    }
}
