//! The io_uring event loop: accept, recv and send are submitted to the kernel and complete into
//! the same connection state machine the epoll loop drives.
//!
//! Buffer ownership: every buffer an in-flight submission points into is a heap allocation
//! owned by this loop (the accept address, the eventfd word and the tick timespec in `Fixed`;
//! each connection's receive buffer and the output being sent in its `Entry`). An `Entry` stays
//! in the slab, and its buffers unchanged, while `recv_inflight` or `send_buf` says a
//! submission references them; moving the `Entry` (the slab growing) does not move the heap
//! buffers. Closing a connection shuts its socket down and cancels its receive, then waits for
//! both completions before freeing the entry. On exit, whatever the kernel has not completed
//! within a bound is leaked rather than freed.

use super::conn::{Conn, Cx, Next};
use super::epoll::TICK;
use super::error::HttpError;
use super::server::{LoopParts, REJECT_EXTRA};
use super::sys;
use io_uring::{opcode, squeue, types, IoUring, Probe};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Submission queue entries; the completion queue is sized to the connection bound.
const SQ_ENTRIES: u32 = 1024;
/// Receive buffer per connection (heap; pages the kernel never writes stay non-resident).
const RECV_BYTES: usize = 8 * 1024;

/// `IORING_RECVSEND_POLL_FIRST` (Linux 5.19, as are the ring flags that tell us we have it).
const RECVSEND_POLL_FIRST: u16 = 1;

const K_ACCEPT: u64 = 0;
const K_WAKE: u64 = 1;
const K_TICK: u64 = 2;
const K_RECV: u64 = 3;
const K_SEND: u64 = 4;
const K_CANCEL: u64 = 5;

fn ud(kind: u64, idx: usize) -> u64 {
    ((idx as u64) << 3) | kind
}

fn setup_hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOSYS) => "this kernel has no io_uring: it needs Linux 5.6 or later built with CONFIG_IO_URING",
        Some(libc::EPERM) => {
            "io_uring is not permitted: /proc/sys/kernel/io_uring_disabled is set, or a seccomp profile \
             (a container runtime's default one) blocks io_uring_setup"
        }
        Some(libc::ENOMEM) => "not enough locked memory for the rings: raise RLIMIT_MEMLOCK (ulimit -l)",
        _ => "use --io epoll where io_uring is unavailable",
    }
}

/// A ring for the loop's thread. Task work (completion processing) is deferred to when the
/// loop asks for completions (Linux 6.1+), else cooperative (5.19+), else the default: the
/// kernel's fast paths first, the portable one last; all behave the same to the loop.
/// Also says whether the kernel is recent enough (5.19+) for `RECVSEND_POLL_FIRST`.
fn new_ring(cq_entries: u32) -> Result<(IoUring, bool), HttpError> {
    let attempts: [fn(&mut io_uring::Builder); 3] = [
        |b| {
            b.setup_single_issuer().setup_defer_taskrun();
        },
        |b| {
            b.setup_coop_taskrun();
        },
        |_| {},
    ];
    let mut last = None;
    for (i, tune) in attempts.into_iter().enumerate() {
        let mut b = IoUring::builder();
        b.setup_cqsize(cq_entries);
        tune(&mut b);
        match b.build(SQ_ENTRIES) {
            Ok(ring) => return Ok((ring, i < 2)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
            Err(source) => return Err(HttpError::UringSetup { hint: setup_hint(&source), source }),
        }
    }
    let source = last.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL));
    Err(HttpError::UringSetup { hint: setup_hint(&source), source })
}

/// Checks that a ring can be set up and supports every operation the loop submits.
///
/// Runs on a short-lived thread: tearing a ring down later sends task work (as a signal) to
/// every thread that set one up, which would interrupt the caller's next blocking call (EINTR).
pub(crate) fn probe() -> Result<(), HttpError> {
    std::thread::Builder::new()
        .name("io-uring-probe".into())
        .spawn(probe_here)
        .map_err(|source| HttpError::UringSetup { source, hint: "cannot start the probe thread" })?
        .join()
        .unwrap_or_else(|_| {
            Err(HttpError::UringSetup {
                source: std::io::Error::other("the probe thread panicked"),
                hint: "io_uring probe",
            })
        })
}

fn probe_here() -> Result<(), HttpError> {
    let ring = IoUring::new(8).map_err(|source| HttpError::UringSetup { hint: setup_hint(&source), source })?;
    let mut p = Probe::new();
    ring.submitter().register_probe(&mut p).map_err(|source| HttpError::UringSetup {
        source,
        hint: "IORING_REGISTER_PROBE failed: the kernel is older than 5.6",
    })?;
    let ops = [
        (opcode::Accept::CODE, "IORING_OP_ACCEPT"),
        (opcode::Recv::CODE, "IORING_OP_RECV"),
        (opcode::Send::CODE, "IORING_OP_SEND"),
        (opcode::Read::CODE, "IORING_OP_READ"),
        (opcode::Timeout::CODE, "IORING_OP_TIMEOUT"),
        (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL"),
    ];
    for (code, name) in ops {
        if !p.is_supported(code) {
            return Err(HttpError::UringSetup {
                source: std::io::Error::from_raw_os_error(libc::EOPNOTSUPP),
                hint: name,
            });
        }
    }
    if !ring.params().is_feature_ext_arg() {
        return Err(HttpError::UringSetup {
            source: std::io::Error::from_raw_os_error(libc::EOPNOTSUPP),
            hint: "the kernel lacks IORING_FEAT_EXT_ARG (Linux 5.11+): waits with a timeout",
        });
    }
    if !ring.params().is_feature_nodrop() {
        return Err(HttpError::UringSetup {
            source: std::io::Error::from_raw_os_error(libc::EOPNOTSUPP),
            hint: "the kernel lacks IORING_FEAT_NODROP (Linux 5.5+): completions could be lost",
        });
    }
    Ok(())
}

/// Pushes one submission, flushing the queue to the kernel when it is full.
///
/// # Safety
/// Every buffer `sqe` points into must stay allocated, and not be moved or written by us,
/// until its completion has been reaped.
unsafe fn push(ring: &mut IoUring, sqe: &squeue::Entry) -> Result<(), HttpError> {
    loop {
        // SAFETY: forwarded from this function's contract.
        if unsafe { ring.submission().push(sqe) }.is_ok() {
            return Ok(());
        }
        ring.submit().map_err(HttpError::UringSubmit)?;
    }
}

struct Entry {
    fd: OwnedFd,
    conn: Conn,
    /// Receive buffer: capacity `RECV_BYTES`, length 0 except while a completed receive's bytes
    /// are handed on; the kernel writes it while `recv_inflight`. Never zeroed, so an idle
    /// connection's pages stay non-resident.
    rbuf: Vec<u8>,
    recv_inflight: bool,
    /// Output the kernel is sending (`Some` while a send is in flight) and how much has gone.
    send_buf: Option<Vec<u8>>,
    send_pos: usize,
    /// Shut down and cancelled; freed once no submission references it.
    closing: bool,
    rejected: bool,
}

/// Buffers of the loop's own long-lived submissions.
struct Fixed {
    accept_addr: Box<libc::sockaddr_storage>,
    accept_len: Box<libc::socklen_t>,
    wake_word: Box<u64>,
    tick: Box<types::Timespec>,
}

struct Loop {
    ring: IoUring,
    /// Receives may ask to poll before the first attempt.
    poll_first: bool,
    slab: Vec<Option<Entry>>,
    free: Vec<usize>,
    served: usize,
    rejecting: usize,
    fixed: Fixed,
    accept_inflight: bool,
    wake_inflight: bool,
    tick_inflight: bool,
}

pub(crate) fn run(parts: LoopParts) -> Result<(), HttpError> {
    let LoopParts { listener, shared, handler, cfg } = parts;
    let max_entries = cfg.max_connections + REJECT_EXTRA;
    let cq = (max_entries as u32 * 4).next_power_of_two().clamp(4096, 65536);
    let (ring, poll_first) = new_ring(cq)?;
    let mut lp = Loop {
        ring,
        poll_first,
        slab: Vec::new(),
        free: Vec::new(),
        served: 0,
        rejecting: 0,
        fixed: Fixed {
            // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
            accept_addr: Box::new(unsafe { std::mem::zeroed() }),
            accept_len: Box::new(0),
            wake_word: Box::new(0),
            tick: Box::new(types::Timespec::new().sec(TICK.as_secs()).nsec(TICK.subsec_nanos())),
        },
        accept_inflight: false,
        wake_inflight: false,
        tick_inflight: false,
    };
    shared.enter();
    let mut listener = Some(listener);
    let mut drain_deadline: Option<Instant> = None;
    let mut accept_paused = false;
    let mut completions: Vec<(u64, i32)> = Vec::with_capacity(1024);
    let mut ready: Vec<usize> = Vec::new();
    let mut todo: Vec<usize> = Vec::new();

    let result = (|| -> Result<(), HttpError> {
        if let Some(l) = listener.as_ref() {
            lp.arm_accept(l.as_raw_fd())?;
        }
        lp.arm_wake(shared.eventfd.as_raw_fd())?;
        lp.arm_tick()?;
        loop {
            let res = if shared.has_ready() || !todo.is_empty() {
                // Work is waiting: submit and collect what has completed, without sleeping
                // (a zero timeout, so that deferred task work still runs).
                let zero = types::Timespec::new();
                lp.ring.submitter().submit_with_args(1, &types::SubmitArgs::new().timespec(&zero))
            } else {
                lp.ring.submit_and_wait(1)
            };
            match res {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY | libc::EAGAIN | libc::ETIME)) => {}
                Err(e) => return Err(HttpError::UringSubmit(e)),
            }
            completions.clear();
            completions.extend(lp.ring.completion().map(|c| (c.user_data(), c.result())));
            let now = Instant::now();
            let cx = Cx { handler: &handler, shared: &shared, cfg: &cfg, now, draining: drain_deadline.is_some() };
            let mut ticked = false;

            for &(data, res) in &completions {
                let (kind, idx) = (data & 7, (data >> 3) as usize);
                match kind {
                    K_ACCEPT => {
                        lp.accept_inflight = false;
                        if res >= 0 {
                            // SAFETY: `res` is a descriptor accept just created; nothing else owns it.
                            let fd = unsafe { OwnedFd::from_raw_fd(res) };
                            if drain_deadline.is_none() {
                                let peer = sys::sockaddr_to_std(&lp.fixed.accept_addr)
                                    .unwrap_or(std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
                                if let Some(idx) = lp.add_conn(fd, peer, &cx) {
                                    todo.push(idx);
                                }
                            }
                        } else if !matches!(-res, libc::EINTR | libc::ECONNABORTED | libc::ECANCELED | libc::EPROTO) {
                            let e = std::io::Error::from_raw_os_error(-res);
                            log::warn!("http: io_uring accept failed: {e}; pausing accepts for {TICK:?}");
                            accept_paused = true;
                        }
                        if drain_deadline.is_some() {
                            listener = None;
                        } else if !accept_paused {
                            if let Some(l) = listener.as_ref() {
                                lp.arm_accept(l.as_raw_fd())?;
                            }
                        }
                    }
                    K_WAKE => {
                        lp.wake_inflight = false;
                        lp.arm_wake(shared.eventfd.as_raw_fd())?;
                    }
                    K_TICK => {
                        lp.tick_inflight = false;
                        ticked = true;
                        lp.arm_tick()?;
                    }
                    K_RECV => {
                        let Some(e) = lp.slab.get_mut(idx).and_then(Option::as_mut) else { continue };
                        e.recv_inflight = false;
                        if !e.closing {
                            if res > 0 {
                                let n = (res as usize).min(e.rbuf.capacity());
                                // SAFETY: the completed receive wrote its first `n` bytes (at
                                // most the capacity it was given); they are initialised.
                                unsafe { e.rbuf.set_len(n) };
                                e.conn.on_read(&e.rbuf, &cx);
                                e.rbuf.clear();
                            } else if res == 0 {
                                e.conn.on_eof(&cx);
                            } else if -res != libc::EINTR && -res != libc::EAGAIN {
                                e.closing = true; // reset or error: nothing more can be delivered
                            }
                        }
                        todo.push(idx);
                    }
                    K_SEND => {
                        let Some(e) = lp.slab.get_mut(idx).and_then(Option::as_mut) else { continue };
                        if res < 0 && -res != libc::EINTR && -res != libc::EAGAIN {
                            e.send_buf = None;
                            e.closing = true;
                        } else {
                            e.send_pos += res.max(0) as usize;
                            let len = e.send_buf.as_ref().map_or(0, Vec::len);
                            if e.send_pos >= len {
                                if let Some(buf) = e.send_buf.take() {
                                    e.conn.sent(buf, now);
                                }
                            } else {
                                lp.arm_send(idx)?;
                            }
                        }
                        todo.push(idx);
                    }
                    _ => {} // K_CANCEL: nothing to do
                }
            }

            shared.take_ready(&mut ready);
            todo.extend_from_slice(&ready);

            if drain_deadline.is_none() {
                if let Some(drain) = shared.shutdown_requested() {
                    drain_deadline = Some(now + drain);
                    if lp.accept_inflight {
                        lp.cancel(ud(K_ACCEPT, 0))?;
                    } else {
                        listener = None;
                    }
                    for (idx, e) in lp.slab.iter_mut().enumerate() {
                        if let Some(e) = e {
                            e.conn.begin_drain();
                            todo.push(idx);
                        }
                    }
                }
            }
            let cx = Cx { draining: drain_deadline.is_some(), ..cx };

            if ticked {
                if accept_paused && drain_deadline.is_none() {
                    accept_paused = false;
                    if let Some(l) = listener.as_ref() {
                        lp.arm_accept(l.as_raw_fd())?;
                    }
                }
                for (idx, e) in lp.slab.iter_mut().enumerate() {
                    if let Some(e) = e {
                        e.conn.tick(&cx);
                        todo.push(idx);
                    }
                }
            }

            todo.sort_unstable();
            todo.dedup();
            for idx in std::mem::take(&mut todo) {
                lp.service(idx, &cx)?;
            }

            if let Some(deadline) = drain_deadline {
                if lp.served + lp.rejecting == 0 || now >= deadline {
                    return Ok(());
                }
            }
        }
    })();
    drop(listener);
    lp.teardown();
    result
}

impl Loop {
    fn arm_accept(&mut self, lfd: i32) -> Result<(), HttpError> {
        *self.fixed.accept_len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let sqe = opcode::Accept::new(
            types::Fd(lfd),
            (&mut *self.fixed.accept_addr as *mut libc::sockaddr_storage).cast(),
            &mut *self.fixed.accept_len,
        )
        .flags(libc::SOCK_CLOEXEC)
        .build()
        .user_data(ud(K_ACCEPT, 0));
        // SAFETY: the address and length point into boxes in `self.fixed`, which live until
        // `teardown` has reaped this accept (or leaks them); only one accept is in flight, and
        // they are not touched until its completion.
        unsafe { push(&mut self.ring, &sqe)? };
        self.accept_inflight = true;
        Ok(())
    }

    fn arm_wake(&mut self, efd: i32) -> Result<(), HttpError> {
        let sqe = opcode::Read::new(types::Fd(efd), (&mut *self.fixed.wake_word as *mut u64).cast(), 8)
            .build()
            .user_data(ud(K_WAKE, 0));
        // SAFETY: the 8-byte word is a box in `self.fixed` that outlives the read (see `arm_accept`).
        unsafe { push(&mut self.ring, &sqe)? };
        self.wake_inflight = true;
        Ok(())
    }

    fn arm_tick(&mut self) -> Result<(), HttpError> {
        let sqe = opcode::Timeout::new(&*self.fixed.tick).build().user_data(ud(K_TICK, 0));
        // SAFETY: the timespec is a box in `self.fixed` that outlives the timeout; never written.
        unsafe { push(&mut self.ring, &sqe)? };
        self.tick_inflight = true;
        Ok(())
    }

    fn cancel(&mut self, target: u64) -> Result<(), HttpError> {
        let sqe = opcode::AsyncCancel::new(target).build().user_data(ud(K_CANCEL, 0));
        // SAFETY: a cancel references no memory of ours.
        unsafe { push(&mut self.ring, &sqe) }
    }

    fn arm_recv(&mut self, idx: usize) -> Result<(), HttpError> {
        let Some(e) = self.slab[idx].as_mut() else { return Ok(()) };
        // Poll first: the last receive emptied the socket, so an immediate attempt would fail.
        let sqe = opcode::Recv::new(types::Fd(e.fd.as_raw_fd()), e.rbuf.as_mut_ptr(), e.rbuf.capacity() as u32)
            .ioprio(if self.poll_first { RECVSEND_POLL_FIRST } else { 0 })
            .build()
            .user_data(ud(K_RECV, idx));
        // SAFETY: `rbuf` is a heap buffer of `capacity()` bytes owned by the entry; the entry is
        // not freed, nor `rbuf` resized, while `recv_inflight` is set, and nothing reads or
        // writes it until the completion.
        unsafe { push(&mut self.ring, &sqe)? };
        e.recv_inflight = true;
        Ok(())
    }

    fn arm_send(&mut self, idx: usize) -> Result<(), HttpError> {
        let Some(e) = self.slab[idx].as_mut() else { return Ok(()) };
        let Some(buf) = e.send_buf.as_ref() else { return Ok(()) };
        let rest = &buf[e.send_pos..];
        let sqe = opcode::Send::new(types::Fd(e.fd.as_raw_fd()), rest.as_ptr(), rest.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(ud(K_SEND, idx));
        // SAFETY: `send_buf` is a Vec owned by the entry and is neither changed nor dropped
        // while it is `Some` (the send is in flight); the entry is not freed until then.
        unsafe { push(&mut self.ring, &sqe) }
    }

    fn add_conn(&mut self, fd: OwnedFd, peer: std::net::SocketAddr, cx: &Cx) -> Option<usize> {
        let rejected = self.served >= cx.cfg.max_connections;
        if rejected && self.rejecting >= REJECT_EXTRA {
            return None; // dropping `fd` closes it
        }
        sys::set_nodelay(fd.as_raw_fd());
        let idx = self.free.pop().unwrap_or_else(|| {
            self.slab.push(None);
            self.slab.len() - 1
        });
        let conn = if rejected { Conn::rejected(idx, peer, cx.now) } else { Conn::new(idx, peer, cx.now) };
        if rejected {
            self.rejecting += 1;
        } else {
            self.served += 1;
        }
        self.slab[idx] = Some(Entry {
            fd,
            conn,
            rbuf: Vec::with_capacity(RECV_BYTES),
            recv_inflight: false,
            send_buf: None,
            send_pos: 0,
            closing: false,
            rejected,
        });
        Some(idx)
    }

    /// Moves answers to the socket, keeps a receive armed, closes when the connection says so.
    fn service(&mut self, idx: usize, cx: &Cx) -> Result<(), HttpError> {
        let Some(e) = self.slab.get_mut(idx).and_then(Option::as_mut) else { return Ok(()) };
        if !e.closing {
            e.conn.pump(cx);
            if e.send_buf.is_none() {
                if let Some(buf) = e.conn.take_out() {
                    e.send_buf = Some(buf);
                    e.send_pos = 0;
                    self.arm_send(idx)?;
                }
            }
        }
        let Some(e) = self.slab[idx].as_mut() else { return Ok(()) };
        if !e.closing {
            match e.conn.next() {
                Next::Close => e.closing = true,
                Next::Finished if e.send_buf.is_none() => e.closing = true,
                Next::ShutdownWrite if e.send_buf.is_none() => {
                    sys::shutdown(e.fd.as_raw_fd(), libc::SHUT_WR);
                    e.conn.start_linger(cx.now);
                }
                _ => {}
            }
        }
        if e.closing {
            return self.close(idx);
        }
        if !e.recv_inflight && e.conn.wants_read(cx.cfg) {
            self.arm_recv(idx)?;
        }
        Ok(())
    }

    /// Shuts the socket down so in-flight submissions finish, cancels the receive, and frees the
    /// entry once nothing references it.
    fn close(&mut self, idx: usize) -> Result<(), HttpError> {
        let Some(e) = self.slab[idx].as_mut() else { return Ok(()) };
        e.conn.close_slots();
        if e.recv_inflight || e.send_buf.is_some() {
            // Aborts pending I/O (again is harmless).
            sys::shutdown(e.fd.as_raw_fd(), libc::SHUT_RDWR);
            e.closing = true;
            let recv = e.recv_inflight;
            if recv {
                self.cancel(ud(K_RECV, idx))?;
            }
            return Ok(());
        }
        if let Some(e) = self.slab[idx].take() {
            if e.rejected {
                self.rejecting -= 1;
            } else {
                self.served -= 1;
            }
            self.free.push(idx);
        }
        Ok(())
    }

    /// Aborts everything and reaps completions until no submission references our buffers, for
    /// a bounded time; whatever is still in flight then is leaked, not freed.
    fn teardown(&mut self) {
        for idx in 0..self.slab.len() {
            if let Some(e) = self.slab[idx].as_mut() {
                e.conn.close_slots();
                sys::shutdown(e.fd.as_raw_fd(), libc::SHUT_RDWR);
                if e.recv_inflight {
                    let _ = self.cancel(ud(K_RECV, idx));
                }
            }
        }
        for (flag, target) in
            [(self.accept_inflight, K_ACCEPT), (self.wake_inflight, K_WAKE), (self.tick_inflight, K_TICK)]
        {
            if flag {
                let _ = self.cancel(ud(target, 0));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let busy = self.accept_inflight
                || self.wake_inflight
                || self.tick_inflight
                || self.slab.iter().flatten().any(|e| e.recv_inflight || e.send_buf.is_some());
            if !busy {
                return;
            }
            if Instant::now() >= deadline {
                break;
            }
            let _ = self.ring.submit_and_wait(1);
            let done: Vec<(u64, i32)> = self.ring.completion().map(|c| (c.user_data(), c.result())).collect();
            for (data, _) in done {
                let (kind, idx) = (data & 7, (data >> 3) as usize);
                match kind {
                    K_ACCEPT => self.accept_inflight = false,
                    K_WAKE => self.wake_inflight = false,
                    K_TICK => self.tick_inflight = false,
                    K_RECV | K_SEND => {
                        if let Some(e) = self.slab.get_mut(idx).and_then(Option::as_mut) {
                            if kind == K_RECV {
                                e.recv_inflight = false;
                            } else {
                                e.send_buf = None;
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        log::warn!("http: io_uring submissions still in flight at exit; their buffers are leaked, not freed");
        let fixed = std::mem::replace(
            &mut self.fixed,
            Fixed {
                // SAFETY: as in `run`.
                accept_addr: Box::new(unsafe { std::mem::zeroed() }),
                accept_len: Box::new(0),
                wake_word: Box::new(0),
                tick: Box::new(types::Timespec::new()),
            },
        );
        std::mem::forget(fixed);
        for e in self.slab.iter_mut() {
            if e.as_ref().is_some_and(|e| e.recv_inflight || e.send_buf.is_some()) {
                std::mem::forget(e.take());
            }
        }
    }
}
