//! A cluster of worker processes on this machine: spawn them, run the coordinator, reap them.
//! `faascale bench multicast` and the multi-process tests use it.

use crate::auth::{Secret, SECRET_ENV};
use crate::coordinator::{self, CoordinatorConfig, Report};
use crate::error::{Error, Result};
use crate::tcp::Listener;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to start one worker: `exe args… --coordinator ADDR --bind IP`, the secret in its environment.
pub struct WorkerCommand {
    pub exe: PathBuf,
    pub args: Vec<String>,
    /// Log level passed as `--log LEVEL` before `args` when set (the faascale binary's global flag).
    pub log: Option<String>,
}

/// Workers still running this long after the coordinator finished are killed.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// Spawns `cfg.plan.num_nodes` workers on loopback and runs the multicast.
pub fn run(cmd: &WorkerCommand, secret: &Secret, cfg: CoordinatorConfig) -> Result<Report> {
    let ip: IpAddr = "127.0.0.1".parse().expect("an IP");
    let listener = Listener::bind(SocketAddr::new(ip, 0), secret.clone(), cfg.timeout_ms)?;
    let addr = listener.local_addr()?;
    let commands =
        (0..cfg.plan.num_nodes).map(|_| worker_command(Command::new(&cmd.exe), cmd, secret, addr, ip)).collect();
    run_commands(&listener, commands, cfg)
}

/// `base` (a program, perhaps wrapped, e.g. `ip netns exec NS program`) with the worker's arguments.
pub fn worker_command(
    mut base: Command,
    cmd: &WorkerCommand,
    secret: &Secret,
    coordinator: SocketAddr,
    bind: IpAddr,
) -> Command {
    if let Some(l) = &cmd.log {
        base.arg("--log").arg(l);
    }
    base.args(&cmd.args)
        .arg("--coordinator")
        .arg(coordinator.to_string())
        .arg("--bind")
        .arg(bind.to_string())
        .env(SECRET_ENV, std::ffi::OsStr::from_bytes_compat(secret.expose()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    base
}

/// Starts the worker `commands` and runs the multicast with the coordinator on `listener`;
/// reaps the workers (killing any still running a while after the end).
pub fn run_commands(listener: &Listener, commands: Vec<Command>, cfg: CoordinatorConfig) -> Result<Report> {
    let mut children: Vec<Child> = Vec::with_capacity(commands.len());
    for mut c in commands {
        match c.spawn() {
            Ok(ch) => children.push(ch),
            Err(e) => {
                reap(&mut children, Duration::ZERO);
                return Err(Error::Process { op: "spawn worker", err: e });
            }
        }
    }
    let report = coordinator::run(listener, cfg);
    let grace = if report.is_ok() { REAP_TIMEOUT } else { Duration::ZERO };
    reap(&mut children, grace);
    report
}

/// Binds a listener inside the network namespace `/run/netns/NAME` (the socket stays in that
/// namespace; the calling thread's namespace does not change: a helper thread enters it).
pub fn bind_in_netns(name: &str, addr: SocketAddr, secret: &Secret, timeout_ms: u64) -> Result<Listener> {
    let path = std::path::Path::new("/run/netns").join(name);
    let file = std::fs::File::open(&path).map_err(|e| Error::Process { op: "open network namespace", err: e })?;
    let secret = secret.clone();
    std::thread::scope(|s| {
        s.spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns(2) on an open namespace fd; it changes only this helper thread's
            // network namespace, and the thread ends right after binding.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if r != 0 {
                return Err(Error::Process {
                    op: "setns into the coordinator's namespace",
                    err: std::io::Error::last_os_error(),
                });
            }
            Listener::bind(addr, secret, timeout_ms)
        })
        .join()
        .unwrap_or_else(|_| Err(Error::Multicast("the thread binding in a namespace panicked".into())))
    })
}

/// Waits up to `grace` for the children to exit, then kills (SIGKILL also ends a stopped process) and reaps the rest.
fn reap(children: &mut [Child], grace: Duration) {
    let until = Instant::now() + grace;
    for c in children.iter_mut() {
        loop {
            match c.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(10)),
                _ => {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
            }
        }
    }
}

trait FromBytesCompat {
    fn from_bytes_compat(b: &[u8]) -> &std::ffi::OsStr;
}

impl FromBytesCompat for std::ffi::OsStr {
    fn from_bytes_compat(b: &[u8]) -> &std::ffi::OsStr {
        std::os::unix::ffi::OsStrExt::from_bytes(b)
    }
}
