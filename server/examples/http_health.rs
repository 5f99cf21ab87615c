//! The HTTP layer alone, for benchmarks: `GET /health` answers `ok`, anything else 404.
//!
//! `http_health [--io epoll|io-uring] [--port N] [--max-connections N]` prints
//! `{"url": "http://127.0.0.1:PORT", "pid": PID}` on standard output when ready and serves until
//! killed (SIGTERM/SIGINT end it).

use server::http::{raise_fd_limit, Handler, HttpConfig, IoBackend, Reply, Request, Response, Server};
use std::sync::Arc;

struct Health;

impl Handler for Health {
    fn handle(&self, req: Request, reply: Reply) {
        if req.path == "/health" {
            reply.send(Response::text(200, "ok"));
        } else {
            reply.send(Response::text(404, "not found"));
        }
    }
}

fn main() -> Result<(), String> {
    let mut io = IoBackend::Epoll;
    let mut port = 0u16;
    let mut max_connections = 4096usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--io" => io = value()?.parse()?,
            "--port" => port = value()?.parse().map_err(|e| format!("--port: {e}"))?,
            "--max-connections" => max_connections = value()?.parse().map_err(|e| format!("--max-connections: {e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    raise_fd_limit(max_connections as u64 + 64).map_err(|e| e.to_string())?;
    let mut cfg = HttpConfig::new(([127, 0, 0, 1], port).into(), io);
    cfg.max_connections = max_connections;
    let server = Server::bind(cfg, Arc::new(Health)).map_err(|e| e.to_string())?;
    println!("{{\"url\": \"http://{}\", \"pid\": {}}}", server.local_addr(), std::process::id());
    server.run().map_err(|e| e.to_string())
}
