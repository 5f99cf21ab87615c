//! `faascale serve` under abuse at the API level, on both `--io` backends: clients that vanish
//! mid-stream (their KV cache is freed), a full queue (429 with Retry-After), SIGTERM with
//! streams in flight (they finish, exit 0), and batch invariance through HTTP (a request's
//! greedy tokens are the same alone and among 63 others). The server answers `/health` after each.

mod serve_util;

use serde_json::json;
use serve_util::{eventually, Serve, Stream, BACKENDS};
use std::io::Write;
use std::sync::{Arc, Barrier};

fn stream_body(prompt: Vec<u32>, max_tokens: usize) -> serde_json::Value {
    json!({"model": "tiny-llama", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true, "stream": true})
}

#[test]
fn vanished_streams_free_their_kv_cache() {
    for io in BACKENDS {
        let s = Serve::tiny(io, &[]);
        let max_tokens = 200;
        let n = 100;
        let threads: Vec<_> = (0..n)
            .map(|i| {
                let addr = s.addr;
                std::thread::spawn(move || {
                    let mut st =
                        Stream::open(addr, "/v1/completions", &stream_body(vec![10 + i as u32, 20, 30], max_tokens));
                    assert_eq!(st.status, 200);
                    for _ in 0..3 {
                        st.next_event().expect("a first few chunks");
                    }
                    if i % 2 == 0 {
                        return 0; // vanish: the connection closes here, mid-stream
                    }
                    let mut events = 0;
                    while let Some(e) = st.next_event() {
                        events += 1;
                        if e == "[DONE]" {
                            return events;
                        }
                    }
                    panic!("stream {i} ended without [DONE]");
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        eventually("KV cache usage back to 0 and nothing running", || {
            s.metric("kv_cache_usage_perc") == 0.0 && s.metric("num_requests_running") == 0.0
        });
        assert_eq!(s.metric("num_requests_waiting"), 0.0);
        let generated = s.metric("generation_tokens_total");
        assert!(generated < (n * max_tokens) as f64, "cancelled streams still generated every token: {generated}");
        // the 50 that stayed finished; of those that vanished, at most a few were done already
        let finished = s.metric("request_success_total{model_name=\"tiny-llama\",finished_reason=\"length\"}");
        eprintln!("{io}: {finished} of {n} requests finished, {generated} tokens generated");
        assert!((50.0..100.0).contains(&finished), "{finished} requests finished");
        s.assert_healthy();
    }
}

#[test]
fn vanished_clients_of_whole_responses_cancel_too() {
    for io in BACKENDS {
        let s = Serve::tiny(io, &[]);
        let (n, max_tokens) = (20, 250);
        let mut conns = Vec::new();
        for i in 0..n {
            let body = json!({"model": "tiny-llama", "prompt": [60 + i, 61], "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true});
            let body = body.to_string();
            let mut c = serve_util::connect(s.addr);
            write!(c, "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                .unwrap();
            conns.push(c);
        }
        // gone while their requests run, before the answers
        eventually("the requests running", || s.metric("num_requests_running") > 0.0);
        drop(conns);
        // idle (nothing running or waiting, no KV held) for a whole second: every request is over
        let idle = || {
            s.metric("num_requests_running") == 0.0
                && s.metric("num_requests_waiting") == 0.0
                && s.metric("kv_cache_usage_perc") == 0.0
        };
        let mut idle_since: Option<std::time::Instant> = None;
        eventually("every vanished request over and its KV cache freed", || {
            if !idle() {
                idle_since = None;
                return false;
            }
            idle_since.get_or_insert_with(std::time::Instant::now).elapsed().as_secs_f64() > 1.0
        });
        let generated = s.metric("generation_tokens_total");
        eprintln!("{io}: {generated} tokens generated for {n} vanished requests of {max_tokens}");
        assert!(
            generated < (n as usize * max_tokens / 2) as f64,
            "vanished clients' requests ran on: {generated} tokens"
        );
        s.assert_healthy();
    }
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    for io in BACKENDS {
        let s = Serve::tiny(io, &["--max-num-seqs", "1", "--max-queue", "1"]);
        let mut saw_429 = false;
        for _round in 0..10 {
            let n = 8;
            let barrier = Arc::new(Barrier::new(n));
            let threads: Vec<_> = (0..n)
                .map(|i| {
                    let (addr, barrier) = (s.addr, barrier.clone());
                    std::thread::spawn(move || {
                        let body = json!({"model": "tiny-llama", "prompt": [5 + i as u32, 6], "max_tokens": 250, "ignore_eos": true, "temperature": 0});
                        barrier.wait();
                        serve_util::request(addr, "POST", "/v1/completions", &[], body.to_string().as_bytes())
                    })
                })
                .collect();
            for t in threads {
                let r = t.join().unwrap();
                match r.status {
                    200 => assert_eq!(r.json()["usage"]["completion_tokens"], 250),
                    429 => {
                        let e = r.openai_error(429);
                        assert!(e["message"].as_str().unwrap().contains("queue is full"), "{e}");
                        assert_eq!(r.header("retry-after"), Some("1"));
                        saw_429 = true;
                    }
                    other => panic!("status {other}: {}", r.text()),
                }
            }
            if saw_429 {
                break;
            }
        }
        assert!(saw_429, "8 simultaneous requests never filled a queue of 1 behind 1 running sequence");
        s.assert_healthy();
    }
}

#[test]
fn sigterm_lets_streams_in_flight_finish() {
    for io in BACKENDS {
        let mut s = Serve::tiny(io, &[]);
        let n = 8;
        let max_tokens = 200;
        let mut streams: Vec<Stream> = (0..n)
            .map(|i| {
                let mut st = Stream::open(s.addr, "/v1/completions", &stream_body(vec![40 + i as u32, 41], max_tokens));
                st.next_event().expect("a first chunk");
                st
            })
            .collect();
        s.assert_healthy();
        // SAFETY: kill(2) on our own child's pid, not yet reaped.
        unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
        for (i, st) in streams.iter_mut().enumerate() {
            let mut finish = None;
            let mut done = false;
            while let Some(e) = st.next_event() {
                if e == "[DONE]" {
                    done = true;
                    break;
                }
                let v: serde_json::Value = serde_json::from_str(&e).unwrap();
                assert!(v.get("error").is_none(), "stream {i}: {v}");
                if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
                    finish = Some(f.to_string());
                }
            }
            assert!(done, "stream {i} was cut off by SIGTERM");
            assert_eq!(finish.as_deref(), Some("length"), "stream {i}");
        }
        let status = s.terminate();
        assert!(status.success(), "exit status {status:?}");
    }
}

#[test]
fn greedy_tokens_are_the_same_alone_and_among_63_others() {
    for io in BACKENDS {
        let s = Serve::tiny(io, &[]);
        let probe = json!({"model": "tiny-llama", "prompt": [3, 17, 99, 250, 7, 42], "max_tokens": 48, "temperature": 0, "ignore_eos": true, "logprobs": 0});
        let alone = s.post("/v1/completions", &probe).json();
        let barrier = Arc::new(Barrier::new(64));
        let threads: Vec<_> = (0..64)
            .map(|i| {
                let (addr, barrier, probe) = (s.addr, barrier.clone(), probe.clone());
                std::thread::spawn(move || {
                    // the others: different prompts, some long enough to be prefilled in chunks
                    let body = if i == 0 {
                        probe
                    } else {
                        let len = 1 + (i * 37) % 200;
                        let prompt: Vec<u32> = (0..len).map(|j| ((i * 13 + j * 7) % 380) as u32).collect();
                        json!({"model": "tiny-llama", "prompt": prompt, "max_tokens": 40, "temperature": 0, "ignore_eos": true})
                    };
                    barrier.wait();
                    serve_util::request(addr, "POST", "/v1/completions", &[], body.to_string().as_bytes())
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(results.iter().all(|r| r.status == 200), "{:?}", results.iter().map(|r| r.status).collect::<Vec<_>>());
        let among = results[0].json();
        let lp = |v: &serde_json::Value| v["choices"][0]["logprobs"].clone();
        assert_eq!(lp(&among)["tokens"].as_array().unwrap().len(), 48);
        assert_eq!(lp(&alone), lp(&among), "tokens or their log-probabilities changed with the batch");
        assert_eq!(alone["choices"][0]["text"], among["choices"][0]["text"]);
        s.assert_healthy();
    }
}
