//! `palr bench retrieve`: per-call latency of retriever plugins (and fusions) through the
//! host, one call at a time on the calling thread, on real histories of fixed lengths.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use serde::Serialize;

use super::eval::{DataArgs, retriever_set, server_config};
use crate::data::Split;
use crate::eval::ViewStage;
use crate::bench::recommend::Summary;

#[derive(Debug, Clone, clap::Args)]
pub struct RetrieveBenchArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// A server config file whose retrievers and fusions are timed [default: the built-in
    /// defaults = configs/palr.toml]
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Add a retriever plugin as NAME=LIBRARY (repeatable).
    #[arg(long = "retriever", value_name = "NAME=LIBRARY")]
    pub retrievers: Vec<String>,
    /// Add a fused retriever as NAME=METHOD:MEMBER*WEIGHT,... (repeatable).
    #[arg(long = "fusion", value_name = "NAME=SPEC")]
    pub fusions: Vec<String>,
    /// Comma-separated retrievers to time [default: every loaded one]
    #[arg(long, value_delimiter = ',')]
    pub names: Vec<String>,
    /// Comma-separated history lengths: each call sends the last N items of a user with at
    /// least N interactions.
    #[arg(long, value_delimiter = ',', default_value = "20,200")]
    pub history: Vec<usize>,
    /// Candidates asked for per call.
    #[arg(long, default_value_t = 20)]
    pub k: usize,
    /// Timed calls per retriever and length.
    #[arg(long, default_value_t = 500)]
    pub calls: usize,
    /// Untimed calls first.
    #[arg(long, default_value_t = 50)]
    pub warmup: usize,
    /// The view the retrievers learn from: all (as served), valid or test.
    #[arg(long, default_value = "all", value_parser = parse_view)]
    pub view: ViewStage,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn parse_view(s: &str) -> Result<ViewStage, String> {
    s.parse().map_err(|e: crate::eval::EvalError| e.to_string())
}

/// One retriever at one history length.
#[derive(Debug, Clone, Serialize)]
pub struct RetrieveRow {
    pub retriever: String,
    pub history_len: usize,
    pub users: usize,
    pub latency: Summary,
}

/// The benchmark's result.
#[derive(Debug, Clone, Serialize)]
pub struct RetrieveBenchReport {
    pub cpu: String,
    pub view: String,
    pub k: usize,
    pub calls: usize,
    pub rows: Vec<RetrieveRow>,
}

pub fn run(args: &RetrieveBenchArgs) -> anyhow::Result<RetrieveBenchReport> {
    let ds = args.data.load()?;
    let split = Split::leave_one_out(&ds.interactions);
    let cfg = server_config(args.config.as_deref())?;
    let set = retriever_set(&cfg, &args.retrievers, &[], &args.fusions)?;
    let view = crate::eval::training_view(&split, &ds.interactions, &ds.catalog, args.view)?;
    let registry = set.load(view)?;
    let names = if args.names.is_empty() {
        registry.names()
    } else {
        args.names.clone()
    };
    let mut rows = Vec::new();
    for &len in &args.history {
        if len == 0 {
            bail!("--history lengths must be at least 1");
        }
        let histories: Vec<&[u32]> = ds
            .interactions
            .sequences()
            .iter()
            .filter(|(_, s)| s.len() >= len)
            .map(|(_, s)| &s[s.len() - len..])
            .collect();
        if histories.is_empty() {
            bail!("no user has {len} interactions; pick a shorter --history");
        }
        for name in &names {
            let source = registry.source(name)?;
            let mut times = Vec::with_capacity(args.calls);
            for i in 0..args.warmup + args.calls {
                let h = histories[i % histories.len()];
                let t = Instant::now();
                let out = source
                    .retrieve_with(h, args.k, &[], &Default::default())
                    .with_context(|| format!("retriever {name}"))?;
                let dt = t.elapsed().as_secs_f64();
                std::hint::black_box(out);
                if i >= args.warmup {
                    times.push(dt);
                }
            }
            rows.push(RetrieveRow {
                retriever: name.clone(),
                history_len: len,
                users: histories.len(),
                latency: Summary::of(&times),
            });
        }
    }
    Ok(RetrieveBenchReport {
        cpu: crate::bench::engine::cpu_description(),
        view: args.view.name().into(),
        k: args.k,
        calls: args.calls,
        rows,
    })
}

impl RetrieveBenchReport {
    pub fn print_table(&self) {
        println!(
            "{} | view {} | k {} | {} calls each, one at a time",
            self.cpu, self.view, self.k, self.calls
        );
        println!("| retriever | history | users | p50 ms | p90 ms | p99 ms | mean ms |");
        println!("|---|---|---|---|---|---|---|");
        for r in &self.rows {
            let l = &r.latency;
            println!(
                "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} |",
                r.retriever, r.history_len, r.users, l.p50_ms, l.p90_ms, l.p99_ms, l.mean_ms
            );
        }
    }
}
