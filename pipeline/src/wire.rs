//! Hidden states on the wire, between stages on different nodes.
//!
//! Layout, all little-endian:
//!
//! | bytes | field |
//! | --- | --- |
//! | 4 | magic `FSHS` |
//! | 2 | version (1) |
//! | 2 | reserved, 0 |
//! | 4 | rows n |
//! | 4 | width d |
//! | 4·n·d | f32 values, row-major `[n, d]` |
//!
//! The sequence ids and positions of the rows travel in the batch message that carries this.
//!
//! A batch message (`encode_batch`) carries one micro-batch between stages: sequence ids,
//! positions, which rows the last stage turns into logits, and the hidden rows; a token message
//! (`encode_tokens`) carries the last stage's sampled tokens back to the requester. Their layouts
//! are given at `encode_batch` and `encode_tokens`. Every field is checked against a bound before
//! anything is allocated from it, and an error names the field.

use crate::error::{PipelineError, Result};
use crate::stage::LogitsRows;

pub const MAGIC: [u8; 4] = *b"FSHS";
pub const VERSION: u16 = 1;
pub const HEADER_BYTES: usize = 16;
/// Refuse messages above this many values (1 GiB of f32): a bound on what a peer can make us allocate.
pub const MAX_VALUES: usize = 1 << 28;

pub fn encode_hidden(rows: usize, width: usize, values: &[f32]) -> Result<Vec<u8>> {
    if rows.checked_mul(width) != Some(values.len())
        || values.len() > MAX_VALUES
        || rows > u32::MAX as usize
        || width > u32::MAX as usize
    {
        return Err(PipelineError::Invalid {
            what: "hidden states",
            msg: format!("{rows} x {width} does not describe {} values (limit {MAX_VALUES})", values.len()),
        });
    }
    let mut out = Vec::with_capacity(HEADER_BYTES + 4 * values.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(rows as u32).to_le_bytes());
    out.extend_from_slice(&(width as u32).to_le_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// Returns `(rows, width, values)`.
pub fn decode_hidden(bytes: &[u8]) -> Result<(usize, usize, Vec<f32>)> {
    let err = |offset: usize, msg: String| Err(PipelineError::Wire { offset, msg });
    if bytes.len() < HEADER_BYTES {
        return err(0, format!("{} bytes, shorter than the {HEADER_BYTES}-byte header", bytes.len()));
    }
    if bytes[0..4] != MAGIC {
        return err(0, format!("magic {:?}, expected {:?}", &bytes[0..4], MAGIC));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != VERSION {
        return err(4, format!("version {version}, this build reads {VERSION}"));
    }
    if bytes[6..8] != [0, 0] {
        return err(6, "reserved bytes are not zero".into());
    }
    let rows = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
    let width = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
    let n = match rows.checked_mul(width) {
        Some(n) if n <= MAX_VALUES => n,
        _ => return err(8, format!("{rows} x {width} values exceeds the limit of {MAX_VALUES}")),
    };
    let body = &bytes[HEADER_BYTES..];
    if body.len() != 4 * n {
        return err(
            HEADER_BYTES,
            format!("{rows} x {width} needs {} bytes of values, message has {}", 4 * n, body.len()),
        );
    }
    let values = body.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
    Ok((rows, width, values))
}

/// Magic of a batch message.
pub const BATCH_MAGIC: [u8; 4] = *b"FSBM";
/// Magic of a token message.
pub const TOKENS_MAGIC: [u8; 4] = *b"FSTK";
/// Bytes of a batch message's header.
pub const BATCH_HEADER_BYTES: usize = 24;
/// Bytes of a token message's header.
pub const TOKENS_HEADER_BYTES: usize = 24;
/// Bytes of one sampled token on the wire (seq id u64, token u32, logprob f32).
pub const TOKEN_BYTES: usize = 16;
/// Most rows in one batch or token message.
pub const MAX_BATCH_ROWS: usize = 1 << 16;
/// Widest hidden row accepted (no model we run is wider than a few thousand).
pub const MAX_WIDTH: usize = 1 << 16;
/// Positions must be below this (far above any context length we run).
pub const MAX_POSITION: u32 = 1 << 24;

/// One micro-batch as it crosses from one stage to the next.
#[derive(Clone, Debug, PartialEq)]
pub struct WireBatch {
    /// Names the micro-batch along the pipeline (the requester's numbering).
    pub micro_batch: u64,
    pub seq_ids: Vec<u64>,
    pub positions: Vec<u32>,
    pub logits: LogitsRows,
    /// Hidden row width d.
    pub width: usize,
    /// `[rows, width]`, row-major.
    pub hidden: Vec<f32>,
}

impl WireBatch {
    pub fn rows(&self) -> usize {
        self.seq_ids.len()
    }
}

/// A token the last stage sampled, on its way back to the requester.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampledToken {
    pub seq_id: u64,
    pub token: u32,
    /// Natural log of the token's probability (≤ 0).
    pub logprob: f32,
}

fn invalid(field: &str, msg: String) -> PipelineError {
    PipelineError::Invalid { what: "batch message", msg: format!("field `{field}`: {msg}") }
}

fn at(offset: usize, field: &str, msg: String) -> PipelineError {
    PipelineError::Wire { offset, msg: format!("field `{field}`: {msg}") }
}

fn logits_code(l: LogitsRows) -> u8 {
    match l {
        LogitsRows::All => 0,
        LogitsRows::LastOfEachSeq => 1,
    }
}

/// Bytes of a batch message of `rows` rows of width `width`.
pub fn batch_bytes(rows: usize, width: usize) -> usize {
    BATCH_HEADER_BYTES + rows * (8 + 4) + 4 * rows * width
}

/// Encodes a micro-batch. Layout, all little-endian:
///
/// | bytes | field |
/// | --- | --- |
/// | 4 | magic `FSBM` |
/// | 2 | version (1) |
/// | 1 | logits: 0 all rows, 1 last row of each sequence |
/// | 1 | reserved, 0 |
/// | 8 | micro_batch |
/// | 4 | rows n (1 ..= `MAX_BATCH_ROWS`) |
/// | 4 | width d (1 ..= `MAX_WIDTH`) |
/// | 8·n | seq_ids |
/// | 4·n | positions (each below `MAX_POSITION`) |
/// | 4·n·d | hidden, f32 row-major `[n, d]` |
pub fn encode_batch(b: &WireBatch) -> Result<Vec<u8>> {
    let n = b.seq_ids.len();
    if n == 0 || n > MAX_BATCH_ROWS {
        return Err(invalid("rows", format!("{n} rows; need 1 ..= {MAX_BATCH_ROWS}")));
    }
    if b.width == 0 || b.width > MAX_WIDTH {
        return Err(invalid("width", format!("{}; need 1 ..= {MAX_WIDTH}", b.width)));
    }
    if b.positions.len() != n {
        return Err(invalid("positions", format!("{} positions for {n} rows", b.positions.len())));
    }
    if let Some((i, p)) = b.positions.iter().enumerate().find(|(_, &p)| p >= MAX_POSITION) {
        return Err(invalid("positions", format!("row {i}: position {p}, limit {MAX_POSITION}")));
    }
    if b.hidden.len() != n * b.width {
        return Err(invalid("hidden", format!("{} values for {n} rows of width {}", b.hidden.len(), b.width)));
    }
    let mut out = Vec::with_capacity(batch_bytes(n, b.width));
    out.extend_from_slice(&BATCH_MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.push(logits_code(b.logits));
    out.push(0);
    out.extend_from_slice(&b.micro_batch.to_le_bytes());
    out.extend_from_slice(&(n as u32).to_le_bytes());
    out.extend_from_slice(&(b.width as u32).to_le_bytes());
    for s in &b.seq_ids {
        out.extend_from_slice(&s.to_le_bytes());
    }
    for p in &b.positions {
        out.extend_from_slice(&p.to_le_bytes());
    }
    for v in &b.hidden {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// Checks magic, version and length of a message's header.
fn check_header(bytes: &[u8], magic: [u8; 4], header: usize, what: &str) -> Result<()> {
    if bytes.len() < header {
        return Err(at(0, "header", format!("{} bytes, shorter than the {header}-byte {what} header", bytes.len())));
    }
    if bytes[0..4] != magic {
        return Err(at(0, "magic", format!("{:?}, expected {:?} ({what})", &bytes[0..4], magic)));
    }
    let version = u16_at(bytes, 4);
    if version != VERSION {
        return Err(at(4, "version", format!("{version}, this build reads {VERSION}")));
    }
    Ok(())
}

/// Decodes a batch message, checking every field (see `encode_batch`). Nothing is allocated
/// before the header's row count and width are checked against their bounds and the length.
pub fn decode_batch(bytes: &[u8]) -> Result<WireBatch> {
    check_header(bytes, BATCH_MAGIC, BATCH_HEADER_BYTES, "batch")?;
    let logits = match bytes[6] {
        0 => LogitsRows::All,
        1 => LogitsRows::LastOfEachSeq,
        x => return Err(at(6, "logits", format!("{x}; expected 0 (all rows) or 1 (last of each sequence)"))),
    };
    if bytes[7] != 0 {
        return Err(at(7, "reserved", format!("{}, expected 0", bytes[7])));
    }
    let micro_batch = u64_at(bytes, 8);
    let n = u32_at(bytes, 16) as usize;
    if n == 0 || n > MAX_BATCH_ROWS {
        return Err(at(16, "rows", format!("{n}; need 1 ..= {MAX_BATCH_ROWS}")));
    }
    let width = u32_at(bytes, 20) as usize;
    if width == 0 || width > MAX_WIDTH {
        return Err(at(20, "width", format!("{width}; need 1 ..= {MAX_WIDTH}")));
    }
    let want = batch_bytes(n, width);
    if bytes.len() != want {
        let field = if bytes.len() < want { "hidden (truncated)" } else { "length (trailing bytes)" };
        return Err(at(
            BATCH_HEADER_BYTES,
            field,
            format!("{n} rows of width {width} need {want} bytes, message has {}", bytes.len()),
        ));
    }
    let (mut o, mut seq_ids, mut positions) = (BATCH_HEADER_BYTES, Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        seq_ids.push(u64_at(bytes, o));
        o += 8;
    }
    for i in 0..n {
        let p = u32_at(bytes, o);
        if p >= MAX_POSITION {
            return Err(at(o, "positions", format!("row {i}: position {p}, limit {MAX_POSITION}")));
        }
        positions.push(p);
        o += 4;
    }
    let hidden = bytes[o..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
    Ok(WireBatch { micro_batch, seq_ids, positions, logits, width, hidden })
}

/// Encodes the tokens the last stage sampled for micro-batch `micro_batch`. Layout, all
/// little-endian:
///
/// | bytes | field |
/// | --- | --- |
/// | 4 | magic `FSTK` |
/// | 2 | version (1) |
/// | 2 | reserved, 0 |
/// | 8 | micro_batch |
/// | 4 | count n (1 ..= `MAX_BATCH_ROWS`) |
/// | 4 | reserved, 0 |
/// | 16·n | per token: seq_id u64, token u32, logprob f32 (finite, ≤ 0) |
pub fn encode_tokens(micro_batch: u64, tokens: &[SampledToken]) -> Result<Vec<u8>> {
    let n = tokens.len();
    if n == 0 || n > MAX_BATCH_ROWS {
        return Err(invalid("count", format!("{n} tokens; need 1 ..= {MAX_BATCH_ROWS}")));
    }
    if let Some((i, t)) = tokens.iter().enumerate().find(|(_, t)| !(t.logprob.is_finite() && t.logprob <= 0.0)) {
        return Err(invalid("logprob", format!("token {i}: {}; need a finite value ≤ 0", t.logprob)));
    }
    let mut out = Vec::with_capacity(TOKENS_HEADER_BYTES + TOKEN_BYTES * n);
    out.extend_from_slice(&TOKENS_MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&micro_batch.to_le_bytes());
    out.extend_from_slice(&(n as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for t in tokens {
        out.extend_from_slice(&t.seq_id.to_le_bytes());
        out.extend_from_slice(&t.token.to_le_bytes());
        out.extend_from_slice(&t.logprob.to_le_bytes());
    }
    Ok(out)
}

/// Decodes a token message: `(micro_batch, tokens)`, every field checked.
pub fn decode_tokens(bytes: &[u8]) -> Result<(u64, Vec<SampledToken>)> {
    check_header(bytes, TOKENS_MAGIC, TOKENS_HEADER_BYTES, "token")?;
    if bytes[6..8] != [0, 0] || bytes[20..24] != [0; 4] {
        return Err(at(6, "reserved", "reserved bytes are not zero".into()));
    }
    let micro_batch = u64_at(bytes, 8);
    let n = u32_at(bytes, 16) as usize;
    if n == 0 || n > MAX_BATCH_ROWS {
        return Err(at(16, "count", format!("{n}; need 1 ..= {MAX_BATCH_ROWS}")));
    }
    let want = TOKENS_HEADER_BYTES + TOKEN_BYTES * n;
    if bytes.len() != want {
        let field = if bytes.len() < want { "tokens (truncated)" } else { "length (trailing bytes)" };
        return Err(at(
            TOKENS_HEADER_BYTES,
            field,
            format!("{n} tokens need {want} bytes, message has {}", bytes.len()),
        ));
    }
    let mut out = Vec::with_capacity(n);
    for (i, c) in bytes[TOKENS_HEADER_BYTES..].chunks_exact(TOKEN_BYTES).enumerate() {
        let logprob = f32::from_le_bytes(c[12..16].try_into().expect("4 bytes"));
        if !(logprob.is_finite() && logprob <= 0.0) {
            let o = TOKENS_HEADER_BYTES + i * TOKEN_BYTES + 12;
            return Err(at(o, "logprob", format!("token {i}: {logprob}; need a finite value ≤ 0")));
        }
        out.push(SampledToken { seq_id: u64_at(c, 0), token: u32_at(c, 8), logprob });
    }
    Ok((micro_batch, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> WireBatch {
        WireBatch {
            micro_batch: 7,
            seq_ids: vec![3, 3, 9],
            positions: vec![4, 5, 0],
            logits: LogitsRows::LastOfEachSeq,
            width: 2,
            hidden: vec![1.0, -2.5, 0.0, f32::MIN_POSITIVE, 3.0, -0.0],
        }
    }

    #[test]
    fn batch_and_tokens_round_trip_bitwise() {
        let b = batch();
        let bytes = encode_batch(&b).unwrap();
        assert_eq!(bytes.len(), batch_bytes(3, 2));
        let back = decode_batch(&bytes).unwrap();
        assert_eq!(
            back.hidden.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            b.hidden.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(
            (back.micro_batch, &back.seq_ids, &back.positions, back.logits, back.width),
            (7, &b.seq_ids, &b.positions, b.logits, 2)
        );
        let toks = vec![
            SampledToken { seq_id: 3, token: 42, logprob: -0.25 },
            SampledToken { seq_id: 9, token: 0, logprob: 0.0 },
        ];
        let (mb, back) = decode_tokens(&encode_tokens(11, &toks).unwrap()).unwrap();
        assert_eq!((mb, back), (11, toks));
    }

    #[test]
    fn bad_batches_and_tokens_are_refused_naming_the_field() {
        let good = encode_batch(&batch()).unwrap();
        let mut cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..10].to_vec(), "`header`"),
            (good[..good.len() - 1].to_vec(), "`hidden (truncated)`"),
            ([good.clone(), vec![0]].concat(), "`length (trailing bytes)`"),
        ];
        let mut set = |o: usize, v: &[u8], want: &'static str| {
            let mut m = good.clone();
            m[o..o + v.len()].copy_from_slice(v);
            cases.push((m, want));
        };
        set(0, b"FSHS", "`magic`");
        set(4, &[2, 0], "`version`");
        set(6, &[5], "`logits`");
        set(7, &[1], "`reserved`");
        set(16, &0u32.to_le_bytes(), "`rows`");
        set(16, &u32::MAX.to_le_bytes(), "`rows`");
        set(20, &0u32.to_le_bytes(), "`width`");
        set(20, &(MAX_WIDTH as u32 + 1).to_le_bytes(), "`width`");
        set(BATCH_HEADER_BYTES + 24, &MAX_POSITION.to_le_bytes(), "`positions`");
        for (bytes, want) in cases {
            let e = decode_batch(&bytes).unwrap_err().to_string();
            assert!(e.contains(want), "{e} should name {want}");
        }
        let mut b = batch();
        b.positions.pop();
        assert!(encode_batch(&b).unwrap_err().to_string().contains("`positions`"));
        let mut b = batch();
        b.hidden.pop();
        assert!(encode_batch(&b).unwrap_err().to_string().contains("`hidden`"));
        let t = SampledToken { seq_id: 1, token: 2, logprob: -1.0 };
        let good = encode_tokens(1, &[t]).unwrap();
        assert!(encode_tokens(1, &[]).unwrap_err().to_string().contains("`count`"));
        assert!(encode_tokens(1, &[SampledToken { logprob: 0.5, ..t }]).unwrap_err().to_string().contains("`logprob`"));
        let mut m = good.clone();
        m[TOKENS_HEADER_BYTES + 12..].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(decode_tokens(&m).unwrap_err().to_string().contains("`logprob`"));
        assert!(decode_tokens(&good[..good.len() - 3]).unwrap_err().to_string().contains("`tokens (truncated)`"));
        assert!(decode_tokens(&good[..good.len() - 3]).unwrap_err().to_string().contains("`tokens (truncated)`"));
        let mut m = good.clone();
        m[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_tokens(&m).unwrap_err().to_string().contains("`count`"));
        assert!(decode_tokens(&encode_batch(&batch()).unwrap()).unwrap_err().to_string().contains("`magic`"));
    }

    #[test]
    fn round_trip_is_bitwise() {
        let v = vec![1.5f32, -0.0, f32::MIN_POSITIVE, 3.25e-7, f32::MAX, 7.0];
        let b = encode_hidden(2, 3, &v).unwrap();
        assert_eq!(&b[..4], b"FSHS");
        assert_eq!(b.len(), 16 + 24);
        let (r, w, back) = decode_hidden(&b).unwrap();
        assert_eq!((r, w), (2, 3));
        assert_eq!(
            back.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn malformed_messages_are_refused() {
        let good = encode_hidden(2, 3, &[0.0; 6]).unwrap();
        assert!(encode_hidden(2, 3, &[0.0; 5]).is_err());
        let mut cases: Vec<(Vec<u8>, &str)> =
            vec![(good[..10].to_vec(), "shorter"), (good[..good.len() - 1].to_vec(), "needs")];
        let mut m = good.clone();
        m[0] = b'X';
        cases.push((m, "magic"));
        let mut m = good.clone();
        m[4] = 9;
        cases.push((m, "version"));
        let mut m = good.clone();
        m[7] = 1;
        cases.push((m, "reserved"));
        let mut m = good.clone();
        m[8..16].copy_from_slice(&[0xff; 8]);
        cases.push((m, "limit"));
        for (bytes, want) in cases {
            let e = decode_hidden(&bytes).unwrap_err().to_string();
            assert!(e.contains(want), "{e} should mention {want}");
        }
    }

    #[test]
    fn mutated_messages_decode_cleanly_or_re_encode_to_the_same_bytes() {
        // The fuzz target `batch_wire`'s property, over seeded mutations of valid messages.
        let mut rng = crate::sampler::Rng::new(13);
        let t =
            [SampledToken { seq_id: 5, token: 7, logprob: -0.5 }, SampledToken { seq_id: 6, token: 1, logprob: 0.0 }];
        let seeds = [encode_batch(&batch()).unwrap(), encode_tokens(3, &t).unwrap()];
        for i in 0..20_000 {
            let mut m = seeds[i % 2].clone();
            for _ in 0..1 + rng.next_u64() % 4 {
                let at = (rng.next_u64() % m.len() as u64) as usize;
                match rng.next_u64() % 3 {
                    0 => m[at] = rng.next_u64() as u8,
                    1 => m.truncate(at),
                    _ => m.insert(at, rng.next_u64() as u8),
                }
                if m.is_empty() {
                    break;
                }
            }
            if let Ok(b) = decode_batch(&m) {
                assert_eq!(encode_batch(&b).unwrap(), m);
            }
            if let Ok((mb, tokens)) = decode_tokens(&m) {
                assert_eq!(encode_tokens(mb, &tokens).unwrap(), m);
            }
        }
    }
}
