//! Host bytes to device memory, one execution block at a time.
//!
//! - Warm host cache ([`PinnedPacked`]): a node that keeps a model in host memory page-locks the
//!   whole memory-mapped packed file once, when it takes the model in; loading a block is then one
//!   DMA into a device slab reserved at start-up (`GpuStage`'s pool): no registration, no
//!   allocation on the scale-out path.
//! - Otherwise the block's bytes (a range of the mmap) are page-locked in place with
//!   `cuMemHostRegister` for the copy and released after it; when the driver refuses the
//!   registration they go through a pinned staging buffer instead.

use crate::packed::PackedFile;
use ::gpu::{
    Context, DeviceBuffer, DeviceSlabs, GpuError, HostRegistration, PinnedHostBuffer, RegisterFlags, Slab, Stream,
};
use half::bf16;
use std::sync::Arc;

/// Bytes per copy when staging through pinned memory.
pub const STAGING_BYTES: usize = 64 << 20;

/// How a block reached the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadPath {
    /// Already page-locked (a [`PinnedPacked`] file, or a range the driver reports registered), one copy.
    Pinned,
    /// Registered in place (the mmap'd bytes), one copy.
    Registered,
    /// Copied through a pinned staging buffer (registration refused, or unaligned source).
    Staged,
}

impl LoadPath {
    pub fn as_str(self) -> &'static str {
        match self {
            LoadPath::Pinned => "pinned",
            LoadPath::Registered => "registered",
            LoadPath::Staged => "staged",
        }
    }
}

/// `host` as bf16 elements when it is 2-byte aligned and of even length.
fn as_bf16(host: &[u8]) -> Option<&[bf16]> {
    if host.len() % 2 != 0 {
        return None;
    }
    // SAFETY: bf16 is a transparent u16, valid for every bit pattern; align_to only yields the
    // aligned middle part, and we accept it only when nothing is left over.
    let (pre, mid, post) = unsafe { host.align_to::<bf16>() };
    (pre.is_empty() && post.is_empty()).then_some(mid)
}

/// Device memory holding one block's weights: a slab of the stage's pool, or a buffer of its own.
pub enum WeightBuf {
    Pooled(Slab<DeviceSlabs<bf16>>),
    Owned(DeviceBuffer<bf16>),
}

impl WeightBuf {
    pub fn dev(&self) -> &DeviceBuffer<bf16> {
        match self {
            WeightBuf::Pooled(s) => s.memory(),
            WeightBuf::Owned(b) => b,
        }
    }
    fn dev_mut(&mut self) -> &mut DeviceBuffer<bf16> {
        match self {
            WeightBuf::Pooled(s) => s.memory_mut(),
            WeightBuf::Owned(b) => b,
        }
    }
}

fn check_even(op: &'static str, host: &[u8]) -> Result<(), GpuError> {
    if host.is_empty() || host.len() % 2 != 0 {
        return Err(GpuError::InvalidInput {
            op,
            reason: format!("{} bytes: expected a positive, even number of bytes of bf16", host.len()),
        });
    }
    Ok(())
}

/// Copies `host` (an even number of bytes) into a new device buffer of bf16 and waits until it
/// has landed. Tries the in-place registration first, then the pinned staging path.
pub fn upload_bf16(
    ctx: &Arc<Context>,
    stream: &Stream,
    host: &[u8],
) -> Result<(DeviceBuffer<bf16>, LoadPath), GpuError> {
    check_even("upload_bf16", host)?;
    let mut dst = WeightBuf::Owned(DeviceBuffer::<bf16>::alloc(ctx, host.len() / 2)?);
    let path = upload_bf16_into(ctx, stream, host, &mut dst, false)?;
    let WeightBuf::Owned(dst) = dst else { unreachable!("made Owned above") };
    Ok((dst, path))
}

/// Copies `host` (an even number of bytes) to the start of `dst` and waits until it has landed.
/// `host_pinned`: the bytes are already page-locked in this context (a [`PinnedPacked`] file), so
/// they are copied as they are; else they are registered for the copy, or staged when the driver
/// refuses that.
pub fn upload_bf16_into(
    ctx: &Arc<Context>,
    stream: &Stream,
    host: &[u8],
    dst: &mut WeightBuf,
    host_pinned: bool,
) -> Result<LoadPath, GpuError> {
    check_even("upload_bf16_into", host)?;
    let dst = dst.dev_mut();
    if let Some(elems) = as_bf16(host) {
        if host_pinned {
            stream.copy_htod(elems, dst, 0)?;
            return Ok(LoadPath::Pinned);
        }
        match HostRegistration::new_read_only(ctx, host, RegisterFlags { portable: true, device_map: false }) {
            Ok(reg) => {
                stream.copy_htod(elems, dst, 0)?;
                drop(reg);
                return Ok(LoadPath::Registered);
            }
            Err(e) if e.is_context_lost() => return Err(e),
            // Page-locked already (a `PinnedPacked` file, or another registration): copy as it is.
            Err(GpuError::Driver { code: ::gpu::sys::CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED, .. }) => {
                stream.copy_htod(elems, dst, 0)?;
                return Ok(LoadPath::Pinned);
            }
            Err(e) => log::debug!("gpu: registering {} bytes failed ({e}); staging through pinned memory", host.len()),
        }
    }
    stage_copy(ctx, stream, host, dst)?;
    Ok(LoadPath::Staged)
}

/// A packed file whose whole mapping is page-locked in one context: the warm host cache of a
/// node that keeps the model in memory. Registering costs about as much as the copies it speeds
/// up (it pins every page), so it is done once, when the node takes the model in, not when a
/// block is loaded.
pub struct PinnedPacked {
    /// Holds an `Arc` of the file itself, so the mapping outlives the registration.
    reg: HostRegistration<'static>,
    file: Arc<PackedFile>,
}

impl PinnedPacked {
    /// Page-locks `file`'s whole mapping (read-only) in `ctx`.
    pub fn new(ctx: &Arc<Context>, file: Arc<PackedFile>) -> Result<PinnedPacked, GpuError> {
        let flags = RegisterFlags { portable: true, device_map: false };
        let reg = HostRegistration::owned_read_only(ctx, file.clone(), PackedFile::bytes, flags)?;
        Ok(PinnedPacked { reg, file })
    }

    pub fn file(&self) -> &Arc<PackedFile> {
        &self.file
    }

    /// Bytes page-locked.
    pub fn len(&self) -> usize {
        self.reg.len()
    }

    pub fn is_empty(&self) -> bool {
        self.reg.is_empty()
    }
}

/// Copies `host` into `dst` through a pinned staging buffer of at most [`STAGING_BYTES`].
fn stage_copy(ctx: &Arc<Context>, stream: &Stream, host: &[u8], dst: &mut DeviceBuffer<bf16>) -> Result<(), GpuError> {
    let chunk_elems = (STAGING_BYTES / 2).min(host.len() / 2).max(1);
    let mut pinned = PinnedHostBuffer::<bf16>::alloc(ctx, chunk_elems)?;
    for (i, piece) in host.chunks(chunk_elems * 2).enumerate() {
        let n = piece.len() / 2;
        let slot = &mut pinned.as_mut_slice()[..n];
        for (d, s) in slot.iter_mut().zip(piece.chunks_exact(2)) {
            *d = bf16::from_bits(u16::from_le_bytes([s[0], s[1]]));
        }
        stream.copy_htod(&pinned.as_slice()[..n], dst, i * chunk_elems)?;
    }
    Ok(())
}

/// bf16 values of f32 (rounded to nearest even): small tensors such as norm weights.
pub fn upload_f32_as_bf16(ctx: &Arc<Context>, stream: &Stream, values: &[f32]) -> Result<DeviceBuffer<bf16>, GpuError> {
    let host: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
    let mut dst = DeviceBuffer::alloc(ctx, host.len().max(1))?;
    stream.copy_htod(&host, &mut dst, 0)?;
    Ok(dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_views_need_alignment_and_even_length() {
        let v: Vec<u16> = vec![0x3f80, 0x4000, 0xbf80];
        // SAFETY: the pointer and 6 bytes cover exactly the vector's 3 initialised u16s, which `v` keeps
        // alive and unmodified while `bytes` is used; u8 has no alignment requirement.
        let bytes = unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), 6) };
        let b = as_bf16(bytes).expect("aligned");
        assert_eq!(b.iter().map(|x| x.to_f32()).collect::<Vec<_>>(), vec![1.0, 2.0, -1.0]);
        assert!(as_bf16(&bytes[1..5]).is_none());
        assert!(as_bf16(&bytes[..5]).is_none());
    }
}
