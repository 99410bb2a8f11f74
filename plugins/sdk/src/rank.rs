//! Ranking helpers shared by retrievers: top-k selection with the ABI's ordering rules and a
//! precomputed global item ranking (used for popularity and for back-off fill-up).
//!
//! Ordering everywhere: score descending, then item index ascending. Scores must not be NaN.

use std::cmp::Ordering;

use crate::types::{Candidates, Query};

/// The ABI's candidate order: higher score first, then lower item index.
pub fn rank_order(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The best `k` of `scored` that `query` does not exclude, in rank order.
///
/// `O(n + k log k)`; `scored` must not contain the same item twice.
pub fn top_k(
    scored: impl IntoIterator<Item = (u32, f32)>,
    k: usize,
    query: &Query<'_>,
) -> Vec<(u32, f32)> {
    let mut v: Vec<(u32, f32)> = scored
        .into_iter()
        .filter(|&(i, _)| !query.is_excluded(i))
        .collect();
    if k == 0 {
        return Vec::new();
    }
    if v.len() > k {
        v.select_nth_unstable_by(k - 1, rank_order);
        v.truncate(k);
    }
    v.sort_unstable_by(rank_order);
    v
}

/// A fixed global ranking of items (e.g. by popularity), computed once at init.
#[derive(Debug, Clone)]
pub struct ItemRanking {
    /// Items in rank order.
    order: Vec<u32>,
    /// Score of `order[r]`.
    scores: Vec<f32>,
}

impl ItemRanking {
    /// Ranks all items `0..weights.len()` by weight (descending, ties by index). Every item is
    /// ranked, including zero-weight ones, so the ranking can always fill `k` slots.
    pub fn from_weights(weights: &[f64]) -> Self {
        let mut order: Vec<u32> = (0..weights.len() as u32).collect();
        order.sort_by(|&a, &b| {
            weights[b as usize]
                .total_cmp(&weights[a as usize])
                .then(a.cmp(&b))
        });
        let scores = order.iter().map(|&i| weights[i as usize] as f32).collect();
        Self { order, scores }
    }

    /// Items in rank order.
    pub fn order(&self) -> &[u32] {
        &self.order
    }

    /// Pushes ranked items into `out` until it is full, skipping excluded items and items
    /// already written. Each pushed item gets `score(rank_score)`; `score` must be
    /// non-increasing so the output stays sorted.
    pub fn fill(&self, query: &Query<'_>, out: &mut Candidates<'_>, score: impl Fn(f32) -> f32) {
        if out.is_full() {
            return;
        }
        let mut written: Vec<u32> = out.written().iter().map(|c| c.item).collect();
        written.sort_unstable();
        for (&item, &s) in self.order.iter().zip(&self.scores) {
            if out.is_full() {
                break;
            }
            if query.is_excluded(item) || written.binary_search(&item).is_ok() {
                continue;
            }
            out.push(item, score(s));
        }
    }

    /// Largest score in the ranking (0 for an empty ranking).
    pub fn max_score(&self) -> f32 {
        self.scores.first().copied().unwrap_or(0.0)
    }
}

/// Number of interactions per item (repeats count).
pub fn interaction_counts(corpus: &crate::Corpus<'_>) -> Vec<f64> {
    let mut counts = vec![0f64; corpus.n_items() as usize];
    for &i in corpus.items() {
        counts[i as usize] += 1.0;
    }
    counts
}

/// Back-off score for a fill-up item: maps a popularity weight into `[-1, 0)`, order-preserving,
/// so fill-up items always rank below model candidates with positive scores.
pub fn backoff_score(weight: f32, max_weight: f32) -> f32 {
    -1.0 + weight / (max_weight + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_by_score_then_index_and_skips_excluded() {
        let q = Query::new(&[3], &[5]);
        let scored = vec![
            (0, 1.0),
            (1, 2.0),
            (2, 2.0),
            (3, 9.0),
            (4, 0.5),
            (5, 8.0),
            (6, 2.0),
        ];
        assert_eq!(
            top_k(scored.clone(), 3, &q),
            vec![(1, 2.0), (2, 2.0), (6, 2.0)]
        );
        assert_eq!(top_k(scored.clone(), 10, &q).len(), 5);
        assert!(top_k(scored, 0, &q).is_empty());
    }

    #[test]
    fn ranking_fill_skips_written_and_excluded() {
        let r = ItemRanking::from_weights(&[1.0, 5.0, 5.0, 0.0, 3.0]);
        assert_eq!(r.order(), &[1, 2, 4, 0, 3]);
        let q = Query::new(&[2], &[]);
        let mut buf = [std::mem::MaybeUninit::uninit(); 3];
        let mut out = Candidates::new(&mut buf);
        out.push(4, 10.0);
        r.fill(&q, &mut out, |s| backoff_score(s, r.max_score()));
        let items: Vec<u32> = out.written().iter().map(|c| c.item).collect();
        assert_eq!(items, vec![4, 1, 0]);
        let s: Vec<f32> = out.written().iter().map(|c| c.score).collect();
        assert!(s[1] < 0.0 && s[1] > s[2] && s[2] >= -1.0);
    }
}
