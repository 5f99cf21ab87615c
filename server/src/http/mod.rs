//! A hand-written HTTP/1.1 server on epoll or io_uring.
//!
//! One connection state machine ([`conn`]: parse → dispatch → ordered write queue) is shared by
//! both event loops ([`epoll`], [`uring`]); the loops only move bytes between sockets and it.
//! Handlers answer through a [`Reply`] from any thread; answers on one connection go out in
//! request order (pipelining). Every resource is bounded: header bytes, body bytes, connections,
//! requests queued per connection, unsent bytes of a streamed response, and the time a request
//! may take to arrive (slowloris) or a keep-alive connection may stay idle.

mod body;
mod conn;
mod date;
mod encode;
mod epoll;
mod error;
mod head;
mod reply;
mod server;
mod sys;
mod types;
mod uring;

pub use error::HttpError;
pub use reply::{Closed, Reply, StreamWriter};
pub use server::{Server, ShutdownHandle};
pub use sys::raise_fd_limit;
pub use types::{Handler, HttpConfig, IoBackend, Request, Response};
