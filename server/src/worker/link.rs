//! A hidden-state link: the data path between two stages of a pipeline on different workers.
//!
//! One authenticated TCP connection (`rdma::tcp`: the mutual HMAC challenge, then every frame
//! MACed and sequence-numbered, `TCP_NODELAY`, keep-alive pings, a timeout on every read and
//! write) carries, as `rdma` message frames:
//!
//! - downstream: micro-batches (`pipeline::wire::encode_batch`: micro-batch id, sequence ids,
//!   positions, logits mode, hidden rows);
//! - upstream: the last stage's sampled tokens (`pipeline::wire::encode_tokens`: sequence id,
//!   token, logprob), the return path to the requester;
//! - both ways: credits (`FSCR`, a count), the flow control below.
//!
//! The link is symmetric: either end may send batches or tokens, and either may be the one that
//! connected. A stage takes batches from its upstream link and sends them on its downstream link;
//! tokens go the other way.
//!
//! Flow control, by credits: each direction has a window of `window` data messages (batches or
//! tokens). A message is in flight from `send` until the receiving side takes it with `recv`,
//! which returns a credit. `send` blocks while `window` messages are in flight, at most
//! `timeout_ms`, then fails with `LinkError::Backpressure`: a slow next stage slows the previous
//! one down, and a stuck one is reported, not waited on forever. So at most `window` micro-batches
//! are queued at a receiver (its queue holds `window` of them, refilled only as it takes them) and
//! `window` micro-batches can be in flight along a hop at once: while stage i computes micro-batch
//! m, stage i+1 computes m − 1 and the link holds the rest.
//!
//! Bounds: every message is at most `max_frame_bytes` (checked before sending and on receipt; the
//! transport itself refuses a frame header announcing more than `rdma::wire::MAX_MESSAGE_BYTES`
//! before it allocates the body, and this bound is at most that); every wait is at most
//! `timeout_ms`; a peer that dies or goes silent for `timeout_ms` ends the link with an error at
//! every blocked `send` and `recv`.

use pipeline::wire::{self, SampledToken, WireBatch};
use rdma::tcp::{Conn, ConnWriter, Incoming};
use rdma::Secret;
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Magic of a credit message (8 bytes: magic, then a u32 count).
const CREDIT_MAGIC: [u8; 4] = *b"FSCR";
/// Most data messages a direction may have in flight.
pub const MAX_WINDOW: usize = 64;
/// Smallest frame bound accepted: the largest header plus one row.
pub const MIN_FRAME_BYTES: usize = 256;
/// The largest message the transport carries.
pub const MAX_FRAME_BYTES: usize = rdma::wire::MAX_MESSAGE_BYTES;

/// Errors of a link; each names the peer where there is one.
#[derive(Debug)]
pub enum LinkError {
    /// A configuration value is out of its bounds.
    Config(String),
    /// Binding the listener failed.
    Bind { addr: SocketAddr, err: rdma::Error },
    /// Connecting (or its handshake: a wrong secret ends here) failed.
    Connect { addr: SocketAddr, err: rdma::Error },
    /// Accepting (or its handshake) failed.
    Accept(rdma::Error),
    /// Nobody connected within the timeout.
    AcceptTimeout { timeout_ms: u64 },
    /// `window` messages were in flight for `waited_ms`: the peer is not taking them.
    Backpressure { peer: String, window: usize, waited_ms: u64 },
    /// A message over the frame bound (sent or received).
    FrameTooLarge { peer: String, bytes: usize, max: usize },
    /// A message failed to encode.
    Encode(pipeline::PipelineError),
    /// A received message is malformed (the pipeline error names the field).
    Decode { peer: String, err: pipeline::PipelineError },
    /// The peer broke the link's protocol.
    Protocol { peer: String, reason: String },
    /// Sending failed (the transport's error: timeout, reset, closed).
    Send { peer: String, err: rdma::Error },
    /// The link ended: the peer closed it, died, or went silent past the timeout.
    Closed { peer: String, reason: String },
    /// `recv` waited `timeout_ms` for a message.
    RecvTimeout { peer: String, timeout_ms: u64 },
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Config(m) => write!(f, "link configuration: {m}"),
            LinkError::Bind { addr, err } => write!(f, "link bind {addr}: {err}"),
            LinkError::Connect { addr, err } => write!(f, "link connect {addr}: {err}"),
            LinkError::Accept(err) => write!(f, "link accept: {err}"),
            LinkError::AcceptTimeout { timeout_ms } => write!(f, "link accept: nobody connected in {timeout_ms} ms"),
            LinkError::Backpressure { peer, window, waited_ms } => write!(
                f,
                "link to {peer}: backpressure: {window} messages in flight (the window) for {waited_ms} ms; \
                 the peer is not taking them"
            ),
            LinkError::FrameTooLarge { peer, bytes, max } => {
                write!(f, "link to {peer}: frame of {bytes} bytes over the limit of {max}")
            }
            LinkError::Encode(e) => write!(f, "link: encoding a message: {e}"),
            LinkError::Decode { peer, err } => write!(f, "link from {peer}: {err}"),
            LinkError::Protocol { peer, reason } => write!(f, "link with {peer}: protocol error: {reason}"),
            LinkError::Send { peer, err } => write!(f, "link to {peer}: send: {err}"),
            LinkError::Closed { peer, reason } => write!(f, "link with {peer} ended: {reason}"),
            LinkError::RecvTimeout { peer, timeout_ms } => {
                write!(f, "link from {peer}: no message in {timeout_ms} ms")
            }
        }
    }
}

impl std::error::Error for LinkError {}

pub type Result<T> = std::result::Result<T, LinkError>;

/// A link's bounds.
#[derive(Clone, Copy, Debug)]
pub struct LinkConfig {
    /// Data messages in flight per direction (1 ..= `MAX_WINDOW`).
    pub window: usize,
    /// Largest message, bytes (`MIN_FRAME_BYTES` ..= `MAX_FRAME_BYTES`).
    pub max_frame_bytes: usize,
    /// Bound on every wait: connecting, a send held back by the window, a socket read or write;
    /// a peer silent this long is dead (1 ..= 3,600,000).
    pub timeout_ms: u64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig { window: 4, max_frame_bytes: MAX_FRAME_BYTES, timeout_ms: 10_000 }
    }
}

impl LinkConfig {
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_WINDOW).contains(&self.window) {
            return Err(LinkError::Config(format!("window {}; need 1 ..= {MAX_WINDOW}", self.window)));
        }
        if !(MIN_FRAME_BYTES..=MAX_FRAME_BYTES).contains(&self.max_frame_bytes) {
            return Err(LinkError::Config(format!(
                "max_frame_bytes {}; need {MIN_FRAME_BYTES} ..= {MAX_FRAME_BYTES}",
                self.max_frame_bytes
            )));
        }
        if !(1..=3_600_000).contains(&self.timeout_ms) {
            return Err(LinkError::Config(format!("timeout_ms {}; need 1 ..= 3600000", self.timeout_ms)));
        }
        Ok(())
    }
}

/// A data message on a link.
#[derive(Clone, Debug, PartialEq)]
pub enum Hop {
    /// A micro-batch of hidden rows, towards the next stage.
    Batch(WireBatch),
    /// Sampled tokens of micro-batch `micro_batch`, towards the requester.
    Tokens { micro_batch: u64, tokens: Vec<SampledToken> },
}

/// Flow-control state shared by the sender and the reader thread.
struct Flow {
    /// Data messages sent and not yet credited back.
    in_flight: usize,
    /// Data messages received and not yet taken by `recv` (at most the window).
    queued: usize,
    /// Why the link ended, once it has.
    dead: Option<String>,
}

struct Shared {
    flow: Mutex<Flow>,
    changed: Condvar,
}

impl Shared {
    fn kill(&self, reason: String) {
        let mut f = self.flow.lock().unwrap_or_else(|p| p.into_inner());
        f.dead.get_or_insert(reason);
        self.changed.notify_all();
    }
}

/// The sending half: clones share the window.
#[derive(Clone)]
pub struct LinkSender {
    writer: ConnWriter,
    shared: Arc<Shared>,
    cfg: LinkConfig,
}

/// The receiving half.
pub struct LinkReceiver {
    writer: ConnWriter,
    shared: Arc<Shared>,
    rx: Receiver<Result<Hop>>,
    cfg: LinkConfig,
}

/// Both halves of a link.
pub struct Link {
    pub tx: LinkSender,
    pub rx: LinkReceiver,
}

/// Listens for links from upstream stages.
pub struct LinkListener {
    inner: rdma::tcp::Listener,
    secret: Secret,
    cfg: LinkConfig,
}

impl LinkListener {
    pub fn bind(addr: SocketAddr, secret: Secret, cfg: LinkConfig) -> Result<LinkListener> {
        cfg.validate()?;
        let inner = rdma::tcp::Listener::bind(addr, secret.clone(), cfg.timeout_ms)
            .map_err(|err| LinkError::Bind { addr, err })?;
        Ok(LinkListener { inner, secret, cfg })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.inner.local_addr().map_err(LinkError::Accept)
    }

    /// Accepts and authenticates one link, waiting at most the configured timeout.
    pub fn accept(&self) -> Result<Link> {
        let deadline = Instant::now() + Duration::from_millis(self.cfg.timeout_ms);
        self.inner.set_nonblocking(true).map_err(LinkError::Accept)?;
        let stream = loop {
            match self.inner.accept_raw() {
                Ok(s) => break s,
                Err(rdma::Error::Io { err, .. }) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(LinkError::AcceptTimeout { timeout_ms: self.cfg.timeout_ms });
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(LinkError::Accept(e)),
            }
        };
        stream_blocking(&stream)?;
        let conn = rdma::tcp::accept_handshake(stream, &self.secret, self.cfg.timeout_ms).map_err(LinkError::Accept)?;
        Link::over(conn, self.cfg)
    }
}

fn stream_blocking(s: &TcpStream) -> Result<()> {
    s.set_nonblocking(false)
        .map_err(|e| LinkError::Accept(rdma::Error::Io { op: "set_nonblocking", peer: peer_of(s), err: e }))
}

fn peer_of(s: &TcpStream) -> String {
    s.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into())
}

impl Link {
    /// Connects to a stage's listener and authenticates (the cluster secret, both ways).
    pub fn connect(addr: SocketAddr, secret: &Secret, cfg: LinkConfig) -> Result<Link> {
        cfg.validate()?;
        let conn = rdma::tcp::connect(addr, secret, cfg.timeout_ms).map_err(|err| LinkError::Connect { addr, err })?;
        Link::over(conn, cfg)
    }

    /// Runs a link over an authenticated connection: starts its reader thread.
    pub fn over(conn: Conn, cfg: LinkConfig) -> Result<Link> {
        cfg.validate()?;
        let shared = Arc::new(Shared {
            flow: Mutex::new(Flow { in_flight: 0, queued: 0, dead: None }),
            changed: Condvar::new(),
        });
        // `window` data messages, plus one slot for the error that ends the link.
        let (qtx, rx) = sync_channel(cfg.window + 1);
        let reader = conn.reader;
        let (sh, w, peer) = (shared.clone(), conn.writer.clone(), reader.peer().to_string());
        std::thread::Builder::new()
            .name("hop-link-reader".into())
            .spawn(move || read_loop(reader, w, sh, qtx, cfg))
            .map_err(|e| LinkError::Protocol { peer, reason: format!("spawning the reader thread: {e}") })?;
        let writer = conn.writer;
        Ok(Link {
            tx: LinkSender { writer: writer.clone(), shared: shared.clone(), cfg },
            rx: LinkReceiver { writer, shared, rx, cfg },
        })
    }

    pub fn peer(&self) -> &str {
        self.tx.writer.peer()
    }

    pub fn send(&self, m: &Hop) -> Result<()> {
        self.tx.send(m)
    }

    pub fn recv(&self) -> Result<Hop> {
        self.rx.recv()
    }

    /// Ends the link, telling the peer why.
    pub fn close(&self, reason: &str) {
        self.tx.close(reason)
    }
}

/// The reader thread: credits update the window; data messages are checked and queued. Whatever
/// ends the link is told to the peer (a `Close` frame with the reason) and to this side.
fn read_loop(
    mut r: rdma::tcp::ConnReader,
    w: ConnWriter,
    shared: Arc<Shared>,
    q: SyncSender<Result<Hop>>,
    cfg: LinkConfig,
) {
    let peer = r.peer().to_string();
    let end = loop {
        let bytes = match r.recv() {
            Ok(Incoming::Message(b)) => b,
            Ok(Incoming::Close(reason)) => {
                break LinkError::Closed { peer, reason: format!("the peer closed it ({reason})") }
            }
            Ok(other) => {
                break LinkError::Protocol { peer, reason: format!("only messages travel on a link, got {other:?}") }
            }
            Err(e) => break LinkError::Closed { peer, reason: e.to_string() },
        };
        if bytes.len() > cfg.max_frame_bytes {
            break LinkError::FrameTooLarge { peer, bytes: bytes.len(), max: cfg.max_frame_bytes };
        }
        let hop = match bytes.get(..4) {
            Some(m) if m == CREDIT_MAGIC => {
                let Some(n) = (bytes.len() == 8).then(|| u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")))
                else {
                    break LinkError::Protocol {
                        peer,
                        reason: format!("a credit of {} bytes, expected 8", bytes.len()),
                    };
                };
                let mut f = shared.flow.lock().unwrap_or_else(|p| p.into_inner());
                if n as usize > f.in_flight {
                    break LinkError::Protocol {
                        peer,
                        reason: format!("{n} credits returned with {} messages in flight", f.in_flight),
                    };
                }
                f.in_flight -= n as usize;
                shared.changed.notify_all();
                continue;
            }
            Some(m) if m == wire::BATCH_MAGIC => match wire::decode_batch(&bytes) {
                Ok(b) => Hop::Batch(b),
                Err(err) => break LinkError::Decode { peer, err },
            },
            Some(m) if m == wire::TOKENS_MAGIC => match wire::decode_tokens(&bytes) {
                Ok((micro_batch, tokens)) => Hop::Tokens { micro_batch, tokens },
                Err(err) => break LinkError::Decode { peer, err },
            },
            _ => {
                let head = &bytes[..bytes.len().min(4)];
                break LinkError::Protocol { peer, reason: format!("unknown message (starts {head:?})") };
            }
        };
        {
            let mut f = shared.flow.lock().unwrap_or_else(|p| p.into_inner());
            if f.queued >= cfg.window {
                break LinkError::Protocol {
                    peer,
                    reason: format!("more than the window of {} messages sent without credit", cfg.window),
                };
            }
            f.queued += 1;
        }
        match q.try_send(Ok(hop)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => unreachable!("the queue holds the window plus one, and `queued` bounds it"),
            Err(TrySendError::Disconnected(_)) => return,
        }
    };
    shared.kill(end.to_string());
    w.close(&end.to_string());
    // The queue keeps one slot for this (it holds at most `window` data messages).
    let _ = q.try_send(Err(end));
}

impl LinkSender {
    pub fn peer(&self) -> &str {
        self.writer.peer()
    }

    /// Sends one data message. Blocks while `window` messages are in flight, at most the timeout
    /// (then `Backpressure`); fails at once if the link has ended.
    pub fn send(&self, m: &Hop) -> Result<()> {
        let bytes = match m {
            Hop::Batch(b) => wire::encode_batch(b),
            Hop::Tokens { micro_batch, tokens } => wire::encode_tokens(*micro_batch, tokens),
        }
        .map_err(LinkError::Encode)?;
        if bytes.len() > self.cfg.max_frame_bytes {
            return Err(LinkError::FrameTooLarge {
                peer: self.peer().into(),
                bytes: bytes.len(),
                max: self.cfg.max_frame_bytes,
            });
        }
        self.take_credit()?;
        self.writer.message(&bytes).map_err(|err| {
            self.shared.kill(format!("send failed: {err}"));
            LinkError::Send { peer: self.peer().into(), err }
        })
    }

    fn take_credit(&self) -> Result<()> {
        let start = Instant::now();
        let limit = Duration::from_millis(self.cfg.timeout_ms);
        let mut f = self.shared.flow.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(reason) = &f.dead {
                return Err(LinkError::Closed { peer: self.peer().into(), reason: reason.clone() });
            }
            if f.in_flight < self.cfg.window {
                f.in_flight += 1;
                return Ok(());
            }
            let waited = start.elapsed();
            if waited >= limit {
                return Err(LinkError::Backpressure {
                    peer: self.peer().into(),
                    window: self.cfg.window,
                    waited_ms: waited.as_millis() as u64,
                });
            }
            f = self.shared.changed.wait_timeout(f, limit - waited).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Data messages sent and not yet taken by the peer.
    pub fn in_flight(&self) -> usize {
        self.shared.flow.lock().unwrap_or_else(|p| p.into_inner()).in_flight
    }

    pub fn close(&self, reason: &str) {
        self.shared.kill(format!("closed here ({reason})"));
        self.writer.close(reason);
    }
}

impl LinkReceiver {
    pub fn peer(&self) -> &str {
        self.writer.peer()
    }

    /// The next data message, waiting at most the link's timeout.
    pub fn recv(&self) -> Result<Hop> {
        self.recv_timeout(Duration::from_millis(self.cfg.timeout_ms))
    }

    /// The next data message, waiting at most `timeout`; taking it returns a credit to the peer.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Hop> {
        let m = match self.rx.recv_timeout(timeout) {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => return Err(e),
            Err(RecvTimeoutError::Timeout) => {
                if let Some(reason) = self.shared.flow.lock().unwrap_or_else(|p| p.into_inner()).dead.clone() {
                    return Err(LinkError::Closed { peer: self.peer().into(), reason });
                }
                return Err(LinkError::RecvTimeout {
                    peer: self.peer().into(),
                    timeout_ms: timeout.as_millis() as u64,
                });
            }
            Err(RecvTimeoutError::Disconnected) => {
                let reason = self.shared.flow.lock().unwrap_or_else(|p| p.into_inner()).dead.clone();
                return Err(LinkError::Closed { peer: self.peer().into(), reason: reason.unwrap_or_default() });
            }
        };
        let dead = {
            let mut f = self.shared.flow.lock().unwrap_or_else(|p| p.into_inner());
            f.queued = f.queued.saturating_sub(1);
            f.dead.is_some()
        };
        // A message that arrived whole is delivered even if the link has ended since; the credit
        // goes back only on a live link, and a failure to send it ends the link, which the next
        // `send` or `recv` reports.
        if !dead {
            let mut credit = [0u8; 8];
            credit[..4].copy_from_slice(&CREDIT_MAGIC);
            credit[4..].copy_from_slice(&1u32.to_le_bytes());
            if let Err(err) = self.writer.message(&credit) {
                self.shared.kill(format!("sending a credit failed: {err}"));
            }
        }
        Ok(m)
    }
}

impl Drop for LinkReceiver {
    fn drop(&mut self) {
        // The reader thread leaves once the socket is shut; the sender half sees `Closed`.
        self.shared.kill("the receiving half was dropped".into());
        self.writer.close("link dropped");
    }
}
