//! Leave-one-out split: the single source of truth for evaluation and fine-tuning data.
//!
//! Protocol (as in PALR, Yang et al. 2023, and the usual sequential-recommendation setup of
//! SASRec/BERT4Rec): every rating is an implicit interaction; each user's interactions are ordered
//! as [`Interactions`] orders them (timestamp, then item id, numerically when all ids are
//! integers); the last item is the test target, the second-to-last the validation target, and
//! the rest is training history.
//!
//! - valid example: history = train, target = second-to-last item;
//! - test example: history = train + the validation item, target = last item.
//!
//! Users with fewer than [`MIN_INTERACTIONS`] (3) interactions have no validation or test target:
//! all their interactions are training history (they still feed retrievers, but are never
//! evaluated). Everything is a slice of the user's one ordered sequence, so "train is a strict
//! prefix of the test history, which is a strict prefix of the full sequence" holds by
//! construction.

use super::interactions::{Interactions, Sequences};

/// Fewest interactions a user needs to get validation and test targets.
pub const MIN_INTERACTIONS: usize = 3;

/// One evaluation example: predict `target` from `history` (oldest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Example<'a> {
    pub user: u32,
    pub history: &'a [u32],
    pub target: u32,
}

/// One user's part of the split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserSplit<'a> {
    pub user: u32,
    pub train: &'a [u32],
    pub valid: Option<Example<'a>>,
    pub test: Option<Example<'a>>,
}

/// Which evaluation stage a history is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Valid,
    Test,
}

/// The leave-one-out split of a data set (item and user indices as in its catalog and
/// [`Interactions`]).
#[derive(Debug, Clone)]
pub struct Split {
    /// Each user's full ordered sequence.
    full: Sequences,
}

impl Split {
    /// Splits `inter` by the protocol in the module docs.
    pub fn leave_one_out(inter: &Interactions) -> Split {
        Split {
            full: inter.sequences().clone(),
        }
    }

    pub fn n_users(&self) -> usize {
        self.full.len()
    }

    /// User `u`'s training history. Panics if `u >= n_users()`.
    pub fn train(&self, u: u32) -> &[u32] {
        let s = self.full.get(u);
        if s.len() >= MIN_INTERACTIONS {
            &s[..s.len() - 2]
        } else {
            s
        }
    }

    /// User `u`'s validation example, if the user has enough interactions.
    pub fn valid(&self, u: u32) -> Option<Example<'_>> {
        let s = self.full.get(u);
        (s.len() >= MIN_INTERACTIONS).then(|| Example {
            user: u,
            history: &s[..s.len() - 2],
            target: s[s.len() - 2],
        })
    }

    /// User `u`'s test example, if the user has enough interactions.
    pub fn test(&self, u: u32) -> Option<Example<'_>> {
        let s = self.full.get(u);
        (s.len() >= MIN_INTERACTIONS).then(|| Example {
            user: u,
            history: &s[..s.len() - 1],
            target: s[s.len() - 1],
        })
    }

    /// All of user `u`'s split.
    pub fn user(&self, u: u32) -> UserSplit<'_> {
        UserSplit {
            user: u,
            train: self.train(u),
            valid: self.valid(u),
            test: self.test(u),
        }
    }

    /// Every user's split, in user index order.
    pub fn users(&self) -> impl ExactSizeIterator<Item = UserSplit<'_>> {
        (0..self.n_users() as u32).map(move |u| self.user(u))
    }

    /// Validation (or test) examples of every user that has targets, in user order.
    pub fn examples(&self, stage: Stage) -> impl Iterator<Item = Example<'_>> {
        (0..self.n_users() as u32).filter_map(move |u| match stage {
            Stage::Valid => self.valid(u),
            Stage::Test => self.test(u),
        })
    }

    /// What a model may learn from before being evaluated at `stage`, for every user, as flat
    /// arrays (what retriever plugins are trained on): `Valid` -> training histories; `Test` ->
    /// training histories plus the validation item. Users without targets contribute all their
    /// interactions in both cases. No target of `stage` is ever included.
    pub fn histories(&self, stage: Stage) -> Sequences {
        Sequences::from_slices((0..self.n_users() as u32).map(|u| match stage {
            Stage::Valid => self.train(u),
            Stage::Test => match self.test(u) {
                Some(ex) => ex.history,
                None => self.full.get(u),
            },
        }))
    }

    /// Users with validation/test targets.
    pub fn n_evaluated_users(&self) -> usize {
        self.full
            .iter()
            .filter(|(_, s)| s.len() >= MIN_INTERACTIONS)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::catalog::{Catalog, Item};
    use crate::data::interactions::InteractionsBuilder;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn build(rows: &[(&str, &str, i64)], items: &[&str]) -> (Catalog, Interactions) {
        let cat = Catalog::from_items(items.iter().map(|i| Item::new(*i, "t")).collect()).unwrap();
        let mut b = InteractionsBuilder::new();
        for (u, i, t) in rows {
            b.push(u, cat.index_of(i).unwrap(), *t, None);
        }
        let inter = b.build(&cat);
        (cat, inter)
    }

    #[test]
    fn last_is_test_second_to_last_is_valid() {
        let (cat, inter) = build(
            &[("1", "5", 3), ("1", "6", 1), ("1", "7", 2), ("1", "8", 4)],
            &["5", "6", "7", "8"],
        );
        let s = Split::leave_one_out(&inter);
        let ix = |id: &str| cat.index_of(id).unwrap();
        assert_eq!(s.train(0), [ix("6"), ix("7")]);
        let v = s.valid(0).unwrap();
        assert_eq!((v.history, v.target), (&[ix("6"), ix("7")][..], ix("5")));
        let t = s.test(0).unwrap();
        assert_eq!(
            (t.history, t.target),
            (&[ix("6"), ix("7"), ix("5")][..], ix("8"))
        );
    }

    #[test]
    fn tie_on_time_is_decided_by_numeric_item_id() {
        // "9" and "10" at the same last timestamp: numerically 9 < 10, so 10 is the test target
        // (string order would make it "9").
        let (cat, inter) = build(
            &[("u", "10", 5), ("u", "9", 5), ("u", "1", 1)],
            &["10", "1", "9"], // file order differs from id order
        );
        let s = Split::leave_one_out(&inter);
        assert_eq!(cat.id(s.test(0).unwrap().target), Some("10"));
        assert_eq!(cat.id(s.valid(0).unwrap().target), Some("9"));
    }

    #[test]
    fn short_users_keep_everything_as_training() {
        let (_, inter) = build(
            &[
                ("a", "1", 1),
                ("a", "2", 2),
                ("b", "1", 1),
                ("c", "1", 1),
                ("c", "2", 2),
                ("c", "3", 3),
            ],
            &["1", "2", "3"],
        );
        let s = Split::leave_one_out(&inter);
        assert_eq!(s.n_users(), 3);
        assert_eq!(s.train(0), [0, 1]);
        assert!(s.valid(0).is_none() && s.test(0).is_none());
        assert_eq!(s.train(1), [0]);
        assert!(s.test(1).is_none());
        assert_eq!(s.train(2), [0]);
        assert_eq!(s.n_evaluated_users(), 1);
        assert_eq!(s.examples(Stage::Test).count(), 1);
        let h = s.histories(Stage::Test);
        assert_eq!(h.get(0), [0, 1]);
        assert_eq!(h.get(2), [0, 1]);
        let h = s.histories(Stage::Valid);
        assert_eq!(h.get(2), [0]);
    }

    /// Random data: for every user, train ++ [valid] ++ [test] is exactly the ordered sequence,
    /// train is a strict prefix of the test history, and no stage's histories contain its target
    /// position.
    #[test]
    fn train_is_a_strict_prefix_on_random_data() {
        let mut rng = StdRng::seed_from_u64(7);
        let items: Vec<String> = (0..50).map(|i| i.to_string()).collect();
        let item_refs: Vec<&str> = items.iter().map(String::as_str).collect();
        let cat =
            Catalog::from_items(item_refs.iter().map(|i| Item::new(*i, "t")).collect()).unwrap();
        for _round in 0..20 {
            let mut b = InteractionsBuilder::new();
            for _ in 0..rng.random_range(1..400) {
                let u = rng.random_range(0..30).to_string();
                let i = rng.random_range(0..50u32);
                // few distinct timestamps, so ties are common
                b.push(&u, i, rng.random_range(0..6), None);
            }
            let inter = b.build(&cat);
            let s = Split::leave_one_out(&inter);
            let hv = s.histories(Stage::Valid);
            let ht = s.histories(Stage::Test);
            for us in s.users() {
                let full = inter.items_of(us.user);
                // ordered by (time, numeric id)
                let ts = inter.timestamps_of(us.user);
                for k in 1..full.len() {
                    let a = (
                        ts[k - 1],
                        cat.id(full[k - 1]).unwrap().parse::<u32>().unwrap(),
                    );
                    let b = (ts[k], cat.id(full[k]).unwrap().parse::<u32>().unwrap());
                    assert!(a <= b, "user {} not sorted at {k}", us.user);
                }
                match (us.valid, us.test) {
                    (Some(v), Some(t)) => {
                        let mut joined = us.train.to_vec();
                        joined.push(v.target);
                        joined.push(t.target);
                        assert_eq!(joined, full);
                        assert_eq!(v.history, us.train);
                        assert_eq!(t.history.len(), us.train.len() + 1);
                        assert_eq!(&t.history[..us.train.len()], us.train);
                        assert_eq!(t.history[us.train.len()], v.target);
                        assert_eq!(hv.get(us.user), us.train);
                        assert_eq!(ht.get(us.user), t.history);
                        assert!(us.train.len() + 2 == full.len());
                    }
                    (None, None) => {
                        assert!(full.len() < MIN_INTERACTIONS);
                        assert_eq!(us.train, full);
                    }
                    _ => panic!("valid and test must come together"),
                }
            }
        }
    }
}
