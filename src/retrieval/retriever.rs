//! One loaded retriever: a plugin instance plus the checks around every call into it.

use std::ffi::{CStr, c_char, c_void};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use palr_retriever_sdk::abi::*;

use super::library::{self, OpenError};
use super::{PluginFailure, Result, RetrievalError, TrainingView};

/// Size of the host buffer a plugin writes error text into.
const ERROR_CAPACITY: usize = 1024;

/// Counters of one retriever since it was loaded.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RetrieverStats {
    /// Calls into the plugin's `retrieve`.
    pub calls: u64,
    /// Calls where the plugin reported an error (or rejected the host's arguments).
    pub errors: u64,
    /// Calls where the plugin panicked.
    pub panics: u64,
    /// Calls whose result broke the ABI contract.
    pub contract_violations: u64,
}

#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    errors: AtomicU64,
    panics: AtomicU64,
    contract_violations: AtomicU64,
}

/// A view a plugin's pre-trained state was fitted on, as its `describe` declared it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainedOn {
    /// `"valid"`, `"test"`, `"all"`, ...
    pub stage: String,
    /// The view's fingerprint (64 hex digits).
    pub fingerprint: String,
}

impl TrainedOn {
    /// `stage` with the first 12 digits of the fingerprint, for messages.
    pub fn short(&self) -> String {
        format!(
            "{} ({})",
            self.stage,
            &self.fingerprint[..self.fingerprint.len().min(12)]
        )
    }
}

/// Request context passed to a plugin beside the history (ABI version 2).
#[derive(Debug, Clone, Copy, Default)]
pub struct QueryContext<'a> {
    /// One timestamp per history item (seconds), when the caller sent them.
    pub history_timestamps: Option<&'a [i64]>,
    /// The caller's opaque user id; empty = none.
    pub user_id: &'a str,
    /// When the request arrived, ms since the Unix epoch; 0 = now.
    pub request_time_ms: i64,
}

/// What `list()` shows about a retriever.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrieverInfo {
    /// The configured name (the registry key).
    pub name: String,
    /// The library file as resolved from the config.
    pub path: PathBuf,
    /// The file actually mapped (differs from `path` for a side-by-side reload).
    pub loaded_from: PathBuf,
    /// The algorithm's own name from its table (e.g. `popularity`).
    pub plugin_name: String,
    /// The plugin's one-line description.
    pub description: String,
    /// The plugin's own version string.
    pub plugin_version: String,
    /// ABI version both sides agreed on.
    pub abi_version: u32,
    /// Load generation: unique per load, increasing; a reload gets a new one.
    pub generation: u64,
    /// The view the plugin's pre-trained state was fitted on, if it declares one.
    pub trained_on: Option<TrainedOn>,
    /// The stage of the view this instance serves (`"all"`, `"valid"`, `"test"`, ...).
    pub view_stage: String,
    /// Whether `trained_on` is another view than the one served (an older snapshot; only
    /// allowed when serving on all interactions).
    pub stale_snapshot: bool,
    /// The plugin's own note about the instance, if any.
    pub note: Option<String>,
    /// Counters at the time of the snapshot.
    pub stats: RetrieverStats,
}

/// Size of the host buffer a plugin's `describe` writes its JSON into.
const DESCRIBE_CAPACITY: usize = 16 * 1024;

/// A host-owned text buffer handed to the plugin (errors, `describe`).
struct ErrorText {
    bytes: Box<[u8]>,
    raw: PalrTextBuf,
}

impl ErrorText {
    fn new() -> Self {
        Self::with_capacity(ERROR_CAPACITY)
    }

    fn with_capacity(capacity: usize) -> Self {
        let mut bytes = vec![0u8; capacity].into_boxed_slice();
        let raw = PalrTextBuf {
            ptr: bytes.as_mut_ptr(),
            capacity: bytes.len(),
            len: 0,
        };
        Self { bytes, raw }
    }

    /// The plugin's message (invalid UTF-8 replaced), or the contract problem.
    fn message(&self) -> Result<String, String> {
        let len = self.raw.len;
        if len > self.bytes.len() {
            return Err(format!(
                "error text length {len} exceeds the buffer capacity {}",
                self.bytes.len()
            ));
        }
        Ok(String::from_utf8_lossy(&self.bytes[..len]).into_owned())
    }
}

fn failure_of(status: i32) -> Option<PluginFailure> {
    match status {
        STATUS_ERROR => Some(PluginFailure::Error),
        STATUS_PANIC => Some(PluginFailure::Panic),
        STATUS_INVALID_ARGUMENT => Some(PluginFailure::RejectedArguments),
        _ => None,
    }
}

/// A loaded, initialised retriever plugin instance. Shared by all threads via `Arc`; the
/// instance is destroyed (by the plugin) when the last `Arc` goes, the library stays loaded.
pub struct Retriever {
    info: RetrieverInfo,
    retrieve_fn: RetrieveFn,
    destroy_fn: DestroyFn,
    instance: NonNull<c_void>,
    // The plugin may keep pointers to both until `destroy`: dropped after it (field order).
    _raw_view: Box<PalrTrainingView>,
    view: Arc<TrainingView>,
    counters: Counters,
}

// SAFETY: the ABI requires `retrieve` to be thread-safe on a shared instance, and it is the only
// plugin function called through `&self`; `destroy` runs in `Drop`, with exclusive access.
unsafe impl Send for Retriever {}
unsafe impl Sync for Retriever {}

impl std::fmt::Debug for Retriever {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retriever")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// Copies a static string from a plugin's table.
///
/// # Safety
/// `p` is null or a NUL-terminated string that stays valid (static in a never-unloaded library).
unsafe fn table_string(p: *const c_char, field: &str) -> Result<String, String> {
    if p.is_null() {
        return Err(format!("its table has a null `{field}`"));
    }
    // SAFETY: caller contract.
    Ok(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

impl Retriever {
    /// Loads `path`, checks the ABI both ways and creates an instance with `config_json`.
    pub(crate) fn create(
        name: &str,
        path: &Path,
        config_json: &str,
        view: Arc<TrainingView>,
        host_abi_version: u32,
        generation: u64,
    ) -> Result<Self> {
        let load_err = |reason: String| RetrievalError::Load {
            name: name.to_owned(),
            path: path.to_owned(),
            reason,
        };
        let (entry, loaded_from) = library::open(path).map_err(|e| match e {
            OpenError::Missing(io) => RetrievalError::LibraryNotFound {
                name: name.to_owned(),
                path: path.display().to_string(),
                searched: format!("`{}` ({io})", path.display()),
            },
            OpenError::NotLoadable(why) => {
                load_err(format!("not a loadable dynamic library: {why}"))
            }
            OpenError::NoEntry(why) => load_err(format!(
                "no entry symbol `{}`, so this is not a palr retriever plugin (Rust plugins \
                 export it with `declare_retriever!`): {why}",
                ENTRY_SYMBOL.to_string_lossy()
            )),
        })?;

        let mismatch = |plugin| RetrievalError::AbiMismatch {
            name: name.to_owned(),
            path: path.to_owned(),
            host: host_abi_version,
            plugin,
        };
        // SAFETY: the entry symbol has the ABI's fixed signature in every version.
        let table = unsafe { entry(host_abi_version) };
        if table.is_null() {
            return Err(mismatch(None));
        }
        // SAFETY: every ABI version's table starts with `abi_version: u32`; read only that
        // until the version is known to match.
        let plugin_abi = unsafe { table.cast::<u32>().read() };
        if plugin_abi != host_abi_version {
            return Err(mismatch(Some(plugin_abi)));
        }
        // SAFETY: the versions agree, so the table has this layout; it is static.
        let t: PalrRetrieverVTable = unsafe { table.read() };
        // SAFETY: static strings of a library that is never unloaded.
        let (plugin_name, description, plugin_version) = unsafe {
            (
                table_string(t.name, "name").map_err(load_err)?,
                table_string(t.description, "description").map_err(load_err)?,
                table_string(t.plugin_version, "plugin_version").map_err(load_err)?,
            )
        };
        let (Some(create), Some(retrieve_fn), Some(destroy_fn)) = (t.create, t.retrieve, t.destroy)
        else {
            return Err(load_err("its table has a null function pointer".into()));
        };

        let raw_view = Box::new(view.raw());
        let mut instance: *mut c_void = std::ptr::null_mut();
        let mut err = ErrorText::new();
        // SAFETY: ABI call: config bytes and the error buffer are valid for the call; the view
        // and its arrays live in `raw_view`/`view`, kept until after `destroy`.
        let status = unsafe {
            create(
                config_json.as_ptr(),
                config_json.len(),
                &*raw_view,
                &mut instance,
                &mut err.raw,
            )
        };
        let contract = |problem: String| RetrievalError::Contract {
            name: name.to_owned(),
            problem,
        };
        if status != STATUS_OK {
            let message = err.message().map_err(contract)?;
            return Err(match failure_of(status) {
                Some(failure) => RetrievalError::Init {
                    name: name.to_owned(),
                    failure,
                    message,
                },
                None => contract(format!("create returned unknown status {status}")),
            });
        }
        let instance = NonNull::new(instance)
            .ok_or_else(|| contract("create reported success but returned no instance".into()))?;
        let view_stage = view.stage().to_owned();
        // From here on `retriever` owns the instance: any error below drops it, which destroys it.
        let mut retriever = Self {
            info: RetrieverInfo {
                name: name.to_owned(),
                path: path.to_owned(),
                loaded_from,
                plugin_name,
                description,
                plugin_version,
                abi_version: plugin_abi,
                generation,
                trained_on: None,
                view_stage,
                stale_snapshot: false,
                note: None,
                stats: RetrieverStats::default(),
            },
            retrieve_fn,
            destroy_fn,
            instance,
            _raw_view: raw_view,
            view,
            counters: Counters::default(),
        };
        if let Some(describe) = t.describe {
            let (trained_on, note) = retriever.describe(describe)?;
            retriever.info.note = note;
            retriever.check_trained_on(trained_on)?;
        }
        let info = &retriever.info;
        tracing::info!(
            retriever = name,
            plugin = info.plugin_name,
            version = info.plugin_version,
            abi = info.abi_version,
            path = %path.display(),
            generation,
            view = info.view_stage,
            trained_on = info.trained_on.as_ref().map(TrainedOn::short),
            "retriever loaded"
        );
        Ok(retriever)
    }

    /// Calls the plugin's `describe` and reads the keys the host uses (ABI docs): what its
    /// pre-trained state was fitted on, and its note.
    fn describe(&self, describe: DescribeFn) -> Result<(Option<TrainedOn>, Option<String>)> {
        let name = &self.info.name;
        let contract = |problem: String| RetrievalError::Contract {
            name: name.clone(),
            problem,
        };
        let mut out = ErrorText::with_capacity(DESCRIBE_CAPACITY);
        // SAFETY: ABI call on our live instance with a host buffer valid for the call.
        let status = unsafe { describe(self.instance.as_ptr(), &mut out.raw) };
        let text = out.message().map_err(contract)?;
        if status != STATUS_OK {
            return Err(match failure_of(status) {
                Some(failure) => RetrievalError::Init {
                    name: name.clone(),
                    failure,
                    message: format!("describe: {text}"),
                },
                None => contract(format!("describe returned unknown status {status}")),
            });
        }
        #[derive(serde::Deserialize)]
        struct Declared {
            trained_on: Option<Trained>,
            note: Option<String>,
        }
        #[derive(serde::Deserialize)]
        struct Trained {
            stage: String,
            fingerprint: String,
        }
        let d: Declared = serde_json::from_str(&text).map_err(|e| {
            contract(format!(
                "describe wrote {:?}, not a JSON object of the documented keys: {e}",
                text.chars().take(80).collect::<String>()
            ))
        })?;
        Ok((
            d.trained_on.map(|t| TrainedOn {
                stage: t.stage,
                fingerprint: t.fingerprint,
            }),
            d.note,
        ))
    }

    /// The leak rule (ABI docs): pre-trained state fitted on another view than the one served
    /// is refused, unless the view holds all interactions (serving), where an older snapshot is
    /// allowed and reported.
    fn check_trained_on(&mut self, trained_on: Option<TrainedOn>) -> Result<()> {
        let Some(t) = trained_on else { return Ok(()) };
        let view_fp = self.view.fingerprint();
        if t.fingerprint != view_fp {
            let view_stage = self.view.stage();
            if view_stage != STAGE_ALL {
                return Err(RetrievalError::TrainedOnOtherView {
                    name: self.info.name.clone(),
                    trained_on: t.short(),
                    view: TrainedOn {
                        stage: view_stage.to_owned(),
                        fingerprint: view_fp.to_owned(),
                    }
                    .short(),
                });
            }
            tracing::warn!(
                retriever = self.info.name,
                trained_on = t.short(),
                view = view_fp,
                "retriever serves pre-trained state from an older snapshot of the data: \
                 interactions since then reach it only through the requests' histories; \
                 retrain it on the current data to refresh it"
            );
            self.info.stale_snapshot = true;
        }
        self.info.trained_on = Some(t);
        Ok(())
    }

    /// The configured name.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// Description, versions, generation and current counters.
    pub fn info(&self) -> RetrieverInfo {
        RetrieverInfo {
            stats: self.stats(),
            ..self.info.clone()
        }
    }

    /// Current counters.
    pub fn stats(&self) -> RetrieverStats {
        let c = &self.counters;
        RetrieverStats {
            calls: c.calls.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            panics: c.panics.load(Ordering::Relaxed),
            contract_violations: c.contract_violations.load(Ordering::Relaxed),
        }
    }

    /// Up to `k` candidates `(item index, score)`, best first, for a user with `history`
    /// (item indices, oldest first), never proposing a history item or one in `exclude`.
    ///
    /// Fewer than `k` come back when the catalogue minus the exclusions is smaller, or when
    /// the plugin has no more candidates. Thread-safe.
    pub fn retrieve(&self, history: &[u32], k: usize, exclude: &[u32]) -> Result<Vec<(u32, f32)>> {
        self.retrieve_with(history, k, exclude, &QueryContext::default())
    }

    /// [`Retriever::retrieve`] with the request's context (history timestamps, user id,
    /// request time) passed on to the plugin.
    pub fn retrieve_with(
        &self,
        history: &[u32],
        k: usize,
        exclude: &[u32],
        ctx: &QueryContext<'_>,
    ) -> Result<Vec<(u32, f32)>> {
        let n_items = self.view.n_items();
        if let Some(ts) = ctx.history_timestamps
            && ts.len() != history.len()
        {
            return Err(RetrievalError::InvalidRequest(format!(
                "{} history timestamps for {} history items: send one per item or none",
                ts.len(),
                history.len()
            )));
        }
        for (what, list) in [("history", history), ("exclude", exclude)] {
            if let Some(p) = list.iter().position(|&i| i >= n_items) {
                return Err(RetrievalError::InvalidRequest(format!(
                    "{what} item {} at position {p} is out of range: the catalogue has {n_items} \
                     items (indices 0..{n_items})",
                    list[p]
                )));
            }
        }
        let mut excluded: Vec<u32> = history.iter().chain(exclude).copied().collect();
        excluded.sort_unstable();
        excluded.dedup();
        let capacity = k.min(n_items as usize - excluded.len());
        if capacity == 0 {
            return Ok(Vec::new());
        }

        let request_time_ms = match ctx.request_time_ms {
            0 => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            t => t,
        };
        let query = PalrQuery {
            history: history.as_ptr(),
            history_len: history.len(),
            exclude: excluded.as_ptr(),
            exclude_len: excluded.len(),
            history_timestamps: ctx
                .history_timestamps
                .map_or(std::ptr::null(), <[i64]>::as_ptr),
            request_time_ms,
            user_id: PalrStr::borrow(ctx.user_id),
        };
        let mut out = vec![
            PalrScored {
                item: 0,
                score: 0.0
            };
            capacity
        ];
        let mut out_len = 0usize;
        let mut err = ErrorText::new();
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        // SAFETY: ABI call on our live instance; query arrays, output and error buffers are
        // valid for the call and sized as declared.
        let status = unsafe {
            (self.retrieve_fn)(
                self.instance.as_ptr(),
                &query,
                out.as_mut_ptr(),
                capacity,
                &mut out_len,
                &mut err.raw,
            )
        };
        let checked = if status == STATUS_OK {
            if out_len > capacity {
                Err(format!(
                    "returned {out_len} candidates for a buffer of capacity {capacity}"
                ))
            } else {
                out.truncate(out_len);
                check_candidates(&out, n_items, &excluded)
            }
        } else {
            match (failure_of(status), err.message()) {
                (Some(failure), Ok(message)) => {
                    let counter = match failure {
                        PluginFailure::Panic => &self.counters.panics,
                        _ => &self.counters.errors,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(retriever = self.name(), %failure, message, "retrieve failed");
                    return Err(RetrievalError::Retrieve {
                        name: self.info.name.clone(),
                        failure,
                        message,
                    });
                }
                (None, _) => Err(format!("retrieve returned unknown status {status}")),
                (Some(_), Err(problem)) => Err(problem),
            }
        };
        if let Err(problem) = checked {
            self.counters
                .contract_violations
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                retriever = self.name(),
                problem,
                "retriever broke the ABI contract"
            );
            return Err(RetrievalError::Contract {
                name: self.info.name.clone(),
                problem,
            });
        }
        Ok(out.into_iter().map(|c| (c.item, c.score)).collect())
    }
}

/// Checks a plugin's output against the ABI: indices in range, not excluded, no duplicates,
/// finite non-increasing scores. `excluded` is sorted.
fn check_candidates(out: &[PalrScored], n_items: u32, excluded: &[u32]) -> Result<(), String> {
    for (pos, c) in out.iter().enumerate() {
        if c.item >= n_items {
            return Err(format!(
                "candidate #{pos}: item {} is out of range (n_items = {n_items})",
                c.item
            ));
        }
        if excluded.binary_search(&c.item).is_ok() {
            return Err(format!(
                "candidate #{pos}: item {} is in the history or the exclusion set",
                c.item
            ));
        }
        if !c.score.is_finite() {
            return Err(format!(
                "candidate #{pos}: item {} has score {}",
                c.item, c.score
            ));
        }
        if let Some(prev) = pos.checked_sub(1).map(|p| out[p].score)
            && c.score > prev
        {
            return Err(format!(
                "candidate #{pos}: score {} is higher than the previous {prev}: results must be \
                 best first",
                c.score
            ));
        }
    }
    let mut items: Vec<u32> = out.iter().map(|c| c.item).collect();
    items.sort_unstable();
    if let Some(w) = items.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("item {} is proposed more than once", w[0]));
    }
    Ok(())
}

impl Drop for Retriever {
    fn drop(&mut self) {
        // SAFETY: made by this library's `create`; no `retrieve` can be running (we hold the
        // only reference); destroyed exactly once.
        unsafe { (self.destroy_fn)(self.instance.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(item: u32, score: f32) -> PalrScored {
        PalrScored { item, score }
    }

    #[test]
    fn candidate_checks_name_the_problem() {
        let ok = [c(3, 2.0), c(1, 2.0), c(0, -1.0)];
        assert_eq!(check_candidates(&ok, 5, &[2, 4]), Ok(()));
        assert_eq!(check_candidates(&[], 5, &[]), Ok(()));
        let err = |out: &[PalrScored]| check_candidates(out, 5, &[2, 4]).unwrap_err();
        assert!(err(&[c(5, 1.0)]).contains("item 5 is out of range"));
        assert!(err(&[c(1, 1.0), c(2, 0.0)]).contains("#1: item 2 is in the history"));
        assert!(err(&[c(1, f32::NAN)]).contains("score NaN"));
        assert!(err(&[c(1, f32::NEG_INFINITY)]).contains("score -inf"));
        assert!(err(&[c(1, 0.0), c(3, 0.5)]).contains("best first"));
        assert!(err(&[c(1, 1.0), c(3, 0.5), c(1, 0.0)]).contains("item 1 is proposed more"));
    }

    #[test]
    fn error_text_lengths_are_not_trusted() {
        let mut e = ErrorText::new();
        e.bytes[..3].copy_from_slice(b"a\xffb");
        e.raw.len = 3;
        assert_eq!(e.message().unwrap(), "a\u{fffd}b");
        e.raw.len = ERROR_CAPACITY + 1;
        assert!(
            e.message()
                .unwrap_err()
                .contains("exceeds the buffer capacity")
        );
    }
}
