//! SIGTERM and SIGINT for `faascale serve`: blocked in every thread and received by one thread
//! with `sigwait`, so no code runs in a signal handler.

use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::Duration;

pub struct Signals {
    rx: Receiver<&'static str>,
}

/// Blocks SIGTERM and SIGINT in the calling thread (call it before starting any thread, which
/// then inherit the mask) and starts the thread that waits for them.
pub fn block() -> Result<Signals, String> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live sigset_t; these calls only write to it.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
    }
    // SAFETY: `set` is initialised; the old mask is not wanted (null).
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(format!("pthread_sigmask: {}", std::io::Error::from_raw_os_error(rc)));
    }
    let (tx, rx) = channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` was initialised above and is moved into this thread; `sig` is live.
            let rc = unsafe { libc::sigwait(&set, &mut sig) };
            if rc != 0 {
                continue;
            }
            let name = if sig == libc::SIGTERM { "SIGTERM" } else { "SIGINT" };
            if tx.send(name).is_err() {
                return;
            }
        })
        .map_err(|e| format!("start the signal thread: {e}"))?;
    Ok(Signals { rx })
}

impl Signals {
    /// Waits for a signal (Some(name)) or for `stopped` to become true (None).
    pub fn wait_or(&self, stopped: impl Fn() -> bool) -> Option<&'static str> {
        loop {
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(name) => return Some(name),
                Err(RecvTimeoutError::Disconnected) => return None,
                Err(RecvTimeoutError::Timeout) if stopped() => return None,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }
}
