//! A watchdog process that removes a test bed's namespaces and CPU cgroups when its owner dies without cleaning up.
//!
//! The owner keeps the write end of a pipe to the watchdog's stdin. A normal close writes `done` and the watchdog
//! exits without doing anything. If the owner dies in any way, including SIGINT, SIGTERM and SIGKILL, the kernel
//! closes the pipe, the watchdog reads end-of-file and deletes every namespace with the prefix, killing the
//! processes inside first, then kills the processes in the CPU cgroups and removes them (retrying for about 3 s
//! while the killed processes exit). The watchdog runs in its own process group, so a terminal's Ctrl-C, which goes to the
//! foreground group, does not kill it along with the test.
//!
//! Not covered: the watchdog itself being killed at the same time (e.g. `kill -9` of its group). Namespaces
//! left that way are removed by the next `Testbed::new` in any process ([`super::Testbed::cleanup_stale`]), since
//! their names carry the dead owner's pid.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::error::TestbedError;
use super::run::describe;

/// How long `finish` waits for the watchdog to exit after `done`.
const FINISH_TIMEOUT_MS: u64 = 2_000;

const SCRIPT: &str = r#"
prefix="$1"
cg="$2"
IFS= read -r line || line=
[ "$line" = done ] && exit 0
removed=
if [ -n "$prefix" ]; then
  for ns in $(ip netns list 2>/dev/null | cut -d' ' -f1); do
    case "$ns" in
      "$prefix"-*)
        pids=$(ip netns pids "$ns" 2>/dev/null)
        [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
        ip netns del "$ns" && removed="$removed $ns"
        ;;
    esac
  done
fi
tries=0
while [ -n "$cg" ] && [ -d "$cg" ] && [ "$tries" -lt 100 ]; do
  for g in "$cg"/*/; do
    [ -d "$g" ] || continue
    pids=$(cat "$g"cgroup.procs 2>/dev/null)
    [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
    rmdir "$g" 2>/dev/null
  done
  rmdir "$cg" 2>/dev/null && removed="$removed $cg"
  [ -d "$cg" ] && sleep 0.03
  tries=$((tries + 1))
done
[ -n "$removed" ] && echo "faascale testbed watchdog: the owner of ${prefix:-$cg} exited without cleaning up; removed:$removed" >&2
exit 0
"#;

#[derive(Debug)]
pub(crate) struct Watchdog {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Watchdog {
    /// Starts the watchdog for the namespaces `<prefix>-*` (none when `prefix` is empty) and the CPU cgroup parent
    /// `cgroup_parent`. Call before creating anything, so that a death half-way through set-up is covered too.
    pub(crate) fn spawn(prefix: &str, cgroup_parent: Option<&Path>) -> Result<Watchdog, TestbedError> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(SCRIPT).arg("faascale-testbed-watchdog").arg(prefix);
        cmd.arg(cgroup_parent.map_or_else(Default::default, |p| p.as_os_str().to_owned()));
        cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::inherit());
        cmd.process_group(0);
        let mut child = cmd.spawn().map_err(|e| TestbedError::Spawn {
            command: describe(&cmd),
            errno: e.raw_os_error(),
            message: e.to_string(),
        })?;
        let stdin = child.stdin.take();
        Ok(Watchdog { child, stdin })
    }

    /// Tells the watchdog the owner cleaned up, and reaps it. Errors are returned, not printed.
    pub(crate) fn finish(mut self) -> Result<(), TestbedError> {
        let command = "sh -c <faascale testbed watchdog>".to_string();
        if let Some(mut stdin) = self.stdin.take() {
            // If the write fails the watchdog is already gone; it is reaped below either way.
            let _ = stdin.write_all(b"done\n");
        }
        let deadline = Instant::now() + Duration::from_millis(FINISH_TIMEOUT_MS);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(TestbedError::Timeout { command, timeout_ms: FINISH_TIMEOUT_MS });
                }
                Ok(None) => thread::sleep(Duration::from_millis(1)),
                Err(e) => {
                    return Err(TestbedError::Wait { command, errno: e.raw_os_error(), message: e.to_string() });
                }
            }
        }
    }
}
