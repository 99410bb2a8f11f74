//! `palr bench recommend`: end-to-end latency of a running server, measured from a client.
//!
//! Histories are real: the most recent `history_len` items of data set users who have at
//! least that many, taken in user order (so every run sends the same requests). After
//! `warmup` untimed calls, `requests` calls are sent by `concurrency` workers; the report
//! gives client-side latency percentiles (nearest rank) and the server's per-stage times.
//! The machine's load average is recorded before and after, since other work skews
//! latency.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::data::{Dataset, LoadOptions};

use crate::service::client::Client;
use crate::service::recommender::{Mode, RecommendParams, Recommendation};

/// `palr bench recommend` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct RecommendBenchArgs {
    /// Server address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    #[command(flatten)]
    pub connect: crate::cli::connect::ConnectArgs,
    /// Data set the server runs on (histories are drawn from it).
    #[arg(long, default_value = "data/ml-100k")]
    pub data: PathBuf,
    /// Timed requests.
    #[arg(long, default_value_t = 50)]
    pub requests: usize,
    /// Untimed requests first.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
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
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Summary of one series of seconds, reported in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    /// Nearest-rank percentiles of `secs` (empty = all zero).
    pub fn of(secs: &[f64]) -> Self {
        if secs.is_empty() {
            return Self::default();
        }
        let mut v: Vec<f64> = secs.iter().map(|s| s * 1e3).collect();
        v.sort_by(f64::total_cmp);
        let pct = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Self {
            mean_ms: v.iter().sum::<f64>() / v.len() as f64,
            p50_ms: pct(0.50),
            p90_ms: pct(0.90),
            p99_ms: pct(0.99),
            max_ms: v[v.len() - 1],
        }
    }
}

/// The benchmark's result.
#[derive(Debug, Clone, Serialize)]
pub struct RecommendBenchReport {
    pub addr: String,
    pub model: String,
    pub backend: String,
    pub mode: Mode,
    pub retriever: String,
    pub requests: usize,
    pub concurrency: usize,
    pub history_len: usize,
    pub num_candidates: u32,
    pub k: u32,
    pub wall_s: f64,
    pub throughput_rps: f64,
    /// Client-side latency (connection reused).
    pub latency: Summary,
    /// Server-side stages.
    pub queue: Summary,
    pub retrieve: Summary,
    pub prompt: Summary,
    pub prefill: Summary,
    pub decode: Summary,
    pub first_token: Summary,
    pub server_total: Summary,
    pub mean_prompt_tokens: f64,
    pub mean_cached_prompt_tokens: f64,
    pub mean_generated_tokens: f64,
    pub loadavg_before: String,
    pub loadavg_after: String,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Histories of `n` users: the last `len` items of users with at least `len` interactions.
fn histories(data: &std::path::Path, len: usize, n: usize) -> anyhow::Result<Vec<Vec<String>>> {
    let ds = Dataset::load(data, &LoadOptions::default())?;
    let inter = &ds.interactions;
    let mut out = Vec::with_capacity(n);
    for u in 0..inter.n_users() as u32 {
        let items = inter.items_of(u);
        if items.len() >= len {
            out.push(
                items[items.len() - len..]
                    .iter()
                    .map(|&i| ds.catalog.id(i).unwrap_or_default().to_owned())
                    .collect(),
            );
            if out.len() == n {
                break;
            }
        }
    }
    anyhow::ensure!(
        !out.is_empty(),
        "no user in {} has {len} interactions; use a smaller --history-len",
        data.display()
    );
    Ok(out)
}

/// Runs the benchmark against a running server.
pub async fn run(args: &RecommendBenchArgs) -> anyhow::Result<RecommendBenchReport> {
    anyhow::ensure!(args.requests > 0, "--requests must be at least 1");
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    let hist = Arc::new(histories(
        &args.data,
        args.history_len,
        args.requests + args.warmup,
    )?);
    let mut client = Client::connect_with(&args.addr, &args.connect.options()).await?;
    let info = client.model_info().await?;
    let params = |i: usize| RecommendParams {
        history: hist[i % hist.len()].clone(),
        k: args.k,
        retriever: args.retriever.clone(),
        num_candidates: args.num_candidates,
        mode: Some(args.mode),
        user_id: "bench".into(),
        ..RecommendParams::default()
    };
    for i in 0..args.warmup {
        client
            .recommend(&RecommendParams {
                user_id: "bench-warmup".into(),
                ..params(args.requests + i)
            })
            .await?;
    }
    let loadavg_before = loadavg();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let mut client = client.clone();
        let next = next.clone();
        let all: Vec<RecommendParams> = (0..args.requests).map(params).collect();
        workers.push(tokio::spawn(async move {
            let mut done: Vec<(f64, Recommendation)> = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= all.len() {
                    return Ok::<_, anyhow::Error>(done);
                }
                let t = Instant::now();
                let r = client.recommend(&all[i]).await?;
                done.push((t.elapsed().as_secs_f64(), r));
            }
        }));
    }
    let mut results = Vec::new();
    for w in workers {
        results.extend(w.await??);
    }
    let wall_s = t0.elapsed().as_secs_f64();
    let loadavg_after = loadavg();
    let col = |f: &dyn Fn(&Recommendation) -> f64| -> Vec<f64> {
        results.iter().map(|(_, r)| f(r)).collect()
    };
    let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let retriever = results
        .first()
        .map(|(_, r)| r.retriever.clone())
        .unwrap_or_default();
    Ok(RecommendBenchReport {
        addr: args.addr.clone(),
        model: info.model_name,
        backend: info.backend,
        mode: args.mode,
        retriever,
        requests: results.len(),
        concurrency: args.concurrency,
        history_len: args.history_len,
        num_candidates: args.num_candidates,
        k: args.k,
        wall_s,
        throughput_rps: results.len() as f64 / wall_s,
        latency: Summary::of(&results.iter().map(|r| r.0).collect::<Vec<_>>()),
        queue: Summary::of(&col(&|r| r.timings.queue_s)),
        retrieve: Summary::of(&col(&|r| r.timings.retrieve_s)),
        prompt: Summary::of(&col(&|r| r.timings.prompt_s)),
        prefill: Summary::of(&col(&|r| r.timings.prefill_s)),
        decode: Summary::of(&col(&|r| r.timings.decode_s)),
        first_token: Summary::of(&col(&|r| r.timings.first_token_s)),
        server_total: Summary::of(&col(&|r| r.timings.total_s)),
        mean_prompt_tokens: mean(col(&|r| r.timings.prompt_tokens as f64)),
        mean_cached_prompt_tokens: mean(col(&|r| r.timings.cached_prompt_tokens as f64)),
        mean_generated_tokens: mean(col(&|r| r.timings.generated_tokens as f64)),
        loadavg_before,
        loadavg_after,
    })
}

impl RecommendBenchReport {
    /// Prints the report as a table.
    pub fn print_table(&self) {
        println!(
            "{} requests, mode {}, retriever {}, concurrency {}, history {}, candidates {}, k {}",
            self.requests,
            self.mode.name(),
            self.retriever,
            self.concurrency,
            self.history_len,
            self.num_candidates,
            self.k
        );
        println!("model {} on {}", self.model, self.backend);
        println!(
            "wall {:.2} s, {:.2} requests/s; load average before {} / after {}",
            self.wall_s, self.throughput_rps, self.loadavg_before, self.loadavg_after
        );
        println!(
            "{:<22} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "ms", "mean", "p50", "p90", "p99", "max"
        );
        for (name, s) in [
            ("latency (client)", &self.latency),
            ("server total", &self.server_total),
            ("  queue", &self.queue),
            ("  retrieve", &self.retrieve),
            ("  prompt", &self.prompt),
            ("  prefill", &self.prefill),
            ("  decode", &self.decode),
            ("  first token", &self.first_token),
        ] {
            println!(
                "{name:<22} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                s.mean_ms, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms
            );
        }
        println!(
            "tokens per request: prompt {:.0} (cached prefix {:.0}), generated {:.1}",
            self.mean_prompt_tokens, self.mean_cached_prompt_tokens, self.mean_generated_tokens
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let secs: Vec<f64> = (1..=100).map(|i| i as f64 / 1e3).collect();
        let s = Summary::of(&secs);
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p90_ms, 90.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.max_ms, 100.0);
        assert!((s.mean_ms - 50.5).abs() < 1e-9);
        let one = Summary::of(&[0.002]);
        assert_eq!((one.p50_ms, one.p99_ms), (2.0, 2.0));
        assert_eq!(Summary::of(&[]), Summary::default());
    }

    #[test]
    fn modes_parse() {
        assert_eq!("generate".parse::<Mode>().unwrap(), Mode::Generate);
        for m in Mode::ALL {
            assert_eq!(m.name().parse::<Mode>().unwrap(), m);
        }
        assert!(
            "llm"
                .parse::<Mode>()
                .unwrap_err()
                .contains("score, generate or retriever")
        );
    }
}
