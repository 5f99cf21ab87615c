//! Any byte string as a hidden-state message: decode fails cleanly, or re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((rows, width, values)) = pipeline::wire::decode_hidden(data) {
        let again = pipeline::wire::encode_hidden(rows, width, &values).expect("decoded message re-encodes");
        assert_eq!(again, data);
    }
});
