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

/// The tiny model packed into 3 blocks under `dir`, every block present: the file and the model
/// read from it (its tensors are views of the file's mapping).
fn tiny_packed(dir: &std::path::Path) -> (Arc<crate::packed::PackedFile>, crate::Model) {
    let m = model(&dir.join("hf"), tiny_config(), DType::BF16);
    let packed = dir.join("tiny.fsp");
    crate::packed::pack(&m, &packed, 3, None, &mut |_| {}).unwrap();
    let pf = Arc::new(crate::packed::PackedFile::open_header(&packed).unwrap());
    pf.mark_all_present().unwrap();
    let pm = pf.clone().into_model().unwrap();
    (pf, pm)
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
        let e = kernels::check::normalised_error(&a, &b);
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
    g.load_block(m.weights.as_ref(), None, false, 2).unwrap();
    let e = g.forward(&batch).unwrap_err().to_string();
    assert!(e.contains("blocks [1] of 1..3 are not loaded yet"), "{e}");
    assert!(g.load_block(m.weights.as_ref(), None, false, 2).is_err(), "loaded twice");
    assert!(g.load_block(m.weights.as_ref(), None, false, 0).is_err(), "not in the stage");
    g.load_block(m.weights.as_ref(), None, false, 1).unwrap();
    assert!(matches!(g.forward(&batch).unwrap(), StageOutput::Logits { .. }));
}

/// A packed file page-locked once (`PinnedPacked`): every block lands in a slab of the stage's pool
/// by one copy (path "pinned"), and the stage computes the same logits as one loaded block by block
/// with per-block registration into buffers of their own.
#[test]
#[ignore = "needs an NVIDIA GPU and driver (run on the lent device)"]
fn pinned_packed_blocks_land_in_pool_slabs_with_the_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    let (pf, pm) = tiny_packed(dir.path());
    let layout = BlockLayout::new(3, 3).unwrap();
    let dev = GpuDevice::open(0).unwrap();
    let limits = GpuStageLimits::for_config(&pm.config);
    let pinned = PinnedPacked::new(&dev.ctx, pf.clone()).unwrap();
    assert_eq!(pinned.len(), pf.bytes().len());
    let mut a =
        GpuStage::new(pm.config.clone(), pm.weights.as_ref(), Some(&pinned), layout, 0..3, &dev, limits).unwrap();
    assert!(a.loads.iter().all(|l| l.path == LoadPath::Pinned), "{:?}", a.loads);
    let biggest = (0..3).map(|b| pf.block_bytes(b).unwrap().len() & !1).max().unwrap();
    assert_eq!(a.pool.as_ref().map(|p| (p.num_slabs(), p.slab_bytes(), p.available())), Some((3, biggest, 0)));
    let mut no_pool = limits;
    no_pool.block_slab_bytes = 0;
    let load_each = |what: &str| {
        let mut s = GpuStage::allocate(pm.config.clone(), layout, 0..3, &dev, no_pool).unwrap();
        for blk in 0..3 {
            s.load_block(pm.weights.as_ref(), pf.block_bytes(blk), false, blk).unwrap();
        }
        assert!(s.pool.is_none(), "{what}");
        s
    };
    // While the file is page-locked, registering a block again is refused by the driver as already
    // registered: the block is copied as it is.
    let mut c = load_each("while pinned");
    assert!(c.loads.iter().all(|l| l.path == LoadPath::Pinned), "{:?}", c.loads);
    drop(pinned);
    let mut b = load_each("after unpinning");
    assert!(b.loads.iter().all(|l| l.path == LoadPath::Registered), "{:?}", b.loads);
    let batch = StageBatch {
        seq_ids: vec![4; 12],
        positions: (0..12).collect(),
        input: StageInput::Tokens((0..12).map(|i| (i * 29 + 3) % 512).collect()),
        logits: LogitsRows::All,
    };
    let logits = |s: &mut GpuStage| match s.forward(&batch).unwrap() {
        StageOutput::Logits { data, .. } => data,
        _ => panic!("logits expected"),
    };
    let x = logits(&mut a);
    assert_eq!(x, logits(&mut b), "same weights, same kernels: the same bits");
    assert_eq!(x, logits(&mut c), "same weights, same kernels: the same bits");
}

/// A packed file's execution block holds each of its matrices at a 16-byte aligned offset, so the
/// GPU stage copies it in one piece (checked without a device: this is what makes a block load one DMA).
#[test]
fn packed_blocks_hold_their_matrices_aligned() {
    let dir = tempfile::tempdir().unwrap();
    let (pf, pm) = tiny_packed(dir.path());
    let layout = BlockLayout::new(3, 3).unwrap();
    for b in 0..3 {
        let bw = StageWeights::load(&pm.config, pm.weights.as_ref(), &layout, b..b + 1).unwrap();
        let mats: Vec<&Tensor> = matrices(&bw).into_iter().map(|(_, t)| t).collect();
        let span = even(pf.block_bytes(b).unwrap());
        assert!(block_holds_all(span, &mats), "block {b}");
    }
}
