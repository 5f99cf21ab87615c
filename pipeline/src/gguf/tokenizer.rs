//! A Hugging Face `tokenizers::Tokenizer` built from a GGUF file's `tokenizer.ggml.*` metadata,
//! the same one transformers builds when it loads the file (`AutoTokenizer.from_pretrained(dir,
//! gguf_file=...)`, transformers 5.x `integrations/gguf/gguf_tokenizer_mapping.py`):
//!
//! - `gpt2` (byte-level BPE): the tokens (a token spelled outside the byte-level alphabet is
//!   re-spelled byte by byte), the merges, no normalizer, a `ByteLevel` pre-tokenizer (GPT-2's
//!   regex), or — for the `tokenizer.ggml.pre` names transformers knows — a `Split` on that
//!   model's regex followed by `ByteLevel` without regex; a `ByteLevel` decoder.
//! - `llama` (sentencepiece-style BPE): the tokens as spelled, the merges from the file or, when
//!   it has none, derived from the vocabulary and the scores exactly as transformers'
//!   `generate_merges` does; byte fallback (`<0xAB>` tokens); a `Metaspace` pre-tokenizer
//!   (`▁`, prepended to the first word only, no split); decoder `▁`→space, byte fallback, fuse,
//!   strip one leading space. `tokenizer.ggml.add_space_prefix` is ignored, as transformers does.
//!
//! Special tokens: every CONTROL token (`token_type` 3; for byte-level vocabularies only those
//! spelled in the byte alphabet), plus the tokens named by the bos/eos/unk/padding ids and the
//! defaults of transformers' tokenizer classes (`<|endoftext|>` for gpt2; `<unk>`, `<s>`, `</s>`
//! for llama) when the vocabulary has them, are added as special tokens, matched whole and
//! skipped on decode. (transformers also appends such a default as a new token when the
//! vocabulary lacks it — an id past the embedding; this loader does not.) USER_DEFINED tokens (`token_type` 4) are added as plain added tokens.
//! A BOS (EOS) is added by `encode(.., add_special_tokens = true)` when
//! `tokenizer.ggml.add_bos_token` (`add_eos_token`) says so; the default is true for `llama`
//! vocabularies and false otherwise. The engine encodes prompts without special tokens.

use super::reader::{GgufFile, Value, ValueType};
use crate::error::{PipelineError, Result};
use std::collections::{HashMap, HashSet};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

pub const TOKEN_TYPE_NORMAL: i32 = 1;
pub const TOKEN_TYPE_UNKNOWN: i32 = 2;
pub const TOKEN_TYPE_CONTROL: i32 = 3;
pub const TOKEN_TYPE_USER_DEFINED: i32 = 4;
pub const TOKEN_TYPE_UNUSED: i32 = 5;
pub const TOKEN_TYPE_BYTE: i32 = 6;

/// Llama 3's pre-tokenizer regex (digits in groups of up to three).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's (single digits).
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-4o's (also Llama 4).
const GPT4O_SPLIT: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);
/// Mistral's Tekken.
const TEKKEN_SPLIT: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*",
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

/// The split regex for a `tokenizer.ggml.pre` name, for the names transformers maps; other
/// names (e.g. SmolLM2's `smollm`) keep GPT-2's byte-level regex, as in transformers.
pub fn pre_split_regex(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2"
        | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}

/// GPT-2's byte → printable character map (`bytes_to_unicode`).
pub fn byte_to_char() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable = (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        map[b as usize] = if printable {
            char::from_u32(b).unwrap()
        } else {
            let c = char::from_u32(256 + n).unwrap();
            n += 1;
            c
        };
    }
    map
}

/// What the engine needs to know besides the tokenizer itself.
#[derive(Clone, Debug)]
pub struct GgufTokenizer {
    pub tokenizer: tokenizers::Tokenizer,
    /// `tokenizer.ggml.model`.
    pub model: String,
    /// Number of entries in `tokenizer.ggml.tokens` (the model's vocabulary size).
    pub n_tokens: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

/// The tokens as strings, with the entry for errors.
fn string_array<'a>(f: &'a GgufFile, key: &str) -> Result<Option<Vec<&'a str>>> {
    match f.value(key) {
        None => Ok(None),
        Some(Value::Array(ValueType::String, items)) => {
            Ok(Some(items.iter().map(|v| v.as_str().expect("string array")).collect()))
        }
        Some(v) => Err(f.key_err(key, format!("expected an array of strings, got {}", v.type_desc()))),
    }
}

fn number_array(f: &GgufFile, key: &str, n: usize) -> Result<Option<Vec<f64>>> {
    match f.value(key) {
        None => Ok(None),
        Some(Value::Array(t, items)) if *t != ValueType::String && *t != ValueType::Bool => {
            if items.len() != n {
                return Err(f.key_err(key, format!("has {} entries but tokenizer.ggml.tokens has {n}", items.len())));
            }
            Ok(Some(items.iter().map(|v| v.as_f64().unwrap_or(f64::NAN)).collect()))
        }
        Some(v) => Err(f.key_err(key, format!("expected an array of numbers, got {}", v.type_desc()))),
    }
}

fn token_id(f: &GgufFile, key: &str, n: usize) -> Result<Option<u32>> {
    match f.opt_uint(key, u32::MAX as u64)? {
        None => Ok(None),
        Some(id) if (id as usize) < n => Ok(Some(id as u32)),
        Some(id) => Err(f.key_err(key, format!("token id {id} is not below the vocabulary size {n}"))),
    }
}

fn tok_err(f: &GgufFile, msg: String) -> PipelineError {
    PipelineError::Tokenizer { path: f.path().to_path_buf(), msg }
}

/// Builds the tokenizer a GGUF file describes. Errors name the metadata key and its offset.
pub fn from_gguf(f: &GgufFile) -> Result<GgufTokenizer> {
    let model = f.req_str("tokenizer.ggml.model")?.to_string();
    let byte_level = match model.as_str() {
        "gpt2" => true,
        "llama" => false,
        other => {
            return Err(f.key_err(
                "tokenizer.ggml.model",
                format!("tokenizer type `{other}` is not supported (supported: gpt2 = byte-level BPE, llama = sentencepiece-style BPE)"),
            ))
        }
    };
    let tokens =
        string_array(f, "tokenizer.ggml.tokens")?.ok_or_else(|| f.key_err("tokenizer.ggml.tokens", "missing"))?;
    let n = tokens.len();
    if n == 0 || n > u32::MAX as usize {
        return Err(f.key_err("tokenizer.ggml.tokens", format!("{n} tokens")));
    }
    let types: Option<Vec<i32>> =
        number_array(f, "tokenizer.ggml.token_type", n)?.map(|v| v.into_iter().map(|x| x as i32).collect());
    let scores = number_array(f, "tokenizer.ggml.scores", n)?;
    let merges_raw = string_array(f, "tokenizer.ggml.merges")?;
    let pre = match f.value("tokenizer.ggml.pre") {
        None => None,
        Some(_) => Some(f.req_str("tokenizer.ggml.pre")?),
    };
    let bos = token_id(f, "tokenizer.ggml.bos_token_id", n)?;
    let eos = token_id(f, "tokenizer.ggml.eos_token_id", n)?;
    let unk = token_id(f, "tokenizer.ggml.unknown_token_id", n)?;
    let pad = token_id(f, "tokenizer.ggml.padding_token_id", n)?;
    let flag = |key: &str, default: bool| -> Result<bool> {
        match f.value(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(f.key_err(key, format!("expected a bool, got {}", v.type_desc()))),
        }
    };
    let add_bos = flag("tokenizer.ggml.add_bos_token", !byte_level)?;
    let add_eos = flag("tokenizer.ggml.add_eos_token", false)?;

    // The vocabulary as the tokenizer sees it: token → id, a later duplicate winning (as a
    // Python dict built from the list does).
    let b2c = byte_to_char();
    let alphabet: HashSet<char> = b2c.iter().copied().collect();
    let spelled: Vec<String> = if byte_level {
        tokens
            .iter()
            .map(|t| {
                if t.chars().all(|c| alphabet.contains(&c)) {
                    t.to_string()
                } else {
                    t.bytes().map(|b| b2c[b as usize]).collect()
                }
            })
            .collect()
    } else {
        tokens.iter().map(|t| t.to_string()).collect()
    };
    let mut vocab: HashMap<&str, u32> = HashMap::with_capacity(n);
    for (i, t) in spelled.iter().enumerate() {
        vocab.insert(t.as_str(), i as u32);
    }

    let merges: Vec<(String, String)> = match merges_raw {
        Some(list) => {
            let entry = f.get("tokenizer.ggml.merges").map(|e| e.offset).unwrap_or(0);
            let mut out = Vec::with_capacity(list.len());
            for (i, m) in list.iter().enumerate() {
                let parts: Vec<&str> = m.split(' ').collect();
                if parts.len() != 2 {
                    return Err(f.err(entry, format!("metadata `tokenizer.ggml.merges`: merge {i} {m:?} is not two tokens separated by one space")));
                }
                let joined = format!("{}{}", parts[0], parts[1]);
                for piece in [parts[0], parts[1], joined.as_str()] {
                    if !vocab.contains_key(piece) {
                        return Err(f.err(
                            entry,
                            format!("metadata `tokenizer.ggml.merges`: merge {i} {m:?} names token {piece:?}, which is not in tokenizer.ggml.tokens"),
                        ));
                    }
                }
                out.push((parts[0].to_string(), parts[1].to_string()));
            }
            out
        }
        None if byte_level => {
            return Err(
                f.key_err("tokenizer.ggml.merges", "missing: a gpt2 (byte-level BPE) tokenizer needs its merges")
            )
        }
        None => {
            let scores = scores.as_ref().ok_or_else(|| {
                f.key_err(
                    "tokenizer.ggml.scores",
                    "missing: a llama tokenizer without merges needs scores to derive them",
                )
            })?;
            generate_merges(&tokens, scores)
        }
    };

    let bpe_vocab: tokenizers::models::bpe::Vocab = vocab.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    let mut builder = BPE::builder().vocab_and_merges(bpe_vocab, merges);
    builder = if byte_level {
        builder.continuing_subword_prefix(String::new()).end_of_word_suffix(String::new())
    } else {
        builder.fuse_unk(true).byte_fallback(true)
    };
    let bpe = builder.build().map_err(|e| tok_err(f, format!("building the BPE model: {e}")))?;
    let mut tk = tokenizers::Tokenizer::new(bpe);

    if byte_level {
        let pre_tok: PreTokenizerWrapper = match pre.and_then(pre_split_regex) {
            Some(re) => {
                let split = Split::new(SplitPattern::Regex(re.to_string()), SplitDelimiterBehavior::Isolated, false)
                    .map_err(|e| tok_err(f, format!("pre-tokenizer regex: {e}")))?;
                PreSequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into()
            }
            None => ByteLevel::new(false, true, true).into(),
        };
        tk.with_pre_tokenizer(Some(pre_tok));
        tk.with_decoder(Some(DecoderWrapper::from(ByteLevel::default())));
    } else {
        tk.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::First, false)));
        let decoders: Vec<DecoderWrapper> = vec![
            Replace::new("▁", " ").map_err(|e| tok_err(f, format!("decoder: {e}")))?.into(),
            ByteFallback::new().into(),
            Fuse::new().into(),
            Strip::new(' ', 1, 0).into(),
        ];
        tk.with_decoder(Some(DecoderSequence::new(decoders)));
    }

    // Special tokens.
    let mut special: Vec<AddedToken> = Vec::new();
    let mut special_seen: HashSet<String> = HashSet::new();
    let mut add_special = |s: &str, special: &mut Vec<AddedToken>| {
        if special_seen.insert(s.to_string()) {
            special.push(AddedToken::from(s.to_string(), true).normalized(false));
        }
    };
    if let Some(types) = &types {
        for (i, t) in tokens.iter().enumerate() {
            if types[i] == TOKEN_TYPE_CONTROL && (!byte_level || t.chars().all(|c| alphabet.contains(&c))) {
                add_special(t, &mut special);
            }
        }
    }
    let class_defaults: &[&str] = if byte_level { &["<|endoftext|>"] } else { &["<unk>", "<s>", "</s>"] };
    for id in [bos, eos, unk, pad].into_iter().flatten() {
        let t = tokens[id as usize];
        if vocab.contains_key(t) {
            add_special(t, &mut special);
        }
    }
    for t in class_defaults {
        if vocab.contains_key(t) {
            add_special(t, &mut special);
        }
    }
    tk.add_special_tokens(&special);
    if let Some(types) = &types {
        let user: Vec<AddedToken> = tokens
            .iter()
            .enumerate()
            .filter(|(i, t)| types[*i] == TOKEN_TYPE_USER_DEFINED && vocab.contains_key(**t))
            .map(|(_, t)| AddedToken::from(t.to_string(), false).normalized(false))
            .collect();
        tk.add_tokens(&user);
    }

    // BOS/EOS added by encode(.., true), as transformers' post-processor does (a template
    // that adds nothing when neither flag is set, as there).
    let bos_tok = bos.map(|i| tokens[i as usize]).filter(|_| add_bos);
    let eos_tok = eos.map(|i| tokens[i as usize]).filter(|_| add_eos);
    if let Some(pp) = template(bos_tok.zip(bos), eos_tok.zip(eos)) {
        tk.with_post_processor(Some(pp));
    }

    Ok(GgufTokenizer { tokenizer: tk, model, n_tokens: n, bos_token_id: bos, eos_token_id: eos })
}

/// `[bos] $A [eos]` / `[bos] $A [eos] [bos] $B:1 [eos]:1`, built through serde so that any
/// token spelling works.
fn template(bos: Option<(&str, u32)>, eos: Option<(&str, u32)>) -> Option<TemplateProcessing> {
    use serde_json::json;
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let sp = |t: &str, type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
    let mut single = vec![];
    let mut pair = vec![];
    let mut specials = serde_json::Map::new();
    for (t, id) in bos.into_iter().chain(eos) {
        specials.insert(t.to_string(), json!({"id": t, "ids": [id], "tokens": [t]}));
    }
    if let Some((t, _)) = bos {
        single.push(sp(t, 0));
        pair.push(sp(t, 0));
    }
    single.push(seq("A", 0));
    pair.push(seq("A", 0));
    if let Some((t, _)) = eos {
        single.push(sp(t, 0));
        pair.push(sp(t, 0));
    }
    if let Some((t, _)) = bos {
        pair.push(sp(t, 1));
    }
    pair.push(seq("B", 1));
    if let Some((t, _)) = eos {
        pair.push(sp(t, 1));
    }
    let v = json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials});
    serde_json::from_value(v).ok()
}

/// transformers' `generate_merges(vocab, vocab_scores)`: every split of every token into two
/// tokens of the vocabulary, ordered by the token's score (highest first), then by the length
/// of the left and right piece (longest first), ties kept in vocabulary order, and within one
/// token by the ids of its pieces. Lengths count characters, as Python's `len` does.
pub fn generate_merges(tokens: &[&str], scores: &[f64]) -> Vec<(String, String)> {
    // Python dicts: a key keeps its first position and its last value.
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    let mut order: Vec<&str> = Vec::with_capacity(tokens.len());
    let mut score: HashMap<&str, f64> = HashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        if index.insert(t, i).is_none() {
            order.push(t);
        }
        score.insert(t, scores[i]);
    }
    struct M<'a> {
        l: &'a str,
        r: &'a str,
        score: f64,
        ll: usize,
        rl: usize,
    }
    let mut merges: Vec<M> = Vec::new();
    for t in &order {
        let mut local: Vec<M> = Vec::new();
        let char_starts: Vec<usize> = t.char_indices().map(|(i, _)| i).skip(1).collect();
        for (k, &at) in char_starts.iter().enumerate() {
            let (l, r) = t.split_at(at);
            if index.contains_key(l) && index.contains_key(r) {
                let ll = k + 1;
                local.push(M { l, r, score: score[t], ll, rl: t.chars().count() - ll });
            }
        }
        local.sort_by_key(|m| (index[m.l], index[m.r]));
        merges.extend(local);
    }
    // Python's sort(reverse=True) is stable: equal keys keep their order.
    merges.sort_by(|a, b| b.score.total_cmp(&a.score).then(b.ll.cmp(&a.ll)).then(b.rl.cmp(&a.rl)));
    merges.into_iter().map(|m| (m.l.to_string(), m.r.to_string())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_gpt2s() {
        let m = byte_to_char();
        assert_eq!(m[b'a' as usize], 'a');
        assert_eq!(m[b' ' as usize], 'Ġ');
        assert_eq!(m[b'\n' as usize], 'Ċ');
        assert_eq!(m[0], 'Ā');
        let set: HashSet<char> = m.iter().copied().collect();
        assert_eq!(set.len(), 256);
    }

    #[test]
    fn generate_merges_orders_like_transformers() {
        // vocab: a b c ab bc abc ; scores favour abc, then ab, then bc.
        let tokens = ["a", "b", "c", "ab", "bc", "abc"];
        let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -0.5];
        let m = generate_merges(&tokens, &scores);
        let got: Vec<(&str, &str)> = m.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        // abc (score -0.5): splits a+bc (ids 0,4) and ab+c (3,2); sorted by ids: (a,bc),(ab,c);
        // then the stable reverse sort by (score, len l, len r): ab+c (2,1) before a+bc (1,2).
        assert_eq!(got, vec![("ab", "c"), ("a", "bc"), ("a", "b"), ("b", "c")]);
    }
}
