use clap::Parser;

fn main() -> anyhow::Result<()> {
    palr::cli::run(palr::cli::Cli::parse())
}
