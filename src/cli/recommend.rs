//! `palr recommend`: a client for people. Prints a table (rank, id, title, score, retriever
//! rank, ranked by the LLM) and the stage times; `--json` prints the response instead.
//!
//! One call per invocation: Recommend by default, Rank with `--candidates`, Retrieve with
//! `--retrieve-only`, ListRetrievers with `--list-retrievers`, GetModelInfo with
//! `--model-info`.

use std::time::Duration;

use anyhow::Context;

use crate::service::client::Client;
use crate::service::recommender::{
    Mode, RankParams, RecommendParams, Recommendation, RetrieveParams, Timings,
};

#[derive(Debug, Clone, clap::Args)]
pub struct RecommendArgs {
    /// Server address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    #[command(flatten)]
    pub connect: super::connect::ConnectArgs,
    /// The user's history: item ids, oldest first, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub history: Vec<String>,
    /// Items to return (0 = the server's default).
    #[arg(long, default_value_t = 0)]
    pub k: u32,
    /// score, generate or retriever (default: the server's).
    #[arg(long)]
    pub mode: Option<Mode>,
    /// Retriever plugin (default: the server's).
    #[arg(long, default_value = "")]
    pub retriever: String,
    /// LoRA adapter to rank with, by its configured name (default: the server's default
    /// adapter; `--model-info` lists them).
    #[arg(long, default_value = "")]
    pub adapter: String,
    /// Candidates to retrieve and rank (0 = the server's default).
    #[arg(long, default_value_t = 0)]
    pub num_candidates: u32,
    /// Rank these item ids (comma-separated, best first) instead of retrieving (Rank RPC).
    #[arg(long, value_delimiter = ',')]
    pub candidates: Vec<String>,
    /// Item ids never to recommend (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub exclude: Vec<String>,
    /// Caller's user id (logs only).
    #[arg(long, default_value = "")]
    pub user_id: String,
    /// Retrieval only, no LLM (Retrieve RPC).
    #[arg(long, conflicts_with = "candidates")]
    pub retrieve_only: bool,
    /// List the server's retrievers and exit.
    #[arg(long, conflicts_with_all = ["model_info", "candidates", "retrieve_only"])]
    pub list_retrievers: bool,
    /// Show the model and the server's limits and exit.
    #[arg(long, conflicts_with_all = ["candidates", "retrieve_only"])]
    pub model_info: bool,
    /// Deadline for the call in milliseconds (sent as grpc-timeout).
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// At most `n` characters.
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

fn print_timings(t: &Timings) {
    println!(
        "retrieve {:.1} ms | queue {:.1} ms | prompt {:.1} ms | prefill {:.1} ms | decode {:.1} ms | \
         first token {:.1} ms | total {:.1} ms",
        t.retrieve_s * 1e3,
        t.queue_s * 1e3,
        t.prompt_s * 1e3,
        t.prefill_s * 1e3,
        t.decode_s * 1e3,
        t.first_token_s * 1e3,
        t.total_s * 1e3
    );
    println!(
        "prompt tokens {} (cached prefix {}), generated tokens {}",
        t.prompt_tokens, t.cached_prompt_tokens, t.generated_tokens
    );
}

/// The table `palr recommend` prints.
pub fn format_recommendation(r: &Recommendation) -> String {
    let mut out = format!(
        "{:>4}  {:<8} {:<50} {:>9}  {:>14}  {}\n",
        "rank", "id", "title", "score", "retriever rank", "by LLM"
    );
    for (i, it) in r.items.iter().enumerate() {
        out.push_str(&format!(
            "{:>4}  {:<8} {:<50} {:>9.4}  {:>14}  {}\n",
            i + 1,
            clip(&it.id, 8),
            clip(&it.title, 50),
            it.score,
            it.retriever_rank,
            yes(it.by_llm)
        ));
    }
    out
}

pub fn run(args: &RecommendArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(args))
}

async fn run_async(args: &RecommendArgs) -> anyhow::Result<()> {
    let mut client = Client::connect_with(&args.addr, &args.connect.options())
        .await?
        .with_timeout(args.timeout_ms.map(Duration::from_millis));
    let json = |v: &dyn erased::Json| -> anyhow::Result<()> {
        println!("{}", v.to_json()?);
        Ok(())
    };
    if args.list_retrievers {
        let list = client.list_retrievers().await?;
        if args.json {
            return json(&list);
        }
        println!(
            "{:<12} {:<12} {:<10} {:>3} {:<8} {:>8} {:>8}  description",
            "name", "plugin", "version", "abi", "default", "calls", "failures"
        );
        for r in &list {
            // Fusions are no plugin: no version, no ABI.
            let (version, abi) = if r.abi_version == 0 {
                ("-".to_owned(), "-".to_owned())
            } else {
                (r.plugin_version.clone(), r.abi_version.to_string())
            };
            println!(
                "{:<12} {:<12} {:<10} {:>3} {:<8} {:>8} {:>8}  {}",
                r.name,
                r.plugin_name,
                version,
                abi,
                yes(r.is_default),
                r.calls,
                r.failures,
                r.description
            );
        }
        return Ok(());
    }
    if args.model_info {
        let info = client.model_info().await?;
        if args.json {
            return json(&info);
        }
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    if args.retrieve_only {
        let r = client
            .retrieve(&RetrieveParams {
                history: args.history.clone(),
                num_candidates: args.num_candidates,
                retriever: args.retriever.clone(),
                exclude: args.exclude.clone(),
                user_id: args.user_id.clone(),
                history_timestamps: Vec::new(),
            })
            .await?;
        if args.json {
            return json(&r);
        }
        println!("{:>4}  {:<8} {:<50} {:>9}", "rank", "id", "title", "score");
        for (i, it) in r.items.iter().enumerate() {
            println!(
                "{:>4}  {:<8} {:<50} {:>9.4}",
                i + 1,
                clip(&it.id, 8),
                clip(&it.title, 50),
                it.score
            );
        }
        println!("retriever {}", r.retriever);
        print_timings(&r.timings);
        return Ok(());
    }
    let r = if args.candidates.is_empty() {
        client
            .recommend(&RecommendParams {
                history: args.history.clone(),
                k: args.k,
                retriever: args.retriever.clone(),
                num_candidates: args.num_candidates,
                adapter: args.adapter.clone(),
                mode: args.mode,
                exclude: args.exclude.clone(),
                user_id: args.user_id.clone(),
                history_timestamps: Vec::new(),
            })
            .await?
    } else {
        client
            .rank(
                &RankParams {
                    history: args.history.clone(),
                    candidates: args.candidates.clone(),
                    k: args.k,
                    adapter: args.adapter.clone(),
                    mode: args.mode,
                },
                &args.user_id,
            )
            .await?
    };
    if args.json {
        return json(&r);
    }
    print!("{}", format_recommendation(&r));
    if r.retriever.is_empty() {
        println!("mode {} (caller's candidates)", r.mode.name());
    } else {
        println!("mode {}, retriever {}", r.mode.name(), r.retriever);
    }
    print_timings(&r.timings);
    Ok(())
}

mod erased {
    //! `serde_json::to_string` behind a trait object, so one closure prints every kind.
    pub trait Json {
        fn to_json(&self) -> serde_json::Result<String>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> serde_json::Result<String> {
            serde_json::to_string(self)
        }
    }
}
