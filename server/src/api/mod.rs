//! The OpenAI-compatible API over the engine's scheduler: request parsing and validation,
//! OpenAI's response and error shapes, server-sent events, streamed detokenisation with stop
//! strings, and the server's metrics.

pub mod detok;
pub mod error;
pub mod handler;
pub mod metrics;
pub mod request;
pub mod response;
pub mod served;
pub mod sink;
pub mod stop;
