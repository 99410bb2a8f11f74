//! The leave-one-out split of the real MovieLens-100k (RecBole's `ml-100k.inter`) against
//! `tests/fixtures/ml100k-split-check.json`, made by an independent script.
//!
//! Needs the data: `palr data fetch ml-100k` (into `data/`, or `$PALR_DATA_DIR`). Without it
//! these tests FAIL, saying so; CI fetches first.

use std::path::PathBuf;

use palr::data::{Dataset, LoadOptions, Split, TitleStyle};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn ml100k_dir() -> PathBuf {
    let dir = palr::data::default_data_dir().join("ml-100k");
    assert!(
        dir.join("ml-100k.inter").is_file(),
        "MovieLens-100k not found in {}: run `palr data fetch ml-100k` first \
         (or point PALR_DATA_DIR at a directory holding ml-100k/)",
        dir.display()
    );
    dir
}

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/ml100k-split-check.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn load() -> Dataset {
    Dataset::load(&ml100k_dir(), &LoadOptions::default()).unwrap()
}

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// "user_id,valid_item_id,test_item_id\n" for every user in ascending user id, as the fixture's
/// `sha256_format` says.
fn split_lines(ds: &Dataset, split: &Split) -> String {
    let mut s = String::new();
    for us in split.users() {
        let (v, t) = (us.valid.unwrap().target, us.test.unwrap().target);
        s.push_str(&format!(
            "{},{},{}\n",
            ds.interactions.user_id(us.user).unwrap(),
            ds.catalog.id(v).unwrap(),
            ds.catalog.id(t).unwrap()
        ));
    }
    s
}

#[test]
fn split_matches_the_reference_fixture() {
    let fx = fixture();
    let ds = load();
    let inter = &ds.interactions;
    assert_eq!(ds.catalog.len() as u64, fx["n_items"].as_u64().unwrap());
    assert_eq!(inter.n_users() as u64, fx["n_users"].as_u64().unwrap());
    assert_eq!(inter.len() as u64, fx["n_interactions"].as_u64().unwrap());

    let split = Split::leave_one_out(inter);
    let id = |i: u32| ds.catalog.id(i).unwrap().parse::<u64>().unwrap();
    for u in fx["users"].as_array().unwrap() {
        let uid = u["user_id"].as_u64().unwrap().to_string();
        let ui = inter.user_index(&uid).unwrap();
        let us = split.user(ui);
        let (v, t) = (us.valid.unwrap(), us.test.unwrap());
        assert_eq!(
            id(t.target),
            u["test_item_id"].as_u64().unwrap(),
            "user {uid} test"
        );
        assert_eq!(
            id(v.target),
            u["valid_item_id"].as_u64().unwrap(),
            "user {uid} valid"
        );
        assert_eq!(
            id(*us.train.last().unwrap()),
            u["last_train_item_id"].as_u64().unwrap(),
            "user {uid} last train item"
        );
        let ts = inter.timestamps_of(ui);
        let n = ts.len();
        assert_eq!(
            n as u64,
            u["n_interactions"].as_u64().unwrap(),
            "user {uid}"
        );
        assert_eq!(
            ts[n - 1],
            u["test_timestamp"].as_i64().unwrap(),
            "user {uid}"
        );
        assert_eq!(
            ts[n - 2],
            u["valid_timestamp"].as_i64().unwrap(),
            "user {uid}"
        );
        assert_eq!(us.train.len(), n - 2);
    }

    assert_eq!(
        fx["sha256_format"].as_str().unwrap(),
        "sha256 of concatenated lines 'user_id,valid_item_id,test_item_id\\n' for all users in \
         ascending user_id",
        "the fixture's hash format changed: update split_lines()"
    );
    assert_eq!(
        sha256_hex(&split_lines(&ds, &split)),
        fx["sha256_all_users"].as_str().unwrap()
    );
}

/// The users whose valid or test item shares its timestamp with another of their interactions
/// are exactly those where the item-id tie-break decides the split.
#[test]
fn tie_break_users_match_the_fixture() {
    let fx = fixture();
    let ds = load();
    let inter = &ds.interactions;
    let mut tied = Vec::new();
    for u in 0..inter.n_users() as u32 {
        let ts = inter.timestamps_of(u);
        let n = ts.len();
        let shared = |k: usize| ts.iter().filter(|&&t| t == ts[k]).count() > 1;
        if shared(n - 1) || shared(n - 2) {
            tied.push(inter.user_id(u).unwrap().parse::<u64>().unwrap());
        }
    }
    assert_eq!(
        tied.len() as u64,
        fx["n_users_where_item_id_tie_break_matters"]
            .as_u64()
            .unwrap()
    );
    let first: Vec<u64> = fx["first_10_tie_break_users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(tied[..10], first[..]);
    for u in fx["users"].as_array().unwrap() {
        let uid = u["user_id"].as_u64().unwrap();
        assert_eq!(
            tied.contains(&uid),
            u["tie_break_decides"].as_bool().unwrap(),
            "user {uid}"
        );
    }
}

/// Comparing item ids as strings ("10" < "9") would give a different split on this data, so the
/// fixture really pins the numeric rule.
#[test]
fn string_tie_break_would_not_reproduce_the_fixture() {
    let fx = fixture();
    let ds = load();
    let inter = &ds.interactions;
    let mut lines = String::new();
    let mut differing_users = 0;
    for u in 0..inter.n_users() as u32 {
        let mut rows: Vec<(i64, &str)> = inter
            .timestamps_of(u)
            .iter()
            .zip(inter.items_of(u))
            .map(|(&t, &i)| (t, ds.catalog.id(i).unwrap()))
            .collect();
        let numeric: Vec<&str> = rows.iter().map(|r| r.1).collect();
        rows.sort();
        let n = rows.len();
        if [rows[n - 2].1, rows[n - 1].1] != numeric[n - 2..] {
            differing_users += 1;
        }
        lines.push_str(&format!(
            "{},{},{}\n",
            inter.user_id(u).unwrap(),
            rows[n - 2].1,
            rows[n - 1].1
        ));
    }
    assert!(differing_users > 0);
    assert_ne!(sha256_hex(&lines), fx["sha256_all_users"].as_str().unwrap());
}

#[test]
fn real_catalog_titles_and_attributes() {
    let ds = load();
    let cat = &ds.catalog;
    let usual = cat.index_of("12").unwrap();
    assert_eq!(cat.title(usual), Some("Usual Suspects, The"));
    assert_eq!(
        cat.title_styled(usual, TitleStyle::ArticleFirst).unwrap(),
        "The Usual Suspects"
    );
    let item = cat.item(cat.index_of("1").unwrap()).unwrap();
    assert_eq!(item.title, "Toy Story");
    assert_eq!(item.year, Some(1995));
    assert_eq!(item.genres, ["Animation", "Children's", "Comedy"]);
    assert_eq!(
        cat.title(cat.index_of("543").unwrap()),
        Some("Misérables, Les")
    );
    assert_eq!(cat.item(cat.index_of("267").unwrap()).unwrap().year, None);
    assert!(
        ds.interactions
            .ratings()
            .iter()
            .all(|r| (1.0..=5.0).contains(r))
    );
}
