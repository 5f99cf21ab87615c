//! The packed file's preamble and header: constants, types, and the checks that turn bytes
//! into a validated header (or an error naming the file and byte offset).

use crate::config::ModelConfig;
use crate::error::{PipelineError, Result};
use kernels::DType;
use planner::{LayoutError, ModelLayout};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

pub const MAGIC: [u8; 8] = *b"FSCLPACK";
/// The file format version this code writes and reads.
pub const VERSION: u32 = 1;
pub const PREAMBLE_BYTES: usize = 32;
pub const VERSION_OFFSET: u64 = 8;
pub const FLAGS_OFFSET: u64 = 12;
pub const HEADER_LEN_OFFSET: u64 = 16;
pub const HEADER_CRC_OFFSET: u64 = 24;
pub const RESERVED_OFFSET: u64 = 28;
/// A header longer than this is refused (real ones: a few KB plus the tokenizer, a few MB).
pub const MAX_HEADER_BYTES: u64 = 256 << 20;
/// Every tensor starts at a multiple of this inside its execution block (and so in the file:
/// blocks are 4 KiB-aligned): enough for any vector load, CPU or GPU.
pub const TENSOR_ALIGN_BYTES: u64 = 256;
const MAX_TENSORS: usize = 1 << 20;
const MAX_RANK: usize = 8;

/// The JSON header (see the module documentation of `packed`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PackedHeader {
    /// The model config as a Hugging Face `config.json` object.
    pub config: serde_json::Value,
    /// `tokenizer.json` text.
    pub tokenizer: Option<String>,
    pub chat_template: Option<String>,
    pub source: SourceInfo,
    pub tensors: Vec<TensorEntry>,
    pub layout: ModelLayout,
}

/// Where a packed file came from (information only; nothing reads it back).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceInfo {
    /// `Format::as_str` of the model that was packed.
    pub format: String,
    pub path: String,
}

/// One tensor of the index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorEntry {
    pub name: String,
    /// Safetensors spelling: "F32", "BF16", "F16".
    pub dtype: String,
    pub shape: Vec<u64>,
    /// The execution block holding it.
    pub block: u32,
    /// Byte offset from the start of its execution block.
    pub offset: u64,
    pub len: u64,
}

pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "F32",
        DType::BF16 => "BF16",
        DType::F16 => "F16",
    }
}

/// The preamble's fields.
#[derive(Clone, Copy, Debug)]
pub struct Preamble {
    pub header_len: u64,
    pub header_crc: u32,
}

impl Preamble {
    pub fn encode(&self) -> [u8; PREAMBLE_BYTES] {
        let mut p = [0u8; PREAMBLE_BYTES];
        p[..8].copy_from_slice(&MAGIC);
        p[8..12].copy_from_slice(&VERSION.to_le_bytes());
        p[16..24].copy_from_slice(&self.header_len.to_le_bytes());
        p[24..28].copy_from_slice(&self.header_crc.to_le_bytes());
        p
    }
}

fn packed_err(path: &Path, offset: u64, msg: String) -> PipelineError {
    PipelineError::Packed { path: path.to_path_buf(), offset, msg }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Checks the 32-byte preamble of a `file_len`-byte file whose first bytes are `bytes`
/// (at least `PREAMBLE_BYTES` of them, or the whole file if shorter).
pub fn parse_preamble(path: &Path, bytes: &[u8], file_len: u64) -> Result<Preamble> {
    if file_len < PREAMBLE_BYTES as u64 || bytes.len() < PREAMBLE_BYTES {
        return Err(packed_err(
            path,
            0,
            format!("file is {file_len} bytes, shorter than the {PREAMBLE_BYTES}-byte preamble (truncated?)"),
        ));
    }
    if bytes[..8] != MAGIC {
        return Err(packed_err(
            path,
            0,
            format!(
                "magic {:?} is not {:?}: not a faascale packed file",
                String::from_utf8_lossy(&bytes[..8]),
                "FSCLPACK"
            ),
        ));
    }
    let version = u32_at(bytes, 8);
    if version != VERSION {
        return Err(packed_err(
            path,
            VERSION_OFFSET,
            format!("unknown format version {version} (this build reads version {VERSION})"),
        ));
    }
    let flags = u32_at(bytes, 12);
    if flags != 0 {
        return Err(packed_err(
            path,
            FLAGS_OFFSET,
            format!("flags {flags:#x} are not 0 (written by a newer faascale?)"),
        ));
    }
    let reserved = u32_at(bytes, 28);
    if reserved != 0 {
        return Err(packed_err(path, RESERVED_OFFSET, format!("reserved field {reserved:#x} is not 0")));
    }
    let header_len = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    if header_len == 0 || header_len > MAX_HEADER_BYTES {
        return Err(packed_err(
            path,
            HEADER_LEN_OFFSET,
            format!("header length {header_len} is not in 1 ..= {MAX_HEADER_BYTES}"),
        ));
    }
    if header_len > file_len - PREAMBLE_BYTES as u64 {
        return Err(packed_err(
            path,
            HEADER_LEN_OFFSET,
            format!("header length {header_len} runs past the end of the {file_len}-byte file (truncated?)"),
        ));
    }
    Ok(Preamble { header_len, header_crc: u32_at(bytes, 24) })
}

/// A header checked against itself and the file's size.
pub struct ValidHeader {
    pub header: PackedHeader,
    pub config: ModelConfig,
    /// Tensor name → index in `header.tensors`.
    pub index: HashMap<String, usize>,
    pub dtypes: Vec<DType>,
}

/// Parses and validates the header: `bytes` holds at least the preamble and the header.
pub fn parse_header(path: &Path, bytes: &[u8], file_len: u64) -> Result<ValidHeader> {
    let pre = parse_preamble(path, bytes, file_len)?;
    let start = PREAMBLE_BYTES as u64;
    let end = start + pre.header_len; // ≤ file_len, checked by parse_preamble
    let header_bytes = bytes.get(start as usize..end as usize).ok_or_else(|| {
        packed_err(
            path,
            start,
            format!("only {} of the file's bytes are available, the header needs {end}", bytes.len()),
        )
    })?;
    let crc = crc32c::crc32c(header_bytes);
    if crc != pre.header_crc {
        return Err(packed_err(
            path,
            start,
            format!(
                "header checksum mismatch: crc32c {crc:#010x}, the preamble says {:#010x} (corrupt header)",
                pre.header_crc
            ),
        ));
    }
    let header: PackedHeader = serde_json::from_slice(header_bytes)
        .map_err(|e| packed_err(path, start, format!("header is not a valid packed-file header: {e}")))?;
    let at_header = |msg: String| packed_err(path, start, msg);

    // ---- the block table ----
    let layout = &header.layout;
    layout.validate().map_err(|e| match e {
        LayoutError::Version { .. } => at_header(format!("{e}")),
        LayoutError::Invalid(_) => at_header(format!("block table: {e}")),
    })?;
    let data_offset = layout.data_offset();
    if data_offset < end {
        return Err(at_header(format!(
            "the first execution block starts at byte {data_offset}, inside the header (which ends at {end})"
        )));
    }
    let data_end = layout.end_offset();
    if data_end != file_len {
        return Err(packed_err(
            path,
            data_end.min(file_len),
            format!(
                "the block table ends at byte {data_end} but the file is {file_len} bytes ({})",
                if file_len < data_end { "truncated?" } else { "trailing bytes" }
            ),
        ));
    }

    // ---- the config ----
    let cfg_text = serde_json::to_string(&header.config).expect("a Value serialises");
    let config = ModelConfig::from_json_str(&cfg_text, Path::new("config"))
        .map_err(|e| at_header(format!("header config: {e}")))?;
    if config.num_hidden_layers as u64 != layout.num_layers as u64 {
        return Err(at_header(format!(
            "the config has {} layers, the block table {}",
            config.num_hidden_layers, layout.num_layers
        )));
    }

    // ---- the tensor index ----
    if header.tensors.len() > MAX_TENSORS {
        return Err(at_header(format!("{} tensors, at most {MAX_TENSORS}", header.tensors.len())));
    }
    let mut index = HashMap::with_capacity(header.tensors.len());
    let mut dtypes = Vec::with_capacity(header.tensors.len());
    for (i, t) in header.tensors.iter().enumerate() {
        let bad = |msg: String| at_header(format!("tensor `{}`: {msg}", t.name));
        if index.insert(t.name.clone(), i).is_some() {
            return Err(bad("listed twice".into()));
        }
        let dtype = crate::safetensors::dtype_from_name(&t.dtype)
            .ok_or_else(|| bad(format!("dtype `{}` is not F32, BF16 or F16", t.dtype)))?;
        dtypes.push(dtype);
        if t.shape.len() > MAX_RANK {
            return Err(bad(format!("rank {} exceeds {MAX_RANK}", t.shape.len())));
        }
        let want = t
            .shape
            .iter()
            .try_fold(dtype.size_bytes() as u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad(format!("shape {:?} overflows", t.shape)))?;
        if want != t.len {
            return Err(bad(format!(
                "shape {:?} of {} needs {want} bytes, the index says {}",
                t.shape, t.dtype, t.len
            )));
        }
        let block = layout
            .exec_blocks
            .get(t.block as usize)
            .ok_or_else(|| bad(format!("block {} does not exist ({} blocks)", t.block, layout.exec_blocks.len())))?;
        match t.offset.checked_add(t.len) {
            Some(e) if e <= block.len => {}
            _ => {
                return Err(bad(format!(
                    "bytes [{}, +{}) of block {} run past its {} bytes",
                    t.offset, t.len, t.block, block.len
                )))
            }
        }
        if let Some(layer) = layer_of(&t.name) {
            if !block.layers.contains(&layer) {
                return Err(bad(format!(
                    "layer {layer} belongs to the block holding layers [{}, {}), but the tensor is in block {} (layers [{}, {}))",
                    layout.exec_block_of_layer(layer).map_or(0, |b| layout.exec_blocks[b].layers.start),
                    layout.exec_block_of_layer(layer).map_or(0, |b| layout.exec_blocks[b].layers.end),
                    t.block,
                    block.layers.start,
                    block.layers.end
                )));
            }
        }
    }
    Ok(ValidHeader { header, config, index, dtypes })
}

/// `i` of a tensor named `model.layers.{i}.…`.
pub fn layer_of(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("model.layers.")?;
    rest.split('.').next()?.parse().ok()
}
