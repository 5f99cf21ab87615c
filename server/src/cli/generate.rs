//! `faascale generate --model PATH (--prompt TEXT | --tokens 1,2,3) --max-tokens N
//!  [--temperature T] [--top-p P] [--top-k K] [--seed S] [--ignore-eos] [--json]`

use kernels::Pool;
use pipeline::{Engine, GenRequest, Model, SamplingParams, StageLimits};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    /// A Hugging Face checkpoint directory, a GGUF file, or a packed file (faascale pack).
    #[arg(long)]
    model: PathBuf,
    /// Prompt text, tokenized as-is (no special tokens, no template).
    #[arg(long, conflicts_with = "tokens", required_unless_present = "tokens")]
    prompt: Option<String>,
    /// Wrap --prompt as a user message in the model's chat template (with the assistant's turn opened).
    #[arg(long, requires = "prompt")]
    chat: bool,
    /// Prompt as comma-separated token ids.
    #[arg(long)]
    tokens: Option<String>,
    /// Most tokens to generate.
    #[arg(long)]
    max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// 0 keeps every token.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep going past end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Worker threads (default: FAASCALE_THREADS or every core).
    #[arg(long)]
    threads: Option<usize>,
    /// For a GGUF model: dequantize to f32 (what transformers computes with) or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// cuda or cpu (default: cuda when a GPU is found and the model runs there, else cpu).
    #[arg(long)]
    device: Option<String>,
    /// Print one line of JSON as the last line of standard output.
    #[arg(long)]
    pub json: bool,
}

pub fn parse_tokens(s: &str) -> Result<Vec<u32>, String> {
    s.split(',')
        .enumerate()
        .map(|(i, t)| {
            t.trim().parse::<u32>().map_err(|e| format!("--tokens: element {i} `{}` is not a token id: {e}", t.trim()))
        })
        .collect()
}

/// `text` as the model's chat template renders a single user turn.
fn chat_prompt(model: &Model, tok: &pipeline::tokenizer::Tokenizer, text: &str) -> Result<String, String> {
    let template = model
        .chat_template
        .as_deref()
        .ok_or_else(|| format!("--chat: {} carries no chat template", model.path.display()))?;
    let token = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i)).unwrap_or_default();
    let bos = token(model.config.bos_token_id);
    let eos = token(model.config.eos_token_ids.first().copied());
    pipeline::chat::render(template, &[pipeline::chat::Message::user(text)], true, &bos, &eos)
        .map_err(|e| e.to_string())
}

pub fn run(a: Args) -> Result<(), String> {
    let threads = a.threads.unwrap_or_else(Pool::default_threads);
    if threads == 0 || threads > 1024 {
        return Err(format!("--threads {threads}: expected 1 ..= 1024"));
    }
    let device = pipeline::gpu::select::pick_device(a.device.as_deref())?;
    let t_load = std::time::Instant::now();
    let (model, packed) = pipeline::gpu::select::open_model(&a.model, super::gguf_dtype(&a.dtype)?, device)?;
    let prompt = match (&a.prompt, &a.tokens) {
        (_, Some(t)) => parse_tokens(t)?,
        (Some(text), None) => {
            let tok = model.tokenizer.as_ref().ok_or_else(|| {
                format!("{} has no tokenizer.json: pass the prompt as --tokens 1,2,3", model.path.display())
            })?;
            let text = if a.chat { chat_prompt(&model, tok, text)? } else { text.clone() };
            tok.encode(&text).map_err(|e| e.to_string())?
        }
        (None, None) => return Err("give --prompt TEXT or --tokens 1,2,3".into()),
    };
    let cfg = model.config.clone();
    let num_blocks = pipeline::BlockLayout::default_for(cfg.num_hidden_layers).map_err(|e| e.to_string())?.num_blocks;
    let req = GenRequest {
        prompt: prompt.clone(),
        max_tokens: a.max_tokens,
        sampling: SamplingParams { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p, seed: a.seed },
        ignore_eos: a.ignore_eos,
    };
    let gpu_stage = match device {
        pipeline::gpu::select::Device::Cpu => None,
        d => pipeline::gpu::select::whole_model_stage(
            &model,
            packed.as_deref(),
            num_blocks,
            d == pipeline::gpu::select::Device::Cuda,
        )?,
    };
    let (r, backend) = if let Some(mut stage) = gpu_stage {
        log::info!(
            "loaded {} ({}, {} parameters) to the GPU in {:.0} ms",
            model.path.display(),
            cfg.arch.hf_name(),
            cfg.parameter_count(),
            t_load.elapsed().as_secs_f64() * 1e3
        );
        (pipeline::gpu::generate::generate(&mut stage, &req).map_err(|e| e.to_string())?, "cuda".to_string())
    } else {
        let pool = Arc::new(Pool::new(threads));
        let limits = StageLimits::default();
        let stage = model.stage(num_blocks, 0..num_blocks, pool, limits).map_err(|e| e.to_string())?;
        let mut engine = Engine::new(vec![stage]).map_err(|e| e.to_string())?;
        log::info!(
            "loaded {} ({}, {} parameters) in {:.0} ms; {threads} threads, {} kernels",
            model.path.display(),
            cfg.arch.hf_name(),
            cfg.parameter_count(),
            t_load.elapsed().as_secs_f64() * 1e3,
            kernels::variant()
        );
        let mut out = engine.generate(std::slice::from_ref(&req), limits.max_batch_rows).map_err(|e| e.to_string())?;
        (out.remove(0), format!("cpu-{}", kernels::variant()))
    };
    let r = &r;
    let text = match &model.tokenizer {
        Some(t) => Some(t.decode(&r.tokens).map_err(|e| e.to_string())?),
        None => None,
    };
    log::info!(
        "{} prompt tokens, {} generated ({}); ttft {:.1} ms, decode {:.1} tokens/s",
        prompt.len(),
        r.tokens.len(),
        r.finish.as_str(),
        r.ttft_ms,
        r.decode_tokens_per_s
    );
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "prompt_tokens": prompt, "tokens": r.tokens, "text": text,
                "ttft_ms": r.ttft_ms, "decode_tokens_per_s": r.decode_tokens_per_s,
                "finish_reason": r.finish.as_str(), "threads": threads, "kernels": kernels::variant(), "device": backend,
            })
        );
    } else {
        match text {
            Some(t) => println!("{t}"),
            None => println!("{}", r.tokens.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(",")),
        }
    }
    Ok(())
}
