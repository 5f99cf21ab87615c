//! Any text as config.json: parsing fails with an error or yields a config whose derived sizes are consistent.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(c) = pipeline::ModelConfig::from_json_str(text, Path::new("fuzz/config.json")) {
        assert_eq!(c.num_attention_heads % c.num_key_value_heads, 0);
        assert_eq!(c.head_dim % 2, 0);
        assert_eq!(c.rope_inv_freq().len(), c.head_dim / 2);
    }
});
