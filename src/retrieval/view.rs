//! The host-owned training view handed to every plugin instance.

use palr_retriever_sdk::abi::PalrTrainingView;

use super::{Result, RetrievalError};

/// Per-user interaction sequences (oldest first) as flat arrays, as the data layer produces
/// them: user `u` interacted with `items[offsets[u]..offsets[u + 1]]`.
///
/// Immutable once built; plugin instances keep pointers into it, so retrievers hold it in an
/// `Arc` for as long as their instance lives.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingView {
    n_items: u32,
    offsets: Vec<u64>,
    items: Vec<u32>,
    timestamps: Option<Vec<i64>>,
}

impl TrainingView {
    /// Validates and wraps the arrays: `offsets` has `n_users + 1` entries starting at 0,
    /// non-decreasing, ending at `items.len()`; items `< n_items`; `timestamps`, if any,
    /// parallel to `items`.
    pub fn new(
        n_items: u32,
        offsets: Vec<u64>,
        items: Vec<u32>,
        timestamps: Option<Vec<i64>>,
    ) -> Result<Self> {
        palr_retriever_sdk::Corpus::new(n_items, &offsets, &items, timestamps.as_deref())
            .map_err(RetrievalError::InvalidView)?;
        Ok(Self {
            n_items,
            offsets,
            items,
            timestamps,
        })
    }

    /// Builds a view from one sequence per user (no timestamps).
    pub fn from_sequences<S: AsRef<[u32]>>(n_items: u32, sequences: &[S]) -> Result<Self> {
        let mut offsets = Vec::with_capacity(sequences.len() + 1);
        offsets.push(0u64);
        let mut items = Vec::new();
        for s in sequences {
            items.extend_from_slice(s.as_ref());
            offsets.push(items.len() as u64);
        }
        Self::new(n_items, offsets, items, None)
    }

    /// Catalogue size: item indices are `0..n_items`.
    pub fn n_items(&self) -> u32 {
        self.n_items
    }

    /// Number of users.
    pub fn n_users(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Total interactions.
    pub fn n_interactions(&self) -> usize {
        self.items.len()
    }

    /// User boundaries (`n_users + 1` entries).
    pub fn offsets(&self) -> &[u64] {
        &self.offsets
    }

    /// All users' items, concatenated.
    pub fn items(&self) -> &[u32] {
        &self.items
    }

    /// Timestamps parallel to `items`, if known.
    pub fn timestamps(&self) -> Option<&[i64]> {
        self.timestamps.as_deref()
    }

    /// The C view of this data. The pointers stay valid as long as `self` is neither dropped
    /// nor moved out of its `Arc` (the vectors are never mutated).
    pub(crate) fn raw(&self) -> PalrTrainingView {
        PalrTrainingView {
            n_items: self.n_items,
            // `new` checked that the user count is below u32::MAX.
            n_users: self.n_users() as u32,
            n_interactions: self.items.len() as u64,
            offsets: self.offsets.as_ptr(),
            items: self.items.as_ptr(),
            timestamps: self
                .timestamps
                .as_ref()
                .map_or(std::ptr::null(), |t| t.as_ptr()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_broken_arrays_with_the_reason() {
        let bad = |o: Vec<u64>, i: Vec<u32>, t: Option<Vec<i64>>| {
            TrainingView::new(3, o, i, t).unwrap_err().to_string()
        };
        assert!(bad(vec![], vec![], None).contains("empty"));
        assert!(bad(vec![1, 1], vec![0], None).contains("offsets[0]"));
        assert!(bad(vec![0, 2, 1], vec![0, 1], None).contains("decrease"));
        assert!(bad(vec![0, 1], vec![0, 1], None).contains("end at 1"));
        assert!(bad(vec![0, 1], vec![3], None).contains("out of range"));
        assert!(bad(vec![0, 1], vec![0], Some(vec![])).contains("timestamps"));
    }

    #[test]
    fn from_sequences_lays_out_flat_arrays() {
        let v = TrainingView::from_sequences(4, &[vec![1, 2], vec![], vec![3]]).unwrap();
        assert_eq!(v.offsets(), &[0, 2, 2, 3]);
        assert_eq!(v.items(), &[1, 2, 3]);
        assert_eq!((v.n_users(), v.n_interactions()), (3, 3));
        let raw = v.raw();
        assert_eq!((raw.n_users, raw.n_interactions, raw.n_items), (3, 3, 4));
        assert!(raw.timestamps.is_null());
    }
}
