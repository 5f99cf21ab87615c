//! Decode speed against the memory bound, measured in the same run.
//!
//! `cargo run --release -p perf --bin decode -- [--model PATH] [--dtype f32|bf16] [--threads N] [--tokens N] [--prefill N] [--repeats N]`
//!
//! Also reports prefill tokens/s: time to the first token of a `--prefill`-token prompt (default 256).
//!
//! Without `--model` it writes a SmolLM2-135M-shaped checkpoint (bf16, seeded) under
//! `target/perf-models/`. Decoding one token reads every weight matrix once (the tied LM
//! head is the embedding, read once), so `weight_bytes_per_token / bandwidth` is the fastest
//! a token can be. The bandwidth is measured here, with the same threads: a copy (bytes read
//! plus bytes written, per second) and a read-only sum. Prints a table on stderr and one JSON
//! line on stdout.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

use kernels::Pool;
use pipeline::{Engine, GenRequest, Model, SamplingParams, StageLimits};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

const BUF_BYTES: usize = 512 << 20;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Split `len` into `parts` nearly equal ranges.
fn part(len: usize, parts: usize, i: usize) -> std::ops::Range<usize> {
    (i * len / parts)..((i + 1) * len / parts)
}

/// Bytes per second of a multi-threaded copy, counting bytes read and bytes written.
fn copy_bandwidth(pool: &Pool, repeats: usize) -> f64 {
    let src = vec![1u8; BUF_BYTES];
    let mut dst = vec![0u8; BUF_BYTES];
    let tasks = pool.threads() * 4;
    let dst_addr = dst.as_mut_ptr() as usize;
    let mut times = Vec::new();
    for _ in 0..repeats + 1 {
        let t = Instant::now();
        pool.run(tasks, &|i| {
            let r = part(BUF_BYTES, tasks, i);
            // SAFETY: each task writes its own disjoint range r of `dst`, which outlives `run`.
            let d = unsafe { std::slice::from_raw_parts_mut((dst_addr as *mut u8).add(r.start), r.len()) };
            d.copy_from_slice(&src[r]);
        });
        times.push(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    2.0 * BUF_BYTES as f64 / median(times[1..].to_vec())
}

/// Bytes per second of a multi-threaded read (a sum of u64 words).
fn read_bandwidth(pool: &Pool, repeats: usize) -> f64 {
    let words = vec![3u64; BUF_BYTES / 8];
    let tasks = pool.threads() * 4;
    let mut times = Vec::new();
    for _ in 0..repeats + 1 {
        let t = Instant::now();
        pool.run(tasks, &|i| {
            let r = part(words.len(), tasks, i);
            let mut acc = [0u64; 8];
            for c in words[r].chunks_exact(8) {
                for j in 0..8 {
                    acc[j] = acc[j].wrapping_add(c[j]);
                }
            }
            std::hint::black_box(acc);
        });
        times.push(t.elapsed().as_secs_f64());
    }
    BUF_BYTES as f64 / median(times[1..].to_vec())
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize =
        arg(&args, "--threads").map(|s| s.parse().expect("--threads N")).unwrap_or_else(Pool::default_threads);
    let n_tokens: usize = arg(&args, "--tokens").map(|s| s.parse().expect("--tokens N")).unwrap_or(64);
    let repeats: usize = arg(&args, "--repeats").map(|s| s.parse().expect("--repeats N")).unwrap_or(3);
    let dir = match arg(&args, "--model") {
        Some(d) => PathBuf::from(d),
        None => {
            let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/perf-models/smollm2-135m");
            if !d.join("model.safetensors").exists() {
                eprintln!("writing a SmolLM2-135M-shaped checkpoint to {}", d.display());
                let (cfg, dtype) = pipeline::synth::preset("smollm2-135m").expect("preset");
                pipeline::synth::write_checkpoint(&d, cfg, dtype, 1).expect("synth");
            }
            d
        }
    };
    let pool = Arc::new(Pool::new(threads));
    let gguf_dtype = match arg(&args, "--dtype").as_deref() {
        None | Some("f32") => kernels::DType::F32,
        Some("bf16") => kernels::DType::BF16,
        Some(other) => panic!("--dtype {other}: expected f32 or bf16"),
    };
    let prefill_len: usize = arg(&args, "--prefill").map(|s| s.parse().expect("--prefill N")).unwrap_or(256);
    let model = Model::open_with(&dir, gguf_dtype).expect("open model");
    let cfg = model.config.clone();
    let elem = model
        .weights
        .tensor("model.layers.0.mlp.up_proj.weight", &[cfg.intermediate_size, cfg.hidden_size])
        .expect("tensor")
        .dtype
        .size_bytes();
    let weight_bytes_per_token = cfg.parameter_count() as f64 * elem as f64;
    let b = pipeline::BlockLayout::default_for(cfg.num_hidden_layers).unwrap().num_blocks;
    let stage = model.stage(b, 0..b, pool.clone(), StageLimits::default()).expect("stage");
    let mut engine = Engine::new(vec![stage]).expect("engine");
    let req = GenRequest {
        prompt: (1..9).collect(),
        max_tokens: n_tokens,
        sampling: SamplingParams::default(),
        ignore_eos: true,
    };
    engine.generate(std::slice::from_ref(&req), 8192).expect("warm-up"); // page the weights in
    let mut tps = Vec::new();
    for _ in 0..repeats {
        tps.push(engine.generate(std::slice::from_ref(&req), 8192).expect("generate")[0].decode_tokens_per_s);
    }
    let decode_tokens_per_s = median(tps);
    // prefill: time to the first token of a prefill_len-token prompt
    let long = GenRequest {
        prompt: (0..prefill_len as u32).map(|i| 1 + i * 7 % (cfg.vocab_size as u32 - 1)).collect(),
        max_tokens: 1,
        ..req.clone()
    };
    let mut pps = Vec::new();
    for _ in 0..repeats {
        let ttft_ms = engine.generate(std::slice::from_ref(&long), 8192).expect("prefill")[0].ttft_ms;
        pps.push(prefill_len as f64 / (ttft_ms / 1e3));
    }
    let prefill_tokens_per_s = median(pps);
    let copy_bytes_per_s = copy_bandwidth(&pool, repeats.max(3));
    let read_bytes_per_s = read_bandwidth(&pool, repeats.max(3));
    let bound_copy = copy_bytes_per_s / weight_bytes_per_token;
    let bound_read = read_bytes_per_s / weight_bytes_per_token;
    eprintln!(
        "model {} ({:.1} MB of weights read per token), {threads} threads, {} kernels",
        dir.display(),
        weight_bytes_per_token / 1e6,
        kernels::variant()
    );
    eprintln!("copy bandwidth (read+write) {:>8.2} GB/s -> bound {:>7.1} tokens/s", copy_bytes_per_s / 1e9, bound_copy);
    eprintln!("read bandwidth              {:>8.2} GB/s -> bound {:>7.1} tokens/s", read_bytes_per_s / 1e9, bound_read);
    eprintln!("prefill of {prefill_len} tokens (median of {repeats}): {:.1} tokens/s", prefill_tokens_per_s);
    eprintln!(
        "decode (median of {repeats})          {:>8.1} tokens/s = {:.2} of the copy bound, {:.2} of the read bound",
        decode_tokens_per_s,
        decode_tokens_per_s / bound_copy,
        decode_tokens_per_s / bound_read
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "decode", "threads": threads, "kernels": kernels::variant(),
            "weight_bytes_per_token": weight_bytes_per_token, "decode_tokens_per_s": decode_tokens_per_s,
            "prefill_tokens": prefill_len, "prefill_tokens_per_s": prefill_tokens_per_s, "weight_dtype": gguf_dtype_used(elem),
            "copy_bytes_per_s": copy_bytes_per_s, "read_bytes_per_s": read_bytes_per_s,
            "bound_tokens_per_s_copy": bound_copy, "bound_tokens_per_s_read": bound_read,
            "ratio_vs_copy_bound": decode_tokens_per_s / bound_copy, "ratio_vs_read_bound": decode_tokens_per_s / bound_read,
        })
    );
}

fn gguf_dtype_used(elem_bytes: usize) -> &'static str {
    if elem_bytes == 4 {
        "f32"
    } else {
        "16-bit"
    }
}
