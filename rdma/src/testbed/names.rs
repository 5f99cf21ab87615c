//! Names and addresses of a test bed, shared with `scripts/netns.sh`.
//!
//! A test bed with prefix `P` owns the namespaces `P-sw` (the switch: bridge `br0` and one veth end `v<i>` per
//! node) and `P-n<i>` (node i: the other veth end `eth0`, address `10.77.0.<i+1>/24`). Every interface lives
//! inside a namespace of the test bed, so deleting the namespaces deletes the bridge and the veths too, and the
//! root namespace is never touched.
//!
//! Prefixes that name their owner process have the shape `fs<pid>-` (the script's `run`) or `fs<pid>t<seq>-`
//! (this crate); [`stale_owner`] reads the pid back so namespaces left behind by a dead owner can be removed.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

/// Bridge interface inside the switch namespace.
pub(crate) const BRIDGE: &str = "br0";
/// Node-side veth end, inside each node namespace.
pub(crate) const NODE_DEV: &str = "eth0";
/// Subnet length of the node addresses.
pub(crate) const SUBNET_LEN: u8 = 24;

static NEXT_SEQ: AtomicU32 = AtomicU32::new(0);

/// A sequence number unique within this process.
pub(crate) fn fresh_seq() -> u32 {
    NEXT_SEQ.fetch_add(1, Ordering::Relaxed)
}

/// A prefix unique to this process and call: `fs<pid>t<seq>` (`t` for "testbed").
pub(crate) fn fresh_prefix() -> String {
    prefix_for(fresh_seq())
}

/// The namespace prefix for sequence number `seq` of this process.
pub(crate) fn prefix_for(seq: u32) -> String {
    format!("fs{}t{}", std::process::id(), seq)
}

/// The CPU cgroup parent of a test bed with sequence number `seq` of this process: `faascale-<pid>-<seq>`.
pub(crate) fn cgroup_parent(seq: u32) -> String {
    format!("{CGROUP_PREFIX}{}-{seq}", std::process::id())
}

/// Node i's CPU cgroup inside the parent.
pub(crate) fn cgroup_node(index: usize) -> String {
    format!("worker-{index}")
}

/// What every test-bed cgroup parent's name starts with.
pub(crate) const CGROUP_PREFIX: &str = "faascale-";

/// The owner pid of a cgroup parent named `faascale-<pid>-<seq>`; `None` for any other name.
pub(crate) fn cgroup_owner(name: &str) -> Option<u32> {
    let (pid, seq) = name.strip_prefix(CGROUP_PREFIX)?.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(seq) {
        return None;
    }
    pid.parse().ok()
}

/// The switch namespace's name.
pub(crate) fn switch_ns(prefix: &str) -> String {
    format!("{prefix}-sw")
}

/// Node i's namespace name.
pub(crate) fn node_ns(prefix: &str, index: usize) -> String {
    format!("{prefix}-n{index}")
}

/// The switch-side veth end of node i (at most 3 characters for 64 nodes; interface names are limited to 15).
pub(crate) fn switch_dev(index: usize) -> String {
    format!("v{index}")
}

/// Node i's address: 10.77.0.(i+1). Valid for i < 254; the test bed allows at most 64 nodes.
pub(crate) fn node_addr(index: usize) -> Ipv4Addr {
    debug_assert!(index < 254);
    Ipv4Addr::new(10, 77, 0, (index + 1) as u8)
}

/// The owner pid encoded in a namespace name of the shape `fs<pid>-...` or `fs<pid>t<seq>-...`, with the
/// prefix (up to, not including, the `-`); `None` for any other name (those are never touched by stale cleanup).
pub(crate) fn stale_owner(name: &str) -> Option<(u32, &str)> {
    let rest = name.strip_prefix("fs")?;
    let pid_len = rest.bytes().take_while(u8::is_ascii_digit).count();
    if pid_len == 0 || pid_len > 10 {
        return None;
    }
    let pid: u32 = rest[..pid_len].parse().ok()?;
    let mut tail = &rest[pid_len..];
    if let Some(after_t) = tail.strip_prefix('t') {
        let seq_len = after_t.bytes().take_while(u8::is_ascii_digit).count();
        if seq_len == 0 {
            return None;
        }
        tail = &after_t[seq_len..];
    }
    if !tail.starts_with('-') || tail.len() < 2 {
        return None;
    }
    let prefix_len = name.len() - tail.len();
    Some((pid, &name[..prefix_len]))
}

/// Whether a process with this pid exists (in our pid namespace).
pub(crate) fn pid_alive(pid: u32) -> bool {
    pid != 0 && std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The namespace names in `ip netns list` output ("name" or "name (id: 3)" per line).
pub(crate) fn parse_netns_list(text: &str) -> Vec<String> {
    text.lines().filter_map(|line| line.split_whitespace().next()).map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_layout() {
        assert_eq!(switch_ns("fs12t3"), "fs12t3-sw");
        assert_eq!(node_ns("fs12t3", 7), "fs12t3-n7");
        assert_eq!(switch_dev(63), "v63");
        assert_eq!(node_addr(0), Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(node_addr(63), Ipv4Addr::new(10, 77, 0, 64));
    }

    #[test]
    fn fresh_prefixes_are_distinct_and_parseable() {
        let a = fresh_prefix();
        let b = fresh_prefix();
        assert_ne!(a, b);
        let name = node_ns(&a, 0);
        assert_eq!(stale_owner(&name), Some((std::process::id(), a.as_str())));
    }

    #[test]
    fn stale_owner_parses_only_our_shapes() {
        assert_eq!(stale_owner("fs42-n3"), Some((42, "fs42")));
        assert_eq!(stale_owner("fs42t0-sw"), Some((42, "fs42t0")));
        assert_eq!(stale_owner("fs42t-sw"), None);
        assert_eq!(stale_owner("fsu42-n0"), None);
        assert_eq!(stale_owner("fs-n0"), None);
        assert_eq!(stale_owner("fs42"), None);
        assert_eq!(stale_owner("fs42-"), None);
        assert_eq!(stale_owner("myns"), None);
        assert_eq!(stale_owner("fs99999999999-n0"), None);
    }

    #[test]
    fn cgroup_names_round_trip_and_others_are_ignored() {
        assert_eq!(cgroup_owner(&cgroup_parent(7)), Some(std::process::id()));
        assert_eq!(cgroup_node(3), "worker-3");
        assert_eq!(cgroup_owner("faascale-42-0"), Some(42));
        assert_eq!(cgroup_owner("faascale-42-"), None);
        assert_eq!(cgroup_owner("faascale-42"), None);
        assert_eq!(cgroup_owner("faascale-x-1"), None);
        assert_eq!(cgroup_owner("faascale-42-1-2"), None);
        assert_eq!(cgroup_owner("faascalex-42-1"), None);
        assert_eq!(cgroup_owner("user.slice"), None);
    }

    #[test]
    fn netns_list_parsing() {
        let text = "fs1t0-n1 (id: 2)\nfs1t0-n0 (id: 1)\nother\n\n";
        assert_eq!(parse_netns_list(text), vec!["fs1t0-n1", "fs1t0-n0", "other"]);
    }

    #[test]
    fn own_pid_is_alive() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(0));
    }
}
