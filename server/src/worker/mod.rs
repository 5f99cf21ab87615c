//! The worker daemon's home (issue 13). So far it holds the data path between stages:
//!
//! - `link`: a hidden-state link between two stages on different workers: micro-batches of
//!   hidden rows one way, sampled tokens the other, over an authenticated TCP connection with
//!   credit-based backpressure, bounded frames and timeouts.

pub mod link;

#[cfg(test)]
mod link_tests;
