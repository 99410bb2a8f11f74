//! Markov-chain retriever: first-order item-to-item transitions counted in the training
//! sequences (the "what comes next" baseline of sequential recommendation; cf. FPMC, Rendle et
//! al. 2010, whose Markov-chain part is exactly this transition matrix), backed off to
//! popularity so it always fills `k`.
//!
//! Training: for every position `t` of every sequence and `d = 1..=window`,
//! `count(s_t -> s_{t+d}) += window_decay^(d-1)`; with `normalize`, each row is divided by its
//! total, giving `P(j | i)`. Query: a candidate `j` scores
//! `sum_p history_decay^p * P(j | h_p)` over the last `history_items` history items `h_p`
//! (`p = 0` newest). This mixes first-order predictions from several recent items; it is not a
//! higher-order chain. Items no transition reaches are filled in popularity order with scores
//! in `[-1, 0)`. Config: README next to this crate.

use std::ffi::CStr;

use palr_retriever_sdk::rank::{ItemRanking, backoff_score, interaction_counts, top_k};
use palr_retriever_sdk::{Candidates, Corpus, Query, Retriever, declare_retriever, parse_config};
use serde::Deserialize;

/// JSON config (all optional).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Transitions are counted from each item to the next `window` items.
    window: usize,
    /// Weight of the d-th next item is `window_decay^(d-1)`.
    window_decay: f64,
    /// How many of the last history items predict.
    history_items: usize,
    /// Weight of the p-th most recent history item is `history_decay^p`.
    history_decay: f64,
    /// Divide each source item's counts by their total (transition probabilities).
    normalize: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            window: 1,
            window_decay: 1.0,
            history_items: 3,
            history_decay: 0.5,
            normalize: true,
        }
    }
}

impl Config {
    fn check(&self) -> Result<(), String> {
        if self.window == 0 {
            return Err("window must be at least 1 (1 = next item only)".into());
        }
        if self.history_items == 0 {
            return Err("history_items must be at least 1 (1 = last item only)".into());
        }
        for (name, v) in [
            ("window_decay", self.window_decay),
            ("history_decay", self.history_decay),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(format!("{name} must be in (0, 1], got {v}"));
            }
        }
        Ok(())
    }
}

/// Transition rows plus popularity for back-off.
pub struct Markov {
    config: Config,
    /// Row `i`: targets `targets[offsets[i]..offsets[i+1]]` (ascending) with `weights`.
    offsets: Vec<usize>,
    targets: Vec<u32>,
    weights: Vec<f32>,
    popularity: ItemRanking,
}

impl Markov {
    fn transitions(&self, item: u32) -> (&[u32], &[f32]) {
        let span = self.offsets[item as usize]..self.offsets[item as usize + 1];
        (&self.targets[span.clone()], &self.weights[span])
    }
}

impl Retriever for Markov {
    const NAME: &'static CStr = c"markov";
    const DESCRIPTION: &'static CStr =
        c"first-order transitions from the last history items, popularity back-off";

    fn new(config: &str, corpus: &Corpus<'_>) -> Result<Self, String> {
        let config: Config = parse_config(config)?;
        config.check()?;
        let n_items = corpus.n_items() as usize;

        let mut pairs: Vec<(u32, u32, f64)> = Vec::new();
        for seq in corpus.sequences() {
            for (t, &from) in seq.iter().enumerate() {
                let mut w = 1.0;
                for &to in seq.iter().skip(t + 1).take(config.window) {
                    pairs.push((from, to, w));
                    w *= config.window_decay;
                }
            }
        }
        pairs.sort_unstable_by_key(|&(a, b, _)| (a, b));

        let mut offsets = vec![0usize; n_items + 1];
        let mut targets = Vec::new();
        let mut sums: Vec<f64> = Vec::new();
        let mut last: Option<(u32, u32)> = None;
        for (a, b, w) in pairs {
            if last == Some((a, b)) {
                *sums.last_mut().expect("a previous pair exists") += w;
            } else {
                targets.push(b);
                sums.push(w);
                offsets[a as usize + 1] += 1;
                last = Some((a, b));
            }
        }
        for i in 0..n_items {
            offsets[i + 1] += offsets[i];
        }
        let mut weights = Vec::with_capacity(sums.len());
        for i in 0..n_items {
            let row = &sums[offsets[i]..offsets[i + 1]];
            let total: f64 = if config.normalize {
                row.iter().sum()
            } else {
                1.0
            };
            weights.extend(row.iter().map(|&c| (c / total) as f32));
        }
        let popularity = ItemRanking::from_weights(&interaction_counts(corpus));
        Ok(Self {
            config,
            offsets,
            targets,
            weights,
            popularity,
        })
    }

    fn retrieve(&self, query: &Query<'_>, out: &mut Candidates<'_>) -> Result<(), String> {
        let mut contributions: Vec<(u32, f32)> = Vec::new();
        let mut w = 1.0f64;
        for &h in query.history().iter().rev().take(self.config.history_items) {
            let (targets, weights) = self.transitions(h);
            contributions.extend(
                targets
                    .iter()
                    .zip(weights)
                    .map(|(&j, &p)| (j, w as f32 * p)),
            );
            w *= self.config.history_decay;
        }
        contributions.sort_unstable_by_key(|&(j, _)| j);
        let mut summed: Vec<(u32, f32)> = Vec::with_capacity(contributions.len());
        for (j, s) in contributions {
            match summed.last_mut() {
                Some((last, acc)) if *last == j => *acc += s,
                _ => summed.push((j, s)),
            }
        }
        for (j, s) in top_k(summed, out.capacity(), query) {
            out.push(j, s);
        }
        let max = self.popularity.max_score();
        self.popularity.fill(query, out, |c| backoff_score(c, max));
        Ok(())
    }
}

declare_retriever!(Markov);

#[cfg(test)]
mod tests {
    use super::*;
    use palr_retriever_sdk::run_query;

    // Sequences: [0 1 2] [0 1 3] [0 2] [1 2 4] [5].
    // Next-item counts: 0->1:2 0->2:1 | 1->2:2 1->3:1 | 2->4:1.
    // Popularity: 0:3 1:3 2:3 3:1 4:1 5:1 (6: 0).
    const OFFSETS: [u64; 6] = [0, 3, 6, 8, 11, 12];
    const ITEMS: [u32; 12] = [0, 1, 2, 0, 1, 3, 0, 2, 1, 2, 4, 5];

    fn model(config: &str) -> Markov {
        Markov::new(config, &Corpus::new(7, &OFFSETS, &ITEMS, None).unwrap()).unwrap()
    }

    fn items(got: &[(u32, f32)]) -> Vec<u32> {
        got.iter().map(|c| c.0).collect()
    }

    #[test]
    fn last_item_transitions_rank_first_then_popularity() {
        let m = model("");
        let got = run_query(&m, &Query::new(&[0], &[]), 4).unwrap();
        // 0 -> 1 (2/3), 0 -> 2 (1/3), then popular 3, 4 (tie by index).
        assert_eq!(items(&got), vec![1, 2, 3, 4]);
        assert!((got[0].1 - 2.0 / 3.0).abs() < 1e-6 && (got[1].1 - 1.0 / 3.0).abs() < 1e-6);
        assert!(got[2].1 < 0.0 && got[2].1 == got[3].1);
    }

    #[test]
    fn always_fills_k_and_skips_history_and_excluded() {
        let m = model("");
        // Item 6 never occurs: pure popularity back-off.
        let got = run_query(&m, &Query::new(&[6], &[0]), 10).unwrap();
        assert_eq!(items(&got), vec![1, 2, 3, 4, 5]);
        // History item 2 is excluded even though 1 -> 2 is the best transition.
        let m1 = model(r#"{"history_items": 1}"#);
        let got = run_query(&m1, &Query::new(&[2, 1], &[]), 3).unwrap();
        assert_eq!(items(&got), vec![3, 0, 4]);
        // With the default three history items, 2 -> 4 (weight 0.5) outranks 1 -> 3 (1/3).
        let got = run_query(&m, &Query::new(&[2, 1], &[]), 3).unwrap();
        assert_eq!(items(&got), vec![4, 3, 0]);
    }

    #[test]
    fn several_history_items_mix_with_decay() {
        let m = model(r#"{"history_items": 2, "history_decay": 0.5}"#);
        // History [0, 1] (1 newest): from 1: 2 -> 2/3, 3 -> 1/3; from 0 (x0.5): 2 -> 1/6.
        let got = run_query(&m, &Query::new(&[0, 1], &[]), 2).unwrap();
        assert_eq!(items(&got), vec![2, 3]);
        assert!((got[0].1 - (2.0 / 3.0 + 1.0 / 6.0)).abs() < 1e-6);
    }

    #[test]
    fn window_counts_later_items_with_decay() {
        let m = model(r#"{"window": 2, "window_decay": 0.5, "normalize": false}"#);
        // From 0: 1 (1 + 1) = 2, 2 (0.5 + 1 + 0) = 1.5, 3 (0.5).
        let got = run_query(&m, &Query::new(&[0], &[]), 3).unwrap();
        assert_eq!(got, vec![(1, 2.0), (2, 1.5), (3, 0.5)]);
    }

    #[test]
    fn bad_configs_say_what_to_fix() {
        let c = Corpus::new(7, &OFFSETS, &ITEMS, None).unwrap();
        let err = |s: &str| Markov::new(s, &c).err().unwrap();
        assert!(err(r#"{"order": 2}"#).contains("unknown field `order`"));
        assert!(err(r#"{"window": 0}"#).contains("window must be at least 1"));
        assert!(err(r#"{"history_items": 0}"#).contains("history_items"));
        assert!(err(r#"{"history_decay": 1.5}"#).contains("history_decay"));
    }
}
