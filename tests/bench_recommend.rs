//! `palr bench recommend` against real servers: two in-process servers on loopback ports (the
//! real model, MovieLens-100k and the plugins, as `tests/service.rs` runs them), one of which
//! refuses every request; the benchmark must spread its calls over both, count each call by
//! outcome and status code, keep going after errors, and fail the command unless errors are
//! allowed. Also a deadline that a sleeping plugin cannot meet: timed out, not refused.
//!
//! Needs `cargo build --release --workspace` (plugins), `palr model fetch` and `palr data
//! fetch ml-100k` first, as `scripts/test.sh` does.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use palr::bench::recommend::{Load, RecommendBenchOptions, RecommendBenchReport, run};
use palr::retrieval::RetrieverSpec;
use palr::service::client::ConnectOptions;
use palr::service::{Metrics, Mode, Recommender, RunningServer, ServerConfig};

fn data_dir() -> PathBuf {
    common::ml100k_dir()
}

/// The default configuration on loopback ports, no warm-up, plus a plugin that sleeps 3 s
/// per call under a 10 s per-call limit (so only the caller's deadline cuts it short).
fn config() -> ServerConfig {
    let mut c = ServerConfig::default();
    c.server.addr = "127.0.0.1:0".into();
    c.server.metrics_addr = String::new();
    c.server.warmup = false;
    c.model.dir = common::model_dir();
    c.data.dir = data_dir();
    c.retrieval.retrievers.push(RetrieverSpec::new(
        "sleepy",
        "palr_retriever_testkit",
        r#"{"sleep_ms": 3000}"#,
    ));
    c.retrieval.timeout_ms = 10_000;
    c
}

fn options(addrs: Vec<String>, requests: usize) -> RecommendBenchOptions {
    RecommendBenchOptions {
        addrs,
        connect: ConnectOptions::default(),
        data: data_dir(),
        requests,
        duration: None,
        warmup: 2,
        load: Load::Closed { concurrency: 2 },
        deadline: None,
        backoff: None,
        history_len: 20,
        num_candidates: 20,
        k: 10,
        // Retrieval only: what is checked here is the client's counting, not the LLM.
        mode: Mode::Retriever,
        retriever: "markov".into(),
        adapter: String::new(),
    }
}

fn recommend_calls(core: &Recommender, code: &str) -> u64 {
    core.metrics()
        .requests
        .with_label_values(&["Recommend", code])
        .get()
}

#[test]
fn spreads_over_two_servers_and_counts_refusals_by_code() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let good = Arc::new(Recommender::load(&config(), Metrics::new()).unwrap());
    // The second server refuses every request: histories of 20 items against a limit of 5.
    let mut strict_cfg = config();
    strict_cfg.limits.max_request_history = 5;
    strict_cfg.limits.max_history_items = 5;
    let strict = Arc::new(Recommender::load(&strict_cfg, Metrics::new()).unwrap());
    rt.block_on(async {
        let a = RunningServer::start(good.clone()).await.unwrap();
        let b = RunningServer::start(strict.clone()).await.unwrap();
        let addrs = vec![
            format!("http://{}", a.grpc_addr),
            format!("http://{}", b.grpc_addr),
        ];

        let requests = 10;
        let report = run(&options(addrs.clone(), requests)).await.unwrap();
        // Every call ran (none stopped the run) and is counted once.
        assert_eq!(report.outcomes.calls, requests as u64);
        assert_eq!(
            report.outcomes.by_code.values().sum::<u64>(),
            report.outcomes.calls
        );
        // Round robin: half to each; the good one answered all of its share, the strict one
        // refused all of its share with INVALID_ARGUMENT, before any deadline.
        assert_eq!(report.per_addr.len(), 2);
        let (pa, pb) = (&report.per_addr[0], &report.per_addr[1]);
        assert_eq!(
            (pa.addr.as_str(), pb.addr.as_str()),
            (addrs[0].as_str(), addrs[1].as_str())
        );
        assert_eq!((pa.outcomes.calls, pa.outcomes.answered_in_time), (5, 5));
        assert_eq!((pb.outcomes.calls, pb.outcomes.answered()), (5, 0));
        assert_eq!(pb.outcomes.refused["INVALID_ARGUMENT"], 5);
        assert_eq!(report.outcomes.answered_in_time, 5);
        assert_eq!(report.outcomes.refused["INVALID_ARGUMENT"], 5);
        assert!(report.outcomes.timed_out.is_empty());
        assert!(
            report.outcomes.first_error["INVALID_ARGUMENT"].contains("history"),
            "{:?}",
            report.outcomes.first_error
        );
        // Latency is over the answers only.
        assert_eq!(report.latency.count, 5);
        // The warm-up went round robin too: one answer, one refusal.
        assert_eq!(report.warmup.calls, 2);
        assert_eq!(report.warmup.failed(), 1);
        // The servers agree with the client's counts (warm-up included).
        assert_eq!(recommend_calls(&good, "OK"), 6);
        assert_eq!(recommend_calls(&good, "INVALID_ARGUMENT"), 0);
        assert_eq!(recommend_calls(&strict, "INVALID_ARGUMENT"), 6);
        assert_eq!(recommend_calls(&strict, "OK"), 0);

        // The command fails on such a run unless failures are declared expected.
        let e = palr::cli::bench::check_failures(&report, false).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("5 of 10 timed calls (INVALID_ARGUMENT 5)") && e.contains("--allow-errors"),
            "{e}"
        );
        palr::cli::bench::check_failures(&report, true).unwrap();

        // A closed loop that backs off after each failure: against the refusing server, 2
        // workers for 0.5 s with 100 ms back-off send a handful of calls, not thousands.
        let mut polite = options(addrs[1..].to_vec(), usize::MAX);
        polite.duration = Some(std::time::Duration::from_millis(500));
        polite.backoff = Some(std::time::Duration::from_millis(100));
        let report = run(&polite).await.unwrap();
        assert!(
            (2..=14).contains(&report.outcomes.calls),
            "{} calls",
            report.outcomes.calls
        );
        assert_eq!(report.outcomes.answered(), 0);

        // One server, open loop: all answered, nothing to complain about.
        let mut one = options(addrs[..1].to_vec(), 6);
        one.load = Load::Open { rate_rps: 50.0 };
        let report: RecommendBenchReport = run(&one).await.unwrap();
        assert_eq!(report.outcomes.answered_in_time, 6);
        assert_eq!(report.outcomes.failed() + report.warmup.failed(), 0);
        assert!(report.max_send_lag_ms.is_some());
        palr::cli::bench::check_failures(&report, false).unwrap();

        // A run bounded by time rather than count ends, with every call it sent counted.
        let mut timed = options(addrs[..1].to_vec(), usize::MAX);
        timed.duration = Some(Duration::from_millis(300));
        timed.warmup = 0;
        let report = run(&timed).await.unwrap();
        assert!(report.requests > 0 && report.requests < usize::MAX);
        assert_eq!(report.outcomes.calls, report.requests as u64);
        assert_eq!(report.outcomes.answered_in_time, report.outcomes.calls);

        // --adapter reaches the server: one it does not have is NOT_FOUND, naming it.
        let mut adapted = options(addrs[..1].to_vec(), 2);
        adapted.mode = Mode::Score;
        adapted.adapter = "not-loaded".into();
        adapted.warmup = 0;
        let report = run(&adapted).await.unwrap();
        assert_eq!(report.outcomes.refused["NOT_FOUND"], 2);
        assert!(
            report.outcomes.first_error["NOT_FOUND"].contains("\"not-loaded\""),
            "{:?}",
            report.outcomes.first_error
        );

        // A deadline the sleeping plugin cannot meet: every call times out (the client's
        // channel cancels it at the deadline, or the server says DEADLINE_EXCEEDED), none
        // is counted as refused or answered.
        let mut slow = options(addrs[..1].to_vec(), 2);
        slow.retriever = "sleepy".into();
        slow.warmup = 0;
        slow.deadline = Some(Duration::from_millis(300));
        let report = run(&slow).await.unwrap();
        assert_eq!(report.deadline_ms, Some(300.0));
        assert_eq!(report.outcomes.answered(), 0);
        assert!(report.outcomes.refused.is_empty(), "{report:?}");
        assert_eq!(report.outcomes.timed_out.values().sum::<u64>(), 2);
        for code in report.outcomes.timed_out.keys() {
            assert!(
                code == "CANCELLED" || code == "DEADLINE_EXCEEDED",
                "{code}: {:?}",
                report.outcomes.first_error
            );
        }
    });
}
