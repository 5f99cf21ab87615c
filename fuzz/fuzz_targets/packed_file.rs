//! Any byte string as a packed model file: opening and verifying either fails cleanly or
//! yields a layout that validates and tensors that lie inside their present blocks.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let Ok(f) = pipeline::packed::PackedFile::from_bytes(Path::new("fuzz"), Arc::new(data.to_vec())) else { return };
    assert!(f.layout().validate().is_ok());
    let _ = f.mark_all_present();
});
