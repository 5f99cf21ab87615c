//! Batch invariance on the CPU: a sequence's logits are bitwise the same whatever shares its
//! batch, however many threads run, and whether a token went through prefill or decode. So a
//! request migrated to another node by re-prefilling its tokens continues identically.

mod common;
use common::*;
use pipeline::{LogitsRows, Model, StageBatch, StageInput, StageOutput};

/// Logits of one decode row per sequence, for a decode batch of several sequences.
fn decode_batch(e: &mut pipeline::Engine, rows: &[(u64, usize, u32)]) -> Vec<Vec<f32>> {
    let batch = StageBatch {
        seq_ids: rows.iter().map(|r| r.0).collect(),
        positions: rows.iter().map(|r| r.1 as u32).collect(),
        input: StageInput::Tokens(rows.iter().map(|r| r.2).collect()),
        logits: LogitsRows::All,
    };
    let StageOutput::Logits { vocab, data, .. } = e.forward(&batch).unwrap() else { panic!() };
    data.chunks(vocab).map(|c| c.to_vec()).collect()
}

#[test]
fn logits_do_not_depend_on_batch_threads_or_prefill_vs_decode() {
    let (_tmp, dir) = synth("tiny-llama", 11);
    let model = Model::open(&dir).unwrap();
    let prompt: Vec<u32> = vec![7, 100, 3, 250, 31, 64, 12, 5, 300, 2, 9];

    // reference: the whole prompt prefilled alone on one thread
    let mut e1 = engine(&model, 8, &[], 1);
    let want = logits_all(&mut e1, 1, 0, &prompt);

    for threads in [1, 2, 3] {
        let mut e = engine(&model, 8, &[3], threads);
        // prefill alone
        let got = logits_all(&mut e, 1, 0, &prompt);
        for (w, g) in want.iter().zip(&got) {
            assert_eq!(bits(w), bits(g), "prefill, {threads} threads");
        }
        // token by token (decode), while other sequences of other lengths share each batch
        let others: Vec<Vec<u32>> = vec![(0..23).map(|i| (i * 13 % 380) as u32).collect(), vec![42, 43]];
        logits_all(&mut e, 10, 0, &others[0]);
        logits_all(&mut e, 11, 0, &others[1]);
        for (p, &tok) in prompt.iter().enumerate() {
            let mut rows = vec![(20u64, p, tok)];
            if p % 2 == 0 {
                rows.insert(0, (10, others[0].len() + p / 2, 1 + p as u32));
            }
            if p % 3 == 0 {
                rows.push((11, others[1].len() + p / 3, 2 + p as u32));
            }
            let idx = rows.iter().position(|r| r.0 == 20).unwrap();
            let got = decode_batch(&mut e, &rows);
            assert_eq!(bits(&want[p]), bits(&got[idx]), "decode position {p}, {threads} threads, batch {rows:?}");
        }
        // prefill in uneven chunks, inside a batch with another sequence's prefill
        let batch = StageBatch {
            seq_ids: [vec![30u64; 4], vec![31u64; 5]].concat(),
            positions: [(0..4).collect::<Vec<u32>>(), (0..5).collect()].concat(),
            input: StageInput::Tokens([prompt[..4].to_vec(), vec![9, 8, 7, 6, 5]].concat()),
            logits: LogitsRows::All,
        };
        let StageOutput::Logits { vocab, data, .. } = e.forward(&batch).unwrap() else { panic!() };
        for p in 0..4 {
            assert_eq!(bits(&want[p]), bits(&data[p * vocab..(p + 1) * vocab]), "chunked prefill row {p}");
        }
        let rest = logits_all(&mut e, 30, 4, &prompt[4..]);
        for (p, g) in rest.iter().enumerate() {
            assert_eq!(bits(&want[4 + p]), bits(g), "second prefill chunk row {}", 4 + p);
        }
    }
}

#[test]
fn migration_by_re_prefill_continues_identically() {
    let (_tmp, dir) = synth("tiny-qwen2", 5);
    let model = Model::open(&dir).unwrap();
    let mut a = engine(&model, 8, &[], 2);
    let mut b = engine(&model, 8, &[2, 5], 1);
    // node A: prefill and decode a few greedy tokens
    let mut tokens: Vec<u32> = vec![11, 22, 33];
    let mut last = logits_all(&mut a, 1, 0, &tokens).pop().unwrap();
    for _ in 0..5 {
        let t = pipeline::sampler::argmax(&last) as u32;
        tokens.push(t);
        last = logits_all(&mut a, 1, tokens.len() - 1, &[t]).pop().unwrap();
    }
    // node B: re-prefill everything A has seen, in one batch; its last logits match A's
    let again = logits_all(&mut b, 77, 0, &tokens).pop().unwrap();
    assert_eq!(bits(&last), bits(&again));
}

#[test]
fn requests_batched_together_generate_what_they_generate_alone() {
    use pipeline::{GenRequest, SamplingParams};
    let (_tmp, dir) = synth("tiny-llama", 2);
    let model = Model::open(&dir).unwrap();
    let mut e = engine(&model, 8, &[4], 2);
    let reqs: Vec<GenRequest> = vec![
        GenRequest { prompt: vec![3, 4, 5], max_tokens: 20, sampling: SamplingParams::default(), ignore_eos: true },
        GenRequest { prompt: (10..47).collect(), max_tokens: 6, sampling: SamplingParams::default(), ignore_eos: true },
        GenRequest {
            prompt: vec![99],
            max_tokens: 13,
            sampling: SamplingParams { temperature: 0.9, top_k: 40, top_p: 0.9, seed: 5 },
            ignore_eos: true,
        },
    ];
    let together = e.generate(&reqs, 16).unwrap();
    for (i, r) in reqs.iter().enumerate() {
        let alone = e.generate(std::slice::from_ref(r), 8192).unwrap();
        assert_eq!(alone[0].tokens, together[i].tokens, "request {i}");
        assert_eq!(alone[0].tokens.len(), r.max_tokens);
    }
}
