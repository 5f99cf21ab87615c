//! Memory-mapped safetensors files, single or sharded, and a writer.
//!
//! Format: 8-byte little-endian header length N, N bytes of JSON
//! `{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__"?: {...}}`,
//! then the data; offsets are relative to the end of the header. Every field is checked
//! against the file's real size before any tensor byte is touched.

use crate::error::{PipelineError, Result};
use crate::tensor::{SharedBytes, Tensor};
use kernels::DType;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Header JSON larger than this is refused (real headers are well under a few MB).
const MAX_HEADER_BYTES: u64 = 100 << 20;
const MAX_RANK: usize = 8;

/// One tensor's entry in a header.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub dtype_name: String,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub begin: usize,
    pub end: usize,
}

/// A memory-mapped safetensors file with its validated header.
pub struct SafetensorsFile {
    pub path: PathBuf,
    bytes: SharedBytes,
    pub tensors: BTreeMap<String, TensorInfo>,
}

pub fn dtype_from_name(name: &str) -> Option<DType> {
    match name {
        "F32" => Some(DType::F32),
        "BF16" => Some(DType::BF16),
        "F16" => Some(DType::F16),
        _ => None,
    }
}

fn dtype_size_by_name(name: &str) -> Option<usize> {
    Some(match name {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

impl SafetensorsFile {
    /// Maps `path` read-only and validates its header. No tensor data is copied.
    pub fn open(path: &Path) -> Result<Self> {
        Self::from_bytes(path, crate::tensor::map_file(path)?)
    }

    /// Validates a safetensors image already in memory.
    pub fn from_bytes(path: &Path, bytes: SharedBytes) -> Result<Self> {
        let err = |offset: u64, msg: String| PipelineError::Safetensors { path: path.to_path_buf(), offset, msg };
        let data: &[u8] = (*bytes).as_ref();
        let total = data.len() as u64;
        if total < 8 {
            return Err(err(0, format!("file is {total} bytes, shorter than the 8-byte header length")));
        }
        let header_len = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
        if header_len > MAX_HEADER_BYTES {
            return Err(err(0, format!("header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit")));
        }
        if header_len > total - 8 {
            return Err(err(
                0,
                format!("header length {header_len} runs past the end of the {total}-byte file (truncated?)"),
            ));
        }
        let data_start = 8 + header_len as usize;
        let header: Value = serde_json::from_slice(&data[8..data_start])
            .map_err(|e| err(8, format!("header is not valid JSON: {e}")))?;
        let obj = header.as_object().ok_or_else(|| err(8, "header is not a JSON object".into()))?;
        let data_len = data.len() - data_start;
        let mut tensors = BTreeMap::new();
        for (name, entry) in obj {
            if name == "__metadata__" {
                continue;
            }
            let bad = |msg: String| err(8, format!("tensor `{name}`: {msg}"));
            let dtype_name =
                entry.get("dtype").and_then(Value::as_str).ok_or_else(|| bad("missing dtype".into()))?.to_string();
            let elem = dtype_size_by_name(&dtype_name).ok_or_else(|| bad(format!("unknown dtype `{dtype_name}`")))?;
            let shape: Vec<usize> = entry
                .get("shape")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("missing shape".into()))?
                .iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect::<Option<_>>()
                .ok_or_else(|| bad("shape is not a list of non-negative integers".into()))?;
            if shape.len() > MAX_RANK {
                return Err(bad(format!("rank {} exceeds {MAX_RANK}", shape.len())));
            }
            let offsets = entry
                .get("data_offsets")
                .and_then(Value::as_array)
                .filter(|a| a.len() == 2)
                .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
                .ok_or_else(|| bad("data_offsets must be [begin, end]".into()))?;
            let (begin, end) = offsets;
            if begin > end || end > data_len as u64 {
                return Err(err(
                    data_start as u64 + begin,
                    format!("tensor `{name}`: data_offsets [{begin}, {end}] outside the {data_len}-byte data section (truncated?)"),
                ));
            }
            let numel = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
            let want = numel.and_then(|n| n.checked_mul(elem));
            if want != Some((end - begin) as usize) {
                return Err(err(
                    data_start as u64 + begin,
                    format!(
                        "tensor `{name}`: shape {shape:?} of {dtype_name} needs {want:?} bytes, data_offsets span {}",
                        end - begin
                    ),
                ));
            }
            tensors.insert(
                name.clone(),
                TensorInfo { dtype_name, shape, begin: data_start + begin as usize, end: data_start + end as usize },
            );
        }
        Ok(SafetensorsFile { path: path.to_path_buf(), bytes, tensors })
    }

    /// A view of tensor `name` (no copy), for the dtypes the engine computes with.
    pub fn tensor(&self, name: &str) -> Option<Result<Tensor>> {
        let info = self.tensors.get(name)?;
        let Some(dtype) = dtype_from_name(&info.dtype_name) else {
            return Some(Err(PipelineError::UnsupportedDtype {
                path: self.path.clone(),
                tensor: name.to_string(),
                dtype: info.dtype_name.clone(),
            }));
        };
        Some(Ok(Tensor::from_shared(self.bytes.clone(), info.begin, info.end - info.begin, dtype, info.shape.clone())))
    }
}

/// All tensors of a checkpoint directory: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`.
pub struct Checkpoint {
    pub dir: PathBuf,
    files: Vec<SafetensorsFile>,
    by_name: HashMap<String, usize>,
}

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let shard_names: Vec<String> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(|source| PipelineError::Io {
                path: index_path.clone(),
                op: "read",
                source,
            })?;
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| PipelineError::Json { path: index_path.clone(), msg: e.to_string() })?;
            let map = v.get("weight_map").and_then(Value::as_object).ok_or_else(|| PipelineError::Config {
                path: index_path.clone(),
                field: "weight_map".into(),
                msg: "missing or not an object".into(),
            })?;
            let mut names: Vec<String> = Vec::new();
            for (tensor, file) in map {
                let file = file.as_str().ok_or_else(|| PipelineError::Config {
                    path: index_path.clone(),
                    field: format!("weight_map.{tensor}"),
                    msg: "expected a file name".into(),
                })?;
                if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                    return Err(PipelineError::Config {
                        path: index_path.clone(),
                        field: format!("weight_map.{tensor}"),
                        msg: format!("shard `{file}` must be a plain file name in the checkpoint directory"),
                    });
                }
                if !names.iter().any(|n| n == file) {
                    names.push(file.to_string());
                }
            }
            names.sort();
            names
        } else if single.exists() {
            vec!["model.safetensors".into()]
        } else {
            return Err(PipelineError::Io {
                path: single,
                op: "open",
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no model.safetensors or model.safetensors.index.json",
                ),
            });
        };
        let mut files = Vec::with_capacity(shard_names.len());
        let mut by_name = HashMap::new();
        for (i, name) in shard_names.iter().enumerate() {
            let f = SafetensorsFile::open(&dir.join(name))?;
            for tensor in f.tensors.keys() {
                if by_name.insert(tensor.clone(), i).is_some() {
                    return Err(PipelineError::Safetensors {
                        path: f.path.clone(),
                        offset: 8,
                        msg: format!("tensor `{tensor}` appears in more than one shard"),
                    });
                }
            }
            files.push(f);
        }
        Ok(Checkpoint { dir: dir.to_path_buf(), files, by_name })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Tensor `name` with its shape checked against `expected`.
    pub fn get(&self, name: &str, expected: &[usize]) -> Result<Tensor> {
        let file = self
            .by_name
            .get(name)
            .map(|&i| &self.files[i])
            .ok_or_else(|| PipelineError::MissingTensor { tensor: name.to_string(), dir: self.dir.clone() })?;
        let t = file.tensor(name).expect("indexed tensor exists")?;
        if t.shape != expected {
            return Err(PipelineError::TensorShape {
                path: file.path.clone(),
                tensor: name.to_string(),
                expected: expected.to_vec(),
                got: t.shape.clone(),
            });
        }
        Ok(t)
    }

    /// Every tensor's name and dtype name, for inspection.
    pub fn tensor_names(&self) -> impl Iterator<Item = (&str, &TensorInfo)> {
        self.files.iter().flat_map(|f| f.tensors.iter().map(|(n, i)| (n.as_str(), i)))
    }
}

/// Writes tensors `(name, dtype, shape, bytes)` as one safetensors file.
pub fn write(path: &Path, tensors: &[(String, DType, Vec<usize>, Vec<u8>)]) -> Result<()> {
    use std::io::Write;
    let io = |op, source| PipelineError::Io { path: path.to_path_buf(), op, source };
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, dtype, shape, bytes) in tensors {
        let dtype_name = match dtype {
            DType::F32 => "F32",
            DType::BF16 => "BF16",
            DType::F16 => "F16",
        };
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype_name, "shape": shape, "data_offsets": [offset, offset + bytes.len()]}),
        );
        offset += bytes.len();
    }
    let mut text = serde_json::to_string(&Value::Object(header)).expect("serialisable");
    while (8 + text.len()) % 8 != 0 {
        text.push(' ');
    }
    let file = std::fs::File::create(path).map_err(|e| io("create", e))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    w.write_all(&(text.len() as u64).to_le_bytes()).map_err(|e| io("write", e))?;
    w.write_all(text.as_bytes()).map_err(|e| io("write", e))?;
    for (_, _, _, bytes) in tensors {
        w.write_all(bytes).map_err(|e| io("write", e))?;
    }
    w.flush().map_err(|e| io("write", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(header: &str, data_len: usize) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend(std::iter::repeat_n(0u8, data_len));
        v
    }

    fn open(bytes: Vec<u8>) -> Result<SafetensorsFile> {
        SafetensorsFile::from_bytes(Path::new("t.safetensors"), std::sync::Arc::new(bytes))
    }

    #[test]
    fn good_file_parses() {
        let f = open(image(
            r#"{"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}, "__metadata__": {"x": "y"}}"#,
            24,
        ))
        .unwrap();
        let t = f.tensor("a").unwrap().unwrap();
        assert_eq!(t.shape, vec![2, 3]);
        assert_eq!(t.bytes().len(), 24);
    }

    #[test]
    fn bad_files_are_refused_with_location() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![1, 2, 3], "shorter than"),
            ((1u64 << 40).to_le_bytes().to_vec(), "exceeds"),
            (
                {
                    let mut v = image("{}", 0);
                    v[0] = 200;
                    v
                },
                "runs past",
            ),
            (image("{nope", 0), "not valid JSON"),
            (image(r#"{"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}"#, 20), "outside"),
            (image(r#"{"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}}"#, 24), "needs"),
            (image(r#"{"a": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 1]}}"#, 1), "unknown dtype"),
            (image(r#"{"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}"#, 4), "shape"),
            (
                image(r#"{"a": {"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 4]}}"#, 4),
                "needs",
            ),
            (image(r#"{"a": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}"#, 8), "outside"),
        ];
        for (bytes, want) in cases {
            let e = open(bytes).err().expect("must fail");
            assert!(e.to_string().contains(want), "{e} should mention {want}");
            assert!(e.to_string().contains("t.safetensors"), "{e}");
        }
    }

    #[test]
    fn unsupported_dtype_is_named_on_use() {
        let f = open(image(r#"{"a": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}"#, 8)).unwrap();
        let e = f.tensor("a").unwrap().unwrap_err();
        assert!(e.to_string().contains("I64") && e.to_string().contains("`a`"), "{e}");
    }

    #[test]
    fn writer_round_trips() {
        let dir = std::env::temp_dir().join(format!("faascale-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("w.safetensors");
        let data: Vec<u8> = (0..12u8).collect();
        write(&p, &[("x".into(), DType::BF16, vec![2, 3], data.clone())]).unwrap();
        let f = SafetensorsFile::open(&p).unwrap();
        assert_eq!(f.tensor("x").unwrap().unwrap().bytes(), &data[..]);
        std::fs::remove_dir_all(&dir).ok();
    }
}
