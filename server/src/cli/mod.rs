//! One module per `faascale` subcommand.

pub mod generate;
pub mod synth;
