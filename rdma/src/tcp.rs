//! The TCP backend: authenticated connections over blocking sockets.
//!
//! Threads, not epoll: each connection has one reader thread and its writers share one mutex;
//! a node has one sender thread (its uplink sends one transfer block at a time, in plan order,
//! which is what the plan assumes). With a handful of peers per node that is a small, fixed
//! number of threads, and a blocking `read` straight into the destination region is the cheapest
//! path the kernel offers short of zero-copy: one copy from the socket buffer into the region, no
//! user-space staging buffer, no readiness round trip per chunk. epoll earns its keep with
//! thousands of connections; a multicast node has O(log N) partners.
//!
//! Bounds: every blocking read and write has a timeout (`timeout_ms`); an idle connection sends a
//! `Ping` every `timeout_ms / 4` (one keep-alive thread per process), so a peer that says nothing
//! for `timeout_ms` is dead, and a write the peer does not drain for `timeout_ms` fails.

use crate::auth::{random_bytes, Key, Secret, MAC_BYTES, NONCE_BYTES};
use crate::control::Control;
use crate::error::{Error, Result};
use crate::region::Claim;
use crate::wire::{self, Kind, WriteDesc, HEADER_BYTES};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// The handshake must finish within this bound, whatever the connection's timeout.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
/// Bytes read from the socket per `read` call when landing a write (bounds one syscall's work).
const LAND_STEP_BYTES: usize = 4 << 20;

const LABEL_HANDSHAKE: &str = "faascale/1 handshake";
const LABEL_C2S: &str = "faascale/1 client-to-server";
const LABEL_S2C: &str = "faascale/1 server-to-client";

/// A frame as received: control messages parsed, writes described (their payload still in the socket).
#[derive(Debug)]
pub enum Incoming {
    Control(Control),
    Message(Vec<u8>),
    /// `len` payload bytes follow: call `ConnReader::land` (or `land_at`, `land_shared`) or
    /// `ConnReader::discard` next.
    Write(WriteDesc),
    /// The peer closed the connection, saying why.
    Close(String),
}

/// The reading half of a connection; one thread owns it.
pub struct ConnReader {
    stream: TcpStream,
    key: Key,
    seq: u64,
    buf: Vec<u8>,
    pending: Option<WriteDesc>,
    peer: String,
    timeout_ms: u64,
}

struct WriterInner {
    stream: TcpStream,
    key: Key,
    seq: u64,
    last_send: Instant,
    closed: bool,
    /// The connection's timeout; a ping goes out after a quarter of it without a send.
    timeout_ms: u64,
}

/// The writing half of a connection; clones share it (frames never interleave).
#[derive(Clone)]
pub struct ConnWriter {
    inner: Arc<Mutex<WriterInner>>,
    /// The same socket, for `abort` without the writer's lock (a write in progress may hold it
    /// for as long as its payload takes; shutting the socket down makes that write fail at once).
    shut: Arc<TcpStream>,
    peer: Arc<str>,
    timeout_ms: u64,
}

/// A write whose payload is sent piece by piece (`ConnWriter::write_stream`): a relay forwards a
/// block while it is still arriving. It holds the connection until every announced byte is sent;
/// dropped before that, it shuts the connection down (the peer would read the next frame from the
/// middle of the payload otherwise).
pub struct WriteStream<'a> {
    w: std::sync::MutexGuard<'a, WriterInner>,
    peer: &'a str,
    timeout_ms: u64,
    left: u64,
}

/// An authenticated connection.
pub struct Conn {
    pub reader: ConnReader,
    pub writer: ConnWriter,
}

fn set_timeouts(s: &TcpStream, ms: u64, peer: &str) -> Result<()> {
    let d = Some(Duration::from_millis(ms.max(1)));
    s.set_read_timeout(d).map_err(|e| Error::Io { op: "set_read_timeout", peer: peer.into(), err: e })?;
    s.set_write_timeout(d).map_err(|e| Error::Io { op: "set_write_timeout", peer: peer.into(), err: e })?;
    Ok(())
}

/// Reads exactly one frame from `s` (the handshake's plain reader; `ConnReader` for sessions).
fn read_frame(
    s: &mut TcpStream,
    key: &Key,
    seq: u64,
    buf: &mut Vec<u8>,
    peer: &str,
    ms: u64,
) -> Result<(Kind, Vec<u8>)> {
    let (kind, body) = read_frame_into(s, key, seq, buf, peer, ms)?;
    Ok((kind, buf[body].to_vec()))
}

fn read_frame_into(
    s: &mut TcpStream,
    key: &Key,
    seq: u64,
    buf: &mut Vec<u8>,
    peer: &str,
    ms: u64,
) -> Result<(Kind, std::ops::Range<usize>)> {
    buf.resize(HEADER_BYTES, 0);
    s.read_exact(&mut buf[..HEADER_BYTES]).map_err(|e| Error::io("read frame header", peer, e, ms))?;
    let h = wire::parse_header(buf[..HEADER_BYTES].try_into().expect("24 bytes"))
        .map_err(|err| Error::Wire { peer: peer.into(), err })?;
    buf.resize(h.frame_bytes(), 0);
    s.read_exact(&mut buf[HEADER_BYTES..]).map_err(|e| Error::io("read frame body", peer, e, ms))?;
    match wire::decode(buf, key, seq).map_err(|err| Error::Wire { peer: peer.into(), err })? {
        Some((f, _)) => Ok((f.kind, HEADER_BYTES..HEADER_BYTES + f.body.len())),
        None => unreachable!("the whole frame was read"),
    }
}

fn write_frame(s: &mut TcpStream, kind: Kind, seq: u64, body: &[u8], key: &Key, peer: &str, ms: u64) -> Result<()> {
    let f = wire::encode(kind, seq, body, key).map_err(|err| Error::Wire { peer: peer.into(), err })?;
    s.write_all(&f).map_err(|e| Error::io("write frame", peer, e, ms))
}

fn expect_kind(kind: Kind, want: Kind, what: &'static str, peer: &str) -> Result<()> {
    if kind != want {
        return Err(Error::Wire { peer: peer.into(), err: wire::WireError::Unexpected { kind, wanted: what } });
    }
    Ok(())
}

fn finish(
    stream: TcpStream,
    secret: &Secret,
    client: bool,
    cn: &[u8],
    sn: &[u8],
    peer: String,
    ms: u64,
) -> Result<Conn> {
    let c2s = secret.derive(LABEL_C2S, &[cn, sn]);
    let s2c = secret.derive(LABEL_S2C, &[cn, sn]);
    let (tx, rx) = if client { (c2s, s2c) } else { (s2c, c2s) };
    set_timeouts(&stream, ms, &peer)?;
    let write_half = stream.try_clone().map_err(|e| Error::Io { op: "clone socket", peer: peer.clone(), err: e })?;
    let inner = Arc::new(Mutex::new(WriterInner {
        stream: write_half,
        key: tx,
        seq: 0,
        last_send: Instant::now(),
        closed: false,
        timeout_ms: ms,
    }));
    keepalive_register(&inner);
    let shut = stream.try_clone().map_err(|e| Error::Io { op: "clone socket", peer: peer.clone(), err: e })?;
    Ok(Conn {
        reader: ConnReader {
            stream,
            key: rx,
            seq: 0,
            buf: Vec::new(),
            pending: None,
            peer: peer.clone(),
            timeout_ms: ms,
        },
        writer: ConnWriter { inner, shut: Arc::new(shut), peer: peer.into(), timeout_ms: ms },
    })
}

/// Connects to `addr` and runs the client side of the mutual handshake. `timeout_ms` bounds
/// every later read and write on the connection.
pub fn connect(addr: SocketAddr, secret: &Secret, timeout_ms: u64) -> Result<Conn> {
    let peer = addr.to_string();
    let hs_ms = HANDSHAKE_TIMEOUT_MS.min(timeout_ms.max(1000));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(hs_ms))
        .map_err(|e| Error::io("connect", &peer, e, hs_ms))?;
    s.set_nodelay(true).map_err(|e| Error::Io { op: "set_nodelay", peer: peer.clone(), err: e })?;
    set_timeouts(&s, hs_ms, &peer)?;
    let hk = secret.derive(LABEL_HANDSHAKE, &[]);
    let cn = random_bytes::<NONCE_BYTES>()?;
    let mut buf = Vec::new();
    write_frame(&mut s, Kind::Hello, 0, &cn, &hk, &peer, hs_ms)?;
    let (kind, body) = read_frame(&mut s, &hk, 0, &mut buf, &peer, hs_ms).map_err(|e| match e {
        Error::Wire { err: wire::WireError::BadMac { .. }, .. } => {
            Error::Auth { peer: peer.clone(), reason: "the server's challenge is not MACed with our secret".into() }
        }
        e => e,
    })?;
    expect_kind(kind, Kind::Challenge, "a handshake challenge", &peer)?;
    let (sn, server_proof) = body.split_at(NONCE_BYTES);
    if !hk.verify(&[b"server", &cn, sn], server_proof) {
        return Err(Error::Auth { peer, reason: "the server could not prove it holds the cluster secret".into() });
    }
    let proof = hk.mac(&[b"client", sn, &cn]);
    write_frame(&mut s, Kind::Proof, 1, &proof, &hk, &peer, hs_ms)?;
    let (kind, _) = read_frame(&mut s, &hk, 1, &mut buf, &peer, hs_ms).map_err(|e| match e {
        Error::Closed { .. } => Error::Auth { peer: peer.clone(), reason: "the server refused our proof".into() },
        e => e,
    })?;
    expect_kind(kind, Kind::Accept, "the handshake's accept", &peer)?;
    let sn = sn.to_vec();
    finish(s, secret, true, &cn, &sn, peer, timeout_ms)
}

/// Runs the server side of the handshake on an accepted socket.
pub fn accept_handshake(mut s: TcpStream, secret: &Secret, timeout_ms: u64) -> Result<Conn> {
    let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
    let hs_ms = HANDSHAKE_TIMEOUT_MS.min(timeout_ms.max(1000));
    s.set_nodelay(true).map_err(|e| Error::Io { op: "set_nodelay", peer: peer.clone(), err: e })?;
    set_timeouts(&s, hs_ms, &peer)?;
    let hk = secret.derive(LABEL_HANDSHAKE, &[]);
    let mut buf = Vec::new();
    let (kind, cn) = read_frame(&mut s, &hk, 0, &mut buf, &peer, hs_ms).map_err(|e| match e {
        Error::Wire { err: wire::WireError::BadMac { .. }, .. } => {
            Error::Auth { peer: peer.clone(), reason: "hello not MACed with the cluster secret".into() }
        }
        e => e,
    })?;
    expect_kind(kind, Kind::Hello, "a handshake hello", &peer)?;
    let sn = random_bytes::<NONCE_BYTES>()?;
    let mut body = Vec::with_capacity(NONCE_BYTES + MAC_BYTES);
    body.extend_from_slice(&sn);
    body.extend_from_slice(&hk.mac(&[b"server", &cn, &sn]));
    write_frame(&mut s, Kind::Challenge, 0, &body, &hk, &peer, hs_ms)?;
    let (kind, proof) = read_frame(&mut s, &hk, 1, &mut buf, &peer, hs_ms)?;
    expect_kind(kind, Kind::Proof, "a handshake proof", &peer)?;
    if !hk.verify(&[b"client", &sn, &cn], &proof) {
        return Err(Error::Auth { peer, reason: "the client could not prove it holds the cluster secret".into() });
    }
    write_frame(&mut s, Kind::Accept, 1, &[], &hk, &peer, hs_ms)?;
    finish(s, secret, false, &cn, &sn, peer, timeout_ms)
}

/// A listening socket that admits only peers holding the secret.
pub struct Listener {
    inner: TcpListener,
    secret: Secret,
    timeout_ms: u64,
}

impl Listener {
    pub fn bind(addr: SocketAddr, secret: Secret, timeout_ms: u64) -> Result<Listener> {
        let inner = TcpListener::bind(addr).map_err(|e| Error::Io { op: "bind", peer: addr.to_string(), err: e })?;
        Ok(Listener { inner, secret, timeout_ms })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.inner.local_addr().map_err(|e| Error::Io { op: "local_addr", peer: "-".into(), err: e })
    }

    /// The next socket, not yet authenticated (run `handshake` on it, in its own thread if the
    /// listener must not wait on a slow peer).
    pub fn accept_raw(&self) -> Result<TcpStream> {
        let (s, _) = self.inner.accept().map_err(|e| Error::Io { op: "accept", peer: "-".into(), err: e })?;
        Ok(s)
    }

    /// Accepts and authenticates one connection.
    pub fn accept(&self) -> Result<Conn> {
        accept_handshake(self.accept_raw()?, &self.secret, self.timeout_ms)
    }

    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms
    }

    /// The timeout connections accepted from now on get.
    pub fn set_timeout_ms(&mut self, ms: u64) {
        self.timeout_ms = ms;
    }

    /// Makes `accept` return within `timeout_ms` (as an error) when nobody connects.
    pub fn set_nonblocking(&self, on: bool) -> Result<()> {
        self.inner.set_nonblocking(on).map_err(|e| Error::Io { op: "set_nonblocking", peer: "-".into(), err: e })
    }
}

impl Conn {
    /// Changes the bound on every later read and write of this connection.
    pub fn set_timeout_ms(&mut self, ms: u64) -> Result<()> {
        set_timeouts(&self.reader.stream, ms, &self.reader.peer)?;
        self.reader.timeout_ms = ms;
        self.writer.timeout_ms = ms;
        self.writer.inner.lock().unwrap_or_else(|p| p.into_inner()).timeout_ms = ms;
        Ok(())
    }
}

impl ConnReader {
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The next frame; pings are consumed here. After `Incoming::Write`, `land` or `discard` must
    /// be called before the next `recv`.
    pub fn recv(&mut self) -> Result<Incoming> {
        if let Some(d) = self.pending {
            return Err(Error::Protocol {
                peer: self.peer.clone(),
                reason: format!("internal: the payload of a {}-byte write was neither landed nor discarded", d.len),
            });
        }
        loop {
            let (kind, body) =
                read_frame_into(&mut self.stream, &self.key, self.seq, &mut self.buf, &self.peer, self.timeout_ms)?;
            self.seq += 1;
            let body = &self.buf[body];
            match kind {
                Kind::Ping => continue,
                Kind::Control => return Ok(Incoming::Control(Control::from_body(body, &self.peer)?)),
                Kind::Message => return Ok(Incoming::Message(body.to_vec())),
                Kind::Close => return Ok(Incoming::Close(String::from_utf8_lossy(body).into_owned())),
                Kind::Write => {
                    let d = WriteDesc::decode(body).map_err(|err| Error::Wire { peer: self.peer.clone(), err })?;
                    self.pending = Some(d);
                    return Ok(Incoming::Write(d));
                }
                Kind::Hello | Kind::Challenge | Kind::Proof | Kind::Accept => {
                    return Err(Error::Wire {
                        peer: self.peer.clone(),
                        err: wire::WireError::Unexpected { kind, wanted: "a session frame" },
                    })
                }
            }
        }
    }

    fn take_pending(&mut self, what: &str) -> Result<WriteDesc> {
        self.pending.take().ok_or_else(|| Error::Protocol {
            peer: self.peer.clone(),
            reason: format!("internal: {what} without a pending write"),
        })
    }

    /// Where the pending write `d`, landing at region offset `offset`, starts in `claim`; an error
    /// unless all of its bytes lie inside the claim.
    fn inside(claim: &Claim, offset: u64, len: u64) -> Result<u64> {
        let outside = || {
            Error::Claim(format!(
                "a write of [{offset}, +{len}) is outside the claimed bytes [{}, +{})",
                claim.offset(),
                claim.len()
            ))
        };
        let at = offset.checked_sub(claim.offset()).ok_or_else(outside)?;
        claim.sub(at, len).map_err(|_| outside())?;
        Ok(at)
    }

    /// Reads the pending write's payload straight into `claim` (a write claim on host memory) at
    /// the region offset the write names (one copy, socket buffer → region). The write must lie
    /// inside the claim; nothing is written outside it.
    pub fn land(&mut self, claim: &mut Claim) -> Result<WriteDesc> {
        let d = self.take_pending("land")?;
        let at = Self::inside(claim, d.offset, d.len)?;
        let dst = claim.write_ptr(at, d.len)?;
        // SAFETY: `dst .. dst + d.len` lies inside the exclusive claim (`write_ptr` checked it), and
        // `&mut claim` excludes every other access to it for this call.
        unsafe { self.read_payload(dst, d.len as usize, 0, || {}, |_| {}) }?;
        Ok(d)
    }

    /// `land` at the start of `claim` instead of the offset the write names (a read's answer lands
    /// where the reader asked, whatever the answer says); the write must be as long as the claim.
    pub fn land_at(&mut self, claim: &mut Claim) -> Result<WriteDesc> {
        let d = self.take_pending("land")?;
        if d.len != claim.len() as u64 {
            return Err(Error::Protocol {
                peer: self.peer.clone(),
                reason: format!("a write of {} bytes for {} claimed bytes", d.len, claim.len()),
            });
        }
        let dst = claim.write_ptr(0, d.len)?;
        // SAFETY: as in `land`: inside the exclusive claim, which `&mut` holds for the call.
        unsafe { self.read_payload(dst, d.len as usize, 0, || {}, |_| {}) }?;
        Ok(d)
    }

    /// Lands the pending write in a write claim other threads use at the same time (the
    /// executor's model region), calling `near_end` once when at most `notify_remaining_bytes` are
    /// still to come (the executor grants its next transfer then, so the link does not idle for a
    /// round trip) and `progress(n)` after every read from the socket, where `n` is how many bytes
    /// of the payload (a prefix) are in place by then: a relay forwards that prefix while the rest
    /// arrives. Bytes are written through a raw pointer (the kernel copies into them); no Rust
    /// reference to them is made here.
    ///
    /// # Safety
    /// For the whole call, nobody else writes the pending write's bytes `[offset, offset + len)`,
    /// and nobody reads any of them except the prefix `progress` has reported (and only after
    /// seeing the report, with the ordering `progress` itself establishes).
    pub unsafe fn land_shared(
        &mut self,
        claim: &Claim,
        notify_remaining_bytes: usize,
        near_end: impl FnMut(),
        progress: impl FnMut(usize),
    ) -> Result<WriteDesc> {
        let d = self.take_pending("land")?;
        let at = Self::inside(claim, d.offset, d.len)?;
        let dst = claim.write_ptr(at, d.len)?;
        // SAFETY: `dst .. dst + d.len` lies inside the claim (`write_ptr` checked it); the caller
        // guarantees no other writer and no reader past the reported prefix.
        unsafe { self.read_payload(dst, d.len as usize, notify_remaining_bytes, near_end, progress) }?;
        Ok(d)
    }

    /// Reads `len` payload bytes from the socket to `dst` (see `land_shared` for the callbacks).
    ///
    /// # Safety
    /// `dst .. dst + len` is valid for writes, and for the whole call nobody else writes it or
    /// reads any of it but the prefix `progress` has reported.
    unsafe fn read_payload(
        &mut self,
        dst: *mut u8,
        len: usize,
        notify_remaining_bytes: usize,
        mut near_end: impl FnMut(),
        mut progress: impl FnMut(usize),
    ) -> Result<()> {
        use std::os::fd::AsRawFd;
        let fd = self.stream.as_raw_fd();
        let mut at = 0usize;
        let mut notified = false;
        while at < len {
            if !notified && len - at <= notify_remaining_bytes {
                notified = true;
                near_end();
            }
            // Stop a read at the notification point, so the call happens on time.
            let to_mark = (len - at).saturating_sub(notify_remaining_bytes);
            let want = if !notified && to_mark > 0 { to_mark } else { len - at };
            let step = want.min(LAND_STEP_BYTES);
            // SAFETY: `[at, at + step)` lies inside `dst .. dst + len`, valid for writes and written
            // by no one else (the caller's contract); `recv` writes at most `step` bytes there and
            // makes no Rust reference to them. The fd is the socket `self.stream` keeps open.
            let n = unsafe { libc::recv(fd, dst.add(at).cast(), step, 0) };
            match n {
                0 => return Err(Error::Closed { peer: self.peer.clone(), during: "a write's payload" }),
                n if n > 0 => {
                    at += n as usize;
                    progress(at);
                }
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(Error::io("read write payload", &self.peer, e, self.timeout_ms));
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads and drops the pending write's payload (a block already held or landing elsewhere).
    pub fn discard(&mut self) -> Result<WriteDesc> {
        let d = self.take_pending("discard")?;
        let mut sink = vec![0u8; 64 << 10];
        let mut left = d.len;
        while left > 0 {
            let step = left.min(sink.len() as u64) as usize;
            match self.stream.read(&mut sink[..step]) {
                Ok(0) => return Err(Error::Closed { peer: self.peer.clone(), during: "a write's payload" }),
                Ok(n) => left -= n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("read write payload", &self.peer, e, self.timeout_ms)),
            }
        }
        Ok(d)
    }
}

impl ConnWriter {
    pub fn peer(&self) -> &str {
        &self.peer
    }

    fn send(&self, kind: Kind, body: &[u8], payload: &[u8]) -> Result<()> {
        let mut w = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if w.closed {
            return Err(Error::Closed { peer: self.peer.to_string(), during: "send (already closed)" });
        }
        let frame =
            wire::encode(kind, w.seq, body, &w.key).map_err(|err| Error::Wire { peer: self.peer.to_string(), err })?;
        w.seq += 1;
        let r = w.stream.write_all(&frame).and_then(|_| w.stream.write_all(payload));
        w.last_send = Instant::now();
        if let Err(e) = r {
            w.closed = true;
            let _ = w.stream.shutdown(std::net::Shutdown::Both);
            return Err(Error::io("write", &self.peer, e, self.timeout_ms));
        }
        Ok(())
    }

    pub fn control(&self, m: &Control) -> Result<()> {
        self.send(Kind::Control, &m.to_body(), &[])
    }

    pub fn message(&self, bytes: &[u8]) -> Result<()> {
        if bytes.len() > wire::MAX_MESSAGE_BYTES {
            return Err(Error::Channel(format!(
                "a message of {} bytes; at most {}",
                bytes.len(),
                wire::MAX_MESSAGE_BYTES
            )));
        }
        self.send(Kind::Message, bytes, &[])
    }

    /// Sends a write: the descriptor frame, then `payload` (whose length must be `desc.len`).
    pub fn write(&self, desc: WriteDesc, payload: &[u8]) -> Result<()> {
        if payload.len() as u64 != desc.len {
            return Err(Error::Protocol {
                peer: self.peer.to_string(),
                reason: format!("internal: write announces {} bytes, payload has {}", desc.len, payload.len()),
            });
        }
        self.send(Kind::Write, &desc.encode(), payload)
    }

    /// Starts a write whose `desc.len` payload bytes follow piece by piece (`WriteStream::send`,
    /// then `WriteStream::finish`). Nothing else goes out on this connection meanwhile; keep-alive
    /// pings skip it, so the caller must send something within the connection's timeout.
    pub fn write_stream(&self, desc: WriteDesc) -> Result<WriteStream<'_>> {
        let mut w = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if w.closed {
            return Err(Error::Closed { peer: self.peer.to_string(), during: "send (already closed)" });
        }
        let frame = wire::encode(Kind::Write, w.seq, &desc.encode(), &w.key)
            .map_err(|err| Error::Wire { peer: self.peer.to_string(), err })?;
        w.seq += 1;
        let mut ws = WriteStream { w, peer: &self.peer, timeout_ms: self.timeout_ms, left: desc.len };
        ws.put(&frame)?;
        Ok(ws)
    }

    /// Caps the socket's send buffer at `bytes` (SO_SNDBUF; the kernel doubles it for its own
    /// bookkeeping). The send buffer holds every unacknowledged byte, so this also bounds how much
    /// of this connection waits in the link's queue ahead of other connections' control messages.
    pub fn set_send_buffer(&self, bytes: usize) -> Result<()> {
        use std::os::fd::AsRawFd;
        let w = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: the fd is the open socket `w.stream` owns (kept open by the lock we hold); the
        // option value points to a live c_int of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                w.stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(Error::Io {
                op: "setsockopt SO_SNDBUF",
                peer: self.peer.to_string(),
                err: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Sends `Close` with a reason and shuts the socket down.
    pub fn close(&self, reason: &str) {
        let r = &reason.as_bytes()[..reason.len().min(wire::MAX_CLOSE_BYTES)];
        let _ = self.send(Kind::Close, r, &[]);
        let mut w = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        w.closed = true;
        let _ = w.stream.shutdown(std::net::Shutdown::Both);
    }

    /// Shuts the socket down at once (both halves: a blocked reader returns, and so does a write in
    /// progress, which may hold the writer's lock: this does not take it).
    pub fn abort(&self) {
        let _ = self.shut.shutdown(std::net::Shutdown::Both);
        if let Ok(mut w) = self.inner.try_lock() {
            w.closed = true;
        }
    }
}

impl WriteStream<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        let r = self.w.stream.write_all(bytes);
        self.w.last_send = Instant::now();
        if let Err(e) = r {
            self.w.closed = true;
            let _ = self.w.stream.shutdown(std::net::Shutdown::Both);
            return Err(Error::io("write", self.peer, e, self.timeout_ms));
        }
        Ok(())
    }

    /// Payload bytes still to send.
    pub fn left(&self) -> u64 {
        self.left
    }

    /// Sends the next `bytes` of the payload; more than announced is refused (nothing sent).
    pub fn send(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.len() as u64 > self.left {
            return Err(Error::Protocol {
                peer: self.peer.to_string(),
                reason: format!(
                    "internal: {} more payload bytes than the write announced",
                    bytes.len() as u64 - self.left
                ),
            });
        }
        self.put(bytes)?;
        self.left -= bytes.len() as u64;
        Ok(())
    }

    /// Ends the write; an error (and the connection shut down) unless every byte was sent.
    pub fn finish(self) -> Result<()> {
        if self.left > 0 {
            return Err(Error::Protocol {
                peer: self.peer.to_string(),
                reason: format!("internal: a write ended {} bytes short; connection closed", self.left),
            });
        }
        Ok(())
    }
}

impl Drop for WriteStream<'_> {
    fn drop(&mut self) {
        if self.left > 0 {
            self.w.closed = true;
            let _ = self.w.stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

// ---- keep-alive: one thread per process pings idle connections ----

struct Keepalive {
    conns: Mutex<Vec<Weak<Mutex<WriterInner>>>>,
}

/// Most connections one process keeps alive at once (a multicast node has O(log N) partners).
const MAX_KEEPALIVE_CONNS: usize = 65_536;

fn keepalive_register(w: &Arc<Mutex<WriterInner>>) {
    static KA: OnceLock<Arc<Keepalive>> = OnceLock::new();
    let ka = KA.get_or_init(|| {
        let ka = Arc::new(Keepalive { conns: Mutex::new(Vec::new()) });
        let k2 = ka.clone();
        std::thread::Builder::new()
            .name("rdma-keepalive".into())
            .spawn(move || keepalive_loop(&k2))
            .expect("spawn keep-alive thread");
        ka
    });
    let mut c = ka.conns.lock().unwrap_or_else(|p| p.into_inner());
    c.retain(|w| w.strong_count() > 0);
    if c.len() < MAX_KEEPALIVE_CONNS {
        c.push(Arc::downgrade(w));
    } else {
        log::warn!("{MAX_KEEPALIVE_CONNS} connections kept alive already; a new one will not be pinged");
    }
}

fn keepalive_loop(ka: &Keepalive) {
    loop {
        let list: Vec<Weak<Mutex<WriterInner>>> = {
            let mut c = ka.conns.lock().unwrap_or_else(|p| p.into_inner());
            c.retain(|w| w.strong_count() > 0);
            c.clone()
        };
        let mut sleep_ms = 250u64;
        for w in list {
            let Some(w) = w.upgrade() else { continue };
            // A writer busy with a long write is evidently alive: skip it rather than wait.
            let Ok(mut g) = w.try_lock() else { continue };
            let every = Duration::from_millis((g.timeout_ms / 4).max(10));
            sleep_ms = sleep_ms.min(every.as_millis() as u64 / 2).max(5);
            if g.closed || g.last_send.elapsed() < every {
                continue;
            }
            let Ok(frame) = wire::encode(Kind::Ping, g.seq, &[], &g.key) else { continue };
            g.seq += 1;
            g.last_send = Instant::now();
            if g.stream.write_all(&frame).is_err() {
                g.closed = true;
                let _ = g.stream.shutdown(std::net::Shutdown::Both);
            }
        }
        std::thread::sleep(Duration::from_millis(sleep_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::Access;

    fn secret(b: u8) -> Secret {
        Secret::new(vec![b; 32]).unwrap()
    }

    fn pair(server_secret: Secret, client_secret: Secret) -> (Result<Conn>, Result<Conn>) {
        let l = Listener::bind("127.0.0.1:0".parse().unwrap(), server_secret, 2000).unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || l.accept());
        let c = connect(addr, &client_secret, 2000);
        (t.join().unwrap(), c)
    }

    #[test]
    fn peers_with_the_secret_talk_in_both_directions() {
        let (s, c) = pair(secret(1), secret(1));
        let (mut s, c) = (s.unwrap(), c.unwrap());
        c.writer.control(&Control::Iam { node: 3 }).unwrap();
        c.writer.message(b"hidden states").unwrap();
        assert!(matches!(s.reader.recv().unwrap(), Incoming::Control(Control::Iam { node: 3 })));
        assert!(matches!(s.reader.recv().unwrap(), Incoming::Message(m) if m == b"hidden states"));
        let mut cr = c.reader;
        s.writer.control(&Control::Finish).unwrap();
        assert!(matches!(cr.recv().unwrap(), Incoming::Control(Control::Finish)));
    }

    #[test]
    fn a_peer_without_the_secret_is_refused_on_both_sides() {
        let (s, c) = pair(secret(1), secret(2));
        let se = s.err().expect("server must refuse").to_string();
        assert!(se.contains("authentication failed"), "{se}");
        assert!(c.is_err());
    }

    #[test]
    fn writes_land_in_bounds_and_out_of_bounds_writes_are_refused() {
        let (s, c) = pair(secret(1), secret(1));
        let (mut s, c) = (s.unwrap(), c.unwrap());
        let region = crate::region::OwnedRegion::zeroed(8192).unwrap();
        let mut half = region.region().claim(0, 4096, 4096, Access::Write).unwrap();
        c.writer.write(WriteDesc { region: 0, offset: 4096, len: 5, tag: 9 }, b"abcde").unwrap();
        assert!(matches!(s.reader.recv().unwrap(), Incoming::Write(d) if d.tag == 9));
        s.reader.land(&mut half).unwrap();
        assert_eq!(&half.bytes().unwrap()[..5], b"abcde");
        // past the claim (and past the region): refused, nothing written
        c.writer.write(WriteDesc { region: 0, offset: 8190, len: 5, tag: 1 }, b"vwxyz").unwrap();
        assert!(matches!(s.reader.recv().unwrap(), Incoming::Write(_)));
        assert!(matches!(s.reader.land(&mut half), Err(Error::Claim(_))));
        assert_eq!(&half.bytes().unwrap()[4090..], &[0; 6], "nothing written");
        drop(half);
        // before the claim: refused too (a new connection: the refused payload is still in the old one)
        let (s, c) = pair(secret(1), secret(1));
        let (mut s, c) = (s.unwrap(), c.unwrap());
        c.writer.write(WriteDesc { region: 0, offset: 4094, len: 4, tag: 2 }, b"wxyz").unwrap();
        assert!(matches!(s.reader.recv().unwrap(), Incoming::Write(_)));
        let mut high = region.region().claim(0, 4096, 4096, Access::Write).unwrap();
        assert!(matches!(s.reader.land(&mut high), Err(Error::Claim(_))));
        drop(high);
        assert_eq!(region.read(4090, 10).unwrap(), [0, 0, 0, 0, 0, 0, b'a', b'b', b'c', b'd']);
        assert!(matches!(region.region().claim(0, 8190, 5, Access::Write), Err(Error::Bounds { offset: 8190, .. })));
    }

    #[test]
    fn a_streamed_write_lands_as_one_and_one_cut_short_closes_the_connection() {
        let (s, c) = pair(secret(1), secret(1));
        let (mut s, c) = (s.unwrap(), c.unwrap());
        let region = crate::region::OwnedRegion::zeroed(8192).unwrap();
        let d = WriteDesc { region: 0, offset: 100, len: 6, tag: 4 };
        let mut ws = c.writer.write_stream(d).unwrap();
        ws.send(b"abc").unwrap();
        assert!(ws.send(b"defg").is_err(), "more than announced is refused");
        ws.send(b"def").unwrap();
        assert_eq!(ws.left(), 0);
        ws.finish().unwrap();
        c.writer.control(&Control::Ready).unwrap();
        assert!(matches!(s.reader.recv().unwrap(), Incoming::Write(x) if x == d));
        let mut seen = Vec::new();
        let claim = region.region().claim(0, 0, 8192, Access::Write).unwrap();
        // SAFETY: this thread is the claim's only user.
        unsafe { s.reader.land_shared(&claim, 0, || {}, |n| seen.push(n)) }.unwrap();
        drop(claim);
        assert_eq!(seen.last(), Some(&6), "progress ends at the write's length: {seen:?}");
        assert_eq!(region.read(100, 6).unwrap(), b"abcdef");
        assert!(matches!(s.reader.recv().unwrap(), Incoming::Control(Control::Ready)));
        // dropped before its last byte: the connection is shut, nothing else can follow
        let mut ws = c.writer.write_stream(WriteDesc { len: 10, ..d }).unwrap();
        ws.send(b"12345").unwrap();
        drop(ws);
        assert!(c.writer.control(&Control::Ready).is_err());
        assert!(matches!(s.reader.recv().unwrap(), Incoming::Write(_)));
        let mut claim = region.region().claim(0, 0, 8192, Access::Write).unwrap();
        assert!(s.reader.land(&mut claim).is_err(), "the payload ends early");
    }

    #[test]
    fn abort_does_not_wait_for_a_write_in_progress() {
        let (s, c) = pair(secret(1), secret(1));
        let (_s, c) = (s.unwrap(), c.unwrap());
        let mut ws = c.writer.write_stream(WriteDesc { region: 0, offset: 0, len: 10, tag: 1 }).unwrap();
        ws.send(b"12345").unwrap();
        let w = c.writer.clone();
        let t0 = Instant::now();
        std::thread::spawn(move || w.abort()).join().unwrap();
        assert!(t0.elapsed() < Duration::from_millis(500));
        assert!(ws.send(b"67890").is_err(), "the socket is shut down");
    }

    #[test]
    fn a_payload_longer_than_announced_breaks_the_next_frame() {
        let (s, c) = pair(secret(1), secret(1));
        let (mut s, c) = (s.unwrap(), c.unwrap());
        let region = crate::region::OwnedRegion::zeroed(4096).unwrap();
        // announce 4 bytes, send 8: the extra 4 are read as the next header and refused
        {
            let mut w = c.writer.inner.lock().unwrap();
            let f = wire::encode(Kind::Write, 0, &WriteDesc { region: 0, offset: 0, len: 4, tag: 0 }.encode(), &w.key)
                .unwrap();
            w.stream.write_all(&f).unwrap();
            w.stream.write_all(b"12345678").unwrap();
            w.stream.write_all(&[0; 64]).unwrap();
        }
        assert!(matches!(s.reader.recv().unwrap(), Incoming::Write(_)));
        s.reader.land(&mut region.region().claim(0, 0, 4096, Access::Write).unwrap()).unwrap();
        let e = s.reader.recv().unwrap_err();
        assert!(matches!(e, Error::Wire { err: wire::WireError::BadMagic { .. }, .. }), "{e}");
    }

    #[test]
    fn a_replayed_frame_is_refused() {
        let (s, c) = pair(secret(1), secret(1));
        let (mut s, c) = (s.unwrap(), c.unwrap());
        let f = {
            let w = c.writer.inner.lock().unwrap();
            wire::encode(Kind::Control, 0, &Control::Start.to_body(), &w.key).unwrap()
        };
        {
            let mut w = c.writer.inner.lock().unwrap();
            w.stream.write_all(&f).unwrap();
            w.stream.write_all(&f).unwrap(); // the same bytes again
        }
        assert!(matches!(s.reader.recv().unwrap(), Incoming::Control(Control::Start)));
        let e = s.reader.recv().unwrap_err().to_string();
        assert!(e.contains("replayed"), "{e}");
    }

    #[test]
    fn a_silent_peer_times_out_and_an_idle_one_does_not() {
        let l = Listener::bind("127.0.0.1:0".parse().unwrap(), secret(1), 300).unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || l.accept().unwrap());
        let c = connect(addr, &secret(1), 300).unwrap();
        let mut s = t.join().unwrap();
        // idle but alive: keep-alive pings keep the reader waiting, then a real message arrives
        let w = c.writer.clone();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(700));
            w.control(&Control::Ready).unwrap();
        });
        assert!(matches!(s.reader.recv().unwrap(), Incoming::Control(Control::Ready)));
        sender.join().unwrap();
        // alive socket, silent process (as under SIGSTOP): no pings get out, the reader times out
        let held = c.writer.inner.lock().unwrap();
        let t0 = Instant::now();
        let e = s.reader.recv().unwrap_err();
        assert!(matches!(e, Error::Timeout { timeout_ms: 300, .. }), "{e}");
        assert!(t0.elapsed() < Duration::from_millis(1500));
        drop(held);
        // silent: a raw socket that authenticated nothing sends no pings
        let l = Listener::bind("127.0.0.1:0".parse().unwrap(), secret(1), 300).unwrap();
        let addr = l.local_addr().unwrap();
        let _raw = TcpStream::connect(addr).unwrap();
        let t0 = Instant::now();
        let e = l.accept().err().expect("silent handshake must time out");
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
        assert!(t0.elapsed() < Duration::from_millis(HANDSHAKE_TIMEOUT_MS + 500));
    }
}
