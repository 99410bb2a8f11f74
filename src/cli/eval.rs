//! `palr eval`: offline evaluation of retrievers and retriever + LLM methods (thin glue over
//! `palr::eval`), in process or against a running server.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::chat::ChatTemplate;
use crate::data::{self, Catalog, Dataset, Format, LoadOptions, Split, Stage};
use crate::engine::{self, Device, WeightDtype};
use crate::eval::{self, EvalOptions, LocalBackend, Method, remote::RemoteBackend};
use crate::rank::{Ranker, RankerConfig};
use crate::retrieval::{FusionSpec, RetrieverRegistry, RetrieverSpec, TrainingView};
use crate::service::config::{Overrides, ServerConfig};
use crate::tokenizer::Tokenizer;

/// Which held-out item is the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SplitArg {
    /// Second-to-last item; retrievers see the training histories only.
    Valid,
    /// Last item; retrievers see the training histories plus each validation item.
    Test,
}

impl From<SplitArg> for Stage {
    fn from(s: SplitArg) -> Stage {
        match s {
            SplitArg::Valid => Stage::Valid,
            SplitArg::Test => Stage::Test,
        }
    }
}

/// Where the data set comes from (shared by `eval` and `sft-data`).
#[derive(Debug, Clone, clap::Args)]
pub struct DataArgs {
    /// A data set directory, or a data set name under the data directory.
    #[arg(long, default_value = "ml-100k")]
    pub data: PathBuf,
    /// Where data set names are looked up [default: data]
    #[arg(long, env = data::DATA_DIR_ENV)]
    pub data_dir: Option<PathBuf>,
    /// recbole, ml-100k, ml-1m, csv or jsonl [default: detected from the files]
    #[arg(long, value_parser = parse_format)]
    pub format: Option<Format>,
}

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse().map_err(|e: data::DataError| e.to_string())
}

impl DataArgs {
    pub fn load(&self) -> anyhow::Result<Dataset> {
        let dir = if self.data.is_dir() {
            self.data.clone()
        } else {
            self.data_dir
                .clone()
                .unwrap_or_else(data::default_data_dir)
                .join(&self.data)
        };
        Dataset::load(
            &dir,
            &LoadOptions {
                format: self.format,
                ..LoadOptions::default()
            },
        )
        .with_context(|| format!("loading the data set in {}", dir.display()))
    }
}

/// The model and ranker settings (shared by `eval` and `sft-data`).
#[derive(Debug, Clone, clap::Args)]
pub struct RankerArgs {
    /// Hugging Face model directory [default: $PALR_MODEL_DIR or models/smollm2-135m-instruct]
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The ranker's settings as in the server config's `[ranking]` table (TOML file with the
    /// fields of that table at top level); default: the built-in defaults.
    #[arg(long)]
    pub ranker_config: Option<PathBuf>,
}

impl RankerArgs {
    pub fn model_dir(&self) -> PathBuf {
        self.model
            .clone()
            .unwrap_or_else(crate::gguf::fetch::default_model_dir)
    }

    pub fn ranker_config(&self) -> anyhow::Result<RankerConfig> {
        match &self.ranker_config {
            None => Ok(RankerConfig::default()),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))
            }
        }
    }

    pub fn tokenizer(&self) -> anyhow::Result<Tokenizer> {
        let dir = self.model_dir();
        anyhow::ensure!(
            dir.join("tokenizer.json").is_file(),
            "no tokenizer.json in {}: run `palr model fetch` or pass --model DIR",
            dir.display()
        );
        super::generate::load_tokenizer(&dir)
    }

    pub fn chat_template(&self) -> anyhow::Result<Option<ChatTemplate>> {
        let dir = self.model_dir();
        ChatTemplate::from_model_dir(&dir)
            .with_context(|| format!("reading the chat template of {}", dir.display()))
    }
}

/// Parses `NAME=VALUE`.
fn name_value<'a>(flag: &str, s: &'a str) -> anyhow::Result<(&'a str, &'a str)> {
    match s.split_once('=') {
        Some((n, v)) if !n.is_empty() && !v.is_empty() => Ok((n, v)),
        _ => bail!("{flag} {s:?}: write NAME=VALUE"),
    }
}

/// The retrievers an evaluation loads, as the server would.
#[derive(Debug, Clone)]
pub struct RetrieverSet {
    pub specs: Vec<RetrieverSpec>,
    pub fusions: Vec<FusionSpec>,
    /// Where bare library names are looked up ([] = next to the palr executable).
    pub plugin_dirs: Vec<PathBuf>,
}

/// The server configuration's `[retrieval]` section and `[ranking]` table: `file`, layered
/// as the server layers it (environment included), or the built-in defaults
/// (= `configs/palr.toml`).
pub fn server_config(file: Option<&Path>) -> anyhow::Result<ServerConfig> {
    match file {
        Some(p) => ServerConfig::load(Some(p), std::env::vars(), &Overrides::default())
            .with_context(|| format!("loading the server config {}", p.display())),
        None => Ok(ServerConfig::default()),
    }
}

/// The retrievers of `cfg`, then the command line's: `--retriever NAME=LIB` adds one (or
/// replaces the one of that name), `--retriever-config NAME=JSON` sets a loaded one's
/// config, `--fusion SPEC` adds a fusion (shared by `eval` and `bench retrieve`).
pub fn retriever_set(
    cfg: &ServerConfig,
    retrievers: &[String],
    configs: &[String],
    fusions: &[String],
) -> anyhow::Result<RetrieverSet> {
    let mut specs = cfg.retrieval.retrievers.clone();
    for r in retrievers {
        let (n, lib) = name_value("--retriever", r)?;
        let spec = RetrieverSpec::new(n, lib, "{}");
        match specs.iter_mut().find(|s| s.name == n) {
            Some(s) => *s = spec,
            None => specs.push(spec),
        }
    }
    for c in configs {
        let (n, json) = name_value("--retriever-config", c)?;
        let loaded: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        let spec = specs.iter_mut().find(|s| s.name == n).with_context(|| {
            format!(
                "--retriever-config {n}=...: no retriever called {n} (loaded: {}); add one \
                 with --retriever {n}=LIBRARY or in the config's [[retrieval.retrievers]]",
                loaded.join(", ")
            )
        })?;
        spec.config_json = json.to_owned();
    }
    let mut fusion_specs = cfg.retrieval.fusions.clone();
    for f in fusions {
        let spec: FusionSpec = f
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--fusion: {e}"))?;
        fusion_specs.retain(|s| s.name != spec.name);
        fusion_specs.push(spec);
    }
    Ok(RetrieverSet {
        specs,
        fusions: fusion_specs,
        plugin_dirs: cfg.retrieval.plugin_dirs.clone(),
    })
}

impl RetrieverSet {
    /// Every name a method can use.
    pub fn names(&self) -> Vec<String> {
        self.specs
            .iter()
            .map(|s| s.name.clone())
            .chain(self.fusions.iter().map(|f| f.name.clone()))
            .collect()
    }

    /// Loads the plugins over `view` and adds the fusions.
    pub fn load(&self, view: TrainingView) -> anyhow::Result<RetrieverRegistry> {
        let view = Arc::new(view);
        let registry = if self.plugin_dirs.is_empty() {
            RetrieverRegistry::new(view)
        } else {
            RetrieverRegistry::with_search_dirs(view, self.plugin_dirs.clone())
        };
        registry.load_all(&self.specs)?;
        for f in &self.fusions {
            registry.add_fusion(f.clone())?;
        }
        Ok(registry)
    }
}

/// A progress bar with ETA on stderr (hidden when stderr is not a terminal or `hidden`).
pub fn progress_bar(what: &str, hidden: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        None,
        if hidden {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        },
    );
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{elapsed_precise}} [{{wide_bar}}] {{pos}}/{{len}} {what} ({{per_sec}}, ETA {{eta}})"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Which target: the validation item (for tuning) or the test item (for reporting).
    #[arg(long, value_enum, default_value = "test")]
    pub split: SplitArg,
    /// Comma-separated methods: RETRIEVER, RETRIEVER+score, RETRIEVER+generate,
    /// RETRIEVER+MODE@ADAPTER [default: every retriever alone, with score and with generate]
    #[arg(long)]
    pub methods: Option<String>,
    /// A server config file (configs/palr.toml's format): its retrievers, fusions and
    /// plugin_dirs are loaded exactly as the server would, and its [ranking] table is the
    /// ranker's unless --ranker-config is given [default: the built-in defaults, which are
    /// configs/palr.toml]
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Add a retriever plugin as NAME=LIBRARY (repeatable; replaces a configured one of that
    /// name)
    #[arg(long = "retriever", value_name = "NAME=LIBRARY")]
    pub retrievers: Vec<String>,
    /// A retriever's JSON config as NAME=JSON (repeatable), e.g. markov={"history_items":1}
    #[arg(long = "retriever-config", value_name = "NAME=JSON")]
    pub retriever_configs: Vec<String>,
    /// Add a fused retriever as NAME=METHOD:MEMBER*WEIGHT,... (repeatable; METHOD rrf or
    /// score), e.g. blend=rrf:sasrec*1,markov*0.3
    #[arg(long = "fusion", value_name = "NAME=SPEC")]
    pub fusions: Vec<String>,
    /// Candidates (the retriever's top ones) an LLM method re-ranks.
    #[arg(long, default_value_t = 20)]
    pub candidates: usize,
    /// Evaluate a sample of this many users (drawn with --seed) [default: all]
    #[arg(long)]
    pub users: Option<usize>,
    /// Seed of the user sample.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub ranker: RankerArgs,
    /// Where the model runs (in process): cpu, cuda (= cuda:0) or cuda:N (needs --dtype bf16).
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// Weight element type in memory.
    #[arg(long, default_value = "f32")]
    pub dtype: WeightDtype,
    /// Engine worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// A LoRA adapter as NAME=DIR (repeatable), used by methods written RETRIEVER+MODE@NAME.
    #[arg(long = "adapter", value_name = "NAME=DIR")]
    pub adapters: Vec<String>,
    /// Evaluate a running server (host:port or URL) instead of running in process. The
    /// server's retrievers must be built from the evaluated split's training view.
    #[arg(long)]
    pub addr: Option<String>,
    /// TLS and token options for --addr.
    #[command(flatten)]
    pub connect: super::connect::ConnectArgs,
    /// Per-call timeout against a server, in seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_s: u64,
    /// Write the JSON report here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write the Markdown table here (it is always printed).
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Keep each user's target rank per method in the JSON report.
    #[arg(long)]
    pub per_user: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// The ranker of a LoRA adapter: the one place that changes when the engine can load
/// adapters (load the model with the adapter, build a `Ranker` over it as for the base).
pub fn run(args: &EvalArgs) -> anyhow::Result<()> {
    let ds = args.data.load()?;
    let split = Split::leave_one_out(&ds.interactions);
    let stage: Stage = args.split.into();
    let cfg = server_config(args.config.as_deref())?;
    let set = retriever_set(
        &cfg,
        &args.retrievers,
        &args.retriever_configs,
        &args.fusions,
    )?;
    let mut adapters = Vec::new();
    for a in &args.adapters {
        let (n, d) = name_value("--adapter", a)?;
        adapters.push((n.to_owned(), PathBuf::from(d)));
    }
    let methods = match &args.methods {
        Some(m) => Method::parse_list(m)?,
        None => {
            let names = set.names();
            let adapter_names: Vec<String> = adapters.iter().map(|a| a.0.clone()).collect();
            Method::defaults(&names, &adapter_names)
        }
    };
    let opts = EvalOptions {
        stage,
        methods,
        candidates: args.candidates,
        users: args.users,
        seed: args.seed,
        per_user: args.per_user,
    };
    let catalog = Arc::new(ds.catalog.clone());
    let bar = progress_bar("users", args.no_progress);
    let mut progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let report = match &args.addr {
        Some(addr) => {
            if !adapters.is_empty() {
                bail!(
                    "--adapter loads adapters in process; a server has its own: name them in \
                     --methods as RETRIEVER+MODE@NAME"
                );
            }
            let backend = RemoteBackend::connect(
                addr,
                &args.connect.options(),
                catalog,
                Duration::from_secs(args.timeout_s),
            )?;
            eval::evaluate(
                &backend,
                &split,
                &ds.catalog,
                &ds.interactions,
                &opts,
                &mut progress,
            )?
        }
        None => {
            let view = eval::training_view(&split, &ds.interactions, &ds.catalog, stage)?;
            let mut backend = LocalBackend::from_registry(set.load(view)?);
            if opts.methods.iter().any(|m| m.mode.is_some()) {
                // The ranker's settings: --ranker-config, else the config file's [ranking].
                let ranker_cfg = match args.ranker.ranker_config {
                    Some(_) => args.ranker.ranker_config()?,
                    None => cfg.ranking.clone(),
                };
                // One model with every adapter loaded unmerged: requests pick theirs.
                let ranker = base_ranker(args, catalog, &adapters, ranker_cfg)?;
                backend = backend.with_ranker(None, Arc::new(ranker));
            }
            eval::evaluate(
                &backend,
                &split,
                &ds.catalog,
                &ds.interactions,
                &opts,
                &mut progress,
            )?
        }
    };
    bar.finish_and_clear();
    let md = report.markdown();
    println!("{md}");
    if let Some(p) = &args.out {
        std::fs::write(p, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &args.markdown {
        std::fs::write(p, &md).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn base_ranker(
    args: &EvalArgs,
    catalog: Arc<Catalog>,
    adapters: &[(String, PathBuf)],
    ranker_cfg: RankerConfig,
) -> anyhow::Result<Ranker> {
    let dir = args.ranker.model_dir();
    super::generate::check_device_dtype(args.device, args.dtype)?;
    let opts = engine::LoadOptions {
        device: args.device,
        dtype: args.dtype,
        threads: args.threads,
        adapters: adapters
            .iter()
            .map(|(name, dir)| engine::AdapterSpec {
                name: name.clone(),
                dir: dir.clone(),
                merge: false,
            })
            .collect(),
        ..engine::LoadOptions::default()
    };
    let model = engine::load(&dir, &opts).with_context(|| {
        format!(
            "loading the model in {} (run `palr model fetch` or pass --model)",
            dir.display()
        )
    })?;
    let tok = Arc::new(args.ranker.tokenizer()?);
    let chat = args.ranker.chat_template()?;
    Ok(Ranker::new(model, tok, chat.as_ref(), catalog, ranker_cfg)?)
}
