//! The loopback test bed: every node is 127.0.0.1 with its own port, no namespaces, no privileges needed.
//! Runs everywhere, including where `testbed_netns` skips.

mod testbed_support;

use std::net::{IpAddr, Ipv4Addr};

use rdma::testbed::Testbed;
use testbed_support::{run_flows, HELPER_TEST};

#[test]
#[ignore = "helper process started by the other tests"]
fn helper_node() {
    if let Err(e) = testbed_support::helper_main() {
        eprintln!("{HELPER_TEST}: {e}");
        std::process::exit(1);
    }
}

#[test]
fn loopback_nodes_exchange_data_on_distinct_ports() {
    let tb = Testbed::new(3, None).unwrap();
    assert!(tb.is_loopback());
    assert_eq!(tb.link_mbit(), None);
    for i in 0..3 {
        assert_eq!(tb.addr(i), IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    // A base port that other runs on this machine are unlikely to use at the same moment.
    let base_port = 20_000 + (std::process::id() % 20_000) as u16;
    let ports: Vec<u16> = (0..3).map(|i| tb.socket_addr(i, base_port).unwrap().port()).collect();
    assert_eq!(ports, vec![base_port, base_port + 1, base_port + 2]);
    let flows: Vec<(usize, usize)> =
        (0..3).flat_map(|i| (0..3).filter(move |&j| j != i).map(move |j| (i, j))).collect();
    for r in run_flows(&tb, &flows, 0.3, 0, base_port).flows {
        assert!(r.total_bytes > 0, "no bytes on flow {} -> {}", r.from, r.to);
    }
    tb.close().unwrap();
}
