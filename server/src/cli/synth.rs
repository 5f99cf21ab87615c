//! `faascale synth --preset NAME | --config FILE --seed S -o DIR`

use pipeline::synth;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A named shape: smollm2-135m, tiny-llama, tiny-qwen2.
    #[arg(long, conflicts_with = "config", required_unless_present = "config")]
    preset: Option<String>,
    /// A config.json to take the shape from.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Weight dtype: bf16, f16 or f32 (default: the preset's, or the config's torch_dtype, else bf16).
    #[arg(long)]
    dtype: Option<String>,
    /// Output directory (created if missing).
    #[arg(short = 'o', long = "out")]
    out: PathBuf,
    /// Print one line of JSON describing what was written.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<(), String> {
    let (config, default_dtype) = match (&a.preset, &a.config) {
        (Some(name), _) => synth::preset(name)
            .ok_or_else(|| format!("--preset {name}: unknown preset; known: {}", synth::PRESETS.join(", ")))?,
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("--config {}: invalid JSON: {e}", path.display()))?;
            let dt = v
                .get("torch_dtype")
                .or_else(|| v.get("dtype"))
                .and_then(|d| d.as_str())
                .and_then(synth::dtype_from_torch)
                .unwrap_or(kernels::DType::BF16);
            (v, dt)
        }
        (None, None) => return Err("give --preset NAME or --config FILE".into()),
    };
    let dtype = match &a.dtype {
        None => default_dtype,
        Some(s) => synth::dtype_from_torch(s).ok_or_else(|| format!("--dtype {s}: expected bf16, f16 or f32"))?,
    };
    let t = std::time::Instant::now();
    let cfg = synth::write_checkpoint(&a.out, config, dtype, a.seed).map_err(|e| e.to_string())?;
    let bytes: u64 = std::fs::metadata(a.out.join("model.safetensors")).map(|m| m.len()).unwrap_or(0);
    log::info!(
        "wrote {} ({} parameters, {bytes} bytes) in {:.2}s",
        a.out.display(),
        cfg.parameter_count(),
        t.elapsed().as_secs_f64()
    );
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "dir": a.out, "architecture": cfg.arch.hf_name(), "parameters": cfg.parameter_count(),
                "dtype": format!("{dtype:?}").to_lowercase(), "seed": a.seed, "safetensors_bytes": bytes,
            })
        );
    } else {
        println!("{}", a.out.display());
    }
    Ok(())
}
