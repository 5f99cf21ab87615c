//! `/health` is 503 while the model loads and 200 once it is ready; `/v1/*` answers 503 in
//! OpenAI's shape meanwhile. Uses SmolLM2-135M-Instruct (GGUF Q4_1, fetched by
//! `scripts/fetch_smollm2.sh`, which `scripts/test.sh` runs first): it takes long enough to load
//! that the port answers before the model is ready.

mod serve_util;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn health_is_503_while_loading_then_200() {
    let model = std::env::var_os("FAASCALE_SMOLLM2_GGUF")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert!(model.exists(), "{} is missing: run scripts/fetch_smollm2.sh (scripts/test.sh does)", model.display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_faascale"))
        .args(["--log", "info", "serve", "--port", "0", "--threads", "1", "--model"])
        .arg(&model)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // "listening on http://IP:PORT (...)" comes on standard error before the model loads.
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert!(err.read_line(&mut line).unwrap() > 0, "faascale serve exited before listening");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().parse::<std::net::SocketAddr>().unwrap();
        }
    };
    std::thread::spawn(move || for _ in err.lines() {});
    let loading = serve_util::request(addr, "GET", "/health", &[], b"");
    assert_eq!(loading.status, 503, "{}", loading.text());
    let e = serve_util::request(addr, "GET", "/v1/models", &[], b"").openai_error(503);
    assert!(e["message"].as_str().unwrap().contains("loading"), "{e}");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut ready = String::new();
    out.read_line(&mut ready).unwrap();
    assert!(ready.contains(&format!("\"url\": \"http://{addr}\"")), "{ready}");
    assert!(ready.contains("\"model\": \"SmolLM2-135M-Instruct.Q4_1\""), "{ready}");
    assert_eq!(serve_util::request(addr, "GET", "/health", &[], b"").status, 200);
    let load_s = {
        let text = serve_util::request(addr, "GET", "/metrics", &[], b"").text();
        let line = text.lines().find(|l| l.starts_with("faascale:model_load_time_seconds{")).unwrap().to_string();
        line.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap()
    };
    assert!(load_s > 0.0);
    // SAFETY: kill(2) on our own child's pid, not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
