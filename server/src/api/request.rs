//! OpenAI request bodies, parsed and validated field by field so every mistake gets a 400 that
//! names the field (`param`) and says what was expected. Fields we do not implement are refused
//! with a clear message when set to anything but their neutral value, never silently ignored.

use super::error::ApiError;
use serde_json::{Map, Value};

/// Most stop strings per request, and bytes per stop string.
pub const MAX_STOP_STRINGS: usize = 16;
pub const MAX_STOP_BYTES: usize = 1024;
/// Most chat messages per request.
pub const MAX_MESSAGES: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    Chat,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// `/v1/completions`: the prompt as given.
    Completion(Prompt),
    /// `/v1/chat/completions`: the messages, rendered with the model's chat template later.
    Chat(Vec<pipeline::chat::Message>),
}

/// A validated request: everything the handler needs, with OpenAI's defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub struct GenParams {
    pub endpoint: Endpoint,
    pub model: String,
    pub input: Input,
    /// None: up to the end of the context.
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    /// 0: no limit.
    pub top_k: usize,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// Return the sampled token's log-probability with each token.
    pub logprobs: bool,
    pub stream: bool,
    pub include_usage: bool,
    /// Completions only: repeat the prompt before the completion.
    pub echo: bool,
}

/// Parses a request body for `endpoint`.
pub fn parse(endpoint: Endpoint, body: &[u8]) -> Result<GenParams, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::invalid(None, format!("the request body is not valid UTF-8 (at byte {})", e.valid_up_to()))
    })?;
    if text.trim().is_empty() {
        return Err(ApiError::invalid(None, "the request body is empty: expected a JSON object"));
    }
    let v: Value = serde_json::from_str(text)
        .map_err(|e| ApiError::invalid(None, format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(obj) = v else {
        return Err(ApiError::invalid(None, format!("the request body must be a JSON object, not {}", kind(&v))));
    };
    let f = Fields(&obj);
    let model = f.string("model")?.ok_or_else(|| ApiError::missing("model"))?;
    let input = match endpoint {
        Endpoint::Completions => {
            Input::Completion(parse_prompt(f.get("prompt").ok_or_else(|| ApiError::missing("prompt"))?)?)
        }
        Endpoint::Chat => Input::Chat(parse_messages(f.get("messages").ok_or_else(|| ApiError::missing("messages"))?)?),
    };
    let max_tokens = match endpoint {
        Endpoint::Chat => match f.uint("max_completion_tokens")? {
            Some(n) => Some(n),
            None => f.uint("max_tokens")?,
        },
        Endpoint::Completions => match f.uint("max_tokens")? {
            // OpenAI's legacy completions default to 16 tokens; vLLM follows it.
            None if f.get("max_tokens").is_none() => Some(16),
            n => n,
        },
    };
    let max_param = if endpoint == Endpoint::Chat && f.get("max_completion_tokens").is_some() {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    if max_tokens == Some(0) {
        return Err(ApiError::invalid(Some(max_param.into()), format!("`{max_param}` must be at least 1")));
    }
    let temperature = f.number("temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            Some("temperature".into()),
            format!("`temperature` {temperature} must be between 0 and 2"),
        ));
    }
    let top_p = f.number("top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(Some("top_p".into()), format!("`top_p` {top_p} must be in (0, 1]")));
    }
    let top_k = match f.int("top_k")? {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => {
            return Err(ApiError::invalid(
                Some("top_k".into()),
                format!("`top_k` {k} must be -1 or 0 (no limit) or a positive integer"),
            ))
        }
    };
    // OpenAI's seed is a signed 64-bit integer; its bits are the generator's seed.
    let seed = f.int("seed")?.map(|s| s as u64);
    let stop = parse_stop(f.get("stop"))?;
    let stop_token_ids = match f.get("stop_token_ids") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => token_array(v, "stop_token_ids")?,
    };
    let ignore_eos = f.boolean("ignore_eos")?.unwrap_or(false);
    let stream = f.boolean("stream")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => {
            if !stream {
                return Err(ApiError::invalid(
                    Some("stream_options".into()),
                    "`stream_options` is only allowed when `stream` is true",
                ));
            }
            Fields(o).boolean("include_usage")?.unwrap_or(false)
        }
        Some(v) => return Err(wrong_type("stream_options", "an object", v)),
    };
    let logprobs = parse_logprobs(endpoint, &f)?;
    let echo = match endpoint {
        Endpoint::Completions => f.boolean("echo")?.unwrap_or(false),
        Endpoint::Chat => false,
    };
    refuse_unimplemented(&f)?;
    Ok(GenParams {
        endpoint,
        model,
        input,
        max_tokens,
        temperature: temperature as f32,
        top_p: top_p as f32,
        top_k,
        seed,
        stop,
        stop_token_ids,
        ignore_eos,
        logprobs,
        stream,
        include_usage,
        echo,
    })
}

fn parse_prompt(v: &Value) -> Result<Prompt, ApiError> {
    let p = match v {
        Value::String(s) => Prompt::Text(s.clone()),
        Value::Array(a) if a.is_empty() => return Err(ApiError::invalid(Some("prompt".into()), "`prompt` is empty")),
        Value::Array(a) => match &a[0] {
            Value::String(_) | Value::Array(_) if a.len() > 1 => {
                return Err(ApiError::invalid(
                    Some("prompt".into()),
                    format!("`prompt` holds {} prompts; this server takes one prompt per request", a.len()),
                ))
            }
            Value::String(s) => Prompt::Text(s.clone()),
            Value::Array(inner) => Prompt::Tokens(token_array(&Value::Array(inner.clone()), "prompt")?),
            _ => Prompt::Tokens(token_array(v, "prompt")?),
        },
        other => return Err(wrong_type("prompt", "a string or an array of token ids", other)),
    };
    match &p {
        Prompt::Text(s) if s.is_empty() => Err(ApiError::invalid(Some("prompt".into()), "`prompt` is empty")),
        Prompt::Tokens(t) if t.is_empty() => Err(ApiError::invalid(Some("prompt".into()), "`prompt` is empty")),
        _ => Ok(p),
    }
}

fn token_array(v: &Value, param: &str) -> Result<Vec<u32>, ApiError> {
    let Value::Array(a) = v else { return Err(wrong_type(param, "an array of token ids", v)) };
    a.iter()
        .enumerate()
        .map(|(i, t)| {
            t.as_u64().filter(|&x| x <= u32::MAX as u64).map(|x| x as u32).ok_or_else(|| {
                ApiError::invalid(
                    Some(param.to_string()),
                    format!("`{param}`[{i}] must be a token id (an integer >= 0), not {t}"),
                )
            })
        })
        .collect()
}

fn parse_messages(v: &Value) -> Result<Vec<pipeline::chat::Message>, ApiError> {
    let Value::Array(a) = v else { return Err(wrong_type("messages", "an array of messages", v)) };
    if a.is_empty() {
        return Err(ApiError::invalid(Some("messages".into()), "`messages` is empty"));
    }
    if a.len() > MAX_MESSAGES {
        return Err(ApiError::invalid(
            Some("messages".into()),
            format!("{} messages; at most {MAX_MESSAGES}", a.len()),
        ));
    }
    let mut out = Vec::with_capacity(a.len());
    for (i, m) in a.iter().enumerate() {
        let param = format!("messages[{i}]");
        let Value::Object(o) = m else { return Err(wrong_type(&param, "an object", m)) };
        let role = match o.get("role") {
            Some(Value::String(r)) => r.clone(),
            Some(other) => return Err(wrong_type(&format!("{param}.role"), "a string", other)),
            None => return Err(ApiError::missing(&format!("{param}.role"))),
        };
        if !matches!(role.as_str(), "system" | "developer" | "user" | "assistant") {
            return Err(ApiError::invalid(
                Some(format!("{param}.role")),
                format!("role `{role}` is not supported: expected system, developer, user or assistant"),
            ));
        }
        let content = match o.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None if role == "assistant" => String::new(),
            None => return Err(ApiError::missing(&format!("{param}.content"))),
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for (j, part) in parts.iter().enumerate() {
                    let pp = format!("{param}.content[{j}]");
                    let Value::Object(po) = part else { return Err(wrong_type(&pp, "an object", part)) };
                    match (po.get("type"), po.get("text")) {
                        (Some(Value::String(t)), Some(Value::String(s))) if t == "text" => text.push_str(s),
                        (Some(Value::String(t)), _) if t != "text" => {
                            return Err(ApiError::invalid(
                                Some(pp),
                                format!("content parts of type `{t}` are not supported: text only"),
                            ))
                        }
                        _ => {
                            return Err(ApiError::invalid(
                                Some(pp),
                                "a content part must be {\"type\": \"text\", \"text\": STRING}",
                            ))
                        }
                    }
                }
                text
            }
            Some(other) => return Err(wrong_type(&format!("{param}.content"), "a string or an array of parts", other)),
        };
        // The templates know system, user and assistant; OpenAI's `developer` is a system message.
        let role = if role == "developer" { "system".to_string() } else { role };
        out.push(pipeline::chat::Message { role, content });
    }
    Ok(out)
}

fn parse_stop(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let stops = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, s)| match s {
                Value::String(s) => Ok(s.clone()),
                other => Err(wrong_type(&format!("stop[{i}]"), "a string", other)),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(wrong_type("stop", "a string or an array of strings", other)),
    };
    if stops.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid(
            Some("stop".into()),
            format!("{} stop strings; at most {MAX_STOP_STRINGS}", stops.len()),
        ));
    }
    for s in &stops {
        if s.is_empty() || s.len() > MAX_STOP_BYTES {
            return Err(ApiError::invalid(
                Some("stop".into()),
                format!("a stop string must be 1 ..= {MAX_STOP_BYTES} bytes, not {}", s.len()),
            ));
        }
    }
    Ok(stops)
}

fn parse_logprobs(endpoint: Endpoint, f: &Fields) -> Result<bool, ApiError> {
    match endpoint {
        // Legacy completions: `logprobs: N` asks for the N most likely alternatives too.
        Endpoint::Completions => match f.int("logprobs")? {
            None => Ok(false),
            Some(0) => Ok(true),
            Some(n) => Err(ApiError::invalid(
                Some("logprobs".into()),
                format!("`logprobs` {n}: this server returns the sampled token's log-probability only (logprobs 0)"),
            )),
        },
        Endpoint::Chat => {
            let on = f.boolean("logprobs")?.unwrap_or(false);
            match f.int("top_logprobs")? {
                None | Some(0) => Ok(on),
                Some(n) => Err(ApiError::invalid(
                    Some("top_logprobs".into()),
                    format!("`top_logprobs` {n}: this server returns the sampled token's log-probability only (0)"),
                )),
            }
        }
    }
}

/// Fields whose non-neutral values this server does not implement: refused, not ignored.
fn refuse_unimplemented(f: &Fields) -> Result<(), ApiError> {
    for name in ["n", "best_of"] {
        if let Some(n) = f.int(name)? {
            if n != 1 {
                return Err(ApiError::invalid(
                    Some(name.into()),
                    format!("`{name}` {n}: this server returns one choice per request (send {n} requests instead)"),
                ));
            }
        }
    }
    for name in ["presence_penalty", "frequency_penalty"] {
        if let Some(x) = f.number(name)? {
            if x != 0.0 {
                return Err(ApiError::invalid(Some(name.into()), format!("`{name}` is not supported (only 0)")));
            }
        }
    }
    if let Some(x) = f.number("repetition_penalty")? {
        if x != 1.0 {
            return Err(ApiError::invalid(
                Some("repetition_penalty".into()),
                "`repetition_penalty` is not supported (only 1)",
            ));
        }
    }
    for name in ["suffix", "tools", "functions", "logit_bias"] {
        match f.get(name) {
            None | Some(Value::Null) => {}
            Some(Value::Object(o)) if o.is_empty() => {}
            Some(Value::Array(a)) if a.is_empty() => {}
            Some(_) => return Err(ApiError::invalid(Some(name.into()), format!("`{name}` is not supported"))),
        }
    }
    if let Some(v) = f.get("response_format") {
        let text = v.is_null() || v.get("type").and_then(Value::as_str) == Some("text");
        if !text {
            return Err(ApiError::invalid(Some("response_format".into()), "only `{\"type\": \"text\"}` is supported"));
        }
    }
    Ok(())
}

struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }
    fn string(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(wrong_type(name, "a string", v)),
        }
    }
    fn boolean(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(wrong_type(name, "a boolean", v)),
        }
    }
    fn number(&self, name: &str) -> Result<Option<f64>, ApiError> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(v) => Err(wrong_type(name, "a number", v)),
        }
    }
    fn int(&self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) => Ok(Some(i)),
                None => Err(ApiError::invalid(Some(name.into()), format!("`{name}` must be an integer, not {n}"))),
            },
            Some(v) => Err(wrong_type(name, "an integer", v)),
        }
    }
    fn uint(&self, name: &str) -> Result<Option<usize>, ApiError> {
        match self.int(name)? {
            None => Ok(None),
            Some(i) if i >= 0 => Ok(Some(usize::try_from(i).unwrap_or(usize::MAX))),
            Some(i) => Err(ApiError::invalid(Some(name.into()), format!("`{name}` must be >= 0, not {i}"))),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(param: &str, expected: &str, got: &Value) -> ApiError {
    ApiError::invalid(Some(param.to_string()), format!("`{param}` must be {expected}, not {}", kind(got)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(e: Endpoint, body: &str) -> GenParams {
        parse(e, body.as_bytes()).unwrap_or_else(|err| panic!("{body}: {err}"))
    }
    fn bad(e: Endpoint, body: &[u8]) -> ApiError {
        parse(e, body).expect_err(&String::from_utf8_lossy(body))
    }

    #[test]
    fn completion_defaults_and_fields() {
        let p = ok(Endpoint::Completions, r#"{"model": "m", "prompt": "hi"}"#);
        assert_eq!(p.input, Input::Completion(Prompt::Text("hi".into())));
        assert_eq!(p.max_tokens, Some(16));
        assert_eq!((p.temperature, p.top_p, p.top_k, p.stream), (1.0, 1.0, 0, false));
        let p = ok(
            Endpoint::Completions,
            r#"{"model": "m", "prompt": [1, 2, 3], "max_tokens": null, "temperature": 0, "top_k": -1,
                "seed": -5, "stop": ["a", "bc"], "ignore_eos": true, "stream": true,
                "stream_options": {"include_usage": true}, "logprobs": 0, "n": 1, "user": "x"}"#,
        );
        assert_eq!(p.input, Input::Completion(Prompt::Tokens(vec![1, 2, 3])));
        assert_eq!(p.max_tokens, None);
        assert_eq!(p.seed, Some((-5i64) as u64));
        assert_eq!(p.stop, vec!["a".to_string(), "bc".to_string()]);
        assert!(p.ignore_eos && p.stream && p.include_usage && p.logprobs);
        let p = ok(Endpoint::Completions, r#"{"model": "m", "prompt": [[7, 8]]}"#);
        assert_eq!(p.input, Input::Completion(Prompt::Tokens(vec![7, 8])));
        let p = ok(Endpoint::Completions, r#"{"model": "m", "prompt": ["one"]}"#);
        assert_eq!(p.input, Input::Completion(Prompt::Text("one".into())));
    }

    #[test]
    fn chat_messages_and_max_completion_tokens() {
        let p = ok(
            Endpoint::Chat,
            r#"{"model": "m", "messages": [{"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": null}],
                "max_tokens": 5, "max_completion_tokens": 7, "logprobs": true}"#,
        );
        let Input::Chat(m) = &p.input else { panic!() };
        assert_eq!(m.len(), 3);
        assert_eq!((m[0].role.as_str(), m[1].content.as_str(), m[2].content.as_str()), ("system", "ab", ""));
        assert_eq!(p.max_tokens, Some(7));
        assert!(p.logprobs);
        assert_eq!(
            ok(Endpoint::Chat, r#"{"model": "m", "messages": [{"role": "user", "content": "x"}]}"#).max_tokens,
            None
        );
    }

    #[test]
    fn every_mistake_names_its_field() {
        let c = Endpoint::Completions;
        let cases: &[(&[u8], Option<&str>, &str)] = &[
            (b"{\"model\": \"m\", \"prompt\": \"\xff\"}", None, "UTF-8"),
            (b"", None, "empty"),
            (b"{\"model\": ", None, "not valid JSON"),
            (b"[1]", None, "JSON object"),
            (br#"{"prompt": "x"}"#, Some("model"), "required"),
            (br#"{"model": "m"}"#, Some("prompt"), "required"),
            (br#"{"model": 3, "prompt": "x"}"#, Some("model"), "a string"),
            (br#"{"model": "m", "prompt": ""}"#, Some("prompt"), "empty"),
            (br#"{"model": "m", "prompt": {}}"#, Some("prompt"), "a string or an array"),
            (br#"{"model": "m", "prompt": [1, -2]}"#, Some("prompt"), "[1]"),
            (br#"{"model": "m", "prompt": ["a", "b"]}"#, Some("prompt"), "one prompt"),
            (br#"{"model": "m", "prompt": "x", "max_tokens": "5"}"#, Some("max_tokens"), "integer"),
            (br#"{"model": "m", "prompt": "x", "max_tokens": 1.5}"#, Some("max_tokens"), "integer"),
            (br#"{"model": "m", "prompt": "x", "max_tokens": 0}"#, Some("max_tokens"), "at least 1"),
            (br#"{"model": "m", "prompt": "x", "max_tokens": -1}"#, Some("max_tokens"), ">= 0"),
            (br#"{"model": "m", "prompt": "x", "temperature": 3}"#, Some("temperature"), "between"),
            (br#"{"model": "m", "prompt": "x", "top_p": 0}"#, Some("top_p"), "(0, 1]"),
            (br#"{"model": "m", "prompt": "x", "top_k": -3}"#, Some("top_k"), "-1 or 0"),
            (br#"{"model": "m", "prompt": "x", "stream": "yes"}"#, Some("stream"), "a boolean"),
            (
                br#"{"model": "m", "prompt": "x", "stream_options": {"include_usage": true}}"#,
                Some("stream_options"),
                "stream",
            ),
            (br#"{"model": "m", "prompt": "x", "stop": 5}"#, Some("stop"), "a string"),
            (br#"{"model": "m", "prompt": "x", "stop": [""]}"#, Some("stop"), "1 ..="),
            (br#"{"model": "m", "prompt": "x", "n": 2}"#, Some("n"), "one choice"),
            (br#"{"model": "m", "prompt": "x", "best_of": 3}"#, Some("best_of"), "one choice"),
            (br#"{"model": "m", "prompt": "x", "logprobs": 5}"#, Some("logprobs"), "sampled token"),
            (br#"{"model": "m", "prompt": "x", "presence_penalty": 0.5}"#, Some("presence_penalty"), "not supported"),
            (br#"{"model": "m", "prompt": "x", "suffix": "z"}"#, Some("suffix"), "not supported"),
        ];
        for &(body, param, needle) in cases {
            let e = bad(c, body);
            assert_eq!(e.status, 400, "{}", String::from_utf8_lossy(body));
            assert_eq!(e.param.as_deref(), param, "{}: {}", String::from_utf8_lossy(body), e.message);
            assert!(e.message.contains(needle), "{}: {}", String::from_utf8_lossy(body), e.message);
        }
        let chat: &[(&[u8], &str)] = &[
            (br#"{"model": "m"}"#, "messages"),
            (br#"{"model": "m", "messages": []}"#, "messages"),
            (br#"{"model": "m", "messages": "hi"}"#, "messages"),
            (br#"{"model": "m", "messages": [{"content": "x"}]}"#, "messages[0].role"),
            (br#"{"model": "m", "messages": [{"role": "user"}]}"#, "messages[0].content"),
            (br#"{"model": "m", "messages": [{"role": "tool", "content": "x"}]}"#, "messages[0].role"),
            (
                br#"{"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#,
                "messages[0].content[0]",
            ),
            (br#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}"#, "top_logprobs"),
            (
                br#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0}"#,
                "max_completion_tokens",
            ),
        ];
        for &(body, param) in chat {
            let e = bad(Endpoint::Chat, body);
            assert_eq!(
                (e.status, e.param.as_deref()),
                (400, Some(param)),
                "{}: {}",
                String::from_utf8_lossy(body),
                e.message
            );
        }
    }
}
