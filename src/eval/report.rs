//! The evaluation report: JSON (serde) and a Markdown table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::{Method, Metrics};
use crate::rank::RankTimings;

/// Time totals over all evaluated users, in seconds, and token counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageTimes {
    /// Retrieval (a retriever is asked once per user; its time counts for every method
    /// that uses it).
    pub retrieve_s: f64,
    /// Building and tokenizing prompts.
    pub prompt_s: f64,
    /// Running the prompt through the model.
    pub prefill_s: f64,
    /// Generating (generate mode).
    pub decode_s: f64,
    /// Wall time of the LLM calls (prompt + prefill + decode + overheads, e.g. the network).
    pub rank_s: f64,
    /// Retrieval plus ranking.
    pub total_s: f64,
    pub prompt_tokens: u64,
    pub cached_prompt_tokens: u64,
    pub generated_tokens: u64,
}

impl StageTimes {
    /// Adds one LLM call: the ranker's own timings and the call's wall time.
    pub fn add_rank(&mut self, t: &RankTimings, wall_s: f64) {
        self.prompt_s += t.prompt_s;
        self.prefill_s += t.prefill_s;
        self.decode_s += t.decode_s;
        self.rank_s += wall_s;
        self.total_s += wall_s;
        self.prompt_tokens += t.prompt_tokens as u64;
        self.cached_prompt_tokens += t.cached_prompt_tokens as u64;
        self.generated_tokens += t.generated_tokens as u64;
    }
}

/// One method's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodReport {
    /// As written on the command line (`markov+score@adapter`).
    pub method: String,
    pub retriever: String,
    /// `score`, `generate`, or absent for the retriever alone.
    pub mode: Option<String>,
    pub adapter: Option<String>,
    pub metrics: Metrics,
    pub times: StageTimes,
    /// `times.total_s` per evaluated user.
    pub seconds_per_user: f64,
}

impl MethodReport {
    pub(super) fn new(m: &Method, metrics: Metrics, times: StageTimes, users: usize) -> Self {
        MethodReport {
            method: m.to_string(),
            retriever: m.retriever.clone(),
            mode: m.mode.map(|x| x.name().to_owned()),
            adapter: m.adapter.clone(),
            metrics,
            seconds_per_user: times.total_s / users.max(1) as f64,
            times,
        }
    }
}

/// A retriever's candidate recall: the share of targets in its top k.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Recall {
    #[serde(rename = "recall@20")]
    pub recall_20: f64,
    #[serde(rename = "recall@50")]
    pub recall_50: f64,
    #[serde(rename = "recall@100")]
    pub recall_100: f64,
}

/// One retriever's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrieverReport {
    pub name: String,
    pub recall: Recall,
    pub retrieve_s: f64,
    pub ms_per_user: f64,
}

impl RetrieverReport {
    pub(super) fn new(name: &str, m: &Metrics, retrieve_s: f64, users: usize) -> Self {
        RetrieverReport {
            name: name.into(),
            recall: Recall {
                recall_20: m.recall_20,
                recall_50: m.recall_50,
                recall_100: m.recall_100,
            },
            retrieve_s,
            ms_per_user: retrieve_s * 1e3 / users.max(1) as f64,
        }
    }
}

/// Where one user's target landed, per method (1-based; `None` = below the list).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRanks {
    pub user: String,
    pub target: String,
    pub ranks: BTreeMap<String, Option<usize>>,
}

/// Everything an evaluation measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `valid` or `test`.
    pub split: String,
    /// What the retrievers were built from.
    pub training_view: String,
    /// In process, or the server's address.
    pub backend: String,
    pub n_items: usize,
    pub n_users: usize,
    /// Users with a target at this split.
    pub n_evaluable_users: usize,
    /// Users evaluated.
    pub users: usize,
    /// Whether `users` is a seeded sample of the evaluable users.
    pub sampled: bool,
    pub seed: u64,
    /// Candidates an LLM method re-ranks.
    pub candidates: usize,
    /// Items asked of each retriever; a target below this counts as not ranked.
    pub depth: usize,
    pub retrievers: Vec<RetrieverReport>,
    pub methods: Vec<MethodReport>,
    /// Each user's target rank per method (with `per_user`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub per_user: Option<Vec<UserRanks>>,
    pub wall_s: f64,
}

impl Report {
    /// A Markdown summary: one table row per method.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Split **{}**: {} of {} users{}, {} items, full ranking (depth {}), LLM candidates {}. \
             Retrievers trained on {}. Backend: {}.\n",
            self.split,
            self.users,
            self.n_evaluable_users,
            if self.sampled {
                format!(" (sampled, seed {})", self.seed)
            } else {
                String::new()
            },
            self.n_items,
            self.depth,
            self.candidates,
            self.training_view,
            self.backend
        );
        s.push_str(
            "| method | HR@1 | HR@5 | HR@10 | HR@20 | NDCG@5 | NDCG@10 | NDCG@20 | MRR | \
             recall@20 | recall@50 | recall@100 | s/user |\n",
        );
        s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for m in &self.methods {
            let x = &m.metrics;
            let _ = writeln!(
                s,
                "| {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {} |",
                m.method,
                x.hr_1,
                x.hr_5,
                x.hr_10,
                x.hr_20,
                x.ndcg_5,
                x.ndcg_10,
                x.ndcg_20,
                x.mrr,
                x.recall_20,
                x.recall_50,
                x.recall_100,
                seconds(m.seconds_per_user)
            );
        }
        let llm: Vec<&MethodReport> = self.methods.iter().filter(|m| m.mode.is_some()).collect();
        if !llm.is_empty() {
            s.push_str(
                "\n| LLM method | retrieve s | prompt s | prefill s | decode s | rank s (wall) | \
                 prompt tokens/user | generated tokens/user |\n|---|---|---|---|---|---|---|---|\n",
            );
            let n = self.users.max(1) as f64;
            for m in llm {
                let t = &m.times;
                let _ = writeln!(
                    s,
                    "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} |",
                    m.method,
                    t.retrieve_s,
                    t.prompt_s,
                    t.prefill_s,
                    t.decode_s,
                    t.rank_s,
                    t.prompt_tokens as f64 / n,
                    t.generated_tokens as f64 / n
                );
            }
        }
        s
    }
}

/// Seconds with a sensible precision for a table.
fn seconds(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2}")
    } else {
        format!("{:.2} ms", s * 1e3)
    }
}
