//! `faascale gpu-check` and `generate --device` on machines without a CUDA driver: clean errors,
//! one JSON line, and the CPU fallback when no device was asked for.
//!
//! Whether this machine has a driver is decided by the driver probe itself (`dlopen` of the same
//! library names the binary tries), never from the output under test: a GPU path that breaks and
//! reports "no CUDA driver" on a machine that has one fails here instead of passing as a skip.
//! With a driver, each test checks that the binary does not claim there is none, and says on
//! standard error that the no-driver checks did not run (scripts/gpu_check.sh runs the real check
//! there).

mod common;
use common::{faascale, last_json};
use kernels::cuda::driver::{sys, GpuError};

/// The driver probe: `Ok(())` when no CUDA driver library loads on this machine (the case these
/// tests are about), `Err(library)` naming the one that loaded. A library that opens but lacks
/// an entry point is not a usable driver, so the binary must report that, not "no CUDA driver":
/// it counts as present here.
fn no_driver() -> Result<(), String> {
    match sys::Driver::load(sys::LIBCUDA_CANDIDATES) {
        Err(GpuError::NoDriver { .. }) => Ok(()),
        Ok(d) => Err(d.library),
        Err(e) => Err(format!("a library that is not a usable driver ({e})")),
    }
}

/// With a driver present: the binary must not say there is none (whatever else it reports).
fn assert_driver_not_denied(library: &str) {
    eprintln!("CUDA driver present ({library}): the no-driver checks do not apply on this machine");
    let out = faascale(&["gpu-check", "--json", "--skip-model", "--skip-torch", "--skip-timings"]);
    let j = last_json(&out);
    let err = j["error"].as_str().unwrap_or("");
    assert!(!err.starts_with("no CUDA driver"), "the probe loaded {library}, yet gpu-check says: {err}");
}

#[test]
fn gpu_check_without_a_driver_says_so_in_text_and_json() {
    if let Err(lib) = no_driver() {
        return assert_driver_not_denied(&lib);
    }
    let out = faascale(&["gpu-check"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error: no CUDA driver: tried libcuda.so.1"), "{err}");
    let out = faascale(&["gpu-check", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let j = last_json(&out);
    assert!(j["error"].as_str().unwrap().starts_with("no CUDA driver: tried libcuda.so.1"), "{j}");
}

fn synth(dir: &std::path::Path, preset: &str, dtype: &str) {
    let out = faascale(&["synth", "--preset", preset, "--dtype", dtype, "--seed", "2", "-o", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn generate_device_cuda_without_a_driver_is_an_error_and_the_default_falls_back_to_cpu() {
    if let Err(lib) = no_driver() {
        return assert_driver_not_denied(&lib);
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    synth(&dir, "tiny-llama", "bf16");
    let m = dir.to_str().unwrap();
    let base = ["generate", "--model", m, "--tokens", "1,2,3", "--max-tokens", "3", "--ignore-eos", "--json"];

    let out = faascale(&[&base[..], &["--device", "cuda"]].concat());
    assert!(!out.status.success());
    let e = last_json(&out)["error"].as_str().unwrap().to_string();
    // tiny-llama has head_dim 16: refused by the model check before the device is even opened
    assert!(e.starts_with("--device cuda:") && e.contains("head_dim 16"), "{e}");

    let out = faascale(&base);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j = last_json(&out);
    assert!(j["device"].as_str().unwrap().starts_with("cpu"), "{j}");
    assert_eq!(j["tokens"].as_array().unwrap().len(), 3);
    let cpu_tokens = j["tokens"].clone();
    let out = faascale(&[&base[..], &["--device", "cpu"]].concat());
    assert_eq!(last_json(&out)["tokens"], cpu_tokens);

    let out = faascale(&[&base[..], &["--device", "tpu"]].concat());
    assert_eq!(last_json(&out)["error"], "--device tpu: expected cuda or cpu");
}

#[test]
fn generate_device_cuda_names_the_missing_driver_for_a_supported_model() {
    if let Err(lib) = no_driver() {
        return assert_driver_not_denied(&lib);
    }
    // head_dim 64, bf16, GQA: everything the GPU path needs except a driver.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("config.json");
    std::fs::write(
        &cfg,
        r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 256, "hidden_size": 128,
            "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
            "head_dim": 64, "rms_norm_eps": 1e-5, "max_position_embeddings": 128, "torch_dtype": "bfloat16"}"#,
    )
    .unwrap();
    let dir = tmp.path().join("m");
    let out = faascale(&["synth", "--config", cfg.to_str().unwrap(), "-o", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m = dir.to_str().unwrap();
    let out =
        faascale(&["generate", "--model", m, "--tokens", "1,2", "--max-tokens", "2", "--device", "cuda", "--json"]);
    assert!(!out.status.success());
    let e = last_json(&out)["error"].as_str().unwrap().to_string();
    assert!(e.starts_with("--device cuda:") && e.contains("no CUDA driver"), "{e}");
    // Qwen2 (attention biases) is refused by name.
    let q = tmp.path().join("q");
    synth(&q, "tiny-qwen2", "bf16");
    let out = faascale(&[
        "generate",
        "--model",
        q.to_str().unwrap(),
        "--tokens",
        "1",
        "--max-tokens",
        "1",
        "--device",
        "cuda",
        "--json",
    ]);
    let e = last_json(&out)["error"].as_str().unwrap().to_string();
    assert!(e.contains("attention biases are not supported"), "{e}");
}
