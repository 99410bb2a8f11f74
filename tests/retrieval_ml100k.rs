//! Quality sanity check of the baseline retrievers on MovieLens-100k (leave-one-out).
//!
//! Ignored by default (needs the dataset):
//! `PALR_ML100K_INTER=/path/to/ml-100k.inter cargo test --release --test retrieval_ml100k -- --ignored --nocapture`
//! (the RecBole atomic file: `user_id:token item_id:token rating:float timestamp:float`).
//!
//! Protocol (as `tests/fixtures/ml100k-split-check.json`): every rating is an interaction; per
//! user sort by (timestamp, item id as a number); test = last, valid = second to last, train =
//! the rest. Retrievers are trained on the train parts; for the test split a user's history is
//! train + valid, the target is the test item, history items are excluded. Item indices are
//! item ids sorted numerically. Reports HR@10 and NDCG@10 over all users.

use std::collections::BTreeMap;
use std::sync::Arc;

use palr::retrieval::{RetrieverRegistry, RetrieverSpec, TrainingView};

struct Split {
    n_items: u32,
    /// Per user (ascending id): (id, train indices, valid index, test index).
    users: Vec<(u64, Vec<u32>, u32, u32)>,
    item_ids: Vec<u64>,
}

fn load(path: &str) -> Split {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let mut lines = text.lines();
    let header = lines.next().expect("header line");
    assert!(
        header.starts_with("user_id:token\titem_id:token"),
        "unexpected header {header}"
    );
    let mut per_user: BTreeMap<u64, Vec<(i64, u64)>> = BTreeMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        let (u, i, t) = (
            f[0].parse().unwrap(),
            f[1].parse().unwrap(),
            f[3].parse::<f64>().unwrap(),
        );
        per_user.entry(u).or_default().push((t as i64, i));
    }
    let mut item_ids: Vec<u64> = per_user.values().flatten().map(|&(_, i)| i).collect();
    item_ids.sort_unstable();
    item_ids.dedup();
    let index = |id: u64| item_ids.binary_search(&id).unwrap() as u32;
    let users = per_user
        .into_iter()
        .map(|(u, mut seq)| {
            seq.sort_unstable();
            let idx: Vec<u32> = seq.iter().map(|&(_, i)| index(i)).collect();
            let n = idx.len();
            (u, idx[..n - 2].to_vec(), idx[n - 2], idx[n - 1])
        })
        .collect();
    Split {
        n_items: item_ids.len() as u32,
        users,
        item_ids,
    }
}

#[test]
#[ignore = "needs MovieLens-100k: set PALR_ML100K_INTER and run with --ignored"]
fn baselines_reach_expected_quality_on_ml100k() {
    let path = std::env::var("PALR_ML100K_INTER")
        .expect("set PALR_ML100K_INTER to the path of ml-100k.inter");
    let split = load(&path);
    assert_eq!((split.users.len(), split.n_items), (943, 1682));

    // The split agrees with the reference check.
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/ml100k-split-check.json"
        ))
        .unwrap(),
    )
    .unwrap();
    for u in fixture["users"].as_array().unwrap() {
        let id = u["user_id"].as_u64().unwrap();
        let (_, train, valid, test) = split.users.iter().find(|x| x.0 == id).unwrap();
        assert_eq!(
            split.item_ids[*test as usize],
            u["test_item_id"].as_u64().unwrap()
        );
        assert_eq!(
            split.item_ids[*valid as usize],
            u["valid_item_id"].as_u64().unwrap()
        );
        assert_eq!(
            train.len() + 2,
            u["n_interactions"].as_u64().unwrap() as usize
        );
    }

    let train: Vec<&[u32]> = split.users.iter().map(|u| u.1.as_slice()).collect();
    let view = Arc::new(TrainingView::from_sequences(split.n_items, &train).unwrap());
    let reg = RetrieverRegistry::new(view);
    reg.load_all(&[
        RetrieverSpec::new("popularity", "palr_retriever_popularity", ""),
        RetrieverSpec::new("itemknn", "palr_retriever_itemknn", ""),
        RetrieverSpec::new("markov", "palr_retriever_markov", ""),
    ])
    .unwrap();

    let mut hr = BTreeMap::new();
    for name in ["popularity", "itemknn", "markov"] {
        let (mut hits, mut ndcg) = (0usize, 0f64);
        let t0 = std::time::Instant::now();
        for (_, train, valid, test) in &split.users {
            let mut history = train.clone();
            history.push(*valid);
            let got = reg.retrieve(name, &history, 10, &[]).unwrap();
            assert_eq!(got.len(), 10);
            if let Some(rank) = got.iter().position(|c| c.0 == *test) {
                hits += 1;
                ndcg += 1.0 / (rank as f64 + 2.0).log2();
            }
        }
        let n = split.users.len() as f64;
        println!(
            "{name:>10}: HR@10 {:.4}  NDCG@10 {:.4}  ({:.1} ms for {} queries)",
            hits as f64 / n,
            ndcg / n,
            t0.elapsed().as_secs_f64() * 1e3,
            split.users.len()
        );
        hr.insert(name, hits as f64 / n);
    }
    assert!(hr["popularity"] > 0.03, "{hr:?}");
    assert!(hr["markov"] > 0.10, "{hr:?}");
    assert!(hr["itemknn"] > hr["popularity"], "{hr:?}");
}
