//! Cancellation frees a sequence's KV at once and leaves the others untouched; shutdown drains
//! or cancels; every sink hears exactly one finish whatever happens.

mod sched_common;
use pipeline::sched::{FinishKind, Scheduler, SubmitError};
use sched_common::*;
use std::time::Duration;

#[test]
fn cancel_frees_the_kv_and_the_others_go_on() {
    let (_d, model) = synth_model("tiny-llama", 7);
    let others = [greedy(vec![3, 1, 4, 1, 5], 40), greedy(vec![9, 2, 6], 40)];
    let want = solo(cpu_engine(&model, &[], 1), &others);
    let sched = Scheduler::start(Box::new(cpu_engine(&model, &[], 2)), cfg(8, 8, None, 64)).unwrap();
    let victim = Rec::new();
    let h = sched.submit(greedy((0..40).collect(), 200), victim.sink()).unwrap();
    let recs: Vec<Rec> = others
        .iter()
        .map(|r| {
            let rec = Rec::new();
            sched.submit(r.clone(), rec.sink()).unwrap();
            rec
        })
        .collect();
    victim.wait_tokens(2);
    h.cancel();
    h.cancel(); // twice is harmless
    let (t, f) = victim.wait();
    assert_eq!(f.kind, FinishKind::Cancelled);
    assert!(t.len() < 200 && f.completion_tokens == t.len());
    for (i, rec) in recs.iter().enumerate() {
        assert_eq!(rec.wait().0, want[i].0, "request {i}");
    }
    let s = wait_stats(&sched, "all ended", |s| s.running == 0);
    assert_eq!((s.kv_used_bytes, s.kv_held_bytes), (0, Some(0)));
    assert_eq!(victim.lock().finishes.len(), 1);
}

#[test]
fn cancelling_the_only_sequence_returns_kv_to_zero_while_others_wait() {
    let (_d, model) = synth_model("tiny-llama", 7);
    let sched = Scheduler::start(Box::new(cpu_engine(&model, &[], 1)), cfg(1, 8, None, 64)).unwrap();
    let a = Rec::new();
    let h = sched.submit(greedy((0..50).collect(), 200), a.sink()).unwrap();
    a.wait_tokens(1);
    let s = wait_stats(&sched, "KV in use", |s| s.kv_used_bytes > 0);
    assert_eq!(Some(s.kv_used_bytes), s.kv_held_bytes, "the books match what the engine holds");
    h.cancel();
    assert_eq!(a.wait().1.kind, FinishKind::Cancelled);
    let s = wait_stats(&sched, "KV freed", |s| s.kv_used_bytes == 0);
    assert_eq!((s.running, s.kv_held_bytes), (0, Some(0)));
}

#[test]
fn a_sink_returning_false_cancels() {
    let (_d, model) = synth_model("tiny-llama", 7);
    let sched = Scheduler::start(Box::new(cpu_engine(&model, &[], 1)), cfg(4, 8, None, 64)).unwrap();
    let rec = Rec::new();
    sched.submit(greedy(vec![1, 2, 3], 100), rec.sink_cancelling_after(3)).unwrap();
    let (t, f) = rec.wait();
    assert_eq!((t.len(), f.kind, f.completion_tokens), (3, FinishKind::Cancelled, 3));
    let s = wait_stats(&sched, "KV freed", |s| s.running == 0);
    assert_eq!((s.kv_used_bytes, s.kv_held_bytes), (0, Some(0)));
}

#[test]
fn cancel_while_waiting_finishes_without_running() {
    let (_d, model) = synth_model("tiny-llama", 7);
    let faults = Faults::default();
    let hold = faults.hold.clone();
    let sched =
        Scheduler::start(Box::new(Faulty { inner: cpu_engine(&model, &[], 1), faults }), cfg(1, 8, None, 64)).unwrap();
    set_hold(&hold, true);
    let (a, b) = (Rec::new(), Rec::new());
    sched.submit(greedy(vec![1, 2], 4), a.sink()).unwrap();
    wait_stats(&sched, "a taken", |s| s.waiting == 0);
    let hb = sched.submit(greedy(vec![3, 4], 4), b.sink()).unwrap();
    hb.cancel();
    set_hold(&hold, false);
    let (t, f) = b.wait();
    assert_eq!((t.len(), f.kind), (0, FinishKind::Cancelled));
    assert_eq!(a.wait().1.kind, FinishKind::Length);
}

#[test]
fn shutdown_drains_then_refuses() {
    let (_d, model) = synth_model("tiny-llama", 7);
    let sched = Scheduler::start(Box::new(cpu_engine(&model, &[], 1)), cfg(2, 8, None, 64)).unwrap();
    let recs: Vec<Rec> = (0..5)
        .map(|i| {
            let rec = Rec::new();
            sched.submit(greedy(vec![i + 1, 2, 3], 10), rec.sink()).unwrap();
            rec
        })
        .collect();
    sched.shutdown(Duration::from_secs(600));
    for r in &recs {
        let (t, f) = r.wait();
        assert_eq!((t.len(), f.kind), (10, FinishKind::Length));
    }
    assert_eq!(sched.submit(greedy(vec![1], 1), Rec::new().sink()).err(), Some(SubmitError::ShuttingDown));
}

#[test]
fn shutdown_past_the_drain_cancels_the_rest() {
    let (_d, model) = synth_model("tiny-llama", 7);
    let faults = Faults::default();
    let hold = faults.hold.clone();
    let sched =
        Scheduler::start(Box::new(Faulty { inner: cpu_engine(&model, &[], 1), faults }), cfg(1, 8, None, 64)).unwrap();
    set_hold(&hold, true);
    let (a, b) = (Rec::new(), Rec::new());
    sched.submit(greedy(vec![1, 2], 50), a.sink()).unwrap();
    sched.submit(greedy(vec![3, 4], 50), b.sink()).unwrap();
    let unhold = std::thread::spawn({
        let hold = hold.clone();
        move || {
            std::thread::sleep(Duration::from_millis(50));
            set_hold(&hold, false);
        }
    });
    sched.shutdown(Duration::ZERO);
    unhold.join().unwrap();
    let (ta, fa) = a.wait();
    assert_eq!(fa.kind, FinishKind::Cancelled);
    assert!(ta.len() <= 1, "{ta:?}");
    let (tb, fb) = b.wait();
    assert_eq!((tb.len(), fb.kind), (0, FinishKind::Cancelled));
}

#[test]
fn dropping_the_scheduler_finishes_every_sink() {
    let (_d, model) = synth_model("tiny-llama", 7);
    let sched = Scheduler::start(Box::new(cpu_engine(&model, &[], 1)), cfg(2, 8, None, 64)).unwrap();
    let recs: Vec<Rec> = (0..6)
        .map(|i| {
            let rec = Rec::new();
            sched.submit(greedy(vec![i + 1], 200), rec.sink()).unwrap();
            rec
        })
        .collect();
    drop(sched);
    for r in &recs {
        assert_eq!(r.lock().finishes.len(), 1, "finished by the time drop returns");
        assert!(matches!(r.lock().finishes[0].kind, FinishKind::Cancelled | FinishKind::Length));
    }
}

/// Holds the scheduler's thread inside its `n`-th token until released.
struct PausingSink {
    rec: Rec,
    n: usize,
    reached: std::sync::mpsc::Sender<()>,
    release: std::sync::mpsc::Receiver<()>,
}

impl pipeline::sched::TokenSink for PausingSink {
    fn token(&mut self, ev: pipeline::sched::TokenEvent) -> bool {
        let keep = self.rec.sink().token(ev);
        if self.rec.lock().tokens.len() == self.n {
            let _ = self.reached.send(());
            let _ = self.release.recv_timeout(PATIENCE);
        }
        keep
    }
    fn finish(&mut self, f: pipeline::sched::Finish) {
        self.rec.sink().finish(f)
    }
}

#[test]
fn the_kv_books_match_the_engine_as_a_sequence_grows() {
    let (_d, model) = synth_model("tiny-llama", 7);
    let sched = Scheduler::start(Box::new(cpu_engine(&model, &[], 1)), cfg(1, 8, None, 64)).unwrap();
    let (rec, block) = (Rec::new(), pipeline::kv::KV_BLOCK_TOKENS);
    // Pause at the n-th generated token: the stats then are those after the step before, with
    // 20 + n - 2 positions cached, between 2 and 3 blocks. Growth by doubling would hold 4
    // blocks there; growth by blocks holds 3, as booked.
    let n = 2 * block + block / 2 - 20;
    let (reached_tx, reached) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let sink = PausingSink { rec: rec.clone(), n, reached: reached_tx, release: release_rx };
    sched.submit(greedy((0..20).collect(), 3 * block), Box::new(sink)).unwrap();
    reached.recv_timeout(PATIENCE).expect("the sequence reaches its pause");
    let s = sched.stats();
    assert_eq!(s.kv_used_bytes, 3 * block as u64 * 2048, "{s:?}");
    assert_eq!(Some(s.kv_used_bytes), s.kv_held_bytes, "{s:?}");
    release.send(()).unwrap();
    assert_eq!(rec.wait().1.kind, FinishKind::Length);
    let s = wait_stats(&sched, "idle", |s| s.running == 0);
    assert_eq!((s.kv_used_bytes, s.kv_held_bytes), (0, Some(0)));
}
