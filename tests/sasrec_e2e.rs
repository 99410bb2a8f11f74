//! SASRec end to end: palr exports a view of a small synthetic data set, the PyTorch trainer
//! (`scripts/train_sasrec.py`) fits a tiny model on it and dumps its own top items for some
//! histories, and the Rust plugin (`plugins/sasrec`) loaded through the host must return the
//! same items with the same scores. Then the leak rule: the same weights are refused on the
//! test view and on all interactions.
//!
//! Needs the trainers' Python environment: `scripts/train-venv.sh` (scripts/test.sh runs it)
//! makes `.cache/train-venv`; `PALR_TRAIN_PYTHON` points elsewhere. Needs the plugins built
//! (`cargo build --release --workspace`).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use palr::data::{Dataset, Format, LoadOptions, Split};
use palr::eval::{ViewStage, training_view};
use palr::retrieval::{RetrieverRegistry, RetrieverSpec};

const N_ITEMS: u32 = 40;

/// 60 users walking the items in steps of +1 (mod 40) from different starts: "after i comes
/// i + 1" is the pattern to learn.
fn write_data(dir: &Path) {
    let mut items = String::from("item_id,title,year,genres\n");
    for i in 0..N_ITEMS {
        items.push_str(&format!("i{i},Item {i},{},G{}\n", 1990 + i, i % 3));
    }
    std::fs::write(dir.join("items.csv"), items).unwrap();
    let mut inter = String::from("user_id,item_id,timestamp\n");
    for u in 0..60u32 {
        let len = 6 + (u % 10);
        for t in 0..len {
            let item = (u * 7 + t) % N_ITEMS;
            inter.push_str(&format!("u{u},i{item},{}\n", 1000 + t));
        }
    }
    std::fs::write(dir.join("interactions.csv"), inter).unwrap();
}

fn python() -> PathBuf {
    let p = std::env::var_os("PALR_TRAIN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::repo().join(".cache/train-venv/bin/python"));
    assert!(
        p.exists(),
        "{} not found: run scripts/train-venv.sh (scripts/test.sh does) or set PALR_TRAIN_PYTHON \
         to a Python with scripts/requirements-train.txt installed",
        p.display()
    );
    p
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[derive(serde::Deserialize)]
struct Dumped {
    history: Vec<u32>,
    top: Vec<(u32, f32)>,
}

#[test]
fn trainer_scores_equal_the_plugins_and_views_are_enforced() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    write_data(&data);
    let view_file = tmp.path().join("view.json");
    run(Command::new(env!("CARGO_BIN_EXE_palr"))
        .args(["data", "export-view"])
        .arg(&data)
        .args(["--format", "csv", "--stage", "valid", "--out"])
        .arg(&view_file));
    // Histories to compare on: one item, a few, and longer than max_len (12): the last 12 count.
    let histories: Vec<Vec<u32>> = vec![
        vec![3],
        vec![10, 11, 12],
        vec![30, 31, 32, 33, 34, 35],
        (0..20).collect(),
        vec![39, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13],
    ];
    let hist_file = tmp.path().join("histories.json");
    std::fs::write(&hist_file, serde_json::to_string(&histories).unwrap()).unwrap();
    let weights = tmp.path().join("weights");
    std::fs::create_dir(&weights).unwrap();
    let dump = tmp.path().join("scores.json");
    run(Command::new(python())
        .arg(common::repo().join("scripts/train_sasrec.py"))
        .arg("--view")
        .arg(&view_file)
        .arg("--out")
        .arg(weights.join("valid.safetensors"))
        .arg("--log-dir")
        .arg(tmp.path().join("logs"))
        .args([
            "--hidden", "16", "--blocks", "2", "--heads", "2", "--inner", "32",
        ])
        .args([
            "--max-len",
            "12",
            "--dropout",
            "0.1",
            "--lr",
            "0.005",
            "--batch-size",
            "32",
        ])
        .args([
            "--max-epochs",
            "25",
            "--patience",
            "25",
            "--seed",
            "1",
            "--threads",
            "2",
        ])
        .args(["--quiet", "--dump-k", "10", "--dump-scores"])
        .arg(&dump)
        .arg("--dump-histories")
        .arg(&hist_file));
    let dumped: Vec<Dumped> =
        serde_json::from_str(&std::fs::read_to_string(&dump).unwrap()).unwrap();
    assert_eq!(dumped.len(), histories.len());

    // The plugin over the same view, through the host.
    let ds = Dataset::load(
        &data,
        &LoadOptions {
            format: Some(Format::Csv),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let split = Split::leave_one_out(&ds.interactions);
    let registry_on = |stage: ViewStage| {
        let view = training_view(&split, &ds.interactions, &ds.catalog, stage).unwrap();
        RetrieverRegistry::new(Arc::new(view))
    };
    let config = serde_json::json!({ "weights": weights }).to_string();
    let spec = RetrieverSpec::new("sasrec", "palr_retriever_sasrec", config);
    let reg = registry_on(ViewStage::Valid);
    let info = reg.load(&spec).unwrap();
    assert_eq!(info.trained_on.as_ref().unwrap().stage, "valid");
    assert!(!info.stale_snapshot);
    let mut next_item_first = 0;
    for d in &dumped {
        let got = reg.retrieve("sasrec", &d.history, 10, &[]).unwrap();
        let want: HashMap<u32, f32> = d.top.iter().copied().collect();
        // Every item the plugin ranks in its top 8 is in the trainer's top 10 with the same
        // score (the 9th/10th may swap with an 11th within float noise).
        for (rank, (item, score)) in got.iter().take(8).enumerate() {
            let w = want.get(item).unwrap_or_else(|| {
                panic!("history {:?}: plugin's #{rank} {item} not in the trainer's top 10 {:?}; plugin {got:?}", d.history, d.top)
            });
            assert!(
                (score - w).abs() <= 1e-3 * (1.0 + w.abs()),
                "history {:?}: item {item} scored {score} by the plugin, {w} by the trainer",
                d.history
            );
        }
        let last = *d.history.last().unwrap();
        if got[0].0 == (last + 1) % N_ITEMS {
            next_item_first += 1;
        }
    }
    assert!(
        next_item_first >= 3,
        "the tiny model should have learnt 'i + 1 follows i' ({next_item_first} of 5)"
    );

    // The same weights on other views: refused on the test view (they did not see its
    // validation items, and a test-view model must not be a valid-view one), and on all
    // interactions there is no snapshot of all interactions to fall back to.
    let e = registry_on(ViewStage::Test)
        .load(&spec)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no weights fitted on this view (stage test")
            && e.contains("valid.safetensors (stage valid")
            && e.contains("palr data export-view --stage test"),
        "{e}"
    );
    let e = registry_on(ViewStage::All)
        .load(&spec)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no weights trained on all interactions"), "{e}");
}
