//! One-sided operations over TCP: register regions, connect to peers, write or read a byte range
//! of a peer's registered region, each with a completion event — the transport interface the
//! verbs backend offers with RDMA WRITE and READ.
//!
//! Over TCP the target's CPU does the work a NIC would: one thread per incoming connection lands
//! writes straight into the named region (bounds-checked against it, nothing written outside) and
//! answers reads from it. As with RDMA, the caller keeps regions alive while registered. Every
//! landing holds a write claim on its bytes and every read a read claim (`region::Claim`), so a
//! write that would overlap another access to the same bytes is refused, not raced.

use crate::auth::Secret;
use crate::control::Control;
use crate::error::{Error, Result};
use crate::region::{Access, Claim, Region, RegionId, Registry};
use crate::tcp::{self, ConnReader, ConnWriter, Incoming, Listener};
use crate::wire::WriteDesc;
use crossbeam::channel::{bounded, Receiver, Sender};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most operations one peer connection has outstanding.
pub const MAX_OUTSTANDING: usize = 4096;

/// A node's side: its registered regions and the listener serving peers' writes and reads.
pub struct RegionServer {
    registry: Arc<Registry>,
    secret: Secret,
    timeout_ms: u64,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl RegionServer {
    /// Listens on `addr` (port 0: any) for authenticated peers.
    pub fn bind(addr: SocketAddr, secret: Secret, timeout_ms: u64) -> Result<RegionServer> {
        let listener = Listener::bind(addr, secret.clone(), timeout_ms)?;
        let addr = listener.local_addr()?;
        let registry = Arc::new(Registry::new());
        let stop = Arc::new(AtomicBool::new(false));
        let (reg, st) = (registry.clone(), stop.clone());
        std::thread::Builder::new()
            .name("rdma-peer-accept".into())
            .spawn(move || loop {
                let s = match listener.accept_raw() {
                    Ok(s) => s,
                    Err(_) if st.load(Ordering::Acquire) => return,
                    Err(e) => {
                        log::warn!("{e}");
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                if st.load(Ordering::Acquire) {
                    return;
                }
                let (reg, secret, ms) = (reg.clone(), listener.secret().clone(), listener.timeout_ms());
                let _ =
                    std::thread::Builder::new().name("rdma-peer-serve".into()).spawn(
                        move || match tcp::accept_handshake(s, &secret, ms) {
                            Ok(c) => serve(&reg, c),
                            Err(e) => log::warn!("refused a peer: {e}"),
                        },
                    );
            })
            .map_err(|e| Error::Process { op: "spawn peer listener", err: e })?;
        Ok(RegionServer { registry, secret, timeout_ms, addr, stop })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Lets peers write into and read from `region`; they name it by the returned id.
    pub fn register(&self, region: Arc<Region>) -> Result<RegionId> {
        self.registry.register(region)
    }

    pub fn deregister(&self, id: RegionId) -> Option<Arc<Region>> {
        self.registry.deregister(id)
    }

    /// An authenticated connection for one-sided operations on `addr`'s regions.
    pub fn connect(&self, addr: SocketAddr) -> Result<Peer> {
        Peer::connect(addr, &self.secret, self.timeout_ms)
    }
}

impl Drop for RegionServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// Serves one initiator: lands its writes, answers its reads.
fn serve(reg: &Registry, conn: tcp::Conn) {
    let (mut r, w) = (conn.reader, conn.writer);
    loop {
        let res = match r.recv() {
            Ok(Incoming::Write(d)) => {
                let claim = reg
                    .get(RegionId(d.region))
                    .ok_or_else(|| format!("region {} is not registered", d.region))
                    .and_then(|rg| rg.claim(d.region, d.offset, d.len, Access::Write).map_err(|e| e.to_string()));
                match claim {
                    Ok(mut claim) => match r.land(&mut claim) {
                        Ok(_) => {
                            drop(claim);
                            w.control(&Control::WriteDone { tag: d.tag, error: None })
                        }
                        Err(e) => {
                            // A broken stream: say why, then close.
                            let _ = w.control(&Control::WriteDone { tag: d.tag, error: Some(e.to_string()) });
                            Err(e)
                        }
                    },
                    // Not registered, out of bounds, or the bytes are in use: nothing written.
                    Err(error) => {
                        r.discard().and_then(|_| w.control(&Control::WriteDone { tag: d.tag, error: Some(error) }))
                    }
                }
            }
            Ok(Incoming::Control(Control::ReadReq { tag, region, offset, len })) => {
                let claim = reg
                    .get(RegionId(region))
                    .ok_or_else(|| format!("region {region} is not registered"))
                    .and_then(|rg| rg.claim(region, offset, len, Access::Read).map_err(|e| e.to_string()));
                match claim.and_then(|c| {
                    c.bytes().map(|b| w.write(WriteDesc { region, offset, len, tag }, b)).map_err(|e| e.to_string())
                }) {
                    Ok(sent) => sent,
                    Err(error) => w.control(&Control::ReadFailed { tag, error }),
                }
            }
            Ok(Incoming::Close(_)) => return,
            Ok(other) => Err(Error::Protocol { peer: r.peer().into(), reason: format!("unexpected {other:?}") }),
            Err(e) => Err(e),
        };
        if let Err(e) = res {
            log::warn!("peer {}: {e}", r.peer());
            w.close(&e.to_string());
            return;
        }
    }
}

enum Op {
    Write(Sender<Result<()>>),
    /// `local`: the write claim the answer lands in, held from the request until it has landed.
    Read {
        done: Sender<Result<()>>,
        local: Claim,
        remote_offset: u64,
    },
}

/// The completion event of one operation.
pub struct Completion {
    rx: Receiver<Result<()>>,
    timeout_ms: u64,
}

impl Completion {
    /// Waits until the operation completed (at most the connection's timeout).
    pub fn wait(self) -> Result<()> {
        match self.rx.recv_timeout(Duration::from_millis(self.timeout_ms)) {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout { op: "one-sided operation", peer: "-".into(), timeout_ms: self.timeout_ms }),
        }
    }

    /// `Some` once the operation completed.
    pub fn poll(&self) -> Option<Result<()>> {
        self.rx.try_recv().ok()
    }
}

/// A connection for one-sided operations on one peer's registered regions.
pub struct Peer {
    writer: ConnWriter,
    ops: Arc<Mutex<HashMap<u64, Op>>>,
    next_tag: AtomicU64,
    timeout_ms: u64,
}

impl Peer {
    fn connect(addr: SocketAddr, secret: &Secret, timeout_ms: u64) -> Result<Peer> {
        let c = tcp::connect(addr, secret, timeout_ms)?;
        let ops: Arc<Mutex<HashMap<u64, Op>>> = Arc::new(Mutex::new(HashMap::new()));
        let (o, mut r) = (ops.clone(), c.reader);
        std::thread::Builder::new()
            .name("rdma-peer-completions".into())
            .spawn(move || complete_loop(&o, &mut r))
            .map_err(|e| Error::Process { op: "spawn peer reader", err: e })?;
        Ok(Peer { writer: c.writer, ops, next_tag: AtomicU64::new(1), timeout_ms })
    }

    fn add(&self, op: Op) -> Result<u64> {
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        if ops.len() >= MAX_OUTSTANDING {
            return Err(Error::Channel(format!(
                "{MAX_OUTSTANDING} operations outstanding on peer {}",
                self.writer.peer()
            )));
        }
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        ops.insert(tag, op);
        Ok(tag)
    }

    fn forget(&self, tag: u64) {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).remove(&tag);
    }

    /// Writes `len` bytes at `local_offset` of `local` into the peer's region `remote` at
    /// `remote_offset`. Returns once the bytes are handed to the socket (the local bytes are held
    /// by a read claim until then); the completion fires when the peer has landed them (or
    /// refused: out of its region, not registered, the bytes in use there).
    pub fn write(
        &self,
        local: &Arc<Region>,
        local_offset: u64,
        len: u64,
        remote: RegionId,
        remote_offset: u64,
    ) -> Result<Completion> {
        let claim = local.claim(u32::MAX, local_offset, len, Access::Read)?;
        let bytes = claim.bytes()?;
        let (tx, rx) = bounded(1);
        let tag = self.add(Op::Write(tx))?;
        if let Err(e) = self.writer.write(WriteDesc { region: remote.0, offset: remote_offset, len, tag }, bytes) {
            self.forget(tag);
            return Err(e);
        }
        Ok(Completion { rx, timeout_ms: self.timeout_ms })
    }

    /// Reads `len` bytes at `remote_offset` of the peer's region `remote` into `local` at
    /// `local_offset`; the completion fires when they have landed. The local bytes are held by a
    /// write claim from now until then (refused if anything else has claimed them).
    pub fn read(
        &self,
        local: Arc<Region>,
        local_offset: u64,
        len: u64,
        remote: RegionId,
        remote_offset: u64,
    ) -> Result<Completion> {
        let local = local.claim(u32::MAX, local_offset, len, Access::Write)?;
        let (tx, rx) = bounded(1);
        let tag = self.add(Op::Read { done: tx, local, remote_offset })?;
        if let Err(e) = self.writer.control(&Control::ReadReq { tag, region: remote.0, offset: remote_offset, len }) {
            self.forget(tag);
            return Err(e);
        }
        Ok(Completion { rx, timeout_ms: self.timeout_ms })
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.writer.close("peer dropped");
    }
}

/// The initiator's reader: completions of writes, the bytes of reads.
fn complete_loop(ops: &Mutex<HashMap<u64, Op>>, r: &mut ConnReader) {
    let take = |tag: u64| ops.lock().unwrap_or_else(|p| p.into_inner()).remove(&tag);
    let err = loop {
        match r.recv() {
            Ok(Incoming::Control(Control::WriteDone { tag, error })) => {
                if let Some(Op::Write(done)) = take(tag) {
                    let _ =
                        done.send(error.map_or(Ok(()), |e| Err(Error::Protocol { peer: r.peer().into(), reason: e })));
                }
            }
            Ok(Incoming::Control(Control::ReadFailed { tag, error })) => {
                if let Some(Op::Read { done, local, .. }) = take(tag) {
                    drop(local); // the claim ends before the completion fires
                    let _ = done.send(Err(Error::Protocol { peer: r.peer().into(), reason: error }));
                }
            }
            Ok(Incoming::Write(d)) => match take(d.tag) {
                Some(Op::Read { done, mut local, remote_offset }) => {
                    let len = local.len() as u64;
                    if d.offset != remote_offset || d.len != len {
                        let e =
                            format!("read answer [{}, +{}) for a read of [{remote_offset}, +{len})", d.offset, d.len);
                        drop(local); // the claim ends before the completion fires
                        let _ = done.send(Err(Error::Protocol { peer: r.peer().into(), reason: e.clone() }));
                        break Error::Protocol { peer: r.peer().into(), reason: e };
                    }
                    // Land at the local offset the read asked for, not where the answer says.
                    let landed = r.land_at(&mut local);
                    drop(local); // the claim ends before the completion fires
                    let failed = landed.as_ref().err().map(|e| e.to_string());
                    let _ = done.send(landed.map(|_| ()));
                    if let Some(e) = failed {
                        break Error::Protocol { peer: r.peer().into(), reason: e };
                    }
                }
                _ => {
                    break Error::Protocol {
                        peer: r.peer().into(),
                        reason: format!("a write tagged {} nobody asked for", d.tag),
                    }
                }
            },
            Ok(Incoming::Close(reason)) => {
                break Error::Closed { peer: format!("{} ({reason})", r.peer()), during: "one-sided operations" }
            }
            Ok(other) => break Error::Protocol { peer: r.peer().into(), reason: format!("unexpected {other:?}") },
            Err(e) => break e,
        }
    };
    // Everything still outstanding fails with the reason.
    let left: Vec<Op> = ops.lock().unwrap_or_else(|p| p.into_inner()).drain().map(|(_, o)| o).collect();
    for op in left {
        let done = match op {
            Op::Write(d) => d,
            Op::Read { done, local, .. } => {
                drop(local); // the claim ends before the completion fires
                done
            }
        };
        let _ = done.send(Err(Error::Channel(format!("connection ended: {err}"))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::OwnedRegion;

    #[test]
    fn write_and_read_a_peers_region_with_completions() {
        let secret = Secret::new(vec![8; 32]).unwrap();
        let a = RegionServer::bind("127.0.0.1:0".parse().unwrap(), secret.clone(), 2000).unwrap();
        let b = RegionServer::bind("127.0.0.1:0".parse().unwrap(), secret.clone(), 2000).unwrap();
        let target = OwnedRegion::zeroed(1 << 20).unwrap();
        let id = b.register(target.region().clone()).unwrap();
        let mut src = OwnedRegion::zeroed(1 << 20).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        src.fill(4096, &data).unwrap();
        let peer = a.connect(b.local_addr()).unwrap();
        peer.write(src.region(), 4096, data.len() as u64, id, 8192).unwrap().wait().unwrap();
        assert_eq!(target.read(8192, data.len()).unwrap(), data);
        let back = OwnedRegion::zeroed(1 << 20).unwrap();
        peer.read(back.region().clone(), 100_000, data.len() as u64, id, 8192).unwrap().wait().unwrap();
        assert_eq!(back.read(100_000, data.len()).unwrap(), data);
        // out of the peer's region: refused, nothing written past it
        let e = peer.write(src.region(), 0, 8192, id, (1 << 20) - 4096).unwrap().wait().unwrap_err().to_string();
        assert!(e.contains("outside region"), "{e}");
        // unregistered region: refused
        let peer = a.connect(b.local_addr()).unwrap();
        let e = peer.write(src.region(), 0, 16, RegionId(9), 0).unwrap().wait().unwrap_err().to_string();
        assert!(e.contains("not registered"), "{e}");
        let e = peer.read(back.region().clone(), 0, 16, id, 1 << 20).unwrap().wait().unwrap_err().to_string();
        assert!(e.contains("outside region"), "{e}");
        // a local range outside the local region is refused before anything is sent
        assert!(peer.write(src.region(), 1 << 20, 1, id, 0).is_err());
    }
}
