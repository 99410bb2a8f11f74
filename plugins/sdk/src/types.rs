//! Safe views over the ABI's raw data: the training [`Corpus`], a [`Query`] and the output
//! [`Candidates`] sink.

use std::borrow::Cow;
use std::mem::MaybeUninit;

use crate::abi::PalrScored;

/// Read-only training interactions: per-user item sequences, oldest first, as flat arrays.
///
/// User `u` interacted with `items[offsets[u]..offsets[u + 1]]`. Built by the SDK from the
/// host's view (validated), or by [`Corpus::new`] in tests.
#[derive(Debug, Clone, Copy)]
pub struct Corpus<'a> {
    n_items: u32,
    offsets: &'a [u64],
    items: &'a [u32],
    timestamps: Option<&'a [i64]>,
}

impl<'a> Corpus<'a> {
    /// Checks the flat-array invariants and wraps them.
    ///
    /// `offsets` must have one entry per user plus one, start at 0, be non-decreasing and end
    /// at `items.len()`; items must be `< n_items`; `timestamps`, if given, parallel `items`.
    pub fn new(
        n_items: u32,
        offsets: &'a [u64],
        items: &'a [u32],
        timestamps: Option<&'a [i64]>,
    ) -> Result<Self, String> {
        let Some((&first, _)) = offsets.split_first() else {
            return Err("corpus offsets are empty: need n_users + 1 entries (at least [0])".into());
        };
        if first != 0 {
            return Err(format!("corpus offsets[0] is {first}, must be 0"));
        }
        if let Some(u) = offsets.windows(2).position(|w| w[0] > w[1]) {
            return Err(format!(
                "corpus offsets decrease at user {u}: {} > {}",
                offsets[u],
                offsets[u + 1]
            ));
        }
        let last = offsets[offsets.len() - 1];
        if last != items.len() as u64 {
            return Err(format!(
                "corpus offsets end at {last} but there are {} items",
                items.len()
            ));
        }
        if u32::try_from(offsets.len() - 1).is_err() {
            return Err(format!(
                "corpus has {} users, more than u32::MAX",
                offsets.len() - 1
            ));
        }
        if let Some(pos) = items.iter().position(|&i| i >= n_items) {
            return Err(format!(
                "corpus item {} at position {pos} is out of range (n_items = {n_items})",
                items[pos]
            ));
        }
        if let Some(ts) = timestamps
            && ts.len() != items.len()
        {
            return Err(format!(
                "corpus has {} timestamps for {} items",
                ts.len(),
                items.len()
            ));
        }
        Ok(Self {
            n_items,
            offsets,
            items,
            timestamps,
        })
    }

    /// Catalogue size: valid item indices are `0..n_items`.
    pub fn n_items(&self) -> u32 {
        self.n_items
    }

    /// Number of users (sequences).
    pub fn n_users(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Total number of interactions.
    pub fn n_interactions(&self) -> usize {
        self.items.len()
    }

    fn range(&self, user: usize) -> std::ops::Range<usize> {
        // Offsets end at items.len() (checked in `new`), so they fit in usize.
        self.offsets[user] as usize..self.offsets[user + 1] as usize
    }

    /// The items of `user`, oldest first. Panics if `user >= n_users()`.
    pub fn sequence(&self, user: usize) -> &'a [u32] {
        &self.items[self.range(user)]
    }

    /// The timestamps of `user`'s items, if the host provided timestamps.
    pub fn sequence_timestamps(&self, user: usize) -> Option<&'a [i64]> {
        let r = self.range(user);
        self.timestamps.map(|t| &t[r])
    }

    /// All sequences in user order.
    pub fn sequences(&self) -> impl ExactSizeIterator<Item = &'a [u32]> + '_ {
        (0..self.n_users()).map(|u| self.sequence(u))
    }

    /// The flat item array (all users concatenated).
    pub fn items(&self) -> &'a [u32] {
        self.items
    }

    /// The flat timestamp array, if any.
    pub fn timestamps(&self) -> Option<&'a [i64]> {
        self.timestamps
    }
}

/// One retrieval request: the user's history and the items that must not be proposed.
#[derive(Debug, Clone)]
pub struct Query<'a> {
    history: &'a [u32],
    exclude: Cow<'a, [u32]>,
}

impl<'a> Query<'a> {
    /// Builds a query the way the host does: `exclude` becomes the sorted, deduplicated union of
    /// `history` and `extra_exclude`. For tests and for hosts other than palr.
    pub fn new(history: &'a [u32], extra_exclude: &[u32]) -> Self {
        let mut exclude: Vec<u32> = history.iter().chain(extra_exclude).copied().collect();
        exclude.sort_unstable();
        exclude.dedup();
        Self {
            history,
            exclude: Cow::Owned(exclude),
        }
    }

    /// Wraps the host's arrays after checking that `exclude` is sorted, duplicate-free and
    /// contains every history item (the ABI's promise), so plugins may rely on it.
    pub fn from_host(history: &'a [u32], exclude: &'a [u32]) -> Result<Self, String> {
        if let Some(p) = exclude.windows(2).position(|w| w[0] >= w[1]) {
            return Err(format!(
                "host passed an exclude set that is not strictly ascending at position {p}"
            ));
        }
        if let Some(h) = history.iter().find(|h| exclude.binary_search(h).is_err()) {
            return Err(format!("host passed history item {h} without excluding it"));
        }
        Ok(Self {
            history,
            exclude: Cow::Borrowed(exclude),
        })
    }

    /// The history, oldest first (may repeat items).
    pub fn history(&self) -> &'a [u32] {
        self.history
    }

    /// The sorted exclusion set (always contains every history item).
    pub fn exclude(&self) -> &[u32] {
        &self.exclude
    }

    /// Whether `item` must not be proposed (history or explicitly excluded).
    pub fn is_excluded(&self, item: u32) -> bool {
        self.exclude.binary_search(&item).is_ok()
    }
}

/// The host-provided output buffer: push candidates best first until it is full.
///
/// It never holds more than its capacity, so a plugin written with the SDK cannot overrun the
/// host's buffer. It does not check the candidates themselves: the host does (range,
/// duplicates, exclusions, finite and non-increasing scores).
pub struct Candidates<'a> {
    buf: &'a mut [MaybeUninit<PalrScored>],
    len: usize,
}

impl<'a> Candidates<'a> {
    /// Wraps a buffer; its length is the capacity (the `k` asked for).
    pub fn new(buf: &'a mut [MaybeUninit<PalrScored>]) -> Self {
        Self { buf, len: 0 }
    }

    /// Appends a candidate; returns `false` (and drops it) when the buffer is already full.
    pub fn push(&mut self, item: u32, score: f32) -> bool {
        match self.buf.get_mut(self.len) {
            Some(slot) => {
                slot.write(PalrScored { item, score });
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// Candidates written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many candidates were asked for (`k`).
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Slots left.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.len
    }

    /// Whether `k` candidates have been written.
    pub fn is_full(&self) -> bool {
        self.len == self.buf.len()
    }

    /// Whether `item` was already written (linear scan; for small outputs and fill-ups).
    pub fn contains(&self, item: u32) -> bool {
        self.written().iter().any(|c| c.item == item)
    }

    /// The candidates written so far.
    pub fn written(&self) -> &[PalrScored] {
        // SAFETY: the first `len` slots were initialised by `push`.
        unsafe { std::slice::from_raw_parts(self.buf.as_ptr().cast::<PalrScored>(), self.len) }
    }
}
