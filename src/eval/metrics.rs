//! Top-k metrics of one held-out target per user (leave-one-out, full ranking).
//!
//! With a single relevant item at 1-based rank `r` in the ranked list (the usual definitions
//! of sequential recommendation, e.g. SASRec, Kang & McAuley 2018, for one target):
//! - HR@k (hit rate) = 1 if `r <= k`, else 0;
//! - NDCG@k = `1 / log2(r + 1)` if `r <= k`, else 0 (the ideal DCG of one relevant item is 1);
//! - MRR = `1 / r`, 0 when the target is not in the list (the list is the retriever's depth,
//!   see [`super::RETRIEVE_DEPTH`], so this is MRR@depth);
//! - candidate recall@k (for a retriever) = HR@k of its own list: the share of targets a
//!   re-ranker of its top k could possibly put first.
//!
//! Each is averaged over the evaluated users.

use serde::{Deserialize, Serialize};

/// Cut-offs of the hit rate.
pub const HR_AT: [usize; 4] = [1, 5, 10, 20];
/// Cut-offs of NDCG.
pub const NDCG_AT: [usize; 3] = [5, 10, 20];
/// Cut-offs of a retriever's candidate recall.
pub const RECALL_AT: [usize; 3] = [20, 50, 100];

/// The 1-based rank of `target` in `list`, `None` when absent.
pub fn rank_of(list: &[u32], target: u32) -> Option<usize> {
    list.iter().position(|&i| i == target).map(|p| p + 1)
}

/// HR@k of a target at `rank`.
pub fn hit(rank: Option<usize>, k: usize) -> f64 {
    match rank {
        Some(r) if r <= k => 1.0,
        _ => 0.0,
    }
}

/// NDCG@k of a target at `rank`.
pub fn ndcg(rank: Option<usize>, k: usize) -> f64 {
    match rank {
        Some(r) if r <= k => 1.0 / ((r + 1) as f64).log2(),
        _ => 0.0,
    }
}

/// Reciprocal rank of a target at `rank`.
pub fn reciprocal_rank(rank: Option<usize>) -> f64 {
    rank.map_or(0.0, |r| 1.0 / r as f64)
}

/// Running sums over users; [`MetricSums::mean`] averages them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricSums {
    users: usize,
    hr: [f64; HR_AT.len()],
    ndcg: [f64; NDCG_AT.len()],
    mrr: f64,
    recall: [f64; RECALL_AT.len()],
}

impl MetricSums {
    /// Adds one user: `rank` of the target in the method's final list, `candidate_rank` of the
    /// target in the retriever's list (what the recall columns measure).
    pub fn add(&mut self, rank: Option<usize>, candidate_rank: Option<usize>) {
        self.users += 1;
        for (s, &k) in self.hr.iter_mut().zip(&HR_AT) {
            *s += hit(rank, k);
        }
        for (s, &k) in self.ndcg.iter_mut().zip(&NDCG_AT) {
            *s += ndcg(rank, k);
        }
        self.mrr += reciprocal_rank(rank);
        for (s, &k) in self.recall.iter_mut().zip(&RECALL_AT) {
            *s += hit(candidate_rank, k);
        }
    }

    pub fn users(&self) -> usize {
        self.users
    }

    /// Means over the users added (all zero when none were).
    pub fn mean(&self) -> Metrics {
        let n = self.users.max(1) as f64;
        let [hr_1, hr_5, hr_10, hr_20] = self.hr.map(|s| s / n);
        let [ndcg_5, ndcg_10, ndcg_20] = self.ndcg.map(|s| s / n);
        let [recall_20, recall_50, recall_100] = self.recall.map(|s| s / n);
        Metrics {
            users: self.users,
            hr_1,
            hr_5,
            hr_10,
            hr_20,
            ndcg_5,
            ndcg_10,
            ndcg_20,
            mrr: self.mrr / n,
            recall_20,
            recall_50,
            recall_100,
        }
    }
}

/// Mean metrics over `users`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub users: usize,
    #[serde(rename = "HR@1")]
    pub hr_1: f64,
    #[serde(rename = "HR@5")]
    pub hr_5: f64,
    #[serde(rename = "HR@10")]
    pub hr_10: f64,
    #[serde(rename = "HR@20")]
    pub hr_20: f64,
    #[serde(rename = "NDCG@5")]
    pub ndcg_5: f64,
    #[serde(rename = "NDCG@10")]
    pub ndcg_10: f64,
    #[serde(rename = "NDCG@20")]
    pub ndcg_20: f64,
    #[serde(rename = "MRR")]
    pub mrr: f64,
    /// Candidate recall of the method's retriever.
    #[serde(rename = "recall@20")]
    pub recall_20: f64,
    #[serde(rename = "recall@50")]
    pub recall_50: f64,
    #[serde(rename = "recall@100")]
    pub recall_100: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn rank_is_one_based_and_absent_is_none() {
        let list = [7, 3, 9];
        assert_eq!(rank_of(&list, 7), Some(1));
        assert_eq!(rank_of(&list, 9), Some(3));
        assert_eq!(rank_of(&list, 4), None);
        assert_eq!(rank_of(&[], 4), None);
    }

    #[test]
    fn hand_computed_single_users() {
        // Rank 1: everything is 1.
        let m = {
            let mut s = MetricSums::default();
            s.add(Some(1), Some(1));
            s.mean()
        };
        assert_eq!((m.hr_1, m.hr_5, m.hr_10, m.hr_20), (1.0, 1.0, 1.0, 1.0));
        assert_eq!(
            (m.ndcg_5, m.ndcg_10, m.ndcg_20, m.mrr),
            (1.0, 1.0, 1.0, 1.0)
        );

        // Rank 3: a hit from @5 on; NDCG = 1/log2(4) = 0.5; MRR = 1/3.
        let mut s = MetricSums::default();
        s.add(Some(3), Some(3));
        let m = s.mean();
        assert_eq!((m.hr_1, m.hr_5, m.hr_10, m.hr_20), (0.0, 1.0, 1.0, 1.0));
        assert!(close(m.ndcg_5, 0.5) && close(m.ndcg_10, 0.5) && close(m.ndcg_20, 0.5));
        assert!(close(m.mrr, 1.0 / 3.0));

        // Rank 11: misses @1/@5/@10, hits @20 with 1/log2(12).
        let mut s = MetricSums::default();
        s.add(Some(11), Some(60));
        let m = s.mean();
        assert_eq!((m.hr_1, m.hr_5, m.hr_10, m.hr_20), (0.0, 0.0, 0.0, 1.0));
        assert_eq!((m.ndcg_5, m.ndcg_10), (0.0, 0.0));
        assert!(close(m.ndcg_20, 1.0 / 12f64.log2()));
        assert!(close(m.ndcg_20, 0.278_942_945_651_129_8));
        assert!(close(m.mrr, 1.0 / 11.0));
        // The retriever had it at 60: recall only from @100.
        assert_eq!((m.recall_20, m.recall_50, m.recall_100), (0.0, 0.0, 1.0));

        // Absent: all zero.
        let mut s = MetricSums::default();
        s.add(None, None);
        let m = s.mean();
        assert_eq!([m.hr_1, m.hr_20, m.ndcg_20, m.mrr, m.recall_100], [0.0; 5]);
        assert_eq!(m.users, 1);
    }

    #[test]
    fn means_average_over_users() {
        let mut s = MetricSums::default();
        for r in [Some(1), Some(3), Some(11), None] {
            s.add(r, r);
        }
        let m = s.mean();
        assert_eq!(m.users, 4);
        assert!(close(m.hr_1, 0.25));
        assert!(close(m.hr_5, 0.5));
        assert!(close(m.hr_10, 0.5));
        assert!(close(m.hr_20, 0.75));
        assert!(close(m.ndcg_10, (1.0 + 0.5) / 4.0));
        assert!(close(m.ndcg_20, (1.0 + 0.5 + 1.0 / 12f64.log2()) / 4.0));
        assert!(close(m.mrr, (1.0 + 1.0 / 3.0 + 1.0 / 11.0) / 4.0));
        assert!(close(m.recall_20, 0.75));
        assert_eq!(MetricSums::default().mean().hr_10, 0.0);
    }

    #[test]
    fn json_names_are_the_usual_ones() {
        let mut s = MetricSums::default();
        s.add(Some(2), Some(2));
        let v = serde_json::to_value(s.mean()).unwrap();
        for key in [
            "HR@1",
            "HR@5",
            "HR@10",
            "HR@20",
            "NDCG@5",
            "NDCG@10",
            "NDCG@20",
            "MRR",
            "recall@20",
            "recall@50",
            "recall@100",
            "users",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
        }
        assert!(close(v["NDCG@5"].as_f64().unwrap(), 1.0 / 3f64.log2()));
    }
}
