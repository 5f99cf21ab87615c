//! Response bodies and server-sent-event chunks in OpenAI's shapes, for `/v1/completions`
//! (`text_completion`) and `/v1/chat/completions` (`chat.completion[.chunk]`).

use super::request::Endpoint;
use serde_json::{json, Value};

/// The stream's last event.
pub const SSE_DONE: &[u8] = b"data: [DONE]\n\n";

/// What every body and chunk of one response repeats.
#[derive(Clone, Debug)]
pub struct Meta {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub model: String,
    /// Streams with `stream_options.include_usage` carry `"usage": null` on every chunk but the last.
    pub include_usage: bool,
}

impl Meta {
    pub fn new(endpoint: Endpoint, serial: u64, model: &str, include_usage: bool) -> Self {
        let created =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let prefix = match endpoint {
            Endpoint::Completions => "cmpl",
            Endpoint::Chat => "chatcmpl",
        };
        Meta {
            endpoint,
            id: format!("{prefix}-{created:x}{serial:08x}"),
            created,
            model: model.to_string(),
            include_usage,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

impl Usage {
    fn to_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }
}

/// One generated token's text and log-probability.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
}

fn logprobs_json(endpoint: Endpoint, lp: Option<&[TokenLogprob]>, text_offset_start: usize) -> Value {
    let Some(lp) = lp else { return Value::Null };
    match endpoint {
        Endpoint::Completions => {
            let mut offset = text_offset_start;
            let offsets: Vec<usize> = lp
                .iter()
                .map(|t| {
                    let o = offset;
                    offset += t.token.len();
                    o
                })
                .collect();
            json!({
                "tokens": lp.iter().map(|t| t.token.as_str()).collect::<Vec<_>>(),
                "token_logprobs": lp.iter().map(|t| t.logprob).collect::<Vec<_>>(),
                "top_logprobs": Value::Null,
                "text_offset": offsets,
            })
        }
        Endpoint::Chat => json!({
            "content": lp.iter().map(|t| json!({
                "token": t.token, "logprob": t.logprob, "bytes": t.token.as_bytes(), "top_logprobs": [],
            })).collect::<Vec<_>>(),
        }),
    }
}

fn sse(v: &Value) -> Vec<u8> {
    let mut out = b"data: ".to_vec();
    out.extend_from_slice(v.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
    out
}

fn chunk_object(m: &Meta) -> &'static str {
    match m.endpoint {
        Endpoint::Completions => "text_completion",
        Endpoint::Chat => "chat.completion.chunk",
    }
}

/// The first chunk of a chat stream: the assistant's role, no content yet.
pub fn role_chunk(m: &Meta) -> Vec<u8> {
    let mut v = json!({
        "id": m.id, "object": chunk_object(m), "created": m.created, "model": m.model,
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}],
    });
    if m.include_usage {
        v["usage"] = Value::Null;
    }
    sse(&v)
}

/// A chunk of generated text; `finish` on the last one (then `text` is usually empty).
pub fn text_chunk(
    m: &Meta,
    text: &str,
    lp: Option<&[TokenLogprob]>,
    text_offset: usize,
    finish: Option<&str>,
) -> Vec<u8> {
    let logprobs = logprobs_json(m.endpoint, lp, text_offset);
    let choice = match m.endpoint {
        Endpoint::Completions => json!({"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}),
        Endpoint::Chat => {
            let delta = if text.is_empty() && finish.is_some() { json!({}) } else { json!({"content": text}) };
            json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
        }
    };
    let mut v =
        json!({"id": m.id, "object": chunk_object(m), "created": m.created, "model": m.model, "choices": [choice]});
    if m.include_usage {
        v["usage"] = Value::Null;
    }
    sse(&v)
}

/// The chunk `stream_options.include_usage` asks for: no choices, the usage.
pub fn usage_chunk(m: &Meta, u: Usage) -> Vec<u8> {
    sse(&json!({
        "id": m.id, "object": chunk_object(m), "created": m.created, "model": m.model,
        "choices": [], "usage": u.to_json(),
    }))
}

/// The whole body of a response that is not streamed.
pub fn full(m: &Meta, text: &str, lp: Option<&[TokenLogprob]>, finish: &str, u: Usage) -> Vec<u8> {
    let logprobs = logprobs_json(m.endpoint, lp, 0);
    let (object, choice) = match m.endpoint {
        Endpoint::Completions => {
            ("text_completion", json!({"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}))
        }
        Endpoint::Chat => (
            "chat.completion",
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs, "finish_reason": finish}),
        ),
    };
    json!({
        "id": m.id, "object": object, "created": m.created, "model": m.model,
        "choices": [choice], "usage": u.to_json(),
    })
    .to_string()
    .into_bytes()
}

/// `GET /v1/models`.
pub fn models(name: &str, created: u64, max_model_len: usize) -> Vec<u8> {
    json!({
        "object": "list",
        "data": [{"id": name, "object": "model", "created": created, "owned_by": "faascale", "root": name,
                  "max_model_len": max_model_len}],
    })
    .to_string()
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_sse(b: &[u8]) -> Value {
        let s = std::str::from_utf8(b).unwrap();
        assert!(s.starts_with("data: ") && s.ends_with("\n\n"), "{s:?}");
        serde_json::from_str(&s[6..s.len() - 2]).unwrap()
    }

    #[test]
    fn completion_chunks_and_body() {
        let m = Meta::new(Endpoint::Completions, 7, "tiny", true);
        assert!(m.id.starts_with("cmpl-"));
        let lp =
            [TokenLogprob { token: "ab".into(), logprob: -0.5 }, TokenLogprob { token: "c".into(), logprob: -1.0 }];
        let c = parse_sse(&text_chunk(&m, "abc", Some(&lp), 3, None));
        assert_eq!(c["object"], "text_completion");
        assert_eq!(c["choices"][0]["text"], "abc");
        assert!(c["choices"][0]["finish_reason"].is_null());
        assert!(c["usage"].is_null() && c.as_object().unwrap().contains_key("usage"));
        assert_eq!(c["choices"][0]["logprobs"]["text_offset"], json!([3, 5]));
        assert_eq!(c["choices"][0]["logprobs"]["token_logprobs"], json!([-0.5, -1.0]));
        let u = parse_sse(&usage_chunk(&m, Usage { prompt_tokens: 4, completion_tokens: 2 }));
        assert_eq!(u["choices"], json!([]));
        assert_eq!(u["usage"], json!({"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}));
        let b: Value =
            serde_json::from_slice(&full(&m, "x", None, "length", Usage { prompt_tokens: 1, completion_tokens: 1 }))
                .unwrap();
        assert_eq!(b["choices"][0]["finish_reason"], "length");
        assert_eq!(b["usage"]["total_tokens"], 2);
        assert!(b["choices"][0]["logprobs"].is_null());
    }

    #[test]
    fn chat_chunks_and_body() {
        let m = Meta::new(Endpoint::Chat, 1, "tiny", false);
        let r = parse_sse(&role_chunk(&m));
        assert_eq!(r["object"], "chat.completion.chunk");
        assert_eq!(r["choices"][0]["delta"]["role"], "assistant");
        assert!(!r.as_object().unwrap().contains_key("usage"));
        let c = parse_sse(&text_chunk(&m, "hé", None, 0, None));
        assert_eq!(c["choices"][0]["delta"]["content"], "hé");
        let f = parse_sse(&text_chunk(&m, "", None, 0, Some("stop")));
        assert_eq!(f["choices"][0]["delta"], json!({}));
        assert_eq!(f["choices"][0]["finish_reason"], "stop");
        let lp = [TokenLogprob { token: "é".into(), logprob: -0.25 }];
        let b: Value =
            serde_json::from_slice(&full(&m, "é", Some(&lp), "stop", Usage { prompt_tokens: 3, completion_tokens: 1 }))
                .unwrap();
        assert_eq!(b["object"], "chat.completion");
        assert_eq!(b["choices"][0]["message"], json!({"role": "assistant", "content": "é"}));
        assert_eq!(b["choices"][0]["logprobs"]["content"][0]["bytes"], json!([0xc3, 0xa9]));
        let models: Value = serde_json::from_slice(&models("tiny", 5, 256)).unwrap();
        assert_eq!(models["data"][0]["id"], "tiny");
    }
}
