//! Whether network namespaces, veths, a bridge and tbf can be used here, and if not, why.

use std::sync::OnceLock;

use super::cgroup::{self, CpuGroups, Hierarchy};
use super::names;
use super::run::run;

static PROBED: OnceLock<Result<(), String>> = OnceLock::new();
static PROBED_CPU: OnceLock<Result<Hierarchy, String>> = OnceLock::new();

/// The CPU cgroup hierarchy to use, probed once per process by making and removing a throw-away group with a
/// quota; otherwise why per-worker CPU quotas cannot be used here.
pub(crate) fn cpu_quota_available() -> Result<Hierarchy, String> {
    PROBED_CPU.get_or_init(probe_cpu).clone()
}

fn probe_cpu() -> Result<Hierarchy, String> {
    let hierarchy = cgroup::detect()?;
    let name = names::cgroup_parent(names::fresh_seq());
    let made = CpuGroups::create(hierarchy.clone(), &name, 1, 0.01, cgroup::MIN_QUOTA_US);
    let mut groups = made.map_err(|e| match effective_uid() {
        Ok(0) => format!("{e}"),
        Ok(uid) => format!("{e} (not root: effective uid {uid})"),
        Err(_) => format!("{e}"),
    })?;
    if let Some(e) = groups.remove().into_iter().next() {
        return Err(format!("removing the probe group failed: {e}"));
    }
    Ok(hierarchy)
}

/// Probes once per process and remembers the answer.
pub(crate) fn available() -> Result<(), String> {
    PROBED.get_or_init(probe).clone()
}

fn effective_uid() -> Result<u32, String> {
    let status =
        std::fs::read_to_string("/proc/self/status").map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    let line = status
        .lines()
        .find(|line| line.starts_with("Uid:"))
        .ok_or_else(|| "no Uid: line in /proc/self/status".to_string())?;
    // "Uid:\treal\teffective\tsaved\tfs"
    line.split_whitespace()
        .nth(2)
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| format!("cannot parse the effective uid from {line:?} in /proc/self/status"))
}

fn probe() -> Result<(), String> {
    let euid = effective_uid()?;
    if euid != 0 {
        return Err(format!("not root (effective uid {euid}); namespaces, veths and tc need root"));
    }
    run("ip", &["-V"]).map_err(|e| format!("the `ip` tool (iproute2) is missing or broken: {e}"))?;
    run("tc", &["-V"]).map_err(|e| format!("the `tc` tool (iproute2) is missing or broken: {e}"))?;
    let ns = format!("{}-probe", names::fresh_prefix());
    run("ip", &["netns", "add", &ns]).map_err(|e| format!("creating a network namespace is not permitted: {e}"))?;
    let steps: [(&str, &[&str]); 4] = [
        (
            "entering a namespace (`ip netns exec`, which needs mount namespaces) failed",
            &["netns", "exec", &ns, "ip", "link", "set", "lo", "up"],
        ),
        ("creating a veth pair failed", &["-n", &ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1"]),
        ("creating a bridge failed", &["-n", &ns, "link", "add", names::BRIDGE, "type", "bridge"]),
        (
            "adding a tbf qdisc failed (is sch_tbf available?)",
            &[
                "-n", &ns, "qdisc", "add", "dev", "v0", "root", "tbf", "rate", "100mbit", "burst", "256kb", "latency",
                "50ms",
            ],
        ),
    ];
    let mut outcome = Ok(());
    for (what, args) in steps {
        // The tbf step is a `tc` call, the others `ip`.
        let program = if args.contains(&"qdisc") { "tc" } else { "ip" };
        if let Err(e) = run(program, args) {
            outcome = Err(format!("{what}: {e}"));
            break;
        }
    }
    if let Err(e) = run("ip", &["netns", "del", &ns]) {
        return Err(format!("deleting the probe namespace {ns} failed: {e}"));
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_uid_reads() {
        // Whatever the uid is, /proc/self/status has one.
        effective_uid().unwrap();
    }

    #[test]
    fn available_is_stable() {
        assert_eq!(available(), available());
    }
}
