//! The `server` crate as a library: the HTTP layer, for tests, examples and the binary.

pub mod http;
