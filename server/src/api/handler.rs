//! `http::Handler` for the OpenAI API: routes, the API key, `/health`, `/metrics`,
//! `/v1/models`, and the two generation endpoints, which parse, tokenise and submit on a small
//! pool of front threads (tokenising a long prompt must not stall the event loop).

use super::error::ApiError;
use super::metrics::{Gauges, Metrics};
use super::request::{self, Endpoint, GenParams, Input, Prompt};
use super::response::{self, Meta};
use super::served::Served;
use super::sink::{self, ChunkWriter, GenSink, Responder};
use pipeline::sched::{Scheduler, SubmitError};
use server::http::{Handler, Reply, Request, Response, StreamWriter};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// Generation requests parsed at once on the front threads, plus those waiting for one.
const FRONT_QUEUE: usize = 1024;

impl Responder for Reply {
    type Stream = StreamWriter;
    fn is_closed(&self) -> bool {
        Reply::is_closed(self)
    }
    fn send(self, status: u16, headers: Vec<(String, String)>, body: Vec<u8>) {
        Reply::send(self, Response { status, headers, body })
    }
    fn stream(self, status: u16, headers: Vec<(String, String)>) -> StreamWriter {
        Reply::stream(self, status, headers)
    }
}

impl ChunkWriter for StreamWriter {
    fn send(&self, bytes: &[u8]) -> bool {
        StreamWriter::send(self, bytes).is_ok()
    }
    fn finish(self) {
        StreamWriter::finish(self)
    }
}

/// Everything that exists once the model has loaded.
pub struct Ready {
    pub served: Arc<Served>,
    pub sched: Arc<Scheduler>,
    pub metrics: Arc<Metrics>,
}

struct Job {
    endpoint: Endpoint,
    body: Vec<u8>,
    reply: Reply,
    arrival: Instant,
}

pub struct ApiHandler {
    api_key: Option<String>,
    ready: Arc<OnceLock<Ready>>,
    front: Mutex<SyncSender<Job>>,
}

impl ApiHandler {
    /// A handler that answers 503 until `set_ready`; `front_threads` parse and submit requests.
    pub fn new(api_key: Option<String>, front_threads: usize) -> Arc<Self> {
        let (tx, rx) = sync_channel::<Job>(FRONT_QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let ready: Arc<OnceLock<Ready>> = Arc::new(OnceLock::new());
        let serial = Arc::new(AtomicU64::new(0));
        for i in 0..front_threads.max(1) {
            let (rx, ready, serial) = (rx.clone(), ready.clone(), serial.clone());
            std::thread::Builder::new()
                .name(format!("api-front-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                        Ok(j) => j,
                        Err(_) => return, // the handler is gone
                    };
                    let Some(r) = ready.get() else {
                        reply_error(job.reply, &ApiError::unavailable("the model is loading"));
                        continue;
                    };
                    let n = serial.fetch_add(1, Ordering::Relaxed);
                    // A panic answers 500 (the reply is dropped unanswered) and keeps the thread.
                    let run = std::panic::AssertUnwindSafe(|| generate(r, job, n));
                    if std::panic::catch_unwind(run).is_err() {
                        log::error!("a request panicked while being parsed or submitted; answered 500");
                    }
                })
                .expect("spawning a front thread");
        }
        Arc::new(ApiHandler { api_key, ready, front: Mutex::new(tx) })
    }

    pub fn set_ready(&self, r: Ready) {
        let _ = self.ready.set(r);
    }

    fn authorised(&self, req: &Request) -> bool {
        let Some(key) = &self.api_key else { return true };
        let Some(h) = req.header("authorization") else { return false };
        let Some(given) = h.strip_prefix(b"Bearer ") else { return false };
        constant_time_eq(given.trim_ascii(), key.as_bytes())
    }
}

/// Compares without an early exit, so the time taken does not tell how much of a key matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn reply_error(reply: Reply, e: &ApiError) {
    let mut resp = Response::json(e.status, e.to_json());
    if e.status == 429 {
        resp.headers.push(("retry-after".into(), "1".into()));
    }
    reply.send(resp);
}

impl Handler for ApiHandler {
    fn handle(&self, req: Request, reply: Reply) {
        let arrival = Instant::now();
        let path = req.path.as_str();
        let method = req.method.as_str();
        let get = method == "GET" || method == "HEAD";
        match path {
            "/health" if get => match self.ready.get() {
                Some(_) => reply.send(Response::text(200, "OK\n")),
                None => reply.send(Response::text(503, "loading\n")),
            },
            "/metrics" if get => {
                let body = match self.ready.get() {
                    Some(r) => {
                        let s = r.sched.stats();
                        let kv_usage =
                            if s.kv_total_bytes > 0 { s.kv_used_bytes as f64 / s.kv_total_bytes as f64 } else { 0.0 };
                        r.metrics.render(Gauges { running: s.running, waiting: s.waiting, kv_usage })
                    }
                    None => String::new(),
                };
                let mut resp = Response::text(200, body);
                resp.headers = vec![("content-type".into(), "text/plain; version=0.0.4; charset=utf-8".into())];
                reply.send(resp);
            }
            "/health" | "/metrics" => reply_error(reply, &ApiError::method_not_allowed(method, path, "GET")),
            "/v1/models" | "/v1/completions" | "/v1/chat/completions" => {
                if !self.authorised(&req) {
                    return reply_error(reply, &ApiError::unauthorized());
                }
                let Some(r) = self.ready.get() else {
                    return reply_error(reply, &ApiError::unavailable("the model is loading"));
                };
                let endpoint = match (path, method) {
                    ("/v1/models", m) if m == "GET" || m == "HEAD" => {
                        let body = response::models(&r.served.name, r.served.created, r.served.max_seq_tokens);
                        return reply.send(Response::json(200, body));
                    }
                    ("/v1/models", _) => return reply_error(reply, &ApiError::method_not_allowed(method, path, "GET")),
                    (_, "POST") if path == "/v1/completions" => Endpoint::Completions,
                    (_, "POST") => Endpoint::Chat,
                    _ => return reply_error(reply, &ApiError::method_not_allowed(method, path, "POST")),
                };
                let job = Job { endpoint, body: req.body, reply, arrival };
                let sent = self.front.lock().unwrap_or_else(|e| e.into_inner()).try_send(job);
                match sent {
                    Ok(()) => {}
                    Err(TrySendError::Full(j)) => reply_error(j.reply, &ApiError::queue_full(FRONT_QUEUE)),
                    Err(TrySendError::Disconnected(j)) => reply_error(j.reply, &ApiError::unavailable("shutting down")),
                }
            }
            _ if path.starts_with("/v1/") && !self.authorised(&req) => reply_error(reply, &ApiError::unauthorized()),
            _ => reply_error(reply, &ApiError::not_found(method, path)),
        }
    }
}

/// Parses, tokenises and submits one generation request (on a front thread).
fn generate(r: &Ready, job: Job, serial: u64) {
    let Job { endpoint, body, reply, arrival } = job;
    let p = match request::parse(endpoint, &body) {
        Ok(p) => p,
        Err(e) => return reply_error(reply, &e),
    };
    if p.model != r.served.name {
        return reply_error(reply, &ApiError::model_not_found(&p.model));
    }
    let prompt = match r.served.prompt_tokens(&p) {
        Ok(t) => t,
        Err(e) => return reply_error(reply, &e),
    };
    let echo = echo_text(r, &p, &prompt);
    let seq = match r.served.seq_request(&p, prompt) {
        Ok(s) => s,
        Err(e) => return reply_error(reply, &e),
    };
    if reply.is_closed() {
        return; // the client has gone already
    }
    let meta = Meta::new(endpoint, serial, &r.served.name, p.include_usage);
    let slot: sink::ReplySlot<Reply> = Arc::new(Mutex::new(Some(reply)));
    let s = GenSink::new(r.served.clone(), r.metrics.clone(), meta, &p, &seq.prompt, slot.clone(), arrival)
        .with_prefix(echo);
    if let Err(e) = r.sched.submit(seq, Box::new(s)) {
        let err = match e {
            SubmitError::QueueFull => ApiError::queue_full(r.sched.scheduler_config().max_queue),
            SubmitError::ShuttingDown => ApiError::unavailable("the server is shutting down"),
            SubmitError::Invalid(m) => ApiError::invalid(None, m),
        };
        if let Some(reply) = sink::take(&slot) {
            reply_error(reply, &err);
        }
    }
}

fn echo_text(r: &Ready, p: &GenParams, prompt: &[u32]) -> Option<String> {
    if !p.echo {
        return None;
    }
    Some(match &p.input {
        Input::Completion(Prompt::Text(s)) => s.clone(),
        _ => r.served.tokenizer.decode(prompt).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn keys_compare_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
