//! `palr serve`: load the configuration, the data, the plugins and the model, and serve
//! gRPC until SIGTERM/SIGINT (then drain and exit 0); SIGHUP reloads the retrievers from the
//! configuration (as the admin API's ReloadRetrievers does).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use crate::engine::Device;
use crate::engine::WeightDtype;
use crate::service::Drained;
use crate::service::config::LogFormat;
use crate::service::security::Transport;
use crate::service::server::{Hangup, Termination, bind, bind_admin};
use crate::service::{ConfigSource, Metrics, Overrides, Recommender, serve};

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration (commented example with every default: configs/palr.toml).
    /// Without it: the built-in defaults, then PALR_<TABLE>__<KEY> variables, then flags.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// gRPC listen address, IP:PORT [server.addr].
    #[arg(long)]
    pub addr: Option<String>,
    /// /metrics listen address, IP:PORT; "" = off [server.metrics_addr].
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// Model directory [model.dir].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Where the model runs: cpu, cuda (= cuda:0) or cuda:N; a GPU needs --dtype bf16
    /// [model.device].
    #[arg(long)]
    pub device: Option<Device>,
    /// Weights in memory: f32 or bf16 [model.dtype].
    #[arg(long)]
    pub dtype: Option<WeightDtype>,
    /// Data set directory [data.dir].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// text or json [server.log_format]; the level comes from RUST_LOG (default info).
    #[arg(long)]
    pub log_format: Option<LogFormat>,
    /// Engine threads, 0 = one per core [model.threads].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Ranking jobs at once [server.max_concurrent_rank].
    #[arg(long)]
    pub max_concurrent_rank: Option<usize>,
    /// Requests that may wait for the ranker [server.max_queue].
    #[arg(long)]
    pub max_queue: Option<usize>,
    /// Default retriever [retrieval.default].
    #[arg(long)]
    pub retriever: Option<String>,
}

impl ServeArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            addr: self.addr.clone(),
            metrics_addr: self.metrics_addr.clone(),
            model_dir: self.model.clone(),
            device: self.device,
            dtype: self.dtype,
            data_dir: self.data.clone(),
            log_format: self.log_format,
            threads: self.threads,
            max_concurrent_rank: self.max_concurrent_rank,
            max_queue: self.max_queue,
            default_retriever: self.retriever.clone(),
        }
    }
}

/// Installs the global log subscriber (stderr; RUST_LOG or `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    // Kept, so a reload (admin API, SIGHUP) reads the configuration the same way again.
    let source = ConfigSource {
        file: args.config.clone(),
        overrides: args.overrides(),
    };
    let cfg = source.load()?;
    init_tracing(cfg.server.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("palr-rt")
        .build()
        .context("starting the async runtime")?;
    let drained = rt.block_on(async move {
        // Signal handlers first: a SIGTERM during start-up must drain, not kill (and a
        // SIGHUP must not end the process).
        let termination = Termination::install();
        let hangup = Hangup::install();
        // Bind first, so a taken port fails before the model loads.
        let grpc = bind(cfg.server.grpc_addr()?).await?;
        let metrics = match cfg.server.metrics_socket()? {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        // Certificates and tokens too, before the model loads.
        let transport = Transport::from_config(&cfg.server)?;
        let admin = bind_admin(&cfg.server, &transport).await?;
        let core = tokio::task::spawn_blocking(move || {
            Recommender::load(&cfg, Metrics::new()).map(|c| c.reloadable_from(source))
        })
        .await
        .context("loading")??;
        let core = Arc::new(core);
        let reloads = tokio::spawn(hangup.reload_on_signal(core.clone()));
        let drained = serve(core, grpc, metrics, admin, transport, termination.wait()).await;
        reloads.abort();
        anyhow::Ok(drained?)
    })?;
    // Abandoned requests (drain timeout) must not keep the process alive.
    rt.shutdown_background();
    tracing::info!(?drained, "exit");
    match drained {
        Drained::All => Ok(()),
        // Lost requests are not a clean exit.
        Drained::TimedOut { dropped } => anyhow::bail!(
            "shutdown cut off {dropped} accepted requests when server.drain_timeout_s passed"
        ),
    }
}
