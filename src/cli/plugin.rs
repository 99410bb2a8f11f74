//! `palr plugin check LIB [--config JSON]`: runs a retriever plugin library through the ABI
//! contract ([`crate::retrieval::conformance`]), prints one line per check and fails when any
//! check fails.

use std::path::{Path, PathBuf};

use anyhow::bail;

use crate::retrieval::conformance::{self, Options};
use crate::retrieval::{default_search_dirs, resolve_library};

/// `palr plugin` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum PluginCmd {
    /// Check a plugin library against the ABI contract: loading, answers to many queries
    /// (range, exclusions, duplicates, scores, capacity), concurrent calls, bad configs,
    /// repeated create/destroy. Prints one line per check; exits non-zero if any fails.
    Check(CheckArgs),
}

/// Arguments of `palr plugin check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The library: a path to the file, or a bare name looked up like a server config's
    /// `path` (e.g. `palr_retriever_popularity`, next to the `palr` executable).
    pub library: String,
    /// The plugin's JSON config, as a server config's `config_json` would pass it.
    #[arg(long, default_value = "{}")]
    pub config: String,
    /// Seed of the synthetic data and queries.
    #[arg(long, default_value_t = Options::default().seed)]
    pub seed: u64,
    /// Random queries per view.
    #[arg(long, default_value_t = Options::default().queries)]
    pub queries: usize,
    /// Threads calling one instance at once.
    #[arg(long, default_value_t = Options::default().threads)]
    pub threads: usize,
}

/// Runs a `palr plugin` subcommand.
pub fn run(cmd: PluginCmd) -> anyhow::Result<()> {
    match cmd {
        PluginCmd::Check(args) => check(&args),
    }
}

/// The library file `arg` names: an existing file as given, else a bare name resolved like a
/// configured retriever's path.
fn library_path(arg: &str) -> anyhow::Result<PathBuf> {
    let p = Path::new(arg);
    if p.is_file() {
        return Ok(p.to_path_buf());
    }
    resolve_library(arg, &default_search_dirs()).or_else(|tried| {
        let tried: Vec<String> = tried.iter().map(|t| format!("`{}`", t.display())).collect();
        bail!(
            "plugin library `{arg}` not found (looked for {})",
            tried.join(", ")
        )
    })
}

fn check(args: &CheckArgs) -> anyhow::Result<()> {
    let library = library_path(&args.library)?;
    let options = Options {
        seed: args.seed,
        queries: args.queries,
        threads: args.threads,
        ..Options::default()
    };
    let report = conformance::check_plugin_with(&library, &args.config, &options);
    println!("{report}");
    let failed = report.failures().count();
    if failed > 0 {
        bail!(
            "{failed} of {} checks failed for `{}`",
            report.checks.len(),
            library.display()
        );
    }
    Ok(())
}
