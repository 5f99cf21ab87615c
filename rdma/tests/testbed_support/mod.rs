//! Shared by the test-bed tests: TCP flows between test-bed nodes, each node one helper process.
//!
//! The helper is the test binary itself, re-run inside the node (`Testbed::command`) with `--exact helper_node
//! --ignored` and its job in `FS_TB_*` environment variables. Each node process listens for the flows coming to
//! it and sends the flows leaving it, all at once, for a fixed time; receivers measure the rate after a warm-up
//! (so TCP slow start and tbf's initial burst do not count) and print one `FS_TB recv` line per flow.

#![allow(dead_code)] // each test binary uses a different part

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rdma::testbed::Testbed;

/// Name of the `#[ignore]` test that each test binary defines to call [`helper_main`].
pub const HELPER_TEST: &str = "helper_node";
/// Accepting the expected connections must finish within this.
const ACCEPT_TIMEOUT_MS: u64 = 10_000;
/// Connecting (retried while the receiver is not listening yet) must finish within this.
const CONNECT_TIMEOUT_MS: u64 = 10_000;
/// A stalled read or write fails after this.
const IO_TIMEOUT_MS: u64 = 5_000;
/// Write size of the senders.
const CHUNK_BYTES: usize = 256 * 1024;

/// One measured flow.
#[derive(Debug, Clone)]
pub struct FlowResult {
    pub from: usize,
    pub to: usize,
    /// Payload bytes received after the warm-up.
    pub bytes: u64,
    /// Time over which `bytes` arrived.
    pub secs: f64,
    /// Payload bytes received in all.
    pub total_bytes: u64,
}

impl FlowResult {
    /// Goodput after the warm-up, Mbit/s (10^6 bit/s, as `tc`'s `mbit`).
    pub fn mbit(&self) -> f64 {
        if self.secs > 0.0 {
            self.bytes as f64 * 8.0 / self.secs / 1e6
        } else {
            0.0
        }
    }
}

/// Whether a machine that cannot run a netns test must fail it (`FAASCALE_REQUIRE_NETNS=1`, as
/// CI sets in scripts/test.sh) instead of skipping it.
pub fn netns_required() -> bool {
    std::env::var("FAASCALE_REQUIRE_NETNS").as_deref() == Ok("1")
}

/// Skips `test` saying why, or fails it when `FAASCALE_REQUIRE_NETNS=1`.
pub fn skip_or_fail(test: &str, why: &str) {
    if netns_required() {
        panic!("{test}: {why} (FAASCALE_REQUIRE_NETNS=1: this machine must run the netns tests)");
    }
    eprintln!("SKIP {test}: {why} (set FAASCALE_REQUIRE_NETNS=1 to fail instead)");
}

/// `Some(())` when netns tests can run; otherwise prints why and returns `None` (the test then
/// skips), or panics when `FAASCALE_REQUIRE_NETNS=1`.
pub fn netns_or_skip(test: &str) -> Option<()> {
    match Testbed::available() {
        Ok(()) => Some(()),
        Err(reason) => {
            skip_or_fail(test, &format!("network namespaces unavailable: {reason}"));
            None
        }
    }
}

/// Namespaces whose names start with `<prefix>-`.
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("run ip netns list");
    assert!(out.status.success(), "ip netns list: {}", String::from_utf8_lossy(&out.stderr));
    let dash = format!("{prefix}-");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(&dash))
        .map(str::to_string)
        .collect()
}

/// Waits for `child` at most `timeout`; kills it and panics past that.
pub fn wait_bounded(child: &mut Child, timeout: Duration, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {timeout:?}; killed");
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// What one [`run_flows`] measured.
#[derive(Debug, Clone)]
pub struct FlowRun {
    /// One result per flow, in the order given.
    pub flows: Vec<FlowResult>,
    /// Per node, the aggregate inbound goodput (Mbit/s) over the window in which every flow into it was running
    /// (from the first byte plus the warm-up to the first flow's end); `None` for nodes receiving nothing. Unlike
    /// a sum of per-flow rates, which are measured over slightly different windows, this is the node's downlink
    /// usage.
    pub inbound_mbit: Vec<Option<f64>>,
}

/// Runs `flows` (pairs `from -> to`) all at once for `secs`, one helper process per node taking part. Panics on
/// any failure (these are test helpers).
pub fn run_flows(tb: &Testbed, flows: &[(usize, usize)], secs: f64, warmup_ms: u64, base_port: u16) -> FlowRun {
    let exe = std::env::current_exe().expect("current_exe");
    let mut children = Vec::new();
    for node in 0..tb.nodes() {
        let inbound = flows.iter().filter(|f| f.1 == node).count();
        let outbound: Vec<String> = flows
            .iter()
            .filter(|f| f.0 == node)
            .map(|f| tb.socket_addr(f.1, base_port).expect("socket_addr").to_string())
            .collect();
        if inbound == 0 && outbound.is_empty() {
            continue;
        }
        let mut cmd = tb.command(node, &exe);
        cmd.args(["--exact", HELPER_TEST, "--ignored", "--nocapture", "--test-threads=1"])
            .env("FS_TB_ROLE", "node")
            .env("FS_TB_INDEX", node.to_string())
            .env("FS_TB_LISTEN", tb.socket_addr(node, base_port).expect("socket_addr").to_string())
            .env("FS_TB_ACCEPT", inbound.to_string())
            .env("FS_TB_SEND_TO", outbound.join(","))
            .env("FS_TB_SECS", secs.to_string())
            .env("FS_TB_WARMUP_MS", warmup_ms.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        children.push((node, cmd.spawn().expect("spawn helper")));
    }
    let timeout = Duration::from_secs_f64(secs) + Duration::from_millis(ACCEPT_TIMEOUT_MS + IO_TIMEOUT_MS);
    let mut results = Vec::new();
    let mut inbound_mbit = vec![None; tb.nodes()];
    for (node, mut child) in children {
        let mut stdout = child.stdout.take().expect("stdout");
        // Read before waiting so a full pipe cannot block the helper; the read ends when it exits.
        let reader = thread::spawn(move || {
            let mut text = String::new();
            stdout.read_to_string(&mut text).map(|_| text)
        });
        let status = wait_bounded(&mut child, timeout, &format!("helper on node {node}"));
        let text = reader.join().expect("reader thread").expect("read helper stdout");
        assert!(status.success(), "helper on node {node} failed ({status}); stdout:\n{text}");
        for line in text.lines() {
            if let Some(at) = line.find("FS_TB inbound ") {
                let fields = parse_fields(&line[at + "FS_TB inbound ".len()..]);
                let bytes: f64 = fields("bytes").parse().expect("bytes");
                let secs: f64 = fields("secs").parse().expect("secs");
                inbound_mbit[node] = Some(if secs > 0.0 { bytes * 8.0 / secs / 1e6 } else { 0.0 });
                continue;
            }
            let Some(at) = line.find("FS_TB recv ") else { continue };
            let fields = parse_fields(&line[at + "FS_TB recv ".len()..]);
            let from: usize = fields("from").parse().expect("from");
            results.push(FlowResult {
                from,
                to: node,
                bytes: fields("bytes").parse().expect("bytes"),
                secs: fields("secs").parse().expect("secs"),
                total_bytes: fields("total").parse().expect("total"),
            });
        }
    }
    let flows = flows
        .iter()
        .map(|&(from, to)| {
            results
                .iter()
                .find(|r| r.from == from && r.to == to)
                .unwrap_or_else(|| panic!("no result for flow {from} -> {to}; got {results:?}"))
                .clone()
        })
        .collect();
    FlowRun { flows, inbound_mbit }
}

fn parse_fields(text: &str) -> impl Fn(&str) -> String + '_ {
    move |key: &str| {
        text.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
            .unwrap_or_else(|| panic!("field {key} missing in {text:?}"))
            .to_string()
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The helper process
// ---------------------------------------------------------------------------------------------------------------

fn env_var(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|e| format!("environment variable {name}: {e}"))
}

fn env_parse<T: std::str::FromStr>(name: &str) -> Result<T, String> {
    let text = env_var(name)?;
    text.parse().map_err(|_| format!("environment variable {name}={text:?} does not parse"))
}

/// Body of the helper test: does nothing unless started by [`run_flows`] (FS_TB_ROLE=node).
pub fn helper_main() -> Result<(), String> {
    if std::env::var_os("FS_TB_ROLE").is_none() {
        eprintln!("{HELPER_TEST}: nothing to do; the test-bed tests start this with FS_TB_* set");
        return Ok(());
    }
    let index: u64 = env_parse("FS_TB_INDEX")?;
    let listen: SocketAddr = env_parse("FS_TB_LISTEN")?;
    let accept: usize = env_parse("FS_TB_ACCEPT")?;
    let secs: f64 = env_parse("FS_TB_SECS")?;
    let warmup = Duration::from_millis(env_parse("FS_TB_WARMUP_MS")?);
    if !(0.0..=60.0).contains(&secs) || accept > 64 {
        return Err(format!("FS_TB_SECS={secs} or FS_TB_ACCEPT={accept} out of range"));
    }
    let targets: Vec<SocketAddr> = env_var("FS_TB_SEND_TO")?
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("bad address {s:?} in FS_TB_SEND_TO")))
        .collect::<Result<_, _>>()?;
    let listener =
        if accept > 0 { Some(TcpListener::bind(listen).map_err(|e| format!("bind {listen}: {e}"))?) } else { None };
    let senders: Vec<_> = targets
        .into_iter()
        .map(|target| thread::spawn(move || send_for(index, target, Duration::from_secs_f64(secs))))
        .collect();
    let mut receivers = Vec::new();
    let inbound = Arc::new(Inbound::new(warmup));
    if let Some(listener) = listener {
        listener.set_nonblocking(true).map_err(|e| format!("set_nonblocking: {e}"))?;
        let deadline = Instant::now() + Duration::from_millis(ACCEPT_TIMEOUT_MS);
        while receivers.len() < accept {
            match listener.accept() {
                Ok((stream, _)) => {
                    let inbound = Arc::clone(&inbound);
                    receivers.push(thread::spawn(move || receive(stream, warmup, &inbound)))
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(2))
                }
                Err(e) => return Err(format!("accept on {listen} ({} of {accept} so far): {e}", receivers.len())),
            }
        }
    }
    let mut report = String::new();
    for handle in receivers {
        let (from, bytes, secs, total) = handle.join().map_err(|_| "receiver panicked".to_string())??;
        report.push_str(&format!("\nFS_TB recv from={from} bytes={bytes} secs={secs} total={total}\n"));
    }
    if accept > 0 {
        let (bytes, secs) = inbound.window()?;
        report.push_str(&format!("\nFS_TB inbound bytes={bytes} secs={secs}\n"));
    }
    for handle in senders {
        handle.join().map_err(|_| "sender panicked".to_string())??;
    }
    print!("{report}");
    std::io::stdout().flush().map_err(|e| format!("flush stdout: {e}"))
}

fn send_for(index: u64, target: SocketAddr, duration: Duration) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_millis(CONNECT_TIMEOUT_MS);
    let mut stream = loop {
        match TcpStream::connect_timeout(&target, Duration::from_millis(IO_TIMEOUT_MS)) {
            Ok(stream) => break stream,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(format!("connect to {target}: {e}")),
        }
    };
    let io = Some(Duration::from_millis(IO_TIMEOUT_MS));
    stream.set_write_timeout(io).and_then(|_| stream.set_read_timeout(io)).map_err(|e| format!("timeouts: {e}"))?;
    stream.write_all(&index.to_le_bytes()).map_err(|e| format!("send header to {target}: {e}"))?;
    let chunk = vec![0x5au8; CHUNK_BYTES];
    let start = Instant::now();
    while start.elapsed() < duration {
        stream.write_all(&chunk).map_err(|e| format!("send to {target}: {e}"))?;
    }
    stream.shutdown(Shutdown::Write).map_err(|e| format!("shutdown to {target}: {e}"))?;
    // Wait for the receiver to close, so every byte is counted before this process exits.
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => Ok(()),
        Ok(_) => Err(format!("unexpected data from {target}")),
        Err(e) => Err(format!("waiting for {target} to close: {e}")),
    }
}

/// A node's inbound bytes over all its flows, with the window in which all of them were running.
struct Inbound {
    warmup: Duration,
    bytes: AtomicU64,
    marks: Mutex<Marks>,
}

#[derive(Default)]
struct Marks {
    /// First byte of any flow.
    first: Option<Instant>,
    /// (time, bytes so far) when the warm-up after `first` ended.
    start: Option<(Instant, u64)>,
    /// (time, bytes so far) when the first flow ended.
    end: Option<(Instant, u64)>,
}

impl Inbound {
    fn new(warmup: Duration) -> Inbound {
        Inbound { warmup, bytes: AtomicU64::new(0), marks: Mutex::new(Marks::default()) }
    }

    fn add(&self, n: u64, now: Instant) {
        let total = self.bytes.fetch_add(n, Ordering::Relaxed) + n;
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        let first = *marks.first.get_or_insert(now);
        if marks.start.is_none() && marks.end.is_none() && now.duration_since(first) >= self.warmup {
            marks.start = Some((now, total));
        }
    }

    fn flow_ended(&self, now: Instant) {
        let total = self.bytes.load(Ordering::Relaxed);
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        marks.end.get_or_insert((now, total));
    }

    /// (bytes, seconds) between the end of the warm-up and the first flow's end.
    fn window(&self) -> Result<(u64, f64), String> {
        let marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        match (marks.start, marks.end) {
            (Some((t0, b0)), Some((t1, b1))) => Ok((b1 - b0, t1.duration_since(t0).as_secs_f64())),
            _ => Err("a flow ended within the warm-up; no inbound window".to_string()),
        }
    }
}

/// Returns (sender index, bytes after warm-up, seconds after warm-up, total bytes).
fn receive(mut stream: TcpStream, warmup: Duration, inbound: &Inbound) -> Result<(u64, u64, f64, u64), String> {
    stream.set_nonblocking(false).map_err(|e| format!("set_blocking: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_millis(IO_TIMEOUT_MS))).map_err(|e| format!("timeout: {e}"))?;
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).map_err(|e| format!("read header: {e}"))?;
    let from = u64::from_le_bytes(header);
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut total: u64 = 0;
    let mut first: Option<Instant> = None;
    let mut mark: Option<(Instant, u64)> = None;
    let mut last = Instant::now();
    loop {
        let n = stream.read(&mut buf).map_err(|e| format!("read from node {from}: {e}"))?;
        let now = Instant::now();
        if n == 0 {
            inbound.flow_ended(now);
            break;
        }
        inbound.add(n as u64, now);
        total += n as u64;
        let t0 = *first.get_or_insert(now);
        if mark.is_none() && now.duration_since(t0) >= warmup {
            mark = Some((now, total));
        }
        last = now;
    }
    let (t_mark, bytes_mark) = mark.ok_or_else(|| format!("flow from node {from} ended within the warm-up"))?;
    Ok((from, total - bytes_mark, last.duration_since(t_mark).as_secs_f64(), total))
}
