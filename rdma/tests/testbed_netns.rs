//! The netns test bed: connectivity, shaping (rate and full duplex), and clean-up on drop, panic, interrupt and
//! stale left-overs. Every test skips with a message where namespaces are not permitted (see
//! `Testbed::available`), or fails there with `FAASCALE_REQUIRE_NETNS=1`; CI runs them as root with it set.
//!
//! `measure_scale` (ignored) measures how many nodes and how much aggregate shaped traffic this machine handles:
//! `cargo test -p rdma --test testbed_netns -- --ignored --nocapture measure_scale`
//! (FS_TB_SCALE_NODES, default 9; FS_TB_SCALE_MBIT, default 1000; FS_TB_SCALE_SECS, default 3).

mod testbed_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use rdma::testbed::{Testbed, TestbedError};
use testbed_support::{namespaces_with_prefix, netns_or_skip, run_flows, skip_or_fail, wait_bounded, HELPER_TEST};

/// The netns tests run one at a time, so that the rate measurements do not share the CPU with other flows.
static MEASURE: Mutex<()> = Mutex::new(());

const RATE_MBIT: u32 = 100;
const PORT: u16 = 5201;

fn measure_lock() -> std::sync::MutexGuard<'static, ()> {
    MEASURE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
#[ignore = "helper process started by the other tests"]
fn helper_node() {
    if let Err(e) = testbed_support::helper_main() {
        eprintln!("{HELPER_TEST}: {e}");
        std::process::exit(1);
    }
}

/// Helper for `interrupted_owner_is_cleaned_up`: builds a test bed, prints its prefix, then waits to be killed.
#[test]
#[ignore = "helper process started by interrupted_owner_is_cleaned_up"]
fn helper_hold() {
    if std::env::var_os("FS_TB_HOLD").is_none() {
        eprintln!("helper_hold: nothing to do; interrupted_owner_is_cleaned_up starts this with FS_TB_HOLD set");
        return;
    }
    let tb = Testbed::new(2, Some(RATE_MBIT)).expect("helper_hold: Testbed::new");
    // A process inside the namespace, as a worker would be; the clean-up must kill it (so it is never waited for).
    #[allow(clippy::zombie_processes)]
    let _worker = tb.command(0, "sleep").arg("30").spawn().expect("spawn sleep in node 0");
    println!("\nFS_TB prefix={}", tb.prefix().unwrap());
    thread::sleep(Duration::from_secs(30));
}

/// Helper for `failed_setup_removes_what_it_built`: runs with a `tc` on PATH that fails for device v1.
#[test]
#[ignore = "helper process started by failed_setup_removes_what_it_built"]
fn helper_fail_setup() {
    if std::env::var_os("FS_TB_FAIL_SETUP").is_none() {
        eprintln!("helper_fail_setup: nothing to do; failed_setup_removes_what_it_built starts this");
        return;
    }
    match Testbed::new(3, Some(RATE_MBIT)) {
        Err(TestbedError::Failed { command, status, stderr }) => {
            assert!(command.starts_with("tc -n ") && command.contains(" dev v1 root tbf rate 100mbit"), "{command}");
            assert_eq!(status, Some(1));
            assert!(stderr.contains("fake tc refuses v1"), "{stderr}");
        }
        other => panic!("expected the fake tc failure, got {other:?}"),
    }
    let ours = format!("fs{}t", std::process::id());
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left: Vec<String> =
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with(&ours)).map(String::from).collect();
    assert!(left.is_empty(), "namespaces left after a failed set-up: {left:?}");
    println!("\nFS_TB setup-failure-cleaned");
}

#[test]
fn failed_setup_removes_what_it_built() {
    let Some(()) = netns_or_skip("failed_setup_removes_what_it_built") else { return };
    let _serial = measure_lock();
    let dir = std::env::temp_dir().join(format!("faascale-testbed-fake-tc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let real_tc = ["/usr/sbin/tc", "/sbin/tc", "/usr/bin/tc"].into_iter().find(|p| std::path::Path::new(p).exists());
    let Some(real_tc) = real_tc else {
        skip_or_fail("failed_setup_removes_what_it_built", "tc is not in /usr/sbin, /sbin or /usr/bin");
        return;
    };
    let fake = dir.join("tc");
    let script = format!(
        "#!/bin/sh\ncase \" $* \" in *\" dev v1 \"*) echo 'fake tc refuses v1' >&2; exit 1;; esac\nexec {real_tc} \"$@\"\n"
    );
    std::fs::write(&fake, script).unwrap();
    let mut perms = std::fs::metadata(&fake).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&fake, perms).unwrap();
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper_fail_setup", "--ignored", "--nocapture", "--test-threads=1"])
        .env("FS_TB_FAIL_SETUP", "1")
        .env("PATH", path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("FS_TB setup-failure-cleaned"),
        "helper_fail_setup failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ping_and_tcp_between_all_nodes() {
    let Some(()) = netns_or_skip("ping_and_tcp_between_all_nodes") else { return };
    let _serial = measure_lock();
    let tb = Testbed::new(3, Some(RATE_MBIT)).unwrap();
    assert_eq!(tb.addr(0).to_string(), "10.77.0.1");
    assert_eq!(tb.addr(2).to_string(), "10.77.0.3");
    let have_ping = Command::new("ping").arg("-V").output().is_ok();
    if have_ping {
        for i in 0..3 {
            for j in 0..3 {
                if i == j {
                    continue;
                }
                let out = tb
                    .command(i, "ping")
                    .args(["-c", "1", "-W", "2", "-n", &tb.addr(j).to_string()])
                    .output()
                    .expect("run ping");
                assert!(out.status.success(), "ping {i} -> {j} failed: {}", String::from_utf8_lossy(&out.stdout));
            }
        }
    } else {
        eprintln!("ping_and_tcp_between_all_nodes: no `ping` here (apt install iputils-ping); checking TCP only");
    }
    // Every node sends to every other at once, briefly: 6 TCP flows.
    let flows: Vec<(usize, usize)> =
        (0..3).flat_map(|i| (0..3).filter(move |&j| j != i).map(move |j| (i, j))).collect();
    for r in run_flows(&tb, &flows, 0.3, 0, PORT).flows {
        assert!(r.total_bytes > 0, "no bytes on flow {} -> {}", r.from, r.to);
    }
    // Nothing was created in the root namespace: no root interface is a veth whose peer lies in the test bed
    // (`ip link` would name the peer's namespace, `link-netns <prefix>-...`).
    let root_links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let root_links = String::from_utf8_lossy(&root_links.stdout);
    assert!(!root_links.contains(tb.prefix().unwrap()), "test bed interface in the root namespace: {root_links}");
    tb.close().unwrap();
}

#[test]
fn tcp_rate_matches_the_shaped_rate() {
    let Some(()) = netns_or_skip("tcp_rate_matches_the_shaped_rate") else { return };
    let _serial = measure_lock();
    let tb = Testbed::new(3, Some(RATE_MBIT)).unwrap();
    let r = &run_flows(&tb, &[(0, 1)], 2.5, 500, PORT).flows[0];
    let ratio = r.mbit() / RATE_MBIT as f64;
    eprintln!("one flow 0 -> 1 at {RATE_MBIT} Mbit/s: {:.1} Mbit/s goodput ({ratio:.3} of the rate)", r.mbit());
    assert!((0.8..=1.05).contains(&ratio), "measured {:.1} Mbit/s on a {RATE_MBIT} Mbit/s link", r.mbit());
}

#[test]
fn full_duplex_both_directions_near_the_rate() {
    let Some(()) = netns_or_skip("full_duplex_both_directions_near_the_rate") else { return };
    let _serial = measure_lock();
    let tb = Testbed::new(2, Some(RATE_MBIT)).unwrap();
    let results = run_flows(&tb, &[(0, 1), (1, 0)], 2.5, 500, PORT).flows;
    for r in &results {
        let ratio = r.mbit() / RATE_MBIT as f64;
        eprintln!("duplex flow {} -> {}: {:.1} Mbit/s ({ratio:.3} of the rate)", r.from, r.to, r.mbit());
        assert!((0.8..=1.05).contains(&ratio), "flow {} -> {}: {:.1} Mbit/s", r.from, r.to, r.mbit());
    }
}

#[test]
fn two_flows_into_one_node_share_its_link() {
    // Node 2's downlink is the bottleneck: 0 -> 2 and 1 -> 2 together get about R, not 2R.
    let Some(()) = netns_or_skip("two_flows_into_one_node_share_its_link") else { return };
    let _serial = measure_lock();
    let tb = Testbed::new(3, Some(RATE_MBIT)).unwrap();
    let run = run_flows(&tb, &[(0, 2), (1, 2)], 2.0, 500, PORT);
    let inbound = run.inbound_mbit[2].expect("node 2 received");
    let (a, b) = (run.flows[0].mbit(), run.flows[1].mbit());
    eprintln!("two flows into node 2: {inbound:.1} Mbit/s together ({a:.1} and {b:.1} each)");
    let ratio = inbound / RATE_MBIT as f64;
    assert!((0.8..=1.05).contains(&ratio), "aggregate into one node {inbound:.1} Mbit/s on a {RATE_MBIT} Mbit/s link");
    assert!(a > 0.0 && b > 0.0, "a flow starved: {a:.1} and {b:.1} Mbit/s");
}

#[test]
fn drop_removes_everything_and_kills_workers() {
    let Some(()) = netns_or_skip("drop_removes_everything_and_kills_workers") else { return };
    let _serial = measure_lock();
    let tb = Testbed::new(3, Some(RATE_MBIT)).unwrap();
    let prefix = tb.prefix().unwrap().to_string();
    assert_eq!(namespaces_with_prefix(&prefix).len(), 4, "3 nodes and the switch");
    let sw = tb.switch_namespace().unwrap();
    let links = Command::new("ip").args(["-n", &sw, "-o", "link"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(links.contains("br0") && links.contains("v0@") && links.contains("v2@"), "{links}");
    let qdisc = Command::new("tc").args(["-n", tb.namespace(1).unwrap(), "qdisc", "show", "dev", "eth0"]).output();
    let qdisc = String::from_utf8_lossy(&qdisc.unwrap().stdout).into_owned();
    assert!(qdisc.contains("tbf") && qdisc.contains("rate 100Mbit"), "{qdisc}");
    let mut worker = tb.command(2, "sleep").arg("30").spawn().unwrap();
    drop(tb);
    assert_eq!(namespaces_with_prefix(&prefix), Vec::<String>::new());
    wait_bounded(&mut worker, Duration::from_secs(2), "the worker left inside node 2");
}

#[test]
fn panic_unwinding_removes_everything() {
    let Some(()) = netns_or_skip("panic_unwinding_removes_everything") else { return };
    let _serial = measure_lock();
    let (tx, rx) = std::sync::mpsc::channel();
    let joined = thread::spawn(move || {
        let tb = Testbed::new(2, Some(RATE_MBIT)).unwrap();
        tx.send(tb.prefix().unwrap().to_string()).unwrap();
        panic!("deliberate panic with a live test bed");
    })
    .join();
    assert!(joined.is_err());
    let prefix = rx.recv().unwrap();
    assert_eq!(namespaces_with_prefix(&prefix), Vec::<String>::new());
}

#[test]
fn interrupted_owner_is_cleaned_up() {
    let Some(()) = netns_or_skip("interrupted_owner_is_cleaned_up") else { return };
    let _serial = measure_lock();
    let exe = std::env::current_exe().unwrap();
    for signal in ["INT", "TERM", "KILL"] {
        let mut child = Command::new(&exe)
            .args(["--exact", "helper_hold", "--ignored", "--nocapture", "--test-threads=1"])
            .env("FS_TB_HOLD", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let prefix = loop {
            let line = lines.next().expect("helper_hold ended without printing its prefix").unwrap();
            if let Some(at) = line.find("FS_TB prefix=") {
                break line[at + "FS_TB prefix=".len()..].trim().to_string();
            }
        };
        assert_eq!(namespaces_with_prefix(&prefix).len(), 3);
        let kill = Command::new("sh").args(["-c", &format!("kill -{signal} {}", child.id())]).status().unwrap();
        assert!(kill.success());
        let status = wait_bounded(&mut child, Duration::from_secs(5), "helper_hold after the signal");
        assert!(!status.success(), "SIG{signal} should end helper_hold");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !namespaces_with_prefix(&prefix).is_empty() {
            assert!(
                Instant::now() < deadline,
                "SIG{signal}: {:?} still there after 5 s",
                namespaces_with_prefix(&prefix)
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn stale_namespaces_of_dead_owners_are_removed() {
    let Some(()) = netns_or_skip("stale_namespaces_of_dead_owners_are_removed") else { return };
    let _serial = measure_lock();
    // No pid exceeds the kernel's PID_MAX_LIMIT (4194304), so this owner is dead on every system.
    let dead = format!("fs4194399t{}-n0", std::process::id());
    // A live owner (this process) with a sequence number no Testbed here will reach.
    let live = format!("fs{}t999999-n0", std::process::id());
    let other = format!("fsu{}-n0", std::process::id());
    for ns in [&dead, &live, &other] {
        let out = Command::new("ip").args(["netns", "add", ns]).output().unwrap();
        assert!(out.status.success(), "ip netns add {ns}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let removed = Testbed::cleanup_stale().unwrap();
    let listed_all: Vec<String> = {
        let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(String::from)
            .collect()
    };
    for ns in [&live, &other] {
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
    }
    // Another test's Testbed::new may have removed `dead` first; either way it must be gone, the others kept.
    assert!(!listed_all.contains(&dead), "stale namespace {dead} still listed; removed {removed:?}");
    assert!(listed_all.contains(&live), "namespace {live} of a live owner was removed");
    assert!(listed_all.contains(&other), "namespace {other} of another shape was removed");
}

#[test]
fn bad_arguments_are_errors() {
    assert!(matches!(Testbed::new(0, Some(RATE_MBIT)), Err(TestbedError::NodeCount { .. })));
    assert!(matches!(Testbed::new(3, Some(0)), Err(TestbedError::LinkRate { .. })));
    assert!(matches!(Testbed::new(3, Some(200_000)), Err(TestbedError::LinkRate { .. })));
    let Some(()) = netns_or_skip("bad_arguments_are_errors (netns part)") else { return };
    let _serial = measure_lock();
    let tb = Testbed::new(1, Some(RATE_MBIT)).unwrap();
    assert!(matches!(tb.socket_addr(1, PORT), Err(TestbedError::NodeIndex { index: 1, nodes: 1 })));
    assert_eq!(tb.socket_addr(0, PORT).unwrap().to_string(), "10.77.0.1:5201");
}

/// How many nodes and how much aggregate shaped traffic this machine handles. Prints figures; asserts only that
/// every flow moved data.
#[test]
#[ignore = "measurement; run with --ignored --nocapture"]
fn measure_scale() {
    let Some(()) = netns_or_skip("measure_scale") else { return };
    let _serial = measure_lock();
    let env = |name: &str, default: f64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let nodes = env("FS_TB_SCALE_NODES", 9.0) as usize;
    let mbit = env("FS_TB_SCALE_MBIT", 1000.0) as u32;
    let secs = env("FS_TB_SCALE_SECS", 3.0);
    let t = Instant::now();
    let tb = Testbed::new(nodes, Some(mbit)).unwrap();
    eprintln!("set-up of {nodes} nodes at {mbit} Mbit/s: {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    let flows_with_cpu = |flows: &[(usize, usize)]| {
        let before = cpu_jiffies();
        let run = run_flows(&tb, flows, secs, 500, PORT);
        let after = cpu_jiffies();
        let busy = (after.0 - before.0) as f64 / (after.1 - before.1).max(1) as f64;
        (run, busy)
    };
    let report = |name: &str, (run, busy): (testbed_support::FlowRun, f64)| {
        let results = &run.flows;
        let sum: f64 = results.iter().map(|r| r.mbit()).sum();
        let min = results.iter().map(|r| r.mbit()).fold(f64::INFINITY, f64::min);
        let max = results.iter().map(|r| r.mbit()).fold(0.0, f64::max);
        eprintln!(
            "{name}: {} flows, aggregate {sum:.0} Mbit/s, per flow min {min:.0} max {max:.0} Mbit/s \
             ({:.3} of the rate per link at the min); all CPUs {:.0}% busy (whole machine)",
            results.len(),
            min / mbit as f64,
            busy * 100.0
        );
        let inbound: Vec<String> = run.inbound_mbit.iter().flatten().map(|m| format!("{m:.0}")).collect();
        eprintln!("    inbound per receiving node, Mbit/s: {}", inbound.join(" "));
        for r in results {
            assert!(r.total_bytes > 0, "{name}: flow {} -> {} moved nothing", r.from, r.to);
        }
    };
    report("single flow 0 -> 1", flows_with_cpu(&[(0, 1)]));
    let fan_out: Vec<(usize, usize)> = (1..nodes).map(|j| (0, j)).collect();
    report("fan-out 0 -> all (source uplink shared)", flows_with_cpu(&fan_out));
    let ring: Vec<(usize, usize)> = (0..nodes).map(|i| (i, (i + 1) % nodes)).collect();
    report("ring i -> i+1 (every link busy both ways)", flows_with_cpu(&ring));
    let pairs: Vec<(usize, usize)> = (0..nodes / 2).map(|i| (2 * i, 2 * i + 1)).collect();
    report("disjoint pairs 2i -> 2i+1", flows_with_cpu(&pairs));
    let t = Instant::now();
    tb.close().unwrap();
    eprintln!("tear-down: {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
}

/// (busy, total) jiffies of all CPUs together, from the first line of /proc/stat.
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("read /proc/stat");
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .expect("cpu line")
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().expect("jiffies"))
        .collect();
    let total: u64 = fields.iter().sum();
    // user nice system idle iowait irq softirq steal ...: idle and iowait are not busy.
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}
