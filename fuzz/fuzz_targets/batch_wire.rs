//! Any byte string as a batch or token message (`pipeline::wire`): decode fails cleanly, or the
//! message re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = pipeline::wire::decode_batch(data) {
        assert_eq!(pipeline::wire::encode_batch(&b).expect("decoded batch re-encodes"), data);
    }
    if let Ok((mb, tokens)) = pipeline::wire::decode_tokens(data) {
        assert_eq!(pipeline::wire::encode_tokens(mb, &tokens).expect("decoded tokens re-encode"), data);
    }
});
