//! SDK for palr retriever plugins: the versioned C ABI ([`abi`]) and a safe Rust layer on top.
//!
//! A retriever proposes candidate items for a user's history; palr's LLM then ranks them (PALR,
//! Yang et al. 2023, "PALR: Personalization Aware LLMs for Recommendation", uses a retrieval
//! stage before the LLM ranking stage). Retrievers are dynamic libraries so that other teams
//! can ship their own without touching the server. The host side lives in `palr::retrieval`.
//!
//! Write a plugin by implementing [`Retriever`] and invoking [`declare_retriever!`] once in a
//! `crate-type = ["cdylib"]` crate:
//!
//! ```
//! use palr_retriever_sdk::{declare_retriever, Candidates, Corpus, Query, Retriever};
//! use std::ffi::CStr;
//!
//! /// Proposes items in index order (illustration only).
//! struct FirstItems { n_items: u32 }
//!
//! impl Retriever for FirstItems {
//!     const NAME: &'static CStr = c"first-items";
//!     const DESCRIPTION: &'static CStr = c"lowest item indices not yet seen";
//!     fn new(_config: &str, corpus: &Corpus<'_>) -> Result<Self, String> {
//!         Ok(Self { n_items: corpus.n_items() })
//!     }
//!     fn retrieve(&self, query: &Query<'_>, out: &mut Candidates<'_>) -> Result<(), String> {
//!         for item in (0..self.n_items).filter(|&i| !query.is_excluded(i)) {
//!             if !out.push(item, 0.0) { break; }
//!         }
//!         Ok(())
//!     }
//! }
//! declare_retriever!(FirstItems);
//! # fn main() {}
//! ```
//!
//! The macro exports the single entry symbol `palr_retriever_entry`, answers the host's ABI
//! version check, builds the static function table, validates what the host passes in, and
//! catches panics at the boundary, reporting them as errors (no unwinding ever crosses
//! `extern "C"`, which would abort the process). Ownership and threading rules are in [`abi`].
//! Plugins must be built with the default `panic = "unwind"` for panics to be caught.

pub mod abi;
mod items;
/// The README's examples compile and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
pub mod rank;
mod types;

pub use items::{ItemFields, ItemRef, ItemTable, ItemsRef, StrTable};
pub use types::{Candidates, Corpus, Query};

use std::ffi::CStr;

/// A retrieval algorithm. One value is one configured instance, shared by all threads.
///
/// `retrieve` is called concurrently from many threads, hence `Sync`; use interior mutability
/// with care (a lock in `retrieve` serialises the server).
pub trait Retriever: Send + Sync + Sized + 'static {
    /// Short identifier of the algorithm, e.g. `c"popularity"`.
    const NAME: &'static CStr;
    /// One-line description shown by the host's `list()`.
    const DESCRIPTION: &'static CStr;

    /// Builds the model from the plugin's JSON config (as given by the operator; may be empty
    /// or `{}`) and the training interactions. Errors should say what to fix.
    ///
    /// The corpus is only borrowed for this call: copy or precompute what `retrieve` needs.
    fn new(config: &str, corpus: &Corpus<'_>) -> Result<Self, String>;

    /// Pushes up to `out.capacity()` candidates, best first: no excluded item (the exclusion
    /// set always contains the history), no duplicates, finite non-increasing scores.
    fn retrieve(&self, query: &Query<'_>, out: &mut Candidates<'_>) -> Result<(), String>;

    /// What the host should know about this instance. A plugin that ships pre-trained state
    /// (weights fitted offline) must say which view it was fitted on
    /// ([`Description::trained_on`]): the host then refuses it on an evaluation view it was
    /// not fitted on (it would have seen the targets) and reports it when serving on a newer
    /// view. The default says nothing: the instance learns only from the corpus it is given.
    fn describe(&self) -> Description {
        Description::default()
    }
}

/// What an instance tells the host about itself (see [`Retriever::describe`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Description {
    /// The view the instance's pre-trained state was fitted on: its stage and fingerprint.
    pub trained_on: Option<TrainedOn>,
    /// One line for operators (shown when the retriever is listed).
    pub note: Option<String>,
}

/// A view identified by its stage and fingerprint (see [`Corpus::fingerprint`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrainedOn {
    /// `"valid"`, `"test"`, `"all"`, ...
    pub stage: String,
    /// 64 hex digits.
    pub fingerprint: String,
}

impl Description {
    /// The JSON object `describe` writes across the ABI.
    pub fn to_json(&self) -> String {
        let mut o = serde_json::Map::new();
        if let Some(t) = &self.trained_on {
            o.insert(
                "trained_on".into(),
                serde_json::json!({"stage": t.stage, "fingerprint": t.fingerprint}),
            );
        }
        if let Some(n) = &self.note {
            o.insert("note".into(), n.clone().into());
        }
        serde_json::Value::Object(o).to_string()
    }
}

/// Parses a plugin config: empty or blank text gives `C::default()`, otherwise JSON.
///
/// Use `#[serde(deny_unknown_fields)]` on `C` so that typos in option names are reported.
pub fn parse_config<C: serde::de::DeserializeOwned + Default>(config: &str) -> Result<C, String> {
    if config.trim().is_empty() {
        return Ok(C::default());
    }
    serde_json::from_str(config).map_err(|e| format!("invalid config JSON `{config}`: {e}"))
}

/// Runs `retriever` on `query` with capacity `k` outside any FFI, as the host would: for unit
/// tests of plugins.
pub fn run_query<T: Retriever>(
    retriever: &T,
    query: &Query<'_>,
    k: usize,
) -> Result<Vec<(u32, f32)>, String> {
    let mut buf = vec![std::mem::MaybeUninit::uninit(); k];
    let mut out = Candidates::new(&mut buf);
    retriever.retrieve(query, &mut out)?;
    Ok(out.written().iter().map(|c| (c.item, c.score)).collect())
}

/// Exports `palr_retriever_entry` for the [`Retriever`] type given, with its static table.
///
/// Invoke exactly once per cdylib crate. The plugin version reported to the host is the
/// invoking crate's `CARGO_PKG_VERSION`.
#[macro_export]
macro_rules! declare_retriever {
    ($ty:ty) => {
        static __PALR_RETRIEVER_VTABLE: $crate::abi::PalrRetrieverVTable =
            $crate::__private::vtable::<$ty>(concat!(env!("CARGO_PKG_VERSION"), "\0"));

        /// The palr retriever entry point (see `palr_retriever_sdk::abi`).
        #[unsafe(no_mangle)]
        pub extern "C" fn palr_retriever_entry(
            host_abi_version: u32,
        ) -> *const $crate::abi::PalrRetrieverVTable {
            $crate::__private::entry(host_abi_version, &__PALR_RETRIEVER_VTABLE)
        }
    };
}

#[doc(hidden)]
pub mod __private {
    //! The generic `extern "C"` glue behind [`declare_retriever!`]. Not a stable API.

    use std::ffi::{CStr, c_void};
    use std::mem::MaybeUninit;
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::ptr::NonNull;

    use crate::abi::*;
    use crate::items::{ItemsRef, host_str, host_strings};
    use crate::{Candidates, Corpus, Query, Retriever};

    /// The static table for `T`. `plugin_version` must end in NUL (checked at compile time).
    pub const fn vtable<T: Retriever>(plugin_version: &'static str) -> PalrRetrieverVTable {
        let version = match CStr::from_bytes_with_nul(plugin_version.as_bytes()) {
            Ok(v) => v,
            Err(_) => panic!("plugin version must be NUL-terminated without inner NUL"),
        };
        PalrRetrieverVTable {
            abi_version: ABI_VERSION,
            name: T::NAME.as_ptr(),
            description: T::DESCRIPTION.as_ptr(),
            plugin_version: version.as_ptr(),
            create: Some(create::<T>),
            retrieve: Some(retrieve::<T>),
            destroy: Some(destroy::<T>),
            describe: Some(describe::<T>),
        }
    }

    /// The entry point's logic: the table only for the ABI version this SDK implements.
    pub fn entry(
        host_abi_version: u32,
        table: &'static PalrRetrieverVTable,
    ) -> *const PalrRetrieverVTable {
        if host_abi_version == ABI_VERSION {
            table
        } else {
            std::ptr::null()
        }
    }

    /// Why a call failed.
    enum Failure {
        /// The plugin's own error (`STATUS_ERROR`).
        Plugin(String),
        /// The host broke the ABI contract (`STATUS_INVALID_ARGUMENT`).
        Host(String),
    }

    fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
        if let Some(s) = payload.downcast_ref::<&str>() {
            format!("panicked: {s}")
        } else if let Some(s) = payload.downcast_ref::<String>() {
            format!("panicked: {s}")
        } else {
            "panicked with a non-string payload".to_owned()
        }
    }

    /// Drops a panic payload without letting a panicking `Drop` unwind further.
    fn drop_payload(payload: Box<dyn std::any::Any + Send>) {
        if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
            std::mem::forget(again);
        }
    }

    /// Runs `f`, catching panics, and turns its outcome into a status plus error text.
    fn guard(err: *mut PalrTextBuf, f: impl FnOnce() -> Result<(), Failure>) -> i32 {
        let (status, message) = match catch_unwind(AssertUnwindSafe(f)) {
            Ok(Ok(())) => return STATUS_OK,
            Ok(Err(Failure::Plugin(m))) => (STATUS_ERROR, m),
            Ok(Err(Failure::Host(m))) => (STATUS_INVALID_ARGUMENT, m),
            Err(payload) => {
                let m = panic_message(&*payload);
                drop_payload(payload);
                (STATUS_PANIC, m)
            }
        };
        // SAFETY: the ABI makes `err` null or a valid host buffer for the call's duration.
        if let Some(err) = unsafe { err.as_mut() } {
            // SAFETY: same contract: `ptr` is valid for `capacity` bytes.
            unsafe { err.write(&message) };
        }
        status
    }

    /// A slice from a host pointer and length; null is allowed only for length 0.
    ///
    /// # Safety
    /// If non-null, `ptr` must be valid for reads of `len` elements for `'a`.
    unsafe fn host_slice<'a, E>(ptr: *const E, len: usize, what: &str) -> Result<&'a [E], Failure> {
        if len == 0 {
            return Ok(&[]);
        }
        if ptr.is_null() {
            return Err(Failure::Host(format!(
                "{what} is null but its length is {len}"
            )));
        }
        // SAFETY: non-null, and the caller guarantees validity for `len` elements.
        Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
    }

    /// # Safety
    /// `view` must point to a valid `PalrTrainingView` whose arrays match its counts.
    unsafe fn corpus_from_view<'a>(view: *const PalrTrainingView) -> Result<Corpus<'a>, Failure> {
        // SAFETY: caller contract.
        let Some(v) = (unsafe { view.as_ref() }) else {
            return Err(Failure::Host("training view is null".into()));
        };
        let n = usize::try_from(v.n_interactions).map_err(|_| {
            Failure::Host(format!(
                "{} interactions do not fit in memory",
                v.n_interactions
            ))
        })?;
        let n_users = v.n_users as usize;
        // SAFETY: the ABI promises offsets has n_users + 1 entries, items and timestamps n.
        let offsets = unsafe { host_slice(v.offsets, n_users + 1, "view.offsets")? };
        let items = unsafe { host_slice(v.items, n, "view.items")? };
        let timestamps = if v.timestamps.is_null() {
            None
        } else {
            Some(unsafe { host_slice(v.timestamps, n, "view.timestamps")? })
        };
        let invalid = |e: String| Failure::Host(format!("invalid training view: {e}"));
        let mut corpus = Corpus::new(v.n_items, offsets, items, timestamps).map_err(invalid)?;
        // SAFETY (all blocks): the ABI promises these pointers and lengths.
        if !v.user_ids.is_null() {
            let ids = unsafe { host_strings(v.user_ids, n_users, "user ids") }.map_err(invalid)?;
            corpus = corpus.with_user_id_column(ids).map_err(invalid)?;
        }
        if let Some(data) =
            unsafe { ItemsRef::from_raw(&v.item_data, v.n_items) }.map_err(invalid)?
        {
            corpus = corpus.with_items(data).map_err(invalid)?;
        }
        let stage = unsafe { host_str(v.stage, "stage") }.map_err(invalid)?;
        let fingerprint = unsafe { host_str(v.fingerprint, "fingerprint") }.map_err(invalid)?;
        Ok(corpus.with_view(stage, fingerprint))
    }

    /// `CreateFn` for `T`.
    ///
    /// # Safety
    /// Called by the host under the ABI contract (see [`crate::abi`]).
    pub unsafe extern "C" fn create<T: Retriever>(
        config: *const u8,
        config_len: usize,
        view: *const PalrTrainingView,
        out_instance: *mut *mut c_void,
        err: *mut PalrTextBuf,
    ) -> i32 {
        guard(err, || {
            if out_instance.is_null() {
                return Err(Failure::Host("out_instance is null".into()));
            }
            // SAFETY: the host passes `config_len` readable bytes valid during the call.
            let config = unsafe { host_slice(config, config_len, "config")? };
            let config = std::str::from_utf8(config)
                .map_err(|e| Failure::Host(format!("config is not UTF-8: {e}")))?;
            // SAFETY: the host passes a valid view (ABI contract).
            let corpus = unsafe { corpus_from_view(view)? };
            let instance = T::new(config, &corpus).map_err(Failure::Plugin)?;
            let raw = Box::into_raw(Box::new(instance));
            // SAFETY: checked non-null above; the host owns this slot for the call.
            unsafe { *out_instance = raw.cast::<c_void>() };
            Ok(())
        })
    }

    /// `RetrieveFn` for `T`.
    ///
    /// # Safety
    /// Called by the host under the ABI contract, with an instance made by `create::<T>`.
    pub unsafe extern "C" fn retrieve<T: Retriever>(
        instance: *const c_void,
        query: *const PalrQuery,
        out: *mut PalrScored,
        out_capacity: usize,
        out_len: *mut usize,
        err: *mut PalrTextBuf,
    ) -> i32 {
        guard(err, || {
            let Some(out_len) = NonNull::new(out_len) else {
                return Err(Failure::Host("out_len is null".into()));
            };
            // SAFETY: valid for writes during the call (ABI contract).
            unsafe { out_len.write(0) };
            // SAFETY: instances are only ever made by `create::<T>` as `Box<T>`.
            let Some(this) = (unsafe { instance.cast::<T>().as_ref() }) else {
                return Err(Failure::Host("instance is null".into()));
            };
            // SAFETY: valid during the call (ABI contract).
            let Some(q) = (unsafe { query.as_ref() }) else {
                return Err(Failure::Host("query is null".into()));
            };
            // SAFETY: the query arrays are valid for their lengths during the call.
            let history = unsafe { host_slice(q.history, q.history_len, "query.history")? };
            let exclude = unsafe { host_slice(q.exclude, q.exclude_len, "query.exclude")? };
            let stamps = if q.history_timestamps.is_null() {
                None
            } else {
                // SAFETY: parallel to `history` when non-null (ABI contract).
                Some(unsafe {
                    host_slice(
                        q.history_timestamps,
                        q.history_len,
                        "query.history_timestamps",
                    )?
                })
            };
            // SAFETY: valid during the call (ABI contract).
            let user_id = unsafe { host_str(q.user_id, "query.user_id") }.map_err(Failure::Host)?;
            let query = Query::from_host(history, exclude)
                .and_then(|query| query.with_context(stamps, q.request_time_ms, user_id))
                .map_err(Failure::Host)?;
            let buf: &mut [MaybeUninit<PalrScored>] = if out_capacity == 0 {
                &mut []
            } else if out.is_null() {
                return Err(Failure::Host(format!(
                    "output buffer is null but its capacity is {out_capacity}"
                )));
            } else {
                // SAFETY: host memory for `out_capacity` entries, exclusively ours during the
                // call; `MaybeUninit` because the host need not initialise it.
                unsafe { std::slice::from_raw_parts_mut(out.cast(), out_capacity) }
            };
            let mut sink = Candidates::new(buf);
            this.retrieve(&query, &mut sink).map_err(Failure::Plugin)?;
            // SAFETY: as above.
            unsafe { out_len.write(sink.len()) };
            Ok(())
        })
    }

    /// `DescribeFn` for `T`: [`Retriever::describe`] as JSON.
    ///
    /// # Safety
    /// Called by the host under the ABI contract, with an instance made by `create::<T>`.
    pub unsafe extern "C" fn describe<T: Retriever>(
        instance: *const c_void,
        out: *mut PalrTextBuf,
    ) -> i32 {
        let mut json = String::new();
        let status = guard(out, || {
            // SAFETY: instances are only ever made by `create::<T>` as `Box<T>`.
            let Some(this) = (unsafe { instance.cast::<T>().as_ref() }) else {
                return Err(Failure::Host("instance is null".into()));
            };
            json = this.describe().to_json();
            Ok(())
        });
        if status == STATUS_OK {
            // SAFETY: the ABI makes `out` null or a valid host buffer for the call.
            if let Some(out) = unsafe { out.as_mut() } {
                if json.len() > out.capacity {
                    // SAFETY: as above.
                    unsafe {
                        out.write("describe: the description does not fit the host's buffer")
                    };
                    return STATUS_ERROR;
                }
                // SAFETY: as above.
                unsafe { out.write(&json) };
            }
        }
        status
    }

    /// `DestroyFn` for `T`. A panic in `T`'s `Drop` is caught and swallowed (there is nobody
    /// to report it to; the panic hook has already printed it).
    ///
    /// # Safety
    /// `instance` is null or was made by `create::<T>` and is not used afterwards.
    pub unsafe extern "C" fn destroy<T: Retriever>(instance: *mut c_void) {
        if instance.is_null() {
            return;
        }
        // SAFETY: made by `Box::into_raw` in `create::<T>`, destroyed once (ABI contract).
        let boxed = unsafe { Box::from_raw(instance.cast::<T>()) };
        if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(boxed))) {
            drop_payload(payload);
        }
    }
}
