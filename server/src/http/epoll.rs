//! The epoll event loop: edge-triggered readiness, `recv`/`send` into the shared state machine.

use super::conn::{Conn, Cx, Next};
use super::error::HttpError;
use super::server::LoopParts;
use super::sys::{self, syscall};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

const LISTENER: u64 = u64::MAX;
const WAKER: u64 = u64::MAX - 1;
/// Timeouts are checked this often.
pub(crate) const TICK: Duration = Duration::from_millis(100);
/// Reads or writes per connection per turn before others get theirs.
const ROUNDS_PER_TURN: usize = 16;
/// Connections accepted per turn (the listener is level-triggered: the rest come next turn).
const ACCEPTS_PER_TURN: usize = 256;
const EVENTS: usize = 1024;
/// One read buffer for the whole loop: connections keep only what they have not parsed yet.
const SCRATCH_BYTES: usize = 64 * 1024;

struct Entry {
    fd: OwnedFd,
    conn: Conn,
    readable: bool,
    writable: bool,
    /// The peer shut its side (EPOLLRDHUP): read until the EOF even after short reads.
    peer_hup: bool,
    rejected: bool,
}

struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    fn new() -> Result<Self, HttpError> {
        // SAFETY: no pointers.
        let fd = syscall!(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) }).map_err(HttpError::EpollCreate)?;
        // SAFETY: `fd` was just created and nothing else owns it.
        Ok(Epoll { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: data };
        // SAFETY: `ev` is a live epoll_event for the duration of the call.
        syscall!(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) })?;
        Ok(())
    }

    fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        // SAFETY: `events` is a live, writable array of `events.len()` entries.
        let n = syscall!(unsafe {
            libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), events.len() as libc::c_int, timeout_ms)
        })?;
        Ok(n as usize)
    }
}

pub(crate) fn run(parts: LoopParts) -> Result<(), HttpError> {
    let LoopParts { listener, shared, handler, cfg } = parts;
    listener.set_nonblocking(true).map_err(HttpError::ListenerNonblocking)?;
    let mut listener = Some(listener);
    let ep = Epoll::new()?;
    let lfd = listener.as_ref().map_or(-1, |l| l.as_raw_fd());
    ep.ctl(libc::EPOLL_CTL_ADD, lfd, libc::EPOLLIN as u32, LISTENER).map_err(HttpError::EpollCtl)?;
    ep.ctl(libc::EPOLL_CTL_ADD, shared.eventfd.as_raw_fd(), libc::EPOLLIN as u32, WAKER)
        .map_err(HttpError::EpollCtl)?;
    shared.enter();

    let max_entries = cfg.max_connections + super::server::REJECT_EXTRA;
    let mut slab: Vec<Option<Entry>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let (mut served, mut rejecting) = (0usize, 0usize);
    let mut scratch = vec![0u8; SCRATCH_BYTES];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
    let mut ready: Vec<usize> = Vec::new();
    let mut again: Vec<usize> = Vec::new();
    let mut next_tick = Instant::now() + TICK;
    let mut listener_armed = true;
    let mut drain_deadline: Option<Instant> = None;

    // Closes slab entry `idx`: its producers see Closed; its fd leaves epoll as it closes.
    macro_rules! close {
        ($idx:expr) => {{
            if let Some(e) = slab[$idx].take() {
                if e.rejected {
                    rejecting -= 1;
                } else {
                    served -= 1;
                }
                free.push($idx);
            }
        }};
    }

    loop {
        let now = Instant::now();
        let timeout_ms = if !again.is_empty() || shared.has_ready() {
            0
        } else {
            next_tick.saturating_duration_since(now).as_millis().min(i32::MAX as u128) as i32 + 1
        };
        let n = match ep.wait(&mut events, timeout_ms) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(HttpError::EpollWait(e)),
        };
        let now = Instant::now();
        let cx = Cx { handler: &handler, shared: &shared, cfg: &cfg, now, draining: drain_deadline.is_some() };

        let mut to_service = std::mem::take(&mut again);
        for ev in &events[..n] {
            let (flags, token) = (ev.events, ev.u64);
            match token {
                LISTENER => {
                    let Some(l) = listener.as_ref() else { continue };
                    for _ in 0..ACCEPTS_PER_TURN {
                        match sys::accept_nonblocking(l.as_raw_fd()) {
                            Ok(Some((fd, peer))) => {
                                let rejected = served >= cfg.max_connections;
                                if rejected && rejecting >= super::server::REJECT_EXTRA {
                                    continue; // dropped: closing `fd` resets it
                                }
                                let idx = free.pop().unwrap_or_else(|| {
                                    slab.push(None);
                                    slab.len() - 1
                                });
                                debug_assert!(idx < max_entries);
                                sys::set_nodelay(fd.as_raw_fd());
                                let flags = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
                                if let Err(e) = ep.ctl(libc::EPOLL_CTL_ADD, fd.as_raw_fd(), flags, idx as u64) {
                                    log::warn!("http: epoll_ctl(ADD) for a new connection failed: {e}");
                                    free.push(idx);
                                    continue;
                                }
                                let conn =
                                    if rejected { Conn::rejected(idx, peer, now) } else { Conn::new(idx, peer, now) };
                                if rejected {
                                    rejecting += 1;
                                } else {
                                    served += 1;
                                }
                                slab[idx] = Some(Entry {
                                    fd,
                                    conn,
                                    readable: false,
                                    writable: true,
                                    peer_hup: false,
                                    rejected,
                                });
                                if rejected {
                                    to_service.push(idx);
                                }
                            }
                            Ok(None) => break,
                            Err(e) => match e.raw_os_error() {
                                Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO) => {}
                                _ => {
                                    // Out of descriptors or memory: pause accepting until the next tick.
                                    log::warn!("http: accept4 failed: {e}; pausing accepts for {TICK:?}");
                                    let _ = ep.ctl(libc::EPOLL_CTL_MOD, l.as_raw_fd(), 0, LISTENER);
                                    listener_armed = false;
                                    break;
                                }
                            },
                        }
                    }
                }
                WAKER => sys::eventfd_drain(shared.eventfd.as_raw_fd()),
                idx => {
                    let idx = idx as usize;
                    let Some(e) = slab.get_mut(idx).and_then(Option::as_mut) else { continue };
                    if flags & (libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 && !e.conn.lingering() {
                        // Both directions are gone: nothing can be delivered.
                        close!(idx);
                        continue;
                    }
                    if flags & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                        e.readable = true;
                    }
                    if flags & libc::EPOLLRDHUP as u32 != 0 {
                        e.peer_hup = true;
                    }
                    if flags & (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                        e.writable = true;
                    }
                    to_service.push(idx);
                }
            }
        }

        // Answers from handlers (any thread) since the last turn.
        shared.take_ready(&mut ready);
        to_service.extend_from_slice(&ready);

        // Shutdown: stop accepting, let busy connections finish.
        if drain_deadline.is_none() {
            if let Some(drain) = shared.shutdown_requested() {
                drain_deadline = Some(now + drain);
                if let Some(l) = listener.take() {
                    let _ = ep.ctl(libc::EPOLL_CTL_DEL, l.as_raw_fd(), 0, 0);
                }
                for (idx, e) in slab.iter_mut().enumerate() {
                    if let Some(e) = e {
                        e.conn.begin_drain();
                        to_service.push(idx);
                    }
                }
            }
        }
        let cx = Cx { draining: drain_deadline.is_some(), ..cx };

        if now >= next_tick {
            next_tick = now + TICK;
            if !listener_armed {
                if let Some(l) = listener.as_ref() {
                    listener_armed = ep.ctl(libc::EPOLL_CTL_MOD, l.as_raw_fd(), libc::EPOLLIN as u32, LISTENER).is_ok();
                }
            }
            for (idx, e) in slab.iter_mut().enumerate() {
                if let Some(e) = e {
                    e.conn.tick(&cx);
                    to_service.push(idx);
                }
            }
        }

        for &idx in &to_service {
            let Some(e) = slab.get_mut(idx).and_then(Option::as_mut) else { continue };
            match service(e, &mut scratch, &cx) {
                Service::Close => close!(idx),
                Service::Again => again.push(idx),
                Service::Idle => {}
            }
        }
        again.sort_unstable();
        again.dedup();

        if let Some(deadline) = drain_deadline {
            if served + rejecting == 0 || now >= deadline {
                return Ok(());
            }
        }
    }
}

enum Service {
    Idle,
    /// More to read or write: come back next turn.
    Again,
    Close,
}

/// Reads, parses, dispatches, pumps answers and writes for one connection, a bounded number of
/// rounds.
fn service(e: &mut Entry, scratch: &mut [u8], cx: &Cx) -> Service {
    let fd = e.fd.as_raw_fd();
    for _ in 0..ROUNDS_PER_TURN {
        let mut progressed = false;
        if e.readable && e.conn.wants_read(cx.cfg) {
            match sys::recv(fd, scratch) {
                Ok(0) => {
                    e.readable = false;
                    e.conn.on_eof(cx);
                }
                Ok(n) => {
                    // A short read emptied the socket: the next edge reports new data (but not
                    // an EOF that was already pending, hence `peer_hup`).
                    if n < scratch.len() && !e.peer_hup {
                        e.readable = false;
                    }
                    e.conn.on_read(&scratch[..n], cx);
                    progressed = true;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => e.readable = false,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => progressed = true,
                Err(_) => return Service::Close,
            }
        }
        e.conn.pump(cx);
        while e.writable && !e.conn.out_pending().is_empty() {
            match sys::send(fd, e.conn.out_pending()) {
                Ok(n) => {
                    e.conn.consume_out(n, cx.now);
                    progressed = true;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => e.writable = false,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Service::Close,
            }
        }
        match e.conn.next() {
            Next::Close | Next::Finished => return Service::Close,
            Next::ShutdownWrite => {
                sys::shutdown(fd, libc::SHUT_WR);
                e.conn.start_linger(cx.now);
                progressed = true;
            }
            Next::Open => {}
        }
        if !progressed {
            return Service::Idle;
        }
    }
    Service::Again
}
