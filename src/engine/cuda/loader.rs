//! Finding the CUDA libraries at run time, so that palr builds and runs on
//! machines without CUDA and fails with an error (never a panic) where a library
//! is missing.
//!
//! cudarc (feature `dynamic-loading`) opens each library by file name on first
//! use and panics when none of its candidate names loads. palr therefore opens
//! them first, by absolute path where it finds one, and reports what is missing.
//! The dynamic loader matches a later `dlopen` by name against the SONAME of
//! objects already loaded, so cudarc's `dlopen("libcublas.so.13")` (and NVRTC's
//! own `dlopen("libnvrtc-builtins.so.13.0")`, and cuBLAS's dependency on
//! `libcublasLt.so.13`) find the copies loaded here. Loaded libraries stay
//! loaded for the life of the process.
//!
//! Search order for each library: the directories of `PALR_CUDA_LIB_DIR`
//! (colon-separated), `$CUDA_HOME/lib64`, `$CUDA_PATH/lib64`,
//! `/usr/local/cuda/lib64`, then the dynamic loader's own search by name
//! (`LD_LIBRARY_PATH`, the ld.so cache). The driver (`libcuda.so.1`) is also
//! looked for in `/usr/local/nvidia/lib64` and `/usr/lib/wsl/lib`.
//!
//! The libraries are CUDA 13 (`.so.13`): cudarc is built with `cuda-13000`, and
//! NVRTC 13.0 output is what the 580 drivers load.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The CUDA driver.
pub const DRIVER: &str = "libcuda.so.1";
/// The run-time compiler and the library of built-ins it opens while compiling.
pub const NVRTC: &str = "libnvrtc.so.13";
pub const NVRTC_BUILTINS: &str = "libnvrtc-builtins.so.13.0";
/// cuBLAS and the library it links against.
pub const CUBLAS: &str = "libcublas.so.13";
pub const CUBLAS_LT: &str = "libcublasLt.so.13";

/// Environment variable: directories searched first for the CUDA libraries.
pub const LIB_DIR_ENV: &str = "PALR_CUDA_LIB_DIR";

/// Directories searched for `lib`, in order (only those that exist).
pub fn search_dirs(lib: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(v) = std::env::var_os(LIB_DIR_ENV) {
        dirs.extend(std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(v) = std::env::var_os(var) {
            dirs.push(PathBuf::from(v).join("lib64"));
        }
    }
    dirs.push(PathBuf::from("/usr/local/cuda/lib64"));
    if lib == DRIVER {
        dirs.push(PathBuf::from("/usr/local/nvidia/lib64"));
        dirs.push(PathBuf::from("/usr/lib/wsl/lib"));
    }
    dirs.retain(|d| d.is_dir());
    dirs.dedup();
    dirs
}

/// Where each library was loaded from, or why it could not be.
fn registry() -> &'static Mutex<HashMap<String, Result<String, String>>> {
    static R: OnceLock<Mutex<HashMap<String, Result<String, String>>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Loads `lib` (a SONAME such as `libcublas.so.13`) from `dirs` first, then by
/// name, and keeps it loaded. Returns where it came from; the error says every
/// place that was tried. A success is remembered; a failure is retried on the
/// next call (so a test can point `PALR_CUDA_LIB_DIR` somewhere and try again).
pub fn load_from(lib: &str, dirs: &[PathBuf]) -> Result<String, String> {
    let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(Ok(from)) = reg.get(lib) {
        return Ok(from.clone());
    }
    let mut tried = Vec::new();
    let mut result = None;
    for dir in dirs {
        let path = dir.join(lib);
        if !path.exists() {
            tried.push(format!("{} (absent)", path.display()));
            continue;
        }
        match open(&path) {
            Ok(()) => {
                result = Some(path.display().to_string());
                break;
            }
            Err(e) => tried.push(format!("{}: {e}", path.display())),
        }
    }
    if result.is_none() {
        match open(Path::new(lib)) {
            Ok(()) => result = Some(format!("{lib} (dynamic loader search)")),
            Err(e) => tried.push(format!("{lib} by name: {e}")),
        }
    }
    let out = result.ok_or_else(|| {
        format!(
            "tried {}; set {LIB_DIR_ENV} to the directory holding {lib}",
            tried.join("; ")
        )
    });
    reg.insert(lib.to_string(), out.clone());
    out
}

/// [`load_from`] over [`search_dirs`].
pub fn load(lib: &str) -> Result<String, String> {
    load_from(lib, &search_dirs(lib))
}

fn open(path: &Path) -> Result<(), String> {
    // SAFETY: these are NVIDIA's CUDA libraries, whose initialisers have no
    // preconditions; the handle is leaked so the library is never unloaded while
    // function pointers into it are in use.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| describe(&e))?;
    std::mem::forget(lib);
    Ok(())
}

/// libloading's message with the dynamic loader's reason (`dlerror`).
fn describe(e: &libloading::Error) -> String {
    use std::error::Error;
    match e.source() {
        Some(s) => format!("{e}: {s}"),
        None => e.to_string(),
    }
}

/// A library opened here for our own symbol lookups (NVRTC), kept for the process.
pub(crate) fn open_for_symbols(lib: &str) -> Result<&'static libloading::Library, String> {
    static HANDLES: OnceLock<Mutex<HashMap<String, &'static libloading::Library>>> =
        OnceLock::new();
    let handles = HANDLES.get_or_init(|| Mutex::new(HashMap::new()));
    let mut h = handles.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(l) = h.get(lib) {
        return Ok(l);
    }
    load(lib)?;
    // Already loaded above, so opening by name returns that same object.
    // SAFETY: as in `open`.
    let l = unsafe { libloading::Library::new(lib) }.map_err(|e| {
        format!(
            "{lib} loaded but cannot be reopened by name: {}",
            describe(&e)
        )
    })?;
    let l: &'static libloading::Library = Box::leak(Box::new(l));
    h.insert(lib.to_string(), l);
    Ok(l)
}

/// Where each library loaded so far came from (for `describe` and logs).
pub fn loaded() -> Vec<(String, String)> {
    let reg = registry().lock().unwrap_or_else(|e| e.into_inner());
    let mut v: Vec<_> = reg
        .iter()
        .filter_map(|(k, r)| r.as_ref().ok().map(|from| (k.clone(), from.clone())))
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_an_error_naming_what_was_tried() {
        let dir = std::env::temp_dir().join("palr-loader-test-empty");
        std::fs::create_dir_all(&dir).unwrap();
        let err = load_from("libpalr-does-not-exist.so.7", std::slice::from_ref(&dir)).unwrap_err();
        assert!(err.contains("libpalr-does-not-exist.so.7"), "{err}");
        assert!(err.contains(&dir.display().to_string()), "{err}");
        assert!(err.contains(LIB_DIR_ENV), "{err}");
    }

    #[test]
    fn a_library_is_loaded_by_absolute_path_first() {
        // libc is everywhere; copy its SONAME path lookup through a directory that has it.
        let dir = [
            "/lib/x86_64-linux-gnu",
            "/usr/lib/x86_64-linux-gnu",
            "/lib64",
            "/usr/lib64",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("libm.so.6").exists());
        let Some(dir) = dir else {
            eprintln!("skipped: no libm.so.6 in the usual directories");
            return;
        };
        let from = load_from("libm.so.6", std::slice::from_ref(&dir)).unwrap();
        assert_eq!(from, dir.join("libm.so.6").display().to_string());
    }
}
