//! Answers from any thread: a [`Reply`] (or the [`StreamWriter`] it becomes) fills its request's
//! [`Slot`], queues the connection on its loop's ready list and wakes the loop through an
//! eventfd. The loop moves slot bytes to the socket in request order.

use super::encode::{self, ReplyMeta};
use super::types::Response;
use std::cell::Cell;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

thread_local! {
    /// The loop running on this thread (address of its `LoopShared`), 0 elsewhere.
    static ON_LOOP: Cell<usize> = const { Cell::new(0) };
}

/// What one event loop shares with other threads.
pub(crate) struct LoopShared {
    /// Connection tokens with new slot output, drained by the loop every turn.
    ready: Mutex<Vec<usize>>,
    pub(crate) eventfd: OwnedFd,
    /// `Some(drain)` once shutdown was asked for.
    shutdown: Mutex<Option<Duration>>,
}

impl LoopShared {
    pub(crate) fn new(eventfd: OwnedFd) -> Self {
        LoopShared { ready: Mutex::new(Vec::new()), eventfd, shutdown: Mutex::new(None) }
    }

    /// Marks the calling thread as this loop's thread.
    pub(crate) fn enter(self: &Arc<Self>) {
        ON_LOOP.with(|c| c.set(Arc::as_ptr(self) as usize));
    }

    /// Queues `token` for the loop. From another thread, the first entry of an empty list also
    /// signals the eventfd; the loop's own thread needs no signal because the loop drains the
    /// list before it sleeps.
    pub(crate) fn wake_conn(self: &Arc<Self>, token: usize) {
        let first = {
            let mut q = lock(&self.ready);
            q.push(token);
            q.len() == 1
        };
        if first && ON_LOOP.with(|c| c.get()) != Arc::as_ptr(self) as usize {
            super::sys::eventfd_signal(self.eventfd.as_raw_fd());
        }
    }

    /// Takes the ready list, leaving `spare` (emptied) in its place.
    pub(crate) fn take_ready(&self, spare: &mut Vec<usize>) {
        spare.clear();
        std::mem::swap(&mut *lock(&self.ready), spare);
    }

    pub(crate) fn has_ready(&self) -> bool {
        !lock(&self.ready).is_empty()
    }

    pub(crate) fn request_shutdown(&self, drain: Duration) {
        *lock(&self.shutdown) = Some(drain);
        super::sys::eventfd_signal(self.eventfd.as_raw_fd());
    }

    pub(crate) fn shutdown_requested(&self) -> Option<Duration> {
        *lock(&self.shutdown)
    }
}

/// A poisoned lock only means another thread panicked while holding it; the data (bytes and
/// flags) stays consistent, so go on.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotState {
    /// The handler has not answered yet.
    Waiting,
    /// A streamed response is being produced.
    Streaming,
    /// Everything is in `bytes`; nothing more comes.
    Done,
    /// The producer passed `max_stream_buffer_bytes`: the connection is dropped.
    Overflow,
}

pub(crate) struct SlotInner {
    /// Encoded bytes not yet moved to the connection's output.
    pub bytes: Vec<u8>,
    pub state: SlotState,
    /// The connection closes after this response.
    pub close_after: bool,
}

/// One request's response, shared by the connection (in its ordered queue) and the handler.
pub(crate) struct Slot {
    pub inner: Mutex<SlotInner>,
    /// The connection has gone (client vanished, connection dropped or the server shut down).
    pub closed: AtomicBool,
    token: usize,
    shared: Arc<LoopShared>,
}

impl Slot {
    pub(crate) fn new(token: usize, shared: Arc<LoopShared>) -> Self {
        Slot {
            inner: Mutex::new(SlotInner { bytes: Vec::new(), state: SlotState::Waiting, close_after: false }),
            closed: AtomicBool::new(false),
            token,
            shared,
        }
    }

    /// A slot answered by the server itself, already done.
    pub(crate) fn ready(token: usize, shared: Arc<LoopShared>, bytes: Vec<u8>, close_after: bool) -> Self {
        let slot = Slot::new(token, shared);
        *lock(&slot.inner) = SlotInner { bytes, state: SlotState::Done, close_after };
        slot
    }

    fn wake(&self) {
        self.shared.wake_conn(self.token);
    }
}

/// The client has gone (or read too slowly): stop producing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the client connection is closed")
    }
}

impl std::error::Error for Closed {}

/// Answers one request exactly once, from any thread. Dropped unanswered, it answers 500.
pub struct Reply {
    slot: Option<Arc<Slot>>,
    meta: ReplyMeta,
    max_stream_buffer_bytes: usize,
}

impl Reply {
    pub(crate) fn new(slot: Arc<Slot>, meta: ReplyMeta, max_stream_buffer_bytes: usize) -> Self {
        Reply { slot: Some(slot), meta, max_stream_buffer_bytes }
    }

    /// Whether the client has already gone (the answer would be dropped).
    pub fn is_closed(&self) -> bool {
        self.slot.as_ref().is_none_or(|s| s.closed.load(Ordering::Acquire))
    }

    pub fn send(mut self, resp: Response) {
        if let Some(slot) = self.slot.take() {
            finish_with(&slot, &resp, self.meta);
        }
    }

    /// Starts a streamed response: chunked transfer encoding on HTTP/1.1, a body ended by
    /// closing the connection on HTTP/1.0. For SSE, pass `content-type: text/event-stream`.
    pub fn stream(mut self, status: u16, headers: Vec<(String, String)>) -> StreamWriter {
        let slot = self.slot.take().expect("a Reply holds its slot until answered");
        let chunked = !self.meta.http10;
        {
            let mut g = lock(&slot.inner);
            encode::stream_head(&mut g.bytes, status, &headers, self.meta);
            g.state = SlotState::Streaming;
            g.close_after = !self.meta.keep_alive || !chunked;
        }
        slot.wake();
        StreamWriter {
            slot,
            chunked,
            head_only: self.meta.head_only,
            max_stream_buffer_bytes: self.max_stream_buffer_bytes,
            finished: false,
        }
    }
}

fn finish_with(slot: &Slot, resp: &Response, meta: ReplyMeta) {
    {
        let mut g = lock(&slot.inner);
        encode::response(&mut g.bytes, resp, meta);
        g.state = SlotState::Done;
        g.close_after = !meta.keep_alive;
    }
    slot.wake();
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            let resp = Response::text(500, "500 Internal Server Error: the request was dropped unanswered\n");
            finish_with(&slot, &resp, self.meta);
        }
    }
}

/// The producing side of a streamed response. Each `send` is one chunk.
pub struct StreamWriter {
    slot: Arc<Slot>,
    chunked: bool,
    head_only: bool,
    max_stream_buffer_bytes: usize,
    finished: bool,
}

impl StreamWriter {
    /// Queues `bytes` as one chunk and wakes the loop. `Err(Closed)` once the client has gone or
    /// has let more than `max_stream_buffer_bytes` pile up unsent: stop producing then.
    pub fn send(&self, bytes: &[u8]) -> Result<(), Closed> {
        if self.slot.closed.load(Ordering::Acquire) {
            return Err(Closed);
        }
        if bytes.is_empty() || self.head_only {
            return Ok(());
        }
        let was_empty = {
            let mut g = lock(&self.slot.inner);
            if g.state != SlotState::Streaming {
                return Err(Closed);
            }
            if g.bytes.len() + bytes.len() + 32 > self.max_stream_buffer_bytes {
                g.state = SlotState::Overflow;
                self.slot.closed.store(true, Ordering::Release);
                drop(g);
                self.slot.wake();
                return Err(Closed);
            }
            let was_empty = g.bytes.is_empty();
            encode::chunk(&mut g.bytes, bytes, self.chunked);
            was_empty
        };
        // Bytes already waiting mean the loop has been told (or will pump them after a write).
        if was_empty {
            self.slot.wake();
        }
        Ok(())
    }

    pub fn is_closed(&self) -> bool {
        self.slot.closed.load(Ordering::Acquire)
    }

    /// Ends the stream (the terminating chunk). Dropping the writer does the same.
    pub fn finish(mut self) {
        self.end();
    }

    fn end(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        {
            let mut g = lock(&self.slot.inner);
            if g.state != SlotState::Streaming {
                return;
            }
            if self.chunked && !self.head_only {
                g.bytes.extend_from_slice(encode::LAST_CHUNK);
            }
            g.state = SlotState::Done;
        }
        self.slot.wake();
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn answers_cross_threads() {
        fn send_static<T: Send + 'static>() {}
        send_static::<super::Reply>();
        send_static::<super::StreamWriter>();
        send_static::<crate::http::ShutdownHandle>();
    }
}
