//! The io_uring event loop (next commit).

use super::error::HttpError;
use super::server::LoopParts;

pub(crate) fn probe() -> Result<(), HttpError> {
    Err(HttpError::Config("the io-uring backend is not built yet".into()))
}

pub(crate) fn run(_parts: LoopParts) -> Result<(), HttpError> {
    probe()
}
