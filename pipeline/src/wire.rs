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

use crate::error::{PipelineError, Result};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
