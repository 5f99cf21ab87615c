//! The packed block format: a packed model computes bitwise what its source computes, every
//! block stands alone, and stages can be built as blocks arrive one by one.

mod common;
use common::*;
use kernels::Pool;
use pipeline::packed::{self, PackProgress, PackedFile};
use pipeline::{
    Format, GenRequest, LogitsRows, Model, SamplingParams, StageBatch, StageInput, StageLimits, StageOutput,
};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

fn greedy(max_tokens: usize, prompt: Vec<u32>) -> GenRequest {
    GenRequest { prompt, max_tokens, sampling: SamplingParams::default(), ignore_eos: true }
}

fn pack(model: &Model, out: &Path, blocks: usize, chunk: Option<u64>) -> packed::PackSummary {
    packed::pack(model, out, blocks, chunk, &mut |_| {}).unwrap()
}

fn batch(input: StageInput, n: usize) -> StageBatch {
    StageBatch { seq_ids: vec![1; n], positions: (0..n as u32).collect(), input, logits: LogitsRows::All }
}

fn out_bits(o: &StageOutput) -> Vec<u32> {
    match o {
        StageOutput::Hidden(h) => bits(h),
        StageOutput::Logits { data, .. } => bits(data),
    }
}

#[test]
fn packed_model_generates_bitwise_what_its_source_does() {
    for preset in ["tiny-llama", "tiny-qwen2"] {
        let (tmp, dir) = synth(preset, 11);
        let hf = Model::open(&dir).unwrap();
        let file = tmp.path().join("m.fspack");
        let summary = pack(&hf, &file, 8, Some(4096));
        let model = packed::open(&file).unwrap();
        assert_eq!(model.format, Format::Packed);
        assert_eq!(*model.config, *hf.config, "{preset}");
        assert_eq!(summary.file_bytes, std::fs::metadata(&file).unwrap().len());
        assert_eq!(summary.num_blocks, 8);
        assert!(summary.num_transfer_blocks > 8, "{preset}: 4 KiB chunks cut blocks into several transfer blocks");

        let reqs = vec![greedy(12, vec![5, 17, 42, 99, 3]), greedy(9, vec![250]), greedy(7, (0..40).collect())];
        let want = engine(&hf, 8, &[], 2).generate(&reqs, 8192).unwrap();
        // one stage, split stages, and a block count other than the file's: all the same tokens
        for (b, cuts) in [(8, vec![]), (8, vec![3]), (8, vec![1, 7]), (4, vec![2])] {
            let got = engine(&model, b, &cuts, 2).generate(&reqs, 8192).unwrap();
            for (w, g) in want.iter().zip(&got) {
                assert_eq!(w.tokens, g.tokens, "{preset}: {b} blocks, cuts {cuts:?}");
            }
        }
        let a = logits_all(&mut engine(&hf, 8, &[], 2), 1, 0, &[1, 2, 3, 4]);
        let c = logits_all(&mut engine(&model, 8, &[5], 2), 1, 0, &[1, 2, 3, 4]);
        for (x, y) in a.iter().zip(&c) {
            assert_eq!(bits(x), bits(y), "{preset}");
        }
    }
}

#[test]
fn every_block_stands_alone_and_is_aligned() {
    for (preset, b) in [("tiny-llama", 8), ("tiny-qwen2", 3), ("tiny-qwen2", 1)] {
        let (tmp, dir) = synth(preset, 2);
        let hf = Model::open(&dir).unwrap();
        let file = tmp.path().join("m.fspack");
        pack(&hf, &file, b, Some(8192));
        let pf = PackedFile::open_header(&file).unwrap();
        let h = pf.header();
        let layout = pf.layout();
        assert_eq!(layout.exec_blocks.len(), b);
        assert!(layout.validate().is_ok());
        let find = |name: &str| h.tensors.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(find("model.embed_tokens.weight").block, 0);
        assert_eq!(
            find("lm_head.weight").block as usize,
            b - 1,
            "{preset}: the LM head (a copy when tied) is in the last block"
        );
        assert_eq!(find("model.norm.weight").block as usize, b - 1);
        let blocks = pipeline::BlockLayout::new(hf.config.num_hidden_layers, b).unwrap();
        for t in &h.tensors {
            assert_eq!(t.offset % 256, 0, "{}", t.name);
            if let Some(i) = t
                .name
                .strip_prefix("model.layers.")
                .and_then(|r| r.split('.').next())
                .and_then(|s| s.parse::<usize>().ok())
            {
                assert!(blocks.block_layers(t.block as usize).contains(&i), "{}", t.name);
            }
            // dtypes are the source's
            let src = hf
                .weights
                .tensor(
                    &t.name.replace(
                        "lm_head.weight",
                        if hf.config.tie_word_embeddings { "model.embed_tokens.weight" } else { "lm_head.weight" },
                    ),
                    &t.shape.iter().map(|&d| d as usize).collect::<Vec<_>>(),
                )
                .unwrap();
            assert_eq!(t.dtype, format!("{:?}", src.dtype).to_uppercase(), "{}", t.name);
            let eb = &layout.exec_blocks[t.block as usize];
            let bytes = &pf.bytes()[(eb.offset + t.offset) as usize..(eb.offset + t.offset + t.len) as usize];
            assert_eq!(bytes, src.bytes(), "{}: bytes are the source's", t.name);
        }
        for (i, eb) in layout.exec_blocks.iter().enumerate() {
            assert_eq!(eb.offset % 4096, 0);
            assert_eq!(eb.len % 4096, 0);
            assert_eq!(eb.layers.start as usize..eb.layers.end as usize, blocks.block_layers(i));
            for t in layout.transfer_blocks_of(i) {
                assert_eq!(packed::crc32c(&pf.bytes()[t.offset as usize..(t.offset + t.len) as usize]), t.crc32c);
                assert!(t.len <= 8192);
            }
        }
        assert_eq!(layout.end_offset(), pf.bytes().len() as u64);
    }
}

#[test]
fn tokenizer_and_chat_template_travel_in_the_header() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny-llama");
    std::fs::create_dir(&dir).unwrap();
    for e in std::fs::read_dir(fixture("tiny-llama")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}";
    std::fs::write(dir.join("tokenizer_config.json"), serde_json::json!({ "chat_template": template }).to_string())
        .unwrap();
    let hf = Model::open(&dir).unwrap();
    let file = tmp.path().join("tiny.fspack");
    pack(&hf, &file, 4, None);
    let model = packed::open(&file).unwrap();
    assert_eq!(model.chat_template.as_deref(), Some(template));
    let (a, b) = (hf.tokenizer.as_ref().unwrap(), model.tokenizer.as_ref().unwrap());
    for text in ["Hello, world!", "naïve café 123 — ünïcödé", "   spaces\tand\nnewlines"] {
        assert_eq!(a.encode(text).unwrap(), b.encode(text).unwrap(), "{text}");
    }
    let reqs = vec![greedy(10, a.encode("Hello, world!").unwrap())];
    let want = engine(&hf, 4, &[], 2).generate(&reqs, 8192).unwrap();
    let got = engine(&model, 4, &[1], 2).generate(&reqs, 8192).unwrap();
    assert_eq!(want[0].tokens, got[0].tokens);
}

#[test]
fn pack_reports_progress_is_deterministic_and_leaves_no_temp_files() {
    let (tmp, dir) = synth("tiny-llama", 5);
    let hf = Model::open(&dir).unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let mut seen: Vec<PackProgress> = Vec::new();
    let s = packed::pack(&hf, &out.join("a.fspack"), 4, None, &mut |p| seen.push(p.clone())).unwrap();
    assert_eq!(seen.iter().map(|p| p.block).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    assert!(seen.windows(2).all(|w| w[0].bytes_done < w[1].bytes_done));
    assert_eq!(seen.last().unwrap().bytes_done, s.data_bytes);
    assert_eq!(s.chunk_bytes, 1 << 20, "a tiny model gets the 1 MiB floor");
    assert_eq!(s.num_transfer_blocks, 4, "blocks under 1 MiB are one transfer block each");
    assert_eq!(s.layout.total_bytes, s.data_bytes);
    assert!(s.mb_per_s > 0.0 && s.seconds > 0.0);
    packed::pack(&hf, &out.join("b.fspack"), 4, None, &mut |_| {}).unwrap();
    assert_eq!(
        std::fs::read(out.join("a.fspack")).unwrap(),
        std::fs::read(out.join("b.fspack")).unwrap(),
        "same model, same bytes"
    );
    let names: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 2, "no temporary files left: {names:?}");
    // bad arguments are refused before anything is written
    for (b, c) in [(0, None), (9, None), (4, Some(1000)), (4, Some(0))] {
        assert!(packed::pack(&hf, &out.join("c.fspack"), b, c, &mut |_| {}).is_err(), "{b} blocks, chunk {c:?}");
    }
    assert!(!out.join("c.fspack").exists());
    assert!(packed::pack(&hf, &tmp.path().join("no/such/dir/x.fspack"), 4, None, &mut |_| {}).is_err());
    // a packed model packs again, under another block count, to the same outputs
    let once = packed::open(&out.join("a.fspack")).unwrap();
    packed::pack(&once, &out.join("c.fspack"), 8, Some(4096), &mut |_| {}).unwrap();
    let twice = packed::open(&out.join("c.fspack")).unwrap();
    let a = logits_all(&mut engine(&hf, 8, &[], 1), 1, 0, &[7, 8, 9]);
    let c = logits_all(&mut engine(&twice, 8, &[2], 1), 1, 0, &[7, 8, 9]);
    assert_eq!(a.iter().map(|r| bits(r)).collect::<Vec<_>>(), c.iter().map(|r| bits(r)).collect::<Vec<_>>());
}

/// Execute-while-load: the data region starts zeroed, blocks are copied in one at a time in
/// a scrambled order (as if arriving from the network), and after each arrival a stage is
/// built over every run of present blocks; each computes bitwise what the source model does.
#[test]
fn stages_are_built_as_blocks_arrive() {
    for preset in ["tiny-llama", "tiny-qwen2"] {
        let (tmp, dir) = synth(preset, 9);
        let hf = Model::open(&dir).unwrap();
        let full_path = tmp.path().join("full.fspack");
        pack(&hf, &full_path, 8, Some(4096));
        let full = std::fs::read(&full_path).unwrap();
        let data_offset = PackedFile::open_header(&full_path).unwrap().layout().data_offset() as usize;
        let mut empty = full.clone();
        empty[data_offset..].fill(0);
        let part_path = tmp.path().join("arriving.fspack");
        std::fs::write(&part_path, &empty).unwrap();

        let pf = Arc::new(PackedFile::open_header(&part_path).unwrap());
        let model = pf.clone().into_model().unwrap();
        let pool = Arc::new(Pool::new(2));
        let lim = StageLimits::default();

        // the source model's output after each block, block by block
        let tokens = vec![5u32, 17, 42, 99, 3, 250];
        let n = tokens.len();
        let mut inputs = vec![StageInput::Tokens(tokens.clone())]; // inputs[b]: what block b takes
        let mut outputs = Vec::new(); // outputs[b]: what block b gives
        for b in 0..8 {
            let mut s = hf.stage(8, b..b + 1, pool.clone(), lim).unwrap();
            let o = s.forward(&batch(inputs[b].clone(), n)).unwrap();
            if let StageOutput::Hidden(h) = &o {
                inputs.push(StageInput::Hidden(h.clone()));
            }
            outputs.push(o);
        }

        // nothing has arrived: every stage is refused, naming the absent block
        let e = model.stage(8, 0..8, pool.clone(), lim).err().unwrap().to_string();
        assert!(e.contains("execution block 0") && e.contains("not present"), "{e}");
        let e = pf.mark_present(3).unwrap_err().to_string();
        assert!(e.contains("checksum mismatch in execution block 3"), "{e}");
        assert!(!pf.is_present(3));

        // the last block alone suffices for the last stage, even for a tied model (whose
        // embedding, in block 0, the engine also asks for: the LM head's copy serves it)
        {
            let only_last = Arc::new(PackedFile::open_header(&full_path).unwrap());
            only_last.mark_present(7).unwrap();
            let m = only_last.clone().into_model().unwrap();
            let got = m.stage(8, 7..8, pool.clone(), lim).unwrap().forward(&batch(inputs[7].clone(), n)).unwrap();
            assert_eq!(out_bits(&got), out_bits(&outputs[7]), "{preset}: last block alone");
            let e = m.stage(8, 6..8, pool.clone(), lim).err().unwrap().to_string();
            assert!(e.contains("execution block 6,"), "{preset}: {e}");
        }

        let file = std::fs::OpenOptions::new().write(true).open(&part_path).unwrap();
        for (step, &b) in [5usize, 0, 7, 2, 1, 6, 3, 4].iter().enumerate() {
            let eb = &pf.layout().exec_blocks[b];
            let (lo, hi) = (eb.offset as usize, (eb.offset + eb.len) as usize);
            file.write_all_at(&full[lo..hi], lo as u64).unwrap();
            pf.mark_present(b).unwrap();
            assert!(pf.is_present(b));
            // every maximal run [a, c) of present blocks
            let mut a = 0;
            while a < 8 {
                if !pf.is_present(a) {
                    a += 1;
                    continue;
                }
                let mut c = a;
                while c < 8 && pf.is_present(c) {
                    c += 1;
                }
                let mut s = model.stage(8, a..c, pool.clone(), lim).unwrap();
                let got = s.forward(&batch(inputs[a].clone(), n)).unwrap();
                assert_eq!(out_bits(&got), out_bits(&outputs[c - 1]), "{preset}: step {step}, stage [{a}, {c})");
                if c < 8 {
                    let e = model.stage(8, a..c + 1, pool.clone(), lim).err().unwrap().to_string();
                    assert!(e.contains(&format!("execution block {c},")), "{preset}: {e}");
                }
                a = c;
            }
        }
        let got = engine(&model, 8, &[4], 2).generate(&[greedy(8, tokens.clone())], 8192).unwrap();
        let want = engine(&hf, 8, &[], 2).generate(&[greedy(8, tokens)], 8192).unwrap();
        assert_eq!(got[0].tokens, want[0].tokens, "{preset}");
    }
}

#[test]
fn transfer_blocks_arrive_one_by_one() {
    let (tmp, dir) = synth("tiny-llama", 4);
    let hf = Model::open(&dir).unwrap();
    let full_path = tmp.path().join("full.fspack");
    pack(&hf, &full_path, 2, Some(4096));
    let full = std::fs::read(&full_path).unwrap();
    let pf = PackedFile::open_header(&full_path).unwrap();
    let ids: Vec<usize> = pf.layout().transfer_blocks_of(1).iter().map(|t| t.id as usize).collect();
    assert!(ids.len() > 2);
    for (k, &id) in ids.iter().enumerate() {
        let complete = pf.mark_transfer_present(id).unwrap();
        assert_eq!(complete, k + 1 == ids.len(), "block 1 complete only with its last transfer block");
        assert_eq!(pf.is_present(1), complete);
    }
    assert!(!pf.is_present(0));
    assert!(pf.blocks_present(1..2) && !pf.blocks_present(0..2));
    assert!(pf.mark_transfer_present(pf.layout().transfer_blocks.len()).is_err());
    assert!(pf.mark_present(2).is_err());
    assert!(pf.verify_block(0).is_ok() && !pf.is_present(0), "verify_block marks nothing");
    // an in-memory image works the same
    let mem = PackedFile::from_bytes(Path::new("<memory>"), Arc::new(full)).unwrap();
    mem.mark_all_present().unwrap();
    assert!(mem.blocks_present(0..2));
}
