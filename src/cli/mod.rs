//! The `palr` command line: one subcommand per job, for people and for checks.
//! The only place (with `main.rs`) that uses `clap` and `anyhow`.

pub mod admin;
pub mod bench;
pub mod connect;
pub mod data;
pub mod eval;
pub mod generate;
pub mod model;
pub mod plugin;
pub mod recommend;
pub mod serve;
pub mod sft;
pub mod tokenize;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "palr",
    version = version_line(),
    about = "PALR-style LLM recommendation ranking"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What `palr --version` prints: palr's version, the retriever plugin ABI this build speaks and
/// the SDK release line plugins must be built with (`plugins/sdk/README.md`, "Versions").
pub fn version_line() -> &'static str {
    static LINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LINE.get_or_init(|| {
        let abi = crate::retrieval::ABI_VERSION;
        let sdk = palr_retriever_sdk::abi::sdk_for_abi(abi).unwrap_or("an unknown SDK");
        format!(
            "{} (retriever plugin ABI {abi}: build plugins with {sdk})",
            env!("CARGO_PKG_VERSION")
        )
    })
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve recommendations over gRPC (health, reflection, /metrics); stops on SIGTERM/SIGINT.
    Serve(serve::ServeArgs),
    /// Administer a running server through its admin API (server.admin_addr; PALR_TOKEN with
    /// the admin scope): reload the retrievers, list the adapters.
    #[command(subcommand)]
    Admin(admin::AdminCmd),
    /// Ask a running server for recommendations (or --candidates to rank, --retrieve-only,
    /// --list-retrievers, --model-info).
    Recommend(recommend::RecommendArgs),
    /// Generate text with a model (greedy by default).
    Generate(generate::GenerateArgs),
    /// Print the last position's largest logits as JSON: {"tokens":[ids],"top":[[id,logit],...]}.
    Logits(generate::LogitsArgs),
    /// Print the token ids of a text as a JSON array.
    Tokenize(tokenize::TokenizeArgs),
    /// Fetch or import models.
    #[command(subcommand)]
    Model(model::ModelCmd),
    /// Data sets: fetch and inspect.
    #[command(subcommand)]
    Data(data::DataCmd),
    /// Retriever plugins: check a library against the ABI contract.
    #[command(subcommand)]
    Plugin(plugin::PluginCmd),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Offline evaluation (leave-one-out, full ranking) of retrievers and retriever + LLM.
    Eval(Box<eval::EvalArgs>),
    /// Instruction-tuning data (PALR tasks) from the training histories, as chat JSONL.
    SftData(Box<sft::SftArgs>),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(&args),
        Command::Recommend(args) => recommend::run(&args),
        Command::Admin(cmd) => admin::run(&cmd),
        Command::Generate(args) => generate::run_generate(&args),
        Command::Logits(args) => generate::run_logits(&args),
        Command::Tokenize(args) => tokenize::run(args),
        Command::Model(cmd) => model::run(cmd),
        Command::Data(cmd) => data::run(cmd),
        Command::Plugin(cmd) => plugin::run(cmd),
        Command::Eval(args) => eval::run(&args),
        Command::SftData(args) => sft::run(&args),
        Command::Bench(cmd) => bench::run(cmd),
    }
}
