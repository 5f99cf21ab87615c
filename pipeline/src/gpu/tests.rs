use super::*;
use crate::stage::{Stage, StageLimits};
use crate::synth;
use kernels::Pool;

/// A small Llama with head_dim 64 (the GPU kernels' smallest), GQA 4/2, 3 layers.
fn tiny_config() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": 512, "hidden_size": 256, "intermediate_size": 512,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 1024, "tie_word_embeddings": true,
        "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "torch_dtype": "bfloat16"
    })
}

fn model(dir: &std::path::Path, cfg: serde_json::Value, dtype: DType) -> crate::Model {
    synth::write_checkpoint(dir, cfg, dtype, 7).unwrap();
    crate::Model::open(dir).unwrap()
}

fn check(m: &crate::Model) -> Result<StageWeights> {
    let layout = BlockLayout::new(m.config.num_hidden_layers, 3).unwrap();
    GpuStage::check(&m.config, m.weights.as_ref(), &layout, 0..3, &GpuStageLimits::for_config(&m.config))
}

#[test]
fn a_bf16_llama_with_head_dim_64_passes_the_checks() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path(), tiny_config(), DType::BF16);
    check(&m).unwrap();
}

#[test]
fn unsupported_models_are_refused_by_name_before_any_device_work() {
    let dir = tempfile::tempdir().unwrap();
    let (qwen, dt) = synth::preset("tiny-qwen2").unwrap();
    let e = check(&model(&dir.path().join("q"), qwen, dt)).err().unwrap().to_string();
    assert!(e.contains("attention biases are not supported"), "{e}");
    let (tiny, _) = synth::preset("tiny-llama").unwrap();
    let e = check(&model(&dir.path().join("t"), tiny, DType::BF16)).err().unwrap().to_string();
    assert!(e.contains("head_dim 16"), "{e}");
    let e = check(&model(&dir.path().join("f"), tiny_config(), DType::F32)).err().unwrap().to_string();
    assert!(e.contains("needs bf16"), "{e}");
    let m = model(&dir.path().join("ok"), tiny_config(), DType::BF16);
    let layout = BlockLayout::new(3, 3).unwrap();
    let mut l = GpuStageLimits::for_config(&m.config);
    l.max_context = 4096;
    let e = GpuStage::check(&m.config, m.weights.as_ref(), &layout, 0..3, &l).err().unwrap().to_string();
    assert!(e.contains("max_context 4096"), "{e}");
    l.max_seqs = 0;
    assert!(GpuStage::check(&m.config, m.weights.as_ref(), &layout, 0..3, &l).is_err());
}

#[test]
fn without_a_driver_opening_the_device_is_a_clean_error() {
    if ::gpu::sys::driver().is_ok() {
        return; // a machine with a driver: covered by the ignored GPU tests below
    }
    let e = GpuDevice::open(0).err().expect("no driver here").to_string();
    assert!(e.contains("no CUDA driver"), "{e}");
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2)).sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

#[test]
#[ignore = "needs an NVIDIA GPU and driver (run on the lent device)"]
fn gpu_logits_match_the_cpu_on_prefill_and_decode() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path(), tiny_config(), DType::BF16);
    let layout = BlockLayout::new(3, 3).unwrap();
    let dev = GpuDevice::open(0).unwrap();
    let mut g = GpuStage::new(
        m.config.clone(),
        m.weights.as_ref(),
        None,
        layout,
        0..3,
        &dev,
        GpuStageLimits::for_config(&m.config),
    )
    .unwrap();
    let mut c =
        Stage::new(m.config.clone(), m.weights.as_ref(), layout, 0..3, Arc::new(Pool::new(2)), StageLimits::default())
            .unwrap();
    let prompt: Vec<u32> = (0..40).map(|i| (i * 37 + 5) % 512).collect();
    let mut batch = StageBatch {
        seq_ids: vec![9; prompt.len()],
        positions: (0..prompt.len() as u32).collect(),
        input: StageInput::Tokens(prompt.clone()),
        logits: LogitsRows::All,
    };
    for step in 0..4 {
        let (StageOutput::Logits { data: a, .. }, StageOutput::Logits { data: b, .. }) =
            (g.forward(&batch).unwrap(), c.forward(&batch).unwrap())
        else {
            panic!("logits expected")
        };
        let e = rel_err(&a, &b);
        assert!(e < 2e-2, "step {step}: normalised logits error {e}");
        let p = g.seq_len(9) as u32;
        batch = StageBatch {
            seq_ids: vec![9],
            positions: vec![p],
            input: StageInput::Tokens(vec![(p * 11) % 512]),
            logits: LogitsRows::All,
        };
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU and driver (run on the lent device)"]
fn blocks_load_one_at_a_time_and_forward_waits_for_all_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path(), tiny_config(), DType::BF16);
    let layout = BlockLayout::new(3, 3).unwrap();
    let dev = GpuDevice::open(0).unwrap();
    let mut g =
        GpuStage::allocate(m.config.clone(), layout, 1..3, &dev, GpuStageLimits::for_config(&m.config)).unwrap();
    let batch = StageBatch {
        seq_ids: vec![1],
        positions: vec![0],
        input: StageInput::Hidden(vec![0.5; 256]),
        logits: LogitsRows::All,
    };
    assert_eq!(g.missing_blocks(), vec![1, 2]);
    g.load_block(m.weights.as_ref(), None, 2).unwrap();
    let e = g.forward(&batch).unwrap_err().to_string();
    assert!(e.contains("blocks [1] of 1..3 are not loaded yet"), "{e}");
    assert!(g.load_block(m.weights.as_ref(), None, 2).is_err(), "loaded twice");
    assert!(g.load_block(m.weights.as_ref(), None, 0).is_err(), "not in the stage");
    g.load_block(m.weights.as_ref(), None, 1).unwrap();
    assert!(matches!(g.forward(&batch).unwrap(), StageOutput::Logits { .. }));
}
