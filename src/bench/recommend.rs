//! `palr bench recommend`: running servers measured from a client — latency, throughput and
//! the outcome of every call.
//!
//! Histories are real: the most recent `history_len` items of data set users who have at
//! least that many, taken in user order (so every run sends the same requests). Request `i`
//! goes to address `i mod n`: round robin over the addresses, one HTTP/2 connection to each,
//! as a client-side balancer does over replicas. After `warmup` untimed calls (round robin
//! too, so every replica warms up; without a deadline), timed calls are sent either
//! closed-loop — `concurrency` workers, each sending its next request when its previous one
//! ends — or open-loop at a fixed rate: request `i` leaves at `i / rate` seconds whatever is
//! still in flight, so a server slower than the rate builds a queue as independent callers
//! would. The run sends `requests` calls, or as many as `duration` allows (closed loop: no
//! call starts after it; open loop: `rate × duration` calls), whichever ends first: a server
//! that refuses at once would otherwise use up a closed loop's requests in moments. With a
//! deadline, every call carries it as its gRPC timeout (`grpc-timeout`).
//!
//! No failure stops the run. Every call ends in one [`Outcome`], counted overall, per
//! address and by final status code ([`Outcomes`]), and the first message of each error code
//! is kept; whether failures fail the command is the caller's decision (`palr bench
//! recommend` exits non-zero on any unless `--allow-errors`). Latency percentiles and the
//! server's stage times are over the answered (OK) calls. The machine's load average is
//! recorded before and after, since other work skews latency.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::stats::{Summary, mean};
use super::{Result, ensure};
use crate::data::{Dataset, LoadOptions};
use crate::service::client::{Client, ClientError, ConnectOptions};
use crate::service::grpc::code_name;
use crate::service::recommender::{Mode, RecommendParams, Recommendation};

/// How requests are sent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Load {
    /// This many workers, each with one request in flight at a time.
    Closed { concurrency: usize },
    /// Requests leave at this many per second, whatever is in flight.
    Open { rate_rps: f64 },
}

/// What `palr bench recommend` sends.
#[derive(Debug, Clone)]
pub struct RecommendBenchOptions {
    /// Server addresses; request `i` goes to `addrs[i % addrs.len()]`.
    pub addrs: Vec<String>,
    /// TLS and token settings, the same for every address.
    pub connect: ConnectOptions,
    /// Data set the servers run on (histories are drawn from it).
    pub data: PathBuf,
    /// Timed requests (at most, with `duration`).
    pub requests: usize,
    /// Stop starting timed requests after this long.
    pub duration: Option<Duration>,
    /// Untimed requests first.
    pub warmup: usize,
    pub load: Load,
    /// Sent with every timed call as its gRPC timeout.
    pub deadline: Option<Duration>,
    /// Closed loop: after a failed call a worker waits this long before its next, as a
    /// well-behaved client (gRPC retry back-off) does; `None`: at once.
    pub backoff: Option<Duration>,
    /// History items per request.
    pub history_len: usize,
    /// Candidates retrieved and ranked.
    pub num_candidates: u32,
    /// Items returned.
    pub k: u32,
    pub mode: Mode,
    /// Retriever (empty = the server's default).
    pub retriever: String,
    /// LoRA adapter the ranking uses (empty = the server's default).
    pub adapter: String,
}

/// How one call ended, against its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// OK within the deadline (every OK when there is none): goodput.
    InTime,
    /// OK, but after the deadline (the caller had given up).
    Late,
    /// An error status well before the deadline (every error when there is none): the
    /// server (or the client library) said no — admission, limits, validation, an
    /// unavailable replica.
    Refused,
    /// An error status in the last tenth of the deadline or after it ([`TIMED_OUT_FROM`]):
    /// the call ran out of time. The server answers DEADLINE_EXCEEDED a few milliseconds
    /// before the deadline (`service::grpc::DEADLINE_MARGIN`) so that its answer arrives in
    /// time; the client's channel cancels a call whose deadline has passed (CANCELLED).
    TimedOut,
}

/// The fraction of its deadline after which a failed call counts as timed out rather than
/// refused. Refusals by admission come back in milliseconds; calls that waited for their
/// deadline end within the server's margin of it.
pub const TIMED_OUT_FROM: f64 = 0.9;

impl Outcome {
    /// The outcome of a call that ended with `code` after `latency_s` seconds.
    pub fn of(code: &str, latency_s: f64, deadline_s: Option<f64>) -> Self {
        if code == "OK" {
            if deadline_s.is_some_and(|d| latency_s > d) {
                Outcome::Late
            } else {
                Outcome::InTime
            }
        } else if deadline_s.is_some_and(|d| latency_s >= TIMED_OUT_FROM * d) {
            Outcome::TimedOut
        } else {
            Outcome::Refused
        }
    }
}

/// Calls counted by outcome and by final status code.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Outcomes {
    pub calls: u64,
    pub answered_in_time: u64,
    pub answered_late: u64,
    /// Errors before the deadline, by status code.
    pub refused: BTreeMap<String, u64>,
    /// Errors at or after the deadline, by status code.
    pub timed_out: BTreeMap<String, u64>,
    /// Every call by final status code, "OK" included.
    pub by_code: BTreeMap<String, u64>,
    /// The first message seen for each error code.
    pub first_error: BTreeMap<String, String>,
}

impl Outcomes {
    /// Counts one call that ended with `code` (a gRPC code name; "OK" for an answer) after
    /// `latency_s` seconds; returns its outcome.
    pub fn record(
        &mut self,
        code: &str,
        message: &str,
        latency_s: f64,
        deadline_s: Option<f64>,
    ) -> Outcome {
        let outcome = Outcome::of(code, latency_s, deadline_s);
        self.calls += 1;
        *self.by_code.entry(code.to_owned()).or_default() += 1;
        match outcome {
            Outcome::InTime => self.answered_in_time += 1,
            Outcome::Late => self.answered_late += 1,
            Outcome::Refused => *self.refused.entry(code.to_owned()).or_default() += 1,
            Outcome::TimedOut => *self.timed_out.entry(code.to_owned()).or_default() += 1,
        }
        if code != "OK" {
            self.first_error
                .entry(code.to_owned())
                .or_insert_with(|| message.to_owned());
        }
        outcome
    }

    /// Answered calls (in time or late).
    pub fn answered(&self) -> u64 {
        self.answered_in_time + self.answered_late
    }

    /// Calls that ended in an error status.
    pub fn failed(&self) -> u64 {
        self.calls - self.answered()
    }

    /// Every error code with its count, most frequent first ("CODE N, CODE N").
    pub fn failures_by_code(&self) -> String {
        let mut v: Vec<(&String, &u64)> = self.by_code.iter().filter(|(c, _)| *c != "OK").collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        v.iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The status code name of a failed call. A transport failure is UNAVAILABLE, as gRPC
/// names it; an answer this client cannot read is BAD_RESPONSE (not a gRPC code).
pub fn error_code(e: &ClientError) -> String {
    match e {
        ClientError::Status { code, .. } => code_name(*code).to_owned(),
        ClientError::Connect { .. } => "UNAVAILABLE".into(),
        ClientError::Response(_) => "BAD_RESPONSE".into(),
    }
}

/// What one address saw.
#[derive(Debug, Clone, Serialize)]
pub struct AddrReport {
    pub addr: String,
    pub model: String,
    pub backend: String,
    pub outcomes: Outcomes,
    /// Client-side latency of its answered calls.
    pub latency: Summary,
}

/// The benchmark's result.
#[derive(Debug, Clone, Serialize)]
pub struct RecommendBenchReport {
    pub addrs: Vec<String>,
    /// The client's machine.
    pub cpu: String,
    pub model: String,
    pub backend: String,
    pub mode: Mode,
    pub retriever: String,
    /// LoRA adapter the ranking uses (empty = the server's default).
    pub adapter: String,
    /// Timed calls sent.
    pub requests: usize,
    pub duration_s: Option<f64>,
    pub load: Load,
    pub deadline_ms: Option<f64>,
    /// Closed loop: a worker's wait after a failed call.
    pub backoff_ms: Option<f64>,
    pub history_len: usize,
    pub num_candidates: u32,
    pub k: u32,
    pub wall_s: f64,
    /// Answered calls per second of wall time.
    pub throughput_rps: f64,
    /// Calls answered in time per second of wall time.
    pub goodput_rps: f64,
    /// The timed calls.
    pub outcomes: Outcomes,
    /// The warm-up calls.
    pub warmup: Outcomes,
    pub per_addr: Vec<AddrReport>,
    /// Open loop: how far behind its schedule the client sent its latest request (it could
    /// not keep the rate when this is large).
    pub max_send_lag_ms: Option<f64>,
    /// Client-side latency of the answered calls (connections reused).
    pub latency: Summary,
    /// Server-side stages of the answered calls.
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

/// Histories of `n` users: the last `len` items of users with at least `len` interactions.
fn histories(data: &std::path::Path, len: usize, n: usize) -> Result<Vec<Vec<String>>> {
    let ds = Dataset::load(data, &LoadOptions::default())?;
    let inter = &ds.interactions;
    let mut out = Vec::new();
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
    ensure(!out.is_empty(), || {
        format!(
            "no user in {} has {len} interactions; use a smaller --history-len",
            data.display()
        )
    })?;
    Ok(out)
}

/// The timed requests: request `i` sends history `i mod` their count, to address `i mod`
/// the addresses' count.
struct Requests {
    histories: Vec<Vec<String>>,
    template: RecommendParams,
    /// How many to send at most.
    limit: usize,
    /// No request starts after this.
    until: Option<Instant>,
}

impl Requests {
    /// Request `i`, unless the run is over.
    fn get(&self, i: usize) -> Option<RecommendParams> {
        if i >= self.limit || self.until.is_some_and(|t| Instant::now() >= t) {
            return None;
        }
        Some(RecommendParams {
            history: self.histories[i % self.histories.len()].clone(),
            ..self.template.clone()
        })
    }
}

/// One finished call: its address, its latency and what came back.
struct Call {
    addr: usize,
    latency_s: f64,
    result: std::result::Result<Recommendation, ClientError>,
}

async fn call(client: &mut Client, addr: usize, params: &RecommendParams) -> Call {
    let t = Instant::now();
    let result = client.recommend(params).await;
    Call {
        addr,
        latency_s: t.elapsed().as_secs_f64(),
        result,
    }
}

/// The most closed-loop workers (each is a task with its own calls in flight).
pub const MAX_CONCURRENCY: usize = 10_000;

/// The address of request `i` among `n`: round robin.
pub fn addr_of(i: usize, n: usize) -> usize {
    i % n
}

fn check(opts: &RecommendBenchOptions) -> Result<()> {
    ensure(!opts.addrs.is_empty(), || {
        "--addr: give at least one address".into()
    })?;
    ensure(opts.requests > 0, || "--requests must be at least 1".into())?;
    ensure(opts.duration.is_none_or(|d| !d.is_zero()), || {
        "--duration-s must be more than 0".into()
    })?;
    match opts.load {
        Load::Closed { concurrency } => {
            ensure((1..=MAX_CONCURRENCY).contains(&concurrency), || {
                format!("--concurrency must be in 1..={MAX_CONCURRENCY}")
            })
        }
        Load::Open { rate_rps } => ensure(rate_rps.is_finite() && rate_rps > 0.0, || {
            format!("--rate must be a positive number of requests per second, not {rate_rps}")
        }),
    }?;
    ensure(opts.deadline.is_none_or(|d| !d.is_zero()), || {
        "--deadline-ms must be at least 1".into()
    })
}

/// Runs the benchmark against running servers. Errors are what keeps it from running at
/// all (bad options, no data, an address that cannot be reached or asked for its model);
/// failed calls are counted in the report.
pub async fn run(opts: &RecommendBenchOptions) -> Result<RecommendBenchReport> {
    check(opts)?;
    let hist = histories(
        &opts.data,
        opts.history_len,
        opts.requests.saturating_add(opts.warmup),
    )?;
    let mut clients = Vec::with_capacity(opts.addrs.len());
    let mut per_addr = Vec::with_capacity(opts.addrs.len());
    for addr in &opts.addrs {
        let mut client = Client::connect_with(addr, &opts.connect).await?;
        let info = client.model_info().await?;
        clients.push(client);
        per_addr.push(AddrReport {
            addr: addr.clone(),
            model: info.model_name,
            backend: info.backend,
            outcomes: Outcomes::default(),
            latency: Summary::of(&[]),
        });
    }
    let n = clients.len();
    let template = RecommendParams {
        k: opts.k,
        retriever: opts.retriever.clone(),
        adapter: opts.adapter.clone(),
        num_candidates: opts.num_candidates,
        mode: Some(opts.mode),
        user_id: "bench".into(),
        ..RecommendParams::default()
    };

    let mut warmup = Outcomes::default();
    for i in 0..opts.warmup {
        let a = addr_of(i, n);
        let params = RecommendParams {
            // The histories after the timed ones (they repeat when there are fewer users).
            history: hist[(i + opts.requests.min(hist.len())) % hist.len()].clone(),
            user_id: "bench-warmup".into(),
            ..template.clone()
        };
        let c = call(&mut clients[a], a, &params).await;
        match &c.result {
            Ok(_) => warmup.record("OK", "", c.latency_s, None),
            Err(e) => warmup.record(&error_code(e), &e.to_string(), c.latency_s, None),
        };
    }

    let timed: Vec<Client> = clients
        .into_iter()
        .map(|c| c.with_timeout(opts.deadline))
        .collect();
    let loadavg_before = super::loadavg();
    let t0 = Instant::now();
    let all = Arc::new(Requests {
        histories: hist,
        template,
        limit: opts.requests,
        until: opts.duration.map(|d| t0 + d),
    });
    let (calls, max_send_lag_ms) = match opts.load {
        Load::Closed { concurrency } => (
            closed_loop(&timed, &all, concurrency, opts.backoff).await,
            None,
        ),
        Load::Open { rate_rps } => {
            let (calls, lag) = open_loop(&timed, &all, rate_rps).await;
            (calls, Some(lag * 1e3))
        }
    };
    let wall_s = t0.elapsed().as_secs_f64();
    let loadavg_after = super::loadavg();

    let deadline_s = opts.deadline.map(|d| d.as_secs_f64());
    let mut outcomes = Outcomes::default();
    let mut latencies = vec![Vec::new(); n];
    let mut answers: Vec<(f64, &Recommendation)> = Vec::new();
    for c in &calls {
        let (code, message) = match &c.result {
            Ok(r) => {
                answers.push((c.latency_s, r));
                latencies[c.addr].push(c.latency_s);
                ("OK".to_owned(), String::new())
            }
            Err(e) => (error_code(e), e.to_string()),
        };
        outcomes.record(&code, &message, c.latency_s, deadline_s);
        per_addr[c.addr]
            .outcomes
            .record(&code, &message, c.latency_s, deadline_s);
    }
    for (a, l) in per_addr.iter_mut().zip(&latencies) {
        a.latency = Summary::of(l);
    }
    let col = |f: &dyn Fn(&Recommendation) -> f64| -> Vec<f64> {
        answers.iter().map(|(_, r)| f(r)).collect()
    };
    let retriever = answers
        .first()
        .map(|(_, r)| r.retriever.clone())
        .unwrap_or_else(|| opts.retriever.clone());
    Ok(RecommendBenchReport {
        addrs: opts.addrs.clone(),
        cpu: super::cpu_description(),
        model: per_addr[0].model.clone(),
        backend: per_addr[0].backend.clone(),
        mode: opts.mode,
        retriever,
        adapter: answers
            .first()
            .map(|(_, r)| r.adapter.clone())
            .unwrap_or_else(|| opts.adapter.clone()),
        requests: calls.len(),
        duration_s: opts.duration.map(|d| d.as_secs_f64()),
        load: opts.load,
        deadline_ms: opts.deadline.map(|d| d.as_secs_f64() * 1e3),
        backoff_ms: opts.backoff.map(|d| d.as_secs_f64() * 1e3),
        history_len: opts.history_len,
        num_candidates: opts.num_candidates,
        k: opts.k,
        wall_s,
        throughput_rps: outcomes.answered() as f64 / wall_s,
        goodput_rps: outcomes.answered_in_time as f64 / wall_s,
        latency: Summary::of(&answers.iter().map(|a| a.0).collect::<Vec<_>>()),
        queue: Summary::of(&col(&|r| r.timings.queue_s)),
        retrieve: Summary::of(&col(&|r| r.timings.retrieve_s)),
        prompt: Summary::of(&col(&|r| r.timings.prompt_s)),
        prefill: Summary::of(&col(&|r| r.timings.prefill_s)),
        decode: Summary::of(&col(&|r| r.timings.decode_s)),
        first_token: Summary::of(&col(&|r| r.timings.first_token_s)),
        server_total: Summary::of(&col(&|r| r.timings.total_s)),
        mean_prompt_tokens: mean(&col(&|r| r.timings.prompt_tokens as f64)),
        mean_cached_prompt_tokens: mean(&col(&|r| r.timings.cached_prompt_tokens as f64)),
        mean_generated_tokens: mean(&col(&|r| r.timings.generated_tokens as f64)),
        outcomes,
        warmup,
        per_addr,
        max_send_lag_ms,
        loadavg_before,
        loadavg_after,
    })
}

/// A task's result; a panic in it is re-raised here.
async fn joined<T>(h: tokio::task::JoinHandle<T>) -> T {
    h.await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// `concurrency` workers take the next request as each finishes its last (after `backoff`
/// when it failed).
async fn closed_loop(
    clients: &[Client],
    all: &Arc<Requests>,
    concurrency: usize,
    backoff: Option<Duration>,
) -> Vec<Call> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let mut clients = clients.to_vec();
        let (next, all) = (next.clone(), all.clone());
        workers.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(params) = all.get(i) else {
                    return done;
                };
                let a = addr_of(i, clients.len());
                let c = call(&mut clients[a], a, &params).await;
                let failed = c.result.is_err();
                done.push(c);
                if let (true, Some(b)) = (failed, backoff) {
                    tokio::time::sleep(b).await;
                }
            }
        }));
    }
    let mut calls = Vec::new();
    for w in workers {
        calls.extend(joined(w).await);
    }
    calls
}

/// Request `i` leaves at `i / rate_rps` seconds, whatever is in flight. Returns the calls
/// and the largest delay, in seconds, between a request's scheduled and actual sending.
async fn open_loop(clients: &[Client], all: &Requests, rate_rps: f64) -> (Vec<Call>, f64) {
    let t0 = tokio::time::Instant::now();
    let mut max_lag = 0f64;
    let mut tasks = Vec::new();
    for i in 0.. {
        let due = t0 + Duration::from_secs_f64(i as f64 / rate_rps);
        if all.until.is_some_and(|t| due.into_std() >= t) {
            break;
        }
        tokio::time::sleep_until(due).await;
        let Some(params) = all.get(i) else {
            break;
        };
        max_lag = max_lag.max(due.elapsed().as_secs_f64());
        let a = addr_of(i, clients.len());
        let mut client = clients[a].clone();
        tasks.push(tokio::spawn(
            async move { call(&mut client, a, &params).await },
        ));
    }
    let mut calls = Vec::with_capacity(tasks.len());
    for t in tasks {
        calls.push(joined(t).await);
    }
    (calls, max_lag)
}

impl RecommendBenchReport {
    /// Prints the report as tables.
    pub fn print_table(&self) {
        let load = match self.load {
            Load::Closed { concurrency } => match self.backoff_ms {
                Some(b) => format!("closed loop, concurrency {concurrency}, {b} ms back-off"),
                None => format!("closed loop, concurrency {concurrency}"),
            },
            Load::Open { rate_rps } => format!("open loop at {rate_rps} requests/s"),
        };
        let deadline = self
            .deadline_ms
            .map_or("no deadline".into(), |d| format!("deadline {d} ms"));
        let duration = self
            .duration_s
            .map_or(String::new(), |d| format!(" in at most {d} s"));
        println!(
            "{} requests{duration} over {} address(es), {load}, {deadline}; mode {}, \
             retriever {}, adapter {}, history {}, candidates {}, k {}",
            self.requests,
            self.addrs.len(),
            self.mode.name(),
            if self.retriever.is_empty() {
                "(the server's default)"
            } else {
                &self.retriever
            },
            if self.adapter.is_empty() {
                "(none)"
            } else {
                &self.adapter
            },
            self.history_len,
            self.num_candidates,
            self.k
        );
        println!(
            "model {} on {}; client {}",
            self.model, self.backend, self.cpu
        );
        println!(
            "wall {:.2} s: {:.2} answers/s, {:.2} answered in time/s; load average before {} / \
             after {}",
            self.wall_s,
            self.throughput_rps,
            self.goodput_rps,
            self.loadavg_before,
            self.loadavg_after
        );
        if let Some(lag) = self.max_send_lag_ms {
            println!("latest send behind schedule: {lag:.1} ms");
        }
        let by_code = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(c, n)| format!("{c} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let o = &self.outcomes;
        let row = |name: &str, n: u64, codes: String| {
            println!("{}", format!("{name:<22} {n:>7}  {codes}").trim_end());
        };
        println!("{:<22} {:>7}", "outcome", "calls");
        row("answered in time", o.answered_in_time, String::new());
        row("answered late", o.answered_late, String::new());
        row("refused", o.refused.values().sum(), by_code(&o.refused));
        row(
            "timed out",
            o.timed_out.values().sum(),
            by_code(&o.timed_out),
        );
        if self.warmup.failed() > 0 {
            println!(
                "warm-up: {} of {} calls failed: {}",
                self.warmup.failed(),
                self.warmup.calls,
                self.warmup.failures_by_code()
            );
        }
        if self.per_addr.len() > 1 {
            println!(
                "{:<28} {:>7} {:>7} {:>9} {:>9}  errors",
                "address", "calls", "OK", "p50 ms", "p99 ms"
            );
            for a in &self.per_addr {
                println!(
                    "{:<28} {:>7} {:>7} {:>9.1} {:>9.1}  {}",
                    a.addr,
                    a.outcomes.calls,
                    a.outcomes.answered(),
                    a.latency.p50_ms,
                    a.latency.p99_ms,
                    a.outcomes.failures_by_code()
                );
            }
        }
        let mut first: BTreeMap<&String, &String> = self.warmup.first_error.iter().collect();
        first.extend(self.outcomes.first_error.iter());
        for (code, message) in first {
            println!("first {code}: {message}");
        }
        println!(
            "{:<22} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "ms (answered calls)", "mean", "p50", "p90", "p99", "max"
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
    fn outcomes_against_the_deadline() {
        let d = Some(0.3);
        assert_eq!(Outcome::of("OK", 0.1, d), Outcome::InTime);
        assert_eq!(Outcome::of("OK", 0.3, d), Outcome::InTime);
        assert_eq!(Outcome::of("OK", 0.301, d), Outcome::Late);
        assert_eq!(Outcome::of("OK", 9.0, None), Outcome::InTime);
        assert_eq!(Outcome::of("RESOURCE_EXHAUSTED", 0.01, d), Outcome::Refused);
        assert_eq!(Outcome::of("DEADLINE_EXCEEDED", 0.02, d), Outcome::Refused);
        assert_eq!(Outcome::of("CANCELLED", 0.3, d), Outcome::TimedOut);
        // The server answers a margin before the deadline: still timed out.
        assert_eq!(
            Outcome::of("DEADLINE_EXCEEDED", 0.296, d),
            Outcome::TimedOut
        );
        assert_eq!(Outcome::of("DEADLINE_EXCEEDED", 0.26, d), Outcome::Refused);
        assert_eq!(Outcome::of("INVALID_ARGUMENT", 5.0, None), Outcome::Refused);
    }

    #[test]
    fn outcomes_are_counted_by_code_and_none_is_lost() {
        let mut o = Outcomes::default();
        let d = Some(0.3);
        for (code, latency) in [
            ("OK", 0.1),
            ("OK", 0.2),
            ("OK", 0.31),
            ("RESOURCE_EXHAUSTED", 0.001),
            ("RESOURCE_EXHAUSTED", 0.002),
            ("DEADLINE_EXCEEDED", 0.01),
            ("CANCELLED", 0.3),
            ("DEADLINE_EXCEEDED", 0.35),
        ] {
            o.record(code, &format!("{code} at {latency}"), latency, d);
        }
        assert_eq!(o.calls, 8);
        assert_eq!((o.answered_in_time, o.answered_late), (2, 1));
        assert_eq!((o.answered(), o.failed()), (3, 5));
        let m = |v: &[(&str, u64)]| -> BTreeMap<String, u64> {
            v.iter().map(|(c, n)| (c.to_string(), *n)).collect()
        };
        assert_eq!(
            o.refused,
            m(&[("RESOURCE_EXHAUSTED", 2), ("DEADLINE_EXCEEDED", 1)])
        );
        assert_eq!(
            o.timed_out,
            m(&[("CANCELLED", 1), ("DEADLINE_EXCEEDED", 1)])
        );
        assert_eq!(
            o.by_code,
            m(&[
                ("OK", 3),
                ("RESOURCE_EXHAUSTED", 2),
                ("DEADLINE_EXCEEDED", 2),
                ("CANCELLED", 1)
            ])
        );
        assert_eq!(o.by_code.values().sum::<u64>(), o.calls);
        // The first message of each code is kept, none for OK.
        assert_eq!(
            o.first_error["DEADLINE_EXCEEDED"],
            "DEADLINE_EXCEEDED at 0.01"
        );
        assert!(!o.first_error.contains_key("OK"));
        assert_eq!(
            o.failures_by_code(),
            "DEADLINE_EXCEEDED 2, RESOURCE_EXHAUSTED 2, CANCELLED 1"
        );
    }

    #[test]
    fn client_errors_have_codes() {
        let status = ClientError::from(tonic::Status::resource_exhausted("queue full"));
        assert_eq!(error_code(&status), "RESOURCE_EXHAUSTED");
        let connect = ClientError::Connect {
            addr: "http://127.0.0.1:1".into(),
            message: "refused".into(),
        };
        assert_eq!(error_code(&connect), "UNAVAILABLE");
        assert_eq!(
            error_code(&ClientError::Response("x".into())),
            "BAD_RESPONSE"
        );
    }

    #[test]
    fn requests_are_spread_round_robin() {
        let spread = |n: usize| -> Vec<usize> {
            let mut count = vec![0; n];
            for i in 0..10 {
                count[addr_of(i, n)] += 1;
            }
            count
        };
        assert_eq!(spread(1), [10]);
        assert_eq!(spread(2), [5, 5]);
        assert_eq!(spread(3), [4, 3, 3]);
        assert_eq!(
            (0..4).map(|i| addr_of(i, 2)).collect::<Vec<_>>(),
            [0, 1, 0, 1]
        );
    }

    #[test]
    fn options_that_cannot_work_are_refused() {
        let ok = RecommendBenchOptions {
            addrs: vec!["http://127.0.0.1:1".into()],
            connect: ConnectOptions::default(),
            data: PathBuf::from("data/ml-100k"),
            requests: 1,
            duration: None,
            warmup: 0,
            load: Load::Closed { concurrency: 1 },
            deadline: None,
            backoff: None,
            history_len: 20,
            num_candidates: 20,
            k: 10,
            mode: Mode::Score,
            retriever: String::new(),
            adapter: String::new(),
        };
        assert!(check(&ok).is_ok());
        let bad = |f: &dyn Fn(&mut RecommendBenchOptions), needle: &str| {
            let mut o = ok.clone();
            f(&mut o);
            let e = check(&o).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        };
        bad(&|o| o.addrs.clear(), "--addr");
        bad(&|o| o.requests = 0, "--requests");
        bad(
            &|o| o.load = Load::Closed { concurrency: 0 },
            "--concurrency",
        );
        bad(&|o| o.load = Load::Open { rate_rps: 0.0 }, "--rate");
        bad(&|o| o.load = Load::Open { rate_rps: f64::NAN }, "--rate");
        bad(&|o| o.deadline = Some(Duration::ZERO), "--deadline-ms");
        bad(&|o| o.duration = Some(Duration::ZERO), "--duration-s");
    }
}
