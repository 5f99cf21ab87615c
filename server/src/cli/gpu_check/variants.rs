//! Tuning runs of `gpu-check`: alternative PTX builds (`--gemv-variants`, `--gemm-variants`,
//! `--attention-variants`) launched with the built-in kernel's contract on the same buffers, their
//! output compared with the built-in's (or the reference) and timed the same way.

use super::timings::time_us;
use super::*;
use std::path::Path;

/// Times one `--gemv-variants` PTX file at (x [1, k], the rotated weight sets `ws` [n, k]) as the
/// built-in GEMV is timed, and compares its output with `want` (the built-in's) bit for bit:
/// (file name, µs per call, same bits).
pub(super) fn gemv_variant(
    g: &Gpu,
    path: &Path,
    x: &DeviceBuffer<bf16>,
    ws: &[DeviceBuffer<bf16>],
    n: usize,
    k: usize,
    want: &[f32],
) -> R<(String, f64, bool)> {
    let sets = ws.len();
    let name = path.file_name().map_or("?".into(), |f| f.to_string_lossy().into_owned());
    let ptx = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let module = gpu::Module::from_ptx(&g.ctx, &ptx).map_err(e2s("variant PTX"))?;
    let f = module.function("fs_gemv_bf16_f32").map_err(e2s("variant entry point"))?;
    let cfg = gpu::LaunchConfig { grid: [n.div_ceil(8) as u32, 1, 1], block: [256, 1, 1], shared_bytes: 0 };
    let vy = g.poisoned::<f32>(n)?;
    let mut i = 0;
    let vus = time_us(g, sets, 4 * sets, || {
        i = (i + 1) % sets;
        let mut args = gpu::KernelArgs::new();
        args.push(x.device_ptr()).push(ws[i].device_ptr()).push(vy.device_ptr());
        args.push(1i32).push(n as i32).push(k as i32);
        // SAFETY: the variant has the built-in kernel's contract (x [1, k], W [n, k] bf16, y [n] f32,
        // k % 8 == 0, 16-byte aligned buffers of exactly these lengths), which the built-in's launcher
        // checked for these same buffers when it timed them just before.
        unsafe { gpu::launch(&f, cfg, &g.st, &mut args) }.map_err(e2s("variant launch"))
    })?;
    let got = g.down(&vy, n)?;
    let same = got.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits());
    Ok((name, vus, same))
}

/// Times one `--gemm-variants` entry on (a[..m], w) and compares its output with `want` (the
/// built-in's): (file name, µs per call, normalised difference).
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_variant(
    g: &Gpu,
    spec: &str,
    a: &DeviceBuffer<bf16>,
    w: &DeviceBuffer<bf16>,
    m: usize,
    n: usize,
    k: usize,
    want: &[f32],
) -> R<(String, f64, f64)> {
    let mut parts = spec.split(':');
    let path = PathBuf::from(parts.next().unwrap_or(""));
    let num = |x: Option<&str>, d: u32| -> R<u32> {
        x.map_or(Ok(d), |v| v.parse().map_err(|e| format!("{spec}: {v:?}: {e}")))
    };
    let (bm, bn, smem) = (num(parts.next(), 128)?, num(parts.next(), 128)?, num(parts.next(), 0)?);
    if bm == 0 || bn == 0 {
        return Err(format!("{spec}: tile sizes must be positive"));
    }
    let name = path.file_name().map_or("?".into(), |f| f.to_string_lossy().into_owned());
    let ptx = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let module = gpu::Module::from_ptx(&g.ctx, &ptx).map_err(e2s("variant PTX"))?;
    let mut f = module.function("fs_gemm_bf16_bf16").map_err(e2s("variant entry point"))?;
    if smem > 48 << 10 {
        f.set_max_dynamic_shared_bytes(smem).map_err(e2s("variant shared memory"))?;
    }
    let cfg = gpu::LaunchConfig {
        grid: [n.div_ceil(bn as usize) as u32, m.div_ceil(bm as usize) as u32, 1],
        block: [256, 1, 1],
        shared_bytes: smem,
    };
    let c = g.poisoned::<bf16>(m * n)?;
    let us = time_us(g, 3, 10, || {
        let mut args = gpu::KernelArgs::new();
        args.push(a.device_ptr()).push(w.device_ptr()).push(c.device_ptr());
        args.push(m as i32).push(n as i32).push(k as i32);
        // SAFETY: the variant has the built-in kernel's contract (A [m, k], W [n, k] bf16, C [m, n] bf16,
        // k % 8 == 0, 16-byte aligned buffers at least that long), which these buffers meet.
        unsafe { gpu::launch(&f, cfg, &g.st, &mut args) }.map_err(e2s("variant launch"))
    })?;
    let got = g.down_f32(&c, m * n)?;
    Ok((name, us, normalised_error(&got, want)))
}

/// What an attention variant launch needs: q, the descriptors the built-in launcher uploaded.
pub(super) struct AttnArgs<'a> {
    pub(super) q: &'a DeviceBuffer<f32>,
    pub(super) descs: &'a DeviceBuffer<kernels::cuda::FsAttnSeq>,
    pub(super) max_pairs: usize,
    pub(super) n_seqs: usize,
    pub(super) nh: usize,
    pub(super) nkv: usize,
    pub(super) hd: usize,
    pub(super) scale: f32,
}

/// Runs one `--attention-variants` entry (`warm` + `iters` launches, the last one's output left in
/// `out`): (file name, µs per launch; 0 when `iters` is 1, a correctness run).
pub(super) fn attention_variant<O: OutElem>(
    g: &Gpu,
    spec: &str,
    a: &AttnArgs,
    out: &DeviceBuffer<O>,
    warm: usize,
    iters: usize,
) -> R<(String, f64)> {
    let mut parts = spec.split(':');
    let path = PathBuf::from(parts.next().unwrap_or(""));
    let num = |x: Option<&str>, d: u32| -> R<u32> {
        x.map_or(Ok(d), |v| v.parse().map_err(|e| format!("{spec}: {v:?}: {e}")))
    };
    let (threads, pairs) = (num(parts.next(), 128)?, num(parts.next(), 64)?);
    if threads == 0 || threads > 1024 || pairs == 0 {
        return Err(format!("{spec}: threads must be 1..=1024 and pairs positive"));
    }
    let name = path.file_name().map_or("?".into(), |f| f.to_string_lossy().into_owned());
    let ptx = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let module = gpu::Module::from_ptx(&g.ctx, &ptx).map_err(e2s("variant PTX"))?;
    let entry = format!("fs_attn_prefill_h{}_{}", a.hd, O::SUFFIX);
    let f = module.function(&entry).map_err(e2s("variant entry point"))?;
    let cfg = gpu::LaunchConfig {
        grid: [a.max_pairs.div_ceil(pairs as usize) as u32, a.n_seqs as u32, a.nkv as u32],
        block: [threads, 1, 1],
        shared_bytes: 0,
    };
    let launch = || -> R<()> {
        let mut args = gpu::KernelArgs::new();
        args.push(a.q.device_ptr()).push(a.descs.device_ptr()).push(out.device_ptr());
        args.push(a.nh as i32).push(a.nkv as i32).push(a.scale);
        // SAFETY: the variant has the built-in kernel's contract (q f32 [rows, nh, hd], the
        // descriptors the built-in launcher validated and uploaded, out [rows, nh, hd] of O).
        unsafe { gpu::launch(&f, cfg, &g.st, &mut args) }.map_err(e2s("variant launch"))
    };
    if iters <= 1 {
        launch()?;
        g.st.synchronize().map_err(e2s("variant run"))?;
        return Ok((name, 0.0));
    }
    let us = time_us(g, warm, iters, launch)?;
    Ok((name, us))
}
