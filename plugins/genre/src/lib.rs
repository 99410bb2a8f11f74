//! Genre retriever: content-based candidates from the catalogue's genres (the item data of
//! ABI version 2), so that items nobody has interacted with yet can be proposed too.
//!
//! A user's taste is a mix over genres read from the history: the `p`-th most recent of the last
//! `history_items` history items (`p = 0` the newest) adds `history_decay^p`, split evenly over
//! its genres. The mix is normalised and blended with the catalogue-wide mix (share
//! `smoothing`; an empty history gets the catalogue-wide mix alone). An item `j` scores the
//! probability of drawing it from that mix, genre first, then an item of the genre:
//!
//! ```text
//! score(j) = Σ_{g ∈ genres(j)} P(g | user) · P(j | g)
//! P(j | g) = (count(j) + prior) / Σ_{i ∈ g} (count(i) + prior)
//! ```
//!
//! `count` = training interactions. The `prior` gives every item a share of its genres, also one
//! with no interaction at all (a new catalogue item), so it reaches users whose taste matches
//! instead of never being proposed. Items without genres form one group of their own. The
//! catalogue-wide mix is the same mix over every training interaction, undecayed (uniform over
//! the groups when there is none). Config: README next to this crate.

use std::collections::HashMap;
use std::ffi::CStr;

use palr_retriever_sdk::rank::top_k;
use palr_retriever_sdk::{Candidates, Corpus, Query, Retriever, declare_retriever, parse_config};
use serde::Deserialize;

/// JSON config (all optional).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Weight of the p-th most recent history item is `history_decay^p` (1 = all equal).
    history_decay: f64,
    /// Only the last `history_items` history items shape the mix (0 = all of them).
    history_items: usize,
    /// Share of the catalogue-wide genre mix in a user's mix, in [0, 1].
    smoothing: f64,
    /// Interactions added to every item's count within its genres (the share of items with
    /// few or no interactions), >= 0.
    prior: f64,
}

impl Default for Config {
    fn default() -> Self {
        // Chosen on the MovieLens-100k validation split (README).
        Self {
            history_decay: 0.9,
            history_items: 0,
            smoothing: 0.1,
            prior: 1.0,
        }
    }
}

impl Config {
    fn check(&self) -> Result<(), String> {
        if !(self.history_decay > 0.0 && self.history_decay <= 1.0) {
            return Err(format!(
                "history_decay must be in (0, 1], got {}",
                self.history_decay
            ));
        }
        if !(0.0..=1.0).contains(&self.smoothing) {
            return Err(format!(
                "smoothing must be in [0, 1], got {}",
                self.smoothing
            ));
        }
        if !(self.prior.is_finite() && self.prior >= 0.0) {
            return Err(format!(
                "prior must be a finite number >= 0, got {}",
                self.prior
            ));
        }
        Ok(())
    }
}

/// The fitted model: each item's genre groups with `P(item | group)`, and the catalogue-wide
/// mix.
pub struct Genre {
    config: Config,
    /// Item `i`'s groups are `groups[offsets[i]..offsets[i + 1]]` (never empty).
    offsets: Vec<usize>,
    groups: Vec<u32>,
    /// `P(i | group)`, parallel to `groups`.
    within: Vec<f64>,
    /// The catalogue-wide mix over groups (sums to 1).
    global: Vec<f64>,
}

impl Genre {
    fn groups_of(&self, item: u32) -> std::ops::Range<usize> {
        self.offsets[item as usize]..self.offsets[item as usize + 1]
    }

    /// Adds `weight`, split evenly over `item`'s groups, to `mix`.
    fn add(&self, mix: &mut [f64], item: u32, weight: f64) {
        let r = self.groups_of(item);
        let share = weight / r.len() as f64;
        for &g in &self.groups[r] {
            mix[g as usize] += share;
        }
    }

    /// The user's mix over groups for `history` (oldest first).
    fn mix(&self, history: &[u32]) -> Vec<f64> {
        let mut mix = vec![0.0; self.global.len()];
        let take = match self.config.history_items {
            0 => history.len(),
            n => n,
        };
        let (mut weight, mut total) = (1.0, 0.0);
        for &item in history.iter().rev().take(take) {
            self.add(&mut mix, item, weight);
            total += weight;
            weight *= self.config.history_decay;
        }
        if total <= 0.0 {
            return self.global.clone();
        }
        let s = self.config.smoothing;
        for (m, &g) in mix.iter_mut().zip(&self.global) {
            *m = (1.0 - s) * *m / total + s * g;
        }
        mix
    }
}

impl Retriever for Genre {
    const NAME: &'static CStr = c"genre";
    const DESCRIPTION: &'static CStr = c"content-based: the user's recency-weighted genre mix times popularity within each genre; new items included";

    fn new(config: &str, corpus: &Corpus<'_>) -> Result<Self, String> {
        let config: Config = parse_config(config)?;
        config.check()?;
        let data = corpus.item_data().ok_or(
            "genre needs the catalogue's genres (item data), but the host's training view has \
             none: serve it from palr, which sends item data from plugin ABI 2 on",
        )?;
        // Group ids: each distinct genre in first-seen order, then "no genre" for items
        // without any.
        let mut ids: HashMap<&str, u32> = HashMap::new();
        let mut offsets = Vec::with_capacity(data.len() + 1);
        offsets.push(0);
        let mut groups = Vec::new();
        let mut untagged = Vec::new();
        for item in data.iter() {
            let before = groups.len();
            for genre in item.genres() {
                let next = ids.len() as u32;
                let g = *ids.entry(genre).or_insert(next);
                if !groups[before..].contains(&g) {
                    groups.push(g);
                }
            }
            if groups.len() == before {
                untagged.push(groups.len());
                groups.push(u32::MAX); // "no genre", numbered below
            }
            offsets.push(groups.len());
        }
        let n_groups = ids.len() + usize::from(!untagged.is_empty());
        for at in untagged {
            groups[at] = ids.len() as u32;
        }

        let mut counts = vec![0.0f64; data.len()];
        for &item in corpus.items() {
            counts[item as usize] += 1.0;
        }
        // P(item | group) = (count + prior) / the group's total.
        let mut totals = vec![0.0f64; n_groups];
        let item_of = |at: usize| offsets.partition_point(|&o| o <= at) - 1;
        for (at, &g) in groups.iter().enumerate() {
            totals[g as usize] += counts[item_of(at)] + config.prior;
        }
        let within = groups
            .iter()
            .enumerate()
            .map(|(at, &g)| {
                let t = totals[g as usize];
                if t > 0.0 {
                    (counts[item_of(at)] + config.prior) / t
                } else {
                    0.0
                }
            })
            .collect();

        let mut model = Self {
            config,
            offsets,
            groups,
            within,
            global: vec![0.0; n_groups],
        };
        let mut global = vec![0.0; n_groups];
        for &item in corpus.items() {
            model.add(&mut global, item, 1.0);
        }
        let sum: f64 = global.iter().sum();
        if sum > 0.0 {
            global.iter_mut().for_each(|g| *g /= sum);
        } else if n_groups > 0 {
            global.fill(1.0 / n_groups as f64);
        }
        model.global = global;
        Ok(model)
    }

    fn retrieve(&self, query: &Query<'_>, out: &mut Candidates<'_>) -> Result<(), String> {
        let n_items = self.offsets.len() - 1;
        if let Some(&bad) = query.history().iter().find(|&&i| i as usize >= n_items) {
            return Err(format!(
                "history item {bad} is out of range ({n_items} items)"
            ));
        }
        let mix = self.mix(query.history());
        let scored = (0..n_items as u32).map(|item| {
            let r = self.groups_of(item);
            let score: f64 = self.groups[r.clone()]
                .iter()
                .zip(&self.within[r])
                .map(|(&g, &p)| mix[g as usize] * p)
                .sum();
            (item, score as f32)
        });
        for (item, score) in top_k(scored, out.capacity(), query) {
            out.push(item, score);
        }
        Ok(())
    }
}

declare_retriever!(Genre);

#[cfg(test)]
mod tests {
    use super::*;
    use palr_retriever_sdk::{ItemFields, ItemTable, run_query};

    /// Items: 0-2 Comedy, 3-5 Horror (5 never interacted with), 6 Comedy and Horror, 7 none.
    fn catalogue() -> ItemTable {
        let genres = |i: usize| -> Vec<String> {
            match i {
                0..=2 => vec!["Comedy".into()],
                3..=5 => vec!["Horror".into()],
                6 => vec!["Comedy".into(), "Horror".into()],
                _ => Vec::new(),
            }
        };
        ItemTable::new(
            (0..8)
                .map(|i| ItemFields {
                    id: format!("m{i}"),
                    title: format!("Movie {i}"),
                    genres: genres(i),
                    ..ItemFields::default()
                })
                .collect(),
        )
        .unwrap()
    }

    // Counts: 0:4 1:2 2:1 3:3 4:1 5:0 6:1 7:1.
    const OFFSETS: [u64; 5] = [0, 4, 8, 11, 13];
    const ITEMS: [u32; 13] = [0, 1, 3, 0, 0, 3, 4, 1, 0, 2, 3, 6, 7];

    fn model(config: &str) -> Result<Genre, String> {
        let table = catalogue();
        let corpus = Corpus::new(8, &OFFSETS, &ITEMS, None)?.with_items(table.as_ref())?;
        Genre::new(config, &corpus)
    }

    fn items(config: &str, history: &[u32], exclude: &[u32], k: usize) -> Vec<u32> {
        let m = model(config).unwrap();
        let answer = run_query(&m, &Query::new(history, exclude), k).unwrap();
        assert!(answer.windows(2).all(|w| w[0].1 >= w[1].1), "{answer:?}");
        answer.into_iter().map(|(i, _)| i).collect()
    }

    #[test]
    fn proposes_the_users_genres_by_popularity_within_them() {
        // A horror fan (history 3, 4): P(j | Horror) = 3: 4/9, 4: 2/9, 6: 2/9, 5: 1/9, so 6
        // (half horror, and popular) then 5; the comedies follow in their order within
        // Comedy (0: 5/12, 1: 3/12, 2: 2/12) through the catalogue-wide share, the untagged
        // item last.
        assert_eq!(items("{}", &[3, 4], &[], 8), vec![6, 5, 0, 1, 2, 7]);
        // Without the catalogue-wide share only horror scores: the comedies tie at 0 and come
        // by index.
        let m = model(r#"{"smoothing": 0}"#).unwrap();
        let answer = run_query(&m, &Query::new(&[3, 4], &[]), 4).unwrap();
        assert_eq!(answer.iter().map(|a| a.0).collect::<Vec<_>>(), vec![6, 5, 0, 1]);
        assert_eq!((answer[2].1, answer[3].1), (0.0, 0.0));
    }

    #[test]
    fn an_item_nobody_interacted_with_is_proposed() {
        // Item 5 has no interaction; the horror fan gets it ahead of every comedy, however
        // popular.
        assert_eq!(items("{}", &[3, 4], &[6], 3), vec![5, 0, 1]);
        // Without the prior it has no share of its genre and drops behind them all.
        let got = items(r#"{"prior": 0}"#, &[3, 4], &[6], 5);
        assert_eq!(got, vec![0, 1, 7, 2, 5], "{got:?}");
    }

    #[test]
    fn recent_history_weighs_more() {
        // Two comedies long ago, one horror just now.
        let history = [1, 2, 4];
        assert_eq!(
            items(r#"{"history_decay": 0.2}"#, &history, &[], 1),
            vec![3]
        );
        assert_eq!(
            items(r#"{"history_decay": 1.0}"#, &history, &[], 1),
            vec![0]
        );
        // Only the last item counts: horror, whatever the decay.
        assert_eq!(
            items(r#"{"history_items": 1, "history_decay": 1.0}"#, &history, &[], 1),
            vec![3]
        );
    }

    #[test]
    fn items_without_genres_form_a_group() {
        // 0 is a comedy; 1 and 2 have no genre, 2 no interaction either.
        let table = ItemTable::new(
            ["Comedy", "", ""]
                .iter()
                .enumerate()
                .map(|(i, g)| ItemFields {
                    id: i.to_string(),
                    title: format!("Movie {i}"),
                    genres: (!g.is_empty()).then(|| g.to_string()).into_iter().collect(),
                    ..ItemFields::default()
                })
                .collect(),
        )
        .unwrap();
        let corpus = Corpus::new(3, &[0, 3, 4], &[0, 0, 1, 0], None)
            .unwrap()
            .with_items(table.as_ref())
            .unwrap();
        let m = Genre::new(r#"{"smoothing": 0}"#, &corpus).unwrap();
        assert_eq!(m.global.len(), 2);
        let answer = run_query(&m, &Query::new(&[1], &[]), 2).unwrap();
        assert_eq!(answer[0].0, 2, "{answer:?}");
        assert!(answer[0].1 > 0.0 && answer[1] == (0, 0.0), "{answer:?}");
    }

    #[test]
    fn empty_history_gets_the_catalogue_wide_mix() {
        // Catalogue mix: Comedy 7.5, Horror 4.5, none 1 of 13 interactions (item 6 counts half
        // for each of its genres): 0 (0.577 * 5/12) leads, then 6 (both genres), 3, 1.
        assert_eq!(items("{}", &[], &[], 4), vec![0, 6, 3, 1]);
        assert_eq!(items("{}", &[], &[0, 3], 2), vec![6, 1]);
    }

    #[test]
    fn works_on_a_view_without_interactions() {
        let table = catalogue();
        let corpus = Corpus::new(8, &[0], &[], None)
            .unwrap()
            .with_items(table.as_ref())
            .unwrap();
        let m = Genre::new("{}", &corpus).unwrap();
        let got = run_query(&m, &Query::new(&[3], &[]), 8).unwrap();
        assert_eq!(got.len(), 7);
        assert!(got.iter().all(|(_, s)| s.is_finite() && *s > 0.0), "{got:?}");
    }

    #[test]
    fn bad_configs_and_missing_item_data_say_what_to_fix() {
        let err = |c: &str| model(c).err().unwrap();
        assert!(err(r#"{"decay": 0.5}"#).contains("unknown field `decay`"));
        assert!(err(r#"{"history_decay": 0}"#).contains("history_decay must be in (0, 1]"));
        assert!(err(r#"{"smoothing": 1.5}"#).contains("smoothing must be in [0, 1]"));
        assert!(err(r#"{"prior": -1}"#).contains("prior must be"));
        assert!(err("[1,").contains("invalid config JSON"));
        let bare = Corpus::new(8, &OFFSETS, &ITEMS, None).unwrap();
        let e = Genre::new("{}", &bare).err().unwrap();
        assert!(e.contains("needs the catalogue's genres"), "{e}");
    }
}
