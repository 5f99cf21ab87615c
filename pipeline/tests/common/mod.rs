//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use kernels::Pool;
use pipeline::{Engine, LogitsRows, Model, StageBatch, StageInput, StageLimits, StageOutput};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A seeded random checkpoint of preset `name` in a fresh temporary directory.
pub fn synth(name: &str, seed: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, dtype) = pipeline::synth::preset(name).unwrap();
    pipeline::synth::write_checkpoint(dir.path(), cfg, dtype, seed).unwrap();
    let p = dir.path().to_path_buf();
    (dir, p)
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// An engine over `model` cut at block boundaries `cuts` (e.g. [3] → [0,3) + [3,B)).
pub fn engine(model: &Model, num_blocks: usize, cuts: &[usize], threads: usize) -> Engine {
    let pool = Arc::new(Pool::new(threads));
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(num_blocks);
    let stages = bounds
        .windows(2)
        .map(|w| model.stage(num_blocks, w[0]..w[1], pool.clone(), StageLimits::default()).unwrap())
        .collect();
    Engine::new(stages).unwrap()
}

/// Logits of every row of one sequence's tokens at positions start.. (a prefill chunk).
pub fn logits_all(e: &mut Engine, seq: u64, start: usize, tokens: &[u32]) -> Vec<Vec<f32>> {
    let batch = StageBatch {
        seq_ids: vec![seq; tokens.len()],
        positions: (start..start + tokens.len()).map(|p| p as u32).collect(),
        input: StageInput::Tokens(tokens.to_vec()),
        logits: LogitsRows::All,
    };
    match e.forward(&batch).unwrap() {
        StageOutput::Logits { vocab, data, .. } => data.chunks(vocab).map(|c| c.to_vec()).collect(),
        StageOutput::Hidden(_) => panic!("last stage must return logits"),
    }
}

pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}
