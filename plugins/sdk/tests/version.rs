//! The SDK's version rule (README.md, "Versions"): release line `0.N` = plugin ABI `N`. Fails
//! when the crate's version, `ABI_VERSION`, `sdk_for_abi`, the README's table or the template's
//! dependency disagree, so an ABI bump cannot ship without the rest.

use palr_retriever_sdk::abi::{ABI_VERSION, sdk_for_abi};

fn sdk_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn release_line_is_the_abi_version() {
    let version = env!("CARGO_PKG_VERSION");
    let parts: Vec<u32> = version.split('.').map(|p| p.parse().unwrap()).collect();
    assert_eq!(parts.len(), 3, "{version}");
    assert_eq!(
        (parts[0], parts[1]),
        (0, ABI_VERSION),
        "palr-retriever-sdk {version} must be 0.{ABI_VERSION}.x: its release line is the ABI \
         version (README.md, \"Versions\")"
    );
    assert_eq!(
        sdk_for_abi(ABI_VERSION),
        Some(format!("palr-retriever-sdk 0.{ABI_VERSION}").as_str())
    );
    // Every earlier ABI keeps its line, for the messages that refuse old plugins.
    for abi in 1..ABI_VERSION {
        assert_eq!(
            sdk_for_abi(abi),
            Some(format!("palr-retriever-sdk 0.{abi}").as_str())
        );
    }
    assert_eq!(sdk_for_abi(ABI_VERSION + 1), None);
}

#[test]
fn readme_table_has_a_row_per_abi() {
    let readme = std::fs::read_to_string(sdk_dir().join("README.md")).unwrap();
    for abi in 1..=ABI_VERSION {
        let row = format!("| {abi} | `0.{abi}` |");
        assert!(
            readme.lines().any(|l| l.starts_with(&row)),
            "README.md's version table lacks the row `{row} ...`"
        );
    }
    assert!(
        readme.contains(&format!("retriever plugin ABI {ABI_VERSION}")),
        "README.md quotes `palr --version` for another ABI"
    );
}

#[test]
fn template_depends_on_this_release_line_by_version() {
    let manifest = std::fs::read_to_string(sdk_dir().join("../template/Cargo.toml")).unwrap();
    let line = format!("palr-retriever-sdk = \"0.{ABI_VERSION}\"");
    assert!(
        manifest.lines().any(|l| l.trim() == line),
        "plugins/template/Cargo.toml must depend on `{line}` (by version, not by path)"
    );
}
