//! The crate's one error type.

use std::fmt;
use std::io;

/// Everything that can go wrong moving bytes. Each variant names the call that failed and the
/// arguments that matter.
#[derive(Debug)]
pub enum Error {
    /// A frame or handshake message broke the wire protocol (`wire::WireError` says how).
    Wire { peer: String, err: crate::wire::WireError },
    /// The peer did not prove it holds the cluster secret (or we could not prove it to the peer).
    Auth { peer: String, reason: String },
    /// A socket call failed.
    Io { op: &'static str, peer: String, err: io::Error },
    /// Nothing arrived from the peer within the bound.
    Timeout { op: &'static str, peer: String, timeout_ms: u64 },
    /// The peer closed the connection.
    Closed { peer: String, during: &'static str },
    /// A write or read names bytes outside a registered region, or a region that is not registered.
    Bounds { region: u32, offset: u64, len: u64, region_len: u64 },
    /// A region this backend cannot use (for instance device memory over TCP).
    Region(String),
    /// A claim on a region's bytes was refused (they overlap another claim, or the region has too
    /// many), or a write names bytes outside the claim it lands in.
    Claim(String),
    /// The cluster secret could not be loaded or is too short.
    Secret(String),
    /// A control message arrived that the protocol does not allow here.
    Protocol { peer: String, reason: String },
    /// The multicast could not complete.
    Multicast(String),
    /// A bounded queue is full or its other end is gone.
    Channel(String),
    /// Spawning or waiting for a worker process failed.
    Process { op: &'static str, err: io::Error },
    /// The transport the setup asks for cannot run here (`backend::select`: verbs without an
    /// active port).
    Transport(String),
    /// A verbs (RDMA) call failed.
    Verbs(crate::verbs::VerbsError),
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Wire { peer, err } => write!(f, "peer {peer}: bad message: {err}"),
            Error::Auth { peer, reason } => write!(f, "peer {peer}: authentication failed: {reason}"),
            Error::Io { op, peer, err } => write!(f, "{op} (peer {peer}): {err}"),
            Error::Timeout { op, peer, timeout_ms } => {
                write!(f, "{op} (peer {peer}): nothing arrived within {timeout_ms} ms; peer treated as dead")
            }
            Error::Closed { peer, during } => write!(f, "peer {peer} closed the connection during {during}"),
            Error::Bounds { region, offset, len, region_len } => write!(
                f,
                "bytes [{offset}, +{len}) are outside region {region} ({region_len} bytes) or the region is not registered"
            ),
            Error::Region(m) => write!(f, "region: {m}"),
            Error::Claim(m) => write!(f, "region claim: {m}"),
            Error::Secret(m) => write!(f, "cluster secret: {m}"),
            Error::Protocol { peer, reason } => write!(f, "peer {peer}: protocol error: {reason}"),
            Error::Multicast(m) => write!(f, "multicast: {m}"),
            Error::Channel(m) => write!(f, "channel: {m}"),
            Error::Process { op, err } => write!(f, "{op}: {err}"),
            Error::Transport(m) => write!(f, "transport: {m}"),
            Error::Verbs(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<crate::verbs::VerbsError> for Error {
    fn from(e: crate::verbs::VerbsError) -> Self {
        Error::Verbs(e)
    }
}

impl Error {
    /// An `io::Error` from a socket call, turned into `Timeout` or `Closed` where that is what it means.
    pub(crate) fn io(op: &'static str, peer: &str, err: io::Error, timeout_ms: u64) -> Error {
        match err.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                Error::Timeout { op, peer: peer.to_string(), timeout_ms }
            }
            io::ErrorKind::UnexpectedEof => Error::Closed { peer: peer.to_string(), during: op },
            _ => Error::Io { op, peer: peer.to_string(), err },
        }
    }
}
