//! The wire decoder's properties, as one function over arbitrary bytes: the fuzz target
//! `fuzz/fuzz_targets/rdma_wire.rs` calls it, and crashes it finds become tests here.
//!
//! The first byte picks a mode:
//! - 0: the bytes as a stream of frames, decoded one after another as a connection would
//!   (sequence numbers counting up, writes' payloads skipped, control bodies parsed and setups
//!   validated): nothing panics, no frame claims more bytes than there are.
//! - 1: the rest as (kind, body), MACed and encoded: it must decode to the same frame, and the
//!   frame with any one bit flipped must not decode to a frame (a MAC forgery), only to an error
//!   or a request for more bytes.
//! - 2: the rest as a control message body: parsing and validating it never panics.

use crate::auth::{Key, MAC_BYTES};
use crate::control::{validate_setup, Control};
use crate::wire::{self, Kind, WriteDesc, HEADER_BYTES};

fn key() -> Key {
    Key::from_bytes([0x5a; 32])
}

/// `Err` names the property that failed.
pub fn check_bytes(data: &[u8]) -> Result<(), String> {
    let Some((&mode, rest)) = data.split_first() else { return Ok(()) };
    match mode % 3 {
        0 => stream(rest),
        1 => round_trip(rest),
        _ => {
            body(Kind::Control, rest);
            Ok(())
        }
    }
}

fn body(kind: Kind, b: &[u8]) {
    match kind {
        Kind::Write => {
            let _ = WriteDesc::decode(b);
        }
        Kind::Control => {
            if let Ok(Control::Setup(s)) = Control::from_body(b, "fuzz") {
                let _ = validate_setup(&s);
            }
            if let Ok(Control::Replan { plan, .. }) = Control::from_body(b, "fuzz") {
                // a replan is checked against the layout the worker already has
                if let Ok(layout) = planner::uniform_layout("fuzz", 1 << 20, 2, Some(256 << 10)) {
                    let _ = crate::control::validate_plan(&plan, &layout);
                }
            }
        }
        _ => {}
    }
}

fn stream(mut buf: &[u8]) -> Result<(), String> {
    let k = key();
    let mut seq = 0u64;
    for _ in 0..10_000 {
        match wire::decode(buf, &k, seq) {
            Ok(None) | Err(_) => return Ok(()),
            Ok(Some((f, used))) => {
                if used > buf.len() || used != HEADER_BYTES + f.body.len() + MAC_BYTES {
                    return Err(format!("frame used {used} of {} bytes with a {}-byte body", buf.len(), f.body.len()));
                }
                body(f.kind, f.body);
                buf = &buf[used..];
                if f.kind == Kind::Write {
                    if let Ok(d) = WriteDesc::decode(f.body) {
                        let skip = (d.len.min(buf.len() as u64)) as usize;
                        buf = &buf[skip..];
                    }
                }
                seq += 1;
            }
        }
    }
    Ok(())
}

fn round_trip(rest: &[u8]) -> Result<(), String> {
    let Some((&kb, b)) = rest.split_first() else { return Ok(()) };
    let Some(kind) = Kind::from_u8(kb) else { return Ok(()) };
    let k = key();
    let Ok(frame) = wire::encode(kind, 7, b, &k) else { return Ok(()) };
    match wire::decode_complete(&frame, &k, 7) {
        Ok(f) if f.kind == kind && f.seq == 7 && f.body == b => {}
        other => return Err(format!("{kind:?} with a {}-byte body did not round-trip: {other:?}", b.len())),
    }
    body(kind, b);
    // one flipped bit, at a position taken from the body's bytes
    let h = b.iter().fold(17usize, |h, &x| h.wrapping_mul(31).wrapping_add(x as usize));
    let at = h % (frame.len() * 8);
    let mut bad = frame.clone();
    bad[at / 8] ^= 1 << (at % 8);
    if let Ok(Some((f, _))) = wire::decode(&bad, &k, 7) {
        return Err(format!("bit {at} flipped in a {kind:?} frame still decodes (kind {:?}, seq {})", f.kind, f.seq));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bit_flip_of_a_frame_is_caught() {
        let k = key();
        let frame = wire::encode(Kind::Control, 7, &Control::Start.to_body(), &k).unwrap();
        for at in 0..frame.len() * 8 {
            let mut bad = frame.clone();
            bad[at / 8] ^= 1 << (at % 8);
            assert!(!matches!(wire::decode(&bad, &k, 7), Ok(Some(_))), "bit {at}");
        }
    }

    #[test]
    fn sample_inputs_hold_the_properties() {
        let k = key();
        let mut stream_bytes = vec![0u8];
        for (i, kind) in [Kind::Ping, Kind::Control, Kind::Write, Kind::Control, Kind::Message].into_iter().enumerate()
        {
            let b = match kind {
                Kind::Control if i == 3 => Control::Verdict { tag: 1, ok: false }.to_body(),
                Kind::Control => Control::Finish.to_body(),
                Kind::Write => WriteDesc { region: 0, offset: 0, len: 3, tag: 1 }.encode().to_vec(),
                Kind::Message => vec![1, 2, 3],
                _ => vec![],
            };
            stream_bytes.extend(wire::encode(kind, i as u64, &b, &k).unwrap());
            if kind == Kind::Write {
                stream_bytes.extend([9, 9, 9]);
            }
        }
        check_bytes(&stream_bytes).unwrap();
        check_bytes(&[1, Kind::Control as u8, b'{', b'}']).unwrap();
        check_bytes(&[1, Kind::Write as u8]).unwrap();
        check_bytes(b"\x02{\"type\":\"setup\",\"node\":1}").unwrap();
        check_bytes(&[]).unwrap();
    }
}
