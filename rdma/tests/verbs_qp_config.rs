//! Queue-pair settings are bounded before any verbs call: no infinite retry, no infinite timeout,
//! queue depths within the device's limit.

use rdma::verbs::{random_psn, QpConfig, VerbsError};

fn refused(c: QpConfig, max_qp_wr: u32, needle: &str) {
    match c.validate(max_qp_wr) {
        Err(VerbsError::InvalidArgument { call: "ibv_create_qp", what }) => {
            assert!(what.contains(needle), "{what:?} does not mention {needle:?}")
        }
        other => panic!("{c:?} with max_qp_wr {max_qp_wr}: expected a refusal, got {other:?}"),
    }
}

#[test]
fn defaults_are_valid_and_bounded() {
    let d = QpConfig::default();
    d.validate(16384).unwrap();
    assert!(d.rnr_retry < 7 && d.timeout > 0, "defaults retry forever: {d:?}");
}

#[test]
fn out_of_range_settings_are_refused() {
    let d = QpConfig::default();
    refused(QpConfig { max_send_wr: 0, ..d }, 1024, "max_send_wr");
    refused(QpConfig { max_send_wr: 2048, ..d }, 1024, "max_send_wr");
    refused(QpConfig { max_recv_wr: 2048, ..d }, 1024, "max_recv_wr");
    refused(QpConfig { timeout: 0, ..d }, 1024, "timeout");
    refused(QpConfig { timeout: 32, ..d }, 1024, "timeout");
    refused(QpConfig { retry_cnt: 8, ..d }, 1024, "retry_cnt");
    refused(QpConfig { rnr_retry: 7, ..d }, 1024, "rnr_retry");
    refused(QpConfig { min_rnr_timer: 0, ..d }, 1024, "min_rnr_timer");
    refused(QpConfig { hop_limit: 0, ..d }, 1024, "hop_limit");
}

#[test]
fn psns_are_24_bit_and_vary() {
    let psns: Vec<u32> = (0..64).map(|_| random_psn()).collect();
    assert!(psns.iter().all(|&p| p <= 0x00ff_ffff));
    let first = psns[0];
    assert!(psns.iter().any(|&p| p != first), "64 random PSNs all equal {first:#x}");
}
