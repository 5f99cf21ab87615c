//! The crate's FFI plumbing checked against a test double of the driver library (tests/mock_cuda/mock_cuda.c,
//! compiled here with the system C compiler): every entry point resolves by its versioned name, pointers and
//! sizes arrive intact, the JIT log and parameter sizes come back, out-of-range requests never reach the
//! library, destructors release what they hold, and a sticky error loses the context. The double is not a
//! GPU: these tests say nothing about real device behaviour, which tests/gpu.rs checks on a lent device.

use std::ffi::CString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use gpu::{
    launch, Context, DeviceBuffer, Event, GpuError, HostRegistration, KernelArgs, LaunchConfig, MemoryPool, Module,
    PinnedHostBuffer, RegisterFlags, Stream,
};

const PTX: &str = "
.version 8.0
.target sm_90
.address_size 64
.visible .entry vec_add(
    .param .u64 a,
    .param .u64 b,
    .param .u64 c,
    .param .u32 n
)
{
    ret;
}
.visible .entry always_trap()
{
    trap;
}
";

/// Build the double once per process and load it as the crate's driver.
fn mock_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        // Inside the target directory (cleaned by `cargo clean`). Built under a per-process name and renamed
        // into place, so the trap test's child process, which builds it again, never sees a half-written file.
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("libcuda-mock.so");
        let tmp = dir.join(format!("libcuda-mock.so.{}.tmp", std::process::id()));
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mock_cuda/mock_cuda.c");
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
        let status = std::process::Command::new(&cc)
            .args(["-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o"])
            .arg(&tmp)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| panic!("these tests need a C compiler ({cc}): {e}"));
        assert!(status.success(), "compiling {} failed", src.display());
        std::fs::rename(&tmp, &out).unwrap();
        out
    })
}

/// The double keeps global state without locks, and the trap test poisons it: run one test at a time.
fn setup() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    let guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let path = mock_path().to_str().unwrap().to_string();
    gpu::sys::driver_from(&[path.as_str()]).expect("the mock driver loads");
    guard
}

/// Read one of the double's counters (`int mock_x(void)` or `size_t mock_x(void)`).
fn counter(name: &str) -> usize {
    let path = CString::new(mock_path().to_str().unwrap()).unwrap();
    let sym = CString::new(name).unwrap();
    // SAFETY: the library is already loaded (dlopen only takes another reference); the symbol is a C function
    // of no arguments returning an int or size_t, read back as the matching type.
    unsafe {
        let h = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        assert!(!h.is_null());
        let f = libc::dlsym(h, sym.as_ptr());
        assert!(!f.is_null(), "{name}");
        let v = if name == "mock_allocated" {
            std::mem::transmute::<*mut libc::c_void, extern "C" fn() -> usize>(f)()
        } else {
            std::mem::transmute::<*mut libc::c_void, extern "C" fn() -> libc::c_int>(f)() as usize
        };
        libc::dlclose(h);
        v
    }
}

#[test]
fn every_entry_point_resolves_and_devices_are_described() {
    let _g = setup();
    let d = gpu::sys::driver().unwrap();
    assert_eq!(d.event_elapsed_symbol, "cuEventElapsedTime_v2");
    assert!(d.cuFuncGetParamInfo.is_some());
    let devs = gpu::probe_logged().unwrap();
    assert_eq!(devs.len(), 1);
    let info = &devs[0];
    assert_eq!((info.name.as_str(), info.pci_bus_id.as_str()), ("faascale mock device", "0000:00:00.0"));
    assert_eq!((info.sm_count, info.compute_capability, info.total_memory_bytes), (4, (9, 0), 64 << 20));
    assert_eq!(info.limits.max_grid_dim, [2147483647, 65535, 65535]);
    assert_eq!(info.limits.max_shared_bytes_per_block_optin, 232448);
    assert!(info.host_register_supported && info.read_only_host_register_supported && info.can_map_host_memory);
    assert_eq!(gpu::result::driver_version().unwrap(), 13000);
    assert!(matches!(Context::new(1), Err(GpuError::InvalidInput { .. })));
    // A different library after loading is refused, not ignored.
    assert!(matches!(gpu::sys::driver_from(&["libcuda.so.1"]), Err(GpuError::InvalidInput { .. })));
}

#[test]
fn copies_and_memsets_arrive_intact_and_bad_ranges_never_reach_the_driver() {
    let _g = setup();
    let ctx = Context::new(0).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let host: Vec<u16> = (0..5000u16).collect();
    let mut a = DeviceBuffer::<u16>::alloc(&ctx, 5000).unwrap();
    let mut b = DeviceBuffer::<u16>::alloc(&ctx, 6000).unwrap();
    stream.copy_htod(&host, &mut a, 0).unwrap();
    stream.copy_dtod(&a, 1000, &mut b, 10, 4000).unwrap();
    stream.memset_d8(&mut b, 0, 10, 0xff).unwrap();
    let mut back = vec![0u16; 4010];
    stream.copy_dtoh(&b, 0, &mut back).unwrap();
    assert!(back[..10].iter().all(|&v| v == 0xffff));
    assert_eq!(&back[10..], &host[1000..5000]);
    let mut words = DeviceBuffer::<f32>::alloc(&ctx, 8).unwrap();
    stream.memset_d32(&mut words, 2, 3, 2.5f32.to_bits()).unwrap();
    stream.memset_d8(&mut words, 0, 2, 0).unwrap();
    let mut w = [9f32; 5];
    stream.copy_dtoh(&words, 0, &mut w).unwrap();
    assert_eq!(w, [0.0, 0.0, 2.5, 2.5, 2.5]);

    let before = counter("mock_rejected_ranges");
    assert!(matches!(stream.copy_htod(&host, &mut a, 1), Err(GpuError::OutOfBounds { .. })));
    assert!(matches!(stream.copy_dtoh(&a, 4999, &mut back), Err(GpuError::OutOfBounds { .. })));
    assert!(matches!(stream.copy_dtod(&a, 0, &mut b, 1001, 5000), Err(GpuError::OutOfBounds { .. })));
    assert!(matches!(stream.memset_d8(&mut a, 4000, 1001, 0), Err(GpuError::OutOfBounds { .. })));
    assert!(matches!(stream.memset_d32(&mut words, usize::MAX, 2, 0), Err(GpuError::OutOfBounds { .. })));
    assert!(matches!(a.device_ptr_at(5001), Err(GpuError::OutOfBounds { .. })));
    assert_eq!(counter("mock_rejected_ranges"), before, "a bad range reached the driver");
}

#[test]
fn destructors_release_everything_they_hold() {
    let _g = setup();
    let (allocated, refs) = (counter("mock_allocated"), counter("mock_ctx_refs"));
    {
        let ctx = Context::new(0).unwrap();
        assert_eq!(counter("mock_ctx_refs"), refs + 1);
        let _bufs: Vec<_> = (0..4).map(|_| DeviceBuffer::<u8>::alloc(&ctx, 1 << 20).unwrap()).collect();
        let _s = Stream::new(&ctx).unwrap();
        let _e = Event::new(&ctx).unwrap();
        let m = Module::from_ptx(&ctx, PTX).unwrap();
        let _f = m.function("vec_add").unwrap();
        assert_eq!(counter("mock_allocated"), allocated + (4 << 20));
    }
    assert_eq!(counter("mock_allocated"), allocated);
    assert_eq!(counter("mock_ctx_refs"), refs);
}

#[test]
fn pinned_memory_is_zeroed_and_registrations_map_and_unregister() {
    let _g = setup();
    let ctx = Context::new(0).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    // The double fills new host allocations with 0xAB, as real ones hold garbage.
    let mut pinned = PinnedHostBuffer::<u32>::alloc(&ctx, 1024).unwrap();
    assert!(pinned.as_slice().iter().all(|&v| v == 0));
    pinned.as_mut_slice()[7] = 77;
    let mut dev = DeviceBuffer::<u32>::alloc(&ctx, 1024).unwrap();
    stream.copy_htod(pinned.as_slice(), &mut dev, 0).unwrap();

    let mut map = memmap2::MmapMut::map_anon(1 << 16).unwrap();
    map[5] = 42;
    {
        let mut reg = HostRegistration::new(&ctx, &mut map[..], RegisterFlags::default()).unwrap();
        assert_eq!(reg.device_ptr().unwrap(), reg.as_slice().as_ptr() as u64);
        let slice = reg.as_mut_slice().unwrap();
        let mut d8 = DeviceBuffer::<u8>::alloc(&ctx, 1 << 16).unwrap();
        stream.copy_htod(slice, &mut d8, 0).unwrap();
        slice[5] = 0;
        stream.copy_dtoh(&d8, 0, slice).unwrap();
        assert_eq!(reg.as_slice()[5], 42);
    }
    {
        let ro = HostRegistration::new_read_only(&ctx, &map[..], RegisterFlags::default()).unwrap();
        assert!(!ro.is_writable());
        let e = HostRegistration::new_read_only(&ctx, &map[..], RegisterFlags::default()).err().unwrap();
        match &e {
            GpuError::Driver { call, name, .. } => {
                assert_eq!(
                    (*call, name.as_str()),
                    ("cuMemHostRegister_v2", "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED")
                )
            }
            other => panic!("expected a driver error, got {other:?}"),
        }
    }
    // Dropped registrations were unregistered: the range registers again.
    let plain = HostRegistration::new(&ctx, &mut map[..], RegisterFlags { portable: true, device_map: false }).unwrap();
    assert!(matches!(plain.device_ptr(), Err(GpuError::InvalidInput { .. })));
}

#[test]
fn an_owning_registration_keeps_its_memory_alive_until_it_is_dropped() {
    let _g = setup();
    let ctx = Context::new(0).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let mut map = memmap2::MmapMut::map_anon(1 << 16).unwrap();
    map[9] = 99;
    let owner = Arc::new(map.make_read_only().unwrap());
    let addr = owner.as_ptr();
    let weak = Arc::downgrade(&owner);
    fn bytes(m: &memmap2::Mmap) -> &[u8] {
        &m[..]
    }
    let reg = HostRegistration::owned_read_only(&ctx, owner, bytes, RegisterFlags::default()).unwrap();
    // The caller's handle is gone; the registration's clone keeps the mapping.
    assert!(weak.upgrade().is_some());
    assert_eq!((reg.as_slice().as_ptr(), reg.len(), reg.is_writable()), (addr, 1 << 16, false));
    let mut d8 = DeviceBuffer::<u8>::alloc(&ctx, 1 << 16).unwrap();
    stream.copy_htod(reg.as_slice(), &mut d8, 0).unwrap();
    let mut back = vec![0u8; 1 << 16];
    stream.copy_dtoh(&d8, 0, &mut back).unwrap();
    assert_eq!(back[9], 99);
    // The same range again is refused while the owning registration holds it.
    let again = weak.upgrade().unwrap();
    let e = HostRegistration::new_read_only(&ctx, &again[..], RegisterFlags::default()).err().unwrap();
    assert!(
        matches!(&e, GpuError::Driver { name, .. } if name == "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED"),
        "{e:?}"
    );
    drop(again);
    drop(reg);
    // Dropping the registration unregistered the range and then released the last handle to it.
    assert!(weak.upgrade().is_none());
}

#[test]
fn events_time_and_refuse_untimed_pairs() {
    let _g = setup();
    let ctx = Context::new(0).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let (a, b) = (Event::new(&ctx).unwrap(), Event::new(&ctx).unwrap());
    a.record(&stream).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    b.record(&stream).unwrap();
    b.synchronize().unwrap();
    assert!(b.is_complete().unwrap());
    let ms = a.elapsed_ms(&b).unwrap();
    assert!((15.0..5000.0).contains(&ms), "{ms} ms");
    let untimed = Event::without_timing(&ctx).unwrap();
    assert!(matches!(a.elapsed_ms(&untimed), Err(GpuError::InvalidInput { .. })));
    let never = Event::new(&ctx).unwrap();
    assert!(!never.is_complete().unwrap());
    let e = a.elapsed_ms(&never).unwrap_err();
    assert!(matches!(&e, GpuError::Driver { name, .. } if name == "CUDA_ERROR_NOT_READY"), "{e}");
    stream.wait(&b).unwrap();
}

#[test]
fn modules_report_jit_logs_parameters_and_launch_with_real_arguments() {
    let _g = setup();
    let ctx = Context::new(0).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let e = Module::from_ptx(&ctx, ".version 8.0\nbogus;").err().unwrap();
    match &e {
        GpuError::PtxJit { code, name, log } => {
            assert_eq!((*code, name.as_str()), (218, "CUDA_ERROR_INVALID_PTX"));
            assert!(log.contains("Unknown instruction 'bogus'"), "{log:?}");
        }
        other => panic!("expected PtxJit, got {other:?}"),
    }
    let m = Module::from_ptx(&ctx, PTX).unwrap();
    assert!(matches!(m.function("missing"), Err(GpuError::Driver { code: 500, .. })));
    let f = m.function("vec_add").unwrap();
    assert_eq!(f.param_sizes(), Some(&[8usize, 8, 8, 4][..]));
    assert_eq!(m.function("always_trap").unwrap().param_sizes(), Some(&[][..]));

    let n = 3001usize;
    let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let b: Vec<f32> = (0..n).map(|i| 0.25 * i as f32).collect();
    let (mut da, mut db) = (DeviceBuffer::alloc(&ctx, n).unwrap(), DeviceBuffer::alloc(&ctx, n).unwrap());
    let dc = DeviceBuffer::<f32>::alloc(&ctx, n).unwrap();
    stream.copy_htod(&a, &mut da, 0).unwrap();
    stream.copy_htod(&b, &mut db, 0).unwrap();
    let mut args = KernelArgs::new();
    args.push_buffer(&da).push_buffer(&db).push_buffer(&dc).push(n as u32);
    let launches = counter("mock_launches");
    // SAFETY: vec_add touches a, b, c[0..n], all n long.
    unsafe { launch(&f, LaunchConfig::for_elements(n, 128).unwrap(), &stream, &mut args) }.unwrap();
    assert_eq!(counter("mock_launches"), launches + 1);
    let mut c = vec![0f32; n];
    stream.copy_dtoh(&dc, 0, &mut c).unwrap();
    assert!((0..n).all(|i| c[i] == a[i] + b[i]));

    // Refused before the driver: wrong argument count, wrong size, block too large, too much shared memory.
    let mut three = KernelArgs::new();
    three.push_buffer(&da).push_buffer(&db).push_buffer(&dc);
    let cfg = LaunchConfig::for_elements(n, 128).unwrap();
    // SAFETY: refused before the driver.
    assert!(matches!(unsafe { launch(&f, cfg, &stream, &mut three) }, Err(GpuError::LaunchArgs { .. })));
    let mut wrong = KernelArgs::new();
    wrong.push_buffer(&da).push_buffer(&db).push_buffer(&dc).push(n as u64);
    // SAFETY: refused before the driver.
    assert!(matches!(unsafe { launch(&f, cfg, &stream, &mut wrong) }, Err(GpuError::LaunchArgs { .. })));
    let wide = LaunchConfig { grid: [1, 1, 1], block: [32, 32, 2], shared_bytes: 0 };
    // SAFETY: refused before the driver.
    assert!(matches!(unsafe { launch(&f, wide, &stream, &mut args) }, Err(GpuError::LaunchConfig { .. })));
    let shared = LaunchConfig { shared_bytes: 49153, ..cfg };
    // SAFETY: refused before the driver.
    assert!(matches!(unsafe { launch(&f, shared, &stream, &mut args) }, Err(GpuError::LaunchConfig { .. })));
    assert_eq!(counter("mock_launches"), launches + 1, "a refused launch reached the driver");
    // After the opt-in the same shared size launches.
    let mut f = f;
    f.set_max_dynamic_shared_bytes(65536).unwrap();
    assert_eq!(f.limits().max_dynamic_shared_bytes, 65536);
    // SAFETY: as the first launch.
    unsafe { launch(&f, shared, &stream, &mut args) }.unwrap();
    assert!(matches!(f.set_max_dynamic_shared_bytes(232449), Err(GpuError::LaunchConfig { .. })));
}

#[test]
fn the_pool_reserves_up_front_and_refuses_to_overcommit() {
    let _g = setup();
    let ctx = Context::new(0).unwrap();
    let allocated = counter("mock_allocated");
    // The double has 64 MiB; the default headroom is 1 GiB, so the device pool refuses any size.
    let e = gpu::DevicePool::<u8>::reserve(&ctx, 1 << 20, 1).err().unwrap();
    assert!(matches!(e, GpuError::PoolRefused { headroom_bytes: 1073741824, .. }), "{e}");
    let pool = MemoryPool::reserve_with(gpu::DeviceSlabs::<u8>::new(&ctx), 4 << 20, 4, 8 << 20).unwrap();
    assert_eq!(counter("mock_allocated"), allocated + (16 << 20));
    let slabs: Vec<_> = (0..4).map(|_| pool.try_take().unwrap()).collect();
    assert!(matches!(pool.try_take(), Err(GpuError::OutOfPool { .. })));
    assert_eq!(counter("mock_allocated"), allocated + (16 << 20), "taking must not allocate");
    assert!(matches!(
        MemoryPool::reserve_with(gpu::DeviceSlabs::<u8>::new(&ctx), 16 << 20, 3, 1 << 20),
        Err(GpuError::PoolRefused { .. })
    ));
    drop(slabs);
    drop(pool);
    assert_eq!(counter("mock_allocated"), allocated);
    let e = DeviceBuffer::<u8>::alloc(&ctx, 1 << 30).unwrap_err();
    match &e {
        GpuError::Driver { call, name, description, args, .. } => {
            assert_eq!(
                (*call, name.as_str(), description.as_str()),
                ("cuMemAlloc_v2", "CUDA_ERROR_OUT_OF_MEMORY", "out of memory")
            );
            assert_eq!(args, "bytesize=1073741824");
        }
        other => panic!("expected a driver error, got {other:?}"),
    }
}

/// The sticky error poisons the double for the whole process, so it runs in a child process.
#[test]
fn a_sticky_error_loses_the_context_and_later_work_is_refused() {
    const CHILD: &str = "FAASCALE_GPU_MOCK_TRAP_CHILD";
    if std::env::var_os(CHILD).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["a_sticky_error_loses_the_context_and_later_work_is_refused", "--exact", "--nocapture"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("CHILD-OK"),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let _g = setup();
    let ctx = Context::new(0).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let buf = DeviceBuffer::<u8>::alloc(&ctx, 64).unwrap();
    let m = Module::from_ptx(&ctx, PTX).unwrap();
    let f = m.function("always_trap").unwrap();
    let one = LaunchConfig { grid: [1, 1, 1], block: [1, 1, 1], shared_bytes: 0 };
    // SAFETY: the kernel takes no arguments.
    unsafe { launch(&f, one, &stream, &mut KernelArgs::new()) }.unwrap();
    let e = stream.synchronize().unwrap_err();
    assert!(e.is_context_lost(), "{e}");
    assert!(matches!(&e, GpuError::Driver { name, .. } if name == "CUDA_ERROR_LAUNCH_FAILED"), "{e}");
    assert!(e.to_string().contains("context lost"), "{e}");
    let lost = ctx.lost().expect("marked lost");
    assert!(
        matches!(&lost, GpuError::ContextLost { first_call: "cuStreamSynchronize", first_name, .. } if first_name == "CUDA_ERROR_LAUNCH_FAILED")
    );
    assert!(matches!(DeviceBuffer::<u8>::alloc(&ctx, 16), Err(GpuError::ContextLost { .. })));
    assert!(matches!(Stream::new(&ctx), Err(GpuError::ContextLost { .. })));
    let refs = counter("mock_ctx_refs");
    drop((buf, m, f, stream, ctx));
    // Destructors skipped the driver (the policy for lost contexts): the retain is still counted.
    assert_eq!(counter("mock_ctx_refs"), refs);
    println!("CHILD-OK");
}

#[test]
fn contexts_are_shared_across_threads() {
    let _g = setup();
    let ctx = Context::new(0).unwrap();
    let buf = Arc::new(Mutex::new(DeviceBuffer::<u32>::alloc(&ctx, 4).unwrap()));
    let t = {
        let (ctx, buf) = (ctx.clone(), buf.clone());
        std::thread::spawn(move || {
            // A new thread has no current context; every call binds it.
            let s = Stream::new(&ctx).unwrap();
            s.copy_htod(&[1, 2, 3, 4], &mut buf.lock().unwrap(), 0).unwrap();
        })
    };
    t.join().unwrap();
    let s = Stream::new(&ctx).unwrap();
    let mut back = [0u32; 4];
    s.copy_dtoh(&buf.lock().unwrap(), 0, &mut back).unwrap();
    assert_eq!(back, [1, 2, 3, 4]);
}
