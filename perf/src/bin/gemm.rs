//! `gemm`: kernels::matmul against numpy's OpenBLAS sgemm, and a bf16 GEMV
//! bandwidth mode.
//!
//!   cargo run --release -p perf --bin gemm -- [--threads N] [--variant V] [--dtype D] [--m M,M..]
//!                                              [--seconds S] [--rounds R] [--no-numpy]
//!   cargo run --release -p perf --bin gemm -- --gemv [--threads N] [--variant V]
//!
//! GEMM mode times y[m, n] = x[m, k] · w[n, k]^T with f32 weights (or
//! `--dtype bf16|f16`; numpy stays f32) at the SmolLM2-135M shapes, m in
//! {64, 128, 256}: the median of repeated runs after a warm-up. For each shape
//! it then asks a `python3 perf/numpy_sgemm.py --serve` child
//! (OPENBLAS_NUM_THREADS = the same thread count, OPENBLAS_CORETYPE and
//! OPENBLAS_L2_SIZE removed) for numpy's time on the same shape, so both run
//! under the same machine load. With `--rounds R` all cases are measured R
//! times in turn and the best median of each side is reported (on a shared
//! machine the best round is the least disturbed one).
//!
//! GEMV mode times m = 1 with bf16 weights and reports weight bytes streamed
//! per second, next to a plain parallel read of a large buffer (the machine's
//! read bandwidth).
//!
//! A table goes to stderr; the last line of stdout is one JSON object.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use kernels::{DType, Kernels, Pool, Variant, Weights};
use serde_json::{json, Value};

/// (k, n) of the SmolLM2-135M projections: q/o, k/v, gate/up, down, LM head.
const SHAPES: [(usize, usize); 5] = [(576, 576), (576, 192), (576, 1536), (1536, 576), (576, 49152)];
const MS: [usize; 3] = [64, 128, 256];

struct Args {
    threads: usize,
    variant: Option<Variant>,
    seconds: f64,
    rounds: usize,
    numpy: bool,
    gemv: bool,
    dtype: DType,
    ms: Vec<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        threads: Pool::default_threads(),
        variant: None,
        seconds: 0.4,
        rounds: 1,
        numpy: true,
        gemv: false,
        dtype: DType::F32,
        ms: MS.to_vec(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--threads" => a.threads = value("--threads")?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--variant" => a.variant = Some(Variant::from_name(&value("--variant")?).map_err(|e| e.to_string())?),
            "--rounds" => {
                a.rounds = value("--rounds")?.parse().map_err(|e| format!("--rounds: {e}"))?;
                a.rounds = a.rounds.max(1);
            }
            "--seconds" => a.seconds = value("--seconds")?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--no-numpy" => a.numpy = false,
            "--m" => {
                a.ms = value("--m")?
                    .split(',')
                    .map(|v| v.trim().parse::<usize>().map_err(|e| format!("--m {v:?}: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--dtype" => {
                a.dtype = match value("--dtype")?.as_str() {
                    "f32" => DType::F32,
                    "bf16" => DType::BF16,
                    "f16" => DType::F16,
                    other => return Err(format!("--dtype {other:?}: expected f32, bf16 or f16")),
                }
            }
            "--gemv" => a.gemv = true,
            "-h" | "--help" => {
                return Err("usage: gemm [--gemv] [--threads N] [--variant scalar|avx2|avx512] [--dtype f32|bf16|f16] [--m 64,128,256] [--seconds S] [--rounds R] [--no-numpy]".into())
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(a)
}

/// Median seconds of `f` over at least 5 runs and about `seconds` in all, after a warm-up.
fn median_time(seconds: f64, mut f: impl FnMut()) -> f64 {
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs_f64(seconds / 4.0) {
        f();
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 5 || (start.elapsed().as_secs_f64() < seconds && times.len() < 100_000) {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// f16 bits of a value in [-1, 1) (truncating; for timing data only).
fn f32_to_f16_bits(v: f32) -> u16 {
    let b = v.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
    if exp <= 0 {
        return sign; // tiny: flush to zero
    }
    sign | ((exp as u16) << 10) | ((b >> 13) & 0x3ff) as u16
}

/// The `numpy_sgemm.py --serve` child process.
struct Numpy {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Numpy {
    fn start(threads: usize) -> Result<Numpy, String> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/numpy_sgemm.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg("--serve")
            .env("OPENBLAS_NUM_THREADS", threads.to_string())
            .env_remove("OPENBLAS_CORETYPE")
            .env_remove("OPENBLAS_L2_SIZE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot run python3 {script}: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line).map_err(|e| e.to_string())?;
        if line.trim() != "ready" {
            let status = child.wait().map_err(|e| e.to_string())?;
            return Err(format!("numpy_sgemm.py did not start ({status}); see its message above"));
        }
        Ok(Numpy { child, stdin, stdout })
    }

    fn time(&mut self, m: usize, n: usize, k: usize, seconds: f64) -> Result<Value, String> {
        writeln!(self.stdin, "{m} {n} {k} {seconds}").map_err(|e| e.to_string())?;
        self.stdin.flush().map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.stdout.read_line(&mut line).map_err(|e| e.to_string())?;
        serde_json::from_str(&line).map_err(|e| format!("bad answer from numpy_sgemm.py {line:?}: {e}"))
    }
}

impl Drop for Numpy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Little-endian bytes of `w` as `dtype` (truncating: fine for timing).
fn weight_bytes(w: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F32 => w.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::BF16 => w.iter().flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect(),
        DType::F16 => w.iter().flat_map(|v| f32_to_f16_bits(*v).to_le_bytes()).collect(),
    }
}

/// One (m, n, k) case: its data and the best times seen so far.
struct Case {
    m: usize,
    n: usize,
    k: usize,
    shape: usize,
    x: Vec<f32>,
    best_s: f64,
    numpy_gflops: Option<f64>,
}

fn gemm_mode(args: &Args, kern: Kernels, pool: &Pool) -> Value {
    let mut numpy = if args.numpy {
        match Numpy::start(args.threads) {
            Ok(n) => Some(n),
            Err(e) => {
                eprintln!("gemm: numpy comparison skipped: {e}");
                None
            }
        }
    } else {
        None
    };
    let weights: Vec<Vec<u8>> = SHAPES
        .iter()
        .enumerate()
        .map(|(si, &(k, n))| weight_bytes(&values(n * k, 7 + si as u64), args.dtype))
        .collect();
    let mut cases: Vec<Case> = SHAPES
        .iter()
        .enumerate()
        .flat_map(|(shape, &(k, n))| {
            args.ms.iter().map(move |&m| Case {
                m,
                n,
                k,
                shape,
                x: values(m * k, 100 + m as u64),
                best_s: f64::INFINITY,
                numpy_gflops: None,
            })
        })
        .collect();
    // Rounds go over all cases in turn, (ours, numpy) back to back for each, so a
    // burst of load from elsewhere hits one round of a case, not all of them;
    // the best round of each side counts.
    for round in 0..args.rounds {
        if args.rounds > 1 {
            eprintln!("round {}/{}", round + 1, args.rounds);
        }
        for c in &mut cases {
            let wt = Weights::new(&weights[c.shape], args.dtype, c.n, c.k).expect("weights");
            let mut y = vec![0.0f32; c.m * c.n];
            let t = median_time(args.seconds, || kern.matmul(pool, &c.x, c.m, wt, &mut y).expect("matmul"));
            c.best_s = c.best_s.min(t);
            let g = numpy.as_mut().and_then(|p| match p.time(c.m, c.n, c.k, args.seconds) {
                Ok(v) => v["gflops"].as_f64(),
                Err(e) => {
                    eprintln!("gemm: numpy: {e}");
                    None
                }
            });
            c.numpy_gflops = match (c.numpy_gflops, g) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
    }
    eprintln!("{:>6} {:>6} {:>6} {:>12} {:>12} {:>7}", "m", "n", "k", "ours GF/s", "numpy GF/s", "ratio");
    let mut rows = Vec::new();
    for c in &cases {
        let (m, n, k) = (c.m, c.n, c.k);
        let ours = 2.0 * (m * n * k) as f64 / c.best_s / 1e9;
        let np = c.numpy_gflops;
        let ratio = np.map(|g| ours / g);
        eprintln!(
            "{m:>6} {n:>6} {k:>6} {ours:>12.1} {:>12} {:>7}",
            np.map_or("-".into(), |g| format!("{g:.1}")),
            ratio.map_or("-".into(), |r| format!("{r:.2}"))
        );
        rows.push(
            json!({"m": m, "n": n, "k": k, "median_s": c.best_s, "gflops": ours, "numpy_gflops": np, "ratio": ratio}),
        );
    }
    let ratios: Vec<f64> = rows.iter().filter_map(|r| r["ratio"].as_f64()).collect();
    let geo = (!ratios.is_empty()).then(|| (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64).exp());
    let min = ratios.iter().cloned().reduce(f64::min);
    if let (Some(g), Some(mn)) = (geo, min) {
        eprintln!("ratio ours/numpy: geometric mean {g:.2}, min {mn:.2}");
    }
    json!({"bench": "gemm", "rounds": args.rounds, "seconds": args.seconds, "weights": format!("{:?}", args.dtype).to_lowercase(), "results": rows, "ratio_geomean": geo, "ratio_min": min})
}

/// Bytes per second of a parallel read of a buffer much larger than the caches.
fn read_bandwidth(pool: &Pool, seconds: f64) -> f64 {
    let words: usize = 64 << 20; // 512 MiB of u64
    let buf: Vec<u64> = (0..words as u64).collect();
    let chunks = pool.threads() * 8;
    let per = words.div_ceil(chunks);
    let sink = std::sync::atomic::AtomicU64::new(0);
    let t = median_time(seconds, || {
        pool.run(chunks, &|c| {
            let part = &buf[(c * per).min(words)..((c + 1) * per).min(words)];
            let s = part.iter().fold(0u64, |a, &b| a.wrapping_add(b));
            sink.fetch_add(s, std::sync::atomic::Ordering::Relaxed);
        })
    });
    (words * 8) as f64 / t
}

fn gemv_mode(args: &Args, kern: Kernels, pool: &Pool) -> Value {
    let bw = read_bandwidth(pool, args.seconds);
    eprintln!("plain parallel read of 512 MiB: {:.1} GB/s", bw / 1e9);
    eprintln!("{:>6} {:>6} {:>10} {:>10} {:>8} {:>10}", "n", "k", "MiB bf16", "us", "GB/s", "of read");
    let mut rows = Vec::new();
    let shapes: Vec<(usize, usize)> =
        SHAPES.iter().cloned().chain([(4096, 4096), (4096, 11008), (8192, 32768)]).collect();
    for (si, &(k, n)) in shapes.iter().enumerate() {
        let w: Vec<u8> =
            values(n * k, 3 + si as u64).iter().flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect();
        let wt = Weights::new(&w, DType::BF16, n, k).expect("weights");
        let x = values(k, 5);
        let mut y = vec![0.0f32; n];
        let t = median_time(args.seconds, || kern.matmul(pool, &x, 1, wt, &mut y).expect("matmul"));
        let gbs = w.len() as f64 / t / 1e9;
        eprintln!(
            "{n:>6} {k:>6} {:>10.1} {:>10.1} {gbs:>8.1} {:>9.0}%",
            w.len() as f64 / (1 << 20) as f64,
            t * 1e6,
            100.0 * gbs * 1e9 / bw
        );
        rows.push(json!({"m": 1, "n": n, "k": k, "weight_bytes": w.len(), "median_s": t, "gb_per_s": gbs}));
    }
    json!({"bench": "gemv", "weights": "bf16", "read_gb_per_s": bw / 1e9, "results": rows})
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("gemm: {e}");
            std::process::exit(2);
        }
    };
    let kern = match args.variant.map_or(Ok(Kernels::selected()), Kernels::new) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("gemm: {e}");
            std::process::exit(2);
        }
    };
    let pool = Pool::new(args.threads);
    eprintln!("kernels variant {}, {} threads", kern.variant(), pool.threads());
    let mut out = if args.gemv { gemv_mode(&args, kern, &pool) } else { gemm_mode(&args, kern, &pool) };
    out["variant"] = json!(kern.variant().name());
    out["threads"] = json!(pool.threads());
    println!("{out}");
}
