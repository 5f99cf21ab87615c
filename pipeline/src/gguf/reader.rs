//! The GGUF container: header, metadata key/values, tensor infos, and the data section.
//!
//! Layout (little-endian throughout; versions 2 and 3, which differ from v1 by 64-bit counts):
//!
//! ```text
//! magic "GGUF" | version u32 | tensor_count u64 | kv_count u64
//! kv_count × (key: string, value_type u32, value)
//! tensor_count × (name: string, n_dims u32, ne[n_dims] u64, ggml_type u32, offset u64)
//! padding to `general.alignment` (default 32) | tensor data
//! string = len u64 | len bytes of UTF-8
//! ```
//!
//! Everything is checked against the file size before it is read or allocated: a count or length
//! that the remaining bytes cannot hold is an error, not an allocation. Tensor data ranges must lie
//! inside the file, be aligned, and not overlap. Every error names the file and the byte offset of
//! the field that is wrong.

use super::dequant::GgmlType;
use crate::error::{PipelineError, Result};
use crate::tensor::SharedBytes;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const MAGIC: &[u8; 4] = b"GGUF";
/// The alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
pub const MAX_DIMS: u32 = 4;
/// Largest alignment accepted (a power of two): more is a corrupt value, not a real file.
const MAX_ALIGNMENT: u64 = 1 << 20;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 24;

/// The type tag of a metadata value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    pub fn from_u32(v: u32) -> Option<Self> {
        use ValueType::*;
        Some(match v {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    pub fn code(self) -> u32 {
        use ValueType::*;
        match self {
            U8 => 0,
            I8 => 1,
            U16 => 2,
            I16 => 3,
            U32 => 4,
            I32 => 5,
            F32 => 6,
            Bool => 7,
            String => 8,
            Array => 9,
            U64 => 10,
            I64 => 11,
            F64 => 12,
        }
    }

    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "uint8",
            I8 => "int8",
            U16 => "uint16",
            I16 => "int16",
            U32 => "uint32",
            I32 => "int32",
            F32 => "float32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "uint64",
            I64 => "int64",
            F64 => "float64",
        }
    }

    /// Bytes of one value of a fixed-size type; a string's minimum (its length field).
    fn min_size(self) -> usize {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// A metadata value. Arrays hold values of one type; arrays of arrays are refused.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(ValueType, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(..) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Any integer type, if its value is non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::U8(v) => Some(v as i64),
            Value::U16(v) => Some(v as i64),
            Value::U32(v) => Some(v as i64),
            Value::U64(v) => i64::try_from(v).ok(),
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => None,
        }
    }

    /// Any float or integer type, as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<(ValueType, &[Value])> {
        match self {
            Value::Array(t, items) => Some((*t, items)),
            _ => None,
        }
    }

    /// A short description for error messages: the type and, for arrays, the element type.
    pub fn type_desc(&self) -> String {
        match self {
            Value::Array(t, items) => format!("array of {} {}", items.len(), t.name()),
            v => v.value_type().name().to_string(),
        }
    }
}

/// One metadata key/value and where its value starts in the file.
#[derive(Clone, Debug)]
pub struct MetaEntry {
    pub key: String,
    pub value: Value,
    /// Byte offset of the value's type tag.
    pub offset: u64,
}

/// One tensor's description from the tensor-info table.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `ne[0]` is the fastest-moving dimension (the row length of a matrix).
    pub ne: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
    /// Bytes of data, from the type's block size.
    pub nbytes: u64,
    /// Byte offset of this tensor's info entry in the file (its name's length field).
    pub info_offset: u64,
}

impl TensorInfo {
    /// The shape in row-major (PyTorch, Hugging Face) order: `ne` reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.ne.iter().rev().map(|&d| d as usize).collect()
    }

    pub fn numel(&self) -> u64 {
        self.ne.iter().product()
    }
}

/// A parsed GGUF file over a memory map (or an in-memory buffer).
pub struct GgufFile {
    path: PathBuf,
    bytes: SharedBytes,
    pub version: u32,
    pub metadata: Vec<MetaEntry>,
    meta_index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    pub alignment: u64,
    /// Absolute byte offset where the data section starts.
    pub data_offset: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

fn gguf_err(path: &Path, offset: u64, msg: impl Into<String>) -> PipelineError {
    PipelineError::Gguf { path: path.to_path_buf(), offset, msg: msg.into() }
}

impl GgufFile {
    /// Memory-maps and parses `path`. Tensor data is not read.
    pub fn open(path: &Path) -> Result<Self> {
        Self::parse(crate::tensor::map_file(path)?, path)
    }

    /// Parses a GGUF image held in memory; `path` names it in errors.
    pub fn from_bytes(bytes: Vec<u8>, path: &Path) -> Result<Self> {
        Self::parse(Arc::new(bytes), path)
    }

    pub fn parse(bytes: SharedBytes, path: &Path) -> Result<Self> {
        let parsed = Parser { buf: (*bytes).as_ref(), pos: 0, path }.parse()?;
        let (version, metadata, tensors, alignment, data_offset) = parsed;
        let meta_index = metadata.iter().enumerate().map(|(i, e)| (e.key.clone(), i)).collect();
        let tensor_index = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(GgufFile {
            path: path.to_path_buf(),
            bytes,
            version,
            metadata,
            meta_index,
            tensors,
            tensor_index,
            alignment,
            data_offset,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file_len(&self) -> u64 {
        (*self.bytes).as_ref().len() as u64
    }

    pub fn get(&self, key: &str) -> Option<&MetaEntry> {
        self.meta_index.get(key).map(|&i| &self.metadata[i])
    }

    pub fn value(&self, key: &str) -> Option<&Value> {
        self.get(key).map(|e| &e.value)
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw bytes of a tensor's data (checked to lie inside the file at parse time).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + t.offset) as usize;
        &(*self.bytes).as_ref()[start..start + t.nbytes as usize]
    }

    /// An error about this file at `offset`.
    pub fn err(&self, offset: u64, msg: impl Into<String>) -> PipelineError {
        gguf_err(&self.path, offset, msg)
    }

    /// An error about metadata `key`: at its value's offset when present, at the end of the
    /// metadata otherwise.
    pub fn key_err(&self, key: &str, msg: impl Into<String>) -> PipelineError {
        let offset = self.get(key).map(|e| e.offset).unwrap_or(self.metadata_end());
        self.err(offset, format!("metadata `{key}`: {}", msg.into()))
    }

    /// Offset just past the metadata (the start of the tensor-info table).
    pub fn metadata_end(&self) -> u64 {
        self.tensors.first().map(|t| t.info_offset).unwrap_or(self.data_offset)
    }

    /// A required string value.
    pub fn req_str(&self, key: &str) -> Result<&str> {
        match self.value(key) {
            Some(Value::String(s)) => Ok(s),
            Some(v) => Err(self.key_err(key, format!("expected a string, got {}", v.type_desc()))),
            None => Err(self.key_err(key, "missing")),
        }
    }

    /// An optional non-negative integer value, at most `max`.
    pub fn opt_uint(&self, key: &str, max: u64) -> Result<Option<u64>> {
        match self.value(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n <= max => Ok(Some(n)),
                Some(n) => Err(self.key_err(key, format!("{n} is out of range (at most {max})"))),
                None => Err(self.key_err(key, format!("expected a non-negative integer, got {}", v.type_desc()))),
            },
        }
    }

    /// An optional number (integer or float).
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.value(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.key_err(key, format!("expected a number, got {}", v.type_desc()))),
        }
    }
}

struct Parser<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

type Parsed = (u32, Vec<MetaEntry>, Vec<TensorInfo>, u64, u64);

impl<'a> Parser<'a> {
    fn err(&self, offset: usize, msg: impl Into<String>) -> PipelineError {
        gguf_err(self.path, offset as u64, msg)
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// `n` bytes at the cursor, or a truncation error naming `what`.
    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(
                self.pos,
                format!(
                    "truncated: {} needs {n} bytes, only {} remain in the {}-byte file",
                    what(),
                    self.remaining(),
                    self.buf.len()
                ),
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }

    /// A length-prefixed UTF-8 string; `what` names it in errors.
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let at = self.pos;
        let len = self.u64(&|| format!("the length of {}", what()))?;
        if len > self.remaining() as u64 {
            return Err(self.err(
                at,
                format!(
                    "{} has length {len}, but only {} bytes remain in the {}-byte file",
                    what(),
                    self.remaining(),
                    self.buf.len()
                ),
            ));
        }
        let start = self.pos;
        let bytes = self.take(len as usize, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(e) => Err(self.err(
                start + e.valid_up_to(),
                format!("{} is not valid UTF-8 (invalid byte at string offset {})", what(), e.valid_up_to()),
            )),
        }
    }

    fn parse(mut self) -> Result<Parsed> {
        let header = || "the header".to_string();
        if self.buf.len() < HEADER_LEN {
            return Err(self.err(
                self.buf.len(),
                format!("truncated header: the file has {} bytes, a GGUF header needs {HEADER_LEN}", self.buf.len()),
            ));
        }
        let magic = self.take(4, &header)?;
        if magic != MAGIC {
            return Err(self.err(0, format!("bad magic {magic:02x?} (expected \"GGUF\"); not a GGUF file")));
        }
        let version = self.u32(&header)?;
        match version {
            2 | 3 => {}
            1 => return Err(self.err(4, "GGUF version 1 is not supported (32-bit counts); only versions 2 and 3")),
            v => return Err(self.err(4, format!("unsupported GGUF version {v} (supported: 2, 3)"))),
        }
        let tensor_count = self.u64(&header)?;
        let kv_count = self.u64(&header)?;
        // Minimum sizes: a kv is a key (8) + type (4) + 1 byte; a tensor info 8 + 4 + 4 + 8.
        if kv_count > (self.remaining() / 13) as u64 {
            return Err(self.err(
                16,
                format!("metadata count {kv_count} cannot fit in the {} bytes after the header", self.remaining()),
            ));
        }
        if tensor_count > (self.remaining() / 24) as u64 {
            return Err(self.err(
                8,
                format!("tensor count {tensor_count} cannot fit in the {} bytes after the header", self.remaining()),
            ));
        }

        let mut metadata = Vec::with_capacity(kv_count as usize);
        let mut seen: HashMap<String, usize> = HashMap::new();
        for i in 0..kv_count {
            let key_at = self.pos;
            let key = self.string(&|| format!("the key of metadata entry {i}"))?;
            if seen.contains_key(&key) {
                return Err(self.err(key_at, format!("duplicate metadata key `{key}`")));
            }
            let value_at = self.pos;
            let ty = self.u32(&|| format!("the type of metadata `{key}`"))?;
            let ty = ValueType::from_u32(ty)
                .ok_or_else(|| self.err(value_at, format!("metadata `{key}` has unknown value type {ty}")))?;
            let value = self.value(ty, &key, false)?;
            seen.insert(key.clone(), metadata.len());
            metadata.push(MetaEntry { key, value, offset: value_at as u64 });
        }

        let alignment = match seen.get("general.alignment").map(|&i| &metadata[i]) {
            None => DEFAULT_ALIGNMENT,
            Some(e) => match e.value {
                Value::U32(a) if a != 0 && a.is_power_of_two() && (a as u64) <= MAX_ALIGNMENT => a as u64,
                ref v => {
                    return Err(self.err(
                        e.offset as usize,
                        format!(
                        "metadata `general.alignment` must be a uint32 power of two up to {MAX_ALIGNMENT}, got {v:?}"
                    ),
                    ))
                }
            },
        };

        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(tensor_count as usize);
        let mut names: HashMap<String, usize> = HashMap::new();
        for i in 0..tensor_count {
            let info_at = self.pos;
            let name = self.string(&|| format!("the name of tensor {i}"))?;
            if names.contains_key(&name) {
                return Err(self.err(info_at, format!("duplicate tensor name `{name}`")));
            }
            let dims_at = self.pos;
            let n_dims = self.u32(&|| format!("the dimension count of tensor `{name}`"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(
                    self.err(dims_at, format!("tensor `{name}` has {n_dims} dimensions (1..={MAX_DIMS} allowed)"))
                );
            }
            let mut ne = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                ne.push(self.u64(&|| format!("dimension {d} of tensor `{name}`"))?);
            }
            let numel = ne.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).filter(|&n| n < (1u64 << 62));
            let Some(numel) = numel else {
                return Err(self.err(
                    dims_at + 4,
                    format!("tensor `{name}` has dimensions {ne:?}, whose element count overflows"),
                ));
            };
            let type_at = self.pos;
            let code = self.u32(&|| format!("the type of tensor `{name}`"))?;
            let ggml_type = GgmlType::from_u32(code)
                .ok_or_else(|| self.err(type_at, format!("tensor `{name}` has unknown ggml type {code}")))?;
            let (block_elems, block_bytes) = ggml_type.block();
            if ne[0] % block_elems as u64 != 0 {
                return Err(self.err(
                    dims_at + 4,
                    format!("tensor `{name}` of type {} has row length {} that is not a multiple of its block size {block_elems}", ggml_type.name(), ne[0]),
                ));
            }
            let Some(nbytes) = (numel / block_elems as u64).checked_mul(block_bytes as u64) else {
                return Err(
                    self.err(dims_at + 4, format!("tensor `{name}` has dimensions {ne:?}, whose byte size overflows"))
                );
            };
            let offset_at = self.pos;
            let offset = self.u64(&|| format!("the data offset of tensor `{name}`"))?;
            if offset % alignment != 0 {
                return Err(self.err(
                    offset_at,
                    format!("tensor `{name}` data offset {offset} is not a multiple of the alignment {alignment}"),
                ));
            }
            names.insert(name.clone(), tensors.len());
            tensors.push(TensorInfo { name, ne, ggml_type, offset, nbytes, info_offset: info_at as u64 });
        }

        let end_of_infos = self.pos as u64;
        let data_offset = end_of_infos.div_ceil(alignment) * alignment;
        let file_len = self.buf.len() as u64;
        if !tensors.is_empty() && data_offset > file_len {
            return Err(self.err(
                self.pos,
                format!(
                    "truncated: the tensor data section starts at byte {data_offset} but the file has {file_len} bytes"
                ),
            ));
        }
        let data_len = file_len.saturating_sub(data_offset);
        // Every range inside the data section, and no two overlapping.
        let mut order: Vec<usize> = (0..tensors.len()).collect();
        order.sort_by_key(|&i| (tensors[i].offset, tensors[i].nbytes));
        let mut prev: Option<usize> = None;
        for &i in &order {
            let t = &tensors[i];
            let end = t.offset.checked_add(t.nbytes);
            if !matches!(end, Some(e) if e <= data_len) {
                return Err(self.err(
                    (t.info_offset) as usize,
                    format!(
                        "tensor `{}` data (bytes {}..{} of the data section, {} {} values) lies outside the file: the data section has {data_len} bytes (starts at byte {data_offset})",
                        t.name,
                        t.offset,
                        t.offset as u128 + t.nbytes as u128,
                        t.numel(),
                        t.ggml_type.name()
                    ),
                ));
            }
            if let Some(p) = prev {
                let pt = &tensors[p];
                if pt.offset + pt.nbytes > t.offset && t.nbytes > 0 {
                    return Err(self.err(
                        t.info_offset as usize,
                        format!(
                            "tensor `{}` data (bytes {}..{}) overlaps tensor `{}` (bytes {}..{}) in the data section",
                            t.name,
                            t.offset,
                            t.offset + t.nbytes,
                            pt.name,
                            pt.offset,
                            pt.offset + pt.nbytes
                        ),
                    ));
                }
            }
            if t.nbytes > 0 {
                prev = Some(i);
            }
        }
        Ok((version, metadata, tensors, alignment, data_offset))
    }

    /// A value of type `ty` for `key`; `in_array` refuses nested arrays.
    fn value(&mut self, ty: ValueType, key: &str, in_array: bool) -> Result<Value> {
        let what = || format!("the value of metadata `{key}`");
        Ok(match ty {
            ValueType::U8 => Value::U8(self.take(1, &what)?[0]),
            ValueType::I8 => Value::I8(self.take(1, &what)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.take(2, &what)?.try_into().unwrap())),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.take(2, &what)?.try_into().unwrap())),
            ValueType::U32 => Value::U32(self.u32(&what)?),
            ValueType::I32 => Value::I32(self.u32(&what)? as i32),
            ValueType::F32 => Value::F32(f32::from_bits(self.u32(&what)?)),
            ValueType::U64 => Value::U64(self.u64(&what)?),
            ValueType::I64 => Value::I64(self.u64(&what)? as i64),
            ValueType::F64 => Value::F64(f64::from_bits(self.u64(&what)?)),
            ValueType::Bool => {
                let at = self.pos;
                match self.take(1, &what)?[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => return Err(self.err(at, format!("metadata `{key}`: bool value {b} is neither 0 nor 1"))),
                }
            }
            ValueType::String => Value::String(self.string(&what)?),
            ValueType::Array => {
                let at = self.pos;
                if in_array {
                    return Err(self.err(at, format!("metadata `{key}`: arrays of arrays are not supported")));
                }
                let et = self.u32(&|| format!("the element type of metadata `{key}`"))?;
                let et = ValueType::from_u32(et)
                    .ok_or_else(|| self.err(at, format!("metadata `{key}`: array has unknown element type {et}")))?;
                if et == ValueType::Array {
                    return Err(self.err(at, format!("metadata `{key}`: arrays of arrays are not supported")));
                }
                let count_at = self.pos;
                let count = self.u64(&|| format!("the element count of metadata `{key}`"))?;
                if count > (self.remaining() / et.min_size()) as u64 {
                    return Err(self.err(
                        count_at,
                        format!(
                            "metadata `{key}`: array of {count} {} cannot fit in the {} bytes that remain",
                            et.name(),
                            self.remaining()
                        ),
                    ));
                }
                let mut items = Vec::with_capacity(count as usize);
                for j in 0..count {
                    if et == ValueType::String {
                        items.push(Value::String(self.string(&|| format!("element {j} of metadata `{key}`"))?));
                    } else {
                        items.push(self.value(et, key, true)?);
                    }
                }
                Value::Array(et, items)
            }
        })
    }
}
