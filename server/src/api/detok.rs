//! Incremental detokenisation: the text each new token adds, as a stream of valid UTF-8.
//!
//! Decoding tokens one at a time is wrong for byte-level and SentencePiece vocabularies (a
//! character can span tokens; a token's leading space depends on its neighbour), so each step
//! decodes a short window twice, with and without the new tokens, and emits the difference
//! once it no longer ends in an incomplete character (U+FFFD). The window starts a few tokens
//! back (the tail of the prompt at first) so spaces come out as the full decode has them.

use pipeline::tokenizer::Tokenizer;

/// Prompt tokens the first window includes as context.
const PROMPT_CONTEXT_TOKENS: usize = 5;
/// Tokens held back undecoded at most before the window is forced forward (a run of tokens
/// that never completes a character, e.g. stray byte tokens).
const MAX_PENDING_TOKENS: usize = 16;

pub struct Detokenizer {
    ids: Vec<u32>,
    /// ids[prefix..read] is the context already emitted; ids[read..] is not yet emitted.
    prefix: usize,
    read: usize,
}

impl Detokenizer {
    pub fn new(prompt: &[u32]) -> Self {
        let tail = &prompt[prompt.len().saturating_sub(PROMPT_CONTEXT_TOKENS)..];
        Detokenizer { ids: tail.to_vec(), prefix: 0, read: tail.len() }
    }

    /// Adds a generated token; returns the text it completes (often empty while a character is
    /// still partial, or for special tokens, which are skipped).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        self.ids.push(id);
        let force = self.ids.len() - self.read > MAX_PENDING_TOKENS;
        self.advance(tok, force)
    }

    /// The text still held back (an incomplete character at the very end comes out as U+FFFD).
    pub fn flush(&mut self, tok: &Tokenizer) -> String {
        if self.read == self.ids.len() {
            return String::new();
        }
        self.advance(tok, true)
    }

    fn advance(&mut self, tok: &Tokenizer, force: bool) -> String {
        let before = tok.decode(&self.ids[self.prefix..self.read]).unwrap_or_default();
        let after = tok.decode(&self.ids[self.prefix..]).unwrap_or_default();
        if !force && (after.len() <= before.len() || after.ends_with('\u{FFFD}')) {
            return String::new();
        }
        // Normally `after` extends `before`; if a normaliser rewrote the join, emit from the
        // first differing character.
        let common = if after.starts_with(&before) { before.len() } else { common_prefix(&before, &after) };
        let delta = after[common..].to_string();
        // Keep a window of a few tokens of context; drop what is before it.
        self.prefix = self.read;
        self.read = self.ids.len();
        if self.prefix > 64 {
            self.ids.drain(..self.prefix);
            self.read -= self.prefix;
            self.prefix = 0;
        }
        delta
    }
}

fn common_prefix(a: &str, b: &str) -> usize {
    let mut n = 0;
    for (x, y) in a.chars().zip(b.chars()) {
        if x != y {
            break;
        }
        n += x.len_utf8();
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn tiny() -> Tokenizer {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipeline/tests/fixtures/tiny-llama/tokenizer.json");
        Tokenizer::from_file(&p).unwrap()
    }

    #[test]
    fn streamed_text_equals_the_full_decode() {
        let tok = tiny();
        for text in [
            "Hello world, this is a test of spaces.",
            "héllo wörld ünïcödé ✓ — 日本",
            "  leading and  double  spaces\n",
        ] {
            let ids = tok.encode(text).unwrap();
            for split in [0, 1, ids.len() / 2] {
                let (prompt, gen) = ids.split_at(split);
                let mut d = Detokenizer::new(prompt);
                let mut out = String::new();
                for &id in gen {
                    let piece = d.push(&tok, id);
                    assert!(!piece.contains('\u{FFFD}'), "{text:?}: partial character emitted: {piece:?}");
                    out.push_str(&piece);
                }
                out.push_str(&d.flush(&tok));
                let full = tok.decode(&ids).unwrap();
                let head = tok.decode(prompt).unwrap();
                assert_eq!(format!("{head}{out}"), full, "{text:?} split at {split}");
            }
        }
    }

    #[test]
    fn long_streams_keep_a_bounded_window() {
        let tok = tiny();
        let ids = tok.encode(&"the quick brown fox jumps over the lazy dog ".repeat(40)).unwrap();
        let mut d = Detokenizer::new(&[]);
        let mut out = String::new();
        for &id in &ids {
            out.push_str(&d.push(&tok, id));
            assert!(d.ids.len() <= 64 + MAX_PENDING_TOKENS + 2, "{}", d.ids.len());
        }
        out.push_str(&d.flush(&tok));
        assert_eq!(out, tok.decode(&ids).unwrap());
    }
}
