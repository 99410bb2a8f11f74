mod cli;

use clap::Parser;

/// palr: PALR-style recommendation ranking.
#[derive(Parser, Debug)]
#[command(name = "palr", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Data sets: fetch and inspect.
    #[command(subcommand)]
    Data(cli::data::DataCmd),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Data(cmd) => cli::data::run(cmd),
    }
}
