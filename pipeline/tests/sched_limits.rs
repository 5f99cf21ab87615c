//! What the scheduler refuses and where sequences stop: validation at submit, the context and
//! KV-budget length limits, stop and EOS tokens, logprobs, seeded sampling, a full queue.

mod sched_common;
use pipeline::sched::{log_softmax_at, FinishKind, Scheduler, SeqRequest, SubmitError};
use pipeline::{GenRequest, LogitsRows, SamplingParams, StageBatch, StageInput, StageOutput};
use sched_common::*;

fn invalid(r: Result<pipeline::sched::SeqHandle, SubmitError>) -> String {
    match r {
        Err(SubmitError::Invalid(m)) => m,
        Err(e) => panic!("expected Invalid, got {e:?}"),
        Ok(_) => panic!("expected Invalid, got a handle"),
    }
}

#[test]
fn bad_requests_are_refused_at_submit_with_a_reason() {
    let (_d, model) = synth_model("tiny-llama", 1);
    let sched = Scheduler::start(Box::new(cpu_engine(&model, &[], 1)), cfg(4, 8, None, 64)).unwrap();
    let sink = || Rec::new().sink();
    let m = invalid(sched.submit(greedy(vec![], 5), sink()));
    assert!(m.contains("no tokens"), "{m}");
    // context length 256: a prompt of 256 leaves no room
    let m = invalid(sched.submit(greedy(vec![1; 256], 5), sink()));
    assert!(m.contains("256 tokens") && m.contains("context length is 256"), "{m}");
    let m = invalid(sched.submit(greedy(vec![1, 2, 384, 4], 5), sink()));
    assert!(m.contains("384") && m.contains("index 2") && m.contains("vocabulary size 384"), "{m}");
    let m = invalid(sched.submit(greedy(vec![1], 0), sink()));
    assert!(m.contains("max_tokens"), "{m}");
    let mut r = greedy(vec![1], 3);
    r.sampling.temperature = -1.0;
    assert!(invalid(sched.submit(r.clone(), sink())).contains("temperature"));
    r.sampling = SamplingParams { top_p: 0.0, ..Default::default() };
    assert!(invalid(sched.submit(r.clone(), sink())).contains("top_p"));
    let r = SeqRequest { stop_token_ids: vec![5, 999], ..greedy(vec![1], 3) };
    assert!(invalid(sched.submit(r, sink())).contains("999"));
    assert_eq!(sched.max_seq_tokens(), 256);
    // a prompt of 255 is fine
    let rec = Rec::new();
    sched.submit(greedy(vec![1; 255], 5), rec.sink()).unwrap();
    let (t, f) = rec.wait();
    assert_eq!((t.len(), f.kind), (1, FinishKind::Context));
}

#[test]
fn bad_configs_are_refused_at_start() {
    let (_d, model) = synth_model("tiny-llama", 1);
    for (c, what) in [
        (cfg(0, 8, None, 64), "max_num_seqs"),
        (cfg(257, 8, None, 512), "max_num_seqs"),
        (cfg(4, 0, None, 64), "max_queue"),
        (cfg(8, 8, None, 4), "prefill_chunk_tokens"),
        (cfg(8, 8, None, 9000), "prefill_chunk_tokens"),
        (cfg(8, 8, Some(2048), 64), "KV budget"),
    ] {
        let e = Scheduler::start(Box::new(cpu_engine(&model, &[], 1)), c).err().expect("refused");
        assert!(e.to_string().contains(what), "{c:?}: {e}");
    }
}

#[test]
fn the_context_length_ends_a_sequence_with_context() {
    let (_d, model) = synth_model("tiny-llama", 2);
    let prompt: Vec<u32> = (0..250).map(|i| (i * 11 % 384) as u32).collect();
    let want = cpu_engine(&model, &[], 1)
        .generate(
            &[GenRequest { prompt: prompt.clone(), max_tokens: 6, sampling: Default::default(), ignore_eos: true }],
            8192,
        )
        .unwrap();
    let sched = Scheduler::start(Box::new(cpu_engine(&model, &[], 1)), cfg(2, 4, None, 64)).unwrap();
    let rec = Rec::new();
    sched.submit(greedy(prompt, 100), rec.sink()).unwrap();
    let (t, f) = rec.wait();
    // prompt + completion = 256, the context length
    assert_eq!((&t, f.kind, f.completion_tokens, f.prompt_tokens), (&want[0].tokens, FinishKind::Context, 6, 250));
}

#[test]
fn a_kv_budget_below_one_context_limits_each_sequence() {
    let (_d, model) = synth_model("tiny-llama", 2);
    // 2048 bytes per position; 64 positions, whole allocation blocks
    let sched = Scheduler::start(Box::new(cpu_engine(&model, &[], 1)), cfg(2, 4, Some(64 * 2048 + 100), 64)).unwrap();
    assert_eq!(sched.max_seq_tokens(), 64);
    assert_eq!(sched.stats().kv_total_bytes, 64 * 2048);
    let m = invalid(sched.submit(greedy(vec![7; 70], 5), Rec::new().sink()));
    assert!(m.contains("70 tokens") && m.contains("at most 64 tokens") && m.contains("context length is 256"), "{m}");
    let prompt: Vec<u32> = (0..60).map(|i| (i * 5 % 384) as u32).collect();
    let want = solo(cpu_engine(&model, &[], 1), &[greedy(prompt.clone(), 4)]);
    let rec = Rec::new();
    sched.submit(greedy(prompt, 50), rec.sink()).unwrap();
    let (t, f) = rec.wait();
    assert_eq!((&t, f.kind), (&want[0].0, FinishKind::Context));
    // two such sequences do not fit together: they take turns, both complete
    let (a, b) = (Rec::new(), Rec::new());
    sched.submit(greedy(vec![9; 40], 20), a.sink()).unwrap();
    sched.submit(greedy(vec![8; 40], 20), b.sink()).unwrap();
    assert_eq!(a.wait().1.kind, FinishKind::Length);
    assert_eq!(b.wait().1.kind, FinishKind::Length);
    let s = wait_stats(&sched, "idle", |s| s.running == 0);
    assert_eq!((s.kv_used_bytes, s.kv_held_bytes), (0, Some(0)));
}

#[test]
fn stop_tokens_and_eos_end_a_sequence() {
    let (_d, model) = synth_model("tiny-llama", 5);
    let sched = Scheduler::start(Box::new(cpu_engine(&model, &[], 1)), cfg(4, 64, None, 64)).unwrap();
    let run = |r: SeqRequest| {
        let rec = Rec::new();
        sched.submit(r, rec.sink()).unwrap();
        rec.wait()
    };
    let (all, _) = run(greedy(vec![10, 20, 30], 12));
    let stop = all[4];
    let first = all.iter().position(|&t| t == stop).unwrap();
    let (t, f) = run(SeqRequest { stop_token_ids: vec![stop], ..greedy(vec![10, 20, 30], 12) });
    assert_eq!((&t[..], f.kind), (&all[..=first], FinishKind::Eos));
    // the model's EOS (2 or 3): find a seed whose sampled output says it (a random model's
    // greedy output rarely does), then run it again without ignore_eos
    let eos = &model.config.eos_token_ids;
    let found = (0..100u64).find_map(|seed| {
        let r = sampled(vec![7, 8, 9], 30, seed);
        let (t, _) = run(r.clone());
        t.iter().position(|x| eos.contains(x)).map(|i| (r, t, i))
    });
    let (r, t_ignoring, at) = found.expect("some seed's sampled output holds an EOS token");
    let (t, f) = run(SeqRequest { ignore_eos: false, ..r });
    assert_eq!((&t[..], f.kind), (&t_ignoring[..=at], FinishKind::Eos));
}

#[test]
fn logprobs_are_the_log_softmax_of_the_sampled_token() {
    let (_d, model) = synth_model("tiny-qwen2", 3);
    let prompt = vec![4u32, 8, 15, 16, 23, 42];
    let mut e = cpu_engine(&model, &[], 1);
    let batch = StageBatch {
        seq_ids: vec![1; prompt.len()],
        positions: (0..prompt.len() as u32).collect(),
        input: StageInput::Tokens(prompt.clone()),
        logits: LogitsRows::LastOfEachSeq,
    };
    let StageOutput::Logits { data, .. } = e.forward(&batch).unwrap() else { panic!() };
    let sched = Scheduler::start(Box::new(cpu_engine(&model, &[], 1)), cfg(2, 4, None, 64)).unwrap();
    let rec = Rec::new();
    sched.submit(SeqRequest { logprobs: true, ..greedy(prompt.clone(), 5) }, rec.sink()).unwrap();
    let (t, _) = rec.wait();
    let lp = rec.lock().logprobs.clone();
    assert_eq!(lp[0], Some(log_softmax_at(&data, t[0] as usize)));
    assert!(lp.iter().all(|l| l.is_some_and(|l| l <= 0.0 && l.is_finite())), "{lp:?}");
    let rec = Rec::new();
    sched.submit(greedy(prompt, 3), rec.sink()).unwrap();
    rec.wait();
    assert!(rec.lock().logprobs.iter().all(Option::is_none));
}

#[test]
fn seeded_sampling_repeats_alone_and_in_company() {
    let (_d, model) = synth_model("tiny-llama", 6);
    let sched = Scheduler::start(Box::new(cpu_engine(&model, &[4], 2)), cfg(8, 64, None, 32)).unwrap();
    let r = sampled(vec![1, 2, 3, 4], 25, 99);
    let recs: Vec<Rec> = (0..6)
        .map(|i| {
            let rec = Rec::new();
            let req = if i % 2 == 0 { r.clone() } else { sampled(vec![5 + i, 6], 25, i as u64) };
            sched.submit(req, rec.sink()).unwrap();
            rec
        })
        .collect();
    let outs: Vec<Vec<u32>> = recs.iter().map(|r| r.wait().0).collect();
    let alone = solo(cpu_engine(&model, &[], 1), std::slice::from_ref(&r));
    for i in [0, 2, 4] {
        assert_eq!(outs[i], alone[0].0, "copy {i}");
    }
    let other_seed = solo(cpu_engine(&model, &[], 1), &[sampled(vec![1, 2, 3, 4], 25, 100)]);
    assert_ne!(other_seed[0].0, alone[0].0, "another seed should sample differently");
    let greedy_out = solo(cpu_engine(&model, &[], 1), &[greedy(vec![1, 2, 3, 4], 25)]);
    assert_ne!(greedy_out[0].0, alone[0].0, "temperature 0.9 should not be greedy");
}

#[test]
fn a_full_queue_answers_queue_full() {
    let (_d, model) = synth_model("tiny-llama", 1);
    let faults = Faults::default();
    let hold = faults.hold.clone();
    let engine = Faulty { inner: cpu_engine(&model, &[], 1), faults };
    let sched = Scheduler::start(Box::new(engine), cfg(1, 2, None, 64)).unwrap();
    set_hold(&hold, true);
    let a = Rec::new();
    sched.submit(greedy(vec![1, 2], 3), a.sink()).unwrap();
    wait_stats(&sched, "the first request taken", |s| s.waiting == 0);
    let (b, c) = (Rec::new(), Rec::new());
    sched.submit(greedy(vec![3], 3), b.sink()).unwrap();
    sched.submit(greedy(vec![4], 3), c.sink()).unwrap();
    assert_eq!(sched.stats().waiting, 2);
    assert_eq!(sched.submit(greedy(vec![5], 3), Rec::new().sink()).err(), Some(SubmitError::QueueFull));
    set_hold(&hold, false);
    for r in [&a, &b, &c] {
        assert_eq!(r.wait().1.kind, FinishKind::Length);
    }
    let d = Rec::new();
    sched.submit(greedy(vec![5], 3), d.sink()).unwrap();
    assert_eq!(d.wait().1.kind, FinishKind::Length);
}
