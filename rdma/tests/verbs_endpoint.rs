//! The endpoint codec that crosses the bootstrap channel: exact format, round trips, and every
//! kind of bad input refused with the field named.

use proptest::prelude::*;
use rdma::verbs::endpoint::{ENDPOINT_BYTES, MAX_24_BIT};
use rdma::verbs::{sys, VerbsEndpoint, VerbsError};

fn roce() -> VerbsEndpoint {
    VerbsEndpoint {
        qpn: 0x00_1234,
        psn: 0xab_cdef,
        lid: 0,
        gid: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 7],
        gid_index: 3,
        mtu: sys::IBV_MTU_4096,
        roce: true,
        rkey: 0xdead_beef,
        addr: 0x7f00_0000_1000,
        len: 1 << 30,
    }
}

fn ib() -> VerbsEndpoint {
    VerbsEndpoint { lid: 17, gid: [0; 16], gid_index: 0, roce: false, mtu: sys::IBV_MTU_2048, ..roce() }
}

fn field_of(r: Result<VerbsEndpoint, VerbsError>) -> &'static str {
    match r {
        Err(VerbsError::BadEndpoint { field, .. }) => field,
        other => panic!("expected BadEndpoint, got {other:?}"),
    }
}

#[test]
fn format_is_pinned() {
    let b = roce().to_bytes();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    assert_eq!(
        hex,
        concat!(
            "46535645",
            "0100",
            "0100",
            "34120000",
            "efcdab00",
            "0000",
            "03",
            "05",
            "efbeadde",
            "00000000000000000000ffff0a000007",
            "0010000000",
            "7f0000",
            "0000004000000000"
        )
    );
    assert_eq!(b.len(), ENDPOINT_BYTES);
}

#[test]
fn round_trips() {
    for e in [roce(), ib(), VerbsEndpoint { qpn: MAX_24_BIT, psn: MAX_24_BIT, addr: 0, len: 0, rkey: 0, ..roce() }] {
        assert_eq!(VerbsEndpoint::from_bytes(&e.to_bytes()).unwrap(), e);
    }
}

#[test]
fn truncated_and_overlong_input_is_refused() {
    let b = roce().to_bytes();
    for n in 0..ENDPOINT_BYTES {
        let err = VerbsEndpoint::from_bytes(&b[..n]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{n} bytes: {err}");
        assert!(matches!(err, VerbsError::BadEndpoint { field: "length", .. }));
    }
    let mut long = b.to_vec();
    long.push(0);
    assert_eq!(field_of(VerbsEndpoint::from_bytes(&long)), "length");
}

#[test]
fn each_bad_field_is_named() {
    let good = roce().to_bytes();
    let with = |f: &dyn Fn(&mut [u8; ENDPOINT_BYTES])| {
        let mut b = good;
        f(&mut b);
        VerbsEndpoint::from_bytes(&b)
    };
    assert_eq!(field_of(with(&|b| b[0] = b'X')), "magic");
    assert_eq!(field_of(with(&|b| b[4] = 2)), "version");
    assert_eq!(field_of(with(&|b| b[6] = 0x03)), "flags");
    assert_eq!(field_of(with(&|b| b[11] = 1)), "qpn");
    assert_eq!(field_of(with(&|b| b[15] = 1)), "psn");
    assert_eq!(field_of(with(&|b| b[19] = 0)), "mtu");
    assert_eq!(field_of(with(&|b| b[19] = 6)), "mtu");
    assert_eq!(field_of(with(&|b| b[24..40].fill(0))), "gid");
    assert_eq!(field_of(with(&|b| b[40..56].fill(0xff))), "len");
    // InfiniBand (flag clear) needs a LID.
    assert_eq!(field_of(with(&|b| b[6] = 0)), "lid");
    assert_eq!(field_of(VerbsEndpoint::from_bytes(&[0xAA; ENDPOINT_BYTES])), "magic");
}

#[test]
fn mtu_codes() {
    assert_eq!(VerbsEndpoint::mtu_bytes(sys::IBV_MTU_256), Some(256));
    assert_eq!(VerbsEndpoint::mtu_bytes(sys::IBV_MTU_4096), Some(4096));
    assert_eq!(VerbsEndpoint::mtu_bytes(0), None);
    assert_eq!(VerbsEndpoint::mtu_bytes(6), None);
}

proptest! {
    /// Arbitrary bytes never panic, and whatever is accepted re-encodes to the same bytes.
    #[test]
    fn arbitrary_bytes_are_refused_or_canonical(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
        if let Ok(e) = VerbsEndpoint::from_bytes(&bytes) {
            prop_assert_eq!(&e.to_bytes()[..], &bytes[..]);
        }
    }

    /// Mutating one byte of a valid encoding gives either an error or a different valid endpoint
    /// that round-trips.
    #[test]
    fn single_byte_mutations(pos in 0..ENDPOINT_BYTES, val in any::<u8>()) {
        let mut b = roce().to_bytes();
        b[pos] = val;
        match VerbsEndpoint::from_bytes(&b) {
            Ok(e) => prop_assert_eq!(e.to_bytes(), b),
            Err(VerbsError::BadEndpoint { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
    }
}
