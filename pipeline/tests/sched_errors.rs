//! A failing or panicking engine ends the sequences of that batch with `Error`; the scheduler
//! frees them and goes on serving the others.

mod sched_common;
use pipeline::sched::{FinishKind, Scheduler};
use sched_common::*;

const POISON: u32 = 383;

fn faulty_sched(model: &pipeline::Model, faults: Faults, max_num_seqs: usize) -> Scheduler {
    Scheduler::start(Box::new(Faulty { inner: cpu_engine(model, &[], 1), faults }), cfg(max_num_seqs, 64, None, 64))
        .unwrap()
}

fn error_message(kind: &FinishKind) -> &str {
    match kind {
        FinishKind::Error(m) => m,
        k => panic!("expected Error, got {k:?}"),
    }
}

#[test]
fn a_failing_forward_ends_its_sequences_and_the_scheduler_goes_on() {
    let (_d, model) = synth_model("tiny-llama", 9);
    let good = [greedy(vec![5, 6, 7], 12), greedy(vec![8, 9], 7)];
    let want = solo(cpu_engine(&model, &[], 1), &good);
    let sched = faulty_sched(&model, Faults { fail_on_token: Some(POISON), ..Default::default() }, 1);
    let bad = Rec::new();
    sched.submit(greedy(vec![1, POISON, 2], 5), bad.sink()).unwrap();
    let (t, f) = bad.wait();
    assert!(t.is_empty());
    assert!(error_message(&f.kind).contains("injected failure"), "{f:?}");
    for (i, r) in good.iter().enumerate() {
        let rec = Rec::new();
        sched.submit(r.clone(), rec.sink()).unwrap();
        assert_eq!(rec.wait().0, want[i].0, "request {i} after the failure");
    }
    let s = wait_stats(&sched, "idle", |s| s.running == 0);
    assert_eq!((s.kv_used_bytes, s.kv_held_bytes), (0, Some(0)));
}

#[test]
fn a_panicking_forward_is_an_error_not_a_hang() {
    let (_d, model) = synth_model("tiny-llama", 9);
    let sched = faulty_sched(&model, Faults { panic_on_token: Some(POISON), ..Default::default() }, 4);
    let bad = Rec::new();
    sched.submit(greedy(vec![POISON], 5), bad.sink()).unwrap();
    let (_, f) = bad.wait();
    assert!(error_message(&f.kind).contains("panicked: injected panic"), "{f:?}");
    let rec = Rec::new();
    sched.submit(greedy(vec![1, 2, 3], 4), rec.sink()).unwrap();
    assert_eq!(rec.wait().1.kind, FinishKind::Length);
}

#[test]
fn failures_among_many_each_sink_finishes_once() {
    let (_d, model) = synth_model("tiny-llama", 9);
    let reqs: Vec<_> = (0..24u32)
        .map(|i| {
            let mut p: Vec<u32> = (0..1 + i % 9).map(|j| (i * 31 + j * 7) % 383).collect();
            if i % 6 == 0 {
                p.push(POISON);
            }
            greedy(p, 1 + (i as usize % 10))
        })
        .collect();
    let want = solo(
        cpu_engine(&model, &[], 1),
        &reqs[..].iter().filter(|r| !r.prompt.contains(&POISON)).cloned().collect::<Vec<_>>(),
    );
    let sched = faulty_sched(&model, Faults { fail_on_token: Some(POISON), ..Default::default() }, 8);
    let recs: Vec<_> = reqs
        .iter()
        .map(|r| {
            let rec = Rec::new();
            sched.submit(r.clone(), rec.sink()).unwrap();
            rec
        })
        .collect();
    let mut k = 0;
    for (i, rec) in recs.iter().enumerate() {
        let (t, f) = rec.wait();
        if reqs[i].prompt.contains(&POISON) {
            error_message(&f.kind);
            continue;
        }
        // a good request in a poisoned batch fails too; otherwise it is exact
        if !matches!(f.kind, FinishKind::Error(_)) {
            assert_eq!(t, want[k].0, "request {i}");
        }
        k += 1;
    }
    let s = wait_stats(&sched, "idle", |s| s.running == 0);
    assert_eq!((s.kv_used_bytes, s.kv_held_bytes), (0, Some(0)));
    for rec in &recs {
        assert_eq!(rec.finish_counts(), (1, 0));
    }
}
