//! CPU quota per node: each node's processes run in their own CPU cgroup, the compute counterpart of the
//! tbf-shaped link (a node of fixed size).
//!
//! Layout: `<root>/faascale-<pid>-<seq>/worker-<i>` for node i, where `<root>` is the mount point of the
//! hierarchy that has the cpu controller, found at run time from `/proc/self/mounts`:
//! - cgroup v1 (a `cgroup` mount with the `cpu` option, e.g. `/sys/fs/cgroup/cpu`): each node group gets
//!   `cpu.cfs_period_us` = [`PERIOD_US`] and `cpu.cfs_quota_us` = cores × period;
//! - cgroup v2 (a `cgroup2` mount whose `cgroup.controllers` lists `cpu`): `+cpu` is enabled in the root's and the
//!   parent's `cgroup.subtree_control`, and each node group gets `cpu.max` = `<cores × period> <period>`.
//!
//! A process joins its node's group between fork and exec ([`join_on_exec`]: the child writes `0`, "myself", to
//! the group's `cgroup.procs` before it executes anything). This is race-free, unlike writing the child's pid
//! after `spawn` returns: the program never runs a single instruction outside the quota, and nothing it forks
//! early can escape. A failed join makes `spawn` itself fail, so no process runs unlimited by mistake.
//!
//! Removal kills the processes still in a group (a cgroup can only be removed empty), then removes the node
//! groups and the parent. Parents named for a dead owner pid are removed by [`cleanup_stale`].

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::error::TestbedError;
use super::names;

/// The CFS period set on every node group, microseconds (the kernel's default).
pub(crate) const PERIOD_US: u64 = 100_000;
/// The kernel's smallest CFS quota, microseconds: at [`PERIOD_US`], 0.01 cores.
pub(crate) const MIN_QUOTA_US: u64 = 1_000;
/// How long removing one group may wait for its killed members to leave.
const REMOVE_TIMEOUT_MS: u64 = 3_000;
const REMOVE_PAUSE_MS: u64 = 10;

/// The hierarchy that holds the cpu controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Hierarchy {
    /// cgroup v1, mounted here (`cpu.cfs_quota_us`).
    V1(PathBuf),
    /// cgroup v2 (unified), mounted here (`cpu.max`).
    V2(PathBuf),
}

impl Hierarchy {
    pub(crate) fn root(&self) -> &Path {
        match self {
            Hierarchy::V1(p) | Hierarchy::V2(p) => p,
        }
    }
}

/// One line of `/proc/self/mounts`: mount point, file system type, options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    pub(crate) path: PathBuf,
    pub(crate) fstype: String,
    pub(crate) options: Vec<String>,
}

/// Undoes the octal escapes (`\040` for a space, ...) that `/proc/mounts` uses in paths.
fn unescape_mount_path(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let value = bytes[i + 1..i + 4].iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(&out))
}

/// The mounts in `/proc/self/mounts` text ("device path fstype options dump pass" per line).
pub(crate) fn parse_mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _device = fields.next()?;
            let path = unescape_mount_path(fields.next()?);
            let fstype = fields.next()?.to_string();
            let options = fields.next()?.split(',').map(str::to_string).collect();
            Some(Mount { path, fstype, options })
        })
        .collect()
}

/// Picks the hierarchy with the cpu controller: a v1 `cgroup` mount with the `cpu` option and a
/// `cpu.cfs_quota_us` file first, else a `cgroup2` mount whose `cgroup.controllers` lists `cpu`. `read` returns a
/// file's text (None when it cannot be read). The error says what was found and what is missing.
pub(crate) fn choose(mounts: &[Mount], read: impl Fn(&Path) -> Option<String>) -> Result<Hierarchy, String> {
    let mut seen = Vec::new();
    for m in mounts.iter().filter(|m| m.fstype == "cgroup" && m.options.iter().any(|o| o == "cpu")) {
        if read(&m.path.join("cpu.cfs_quota_us")).is_some() {
            return Ok(Hierarchy::V1(m.path.clone()));
        }
        seen.push(format!(
            "the cgroup v1 cpu hierarchy at {} has no readable cpu.cfs_quota_us (kernel without CFS bandwidth control?)",
            m.path.display()
        ));
    }
    for m in mounts.iter().filter(|m| m.fstype == "cgroup2") {
        let controllers_file = m.path.join("cgroup.controllers");
        match read(&controllers_file) {
            Some(text) if text.split_whitespace().any(|c| c == "cpu") => return Ok(Hierarchy::V2(m.path.clone())),
            Some(text) => seen.push(format!(
                "the cgroup2 hierarchy at {} does not have the cpu controller (cgroup.controllers: {:?})",
                m.path.display(),
                text.trim()
            )),
            None => seen.push(format!("cannot read {}", controllers_file.display())),
        }
    }
    if seen.is_empty() {
        seen.push("no cgroup v1 hierarchy with the cpu controller and no cgroup2 hierarchy is mounted".to_string());
    }
    Err(format!(
        "no CPU cgroup controller usable for worker quotas: {}; need a cgroup v1 hierarchy with the cpu controller \
         (cpu.cfs_quota_us) or a cgroup2 hierarchy with cpu in cgroup.controllers",
        seen.join("; ")
    ))
}

/// The hierarchy with the cpu controller on this machine (see [`choose`]).
pub(crate) fn detect() -> Result<Hierarchy, String> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").map_err(|e| format!("cannot read /proc/self/mounts: {e}"))?;
    choose(&parse_mounts(&mounts), |p| std::fs::read_to_string(p).ok())
}

/// The quota for `cores` at [`PERIOD_US`], microseconds, after checking `cores` is finite, positive, at most
/// `cpus` and not under the kernel's smallest quota.
pub(crate) fn quota_us(cores: f64, cpus: usize) -> Result<u64, TestbedError> {
    let min_cores = MIN_QUOTA_US as f64 / PERIOD_US as f64;
    let max_cores = cpus as f64;
    let err = || TestbedError::WorkerCpu { cores, min_cores, max_cores };
    if !cores.is_finite() || cores <= 0.0 || cores > max_cores {
        return Err(err());
    }
    let quota = (cores * PERIOD_US as f64).round() as u64;
    if quota < MIN_QUOTA_US {
        return Err(err());
    }
    Ok(quota)
}

/// CPUs this process may use (its affinity mask and cgroup limits), at least 1.
pub(crate) fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

fn write_file(path: &Path, value: &str) -> Result<(), TestbedError> {
    // cgroup files exist once their group does: never create a regular file by mistake.
    let mut file =
        std::fs::OpenOptions::new().write(true).open(path).map_err(|e| cgroup_write_error(path, value, &e))?;
    io::Write::write_all(&mut file, value.as_bytes()).map_err(|e| cgroup_write_error(path, value, &e))
}

fn cgroup_write_error(path: &Path, value: &str, e: &io::Error) -> TestbedError {
    TestbedError::CgroupWrite {
        path: path.to_path_buf(),
        value: value.to_string(),
        errno: e.raw_os_error(),
        message: e.to_string(),
    }
}

fn make_dir(path: &Path) -> Result<(), TestbedError> {
    std::fs::create_dir(path).map_err(|e| TestbedError::CgroupCreate {
        path: path.to_path_buf(),
        errno: e.raw_os_error(),
        message: e.to_string(),
    })
}

/// Enables the cpu controller for the children of `dir` (cgroup v2), unless it already is.
fn enable_cpu_for_children(dir: &Path) -> Result<(), TestbedError> {
    let file = dir.join("cgroup.subtree_control");
    let current = std::fs::read_to_string(&file).unwrap_or_default();
    if current.split_whitespace().any(|c| c == "cpu") {
        return Ok(());
    }
    write_file(&file, "+cpu")
}

/// The node groups of one test bed. Dropping it does nothing: the owner calls [`CpuGroups::remove`].
#[derive(Debug)]
pub(crate) struct CpuGroups {
    hierarchy: Hierarchy,
    parent: PathBuf,
    parent_made: bool,
    /// Node i's group at position i (those made so far).
    nodes: Vec<PathBuf>,
    /// Node i's `cgroup.procs`, as the C string the child opens.
    procs: Vec<CString>,
    cores: f64,
}

impl CpuGroups {
    /// Makes `<root>/<name>/worker-<i>` for `nodes` nodes with `quota_us` each. On failure everything made so far
    /// is removed again.
    pub(crate) fn create(
        hierarchy: Hierarchy,
        name: &str,
        nodes: usize,
        cores: f64,
        quota_us: u64,
    ) -> Result<CpuGroups, TestbedError> {
        let parent = hierarchy.root().join(name);
        let mut groups =
            CpuGroups { hierarchy, parent, parent_made: false, nodes: Vec::new(), procs: Vec::new(), cores };
        if let Err(e) = groups.build(nodes, quota_us) {
            for again in groups.remove() {
                eprintln!("{again} (while removing CPU groups after a failed set-up)");
            }
            return Err(e);
        }
        Ok(groups)
    }

    fn build(&mut self, nodes: usize, quota_us: u64) -> Result<(), TestbedError> {
        if let Hierarchy::V2(root) = &self.hierarchy {
            enable_cpu_for_children(root)?;
        }
        make_dir(&self.parent)?;
        self.parent_made = true;
        if matches!(self.hierarchy, Hierarchy::V2(_)) {
            enable_cpu_for_children(&self.parent)?;
        }
        for i in 0..nodes {
            let dir = self.parent.join(names::cgroup_node(i));
            make_dir(&dir)?;
            self.nodes.push(dir.clone());
            match self.hierarchy {
                Hierarchy::V1(_) => {
                    write_file(&dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                    write_file(&dir.join("cpu.cfs_quota_us"), &quota_us.to_string())?;
                }
                Hierarchy::V2(_) => write_file(&dir.join("cpu.max"), &format!("{quota_us} {PERIOD_US}"))?,
            }
            let procs = dir.join("cgroup.procs");
            // Paths come from /proc/self/mounts (no NUL there) and names made here.
            let procs = CString::new(procs.as_os_str().as_bytes()).map_err(|_| TestbedError::CgroupCreate {
                path: procs.clone(),
                errno: None,
                message: "the path contains a NUL byte".to_string(),
            })?;
            self.procs.push(procs);
        }
        Ok(())
    }

    /// The parent group (`<root>/faascale-<pid>-<seq>`).
    pub(crate) fn parent(&self) -> &Path {
        &self.parent
    }

    /// Node `index`'s group.
    pub(crate) fn node(&self, index: usize) -> Option<&Path> {
        self.nodes.get(index).map(PathBuf::as_path)
    }

    /// Cores per node.
    pub(crate) fn cores(&self) -> f64 {
        self.cores
    }

    /// Makes `cmd`'s process join node `index`'s group before it executes (see the module docs).
    pub(crate) fn join_on_exec(&self, cmd: &mut Command, index: usize) {
        join_on_exec(cmd, self.procs[index].clone());
    }

    /// Kills the members of every node group, removes the groups and the parent; returns every error.
    pub(crate) fn remove(&mut self) -> Vec<TestbedError> {
        let mut errors = Vec::new();
        while let Some(dir) = self.nodes.pop() {
            if let Err(e) = remove_group(&dir) {
                errors.push(e);
            }
        }
        self.procs.clear();
        if self.parent_made {
            self.parent_made = false;
            if let Err(e) = remove_tree(&self.parent) {
                errors.push(e);
            }
        }
        errors
    }
}

/// Arranges for `cmd`'s child to write `0` (itself) to `procs` between fork and exec.
fn join_on_exec(cmd: &mut Command, procs: CString) {
    let join = move || -> io::Result<()> {
        // SAFETY: `procs` is a NUL-terminated path that lives as long as this closure; open(2) only reads it.
        let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: writes one byte from a static buffer to the descriptor opened above.
        let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
        let outcome = if written == 1 { Ok(()) } else { Err(io::Error::last_os_error()) };
        // SAFETY: closes the descriptor opened above, exactly once.
        unsafe { libc::close(fd) };
        outcome
    };
    // SAFETY: `join` runs in the child between fork and exec, where only async-signal-safe calls are allowed: it
    // calls open(2), write(2) and close(2) on a path allocated before the fork, and makes its error from errno
    // (`io::Error::last_os_error` does not allocate). It touches no lock and no state shared with other threads.
    unsafe { cmd.pre_exec(join) };
}

/// The pids listed in a group's `cgroup.procs` (empty when it cannot be read, e.g. already removed).
fn members(dir: &Path) -> Vec<libc::pid_t> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn kill_members(dir: &Path) {
    let me = std::process::id() as libc::pid_t;
    for pid in members(dir) {
        if pid > 1 && pid != me {
            // SAFETY: kill(2) with a pid read from the group's cgroup.procs and a valid signal number touches no
            // memory; a pid that has exited since gives ESRCH, which is ignored.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Kills a group's members and removes it, retrying while they exit; a group already gone is fine.
fn remove_group(dir: &Path) -> Result<(), TestbedError> {
    let deadline = Instant::now() + Duration::from_millis(REMOVE_TIMEOUT_MS);
    loop {
        kill_members(dir);
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(REMOVE_PAUSE_MS));
            }
            Err(e) => {
                return Err(TestbedError::CgroupRemove {
                    path: dir.to_path_buf(),
                    members: members(dir).len(),
                    errno: e.raw_os_error(),
                    message: e.to_string(),
                })
            }
        }
    }
}

/// Removes every child group of `dir` (killing their members), then `dir` itself.
fn remove_tree(dir: &Path) -> Result<(), TestbedError> {
    let mut first = None;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                if let Err(e) = remove_tree(&entry.path()) {
                    first.get_or_insert(e);
                }
            }
        }
    }
    if let Err(e) = remove_group(dir) {
        first.get_or_insert(e);
    }
    first.map_or(Ok(()), Err)
}

/// Removes the `faascale-<pid>-<seq>` parents under the hierarchy's root whose owner pid is dead, with their node
/// groups (killing what still runs there). Returns the paths removed. Other names and live owners are untouched.
pub(crate) fn cleanup_stale(hierarchy: &Hierarchy) -> Result<Vec<PathBuf>, TestbedError> {
    let root = hierarchy.root();
    let entries = std::fs::read_dir(root).map_err(|e| TestbedError::CgroupRead {
        path: root.to_path_buf(),
        errno: e.raw_os_error(),
        message: e.to_string(),
    })?;
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(names::cgroup_owner) else { continue };
        if names::pid_alive(pid) {
            continue;
        }
        let path = entry.path();
        remove_tree(&path)?;
        removed.push(path);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS_V1: &str = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";
    const MOUNTS_V2: &str = "\
proc /proc proc rw 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,cpuacct 0 0
";

    fn reader(files: &'static [(&'static str, &'static str)]) -> impl Fn(&Path) -> Option<String> {
        move |p| files.iter().find(|(name, _)| Path::new(name) == p).map(|(_, text)| text.to_string())
    }

    #[test]
    fn mounts_are_parsed_with_escapes() {
        let m = parse_mounts("cgroup /a\\040b cgroup rw,cpu 0 0\nshort line\n");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].path, PathBuf::from("/a b"));
        assert_eq!(m[0].options, vec!["rw", "cpu"]);
    }

    #[test]
    fn v1_cpu_is_preferred_and_cpuacct_alone_is_not_cpu() {
        let files: &'static [(&str, &str)] = &[
            ("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n"),
            ("/sys/fs/cgroup/unified/cgroup.controllers", "hugetlb\n"),
        ];
        let h = choose(&parse_mounts(MOUNTS_V1), reader(files)).unwrap();
        assert_eq!(h, Hierarchy::V1(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")));
    }

    #[test]
    fn unified_hierarchy_with_cpu_is_used() {
        let files: &'static [(&str, &str)] = &[("/sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory pids\n")];
        let h = choose(&parse_mounts(MOUNTS_V2), reader(files)).unwrap();
        assert_eq!(h, Hierarchy::V2(PathBuf::from("/sys/fs/cgroup")));
    }

    #[test]
    fn neither_is_an_error_naming_what_is_missing() {
        let files: &'static [(&str, &str)] = &[("/sys/fs/cgroup/cgroup.controllers", "memory pids\n")];
        let e = choose(&parse_mounts(MOUNTS_V2), reader(files)).unwrap_err();
        assert!(e.contains("/sys/fs/cgroup does not have the cpu controller") && e.contains("memory pids"), "{e}");
        let e = choose(&parse_mounts(MOUNTS_V1), reader(&[])).unwrap_err();
        assert!(e.contains("no readable cpu.cfs_quota_us"), "{e}");
        let e = choose(&[], reader(&[])).unwrap_err();
        assert!(e.contains("no cgroup v1 hierarchy with the cpu controller and no cgroup2"), "{e}");
    }

    #[test]
    fn quota_is_checked_and_scaled() {
        assert_eq!(quota_us(0.3, 2).unwrap(), 30_000);
        assert_eq!(quota_us(2.0, 2).unwrap(), 200_000);
        assert_eq!(quota_us(0.01, 2).unwrap(), 1_000);
        for bad in [0.0, -1.0, 2.5, 0.004, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(matches!(quota_us(bad, 2), Err(TestbedError::WorkerCpu { .. })), "{bad} accepted");
        }
    }
}
