//! Building and loading the libibverbs double (`mock_ibverbs.c`) for a test binary, and reading
//! its counters. Shared by `verbs_mock.rs` and `executor_verbs.rs`.

use rdma::verbs::sys;
use std::ffi::CString;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};

const HEADER: &str = "/usr/include/infiniband/verbs.h";

/// The double, built once per process: its path, or why it could not be built.
pub fn build_mock() -> &'static Result<PathBuf, String> {
    static PATH: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PATH.get_or_init(|| {
        if !std::path::Path::new(HEADER).exists() {
            return Err(format!("{HEADER} not found"));
        }
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let out = dir.join("libibverbs-mock.so");
        let tmp = dir.join(format!("libibverbs-mock.so.{}.tmp", std::process::id()));
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mock_ibverbs/mock_ibverbs.c");
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
        let status = std::process::Command::new(&cc)
            .args(["-shared", "-fPIC", "-O1", "-Wall", "-Wextra", "-Werror", "-pthread", "-o"])
            .arg(&tmp)
            .arg(&src)
            .status()
            .map_err(|e| format!("cannot run C compiler {cc:?}: {e}"))?;
        // The header and compiler are there, so a failure to build is a bug in the double: fail, never skip.
        assert!(status.success(), "compiling {} failed", src.display());
        std::fs::rename(&tmp, &out).map_err(|e| format!("rename {}: {e}", tmp.display()))?;
        Ok(out)
    })
}

pub fn mock_path() -> &'static PathBuf {
    build_mock().as_ref().expect("setup() returned the guard, so the double was built")
}

/// Loads the double as the process's libibverbs; the tests read its counters, so they run one at a time,
/// and each starts and ends with nothing left open. `None` (the test skips, saying why) where rdma-core's
/// headers or a C compiler are missing, unless FAASCALE_REQUIRE_VERBS_HEADERS=1 (as for verbs_layout.rs).
pub fn setup() -> Option<MutexGuard<'static, ()>> {
    static SERIAL: Mutex<()> = Mutex::new(());
    let guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let path = match build_mock() {
        Ok(p) => p.to_str().unwrap().to_string(),
        Err(why) => {
            if std::env::var("FAASCALE_REQUIRE_VERBS_HEADERS").as_deref() == Ok("1") {
                panic!("{why} (FAASCALE_REQUIRE_VERBS_HEADERS=1)");
            }
            eprintln!("SKIPPED verbs double: {why}; install Debian's libibverbs-dev and a C compiler (cc)");
            return None;
        }
    };
    sys::lib_from(&[path.as_str()]).expect("the double loads as libibverbs");
    assert_eq!(counter("mock_live_objects"), 0, "a previous test left verbs objects open");
    Some(guard)
}

/// One of the double's `int mock_x(void)` counters.
pub fn counter(name: &str) -> i32 {
    let path = CString::new(mock_path().to_str().unwrap()).unwrap();
    let sym = CString::new(name).unwrap();
    // SAFETY: the library is already loaded (dlopen takes another reference); the symbol is a C function of
    // no arguments returning int.
    unsafe {
        let h = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        assert!(!h.is_null());
        let f = libc::dlsym(h, sym.as_ptr());
        assert!(!f.is_null(), "{name}");
        let v = std::mem::transmute::<*mut libc::c_void, extern "C" fn() -> libc::c_int>(f)();
        libc::dlclose(h);
        v
    }
}

/// What every test asserts last: everything released, no handle used after its release, no ops slot this
/// layer should not call.
pub fn assert_clean() {
    assert_eq!(counter("mock_live_objects"), 0, "verbs objects leaked");
    assert_eq!(counter("mock_stale_handles"), 0, "a destroyed object was used");
    assert_eq!(counter("mock_wrong_ops"), 0, "a call went through the wrong ops slot");
}
