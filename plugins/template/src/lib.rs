//! A palr retriever plugin to start from: proposes the most-interacted catalogue items, newest
//! release year first among equal counts, optionally only items released since `min_year`.
//!
//! Replace the model with yours; keep the shape: a `Config` that refuses unknown keys, all
//! work done in `new` (the corpus is only borrowed there), a `retrieve` that only reads (it runs
//! on many threads at once), and unit tests that need no server.

use std::ffi::CStr;

use palr_retriever_sdk::rank::top_k;
use palr_retriever_sdk::{Candidates, Corpus, Query, Retriever, declare_retriever, parse_config};
use serde::Deserialize;

/// The plugin's JSON config, as the server's `[[retrieval.retrievers]]` entry gives it
/// (`config = { ... }`); empty or `{}` = every default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Propose only items released in this year or later (items without a year are left out
    /// when it is set).
    min_year: Option<i32>,
}

/// Items scored once, at load.
pub struct Template {
    /// `(item, score)` for every item the config allows.
    scored: Vec<(u32, f32)>,
}

impl Retriever for Template {
    // The algorithm's name and one line about it: `palr recommend --list-retrievers` and
    // `palr plugin check` show both. The version shown beside them is this crate's version.
    const NAME: &'static CStr = c"template";
    const DESCRIPTION: &'static CStr =
        c"most-interacted items, newer releases first among equals (plugins/template)";

    fn new(config: &str, corpus: &Corpus<'_>) -> Result<Self, String> {
        let config: Config = parse_config(config)?;
        let mut counts = vec![0u32; corpus.n_items() as usize];
        for &item in corpus.items() {
            counts[item as usize] += 1;
        }
        let mut scored = Vec::with_capacity(counts.len());
        for (index, &count) in counts.iter().enumerate() {
            let index = index as u32;
            // The catalogue's item data (ids, titles, years, genres, other attributes) comes
            // with the view; a year the data does not give is `None`.
            let year = corpus.item(index).and_then(|item| item.year());
            if config
                .min_year
                .is_some_and(|min| year.is_none_or(|y| y < min))
            {
                continue;
            }
            // Count first; among equal counts the newer release (a year adds under 1).
            let recency = year.map_or(0.0, |y| (y.clamp(0, 9999) as f32) / 10_000.0);
            scored.push((index, count as f32 + recency));
        }
        Ok(Self { scored })
    }

    fn retrieve(&self, query: &Query<'_>, out: &mut Candidates<'_>) -> Result<(), String> {
        // `top_k` leaves out the history and the caller's exclusions and sorts best first
        // (ties by item index), as the host requires.
        for (item, score) in top_k(self.scored.iter().copied(), out.capacity(), query) {
            out.push(item, score);
        }
        Ok(())
    }
}

declare_retriever!(Template);

#[cfg(test)]
mod tests {
    use super::*;
    use palr_retriever_sdk::{ItemFields, ItemTable, run_query};

    // Users: [0 1] [1 2] [1]; counts: 0:1 1:3 2:1 3:0.
    const OFFSETS: [u64; 4] = [0, 2, 4, 5];
    const ITEMS: [u32; 5] = [0, 1, 1, 2, 1];

    fn items() -> ItemTable {
        let item = |i: u32, year: Option<i32>| ItemFields {
            id: format!("m{i}"),
            title: format!("Movie {i}"),
            year,
            ..ItemFields::default()
        };
        ItemTable::new(vec![
            item(0, Some(1990)),
            item(1, Some(1980)),
            item(2, Some(1999)),
            item(3, None),
        ])
        .unwrap()
    }

    fn run(config: &str, history: &[u32], k: usize) -> Vec<u32> {
        let table = items();
        let corpus = Corpus::new(4, &OFFSETS, &ITEMS, None)
            .unwrap()
            .with_items(table.as_ref())
            .unwrap();
        let model = Template::new(config, &corpus).unwrap();
        let answer = run_query(&model, &Query::new(history, &[]), k).unwrap();
        answer.into_iter().map(|(item, _)| item).collect()
    }

    #[test]
    fn ranks_by_count_then_newer_release() {
        assert_eq!(run("{}", &[], 10), vec![1, 2, 0, 3]);
        assert_eq!(run("", &[1], 2), vec![2, 0]);
    }

    #[test]
    fn min_year_keeps_recent_releases_only() {
        assert_eq!(run(r#"{"min_year": 1990}"#, &[], 10), vec![2, 0]);
    }

    #[test]
    fn unknown_options_are_refused() {
        let corpus = Corpus::new(4, &OFFSETS, &ITEMS, None).unwrap();
        let err = Template::new(r#"{"min_yaer": 1990}"#, &corpus)
            .err()
            .unwrap();
        assert!(err.contains("unknown field `min_yaer`"), "{err}");
    }
}
