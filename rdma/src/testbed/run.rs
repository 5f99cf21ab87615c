//! Running `ip`, `tc` and `sh` with a time bound, turning every failure into a [`TestbedError`] that names the
//! command line and carries its stderr.

use std::io::Read;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::error::TestbedError;

/// Longest time one helper call may take. `ip`/`tc` calls take milliseconds; this only stops a hang.
pub(crate) const CALL_TIMEOUT_MS: u64 = 10_000;

/// The command line as text, for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Runs `program args...`, waits at most [`CALL_TIMEOUT_MS`], and returns its stdout when it exits with status 0.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String, TestbedError> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    run_command(cmd)
}

/// Runs a prepared command (stdin closed, stdout and stderr captured) with the same bound and error mapping.
pub(crate) fn run_command(mut cmd: Command) -> Result<String, TestbedError> {
    let command = describe(&cmd);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| TestbedError::Spawn {
        command: command.clone(),
        errno: e.raw_os_error(),
        message: e.to_string(),
    })?;
    // Drain both pipes on their own threads so a chatty child can never block on a full pipe while we poll.
    let stdout_reader = child.stdout.take().map(|mut pipe| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            pipe.read_to_end(&mut bytes).map(|_| bytes)
        })
    });
    let stderr_reader = child.stderr.take().map(|mut pipe| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            pipe.read_to_end(&mut bytes).map(|_| bytes)
        })
    });
    let deadline = Instant::now() + Duration::from_millis(CALL_TIMEOUT_MS);
    let mut pause = Duration::from_micros(200);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                // Killing can only fail if it already exited; the wait below reaps it either way.
                let _ = child.kill();
                let _ = child.wait();
                return Err(TestbedError::Timeout { command, timeout_ms: CALL_TIMEOUT_MS });
            }
            Ok(None) => {
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(10));
            }
            Err(e) => {
                return Err(TestbedError::Wait { command, errno: e.raw_os_error(), message: e.to_string() });
            }
        }
    };
    let collect = |reader: Option<thread::JoinHandle<std::io::Result<Vec<u8>>>>| -> Result<String, TestbedError> {
        match reader {
            None => Ok(String::new()),
            Some(handle) => match handle.join() {
                Ok(Ok(bytes)) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
                Ok(Err(e)) => Err(TestbedError::Wait {
                    command: command.clone(),
                    errno: e.raw_os_error(),
                    message: format!("reading its output: {e}"),
                }),
                Err(_) => Err(TestbedError::Wait {
                    command: command.clone(),
                    errno: None,
                    message: "the thread reading its output panicked".to_string(),
                }),
            },
        }
    };
    let stdout = collect(stdout_reader)?;
    let stderr = collect(stderr_reader)?;
    if status.success() {
        Ok(stdout)
    } else {
        Err(TestbedError::Failed { command, status: status.code(), stderr })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_returns_stdout() {
        assert_eq!(run("sh", &["-c", "echo hello"]).unwrap(), "hello\n");
    }

    #[test]
    fn failure_names_command_status_and_stderr() {
        match run("sh", &["-c", "echo oops >&2; exit 3"]) {
            Err(TestbedError::Failed { command, status, stderr }) => {
                assert!(command.starts_with("sh -c"), "{command}");
                assert_eq!(status, Some(3));
                assert_eq!(stderr, "oops\n");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        match run("/nonexistent/faascale-no-such-program", &[]) {
            Err(TestbedError::Spawn { command, errno, .. }) => {
                assert_eq!(command, "/nonexistent/faascale-no-such-program");
                assert_eq!(errno, Some(2));
            }
            other => panic!("expected Spawn, got {other:?}"),
        }
    }
}
