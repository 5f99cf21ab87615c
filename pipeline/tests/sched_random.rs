//! Seeded random interleavings: random configs (sequences at once, rows per step, KV budget,
//! queue bound, stage cuts), random submits, cancels by handle and by sink, at random moments.
//! Invariants: every sink hears exactly one finish and no token after it; what a sequence
//! produced is a prefix of its solo output, all of it unless cancelled; the KV books return to 0
//! and match what the engine holds. A failing seed is printed; rerun it with SCHED_SEED=<seed>
//! (the seed fixes configs and requests; thread timing still varies).

mod sched_common;
use pipeline::sampler::Rng;
use pipeline::sched::{FinishKind, Scheduler, SeqRequest, SubmitError};
use sched_common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn pool(rng: &mut Rng) -> Vec<SeqRequest> {
    (0..40)
        .map(|i| {
            let len = 1 + (rng.next_u64() % 60) as usize;
            let prompt: Vec<u32> = (0..len).map(|_| (rng.next_u64() % 384) as u32).collect();
            let max_tokens = 1 + (rng.next_u64() % 40) as usize;
            let mut r = if i % 3 == 2 { sampled(prompt, max_tokens, i) } else { greedy(prompt, max_tokens) };
            if i % 7 == 0 {
                r.stop_token_ids = (0..20).map(|_| (rng.next_u64() % 384) as u32).collect();
            }
            r
        })
        .collect()
}

enum Action {
    Run,
    CancelByHandleAfter(Duration),
    SinkCancelsAfter(usize),
}

#[test]
fn random_interleavings_keep_the_invariants() {
    let seeds: Vec<u64> = match std::env::var("SCHED_SEED") {
        Ok(s) => vec![s.parse().expect("SCHED_SEED is a number")],
        Err(_) => (1..=12).collect(),
    };
    let (_d, model) = synth_model("tiny-llama", 12);
    let reqs = pool(&mut Rng::new(2024));
    let want = solo(cpu_engine(&model, &[], 1), &reqs);
    let (mut preemptions, mut cancelled) = (0, 0);
    let n = seeds.len();
    for seed in seeds {
        eprintln!("sched_random: seed {seed}");
        let (p, c) = run_seed(seed, &model, &reqs, &want);
        preemptions += p;
        cancelled += c;
    }
    if n > 1 {
        assert!(preemptions > 0 && cancelled > 0, "the seeds should preempt and cancel: {preemptions}, {cancelled}");
    }
}

/// Returns (preemptions, sequences cancelled).
fn run_seed(seed: u64, model: &pipeline::Model, reqs: &[SeqRequest], want: &[(Vec<u32>, FinishKind)]) -> (u64, usize) {
    let mut rng = Rng::new(seed);
    let mut pick = |n: u64| (rng.next_u64() % n) as usize;
    let max_num_seqs = 1 + pick(12);
    let chunk = max_num_seqs + pick(40);
    // every request fits alone (at most 100 positions; 2048 bytes per position)
    let kv = if pick(4) == 0 { None } else { Some((128 + pick(200)) as u64 * 2048) };
    let max_queue = 2 + pick(40);
    let cuts: &[usize] = [&[][..], &[3], &[2, 6]][pick(3)];
    let c = cfg(max_num_seqs, max_queue, kv, chunk);
    let ctx = format!("seed {seed}: {c:?}, cuts {cuts:?}");
    let sched = Arc::new(Scheduler::start(Box::new(cpu_engine(model, cuts, 1)), c).unwrap());
    // meanwhile, the books are watched: within the budget and the bounds, matching the engine
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = std::thread::spawn({
        let (sched, stop) = (sched.clone(), stop.clone());
        move || {
            let mut seen = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let s = sched.stats();
                let held_ok =
                    s.kv_held_bytes == Some(s.kv_used_bytes) || (s.steps_total == 0 && s.kv_held_bytes.is_none());
                if s.kv_used_bytes > s.kv_total_bytes
                    || !held_ok
                    || s.running > c.max_num_seqs
                    || s.waiting > c.max_queue + c.max_num_seqs
                {
                    return Err(format!("{s:?}"));
                }
                seen += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
            Ok(seen)
        }
    });
    let mut runs = Vec::new();
    let mut full = 0;
    for _ in 0..60 {
        let i = pick(reqs.len() as u64);
        let action = match pick(5) {
            0 => Action::CancelByHandleAfter(Duration::from_micros(pick(3000) as u64)),
            1 => Action::SinkCancelsAfter(1 + pick(10)),
            _ => Action::Run,
        };
        let rec = Rec::new();
        let sink = match action {
            Action::SinkCancelsAfter(n) => rec.sink_cancelling_after(n),
            _ => rec.sink(),
        };
        let mut submitted = sched.submit(reqs[i].clone(), sink);
        for _ in 0..5 {
            let Err(SubmitError::QueueFull) = submitted else { break };
            full += 1;
            std::thread::sleep(Duration::from_millis(1));
            let sink = match action {
                Action::SinkCancelsAfter(n) => rec.sink_cancelling_after(n),
                _ => rec.sink(),
            };
            submitted = sched.submit(reqs[i].clone(), sink);
        }
        match submitted {
            Ok(h) => {
                if let Action::CancelByHandleAfter(d) = action {
                    if d.as_micros() % 2 == 0 {
                        h.cancel();
                    } else {
                        std::thread::spawn(move || {
                            std::thread::sleep(d);
                            h.cancel();
                        });
                    }
                }
                runs.push((i, action, rec));
            }
            Err(SubmitError::QueueFull) => {}
            Err(e) => panic!("{ctx}: submit: {e:?}"),
        }
        if pick(3) == 0 {
            std::thread::sleep(Duration::from_micros(pick(2000) as u64));
        }
    }
    let mut cancelled = 0;
    for (n, (i, action, rec)) in runs.iter().enumerate() {
        let (tokens, f) = rec.wait();
        let (ref_tokens, ref_kind) = &want[*i];
        let what = format!("{ctx}: run {n} (request {i})");
        assert!(ref_tokens.starts_with(&tokens), "{what}: {tokens:?} is not a prefix of {ref_tokens:?}");
        assert_eq!(f.completion_tokens, tokens.len(), "{what}");
        match f.kind {
            FinishKind::Cancelled => {
                cancelled += 1;
                assert!(!matches!(action, Action::Run), "{what}: cancelled, never asked to");
                if let Action::SinkCancelsAfter(k) = action {
                    assert_eq!(tokens.len(), *k, "{what}");
                }
            }
            ref k => assert_eq!((&tokens, k), (ref_tokens, ref_kind), "{what}"),
        }
        let r = rec.lock();
        assert_eq!((r.finishes.len(), r.late_tokens), (1, 0), "{what}");
    }
    stop.store(true, Ordering::Relaxed);
    let seen = watcher.join().unwrap().unwrap_or_else(|e| panic!("{ctx}: stats out of bounds: {e}"));
    assert!(seen > 0);
    let s = wait_stats(&sched, &ctx, |s| s.running == 0 && s.waiting == 0);
    assert_eq!((s.kv_used_bytes, s.kv_held_bytes), (0, Some(0)), "{ctx}");
    eprintln!(
        "sched_random: seed {seed}: {} runs, {full} refusals (queue full), {cancelled} cancelled, {} preemptions",
        runs.len(),
        s.preemptions_total
    );
    (s.preemptions_total, cancelled)
}
