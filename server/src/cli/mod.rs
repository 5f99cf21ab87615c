//! One module per `faascale` subcommand.

pub mod bench;
pub mod bench_hop;
pub mod bench_serve;
pub mod generate;
pub mod gpu_check;
pub mod inspect;
pub mod pack;
pub mod plan;
pub mod serve;
pub mod serve_signals;
pub mod simulate;
pub mod synth;
pub mod worker;

/// `--dtype` for GGUF sources: what quantized weights are dequantized to.
pub fn gguf_dtype(s: &str) -> Result<kernels::DType, String> {
    match s {
        "f32" => Ok(kernels::DType::F32),
        "bf16" => Ok(kernels::DType::BF16),
        other => Err(format!("--dtype {other}: expected f32 or bf16")),
    }
}
