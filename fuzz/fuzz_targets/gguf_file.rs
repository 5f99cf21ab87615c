//! Any byte string as a GGUF file: parsing, then building the model (config, tokenizer,
//! dequantized tensors), either fails cleanly or succeeds; never a panic or an overread.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(f) = pipeline::gguf::reader::GgufFile::from_bytes(data.to_vec(), Path::new("fuzz.gguf")) else { return };
    let opts = pipeline::gguf::GgufOptions { threads: 1, ..Default::default() };
    let _ = pipeline::gguf::model_from_file(&f, opts);
});
