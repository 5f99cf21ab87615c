//! `faascale serve` end to end on the tiny model, through real HTTP, on both `--io` backends:
//! the OpenAI endpoints and their shapes, streaming, usage, stop strings, the API key, and an
//! OpenAI error object with the right status for every kind of bad request.

mod serve_util;

use serde_json::json;
use serve_util::{request, Serve, BACKENDS};

fn completion(s: &Serve, body: serde_json::Value) -> serde_json::Value {
    let r = s.post("/v1/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn endpoints_streaming_and_usage() {
    for io in BACKENDS {
        let s = Serve::tiny(io, &[]);
        assert_eq!(s.model, "tiny-llama");
        s.assert_healthy();
        let m = s.get("/v1/models").json();
        assert_eq!(m["data"][0]["id"], "tiny-llama", "{m}");

        // a whole completion
        let body = json!({"model": "tiny-llama", "prompt": "Hello world", "max_tokens": 12, "temperature": 0, "ignore_eos": true});
        let c = completion(&s, body.clone());
        assert_eq!(c["object"], "text_completion");
        assert_eq!(c["choices"][0]["finish_reason"], "length");
        assert_eq!(c["usage"]["completion_tokens"], 12);
        let prompt_tokens = c["usage"]["prompt_tokens"].as_u64().unwrap();
        assert!(prompt_tokens > 0);
        assert_eq!(c["usage"]["total_tokens"].as_u64().unwrap(), prompt_tokens + 12);
        let text = c["choices"][0]["text"].as_str().unwrap().to_string();

        // the same request streamed: the same text, chunk by chunk, then usage, then [DONE]
        let mut sb = body.clone();
        sb["stream"] = json!(true);
        sb["stream_options"] = json!({"include_usage": true});
        let r = s.post("/v1/completions", &sb);
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap().starts_with("text/event-stream"));
        let ev = r.events();
        assert_eq!(ev.last().unwrap(), "[DONE]", "{ev:?}");
        let chunks: Vec<serde_json::Value> =
            ev[..ev.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
        let usage = chunks.last().unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], 12);
        let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
        assert_eq!(streamed, text);
        assert_eq!(chunks[chunks.len() - 2]["choices"][0]["finish_reason"], "length");
        assert!(chunks[..chunks.len() - 1].iter().all(|c| c["usage"].is_null() && c["object"] == "text_completion"));

        // chat, whole and streamed, with max_completion_tokens
        let chat = json!({"model": "tiny-llama", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                          "max_completion_tokens": 6, "temperature": 0, "ignore_eos": true});
        let r = s.post("/v1/chat/completions", &chat);
        assert_eq!(r.status, 200, "{}", r.text());
        let c = r.json();
        assert_eq!(c["object"], "chat.completion");
        assert_eq!(c["choices"][0]["message"]["role"], "assistant");
        assert_eq!(c["usage"]["completion_tokens"], 6);
        let chat_text = c["choices"][0]["message"]["content"].as_str().unwrap().to_string();
        let mut cs = chat.clone();
        cs["stream"] = json!(true);
        cs["stream_options"] = json!({"include_usage": true});
        let ev = s.post("/v1/chat/completions", &cs).events();
        let chunks: Vec<serde_json::Value> =
            ev[..ev.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[0]["object"], "chat.completion.chunk");
        let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
        assert_eq!(streamed, chat_text);
        assert_eq!(chunks.last().unwrap()["usage"]["total_tokens"], c["usage"]["total_tokens"]);

        // a stop string: the output ends just before its first occurrence
        let long = completion(
            &s,
            json!({"model": "tiny-llama", "prompt": "Hello world", "max_tokens": 40, "temperature": 0, "ignore_eos": true}),
        );
        let full = long["choices"][0]["text"].as_str().unwrap().to_string();
        let chars: Vec<char> = full.chars().collect();
        let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
        if !stop.contains('\u{FFFD}') {
            let cut = completion(
                &s,
                json!({"model": "tiny-llama", "prompt": "Hello world", "max_tokens": 40, "temperature": 0, "ignore_eos": true, "stop": [stop.clone()]}),
            );
            assert_eq!(cut["choices"][0]["finish_reason"], "stop", "stop {stop:?} in {full:?}");
            assert_eq!(cut["choices"][0]["text"].as_str().unwrap(), &full[..full.find(&stop).unwrap()]);
        }

        // seeded sampling repeats; logprobs of the sampled tokens
        let seeded = json!({"model": "tiny-llama", "prompt": [5, 6, 7], "max_tokens": 10, "temperature": 0.9, "top_k": 20, "top_p": 0.9, "seed": 42, "logprobs": 0, "ignore_eos": true});
        let a = completion(&s, seeded.clone());
        let b = completion(&s, seeded);
        assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
        let lp = &a["choices"][0]["logprobs"];
        assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 10, "{lp}");
        assert!(lp["token_logprobs"].as_array().unwrap().iter().all(|x| x.as_f64().unwrap() <= 0.0));
        assert_eq!(lp, &b["choices"][0]["logprobs"]);
        assert!(s.metric("generation_tokens_total") >= 12.0 * 2.0 + 6.0 * 2.0);
        assert!(s.metric("request_success_total{model_name=\"tiny-llama\",finished_reason=\"length\"}") >= 4.0);
        s.assert_healthy();
    }
}

#[test]
fn every_bad_request_gets_an_openai_error() {
    for io in BACKENDS {
        let s = Serve::tiny(io, &[]);
        let post =
            |path: &str, body: &[u8]| request(s.addr, "POST", path, &[("content-type", "application/json")], body);
        let c = "/v1/completions";
        // (path, body, status, param, words the message must hold)
        type Case<'a> = (&'a str, Vec<u8>, u16, Option<&'a str>, &'a str);
        let cases: Vec<Case> = vec![
            (c, b"{not json".to_vec(), 400, None, "not valid JSON"),
            (c, b"{\"model\": \"tiny-llama\", \"prompt\": \"a\xff\"}".to_vec(), 400, None, "UTF-8"),
            (
                c,
                br#"{"model": "tiny-llama", "prompt": "a", "max_tokens": "ten"}"#.to_vec(),
                400,
                Some("max_tokens"),
                "integer",
            ),
            (
                c,
                br#"{"model": "tiny-llama", "prompt": "a", "temperature": "hot"}"#.to_vec(),
                400,
                Some("temperature"),
                "number",
            ),
            (c, br#"{"model": "nope", "prompt": "a"}"#.to_vec(), 404, Some("model"), "nope"),
            (c, br#"{"prompt": "a"}"#.to_vec(), 400, Some("model"), "required"),
            (c, br#"{"model": "tiny-llama"}"#.to_vec(), 400, Some("prompt"), "required"),
            (
                c,
                json!({"model": "tiny-llama", "prompt": vec![5; 300]}).to_string().into_bytes(),
                400,
                Some("prompt"),
                "256 tokens. However, your prompt has 300 tokens",
            ),
            (
                c,
                br#"{"model": "tiny-llama", "prompt": [5, 6], "max_tokens": 1000}"#.to_vec(),
                400,
                Some("max_tokens"),
                "2 in the prompt, 1000 for the completion",
            ),
            (c, br#"{"model": "tiny-llama", "prompt": [5, 383]}"#.to_vec(), 400, Some("prompt"), "383 is out of range"),
            (c, br#"{"model": "tiny-llama", "prompt": "a", "n": 2}"#.to_vec(), 400, Some("n"), "one choice"),
            (
                "/v1/chat/completions",
                br#"{"model": "tiny-llama", "messages": [{"role": "user"}]}"#.to_vec(),
                400,
                Some("messages[0].content"),
                "required",
            ),
            (
                "/v1/chat/completions",
                br#"{"model": "tiny-llama", "messages": "hi"}"#.to_vec(),
                400,
                Some("messages"),
                "array",
            ),
        ];
        for (path, body, status, param, needle) in cases {
            let r = post(path, &body);
            let e = r.openai_error(status);
            assert_eq!(e["param"].as_str(), param, "{}: {e}", String::from_utf8_lossy(&body));
            assert!(e["message"].as_str().unwrap().contains(needle), "{}: {e}", String::from_utf8_lossy(&body));
        }
        let e = request(s.addr, "GET", "/v1/nothing", &[], b"").openai_error(404);
        assert!(e["message"].as_str().unwrap().contains("/v1/nothing"));
        request(s.addr, "GET", "/v1/completions", &[], b"").openai_error(405);
        request(s.addr, "DELETE", "/v1/models", &[], b"").openai_error(405);
        s.assert_healthy();
    }
}

#[test]
fn the_api_key_guards_v1_only() {
    let (_dir, model) = serve_util::tiny_model();
    for (args, env) in [(vec!["--api-key", "sekrit"], vec![]), (vec![], vec![("FAASCALE_API_KEY", "sekrit")])] {
        let s = Serve::start(&model, "epoll", &args, &env);
        let models = |h: &[(&str, &str)]| request(s.addr, "GET", "/v1/models", h, b"");
        let e = models(&[]).openai_error(401);
        assert_eq!(e["type"], "authentication_error");
        models(&[("authorization", "Bearer wrong")]).openai_error(401);
        models(&[("authorization", "sekrit")]).openai_error(401);
        let body = br#"{"model": "tiny-llama", "prompt": "a", "max_tokens": 1}"#;
        request(s.addr, "POST", "/v1/completions", &[], body).openai_error(401);
        assert_eq!(models(&[("authorization", "Bearer sekrit")]).status, 200);
        let ok = request(s.addr, "POST", "/v1/completions", &[("Authorization", "Bearer sekrit")], body);
        assert_eq!(ok.status, 200, "{}", ok.text());
        assert_eq!(s.get("/health").status, 200);
        assert_eq!(s.get("/metrics").status, 200);
    }
}

#[test]
fn binding_a_public_address_without_a_key_warns() {
    use std::io::{BufRead, BufReader};
    let (_dir, model) = serve_util::tiny_model();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_faascale"))
        .args(["--log", "warn", "serve", "--host", "0.0.0.0", "--port", "0", "--threads", "1", "--model"])
        .arg(&model)
        .env_remove("FAASCALE_API_KEY")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut out).unwrap();
    assert!(out.starts_with("{\"url\": \"http://0.0.0.0:"), "{out}");
    // SAFETY: kill(2) on our own child's pid, not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(err.contains("no API key"), "{err}");
}
