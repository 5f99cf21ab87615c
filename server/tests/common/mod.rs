//! Helpers shared by the command-line tests: run the built `faascale`, read its last JSON line.

use serde_json::Value;
use std::process::{Command, Output};

/// Runs the `faascale` binary under test with `args` (2 compute threads).
pub fn faascale(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_faascale")).args(args).env("FAASCALE_THREADS", "2").output().unwrap()
}

/// The last line of standard output, parsed as JSON (the contract of every `--json` command).
pub fn last_json(out: &Output) -> Value {
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let last =
        stdout.lines().last().unwrap_or_else(|| panic!("no stdout; stderr: {}", String::from_utf8_lossy(&out.stderr)));
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {last}"))
}
