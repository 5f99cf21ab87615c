//! Copies and memsets queued on a [`Stream`]. Every range is checked against its buffer before the driver is
//! called; a range outside a buffer is an [`GpuError::OutOfBounds`], never a driver call.
//!
//! Host memory and asynchrony: with pinned or registered host memory the driver copies truly asynchronously,
//! so a safe function that takes a borrowed host slice cannot return before the copy is done (the borrow
//! would end while the DMA still runs). `copy_htod` / `copy_dtoh` therefore wait for the stream; the
//! `*_async` variants return at once and are `unsafe`, with the lifetime contract on the caller. Device to
//! device copies and memsets are safe and asynchronous: buffers wait for queued work before they are freed.

use crate::bounds;
use crate::error::GpuError;
use crate::memory::{DeviceBuffer, DeviceRepr};
use crate::result;
use crate::stream::{same_context, Stream};

impl Stream {
    /// Copy `src` into `dst[dst_offset..dst_offset + src.len()]` and wait until it has landed.
    pub fn copy_htod<T: DeviceRepr>(
        &self,
        src: &[T],
        dst: &mut DeviceBuffer<T>,
        dst_offset: usize,
    ) -> Result<(), GpuError> {
        // SAFETY: the stream is synchronised before the borrow of `src` ends.
        unsafe { self.copy_htod_async(src, dst, dst_offset) }?;
        self.synchronize()
    }

    /// Copy `src[src_offset..src_offset + dst.len()]` into `dst` and wait until it has landed.
    pub fn copy_dtoh<T: DeviceRepr>(
        &self,
        src: &DeviceBuffer<T>,
        src_offset: usize,
        dst: &mut [T],
    ) -> Result<(), GpuError> {
        // SAFETY: the stream is synchronised before the borrow of `dst` ends.
        unsafe { self.copy_dtoh_async(src, src_offset, dst) }?;
        self.synchronize()
    }

    /// Queue a host to device copy and return at once (`cuMemcpyHtoDAsync_v2`).
    ///
    /// # Safety
    /// `src` must stay alive and unmodified until the copy completes (synchronise the stream or an event
    /// recorded after it): pinned and registered memory is read by DMA after this call returns.
    pub unsafe fn copy_htod_async<T: DeviceRepr>(
        &self,
        src: &[T],
        dst: &mut DeviceBuffer<T>,
        dst_offset: usize,
    ) -> Result<(), GpuError> {
        same_context("copy_htod", self.context(), dst.context())?;
        let bytes = bounds::check_copy("copy_htod", 0, src.len(), dst_offset, dst.len(), src.len(), size_of::<T>())?;
        if bytes == 0 {
            return Ok(());
        }
        let d = dst.device_ptr_at(dst_offset)?;
        let (s, p) = (self.raw(), src.as_ptr().cast());
        // SAFETY: both ranges were checked above; the stream is live; the host range's lifetime is the caller's
        // contract.
        self.context().run(|| unsafe { result::memcpy_htod_async(d, p, bytes, s) })
    }

    /// Queue a device to host copy and return (`cuMemcpyDtoHAsync_v2`).
    ///
    /// # Safety
    /// `dst` must stay alive and must not be read or written until the copy completes.
    pub unsafe fn copy_dtoh_async<T: DeviceRepr>(
        &self,
        src: &DeviceBuffer<T>,
        src_offset: usize,
        dst: &mut [T],
    ) -> Result<(), GpuError> {
        same_context("copy_dtoh", self.context(), src.context())?;
        let bytes = bounds::check_copy("copy_dtoh", src_offset, src.len(), 0, dst.len(), dst.len(), size_of::<T>())?;
        if bytes == 0 {
            return Ok(());
        }
        let sp = src.device_ptr_at(src_offset)?;
        let (s, p) = (self.raw(), dst.as_mut_ptr().cast());
        // SAFETY: both ranges were checked above; `T: DeviceRepr` is valid for any bytes the device holds.
        self.context().run(|| unsafe { result::memcpy_dtoh_async(p, sp, bytes, s) })
    }

    /// Queue a copy of `len` elements from `src[src_offset..]` to `dst[dst_offset..]` (asynchronous).
    pub fn copy_dtod<T: DeviceRepr>(
        &self,
        src: &DeviceBuffer<T>,
        src_offset: usize,
        dst: &mut DeviceBuffer<T>,
        dst_offset: usize,
        len: usize,
    ) -> Result<(), GpuError> {
        same_context("copy_dtod", self.context(), src.context())?;
        same_context("copy_dtod", self.context(), dst.context())?;
        let bytes = bounds::check_copy("copy_dtod", src_offset, src.len(), dst_offset, dst.len(), len, size_of::<T>())?;
        if bytes == 0 {
            return Ok(());
        }
        let (sp, dp, s) = (src.device_ptr_at(src_offset)?, dst.device_ptr_at(dst_offset)?, self.raw());
        // SAFETY: both ranges lie in live allocations (checked above); they cannot overlap because `dst` is
        // borrowed uniquely while `src` is borrowed shared; a buffer drains queued work before it is freed.
        self.context().run(|| unsafe { result::memcpy_dtod_async(dp, sp, bytes, s) })
    }

    /// Queue setting every byte of `dst[offset..offset + len]` (elements) to `byte` (asynchronous).
    pub fn memset_d8<T: DeviceRepr>(
        &self,
        dst: &mut DeviceBuffer<T>,
        offset: usize,
        len: usize,
        byte: u8,
    ) -> Result<(), GpuError> {
        same_context("memset_d8", self.context(), dst.context())?;
        bounds::check_range("memset_d8", "dst", offset, len, dst.len())?;
        let bytes = bounds::bytes_of("memset_d8", len, size_of::<T>())?;
        if bytes == 0 {
            return Ok(());
        }
        let (dp, s) = (dst.device_ptr_at(offset)?, self.raw());
        // SAFETY: the range lies in a live allocation (checked above).
        self.context().run(|| unsafe { result::memset_d8_async(dp, byte, bytes, s) })
    }

    /// Queue setting the 32-bit elements `dst[offset..offset + len]` to the bit pattern `bits` (asynchronous;
    /// `f32` fill: `value.to_bits()`). Only for 4-byte element types.
    pub fn memset_d32<T: DeviceRepr>(
        &self,
        dst: &mut DeviceBuffer<T>,
        offset: usize,
        len: usize,
        bits: u32,
    ) -> Result<(), GpuError> {
        if size_of::<T>() != 4 {
            return Err(GpuError::InvalidInput {
                op: "memset_d32",
                reason: format!("element type {} is {} bytes, not 4", std::any::type_name::<T>(), size_of::<T>()),
            });
        }
        same_context("memset_d32", self.context(), dst.context())?;
        bounds::check_range("memset_d32", "dst", offset, len, dst.len())?;
        if len == 0 {
            return Ok(());
        }
        let (dp, s) = (dst.device_ptr_at(offset)?, self.raw());
        // SAFETY: the range lies in a live allocation (checked above); cuMemAlloc returns memory aligned for any
        // type and `offset` counts 4-byte elements, so `dp` is 4-byte aligned as cuMemsetD32Async requires.
        self.context().run(|| unsafe { result::memset_d32_async(dp, bits, len, s) })
    }
}
