//! Loading a data set directory: format detection and the shared row handling of all loaders.
//!
//! Formats (file names a directory must hold):
//! - [`Format::RecBole`]: RecBole atomic files `<name>.item` + `<name>.inter` (tab separated,
//!   header of `field:type` tokens; RecBole docs, "Atomic Files").
//! - [`Format::MovieLens100k`]: GroupLens `u.item` (pipe separated, latin-1, 19 genre flags;
//!   genre names from `u.genre` when present) + `u.data` (tab separated).
//! - [`Format::MovieLens1m`]: GroupLens `movies.dat` + `ratings.dat` (`::` separated, latin-1).
//! - [`Format::Csv`]: `items.csv` (`item_id,title[,year][,genres][,...]`) + `interactions.csv`
//!   (`user_id,item_id,timestamp[,rating]`), RFC 4180 quoting, UTF-8.
//! - [`Format::Jsonl`]: `items.jsonl` + `interactions.jsonl`, one JSON object per line with the
//!   same keys as the CSV columns.

mod movielens;
mod plain;
mod recbole;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::catalog::{Catalog, CatalogBuilder, Item, PushError};
use super::error::{DataError, Location, Result};
use super::interactions::{Interactions, InteractionsBuilder};

/// A data set's on-disk format: which files a directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// RecBole atomic files `<name>.item` + `<name>.inter` (tab separated, `field:type` header).
    RecBole,
    /// GroupLens `u.item` (pipe separated, latin-1, genre flags) + `u.data` (tab separated).
    MovieLens100k,
    /// GroupLens `movies.dat` + `ratings.dat` (`::` separated, latin-1).
    MovieLens1m,
    /// `items.csv` (`item_id,title[,...]`) + `interactions.csv`
    /// (`user_id,item_id,timestamp[,rating]`), quoted fields allowed, UTF-8.
    Csv,
    /// `items.jsonl` + `interactions.jsonl`: one JSON object per line, keys as the CSV columns.
    Jsonl,
}

impl Format {
    pub const ALL: [Format; 5] = [
        Format::RecBole,
        Format::MovieLens100k,
        Format::MovieLens1m,
        Format::Csv,
        Format::Jsonl,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Format::RecBole => "recbole",
            Format::MovieLens100k => "ml-100k",
            Format::MovieLens1m => "ml-1m",
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Format> {
        let lower = s.to_ascii_lowercase();
        Format::ALL
            .into_iter()
            .find(|f| f.name() == lower)
            .ok_or_else(|| DataError::Invalid {
                msg: format!(
                    "unknown data format `{s}`; known: {}",
                    Format::ALL.map(|f| f.name()).join(", ")
                ),
            })
    }
}

/// What to do with an interaction whose item is not in the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownItems {
    /// Fail, naming the first such line (default).
    #[default]
    Error,
    /// Drop such rows and count them in [`Dataset::skipped_unknown_items`].
    Skip,
}

/// How to load a directory.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `None` = detect from the directory's files.
    pub format: Option<Format>,
    pub unknown_items: UnknownItems,
}

/// The files of one data set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFiles {
    pub format: Format,
    pub items: PathBuf,
    pub interactions: PathBuf,
}

/// A loaded data set.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub catalog: Catalog,
    pub interactions: Interactions,
    pub files: SourceFiles,
    /// Interaction rows dropped under [`UnknownItems::Skip`].
    pub skipped_unknown_items: usize,
}

impl Dataset {
    /// Loads the data set in `dir` (catalog, then interactions against it).
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Dataset> {
        let files = locate(dir, opts.format)?;
        let catalog = load_items(&files)?;
        let mut rows = RowSink::new(&catalog, &files.items, opts.unknown_items);
        match files.format {
            Format::RecBole => recbole::load_interactions(&files.interactions, &mut rows)?,
            Format::MovieLens100k => movielens::load_u_data(&files.interactions, &mut rows)?,
            Format::MovieLens1m => movielens::load_ratings_dat(&files.interactions, &mut rows)?,
            Format::Csv => plain::load_interactions_csv(&files.interactions, &mut rows)?,
            Format::Jsonl => plain::load_interactions_jsonl(&files.interactions, &mut rows)?,
        }
        if rows.builder.is_empty() {
            return Err(DataError::Invalid {
                msg: format!(
                    "{}: no interactions{}",
                    files.interactions.display(),
                    if rows.skipped > 0 {
                        format!(" left after skipping {} with unknown items", rows.skipped)
                    } else {
                        String::new()
                    }
                ),
            });
        }
        let skipped = rows.skipped;
        let interactions = rows.builder.build(&catalog);
        Ok(Dataset {
            catalog,
            interactions,
            files,
            skipped_unknown_items: skipped,
        })
    }
}

/// Loads only the catalog of the data set in `dir` (what the ranking service needs for titles).
pub fn load_catalog(dir: &Path, format: Option<Format>) -> Result<(Catalog, SourceFiles)> {
    let files = locate(dir, format)?;
    let catalog = load_items(&files)?;
    Ok((catalog, files))
}

fn load_items(files: &SourceFiles) -> Result<Catalog> {
    let path = &files.items;
    let mut items = ItemSink::new(path);
    match files.format {
        Format::RecBole => recbole::load_items(path, &mut items)?,
        Format::MovieLens100k => movielens::load_u_item(path, &mut items)?,
        Format::MovieLens1m => movielens::load_movies_dat(path, &mut items)?,
        Format::Csv => plain::load_items_csv(path, &mut items)?,
        Format::Jsonl => plain::load_items_jsonl(path, &mut items)?,
    }
    if items.builder.is_empty() {
        return Err(DataError::Invalid {
            msg: format!("{}: no items", path.display()),
        });
    }
    Ok(items.builder.build())
}

/// Finds the files of `format` in `dir`, or detects the format when `None`.
pub fn locate(dir: &Path, format: Option<Format>) -> Result<SourceFiles> {
    if !dir.is_dir() {
        return Err(DataError::Detect {
            dir: dir.to_path_buf(),
            reason: "not a directory (for MovieLens-100k run `palr data fetch ml-100k`)".into(),
        });
    }
    match format {
        Some(f) => candidates(dir, f)?.ok_or_else(|| DataError::Detect {
            dir: dir.to_path_buf(),
            reason: format!("format {f} needs {}", needs(f)),
        }),
        None => {
            let mut found = Vec::new();
            for f in Format::ALL {
                if let Some(files) = candidates(dir, f)? {
                    found.push(files);
                }
            }
            match found.len() {
                1 => Ok(found.pop().expect("one")),
                0 => Err(DataError::Detect {
                    dir: dir.to_path_buf(),
                    reason: format!(
                        "none of the known layouts is there; looked for {}",
                        Format::ALL
                            .map(|f| format!("{f} ({})", needs(f)))
                            .join("; ")
                    ),
                }),
                _ => Err(DataError::Detect {
                    dir: dir.to_path_buf(),
                    reason: format!(
                        "several layouts match ({}); pick one with --format / LoadOptions::format",
                        found
                            .iter()
                            .map(|f| f.format.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }),
            }
        }
    }
}

fn needs(f: Format) -> &'static str {
    match f {
        Format::RecBole => "<name>.item and <name>.inter",
        Format::MovieLens100k => "u.item and u.data",
        Format::MovieLens1m => "movies.dat and ratings.dat",
        Format::Csv => "items.csv and interactions.csv",
        Format::Jsonl => "items.jsonl and interactions.jsonl",
    }
}

fn candidates(dir: &Path, f: Format) -> Result<Option<SourceFiles>> {
    let pair = |items: &str, inter: &str| {
        let (i, n) = (dir.join(items), dir.join(inter));
        (i.is_file() && n.is_file()).then_some(SourceFiles {
            format: f,
            items: i,
            interactions: n,
        })
    };
    Ok(match f {
        Format::MovieLens100k => pair("u.item", "u.data"),
        Format::MovieLens1m => pair("movies.dat", "ratings.dat"),
        Format::Csv => pair("items.csv", "interactions.csv"),
        Format::Jsonl => pair("items.jsonl", "interactions.jsonl"),
        Format::RecBole => {
            let rd = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
            let mut stems = Vec::new();
            for entry in rd {
                let p = entry.map_err(|e| DataError::io(dir, e))?.path();
                if p.extension().is_some_and(|e| e == "item")
                    && p.with_extension("inter").is_file()
                    && let Some(stem) = p.file_stem().and_then(|s| s.to_str())
                {
                    stems.push(stem.to_string());
                }
            }
            stems.sort();
            // RecBole names a data set's files after its directory; prefer that stem.
            let dir_name = dir.file_name().and_then(|s| s.to_str()).unwrap_or("");
            let stem = if stems.iter().any(|s| s == dir_name) {
                Some(dir_name.to_string())
            } else if stems.len() > 1 {
                return Err(DataError::Detect {
                    dir: dir.to_path_buf(),
                    reason: format!(
                        "several RecBole data sets ({}); rename or move all but one",
                        stems.join(", ")
                    ),
                });
            } else {
                stems.pop()
            };
            stem.and_then(|s| pair(&format!("{s}.item"), &format!("{s}.inter")))
        }
    })
}

/// Receives catalog rows from a loader, turning builder refusals into line-numbered errors.
pub(crate) struct ItemSink<'a> {
    path: &'a Path,
    builder: CatalogBuilder,
    lines: Vec<u64>,
}

impl<'a> ItemSink<'a> {
    fn new(path: &'a Path) -> Self {
        ItemSink {
            path,
            builder: CatalogBuilder::new(),
            lines: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, line: u64, item: Item) -> Result<()> {
        let path = self.path;
        match self.builder.push(item) {
            Ok(_) => {
                self.lines.push(line);
                Ok(())
            }
            Err(PushError::Duplicate { id, first, .. }) => Err(DataError::DuplicateItem {
                at: Location::new(path, line),
                item_id: id,
                first_line: self.lines[first as usize],
            }),
            Err(e) => Err(DataError::parse(path, line, e.to_string())),
        }
    }
}

/// Receives interaction rows from a loader: resolves item ids against the catalog under the
/// unknown-item policy.
pub(crate) struct RowSink<'a> {
    catalog: &'a Catalog,
    catalog_path: &'a Path,
    policy: UnknownItems,
    builder: InteractionsBuilder,
    skipped: usize,
}

impl<'a> RowSink<'a> {
    fn new(catalog: &'a Catalog, catalog_path: &'a Path, policy: UnknownItems) -> Self {
        RowSink {
            catalog,
            catalog_path,
            policy,
            builder: InteractionsBuilder::new(),
            skipped: 0,
        }
    }

    pub(crate) fn push(
        &mut self,
        at: (&Path, u64),
        user_id: &str,
        item_id: &str,
        timestamp: i64,
        rating: Option<f32>,
    ) -> Result<()> {
        if user_id.is_empty() {
            return Err(DataError::parse(at.0, at.1, "empty user id"));
        }
        match self.catalog.index_of(item_id) {
            Some(item) => {
                self.builder.push(user_id, item, timestamp, rating);
                Ok(())
            }
            None => match self.policy {
                UnknownItems::Skip => {
                    self.skipped += 1;
                    Ok(())
                }
                UnknownItems::Error => Err(DataError::UnknownItem {
                    at: Location::new(at.0, at.1),
                    item_id: item_id.to_string(),
                    catalog: self.catalog_path.to_path_buf(),
                }),
            },
        }
    }
}

/// Parses a timestamp: an integer, or a float with no fractional part (RecBole declares
/// timestamps `float`).
pub(crate) fn parse_timestamp(path: &Path, line: u64, s: &str) -> Result<i64> {
    let s = s.trim();
    if let Ok(v) = s.parse::<i64>() {
        return Ok(v);
    }
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v.fract() == 0.0 && v.abs() < 9.0e18 => Ok(v as i64),
        _ => Err(DataError::parse(
            path,
            line,
            format!(
                "timestamp `{s}` is not an integer (expected seconds since the epoch, or any integer time unit)"
            ),
        )),
    }
}

/// Parses an optional rating: empty = none; otherwise a finite number.
pub(crate) fn parse_rating(path: &Path, line: u64, s: &str) -> Result<Option<f32>> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    match s.parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(Some(v)),
        _ => Err(DataError::parse(
            path,
            line,
            format!("rating `{s}` is not a finite number"),
        )),
    }
}

/// A year field: `Some` when it is an integer, else `None` (the caller keeps the raw text as an
/// attribute; MovieLens has "unknown" years).
pub(crate) fn parse_year(s: &str) -> Option<i32> {
    s.trim().parse::<i32>().ok()
}

/// Field names the loaders treat specially.
pub(crate) const TITLE_FIELDS: [&str; 4] = ["title", "movie_title", "item_title", "item_name"];
pub(crate) const YEAR_FIELDS: [&str; 2] = ["year", "release_year"];
pub(crate) const GENRE_FIELDS: [&str; 4] = ["genres", "genre", "class", "categories"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names_round_trip() {
        for f in Format::ALL {
            assert_eq!(f.name().parse::<Format>().unwrap(), f);
        }
        assert_eq!("RecBole".parse::<Format>().unwrap(), Format::RecBole);
        let err = "parquet".parse::<Format>().unwrap_err().to_string();
        assert!(err.contains("unknown data format `parquet`"), "{err}");
        assert!(err.contains("ml-100k"), "{err}");
    }

    #[test]
    fn timestamps_accept_integers_and_integral_floats_only() {
        let p = Path::new("f");
        assert_eq!(parse_timestamp(p, 1, "881250949").unwrap(), 881250949);
        assert_eq!(parse_timestamp(p, 1, " 881250949.0 ").unwrap(), 881250949);
        assert_eq!(parse_timestamp(p, 1, "-5").unwrap(), -5);
        let err = parse_timestamp(p, 3, "12.5").unwrap_err().to_string();
        assert!(
            err.starts_with("f:3: timestamp `12.5` is not an integer"),
            "{err}"
        );
        assert!(parse_timestamp(p, 3, "abc").is_err());
        assert!(parse_timestamp(p, 3, "nan").is_err());
        assert!(parse_timestamp(p, 3, "1e300").is_err());
        assert!(parse_timestamp(p, 3, "").is_err());
    }

    #[test]
    fn ratings_are_optional_finite_numbers() {
        let p = Path::new("f");
        assert_eq!(parse_rating(p, 1, "4").unwrap(), Some(4.0));
        assert_eq!(parse_rating(p, 1, "3.5").unwrap(), Some(3.5));
        assert_eq!(parse_rating(p, 1, "").unwrap(), None);
        assert!(parse_rating(p, 1, "inf").is_err());
        assert!(parse_rating(p, 1, "NaN").is_err());
        let err = parse_rating(p, 9, "five").unwrap_err().to_string();
        assert_eq!(err, "f:9: rating `five` is not a finite number");
    }
}
