//! `ModelLayout`: a model as execution blocks and transfer blocks, as byte ranges.
//!
//! This is the contract between the packed block file (`pipeline::packed`), the transport
//! (which moves byte ranges and checks crc32c values) and the planners (which schedule
//! transfer blocks and place execution blocks). It knows nothing of tensors or files.
//!
//! - An **execution block** is a run of contiguous layers `[start, end)` and one contiguous
//!   byte range `[offset, offset + len)`; execution blocks abut, in order, each 4 KiB-aligned
//!   and a whole number of 4 KiB pages long (the packed file pads them), so one memory
//!   registration and one bulk transfer move a block.
//! - A **transfer block** is a contiguous byte range of exactly one execution block, with the
//!   crc32c (Castagnoli) of its bytes. The transfer blocks of an execution block tile it
//!   exactly, in order; transfer block ids are global and increase with the offset.
//!
//! Offsets are absolute: in a packed file, bytes of the file; for a model that exists only in
//! a plan, whatever base the caller chose (`ModelLayout::new` takes it).
//!
//! Serialised with serde (the packed file stores it as JSON in its header); `version` is
//! checked by `validate`, and a change to the meaning of any field bumps it.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::Range;

/// The version this code writes and accepts.
pub const MODEL_LAYOUT_VERSION: u32 = 1;

/// Alignment of every execution block and transfer block offset and length (a page: what
/// `O_DIRECT`, memory registration and huge copies want).
pub const BLOCK_ALIGN_BYTES: u64 = 4096;

/// Bounds on counts, so a hostile layout cannot make a reader allocate without end.
pub const MAX_EXEC_BLOCKS: usize = 1 << 16;
pub const MAX_TRANSFER_BLOCKS: usize = 1 << 24;

/// A model described as blocks. See the module documentation for the invariants that
/// `validate` checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelLayout {
    /// `MODEL_LAYOUT_VERSION` when written.
    pub version: u32,
    /// The model's name (for a packed file, taken from the source's file or directory name).
    pub name: String,
    /// Bytes of all execution blocks together: what a node must receive to hold the model.
    pub total_bytes: u64,
    /// Transformer layers of the model; execution blocks cover `[0, num_layers)`.
    pub num_layers: u32,
    /// In order of id and offset.
    pub exec_blocks: Vec<ExecBlock>,
    /// In order of id and offset, over every execution block.
    pub transfer_blocks: Vec<TransferBlock>,
}

/// One execution block: layers `[layers.start, layers.end)`, bytes `[offset, offset + len)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecBlock {
    /// Its index in `ModelLayout::exec_blocks`.
    pub id: u32,
    pub layers: Range<u32>,
    pub offset: u64,
    pub len: u64,
    /// Ids of its transfer blocks, consecutive, in order of offset.
    pub transfer_blocks: Vec<u32>,
}

/// One transfer block: bytes `[offset, offset + len)` of execution block `exec_block`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferBlock {
    /// Its index in `ModelLayout::transfer_blocks`.
    pub id: u32,
    pub exec_block: u32,
    pub offset: u64,
    pub len: u64,
    /// crc32c (Castagnoli) of the block's bytes.
    pub crc32c: u32,
}

impl TransferBlock {
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

impl ExecBlock {
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// Why a layout is not valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// The layout was written by another version of this format.
    Version { found: u32, supported: u32 },
    /// An invariant does not hold; the message names the block and the field.
    Invalid(String),
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::Version { found, supported } => {
                write!(f, "model layout version {found} is not supported (this build reads version {supported})")
            }
            LayoutError::Invalid(msg) => write!(f, "invalid model layout: {msg}"),
        }
    }
}

impl std::error::Error for LayoutError {}

fn invalid<T>(msg: String) -> Result<T, LayoutError> {
    Err(LayoutError::Invalid(msg))
}

/// `x` rounded up to a multiple of `BLOCK_ALIGN_BYTES`, or `None` on overflow.
pub fn align_up(x: u64) -> Option<u64> {
    Some(x.checked_add(BLOCK_ALIGN_BYTES - 1)? / BLOCK_ALIGN_BYTES * BLOCK_ALIGN_BYTES)
}

/// Default transfer block size for a model of `total_bytes` in `num_exec_blocks` execution
/// blocks.
///
/// A binomial pipeline over b transfer blocks and N nodes takes b + ⌈log2 N⌉ − 1 block-times,
/// and each transfer pays a fixed latency λ (about 10 µs) on top of c / R at link rate R (about
/// 50 GB/s). With b = S / c the time is (S/c + L − 1)(c/R + λ), L = ⌈log2 N⌉, which is least at
/// c* = √(S · λR / (L − 1)). We take L − 1 = 3 (groups of up to 16 nodes), so
/// c* = √(S · 500 kB / 3): about 47 MB for Llama-2-7B (13.5 GB), 7 MB for SmolLM2-135M.
/// Then at most an eighth of the mean execution block, so an average execution block arrives
/// as 8 or more pieces and execute-while-load sees blocks complete steadily (λScale sent 2
/// per execution block and left link time unused); near the optimum the curve is flat, so
/// this costs little (SmolLM2-135M: 5.1 MB, 68 transfer blocks instead of 44). Clamped to [1 MiB, 256 MiB] — below 1 MiB the fixed latency costs over a
/// fifth of the link time; the ceiling only bites above about 400 GB (Llama-2-70B, 138 GB:
/// the rule gives 151.7 MB, 960 transfer blocks at 64 execution blocks) — and rounded up to
/// 4 KiB. A lower ceiling of 64 MiB gave 70B 2,112 transfer blocks: 2.7 % faster to complete
/// at 1,000 nodes, but 2.1 M transfers to plan (about 105 ms instead of 38 ms).
pub fn default_chunk_bytes(total_bytes: u64, num_exec_blocks: usize) -> u64 {
    const LATENCY_BYTES: f64 = 10e-6 * 50e9; // λ·R: bytes the link could move during one latency
    const FANOUT_TERM: f64 = 3.0; // ⌈log2 16⌉ − 1
    const MIN: u64 = 1 << 20;
    const MAX: u64 = 256 << 20;
    let optimum = ((total_bytes as f64) * LATENCY_BYTES / FANOUT_TERM).sqrt() as u64;
    let eighth_of_mean_block = total_bytes / (num_exec_blocks.max(1) as u64) / 8;
    let c = optimum.min(eighth_of_mean_block).clamp(MIN, MAX);
    align_up(c).unwrap_or(MAX)
}

impl ModelLayout {
    /// Lays out execution blocks one after another from `base_offset` (which must be
    /// 4 KiB-aligned). `blocks` gives each block's layers and its payload bytes; each block is
    /// padded to a multiple of 4 KiB and cut into transfer blocks of `chunk_bytes` (a positive
    /// multiple of 4 KiB; the last piece of a block may be shorter). Every crc32c is 0: the
    /// writer fills them in. The result is validated.
    pub fn new(
        name: &str,
        num_layers: u32,
        blocks: &[(Range<u32>, u64)],
        base_offset: u64,
        chunk_bytes: u64,
    ) -> Result<Self, LayoutError> {
        if chunk_bytes == 0 || chunk_bytes & (BLOCK_ALIGN_BYTES - 1) != 0 {
            return invalid(format!("chunk size {chunk_bytes} is not a positive multiple of {BLOCK_ALIGN_BYTES}"));
        }
        if blocks.is_empty() || blocks.len() > MAX_EXEC_BLOCKS {
            return invalid(format!("{} execution blocks; need 1 ..= {MAX_EXEC_BLOCKS}", blocks.len()));
        }
        let mut exec_blocks = Vec::with_capacity(blocks.len());
        let mut transfer_blocks: Vec<TransferBlock> = Vec::new();
        let mut offset = base_offset;
        for (i, (layers, payload)) in blocks.iter().enumerate() {
            let len = align_up((*payload).max(1))
                .ok_or_else(|| LayoutError::Invalid(format!("execution block {i}: {payload} bytes overflow")))?;
            let end = offset.checked_add(len).ok_or_else(|| {
                LayoutError::Invalid(format!("execution block {i}: offset {offset} + {len} overflows"))
            })?;
            let n_tb = len.div_ceil(chunk_bytes);
            if transfer_blocks.len() as u64 + n_tb > MAX_TRANSFER_BLOCKS as u64 {
                return invalid(format!("more than {MAX_TRANSFER_BLOCKS} transfer blocks; use larger chunks"));
            }
            let mut ids = Vec::with_capacity(n_tb as usize);
            let mut t = offset;
            while t < end {
                let id = transfer_blocks.len() as u32;
                let tlen = chunk_bytes.min(end - t);
                transfer_blocks.push(TransferBlock { id, exec_block: i as u32, offset: t, len: tlen, crc32c: 0 });
                ids.push(id);
                t += tlen;
            }
            exec_blocks.push(ExecBlock { id: i as u32, layers: layers.clone(), offset, len, transfer_blocks: ids });
            offset = end;
        }
        let layout = ModelLayout {
            version: MODEL_LAYOUT_VERSION,
            name: name.to_string(),
            total_bytes: offset - base_offset,
            num_layers,
            exec_blocks,
            transfer_blocks,
        };
        layout.validate()?;
        Ok(layout)
    }

    /// Checks every invariant: the version; execution blocks in id order, covering layers
    /// `[0, num_layers)` with non-empty contiguous ranges, 4 KiB-aligned, whole pages long,
    /// abutting, summing to `total_bytes`, with no arithmetic overflow; transfer blocks in id
    /// order, each in exactly one execution block, tiling it exactly.
    pub fn validate(&self) -> Result<(), LayoutError> {
        if self.version != MODEL_LAYOUT_VERSION {
            return Err(LayoutError::Version { found: self.version, supported: MODEL_LAYOUT_VERSION });
        }
        let (n_exec, n_tb) = (self.exec_blocks.len(), self.transfer_blocks.len());
        if n_exec == 0 || n_exec > MAX_EXEC_BLOCKS {
            return invalid(format!("{n_exec} execution blocks; need 1 ..= {MAX_EXEC_BLOCKS}"));
        }
        if n_tb > MAX_TRANSFER_BLOCKS {
            return invalid(format!("{n_tb} transfer blocks; at most {MAX_TRANSFER_BLOCKS}"));
        }
        for (i, t) in self.transfer_blocks.iter().enumerate() {
            if t.id as usize != i {
                return invalid(format!("transfer block at index {i} has id {}", t.id));
            }
        }
        let base = self.exec_blocks[0].offset;
        let mut next_offset = base;
        let mut next_layer = 0u32;
        let mut next_tb = 0usize;
        for (i, b) in self.exec_blocks.iter().enumerate() {
            let at = |msg: String| LayoutError::Invalid(format!("execution block {i}: {msg}"));
            if b.id as usize != i {
                return Err(at(format!("has id {}", b.id)));
            }
            if b.layers.start != next_layer || b.layers.end <= b.layers.start {
                return Err(at(format!(
                    "layers [{}, {}) do not continue the previous block at layer {next_layer} with at least one layer",
                    b.layers.start, b.layers.end
                )));
            }
            next_layer = b.layers.end;
            if b.offset != next_offset {
                return Err(at(format!("starts at byte {}, the previous block ends at {next_offset}", b.offset)));
            }
            if b.offset % BLOCK_ALIGN_BYTES != 0 || b.len == 0 || b.len % BLOCK_ALIGN_BYTES != 0 {
                return Err(at(format!(
                    "offset {} and length {} must be multiples of {BLOCK_ALIGN_BYTES}, length positive",
                    b.offset, b.len
                )));
            }
            let end = b
                .offset
                .checked_add(b.len)
                .ok_or_else(|| at(format!("offset {} + length {} overflows", b.offset, b.len)))?;
            next_offset = end;
            if b.transfer_blocks.is_empty() {
                return Err(at("has no transfer blocks".into()));
            }
            let mut t_next = b.offset;
            for (k, &id) in b.transfer_blocks.iter().enumerate() {
                if id as usize != next_tb {
                    return Err(at(format!(
                        "transfer block #{k} is {id}, expected {next_tb} (ids must be consecutive and global)"
                    )));
                }
                let t = self
                    .transfer_blocks
                    .get(id as usize)
                    .ok_or_else(|| at(format!("transfer block {id} does not exist ({n_tb} transfer blocks)")))?;
                next_tb += 1;
                if t.exec_block as usize != i {
                    return Err(at(format!("lists transfer block {id}, which names execution block {}", t.exec_block)));
                }
                if t.offset != t_next || t.len == 0 {
                    return Err(at(format!(
                        "transfer block {id} is [{}, +{}), expected to start at {t_next} with a positive length",
                        t.offset, t.len
                    )));
                }
                if t.len % BLOCK_ALIGN_BYTES != 0 {
                    return Err(at(format!(
                        "transfer block {id} length {} is not a multiple of {BLOCK_ALIGN_BYTES}",
                        t.len
                    )));
                }
                t_next = t.offset.checked_add(t.len).filter(|&e| e <= end).ok_or_else(|| {
                    at(format!("transfer block {id} [{}, +{}) runs past the block's end {end}", t.offset, t.len))
                })?;
            }
            if t_next != end {
                return Err(at(format!("transfer blocks end at {t_next}, the block at {end}")));
            }
        }
        if next_tb != n_tb {
            return invalid(format!("{} transfer blocks belong to no execution block", n_tb - next_tb));
        }
        if next_layer != self.num_layers {
            return invalid(format!(
                "execution blocks cover layers [0, {next_layer}), the model has {}",
                self.num_layers
            ));
        }
        if next_offset - base != self.total_bytes {
            return invalid(format!(
                "execution blocks hold {} bytes, total_bytes says {}",
                next_offset - base,
                self.total_bytes
            ));
        }
        Ok(())
    }

    /// Where the first execution block starts.
    pub fn data_offset(&self) -> u64 {
        self.exec_blocks.first().map_or(0, |b| b.offset)
    }

    /// One past the last byte of the last execution block (a packed file's exact length).
    pub fn end_offset(&self) -> u64 {
        self.exec_blocks.last().map_or(0, |b| b.end())
    }

    /// The transfer blocks of execution block `exec_block` (empty if there is none).
    pub fn transfer_blocks_of(&self, exec_block: usize) -> &[TransferBlock] {
        match self
            .exec_blocks
            .get(exec_block)
            .and_then(|b| Some((*b.transfer_blocks.first()?, b.transfer_blocks.len())))
        {
            Some((first, n)) => self.transfer_blocks.get(first as usize..first as usize + n).unwrap_or(&[]),
            None => &[],
        }
    }

    /// The execution block holding layer `layer`.
    pub fn exec_block_of_layer(&self, layer: u32) -> Option<usize> {
        self.exec_blocks.iter().position(|b| b.layers.contains(&layer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const K: u64 = BLOCK_ALIGN_BYTES;

    fn sample() -> ModelLayout {
        ModelLayout::new("m", 8, &[(0..3, 10_000), (3..6, 3 * K), (6..8, 1)], 4 * K, 2 * K).unwrap()
    }

    #[test]
    fn new_pads_blocks_and_tiles_transfer_blocks() {
        let l = sample();
        assert_eq!(
            l.exec_blocks.iter().map(|b| (b.offset, b.len)).collect::<Vec<_>>(),
            vec![(4 * K, 3 * K), (7 * K, 3 * K), (10 * K, K)]
        );
        assert_eq!(l.total_bytes, 7 * K);
        assert_eq!(l.end_offset(), 11 * K);
        assert_eq!(l.data_offset(), 4 * K);
        let lens: Vec<u64> = l.transfer_blocks.iter().map(|t| t.len).collect();
        assert_eq!(lens, vec![2 * K, K, 2 * K, K, K]);
        assert_eq!(l.exec_blocks[1].transfer_blocks, vec![2, 3]);
        assert_eq!(l.transfer_blocks_of(1).iter().map(|t| t.id).collect::<Vec<_>>(), vec![2, 3]);
        assert!(l.transfer_blocks_of(3).is_empty());
        assert_eq!(l.exec_block_of_layer(5), Some(1));
        assert_eq!(l.exec_block_of_layer(8), None);
    }

    #[test]
    fn serde_round_trip_keeps_the_version() {
        let l = sample();
        let text = serde_json::to_string(&l).unwrap();
        assert!(text.contains("\"version\":1"), "{text}");
        let back: ModelLayout = serde_json::from_str(&text).unwrap();
        assert_eq!(back, l);
    }

    #[test]
    fn each_broken_invariant_is_named() {
        type Mutation = Box<dyn Fn(&mut ModelLayout)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("version", Box::new(|l| l.version = 2)),
            ("has id", Box::new(|l| l.exec_blocks[1].id = 5)),
            ("layers", Box::new(|l| l.exec_blocks[1].layers = 4..6)),
            ("layers", Box::new(|l| l.exec_blocks[2].layers = 6..6)),
            ("cover layers", Box::new(|l| l.num_layers = 9)),
            ("starts at byte", Box::new(|l| l.exec_blocks[1].offset += K)),
            (
                "multiples",
                Box::new(|l| {
                    l.exec_blocks[2].len = 100;
                }),
            ),
            (
                "multiples",
                Box::new(|l| {
                    for b in &mut l.exec_blocks {
                        b.offset += 1;
                    }
                    for t in &mut l.transfer_blocks {
                        t.offset += 1;
                    }
                }),
            ),
            ("total_bytes", Box::new(|l| l.total_bytes += K)),
            ("no transfer blocks", Box::new(|l| l.exec_blocks[2].transfer_blocks.clear())),
            ("consecutive", Box::new(|l| l.exec_blocks[1].transfer_blocks = vec![3, 2])),
            ("names execution block", Box::new(|l| l.transfer_blocks[2].exec_block = 0)),
            ("expected to start", Box::new(|l| l.transfer_blocks[1].offset += K)),
            ("expected to start", Box::new(|l| l.transfer_blocks[1].len = 0)),
            ("runs past", Box::new(|l| l.transfer_blocks[1].len = 2 * K)),
            (
                "transfer blocks end",
                Box::new(|l| {
                    l.transfer_blocks[1].len = 0;
                    l.exec_blocks[0].transfer_blocks.pop();
                    for t in &mut l.transfer_blocks[2..] {
                        t.id -= 1;
                    }
                    l.transfer_blocks.remove(1);
                    for b in &mut l.exec_blocks[1..] {
                        for id in &mut b.transfer_blocks {
                            *id -= 1;
                        }
                    }
                }),
            ),
            (
                "belong to no",
                Box::new(|l| {
                    let mut t = l.transfer_blocks[4];
                    t.id = 5;
                    l.transfer_blocks.push(t);
                }),
            ),
            ("index", Box::new(|l| l.transfer_blocks[0].id = 1)),
            (
                "overflows",
                Box::new(|l| {
                    l.exec_blocks[0].offset = u64::MAX - K + 1;
                }),
            ),
            ("execution blocks", Box::new(|l| l.exec_blocks.clear())),
            (
                "not a multiple",
                Box::new(|l| {
                    l.transfer_blocks[0].len = K + 8;
                    l.transfer_blocks[1].offset = 4 * K + K + 8;
                    l.transfer_blocks[1].len = 2 * K - 8;
                }),
            ),
        ];
        for (want, mutate) in cases {
            let mut l = sample();
            mutate(&mut l);
            let e = l.validate().expect_err(want).to_string();
            assert!(e.contains(want), "expected `{want}` in: {e}");
        }
    }

    #[test]
    fn new_refuses_bad_arguments() {
        assert!(ModelLayout::new("m", 2, &[(0..2, 10)], 0, 100).is_err());
        assert!(ModelLayout::new("m", 2, &[(0..2, 10)], 0, 0).is_err());
        assert!(ModelLayout::new("m", 2, &[], 0, K).is_err());
        assert!(ModelLayout::new("m", 2, &[(0..2, 10)], 1, K).is_err(), "unaligned base");
        assert!(ModelLayout::new("m", 2, &[(0..2, u64::MAX - 10)], 0, K).is_err(), "overflow");
        assert!(ModelLayout::new("m", 2, &[(0..2, 1 << 40)], 0, K).is_err(), "too many transfer blocks");
        assert!(ModelLayout::new("m", 3, &[(0..2, 10)], 0, K).is_err(), "layers not covered");
    }

    #[test]
    fn default_chunk_follows_the_rule() {
        // Llama-2-7B: 13.5 GB in 8 blocks of ~1.7 GB: √(S·λR/3) ≈ 47 MB.
        let c = default_chunk_bytes(13_500_000_000, 8);
        assert!((45_000_000..50_000_000).contains(&c), "{c}");
        // SmolLM2-135M-sized (bf16, tied head copied): √ rule ≈ 7.4 MB, an eighth of the mean block 5.1 MB.
        let c = default_chunk_bytes(325_000_000, 8);
        assert_eq!(c, align_up(325_000_000 / 64).unwrap());
        assert_eq!(default_chunk_bytes(10_000, 8), 1 << 20, "tiny models: the 1 MiB floor");
        assert_eq!(default_chunk_bytes(u64::MAX, 1), 256 << 20, "huge models: the 256 MiB ceiling");
        // Llama-2-70B: 138 GB: √(S·λR/3) ≈ 151.7 MB, under the ceiling.
        let c = default_chunk_bytes(138_000_000_000, 64);
        assert!((151_000_000..152_000_000).contains(&c), "{c}");
        for (s, m) in [(0, 0), (1, 1), (u64::MAX, 0), (123_456_789, 99_999), (u64::MAX, usize::MAX)] {
            let c = default_chunk_bytes(s, m);
            assert!(c.checked_rem(K) == Some(0) && ((1 << 20)..=(256 << 20)).contains(&c));
        }
    }

    fn arb_blocks() -> impl Strategy<Value = (Vec<(u32, u64)>, u64, u64)> {
        (prop::collection::vec((1u32..5, 1u64..200_000), 1..12), 0u64..16, 1u64..40)
    }

    proptest! {
        #[test]
        fn built_layouts_are_valid_and_tile_exactly((blocks, base_pages, chunk_pages) in arb_blocks()) {
            let mut spec = Vec::new();
            let mut layer = 0u32;
            for (n, bytes) in &blocks {
                spec.push((layer..layer + n, *bytes));
                layer += n;
            }
            let l = ModelLayout::new("p", layer, &spec, base_pages * K, chunk_pages * K).unwrap();
            prop_assert!(l.validate().is_ok());
            let mut sum = 0;
            for (b, (_, bytes)) in l.exec_blocks.iter().zip(&blocks) {
                prop_assert!(b.len >= *bytes && b.len < bytes + K);
                let tbs = l.transfer_blocks_of(b.id as usize);
                prop_assert_eq!(tbs.iter().map(|t| t.len).sum::<u64>(), b.len);
                prop_assert!(tbs.iter().all(|t| t.len <= chunk_pages * K && t.offset % K == 0));
                prop_assert!(tbs[..tbs.len() - 1].iter().all(|t| t.len == chunk_pages * K));
                sum += b.len;
            }
            prop_assert_eq!(sum, l.total_bytes);
            let back: ModelLayout = serde_json::from_str(&serde_json::to_string(&l).unwrap()).unwrap();
            prop_assert_eq!(back, l);
        }

        #[test]
        fn any_single_field_change_is_caught_or_harmless(
            (blocks, base_pages, chunk_pages) in arb_blocks(),
            which in 0usize..6, pick in any::<prop::sample::Index>(), delta in 1u64..5000,
        ) {
            let mut spec = Vec::new();
            let mut layer = 0u32;
            for (n, bytes) in &blocks {
                spec.push((layer..layer + n, *bytes));
                layer += n;
            }
            let good = ModelLayout::new("p", layer, &spec, base_pages * K, chunk_pages * K).unwrap();
            let mut l = good.clone();
            let e = pick.index(l.exec_blocks.len());
            let t = pick.index(l.transfer_blocks.len());
            match which {
                0 => l.exec_blocks[e].offset = l.exec_blocks[e].offset.wrapping_add(delta),
                1 => l.exec_blocks[e].len = l.exec_blocks[e].len.wrapping_add(delta),
                2 => l.transfer_blocks[t].offset = l.transfer_blocks[t].offset.wrapping_add(delta),
                3 => l.transfer_blocks[t].len = l.transfer_blocks[t].len.wrapping_sub(delta),
                4 => l.exec_blocks[e].layers.end += 1,
                _ => l.total_bytes = l.total_bytes.wrapping_sub(delta),
            }
            prop_assert!(l.validate().is_err(), "mutation {which} went unnoticed");
            // crc values are data, not structure
            let mut c = good.clone();
            c.transfer_blocks[t].crc32c ^= delta as u32;
            prop_assert!(c.validate().is_ok());
        }
    }
}
