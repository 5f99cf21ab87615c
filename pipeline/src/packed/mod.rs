//! The packed block format: a model regrouped into execution blocks, each one contiguous,
//! 4 KiB-aligned byte range cut into crc32c-checked transfer blocks, so that multicast,
//! memory tiers and the GPU loader move blocks as plain byte ranges (DESIGN.md, "The model
//! as blocks"). `faascale pack` writes it, `faascale inspect` shows it.
//!
//! # File layout (version 1; all integers little-endian)
//!
//! ```text
//! offset  size  field
//!      0     8  magic "FSCLPACK"
//!      8     4  format version (u32) = 1
//!     12     4  flags (u32), must be 0
//!     16     8  header length H in bytes (u64)
//!     24     4  crc32c of the H header bytes (u32)
//!     28     4  reserved (u32), must be 0
//!     32     H  header: one JSON object, UTF-8 (below)
//!   32+H     …  zero padding up to the first execution block (4 KiB-aligned)
//!      D     …  execution block 0, 1, …, B−1: abutting, each a whole number of 4 KiB pages
//!               (zero-padded), so the file ends exactly where the last block ends
//! ```
//!
//! The header object:
//! - `config`: the model config as a Hugging Face `config.json` object (canonical form written
//!   from `ModelConfig`, checked at pack time to parse back to the identical config);
//! - `tokenizer`: the `tokenizer.json` text, or null; `chat_template`: a string, or null;
//! - `source`: `{format, path}` the file was packed from (information only);
//! - `tensors`: the tensor index, a list of `{name, dtype ("F32"|"BF16"|"F16"), shape, block,
//!   offset, len}` where `offset` is relative to the start of execution block `block` and
//!   `len` = product(shape) × dtype size;
//! - `layout`: the `planner::ModelLayout` (its own `version`): execution blocks with their
//!   layer ranges and absolute byte ranges, and transfer blocks with absolute byte ranges and
//!   the crc32c of their bytes (padding included).
//!
//! Block 0 holds `model.embed_tokens.weight` and its layers; block i the tensors of layers
//! [⌊i·L/B⌋, ⌊(i+1)·L/B⌋) (as `pipeline::BlockLayout` cuts them); the last block also
//! `model.norm.weight` and `lm_head.weight` — for a tied model a copy of the embedding, so
//! every block stands alone. Tensors keep the source's dtype and start 256-byte aligned.
//!
//! Why JSON for the header: it is read once per load, is a few KB plus the tokenizer (which is
//! JSON already), is readable with standard tools, and the layout type is the planner's serde
//! type, so the transport and planner read the same bytes without a second codec. The fixed
//! binary preamble in front gives the header's exact length and checksum, so a reader knows
//! how much to read (and that it is intact) before parsing anything.
//!
//! # Reading
//!
//! `open(path)` maps the file, checks the preamble, the header checksum, every invariant of
//! the layout and the tensor index against the file's size, then the crc32c of every transfer
//! block, and returns a `Model` (format `Packed`) whose tensors are zero-copy views of the
//! mapping. `PackedFile::open_header` does the same except the block checksums: blocks count
//! as absent until `mark_present` (or `mark_transfer_present` for each of their transfer
//! blocks) verifies them, and the `WeightSource` refuses tensors of absent blocks, naming the
//! block — so a `Stage` over blocks [a, b) can be built as soon as those blocks have arrived
//! (execute-while-load). Every malformed input is an error naming the file and byte offset.

mod config_json;
mod format;
mod reader;
mod tensors;
mod writer;

pub use config_json::config_to_json;
pub use format::{
    PackedHeader, SourceInfo, TensorEntry, FLAGS_OFFSET, HEADER_CRC_OFFSET, HEADER_LEN_OFFSET, MAGIC, MAX_HEADER_BYTES,
    PREAMBLE_BYTES, RESERVED_OFFSET, TENSOR_ALIGN_BYTES, VERSION, VERSION_OFFSET,
};
pub use reader::{is_packed_file, open, PackedFile};
pub use tensors::{model_tensors, TensorSpec};
pub use writer::{pack, PackProgress, PackSummary};

/// crc32c (Castagnoli, hardware accelerated where the CPU has it) of `bytes`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}
