//! Part 3 of `gpu-check`: timings, each against a ceiling measured in the same run (block load vs a
//! pinned copy, GEMV vs a device copy, GEMM vs cuBLAS and prefill attention vs SDPA through torch).

use super::variants::{attention_variant, gemm_variant, gemv_variant, AttnArgs};
use super::*;
use kernels::cuda::{Epilogue, PrefillSeq, View, ViewMut};
use serde_json::Value;
use std::path::Path;

// ---------------------------------------------------------------------------------------------
// Part 3: timings
// ---------------------------------------------------------------------------------------------

/// Mean µs per call of `f` over `iters` calls after `warm` warm-up calls, timed with events.
pub(super) fn time_us(g: &Gpu, warm: usize, iters: usize, mut f: impl FnMut() -> R<()>) -> R<f64> {
    for _ in 0..warm {
        f()?;
    }
    let (a, b) = (Event::new(&g.ctx).map_err(e2s("event"))?, Event::new(&g.ctx).map_err(e2s("event"))?);
    a.record(&g.st).map_err(e2s("event"))?;
    for _ in 0..iters {
        f()?;
    }
    b.record(&g.st).map_err(e2s("event"))?;
    b.synchronize().map_err(e2s("event"))?;
    Ok(a.elapsed_ms(&b).map_err(e2s("event"))? as f64 * 1e3 / iters as f64)
}

pub(super) fn block_load_timing(g: &Gpu, packed: &Path, out: &mut Vec<Timing>) -> R<()> {
    let pf = Arc::new(pipeline::packed::PackedFile::open_header(packed).map_err(e2s("open packed"))?);
    let bytes = pf.bytes();
    let blocks: Vec<(usize, usize)> =
        pf.layout().exec_blocks.iter().map(|b| (b.offset as usize, (b.len as usize) & !1)).collect();
    let total: usize = blocks.iter().map(|b| b.1).sum();
    let largest = blocks.iter().map(|b| b.1).max().unwrap_or(0);
    let mut dev = DeviceBuffer::<bf16>::alloc(&g.ctx, largest / 2).map_err(e2s("alloc"))?;
    // Touch the mapping once so page-cache faults are not timed (the check measures the copy path).
    let _sum: u64 = bytes.iter().step_by(4096).map(|&b| b as u64).sum();
    // Ceiling: the same bytes from one pinned buffer.
    let mut pinned = gpu::PinnedHostBuffer::<bf16>::alloc(&g.ctx, largest / 2).map_err(e2s("pinned alloc"))?;
    let t = Instant::now();
    for _ in 0..3 {
        for &(_, len) in &blocks {
            g.st.copy_htod(&pinned.as_mut_slice()[..len / 2], &mut dev, 0).map_err(e2s("pinned copy"))?;
        }
    }
    let pinned_s = t.elapsed().as_secs_f64() / 3.0;
    let pinned_gbs = total as f64 / pinned_s / 1e9;
    // Copies from the mmap'd blocks, each registered in place (registration not timed).
    let ro = gpu::RegisterFlags { portable: true, device_map: false };
    let regs: Result<Vec<_>, _> = blocks
        .iter()
        .map(|&(off, len)| gpu::HostRegistration::new_read_only(&g.ctx, &bytes[off..off + len], ro))
        .collect();
    match regs {
        Ok(regs) => {
            let t = Instant::now();
            for _ in 0..3 {
                for r in &regs {
                    // SAFETY: bf16 is a transparent u16; packed blocks start 4 KiB-aligned in a
                    // page-aligned map, so the view is aligned; the length was made even above.
                    let (pre, elems, _) = unsafe { r.as_slice().align_to::<bf16>() };
                    if !pre.is_empty() {
                        return Err("a packed block is not 2-byte aligned in memory".into());
                    }
                    g.st.copy_htod(elems, &mut dev, 0).map_err(e2s("registered copy"))?;
                }
            }
            let s = t.elapsed().as_secs_f64() / 3.0;
            out.push(Timing {
                op: "block copy (registered mmap)".into(),
                shape: format!("{} blocks, {:.1} MB", blocks.len(), total as f64 / 1e6),
                us: s * 1e6,
                achieved: total as f64 / s / 1e9,
                unit: "GB/s",
                ceiling: Some(pinned_gbs),
                ceiling_name: "pinned cuMemcpyHtoD".into(),
                goal: 0.9,
            });
        }
        Err(e) => eprintln!("gpu-check: registering the mmap'd blocks failed ({e}); only the staged path is timed"),
    }
    // The warm host cache (the scale-out path): the file page-locked once when the node takes the
    // model in (timed apart), device slabs reserved at start-up; per block one slab and one copy.
    let t = Instant::now();
    let pinned = pipeline::gpu::PinnedPacked::new(&g.ctx, pf.clone()).map_err(e2s("pinning the packed file"))?;
    let pin_s = t.elapsed().as_secs_f64();
    let pool = gpu::DevicePool::<bf16>::reserve(&g.ctx, largest, blocks.len()).map_err(e2s("device pool"))?;
    let t = Instant::now();
    let mut slabs = Vec::with_capacity(blocks.len());
    for &(off, len) in &blocks {
        let mut slab = pipeline::gpu::WeightBuf::Pooled(pool.try_take().map_err(e2s("pool slab"))?);
        pipeline::gpu::load::upload_bf16_into(&g.ctx, &g.st, &pinned.file().bytes()[off..off + len], &mut slab, true)
            .map_err(e2s("block upload"))?;
        slabs.push(slab);
    }
    let warm_s = t.elapsed().as_secs_f64();
    drop(slabs);
    out.push(Timing {
        op: "block load (pinned file → pool slab)".into(),
        shape: format!("{} blocks, {:.1} MB; pinning once {:.1} ms", blocks.len(), total as f64 / 1e6, pin_s * 1e3),
        us: warm_s * 1e6,
        achieved: total as f64 / warm_s / 1e9,
        unit: "GB/s",
        ceiling: Some(pinned_gbs),
        ceiling_name: "pinned cuMemcpyHtoD".into(),
        goal: 0.9,
    });
    drop(pinned);
    // The cold path per block: device alloc, register, copy, unregister (or staged).
    let mut path = "registered";
    let t = Instant::now();
    for &(off, len) in &blocks {
        let (_buf, p) =
            pipeline::gpu::load::upload_bf16(&g.ctx, &g.st, &bytes[off..off + len]).map_err(e2s("block upload"))?;
        path = p.as_str();
    }
    let load_s = t.elapsed().as_secs_f64();
    out.push(Timing {
        op: format!("block load, cold ({path}: alloc+register+copy)"),
        shape: format!("{} blocks, {:.1} MB", blocks.len(), total as f64 / 1e6),
        us: load_s * 1e6,
        achieved: total as f64 / load_s / 1e9,
        unit: "GB/s",
        ceiling: Some(pinned_gbs),
        ceiling_name: "pinned cuMemcpyHtoD".into(),
        goal: 0.0,
    });
    Ok(())
}

/// Bytes of weights a timed GEMV rotates over: several times the H200's 60 MB L2, so the timing
/// reads HBM rather than the cache (each set holds the same values at different addresses).
const GEMV_ROTATE_BYTES: usize = 512 << 20;
/// The copy ceiling: one large device-to-device copy, counting bytes read plus bytes written.
const COPY_CEILING_BYTES: usize = 1 << 30;

pub(super) fn gemv_timing(g: &Gpu, rng: &mut Rng, out: &mut Vec<Timing>) -> R<()> {
    let copy_gbs = {
        let n = COPY_CEILING_BYTES / 2;
        let src = g.zeros::<bf16>(n)?;
        let mut dst = DeviceBuffer::<bf16>::alloc(&g.ctx, n).map_err(e2s("alloc"))?;
        let us = time_us(g, 2, 10, || g.st.copy_dtod(&src, 0, &mut dst, 0, n).map_err(e2s("copy")))?;
        2.0 * COPY_CEILING_BYTES as f64 / us / 1e3
    };
    for (label, n, k) in
        [("SmolLM2 LM head", 49152usize, 576usize), ("Llama-7B up", 11008, 4096), ("Llama-7B o", 4096, 4096)]
    {
        let host = rng.bf16s(n * k, 1.0);
        let sets = GEMV_ROTATE_BYTES.div_ceil(n * k * 2).clamp(1, 64);
        let ws = (0..sets).map(|_| g.up(&host)).collect::<R<Vec<_>>>()?;
        drop(host);
        let x = g.up(&rng.bf16s(k, 1.0))?;
        let mut y = g.zeros::<f32>(n)?;
        let mut i = 0;
        let us = time_us(g, sets, 4 * sets, || {
            i = (i + 1) % sets;
            g.k.gemv_bf16(&g.st, View::whole(&x), View::whole(&ws[i]), ViewMut::whole(&mut y), 1, n, k, Epilogue::Store)
                .map_err(e2s("gemv"))
        })?;
        let bytes = (n * k * 2 + k * 2 + n * 4) as f64;
        let want = g.down(&y, n)?;
        for path in &g.gemv_variants {
            let (name, vus, same) = gemv_variant(g, path, &x, &ws, n, k, &want)?;
            out.push(Timing {
                op: format!("gemv variant {name}{}", if same { "" } else { " (OUTPUT DIFFERS)" }),
                shape: format!("{label} n={n} k={k} ({sets} weight sets)"),
                us: vus,
                achieved: bytes / vus / 1e3,
                unit: "GB/s",
                ceiling: Some(copy_gbs),
                ceiling_name: format!("device copy of {} MiB (read+write)", COPY_CEILING_BYTES >> 20),
                goal: 0.8,
            });
        }
        out.push(Timing {
            op: "gemv_bf16 f32 m=1".into(),
            shape: format!("{label} n={n} k={k} ({sets} weight sets)"),
            us,
            achieved: bytes / us / 1e3,
            unit: "GB/s",
            ceiling: Some(copy_gbs),
            ceiling_name: format!("device copy of {} MiB (read+write)", COPY_CEILING_BYTES >> 20),
            goal: 0.8,
        });
    }
    Ok(())
}

pub(super) const GEMM_SHAPES: [(&str, usize, usize); 3] =
    [("SmolLM2 up", 1536, 576), ("Llama-7B qkvo", 4096, 4096), ("Llama-7B up", 11008, 4096)];
pub(super) const GEMM_MS: [usize; 3] = [512, 1024, 2048];
/// (label, seq, heads, kv heads, head_dim)
pub(super) const SDPA_SHAPES: [(&str, usize, usize, usize, usize); 2] =
    [("SmolLM2", 2048, 9, 3, 64), ("Llama-7B", 2048, 32, 32, 128)];

pub(super) fn gemm_timing(g: &Gpu, rng: &mut Rng, out: &mut Vec<Timing>) -> R<()> {
    for (label, n, k) in GEMM_SHAPES {
        let w = g.up(&rng.bf16s(n * k, 1.0))?;
        let a = g.up(&rng.bf16s(2048 * k, 1.0))?;
        let mut c = g.zeros::<bf16>(2048 * n)?;
        for m in GEMM_MS {
            let us = time_us(g, 3, 10, || {
                g.k.gemm_bf16(&g.st, View::whole(&a), View::whole(&w), ViewMut::whole(&mut c), m, n, k, Epilogue::Store)
                    .map_err(e2s("gemm"))
            })?;
            out.push(Timing {
                op: "gemm_bf16 bf16".into(),
                shape: format!("{label} m={m} n={n} k={k}"),
                us,
                achieved: 2.0 * (m * n * k) as f64 / us / 1e6,
                unit: "TFLOP/s",
                ceiling: None,
                ceiling_name: "cuBLAS (torch.matmul)".into(),
                goal: 0.6,
            });
            if !g.gemm_variants.is_empty() {
                let want = g.down_f32(&c, m * n)?;
                for spec in &g.gemm_variants {
                    match gemm_variant(g, spec, &a, &w, m, n, k, &want) {
                        Ok((name, vus, err)) => out.push(Timing {
                            op: format!("gemm variant {name}{}", if err <= 5e-3 { "" } else { " (OUTPUT DIFFERS)" }),
                            shape: format!("{label} m={m} n={n} k={k}"),
                            us: vus,
                            achieved: 2.0 * (m * n * k) as f64 / vus / 1e6,
                            unit: "TFLOP/s",
                            ceiling: None,
                            ceiling_name: "cuBLAS (torch.matmul)".into(),
                            goal: 0.6,
                        }),
                        Err(e) => eprintln!("gpu-check: gemm variant {spec}: {e}"),
                    }
                }
            }
        }
    }
    Ok(())
}

pub(super) fn attention_timing(g: &Gpu, rng: &mut Rng, out: &mut Vec<Timing>) -> R<()> {
    for (label, s, nh, nkv, hd) in SDPA_SHAPES {
        let q = g.up(&rng.f32s(s * nh * hd, 1.0))?;
        let kc = g.up(&rng.bf16s(s * nkv * hd, 1.0))?;
        let vc = g.up(&rng.bf16s(s * nkv * hd, 1.0))?;
        let mut o = g.zeros::<bf16>(s * nh * hd)?;
        let mut descs = DeviceBuffer::alloc(&g.ctx, 1).map_err(e2s("alloc"))?;
        let seqs = [PrefillSeq { k_offset: 0, v_offset: 0, q_row0: 0, n_q: s, pos0: 0 }];
        let scale = 1.0 / (hd as f32).sqrt();
        let us = time_us(g, 2, 5, || {
            g.k.attention_prefill(
                &g.st,
                View::whole(&q),
                View::whole(&kc),
                View::whole(&vc),
                ViewMut::whole(&mut o),
                &mut descs,
                s,
                &seqs,
                nh,
                nkv,
                hd,
                scale,
            )
            .map_err(e2s("attention_prefill"))
        })?;
        out.push(Timing {
            op: "attention_prefill bf16 causal".into(),
            shape: format!("{label} seq={s} heads={nh}/{nkv} hd={hd}"),
            us,
            achieved: 2.0 * (nh * hd) as f64 * (s * s) as f64 / us / 1e6,
            unit: "TFLOP/s",
            ceiling: None,
            ceiling_name: "torch SDPA (causal)".into(),
            goal: 0.5,
        });
        for spec in &g.attention_variants {
            let a = AttnArgs { q: &q, descs: &descs, max_pairs: s * (nh / nkv), n_seqs: 1, nh, nkv, hd, scale };
            match attention_variant(g, spec, &a, &o, 2, 5) {
                Ok((name, vus)) => out.push(Timing {
                    op: format!("attention variant {name}"),
                    shape: format!("{label} seq={s} heads={nh}/{nkv} hd={hd}"),
                    us: vus,
                    achieved: 2.0 * (nh * hd) as f64 * (s * s) as f64 / vus / 1e6,
                    unit: "TFLOP/s",
                    ceiling: None,
                    ceiling_name: "torch SDPA (causal)".into(),
                    goal: 0.5,
                }),
                Err(e) => eprintln!("gpu-check: attention variant {spec}: {e}"),
            }
        }
    }
    Ok(())
}

/// The torch ceiling script (torch_ceilings.py beside this file): cuBLAS GEMM via torch.matmul and
/// causal SDPA, µs per call.
const TORCH_SCRIPT: &str = include_str!("torch_ceilings.py");

/// Gives each timing whose op starts with `variant` the ceiling of the built-in timing (op starting
/// with `builtin`) of the same shape: a candidate is measured against the same cuBLAS/SDPA call.
pub(super) fn share_ceilings(timings: &mut [Timing], builtin: &str, variant: &str) {
    let by_shape: std::collections::HashMap<String, Option<f64>> =
        timings.iter().filter(|t| t.op.starts_with(builtin)).map(|t| (t.shape.clone(), t.ceiling)).collect();
    for t in timings.iter_mut().filter(|t| t.op.starts_with(variant)) {
        t.ceiling = by_shape.get(&t.shape).copied().flatten();
    }
}

/// Runs the torch script with a time limit; `Err` says why there is no ceiling.
pub(super) fn torch_ceilings(timeout: Duration) -> R<Value> {
    use std::process::{Command, Stdio};
    let spec = json!({
        "gemm": GEMM_SHAPES.iter().flat_map(|&(_, n, k)| GEMM_MS.iter().map(move |&m| [m, n, k])).collect::<Vec<_>>(),
        "sdpa": SDPA_SHAPES.iter().map(|&(_, s, nh, nkv, hd)| [s, nh, nkv, hd]).collect::<Vec<_>>(),
    });
    let probe = Command::new("python3")
        .args(["-c", "import torch; assert torch.cuda.is_available()"])
        .stderr(Stdio::null())
        .status();
    if !matches!(probe, Ok(s) if s.success()) {
        return Err("torch absent (python3 -c 'import torch' failed or sees no CUDA device)".into());
    }
    let mut child = Command::new("python3")
        .args(["-c", TORCH_SCRIPT, &spec.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(e2s("python3"))?;
    let t0 = Instant::now();
    loop {
        match child.try_wait().map_err(e2s("python3"))? {
            Some(_) => break,
            None if t0.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("torch ceiling script passed {} s; killed", timeout.as_secs()));
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    let o = child.wait_with_output().map_err(e2s("python3"))?;
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text.lines().last().unwrap_or("");
    serde_json::from_str(line).map_err(|e| {
        format!(
            "torch script output not JSON ({e}); stderr: {}",
            String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")
        )
    })
}
