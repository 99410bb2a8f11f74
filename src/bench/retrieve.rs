//! `palr bench retrieve`: per-call latency of retriever plugins (and fusions) through the
//! host, one call at a time on the calling thread, on real histories of fixed lengths.
//!
//! Each call sends the last N items of a user with at least N interactions (users in turn),
//! asks for `k` and excludes nothing; `warmup` untimed calls come first. The caller loads the
//! registry on the view it wants timed (`cli::bench` does it as the server does).

use std::time::Instant;

use serde::Serialize;

use super::stats::Summary;
use super::{BenchError, Result, ensure};
use crate::data::Sequences;
use crate::eval::ViewStage;
use crate::retrieval::RetrieverRegistry;

/// What `palr bench retrieve` measures.
#[derive(Debug, Clone)]
pub struct RetrieveBenchOptions {
    /// Retrievers to time (empty: every loaded one).
    pub names: Vec<String>,
    /// History lengths.
    pub history: Vec<usize>,
    /// Candidates asked for per call.
    pub k: usize,
    /// Timed calls per retriever and length.
    pub calls: usize,
    /// Untimed calls first.
    pub warmup: usize,
    /// The view the registry was fitted on (recorded in the report).
    pub view: ViewStage,
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

/// Times every retriever of `opts.names` in `registry` on histories taken from `sequences`.
pub fn run(
    registry: &RetrieverRegistry,
    sequences: &Sequences,
    opts: &RetrieveBenchOptions,
) -> Result<RetrieveBenchReport> {
    let names = if opts.names.is_empty() {
        registry.names()
    } else {
        opts.names.clone()
    };
    let mut rows = Vec::new();
    for &len in &opts.history {
        ensure(len > 0, || "--history lengths must be at least 1".into())?;
        let histories: Vec<&[u32]> = sequences
            .iter()
            .filter(|(_, s)| s.len() >= len)
            .map(|(_, s)| &s[s.len() - len..])
            .collect();
        ensure(!histories.is_empty(), || {
            format!("no user has {len} interactions; pick a shorter --history")
        })?;
        for name in &names {
            let failed = |source| BenchError::Retriever {
                name: name.clone(),
                source,
            };
            let source = registry.source(name).map_err(failed)?;
            let mut times = Vec::with_capacity(opts.calls);
            for i in 0..opts.warmup + opts.calls {
                let h = histories[i % histories.len()];
                let t = Instant::now();
                let out = source
                    .retrieve_with(h, opts.k, &[], &Default::default())
                    .map_err(failed)?;
                let dt = t.elapsed().as_secs_f64();
                std::hint::black_box(out);
                if i >= opts.warmup {
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
        cpu: super::cpu_description(),
        view: opts.view.name().into(),
        k: opts.k,
        calls: opts.calls,
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
