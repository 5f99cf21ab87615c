//! Continuous batching keeps batch invariance: a request's tokens are the same alone and among
//! 63 others, with chunked prefill and with preemptions; a long prompt does not stall decode.

mod sched_common;
use pipeline::sampler::Rng;
use pipeline::sched::{FinishKind, Scheduler, SeqRequest};
use pipeline::GenRequest;
use sched_common::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// 64 requests of mixed lengths: greedy, seeded sampling, some with stop tokens.
fn requests(seed: u64) -> Vec<SeqRequest> {
    let mut rng = Rng::new(seed);
    (0..64)
        .map(|i| {
            let len = 1 + (rng.next_u64() % 90) as usize;
            let prompt: Vec<u32> = (0..len).map(|_| (rng.next_u64() % 384) as u32).collect();
            let max_tokens = 1 + (rng.next_u64() % 30) as usize;
            let mut r = if i % 4 == 3 { sampled(prompt, max_tokens, i as u64) } else { greedy(prompt, max_tokens) };
            if i % 5 == 0 {
                // a random model rarely says EOS: stop on a tenth of the vocabulary instead
                r.ignore_eos = false;
                r.stop_token_ids = (0..40).map(|_| (rng.next_u64() % 384) as u32).collect();
            }
            r
        })
        .collect()
}

#[test]
fn tokens_alone_equal_tokens_among_63_others() {
    let (_d, model) = synth_model("tiny-llama", 3);
    let reqs = requests(17);
    let want = solo(cpu_engine(&model, &[], 1), &reqs);
    assert!(want.iter().any(|w| w.1 == FinishKind::Eos), "some request should stop at a stop token");

    // bytes per position: 8 layers × (K + V) × kv_dim 32 × 4 = 2048; 384 positions
    let small_kv = 384 * 2048;
    for (name, c) in [
        ("one chunk per prompt", cfg(64, 64, None, 512)),
        ("chunked prefill, 64 rows per step", cfg(64, 64, None, 64)),
        ("16 at once, 16 rows per step", cfg(16, 64, None, 16)),
        ("KV budget of 384 positions: preemptions", cfg(64, 64, Some(small_kv), 64)),
    ] {
        let sched = Scheduler::start(Box::new(cpu_engine(&model, &[3], 2)), c).unwrap();
        let recs: Vec<Rec> = reqs
            .iter()
            .map(|r| {
                let rec = Rec::new();
                sched.submit(r.clone(), rec.sink()).unwrap();
                rec
            })
            .collect();
        let mut preempted = 0;
        for (i, rec) in recs.iter().enumerate() {
            let (tokens, f) = rec.wait();
            assert_eq!((&tokens, &f.kind), (&want[i].0, &want[i].1), "{name}: request {i}");
            assert_eq!(f.completion_tokens, tokens.len());
            assert_eq!(f.prompt_tokens, reqs[i].prompt.len());
            preempted += f.preemptions;
        }
        let s = wait_stats(&sched, name, |s| s.running == 0);
        assert_eq!((s.kv_used_bytes, s.kv_held_bytes, s.waiting), (0, Some(0), 0), "{name}");
        if c.kv_cache_bytes.is_some() {
            assert!(preempted > 0 && s.preemptions_total == preempted as u64, "{name}: {preempted} preemptions");
        }
        for rec in &recs {
            assert_eq!(rec.finish_counts(), (1, 0));
        }
    }
}

#[test]
fn decode_and_prefill_apart_keep_the_tokens_and_never_mix() {
    let (_d, model) = synth_model("tiny-llama", 3);
    let reqs = requests(29);
    let want = solo(cpu_engine(&model, &[], 1), &reqs);
    for (name, c) in [
        ("3 rows per step", cfg(3, 64, None, 3)),
        ("16 rows per step, KV for 320 positions", cfg(16, 64, Some(320 * 2048), 16)),
        ("64 at once", cfg(64, 64, None, 100)),
    ] {
        let (lens, violations, decode_batches) =
            (Arc::<Mutex<HashMap<u64, usize>>>::default(), Arc::default(), Arc::default());
        let engine = SplitChecked {
            inner: cpu_engine(&model, &[], 2),
            prompt_lens: Arc::clone(&lens),
            violations: Arc::clone(&violations),
            decode_batches: Arc::clone(&decode_batches),
        };
        let sched = Scheduler::start(Box::new(engine), c).unwrap();
        let recs: Vec<Rec> = reqs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let rec = Rec::new();
                // sequence ids are handed out 1, 2, 3… in submit order (checked below)
                lens.lock().unwrap().insert(i as u64 + 1, r.prompt.len());
                let h = sched.submit(r.clone(), rec.sink()).unwrap();
                assert_eq!(h.id(), i as u64 + 1);
                rec
            })
            .collect();
        for (i, rec) in recs.iter().enumerate() {
            let (tokens, f) = rec.wait();
            assert_eq!((&tokens, &f.kind), (&want[i].0, &want[i].1), "{name}: request {i}");
        }
        assert_eq!(*violations.lock().unwrap(), Vec::<String>::new(), "{name}");
        assert!(*decode_batches.lock().unwrap() > 0, "{name}");
        let s = wait_stats(&sched, name, |s| s.running == 0);
        assert_eq!((s.kv_used_bytes, s.kv_held_bytes), (0, Some(0)), "{name}");
    }
}

#[test]
fn scheduler_generates_what_engine_generate_does() {
    let (_d, model) = synth_model("tiny-qwen2", 8);
    let reqs: Vec<SeqRequest> = vec![
        greedy(vec![3, 4, 5], 20),
        greedy((10..47).collect(), 6),
        sampled(vec![99], 13, 5),
        sampled(vec![7; 30], 9, 6),
    ];
    let mut e = cpu_engine(&model, &[], 1);
    let gen: Vec<GenRequest> = reqs
        .iter()
        .map(|r| GenRequest {
            prompt: r.prompt.clone(),
            max_tokens: r.max_tokens,
            sampling: r.sampling,
            ignore_eos: true,
        })
        .collect();
    let want = e.generate(&gen, 8192).unwrap();
    let sched = Scheduler::start(Box::new(cpu_engine(&model, &[2, 5], 2)), cfg(4, 8, None, 8)).unwrap();
    let recs: Vec<Rec> = reqs
        .iter()
        .map(|r| {
            let rec = Rec::new();
            sched.submit(r.clone(), rec.sink()).unwrap();
            rec
        })
        .collect();
    for (i, rec) in recs.iter().enumerate() {
        let (tokens, f) = rec.wait();
        assert_eq!(tokens, want[i].tokens, "request {i}");
        assert_eq!(f.kind, FinishKind::Length);
    }
}

#[test]
fn a_long_prompt_is_chunked_and_does_not_stall_decode() {
    let (_d, model) = synth_model("tiny-llama", 4);
    let sched = Scheduler::start(Box::new(cpu_engine(&model, &[], 1)), cfg(2, 4, None, 16)).unwrap();
    let log: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    struct Tagged(&'static str, Arc<Mutex<Vec<&'static str>>>, Rec);
    impl pipeline::sched::TokenSink for Tagged {
        fn token(&mut self, ev: pipeline::sched::TokenEvent) -> bool {
            self.1.lock().unwrap().push(self.0);
            self.2.sink().token(ev)
        }
        fn finish(&mut self, f: pipeline::sched::Finish) {
            self.2.sink().finish(f)
        }
    }
    let (dec, long) = (Rec::new(), Rec::new());
    sched.submit(greedy(vec![5, 6, 7], 120), Box::new(Tagged("decode", log.clone(), dec.clone()))).unwrap();
    dec.wait_tokens(1);
    let before = log.lock().unwrap().len();
    let prompt: Vec<u32> = (0..200).map(|i| (i * 7 % 384) as u32).collect();
    sched.submit(greedy(prompt, 3), Box::new(Tagged("long", log.clone(), long.clone()))).unwrap();
    long.wait();
    let log = log.lock().unwrap();
    let first_long = log.iter().position(|t| *t == "long").unwrap();
    let decoded_meanwhile = log[before..first_long].len();
    // 200 prompt tokens in steps of 16 rows, one of which is the decode row: at least 13 steps
    assert!(decoded_meanwhile >= 12, "only {decoded_meanwhile} decode tokens while the long prompt prefilled");
}
