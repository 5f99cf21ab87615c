//! `faascale`: the command-line entry point.
//!
//! Every command that takes `--json` prints exactly one line of JSON as the last line of
//! standard output (`{"error": "..."}` when it fails); logs and progress go to standard error.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod api;
mod cli;
mod logging;
#[allow(unused_imports)] // the HTTP layer lives in the library (src/lib.rs) so tests and examples reach it
use server::http;
mod worker;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "faascale",
    version,
    about = "faascale: the parts of a serverless LLM inference system (engine, OpenAI-compatible server, packed blocks, block multicast, planner, simulator); no manager yet",
    long_about = "faascale: the parts of a serverless LLM inference system that is to scale out by block multicast \
and execute-while-load.\n\n\
What exists: a local CPU/GPU engine (generate), a one-node OpenAI-compatible HTTP server with continuous \
batching (serve) and its load generator (bench serve), the packed block format (pack, inspect), the multicast \
planner (plan), a trace-driven simulator of scale-out systems (simulate), and a block multicast between \
worker processes (bench multicast).\n\n\
Not yet built: execute-while-load across processes (its parts exist: execution plans and the simulator \
model it, and a pipeline::Stage runs a range of blocks, but no command runs a model as a pipeline over \
several processes or nodes), and the manager that would start workers and route requests across \
nodes."
)]
struct Cli {
    /// Log level on standard error: error, warn, info, debug.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate tokens from a prompt with a local model.
    Generate(cli::generate::Args),
    /// Write a seeded random checkpoint (config.json + model.safetensors) of a given shape.
    Synth(cli::synth::Args),
    /// Write a model as a packed block file (execution blocks cut into checksummed transfer blocks).
    Pack(cli::pack::Args),
    /// Show a model's architecture, dtypes and, for a packed file, its blocks and checksums.
    Inspect(cli::inspect::Args),
    /// Plan a block multicast of a model to new nodes and report its times.
    Plan(cli::plan::Args),
    /// Run benchmarks with real processes (`bench multicast`: a block multicast between worker processes).
    Bench(cli::bench::Args),
    /// A multicast worker process (started by `bench multicast`).
    #[command(hide = true)]
    Worker(cli::worker::Args),
    /// Serve a model with an OpenAI-compatible HTTP API (continuous batching).
    Serve(cli::serve::Args),
    /// Replay a request trace on a simulated cluster and compare scale-out systems.
    Simulate(cli::simulate::Args),
    /// Check the CUDA kernels and the GPU engine against the CPU and time them (lent GPU machine).
    GpuCheck(cli::gpu_check::Args),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            // A --json caller still gets its one line of JSON, even for arguments that do not parse.
            let _ = e.print();
            if std::env::args_os().any(|a| a == "--json") {
                let text = e.render().to_string();
                let first = text.split("\n\n").next().unwrap_or("invalid arguments");
                let msg = first.trim_start_matches("error: ").split_whitespace().collect::<Vec<_>>().join(" ");
                println!("{}", serde_json::json!({ "error": msg }));
            }
            return ExitCode::from(2);
        }
    };
    if let Err(e) = logging::init(&cli.log) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let (json, result) = match cli.command {
        Command::Generate(a) => (a.json, cli::generate::run(a)),
        Command::Synth(a) => (a.json, cli::synth::run(a)),
        Command::Pack(a) => (a.json, cli::pack::run(a)),
        Command::Inspect(a) => (a.json, cli::inspect::run(a)),
        Command::Plan(a) => (a.json, cli::plan::run(a)),
        Command::Bench(a) => (a.json(), cli::bench::run(a)),
        Command::Worker(a) => (false, cli::worker::run(a)),
        Command::Serve(a) => (false, cli::serve::run(a)),
        Command::Simulate(a) => (a.json, cli::simulate::run(a)),
        Command::GpuCheck(a) => (a.json, cli::gpu_check::run(a)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("error: {msg}");
            if json {
                println!("{}", serde_json::json!({ "error": msg }));
            }
            ExitCode::FAILURE
        }
    }
}
