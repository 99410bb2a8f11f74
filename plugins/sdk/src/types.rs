//! Safe views over the ABI's raw data: the training [`Corpus`], a [`Query`] and the output
//! [`Candidates`] sink.

use std::borrow::Cow;
use std::mem::MaybeUninit;

use crate::abi::{PalrScored, PalrStr};
use crate::items::{ItemRef, ItemsRef, StrTable, checked_text};

/// Read-only training interactions (per-user item sequences, oldest first, as flat arrays),
/// the catalogue's item data and which view of the data this is.
///
/// User `u` interacted with `items[offsets[u]..offsets[u + 1]]`. Built by the SDK from the
/// host's view (validated), or by [`Corpus::new`] and the `with_*` methods in tests.
#[derive(Debug, Clone, Copy)]
pub struct Corpus<'a> {
    n_items: u32,
    offsets: &'a [u64],
    items: &'a [u32],
    timestamps: Option<&'a [i64]>,
    user_ids: Option<&'a [PalrStr]>,
    item_data: Option<ItemsRef<'a>>,
    stage: &'a str,
    fingerprint: &'a str,
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
            user_ids: None,
            item_data: None,
            stage: "",
            fingerprint: "",
        })
    }

    /// Adds the catalogue's item data (one entry per item).
    pub fn with_items(mut self, items: ItemsRef<'a>) -> Result<Self, String> {
        if items.len() != self.n_items as usize {
            return Err(format!(
                "item data holds {} items but the corpus has {}",
                items.len(),
                self.n_items
            ));
        }
        self.item_data = Some(items);
        Ok(self)
    }

    /// Adds the users' external ids (one per user).
    pub fn with_user_ids(self, ids: &'a StrTable) -> Result<Self, String> {
        self.with_user_id_column(ids.raw())
    }

    /// As [`Corpus::with_user_ids`], from a checked ABI column.
    pub(crate) fn with_user_id_column(mut self, ids: &'a [PalrStr]) -> Result<Self, String> {
        if ids.len() != self.n_users() {
            return Err(format!(
                "{} user ids for {} users",
                ids.len(),
                self.n_users()
            ));
        }
        self.user_ids = Some(ids);
        Ok(self)
    }

    /// Says which view of the data this is: its stage (`"all"`, `"valid"`, `"test"`, ...) and
    /// fingerprint (see `abi`'s module docs).
    pub fn with_view(mut self, stage: &'a str, fingerprint: &'a str) -> Self {
        self.stage = stage;
        self.fingerprint = fingerprint;
        self
    }

    /// Which interactions this view holds: [`crate::abi::STAGE_ALL`] when serving on every
    /// interaction, `"valid"` / `"test"` for the leave-one-out evaluation views; empty when the
    /// host did not say.
    pub fn stage(&self) -> &'a str {
        self.stage
    }

    /// The view's content fingerprint (64 hex digits; empty when the host did not say). A
    /// plugin with pre-trained state compares it with the fingerprint its state was fitted on.
    pub fn fingerprint(&self) -> &'a str {
        self.fingerprint
    }

    /// The catalogue's item data, when the host sent it (palr always does).
    pub fn item_data(&self) -> Option<ItemsRef<'a>> {
        self.item_data
    }

    /// Item `index` (id, title, year, genres, attributes), when the host sent item data and
    /// the index is in range.
    pub fn item(&self, index: u32) -> Option<ItemRef<'a>> {
        self.item_data?.get(index)
    }

    /// The external id of item `index`, when known.
    pub fn item_id(&self, index: u32) -> Option<&'a str> {
        self.item(index).map(|it| it.id())
    }

    /// The external id of user `user`, when the host sent user ids.
    pub fn user_id(&self, user: usize) -> Option<&'a str> {
        self.user_ids?.get(user).map(checked_text)
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

/// One retrieval request: the user's history, the items that must not be proposed, and what
/// the caller said about the request (history timestamps, user id) and when it arrived.
#[derive(Debug, Clone)]
pub struct Query<'a> {
    history: &'a [u32],
    exclude: Cow<'a, [u32]>,
    history_timestamps: Option<&'a [i64]>,
    request_time_ms: i64,
    user_id: &'a str,
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
            history_timestamps: None,
            request_time_ms: 0,
            user_id: "",
        }
    }

    /// Adds the request context a host passes: the history's timestamps (one per history
    /// item), the request time (ms since the Unix epoch) and the caller's user id (`""` =
    /// none).
    pub fn with_context(
        mut self,
        history_timestamps: Option<&'a [i64]>,
        request_time_ms: i64,
        user_id: &'a str,
    ) -> Result<Self, String> {
        if let Some(ts) = history_timestamps
            && ts.len() != self.history.len()
        {
            return Err(format!(
                "{} history timestamps for {} history items",
                ts.len(),
                self.history.len()
            ));
        }
        self.history_timestamps = history_timestamps;
        self.request_time_ms = request_time_ms;
        self.user_id = user_id;
        Ok(self)
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
            history_timestamps: None,
            request_time_ms: 0,
            user_id: "",
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

    /// When each history item happened (seconds, as the view's timestamps), if the caller
    /// sent them.
    pub fn history_timestamps(&self) -> Option<&'a [i64]> {
        self.history_timestamps
    }

    /// When the host received the request, milliseconds since the Unix epoch (0 in tests
    /// that did not set it).
    pub fn request_time_ms(&self) -> i64 {
        self.request_time_ms
    }

    /// The caller's opaque user id; empty when none was sent.
    pub fn user_id(&self) -> &'a str {
        self.user_id
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
