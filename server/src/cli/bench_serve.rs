//! `faascale bench serve --url URL --model NAME [--api-key K] --requests N (--concurrency C | --rate R)
//! [--prompt-tokens A..B] [--output-tokens A..B] [--seed S] [--timeout-s T] --json`
//!
//! A load generator for any OpenAI-compatible server: streamed `/v1/completions` requests over
//! plain HTTP/1.1 (one connection per request, one thread per request in flight), timing the
//! first token and the gaps between tokens from the SSE chunks. Output tokens come from the
//! final `usage` chunk (`stream_options.include_usage`), else from the count of text chunks.
//! Prompts are random common English words (about one token each), seeded; `ignore_eos` makes
//! each request generate exactly its output length on servers that honour it (vLLM, llama.cpp,
//! faascale).

use pipeline::sampler::Rng;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most requests in flight at once (threads), whatever the rate.
const MAX_IN_FLIGHT: usize = 1024;
/// Bounds on the request count and lengths one bench asks for.
const MAX_REQUESTS: usize = 1_000_000;
const MAX_PROMPT_TOKENS: usize = 1 << 20;
/// Largest response head and SSE event accepted.
const MAX_LINE_BYTES: usize = 1 << 20;

#[derive(clap::Args)]
pub struct Args {
    /// The server's base URL, e.g. http://127.0.0.1:8000 (requests go to URL/v1/completions).
    #[arg(long)]
    url: String,
    /// The model name to send.
    #[arg(long)]
    model: String,
    /// Sent as `Authorization: Bearer KEY`.
    #[arg(long)]
    api_key: Option<String>,
    /// Requests in all.
    #[arg(long)]
    requests: usize,
    /// Requests in flight at once (closed loop).
    #[arg(long, conflicts_with = "rate", required_unless_present = "rate")]
    concurrency: Option<usize>,
    /// Requests per second, Poisson arrivals (open loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Prompt length in words (≈ tokens), uniform in A..B (inclusive), or one number.
    #[arg(long, default_value = "32..32")]
    prompt_tokens: String,
    /// Tokens to generate (`max_tokens`, with `ignore_eos`), uniform in A..B (inclusive).
    #[arg(long, default_value = "64..64")]
    output_tokens: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Per-request limit; a request past it counts as failed.
    #[arg(long, default_value_t = 600.0)]
    timeout_s: f64,
    /// Print one line of JSON as the last line of standard output.
    #[arg(long)]
    pub json: bool,
}

/// `A..B` or `N`, as an inclusive range.
pub fn parse_range(s: &str, what: &str, max: usize) -> Result<(usize, usize), String> {
    let num = |t: &str| t.trim().parse::<usize>().map_err(|e| format!("{what} `{s}`: `{t}` is not a count: {e}"));
    let (a, b) = match s.split_once("..") {
        Some((a, b)) => (num(a)?, num(b.trim_start_matches('='))?),
        None => (num(s)?, num(s)?),
    };
    if a == 0 || a > b || b > max {
        return Err(format!("{what} `{s}`: expected A..B with 1 <= A <= B <= {max}"));
    }
    Ok((a, b))
}

/// `http://HOST:PORT[/PREFIX]` → (host:port, prefix without a trailing slash).
pub fn parse_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--url {url}: expected http://HOST:PORT (https is not supported)"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if hostport.is_empty() {
        return Err(format!("--url {url}: no host"));
    }
    let hostport = if hostport.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    Ok((hostport, path.to_string()))
}

/// Short, common words: about one token each in the usual BPE vocabularies.
const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "his",
    "it",
    "an",
    "were",
    "are",
    "which",
    "this",
    "be",
    "or",
    "has",
    "had",
    "first",
    "one",
    "their",
    "its",
    "new",
    "after",
    "but",
    "who",
    "not",
    "they",
    "have",
    "her",
    "she",
    "two",
    "been",
    "other",
    "when",
    "there",
    "all",
    "during",
    "into",
    "school",
    "time",
    "may",
    "years",
    "more",
    "most",
    "only",
    "over",
    "city",
    "some",
    "world",
    "would",
    "where",
    "later",
    "up",
    "such",
    "used",
    "many",
    "can",
    "state",
    "about",
    "national",
    "out",
    "known",
    "university",
    "united",
    "then",
    "made",
    "also",
    "people",
    "water",
    "day",
    "house",
    "music",
    "game",
    "family",
    "war",
    "film",
];

pub fn prompt_words(rng: &mut Rng, n: usize) -> String {
    let mut s = String::with_capacity(n * 6);
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[(rng.next_u64() % WORDS.len() as u64) as usize]);
    }
    s
}

fn uniform(rng: &mut Rng, (a, b): (usize, usize)) -> usize {
    a + (rng.next_u64() % (b - a + 1) as u64) as usize
}

/// One request's outcome.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub ok: bool,
    pub error: Option<String>,
    pub ttft_s: f64,
    pub itl_s: Vec<f64>,
    pub e2e_s: f64,
    pub output_tokens: usize,
}

pub struct Target {
    pub addr: String,
    pub prefix: String,
    pub host_header: String,
    pub model: String,
    pub api_key: Option<String>,
}

/// Sends one streamed completion request and times its chunks.
pub fn one_request(t: &Target, prompt: &str, max_tokens: usize, timeout: Duration) -> Outcome {
    let start = Instant::now();
    match stream_request(t, prompt, max_tokens, start, timeout) {
        Ok(mut o) => {
            o.e2e_s = start.elapsed().as_secs_f64();
            o
        }
        Err(e) => Outcome { ok: false, error: Some(e), e2e_s: start.elapsed().as_secs_f64(), ..Default::default() },
    }
}

fn stream_request(
    t: &Target,
    prompt: &str,
    max_tokens: usize,
    start: Instant,
    timeout: Duration,
) -> Result<Outcome, String> {
    let deadline = start + timeout;
    let left = || deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()).ok_or("timed out");
    let addr = t
        .addr
        .to_socket_addrs()
        .map_err(|e| format!("resolve {}: {e}", t.addr))?
        .next()
        .ok_or_else(|| format!("{} resolves to no address", t.addr))?;
    let mut sock = TcpStream::connect_timeout(&addr, left()?).map_err(|e| format!("connect {addr}: {e}"))?;
    sock.set_nodelay(true).map_err(|e| e.to_string())?;
    let body = serde_json::json!({
        "model": t.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
        "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true},
    })
    .to_string();
    let auth = t.api_key.as_ref().map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    let head = format!(
        "POST {}/v1/completions HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        t.prefix,
        t.host_header,
        body.len()
    );
    sock.set_write_timeout(Some(left()?)).map_err(|e| e.to_string())?;
    sock.write_all(head.as_bytes()).and_then(|_| sock.write_all(body.as_bytes())).map_err(|e| format!("send: {e}"))?;
    sock.set_read_timeout(Some(left()?)).map_err(|e| e.to_string())?;
    let mut r = BufReader::new(sock);
    let status_line = read_line(&mut r)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut chunked = false;
    let mut content_length = None;
    loop {
        let line = read_line(&mut r)?;
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            } else if k == "content-length" {
                content_length = v.parse::<usize>().ok();
            }
        }
    }
    let mut body = BodyReader { r, chunked, left_in_chunk: 0, remaining: content_length, done: false };
    if status != 200 {
        let mut text = Vec::new();
        let _ = body.read_to_end_bounded(&mut text, 64 << 10);
        return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&text).trim()));
    }
    let mut out = Outcome::default();
    let mut chunks = 0usize;
    let mut usage_tokens = None;
    let mut last: Option<Instant> = None;
    let mut event = String::new();
    let mut done = false;
    while !done {
        body.r.get_mut().set_read_timeout(Some(left()?)).map_err(|e| e.to_string())?;
        let Some(line) = body.read_line()? else { break };
        if !line.is_empty() {
            if let Some(data) = line.strip_prefix("data:") {
                event.push_str(data.trim_start());
            }
            continue;
        }
        if event.is_empty() {
            continue;
        }
        let now = Instant::now();
        if event == "[DONE]" {
            done = true;
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&event).map_err(|e| format!("bad SSE event {event:?}: {e}"))?;
        event.clear();
        if let Some(err) = v.get("error") {
            return Err(format!("error event: {err}"));
        }
        if let Some(n) = v.get("usage").and_then(|u| u.get("completion_tokens")).and_then(|n| n.as_u64()) {
            usage_tokens = Some(n as usize);
        }
        let text = v.pointer("/choices/0/text").and_then(|t| t.as_str()).unwrap_or("");
        if !text.is_empty() {
            chunks += 1;
            match last {
                None => out.ttft_s = (now - start).as_secs_f64(),
                Some(l) => out.itl_s.push((now - l).as_secs_f64()),
            }
            last = Some(now);
        }
    }
    if !done {
        return Err("the stream ended without `data: [DONE]`".into());
    }
    if last.is_none() {
        return Err("the stream carried no text".into());
    }
    out.output_tokens = usage_tokens.unwrap_or(chunks);
    out.ok = true;
    Ok(out)
}

fn read_line<R: BufRead>(r: &mut R) -> Result<String, String> {
    let mut buf = Vec::new();
    let n = r.by_ref().take(MAX_LINE_BYTES as u64).read_until(b'\n', &mut buf).map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Err("the server closed the connection".into());
    }
    if buf.last() != Some(&b'\n') {
        return Err("a response line is too long".into());
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    String::from_utf8(buf).map_err(|_| "a response line is not UTF-8".into())
}

/// A response body, de-chunked, read line by line.
struct BodyReader {
    r: BufReader<TcpStream>,
    chunked: bool,
    left_in_chunk: usize,
    remaining: Option<usize>,
    done: bool,
}

impl BodyReader {
    /// Next body bytes (up to `max`), empty at the end.
    fn read_some(&mut self, max: usize) -> Result<Vec<u8>, String> {
        if self.done {
            return Ok(Vec::new());
        }
        let want = if self.chunked {
            if self.left_in_chunk == 0 {
                let size_line = read_line(&mut self.r)?;
                let hex = size_line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(hex, 16).map_err(|_| format!("bad chunk size {size_line:?}"))?;
                if size == 0 {
                    self.done = true;
                    return Ok(Vec::new());
                }
                self.left_in_chunk = size;
            }
            self.left_in_chunk.min(max)
        } else {
            match self.remaining {
                Some(0) => {
                    self.done = true;
                    return Ok(Vec::new());
                }
                Some(n) => n.min(max),
                None => max,
            }
        };
        let mut buf = vec![0u8; want];
        let n = self.r.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            if self.remaining.is_none() && !self.chunked {
                self.done = true;
                return Ok(Vec::new());
            }
            return Err("the server closed the connection mid-body".into());
        }
        buf.truncate(n);
        if self.chunked {
            self.left_in_chunk -= n;
            if self.left_in_chunk == 0 {
                read_line(&mut self.r)?; // the CRLF after the chunk
            }
        } else if let Some(rem) = self.remaining.as_mut() {
            *rem -= n;
        }
        Ok(buf)
    }

    fn read_to_end_bounded(&mut self, out: &mut Vec<u8>, max: usize) -> Result<(), String> {
        while out.len() < max {
            let b = self.read_some(max - out.len())?;
            if b.is_empty() {
                break;
            }
            out.extend_from_slice(&b);
        }
        Ok(())
    }

    /// The next line of the body (without its line end), None at the end of the body.
    fn read_line(&mut self) -> Result<Option<String>, String> {
        let mut line = Vec::new();
        loop {
            let b = self.read_one()?;
            match b {
                None if line.is_empty() => return Ok(None),
                None | Some(b'\n') => break,
                Some(c) => line.push(c),
            }
            if line.len() > MAX_LINE_BYTES {
                return Err("an SSE line is too long".into());
            }
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        String::from_utf8(line).map(Some).map_err(|_| "an SSE line is not UTF-8".into())
    }

    fn read_one(&mut self) -> Result<Option<u8>, String> {
        let b = self.read_some(1)?;
        Ok(b.first().copied())
    }
}

/// Value at quantile `q` (nearest rank) of sorted `v`; 0 for none.
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

pub fn summarise(outcomes: &[Outcome], wall_s: f64) -> serde_json::Value {
    let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.ok).collect();
    let sorted = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v
    };
    let ttft = sorted(ok.iter().map(|o| o.ttft_s * 1e3).collect());
    let itl = sorted(ok.iter().flat_map(|o| o.itl_s.iter().map(|s| s * 1e3)).collect());
    let e2e = sorted(ok.iter().map(|o| o.e2e_s).collect());
    let tokens: usize = ok.iter().map(|o| o.output_tokens).sum();
    let first_error = outcomes.iter().find_map(|o| o.error.clone());
    serde_json::json!({
        "requests_ok": ok.len(),
        "requests_failed": outcomes.len() - ok.len(),
        "output_tokens": tokens,
        "duration_s": wall_s,
        "output_tokens_per_s": if wall_s > 0.0 { tokens as f64 / wall_s } else { 0.0 },
        "ttft_ms_p50": quantile(&ttft, 0.5),
        "ttft_ms_p90": quantile(&ttft, 0.9),
        "ttft_ms_p99": quantile(&ttft, 0.99),
        "itl_ms_p50": quantile(&itl, 0.5),
        "itl_ms_p99": quantile(&itl, 0.99),
        "itl_ms_mean": if itl.is_empty() { 0.0 } else { itl.iter().sum::<f64>() / itl.len() as f64 },
        "e2e_s_p50": quantile(&e2e, 0.5),
        "first_error": first_error,
    })
}

pub fn run(a: Args) -> Result<(), String> {
    if a.requests == 0 || a.requests > MAX_REQUESTS {
        return Err(format!("--requests {}: expected 1 ..= {MAX_REQUESTS}", a.requests));
    }
    if let Some(c) = a.concurrency {
        if c == 0 || c > MAX_IN_FLIGHT {
            return Err(format!("--concurrency {c}: expected 1 ..= {MAX_IN_FLIGHT}"));
        }
    }
    if let Some(r) = a.rate {
        if !(r.is_finite() && r > 0.0) {
            return Err(format!("--rate {r}: expected a positive number of requests per second"));
        }
    }
    if !(a.timeout_s.is_finite() && a.timeout_s > 0.0 && a.timeout_s <= 86_400.0) {
        return Err(format!("--timeout-s {}: expected 0 < T <= 86400", a.timeout_s));
    }
    let prompt_range = parse_range(&a.prompt_tokens, "--prompt-tokens", MAX_PROMPT_TOKENS)?;
    let output_range = parse_range(&a.output_tokens, "--output-tokens", MAX_PROMPT_TOKENS)?;
    let (addr, prefix) = parse_url(&a.url)?;
    let target = Arc::new(Target {
        host_header: addr.clone(),
        addr,
        prefix,
        model: a.model.clone(),
        api_key: a.api_key.clone().or_else(|| std::env::var("OPENAI_API_KEY").ok()),
    });
    // Every request's prompt and length fixed up front from the seed.
    let mut rng = Rng::new(a.seed);
    let work: Arc<Vec<(String, usize)>> = Arc::new(
        (0..a.requests)
            .map(|_| {
                let p = uniform(&mut rng, prompt_range);
                let o = uniform(&mut rng, output_range);
                (prompt_words(&mut rng, p), o)
            })
            .collect(),
    );
    let timeout = Duration::from_secs_f64(a.timeout_s);
    let results: Arc<Mutex<Vec<Outcome>>> = Arc::new(Mutex::new(Vec::with_capacity(a.requests)));
    log::info!("bench serve: {} requests to {}", a.requests, a.url);
    let start = Instant::now();
    match a.concurrency {
        Some(c) => {
            let next = Arc::new(AtomicUsize::new(0));
            let threads: Vec<_> = (0..c.min(a.requests))
                .map(|_| {
                    let (next, work, target, results) = (next.clone(), work.clone(), target.clone(), results.clone());
                    std::thread::spawn(move || loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((prompt, max_tokens)) = work.get(i) else { break };
                        let o = one_request(&target, prompt, *max_tokens, timeout);
                        results.lock().unwrap_or_else(|e| e.into_inner()).push(o);
                    })
                })
                .collect();
            for t in threads {
                t.join().map_err(|_| "a request thread panicked".to_string())?;
            }
        }
        None => {
            let rate = a.rate.unwrap_or(1.0);
            let in_flight = Arc::new(AtomicUsize::new(0));
            let mut threads = Vec::with_capacity(a.requests);
            let mut at = 0.0f64;
            for i in 0..a.requests {
                // exponential gaps: Poisson arrivals
                at += -(1.0 - rng.next_f64()).ln() / rate;
                let due = start + Duration::from_secs_f64(at);
                if let Some(d) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
                while in_flight.load(Ordering::Acquire) >= MAX_IN_FLIGHT {
                    std::thread::sleep(Duration::from_millis(1));
                }
                in_flight.fetch_add(1, Ordering::AcqRel);
                let (work, target, results, in_flight) =
                    (work.clone(), target.clone(), results.clone(), in_flight.clone());
                threads.push(std::thread::spawn(move || {
                    let (prompt, max_tokens) = &work[i];
                    let o = one_request(&target, prompt, *max_tokens, timeout);
                    results.lock().unwrap_or_else(|e| e.into_inner()).push(o);
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                }));
            }
            for t in threads {
                t.join().map_err(|_| "a request thread panicked".to_string())?;
            }
        }
    }
    let wall_s = start.elapsed().as_secs_f64();
    let outcomes = results.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let json = summarise(&outcomes, wall_s);
    log::info!(
        "{} ok, {} failed in {wall_s:.1} s: {:.1} output tokens/s, ttft p50 {:.1} ms, itl p50 {:.1} ms",
        json["requests_ok"],
        json["requests_failed"],
        json["output_tokens_per_s"].as_f64().unwrap_or(0.0),
        json["ttft_ms_p50"].as_f64().unwrap_or(0.0),
        json["itl_ms_p50"].as_f64().unwrap_or(0.0)
    );
    if let Some(e) = json["first_error"].as_str() {
        log::warn!("first failure: {e}");
    }
    if a.json {
        println!("{json}");
    } else {
        println!("{}", serde_json::to_string_pretty(&json).unwrap_or_default());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A minimal SSE server for the client's own test: answers each connection's completion
    /// request with `n` chunks (chunked encoding, one chunk per event), then usage and [DONE];
    /// a request whose prompt starts with "fail" gets a 429 with an OpenAI error body.
    fn sse_stub(conns: usize) -> (String, std::thread::JoinHandle<Vec<serde_json::Value>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..conns {
                let (s, _) = l.accept().unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut len = 0;
                loop {
                    let line = read_line(&mut r).unwrap();
                    if line.is_empty() {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let mut w = s;
                if v["prompt"].as_str().unwrap().starts_with("fail") {
                    let b = br#"{"error": {"message": "queue full", "type": "rate_limit_error", "param": null, "code": null}}"#;
                    write!(w, "HTTP/1.1 429 Too Many Requests\r\nContent-Length: {}\r\n\r\n", b.len()).unwrap();
                    w.write_all(b).unwrap();
                    continue;
                }
                let n = v["max_tokens"].as_u64().unwrap() as usize;
                write!(w, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
                    .unwrap();
                let mut chunk = |data: String| {
                    let ev = format!("data: {data}\n\n");
                    write!(w, "{:x}\r\n{ev}\r\n", ev.len()).unwrap();
                    w.flush().unwrap();
                };
                for i in 0..n {
                    chunk(
                        serde_json::json!({"choices": [{"index": 0, "text": format!(" t{i}"), "finish_reason": null}]})
                            .to_string(),
                    );
                    std::thread::sleep(Duration::from_millis(2));
                }
                chunk(
                    r#"{"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 99, "total_tokens": 102}}"#
                        .into(),
                );
                chunk("[DONE]".into());
                write!(w, "0\r\n\r\n").unwrap();
                seen.push(v);
            }
            seen
        });
        (url, h)
    }

    fn target(url: &str) -> Target {
        let (addr, prefix) = parse_url(url).unwrap();
        Target { host_header: addr.clone(), addr, prefix, model: "m".into(), api_key: Some("k".into()) }
    }

    #[test]
    fn times_a_stream_and_reads_usage() {
        let (url, h) = sse_stub(2);
        let t = target(&url);
        let o = one_request(&t, "hello world", 5, Duration::from_secs(60));
        assert!(o.ok, "{:?}", o.error);
        assert_eq!(o.output_tokens, 99, "tokens come from usage");
        assert_eq!(o.itl_s.len(), 4);
        assert!(o.ttft_s > 0.0 && o.e2e_s >= o.ttft_s);
        let f = one_request(&t, "fail please", 5, Duration::from_secs(60));
        assert!(!f.ok);
        assert!(f.error.as_deref().unwrap().contains("HTTP 429"), "{:?}", f.error);
        let seen = h.join().unwrap();
        assert_eq!(seen[0]["stream"], true);
        assert_eq!(seen[0]["ignore_eos"], true);
        assert_eq!(seen[0]["stream_options"]["include_usage"], true);
        let s = summarise(&[o, f], 2.0);
        assert_eq!((s["requests_ok"].as_u64(), s["requests_failed"].as_u64()), (Some(1), Some(1)));
        assert_eq!(s["output_tokens_per_s"].as_f64(), Some(49.5));
        for k in ["ttft_ms_p50", "ttft_ms_p90", "ttft_ms_p99", "itl_ms_p50", "itl_ms_p99", "e2e_s_p50"] {
            assert!(s[k].as_f64().unwrap() > 0.0, "{k}");
        }
    }

    #[test]
    fn open_and_closed_loops_send_every_request() {
        for (concurrency, rate) in [(None, Some(200.0)), (Some(2), None)] {
            let (url, h) = sse_stub(4);
            let a = Args {
                url,
                model: "m".into(),
                api_key: None,
                requests: 4,
                concurrency,
                rate,
                prompt_tokens: "3..5".into(),
                output_tokens: "2..3".into(),
                seed: 9,
                timeout_s: 60.0,
                json: true,
            };
            run(a).unwrap();
            let seen = h.join().unwrap();
            assert_eq!(seen.len(), 4);
            for v in &seen {
                let words = v["prompt"].as_str().unwrap().split(' ').count();
                let max = v["max_tokens"].as_u64().unwrap();
                assert!((3..=5).contains(&words) && (2..=3).contains(&max), "{v}");
            }
        }
    }

    #[test]
    fn a_silent_server_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let o = one_request(&target(&url), "x", 1, Duration::from_millis(300));
        assert!(!o.ok);
        drop(l);
    }

    #[test]
    fn ranges_urls_and_quantiles() {
        assert_eq!(parse_range("3..9", "x", 100), Ok((3, 9)));
        assert_eq!(parse_range("7", "x", 100), Ok((7, 7)));
        assert!(parse_range("9..3", "x", 100).is_err());
        assert!(parse_range("0..3", "x", 100).is_err());
        assert!(parse_range("a..3", "x", 100).is_err());
        assert_eq!(parse_url("http://h:81/base/"), Ok(("h:81".into(), "/base".into())));
        assert_eq!(parse_url("http://h"), Ok(("h:80".into(), "".into())));
        assert!(parse_url("https://h").is_err());
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.99), 4.0);
        let mut r1 = Rng::new(3);
        let mut r2 = Rng::new(3);
        assert_eq!(prompt_words(&mut r1, 20), prompt_words(&mut r2, 20));
    }
}
