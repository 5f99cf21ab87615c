//! A small GGUF writer, for tests, fuzz seeds and tools: metadata of every type, tensors given
//! as raw bytes of any ggml type (so corrupt files can be made on purpose), and simple
//! quantizers. It writes what llama.cpp writes: version 3, data aligned to `general.alignment`
//! (32 unless set), tensors in the order given.

use super::dequant::GgmlType;
use super::reader::{Value, ValueType};

#[derive(Clone, Debug)]
pub struct WriterTensor {
    pub name: String,
    /// ggml order (`ne[0]` fastest).
    pub ne: Vec<u64>,
    pub ggml_type: u32,
    pub data: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct GgufWriter {
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<WriterTensor>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        GgufWriter { version: 3, metadata: Vec::new(), tensors: Vec::new() }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_str(out, s),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Array(t, items) => {
            out.extend_from_slice(&t.code().to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                put_value(out, it);
            }
        }
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn kv(&mut self, key: &str, value: Value) -> &mut Self {
        self.metadata.push((key.to_string(), value));
        self
    }

    pub fn kv_str(&mut self, key: &str, s: &str) -> &mut Self {
        self.kv(key, Value::String(s.to_string()))
    }

    pub fn kv_u32(&mut self, key: &str, x: u32) -> &mut Self {
        self.kv(key, Value::U32(x))
    }

    pub fn kv_f32(&mut self, key: &str, x: f32) -> &mut Self {
        self.kv(key, Value::F32(x))
    }

    pub fn kv_strings(&mut self, key: &str, items: &[&str]) -> &mut Self {
        self.kv(key, Value::Array(ValueType::String, items.iter().map(|s| Value::String(s.to_string())).collect()))
    }

    pub fn kv_i32s(&mut self, key: &str, items: &[i32]) -> &mut Self {
        self.kv(key, Value::Array(ValueType::I32, items.iter().map(|&x| Value::I32(x)).collect()))
    }

    pub fn kv_f32s(&mut self, key: &str, items: &[f32]) -> &mut Self {
        self.kv(key, Value::Array(ValueType::F32, items.iter().map(|&x| Value::F32(x)).collect()))
    }

    /// A tensor from raw bytes; `ne` in ggml order. Nothing is checked.
    pub fn tensor_raw(&mut self, name: &str, ggml_type: u32, ne: &[u64], data: Vec<u8>) -> &mut Self {
        self.tensors.push(WriterTensor { name: name.to_string(), ne: ne.to_vec(), ggml_type, data });
        self
    }

    /// A tensor of `values` (row-major, Hugging Face `shape`) stored as `ty` (F32, F16, BF16,
    /// Q8_0, Q4_0 or Q4_1).
    pub fn tensor(&mut self, name: &str, ty: GgmlType, shape: &[usize], values: &[f32]) -> &mut Self {
        assert_eq!(shape.iter().product::<usize>(), values.len());
        let ne: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let data = quantize(ty, values);
        self.tensor_raw(name, ty.code(), &ne, data)
    }

    fn alignment(&self) -> u64 {
        self.metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .filter(|a| a.is_power_of_two() && *a <= 1 << 20)
            .unwrap_or(super::reader::DEFAULT_ALIGNMENT)
    }

    /// The file image. Tensor data is laid out in order, each at the next aligned offset
    /// (`general.alignment` when it is a power of two up to 1 MiB, else 32).
    pub fn to_bytes(&self) -> Vec<u8> {
        let align = self.alignment();
        let mut out = Vec::new();
        out.extend_from_slice(super::reader::MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut out, k);
            out.extend_from_slice(&v.value_type().code().to_le_bytes());
            put_value(&mut out, v);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
            for d in &t.ne {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ggml_type.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.data.len() as u64).div_ceil(align) * align;
        }
        let data_start = (out.len() as u64).div_ceil(align) * align;
        out.resize(data_start as usize, 0);
        for (t, off) in self.tensors.iter().zip(offsets) {
            out.resize((data_start + off) as usize, 0);
            out.extend_from_slice(&t.data);
        }
        out
    }
}

fn f16_bytes(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_bits().to_le_bytes()
}

/// `values` in type `ty` (ggml's reference quantizers for Q8_0, Q4_0, Q4_1; round to nearest
/// for F16/BF16). `values.len()` must be a multiple of the block size.
pub fn quantize(ty: GgmlType, values: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    match ty {
        GgmlType::F32 => values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        GgmlType::F16 => values.iter().for_each(|v| out.extend_from_slice(&f16_bytes(*v))),
        GgmlType::BF16 => {
            values.iter().for_each(|v| out.extend_from_slice(&half::bf16::from_f32(*v).to_bits().to_le_bytes()))
        }
        GgmlType::Q8_0 => {
            for b in values.chunks_exact(32) {
                let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16_bytes(d));
                out.extend(b.iter().map(|v| ((v * id).round() as i8) as u8));
            }
        }
        GgmlType::Q4_0 => {
            for b in values.chunks_exact(32) {
                // the value of largest magnitude, with its sign, maps to -8
                let max = b.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16_bytes(d));
                let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
                for j in 0..16 {
                    out.push(q(b[j]) | (q(b[j + 16]) << 4));
                }
            }
        }
        GgmlType::Q4_1 => {
            for b in values.chunks_exact(32) {
                let min = b.iter().fold(f32::INFINITY, |m, &v| m.min(v));
                let max = b.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16_bytes(d));
                out.extend_from_slice(&f16_bytes(min));
                let q = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 15) as u8;
                for j in 0..16 {
                    out.push(q(b[j]) | (q(b[j + 16]) << 4));
                }
            }
        }
        other => panic!("quantize: {other} is not supported"),
    }
    out
}
