//! Command-line interface (clap). Minimal wiring of the model and tokenizer commands; the
//! service commands join it here.

pub mod model;
pub mod tokenize;

/// palr: PALR-style LLM ranking service.
#[derive(Debug, clap::Parser)]
#[command(name = "palr", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Fetch or import models.
    #[command(subcommand)]
    Model(model::ModelCmd),
    /// Print the token ids of a text as a JSON array.
    Tokenize(tokenize::TokenizeArgs),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Model(cmd) => model::run(cmd),
        Command::Tokenize(args) => tokenize::run(args),
    }
}
