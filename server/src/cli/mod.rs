//! One module per `faascale` subcommand.

pub mod generate;
pub mod inspect;
pub mod pack;
pub mod synth;
