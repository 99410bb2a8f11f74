//! `palr tokenize`: print the token ids of a text as a JSON array (no BOS/EOS added;
//! special-token strings such as `<|im_start|>` in the text become their ids).

use std::io::Read;
use std::path::PathBuf;

use crate::tokenizer::Tokenizer;
use anyhow::Context;

/// Arguments of `palr tokenize`.
#[derive(Debug, clap::Args)]
pub struct TokenizeArgs {
    /// Model directory holding tokenizer.json [default: $PALR_MODEL_DIR or
    /// models/smollm2-135m-instruct].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The text; read from standard input when absent.
    #[arg(long)]
    pub text: Option<String>,
}

/// Runs `palr tokenize`.
pub fn run(args: TokenizeArgs) -> anyhow::Result<()> {
    let dir = args.model.unwrap_or_else(crate::gguf::default_model_dir);
    let tok = Tokenizer::from_file(dir.join("tokenizer.json")).with_context(|| {
        format!(
            "loading the tokenizer of {} (run `palr model fetch`?)",
            dir.display()
        )
    })?;
    let text = match args.text {
        Some(t) => t,
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the text from standard input")?;
            s
        }
    };
    let ids = tok.encode(&text, false)?;
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}
