//! `palr data ...`: fetch and inspect data sets (thin glue over `palr::data`).

use std::ffi::OsString;
use std::path::PathBuf;

use crate::data::{
    self, Dataset, FetchOptions, FetchOutcome, Format, LoadOptions, Split, UnknownItems,
};
use anyhow::Context;

#[derive(clap::Subcommand, Debug)]
pub enum DataCmd {
    /// Download a public data set into the data directory (does nothing if already there).
    Fetch {
        /// Data set name; known: ml-100k.
        dataset: String,
        /// Data sets go to <data-dir>/<dataset>/ [default: data]
        #[arg(long, env = data::DATA_DIR_ENV)]
        data_dir: Option<PathBuf>,
        /// Downloads are cached here [default: .cache/downloads]
        #[arg(long, env = data::CACHE_DIR_ENV)]
        cache_dir: Option<PathBuf>,
        /// Python interpreter with pip, used to download the package that ships the data.
        #[arg(long, env = "PALR_PYTHON", default_value = "python3")]
        python: OsString,
    },
    /// Load a data set and print its size and leave-one-out split summary.
    Stats {
        /// A data set directory, or a data set name under the data directory (e.g. ml-100k).
        dataset: PathBuf,
        /// Where data set names are looked up [default: data]
        #[arg(long, env = data::DATA_DIR_ENV)]
        data_dir: Option<PathBuf>,
        /// recbole, ml-100k, ml-1m, csv or jsonl [default: detected from the files]
        #[arg(long, value_parser = parse_format)]
        format: Option<Format>,
        /// Drop interactions whose item is not in the catalog instead of failing.
        #[arg(long)]
        skip_unknown_items: bool,
    },
}

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse().map_err(|e: data::DataError| e.to_string())
}

pub fn run(cmd: DataCmd) -> anyhow::Result<()> {
    match cmd {
        DataCmd::Fetch {
            dataset,
            data_dir,
            cache_dir,
            python,
        } => {
            let opts = FetchOptions {
                data_dir: data_dir.unwrap_or_else(data::default_data_dir),
                cache_dir: cache_dir.unwrap_or_else(data::default_cache_dir),
                python,
            };
            match data::fetch(&dataset, &opts).with_context(|| format!("fetching {dataset}"))? {
                FetchOutcome::AlreadyPresent(dir) => {
                    println!("{dataset}: already present in {}", dir.display())
                }
                FetchOutcome::Fetched(dir) => println!("{dataset}: fetched into {}", dir.display()),
            }
            Ok(())
        }
        DataCmd::Stats {
            dataset,
            data_dir,
            format,
            skip_unknown_items,
        } => {
            let dir = if dataset.is_dir() {
                dataset
            } else {
                data_dir
                    .unwrap_or_else(data::default_data_dir)
                    .join(dataset)
            };
            let opts = LoadOptions {
                format,
                unknown_items: if skip_unknown_items {
                    UnknownItems::Skip
                } else {
                    UnknownItems::Error
                },
            };
            let ds = Dataset::load(&dir, &opts)?;
            print_stats(&ds);
            Ok(())
        }
    }
}

fn print_stats(ds: &Dataset) {
    let inter = &ds.interactions;
    let split = Split::leave_one_out(inter);
    println!("format: {}", ds.files.format);
    println!("items file: {}", ds.files.items.display());
    println!("interactions file: {}", ds.files.interactions.display());
    println!("items: {}", ds.catalog.len());
    println!("users: {}", inter.n_users());
    println!("interactions: {}", inter.len());
    println!(
        "ratings: {}",
        if inter.has_ratings() { "yes" } else { "no" }
    );
    println!("skipped (unknown item): {}", ds.skipped_unknown_items);
    println!(
        "users with valid/test targets (>= {} interactions): {}",
        data::MIN_INTERACTIONS,
        split.n_evaluated_users()
    );
    if inter.n_users() > 0 {
        println!(
            "mean interactions per user: {:.1}",
            inter.len() as f64 / inter.n_users() as f64
        );
    }
}
