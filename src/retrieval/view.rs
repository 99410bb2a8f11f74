//! The host-owned training view handed to every plugin instance: interactions, the catalogue's
//! item data, user ids, and which view of the data it is (stage and fingerprint).

use std::sync::{Arc, OnceLock};

use palr_retriever_sdk::abi::{PalrItems, PalrStr, PalrTrainingView};
use palr_retriever_sdk::{ItemFields, ItemTable, StrTable};
use sha2::{Digest, Sha256};

use super::{Result, RetrievalError};
use crate::data::Catalog;

/// Per-user interaction sequences (oldest first) as flat arrays, as the data layer produces
/// them: user `u` interacted with `items[offsets[u]..offsets[u + 1]]`; plus the catalogue's
/// item data, the users' ids, and the view's stage (`"all"`, `"valid"`, `"test"`, ...).
///
/// Immutable once built; plugin instances keep pointers into it, so retrievers hold it in an
/// `Arc` for as long as their instance lives.
pub struct TrainingView {
    n_items: u32,
    offsets: Vec<u64>,
    items: Vec<u32>,
    timestamps: Option<Vec<i64>>,
    user_ids: Option<StrTable>,
    item_data: Option<Arc<ItemTable>>,
    stage: String,
    fingerprint: OnceLock<String>,
}

impl std::fmt::Debug for TrainingView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainingView")
            .field("stage", &self.stage)
            .field("n_items", &self.n_items)
            .field("n_users", &self.n_users())
            .field("n_interactions", &self.n_interactions())
            .finish_non_exhaustive()
    }
}

impl PartialEq for TrainingView {
    /// Equal interactions, timestamps and stage, and the same fingerprint (item ids).
    fn eq(&self, other: &Self) -> bool {
        self.n_items == other.n_items
            && self.offsets == other.offsets
            && self.items == other.items
            && self.timestamps == other.timestamps
            && self.stage == other.stage
            && self.fingerprint() == other.fingerprint()
    }
}

/// The catalogue as plugins receive it: ids, titles, years, genres and every other attribute.
pub fn item_table(catalog: &Catalog) -> Arc<ItemTable> {
    let items = catalog
        .items()
        .iter()
        .map(|it| ItemFields {
            id: it.id.clone(),
            title: it.title.clone(),
            year: it.year,
            genres: it.genres.clone(),
            attrs: it
                .attrs
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
        .collect();
    // A catalog's ids are unique and non-empty by construction.
    Arc::new(ItemTable::new(items).expect("catalog ids are unique and non-empty"))
}

impl TrainingView {
    /// Validates and wraps the arrays: `offsets` has `n_users + 1` entries starting at 0,
    /// non-decreasing, ending at `items.len()`; items `< n_items`; `timestamps`, if any,
    /// parallel to `items`. No item data, no user ids, no stage: add them with the `with_*`
    /// methods.
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
            user_ids: None,
            item_data: None,
            stage: String::new(),
            fingerprint: OnceLock::new(),
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

    /// Adds the catalogue's item data (one entry per item; see [`item_table`]).
    pub fn with_items(mut self, table: Arc<ItemTable>) -> Result<Self> {
        if table.len() != self.n_items as usize {
            return Err(RetrievalError::InvalidView(format!(
                "item data holds {} items but the view has {}",
                table.len(),
                self.n_items
            )));
        }
        self.item_data = Some(table);
        self.fingerprint = OnceLock::new();
        Ok(self)
    }

    /// Adds the users' external ids (one per user).
    pub fn with_user_ids(mut self, ids: Vec<String>) -> Result<Self> {
        if ids.len() != self.n_users() {
            return Err(RetrievalError::InvalidView(format!(
                "{} user ids for {} users",
                ids.len(),
                self.n_users()
            )));
        }
        self.user_ids = Some(StrTable::new(ids));
        Ok(self)
    }

    /// Names the view's stage (`"all"`, `"valid"`, `"test"`, ...).
    pub fn with_stage(mut self, stage: impl Into<String>) -> Self {
        self.stage = stage.into();
        self
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

    /// User `u`'s items, oldest first. Panics if `u >= n_users()`.
    pub fn sequence(&self, u: usize) -> &[u32] {
        &self.items[self.offsets[u] as usize..self.offsets[u + 1] as usize]
    }

    /// Timestamps parallel to `items`, if known.
    pub fn timestamps(&self) -> Option<&[i64]> {
        self.timestamps.as_deref()
    }

    /// The item data, if added.
    pub fn item_data(&self) -> Option<&Arc<ItemTable>> {
        self.item_data.as_ref()
    }

    /// The users' external ids, if added.
    pub fn user_ids(&self) -> Option<&[String]> {
        self.user_ids.as_ref().map(StrTable::strings)
    }

    /// The view's stage; empty when not named.
    pub fn stage(&self) -> &str {
        &self.stage
    }

    /// The view's content fingerprint, 64 lowercase hex digits: SHA-256 over the item ids and
    /// the sequences, as `palr_retriever_sdk::abi` defines it. Without item data, item `i`'s
    /// id counts as its decimal index.
    pub fn fingerprint(&self) -> &str {
        self.fingerprint.get_or_init(|| {
            let mut h = Sha256::new();
            h.update(b"palr-view-1\0");
            h.update(self.n_items.to_le_bytes());
            let mut put_id = |id: &str| {
                h.update((id.len() as u32).to_le_bytes());
                h.update(id.as_bytes());
            };
            match &self.item_data {
                Some(t) => t.ids().iter().for_each(|id| put_id(id)),
                None => (0..self.n_items).for_each(|i| put_id(&i.to_string())),
            }
            h.update((self.n_users() as u32).to_le_bytes());
            for u in 0..self.n_users() {
                let seq = self.sequence(u);
                h.update((seq.len() as u32).to_le_bytes());
                for &i in seq {
                    h.update(i.to_le_bytes());
                }
            }
            h.finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        })
    }

    /// The C view of this data. The pointers stay valid as long as `self` is neither dropped
    /// nor moved out of its `Arc` (nothing in it is ever mutated).
    pub(crate) fn raw(&self) -> PalrTrainingView {
        let no_items = PalrItems {
            ids: std::ptr::null(),
            titles: std::ptr::null(),
            years: std::ptr::null(),
            genre_offsets: std::ptr::null(),
            genres: std::ptr::null(),
            n_attrs: 0,
            attr_names: std::ptr::null(),
            attr_values: std::ptr::null(),
        };
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
            user_ids: self
                .user_ids
                .as_ref()
                .map_or(std::ptr::null(), |u| u.raw().as_ptr()),
            item_data: self.item_data.as_ref().map_or(no_items, |t| t.raw()),
            stage: PalrStr::borrow(&self.stage),
            fingerprint: PalrStr::borrow(self.fingerprint()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Item;

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
        let v = TrainingView::from_sequences(3, &[vec![0]]).unwrap();
        let e = v.with_user_ids(vec![]).unwrap_err().to_string();
        assert!(e.contains("0 user ids for 1 users"), "{e}");
    }

    #[test]
    fn from_sequences_lays_out_flat_arrays() {
        let v = TrainingView::from_sequences(4, &[vec![1, 2], vec![], vec![3]]).unwrap();
        assert_eq!(v.offsets(), &[0, 2, 2, 3]);
        assert_eq!(v.items(), &[1, 2, 3]);
        assert_eq!(v.sequence(2), &[3]);
        assert_eq!((v.n_users(), v.n_interactions()), (3, 3));
        let raw = v.raw();
        assert_eq!((raw.n_users, raw.n_interactions, raw.n_items), (3, 3, 4));
        assert!(raw.timestamps.is_null() && raw.user_ids.is_null() && raw.item_data.ids.is_null());
    }

    #[test]
    fn fingerprint_follows_sequences_and_ids_only() {
        let catalog = |ids: [&str; 3]| {
            item_table(
                &Catalog::from_items(ids.iter().map(|id| Item::new(*id, "t")).collect()).unwrap(),
            )
        };
        let view = |seqs: &[Vec<u32>], ids| {
            TrainingView::from_sequences(3, seqs)
                .unwrap()
                .with_items(catalog(ids))
                .unwrap()
        };
        let a = view(&[vec![0, 1], vec![2]], ["a", "b", "c"]);
        assert_eq!(a.fingerprint().len(), 64);
        assert!(a.fingerprint().bytes().all(|b| b.is_ascii_hexdigit()));
        // Stage, timestamps and user ids do not change it ...
        let b = view(&[vec![0, 1], vec![2]], ["a", "b", "c"])
            .with_stage("all")
            .with_user_ids(vec!["u".into(), "v".into()])
            .unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        // ... a moved boundary, another item or another id does.
        for other in [
            view(&[vec![0], vec![1, 2]], ["a", "b", "c"]),
            view(&[vec![0, 1], vec![1]], ["a", "b", "c"]),
            view(&[vec![0, 1], vec![2]], ["a", "b", "d"]),
        ] {
            assert_ne!(a.fingerprint(), other.fingerprint());
        }
        // Pinned: the definition in the ABI docs, computed independently (Python hashlib).
        assert_eq!(
            a.fingerprint(),
            "4f5bdbb59affccfb9655856aab2ac6feefed203b8b18b5ce4f3dbf8365588263"
        );
    }
}
