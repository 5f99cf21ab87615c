//! The one error type of the `pipeline` crate.
//!
//! Every variant names what was wrong and where: the file, the tensor, the byte offset, the
//! token position. Nothing in this crate panics on bad input; it returns one of these.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug)]
pub enum PipelineError {
    /// Reading or mapping a file failed.
    Io { path: PathBuf, op: &'static str, source: std::io::Error },
    /// A JSON file (config, index, tokenizer) did not parse.
    Json { path: PathBuf, msg: String },
    /// A config field is missing, has the wrong type, or an unsupported value.
    Config { path: PathBuf, field: String, msg: String },
    /// A safetensors file is malformed (truncated, header out of bounds, offsets wrong).
    Safetensors { path: PathBuf, offset: u64, msg: String },
    /// A tensor has a dtype the engine does not compute with.
    UnsupportedDtype { path: PathBuf, tensor: String, dtype: String },
    /// A tensor the architecture needs is not in any shard.
    MissingTensor { tensor: String, dir: PathBuf },
    /// A tensor's shape disagrees with config.json.
    TensorShape { path: PathBuf, tensor: String, expected: Vec<usize>, got: Vec<usize> },
    /// A token id is not below the vocabulary size.
    TokenOutOfRange { token: u32, vocab_size: usize, index: usize },
    /// A sequence would grow past the model's context length.
    ContextOverflow { seq_id: u64, needed: usize, max: usize },
    /// The tokenizer failed to load or to encode/decode.
    Tokenizer { path: PathBuf, msg: String },
    /// A batch handed to a stage is malformed.
    Batch { msg: String },
    /// A resource bound (sequences in the KV cache, batch rows) would be exceeded.
    Limit { what: &'static str, limit: usize, requested: usize },
    /// Hidden states on the wire are malformed.
    Wire { offset: usize, msg: String },
    /// Invalid arguments to an engine call (sampling parameters, block ranges).
    Invalid { what: &'static str, msg: String },
    /// A compute kernel rejected its arguments (an engine bug if it happens).
    Kernel(kernels::KernelError),
    /// A GPU driver call or CUDA kernel launch failed: `op` names what the engine was doing,
    /// `msg` carries the driver's error name or the launcher's refusal.
    Gpu { op: &'static str, msg: String },
    /// A packed block file is malformed: preamble, header, tensor index or block table.
    Packed { path: PathBuf, offset: u64, msg: String },
    /// A transfer block of a packed file does not match its crc32c.
    ChecksumMismatch {
        path: PathBuf,
        exec_block: usize,
        transfer_block: usize,
        offset: u64,
        len: u64,
        expected: u32,
        got: u32,
    },
    /// A tensor was asked for whose execution block has not arrived (or not been verified).
    BlockAbsent { path: PathBuf, exec_block: usize, tensor: String },
    /// A GGUF file is malformed or holds something the engine does not support.
    Gguf { path: PathBuf, offset: u64, msg: String },
}

pub type Result<T> = std::result::Result<T, PipelineError>;

impl fmt::Display for PipelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use PipelineError::*;
        match self {
            Io { path, op, source } => write!(f, "{}: {op} failed: {source}", path.display()),
            Json { path, msg } => write!(f, "{}: invalid JSON: {msg}", path.display()),
            Config { path, field, msg } => write!(f, "{}: field `{field}`: {msg}", path.display()),
            Safetensors { path, offset, msg } => {
                write!(f, "{}: malformed safetensors at byte {offset}: {msg}", path.display())
            }
            UnsupportedDtype { path, tensor, dtype } => write!(
                f,
                "{}: tensor `{tensor}` has dtype {dtype}; supported: F32, F16, BF16",
                path.display()
            ),
            MissingTensor { tensor, dir } => {
                write!(f, "{}: tensor `{tensor}` not found in the checkpoint", dir.display())
            }
            TensorShape { path, tensor, expected, got } => write!(
                f,
                "{}: tensor `{tensor}` has shape {got:?}, config.json implies {expected:?}",
                path.display()
            ),
            TokenOutOfRange { token, vocab_size, index } => write!(
                f,
                "token id {token} at index {index} is out of range (vocab_size {vocab_size})"
            ),
            ContextOverflow { seq_id, needed, max } => write!(
                f,
                "sequence {seq_id} needs {needed} positions but the context length is {max}"
            ),
            Tokenizer { path, msg } => write!(f, "{}: tokenizer: {msg}", path.display()),
            Batch { msg } => write!(f, "bad batch: {msg}"),
            Limit { what, limit, requested } => {
                write!(f, "{what}: {requested} requested, limit is {limit}")
            }
            Wire { offset, msg } => write!(f, "hidden-state message at byte {offset}: {msg}"),
            Invalid { what, msg } => write!(f, "invalid {what}: {msg}"),
            Kernel(e) => write!(f, "kernel: {e}"),
            Gpu { op, msg } => write!(f, "gpu ({op}): {msg}"),
            Packed { path, offset, msg } => write!(f, "{}: malformed packed file at byte {offset}: {msg}", path.display()),
            ChecksumMismatch { path, exec_block, transfer_block, offset, len, expected, got } => write!(
                f,
                "{}: checksum mismatch in execution block {exec_block}, transfer block {transfer_block} (bytes {offset}..{}): crc32c {got:#010x}, expected {expected:#010x}",
                path.display(),
                offset + len
            ),
            BlockAbsent { path, exec_block, tensor } => write!(
                f,
                "{}: tensor `{tensor}` is in execution block {exec_block}, which is not present yet",
                path.display()
            ),
            Gguf { path, offset, msg } => write!(f, "{}: GGUF at byte {offset}: {msg}", path.display()),
        }
    }
}

impl std::error::Error for PipelineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PipelineError::Io { source, .. } => Some(source),
            PipelineError::Kernel(e) => Some(e),
            _ => None,
        }
    }
}

impl From<kernels::KernelError> for PipelineError {
    fn from(e: kernels::KernelError) -> Self {
        PipelineError::Kernel(e)
    }
}
