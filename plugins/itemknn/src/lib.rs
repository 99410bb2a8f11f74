//! Item-kNN retriever: item–item cosine similarity over the binary user–item incidence matrix
//! (Sarwar et al. 2001, "Item-based collaborative filtering recommendation algorithms";
//! Deshpande & Karypis 2004, "Item-based top-N recommendation algorithms"), with optional
//! shrinkage of the similarity toward zero for rarely co-occurring items.
//!
//! At init, for every item `i` the `neighbours` most similar items are kept:
//! `sim(i, j) = |U_i ∩ U_j| / (sqrt(|U_i| |U_j|) + shrinkage)`, `U_i` = users who interacted
//! with `i` (repeats count once). At query time a candidate scores
//! `sum_p decay^p * sim(h_p, j)` over the last `history_window` history items `h_p`, `p = 0`
//! being the newest. Candidates the neighbourhoods do not reach are filled in popularity order
//! with scores in `[-1, 0)` (option `fill_with_popularity`). Config: README next to this crate.

use std::ffi::CStr;

use palr_retriever_sdk::rank::{ItemRanking, backoff_score, interaction_counts, rank_order, top_k};
use palr_retriever_sdk::{Candidates, Corpus, Query, Retriever, declare_retriever, parse_config};
use serde::Deserialize;

/// JSON config (all optional).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Neighbours kept per item.
    neighbours: usize,
    /// Added to the cosine denominator; 0 is plain cosine.
    shrinkage: f64,
    /// Weight of the p-th most recent history item is `decay^p` (1 = plain sum).
    decay: f64,
    /// Only the last `history_window` history items contribute (0 = all of them).
    history_window: usize,
    /// Fill up to k with popular items when the neighbourhoods give fewer candidates.
    fill_with_popularity: bool,
    /// Threads for the similarity precomputation (0 = available cores, at most 8).
    threads: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            neighbours: 50,
            shrinkage: 5.0,
            decay: 0.5,
            history_window: 20,
            fill_with_popularity: true,
            threads: 0,
        }
    }
}

impl Config {
    fn check(&self) -> Result<(), String> {
        if self.neighbours == 0 {
            return Err("neighbours must be at least 1".into());
        }
        if !(self.shrinkage.is_finite() && self.shrinkage >= 0.0) {
            return Err(format!(
                "shrinkage must be a finite number >= 0, got {}",
                self.shrinkage
            ));
        }
        if !(self.decay > 0.0 && self.decay <= 1.0) {
            return Err(format!("decay must be in (0, 1], got {}", self.decay));
        }
        Ok(())
    }
}

/// Compressed rows: row `r` is `items[offsets[r]..offsets[r + 1]]`.
#[derive(Debug, Default)]
struct Csr<V> {
    offsets: Vec<usize>,
    items: Vec<u32>,
    values: Vec<V>,
}

impl<V> Csr<V> {
    fn row(&self, r: usize) -> (&[u32], &[V]) {
        let span = self.offsets[r]..self.offsets[r + 1];
        (&self.items[span.clone()], &self.values[span])
    }
}

/// Item-kNN model: top neighbours per item plus a popularity ranking for fill-up.
pub struct ItemKnn {
    config: Config,
    neighbours: Csr<f32>,
    popularity: ItemRanking,
}

/// Top-`n` neighbours of every item, computed with `threads` workers.
fn neighbourhoods(corpus: &Corpus<'_>, n: usize, shrinkage: f64, threads: usize) -> Csr<f32> {
    let n_items = corpus.n_items() as usize;
    // Users' distinct items, and items' users (the incidence matrix both ways).
    let mut user_items: Vec<Vec<u32>> = corpus
        .sequences()
        .map(|s| {
            let mut v = s.to_vec();
            v.sort_unstable();
            v.dedup();
            v
        })
        .collect();
    user_items.shrink_to_fit();
    let mut item_users: Vec<Vec<u32>> = vec![Vec::new(); n_items];
    for (u, items) in user_items.iter().enumerate() {
        for &i in items {
            item_users[i as usize].push(u as u32);
        }
    }
    let norm: Vec<f64> = item_users.iter().map(|u| (u.len() as f64).sqrt()).collect();

    let rows_for = |range: std::ops::Range<usize>| -> Vec<Vec<(u32, f32)>> {
        let mut co = vec![0u32; n_items];
        let mut touched: Vec<u32> = Vec::new();
        range
            .map(|i| {
                for &u in &item_users[i] {
                    for &j in &user_items[u as usize] {
                        if j as usize != i {
                            if co[j as usize] == 0 {
                                touched.push(j);
                            }
                            co[j as usize] += 1;
                        }
                    }
                }
                let mut row: Vec<(u32, f32)> = touched
                    .iter()
                    .map(|&j| {
                        let c = f64::from(co[j as usize]);
                        (j, (c / (norm[i] * norm[j as usize] + shrinkage)) as f32)
                    })
                    .collect();
                for &j in &touched {
                    co[j as usize] = 0;
                }
                touched.clear();
                if row.len() > n {
                    row.select_nth_unstable_by(n - 1, rank_order);
                    row.truncate(n);
                }
                row.sort_unstable_by(rank_order);
                row
            })
            .collect()
    };

    let chunk = n_items.div_ceil(threads.max(1)).max(1);
    let rows: Vec<Vec<(u32, f32)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..n_items)
            .step_by(chunk)
            .map(|start| {
                let range = start..(start + chunk).min(n_items);
                s.spawn(move || rows_for(range))
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });

    let mut csr = Csr {
        offsets: Vec::with_capacity(n_items + 1),
        ..Csr::default()
    };
    csr.offsets.push(0);
    for row in rows {
        for (j, s) in row {
            csr.items.push(j);
            csr.values.push(s);
        }
        csr.offsets.push(csr.items.len());
    }
    csr
}

impl Retriever for ItemKnn {
    const NAME: &'static CStr = c"itemknn";
    const DESCRIPTION: &'static CStr =
        c"item-kNN: cosine over users with shrinkage, recency-weighted sum over the history";

    fn new(config: &str, corpus: &Corpus<'_>) -> Result<Self, String> {
        let config: Config = parse_config(config)?;
        config.check()?;
        let threads = match config.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
            t => t,
        };
        let neighbours = neighbourhoods(corpus, config.neighbours, config.shrinkage, threads);
        let popularity = ItemRanking::from_weights(&interaction_counts(corpus));
        Ok(Self {
            config,
            neighbours,
            popularity,
        })
    }

    fn retrieve(&self, query: &Query<'_>, out: &mut Candidates<'_>) -> Result<(), String> {
        let history = query.history();
        let window = match self.config.history_window {
            0 => history.len(),
            w => w.min(history.len()),
        };
        let mut contributions: Vec<(u32, f32)> = Vec::new();
        let mut weight = 1.0f64;
        for &h in history.iter().rev().take(window) {
            let (items, sims) = self.neighbours.row(h as usize);
            contributions.extend(
                items
                    .iter()
                    .zip(sims)
                    .map(|(&j, &s)| (j, weight as f32 * s)),
            );
            weight *= self.config.decay;
        }
        // Sum contributions per item.
        contributions.sort_unstable_by_key(|&(j, _)| j);
        let mut summed: Vec<(u32, f32)> = Vec::with_capacity(contributions.len());
        for (j, s) in contributions {
            match summed.last_mut() {
                Some((last, acc)) if *last == j => *acc += s,
                _ => summed.push((j, s)),
            }
        }
        summed.retain(|&(_, s)| s > 0.0);
        for (j, s) in top_k(summed, out.capacity(), query) {
            out.push(j, s);
        }
        if self.config.fill_with_popularity {
            let max = self.popularity.max_score();
            self.popularity.fill(query, out, |c| backoff_score(c, max));
        }
        Ok(())
    }
}

declare_retriever!(ItemKnn);

#[cfg(test)]
mod tests {
    use super::*;
    use palr_retriever_sdk::run_query;

    // Users' sets: u0 {0,1,2}, u1 {0,1}, u2 {1,2,3}, u3 {3,4}, u4 {0,1} (u4 has a repeat).
    // |U|: 0:3 1:4 2:2 3:2 4:1.  Co-counts: 0-1:3 0-2:1 1-2:2 1-3:1 2-3:1 3-4:1.
    const OFFSETS: [u64; 6] = [0, 3, 5, 8, 10, 13];
    const ITEMS: [u32; 13] = [0, 1, 2, 0, 1, 1, 2, 3, 3, 4, 0, 1, 1];

    fn corpus() -> Corpus<'static> {
        Corpus::new(6, &OFFSETS, &ITEMS, None).unwrap()
    }

    fn knn(config: &str) -> ItemKnn {
        ItemKnn::new(config, &corpus()).unwrap()
    }

    fn cos(co: f64, a: f64, b: f64, shrink: f64) -> f32 {
        (co / ((a * b).sqrt() + shrink)) as f32
    }

    #[test]
    fn neighbourhoods_are_cosine_with_shrinkage_sorted_and_truncated() {
        let m = knn(r#"{"shrinkage": 1.0, "threads": 2}"#);
        let (items, sims) = m.neighbours.row(1);
        assert_eq!(items, &[0, 2, 3]);
        let want = [
            cos(3.0, 4.0, 3.0, 1.0),
            cos(2.0, 4.0, 2.0, 1.0),
            cos(1.0, 4.0, 2.0, 1.0),
        ];
        for (s, w) in sims.iter().zip(want) {
            assert!((s - w).abs() < 1e-6, "{s} vs {w}");
        }
        // Item 5 has no users: no neighbours. Top-1 truncation keeps the best.
        assert!(m.neighbours.row(5).0.is_empty());
        let m1 = knn(r#"{"neighbours": 1, "shrinkage": 0.0, "threads": 3}"#);
        // Item 3: 1 -> 1/sqrt(8) = 0.354, 2 -> 1/2, 4 -> 1/sqrt(2) = 0.707.
        assert_eq!(m1.neighbours.row(3).0, &[4]);
    }

    #[test]
    fn single_and_multi_threaded_builds_agree() {
        let a = knn(r#"{"threads": 1}"#);
        let b = knn(r#"{"threads": 4}"#);
        assert_eq!(a.neighbours.offsets, b.neighbours.offsets);
        assert_eq!(a.neighbours.items, b.neighbours.items);
        assert_eq!(a.neighbours.values, b.neighbours.values);
    }

    #[test]
    fn scores_sum_recency_weighted_similarities_excluding_history() {
        let m = knn(r#"{"shrinkage": 0.0, "decay": 0.5, "fill_with_popularity": false}"#);
        // History [3, 0] (0 newest): from 0 (w=1): 1: 3/sqrt12=0.866, 2: 1/sqrt6=0.408;
        // from 3 (w=0.5): 1: 0.5/sqrt8=0.177, 2: 0.5*0.5=0.25, 4: 0.5/sqrt2=0.354.
        let got = run_query(&m, &Query::new(&[3, 0], &[]), 5).unwrap();
        let items: Vec<u32> = got.iter().map(|c| c.0).collect();
        assert_eq!(items, vec![1, 2, 4]);
        let want1 = cos(3.0, 3.0, 4.0, 0.0) + 0.5 * cos(1.0, 2.0, 4.0, 0.0);
        assert!((got[0].1 - want1).abs() < 1e-5);
        // Recency matters: with the order reversed, item 4 (a neighbour of 3) wins over 2.
        let got = run_query(&m, &Query::new(&[0, 3], &[1]), 5).unwrap();
        let items: Vec<u32> = got.iter().map(|c| c.0).collect();
        assert_eq!(items, vec![4, 2]);
    }

    #[test]
    fn history_window_limits_contributing_items() {
        let m = knn(r#"{"history_window": 1, "fill_with_popularity": false}"#);
        // Only item 4 (newest) counts: its only neighbour is 3.
        let got = run_query(&m, &Query::new(&[0, 4], &[]), 5).unwrap();
        assert_eq!(got.iter().map(|c| c.0).collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn fill_up_uses_popularity_below_model_scores() {
        let m = knn("");
        let got = run_query(&m, &Query::new(&[4], &[]), 5).unwrap();
        let items: Vec<u32> = got.iter().map(|c| c.0).collect();
        // Neighbour 3 first, then by count: 1 (5), 0 (3), 2 (2), 5 (0).
        assert_eq!(items, vec![3, 1, 0, 2, 5]);
        assert!(got[0].1 > 0.0 && got[1..].iter().all(|c| c.1 < 0.0));
        assert!(got.windows(2).all(|w| w[0].1 >= w[1].1));
        // Empty history: pure popularity.
        let got = run_query(&m, &Query::new(&[], &[]), 2).unwrap();
        assert_eq!(got.iter().map(|c| c.0).collect::<Vec<_>>(), vec![1, 0]);
    }

    #[test]
    fn bad_configs_say_what_to_fix() {
        let err = |c: &str| ItemKnn::new(c, &corpus()).err().unwrap();
        assert!(err(r#"{"neighbors": 5}"#).contains("unknown field `neighbors`"));
        assert!(err(r#"{"neighbours": 0}"#).contains("at least 1"));
        assert!(err(r#"{"decay": 0}"#).contains("decay"));
        assert!(err(r#"{"shrinkage": -1}"#).contains("shrinkage"));
    }
}
