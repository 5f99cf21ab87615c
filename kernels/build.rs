//! Compiles the C kernels in csrc/ into one static library.
//!
//! Portable flags only (no -march=native: the binary runs on other machines);
//! the AVX2 and AVX-512 functions carry their own `target` attributes and are
//! picked at run time. -ffp-contract=off keeps every multiply and add that the
//! C code writes separately a separate rounding (fused multiply-adds appear only
//! where a kernel asks for them), which the batch-invariance and reference tests
//! rely on.

use std::path::Path;

fn main() {
    let dir = Path::new("csrc");
    println!("cargo:rerun-if-changed=csrc");
    let mut build = cc::Build::new();
    build
        .include(dir)
        .opt_level(3)
        .flag_if_supported("-std=c11")
        .flag_if_supported("-ffp-contract=off")
        .flag_if_supported("-fno-math-errno")
        .flag_if_supported("-Wall")
        .flag_if_supported("-Wextra")
        .warnings(true);
    let mut sources: Vec<_> = std::fs::read_dir(dir)
        .expect("kernels/csrc exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .collect();
    sources.sort();
    for src in &sources {
        println!("cargo:rerun-if-changed={}", src.display());
        build.file(src);
    }
    for header in ["fs_common.h", "simd_x86.h"] {
        println!("cargo:rerun-if-changed={}", dir.join(header).display());
    }
    build.compile("faascale_kernels");
}
