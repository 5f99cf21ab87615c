//! Thin wrappers over the system calls both loops use.

use super::error::HttpError;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Runs a libc call written as `unsafe { libc::f(..) }` by the caller (who states why it is sound)
/// and turns its `-1` into the thread's `errno` as an `io::Error`.
macro_rules! syscall {
    ($call:expr) => {{
        let res = $call;
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}
pub(crate) use syscall;

/// A non-blocking, close-on-exec eventfd: other threads write it to wake a loop.
pub(crate) fn eventfd() -> Result<OwnedFd, HttpError> {
    // SAFETY: eventfd takes no pointers.
    let res = syscall!(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) });
    let fd = res.map_err(HttpError::EventFd)?;
    // SAFETY: `fd` was just created and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to the eventfd's counter (wakes whoever polls or reads it).
pub(crate) fn eventfd_signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live local; an eventfd write can fail only with EAGAIN at
    // a counter near u64::MAX, and then the loop is awake already.
    let _ = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

/// Resets the eventfd's counter (non-blocking; nothing to read is fine).
pub(crate) fn eventfd_drain(fd: RawFd) {
    let mut v: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live local.
    let _ = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
}

pub(crate) fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a live, writable slice of `buf.len()` bytes.
    let n = syscall!(unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) })?;
    Ok(n as usize)
}

/// `send` with `MSG_NOSIGNAL`: a vanished peer is an `EPIPE` error, never a SIGPIPE.
pub(crate) fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a live slice of `buf.len()` bytes.
    let n = syscall!(unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) })?;
    Ok(n as usize)
}

pub(crate) fn shutdown(fd: RawFd, how: libc::c_int) {
    // SAFETY: no pointers; a socket already shut down or reset answers an error we ignore.
    let _ = unsafe { libc::shutdown(fd, how) };
}

pub(crate) fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: passes a pointer to a live c_int and its size.
    let _ = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// Re-listens with a deeper accept queue than the standard library's (a burst of 1,000
/// connects must not wait for SYN retries).
pub(crate) fn listen(fd: &impl AsRawFd, backlog: i32) -> Result<(), HttpError> {
    // SAFETY: no pointers; `fd` is a bound socket.
    syscall!(unsafe { libc::listen(fd.as_raw_fd(), backlog) }).map_err(HttpError::Listen)?;
    Ok(())
}

/// `accept4` with `SOCK_NONBLOCK | SOCK_CLOEXEC`; `Ok(None)` when the queue is empty.
pub(crate) fn accept_nonblocking(listener: RawFd) -> io::Result<Option<(OwnedFd, SocketAddr)>> {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` and `len` are live locals of the sizes the call is told.
    let res = syscall!(unsafe {
        libc::accept4(
            listener,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    });
    match res {
        Ok(fd) => {
            // SAFETY: `fd` was just returned by accept4 and nothing else owns it.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            let peer = sockaddr_to_std(&storage).unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
            Ok(Some((owned, peer)))
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// The address in a `sockaddr_storage` filled by the kernel, for IPv4 and IPv6.
pub(crate) fn sockaddr_to_std(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large and
            // aligned enough for.
            let a = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(a.sin6_port), a.sin6_flowinfo, a.sin6_scope_id)))
        }
        _ => None,
    }
}

/// Raises the soft `RLIMIT_NOFILE` to at least `needed` (and the hard limit where the process
/// may). Returns the soft limit now in force, or says why it cannot be raised.
pub fn raise_fd_limit(needed: u64) -> Result<u64, HttpError> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: passes a pointer to a live rlimit.
    syscall!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }).map_err(HttpError::GetRlimit)?;
    let (soft, hard): (u64, u64) = (lim.rlim_cur, lim.rlim_max);
    if soft >= needed {
        return Ok(soft);
    }
    let want = libc::rlimit { rlim_cur: needed, rlim_max: lim.rlim_max.max(needed) };
    // SAFETY: passes a pointer to a live rlimit.
    match syscall!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) }) {
        Ok(_) => Ok(needed),
        Err(e) => Err(HttpError::FdLimit { needed, soft, hard, source: Some(e) }),
    }
}
