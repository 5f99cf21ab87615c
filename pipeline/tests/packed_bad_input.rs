//! Truncated and corrupt packed files get a clear error naming the file and byte offset (or
//! the execution and transfer block); never a panic, a hang or an out-of-bounds read.

mod common;
use common::*;
use pipeline::packed::{self, PackedFile};
use pipeline::{Model, PipelineError};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;

struct Packed {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    bytes: Vec<u8>,
    header_len: usize,
    data_offset: usize,
}

/// A tiny-llama packed into 8 blocks of 4 KiB transfer blocks.
fn packed() -> Packed {
    let (tmp, dir) = synth("tiny-llama", 1);
    let model = Model::open(&dir).unwrap();
    let path = tmp.path().join("good.fspack");
    packed::pack(&model, &path, 8, Some(4096), &mut |_| {}).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
    let data_offset = PackedFile::open_header(&path).unwrap().layout().data_offset() as usize;
    Packed { dir: tmp.path().to_path_buf(), _tmp: tmp, bytes, header_len, data_offset }
}

impl Packed {
    /// Writes `bytes` to a file and opens it; the error's text.
    fn open_err(&self, bytes: &[u8]) -> String {
        let path = self.dir.join("bad.fspack");
        std::fs::write(&path, bytes).unwrap();
        match packed::open(&path) {
            Ok(_) => panic!("a corrupt file was accepted"),
            Err(e) => {
                let s = e.to_string();
                assert!(s.contains("bad.fspack"), "the error names the file: {s}");
                s
            }
        }
    }

    fn header(&self) -> Value {
        serde_json::from_slice(&self.bytes[32..32 + self.header_len]).unwrap()
    }

    /// The file with its header replaced by `header` (checksum and length fixed up, so the
    /// header's contents, not its checksum, are what is tested).
    fn with_header_bytes(&self, header: &[u8]) -> Vec<u8> {
        assert!(32 + header.len() <= self.data_offset, "the edited header still fits before the data");
        let mut out = self.bytes.clone();
        out[16..24].copy_from_slice(&(header.len() as u64).to_le_bytes());
        out[24..28].copy_from_slice(&packed::crc32c(header).to_le_bytes());
        out[32..self.data_offset].fill(0);
        out[32..32 + header.len()].copy_from_slice(header);
        out
    }

    fn with_header(&self, edit: impl Fn(&mut Value)) -> Vec<u8> {
        let mut h = self.header();
        edit(&mut h);
        self.with_header_bytes(&serde_json::to_vec(&h).unwrap())
    }
}

#[test]
fn truncated_files_name_the_offset() {
    let p = packed();
    let n = p.bytes.len();
    let at_cut = format!("byte {}", n - 4096);
    let cases: Vec<(usize, Vec<&str>)> = vec![
        (0, vec!["shorter than the 32-byte preamble", "byte 0"]),
        (20, vec!["shorter than the 32-byte preamble"]),
        (32 + p.header_len / 2, vec!["header length", "runs past the end", "byte 16"]),
        (32 + p.header_len, vec!["block table ends", "truncated?"]),
        (p.data_offset, vec!["block table ends", "truncated?"]),
        (n - 4096, vec!["truncated?", &at_cut]),
        (n - 1, vec!["truncated?"]),
    ];
    for (cut, wants) in cases {
        let e = p.open_err(&p.bytes[..cut]);
        for w in wants {
            assert!(e.contains(w), "cut at {cut}: `{w}` not in: {e}");
        }
    }
    let mut longer = p.bytes.clone();
    longer.extend_from_slice(&[0; 4096]);
    let e = p.open_err(&longer);
    assert!(e.contains("trailing bytes") && e.contains(&format!("byte {n}")), "{e}");
}

#[test]
fn bad_preamble_fields() {
    let p = packed();
    let set = |at: usize, v: &[u8]| {
        let mut b = p.bytes.clone();
        b[at..at + v.len()].copy_from_slice(v);
        b
    };
    let cases: Vec<(Vec<u8>, &[&str])> = vec![
        (set(0, b"GGUF"), &["not a faascale packed file", "byte 0"]),
        (set(8, &2u32.to_le_bytes()), &["unknown format version 2", "byte 8"]),
        (set(8, &0u32.to_le_bytes()), &["unknown format version 0", "byte 8"]),
        (set(12, &1u32.to_le_bytes()), &["flags", "byte 12"]),
        (set(28, &7u32.to_le_bytes()), &["reserved", "byte 28"]),
        (set(16, &(p.bytes.len() as u64).to_le_bytes()), &["runs past the end", "byte 16"]),
        (set(16, &u64::MAX.to_le_bytes()), &["header length", "byte 16"]),
        (set(16, &0u64.to_le_bytes()), &["header length 0", "byte 16"]),
        (set(16, &((p.header_len - 1) as u64).to_le_bytes()), &["header checksum mismatch", "byte 32"]),
        (set(24, &0xdeadbeefu32.to_le_bytes()), &["header checksum mismatch", "byte 32"]),
        (set(32 + p.header_len / 3, b"#"), &["header checksum mismatch", "byte 32"]),
    ];
    for (bytes, wants) in cases {
        let e = p.open_err(&bytes);
        for w in wants {
            assert!(e.contains(w), "`{w}` not in: {e}");
        }
    }
}

#[test]
fn header_contents_are_checked_beyond_the_checksum() {
    let p = packed();
    let tensor = |name: &'static str| {
        move |h: &Value| h["tensors"].as_array().unwrap().iter().position(|t| t["name"] == name).unwrap()
    };
    let q0 = tensor("model.layers.0.self_attn.q_proj.weight");
    let cases: Vec<(Vec<u8>, &[&str])> = vec![
        (p.with_header_bytes(b"{not json"), &["not a valid packed-file header", "byte 32"]),
        (p.with_header_bytes(b"[1, 2, 3]"), &["not a valid packed-file header"]),
        (
            p.with_header(|h| {
                h.as_object_mut().unwrap().remove("layout");
            }),
            &["missing field `layout`"],
        ),
        (p.with_header(|h| h["layout"]["version"] = 7.into()), &["model layout version 7", "byte 32"]),
        (
            p.with_header(|h| h["layout"]["exec_blocks"][2]["offset"] = 4096.into()),
            &["block table", "execution block 2"],
        ),
        (p.with_header(|h| h["layout"]["transfer_blocks"][3]["len"] = 8192.into()), &["block table"]),
        (p.with_header(|h| h["layout"]["total_bytes"] = 1.into()), &["block table", "total_bytes"]),
        (p.with_header(|h| h["layout"]["num_layers"] = 9.into()), &["block table"]),
        (p.with_header(|h| h["config"]["num_hidden_layers"] = 9.into()), &["config has 9 layers"]),
        (p.with_header(|h| h["config"]["hidden_act"] = "gelu".into()), &["header config", "hidden_act"]),
        (p.with_header(|h| h["config"] = Value::Null), &["header config"]),
        (
            p.with_header(|h| {
                let i = q0(h);
                h["tensors"][i]["block"] = 99.into()
            }),
            &["q_proj", "block 99 does not exist"],
        ),
        (
            p.with_header(|h| {
                let i = q0(h);
                h["tensors"][i]["block"] = 1.into()
            }),
            &["q_proj", "layer 0 belongs"],
        ),
        (
            p.with_header(|h| {
                let i = q0(h);
                h["tensors"][i]["offset"] = (1u64 << 40).into()
            }),
            &["q_proj", "run past"],
        ),
        (
            p.with_header(|h| {
                let i = q0(h);
                h["tensors"][i]["offset"] = u64::MAX.into()
            }),
            &["q_proj", "run past"],
        ),
        (
            p.with_header(|h| {
                let i = q0(h);
                h["tensors"][i]["dtype"] = "Q4_0".into()
            }),
            &["q_proj", "dtype `Q4_0`"],
        ),
        (
            p.with_header(|h| {
                let i = q0(h);
                h["tensors"][i]["len"] = 12.into()
            }),
            &["q_proj", "needs"],
        ),
        (
            p.with_header(|h| {
                let i = q0(h);
                h["tensors"][i]["shape"] = serde_json::json!([u64::MAX, u64::MAX])
            }),
            &["q_proj", "overflows"],
        ),
        (
            p.with_header(|h| {
                let i = q0(h);
                h["tensors"][i]["shape"] = serde_json::json!([1, 1, 1, 1, 1, 1, 1, 1, 1])
            }),
            &["q_proj", "rank"],
        ),
        (
            p.with_header(|h| {
                let t = h["tensors"][0].clone();
                h["tensors"].as_array_mut().unwrap().push(t)
            }),
            &["listed twice"],
        ),
    ];
    for (i, (bytes, wants)) in cases.iter().enumerate() {
        let e = p.open_err(bytes);
        for w in wants.iter() {
            assert!(e.contains(w), "case {i}: `{w}` not in: {e}");
        }
    }
    // A block table that starts the data inside the header: every offset moved down one page.
    let moved = p.with_header(|h| {
        let l = &mut h["layout"];
        for b in l["exec_blocks"].as_array_mut().unwrap() {
            b["offset"] = (b["offset"].as_u64().unwrap() - 4096 * (p.data_offset as u64 / 4096)).into();
        }
        for t in l["transfer_blocks"].as_array_mut().unwrap() {
            t["offset"] = (t["offset"].as_u64().unwrap() - 4096 * (p.data_offset as u64 / 4096)).into();
        }
    });
    let e = p.open_err(&moved);
    assert!(e.contains("inside the header"), "{e}");
    // A tensor missing from the index: the file opens, the stage names the tensor.
    let path = p.dir.join("missing.fspack");
    std::fs::write(
        &path,
        p.with_header(|h| {
            let i = q0(h);
            h["tensors"].as_array_mut().unwrap().remove(i);
        }),
    )
    .unwrap();
    let m = packed::open(&path).unwrap();
    let e = m.stage(8, 0..8, Arc::new(kernels::Pool::new(1)), Default::default()).err().unwrap().to_string();
    assert!(e.contains("model.layers.0.self_attn.q_proj.weight") && e.contains("not found"), "{e}");
}

#[test]
fn checksum_mismatch_names_the_block() {
    let p = packed();
    let good = PackedFile::from_bytes(Path::new("good"), Arc::new(p.bytes.clone())).unwrap();
    let t = good.layout().transfer_blocks_of(3)[1];
    let mut bad = p.bytes.clone();
    bad[(t.offset + 100) as usize] ^= 0x40;
    let e = p.open_err(&bad);
    let want = format!(
        "checksum mismatch in execution block 3, transfer block {} (bytes {}..{})",
        t.id,
        t.offset,
        t.offset + t.len
    );
    assert!(e.contains(&want), "{e}");
    // The header is intact: partial mode opens, every other block verifies, block 3 does not.
    let path = p.dir.join("bad3.fspack");
    std::fs::write(&path, &bad).unwrap();
    let pf = PackedFile::open_header(&path).unwrap();
    for b in 0..8 {
        assert_eq!(pf.mark_present(b).is_ok(), b != 3, "block {b}");
    }
    match pf.verify_block(3) {
        Err(PipelineError::ChecksumMismatch { exec_block: 3, transfer_block, offset, expected, got, .. }) => {
            assert_eq!((transfer_block, offset, expected), (t.id as usize, t.offset, t.crc32c));
            assert_ne!(got, expected);
        }
        other => panic!("{other:?}"),
    }
    assert!(!pf.is_present(3));
    // Padding bytes are checksummed too: a flip in the zero tail of the last block is caught.
    let mut tail = p.bytes.clone();
    *tail.last_mut().unwrap() = 1;
    assert!(p.open_err(&tail).contains("checksum mismatch in execution block 7"));
}

/// A tiny deterministic generator (xorshift64*), so failures reproduce from the seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_truncation_and_corruption_never_panic() {
    let p = packed();
    let seed = 0x5eed_u64;
    let mut rng = Rng(seed);
    let n = p.bytes.len();
    let (mut ok, mut refused) = (0, 0);
    for i in 0..400 {
        let mut b = p.bytes.clone();
        match i % 4 {
            0 => b.truncate(rng.below(n)),
            1 => {
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(n);
                    b[at] ^= 1 << rng.below(8);
                }
            }
            2 => {
                // damage the preamble or header, where parsing happens
                let at = rng.below(32 + p.header_len);
                b[at] = rng.next() as u8;
            }
            _ => {
                // a damaged header with a valid checksum: JSON surgery at the byte level
                let mut h = p.bytes[32..32 + p.header_len].to_vec();
                let at = rng.below(h.len());
                h[at] = b"{}[]\",:0123456789-e.tfn x"[rng.below(25)];
                b = p.with_header_bytes(&h);
            }
        }
        match PackedFile::from_bytes(Path::new("fuzz"), Arc::new(b)) {
            Ok(f) => match f.mark_all_present() {
                Ok(()) => ok += 1,
                Err(_) => refused += 1,
            },
            Err(_) => refused += 1,
        }
    }
    assert!(refused > 300, "seed {seed:#x}: {refused} refused, {ok} accepted");
}
