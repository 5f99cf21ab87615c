//! One request's token sink: runs on the scheduler's thread for every generated token; turns
//! tokens into text (incremental detokenisation, stop strings), sends SSE chunks or collects the
//! whole answer, records the request's metrics, and cancels the sequence when the client has gone
//! or a stop string matched.

use super::detok::Detokenizer;
use super::error::ApiError;
use super::metrics::Metrics;
use super::response::{self, Meta, TokenLogprob, Usage};
use super::served::Served;
use super::stop::StopMatcher;
use pipeline::sched::{Finish, FinishKind, TokenEvent, TokenSink};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Where a response goes: the HTTP layer's one-shot reply (implemented for `http::Reply`).
pub trait Responder: Send + 'static {
    type Stream: ChunkWriter;
    /// Whether the client has gone (the answer would be dropped).
    fn is_closed(&self) -> bool;
    fn send(self, status: u16, headers: Vec<(String, String)>, body: Vec<u8>);
    fn stream(self, status: u16, headers: Vec<(String, String)>) -> Self::Stream;
}

/// A whole (not streamed) response looks whether its client is still there every this many tokens.
const CLOSED_CHECK_TOKENS: usize = 16;

/// A streamed response's body.
pub trait ChunkWriter: Send + 'static {
    /// False once the client has gone: the producer must stop.
    fn send(&self, bytes: &[u8]) -> bool;
    fn finish(self);
}

/// The reply, shared by the handler and the sink: the handler takes it back to answer an error
/// when `submit` refuses the request; otherwise the sink takes it at its first token or finish.
pub type ReplySlot<R> = Arc<Mutex<Option<R>>>;

pub fn take<R>(slot: &ReplySlot<R>) -> Option<R> {
    slot.lock().unwrap_or_else(|e| e.into_inner()).take()
}

pub fn json_headers() -> Vec<(String, String)> {
    vec![("content-type".into(), "application/json".into())]
}

fn sse_headers() -> Vec<(String, String)> {
    vec![("content-type".into(), "text/event-stream".into()), ("cache-control".into(), "no-cache".into())]
}

pub struct GenSink<R: Responder> {
    served: Arc<Served>,
    metrics: Arc<Metrics>,
    meta: Meta,
    stream: bool,
    logprobs: bool,
    slot: ReplySlot<R>,
    writer: Option<R::Stream>,
    /// The stream has broken (client gone): nothing more is sent.
    gone: bool,
    detok: Detokenizer,
    stop: StopMatcher,
    stopped_by_string: bool,
    /// Whole responses: the text so far. Streams: text not yet sent.
    text: String,
    /// Log-probabilities not yet sent (streams) or all of them (whole responses).
    lps: Vec<TokenLogprob>,
    /// Bytes of text before the next chunk (completions' `text_offset`).
    text_offset: usize,
    arrival: Instant,
    last_token: Option<Instant>,
    /// Tokens until a whole response next looks whether its client is still there.
    until_closed_check: usize,
}

impl<R: Responder> GenSink<R> {
    pub fn new(
        served: Arc<Served>,
        metrics: Arc<Metrics>,
        meta: Meta,
        params: &super::request::GenParams,
        prompt: &[u32],
        slot: ReplySlot<R>,
        arrival: Instant,
    ) -> Self {
        GenSink {
            served,
            metrics,
            meta,
            stream: params.stream,
            logprobs: params.logprobs,
            slot,
            writer: None,
            gone: false,
            detok: Detokenizer::new(prompt),
            stop: StopMatcher::new(params.stop.clone()),
            stopped_by_string: false,
            text: String::new(),
            lps: Vec::new(),
            text_offset: 0,
            arrival,
            last_token: None,
            until_closed_check: CLOSED_CHECK_TOKENS,
        }
    }

    /// Text that comes before the completion (completions' `echo`).
    pub fn with_prefix(mut self, text: Option<String>) -> Self {
        self.text = text.unwrap_or_default();
        self
    }

    /// Sends a chunk on the stream (started on first use); false once the client has gone.
    fn send_chunk(&mut self, bytes: &[u8]) -> bool {
        if self.gone {
            return false;
        }
        if self.writer.is_none() {
            let Some(reply) = take(&self.slot) else {
                self.gone = true;
                return false;
            };
            let w = reply.stream(200, sse_headers());
            if self.meta.endpoint == super::request::Endpoint::Chat && !w.send(&response::role_chunk(&self.meta)) {
                self.gone = true;
                return false;
            }
            self.writer = Some(w);
        }
        let ok = self.writer.as_ref().is_some_and(|w| w.send(bytes));
        if !ok {
            self.gone = true;
        }
        ok
    }

    /// Streams: sends the text held so far (with its log-probabilities) as one chunk.
    fn flush_chunk(&mut self, finish: Option<&str>) -> bool {
        if self.text.is_empty() && self.lps.is_empty() && finish.is_none() {
            return true;
        }
        let lp = if self.logprobs { Some(self.lps.as_slice()) } else { None };
        let chunk = response::text_chunk(&self.meta, &self.text, lp, self.text_offset, finish);
        self.text_offset += self.text.len();
        self.text.clear();
        self.lps.clear();
        self.send_chunk(&chunk)
    }
}

impl<R: Responder> TokenSink for GenSink<R> {
    fn token(&mut self, ev: TokenEvent) -> bool {
        let now = Instant::now();
        match self.last_token {
            None => self.metrics.ttft.observe((now - self.arrival).as_secs_f64()),
            Some(t) => self.metrics.itl.observe((now - t).as_secs_f64()),
        }
        self.last_token = Some(now);
        if self.stopped_by_string || self.gone {
            return false;
        }
        let delta = self.detok.push(&self.served.tokenizer, ev.token);
        if self.logprobs {
            let token = self.served.tokenizer.decode(&[ev.token]).unwrap_or_default();
            self.lps.push(TokenLogprob { token, logprob: ev.logprob.unwrap_or(f32::NAN) });
        }
        let step = self.stop.push(&delta);
        self.text.push_str(&step.emit);
        if step.stopped {
            self.stopped_by_string = true;
            return false;
        }
        if self.stream {
            return self.flush_chunk(None);
        }
        self.until_closed_check -= 1;
        if self.until_closed_check == 0 {
            self.until_closed_check = CLOSED_CHECK_TOKENS;
            // A whole response's client that has gone cancels the sequence too.
            let slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
            if !matches!(slot.as_ref(), Some(r) if !r.is_closed()) {
                return false;
            }
        }
        true
    }

    fn finish(&mut self, f: Finish) {
        let m = &self.metrics;
        let now = Instant::now();
        m.e2e.observe((now - self.arrival).as_secs_f64());
        m.queue.observe(f.queue_time_s);
        m.prompt_tokens.fetch_add(f.prompt_tokens as u64, Ordering::Relaxed);
        m.generation_tokens.fetch_add(f.completion_tokens as u64, Ordering::Relaxed);
        let reason = match (&f.kind, self.stopped_by_string) {
            (_, true) | (FinishKind::Eos, _) => Ok("stop"),
            (FinishKind::Length | FinishKind::Context, _) => Ok("length"),
            (FinishKind::Cancelled, _) => {
                Err(ApiError::unavailable("the request was cancelled (the server is shutting down)"))
            }
            (FinishKind::Error(e), _) => Err(ApiError::internal(format!("the engine failed: {e}"))),
        };
        if !self.stopped_by_string {
            let rest = self.detok.flush(&self.served.tokenizer);
            let mut tail = self.stop.push(&rest);
            if !tail.stopped {
                tail.emit.push_str(&self.stop.flush());
            }
            self.text.push_str(&tail.emit);
        }
        match reason {
            Ok("stop") => m.success_stop.fetch_add(1, Ordering::Relaxed),
            Ok(_) => m.success_length.fetch_add(1, Ordering::Relaxed),
            Err(_) => 0,
        };
        let usage = Usage { prompt_tokens: f.prompt_tokens, completion_tokens: f.completion_tokens };
        if self.stream {
            if self.gone {
                return;
            }
            match reason {
                Ok(r) => {
                    self.flush_chunk(Some(r));
                    if self.meta.include_usage {
                        let u = response::usage_chunk(&self.meta, usage);
                        self.send_chunk(&u);
                    }
                }
                Err(e) => {
                    self.flush_chunk(None);
                    let mut ev = b"data: ".to_vec();
                    ev.extend_from_slice(&e.to_json());
                    ev.extend_from_slice(b"\n\n");
                    self.send_chunk(&ev);
                }
            }
            self.send_chunk(response::SSE_DONE);
            if let Some(w) = self.writer.take() {
                w.finish();
            }
        } else if let Some(reply) = take(&self.slot) {
            match reason {
                Ok(r) => {
                    let lp = if self.logprobs { Some(self.lps.as_slice()) } else { None };
                    reply.send(200, json_headers(), response::full(&self.meta, &self.text, lp, r, usage));
                }
                Err(e) => reply.send(e.status, json_headers(), e.to_json()),
            }
        }
    }
}
