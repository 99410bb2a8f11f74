//! The raw C ABI between the palr host and a retriever plugin (ABI version 2).
//!
//! Everything a plugin and the host exchange is defined here as `#[repr(C)]` types and
//! `extern "C"` function pointers, so a plugin can be written in any language with a C FFI.
//! Rust plugin authors normally never touch this module: the safe [`Retriever`](crate::Retriever)
//! trait and [`declare_retriever!`](crate::declare_retriever) generate all of it.
//!
//! # Entry point and versioning
//!
//! A plugin is a dynamic library exporting exactly one symbol, [`ENTRY_SYMBOL`]
//! (`palr_retriever_entry`), of type [`EntryFn`]. The host calls it with its own
//! [`ABI_VERSION`]. The plugin returns a pointer to its static [`PalrRetrieverVTable`] if it
//! implements that version, or null if it does not. The host then checks the table's
//! `abi_version` field too (both sides check), and refuses the plugin on any mismatch.
//!
//! Rules that hold across every ABI version, forever:
//! - the entry symbol's name and signature never change;
//! - `abi_version: u32` is the first field of the table, so a host can read it from a table of
//!   any version;
//! - any change to a type or a function signature in this module bumps [`ABI_VERSION`]; there
//!   are no optional trailing fields and no size negotiation. A host of version N loads only
//!   plugins of version N, and refuses any other with a message naming the SDK version to
//!   rebuild with ([`sdk_for_abi`]).
//!
//! Version history: 1 — interactions only. 2 — the catalogue's item data ([`PalrItems`]: ids,
//! titles, years, genres, other attributes), user ids, the view's stage and fingerprint in
//! [`PalrTrainingView`]; history timestamps, request time and user id in [`PalrQuery`]; the
//! optional `describe` function (what an instance was trained on).
//!
//! # Strings
//!
//! Every string the host hands over is a [`PalrStr`]: a pointer and a byte length, UTF-8, not
//! NUL-terminated, borrowed for as long as the struct that holds it. The table's own strings
//! (`name`, `description`, `plugin_version`) are NUL-terminated static C strings.
//!
//! # The view's fingerprint
//!
//! `PalrTrainingView::fingerprint` identifies exactly which interactions a view holds, so a
//! plugin that ships pre-trained state can tell whether that state was fitted on this view (see
//! `describe`). It is the lowercase hex SHA-256 of, in order (integers little-endian):
//! `b"palr-view-1\0"`; `n_items` as u32; for each item, its id's byte length as u32 then its
//! bytes; `n_users` as u32; for each user, the length of its sequence as u32 then its item
//! indices as u32. Timestamps, titles and attributes are not part of it.
//!
//! # Ownership (whoever allocates frees)
//!
//! | memory | allocated by | valid | freed by |
//! |---|---|---|---|
//! | the vtable and its `name`/`description`/`plugin_version` strings | plugin (static data) | as long as the library is loaded (the host never unloads) | nobody |
//! | the JSON config bytes passed to `create` | host | during the `create` call only | host |
//! | the [`PalrTrainingView`] struct and everything it points to (arrays, item data, strings) | host | from `create` until `destroy` of that instance has returned; never mutated meanwhile | host |
//! | the instance | plugin, in `create` | until `destroy` | plugin, in `destroy` |
//! | [`PalrQuery`] and its arrays and strings | host | during the `retrieve` call only | host |
//! | the output buffer of [`PalrScored`] | host, capacity `out_capacity` (contents may be uninitialised) | during the `retrieve` call only | host |
//! | the text buffer [`PalrTextBuf`] (errors, `describe`) | host | during the call only | host |
//!
//! No Rust-only type (`String`, `Vec`, trait objects, `Box`) ever crosses the boundary, and no
//! pointer handed to the plugin may be freed by it. The plugin reports errors by writing UTF-8
//! text into the host's [`PalrTextBuf`] (truncating if it does not fit), never by returning an
//! allocated string.
//!
//! # Calls, threads and failures
//!
//! - `create` is called once per configured retriever; an instance never sees another
//!   instance's state. Several instances of one library may exist at once (two configurations
//!   of the same plugin, or an old and a new generation during a reload).
//! - `retrieve` and `describe` **must be thread-safe**: the host calls them concurrently from
//!   many threads on the same instance (hence `*const` instance). `destroy` is called exactly
//!   once, after every other call on that instance has returned.
//! - No function may unwind (panic) across the boundary: unwinding out of an `extern "C"`
//!   function aborts the process. The SDK catches panics and reports [`STATUS_PANIC`].
//! - The library is never unloaded (`dlclose` is unsound with thread-local destructors), so
//!   plugins may keep threads or thread-locals alive.
//!
//! # What `retrieve` must return
//!
//! On [`STATUS_OK`] the plugin has written `*out_len <= out_capacity` entries to the output
//! buffer, best first, with: item indices `< n_items`, no duplicates, no index that appears in
//! `PalrQuery::exclude` (the host always puts every history item into `exclude`, so history
//! items are never proposed), finite scores, scores non-increasing. Returning fewer than
//! `out_capacity` entries is allowed. The host verifies all of this and turns any violation
//! into an error naming the plugin and the problem.
//!
//! # What `describe` tells the host
//!
//! `describe` is optional (null: the instance learns only from the view it is given). When
//! present, it writes a UTF-8 JSON object into the text buffer; the keys the host reads are
//! `"trained_on": {"stage": "...", "fingerprint": "..."}` — the view the instance's
//! pre-trained state (e.g. a neural model's weights) was fitted on — and `"note"`, one line for
//! operators. If `trained_on.fingerprint` differs from the view's fingerprint, the host refuses
//! the instance unless the view's stage is `"all"` (serving on every interaction, where an older
//! snapshot is allowed and reported): a model fitted on more than an evaluation view has seen
//! the evaluation's targets.

use std::ffi::{c_char, c_void};

/// The ABI version this crate implements. Bumped on any change to this module.
pub const ABI_VERSION: u32 = 2;

/// The `palr-retriever-sdk` release line that implements ABI version `abi`, for messages that
/// tell a plugin's author what to rebuild with (`None` for versions that never existed).
pub fn sdk_for_abi(abi: u32) -> Option<&'static str> {
    match abi {
        1 => Some("palr-retriever-sdk 0.1"),
        2 => Some("palr-retriever-sdk 0.2"),
        _ => None,
    }
}

/// The view holds every interaction the server knows (serving). The other stages a host
/// writes are `"valid"` and `"test"` (the leave-one-out evaluation views) and
/// `"valid-before-tail-N"` (fine-tuning data).
pub const STAGE_ALL: &str = "all";

/// A year in [`PalrItems::years`] that the data does not give.
pub const NO_YEAR: i32 = i32::MIN;

/// Name of the single exported entry symbol, NUL-terminated for `dlsym`.
pub const ENTRY_SYMBOL: &std::ffi::CStr = c"palr_retriever_entry";

/// The call succeeded.
pub const STATUS_OK: i32 = 0;
/// The plugin reports an error; the message is in the error buffer.
pub const STATUS_ERROR: i32 = 1;
/// The plugin panicked (caught at the boundary); the message is in the error buffer.
pub const STATUS_PANIC: i32 = 2;
/// The plugin found the host's arguments broken (a host bug); the message says what.
pub const STATUS_INVALID_ARGUMENT: i32 = 3;

/// Signature of [`ENTRY_SYMBOL`]: given the host's ABI version, return the plugin's static
/// table, or null if the plugin does not implement that version.
pub type EntryFn = unsafe extern "C" fn(host_abi_version: u32) -> *const PalrRetrieverVTable;

/// Creates an instance from a UTF-8 JSON config (`config`, `config_len` bytes, not
/// NUL-terminated) and the training view. On [`STATUS_OK`] writes the new instance (non-null)
/// to `*out_instance`; otherwise writes a message into `err` and leaves `*out_instance` alone.
pub type CreateFn = unsafe extern "C" fn(
    config: *const u8,
    config_len: usize,
    view: *const PalrTrainingView,
    out_instance: *mut *mut c_void,
    err: *mut PalrTextBuf,
) -> i32;

/// Proposes up to `out_capacity` candidates for `query`, writing them to `out` and their count
/// to `*out_len`. Thread-safe: called concurrently on one instance.
pub type RetrieveFn = unsafe extern "C" fn(
    instance: *const c_void,
    query: *const PalrQuery,
    out: *mut PalrScored,
    out_capacity: usize,
    out_len: *mut usize,
    err: *mut PalrTextBuf,
) -> i32;

/// Writes a JSON object describing the instance (see "What `describe` tells the host") into
/// `out`. Thread-safe. On failure writes a message into `out` instead and returns
/// [`STATUS_ERROR`] or [`STATUS_PANIC`].
pub type DescribeFn = unsafe extern "C" fn(instance: *const c_void, out: *mut PalrTextBuf) -> i32;

/// Frees an instance made by `create`. Called once, after all `retrieve` calls returned.
pub type DestroyFn = unsafe extern "C" fn(instance: *mut c_void);

/// The plugin's function table, returned by the entry symbol. Static, immutable data.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PalrRetrieverVTable {
    /// Must stay the first field in every ABI version: the version this table implements.
    pub abi_version: u32,
    /// Short identifier of the algorithm, NUL-terminated UTF-8, static (e.g. `popularity`).
    pub name: *const c_char,
    /// One-line human description, NUL-terminated UTF-8, static.
    pub description: *const c_char,
    /// The plugin's own version (e.g. its crate version), NUL-terminated UTF-8, static.
    /// Independent of `abi_version`: the plugin's release, which the host shows beside the ABI
    /// version (`palr plugin check`, `--list-retrievers`, the `retriever loaded` log line, the
    /// `palr_retriever_info{retriever,plugin,version,abi}` metric). `declare_retriever!` writes
    /// the plugin crate's `CARGO_PKG_VERSION`.
    pub plugin_version: *const c_char,
    /// See [`CreateFn`]. Null is a broken plugin.
    pub create: Option<CreateFn>,
    /// See [`RetrieveFn`]. Null is a broken plugin.
    pub retrieve: Option<RetrieveFn>,
    /// See [`DestroyFn`]. Null is a broken plugin.
    pub destroy: Option<DestroyFn>,
    /// See [`DescribeFn`]. Null: the instance has nothing to declare (it learns only from the
    /// view it is given).
    pub describe: Option<DescribeFn>,
}

// SAFETY: the table is immutable static data; its pointers refer to immutable static strings,
// and its function pointers are plain code addresses. Sharing it between threads is sound.
unsafe impl Sync for PalrRetrieverVTable {}
unsafe impl Send for PalrRetrieverVTable {}

/// A borrowed UTF-8 string: `len` bytes at `ptr`, not NUL-terminated. `ptr` may be null only
/// when `len` is 0.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PalrStr {
    /// First byte, or null for the empty string.
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
}

impl PalrStr {
    /// The empty string.
    pub const EMPTY: PalrStr = PalrStr {
        ptr: std::ptr::null(),
        len: 0,
    };

    /// Borrows `s` (the caller keeps `s` alive and unchanged while the `PalrStr` is used).
    pub fn borrow(s: &str) -> PalrStr {
        PalrStr {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }
}

/// The catalogue's item data, parallel arrays indexed by item index (`0..n_items` of the view
/// that holds it).
///
/// Item `i`'s genres are `genres[genre_offsets[i] .. genre_offsets[i + 1]]` (`genre_offsets`
/// has `n_items + 1` entries, starts at 0, non-decreasing). Its value of attribute `a` is
/// `attr_values[i * n_attrs + a]`, the empty string when the data has none; `attr_names` holds
/// the `n_attrs` column names (every attribute the data's loader read besides id, title, year
/// and genres, e.g. MovieLens's `release_date`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PalrItems {
    /// `n_items` external ids, as requests and data files write them; never empty, unique.
    pub ids: *const PalrStr,
    /// `n_items` titles as in the data (whitespace cleaned); never empty.
    pub titles: *const PalrStr,
    /// `n_items` release years; [`NO_YEAR`] where unknown.
    pub years: *const i32,
    /// `n_items + 1` offsets into `genres`.
    pub genre_offsets: *const u32,
    /// All items' genres, concatenated.
    pub genres: *const PalrStr,
    /// Number of extra attribute columns.
    pub n_attrs: u32,
    /// `n_attrs` column names.
    pub attr_names: *const PalrStr,
    /// `n_items * n_attrs` values, item-major; empty = missing.
    pub attr_values: *const PalrStr,
}

/// Read-only view of the training interactions and the catalogue, owned by the host.
///
/// User `u` (`0 <= u < n_users`) interacted with `items[offsets[u] .. offsets[u + 1]]`, oldest
/// first. `offsets` has `n_users + 1` entries, `offsets[0] == 0`, non-decreasing, and
/// `offsets[n_users] == n_interactions`. Every item index is `< n_items`. `timestamps` is null
/// or has `n_interactions` entries parallel to `items` (seconds, any epoch, non-decreasing per
/// user). The struct and everything it points to stay valid and unchanged until the instance
/// is destroyed.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PalrTrainingView {
    /// Catalogue size: valid item indices are `0..n_items`.
    pub n_items: u32,
    /// Number of users (sequences).
    pub n_users: u32,
    /// Total interactions, `offsets[n_users]`.
    pub n_interactions: u64,
    /// `n_users + 1` sequence boundaries.
    pub offsets: *const u64,
    /// `n_interactions` item indices.
    pub items: *const u32,
    /// Null, or `n_interactions` timestamps parallel to `items`.
    pub timestamps: *const i64,
    /// `n_users` external user ids, as the data writes them.
    pub user_ids: *const PalrStr,
    /// The catalogue: ids, titles, years, genres and other attributes of every item.
    pub item_data: PalrItems,
    /// Which interactions the view holds: [`STAGE_ALL`], `"valid"`, `"test"`, ... (module docs).
    pub stage: PalrStr,
    /// The view's content fingerprint, 64 lowercase hex digits (module docs).
    pub fingerprint: PalrStr,
}

/// One retrieval request, owned by the host, valid during the call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PalrQuery {
    /// The user's history, item indices `< n_items`, oldest first (may repeat items).
    pub history: *const u32,
    /// Entries in `history`.
    pub history_len: usize,
    /// Items that must not be proposed: sorted ascending, no duplicates, every history item
    /// included.
    pub exclude: *const u32,
    /// Entries in `exclude`.
    pub exclude_len: usize,
    /// Null, or `history_len` timestamps parallel to `history` (seconds, as in the view),
    /// when the caller sent them.
    pub history_timestamps: *const i64,
    /// When the host received the request, milliseconds since the Unix epoch.
    pub request_time_ms: i64,
    /// The caller's opaque user id; empty when the caller sent none.
    pub user_id: PalrStr,
}

/// One proposed candidate.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PalrScored {
    /// Item index `< n_items`.
    pub item: u32,
    /// Finite score; higher is better.
    pub score: f32,
}

/// A host-owned buffer for text (an error message, `describe`'s JSON). The plugin writes at
/// most `capacity` bytes of UTF-8 to `ptr` and stores the number written in `len` (truncating
/// at a character boundary).
#[repr(C)]
#[derive(Debug)]
pub struct PalrTextBuf {
    /// Host memory of `capacity` bytes.
    pub ptr: *mut u8,
    /// Size of `ptr` in bytes.
    pub capacity: usize,
    /// Bytes written by the plugin; the host sets it to 0 before the call.
    pub len: usize,
}

impl PalrTextBuf {
    /// Writes `message` (truncated to fit, at a UTF-8 character boundary) into the buffer.
    ///
    /// # Safety
    /// `self.ptr` must be valid for writes of `self.capacity` bytes (or `capacity` is 0).
    pub unsafe fn write(&mut self, message: &str) {
        let mut n = message.len().min(self.capacity);
        while !message.is_char_boundary(n) {
            n -= 1;
        }
        if n > 0 && !self.ptr.is_null() {
            // SAFETY: caller guarantees `ptr` is valid for `capacity >= n` bytes; the source is
            // a distinct Rust string, so the ranges do not overlap.
            unsafe { std::ptr::copy_nonoverlapping(message.as_ptr(), self.ptr, n) };
            self.len = n;
        } else {
            self.len = 0;
        }
    }
}
