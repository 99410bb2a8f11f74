//! `palr bench ...`: the flags of every benchmark, turned into the library's options
//! (`crate::bench`), and what the command does with the report: a table or JSON on stdout,
//! and the exit status.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;

use super::connect::ConnectArgs;
use super::eval::{DataArgs, retriever_set, server_config};
use crate::bench::engine::EngineBenchOptions;
use crate::bench::gpu::GpuBenchOptions;
use crate::bench::recommend::{Load, RecommendBenchOptions, RecommendBenchReport};
use crate::bench::retrieve::RetrieveBenchOptions;
use crate::data::Split;
use crate::engine::{Device, WeightDtype};
use crate::eval::ViewStage;
use crate::service::Mode;

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Prefill and decode throughput of the engine.
    Engine(EngineBenchArgs),
    /// Running servers from a client: Recommend latency (p50/p99, per-stage times),
    /// throughput, and every call's outcome by status code; round robin over several
    /// addresses, with deadlines, closed- or open-loop.
    Recommend(RecommendBenchArgs),
    /// CUDA backend timings next to their physical floors (needs a GPU).
    Gpu(GpuBenchArgs),
    /// Per-call latency of retriever plugins and fusions (one caller, one core).
    Retrieve(RetrieveBenchArgs),
}

/// Runs a benchmark and prints its report.
pub fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Engine(args) => {
            super::generate::check_device_dtype(args.device, args.dtype)?;
            let report = crate::bench::engine::run(&args.options())?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                report.print_table();
            }
        }
        BenchCmd::Recommend(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let report = rt.block_on(crate::bench::recommend::run(&args.options()))?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                report.print_table();
            }
            check_failures(&report, args.allow_errors)?;
        }
        BenchCmd::Gpu(args) => {
            crate::bench::gpu::run(&args.options())?;
        }
        BenchCmd::Retrieve(args) => {
            let ds = args.data.load()?;
            let split = Split::leave_one_out(&ds.interactions);
            let cfg = server_config(args.config.as_deref())?;
            let set = retriever_set(&cfg, &args.retrievers, &[], &args.fusions)?;
            let view =
                crate::eval::training_view(&split, &ds.interactions, &ds.catalog, args.view)?;
            let registry = set.load(view)?;
            let report = crate::bench::retrieve::run(
                &registry,
                ds.interactions.sequences(),
                &args.options(),
            )?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                report.print_table();
            }
        }
    }
    Ok(())
}

#[derive(Debug, Clone, clap::Args)]
pub struct EngineBenchArgs {
    /// Hugging Face model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Tokens generated one at a time for the decode measurement.
    #[arg(long, default_value_t = 64)]
    pub decode_tokens: usize,
    /// Where the model runs: cpu, cuda (= cuda:0) or cuda:N (needs --dtype bf16).
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// Weight element type in memory.
    #[arg(long, default_value = "f32")]
    pub dtype: WeightDtype,
    /// Worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed runs (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl EngineBenchArgs {
    pub fn options(&self) -> EngineBenchOptions {
        EngineBenchOptions {
            model: self.model.clone(),
            prompt_tokens: self.prompt_tokens,
            decode_tokens: self.decode_tokens,
            device: self.device,
            dtype: self.dtype,
            threads: self.threads,
            warmup: self.warmup,
            runs: self.runs,
        }
    }
}

/// `palr bench recommend` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct RecommendBenchArgs {
    /// Server address; repeat it or separate addresses with commas to spread requests over
    /// several servers (round robin, one connection each).
    #[arg(
        long = "addr",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:50051"
    )]
    pub addrs: Vec<String>,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Data set the servers run on (histories are drawn from it).
    #[arg(long, default_value = "data/ml-100k")]
    pub data: PathBuf,
    /// Timed requests [default: 50; no bound with --duration-s].
    #[arg(long)]
    pub requests: Option<usize>,
    /// Send timed requests for this long (closed loop: none starts after it; open loop:
    /// rate × duration of them), or until --requests are sent if that comes first.
    #[arg(long, value_name = "SECONDS", value_parser = positive_seconds)]
    pub duration_s: Option<f64>,
    /// Untimed requests first (round robin too; no deadline).
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Requests in flight at once (closed loop: each worker sends its next request when its
    /// last one ends).
    #[arg(long, default_value_t = 1, conflicts_with = "rate")]
    pub concurrency: usize,
    /// Open loop: send this many requests per second, whatever is still in flight.
    #[arg(long, value_name = "PER_SECOND")]
    pub rate: Option<f64>,
    /// Deadline of each timed call, sent as its gRPC timeout; answers after it count as
    /// late, errors at or after it as timed out.
    #[arg(long, value_name = "MS")]
    pub deadline_ms: Option<u64>,
    /// Closed loop: after a failed call each worker waits this long before its next (a
    /// well-behaved client; without it, refused clients resend at once).
    #[arg(long, value_name = "MS", conflicts_with = "rate")]
    pub backoff_ms: Option<u64>,
    /// Exit 0 even when calls fail (overload and fault runs, where refusals are the point);
    /// the report counts them by code either way.
    #[arg(long)]
    pub allow_errors: bool,
    /// History items per request.
    #[arg(long, default_value_t = 20)]
    pub history_len: usize,
    /// Candidates retrieved and ranked.
    #[arg(long, default_value_t = 20)]
    pub num_candidates: u32,
    /// Items returned.
    #[arg(long, default_value_t = 10)]
    pub k: u32,
    /// score, generate or retriever.
    #[arg(long, default_value = "score")]
    pub mode: Mode,
    /// Retriever (empty = the server's default).
    #[arg(long, default_value = "")]
    pub retriever: String,
    /// LoRA adapter to rank with (empty = the server's default).
    #[arg(long, default_value = "")]
    pub adapter: String,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl RecommendBenchArgs {
    pub fn options(&self) -> RecommendBenchOptions {
        RecommendBenchOptions {
            addrs: self.addrs.clone(),
            connect: self.connect.options(),
            data: self.data.clone(),
            requests: self.requests.unwrap_or(match self.duration_s {
                Some(_) => usize::MAX,
                None => 50,
            }),
            duration: self.duration_s.map(Duration::from_secs_f64),
            warmup: self.warmup,
            load: match self.rate {
                Some(rate_rps) => Load::Open { rate_rps },
                None => Load::Closed {
                    concurrency: self.concurrency,
                },
            },
            deadline: self.deadline_ms.map(Duration::from_millis),
            backoff: self.backoff_ms.map(Duration::from_millis),
            history_len: self.history_len,
            num_candidates: self.num_candidates,
            k: self.k,
            mode: self.mode,
            retriever: self.retriever.clone(),
            adapter: self.adapter.clone(),
        }
    }
}

/// An error when any call failed (warm-up included) and failures were not declared
/// expected: a benchmark never reports a run that lost calls as a success.
pub fn check_failures(report: &RecommendBenchReport, allow_errors: bool) -> anyhow::Result<()> {
    let (timed, warmup) = (&report.outcomes, &report.warmup);
    if allow_errors || timed.failed() + warmup.failed() == 0 {
        return Ok(());
    }
    let mut what = Vec::new();
    if timed.failed() > 0 {
        what.push(format!(
            "{} of {} timed calls ({})",
            timed.failed(),
            timed.calls,
            timed.failures_by_code()
        ));
    }
    if warmup.failed() > 0 {
        what.push(format!(
            "{} of {} warm-up calls ({})",
            warmup.failed(),
            warmup.calls,
            warmup.failures_by_code()
        ));
    }
    bail!(
        "{} failed; pass --allow-errors when failures are expected",
        what.join(" and ")
    )
}

#[derive(Debug, Clone, clap::Args)]
pub struct GpuBenchArgs {
    /// The GPU (cuda:N).
    #[arg(long, default_value = "cuda:0")]
    pub device: Device,
    /// Parts to run: ceilings, attention, model, lora, model-lora.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ceilings,attention,model,lora,model-lora"
    )]
    pub parts: Vec<String>,
    /// Model shapes for the `model` part: smollm2-135m, llama2-7b.
    #[arg(long, value_delimiter = ',', default_value = "smollm2-135m,llama2-7b")]
    pub models: Vec<String>,
    /// Prompt length of the prefill measurement.
    #[arg(long, default_value_t = 1024)]
    pub prompt_tokens: usize,
    /// Tokens generated one at a time after the prompt.
    #[arg(long, default_value_t = 64)]
    pub decode_tokens: usize,
    /// Timed runs per figure (the median is reported), after one warm-up.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Append one JSON object per figure to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Tiny sizes everywhere (a smoke run of the benchmark itself, e.g. on the
    /// fake device of scripts/gpu/fake-gpu.sh): the figures mean nothing.
    #[arg(long)]
    pub quick: bool,
}

impl GpuBenchArgs {
    pub fn options(&self) -> GpuBenchOptions {
        GpuBenchOptions {
            device: self.device,
            parts: self.parts.clone(),
            models: self.models.clone(),
            prompt_tokens: self.prompt_tokens,
            decode_tokens: self.decode_tokens,
            runs: self.runs,
            json: self.json.clone(),
            quick: self.quick,
        }
    }
}

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

/// A positive, finite number of seconds (up to a year).
fn positive_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if v > 0.0 && v <= 365.0 * 86400.0 {
        Ok(v)
    } else {
        Err(format!("{s}: give a number of seconds above 0"))
    }
}

fn parse_view(s: &str) -> Result<ViewStage, String> {
    s.parse().map_err(|e: crate::eval::EvalError| e.to_string())
}

impl RetrieveBenchArgs {
    pub fn options(&self) -> RetrieveBenchOptions {
        RetrieveBenchOptions {
            names: self.names.clone(),
            history: self.history.clone(),
            k: self.k,
            calls: self.calls,
            warmup: self.warmup,
            view: self.view,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn recommend_args(argv: &[&str]) -> RecommendBenchArgs {
        let cli = Cli::try_parse_from(["palr", "bench", "recommend"].iter().chain(argv))
            .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        match cli.command {
            Command::Bench(BenchCmd::Recommend(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn addresses_repeat_or_split_on_commas() {
        let one = recommend_args(&[]);
        assert_eq!(one.options().addrs, ["http://127.0.0.1:50051"]);
        assert_eq!(one.options().load, Load::Closed { concurrency: 1 });
        assert_eq!((one.options().requests, one.options().duration), (50, None));
        let two = recommend_args(&["--addr", "127.0.0.1:1,127.0.0.1:2", "--addr", "h:3"]);
        assert_eq!(two.addrs, ["127.0.0.1:1", "127.0.0.1:2", "h:3"]);
    }

    #[test]
    fn rate_deadline_and_allow_errors() {
        let a = recommend_args(&["--rate", "12.5", "--deadline-ms", "300", "--allow-errors"]);
        let o = a.options();
        assert_eq!(o.load, Load::Open { rate_rps: 12.5 });
        assert_eq!(o.deadline, Some(Duration::from_millis(300)));
        assert!(a.allow_errors);
        let d = recommend_args(&["--duration-s", "20"]).options();
        assert_eq!(d.duration, Some(Duration::from_secs(20)));
        assert_eq!(d.requests, usize::MAX);
        let both = recommend_args(&["--duration-s", "20", "--requests", "7"]).options();
        assert_eq!(both.requests, 7);
        for bad in ["0", "-1", "NaN", "inf", "x"] {
            assert!(
                Cli::try_parse_from(["palr", "bench", "recommend", "--duration-s", bad]).is_err(),
                "{bad}"
            );
        }
        let e = Cli::try_parse_from([
            "palr",
            "bench",
            "recommend",
            "--rate",
            "5",
            "--concurrency",
            "8",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("cannot be used with"), "{e}");
    }
}
