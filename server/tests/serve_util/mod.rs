//! Shared by the `serve_*` tests: starts `faascale serve` on the tiny test model (with a chat
//! template added), and speaks just enough HTTP/1.1 to check its answers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// SmolLM2-Instruct's chat template.
pub const CHAT_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Bound on anything a test waits for (generous: a loaded 2-core CI machine).
pub const PATIENCE: Duration = Duration::from_secs(120);

pub const BACKENDS: [&str; 2] = ["epoll", "io-uring"];

/// The tiny Llama fixture copied into a temporary directory, with the chat template added.
pub fn tiny_model() -> (tempfile::TempDir, PathBuf) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipeline/tests/fixtures/tiny-llama");
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("tiny-llama");
    std::fs::create_dir(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    let cfg_path = dst.join("tokenizer_config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["chat_template"] = CHAT_TEMPLATE.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    (dir, dst)
}

pub struct Serve {
    pub child: Child,
    pub addr: SocketAddr,
    pub url: String,
    pub model: String,
    _dir: Option<tempfile::TempDir>,
}

impl Serve {
    /// `faascale serve` on the tiny model with `--io io` and `extra` arguments.
    pub fn tiny(io: &str, extra: &[&str]) -> Serve {
        let (dir, model) = tiny_model();
        let mut s = Serve::start(&model, io, extra, &[]);
        s._dir = Some(dir);
        s
    }

    pub fn start(model: &Path, io: &str, extra: &[&str], env: &[(&str, &str)]) -> Serve {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_faascale"));
        cmd.args(["--log", "warn", "serve", "--port", "0", "--threads", "1", "--io", io, "--model"])
            .arg(model)
            .args(extra)
            .env_remove("FAASCALE_API_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(PATIENCE).expect("faascale serve printed no ready line");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("ready line {line:?} is not JSON: {e}"));
        assert!(line.starts_with("{\"url\": "), "{line}");
        let url = v["url"].as_str().unwrap().to_string();
        let addr: SocketAddr = url.strip_prefix("http://").unwrap().parse().unwrap();
        Serve { child, addr, url, model: v["model"].as_str().unwrap().to_string(), _dir: None }
    }

    pub fn get(&self, path: &str) -> Resp {
        request(self.addr, "GET", path, &[], b"")
    }

    pub fn post(&self, path: &str, body: &serde_json::Value) -> Resp {
        request(self.addr, "POST", path, &[], body.to_string().as_bytes())
    }

    /// A Prometheus sample's value (`name{model_name="M"}` or with more labels).
    pub fn metric(&self, key: &str) -> f64 {
        let text = self.get("/metrics").text();
        let full = format!("faascale:{key}");
        let line = text
            .lines()
            .find(|l| l.starts_with(&full) && l[full.len()..].starts_with(['{', ' ']))
            .unwrap_or_else(|| panic!("no {full} in /metrics"));
        line.rsplit_once(' ').unwrap().1.parse().unwrap()
    }

    pub fn assert_healthy(&self) {
        let r = self.get("/health");
        assert_eq!(r.status, 200, "/health: {}", r.text());
    }

    /// SIGTERM, then the exit status (bounded wait).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(t.elapsed() < PATIENCE, "faascale serve did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    /// The SSE events' data, in order (`[DONE]` included).
    pub fn events(&self) -> Vec<String> {
        self.text().split("\n\n").filter_map(|e| e.strip_prefix("data: ")).map(str::to_string).collect()
    }
    /// Asserts an OpenAI error object with this status; returns it.
    pub fn openai_error(&self, status: u16) -> serde_json::Value {
        assert_eq!(self.status, status, "{}", self.text());
        let v = self.json();
        let e = &v["error"];
        assert!(e["message"].is_string() && e["type"].is_string(), "{v}");
        assert!(e.as_object().unwrap().contains_key("param") && e.as_object().unwrap().contains_key("code"), "{v}");
        e.clone()
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, PATIENCE).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.set_write_timeout(Some(PATIENCE)).unwrap();
    s
}

/// One request on a fresh connection (`Connection: close`), the whole response read.
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut s = connect(addr);
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    read_response(&mut BufReader::new(s))
}

pub fn read_response<R: Read>(r: &mut BufReader<R>) -> Resp {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line.split_whitespace().nth(1).unwrap_or_else(|| panic!("status line {line:?}")).parse().unwrap();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap();
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or_else(|_| panic!("chunk size {size:?}"));
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = get("content-length") {
        body.resize(n.parse().unwrap(), 0);
        r.read_exact(&mut body).unwrap();
    } else {
        r.read_to_end(&mut body).unwrap();
    }
    Resp { status, headers, body }
}

/// A streamed request whose response is read event by event.
pub struct Stream {
    pub r: BufReader<TcpStream>,
    pub status: u16,
}

impl Stream {
    pub fn open(addr: SocketAddr, path: &str, body: &serde_json::Value) -> Stream {
        let mut s = connect(addr);
        let body = body.to_string();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            if h.trim_end().is_empty() {
                break;
            }
        }
        Stream { r, status }
    }

    /// The next SSE event's data (de-chunking on the way), None at the end of the body.
    pub fn next_event(&mut self) -> Option<String> {
        let mut data = String::new();
        loop {
            let mut size = String::new();
            if self.r.read_line(&mut size).ok()? == 0 {
                return None;
            }
            let n = usize::from_str_radix(size.trim(), 16).ok()?;
            let mut chunk = vec![0; n + 2];
            self.r.read_exact(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            data.push_str(std::str::from_utf8(&chunk[..n]).unwrap());
            if data.ends_with("\n\n") {
                return Some(data.trim_end().strip_prefix("data: ").unwrap_or(&data).to_string());
            }
        }
    }
}

/// Polls `f` until it holds (bounded by `PATIENCE`).
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < PATIENCE, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
