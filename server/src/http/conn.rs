//! The connection state machine, shared by both event loops: bytes in → requests parsed and
//! dispatched → responses queued in request order → bytes out. It never touches a socket; the
//! loop feeds it what it read, writes what `out_pending` holds, and closes when it says so.

use super::body::{ChunkError, ChunkedDecoder};
use super::encode::{self, ReplyMeta};
use super::head::{parse_head, BodyFraming, RequestHead};
use super::reply::{lock, LoopShared, Reply, Slot, SlotState};
use super::types::{Handler, HttpConfig, Request};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Output bytes held per connection before slots are left to hold the rest.
const OUT_HIGH_WATER_BYTES: usize = 64 * 1024;
/// Buffers above these capacities are freed when they empty (idle connections stay small).
const OUT_KEEP_BYTES: usize = 16 * 1024;
const IN_KEEP_BYTES: usize = 4 * 1024;
/// After a closing response, the client's further bytes are read and dropped (so the close does
/// not reset the connection before the client has read the answer), up to this much and this long.
const LINGER_BYTES_MAX: usize = 16 * 1024 * 1024;
pub(crate) const LINGER_TIME: Duration = Duration::from_secs(2);

/// Everything a connection needs from its loop for one call.
pub(crate) struct Cx<'a> {
    pub handler: &'a Arc<dyn Handler>,
    pub shared: &'a Arc<LoopShared>,
    pub cfg: &'a HttpConfig,
    pub now: Instant,
    pub draining: bool,
}

enum ReadState {
    /// Between requests or inside a head.
    Head,
    Body {
        head: RequestHead,
        body: Vec<u8>,
        remaining: u64,
    },
    Chunked {
        head: RequestHead,
        body: Vec<u8>,
        decoder: ChunkedDecoder,
    },
    /// No more requests on this connection; what arrives is dropped.
    Stopped,
}

/// What the loop must do with the socket next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Keep serving.
    Open,
    /// Everything is written: shut down the write side and linger (read and drop) until the
    /// client closes or `LINGER_TIME` passes.
    ShutdownWrite,
    /// Everything is written and the client has closed its side: close once the loop's own
    /// send (io_uring) has completed too.
    Finished,
    /// Close now, abandoning what is unsent.
    Close,
}

pub(crate) struct Conn {
    token: usize,
    peer: SocketAddr,
    inbuf: Vec<u8>,
    read: ReadState,
    /// Responses in request order; the front one is being written.
    slots: VecDeque<Arc<Slot>>,
    out: Vec<u8>,
    out_pos: usize,
    close_after_out: bool,
    close_after_slots: bool,
    abort: bool,
    peer_eof: bool,
    linger_until: Option<Instant>,
    dropped_bytes: usize,
    /// When the first byte of the request being read arrived.
    request_started: Option<Instant>,
    last_active: Instant,
    last_write_progress: Instant,
}

impl Conn {
    pub(crate) fn new(token: usize, peer: SocketAddr, now: Instant) -> Self {
        Conn {
            token,
            peer,
            inbuf: Vec::new(),
            read: ReadState::Head,
            slots: VecDeque::new(),
            out: Vec::new(),
            out_pos: 0,
            close_after_out: false,
            close_after_slots: false,
            abort: false,
            peer_eof: false,
            linger_until: None,
            dropped_bytes: 0,
            request_started: None,
            last_active: now,
            last_write_progress: now,
        }
    }

    /// A connection past `max_connections`: it gets a 503 and is closed.
    pub(crate) fn rejected(token: usize, peer: SocketAddr, now: Instant) -> Self {
        let mut c = Conn::new(token, peer, now);
        let meta = ReplyMeta { http10: false, keep_alive: false, head_only: false };
        encode::error_response(&mut c.out, 503, "too many connections", meta);
        c.read = ReadState::Stopped;
        c.close_after_out = true;
        c
    }

    /// Whether the loop should read from the socket now.
    pub(crate) fn wants_read(&self, cfg: &HttpConfig) -> bool {
        !self.abort && !self.peer_eof && (self.linger_until.is_some() || self.slots.len() < cfg.max_pipelined_requests)
    }

    pub(crate) fn lingering(&self) -> bool {
        self.linger_until.is_some()
    }

    /// Bytes read from the socket.
    pub(crate) fn on_read(&mut self, data: &[u8], cx: &Cx) {
        self.last_active = cx.now;
        if matches!(self.read, ReadState::Stopped) || self.linger_until.is_some() {
            self.dropped_bytes += data.len();
            if self.dropped_bytes > LINGER_BYTES_MAX {
                self.abort = true;
            }
            return;
        }
        if self.inbuf.is_empty() {
            let used = self.process(data, cx);
            self.inbuf.extend_from_slice(&data[used..]);
        } else {
            self.inbuf.extend_from_slice(data);
            self.reparse(cx);
        }
    }

    fn reparse(&mut self, cx: &Cx) {
        let mut buf = std::mem::take(&mut self.inbuf);
        let used = self.process(&buf, cx);
        buf.drain(..used);
        if buf.is_empty() && buf.capacity() > IN_KEEP_BYTES {
            buf = Vec::new();
        }
        self.inbuf = buf;
    }

    /// The client closed its side (read returned 0).
    pub(crate) fn on_eof(&mut self, cx: &Cx) {
        self.peer_eof = true;
        if self.linger_until.is_some() {
            self.abort = true;
            return;
        }
        // A response still being produced has nobody to go to: cancel it.
        if self.slots.iter().any(|s| lock(&s.inner).state != SlotState::Done) {
            self.abort = true;
            return;
        }
        let mid_request = match self.read {
            ReadState::Head => !self.inbuf.is_empty(),
            ReadState::Body { .. } | ReadState::Chunked { .. } => true,
            ReadState::Stopped => false,
        };
        if mid_request {
            self.fail(400, "the request ended before its declared length", cx);
        } else {
            self.read = ReadState::Stopped;
            self.close_after_slots = true;
            if self.slots.is_empty() {
                self.close_after_out = true;
            }
        }
    }

    /// Parses and dispatches as many requests from `buf` as the pipeline bound allows; returns
    /// the bytes used. The rest stays buffered until the queue has room.
    fn process(&mut self, buf: &[u8], cx: &Cx) -> usize {
        let mut pos = 0;
        loop {
            if self.abort || self.slots.len() >= cx.cfg.max_pipelined_requests {
                return pos;
            }
            match &mut self.read {
                ReadState::Stopped => {
                    self.dropped_bytes += buf.len() - pos;
                    return buf.len();
                }
                ReadState::Head => {
                    // Empty lines before a request are allowed (RFC 9112 §2.2), within the head bound.
                    while pos < buf.len() && (buf[pos] == b'\r' || buf[pos] == b'\n') && pos < cx.cfg.max_header_bytes {
                        pos += 1;
                    }
                    if pos == buf.len() {
                        self.request_started = None;
                        return pos;
                    }
                    self.request_started.get_or_insert(cx.now);
                    match parse_head(&buf[pos..], cx.cfg.max_header_bytes) {
                        Ok(None) => return pos,
                        Err(e) => {
                            self.fail(e.status, e.reason, cx);
                            return buf.len();
                        }
                        Ok(Some((head, len))) => {
                            pos += len;
                            self.start_body(head, cx);
                        }
                    }
                }
                ReadState::Body { remaining, body, .. } => {
                    let take = (*remaining).min((buf.len() - pos) as u64) as usize;
                    body.extend_from_slice(&buf[pos..pos + take]);
                    pos += take;
                    *remaining -= take as u64;
                    if *remaining > 0 {
                        return pos;
                    }
                    if let ReadState::Body { head, body, .. } = std::mem::replace(&mut self.read, ReadState::Head) {
                        self.dispatch(head, body, cx);
                    }
                }
                ReadState::Chunked { body, decoder, .. } => {
                    match decoder.feed(&buf[pos..], body, cx.cfg.max_body_bytes) {
                        Ok((used, done)) => {
                            pos += used;
                            if !done {
                                return pos;
                            }
                            if let ReadState::Chunked { head, body, .. } =
                                std::mem::replace(&mut self.read, ReadState::Head)
                            {
                                self.dispatch(head, body, cx);
                            }
                        }
                        Err(ChunkError::TooLarge) => {
                            self.fail(413, "the request body is larger than the server accepts", cx);
                            return buf.len();
                        }
                        Err(ChunkError::Malformed(why)) => {
                            self.fail(400, why, cx);
                            return buf.len();
                        }
                    }
                }
            }
        }
    }

    fn start_body(&mut self, head: RequestHead, cx: &Cx) {
        let continue_now = head.expect_continue && self.slots.is_empty() && self.out_pending().is_empty();
        match head.framing {
            BodyFraming::None => self.dispatch(head, Vec::new(), cx),
            BodyFraming::Length(n) if n > cx.cfg.max_body_bytes as u64 => {
                self.fail(413, "the request body is larger than the server accepts", cx);
            }
            BodyFraming::Length(n) => {
                if continue_now {
                    self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                let body = Vec::with_capacity((n as usize).min(64 * 1024));
                self.read = ReadState::Body { head, body, remaining: n };
            }
            BodyFraming::Chunked => {
                if continue_now {
                    self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                self.read = ReadState::Chunked { head, body: Vec::new(), decoder: ChunkedDecoder::new() };
            }
        }
    }

    fn dispatch(&mut self, head: RequestHead, body: Vec<u8>, cx: &Cx) {
        self.request_started = None;
        let meta = ReplyMeta {
            http10: head.version_minor == 0,
            keep_alive: head.keep_alive && !cx.draining,
            head_only: head.method == "HEAD",
        };
        if !meta.keep_alive {
            self.read = ReadState::Stopped;
        }
        let slot = Arc::new(Slot::new(self.token, cx.shared.clone()));
        self.slots.push_back(slot.clone());
        let req = Request {
            method: head.method,
            path: head.path,
            query: head.query,
            headers: head.headers,
            body,
            peer: self.peer,
        };
        let reply = Reply::new(slot, meta, cx.cfg.max_stream_buffer_bytes);
        let handler = cx.handler;
        // A panicking handler must not take the loop down: its dropped Reply answers 500.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.handle(req, reply))).is_err() {
            log::error!("http: the handler panicked; answered 500");
        }
    }

    /// Answers `status` (after the responses already queued) and closes.
    fn fail(&mut self, status: u16, why: &str, cx: &Cx) {
        self.request_started = None;
        self.read = ReadState::Stopped;
        let mut bytes = Vec::new();
        let meta = ReplyMeta { http10: false, keep_alive: false, head_only: false };
        encode::error_response(&mut bytes, status, why, meta);
        self.slots.push_back(Arc::new(Slot::ready(self.token, cx.shared.clone(), bytes, true)));
    }

    /// Moves answered bytes from the slots, in order, to the output; then, if the queue made
    /// room, parses requests that were waiting in the input buffer.
    pub(crate) fn pump(&mut self, cx: &Cx) {
        // Bounded: each round either pops a slot or stops.
        for _ in 0..=cx.cfg.max_pipelined_requests {
            if !self.pump_slots(cx.now) || self.inbuf.is_empty() || !self.wants_read(cx.cfg) {
                break;
            }
            self.reparse(cx);
        }
    }

    /// Returns whether a slot was finished and removed.
    fn pump_slots(&mut self, now: Instant) -> bool {
        let mut popped = false;
        while let Some(slot) = self.slots.front() {
            if self.out.len() - self.out_pos >= OUT_HIGH_WATER_BYTES {
                break;
            }
            let mut g = lock(&slot.inner);
            if g.state == SlotState::Overflow {
                self.abort = true;
                break;
            }
            if !g.bytes.is_empty() {
                if self.out.is_empty() {
                    self.last_write_progress = now;
                    std::mem::swap(&mut self.out, &mut g.bytes);
                    self.out_pos = 0;
                } else {
                    self.out.extend_from_slice(&g.bytes);
                    g.bytes.clear();
                }
            }
            if g.state != SlotState::Done {
                break;
            }
            let close = g.close_after;
            drop(g);
            self.slots.pop_front();
            popped = true;
            if close {
                self.close_after_out = true;
                self.read = ReadState::Stopped;
                self.close_slots();
                break;
            }
        }
        if self.close_after_slots && self.slots.is_empty() {
            self.close_after_out = true;
        }
        popped
    }

    /// Bytes to write next.
    pub(crate) fn out_pending(&self) -> &[u8] {
        &self.out[self.out_pos..]
    }

    /// `n` bytes of `out_pending` were written.
    pub(crate) fn consume_out(&mut self, n: usize, now: Instant) {
        self.out_pos += n;
        self.last_write_progress = now;
        self.last_active = now;
        if self.out_pos >= self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            if self.out.capacity() > OUT_KEEP_BYTES {
                self.out = Vec::new();
            }
        }
    }

    /// Hands the whole pending output to a loop that keeps it while the kernel sends it
    /// (io_uring); `None` when there is nothing to send.
    pub(crate) fn take_out(&mut self) -> Option<Vec<u8>> {
        if self.out_pending().is_empty() {
            return None;
        }
        if self.out_pos > 0 {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        Some(std::mem::take(&mut self.out))
    }

    /// A buffer taken with `take_out` was sent in full; its allocation comes back for reuse.
    pub(crate) fn sent(&mut self, mut buf: Vec<u8>, now: Instant) {
        self.last_write_progress = now;
        self.last_active = now;
        if self.out.is_empty() && buf.capacity() <= OUT_KEEP_BYTES {
            buf.clear();
            self.out = buf;
            self.out_pos = 0;
        }
    }

    /// What the loop must do with the socket once it has written what it could.
    pub(crate) fn next(&self) -> Next {
        if self.abort {
            Next::Close
        } else if self.close_after_out && self.out_pending().is_empty() && self.linger_until.is_none() {
            if self.peer_eof {
                Next::Finished
            } else {
                Next::ShutdownWrite
            }
        } else {
            Next::Open
        }
    }

    /// The loop shut down the write side; lingering starts.
    pub(crate) fn start_linger(&mut self, now: Instant) {
        self.linger_until = Some(now + LINGER_TIME);
    }

    /// Timeouts, checked by the loop every tick.
    pub(crate) fn tick(&mut self, cx: &Cx) {
        let now = cx.now;
        if let Some(until) = self.linger_until {
            if now >= until {
                self.abort = true;
            }
            return;
        }
        if let Some(start) = self.request_started {
            if now.duration_since(start) > cx.cfg.header_timeout && !matches!(self.read, ReadState::Stopped) {
                self.fail(408, "the request did not arrive in time", cx);
                self.pump(cx);
                return;
            }
        }
        let unsent = !self.out_pending().is_empty();
        if unsent && now.duration_since(self.last_write_progress) > cx.cfg.idle_timeout {
            // The client stopped reading.
            self.abort = true;
            return;
        }
        let idle = !unsent
            && self.slots.is_empty()
            && self.inbuf.is_empty()
            && matches!(self.read, ReadState::Head)
            && self.request_started.is_none();
        if idle && now.duration_since(self.last_active) > cx.cfg.idle_timeout {
            self.abort = true;
        }
    }

    /// Shutdown began: idle connections close now; busy ones take no new request and close
    /// once their responses are written.
    pub(crate) fn begin_drain(&mut self) {
        let idle = self.slots.is_empty() && self.out_pending().is_empty();
        if idle && !self.close_after_out {
            self.abort = true;
        }
        self.read = ReadState::Stopped;
        self.close_after_slots = true;
        if self.slots.is_empty() {
            self.close_after_out = true;
        }
    }

    /// The connection is going away: every producer sees `Closed`.
    pub(crate) fn close_slots(&mut self) {
        for s in self.slots.drain(..) {
            s.closed.store(true, Ordering::Release);
        }
    }

    /// Bytes this connection holds in its own buffers (for memory accounting in tests).
    #[cfg(test)]
    pub(crate) fn buffered_capacity(&self) -> usize {
        self.inbuf.capacity() + self.out.capacity()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.close_slots();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::types::Response;

    struct Echo;
    impl Handler for Echo {
        fn handle(&self, req: Request, reply: Reply) {
            reply.send(Response::text(200, req.body));
        }
    }

    #[test]
    fn no_socket_needed_and_buffers_shrink_when_idle() {
        let shared = Arc::new(LoopShared::new(crate::http::sys::eventfd().unwrap()));
        let handler: Arc<dyn Handler> = Arc::new(Echo);
        let cfg = HttpConfig::new("127.0.0.1:0".parse().unwrap(), crate::http::IoBackend::Epoll);
        let cx = Cx { handler: &handler, shared: &shared, cfg: &cfg, now: Instant::now(), draining: false };
        let mut c = Conn::new(0, "127.0.0.1:1".parse().unwrap(), cx.now);
        // A large body arrives in pieces (the input buffer grows), then is answered.
        let body = vec![b'x'; 200_000];
        c.on_read(format!("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(), &cx);
        for piece in body.chunks(1000) {
            c.on_read(piece, &cx);
        }
        c.pump(&cx);
        let n = c.out_pending().len();
        assert!(n > body.len());
        assert!(c.out_pending().starts_with(b"HTTP/1.1 200 OK\r\n"));
        c.consume_out(n, cx.now);
        assert_eq!(c.next(), Next::Open);
        // Idle again: no large buffer is kept.
        assert!(c.buffered_capacity() <= IN_KEEP_BYTES + OUT_KEEP_BYTES, "{}", c.buffered_capacity());
    }

    /// Seeded: many requests of every framing, cut into random pieces, answered in order with
    /// the right bodies, however the bytes arrive.
    #[test]
    fn any_split_of_pipelined_requests() {
        let shared = Arc::new(LoopShared::new(crate::http::sys::eventfd().unwrap()));
        let handler: Arc<dyn Handler> = Arc::new(Echo);
        let mut cfg = HttpConfig::new("127.0.0.1:0".parse().unwrap(), crate::http::IoBackend::Epoll);
        cfg.max_pipelined_requests = 3;
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for round in 0..200 {
            let mut wire = Vec::new();
            let mut bodies = Vec::new();
            for i in 0..(1 + next(8)) {
                let body: Vec<u8> = (0..next(300)).map(|j| b'a' + ((i + j) % 26) as u8).collect();
                match next(3) {
                    0 => {
                        wire.extend_from_slice(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
                        bodies.push(Vec::new());
                        continue;
                    }
                    1 => {
                        wire.extend_from_slice(
                            format!("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
                        );
                        wire.extend_from_slice(&body);
                    }
                    _ => {
                        wire.extend_from_slice(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
                        for piece in body.chunks(1 + next(40) as usize) {
                            wire.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                            wire.extend_from_slice(piece);
                            wire.extend_from_slice(b"\r\n");
                        }
                        wire.extend_from_slice(b"0\r\n\r\n");
                    }
                }
                bodies.push(body);
            }
            let now = Instant::now();
            let cx = Cx { handler: &handler, shared: &shared, cfg: &cfg, now, draining: false };
            let mut c = Conn::new(0, "127.0.0.1:1".parse().unwrap(), now);
            let mut out = Vec::new();
            let mut at = 0;
            while at < wire.len() || !c.out_pending().is_empty() {
                if at < wire.len() && c.wants_read(&cfg) {
                    let end = (at + 1 + next(64) as usize).min(wire.len());
                    c.on_read(&wire[at..end], &cx);
                    at = end;
                }
                c.pump(&cx);
                // The client reads a random amount.
                let take = (next(200) as usize).min(c.out_pending().len());
                out.extend_from_slice(&c.out_pending()[..take]);
                c.consume_out(take, now);
                assert_eq!(c.next(), Next::Open, "round {round}");
            }
            let mut rest = &out[..];
            for (i, body) in bodies.iter().enumerate() {
                let mut hs = [httparse::EMPTY_HEADER; 16];
                let mut resp = httparse::Response::new(&mut hs);
                let len = match resp.parse(rest) {
                    Ok(httparse::Status::Complete(len)) => len,
                    other => panic!("round {round} response {i}: {other:?}"),
                };
                assert_eq!(resp.code, Some(200));
                assert_eq!(&rest[len..len + body.len()], &body[..], "round {round} response {i}");
                rest = &rest[len + body.len()..];
            }
            assert!(rest.is_empty(), "round {round}: extra bytes");
        }
    }
}
