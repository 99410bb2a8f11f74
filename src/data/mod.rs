//! The data layer: the item catalog, user-item interactions, their loaders, the leave-one-out
//! split and the data set fetcher.
//!
//! - [`Catalog`]: external item ids (strings on the wire) <-> dense `u32` indices, titles for
//!   prompts, attributes.
//! - [`Interactions`]: per-user, time-ordered item sequences as flat arrays (offsets + items),
//!   the layout retriever plugins receive over the C ABI.
//! - [`Dataset::load`]: RecBole atomic files, raw MovieLens 100k/1M, plain CSV/JSONL (see
//!   [`Format`]); the format is detected from a directory's files.
//! - [`Split`]: the leave-one-out protocol of PALR (Yang et al. 2023, "PALR: Personalization
//!   Aware LLMs for Recommendation", Sec. 4), the single source of truth for evaluation and
//!   fine-tuning data.
//! - [`fetch()`]: `palr data fetch ml-100k`.
//!
//! This module knows nothing of the engine, prompts, plugins or gRPC; they depend on it, never
//! the other way round.

mod catalog;
mod error;
mod fetch;
mod ids;
mod interactions;
mod load;
mod split;
mod text;

use std::path::PathBuf;

pub use catalog::{
    Catalog, CatalogBuilder, Item, PushError, TitleStyle, clean_title, display_title,
};
pub use error::{DataError, Location, Result};
pub use fetch::{FetchOptions, FetchOutcome, fetch, known_datasets};
pub use ids::IdOrder;
pub use interactions::{Interactions, InteractionsBuilder, Sequences};
pub use load::{Dataset, Format, LoadOptions, SourceFiles, UnknownItems, load_catalog, locate};
pub use split::{Example, MIN_INTERACTIONS, Split, Stage, UserSplit};

/// Environment variable that overrides [`default_data_dir`].
pub const DATA_DIR_ENV: &str = "PALR_DATA_DIR";
/// Environment variable that overrides [`default_cache_dir`].
pub const CACHE_DIR_ENV: &str = "PALR_CACHE_DIR";

/// Where data sets live: `$PALR_DATA_DIR` if set and non-empty, else `data` (relative to the
/// working directory). Data set `name` is in `default_data_dir().join(name)`.
pub fn default_data_dir() -> PathBuf {
    env_dir(DATA_DIR_ENV, "data")
}

/// Where downloads are cached: `$PALR_CACHE_DIR` if set and non-empty, else `.cache/downloads`.
pub fn default_cache_dir() -> PathBuf {
    env_dir(CACHE_DIR_ENV, ".cache/downloads")
}

fn env_dir(var: &str, default: &str) -> PathBuf {
    dir_or_default(std::env::var_os(var), default)
}

fn dir_or_default(value: Option<std::ffi::OsString>, default: &str) -> PathBuf {
    value
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(default), PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_override_wins_unless_empty() {
        assert_eq!(dir_or_default(None, "data"), PathBuf::from("data"));
        assert_eq!(
            dir_or_default(Some("".into()), "data"),
            PathBuf::from("data")
        );
        assert_eq!(
            dir_or_default(Some("/srv/d".into()), "data"),
            PathBuf::from("/srv/d")
        );
    }
}
