//! Streams and events.

use std::sync::Arc;

use crate::context::Context;
use crate::error::GpuError;
use crate::result;
use crate::sys::{self, CUevent, CUstream};

/// A stream (`cuStreamCreate` with CU_STREAM_NON_BLOCKING: it does not synchronise with the legacy default
/// stream), destroyed on drop. Work queued on it runs in order.
pub struct Stream {
    ctx: Arc<Context>,
    raw: CUstream,
}

// SAFETY: a CUstream is a driver handle usable from any thread; the driver serialises concurrent submissions.
unsafe impl Send for Stream {}
// SAFETY: see `Send`.
unsafe impl Sync for Stream {}

impl Stream {
    pub fn new(ctx: &Arc<Context>) -> Result<Stream, GpuError> {
        let raw = ctx.run(|| result::stream_create(sys::CU_STREAM_NON_BLOCKING))?;
        Ok(Stream { ctx: ctx.clone(), raw })
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// The driver's handle.
    pub fn raw(&self) -> CUstream {
        self.raw
    }

    /// Wait until all work queued so far has finished.
    pub fn synchronize(&self) -> Result<(), GpuError> {
        let s = self.raw;
        // SAFETY: `s` is live while `self` is.
        self.ctx.run(|| unsafe { result::stream_synchronize(s) })
    }

    /// Make later work on this stream wait for `event` (recorded on any stream of the same device).
    pub fn wait(&self, event: &Event) -> Result<(), GpuError> {
        same_context("Stream::wait", &self.ctx, &event.ctx)?;
        let (s, e) = (self.raw, event.raw);
        // SAFETY: both handles are live while their owners are.
        self.ctx.run(|| unsafe { result::stream_wait_event(s, e) })
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let s = self.raw;
        // SAFETY: `s` is live and destroyed only here; queued work still completes (the driver defers the
        // release until the stream is idle).
        self.ctx.release("stream", || unsafe { result::stream_destroy(s) });
    }
}

/// Refuse operands from different contexts (they would be different devices).
pub(crate) fn same_context(op: &'static str, a: &Arc<Context>, b: &Arc<Context>) -> Result<(), GpuError> {
    if a.raw() == b.raw() {
        Ok(())
    } else {
        Err(GpuError::ContextMismatch { op, left_device: a.device().ordinal(), right_device: b.device().ordinal() })
    }
}

/// An event, destroyed on drop. Created with timing enabled by [`Event::new`].
pub struct Event {
    ctx: Arc<Context>,
    raw: CUevent,
    timing: bool,
}

// SAFETY: a CUevent is a driver handle usable from any thread.
unsafe impl Send for Event {}
// SAFETY: see `Send`.
unsafe impl Sync for Event {}

impl Event {
    /// An event that records timestamps (for [`Event::elapsed_ms`]).
    pub fn new(ctx: &Arc<Context>) -> Result<Event, GpuError> {
        Self::with_flags(ctx, sys::CU_EVENT_DEFAULT, true)
    }

    /// An event for ordering only (CU_EVENT_DISABLE_TIMING: cheaper to record and wait on).
    pub fn without_timing(ctx: &Arc<Context>) -> Result<Event, GpuError> {
        Self::with_flags(ctx, sys::CU_EVENT_DISABLE_TIMING, false)
    }

    fn with_flags(ctx: &Arc<Context>, flags: u32, timing: bool) -> Result<Event, GpuError> {
        let raw = ctx.run(|| result::event_create(flags))?;
        Ok(Event { ctx: ctx.clone(), raw, timing })
    }

    /// Record the event at the current end of `stream`.
    pub fn record(&self, stream: &Stream) -> Result<(), GpuError> {
        same_context("Event::record", &self.ctx, &stream.ctx)?;
        let (e, s) = (self.raw, stream.raw);
        // SAFETY: both handles are live while their owners are.
        self.ctx.run(|| unsafe { result::event_record(e, s) })
    }

    /// Block until the recorded work has completed.
    pub fn synchronize(&self) -> Result<(), GpuError> {
        let e = self.raw;
        // SAFETY: `e` is live while `self` is.
        self.ctx.run(|| unsafe { result::event_synchronize(e) })
    }

    /// True when the recorded work has completed (never blocks).
    pub fn is_complete(&self) -> Result<bool, GpuError> {
        let e = self.raw;
        // SAFETY: `e` is live while `self` is.
        self.ctx.run(|| unsafe { result::event_query(e) })
    }

    /// Milliseconds from `self` to `end`, both recorded and completed (call `end.synchronize()` first).
    pub fn elapsed_ms(&self, end: &Event) -> Result<f32, GpuError> {
        if !self.timing || !end.timing {
            return Err(GpuError::InvalidInput {
                op: "Event::elapsed_ms",
                reason: "both events must be created with timing (Event::new)".into(),
            });
        }
        same_context("Event::elapsed_ms", &self.ctx, &end.ctx)?;
        let (a, b) = (self.raw, end.raw);
        // SAFETY: both events are live while their owners are.
        self.ctx.run(|| unsafe { result::event_elapsed_time(a, b) })
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        let e = self.raw;
        // SAFETY: `e` is live and destroyed only here; the driver defers the release if it is still pending.
        self.ctx.release("event", || unsafe { result::event_destroy(e) });
    }
}
