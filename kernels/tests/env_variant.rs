//! FAASCALE_CPU_KERNELS selects the variant once per process; a bad value is
//! reported on stderr and the best variant is used. Each case runs this test
//! binary again as a child with the variable set.
use kernels::Variant;
use std::process::Command;

/// Run only as a child: prints the variant the process selected.
#[test]
#[ignore = "run only as a child process by the other test"]
fn child_prints_selected_variant() {
    println!("selected={}", kernels::variant());
}

fn run_child(value: &str) -> (String, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_prints_selected_variant", "--nocapture", "--test-threads=1"])
        .env("FAASCALE_CPU_KERNELS", value)
        .output()
        .unwrap();
    assert!(out.status.success());
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn env_selects_variant_or_falls_back_with_a_message() {
    let best = Variant::best().name();
    for v in Variant::ALL {
        let (stdout, stderr) = run_child(v.name());
        if v.is_supported() {
            assert!(stdout.contains(&format!("selected={}", v.name())), "{stdout}");
        } else {
            assert!(stdout.contains(&format!("selected={best}")), "{stdout}");
            assert!(stderr.contains("not supported"), "{stderr}");
        }
    }
    let (stdout, stderr) = run_child("avx1024");
    assert!(stdout.contains(&format!("selected={best}")), "{stdout}");
    assert!(stderr.contains("unknown CPU kernel variant \"avx1024\""), "{stderr}");
    let (stdout, _) = run_child("");
    assert!(stdout.contains(&format!("selected={best}")), "{stdout}");
}
