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
//! `count` = training interactions, each item's `count + prior` split evenly over its genres (as
//! each interaction is in the mixes), so that for a user whose mix is the catalogue's the score
//! is popularity. The `prior` gives every item a share of its genres, also one with no
//! interaction at all (a new catalogue item), so it reaches users whose taste matches instead of
//! never being proposed. Items without genres form one group of their own. The catalogue-wide
//! mix is the same mix over every training interaction, undecayed (uniform over the groups when
//! there is none).
//!
//! Release years work the same way: the user's recency-weighted mix over release years,
//! smoothed alike, against the catalogue's (interactions plus one per item, so no year is
//! empty); an item's score is multiplied by `(P(year | user) / P(year))^year_weight`. Items
//! without a year keep their genre score. New catalogue items are mostly new releases, which
//! users watching recent releases are lifted towards. Config: README next to this crate.

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
    /// Exponent of the release-year lift (0 = genres only).
    year_weight: f64,
}

impl Default for Config {
    fn default() -> Self {
        // Chosen on the MovieLens-100k validation split (README).
        Self {
            history_decay: 0.9,
            history_items: 30,
            smoothing: 0.5,
            prior: 5.0,
            year_weight: 0.75,
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
        if !(self.year_weight.is_finite() && self.year_weight >= 0.0) {
            return Err(format!(
                "year_weight must be a finite number >= 0, got {}",
                self.year_weight
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
    /// Each item's release-year bucket, `u32::MAX` for none.
    year_of: Vec<u32>,
    /// The catalogue-wide mix over release years: interactions plus one per item of the year
    /// (never 0 for a year some item has).
    year_global: Vec<f64>,
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

    /// How much more than the catalogue the user's recent history holds each release year,
    /// `(P(year | user) / P(year))^year_weight` (smoothed like the genre mix); empty when
    /// years are off.
    fn year_lift(&self, history: &[u32]) -> Vec<f64> {
        if self.config.year_weight == 0.0 || self.year_global.is_empty() {
            return Vec::new();
        }
        let mut mix = vec![0.0; self.year_global.len()];
        let take = match self.config.history_items {
            0 => history.len(),
            n => n,
        };
        let (mut weight, mut total) = (1.0, 0.0);
        for &item in history.iter().rev().take(take) {
            let y = self.year_of[item as usize];
            if y != u32::MAX {
                mix[y as usize] += weight;
                total += weight;
            }
            weight *= self.config.history_decay;
        }
        let s = if total > 0.0 {
            self.config.smoothing
        } else {
            1.0
        };
        mix.iter()
            .zip(&self.year_global)
            .map(|(&m, &g)| {
                let user = if total > 0.0 { m / total } else { 0.0 };
                (((1.0 - s) * user + s * g) / g).powf(self.config.year_weight)
            })
            .collect()
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
        // An item's (count + prior) is split evenly over its groups, as each interaction is in
        // the mixes; P(item | group) = its part / the group's total.
        let part: Vec<f64> = (0..data.len())
            .map(|i| (counts[i] + config.prior) / (offsets[i + 1] - offsets[i]) as f64)
            .collect();
        let item_of = |at: usize| offsets.partition_point(|&o| o <= at) - 1;
        let mut totals = vec![0.0f64; n_groups];
        for (at, &g) in groups.iter().enumerate() {
            totals[g as usize] += part[item_of(at)];
        }
        let within = groups
            .iter()
            .enumerate()
            .map(|(at, &g)| {
                let t = totals[g as usize];
                if t > 0.0 { part[item_of(at)] / t } else { 0.0 }
            })
            .collect();

        // Release years: buckets in first-seen order.
        let mut year_ids: HashMap<i32, u32> = HashMap::new();
        let year_of: Vec<u32> = data
            .iter()
            .map(|item| match item.year() {
                Some(y) => {
                    let next = year_ids.len() as u32;
                    *year_ids.entry(y).or_insert(next)
                }
                None => u32::MAX,
            })
            .collect();
        let mut year_global = vec![0.0; year_ids.len()];
        for &y in &year_of {
            if y != u32::MAX {
                year_global[y as usize] += 1.0;
            }
        }
        for &item in corpus.items() {
            let y = year_of[item as usize];
            if y != u32::MAX {
                year_global[y as usize] += 1.0;
            }
        }
        let sum: f64 = year_global.iter().sum();
        year_global.iter_mut().for_each(|g| *g /= sum);

        let mut model = Self {
            config,
            offsets,
            groups,
            within,
            global: vec![0.0; n_groups],
            year_of,
            year_global,
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
        let lift = self.year_lift(query.history());
        let scored = (0..n_items as u32).map(|item| {
            let r = self.groups_of(item);
            let mut score: f64 = self.groups[r.clone()]
                .iter()
                .zip(&self.within[r])
                .map(|(&g, &p)| mix[g as usize] * p)
                .sum();
            if let Some(&l) = lift.get(self.year_of[item as usize] as usize) {
                score *= l;
            }
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

    /// A config with every option given, so that the expectations below do not move with the
    /// defaults (those are tuned on data).
    fn cfg(history_decay: f64, history_items: usize, smoothing: f64, prior: f64) -> String {
        cfg_years(history_decay, history_items, smoothing, prior, 0.0)
    }

    fn cfg_years(
        history_decay: f64,
        history_items: usize,
        smoothing: f64,
        prior: f64,
        year_weight: f64,
    ) -> String {
        format!(
            r#"{{"history_decay": {history_decay}, "history_items": {history_items},
                "smoothing": {smoothing}, "prior": {prior}, "year_weight": {year_weight}}}"#
        )
    }

    /// Decay 0.9 over the whole history, smoothing 0.1, prior 1, no release years.
    fn base() -> String {
        cfg(0.9, 0, 0.1, 1.0)
    }

    fn model(config: &str) -> Result<Genre, String> {
        let table = catalogue();
        let corpus = Corpus::new(8, &OFFSETS, &ITEMS, None)?.with_items(table.as_ref())?;
        Genre::new(config, &corpus)
    }

    fn answer(config: &str, history: &[u32], exclude: &[u32], k: usize) -> Vec<(u32, f32)> {
        let m = model(config).unwrap();
        let answer = run_query(&m, &Query::new(history, exclude), k).unwrap();
        assert!(answer.windows(2).all(|w| w[0].1 >= w[1].1), "{answer:?}");
        answer
    }

    fn items(config: &str, history: &[u32], exclude: &[u32], k: usize) -> Vec<u32> {
        answer(config, history, exclude, k)
            .into_iter()
            .map(|(i, _)| i)
            .collect()
    }

    // With prior 1, each item's (count + 1) split over its genres: Comedy 0: 5, 1: 3, 2: 2,
    // 6: 1 (of 11); Horror 3: 4, 4: 2, 5: 1, 6: 1 (of 8); no genre 7: 2 (of 2). The
    // catalogue-wide mix: Comedy 7.5, Horror 4.5, none 1 of 13 interactions.

    #[test]
    fn proposes_the_users_genres_by_popularity_within_them() {
        // A horror fan (history 3, 4): 6 (1/8 of Horror, plus a little Comedy) then 5 (1/8);
        // the comedies follow in their order within Comedy through the catalogue-wide share,
        // the untagged item last.
        assert_eq!(items(&base(), &[3, 4], &[], 8), vec![6, 5, 0, 1, 2, 7]);
        // Without the catalogue-wide share only Horror scores: 5 and 6 tie at 1/8 (ties go to
        // the lower index), the comedies tie at 0.
        let got = answer(&cfg(0.9, 0, 0.0, 1.0), &[3, 4], &[], 4);
        assert_eq!(got, vec![(5, 0.125), (6, 0.125), (0, 0.0), (1, 0.0)]);
    }

    #[test]
    fn an_item_nobody_interacted_with_is_proposed() {
        // Item 5 has no interaction; the horror fan gets it ahead of every comedy, however
        // popular.
        assert_eq!(items(&base(), &[3, 4], &[6], 3), vec![5, 0, 1]);
        // Without the prior it has no share of its genre: last, at 0.
        let got = answer(&cfg(0.9, 0, 0.1, 0.0), &[3, 4], &[6], 5);
        assert_eq!(got.last(), Some(&(5, 0.0)), "{got:?}");
        assert!(got[..4].iter().all(|&(_, s)| s > 0.0), "{got:?}");
    }

    #[test]
    fn recent_history_weighs_more() {
        // Two comedies long ago, one horror just now.
        let history = [1, 2, 4];
        assert_eq!(items(&cfg(0.2, 0, 0.1, 1.0), &history, &[], 1), vec![3]);
        assert_eq!(items(&cfg(1.0, 0, 0.1, 1.0), &history, &[], 1), vec![0]);
        // Only the last item counts: horror, whatever the decay.
        assert_eq!(items(&cfg(1.0, 1, 0.1, 1.0), &history, &[], 1), vec![3]);
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
        let m = Genre::new(&cfg(0.9, 0, 0.0, 1.0), &corpus).unwrap();
        assert_eq!(m.global.len(), 2);
        // The user of untagged item 1 gets untagged item 2 (1 of the group's 3), not the
        // comedy.
        let got = run_query(&m, &Query::new(&[1], &[]), 2).unwrap();
        assert_eq!(got, vec![(2, 1.0 / 3.0), (0, 0.0)]);
    }

    #[test]
    fn release_years_the_user_favours_lift_their_items() {
        // All dramas: 0 and 1 from 1990 (3 interactions each), 2 and 3 from 1998 (2 new, 3
        // once), 4 without a year.
        let year = |i: usize| match i {
            0 | 1 => Some(1990),
            2 | 3 => Some(1998),
            _ => None,
        };
        let table = ItemTable::new(
            (0..5)
                .map(|i| ItemFields {
                    id: i.to_string(),
                    title: format!("Movie {i}"),
                    year: year(i),
                    genres: vec!["Drama".into()],
                    ..ItemFields::default()
                })
                .collect(),
        )
        .unwrap();
        let corpus = Corpus::new(5, &[0, 5, 7], &[0, 1, 0, 1, 0, 3, 1], None)
            .unwrap()
            .with_items(table.as_ref())
            .unwrap();
        let run = |year_weight: f64| {
            let m = Genre::new(&cfg_years(0.9, 0, 0.5, 1.0, year_weight), &corpus).unwrap();
            run_query(&m, &Query::new(&[3], &[]), 4).unwrap()
        };
        // Genres alone: popularity within Drama, (count + 1) of 12: 0, 1 (4), 2, 4 (1).
        let plain = run(0.0);
        assert_eq!(
            plain.iter().map(|a| a.0).collect::<Vec<_>>(),
            vec![0, 1, 2, 4]
        );
        // Years: the catalogue holds 1990 8 times (2 items + 6 interactions) and 1998 3 times
        // of 11; this user's history is all 1998, so P(1998 | user) = 0.5 + 0.5 * 3/11 and
        // 1998 is lifted 7/3, 1990 held at 1/2: the new 1998 release comes first. The item
        // without a year keeps its genre score.
        let years = run(1.0);
        assert_eq!(
            years.iter().map(|a| a.0).collect::<Vec<_>>(),
            vec![2, 0, 1, 4]
        );
        let close = |a: f32, b: f64| (f64::from(a) - b).abs() < 1e-6;
        assert!(close(years[0].1, 1.0 / 12.0 * 7.0 / 3.0), "{years:?}");
        assert!(close(years[1].1, 4.0 / 12.0 * 0.5), "{years:?}");
        assert!(close(years[3].1, 1.0 / 12.0), "{years:?}");
    }

    #[test]
    fn empty_history_gets_the_catalogue_wide_mix() {
        // The catalogue-wide mix times P(item | genre) is popularity (count + prior): 0 (5),
        // 3 (4), 1 (3), 2 (2).
        assert_eq!(items(&base(), &[], &[], 4), vec![0, 3, 1, 2]);
        assert_eq!(items(&base(), &[], &[0, 3], 2), vec![1, 2]);
    }

    #[test]
    fn works_on_a_view_without_interactions() {
        let table = catalogue();
        let corpus = Corpus::new(8, &[0], &[], None)
            .unwrap()
            .with_items(table.as_ref())
            .unwrap();
        // Every item has the same (prior) share of its genres; the user's genre leads.
        let m = Genre::new(&cfg(0.9, 0, 0.1, 1.0), &corpus).unwrap();
        let got = run_query(&m, &Query::new(&[3], &[]), 8).unwrap();
        assert_eq!(got.len(), 7);
        assert!(
            got.iter().all(|(_, s)| s.is_finite() && *s > 0.0),
            "{got:?}"
        );
        assert_eq!(got[0].0, 4, "{got:?}");
        // With no prior there is nothing to count: every score is 0, still an answer.
        let m = Genre::new(&cfg(0.9, 0, 0.1, 0.0), &corpus).unwrap();
        let got = run_query(&m, &Query::new(&[3], &[]), 3).unwrap();
        assert_eq!(got, vec![(0, 0.0), (1, 0.0), (2, 0.0)]);
    }

    #[test]
    fn bad_configs_and_missing_item_data_say_what_to_fix() {
        let err = |c: &str| model(c).err().unwrap();
        assert!(err(r#"{"decay": 0.5}"#).contains("unknown field `decay`"));
        assert!(err(r#"{"history_decay": 0}"#).contains("history_decay must be in (0, 1]"));
        assert!(err(r#"{"smoothing": 1.5}"#).contains("smoothing must be in [0, 1]"));
        assert!(err(r#"{"prior": -1}"#).contains("prior must be"));
        assert!(err(r#"{"year_weight": -1}"#).contains("year_weight must be"));
        assert!(err("[1,").contains("invalid config JSON"));
        let bare = Corpus::new(8, &OFFSETS, &ITEMS, None).unwrap();
        let e = Genre::new("{}", &bare).err().unwrap();
        assert!(e.contains("needs the catalogue's genres"), "{e}");
    }
}
