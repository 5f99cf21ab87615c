//! Test bed: N nodes that talk over real links of a chosen rate, for transport tests and benchmarks.
//!
//! Two modes:
//! - **netns** (`Testbed::new(n, Some(link_mbit))`): one network namespace per node, each joined to one bridge by
//!   a veth pair. The bridge lives in a dedicated switch namespace, so the root namespace is untouched. Both ends
//!   of every veth are shaped with `tc qdisc add dev DEV root tbf rate R burst 256kb latency 50ms`, which makes
//!   each node's link a full-duplex link of rate R (MTU 1500): node i's egress is shaped on its `eth0`, its
//!   ingress on the switch's `v<i>`. Node i has address 10.77.0.(i+1)/24. Needs root; [`Testbed::available`]
//!   says why it cannot be used where it cannot.
//! - **loopback** (`Testbed::new(n, None)`): every node is 127.0.0.1 and gets its own port
//!   ([`Testbed::socket_addr`]); no namespaces, no shaping, no privileges.
//!
//! CPU quota (either mode, [`Testbed::with_options`] with `worker_cpu: Some(cores)`): every node gets its own CPU
//! cgroup, `<root>/faascale-<pid>-<seq>/worker-<i>`, with a CFS quota of `cores` × the 100 ms period (cgroup v1
//! `cpu.cfs_quota_us`, or `cpu.max` where the unified hierarchy has the cpu controller; found at run time), the
//! compute counterpart of the shaped link: each node is a node of fixed size. A process started with
//! [`Testbed::command`] joins its node's group between fork and exec, before it runs anything (see `cgroup.rs`).
//!
//! Processes run inside node i with [`Testbed::command`] (`ip netns exec`). `ip` and `tc` are run as programs
//! (not netlink), so every step can be read and repeated by hand; a failing call is an error naming the command
//! line and its stderr. `scripts/netns.sh` builds the same layout from the shell.
//!
//! Clean-up, and what it covers:
//! - [`Testbed::close`] or `Drop` (also while unwinding from a panic): kills every process left inside the
//!   namespaces, then deletes the namespaces, which deletes the veths and the bridge with them; then kills every
//!   process left in the CPU cgroups and removes the groups. `close` returns
//!   the first error; `Drop` cannot, so it prints each error to stderr and carries on with the rest.
//! - The owner process dying without unwinding (SIGINT, SIGTERM, SIGKILL, abort): a watchdog process per test
//!   bed, started before the first namespace, notices its stdin pipe closing and does the same clean-up
//!   (see `watchdog.rs`). No signal handler is installed in the owner.
//!   The watchdog removes the CPU cgroups the same way.
//! - Both owner and watchdog killed at once: the namespace and cgroup names carry the owner's pid, and every
//!   `Testbed::new` in netns mode first removes namespaces whose owner is no longer alive
//!   ([`Testbed::cleanup_stale`]); every test bed with a CPU quota first removes such cgroups
//!   ([`Testbed::cleanup_stale_cgroups`]).

mod cgroup;
mod error;
mod names;
mod probe;
mod run;
mod watchdog;

use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

pub use error::TestbedError;

use cgroup::CpuGroups;
use run::run;
use watchdog::Watchdog;

/// Serialises namespace creation and deletion inside this process: concurrent `ip netns add` calls can race on
/// the first mount of `/run/netns`.
static SETUP_LOCK: Mutex<()> = Mutex::new(());

/// A set of nodes joined by shaped links (netns mode) or sharing loopback (loopback mode). See the module docs.
#[derive(Debug)]
pub struct Testbed {
    nodes: usize,
    link_mbit: Option<u32>,
    /// Empty in loopback mode.
    prefix: String,
    /// Node namespaces, index i at position i; empty in loopback mode.
    node_namespaces: Vec<String>,
    /// Namespaces actually created so far, in creation order (switch first); what tear-down deletes.
    created: Vec<String>,
    /// Per-node CPU cgroups, when the test bed has a CPU quota.
    cpu: Option<CpuGroups>,
    watchdog: Option<Watchdog>,
}

/// How to build a [`Testbed`] beyond its node count.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TestbedOptions {
    /// `Some(M)`: netns mode, links of M Mbit/s; `None`: loopback mode.
    pub link_mbit: Option<u32>,
    /// `Some(C)`: every node's processes share a CPU quota of C cores (own cgroup per node); `None`: no quota.
    pub worker_cpu: Option<f64>,
}

impl Testbed {
    /// Most nodes one test bed may have.
    pub const MAX_NODES: usize = 64;
    /// Highest link rate, Mbit/s (100 Gbit/s).
    pub const MAX_LINK_MBIT: u32 = 100_000;
    /// tbf bucket size, as given to `tc` (kilobytes).
    pub const TBF_BURST: &'static str = "256kb";
    /// tbf queueing bound, as given to `tc`.
    pub const TBF_LATENCY: &'static str = "50ms";
    /// MTU of every veth end.
    pub const MTU_BYTES: u32 = 1500;

    /// `Ok` when netns mode can run here; otherwise why not (not root, `ip`/`tc` missing, creating namespaces,
    /// veths, bridges or tbf qdiscs not permitted), for a test to print as its skip message. Probed once per
    /// process with a throw-away namespace.
    pub fn available() -> Result<(), String> {
        probe::available()
    }

    /// Builds a test bed of `nodes` nodes (1..=[`Self::MAX_NODES`]). `Some(link_mbit)` (1..=[`Self::MAX_LINK_MBIT`])
    /// selects netns mode with links of that rate, `None` loopback mode. In netns mode, stale namespaces of dead
    /// owners are removed first (a failure there is printed, not returned), and everything made so far is removed
    /// again if a step fails. No CPU quota; see [`Testbed::with_options`].
    pub fn new(nodes: usize, link_mbit: Option<u32>) -> Result<Testbed, TestbedError> {
        Self::with_options(nodes, &TestbedOptions { link_mbit, worker_cpu: None })
    }

    /// Checks a per-worker CPU quota (finite, at least 0.01 cores, at most the CPUs this process may use) and
    /// returns its CFS quota in microseconds per 100 ms period, without touching any cgroup.
    pub fn check_worker_cpu(cores: f64) -> Result<u64, TestbedError> {
        cgroup::quota_us(cores, cgroup::cpus())
    }

    /// `Ok` when per-worker CPU quotas can be used here; otherwise why not (no cgroup hierarchy with the cpu
    /// controller, creating groups not permitted). Probed once per process with a throw-away group.
    pub fn cpu_quota_available() -> Result<(), String> {
        probe::cpu_quota_available().map(|_| ())
    }

    /// Builds a test bed as [`Testbed::new`] does, with `options.link_mbit`, and with `options.worker_cpu =
    /// Some(cores)` gives every node its own CPU cgroup with a quota of `cores` (see the module docs). Both modes
    /// can have the quota. Stale cgroups of dead owners are removed first (a failure there is printed).
    pub fn with_options(nodes: usize, options: &TestbedOptions) -> Result<Testbed, TestbedError> {
        if nodes == 0 || nodes > Self::MAX_NODES {
            return Err(TestbedError::NodeCount { nodes, max: Self::MAX_NODES });
        }
        let link_mbit = options.link_mbit;
        if let Some(rate_mbit) = link_mbit {
            if rate_mbit == 0 || rate_mbit > Self::MAX_LINK_MBIT {
                return Err(TestbedError::LinkRate { link_mbit: rate_mbit, max: Self::MAX_LINK_MBIT });
            }
        }
        let quota = options.worker_cpu.map(|cores| Self::check_worker_cpu(cores).map(|q| (cores, q))).transpose()?;
        let mut testbed = Testbed {
            nodes,
            link_mbit,
            prefix: String::new(),
            node_namespaces: Vec::new(),
            created: Vec::new(),
            cpu: None,
            watchdog: None,
        };
        if link_mbit.is_none() && quota.is_none() {
            return Ok(testbed);
        }
        if link_mbit.is_some() {
            Self::available().map_err(|reason| TestbedError::Unavailable { reason })?;
            // A left-over that cannot be removed must not stop this test bed (its names cannot collide with
            // ours); say so and go on. `cleanup_stale` itself returns the error.
            if let Err(e) = Self::cleanup_stale() {
                eprintln!("{e} (while removing stale test beds of dead owners; continuing)");
            }
        }
        let hierarchy = match quota {
            Some(_) => {
                let h = probe::cpu_quota_available().map_err(|reason| TestbedError::CgroupUnavailable { reason })?;
                if let Err(e) = cgroup::cleanup_stale(&h) {
                    eprintln!("{e} (while removing stale CPU cgroups of dead owners; continuing)");
                }
                Some(h)
            }
            None => None,
        };
        let seq = names::fresh_seq();
        let cgroup_parent = hierarchy.as_ref().map(|h| h.root().join(names::cgroup_parent(seq)));
        if link_mbit.is_some() {
            testbed.prefix = names::prefix_for(seq);
            testbed.node_namespaces = (0..nodes).map(|i| names::node_ns(&testbed.prefix, i)).collect();
        }
        // Started before anything is made, so that a death half-way through set-up is covered too.
        testbed.watchdog = Some(Watchdog::spawn(&testbed.prefix, cgroup_parent.as_deref())?);
        // On failure `testbed` is dropped at `?`, which removes what was built.
        if let Some(rate_mbit) = link_mbit {
            testbed.created.reserve(nodes + 1);
            testbed.build(rate_mbit)?;
        }
        if let (Some(h), Some((cores, quota_us))) = (hierarchy, quota) {
            testbed.cpu = Some(CpuGroups::create(h, &names::cgroup_parent(seq), nodes, cores, quota_us)?);
        }
        Ok(testbed)
    }

    fn build(&mut self, rate_mbit: u32) -> Result<(), TestbedError> {
        let _guard = SETUP_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let rate = format!("{rate_mbit}mbit");
        let mtu = Self::MTU_BYTES.to_string();
        let tbf = ["root", "tbf", "rate", rate.as_str(), "burst", Self::TBF_BURST, "latency", Self::TBF_LATENCY];
        let sw = names::switch_ns(&self.prefix);
        run("ip", &["netns", "add", &sw])?;
        self.created.push(sw.clone());
        run("ip", &["-n", &sw, "link", "add", names::BRIDGE, "type", "bridge"])?;
        run("ip", &["-n", &sw, "link", "set", names::BRIDGE, "up"])?;
        for i in 0..self.nodes {
            let ns = self.node_namespaces[i].clone();
            let dev = names::switch_dev(i);
            let cidr = format!("{}/{}", names::node_addr(i), names::SUBNET_LEN);
            run("ip", &["netns", "add", &ns])?;
            self.created.push(ns.clone());
            #[rustfmt::skip]
            run("ip", &[
                "-n", &sw, "link", "add", &dev, "mtu", &mtu, "type", "veth",
                "peer", "name", names::NODE_DEV, "netns", &ns, "mtu", &mtu,
            ])?;
            run("ip", &["-n", &sw, "link", "set", &dev, "master", names::BRIDGE, "up"])?;
            run("tc", &[&["-n", sw.as_str(), "qdisc", "add", "dev", dev.as_str()][..], &tbf[..]].concat())?;
            run("ip", &["-n", &ns, "addr", "add", &cidr, "dev", names::NODE_DEV])?;
            run("ip", &["-n", &ns, "link", "set", names::NODE_DEV, "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            run("tc", &[&["-n", ns.as_str(), "qdisc", "add", "dev", names::NODE_DEV][..], &tbf[..]].concat())?;
        }
        Ok(())
    }

    /// Number of nodes.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// Link rate in Mbit/s; `None` in loopback mode.
    pub fn link_mbit(&self) -> Option<u32> {
        self.link_mbit
    }

    /// Whether this is loopback mode.
    pub fn is_loopback(&self) -> bool {
        self.link_mbit.is_none()
    }

    /// Node `index`'s address: 10.77.0.(index+1) in netns mode, 127.0.0.1 in loopback mode.
    ///
    /// # Panics
    /// If `index >= self.nodes()` (a caller bug, like indexing a slice out of range).
    pub fn addr(&self, index: usize) -> IpAddr {
        assert!(index < self.nodes, "testbed: node index {index} out of range for {} nodes", self.nodes);
        if self.is_loopback() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V4(names::node_addr(index))
        }
    }

    /// Where node `index` should listen for a service whose nodes all use `base_port`: `(addr(index), base_port)`
    /// in netns mode, `(127.0.0.1, base_port + index)` in loopback mode so the nodes do not collide.
    pub fn socket_addr(&self, index: usize, base_port: u16) -> Result<SocketAddr, TestbedError> {
        if index >= self.nodes {
            return Err(TestbedError::NodeIndex { index, nodes: self.nodes });
        }
        let port = if self.is_loopback() {
            u16::try_from(index)
                .ok()
                .and_then(|i| base_port.checked_add(i))
                .ok_or(TestbedError::PortOverflow { base_port, index })?
        } else {
            base_port
        };
        Ok(SocketAddr::new(self.addr(index), port))
    }

    /// A command that runs `program` inside node `index`: `ip netns exec <ns> program` in netns mode, plain
    /// `program` in loopback mode. Add arguments, environment and stdio to it as to any `Command`. With a CPU quota
    /// the process joins node `index`'s cgroup between fork and exec (a `pre_exec` hook; a failed join makes
    /// `spawn` fail). Processes still running inside a namespace or a node's cgroup when
    /// the test bed is closed are killed.
    ///
    /// `program` is resolved inside the namespace by `ip netns exec` (through PATH); pass an absolute path (e.g.
    /// `std::env::current_exe()`) for a specific binary, never `/proc/self/exe`, which would name `ip` itself.
    ///
    /// # Panics
    /// If `index >= self.nodes()`.
    pub fn command(&self, index: usize, program: impl AsRef<OsStr>) -> Command {
        assert!(index < self.nodes, "testbed: node index {index} out of range for {} nodes", self.nodes);
        let mut cmd = if self.is_loopback() {
            Command::new(program)
        } else {
            let mut cmd = Command::new("ip");
            cmd.arg("netns").arg("exec").arg(&self.node_namespaces[index]).arg(program);
            cmd
        };
        if let Some(cpu) = &self.cpu {
            cpu.join_on_exec(&mut cmd, index);
        }
        cmd
    }

    /// Cores of CPU quota per node; `None` without a quota.
    pub fn worker_cpu(&self) -> Option<f64> {
        self.cpu.as_ref().map(CpuGroups::cores)
    }

    /// Node `index`'s CPU cgroup directory (`<root>/faascale-<pid>-<seq>/worker-<index>`); `None` without a quota
    /// or out of range.
    pub fn cgroup(&self, index: usize) -> Option<&Path> {
        self.cpu.as_ref().and_then(|c| c.node(index))
    }

    /// The parent of the nodes' CPU cgroups; `None` without a quota.
    pub fn cgroup_parent(&self) -> Option<&Path> {
        self.cpu.as_ref().map(CpuGroups::parent)
    }

    /// Removes the CPU cgroup parents `faascale-<pid>-<seq>` whose owner process is dead, with their node groups,
    /// killing the processes still in them. Returns the paths removed. Other groups, and those of live owners, are
    /// never touched. Errors when no hierarchy with the cpu controller is found.
    pub fn cleanup_stale_cgroups() -> Result<Vec<PathBuf>, TestbedError> {
        let h = cgroup::detect().map_err(|reason| TestbedError::CgroupUnavailable { reason })?;
        cgroup::cleanup_stale(&h)
    }

    /// Node `index`'s namespace name (`None` in loopback mode or out of range), e.g. for `ip -n NAME ...`.
    pub fn namespace(&self, index: usize) -> Option<&str> {
        self.node_namespaces.get(index).map(String::as_str)
    }

    /// The switch namespace's name (bridge `br0`, veth ends `v<i>`); `None` in loopback mode.
    pub fn switch_namespace(&self) -> Option<String> {
        (!self.is_loopback()).then(|| names::switch_ns(&self.prefix))
    }

    /// The prefix of every namespace this test bed owns (`<prefix>-sw`, `<prefix>-n<i>`); `None` in loopback mode.
    pub fn prefix(&self) -> Option<&str> {
        (!self.is_loopback()).then_some(self.prefix.as_str())
    }

    /// Removes everything now and reports the first error (the rest are still attempted).
    pub fn close(mut self) -> Result<(), TestbedError> {
        let errors = self.teardown();
        errors.into_iter().next().map_or(Ok(()), Err)
    }

    /// Kills the processes inside and deletes the namespaces (nodes first, switch last), then kills what is left in
    /// the CPU cgroups and removes them; returns every error.
    fn teardown(&mut self) -> Vec<TestbedError> {
        let mut errors = Vec::new();
        if !self.created.is_empty() {
            let _guard = SETUP_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut ids = Vec::new();
            while let Some(ns) = self.created.pop() {
                match remove_namespace(&ns) {
                    Ok(id) => ids.extend(id),
                    Err(e) => errors.push(e),
                }
            }
            kill_stragglers(&ids);
        }
        if let Some(mut cpu) = self.cpu.take() {
            errors.extend(cpu.remove());
        }
        if let Some(watchdog) = self.watchdog.take() {
            if let Err(e) = watchdog.finish() {
                errors.push(e);
            }
        }
        errors
    }

    /// Removes namespaces left by earlier test beds whose owner process is dead (names `fs<pid>-...` or
    /// `fs<pid>t<seq>-...`, see `scripts/netns.sh`), killing processes still inside them. Returns the names
    /// removed. Namespaces of other shapes, or of live owners, are never touched. Assumes this process sees the
    /// owners' pids (same pid namespace).
    pub fn cleanup_stale() -> Result<Vec<String>, TestbedError> {
        let listed = names::parse_netns_list(&run("ip", &["netns", "list"])?);
        let mut removed = Vec::new();
        let _guard = SETUP_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut ids = Vec::new();
        for ns in listed {
            let Some((pid, _prefix)) = names::stale_owner(&ns) else { continue };
            if names::pid_alive(pid) {
                continue;
            }
            match remove_namespace(&ns) {
                Ok(id) => {
                    ids.extend(id);
                    removed.push(ns);
                }
                // Another process (or the dead owner's watchdog) removed it meanwhile.
                Err(_) if !Path::new("/run/netns").join(&ns).exists() => {}
                Err(e) => {
                    kill_stragglers(&ids);
                    return Err(e);
                }
            }
        }
        kill_stragglers(&ids);
        Ok(removed)
    }
}

impl Drop for Testbed {
    /// Same as [`Testbed::close`]; errors are printed to stderr, since `Drop` cannot return them.
    fn drop(&mut self) {
        let name = self.cgroup_parent().map_or(self.prefix.clone(), |p| format!("{} {}", self.prefix, p.display()));
        for e in self.teardown() {
            eprintln!("{e} (while removing test bed {})", name.trim());
        }
    }
}

/// Rounds of [`kill_stragglers`] after namespaces are deleted, and the pause between them.
const STRAGGLER_ROUNDS: usize = 10;
const STRAGGLER_PAUSE_MS: u64 = 20;

/// Kills the processes inside namespace `ns`, then deletes it. Returns the namespace's identity
/// (device, inode) for [`kill_stragglers`]: a process started by `ip netns exec` just before can
/// enter the namespace after `ip netns pids` looked (it opened the namespace file first).
fn remove_namespace(ns: &str) -> Result<Option<(u64, u64)>, TestbedError> {
    let id = std::fs::metadata(Path::new("/run/netns").join(ns)).ok().map(|m| (m.dev(), m.ino()));
    let pids = run("ip", &["netns", "pids", ns])?;
    let pids: Vec<&str> = pids.split_whitespace().collect();
    if !pids.is_empty() {
        let mut args = vec!["-c", "kill -KILL \"$@\" 2>/dev/null; exit 0", "faascale-testbed-kill"];
        args.extend(pids);
        run("sh", &args)?;
    }
    run("ip", &["netns", "del", ns])?;
    Ok(id)
}

/// For a short while after namespaces were deleted, sends SIGKILL to every process found in one of
/// them (by its `/proc/<pid>/ns/net` identity): stragglers that entered after they were emptied.
fn kill_stragglers(ids: &[(u64, u64)]) {
    if ids.is_empty() {
        return;
    }
    for _ in 0..STRAGGLER_ROUNDS {
        let Ok(dir) = std::fs::read_dir("/proc") else { return };
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<libc::pid_t>().ok()) else { continue };
            let Ok(m) = std::fs::metadata(entry.path().join("ns/net")) else { continue };
            if ids.contains(&(m.dev(), m.ino())) {
                // SAFETY: kill(2) with a pid read from /proc and a valid signal number touches no
                // memory; a pid that has exited since gives ESRCH, which is ignored.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(STRAGGLER_PAUSE_MS));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked() {
        assert!(matches!(Testbed::new(0, None), Err(TestbedError::NodeCount { nodes: 0, max: 64 })));
        assert!(matches!(Testbed::new(65, None), Err(TestbedError::NodeCount { nodes: 65, max: 64 })));
        assert!(matches!(Testbed::new(65, Some(100)), Err(TestbedError::NodeCount { .. })));
        assert!(matches!(Testbed::new(2, Some(0)), Err(TestbedError::LinkRate { link_mbit: 0, max: 100_000 })));
        assert!(matches!(Testbed::new(2, Some(100_001)), Err(TestbedError::LinkRate { link_mbit: 100_001, .. })));
    }

    #[test]
    fn loopback_mode() {
        let tb = Testbed::new(3, None).unwrap();
        assert!(tb.is_loopback());
        assert_eq!(tb.nodes(), 3);
        assert_eq!(tb.prefix(), None);
        assert_eq!(tb.namespace(0), None);
        assert_eq!(tb.addr(2), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(tb.socket_addr(2, 7000).unwrap(), "127.0.0.1:7002".parse().unwrap());
        assert!(matches!(tb.socket_addr(3, 7000), Err(TestbedError::NodeIndex { index: 3, nodes: 3 })));
        assert!(matches!(tb.socket_addr(2, 65534), Err(TestbedError::PortOverflow { base_port: 65534, index: 2 })));
        let out = tb.command(1, "sh").arg("-c").arg("echo node").output().unwrap();
        assert_eq!(out.stdout, b"node\n");
        tb.close().unwrap();
    }

    #[test]
    #[should_panic(expected = "node index 3 out of range")]
    fn addr_out_of_range_panics() {
        let tb = Testbed::new(3, None).unwrap();
        tb.addr(3);
    }
}
