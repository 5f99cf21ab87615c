//! Shared by the `http_*` tests: a small test handler, a server on a thread, a raw HTTP client.
#![allow(dead_code)]

use server::http::{Handler, HttpConfig, HttpError, IoBackend, Reply, Request, Response, Server, ShutdownHandle};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Generous bound for "does not hang" checks on a loaded 2-core machine.
pub const HANG: Duration = Duration::from_secs(20);

/// What a streaming handler thread saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// All chunks sent and the stream finished.
    Finished { sent: usize },
    /// `send` returned Err(Closed) after `sent` chunks.
    Closed { sent: usize },
}

/// Routes: `GET /health`, `POST /echo`, `GET /delay?ms=N&tag=T` (answered from another thread),
/// `GET /stream?n=N&ms=M` (N chunks M ms apart from another thread), `GET /drop` (reply
/// dropped), `GET /panic`.
pub struct TestHandler {
    events: Mutex<Sender<StreamEvent>>,
}

fn param(req: &Request, key: &str) -> Option<u64> {
    req.query.as_deref()?.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

fn tag(req: &Request) -> String {
    req.query.as_deref().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("tag="))).unwrap_or("").to_string()
}

impl Handler for TestHandler {
    fn handle(&self, req: Request, reply: Reply) {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET" | "HEAD", "/health") => reply.send(Response::text(200, "ok")),
            ("POST", "/echo") => reply.send(Response::text(200, req.body)),
            ("GET", "/delay") => {
                let ms = param(&req, "ms").unwrap_or(0);
                let tag = tag(&req);
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(ms));
                    reply.send(Response::text(200, format!("delayed {tag}")));
                });
            }
            ("GET", "/stream") => {
                let n = param(&req, "n").unwrap_or(3) as usize;
                let ms = param(&req, "ms").unwrap_or(0);
                let events = self.events.lock().unwrap().clone();
                std::thread::spawn(move || {
                    let w = reply.stream(200, vec![("content-type".into(), "text/event-stream".into())]);
                    for i in 0..n {
                        if w.send(format!("data: {i}\n\n").as_bytes()).is_err() {
                            assert!(w.is_closed());
                            let _ = events.send(StreamEvent::Closed { sent: i });
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(ms));
                    }
                    w.finish();
                    let _ = events.send(StreamEvent::Finished { sent: n });
                });
            }
            ("GET", "/drop") => drop(reply),
            ("GET", "/panic") => panic!("test handler asked to panic"),
            _ => reply.send(Response::text(404, "not found")),
        }
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub handle: ShutdownHandle,
    pub events: Receiver<StreamEvent>,
    join: Option<JoinHandle<Result<(), HttpError>>>,
}

impl TestServer {
    pub fn start(io: IoBackend, tweak: impl FnOnce(&mut HttpConfig)) -> TestServer {
        let mut cfg = HttpConfig::new("127.0.0.1:0".parse().unwrap(), io);
        tweak(&mut cfg);
        let (tx, events) = channel();
        let server = Server::bind(cfg, Arc::new(TestHandler { events: Mutex::new(tx) })).expect("bind");
        let addr = server.local_addr();
        let handle = server.shutdown_handle();
        let join = Some(std::thread::spawn(move || server.run()));
        TestServer { addr, handle, events, join }
    }

    /// Asks for shutdown and waits (bounded) for `run` to return.
    pub fn stop(&mut self, drain: Duration) -> Result<(), HttpError> {
        self.handle.shutdown(drain);
        let join = self.join.take().expect("stopped twice");
        let deadline = std::time::Instant::now() + HANG;
        while !join.is_finished() {
            assert!(std::time::Instant::now() < deadline, "run() did not return after shutdown");
            std::thread::sleep(Duration::from_millis(10));
        }
        join.join().expect("server thread panicked")
    }

    pub fn connect(&self) -> TcpStream {
        connect(self.addr)
    }

    /// `GET /health` on a fresh connection answers 200.
    pub fn assert_healthy(&self) {
        let mut s = self.connect();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let r = read_response(&mut BufReader::new(s)).expect("a response to /health");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if self.join.is_some() && !std::thread::panicking() {
            let _ = self.stop(Duration::ZERO);
        }
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(HANG)).unwrap();
    s.set_write_timeout(Some(HANG)).unwrap();
    s
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body came in this many chunks (0 when not chunked).
    pub chunks: usize,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Reads one response; `None` on a clean EOF before any byte.
pub fn read_response<R: Read>(r: &mut BufReader<R>) -> Option<Resp> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r.read_until(b'\n', &mut line).expect("read response head");
        if n == 0 {
            assert!(head.is_empty(), "EOF inside a response head: {:?}", String::from_utf8_lossy(&head));
            return None;
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" {
            break;
        }
    }
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut hs);
    assert!(resp.parse(&head).expect("valid response head").is_complete());
    let status = resp.code.unwrap();
    let headers: Vec<(String, String)> =
        resp.headers.iter().map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into())).collect();
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    let mut chunks = 0;
    if status == 100 {
        return read_response(r);
    }
    if let Some(len) = get("content-length") {
        body.resize(len.parse().unwrap(), 0);
        r.read_exact(&mut body).expect("read body");
    } else if get("transfer-encoding").as_deref() == Some("chunked") {
        loop {
            let mut line = String::new();
            r.read_line(&mut line).expect("chunk size");
            let size = usize::from_str_radix(line.trim_end(), 16).expect("hex chunk size");
            let mut data = vec![0; size + 2];
            r.read_exact(&mut data).expect("chunk data");
            assert_eq!(&data[size..], b"\r\n");
            if size == 0 {
                break;
            }
            chunks += 1;
            body.extend_from_slice(&data[..size]);
        }
    } else {
        r.read_to_end(&mut body).expect("body until close");
    }
    Some(Resp { status, headers, body, chunks })
}

/// Reads until the server closes (EOF or reset); panics on a timeout.
pub fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return all,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("waiting for the server to close: {e} (got {:?})", String::from_utf8_lossy(&all)),
        }
    }
}

/// The status of the first response in `bytes`.
pub fn status_of(bytes: &[u8]) -> Option<u16> {
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut hs);
    resp.parse(bytes).ok()?;
    resp.code
}

/// Runs each named test function once per backend.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod epoll {
            $( #[test] fn $name() { super::$name(server::http::IoBackend::Epoll) } )*
        }
        mod io_uring {
            $( #[test] fn $name() { super::$name(server::http::IoBackend::IoUring) } )*
        }
    };
}
