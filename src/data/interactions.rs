//! User-item interactions as per-user, time-ordered sequences in flat arrays.
//!
//! Layout (what retriever plugins receive over the C ABI): `offsets` has `n_users + 1` entries,
//! user `u`'s items are `items[offsets[u]..offsets[u + 1]]`, oldest first. `timestamps` and
//! `ratings` run parallel to `items`.
//!
//! Order within a user: ascending timestamp, ties broken by item id, compared as numbers when
//! every catalog id is an integer and as strings otherwise ([`super::ids::IdOrder`]); rows equal
//! on both keep their input order. User ids are strings mapped to dense indices in ascending id
//! order (same numeric-or-string rule), so user index order is user id order.

use std::collections::HashMap;

use super::catalog::Catalog;
use super::ids::IdOrder;

/// Per-user item sequences in flat form.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sequences {
    offsets: Vec<u64>,
    items: Vec<u32>,
}

impl Sequences {
    /// Builds from per-user slices.
    pub fn from_slices<'a>(seqs: impl IntoIterator<Item = &'a [u32]>) -> Self {
        let mut offsets = vec![0u64];
        let mut items = Vec::new();
        for s in seqs {
            items.extend_from_slice(s);
            offsets.push(items.len() as u64);
        }
        Sequences { offsets, items }
    }

    /// Number of users (sequences).
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// User `u`'s items, oldest first. Panics if `u >= len()`.
    pub fn get(&self, u: u32) -> &[u32] {
        let (a, b) = self.range(u);
        &self.items[a..b]
    }

    fn range(&self, u: u32) -> (usize, usize) {
        let u = u as usize;
        (self.offsets[u] as usize, self.offsets[u + 1] as usize)
    }

    /// `len() + 1` offsets into [`Sequences::items`], starting at 0.
    pub fn offsets(&self) -> &[u64] {
        if self.offsets.is_empty() {
            &[0]
        } else {
            &self.offsets
        }
    }

    /// All items, user after user.
    pub fn items(&self) -> &[u32] {
        &self.items
    }

    /// `(user index, items)` for every user.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (u32, &[u32])> {
        (0..self.len() as u32).map(move |u| (u, self.get(u)))
    }
}

/// All interactions of a data set, grouped by user and time-ordered.
#[derive(Debug, Clone)]
pub struct Interactions {
    user_ids: Vec<String>,
    user_index: HashMap<String, u32>,
    seqs: Sequences,
    timestamps: Vec<i64>,
    /// NaN where a row had no rating.
    ratings: Vec<f32>,
}

impl Interactions {
    pub fn n_users(&self) -> usize {
        self.user_ids.len()
    }

    pub fn len(&self) -> usize {
        self.seqs.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// External id of user `u`.
    pub fn user_id(&self, u: u32) -> Option<&str> {
        self.user_ids.get(u as usize).map(String::as_str)
    }

    /// Dense index of an external user id.
    pub fn user_index(&self, id: &str) -> Option<u32> {
        self.user_index.get(id).copied()
    }

    /// External user ids in index order (ascending id order).
    pub fn user_ids(&self) -> &[String] {
        &self.user_ids
    }

    /// Per-user item sequences (flat arrays).
    pub fn sequences(&self) -> &Sequences {
        &self.seqs
    }

    /// User `u`'s items, oldest first. Panics if `u >= n_users()`.
    pub fn items_of(&self, u: u32) -> &[u32] {
        self.seqs.get(u)
    }

    /// User `u`'s timestamps, parallel to [`Interactions::items_of`].
    pub fn timestamps_of(&self, u: u32) -> &[i64] {
        let (a, b) = self.seqs.range(u);
        &self.timestamps[a..b]
    }

    /// User `u`'s ratings (NaN = no rating), parallel to [`Interactions::items_of`].
    pub fn ratings_of(&self, u: u32) -> &[f32] {
        let (a, b) = self.seqs.range(u);
        &self.ratings[a..b]
    }

    /// Timestamps of all rows, parallel to `sequences().items()`.
    pub fn timestamps(&self) -> &[i64] {
        &self.timestamps
    }

    /// Ratings of all rows (NaN = none), parallel to `sequences().items()`.
    pub fn ratings(&self) -> &[f32] {
        &self.ratings
    }

    /// Whether any row has a rating.
    pub fn has_ratings(&self) -> bool {
        self.ratings.iter().any(|r| !r.is_nan())
    }
}

/// Collects rows in any order; [`InteractionsBuilder::build`] groups and sorts them.
#[derive(Debug, Default)]
pub struct InteractionsBuilder {
    user_ids: Vec<String>,
    user_index: HashMap<String, u32>,
    rows: Vec<Row>,
}

#[derive(Debug, Clone, Copy)]
struct Row {
    user: u32,
    item: u32,
    timestamp: i64,
    rating: f32,
}

impl InteractionsBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Adds one interaction. `item` is a catalog index; a NaN rating counts as none.
    pub fn push(&mut self, user_id: &str, item: u32, timestamp: i64, rating: Option<f32>) {
        let user = match self.user_index.get(user_id) {
            Some(&u) => u,
            None => {
                let u = self.user_ids.len() as u32;
                self.user_ids.push(user_id.to_string());
                self.user_index.insert(user_id.to_string(), u);
                u
            }
        };
        self.rows.push(Row {
            user,
            item,
            timestamp,
            rating: rating.unwrap_or(f32::NAN),
        });
    }

    /// Groups rows by user (users in ascending id order) and sorts each user's rows by
    /// (timestamp, item id under `catalog.id_order()`), keeping input order among equal rows.
    /// Panics if a pushed item index is not in `catalog`.
    pub fn build(self, catalog: &Catalog) -> Interactions {
        let InteractionsBuilder {
            user_ids,
            user_index: _,
            mut rows,
        } = self;

        // Renumber users in ascending id order.
        let order = IdOrder::detect(user_ids.iter().map(String::as_str));
        let mut by_id: Vec<u32> = (0..user_ids.len() as u32).collect();
        by_id.sort_by(|&a, &b| order.compare(&user_ids[a as usize], &user_ids[b as usize]));
        let mut new_of_old = vec![0u32; user_ids.len()];
        for (new, &old) in by_id.iter().enumerate() {
            new_of_old[old as usize] = new as u32;
        }
        let mut sorted_ids = vec![String::new(); user_ids.len()];
        for (old, id) in user_ids.into_iter().enumerate() {
            sorted_ids[new_of_old[old] as usize] = id;
        }
        for r in &mut rows {
            r.user = new_of_old[r.user as usize];
        }

        // Stable sort: equal keys keep input order.
        rows.sort_by_key(|r| (r.user, r.timestamp, catalog.id_rank(r.item)));

        let n_users = sorted_ids.len();
        let mut offsets = vec![0u64; n_users + 1];
        for r in &rows {
            offsets[r.user as usize + 1] += 1;
        }
        for u in 0..n_users {
            offsets[u + 1] += offsets[u];
        }
        let user_index = sorted_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i as u32))
            .collect();
        Interactions {
            user_ids: sorted_ids,
            user_index,
            seqs: Sequences {
                offsets,
                items: rows.iter().map(|r| r.item).collect(),
            },
            timestamps: rows.iter().map(|r| r.timestamp).collect(),
            ratings: rows.iter().map(|r| r.rating).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::catalog::Item;

    fn catalog(ids: &[&str]) -> Catalog {
        Catalog::from_items(
            ids.iter()
                .map(|id| Item::new(*id, &format!("T{id}")))
                .collect(),
        )
        .unwrap()
    }

    fn ids_of(cat: &Catalog, inter: &Interactions, u: u32) -> Vec<String> {
        inter
            .items_of(u)
            .iter()
            .map(|&i| cat.id(i).unwrap().to_string())
            .collect()
    }

    #[test]
    fn sorts_by_time_then_numeric_item_id() {
        let cat = catalog(&["10", "9", "2"]);
        let mut b = InteractionsBuilder::new();
        // all at the same time: numeric order 2, 9, 10 (string order would be 10, 2, 9)
        b.push("u", cat.index_of("10").unwrap(), 5, Some(4.0));
        b.push("u", cat.index_of("9").unwrap(), 5, None);
        b.push("u", cat.index_of("2").unwrap(), 5, Some(1.0));
        let inter = b.build(&cat);
        assert_eq!(ids_of(&cat, &inter, 0), ["2", "9", "10"]);
        let r = inter.ratings_of(0);
        assert_eq!(r[0], 1.0);
        assert!(r[1].is_nan());
        assert_eq!(r[2], 4.0);
        assert!(inter.has_ratings());
    }

    #[test]
    fn string_item_ids_tie_break_as_strings() {
        let cat = catalog(&["10", "9", "x"]);
        let mut b = InteractionsBuilder::new();
        b.push("u", cat.index_of("9").unwrap(), 5, None);
        b.push("u", cat.index_of("x").unwrap(), 5, None);
        b.push("u", cat.index_of("10").unwrap(), 5, None);
        let inter = b.build(&cat);
        assert_eq!(ids_of(&cat, &inter, 0), ["10", "9", "x"]);
        assert!(!inter.has_ratings());
    }

    #[test]
    fn timestamp_dominates_and_equal_rows_keep_input_order() {
        let cat = catalog(&["1", "2"]);
        let mut b = InteractionsBuilder::new();
        b.push("u", 1, 7, Some(1.0));
        b.push("u", 0, 9, None);
        b.push("u", 1, 7, Some(2.0)); // same (time, item) as the first row
        let inter = b.build(&cat);
        assert_eq!(inter.items_of(0), [1, 1, 0]);
        assert_eq!(inter.timestamps_of(0), [7, 7, 9]);
        assert_eq!(&inter.ratings_of(0)[..2], [1.0, 2.0]);
    }

    #[test]
    fn users_are_indexed_in_numeric_id_order_and_flat_arrays_line_up() {
        let cat = catalog(&["1", "2", "3"]);
        let mut b = InteractionsBuilder::new();
        b.push("10", 0, 1, None);
        b.push("9", 1, 1, None);
        b.push("10", 2, 0, None);
        b.push("100", 0, 3, None);
        let inter = b.build(&cat);
        assert_eq!(inter.user_ids(), ["9", "10", "100"]);
        assert_eq!(inter.user_index("10"), Some(1));
        assert_eq!(inter.user_id(2), Some("100"));
        assert_eq!(inter.n_users(), 3);
        assert_eq!(inter.len(), 4);
        let s = inter.sequences();
        assert_eq!(s.offsets(), [0, 1, 3, 4]);
        assert_eq!(s.items(), [1, 2, 0, 0]);
        assert_eq!(inter.timestamps(), [1, 0, 1, 3]);
        let all: Vec<_> = s.iter().map(|(u, it)| (u, it.to_vec())).collect();
        assert_eq!(all, vec![(0, vec![1]), (1, vec![2, 0]), (2, vec![0])]);
    }

    #[test]
    fn sequences_from_slices_and_empty() {
        let s = Sequences::from_slices([&[1u32, 2][..], &[][..], &[3][..]]);
        assert_eq!(s.len(), 3);
        assert_eq!(s.get(1), &[] as &[u32]);
        assert_eq!(s.offsets(), [0, 2, 2, 3]);
        let e = Sequences::default();
        assert!(e.is_empty());
        assert_eq!(e.offsets(), [0]);
    }
}
