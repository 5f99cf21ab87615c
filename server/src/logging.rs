//! A minimal logger: one line per record on standard error, with the elapsed time.

use std::sync::OnceLock;
use std::time::Instant;

struct StderrLogger {
    start: Instant,
}

static LOGGER: OnceLock<StderrLogger> = OnceLock::new();

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!("[{:>8.3}s {:<5} {}] {}", self.start.elapsed().as_secs_f64(), r.level(), r.target(), r.args());
        }
    }
    fn flush(&self) {}
}

pub fn init(level: &str) -> Result<(), String> {
    let filter = match level {
        "error" => log::LevelFilter::Error,
        "warn" => log::LevelFilter::Warn,
        "info" => log::LevelFilter::Info,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        other => return Err(format!("--log {other}: expected error, warn, info, debug or trace")),
    };
    let logger = LOGGER.get_or_init(|| StderrLogger { start: Instant::now() });
    log::set_logger(logger).map_err(|e| e.to_string())?;
    log::set_max_level(filter);
    Ok(())
}
