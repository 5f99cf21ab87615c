//! `faascale inspect PATH [--verify] [--json]`
//!
//! What a model is: architecture, shape, parameters, tensor dtypes; for a packed file also
//! its blocks (layer ranges, byte ranges, transfer blocks with their crc32c). Any model the
//! engine opens can be inspected; a model without blocks simply has `"packed": null`.
//!
//! JSON: `{"path", "format", "architecture", "parameters", "layers", "hidden_size",
//! "vocab_size", "tie_word_embeddings", "tokenizer", "chat_template", "tensors",
//! "tensor_bytes", "dtypes": {DTYPE: {"tensors", "bytes"}}, "problems": [...],
//! "packed": null | {"version", "file_bytes", "header_bytes", "data_offset", "total_bytes",
//! "chunk_bytes", "num_blocks", "num_transfer_blocks", "verified", "blocks": [{"id",
//! "layers": [start, end], "offset", "bytes", "tensors", "tensor_bytes",
//! "transfer_blocks": [{"id", "offset", "len", "crc32c"}]}]}}`.

use pipeline::packed::{self, PackedFile};
use pipeline::{BlockLayout, ModelConfig};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A packed file, or any model `generate` takes (e.g. a Hugging Face checkpoint directory).
    path: PathBuf,
    /// Packed files: also check every transfer block's crc32c (fails naming the first bad block).
    #[arg(long)]
    verify: bool,
    /// Print one line of JSON as the last line of standard output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Default)]
struct DtypeCount {
    tensors: usize,
    bytes: u64,
}

fn model_fields(cfg: &ModelConfig, out: &mut Map<String, Value>) {
    out.insert("architecture".into(), json!(cfg.arch.hf_name()));
    out.insert("parameters".into(), json!(cfg.parameter_count()));
    out.insert("layers".into(), json!(cfg.num_hidden_layers));
    out.insert("hidden_size".into(), json!(cfg.hidden_size));
    out.insert("intermediate_size".into(), json!(cfg.intermediate_size));
    out.insert("attention_heads".into(), json!(cfg.num_attention_heads));
    out.insert("kv_heads".into(), json!(cfg.num_key_value_heads));
    out.insert("vocab_size".into(), json!(cfg.vocab_size));
    out.insert("max_position_embeddings".into(), json!(cfg.max_position_embeddings));
    out.insert("tie_word_embeddings".into(), json!(cfg.tie_word_embeddings));
}

fn dtype_fields(counts: &BTreeMap<String, DtypeCount>, out: &mut Map<String, Value>) {
    let dtypes: Map<String, Value> =
        counts.iter().map(|(k, c)| (k.clone(), json!({ "tensors": c.tensors, "bytes": c.bytes }))).collect();
    out.insert("tensors".into(), json!(counts.values().map(|c| c.tensors).sum::<usize>()));
    out.insert("tensor_bytes".into(), json!(counts.values().map(|c| c.bytes).sum::<u64>()));
    out.insert("dtypes".into(), Value::Object(dtypes));
}

fn inspect_packed(a: &Args) -> Result<Value, String> {
    let pf = PackedFile::open_header(&a.path).map_err(|e| e.to_string())?;
    if a.verify {
        for b in 0..pf.num_blocks() {
            pf.verify_block(b).map_err(|e| e.to_string())?;
        }
    }
    let h = pf.header();
    let layout = pf.layout();
    let mut out = Map::new();
    out.insert("path".into(), json!(a.path));
    out.insert("format".into(), json!("packed"));
    model_fields(pf.config(), &mut out);
    out.insert("tokenizer".into(), json!(h.tokenizer.is_some()));
    out.insert("chat_template".into(), json!(h.chat_template.is_some()));
    out.insert("source".into(), json!({ "format": h.source.format, "path": h.source.path }));
    let mut counts: BTreeMap<String, DtypeCount> = BTreeMap::new();
    let mut per_block = vec![(0usize, 0u64); layout.exec_blocks.len()];
    for t in &h.tensors {
        let c = counts.entry(t.dtype.clone()).or_default();
        c.tensors += 1;
        c.bytes += t.len;
        per_block[t.block as usize].0 += 1;
        per_block[t.block as usize].1 += t.len;
    }
    dtype_fields(&counts, &mut out);
    out.insert("problems".into(), json!([]));
    let blocks: Vec<Value> = layout
        .exec_blocks
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let tbs: Vec<Value> = layout
                .transfer_blocks_of(i)
                .iter()
                .map(|t| json!({ "id": t.id, "offset": t.offset, "len": t.len, "crc32c": t.crc32c }))
                .collect();
            json!({
                "id": b.id, "layers": [b.layers.start, b.layers.end], "offset": b.offset, "bytes": b.len,
                "tensors": per_block[i].0, "tensor_bytes": per_block[i].1, "transfer_blocks": tbs,
            })
        })
        .collect();
    let header_bytes = u64::from_le_bytes(pf.bytes()[16..24].try_into().expect("preamble checked"));
    out.insert(
        "packed".into(),
        json!({
            "version": packed::VERSION, "layout_version": layout.version, "name": layout.name,
            "file_bytes": pf.bytes().len(), "header_bytes": header_bytes,
            "data_offset": layout.data_offset(), "total_bytes": layout.total_bytes,
            "chunk_bytes": layout.transfer_blocks.iter().map(|t| t.len).max().unwrap_or(0),
            "num_blocks": layout.exec_blocks.len(), "num_transfer_blocks": layout.transfer_blocks.len(),
            "verified": a.verify, "blocks": blocks,
        }),
    );
    Ok(Value::Object(out))
}

fn inspect_model(a: &Args) -> Result<Value, String> {
    if a.verify {
        log::warn!("--verify checks packed files' block checksums; {} is not a packed file", a.path.display());
    }
    let model = pipeline::Model::open(&a.path).map_err(|e| e.to_string())?;
    let cfg = model.config.clone();
    let mut out = Map::new();
    out.insert("path".into(), json!(a.path));
    out.insert("format".into(), json!(model.format.as_str()));
    model_fields(&cfg, &mut out);
    out.insert("tokenizer".into(), json!(model.tokenizer.is_some()));
    out.insert("chat_template".into(), json!(model.chat_template.is_some()));
    // The tensors the engine reads, as the source stores them; a tied head is not a tensor.
    let layout = BlockLayout::new(cfg.num_hidden_layers, 1).map_err(|e| e.to_string())?;
    let has_head = model.weights.contains("lm_head.weight");
    let mut counts: BTreeMap<String, DtypeCount> = BTreeMap::new();
    let mut problems: Vec<String> = Vec::new();
    for spec in packed::model_tensors(&cfg, &layout, has_head) {
        if spec.source_name != spec.name {
            continue;
        }
        match model.weights.tensor(&spec.source_name, &spec.shape) {
            Ok(t) => {
                let c = counts.entry(format!("{:?}", t.dtype).to_uppercase()).or_default();
                c.tensors += 1;
                c.bytes += t.bytes().len() as u64;
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    dtype_fields(&counts, &mut out);
    out.insert("problems".into(), json!(problems));
    out.insert("packed".into(), Value::Null);
    Ok(Value::Object(out))
}

fn print_human(v: &Value) {
    let s = |k: &str| v[k].to_string();
    println!("{}  ({})", v["path"].as_str().unwrap_or("?"), v["format"].as_str().unwrap_or("?"));
    println!(
        "  {}  {} parameters  {} layers  hidden {}  ffn {}  heads {}/{}  vocab {}  context {}  tied {}",
        v["architecture"].as_str().unwrap_or("?"),
        s("parameters"),
        s("layers"),
        s("hidden_size"),
        s("intermediate_size"),
        s("attention_heads"),
        s("kv_heads"),
        s("vocab_size"),
        s("max_position_embeddings"),
        s("tie_word_embeddings")
    );
    println!("  tokenizer {}  chat template {}", s("tokenizer"), s("chat_template"));
    let dtypes: Vec<String> = v["dtypes"]
        .as_object()
        .map(|m| m.iter().map(|(k, c)| format!("{k}: {} tensors, {} bytes", c["tensors"], c["bytes"])).collect())
        .unwrap_or_default();
    println!("  {} tensors, {} bytes ({})", s("tensors"), s("tensor_bytes"), dtypes.join("; "));
    for p in v["problems"].as_array().into_iter().flatten() {
        println!("  problem: {}", p.as_str().unwrap_or("?"));
    }
    let p = &v["packed"];
    if p.is_null() {
        println!("  not a packed file: no blocks");
        return;
    }
    println!(
        "  packed v{}: {} bytes, header {} bytes, data at {}, {} blocks, {} transfer blocks of up to {} bytes{}",
        p["version"],
        p["file_bytes"],
        p["header_bytes"],
        p["data_offset"],
        p["num_blocks"],
        p["num_transfer_blocks"],
        p["chunk_bytes"],
        if p["verified"] == true { ", checksums verified" } else { "" }
    );
    for b in p["blocks"].as_array().into_iter().flatten() {
        let tbs = b["transfer_blocks"].as_array().cloned().unwrap_or_default();
        let crcs: Vec<String> =
            tbs.iter().take(4).map(|t| format!("{:08x}", t["crc32c"].as_u64().unwrap_or(0))).collect();
        let more = if tbs.len() > 4 { format!(" …(+{})", tbs.len() - 4) } else { String::new() };
        println!(
            "  block {:>3}  layers [{}, {})  bytes {}+{}  {} tensors  {} transfer blocks  crc32c {}{more}",
            b["id"].as_u64().unwrap_or(0),
            b["layers"][0],
            b["layers"][1],
            b["offset"],
            b["bytes"],
            b["tensors"],
            tbs.len(),
            crcs.join(" ")
        );
    }
}

pub fn run(a: Args) -> Result<(), String> {
    let v = if packed::is_packed_file(&a.path) { inspect_packed(&a)? } else { inspect_model(&a)? };
    if a.json {
        println!("{v}");
    } else {
        print_human(&v);
    }
    Ok(())
}
