//! Part 1 and 2 of `gpu-check`: every CUDA op against the CPU reference (and bad launches refused),
//! and the GPU engine's logits against the CPU engine's on a synthetic SmolLM2-shaped model.

use super::variants::{attention_variant, AttnArgs};
use super::*;
use kernels::cuda::{DecodeSeq, DecodeWorkspace, Epilogue, PrefillSeq, View, ViewMut};
use kernels::{DType, Weights};
use std::path::Path;

pub(super) fn matmul_checks(g: &Gpu, rng: &mut Rng, out: &mut Vec<Check>) -> R<()> {
    for (name, m, n, k) in [("gemm_bf16", 200, 300, 576), ("gemv_bf16", 3, 1000, 1536), ("gemm_bf16", 1, 129, 8)] {
        let a = rng.bf16s(m * k, 1.0);
        let w = rng.bf16s(n * k, 1.0);
        let r0 = rng.f32s(m * n, 1.0);
        let mut want = vec![0f32; m * n];
        let wb = bytes_of(&w);
        kernels::reference::matmul(&widen(&a), m, Weights::new(&wb, DType::BF16, n, k).map_err(e2s("ref"))?, &mut want)
            .map_err(e2s("reference matmul"))?;
        let (da, dw) = (g.up(&a)?, g.up(&w)?);
        let shape = format!("m={m} n={n} k={k}");
        let run = |c: ViewMut<f32>, epi| {
            if name == "gemm_bf16" {
                g.k.gemm_bf16(&g.st, View::whole(&da), View::whole(&dw), c, m, n, k, epi)
            } else {
                g.k.gemv_bf16(&g.st, View::whole(&da), View::whole(&dw), c, m, n, k, epi)
            }
        };
        let mut c = g.poisoned::<f32>(m * n)?;
        run(ViewMut::whole(&mut c), Epilogue::Store).map_err(e2s("launch"))?;
        out.push(check(&format!("{name} f32"), shape.clone(), normalised_error(&g.down(&c, m * n)?, &want), TOL_F32));
        let mut c = g.up(&r0)?;
        run(ViewMut::whole(&mut c), Epilogue::Accumulate).map_err(e2s("launch"))?;
        let want_acc: Vec<f32> = want.iter().zip(&r0).map(|(a, b)| a + b).collect();
        out.push(check(
            &format!("{name} f32_acc"),
            shape.clone(),
            normalised_error(&g.down(&c, m * n)?, &want_acc),
            TOL_F32,
        ));
        let mut c = g.poisoned::<bf16>(m * n)?;
        let r = if name == "gemm_bf16" {
            g.k.gemm_bf16(&g.st, View::whole(&da), View::whole(&dw), ViewMut::whole(&mut c), m, n, k, Epilogue::Store)
        } else {
            g.k.gemv_bf16(&g.st, View::whole(&da), View::whole(&dw), ViewMut::whole(&mut c), m, n, k, Epilogue::Store)
        };
        r.map_err(e2s("launch"))?;
        out.push(check(&format!("{name} bf16"), shape, normalised_error(&g.down_f32(&c, m * n)?, &want), TOL_BF16));
    }
    // Refusals: k not a multiple of 8, accumulate into bf16.
    let (a, w) = (g.zeros::<bf16>(64 * 60)?, g.zeros::<bf16>(64 * 60)?);
    let mut c = g.zeros::<f32>(64 * 64)?;
    let r = g.k.gemm_bf16(&g.st, View::whole(&a), View::whole(&w), ViewMut::whole(&mut c), 64, 64, 60, Epilogue::Store);
    out.push(refused("gemm_bf16 (bad k)", "k=60".into(), r, "multiple of 8"));
    let mut cb = g.zeros::<bf16>(64 * 64)?;
    let r =
        g.k.gemv_bf16(&g.st, View::whole(&a), View::whole(&w), ViewMut::whole(&mut cb), 8, 8, 56, Epilogue::Accumulate);
    out.push(refused("gemv_bf16 (acc into bf16)", "m=8 n=8 k=56".into(), r, "accumulate needs an f32"));
    Ok(())
}

pub(super) fn pointwise_checks(g: &Gpu, rng: &mut Rng, out: &mut Vec<Check>) -> R<()> {
    // RMSNorm
    let (rows, d) = (5, 576);
    let x = rng.f32s(rows * d, 2.0);
    let w = rng.bf16s(d, 1.0);
    let mut want = vec![0f32; rows * d];
    kernels::reference::rmsnorm(&x, &widen(&w), 1e-5, &mut want).map_err(e2s("reference rmsnorm"))?;
    let (dx, dw) = (g.up(&x)?, g.up(&w)?);
    let mut o32 = g.poisoned::<f32>(rows * d)?;
    g.k.rmsnorm(&g.st, View::whole(&dx), View::whole(&dw), ViewMut::whole(&mut o32), rows, d, 1e-5)
        .map_err(e2s("rmsnorm"))?;
    out.push(check(
        "rmsnorm f32",
        format!("rows={rows} dim={d}"),
        normalised_error(&g.down(&o32, rows * d)?, &want),
        TOL_F32,
    ));
    let mut o16 = g.poisoned::<bf16>(rows * d)?;
    g.k.rmsnorm(&g.st, View::whole(&dx), View::whole(&dw), ViewMut::whole(&mut o16), rows, d, 1e-5)
        .map_err(e2s("rmsnorm"))?;
    out.push(check(
        "rmsnorm bf16",
        format!("rows={rows} dim={d}"),
        normalised_error(&g.down_f32(&o16, rows * d)?, &want),
        TOL_BF16,
    ));

    // RoPE (table as pipeline/src/stage.rs builds it)
    for hd in [64usize, 128] {
        let (rows, nh) = (7, 9);
        let half = hd / 2;
        let inv: Vec<f32> = (0..half).map(|i| (1.0 / 100000f64.powf(2.0 * i as f64 / hd as f64)) as f32).collect();
        let pos: Vec<u32> = (0..rows).map(|_| (rng.next() % 8192) as u32).collect();
        let (mut cos, mut sin) = (vec![0f32; rows * half], vec![0f32; rows * half]);
        for r in 0..rows {
            for i in 0..half {
                let angle = pos[r] as f32 * inv[i];
                cos[r * half + i] = (angle as f64).cos() as f32;
                sin[r * half + i] = (angle as f64).sin() as f32;
            }
        }
        let x = rng.f32s(rows * nh * hd, 1.0);
        let mut want = x.clone();
        kernels::reference::rope(&mut want, rows, nh, hd, &cos, &sin).map_err(e2s("reference rope"))?;
        let (dp, di) = (g.up(&pos)?, g.up(&inv)?);
        let mut dx = g.up(&x)?;
        g.k.rope(&g.st, ViewMut::whole(&mut dx), View::whole(&dp), View::whole(&di), rows, nh, hd)
            .map_err(e2s("rope"))?;
        let shape = format!("rows={rows} heads={nh} hd={hd}");
        out.push(check("rope f32", shape.clone(), normalised_error(&g.down(&dx, x.len())?, &want), 1e-6));
        let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
        let mut want_b = widen(&xb);
        kernels::reference::rope(&mut want_b, rows, nh, hd, &cos, &sin).map_err(e2s("reference rope"))?;
        let mut dxb = g.up(&xb)?;
        g.k.rope(&g.st, ViewMut::whole(&mut dxb), View::whole(&dp), View::whole(&di), rows, nh, hd)
            .map_err(e2s("rope"))?;
        out.push(check("rope bf16", shape, normalised_error(&g.down_f32(&dxb, x.len())?, &want_b), TOL_BF16));
    }
    let (mut dx, dp, di) = (g.zeros::<f32>(96)?, g.zeros::<u32>(1)?, g.zeros::<f32>(48)?);
    let r = g.k.rope(&g.st, ViewMut::whole(&mut dx), View::whole(&dp), View::whole(&di), 1, 1, 95);
    out.push(refused("rope (odd head_dim)", "hd=95".into(), r, "must be even"));

    // SiLU·up
    let n = 100_003;
    let (ga, up) = (rng.f32s(n, 6.0), rng.f32s(n, 2.0));
    let mut want = vec![0f32; n];
    kernels::reference::silu_mul(&ga, &up, &mut want).map_err(e2s("reference silu_mul"))?;
    let (dg, du) = (g.up(&ga)?, g.up(&up)?);
    let mut o = g.poisoned::<f32>(n)?;
    g.k.silu_mul(&g.st, View::whole(&dg), View::whole(&du), ViewMut::whole(&mut o), n).map_err(e2s("silu_mul"))?;
    out.push(check("silu_mul f32", format!("n={n}"), normalised_error(&g.down(&o, n)?, &want), TOL_SILU));
    let mut ob = g.poisoned::<bf16>(n)?;
    g.k.silu_mul(&g.st, View::whole(&dg), View::whole(&du), ViewMut::whole(&mut ob), n).map_err(e2s("silu_mul"))?;
    out.push(check("silu_mul bf16", format!("n={n}"), normalised_error(&g.down_f32(&ob, n)?, &want), TOL_BF16));

    // Embedding (exact) and a bad id
    let (vocab, d, rows) = (1000, 576, 17);
    let table = rng.bf16s(vocab * d, 1.0);
    let ids: Vec<u32> = (0..rows).map(|_| (rng.next() % vocab as u64) as u32).collect();
    let want: Vec<f32> = ids.iter().flat_map(|&i| widen(&table[i as usize * d..(i as usize + 1) * d])).collect();
    let (dt, di) = (g.up(&table)?, g.up(&ids)?);
    let mut o = g.poisoned::<f32>(rows * d)?;
    let mut bad = g.zeros::<u32>(1)?;
    g.k.embedding(&g.st, View::whole(&dt), View::whole(&di), ViewMut::whole(&mut o), &mut bad, rows, d, vocab)
        .map_err(e2s("embedding"))?;
    out.push(check(
        "embedding f32",
        format!("rows={rows} dim={d} vocab={vocab}"),
        normalised_error(&g.down(&o, rows * d)?, &want),
        0.0,
    ));
    let mut ids_bad = ids.clone();
    ids_bad[5] = vocab as u32 + 3;
    let dib = g.up(&ids_bad)?;
    let r = g.k.embedding(&g.st, View::whole(&dt), View::whole(&dib), ViewMut::whole(&mut o), &mut bad, rows, d, vocab);
    out.push(refused("embedding (id >= vocab)", "row 5".into(), r, "row 5 has token id 1003"));

    // Argmax: random, ties, all NaN, NaN mixed
    let vocab = 49152;
    let mut l = rng.f32s(4 * vocab, 10.0);
    l[vocab + 77] = 50.0;
    l[vocab + 4000] = 50.0;
    l[2 * vocab..3 * vocab].iter_mut().for_each(|x| *x = f32::NAN);
    l[3 * vocab + 9] = f32::NAN;
    l[3 * vocab + 10] = 99.0;
    let want: Vec<u32> = l.chunks(vocab).map(|r| pipeline::sampler::argmax(r) as u32).collect();
    let dl = g.up(&l)?;
    let mut idx = g.poisoned::<u32>(4)?;
    g.k.argmax(&g.st, View::whole(&dl), ViewMut::whole(&mut idx), None, 4, vocab).map_err(e2s("argmax"))?;
    let got = g.down(&idx, 4)?;
    let mismatches = got.iter().zip(&want).filter(|(a, b)| a != b).count();
    let mut c = check("argmax f32", format!("rows=4 vocab={vocab} (ties, NaN)"), mismatches as f64, 0.0);
    c.note = format!("gpu {got:?} cpu {want:?}");
    out.push(c);
    Ok(())
}

/// A KV cache region per sequence, laid out one after another (each 16-byte aligned).
pub(super) fn attention_checks(g: &Gpu, rng: &mut Rng, out: &mut Vec<Check>) -> R<()> {
    for (nh, nkv, hd) in [(9usize, 3usize, 64usize), (32, 8, 128)] {
        let (qrow, kvrow) = (nh * hd, nkv * hd);
        let scale = 1.0 / (hd as f32).sqrt();
        // prefill: (n_q, pos0)
        let specs = [(70usize, 0usize), (33, 500), (1, 1099)];
        let rows: usize = specs.iter().map(|s| s.0).sum();
        let ctxs: Vec<usize> = specs.iter().map(|s| s.0 + s.1).collect();
        let total: usize = ctxs.iter().sum();
        let kc = rng.bf16s(total * kvrow, 1.0);
        let vc = rng.bf16s(total * kvrow, 1.0);
        let q = rng.f32s(rows * qrow, 1.0);
        let (kf, vf) = (widen(&kc), widen(&vc));
        let mut want = vec![0f32; rows * qrow];
        let mut seqs = Vec::new();
        {
            let mut ref_seqs = Vec::new();
            let mut rest: &mut [f32] = &mut want;
            let (mut row0, mut off) = (0, 0);
            for (i, &(n_q, pos0)) in specs.iter().enumerate() {
                let (o, tail) = std::mem::take(&mut rest).split_at_mut(n_q * qrow);
                rest = tail;
                ref_seqs.push(kernels::AttnSeq {
                    q: &q[row0 * qrow..(row0 + n_q) * qrow],
                    k: &kf[off..off + ctxs[i] * kvrow],
                    v: &vf[off..off + ctxs[i] * kvrow],
                    out: o,
                    n_q,
                    pos0,
                });
                seqs.push(PrefillSeq { k_offset: off, v_offset: off, q_row0: row0, n_q, pos0 });
                row0 += n_q;
                off += ctxs[i] * kvrow;
            }
            kernels::reference::attention(&mut ref_seqs, nh, nkv, hd, scale).map_err(e2s("reference attention"))?;
        }
        let (dq, dk, dv) = (g.up(&q)?, g.up(&kc)?, g.up(&vc)?);
        let mut descs = DeviceBuffer::alloc(&g.ctx, 8).map_err(e2s("alloc"))?;
        // The built-in prefill kernel into `$out`, a poisoned buffer of either output type.
        macro_rules! prefill_into {
            ($out:expr) => {
                g.k.attention_prefill(
                    &g.st,
                    View::whole(&dq),
                    View::whole(&dk),
                    View::whole(&dv),
                    ViewMut::whole($out),
                    &mut descs,
                    rows,
                    &seqs,
                    nh,
                    nkv,
                    hd,
                    scale,
                )
                .map_err(e2s("attention_prefill"))
            };
        }
        let mut o = g.poisoned::<f32>(rows * qrow)?;
        prefill_into!(&mut o)?;
        let shape = format!("heads={nh}/{nkv} hd={hd} (n_q,pos0)={specs:?}");
        out.push(check(
            "attention_prefill f32",
            shape.clone(),
            normalised_error(&g.down(&o, rows * qrow)?, &want),
            TOL_ATTN,
        ));
        let max_pairs = specs.iter().map(|s| s.0).max().unwrap_or(1) * (nh / nkv);
        for spec in &g.attention_variants {
            let vo = g.poisoned::<f32>(rows * qrow)?;
            let a = AttnArgs { q: &dq, descs: &descs, max_pairs, n_seqs: specs.len(), nh, nkv, hd, scale };
            match attention_variant(g, spec, &a, &vo, 0, 1) {
                Ok((name, _)) => out.push(check(
                    &format!("attention_prefill variant {name} f32"),
                    shape.clone(),
                    normalised_error(&g.down(&vo, rows * qrow)?, &want),
                    TOL_ATTN_PREFILL,
                )),
                Err(e) => out.push(Check {
                    op: format!("attention_prefill variant {spec}"),
                    shape: shape.clone(),
                    err: f64::INFINITY,
                    tol: TOL_ATTN_PREFILL,
                    pass: false,
                    note: e,
                }),
            }
        }
        let mut ob = g.poisoned::<bf16>(rows * qrow)?;
        prefill_into!(&mut ob)?;
        out.push(check(
            "attention_prefill bf16",
            shape,
            normalised_error(&g.down_f32(&ob, rows * qrow)?, &want),
            TOL_BF16,
        ));

        // decode: one query per sequence over n_keys keys of its region
        let keys = [1usize, 513, 1100];
        let dseqs: Vec<DecodeSeq> = {
            let mut off = 0;
            keys.iter()
                .enumerate()
                .map(|(i, &n)| {
                    let s = DecodeSeq { k_offset: off, v_offset: off, q_row: i, n_keys: n.min(ctxs[i]) };
                    off += ctxs[i] * kvrow;
                    s
                })
                .collect()
        };
        let qd = rng.f32s(keys.len() * qrow, 1.0);
        let mut want = vec![0f32; keys.len() * qrow];
        {
            let mut ref_seqs = Vec::new();
            let mut rest: &mut [f32] = &mut want;
            for (i, s) in dseqs.iter().enumerate() {
                let (o, tail) = std::mem::take(&mut rest).split_at_mut(qrow);
                rest = tail;
                ref_seqs.push(kernels::AttnSeq {
                    q: &qd[i * qrow..(i + 1) * qrow],
                    k: &kf[s.k_offset..s.k_offset + s.n_keys * kvrow],
                    v: &vf[s.v_offset..s.v_offset + s.n_keys * kvrow],
                    out: o,
                    n_q: 1,
                    pos0: s.n_keys - 1,
                });
            }
            kernels::reference::attention(&mut ref_seqs, nh, nkv, hd, scale).map_err(e2s("reference attention"))?;
        }
        let dqd = g.up(&qd)?;
        let mut ws = DecodeWorkspace::new(&g.ctx, 8, nh, hd, 4096).map_err(e2s("decode workspace"))?;
        macro_rules! decode_into {
            ($out:expr) => {
                g.k.attention_decode(
                    &g.st,
                    View::whole(&dqd),
                    View::whole(&dk),
                    View::whole(&dv),
                    ViewMut::whole($out),
                    &mut ws,
                    keys.len(),
                    &dseqs,
                    nh,
                    nkv,
                    hd,
                    scale,
                )
                .map_err(e2s("attention_decode"))
            };
        }
        let mut o = g.poisoned::<f32>(keys.len() * qrow)?;
        decode_into!(&mut o)?;
        let n_keys: Vec<usize> = dseqs.iter().map(|s| s.n_keys).collect();
        let shape = format!("heads={nh}/{nkv} hd={hd} keys={n_keys:?}");
        out.push(check(
            "attention_decode f32",
            shape.clone(),
            normalised_error(&g.down(&o, keys.len() * qrow)?, &want),
            TOL_ATTN,
        ));
        let mut ob = g.poisoned::<bf16>(keys.len() * qrow)?;
        decode_into!(&mut ob)?;
        out.push(check(
            "attention_decode bf16",
            shape,
            normalised_error(&g.down_f32(&ob, keys.len() * qrow)?, &want),
            TOL_BF16,
        ));
        if hd == 64 {
            let r = g.k.attention_prefill(
                &g.st,
                View::whole(&dq),
                View::whole(&dk),
                View::whole(&dv),
                ViewMut::whole(&mut o),
                &mut descs,
                1,
                &[PrefillSeq { k_offset: 0, v_offset: 0, q_row0: 0, n_q: 1, pos0: 0 }],
                6,
                6,
                96,
                scale,
            );
            out.push(refused("attention_prefill (hd 96)", "hd=96".into(), r, "support [64, 128]"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Part 2: the synthetic model
// ---------------------------------------------------------------------------------------------

/// A directory removed with everything in it when dropped.
pub(super) struct TempDir(pub(super) PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes the synthetic SmolLM2-shaped model and packs it; returns the packed file path.
fn synth_packed(dir: &Path, seed: u64) -> R<PathBuf> {
    let (cfg, dtype) = pipeline::synth::preset("smollm2-135m").ok_or("no smollm2-135m preset")?;
    let hf = dir.join("hf");
    pipeline::synth::write_checkpoint(&hf, cfg, dtype, seed).map_err(e2s("synth"))?;
    let model = pipeline::Model::open(&hf).map_err(e2s("open synthetic model"))?;
    let num_blocks =
        pipeline::BlockLayout::default_for(model.config.num_hidden_layers).map_err(e2s("layout"))?.num_blocks;
    let out = dir.join("smollm2-synth.fsp");
    pipeline::packed::pack(&model, &out, num_blocks, None, &mut |_| {}).map_err(e2s("pack"))?;
    Ok(out)
}

pub(super) struct ModelReport {
    pub(super) steps: Vec<(String, f64, bool)>, // (phase, normalised error, argmax agrees)
    pub(super) loads: Vec<pipeline::gpu::BlockLoad>,
    pub(super) packed: PathBuf,
}

pub(super) fn model_check(dev: &pipeline::gpu::GpuDevice, dir: &Path, seed: u64) -> R<ModelReport> {
    use pipeline::{LogitsRows, StageBatch, StageInput, StageOutput};
    let packed = synth_packed(dir, seed)?;
    let pf = Arc::new(pipeline::packed::PackedFile::open_header(&packed).map_err(e2s("open packed"))?);
    pf.mark_all_present().map_err(e2s("verify packed"))?;
    let model = pf.clone().into_model().map_err(e2s("packed model"))?;
    let cfg = model.config.clone();
    let nb = pf.num_blocks();
    let layout = pipeline::BlockLayout::new(cfg.num_hidden_layers, nb).map_err(e2s("layout"))?;
    let limits =
        pipeline::gpu::GpuStageLimits { max_seqs: 2, max_batch_rows: 256, max_context: 1024, block_slab_bytes: 0 };
    // The warm-host-cache path: the file page-locked once, each block one copy into a pool slab.
    let pinned = pipeline::gpu::PinnedPacked::new(&dev.ctx, pf.clone()).map_err(e2s("pinning the packed file"))?;
    let mut gs =
        pipeline::gpu::GpuStage::new(cfg.clone(), model.weights.as_ref(), Some(&pinned), layout, 0..nb, dev, limits)
            .map_err(e2s("GPU stage"))?;
    let threads = kernels::Pool::default_threads();
    let mut cs = pipeline::Stage::new(
        cfg.clone(),
        model.weights.as_ref(),
        layout,
        0..nb,
        Arc::new(kernels::Pool::new(threads)),
        pipeline::StageLimits::default(),
    )
    .map_err(e2s("CPU stage"))?;
    let mut rng = Rng::new(seed ^ 0x5eed);
    let prompt: Vec<u32> = (0..64).map(|_| (rng.next() % cfg.vocab_size as u64) as u32).collect();
    let mut batch = StageBatch {
        seq_ids: vec![3; prompt.len()],
        positions: (0..prompt.len() as u32).collect(),
        input: StageInput::Tokens(prompt),
        logits: LogitsRows::All,
    };
    let mut steps = Vec::new();
    for step in 0..6 {
        let a = gs.forward(&batch).map_err(e2s("GPU forward"))?;
        let b = cs.forward(&batch).map_err(e2s("CPU forward"))?;
        let (StageOutput::Logits { data: a, vocab, .. }, StageOutput::Logits { data: b, .. }) = (a, b) else {
            return Err("the last stage returned hidden states".into());
        };
        let agree = a
            .chunks(vocab)
            .zip(b.chunks(vocab))
            .all(|(x, y)| pipeline::sampler::argmax(x) == pipeline::sampler::argmax(y));
        let phase =
            if step == 0 { format!("prefill {} rows", batch.seq_ids.len()) } else { format!("decode step {step}") };
        steps.push((phase, normalised_error(&a, &b), agree));
        let last = &b[b.len() - vocab..];
        let next = pipeline::sampler::argmax(last) as u32;
        let p = cs.seq_len(3) as u32;
        batch = StageBatch {
            seq_ids: vec![3],
            positions: vec![p],
            input: StageInput::Tokens(vec![next]),
            logits: LogitsRows::All,
        };
    }
    Ok(ModelReport { steps, loads: gs.loads.clone(), packed })
}
