//! The server's one error type.

use std::fmt;
use std::io;
use std::net::SocketAddr;

#[derive(Debug)]
pub enum HttpError {
    /// A bound in `HttpConfig` that cannot work (zero connections, no header room, …).
    Config(String),
    Bind {
        addr: SocketAddr,
        source: io::Error,
    },
    Listen(io::Error),
    ListenerNonblocking(io::Error),
    EventFd(io::Error),
    EpollCreate(io::Error),
    EpollCtl(io::Error),
    EpollWait(io::Error),
    /// `io_uring_setup` failed: the message names what is missing.
    UringSetup {
        source: io::Error,
        hint: &'static str,
    },
    UringSubmit(io::Error),
    GetRlimit(io::Error),
    /// The open-file limit cannot be raised to what the connection bound needs.
    FdLimit {
        needed: u64,
        soft: u64,
        hard: u64,
        source: Option<io::Error>,
    },
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Config(m) => write!(f, "invalid http configuration: {m}"),
            HttpError::Bind { addr, source } => write!(f, "cannot bind {addr}: {source}"),
            HttpError::Listen(e) => write!(f, "listen(2) failed: {e}"),
            HttpError::ListenerNonblocking(e) => write!(f, "cannot make the listener non-blocking: {e}"),
            HttpError::EventFd(e) => write!(f, "eventfd(2) failed: {e}"),
            HttpError::EpollCreate(e) => write!(f, "epoll_create1(2) failed: {e}"),
            HttpError::EpollCtl(e) => write!(f, "epoll_ctl(2) failed: {e}"),
            HttpError::EpollWait(e) => write!(f, "epoll_wait(2) failed: {e}"),
            HttpError::UringSetup { source, hint } => write!(f, "io_uring_setup(2) failed: {source} ({hint})"),
            HttpError::UringSubmit(e) => write!(f, "io_uring_enter(2) failed: {e}"),
            HttpError::GetRlimit(e) => write!(f, "getrlimit(RLIMIT_NOFILE) failed: {e}"),
            HttpError::FdLimit { needed, soft, hard, source } => {
                write!(
                    f,
                    "need {needed} open files but RLIMIT_NOFILE is {soft} (hard limit {hard}); raise it \
                     (ulimit -n, or LimitNOFILE= for a service) or lower --max-connections"
                )?;
                if let Some(e) = source {
                    write!(f, ": setrlimit(2) failed: {e}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for HttpError {}
