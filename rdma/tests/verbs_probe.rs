//! Verbs availability on a machine without RDMA hardware: the library loader's errors, the probe's
//! fallback reason, and the calls that must fail cleanly when there is no device.

use rdma::verbs::sys::{self, LoadError};
use rdma::verbs::{self, Context, Probe, VerbsError};

/// True when this machine exposes RDMA devices to user space (then the no-device checks below do
/// not apply).
fn has_rdma_devices() -> bool {
    std::fs::read_dir("/sys/class/infiniband").map(|mut d| d.next().is_some()).unwrap_or(false)
}

#[test]
fn loader_lists_every_name_tried() {
    let names = ["libfaascale-no-such-verbs.so.1", "libfaascale-no-such-verbs.so"];
    let err = match sys::load_from(&names) {
        Ok(_) => panic!("a library that does not exist was loaded"),
        Err(e) => e,
    };
    let LoadError::NotFound { tried } = &err else { panic!("expected NotFound, got {err:?}") };
    assert_eq!(tried.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), names);
    let text = err.to_string();
    for n in names {
        assert!(text.contains(n), "error text {text:?} does not name {n}");
    }
    assert!(tried.iter().all(|(_, why)| !why.is_empty()), "every name carries its dlerror text");
}

#[test]
fn loader_names_the_missing_symbol() {
    // libc is present everywhere and has no verbs.
    let err = match sys::load_from(&["libc.so.6"]) {
        Ok(_) => panic!("libc passed as libibverbs"),
        Err(e) => e,
    };
    assert_eq!(err, LoadError::MissingSymbol { library: "libc.so.6".into(), symbol: "ibv_get_device_list" });
}

#[test]
fn probe_without_devices_gives_the_fallback_reason() {
    let p = verbs::probe();
    let line = p.to_string();
    eprintln!("probe: {line}");
    if has_rdma_devices() {
        eprintln!("this machine has RDMA devices; the no-device expectations do not apply");
        return;
    }
    match &p {
        Probe::LibraryAbsent(LoadError::NotFound { tried }) => {
            assert_eq!(tried.len(), sys::LIBRARY_NAMES.len());
            for n in sys::LIBRARY_NAMES {
                assert!(line.contains(n), "{line:?} does not list {n}");
            }
        }
        Probe::NoDevice => assert!(line.contains("no RDMA device"), "{line:?}"),
        other => panic!("no RDMA device here, but probe says {other:?}"),
    }
    assert!(line.starts_with("verbs unavailable, using TCP: "), "{line:?}");
    assert!(!p.is_available() && p.first_active().is_none());
    // The library load is cached: a second probe agrees.
    assert_eq!(verbs::probe(), p);
}

#[test]
fn opening_a_device_without_devices_is_an_error_not_a_panic() {
    if has_rdma_devices() {
        return;
    }
    match Context::open(None) {
        Ok(ctx) => panic!("opened {ctx:?} on a machine without RDMA devices"),
        // Library absent, kernel without uverbs (ENOSYS), or an empty list.
        Err(VerbsError::Load(_)) | Err(VerbsError::GetDeviceList { .. }) => {}
        Err(VerbsError::DeviceNotFound { available, .. }) => assert!(available.is_empty()),
        Err(e) => panic!("unexpected error {e}"),
    }
    match Context::open(Some("mlx5_0")) {
        Ok(_) => panic!("opened mlx5_0 on a machine without RDMA devices"),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

#[test]
fn status_strings_come_from_libibverbs_when_present() {
    if sys::lib().is_err() {
        eprintln!("libibverbs absent: status strings fall back to numbers");
        assert_eq!(verbs::result::wc_status_str(sys::IBV_WC_RETRY_EXC_ERR), "status 12");
        return;
    }
    assert_eq!(verbs::result::wc_status_str(sys::IBV_WC_SUCCESS), "success");
    assert_eq!(verbs::result::wc_status_str(sys::IBV_WC_RETRY_EXC_ERR), "transport retry counter exceeded");
}
