//! The public data types: configuration, requests, responses, the handler trait.

use super::reply::Reply;
use std::net::SocketAddr;
use std::time::Duration;

/// Which event loop drives the sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoBackend {
    /// Readiness with `epoll` (edge-triggered) and `recv`/`send` system calls.
    Epoll,
    /// Completions with `io_uring`: accept, recv and send submitted to the kernel's rings.
    IoUring,
}

impl std::str::FromStr for IoBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "epoll" => Ok(IoBackend::Epoll),
            "io-uring" | "io_uring" | "iouring" => Ok(IoBackend::IoUring),
            other => Err(format!("unknown io backend {other:?}: expected epoll or io-uring")),
        }
    }
}

impl std::fmt::Display for IoBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IoBackend::Epoll => "epoll",
            IoBackend::IoUring => "io-uring",
        })
    }
}

/// Every bound the server enforces.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Address to listen on; port 0 lets the kernel choose.
    pub addr: SocketAddr,
    pub io: IoBackend,
    /// Open connections served; past it a connection is accepted, answered 503 and closed.
    pub max_connections: usize,
    /// Request line plus headers; past it 431 and close.
    pub max_header_bytes: usize,
    /// Request body (declared or decoded); past it 413, answered before the body is read, and close.
    pub max_body_bytes: usize,
    /// Time for a whole request (head and body) to arrive once its first byte has; past it 408 and close.
    pub header_timeout: Duration,
    /// A keep-alive connection with nothing in flight is closed after this long; also the longest
    /// a client may leave a response unread (no write progress) before it is dropped.
    pub idle_timeout: Duration,
    /// Unsent bytes of one streamed response; past it the client is too slow and is dropped.
    pub max_stream_buffer_bytes: usize,
    /// Requests read ahead and queued per connection (pipelining); reading pauses past it.
    pub max_pipelined_requests: usize,
}

impl HttpConfig {
    /// Defaults for everything but the address and backend.
    pub fn new(addr: SocketAddr, io: IoBackend) -> Self {
        HttpConfig {
            addr,
            io,
            max_connections: 4096,
            max_header_bytes: 16 * 1024,
            max_body_bytes: 8 * 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_stream_buffer_bytes: 1024 * 1024,
            max_pipelined_requests: 16,
        }
    }
}

/// One parsed request, body complete.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The path of the request target, without the query.
    pub path: String,
    /// What followed `?` in the request target, if anything.
    pub query: Option<String>,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, decoded when it came chunked.
    pub body: Vec<u8>,
    pub peer: SocketAddr,
}

impl Request {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }
}

/// A whole response. `content-length`, `transfer-encoding`, `connection` and `date` are the
/// server's to write; the same names in `headers` are ignored.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, body: Vec<u8>) -> Self {
        Response { status, headers: vec![("content-type".into(), "application/json".into())], body }
    }

    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
            body: body.into(),
        }
    }
}

/// The application. Called on an event-loop thread: it must not block; slow work goes to other
/// threads, which answer through `reply` later.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Request, reply: Reply);
}
