//! Popularity retriever: proposes the items with the most training interactions, ties broken
//! by lower item index, never an excluded or history item.
//!
//! The classic non-personalised baseline of sequential recommendation (e.g. the "Pop" row of
//! SASRec, Kang & McAuley 2018). Options restrict the counts to recent interactions; see the
//! README next to this crate for the config.

use std::ffi::CStr;

use palr_retriever_sdk::rank::ItemRanking;
use palr_retriever_sdk::{Candidates, Corpus, Query, Retriever, declare_retriever, parse_config};
use serde::Deserialize;

/// JSON config (all optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Count only interactions at most this many seconds older than the newest training
    /// interaction (needs timestamps in the training view).
    window_seconds: Option<i64>,
    /// Count only each user's last `n` interactions.
    last_n_per_user: Option<usize>,
    /// Count a user at most once per item (repeat consumption does not add up).
    distinct_users: bool,
}

/// Items ranked by (windowed) interaction count.
pub struct Popularity {
    ranking: ItemRanking,
}

impl Popularity {
    fn counts(config: &Config, corpus: &Corpus<'_>) -> Result<Vec<f64>, String> {
        if config.window_seconds.is_some_and(|w| w <= 0) {
            return Err("window_seconds must be a positive number of seconds".into());
        }
        if config.last_n_per_user == Some(0) {
            return Err(
                "last_n_per_user must be at least 1 (leave it out to count everything)".into(),
            );
        }
        let cutoff = match config.window_seconds {
            None => None,
            Some(w) => {
                let ts = corpus.timestamps().ok_or(
                    "window_seconds needs timestamps, but the host's training view has none",
                )?;
                ts.iter().max().map(|&newest| newest.saturating_sub(w))
            }
        };
        let mut counts = vec![0f64; corpus.n_items() as usize];
        let mut seen_by_user: Vec<u32> = Vec::new();
        for user in 0..corpus.n_users() {
            let seq = corpus.sequence(user);
            let start = config
                .last_n_per_user
                .map_or(0, |n| seq.len().saturating_sub(n));
            let ts = corpus.sequence_timestamps(user);
            seen_by_user.clear();
            for (pos, &item) in seq.iter().enumerate().skip(start) {
                if let (Some(cut), Some(ts)) = (cutoff, ts)
                    && ts[pos] < cut
                {
                    continue;
                }
                if config.distinct_users {
                    if seen_by_user.contains(&item) {
                        continue;
                    }
                    seen_by_user.push(item);
                }
                counts[item as usize] += 1.0;
            }
        }
        Ok(counts)
    }
}

impl Retriever for Popularity {
    const NAME: &'static CStr = c"popularity";
    const DESCRIPTION: &'static CStr =
        c"most-interacted training items (optionally recent only), ties by item index";

    fn new(config: &str, corpus: &Corpus<'_>) -> Result<Self, String> {
        let config: Config = parse_config(config)?;
        let counts = Self::counts(&config, corpus)?;
        Ok(Self {
            ranking: ItemRanking::from_weights(&counts),
        })
    }

    fn retrieve(&self, query: &Query<'_>, out: &mut Candidates<'_>) -> Result<(), String> {
        self.ranking.fill(query, out, |count| count);
        Ok(())
    }
}

declare_retriever!(Popularity);

#[cfg(test)]
mod tests {
    use super::*;
    use palr_retriever_sdk::run_query;

    // Users: [0 1 2] [1 2] [2 1 1] [3]; counts: 0:1 1:4 2:3 3:1 4:0.
    const OFFSETS: [u64; 5] = [0, 3, 5, 8, 9];
    const ITEMS: [u32; 9] = [0, 1, 2, 1, 2, 2, 1, 1, 3];
    const TS: [i64; 9] = [10, 20, 30, 15, 25, 5, 50, 60, 100];

    fn corpus(ts: bool) -> Corpus<'static> {
        Corpus::new(5, &OFFSETS, &ITEMS, ts.then_some(&TS[..])).unwrap()
    }

    fn run(config: &str, history: &[u32], exclude: &[u32], k: usize) -> Vec<(u32, f32)> {
        let p = Popularity::new(config, &corpus(true)).unwrap();
        run_query(&p, &Query::new(history, exclude), k).unwrap()
    }

    #[test]
    fn ranks_by_count_then_index_and_fills_with_unseen() {
        assert_eq!(
            run("", &[], &[], 10),
            vec![(1, 4.0), (2, 3.0), (0, 1.0), (3, 1.0), (4, 0.0)]
        );
        assert_eq!(run("{}", &[], &[], 2), vec![(1, 4.0), (2, 3.0)]);
    }

    #[test]
    fn never_proposes_history_or_excluded_items() {
        assert_eq!(run("", &[1], &[0], 3), vec![(2, 3.0), (3, 1.0), (4, 0.0)]);
        assert_eq!(run("", &[0, 1, 2, 3], &[4], 3), vec![]);
    }

    #[test]
    fn distinct_users_ignores_repeats() {
        // Item 1: users 0, 1, 2 -> 3; item 2: users 0, 1, 2 -> 3; tie broken by index.
        assert_eq!(
            run(r#"{"distinct_users": true}"#, &[], &[], 3),
            vec![(1, 3.0), (2, 3.0), (0, 1.0)]
        );
    }

    #[test]
    fn windows_restrict_counts() {
        // Newest is 100; a 50 s window keeps ts >= 50: items 1 (50, 60) and 3 (100).
        assert_eq!(
            run(r#"{"window_seconds": 50}"#, &[], &[], 3),
            vec![(1, 2.0), (3, 1.0), (0, 0.0)]
        );
        // Last interaction per user: 2, 2, 1, 3.
        assert_eq!(
            run(r#"{"last_n_per_user": 1}"#, &[], &[], 3),
            vec![(2, 2.0), (1, 1.0), (3, 1.0)]
        );
    }

    #[test]
    fn bad_configs_say_what_to_fix() {
        let err = |c: &str, ts: bool| Popularity::new(c, &corpus(ts)).err().unwrap();
        assert!(err(r#"{"window": 5}"#, true).contains("unknown field `window`"));
        assert!(err(r#"{"window_seconds": 0}"#, true).contains("positive"));
        assert!(err(r#"{"window_seconds": 10}"#, false).contains("needs timestamps"));
        assert!(err(r#"{"last_n_per_user": 0}"#, true).contains("at least 1"));
        assert!(err("[1,", true).contains("invalid config JSON"));
    }
}
