//! The model this server serves, as the API sees it: its name, tokenizer and chat template, and
//! turning a validated request into the scheduler's `SeqRequest` (prompt tokens, length checks).

use super::error::ApiError;
use super::request::{GenParams, Input, Prompt};
use pipeline::sched::SeqRequest;
use pipeline::tokenizer::Tokenizer;
use pipeline::SamplingParams;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Served {
    pub name: String,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<String>,
    pub bos_token: String,
    pub eos_token: String,
    /// Token ids must be below this.
    pub vocab_size: usize,
    /// Prompt + completion tokens of one sequence at most.
    pub max_seq_tokens: usize,
    /// Unix time the server started (`created` of `/v1/models`).
    pub created: u64,
    /// Seeds for requests that give none (sampling then varies between requests).
    seed_counter: AtomicU64,
}

impl Served {
    pub fn new(
        name: String,
        tokenizer: Tokenizer,
        chat_template: Option<String>,
        cfg: &pipeline::ModelConfig,
        max_seq_tokens: usize,
    ) -> Self {
        let token = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i)).unwrap_or_default();
        let bos_token = token(cfg.bos_token_id);
        let eos_token = token(cfg.eos_token_ids.first().copied());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Served {
            name,
            tokenizer,
            chat_template,
            bos_token,
            eos_token,
            vocab_size: cfg.vocab_size,
            max_seq_tokens,
            created: now.as_secs(),
            seed_counter: AtomicU64::new(now.as_nanos() as u64),
        }
    }

    /// The prompt's token ids: text tokenised, messages rendered with the chat template first,
    /// token ids checked against the vocabulary.
    pub fn prompt_tokens(&self, p: &GenParams) -> Result<Vec<u32>, ApiError> {
        let (ids, param) = match &p.input {
            Input::Completion(Prompt::Tokens(t)) => {
                if let Some((i, &bad)) = t.iter().enumerate().find(|(_, &id)| id as usize >= self.vocab_size) {
                    return Err(ApiError::invalid(
                        Some("prompt".into()),
                        format!(
                            "`prompt`[{i}]: token id {bad} is out of range (the vocabulary has {} tokens)",
                            self.vocab_size
                        ),
                    ));
                }
                (t.clone(), "prompt")
            }
            Input::Completion(Prompt::Text(s)) => (self.encode(s)?, "prompt"),
            Input::Chat(messages) => {
                let template = self.chat_template.as_deref().ok_or_else(|| {
                    ApiError::invalid(
                        Some("messages".into()),
                        format!("the model `{}` has no chat template: use /v1/completions", self.name),
                    )
                })?;
                let text = pipeline::chat::render(template, messages, true, &self.bos_token, &self.eos_token)
                    .map_err(|e| ApiError::invalid(Some("messages".into()), e.to_string()))?;
                (self.encode(&text)?, "messages")
            }
        };
        if ids.is_empty() {
            return Err(ApiError::invalid(Some(param.into()), format!("`{param}` encodes to no tokens")));
        }
        if ids.len() >= self.max_seq_tokens {
            return Err(ApiError::context_length(
                param,
                format!(
                    "This model's maximum context length is {} tokens. However, your prompt has {} tokens, which leaves no room for a completion.",
                    self.max_seq_tokens,
                    ids.len()
                ),
            ));
        }
        Ok(ids)
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>, ApiError> {
        self.tokenizer.encode(text).map_err(|e| ApiError::internal(format!("tokenizer: {e}")))
    }

    /// The scheduler's request for `p` with prompt `prompt`; `max_tokens` past the context is a 400.
    pub fn seq_request(&self, p: &GenParams, prompt: Vec<u32>) -> Result<SeqRequest, ApiError> {
        let room = self.max_seq_tokens - prompt.len();
        let max_tokens = match p.max_tokens {
            None => room,
            Some(m) if m > room => {
                let param =
                    if p.endpoint == super::request::Endpoint::Chat { "max_completion_tokens" } else { "max_tokens" };
                return Err(ApiError::context_length(
                    param,
                    format!(
                        "This model's maximum context length is {} tokens. However, you requested {} tokens ({} in the prompt, {m} for the completion). Reduce the prompt or the completion length.",
                        self.max_seq_tokens,
                        prompt.len().saturating_add(m),
                        prompt.len()
                    ),
                ));
            }
            Some(m) => m,
        };
        let seed = p.seed.unwrap_or_else(|| self.seed_counter.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed));
        let stop_ids_bad = p.stop_token_ids.iter().find(|&&id| id as usize >= self.vocab_size);
        if let Some(bad) = stop_ids_bad {
            return Err(ApiError::invalid(
                Some("stop_token_ids".into()),
                format!("token id {bad} is out of range (the vocabulary has {} tokens)", self.vocab_size),
            ));
        }
        Ok(SeqRequest {
            prompt,
            max_tokens,
            sampling: SamplingParams { temperature: p.temperature, top_k: p.top_k, top_p: p.top_p, seed },
            ignore_eos: p.ignore_eos,
            stop_token_ids: p.stop_token_ids.clone(),
            logprobs: p.logprobs,
        })
    }
}
