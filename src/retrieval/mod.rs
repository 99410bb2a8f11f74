//! Retrieval: loads retriever plugins (dynamic libraries speaking the versioned C ABI of
//! `palr_retriever_sdk::abi`) and asks them for candidate items.
//!
//! PALR (Yang et al. 2023) ranks with an LLM only the candidates a cheaper retriever proposes;
//! this module is that first stage's host side. Plugins are loaded from config entries
//! ([`RetrieverSpec`]: name, library path, JSON config) into a [`RetrieverRegistry`], each
//! receiving a read-only view of the training interactions ([`TrainingView`]).
//!
//! Invariants:
//! - plugins see only the C ABI; this module never trusts what comes back: it checks the
//!   count against the capacity, item ranges, duplicates, excluded/history items, finite and
//!   non-increasing scores, status codes and error-text lengths. Violations are errors naming
//!   the plugin and the problem, and are counted per retriever ([`RetrieverStats`]).
//! - libraries are never unloaded (`dlclose` is unsound with thread-local destructors); a
//!   reload of a changed file loads a copy side by side under a new generation.
//! - a plugin that fails to load, has the wrong ABI version, fails or panics in init or in a
//!   query gives an error and leaves the host running. Panics are caught inside the plugin by
//!   the SDK's `declare_retriever!`; a hand-written plugin that unwinds across `extern "C"`
//!   aborts the process by Rust's rules, which no host-side wrapper can prevent.
//! - this module knows nothing of gRPC or the engine; [`RetrievalError::code`] gives the
//!   transport layer a status class to map.

pub mod conformance;
pub mod fusion;
mod library;
mod registry;
mod retriever;
mod view;

pub use fusion::{FusionMethod, FusionSpec};
pub use palr_retriever_sdk::abi::ABI_VERSION;
pub use registry::{
    RetrieverRegistry, RetrieverSpec, Source, default_search_dirs, resolve_library,
};
pub use retriever::{QueryContext, Retriever, RetrieverInfo, RetrieverStats, TrainedOn};
pub use view::{TrainingView, item_table};

use std::path::PathBuf;

/// How a plugin call failed, as reported by the plugin itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginFailure {
    /// The plugin returned an error (`STATUS_ERROR`).
    Error,
    /// The plugin panicked; the SDK caught it (`STATUS_PANIC`).
    Panic,
    /// The plugin says the host broke the ABI (`STATUS_INVALID_ARGUMENT`): a host bug.
    RejectedArguments,
}

impl std::fmt::Display for PluginFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Error => "error",
            Self::Panic => "panic",
            Self::RejectedArguments => "rejected the host's arguments",
        })
    }
}

/// Status class of an error, for the transport layer to map (e.g. to gRPC codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Unknown retriever name (gRPC `NOT_FOUND`).
    NotFound,
    /// The caller's request is malformed (gRPC `INVALID_ARGUMENT`).
    InvalidArgument,
    /// Configuration or start-up problem: bad config entry, library, ABI, view or init
    /// (gRPC `FAILED_PRECONDITION`).
    FailedPrecondition,
    /// The plugin reported a runtime error; retrying or another retriever may work
    /// (gRPC `UNAVAILABLE`).
    Unavailable,
    /// A plugin panicked or broke the ABI contract, or the host did (gRPC `INTERNAL`).
    Internal,
}

/// Errors of the retrieval layer.
#[derive(Debug, thiserror::Error)]
pub enum RetrievalError {
    /// No retriever of that name is loaded.
    #[error("unknown retriever `{name}` (loaded: [{}])", known.join(", "))]
    NotFound {
        /// The name asked for.
        name: String,
        /// Names that are loaded.
        known: Vec<String>,
    },
    /// The request (history, exclusions) is malformed.
    #[error("invalid retrieval request: {0}")]
    InvalidRequest(String),
    /// The training view breaks its invariants.
    #[error("invalid training view: {0}")]
    InvalidView(String),
    /// A config entry is unusable.
    #[error("retriever config `{name}`: {problem}")]
    Config {
        /// The entry's name.
        name: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The library file does not exist where the path says.
    #[error("retriever `{name}`: library `{path}` not found (looked for {searched})")]
    LibraryNotFound {
        /// The retriever's name.
        name: String,
        /// The configured path.
        path: String,
        /// The files tried.
        searched: String,
    },
    /// The file exists but is not a loadable plugin (not a library, no entry symbol, bad
    /// table).
    #[error("retriever `{name}`: cannot load `{}`: {reason}", path.display())]
    Load {
        /// The retriever's name.
        name: String,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The plugin speaks another ABI version.
    #[error(
        "retriever `{name}`: ABI version mismatch for `{}`: host speaks {host}, {}; rebuild the \
         plugin with {}",
        path.display(),
        match plugin {
            Some(v) => format!("plugin's table says {v}"),
            None => "plugin does not support it (entry returned null)".to_owned(),
        },
        palr_retriever_sdk::abi::sdk_for_abi(*host).unwrap_or("the SDK of the host's ABI version")
    )]
    AbiMismatch {
        /// The retriever's name.
        name: String,
        /// The file.
        path: PathBuf,
        /// The host's ABI version.
        host: u32,
        /// The version in the plugin's table, if it returned one.
        plugin: Option<u32>,
    },
    /// The plugin's `create` failed.
    #[error("retriever `{name}`: init failed ({failure}): {message}")]
    Init {
        /// The retriever's name.
        name: String,
        /// Error, panic or rejected arguments.
        failure: PluginFailure,
        /// The plugin's message.
        message: String,
    },
    /// The plugin's `retrieve` failed.
    #[error("retriever `{name}`: retrieve failed ({failure}): {message}")]
    Retrieve {
        /// The retriever's name.
        name: String,
        /// Error, panic or rejected arguments.
        failure: PluginFailure,
        /// The plugin's message.
        message: String,
    },
    /// The plugin's pre-trained state was fitted on another view than the evaluation view it
    /// was given: it may have seen the targets.
    #[error(
        "retriever `{name}`: its pre-trained state was fitted on the view {trained_on}, but it \
         was given the view {view}; a model fitted on other interactions than the evaluated \
         view may have seen the targets. Train it on this view (`palr data export-view \
         --stage STAGE`, then the plugin's trainer) or point it at weights for this view"
    )]
    TrainedOnOtherView {
        /// The retriever's name.
        name: String,
        /// What the plugin declared, `stage (fingerprint prefix)`.
        trained_on: String,
        /// The view it was given, `stage (fingerprint prefix)`.
        view: String,
    },
    /// The plugin returned something the ABI forbids.
    #[error("retriever `{name}` broke the plugin ABI contract: {problem}")]
    Contract {
        /// The retriever's name.
        name: String,
        /// The violation.
        problem: String,
    },
}

impl RetrievalError {
    /// The status class of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotFound { .. } => ErrorCode::NotFound,
            Self::InvalidRequest(_) => ErrorCode::InvalidArgument,
            Self::InvalidView(_)
            | Self::Config { .. }
            | Self::LibraryNotFound { .. }
            | Self::Load { .. }
            | Self::AbiMismatch { .. }
            | Self::TrainedOnOtherView { .. }
            | Self::Init { .. } => ErrorCode::FailedPrecondition,
            Self::Retrieve {
                failure: PluginFailure::Error,
                ..
            } => ErrorCode::Unavailable,
            Self::Retrieve { .. } | Self::Contract { .. } => ErrorCode::Internal,
        }
    }
}

/// Result alias of this module.
pub type Result<T, E = RetrievalError> = std::result::Result<T, E>;

#[cfg(test)]
mod plugin_tests {
    //! Host paths that need a real library and a host of another ABI version, or a plugin file
    //! replaced on disk. Needs the workspace's cdylibs: `cargo build --release --workspace`.

    use std::path::PathBuf;
    use std::sync::Arc;

    use super::*;

    fn built(lib: &str) -> PathBuf {
        resolve_library(lib, &default_search_dirs()).unwrap_or_else(|tried| {
            panic!("{lib} not built (tried {tried:?}); run `cargo build --release --workspace`")
        })
    }

    fn registry() -> RetrieverRegistry {
        let view = TrainingView::from_sequences(4, &[vec![0, 1], vec![2]]).unwrap();
        RetrieverRegistry::new(Arc::new(view))
    }

    #[test]
    fn abi_mismatch_is_caught_both_ways() {
        let reg = registry();
        // An SDK plugin asked for ABI 2 declines: the entry returns null.
        let spec = RetrieverSpec::new("tk", "palr_retriever_testkit", "{}");
        let e = reg.load_with_abi(&spec, ABI_VERSION + 1).unwrap_err();
        assert!(
            matches!(e, RetrievalError::AbiMismatch { plugin: None, host, .. } if host == ABI_VERSION + 1),
            "{e}"
        );
        assert!(e.to_string().contains("entry returned null"), "{e}");
        assert_eq!(e.code(), ErrorCode::FailedPrecondition);
        // The raw testkit ignores the host's version and returns its v1 table anyway: the
        // host's own check of the table's version catches it.
        let spec = RetrieverSpec::new("raw", "palr_retriever_testkit_raw", "ok");
        let e = reg.load_with_abi(&spec, ABI_VERSION + 1).unwrap_err();
        assert!(
            matches!(e, RetrievalError::AbiMismatch { plugin: Some(v), .. } if v == ABI_VERSION),
            "{e}"
        );
        assert!(
            e.to_string().contains(&format!("table says {ABI_VERSION}")),
            "{e}"
        );
        // The message names the SDK the host's version needs.
        assert!(
            e.to_string().contains(&format!(
                "rebuild the plugin with {}",
                palr_retriever_sdk::abi::sdk_for_abi(ABI_VERSION + 1).unwrap_or("the SDK")
            )),
            "{e}"
        );
        // Nothing was registered, and the same libraries load fine at the right version.
        assert!(reg.names().is_empty());
        reg.load(&RetrieverSpec::new(
            "raw",
            "palr_retriever_testkit_raw",
            "ok",
        ))
        .unwrap();
        assert_eq!(
            reg.retrieve("raw", &[1], 2, &[]).unwrap(),
            vec![(0, 0.0), (2, -2.0)]
        );
    }

    #[test]
    fn replaced_file_reloads_side_by_side() {
        let dir = std::env::temp_dir().join(format!("palr-swap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("libswap.so");
        // Deploy by rename, as one must: overwriting a mapped library in place corrupts it.
        let deploy = |from: PathBuf| {
            let staging = dir.join("staging.so");
            std::fs::copy(from, &staging).unwrap();
            std::fs::rename(&staging, &target).unwrap();
        };
        let reg = registry();
        let spec = RetrieverSpec::new("swap", target.to_str().unwrap(), "");
        deploy(built("palr_retriever_testkit"));
        let first = reg.load(&spec).unwrap();
        assert_eq!(first.plugin_name, "testkit");
        assert_eq!(first.loaded_from, std::fs::canonicalize(&target).unwrap());
        let old = reg.get("swap").unwrap();

        deploy(built("palr_retriever_testkit_raw"));
        let second = reg.load(&spec).unwrap();
        assert_eq!(
            second.plugin_name, "testkit-raw",
            "the new file must be loaded"
        );
        assert!(second.generation > first.generation);
        assert_ne!(second.loaded_from, first.loaded_from);
        // The old generation keeps serving whoever still holds it.
        assert_eq!(old.info().plugin_name, "testkit");
        assert_eq!(old.retrieve(&[0], 1, &[]).unwrap(), vec![(1, -1.0)]);
        drop(old);
        // Loading the unchanged file again reuses the mapping: no new copy.
        let third = reg.load(&spec).unwrap();
        assert_eq!(third.loaded_from, second.loaded_from);
        assert_eq!(reg.list().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
