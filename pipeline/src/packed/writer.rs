//! `pack`: writes any `Model` as a packed block file, block by block.
//!
//! Memory stays bounded: tensors are views of the source (an mmap for safetensors) copied
//! through one 8 MiB write buffer, and checksums are computed as the bytes stream past. The
//! file is written under a temporary name in the destination directory and renamed into
//! place only once complete and synced, so a reader never sees a half-written file.

use super::config_json::config_to_json;
use super::format::{dtype_name, PackedHeader, Preamble, SourceInfo, TensorEntry, PREAMBLE_BYTES, TENSOR_ALIGN_BYTES};
use super::tensors::{model_tensors, LM_HEAD};
use crate::blocks::BlockLayout;
use crate::config::ModelConfig;
use crate::error::{PipelineError, Result};
use crate::model::Model;
use planner::{default_chunk_bytes, ModelLayout, BLOCK_ALIGN_BYTES};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Reported after each execution block is written.
#[derive(Clone, Debug)]
pub struct PackProgress {
    /// The block just written.
    pub block: usize,
    pub num_blocks: usize,
    /// Bytes of execution blocks written so far, and in all.
    pub bytes_done: u64,
    pub total_bytes: u64,
    pub elapsed_s: f64,
}

/// What `pack` wrote.
#[derive(Clone, Debug)]
pub struct PackSummary {
    pub path: PathBuf,
    pub num_blocks: usize,
    pub num_transfer_blocks: usize,
    pub chunk_bytes: u64,
    pub tensors: usize,
    /// Bytes of all execution blocks (what multicast moves).
    pub data_bytes: u64,
    pub header_bytes: u64,
    /// The whole file.
    pub file_bytes: u64,
    pub seconds: f64,
    /// `file_bytes` / `seconds`, in 10⁶ bytes per second.
    pub mb_per_s: f64,
    pub layout: ModelLayout,
}

/// Removes the temporary file unless the write completed.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl Fn(std::io::Error) -> PipelineError + 'a {
    move |source| PipelineError::Io { path: path.to_path_buf(), op, source }
}

fn invalid(msg: String) -> PipelineError {
    PipelineError::Invalid { what: "pack", msg }
}

fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

/// Checksums transfer blocks as an execution block's bytes stream past.
struct BlockCrc<'a> {
    lens: &'a [u64],
    crcs: Vec<u32>,
    crc: u32,
    left: u64,
}

impl<'a> BlockCrc<'a> {
    fn new(lens: &'a [u64]) -> Self {
        BlockCrc { lens, crcs: Vec::with_capacity(lens.len()), crc: 0, left: lens[0] }
    }
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = (self.left.min(bytes.len() as u64)) as usize;
            self.crc = crc32c::crc32c_append(self.crc, &bytes[..take]);
            self.left -= take as u64;
            bytes = &bytes[take..];
            if self.left == 0 {
                self.crcs.push(self.crc);
                self.crc = 0;
                self.left = self.lens.get(self.crcs.len()).copied().unwrap_or(0);
                assert!(self.left > 0 || bytes.is_empty(), "more bytes than the block's transfer blocks hold");
            }
        }
    }
}

static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// Writes `n` zero bytes.
fn write_zeros(w: &mut impl Write, crc: &mut BlockCrc, mut n: u64) -> std::io::Result<()> {
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        w.write_all(&ZEROS[..k])?;
        crc.feed(&ZEROS[..k]);
        n -= k as u64;
    }
    Ok(())
}

/// Packs `model` into `out` as `num_blocks` execution blocks cut into transfer blocks of
/// `chunk_bytes` (a positive multiple of 4 KiB; `None`: `planner::default_chunk_bytes`).
/// `progress` is called after each execution block. Overwrites `out` atomically.
pub fn pack(
    model: &Model,
    out: &Path,
    num_blocks: usize,
    chunk_bytes: Option<u64>,
    progress: &mut dyn FnMut(&PackProgress),
) -> Result<PackSummary> {
    let t0 = Instant::now();
    let cfg: &ModelConfig = &model.config;
    let blocks = BlockLayout::new(cfg.num_hidden_layers, num_blocks)?;
    let specs = model_tensors(cfg, &blocks, model.weights.contains(LM_HEAD));

    // ---- pass 1: each tensor's dtype and size, and its place in its block ----
    let mut entries: Vec<TensorEntry> = Vec::with_capacity(specs.len());
    let mut payload = vec![0u64; num_blocks]; // bytes used in each block so far
    for s in &specs {
        let t = model.weights.tensor(&s.source_name, &s.shape)?;
        let len = t.bytes().len() as u64;
        if len != (t.numel() * t.dtype.size_bytes()) as u64 {
            return Err(invalid(format!(
                "tensor `{}` holds {len} bytes for shape {:?} of {:?}",
                s.source_name, s.shape, t.dtype
            )));
        }
        let offset = round_up(payload[s.block], TENSOR_ALIGN_BYTES);
        payload[s.block] = offset + len;
        entries.push(TensorEntry {
            name: s.name.clone(),
            dtype: dtype_name(t.dtype).into(),
            shape: s.shape.iter().map(|&d| d as u64).collect(),
            block: s.block as u32,
            offset,
            len,
        });
    }
    let chunk = match chunk_bytes {
        Some(c) if c > 0 && c % BLOCK_ALIGN_BYTES == 0 => c,
        Some(c) => return Err(invalid(format!("chunk size {c} is not a positive multiple of {BLOCK_ALIGN_BYTES}"))),
        None => default_chunk_bytes(payload.iter().sum(), num_blocks),
    };
    let block_specs: Vec<(std::ops::Range<u32>, u64)> = (0..num_blocks)
        .map(|b| {
            let r = blocks.block_layers(b);
            (r.start as u32..r.end as u32, payload[b])
        })
        .collect();

    // ---- the header, with room reserved for the checksums ----
    let config = config_to_json(cfg);
    let back = ModelConfig::from_json_str(&config.to_string(), Path::new("config"))?;
    if back != *cfg {
        return Err(invalid(format!("the config does not survive a JSON round trip: {cfg:?} became {back:?}")));
    }
    let tokenizer = model.tokenizer.as_ref().map(|t| t.to_json()).transpose()?;
    let name = model
        .path
        .file_stem()
        .or_else(|| model.path.file_name())
        .map_or_else(|| "model".to_string(), |n| n.to_string_lossy().into_owned());
    let mut header = PackedHeader {
        config,
        tokenizer,
        chat_template: model.chat_template.clone(),
        source: SourceInfo { format: model.format.as_str().into(), path: model.path.display().to_string() },
        tensors: entries,
        layout: ModelLayout::new(&name, cfg.num_hidden_layers as u32, &block_specs, BLOCK_ALIGN_BYTES, chunk)
            .map_err(|e| invalid(e.to_string()))?,
    };
    // The header holds block offsets, which depend on where the data starts, which depends on
    // the header's length: iterate to a fixed point (offsets only grow, so this settles in a
    // step or two). Checksums are reserved at their widest (u32::MAX) and filled in at the end.
    let mut data_offset = BLOCK_ALIGN_BYTES;
    for _ in 0..16 {
        header.layout = ModelLayout::new(&name, cfg.num_hidden_layers as u32, &block_specs, data_offset, chunk)
            .map_err(|e| invalid(e.to_string()))?;
        for t in &mut header.layout.transfer_blocks {
            t.crc32c = u32::MAX;
        }
        let len = serde_json::to_vec(&header).expect("header serialises").len() as u64;
        let need = round_up(PREAMBLE_BYTES as u64 + len, BLOCK_ALIGN_BYTES);
        if need <= data_offset {
            break;
        }
        data_offset = need;
    }
    if header.layout.data_offset() != data_offset {
        return Err(invalid("the header's size did not settle".into()));
    }
    let layout = header.layout.clone();

    // ---- pass 2: stream the blocks ----
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let file_name = out.file_name().ok_or_else(|| invalid(format!("{} has no file name", out.display())))?;
    let tmp =
        TempFile { path: dir.join(format!(".{}.tmp{}", file_name.to_string_lossy(), std::process::id())), keep: false };
    let file = std::fs::File::create(&tmp.path).map_err(io_err(&tmp.path, "create"))?;
    let mut w = BufWriter::with_capacity(8 << 20, file);
    w.seek(SeekFrom::Start(data_offset)).map_err(io_err(&tmp.path, "seek"))?;
    let mut crcs: Vec<u32> = Vec::with_capacity(layout.transfer_blocks.len());
    let mut done = 0u64;
    let mut next_entry = 0;
    for (b, eb) in layout.exec_blocks.iter().enumerate() {
        let lens: Vec<u64> = layout.transfer_blocks_of(b).iter().map(|t| t.len).collect();
        let mut crc = BlockCrc::new(&lens);
        let mut pos = 0u64;
        while next_entry < header.tensors.len() && header.tensors[next_entry].block as usize == b {
            let e = &header.tensors[next_entry];
            let s = &specs[next_entry];
            let t = model.weights.tensor(&s.source_name, &s.shape)?;
            if t.bytes().len() as u64 != e.len || dtype_name(t.dtype) != e.dtype {
                return Err(invalid(format!("tensor `{}` changed between reads of the source", s.source_name)));
            }
            write_zeros(&mut w, &mut crc, e.offset - pos).map_err(io_err(&tmp.path, "write"))?;
            w.write_all(t.bytes()).map_err(io_err(&tmp.path, "write"))?;
            crc.feed(t.bytes());
            pos = e.offset + e.len;
            next_entry += 1;
        }
        write_zeros(&mut w, &mut crc, eb.len - pos).map_err(io_err(&tmp.path, "write"))?;
        assert_eq!(crc.crcs.len(), lens.len(), "every transfer block of block {b} checksummed");
        crcs.extend_from_slice(&crc.crcs);
        done += eb.len;
        progress(&PackProgress {
            block: b,
            num_blocks,
            bytes_done: done,
            total_bytes: layout.total_bytes,
            elapsed_s: t0.elapsed().as_secs_f64(),
        });
    }
    assert_eq!(next_entry, header.tensors.len(), "tensors are listed block by block");

    // ---- the header with the real checksums, then the preamble ----
    header.layout = layout;
    for (t, c) in header.layout.transfer_blocks.iter_mut().zip(&crcs) {
        t.crc32c = *c;
    }
    let header_bytes = serde_json::to_vec(&header).expect("header serialises");
    assert!(PREAMBLE_BYTES as u64 + header_bytes.len() as u64 <= data_offset, "header fits the room reserved for it");
    let pre = Preamble { header_len: header_bytes.len() as u64, header_crc: crc32c::crc32c(&header_bytes) };
    w.seek(SeekFrom::Start(0)).map_err(io_err(&tmp.path, "seek"))?;
    w.write_all(&pre.encode()).map_err(io_err(&tmp.path, "write"))?;
    w.write_all(&header_bytes).map_err(io_err(&tmp.path, "write"))?;
    let file = w.into_inner().map_err(|e| PipelineError::Io {
        path: tmp.path.clone(),
        op: "write",
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io_err(&tmp.path, "sync"))?;
    let file_bytes = file.metadata().map_err(io_err(&tmp.path, "stat"))?.len();
    if file_bytes != header.layout.end_offset() {
        return Err(invalid(format!("wrote {file_bytes} bytes, the block table says {}", header.layout.end_offset())));
    }
    drop(file);
    std::fs::rename(&tmp.path, out).map_err(io_err(out, "rename temporary file to"))?;
    let mut tmp = tmp;
    tmp.keep = true;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all(); // make the rename durable where the filesystem allows it
    }
    let seconds = t0.elapsed().as_secs_f64();
    Ok(PackSummary {
        path: out.to_path_buf(),
        num_blocks,
        num_transfer_blocks: header.layout.transfer_blocks.len(),
        chunk_bytes: chunk,
        tensors: header.tensors.len(),
        data_bytes: header.layout.total_bytes,
        header_bytes: header_bytes.len() as u64,
        file_bytes,
        seconds,
        mb_per_s: file_bytes as f64 / 1e6 / seconds.max(1e-9),
        layout: header.layout,
    })
}
