//! The `palr` command line: one subcommand per job, for people and for checks.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "palr",
    version,
    about = "PALR-style LLM recommendation ranking"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCmd),
}

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Prefill and decode throughput of the engine.
    Engine(crate::bench::EngineBenchArgs),
    /// CUDA backend timings next to their physical floors (needs a GPU).
    Gpu(crate::bench_gpu::GpuBenchArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Bench(BenchCmd::Engine(args)) => {
            let report = crate::bench::run_engine(&args)?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                report.print_table();
            }
            Ok(())
        }
        Command::Bench(BenchCmd::Gpu(args)) => {
            crate::bench_gpu::run(&args)?;
            Ok(())
        }
    }
}
