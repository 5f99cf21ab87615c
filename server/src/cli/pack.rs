//! `faascale pack --model PATH -o OUT [--blocks N] [--chunk-bytes N] [--json]`
//!
//! Writes a model as a packed block file (`pipeline::packed`), with progress on standard
//! error and a summary: `{"path", "blocks", "transfer_blocks", "chunk_bytes", "tensors",
//! "bytes", "data_bytes", "header_bytes", "seconds", "mb_per_s"}`.

use pipeline::packed;
use pipeline::Model;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The model to pack: a Hugging Face checkpoint directory, or a packed file (to re-cut it).
    #[arg(long)]
    model: PathBuf,
    /// Output file.
    #[arg(short = 'o', long = "out")]
    out: PathBuf,
    /// Execution blocks (default: 8, or the layer count if smaller).
    #[arg(long)]
    blocks: Option<usize>,
    /// Transfer block size: bytes, or with a K/M/G (KiB/MiB/GiB) suffix; a multiple of 4 KiB
    /// (default: planner::default_chunk_bytes, about √(model bytes × 500 kB / 3), at most an
    /// eighth of the mean execution block, within [1 MiB, 256 MiB]).
    #[arg(long)]
    chunk_bytes: Option<String>,
    /// Print one line of JSON as the last line of standard output.
    #[arg(long)]
    pub json: bool,
    /// For a GGUF source: dequantize to f32 (what transformers computes with) or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

/// `4096`, `64K`, `4M`, `4MiB`, `1G`: binary multiples.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        other => return Err(format!("`{s}`: unknown unit `{other}` (use K, M or G)")),
    };
    let n: u64 = num.parse().map_err(|e| format!("`{s}`: not a byte count: {e}"))?;
    n.checked_mul(mult).ok_or_else(|| format!("`{s}`: too large"))
}

pub fn run(a: Args) -> Result<(), String> {
    let chunk = a.chunk_bytes.as_deref().map(parse_bytes).transpose().map_err(|e| format!("--chunk-bytes {e}"))?;
    let t_open = std::time::Instant::now();
    let model = Model::open_with(&a.model, super::gguf_dtype(&a.dtype)?).map_err(|e| e.to_string())?;
    let cfg = model.config.clone();
    let blocks = match a.blocks {
        Some(b) => b,
        None => pipeline::BlockLayout::default_for(cfg.num_hidden_layers).map_err(|e| e.to_string())?.num_blocks,
    };
    log::info!(
        "packing {} ({}, {} layers, {} parameters; opened in {:.0} ms) into {blocks} blocks",
        model.path.display(),
        cfg.arch.hf_name(),
        cfg.num_hidden_layers,
        cfg.parameter_count(),
        t_open.elapsed().as_secs_f64() * 1e3
    );
    let mut progress = |p: &packed::PackProgress| {
        log::info!(
            "block {}/{} written: {:.1} of {:.1} MB, {:.0} MB/s",
            p.block + 1,
            p.num_blocks,
            p.bytes_done as f64 / 1e6,
            p.total_bytes as f64 / 1e6,
            p.bytes_done as f64 / 1e6 / p.elapsed_s.max(1e-9)
        );
    };
    let s = packed::pack(&model, &a.out, blocks, chunk, &mut progress).map_err(|e| e.to_string())?;
    log::info!(
        "wrote {}: {} blocks, {} transfer blocks of up to {} bytes, {} bytes in {:.3} s ({:.0} MB/s)",
        s.path.display(),
        s.num_blocks,
        s.num_transfer_blocks,
        s.chunk_bytes,
        s.file_bytes,
        s.seconds,
        s.mb_per_s
    );
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "path": s.path, "blocks": s.num_blocks, "transfer_blocks": s.num_transfer_blocks,
                "chunk_bytes": s.chunk_bytes, "tensors": s.tensors, "bytes": s.file_bytes,
                "data_bytes": s.data_bytes, "header_bytes": s.header_bytes,
                "seconds": s.seconds, "mb_per_s": s.mb_per_s,
            })
        );
    } else {
        println!("{}", s.path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn byte_counts_with_units() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64K"), Ok(64 << 10));
        assert_eq!(parse_bytes("4MiB"), Ok(4 << 20));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        assert!(parse_bytes("4X").is_err());
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("-4").is_err());
        assert!(parse_bytes("99999999999999999999G").is_err());
        assert!(parse_bytes("18446744073709551615G").is_err());
    }
}
