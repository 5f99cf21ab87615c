//! Any byte string as a safetensors file: parsing either fails cleanly or yields tensors
//! whose byte ranges lie inside the input and match their shapes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let Ok(f) = pipeline::safetensors::SafetensorsFile::from_bytes(Path::new("fuzz"), Arc::new(data.to_vec())) else {
        return;
    };
    for (name, info) in &f.tensors {
        assert!(info.begin <= info.end && info.end <= data.len(), "{name}");
        if let Some(Ok(t)) = f.tensor(name) {
            assert_eq!(t.bytes().len(), t.numel() * t.dtype.size_bytes());
        }
    }
});
