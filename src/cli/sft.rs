//! `palr sft-data`: PALR instruction-tuning data as chat JSONL (thin glue over `palr::sft`).

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use super::eval::{DataArgs, RankerArgs, progress_bar};
use crate::data::Split;
use crate::eval::training_view_before_tail;
use crate::rank::PromptBuilder;
use crate::retrieval::{RetrieverRegistry, RetrieverSpec};
use crate::sft::{self, SftBuilder, SftConfig, Task};

#[derive(Debug, Clone, clap::Args)]
pub struct SftArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Model directory for the tokenizer and chat template, and the ranker's prompt settings
    /// (so training text is what the ranker sends).
    #[command(flatten)]
    pub ranker: RankerArgs,
    /// Fine-tuning data settings as a TOML file (fields of `palr::sft::SftConfig`).
    #[arg(long)]
    pub sft_config: Option<PathBuf>,
    /// Comma-separated tasks: recommend, recommend_retrieval, recommend_retrieval_score, all.
    #[arg(long, default_value = "all")]
    pub tasks: String,
    /// Most examples per user and task (0 = one per training position) [default: 20]
    #[arg(long)]
    pub max_examples_per_user: Option<usize>,
    /// Negatives per candidate list [default: 19]
    #[arg(long)]
    pub negatives: Option<usize>,
    /// Share of negatives from the hard-negative retriever, 0..=1 [default: 0.5]
    #[arg(long)]
    pub hard_negatives: Option<f64>,
    /// Candidate lists: `shuffled` (targets + negatives), `retriever` (the hard-negative
    /// retriever's list in its order, as served; positions it misses are skipped) or
    /// `retriever-shuffled` (that list in random order).
    #[arg(long, value_parser = parse_order)]
    pub candidate_order: Option<crate::sft::CandidateOrder>,
    /// Examples only from each user's last N training positions, the hard-negative retriever
    /// fitted on what comes before them (so no list is made by a retriever that saw its
    /// target, as at serving time); 0 = every position, retriever fitted on all training data
    /// [default: 0]
    #[arg(long)]
    pub tail: Option<usize>,
    /// Retriever plugin library proposing hard negatives ("none" = popularity-sampled only).
    #[arg(long, default_value = "palr_retriever_itemknn")]
    pub hard_negative_retriever: String,
    /// The hard-negative retriever's JSON config.
    #[arg(long, default_value = "{}")]
    pub hard_negative_config: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output JSONL file ("-" = standard output).
    #[arg(long, default_value = "-")]
    pub out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

pub fn run(args: &SftArgs) -> anyhow::Result<()> {
    let mut cfg = match &args.sft_config {
        None => SftConfig::default(),
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?
        }
    };
    if let Some(n) = args.max_examples_per_user {
        cfg.max_examples_per_user = n;
    }
    if let Some(n) = args.negatives {
        cfg.negatives = n;
    }
    if let Some(o) = args.candidate_order {
        cfg.candidate_order = o;
    }
    if let Some(n) = args.tail {
        cfg.tail = n;
    }
    if let Some(f) = args.hard_negatives {
        cfg.hard_negative_share = f;
    }
    let tasks = Task::parse_list(&args.tasks)?;
    let ds = args.data.load()?;
    let split = Split::leave_one_out(&ds.interactions);
    let ranker_cfg = args.ranker.ranker_config()?;
    let tok = args.ranker.tokenizer()?;
    let chat = args.ranker.chat_template()?;
    let prompts = PromptBuilder::new(&ranker_cfg.prompt, &tok, chat.as_ref())?;

    let hard = if args.hard_negative_retriever == "none" {
        None
    } else {
        // Built from every user's training part only (the validation stage's view), without
        // the tail examples are made from when there is one.
        let view = training_view_before_tail(&split, &ds.interactions, &ds.catalog, cfg.tail)?;
        let reg = RetrieverRegistry::new(Arc::new(view));
        reg.load(&RetrieverSpec::new(
            "hard-negatives",
            &args.hard_negative_retriever,
            &args.hard_negative_config,
        ))?;
        Some(reg.get("hard-negatives")?)
    };
    let builder = SftBuilder::new(
        &split,
        &ds.interactions,
        &ds.catalog,
        &prompts,
        &ranker_cfg,
        cfg,
        hard,
    )?;
    let mut out: Box<dyn Write> = if args.out.as_os_str() == "-" {
        Box::new(BufWriter::new(std::io::stdout().lock()))
    } else {
        let f = std::fs::File::create(&args.out)
            .with_context(|| format!("creating {}", args.out.display()))?;
        Box::new(BufWriter::new(f))
    };
    let bar = progress_bar("users", args.no_progress);
    let summary = sft::write_jsonl(&builder, &tasks, args.seed, &mut out, &mut |d, t| {
        bar.set_length(t as u64);
        bar.set_position(d as u64);
    })?;
    bar.finish_and_clear();
    let per_task: Vec<String> = summary
        .per_task
        .iter()
        .map(|(t, n)| format!("{t} {n}"))
        .collect();
    eprintln!(
        "{} examples from {} users ({})",
        summary.examples,
        summary.users,
        per_task.join(", ")
    );
    Ok(())
}

fn parse_order(s: &str) -> Result<crate::sft::CandidateOrder, String> {
    match s {
        "shuffled" => Ok(crate::sft::CandidateOrder::Shuffled),
        "retriever" => Ok(crate::sft::CandidateOrder::Retriever),
        "retriever-shuffled" => Ok(crate::sft::CandidateOrder::RetrieverShuffled),
        other => Err(format!(
            "unknown candidate order {other:?}; use shuffled, retriever or retriever-shuffled"
        )),
    }
}
