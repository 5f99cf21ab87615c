//! `Server`: binds, checks the configuration, and runs the chosen event loop.

use super::error::HttpError;
use super::reply::LoopShared;
use super::types::{Handler, HttpConfig, IoBackend};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

/// Connections past `max_connections` held at once while they are answered 503; more are closed
/// without an answer.
pub(crate) const REJECT_EXTRA: usize = 64;
/// The kernel's accept queue for the listener.
const LISTEN_BACKLOG: i32 = 4096;

/// What an event loop runs with.
pub(crate) struct LoopParts {
    pub listener: TcpListener,
    pub shared: Arc<LoopShared>,
    pub handler: Arc<dyn Handler>,
    pub cfg: HttpConfig,
}

pub struct Server {
    parts: LoopParts,
    local: SocketAddr,
}

/// Stops a running server from any thread.
#[derive(Clone)]
pub struct ShutdownHandle {
    shared: Arc<LoopShared>,
}

impl ShutdownHandle {
    /// Stops accepting; in-flight responses and streams get up to `drain` to finish (idle
    /// keep-alive connections close at once); then `Server::run` returns.
    pub fn shutdown(&self, drain: Duration) {
        self.shared.request_shutdown(drain);
    }
}

fn check(cfg: &HttpConfig) -> Result<(), HttpError> {
    let bad = |m: &str| Err(HttpError::Config(m.to_string()));
    if cfg.max_connections == 0 {
        return bad("max_connections must be at least 1");
    }
    if cfg.max_header_bytes < 256 {
        return bad("max_header_bytes must be at least 256");
    }
    if cfg.max_pipelined_requests == 0 {
        return bad("max_pipelined_requests must be at least 1");
    }
    if cfg.max_stream_buffer_bytes < 1024 {
        return bad("max_stream_buffer_bytes must be at least 1024");
    }
    if cfg.header_timeout.is_zero() || cfg.idle_timeout.is_zero() {
        return bad("header_timeout and idle_timeout must be above zero");
    }
    Ok(())
}

impl Server {
    /// Binds `cfg.addr` and prepares the loop (for io_uring, sets a ring up now so that a kernel
    /// without it is reported here).
    pub fn bind(cfg: HttpConfig, handler: Arc<dyn Handler>) -> Result<Server, HttpError> {
        check(&cfg)?;
        if cfg.io == IoBackend::IoUring {
            super::uring::probe()?;
        }
        let listener = TcpListener::bind(cfg.addr).map_err(|source| HttpError::Bind { addr: cfg.addr, source })?;
        super::sys::listen(&listener, LISTEN_BACKLOG)?;
        let local = listener.local_addr().map_err(|source| HttpError::Bind { addr: cfg.addr, source })?;
        let shared = Arc::new(LoopShared::new(super::sys::eventfd()?));
        Ok(Server { parts: LoopParts { listener, shared, handler, cfg }, local })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle { shared: self.parts.shared.clone() }
    }

    /// Serves on the calling thread until shutdown, then returns.
    pub fn run(self) -> Result<(), HttpError> {
        match self.parts.cfg.io {
            IoBackend::Epoll => super::epoll::run(self.parts),
            IoBackend::IoUring => super::uring::run(self.parts),
        }
    }
}
