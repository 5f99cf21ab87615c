//! The test bed's error type: one variant per way a call can fail, carrying what names the failure.

use std::fmt;

/// Why building, using or removing a [`Testbed`](super::Testbed) failed.
#[derive(Debug)]
pub enum TestbedError {
    /// `Testbed::new` was asked for a node count outside `1..=max`.
    NodeCount { nodes: usize, max: usize },
    /// `Testbed::new` was asked for a link rate outside `1..=max` Mbit/s.
    LinkRate { link_mbit: u32, max: u32 },
    /// A node index at or past the node count.
    NodeIndex { index: usize, nodes: usize },
    /// `base_port + index` does not fit in a port number (loopback mode gives node i port `base_port + i`).
    PortOverflow { base_port: u16, index: usize },
    /// Network namespaces cannot be used here; the text says why (not root, no `ip`, not permitted, ...).
    Unavailable { reason: String },
    /// A helper program (`ip`, `tc`, `sh`) could not be started at all.
    Spawn { command: String, errno: Option<i32>, message: String },
    /// A helper program ran and exited unsuccessfully; `status` is `None` when a signal ended it.
    Failed { command: String, status: Option<i32>, stderr: String },
    /// A helper program did not finish within its bound and was killed.
    Timeout { command: String, timeout_ms: u64 },
    /// Waiting for a helper program or reading its output failed.
    Wait { command: String, errno: Option<i32>, message: String },
}

impl fmt::Display for TestbedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TestbedError::NodeCount { nodes, max } => {
                write!(f, "testbed: node count {nodes} is outside 1..={max}")
            }
            TestbedError::LinkRate { link_mbit, max } => {
                write!(f, "testbed: link rate {link_mbit} Mbit/s is outside 1..={max}")
            }
            TestbedError::NodeIndex { index, nodes } => {
                write!(f, "testbed: node index {index} is out of range for {nodes} nodes")
            }
            TestbedError::PortOverflow { base_port, index } => {
                write!(f, "testbed: base port {base_port} + node index {index} exceeds 65535")
            }
            TestbedError::Unavailable { reason } => write!(f, "testbed: network namespaces unavailable: {reason}"),
            TestbedError::Spawn { command, errno, message } => {
                write!(f, "testbed: could not start `{command}`: {message} (errno {errno:?})")
            }
            TestbedError::Failed { command, status, stderr } => match status {
                Some(code) => write!(f, "testbed: `{command}` exited with status {code}: {}", stderr.trim()),
                None => write!(f, "testbed: `{command}` was killed by a signal: {}", stderr.trim()),
            },
            TestbedError::Timeout { command, timeout_ms } => {
                write!(f, "testbed: `{command}` did not finish within {timeout_ms} ms and was killed")
            }
            TestbedError::Wait { command, errno, message } => {
                write!(f, "testbed: waiting for `{command}` failed: {message} (errno {errno:?})")
            }
        }
    }
}

impl std::error::Error for TestbedError {}
