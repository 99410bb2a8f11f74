//! `palr generate` and `palr logits`: the engine from the command line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use crate::chat::{ChatTemplate, Message};
use crate::engine::{self, Device, LanguageModel, LoadOptions, Logits, WeightDtype};
use crate::generate::{GenerateParams, generate};
use crate::model::GenerationConfig;
use crate::sampling::SamplingParams;
use crate::tokenizer::Tokenizer;

/// Options shared by commands that load a model.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Hugging Face model directory (config.json, safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Where the model runs: cpu, cuda (= cuda:0) or cuda:N (needs --dtype bf16).
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// Weight element type in memory.
    #[arg(long, default_value = "f32")]
    pub dtype: WeightDtype,
    /// Worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// A GPU holds bf16 weights: refuse `--device cuda` with another `--dtype` up front, saying
/// which flag to add (`engine::load` would refuse it too, after opening the checkpoint).
pub fn check_device_dtype(device: Device, dtype: WeightDtype) -> anyhow::Result<()> {
    engine::check_device_dtype(device, dtype)
        .map_err(|e| anyhow::anyhow!("--device {device}: {e}; add --dtype bf16"))
}

impl ModelArgs {
    pub fn load(&self) -> anyhow::Result<(Arc<dyn LanguageModel>, Tokenizer)> {
        check_device_dtype(self.device, self.dtype)?;
        let opts = LoadOptions {
            device: self.device,
            dtype: self.dtype,
            threads: self.threads,
            ..LoadOptions::default()
        };
        let model = engine::load(&self.model, &opts)
            .with_context(|| format!("loading {}", self.model.display()))?;
        let tok = load_tokenizer(&self.model)?;
        Ok((model, tok))
    }
}

pub fn load_tokenizer(dir: &Path) -> anyhow::Result<Tokenizer> {
    let path = dir.join("tokenizer.json");
    Tokenizer::from_file(&path).with_context(|| format!("loading {}", path.display()))
}

#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt (with --chat: the user's message).
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt in the model's chat template as a user turn.
    #[arg(long)]
    pub chat: bool,
    /// System message for --chat (default: the template's own).
    #[arg(long)]
    pub system: Option<String>,
    /// Most new tokens.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 = greedy (the default).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample among the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Random seed for sampling.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop when this text is produced (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Print timings to stderr.
    #[arg(long)]
    pub verbose: bool,
}

pub fn run_generate(args: &GenerateArgs) -> anyhow::Result<()> {
    let (model, tok) = args.model.load()?;
    let text = if args.chat {
        let template = ChatTemplate::from_model_dir(&args.model.model)?.with_context(|| {
            format!(
                "{} has no chat template; drop --chat",
                args.model.model.display()
            )
        })?;
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(Message::new("system", system));
        }
        messages.push(Message::new("user", &args.prompt));
        template.render(&messages, true)?
    } else {
        args.prompt.clone()
    };
    let prompt = tok.encode(&text, false)?;
    let gen_cfg = GenerationConfig::from_dir(&args.model.model)?;
    let mut eos = gen_cfg.eos_ids(model.config());
    if let Some(e) = tok.eos_id()
        && !eos.contains(&e)
    {
        eos.push(e);
    }
    let params = GenerateParams {
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        },
        max_tokens: args.max_tokens,
        stop: args.stop.clone(),
        eos_token_ids: eos,
    };
    let mut out = std::io::stdout().lock();
    let g = generate(&model, &tok, &prompt, &params, |piece| {
        let _ = out.write_all(piece.as_bytes());
        let _ = out.flush();
    })?;
    writeln!(out)?;
    if args.verbose {
        eprintln!(
            "{} prompt tokens in {:.3} s ({:.1} tokens/s); {} new tokens in {:.3} s ({:.1} tokens/s); finish: {:?}",
            g.prompt_tokens,
            g.prefill_s,
            g.prompt_tokens as f64 / g.prefill_s,
            g.tokens.len(),
            g.decode_s,
            g.tokens.len().saturating_sub(1) as f64 / g.decode_s.max(1e-9),
            g.finish
        );
    }
    Ok(())
}

#[derive(Debug, Clone, clap::Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text to run, tokenized without special tokens added (special-token strings
    /// written in the text become their ids).
    #[arg(long)]
    pub prompt: String,
    /// How many of the largest logits to print.
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// Prepend the model's BOS token.
    #[arg(long)]
    pub bos: bool,
}

/// Prints `{"tokens":[ids],"top":[[id,logit],...]}` for the last position.
pub fn run_logits(args: &LogitsArgs) -> anyhow::Result<()> {
    let (model, tok) = args.model.load()?;
    let mut tokens = Vec::new();
    if args.bos {
        let bos = tok
            .bos_id()
            .or(model.config().bos_token_id)
            .context("--bos: the model defines no BOS token")?;
        tokens.push(bos);
    }
    tokens.extend(tok.encode(&args.prompt, false)?);
    anyhow::ensure!(
        !tokens.is_empty(),
        "the prompt tokenizes to nothing; give some text"
    );
    let mut session = model.new_session(tokens.len())?;
    let logits = session.feed(&tokens, Logits::Last)?;
    let mut order: Vec<usize> = (0..logits.len()).collect();
    let k = args.top.min(order.len());
    if k > 0 {
        order.select_nth_unstable_by(k - 1, |&a, &b| logits[b].total_cmp(&logits[a]));
    }
    order.truncate(k);
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    let top: Vec<(usize, f32)> = order.iter().map(|&i| (i, logits[i])).collect();
    println!("{}", serde_json::json!({ "tokens": tokens, "top": top }));
    Ok(())
}
