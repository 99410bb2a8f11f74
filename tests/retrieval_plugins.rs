//! The retrieval host against real plugin libraries: the three baselines, the misbehaving
//! test plugins (`plugins/testkit*`), loading failures and concurrency.
//!
//! Needs the workspace's cdylibs next to this test binary's target dir, i.e.
//! `cargo build --release --workspace` first (CI does).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use palr::retrieval::{
    ABI_VERSION, ErrorCode, PluginFailure, RetrievalError, RetrieverRegistry, RetrieverSpec,
    TrainingView, default_search_dirs, resolve_library,
};

/// Six users over eight items (item 7 never seen), with timestamps.
fn view() -> Arc<TrainingView> {
    let seqs: [&[u32]; 6] = [
        &[0, 1, 2, 3],
        &[0, 1, 2],
        &[1, 2, 4],
        &[0, 1, 5],
        &[2, 3, 4, 6],
        &[1, 2],
    ];
    let mut offsets = vec![0u64];
    let mut items = Vec::new();
    for s in seqs {
        items.extend_from_slice(s);
        offsets.push(items.len() as u64);
    }
    let timestamps = (0..items.len() as i64).map(|t| 1_000 + 10 * t).collect();
    Arc::new(TrainingView::new(8, offsets, items, Some(timestamps)).unwrap())
}

/// Fails with a clear instruction when the plugins were not built.
fn require_built(lib: &str) -> PathBuf {
    resolve_library(lib, &default_search_dirs()).unwrap_or_else(|tried| {
        panic!("{lib} not built (tried {tried:?}); run `cargo build --release --workspace` first")
    })
}

fn registry() -> RetrieverRegistry {
    require_built("palr_retriever_testkit");
    RetrieverRegistry::new(view())
}

fn testkit(reg: &RetrieverRegistry, name: &str, mode: &str) -> Result<(), RetrievalError> {
    let config = format!(r#"{{"misbehave": "{mode}"}}"#);
    reg.load(&RetrieverSpec::new(name, "palr_retriever_testkit", config))
        .map(|_| ())
}

fn items(got: &[(u32, f32)]) -> Vec<u32> {
    got.iter().map(|c| c.0).collect()
}

#[test]
fn baseline_plugins_load_list_and_retrieve() {
    for lib in [
        "palr_retriever_popularity",
        "palr_retriever_itemknn",
        "palr_retriever_markov",
    ] {
        require_built(lib);
    }
    let reg = registry();
    let infos = reg
        .load_all(&[
            // Bare file name with the platform's prefix and suffix, and bare crate-style names.
            RetrieverSpec::new(
                "pop",
                libloading::library_filename("palr_retriever_popularity")
                    .to_str()
                    .unwrap(),
                "",
            ),
            RetrieverSpec::new("knn", "palr_retriever_itemknn", r#"{"shrinkage": 0}"#),
            RetrieverSpec::new("markov", "palr_retriever_markov", r#"{"history_items": 1}"#),
        ])
        .unwrap();
    assert_eq!(infos.len(), 3);
    let list = reg.list();
    let names: Vec<&str> = list.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["knn", "markov", "pop"]);
    for (info, plugin) in list.iter().zip(["itemknn", "markov", "popularity"]) {
        assert_eq!(info.plugin_name, plugin);
        assert_eq!(info.abi_version, ABI_VERSION);
        assert_eq!(info.plugin_version, env!("CARGO_PKG_VERSION"));
        assert!(!info.description.is_empty());
        assert!(info.path.is_file());
    }

    // Counts: 0:3 1:5 2:5 3:2 4:2 5:1 6:1 7:0.
    let pop = reg.retrieve("pop", &[1], 3, &[3]).unwrap();
    assert_eq!(pop, vec![(2, 5.0), (0, 3.0), (4, 2.0)]);
    // Markov from last item 2: 2 -> 3 twice, 2 -> 4 once; then popularity.
    let mk = reg.retrieve("markov", &[0, 2], 4, &[]).unwrap();
    assert_eq!(items(&mk), vec![3, 4, 1, 5]);
    // Item-kNN from 6: its only co-user is user 4 (items 2, 3, 4); 3 and 4 are closest.
    let knn = reg.retrieve("knn", &[6], 3, &[]).unwrap();
    assert_eq!(items(&knn), vec![3, 4, 2]);
    // Every plugin fills k from the items that are left, never proposing the history.
    for name in ["pop", "knn", "markov"] {
        let all = reg.retrieve(name, &[0, 1], 100, &[7]).unwrap();
        let got: BTreeSet<u32> = items(&all).into_iter().collect();
        assert_eq!(got, BTreeSet::from([2, 3, 4, 5, 6]), "{name}");
        assert!(reg.retrieve(name, &[0, 1], 0, &[]).unwrap().is_empty());
        assert_eq!(reg.get(name).unwrap().stats().contract_violations, 0);
    }
}

#[test]
fn the_view_reaches_the_plugin_intact() {
    let reg = registry();
    let spec = |c: &str| RetrieverSpec::new("tk", "palr_retriever_testkit", c);
    reg.load(&spec(
        r#"{"expect_users": 6, "expect_interactions": 19, "expect_timestamps": true}"#,
    ))
    .unwrap();
    let e = reg.load(&spec(r#"{"expect_users": 7}"#)).unwrap_err();
    assert!(
        e.to_string()
            .contains("expected 7 users, the host passed 6"),
        "{e}"
    );
    let e = reg.load(&spec(r#"{"misbehave": "typo"}"#)).unwrap_err();
    assert!(e.to_string().contains("unknown variant `typo`"), "{e}");
}

#[test]
fn loading_failures_are_clear_errors() {
    let reg = registry();
    let e = reg
        .load(&RetrieverSpec::new(
            "gone",
            "libpalr_no_such_plugin.so",
            "{}",
        ))
        .unwrap_err();
    assert!(matches!(e, RetrievalError::LibraryNotFound { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("retriever `gone`") && msg.contains("libpalr_no_such_plugin.so"),
        "{msg}"
    );
    assert!(
        msg.contains("deps"),
        "the searched directories are listed: {msg}"
    );
    let e = reg
        .load(&RetrieverSpec::new("gone", "/nonexistent/dir/lib.so", "{}"))
        .unwrap_err();
    assert!(matches!(e, RetrievalError::LibraryNotFound { .. }), "{e}");

    let junk = std::env::temp_dir().join(format!("palr-junk-{}.so", std::process::id()));
    std::fs::write(&junk, b"this is not an ELF file").unwrap();
    let e = reg
        .load(&RetrieverSpec::new("junk", junk.to_str().unwrap(), "{}"))
        .unwrap_err();
    std::fs::remove_file(&junk).unwrap();
    assert!(matches!(e, RetrievalError::Load { .. }), "{e}");
    assert!(
        e.to_string().contains("not a loadable dynamic library"),
        "{e}"
    );

    require_built("palr_retriever_testkit_noentry");
    let e = reg
        .load(&RetrieverSpec::new(
            "noentry",
            "palr_retriever_testkit_noentry",
            "",
        ))
        .unwrap_err();
    assert!(matches!(e, RetrievalError::Load { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("no entry symbol `palr_retriever_entry`"),
        "{e}"
    );
    assert_eq!(e.code(), ErrorCode::FailedPrecondition);

    let e = reg
        .load(&RetrieverSpec::new("bad name", "x.so", ""))
        .unwrap_err();
    assert!(matches!(e, RetrievalError::Config { .. }), "{e}");
    let twice = RetrieverSpec::new("a", "palr_retriever_testkit", "");
    let e = reg.load_all(&[twice.clone(), twice]).unwrap_err();
    assert!(e.to_string().contains("defined more than once"), "{e}");

    // None of it left anything behind or broke the registry.
    assert!(reg.names().is_empty());
    testkit(&reg, "fine", "none").unwrap();
    assert_eq!(
        items(&reg.retrieve("fine", &[], 2, &[]).unwrap()),
        vec![0, 1]
    );
}

#[test]
fn init_errors_and_panics_leave_the_host_running() {
    let reg = registry();
    let e = testkit(&reg, "a", "error_init").unwrap_err();
    assert!(
        matches!(
            e,
            RetrievalError::Init {
                failure: PluginFailure::Error,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("error_init requested"), "{e}");
    let e = testkit(&reg, "b", "panic_init").unwrap_err();
    assert!(
        matches!(
            e,
            RetrievalError::Init {
                failure: PluginFailure::Panic,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("panicked: testkit: panic_init requested"),
        "{e}"
    );
    assert!(reg.names().is_empty());
    testkit(&reg, "c", "none").unwrap();
    assert!(reg.retrieve("c", &[0], 3, &[]).is_ok());
}

#[test]
fn retrieve_errors_and_panics_are_reported_and_counted() {
    let reg = registry();
    testkit(&reg, "err", "error_retrieve").unwrap();
    testkit(&reg, "boom", "panic_retrieve").unwrap();
    for _ in 0..3 {
        let e = reg.retrieve("err", &[0], 5, &[]).unwrap_err();
        assert!(matches!(
            e,
            RetrievalError::Retrieve {
                failure: PluginFailure::Error,
                ..
            }
        ));
        assert_eq!(e.code(), ErrorCode::Unavailable);
        assert!(
            e.to_string()
                .contains("retriever `err`: retrieve failed (error)"),
            "{e}"
        );
        let e = reg.retrieve("boom", &[0], 5, &[]).unwrap_err();
        assert!(matches!(
            e,
            RetrievalError::Retrieve {
                failure: PluginFailure::Panic,
                ..
            }
        ));
        assert_eq!(e.code(), ErrorCode::Internal);
        assert!(e.to_string().contains("panic_retrieve requested"), "{e}");
    }
    let s = reg.get("err").unwrap().stats();
    assert_eq!(
        (s.calls, s.errors, s.panics, s.contract_violations),
        (3, 3, 0, 0)
    );
    let s = reg.get("boom").unwrap().stats();
    assert_eq!(
        (s.calls, s.errors, s.panics, s.contract_violations),
        (3, 0, 3, 0)
    );
    // A panicking destructor is caught in the plugin as well.
    testkit(&reg, "dtor", "panic_drop").unwrap();
    assert!(reg.remove("dtor"));
    assert!(!reg.remove("dtor"));
}

#[test]
fn broken_results_are_contract_violations() {
    let reg = registry();
    let cases = [
        ("out_of_range", "item 8 is out of range (n_items = 8)"),
        ("duplicates", "proposed more than once"),
        ("history", "item 3 is in the history or the exclusion set"),
        ("excluded", "item 5 is in the history or the exclusion set"),
        ("nan", "score NaN"),
        ("infinite", "score inf"),
        ("unsorted", "best first"),
    ];
    for (mode, problem) in cases {
        testkit(&reg, mode, mode).unwrap();
        let e = reg.retrieve(mode, &[3, 1], 4, &[5]).unwrap_err();
        assert!(matches!(e, RetrievalError::Contract { .. }), "{mode}: {e}");
        assert_eq!(e.code(), ErrorCode::Internal);
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("retriever `{mode}` broke")) && msg.contains(problem),
            "{msg}"
        );
        assert_eq!(
            reg.get(mode).unwrap().stats().contract_violations,
            1,
            "{mode}"
        );
    }

    require_built("palr_retriever_testkit_raw");
    let raw = |mode: &str| {
        reg.load(&RetrieverSpec::new(
            mode,
            "palr_retriever_testkit_raw",
            mode,
        ))
        .map(|_| ())
    };
    raw("overflow").unwrap();
    let e = reg.retrieve("overflow", &[], 3, &[]).unwrap_err();
    assert!(
        e.to_string()
            .contains("returned 4 candidates for a buffer of capacity 3"),
        "{e}"
    );
    raw("bad_status").unwrap();
    let e = reg.retrieve("bad_status", &[], 3, &[]).unwrap_err();
    assert!(e.to_string().contains("unknown status 77"), "{e}");
    raw("error_len_overflow").unwrap();
    let e = reg.retrieve("error_len_overflow", &[], 3, &[]).unwrap_err();
    assert!(e.to_string().contains("exceeds the buffer capacity"), "{e}");
    for mode in ["overflow", "bad_status", "error_len_overflow"] {
        assert_eq!(
            reg.get(mode).unwrap().stats().contract_violations,
            1,
            "{mode}"
        );
    }
    raw("bad_utf8_error").unwrap();
    let e = reg.retrieve("bad_utf8_error", &[], 3, &[]).unwrap_err();
    assert!(matches!(
        e,
        RetrievalError::Retrieve {
            failure: PluginFailure::Error,
            ..
        }
    ));
    assert!(e.to_string().contains("bad \u{fffd}\u{fffd} bytes"), "{e}");
    let e = raw("null_instance").unwrap_err();
    assert!(
        e.to_string()
            .contains("reported success but returned no instance"),
        "{e}"
    );
    // A well-behaved raw plugin passes every check.
    raw("ok").unwrap();
    assert_eq!(
        reg.retrieve("ok", &[1], 2, &[0]).unwrap(),
        vec![(2, -2.0), (3, -3.0)]
    );
}

#[test]
fn bad_requests_and_unknown_names() {
    let reg = registry();
    testkit(&reg, "tk", "none").unwrap();
    let e = reg.retrieve("nope", &[], 3, &[]).unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound);
    assert_eq!(e.to_string(), "unknown retriever `nope` (loaded: [tk])");
    let e = reg.retrieve("tk", &[1, 8], 3, &[]).unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    assert!(
        e.to_string()
            .contains("history item 8 at position 1 is out of range"),
        "{e}"
    );
    let e = reg.retrieve("tk", &[1], 3, &[99]).unwrap_err();
    assert!(e.to_string().contains("exclude item 99"), "{e}");
    // k beyond what is left is clamped; a huge k allocates nothing big.
    let all = reg.retrieve("tk", &[0, 0, 1], usize::MAX, &[2, 2]).unwrap();
    assert_eq!(items(&all), vec![3, 4, 5, 6, 7]);
    assert!(
        reg.retrieve("tk", &(0..8).collect::<Vec<_>>(), 5, &[])
            .unwrap()
            .is_empty()
    );
}

#[test]
fn reload_replaces_by_name_and_old_generation_keeps_serving() {
    let reg = registry();
    let pop = |cfg: &str| RetrieverSpec::new("pop", "palr_retriever_popularity", cfg);
    let g1 = reg.load(&pop("")).unwrap().generation;
    let old = reg.get("pop").unwrap();
    // Only each user's last interaction: 3, 2, 4, 5, 6, 2 -> item 2 first, then 3.
    let g2 = reg
        .load(&pop(r#"{"last_n_per_user": 1}"#))
        .unwrap()
        .generation;
    assert!(g2 > g1);
    assert_eq!(reg.list().len(), 1);
    assert_eq!(
        items(&reg.retrieve("pop", &[], 2, &[]).unwrap()),
        vec![2, 3]
    );
    assert_eq!(items(&old.retrieve(&[], 2, &[]).unwrap()), vec![1, 2]);
    // A failed reload keeps the loaded generation.
    assert!(reg.load(&pop(r#"{"last_n_per_user": 0}"#)).is_err());
    assert_eq!(reg.get("pop").unwrap().info().generation, g2);
}

#[test]
fn concurrent_retrieval_matches_sequential() {
    let reg = Arc::new(registry());
    reg.load_all(&[
        RetrieverSpec::new("knn", "palr_retriever_itemknn", ""),
        RetrieverSpec::new("markov", "palr_retriever_markov", r#"{"history_items": 3}"#),
        RetrieverSpec::new("tk", "palr_retriever_testkit", ""),
    ])
    .unwrap();
    let histories: Vec<Vec<u32>> = (0..32u32)
        .map(|s| (0..(s % 5)).map(|i| (s * 7 + i * 3) % 8).collect())
        .collect();
    let names = ["knn", "markov", "tk"];
    let expected: Vec<Vec<Vec<(u32, f32)>>> = names
        .iter()
        .map(|n| {
            histories
                .iter()
                .map(|h| reg.retrieve(n, h, 4, &[]).unwrap())
                .collect()
        })
        .collect();
    let expected = Arc::new(expected);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (reg, expected, histories) = (reg.clone(), expected.clone(), histories.clone());
            std::thread::spawn(move || {
                for round in 0..200 {
                    let h = (t * 31 + round) % histories.len();
                    let n = (t + round) % names.len();
                    let got = reg.retrieve(names[n], &histories[h], 4, &[]).unwrap();
                    assert_eq!(got, expected[n][h]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let calls: u64 = names
        .iter()
        .map(|n| reg.get(n).unwrap().stats().calls)
        .sum();
    // Histories have at most 4 of the 8 items, so every call reaches a plugin and is counted.
    assert_eq!(calls, 8 * 200 + 3 * 32);
}

/// The view with the catalogue (ids, titles, years, genres), user ids and a stage.
fn view_with_items(stage: &str) -> Arc<TrainingView> {
    let catalog = palr::data::Catalog::from_items(
        (0..8)
            .map(|i| {
                let mut it = palr::data::Item::new(format!("m{i}"), &format!("Movie {i}"));
                if i == 0 {
                    it.year = Some(1995);
                    it.genres = vec!["Action".into(), "Crime".into()];
                }
                it
            })
            .collect(),
    )
    .unwrap();
    let v = Arc::try_unwrap(view()).unwrap();
    let users = (0..v.n_users()).map(|u| format!("u{u}")).collect();
    Arc::new(
        v.with_items(palr::retrieval::item_table(&catalog))
            .unwrap()
            .with_user_ids(users)
            .unwrap()
            .with_stage(stage),
    )
}

#[test]
fn item_data_and_the_views_identity_reach_the_plugin() {
    let view = view_with_items("valid");
    let reg = RetrieverRegistry::new(Arc::clone(&view));
    let info = reg
        .load(&RetrieverSpec::new("tk", "palr_retriever_testkit", "{}"))
        .unwrap();
    // The testkit's note echoes what the SDK read through the ABI.
    assert_eq!(
        info.note.as_deref().unwrap(),
        format!(
            "stage=valid fingerprint={} user0=u0 item0=m0|Movie 0|Some(1995)|Action,Crime",
            view.fingerprint()
        )
    );
    assert_eq!(info.view_stage, "valid");
    assert_eq!((info.trained_on, info.stale_snapshot), (None, false));
    assert_eq!(info.abi_version, 2);
}

#[test]
fn pre_trained_state_from_another_view_is_refused_unless_serving() {
    let trained =
        |fp: &str| format!(r#"{{"trained_on": {{"stage": "test", "fingerprint": "{fp}"}}}}"#);
    let other = "ab".repeat(32);
    // An evaluation view: weights fitted elsewhere may have seen its targets.
    let reg = RetrieverRegistry::new(view_with_items("valid"));
    let e = reg
        .load(&RetrieverSpec::new(
            "tk",
            "palr_retriever_testkit",
            trained(&other),
        ))
        .unwrap_err();
    assert!(
        matches!(e, RetrievalError::TrainedOnOtherView { .. }),
        "{e}"
    );
    assert_eq!(e.code(), ErrorCode::FailedPrecondition);
    let msg = e.to_string();
    assert!(
        msg.contains("fitted on the view test (abababababab)")
            && msg.contains("given the view valid")
            && msg.contains("palr data export-view"),
        "{msg}"
    );
    assert!(reg.names().is_empty(), "nothing is registered");
    // Fitted on exactly this view: fine.
    let info = reg
        .load(&RetrieverSpec::new(
            "tk",
            "palr_retriever_testkit",
            trained("view"),
        ))
        .unwrap();
    assert_eq!(
        info.trained_on.unwrap().fingerprint,
        reg.view().fingerprint()
    );
    assert!(!info.stale_snapshot);
    // Serving on all interactions: an older snapshot is allowed and reported.
    let reg = RetrieverRegistry::new(view_with_items("all"));
    let info = reg
        .load(&RetrieverSpec::new(
            "tk",
            "palr_retriever_testkit",
            trained(&other),
        ))
        .unwrap();
    assert!(info.stale_snapshot);
    assert_eq!(info.trained_on.unwrap().stage, "test");
    // `describe` must write JSON of the documented shape.
    let e = reg
        .load(&RetrieverSpec::new(
            "raw",
            "palr_retriever_testkit_raw",
            "bad_describe",
        ))
        .unwrap_err();
    assert!(
        matches!(e, RetrievalError::Contract { .. }) && e.to_string().contains("not a JSON object"),
        "{e}"
    );
}

#[test]
fn fusions_merge_loaded_retrievers_by_name() {
    use palr::retrieval::{FusionMethod, FusionSpec};
    for lib in ["palr_retriever_popularity", "palr_retriever_markov"] {
        require_built(lib);
    }
    let reg = registry();
    reg.load_all(&[
        RetrieverSpec::new("pop", "palr_retriever_popularity", ""),
        RetrieverSpec::new("markov", "palr_retriever_markov", ""),
    ])
    .unwrap();
    let mut spec = FusionSpec::new("blend", FusionMethod::Rrf, &["pop", "markov"]);
    spec.weights = vec![0.5, 1.0];
    spec.depth = 8;
    reg.add_fusion(spec.clone()).unwrap();
    assert_eq!(reg.names(), ["blend", "markov", "pop"]);
    // What the fusion returns is the merge of what its members return at its depth.
    let history = [0u32, 1];
    let lists: Vec<_> = ["pop", "markov"]
        .iter()
        .map(|m| reg.retrieve(m, &history, 8, &[3]).unwrap())
        .collect();
    let fused = reg.retrieve("blend", &history, 4, &[3]).unwrap();
    assert_eq!(fused, spec.merge(&lists, 4));
    assert!(fused.iter().all(|(i, _)| !history.contains(i) && *i != 3));
    // Mistakes are named.
    let bad = |s: FusionSpec| reg.add_fusion(s).unwrap_err().to_string();
    assert!(
        bad(FusionSpec::new("b2", FusionMethod::Rrf, &["pop", "nope"]))
            .contains("\"nope\" is not a loaded retriever")
    );
    assert!(
        bad(FusionSpec::new("b3", FusionMethod::Rrf, &["pop", "blend"])).contains("is a fusion")
    );
    assert!(
        bad(FusionSpec::new(
            "pop",
            FusionMethod::Rrf,
            &["pop", "markov"]
        ))
        .contains("plugin has this name")
    );
    let e = reg
        .load(&RetrieverSpec::new(
            "blend",
            "palr_retriever_popularity",
            "",
        ))
        .unwrap_err();
    assert!(e.to_string().contains("a fusion has this name"), "{e}");
    // A member that goes away makes the fusion fail clearly.
    assert!(reg.remove("markov"));
    let e = reg.retrieve("blend", &history, 4, &[]).unwrap_err();
    assert!(
        e.to_string()
            .contains("member \"markov\" is no longer loaded"),
        "{e}"
    );
    let e = reg.retrieve("nothing", &history, 4, &[]).unwrap_err();
    assert!(
        e.to_string().contains("blend"),
        "not-found lists fusions too: {e}"
    );
}
