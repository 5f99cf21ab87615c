//! Tests that need an NVIDIA GPU and driver. They are ignored by default; on a machine with a device run
//! `cargo test -p gpu --release -- --ignored --test-threads=1 --nocapture`
//! (or build with `cargo test -p gpu --release --no-run`, carry the test binary, and run it with
//! `--ignored --test-threads=1 --nocapture`).

use std::sync::Arc;

use gpu::{
    launch, Context, DeviceBuffer, Event, GpuError, HostRegistration, KernelArgs, LaunchConfig, Module,
    PinnedHostBuffer, RegisterFlags, Stream,
};

/// Hand-written PTX (ISA 8.0, sm_90; checked with ptxas 13.0): `vec_add` adds two f32 vectors,
/// `always_trap` executes `trap` so that its launch fails and the context is lost.
const PTX: &str = r#"
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
    .reg .pred %p<2>;
    .reg .b32 %r<6>;
    .reg .f32 %f<4>;
    .reg .b64 %rd<11>;

    ld.param.u64 %rd1, [a];
    ld.param.u64 %rd2, [b];
    ld.param.u64 %rd3, [c];
    ld.param.u32 %r1, [n];
    mov.u32 %r2, %ctaid.x;
    mov.u32 %r3, %ntid.x;
    mov.u32 %r4, %tid.x;
    mad.lo.s32 %r5, %r2, %r3, %r4;
    setp.ge.u32 %p1, %r5, %r1;
    @%p1 bra DONE;
    cvta.to.global.u64 %rd4, %rd1;
    cvta.to.global.u64 %rd5, %rd2;
    cvta.to.global.u64 %rd6, %rd3;
    mul.wide.u32 %rd7, %r5, 4;
    add.s64 %rd8, %rd4, %rd7;
    add.s64 %rd9, %rd5, %rd7;
    add.s64 %rd10, %rd6, %rd7;
    ld.global.f32 %f1, [%rd8];
    ld.global.f32 %f2, [%rd9];
    add.f32 %f3, %f1, %f2;
    st.global.f32 [%rd10], %f3;
DONE:
    ret;
}

.visible .entry always_trap()
{
    trap;
    ret;
}
"#;

fn ctx() -> Arc<Context> {
    Context::new(0).unwrap_or_else(|e| panic!("these tests need a CUDA device: {e}"))
}

#[test]
#[ignore = "needs an NVIDIA GPU and driver (run on the lent device)"]
fn probe_reports_sane_devices() {
    let devs = gpu::probe_logged().expect("probe on a GPU machine");
    assert!(!devs.is_empty());
    for d in &devs {
        println!("{d}");
        assert!(!d.name.is_empty());
        assert!(d.sm_count > 0 && d.total_memory_bytes > (1 << 30), "{d:?}");
        assert!(d.compute_capability.0 >= 5, "{d:?}");
        assert_eq!(d.limits.warp_size, 32);
        assert!(d.limits.max_threads_per_block >= 512);
        assert!(d.limits.max_shared_bytes_per_block_optin >= d.limits.max_shared_bytes_per_block);
        // domain:bus:device.function
        let parts: Vec<&str> = d.pci_bus_id.split([':', '.']).collect();
        assert_eq!(parts.len(), 4, "{}", d.pci_bus_id);
    }
    assert!(gpu::result::driver_version().unwrap() >= 11000);
}

#[test]
#[ignore = "needs an NVIDIA GPU and driver (run on the lent device)"]
fn copies_roundtrip_in_every_direction() {
    let ctx = ctx();
    let stream = Stream::new(&ctx).unwrap();
    let host: Vec<u32> = (0..10_000u32).map(|i| i.wrapping_mul(2654435761)).collect();
    let mut a = DeviceBuffer::<u32>::alloc(&ctx, host.len()).unwrap();
    let mut b = DeviceBuffer::<u32>::alloc(&ctx, host.len() + 100).unwrap();
    stream.copy_htod(&host, &mut a, 0).unwrap();
    stream.copy_dtod(&a, 0, &mut b, 100, host.len()).unwrap();
    let mut back = vec![0u32; host.len()];
    stream.copy_dtoh(&b, 100, &mut back).unwrap();
    assert_eq!(back, host);
    // Partial copies at offsets.
    stream.copy_htod(&[7, 8, 9], &mut a, 5).unwrap();
    let mut three = [0u32; 3];
    stream.copy_dtoh(&a, 5, &mut three).unwrap();
    assert_eq!(three, [7, 8, 9]);
    // Out-of-range requests are refused before the driver.
    assert!(matches!(stream.copy_htod(&host, &mut a, 1), Err(GpuError::OutOfBounds { operand: "dst", .. })));
    assert!(matches!(stream.copy_dtoh(&a, 1, &mut back), Err(GpuError::OutOfBounds { operand: "src", .. })));
    assert!(matches!(stream.copy_dtod(&a, 0, &mut b, 101, host.len()), Err(GpuError::OutOfBounds { .. })));
}

#[test]
#[ignore = "needs an NVIDIA GPU and driver (run on the lent device)"]
fn memset_sets_bytes_and_words() {
    let ctx = ctx();
    let stream = Stream::new(&ctx).unwrap();
    let mut buf = DeviceBuffer::<f32>::alloc(&ctx, 1000).unwrap();
    stream.memset_d8(&mut buf, 0, 1000, 0).unwrap();
    stream.memset_d32(&mut buf, 10, 20, 1.5f32.to_bits()).unwrap();
    let mut back = vec![-1f32; 1000];
    stream.copy_dtoh(&buf, 0, &mut back).unwrap();
    for (i, v) in back.iter().enumerate() {
        let want = if (10..30).contains(&i) { 1.5 } else { 0.0 };
        assert_eq!(*v, want, "element {i}");
    }
    assert!(matches!(stream.memset_d8(&mut buf, 999, 2, 0), Err(GpuError::OutOfBounds { .. })));
    let mut bytes = DeviceBuffer::<u8>::alloc(&ctx, 16).unwrap();
    assert!(matches!(stream.memset_d32(&mut bytes, 0, 4, 0), Err(GpuError::InvalidInput { .. })));
}

#[test]
#[ignore = "needs an NVIDIA GPU and driver (run on the lent device)"]
fn pinned_copies_are_timed_by_events() {
    let ctx = ctx();
    let stream = Stream::new(&ctx).unwrap();
    const N: usize = 64 << 20; // 256 MiB of f32
    let mut pinned = PinnedHostBuffer::<f32>::alloc(&ctx, N).unwrap();
    for (i, v) in pinned.as_mut_slice().iter_mut().enumerate() {
        *v = i as f32;
    }
    let mut dev = DeviceBuffer::<f32>::alloc(&ctx, N).unwrap();
    let (start, end) = (Event::new(&ctx).unwrap(), Event::new(&ctx).unwrap());
    start.record(&stream).unwrap();
    // SAFETY: `pinned` is neither dropped nor written before `end.synchronize()` below.
    unsafe { stream.copy_htod_async(pinned.as_slice(), &mut dev, 0) }.unwrap();
    end.record(&stream).unwrap();
    end.synchronize().unwrap();
    assert!(end.is_complete().unwrap());
    let ms = start.elapsed_ms(&end).unwrap();
    let gb_per_s = (N * 4) as f64 / (ms as f64 / 1e3) / 1e9;
    println!("pinned host->device: {} MiB in {ms:.3} ms = {gb_per_s:.1} GB/s", (N * 4) >> 20);
    assert!(ms > 0.0 && gb_per_s > 1.0, "{ms} ms");
    let mut back = PinnedHostBuffer::<f32>::alloc(&ctx, N).unwrap();
    stream.copy_dtoh(&dev, 0, back.as_mut_slice()).unwrap();
    assert_eq!(back.as_slice()[N - 1], (N - 1) as f32);
    assert_eq!(back.as_slice(), pinned.as_slice());
    let untimed = Event::without_timing(&ctx).unwrap();
    untimed.record(&stream).unwrap();
    stream.wait(&untimed).unwrap();
    assert!(matches!(start.elapsed_ms(&untimed), Err(GpuError::InvalidInput { .. })));
}

#[test]
#[ignore = "needs an NVIDIA GPU and driver (run on the lent device)"]
fn registered_mmap_memory_copies_and_maps() {
    let ctx = ctx();
    let stream = Stream::new(&ctx).unwrap();
    let mut map = memmap2::MmapMut::map_anon(8 << 20).unwrap();
    for (i, b) in map.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let expected = map.to_vec();
    let mut dev = DeviceBuffer::<u8>::alloc(&ctx, map.len()).unwrap();
    {
        let mut reg = HostRegistration::new(&ctx, &mut map[..], RegisterFlags::default()).unwrap();
        assert!(reg.device_ptr().unwrap() != 0);
        stream.copy_htod(reg.as_slice(), &mut dev, 0).unwrap();
        let slice = reg.as_mut_slice().unwrap();
        slice.fill(0);
        stream.copy_dtoh(&dev, 0, slice).unwrap();
        assert_eq!(reg.as_slice(), &expected[..]);
    }
    // Registering the same range twice is a driver error carrying the driver's name for it.
    if ctx.device().info().unwrap().read_only_host_register_supported {
        let _first = HostRegistration::new_read_only(&ctx, &map[..], RegisterFlags::default()).unwrap();
        let e = HostRegistration::new_read_only(&ctx, &map[..], RegisterFlags::default()).err().unwrap();
        assert!(
            matches!(&e, GpuError::Driver { name, .. } if name == "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED"),
            "{e}"
        );
    }
    let mut other = memmap2::MmapMut::map_anon(4096).unwrap();
    let no_map =
        HostRegistration::new(&ctx, &mut other[..], RegisterFlags { portable: true, device_map: false }).unwrap();
    assert!(matches!(no_map.device_ptr(), Err(GpuError::InvalidInput { .. })));
}

#[test]
#[ignore = "needs an NVIDIA GPU and driver (run on the lent device)"]
fn ptx_vec_add_matches_the_cpu() {
    let ctx = ctx();
    let stream = Stream::new(&ctx).unwrap();
    let module = Module::from_ptx(&ctx, PTX).unwrap();
    let f = module.function("vec_add").unwrap();
    assert_eq!(f.param_sizes(), Some(&[8usize, 8, 8, 4][..]), "driver 12.4+ reports parameter sizes");
    let n = 1_000_003usize;
    let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
    let b: Vec<f32> = (0..n).map(|i| 1.0 - i as f32).collect();
    let (mut da, mut db) = (DeviceBuffer::alloc(&ctx, n).unwrap(), DeviceBuffer::alloc(&ctx, n).unwrap());
    let dc = DeviceBuffer::<f32>::alloc(&ctx, n).unwrap();
    stream.copy_htod(&a, &mut da, 0).unwrap();
    stream.copy_htod(&b, &mut db, 0).unwrap();
    let mut args = KernelArgs::new();
    args.push_buffer(&da).push_buffer(&db).push_buffer(&dc).push(n as u32);
    let cfg = LaunchConfig::for_elements(n, 256).unwrap();
    // SAFETY: vec_add reads a[i], b[i] and writes c[i] for i < n, and every buffer holds n f32.
    unsafe { launch(&f, cfg, &stream, &mut args) }.unwrap();
    let mut c = vec![0f32; n];
    stream.copy_dtoh(&dc, 0, &mut c).unwrap();
    for i in 0..n {
        assert_eq!(c[i], a[i] + b[i], "element {i}");
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU and driver (run on the lent device)"]
fn bad_ptx_and_bad_launches_are_refused_with_reasons() {
    let ctx = ctx();
    let stream = Stream::new(&ctx).unwrap();
    let bad =
        ".version 8.0\n.target sm_90\n.address_size 64\n.visible .entry broken()\n{\n  bogus.instruction %r1;\n}\n";
    let e = Module::from_ptx(&ctx, bad).err().expect("the JIT must reject this PTX");
    let GpuError::PtxJit { ref name, ref log, .. } = e else { panic!("expected PtxJit, got {e:?}") };
    println!("{e}");
    assert!(name.starts_with("CUDA_ERROR_"), "{name}");
    assert!(!log.is_empty(), "the JIT error log must be captured");
    assert!(matches!(Module::from_ptx(&ctx, "a\0b"), Err(GpuError::InvalidInput { .. })));

    let module = Module::from_ptx(&ctx, PTX).unwrap();
    assert!(matches!(module.function("no_such_kernel"), Err(GpuError::Driver { .. })));
    let f = module.function("vec_add").unwrap();
    let buf = DeviceBuffer::<f32>::alloc(&ctx, 16).unwrap();
    let mut args = KernelArgs::new();
    args.push_buffer(&buf).push_buffer(&buf).push_buffer(&buf).push(16u32);
    let too_wide = LaunchConfig { grid: [1, 1, 1], block: [4096, 1, 1], shared_bytes: 0 };
    // SAFETY: refused before the driver (block too wide); the arguments are valid for n = 16 anyway.
    let e = unsafe { launch(&f, too_wide, &stream, &mut args) }.unwrap_err();
    assert!(matches!(e, GpuError::LaunchConfig { .. }), "{e}");
    let too_much_shared = LaunchConfig { grid: [1, 1, 1], block: [32, 1, 1], shared_bytes: 1 << 30 };
    // SAFETY: refused before the driver (more shared memory than the device has), and the arguments are
    // valid for n = 16 in any case.
    let e = unsafe { launch(&f, too_much_shared, &stream, &mut args) }.unwrap_err();
    assert!(matches!(e, GpuError::LaunchConfig { .. }), "{e}");
    let mut short = KernelArgs::new();
    short.push_buffer(&buf).push_buffer(&buf).push(16u32);
    let ok_cfg = LaunchConfig::for_elements(16, 32).unwrap();
    // SAFETY: refused before the driver (three arguments for four parameters).
    let e = unsafe { launch(&f, ok_cfg, &stream, &mut short) }.unwrap_err();
    assert!(matches!(e, GpuError::LaunchArgs { .. }), "{e}");
    let mut f2 = module.function("vec_add").unwrap();
    let optin = ctx.limits().max_shared_bytes_per_block_optin;
    assert!(matches!(f2.set_max_dynamic_shared_bytes(optin + 1), Err(GpuError::LaunchConfig { .. })));
    f2.set_max_dynamic_shared_bytes(optin).unwrap();
    assert_eq!(f2.limits().max_dynamic_shared_bytes, optin);
    // The context is still healthy after all the refusals.
    stream.synchronize().unwrap();
    assert!(ctx.lost().is_none());
}

#[test]
#[ignore = "needs an NVIDIA GPU and driver (run on the lent device)"]
fn out_of_memory_is_named_and_the_pool_refuses_to_overcommit() {
    let ctx = ctx();
    let (free, total) = ctx.mem_info().unwrap();
    println!("device memory: {free} free of {total}");
    let e = DeviceBuffer::<u8>::alloc(&ctx, (total * 2) as usize).unwrap_err();
    match &e {
        GpuError::Driver { call, name, .. } => {
            assert_eq!(*call, "cuMemAlloc_v2");
            assert_eq!(name, "CUDA_ERROR_OUT_OF_MEMORY");
        }
        other => panic!("expected a driver error, got {other:?}"),
    }
    assert!(!e.is_context_lost());
    let e = gpu::DevicePool::<u8>::reserve(&ctx, free as usize, 1)
        .err()
        .expect("free memory without headroom must be refused");
    assert!(matches!(e, GpuError::PoolRefused { .. }), "{e}");
    // Out-of-memory does not lose the context.
    let _ok = DeviceBuffer::<u8>::alloc(&ctx, 1 << 20).unwrap();
}

#[test]
#[ignore = "needs an NVIDIA GPU and driver (run on the lent device)"]
fn device_pool_hands_out_slabs_and_never_allocates_after_reserve() {
    let ctx = ctx();
    let stream = Stream::new(&ctx).unwrap();
    let pool = gpu::DevicePool::<u8>::reserve(&ctx, 16 << 20, 4).unwrap();
    let free_after_reserve = ctx.mem_info().unwrap().0;
    let mut slabs: Vec<_> = (0..4).map(|_| pool.try_take().unwrap()).collect();
    assert!(matches!(pool.try_take(), Err(GpuError::OutOfPool { num_slabs: 4, .. })));
    assert_eq!(ctx.mem_info().unwrap().0, free_after_reserve, "taking slabs must not allocate");
    let data: Vec<u8> = (0..(16 << 20)).map(|i: usize| (i % 253) as u8).collect();
    stream.copy_htod(&data, slabs[2].memory_mut(), 0).unwrap();
    let mut back = vec![0u8; data.len()];
    stream.copy_dtoh(slabs[2].memory(), 0, &mut back).unwrap();
    assert_eq!(back, data);
    let index = slabs[2].index();
    drop(slabs.remove(2));
    let again = pool.try_take().unwrap();
    assert_eq!(again.index(), index);
}

/// The trap runs in a child process: a sticky error makes the whole process's CUDA state unusable, which
/// would break the other tests sharing this process.
#[test]
#[ignore = "needs an NVIDIA GPU and driver (run on the lent device)"]
fn lost_context_is_reported_and_later_work_refused() {
    const CHILD: &str = "FAASCALE_GPU_LOST_CONTEXT_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let ctx = ctx();
        let stream = Stream::new(&ctx).unwrap();
        let module = Module::from_ptx(&ctx, PTX).unwrap();
        let f = module.function("always_trap").unwrap();
        let cfg = LaunchConfig { grid: [1, 1, 1], block: [1, 1, 1], shared_bytes: 0 };
        // SAFETY: the kernel takes no arguments and touches no memory; it traps by design.
        let launched = unsafe { launch(&f, cfg, &stream, &mut KernelArgs::new()) };
        let e = launched.and_then(|()| stream.synchronize()).expect_err("a trapping kernel must fail");
        println!("first error: {e}");
        assert!(e.is_context_lost(), "{e}");
        let lost = ctx.lost().expect("the context must be marked lost");
        assert!(matches!(lost, GpuError::ContextLost { .. }));
        let e = DeviceBuffer::<u8>::alloc(&ctx, 16).unwrap_err();
        assert!(matches!(e, GpuError::ContextLost { .. }), "later work must be refused: {e}");
        println!("later work: {e}");
        println!("CHILD-OK");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args(["lost_context_is_reported_and_later_work_refused", "--exact", "--ignored", "--nocapture"])
        .args(["--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.contains("CHILD-OK"), "child failed: {:?}", out.status);
}
