//! The conformance kit (`palr::retrieval::conformance`, `palr plugin check`) on real plugin
//! libraries: the Rust baselines, `genre` and the template pass it; the misbehaving test plugins fail it, each on the
//! check that names its misbehaviour and on no other query check.
//!
//! Needs the workspace's cdylibs: `cargo build --release --workspace` first.

use std::path::PathBuf;
use std::process::Command;

use palr::retrieval::conformance::{self, Options, Outcome, Report};
use palr::retrieval::{default_search_dirs, resolve_library};

fn require_built(lib: &str) -> PathBuf {
    resolve_library(lib, &default_search_dirs()).unwrap_or_else(|tried| {
        panic!("{lib} not built (tried {tried:?}); run `cargo build --release --workspace` first")
    })
}

/// Fewer queries and rounds than the default: the failing plugins print a line per panic.
fn quick() -> Options {
    Options {
        queries: 60,
        repeats: 4,
        ..Options::default()
    }
}

fn failed(report: &Report) -> Vec<&'static str> {
    report.failures().map(|c| c.name).collect()
}

#[test]
fn rust_baselines_pass() {
    for (lib, config) in [
        ("palr_retriever_popularity", "{}"),
        (
            "palr_retriever_popularity",
            r#"{"window_seconds": 3600, "distinct_users": true}"#,
        ),
        ("palr_retriever_markov", "{}"),
        ("palr_retriever_itemknn", "{}"),
        ("palr_retriever_genre", "{}"),
        (
            "palr_retriever_genre",
            r#"{"year_weight": 0, "smoothing": 0, "prior": 0}"#,
        ),
        ("palr_retriever_template", "{}"),
        ("palr_retriever_template", r#"{"min_year": 2000}"#),
        ("palr_retriever_testkit", "{}"),
    ] {
        let report = conformance::check_plugin(&require_built(lib), config);
        assert!(report.passed(), "{lib} {config}:\n{report}");
        assert!(
            report.checks.iter().all(|c| c.outcome == Outcome::Pass),
            "{report}"
        );
        for name in [
            conformance::LOAD,
            conformance::LOAD_EMPTY_VIEW,
            conformance::ANSWERS,
            conformance::CAPACITY,
            conformance::IN_RANGE,
            conformance::NOT_EXCLUDED,
            conformance::NO_DUPLICATES,
            conformance::FINITE,
            conformance::NON_INCREASING,
            conformance::PROTOCOL,
            conformance::CONCURRENT,
            conformance::BAD_CONFIG,
            conformance::CREATE_DESTROY,
        ] {
            assert!(report.check(name).is_some(), "{name} missing:\n{report}");
        }
    }
}

#[test]
fn misbehaving_plugins_fail_the_check_that_names_it() {
    let testkit = require_built("palr_retriever_testkit");
    for (mode, check, says) in [
        ("history", conformance::NOT_EXCLUDED, "in the history"),
        ("excluded", conformance::NOT_EXCLUDED, "exclusion set"),
        ("out_of_range", conformance::IN_RANGE, "out of range"),
        ("duplicates", conformance::NO_DUPLICATES, "more than once"),
        ("nan", conformance::FINITE, "score NaN"),
        ("infinite", conformance::FINITE, "score inf"),
        ("unsorted", conformance::NON_INCREASING, "best first"),
        (
            "error_retrieve",
            conformance::ANSWERS,
            "failed (error): testkit: error_retrieve requested",
        ),
        (
            "panic_retrieve",
            conformance::ANSWERS,
            "failed (panic): panicked: testkit: panic_retrieve",
        ),
    ] {
        let config = format!(r#"{{"misbehave": "{mode}"}}"#);
        let report = conformance::check_plugin_with(&testkit, &config, &quick());
        assert!(!report.passed(), "{mode} passed:\n{report}");
        assert_eq!(failed(&report), vec![check], "{mode}:\n{report}");
        let c = report.check(check).unwrap();
        assert!(c.message.contains(says), "{mode}: {}", c.message);
        assert!(c.message.contains("query #"), "{mode}: {}", c.message);
    }

    // Init failures: the plugin never loads, and the checks that need it are skipped.
    let report =
        conformance::check_plugin_with(&testkit, r#"{"misbehave": "panic_init"}"#, &quick());
    assert_eq!(
        failed(&report),
        vec![conformance::LOAD, conformance::LOAD_EMPTY_VIEW]
    );
    assert!(
        report
            .check(conformance::LOAD)
            .unwrap()
            .message
            .contains("panic_init requested"),
        "{report}"
    );
    assert_eq!(
        report.check(conformance::CONCURRENT).unwrap().outcome,
        Outcome::Skip
    );
    assert_eq!(
        report.check(conformance::FINITE).unwrap().outcome,
        Outcome::Skip
    );

    // The hand-written raw plugin: takes any config, and breaks the protocol on request.
    let raw = require_built("palr_retriever_testkit_raw");
    for (mode, checks, says) in [
        (
            "ok",
            vec![conformance::BAD_CONFIG],
            "accepted an unknown option",
        ),
        (
            "overflow",
            vec![conformance::CAPACITY, conformance::BAD_CONFIG],
            "for a buffer of capacity",
        ),
        (
            "bad_status",
            vec![conformance::PROTOCOL, conformance::BAD_CONFIG],
            "unknown status 77",
        ),
    ] {
        let report = conformance::check_plugin_with(&raw, mode, &quick());
        assert_eq!(failed(&report), checks, "{mode}:\n{report}");
        let c = report.check(checks[0]).unwrap();
        assert!(c.message.contains(says), "{mode}: {}", c.message);
    }
}

#[test]
fn cli_prints_a_line_per_check_and_fails_on_a_failure() {
    let palr = env!("CARGO_BIN_EXE_palr");
    let ok = Command::new(palr)
        .args(["plugin", "check", "palr_retriever_popularity"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("PASS load: popularity "), "{stdout}");
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("PASS ")).count(),
        13,
        "{stdout}"
    );
    assert!(
        lines.last().unwrap().contains("passed 13 checks"),
        "{stdout}"
    );

    let bad = Command::new(palr)
        .args(["plugin", "check"])
        .arg(require_built("palr_retriever_testkit"))
        .args(["--config", r#"{"misbehave": "history"}"#, "--queries", "30"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&bad.stdout);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success(), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("FAIL no history or excluded items: ")),
        "{stdout}"
    );
    assert!(stderr.contains("1 of 13 checks failed"), "{stderr}");

    let missing = Command::new(palr)
        .args(["plugin", "check", "palr_retriever_nonexistent"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("not found (looked for"), "{stderr}");
}

/// `palr --version` names the plugin ABI this build speaks and the SDK line to build plugins
/// with (plugins/sdk/README.md, "Versions").
#[test]
fn version_names_the_plugin_abi_and_sdk_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_palr"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let abi = palr::retrieval::ABI_VERSION;
    let sdk = palr_retriever_sdk::abi::sdk_for_abi(abi).unwrap();
    assert_eq!(
        text.trim(),
        format!(
            "palr {} (retriever plugin ABI {abi}: build plugins with {sdk})",
            env!("CARGO_PKG_VERSION")
        )
    );
}
