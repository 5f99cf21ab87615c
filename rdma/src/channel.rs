//! Bounded message channels over an authenticated connection: small control messages and
//! activations of a few hundred KB (execute-while-load sends hidden states over them).
//!
//! A reader thread moves incoming messages into a bounded queue; when the queue is full the
//! thread stops reading, the socket buffer fills and TCP flow control stops the sender: memory
//! stays bounded at `capacity` messages of at most `wire::MAX_MESSAGE_BYTES` each.

use crate::error::{Error, Result};
use crate::tcp::{Conn, ConnWriter, Incoming};
use crossbeam::channel::{bounded, Receiver, RecvTimeoutError};
use std::time::Duration;

pub struct MessageChannel {
    writer: ConnWriter,
    rx: Receiver<Result<Vec<u8>>>,
}

/// Most messages a channel queues.
pub const MAX_CAPACITY: usize = 1024;

impl MessageChannel {
    /// Wraps an authenticated connection; at most `capacity` received messages wait in memory.
    pub fn new(conn: Conn, capacity: usize) -> Result<MessageChannel> {
        if capacity == 0 || capacity > MAX_CAPACITY {
            return Err(Error::Channel(format!("capacity {capacity}; need 1 ..= {MAX_CAPACITY}")));
        }
        let (tx, rx) = bounded(capacity);
        let mut r = conn.reader;
        std::thread::Builder::new()
            .name("rdma-channel".into())
            .spawn(move || loop {
                let m = match r.recv() {
                    Ok(Incoming::Message(m)) => Ok(m),
                    Ok(Incoming::Close(reason)) => {
                        Err(Error::Closed { peer: format!("{} ({reason})", r.peer()), during: "a message channel" })
                    }
                    Ok(other) => Err(Error::Protocol {
                        peer: r.peer().to_string(),
                        reason: format!("only messages are allowed on a message channel, got {other:?}"),
                    }),
                    Err(e) => Err(e),
                };
                let end = m.is_err();
                if tx.send(m).is_err() || end {
                    return;
                }
            })
            .map_err(|e| Error::Process { op: "spawn channel reader", err: e })?;
        Ok(MessageChannel { writer: conn.writer, rx })
    }

    /// Sends one message (blocks while the peer's queue and the socket are full, at most the
    /// connection's timeout).
    pub fn send(&self, bytes: &[u8]) -> Result<()> {
        self.writer.message(bytes)
    }

    /// The next message, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Vec<u8>> {
        match self.rx.recv_timeout(timeout) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => Err(Error::Timeout {
                op: "message channel receive",
                peer: self.writer.peer().to_string(),
                timeout_ms: timeout.as_millis() as u64,
            }),
            Err(RecvTimeoutError::Disconnected) => {
                Err(Error::Closed { peer: self.writer.peer().to_string(), during: "a message channel" })
            }
        }
    }

    pub fn close(&self) {
        self.writer.close("channel closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Secret;
    use crate::tcp::{connect, Listener};

    #[test]
    fn activations_cross_in_order_and_oversized_messages_are_refused() {
        let secret = Secret::new(vec![5; 32]).unwrap();
        let l = Listener::bind("127.0.0.1:0".parse().unwrap(), secret.clone(), 2000).unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || MessageChannel::new(l.accept().unwrap(), 4).unwrap());
        let a = MessageChannel::new(connect(addr, &secret, 2000).unwrap(), 4).unwrap();
        let b = t.join().unwrap();
        // more messages than the queue holds: the sender is held back by flow control, none lost
        let sender = std::thread::spawn(move || {
            for i in 0..16u8 {
                a.send(&vec![i; 300 << 10]).unwrap();
            }
            a
        });
        for i in 0..16u8 {
            let m = b.recv_timeout(Duration::from_secs(5)).unwrap();
            assert_eq!((m.len(), m[0], m[m.len() - 1]), (300 << 10, i, i));
        }
        let a = sender.join().unwrap();
        assert!(matches!(a.send(&vec![0; crate::wire::MAX_MESSAGE_BYTES + 1]), Err(Error::Channel(_))));
        assert!(matches!(b.recv_timeout(Duration::from_millis(50)), Err(Error::Timeout { .. })));
        a.close();
        assert!(matches!(b.recv_timeout(Duration::from_secs(2)), Err(Error::Closed { .. })));
    }
}
