//! Opening plugin libraries. Nothing is ever unloaded: `dlclose` is unsound once a library has
//! run thread-local destructors or spawned threads, so every `Library` is leaked on purpose.
//!
//! A file is opened once per process and its entry point cached. If the file at a path changed
//! since (a new build dropped in place), the dynamic loader would hand back the old mapping for
//! the same path, so the new file is copied to a unique temporary name and loaded side by side.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use palr_retriever_sdk::abi::{ENTRY_SYMBOL, EntryFn};

/// Why a library could not be opened.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// The file cannot be read (missing, permissions).
    Missing(std::io::Error),
    /// The dynamic loader refused it (not a library, wrong architecture, missing deps).
    NotLoadable(String),
    /// It loaded but does not export the entry symbol.
    NoEntry(String),
}

/// What identifies one version of a file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileIdentity {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    inode: (u64, u64),
}

impl FileIdentity {
    fn of(meta: &fs::Metadata) -> Self {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            inode: (meta.dev(), meta.ino()),
        }
    }
}

struct Opened {
    canonical: PathBuf,
    identity: FileIdentity,
    entry: EntryFn,
    loaded_from: PathBuf,
}

static OPENED: Mutex<Vec<Opened>> = Mutex::new(Vec::new());
static COPIES: AtomicU64 = AtomicU64::new(0);

/// Opens `path` (or reuses it if unchanged) and returns its entry point and the file actually
/// loaded (a temporary copy when the original changed after a first load).
pub(crate) fn open(path: &Path) -> Result<(EntryFn, PathBuf), OpenError> {
    let canonical = fs::canonicalize(path).map_err(OpenError::Missing)?;
    let meta = fs::metadata(&canonical).map_err(OpenError::Missing)?;
    if !meta.is_file() {
        return Err(OpenError::NotLoadable("not a regular file".into()));
    }
    let identity = FileIdentity::of(&meta);
    // A poisoned lock only means another load panicked on the host side; the list is intact.
    let mut opened = OPENED.lock().unwrap_or_else(|p| p.into_inner());
    let previous = opened.iter().rposition(|o| o.canonical == canonical);
    if let Some(i) = previous
        && opened[i].identity == identity
    {
        return Ok((opened[i].entry, opened[i].loaded_from.clone()));
    }
    let (load_path, is_copy) = if previous.is_some() {
        (side_by_side_copy(&canonical)?, true)
    } else {
        (canonical.clone(), false)
    };
    let loaded = load_entry(&load_path);
    if is_copy {
        // The mapping outlives the file; do not leave copies behind in the temp dir.
        let _ = fs::remove_file(&load_path);
    }
    let entry = loaded?;
    opened.push(Opened {
        canonical,
        identity,
        entry,
        loaded_from: load_path.clone(),
    });
    Ok((entry, load_path))
}

fn side_by_side_copy(original: &Path) -> Result<PathBuf, OpenError> {
    let dir = std::env::temp_dir().join(format!("palr-retrievers-{}", std::process::id()));
    fs::create_dir_all(&dir).map_err(OpenError::Missing)?;
    let n = COPIES.fetch_add(1, Ordering::Relaxed);
    let name = original
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let copy = dir.join(format!("gen{n}-{name}"));
    fs::copy(original, &copy).map_err(OpenError::Missing)?;
    Ok(copy)
}

fn load_entry(path: &Path) -> Result<EntryFn, OpenError> {
    // SAFETY: loading runs the library's initialisers. We only load files the operator
    // configured as plugins; that trust is the premise of a plugin system.
    let lib = unsafe { libloading::Library::new(path) }
        .map_err(|e| OpenError::NotLoadable(e.to_string()))?;
    // SAFETY: the ABI fixes the entry symbol's type as `EntryFn`.
    let entry = unsafe { lib.get::<EntryFn>(ENTRY_SYMBOL) }.map(|sym| *sym);
    // Never unload, not even a library that turned out not to be a plugin: it has already
    // run its initialisers.
    std::mem::forget(lib);
    entry.map_err(|e| OpenError::NoEntry(e.to_string()))
}
