//! The registry of loaded retrievers, keyed by configured name, and library path resolution.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::Deserialize;

use super::fusion::FusionSpec;
use super::{
    ABI_VERSION, QueryContext, Result, RetrievalError, Retriever, RetrieverInfo, TrainingView,
};

/// One configured retriever: which library to load under which name, with which config.
///
/// In TOML: `{ name = "pop", path = "libpalr_retriever_popularity.so", config_json = '{"window_seconds": 86400}' }`;
/// `config` (an inline table/object) is accepted instead of `config_json` and converted to
/// JSON text. A missing config is `{}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrieverSpec {
    /// Registry key: 1–64 characters of `A-Z a-z 0-9 _ - .`.
    pub name: String,
    /// Library file; see [`resolve_library`] for how bare names are found.
    pub path: String,
    /// The plugin's JSON config, passed to it verbatim.
    #[serde(
        default = "empty_object",
        alias = "config",
        deserialize_with = "config_text"
    )]
    pub config_json: String,
    /// The server's bound on this retriever's concurrent calls (its bulkhead); `None` = the
    /// server-wide `retrieval.max_concurrent_calls`. The registry itself does not use it.
    #[serde(default)]
    pub max_concurrent_calls: Option<usize>,
}

fn empty_object() -> String {
    "{}".to_owned()
}

fn config_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        Json(String),
        Value(serde_json::Value),
    }
    Ok(match Text::deserialize(d)? {
        Text::Json(s) => s,
        Text::Value(v) => v.to_string(),
    })
}

impl RetrieverSpec {
    /// A spec from its three parts.
    pub fn new(
        name: impl Into<String>,
        path: impl Into<String>,
        config_json: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            path: path.into(),
            config_json: config_json.into(),
            max_concurrent_calls: None,
        }
    }

    fn check_name(&self) -> Result<()> {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
        if self.name.is_empty() || self.name.len() > 64 || !self.name.chars().all(ok_char) {
            return Err(RetrievalError::Config {
                name: self.name.clone(),
                problem: "name must be 1-64 characters of A-Z, a-z, 0-9, `_`, `-`, `.`".into(),
            });
        }
        if self.path.is_empty() {
            return Err(RetrievalError::Config {
                name: self.name.clone(),
                problem: "path is empty: give a library file name or path".into(),
            });
        }
        Ok(())
    }
}

/// Directories searched for bare library names when none are configured: the directory of
/// the running executable, and its parent when that directory is called `deps` (test and
/// bench binaries live in `target/<profile>/deps/`, plugins in `target/<profile>/`).
pub fn default_search_dirs() -> Vec<PathBuf> {
    let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    else {
        return Vec::new();
    };
    let mut dirs = vec![dir.clone()];
    if dir.file_name().is_some_and(|n| n == "deps")
        && let Some(parent) = dir.parent()
    {
        dirs.push(parent.to_path_buf());
    }
    dirs
}

/// Finds the library file for a configured `path`:
/// - a path with a directory part (`./x.so`, `/opt/p/x.so`, `plugins/x.so`) is used as is,
///   relative to the working directory;
/// - a bare file name (`libpalr_retriever_popularity.so`) is looked up in `search_dirs` in
///   order, first match wins;
/// - a bare name without extension (`palr_retriever_popularity`) is first turned into the
///   platform's file name (`libpalr_retriever_popularity.so` on Linux, `.dylib` on macOS,
///   `palr_retriever_popularity.dll` on Windows), then looked up the same way.
///
/// On failure returns the files tried.
pub fn resolve_library(path: &str, search_dirs: &[PathBuf]) -> Result<PathBuf, Vec<PathBuf>> {
    let p = Path::new(path);
    if p.is_absolute() || p.components().count() > 1 {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(vec![p.to_path_buf()])
        };
    }
    let file_name = if p.extension().is_none() {
        PathBuf::from(libloading::library_filename(p))
    } else {
        p.to_path_buf()
    };
    let tried: Vec<PathBuf> = search_dirs.iter().map(|d| d.join(&file_name)).collect();
    match tried.iter().find(|f| f.is_file()) {
        Some(found) => Ok(found.clone()),
        None => Err(tried),
    }
}

static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// What a name resolves to: a plugin, or a fusion of plugins (resolved when asked for, so
/// a member's reload reaches the fusion's next call).
#[derive(Debug, Clone)]
pub enum Source {
    /// One plugin instance.
    Plugin(Arc<Retriever>),
    /// A fusion and its members' instances, in the spec's order.
    Fusion(Arc<FusionSpec>, Vec<Arc<Retriever>>),
}

impl Source {
    /// Up to `k` candidates for `history` (see [`Retriever::retrieve`]); a fusion asks each
    /// member for `max(k, depth)` and merges ([`FusionSpec::merge`]).
    pub fn retrieve_with(
        &self,
        history: &[u32],
        k: usize,
        exclude: &[u32],
        ctx: &QueryContext<'_>,
    ) -> Result<Vec<(u32, f32)>> {
        match self {
            Source::Plugin(r) => r.retrieve_with(history, k, exclude, ctx),
            Source::Fusion(spec, members) => {
                let depth = k.max(spec.depth);
                let lists = members
                    .iter()
                    .map(|m| m.retrieve_with(history, depth, exclude, ctx))
                    .collect::<Result<Vec<_>>>()?;
                Ok(spec.merge(&lists, k))
            }
        }
    }
}

/// The loaded retrievers and the fusions over them, shared by all request threads.
///
/// Loading a name that is already loaded replaces it (a reload): requests already running
/// finish on the old instance, which the plugin destroys when the last of them is done; the
/// old library stays mapped.
pub struct RetrieverRegistry {
    view: Arc<TrainingView>,
    search_dirs: Vec<PathBuf>,
    retrievers: RwLock<BTreeMap<String, Arc<Retriever>>>,
    fusions: RwLock<BTreeMap<String, Arc<FusionSpec>>>,
}

impl std::fmt::Debug for RetrieverRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetrieverRegistry")
            .field("search_dirs", &self.search_dirs)
            .field("retrievers", &self.names())
            .finish_non_exhaustive()
    }
}

impl RetrieverRegistry {
    /// An empty registry over `view`, resolving bare names with [`default_search_dirs`].
    pub fn new(view: Arc<TrainingView>) -> Self {
        Self::with_search_dirs(view, default_search_dirs())
    }

    /// An empty registry resolving bare library names in `search_dirs` only.
    pub fn with_search_dirs(view: Arc<TrainingView>, search_dirs: Vec<PathBuf>) -> Self {
        Self {
            view,
            search_dirs,
            retrievers: RwLock::new(BTreeMap::new()),
            fusions: RwLock::new(BTreeMap::new()),
        }
    }

    /// Directories searched for bare library names, in order.
    pub fn search_dirs(&self) -> &[PathBuf] {
        &self.search_dirs
    }

    /// The training view every instance receives.
    pub fn view(&self) -> &Arc<TrainingView> {
        &self.view
    }

    /// Loads (or reloads, replacing the entry of the same name) one retriever.
    pub fn load(&self, spec: &RetrieverSpec) -> Result<RetrieverInfo> {
        self.load_with_abi(spec, ABI_VERSION)
    }

    /// `load` with the host's ABI version as a parameter, so tests can pose as another host.
    pub(crate) fn load_with_abi(
        &self,
        spec: &RetrieverSpec,
        host_abi: u32,
    ) -> Result<RetrieverInfo> {
        spec.check_name()?;
        if self.fusion_map().contains_key(&spec.name) {
            return Err(RetrievalError::Config {
                name: spec.name.clone(),
                problem: "a fusion has this name already; give the retriever its own".into(),
            });
        }
        let path = resolve_library(&spec.path, &self.search_dirs).map_err(|tried| {
            RetrievalError::LibraryNotFound {
                name: spec.name.clone(),
                path: spec.path.clone(),
                searched: tried
                    .iter()
                    .map(|t| format!("`{}`", t.display()))
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        })?;
        let generation = NEXT_GENERATION.fetch_add(1, Ordering::Relaxed);
        let retriever = Retriever::create(
            &spec.name,
            &path,
            &spec.config_json,
            Arc::clone(&self.view),
            host_abi,
            generation,
        )?;
        let info = retriever.info();
        let old = self.write().insert(spec.name.clone(), Arc::new(retriever));
        // Dropped outside the lock: destroying an instance runs plugin code.
        drop(old);
        Ok(info)
    }

    /// Loads every spec in order; stops at the first failure (those before it stay loaded).
    /// Names must be unique within `specs`.
    pub fn load_all(&self, specs: &[RetrieverSpec]) -> Result<Vec<RetrieverInfo>> {
        for (i, s) in specs.iter().enumerate() {
            if specs[..i].iter().any(|o| o.name == s.name) {
                return Err(RetrievalError::Config {
                    name: s.name.clone(),
                    problem: "defined more than once; give each retriever its own name".into(),
                });
            }
        }
        specs.iter().map(|s| self.load(s)).collect()
    }

    /// Adds (or replaces) a fusion of loaded retrievers. Its members must be loaded plugins,
    /// not fusions, and its name no plugin's.
    pub fn add_fusion(&self, spec: FusionSpec) -> Result<()> {
        RetrieverSpec::new(spec.name.clone(), "fusion", "").check_name()?;
        spec.check()?;
        let bad = |problem: String| RetrievalError::Config {
            name: spec.name.clone(),
            problem,
        };
        let plugins = self.read();
        if plugins.contains_key(&spec.name) {
            return Err(bad(
                "a retriever plugin has this name already; give the fusion its own".into(),
            ));
        }
        for m in &spec.members {
            if !plugins.contains_key(m) {
                let what = if self.fusion_map().contains_key(m) {
                    "is a fusion; members must be retriever plugins".to_owned()
                } else {
                    format!(
                        "is not a loaded retriever (loaded: {})",
                        plugins.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                };
                return Err(bad(format!("member {m:?} {what}")));
            }
        }
        drop(plugins);
        self.fusions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(spec.name.clone(), Arc::new(spec));
        Ok(())
    }

    /// The configured fusions, by name.
    pub fn fusions(&self) -> Vec<Arc<FusionSpec>> {
        self.fusion_map().values().cloned().collect()
    }

    /// Removes a retriever; returns whether it was loaded. Its instance is destroyed once no
    /// request uses it; its library stays mapped. Fusions that name it fail until it is back.
    pub fn remove(&self, name: &str) -> bool {
        let old = self.write().remove(name);
        old.is_some()
    }

    /// Names of the loaded retrievers and fusions, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.read().keys().cloned().collect();
        names.extend(self.fusion_map().keys().cloned());
        names.sort();
        names
    }

    /// Name, path, description, versions, generation and counters of every retriever, by name.
    pub fn list(&self) -> Vec<RetrieverInfo> {
        self.read().values().map(|r| r.info()).collect()
    }

    /// The retriever plugin called `name`.
    pub fn get(&self, name: &str) -> Result<Arc<Retriever>> {
        let map = self.read();
        map.get(name).cloned().ok_or_else(|| self.not_found(name))
    }

    fn not_found(&self, name: &str) -> RetrievalError {
        RetrievalError::NotFound {
            // A caller's string: never echoed whole.
            name: crate::util::clip(name),
            known: self.names(),
        }
    }

    /// What `name` resolves to: a plugin, or a fusion with its members' current instances.
    pub fn source(&self, name: &str) -> Result<Source> {
        if let Some(r) = self.read().get(name) {
            return Ok(Source::Plugin(Arc::clone(r)));
        }
        let spec = self
            .fusion_map()
            .get(name)
            .cloned()
            .ok_or_else(|| self.not_found(name))?;
        let members = spec
            .members
            .iter()
            .map(|m| {
                self.get(m).map_err(|_| RetrievalError::Config {
                    name: spec.name.clone(),
                    problem: format!("member {m:?} is no longer loaded"),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Source::Fusion(spec, members))
    }

    /// Asks retriever or fusion `name` for up to `k` candidates; see [`Retriever::retrieve`].
    pub fn retrieve(
        &self,
        name: &str,
        history: &[u32],
        k: usize,
        exclude: &[u32],
    ) -> Result<Vec<(u32, f32)>> {
        self.source(name)?
            .retrieve_with(history, k, exclude, &QueryContext::default())
    }

    fn fusion_map(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<FusionSpec>>> {
        // Entries are only ever replaced whole; a poisoned lock still holds a valid map.
        self.fusions.read().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Retriever>>> {
        // The map is only ever replaced entry by entry; a poisoned lock still holds a valid map.
        self.retrievers.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Retriever>>> {
        self.retrievers.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_from_toml_with_text_or_table_config() {
        #[derive(Deserialize)]
        struct Doc {
            retriever: Vec<RetrieverSpec>,
        }
        let doc: Doc = toml::from_str(
            r#"
            [[retriever]]
            name = "pop"
            path = "libpalr_retriever_popularity.so"
            config_json = '{"window_seconds": 60}'

            [[retriever]]
            name = "knn"
            path = "palr_retriever_itemknn"
            config = { neighbours = 50, decay = 0.9 }

            [[retriever]]
            name = "markov"
            path = "/opt/palr/libpalr_retriever_markov.so"
            "#,
        )
        .unwrap();
        let r = &doc.retriever;
        assert_eq!(
            r[0],
            RetrieverSpec::new(
                "pop",
                "libpalr_retriever_popularity.so",
                r#"{"window_seconds": 60}"#
            )
        );
        let knn: serde_json::Value = serde_json::from_str(&r[1].config_json).unwrap();
        assert_eq!(knn, serde_json::json!({"neighbours": 50, "decay": 0.9}));
        assert_eq!(r[2].config_json, "{}");
        let bad: Result<Doc, _> = toml::from_str("[[retriever]]\nname='a'\npath='b'\nconfg='{}'");
        assert!(
            bad.err()
                .unwrap()
                .to_string()
                .contains("unknown field `confg`")
        );
    }

    #[test]
    fn names_are_checked() {
        for bad in ["", "has space", "slash/", &"x".repeat(65)] {
            let e = RetrieverSpec::new(bad, "x.so", "{}")
                .check_name()
                .unwrap_err();
            assert!(e.to_string().contains("1-64 characters"), "{e}");
        }
        RetrieverSpec::new("pop-1.v2_x", "x.so", "{}")
            .check_name()
            .unwrap();
        let e = RetrieverSpec::new("a", "", "{}").check_name().unwrap_err();
        assert!(e.to_string().contains("path is empty"));
    }

    #[test]
    fn resolution_is_predictable() {
        let base = std::env::temp_dir().join(format!("palr-resolve-{}", std::process::id()));
        let (a, b) = (base.join("a"), base.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let lib = libloading::library_filename("palr_retriever_x");
        std::fs::write(b.join(&lib), b"").unwrap();
        std::fs::write(a.join("other.so"), b"").unwrap();
        std::fs::write(b.join("other.so"), b"").unwrap();
        let dirs = vec![a.clone(), b.clone()];
        // Bare names: first directory that has the file; extension-less names get the
        // platform's prefix and suffix.
        assert_eq!(
            resolve_library("other.so", &dirs).unwrap(),
            a.join("other.so")
        );
        assert_eq!(
            resolve_library("palr_retriever_x", &dirs).unwrap(),
            b.join(&lib)
        );
        let tried = resolve_library("missing.so", &dirs).unwrap_err();
        assert_eq!(tried, vec![a.join("missing.so"), b.join("missing.so")]);
        // Paths with a directory part are taken as they are.
        let full = b.join("other.so");
        assert_eq!(resolve_library(full.to_str().unwrap(), &[]).unwrap(), full);
        assert!(resolve_library("nope/other.so", &dirs).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn default_dirs_include_target_dir_for_deps_binaries() {
        let dirs = default_search_dirs();
        // This test binary lives in target/<profile>/deps/.
        assert!(dirs[0].ends_with("deps"), "{dirs:?}");
        assert_eq!(dirs[1], dirs[0].parent().unwrap());
    }
}
