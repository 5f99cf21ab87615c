//! Execution blocks run in one stage or split across stages give the same tokens, bitwise.

mod common;
use common::*;
use pipeline::{GenRequest, LogitsRows, Model, SamplingParams, StageBatch, StageInput, StageOutput};

fn greedy(max_tokens: usize, prompt: Vec<u32>) -> GenRequest {
    GenRequest { prompt, max_tokens, sampling: SamplingParams::default(), ignore_eos: true }
}

#[test]
fn one_stage_equals_two_and_three_stages() {
    for preset in ["tiny-llama", "tiny-qwen2"] {
        let (_tmp, dir) = synth(preset, 7);
        let model = Model::open(&dir).unwrap();
        let b = 8;
        let reqs = vec![greedy(12, vec![5, 17, 42, 99, 3]), greedy(9, vec![250]), greedy(7, (0..40).collect())];
        let mut one = engine(&model, b, &[], 2);
        let want = one.generate(&reqs, 8192).unwrap();
        for cuts in [vec![3], vec![1, 6], vec![7]] {
            let mut split = engine(&model, b, &cuts, 2);
            let got = split.generate(&reqs, 8192).unwrap();
            for (w, g) in want.iter().zip(&got) {
                assert_eq!(w.tokens, g.tokens, "{preset}: cuts {cuts:?}");
            }
            // logits, not only tokens, are bitwise the same
            let a = logits_all(&mut one, 900, 0, &[1, 2, 3, 4]);
            let c = logits_all(&mut split, 900, 0, &[1, 2, 3, 4]);
            for (x, y) in a.iter().zip(&c) {
                assert_eq!(bits(x), bits(y), "{preset}: cuts {cuts:?}");
            }
            one.free(900);
            split.free(900);
        }
    }
}

#[test]
fn stages_keep_separate_caches_and_hidden_states_cross_the_wire() {
    let (_tmp, dir) = synth("tiny-llama", 3);
    let model = Model::open(&dir).unwrap();
    let pool = std::sync::Arc::new(kernels::Pool::new(2));
    let lim = pipeline::StageLimits::default();
    let mut s0 = model.stage(8, 0..3, pool.clone(), lim).unwrap();
    let mut s1 = model.stage(8, 3..8, pool.clone(), lim).unwrap();
    let mut whole = model.stage(8, 0..8, pool, lim).unwrap();
    let tokens = vec![10u32, 20, 30];
    let mk = |input| StageBatch { seq_ids: vec![1; 3], positions: vec![0, 1, 2], input, logits: LogitsRows::All };
    let StageOutput::Hidden(h) = s0.forward(&mk(StageInput::Tokens(tokens.clone()))).unwrap() else { panic!() };
    // the hidden states travel as bytes, as they would between nodes
    let wire = pipeline::wire::encode_hidden(3, 64, &h).unwrap();
    let (rows, width, h2) = pipeline::wire::decode_hidden(&wire).unwrap();
    assert_eq!((rows, width), (3, 64));
    let StageOutput::Logits { data: split, .. } = s1.forward(&mk(StageInput::Hidden(h2))).unwrap() else { panic!() };
    let StageOutput::Logits { data: joined, .. } = whole.forward(&mk(StageInput::Tokens(tokens))).unwrap() else {
        panic!()
    };
    assert_eq!(bits(&split), bits(&joined));
    assert_eq!((s0.seq_len(1), s1.seq_len(1)), (3, 3));
    assert!(s0.free(1));
    assert_eq!(s0.seq_len(1), 0);
    assert_eq!(s1.seq_len(1), 3, "freeing one stage's cache leaves the other's");
    // the wrong kind of input is refused, naming the problem
    let e = s1.forward(&mk(StageInput::Tokens(vec![1, 2, 3]))).unwrap_err().to_string();
    assert!(e.contains("hidden states"), "{e}");
    let e = s0.forward(&mk(StageInput::Hidden(vec![0.0; 3 * 64]))).unwrap_err().to_string();
    assert!(e.contains("token ids"), "{e}");
}
