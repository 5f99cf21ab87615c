//! Host bytes to device memory, one execution block at a time: the block's bytes (a range of the
//! memory-mapped packed file) are page-locked in place with `cuMemHostRegister` and copied in one
//! DMA; when the driver refuses the registration they go through a pinned staging buffer instead.

use ::gpu::{Context, DeviceBuffer, GpuError, HostRegistration, PinnedHostBuffer, RegisterFlags, Stream};
use half::bf16;
use std::sync::Arc;

/// Bytes per copy when staging through pinned memory.
pub const STAGING_BYTES: usize = 64 << 20;

/// How a block reached the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadPath {
    /// Registered in place (the mmap'd bytes), one copy.
    Registered,
    /// Copied through a pinned staging buffer (registration refused, or unaligned source).
    Staged,
}

impl LoadPath {
    pub fn as_str(self) -> &'static str {
        match self {
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

/// Copies `host` (an even number of bytes) into a new device buffer of bf16 and waits until it
/// has landed. Tries the in-place registration first, then the pinned staging path.
pub fn upload_bf16(
    ctx: &Arc<Context>,
    stream: &Stream,
    host: &[u8],
) -> Result<(DeviceBuffer<bf16>, LoadPath), GpuError> {
    if host.is_empty() || host.len() % 2 != 0 {
        return Err(GpuError::InvalidInput {
            op: "upload_bf16",
            reason: format!("{} bytes: expected a positive, even number of bytes of bf16", host.len()),
        });
    }
    let mut dst = DeviceBuffer::<bf16>::alloc(ctx, host.len() / 2)?;
    if let Some(elems) = as_bf16(host) {
        match HostRegistration::new_read_only(ctx, host, RegisterFlags { portable: true, device_map: false }) {
            Ok(reg) => {
                stream.copy_htod(elems, &mut dst, 0)?;
                drop(reg);
                return Ok((dst, LoadPath::Registered));
            }
            Err(e) if e.is_context_lost() => return Err(e),
            Err(e) => log::debug!("gpu: registering {} bytes failed ({e}); staging through pinned memory", host.len()),
        }
    }
    stage_copy(ctx, stream, host, &mut dst)?;
    Ok((dst, LoadPath::Staged))
}

/// Copies `host` into `dst` through a pinned staging buffer of at most [`STAGING_BYTES`].
pub fn stage_copy(
    ctx: &Arc<Context>,
    stream: &Stream,
    host: &[u8],
    dst: &mut DeviceBuffer<bf16>,
) -> Result<(), GpuError> {
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
        // SAFETY: reading the u16 vector's bytes.
        let bytes = unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), 6) };
        let b = as_bf16(bytes).expect("aligned");
        assert_eq!(b.iter().map(|x| x.to_f32()).collect::<Vec<_>>(), vec![1.0, 2.0, -1.0]);
        assert!(as_bf16(&bytes[1..5]).is_none());
        assert!(as_bf16(&bytes[..5]).is_none());
    }
}
