//! The test bed's error type: one variant per way a call can fail, carrying what names the failure.

use std::fmt;
use std::path::PathBuf;

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
    /// A per-worker CPU quota that is not a finite number of cores in `min_cores..=max_cores` (`max_cores`: the
    /// CPUs this process may use; `min_cores`: the kernel's smallest quota at the test bed's period).
    WorkerCpu { cores: f64, min_cores: f64, max_cores: f64 },
    /// CPU cgroups cannot be used here; the text says why (no hierarchy with the cpu controller, not permitted).
    CgroupUnavailable { reason: String },
    /// Creating a CPU cgroup directory failed.
    CgroupCreate { path: PathBuf, errno: Option<i32>, message: String },
    /// Writing a CPU cgroup control file (quota, period, `cgroup.subtree_control`) failed.
    CgroupWrite { path: PathBuf, value: String, errno: Option<i32>, message: String },
    /// Listing the CPU cgroup hierarchy (to find stale groups) failed.
    CgroupRead { path: PathBuf, errno: Option<i32>, message: String },
    /// Removing a CPU cgroup failed; `members` processes were still in it.
    CgroupRemove { path: PathBuf, members: usize, errno: Option<i32>, message: String },
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
            TestbedError::WorkerCpu { cores, min_cores, max_cores } => write!(
                f,
                "testbed: worker CPU quota {cores} cores: need a finite number in {min_cores}..={max_cores} \
                 (the kernel's smallest quota at a 100 ms period ..= the CPUs this process may use)"
            ),
            TestbedError::CgroupUnavailable { reason } => write!(f, "testbed: CPU cgroups unavailable: {reason}"),
            TestbedError::CgroupCreate { path, errno, message } => {
                write!(f, "testbed: creating CPU cgroup {} failed: {message} (errno {errno:?})", path.display())
            }
            TestbedError::CgroupWrite { path, value, errno, message } => {
                write!(f, "testbed: writing {value:?} to {} failed: {message} (errno {errno:?})", path.display())
            }
            TestbedError::CgroupRead { path, errno, message } => {
                write!(f, "testbed: listing CPU cgroups in {} failed: {message} (errno {errno:?})", path.display())
            }
            TestbedError::CgroupRemove { path, members, errno, message } => write!(
                f,
                "testbed: removing CPU cgroup {} failed ({members} processes still in it): {message} (errno {errno:?})",
                path.display()
            ),
        }
    }
}

impl std::error::Error for TestbedError {}
