//! `palr data ...`: fetch and inspect data sets (thin glue over `palr::data`).

use std::ffi::OsString;
use std::path::PathBuf;

use crate::data::{
    self, Dataset, FetchOptions, FetchOutcome, Format, LoadOptions, Split, UnknownItems,
};
use crate::eval::ViewStage;
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
        #[command(flatten)]
        source: DatasetArgs,
    },
    /// Write the exact training view of a stage as JSON, for trainers outside palr (e.g.
    /// scripts/train_sasrec.py): item ids in index order, each user's sequence of item
    /// indices, the view's fingerprint (what a plugin's weights record and the host checks),
    /// and for `valid` each user's validation target.
    ExportView {
        #[command(flatten)]
        source: DatasetArgs,
        /// valid (each user's training part), test (plus the validation item) or all
        /// (every interaction, what the server learns from by default).
        #[arg(long, value_parser = parse_stage)]
        stage: ViewStage,
        /// Output file ("-" = stdout).
        #[arg(long)]
        out: PathBuf,
    },
}

/// Which data set to load, and how.
#[derive(clap::Args, Debug)]
pub struct DatasetArgs {
    /// A data set directory, or a data set name under the data directory (e.g. ml-100k).
    #[arg(default_value = "ml-100k")]
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
}

impl DatasetArgs {
    fn load(self) -> anyhow::Result<Dataset> {
        let dir = if self.dataset.is_dir() {
            self.dataset
        } else {
            self.data_dir
                .unwrap_or_else(data::default_data_dir)
                .join(self.dataset)
        };
        let opts = LoadOptions {
            format: self.format,
            unknown_items: if self.skip_unknown_items {
                UnknownItems::Skip
            } else {
                UnknownItems::Error
            },
        };
        Ok(Dataset::load(&dir, &opts)?)
    }
}

fn parse_stage(s: &str) -> Result<ViewStage, String> {
    s.parse().map_err(|e: crate::eval::EvalError| e.to_string())
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
        DataCmd::Stats { source } => {
            print_stats(&source.load()?);
            Ok(())
        }
        DataCmd::ExportView { source, stage, out } => {
            let ds = source.load()?;
            let json = export_view(&ds, stage)?;
            if out.as_os_str() == "-" {
                println!("{json}");
            } else {
                std::fs::write(&out, json + "\n")
                    .with_context(|| format!("writing {}", out.display()))?;
                eprintln!("{stage} view written to {}", out.display());
            }
            Ok(())
        }
    }
}

/// The view file `palr data export-view` writes (format `palr-training-view/1`).
pub fn export_view(ds: &Dataset, stage: ViewStage) -> anyhow::Result<String> {
    let inter = &ds.interactions;
    let split = Split::leave_one_out(inter);
    let view = crate::eval::training_view(&split, inter, &ds.catalog, stage)?;
    let sequences: Vec<&[u32]> = (0..view.n_users()).map(|u| view.sequence(u)).collect();
    let mut doc = serde_json::json!({
        "format": "palr-training-view/1",
        "stage": stage.name(),
        "fingerprint": view.fingerprint(),
        "n_items": view.n_items(),
        "n_users": view.n_users(),
        "n_interactions": view.n_interactions(),
        "item_ids": ds.catalog.items().iter().map(|it| it.id.as_str()).collect::<Vec<_>>(),
        "user_ids": inter.user_ids(),
        "sequences": sequences,
    });
    if stage == ViewStage::Valid {
        // The validation target of each user (null for users too short to have one): what a
        // trainer may select its settings on. Test targets are never exported.
        let targets: Vec<Option<u32>> = (0..split.n_users() as u32)
            .map(|u| split.valid(u).map(|e| e.target))
            .collect();
        doc["valid_targets"] = serde_json::json!(targets);
    }
    Ok(doc.to_string())
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
