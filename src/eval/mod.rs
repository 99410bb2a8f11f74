//! Offline evaluation: the standard leave-one-out protocol of sequential recommendation
//! (SASRec, Kang & McAuley 2018; PALR, Yang et al. 2023, Sec. 4) with full ranking.
//!
//! - Every rating is an implicit interaction; each user's interactions are ordered and split
//!   by [`Split`] (the single source of truth): last item = test target, second-to-last =
//!   validation target, the rest training history.
//! - Retrievers are built from what may be learnt before the evaluated stage,
//!   [`training_view`]: for the validation split the training histories (`Split::train`), for
//!   the test split the training histories plus each user's validation item
//!   (`Split::histories(Stage::Test)`). A user's row in the view is exactly the history that
//!   user is evaluated with, so no evaluated target is ever in what a retriever or ranker sees.
//! - Full ranking: the target is ranked against every item not in the user's history. A
//!   retriever is asked for its top `depth = max(100, candidates)` items (history excluded);
//!   items it does not return count as ranked below `depth`.
//! - `retriever + LLM` methods: the retriever's top `candidates` re-ranked by the LLM; the
//!   final list is the LLM's order of those, then the retriever's order from position
//!   `candidates + 1` on.
//! - Metrics ([`metrics`]): HR@1/5/10/20, NDCG@5/10/20, MRR, and each retriever's candidate
//!   recall@20/50/100 (the ceiling of any re-ranker of its candidates).
//!
//! The evaluation loop ([`evaluate`]) is written once against the [`Backend`] trait: in process
//! ([`LocalBackend`]: retriever plugins plus one [`Ranker`] per adapter) or against a running
//! server ([`remote::RemoteBackend`], the only gRPC code here).

pub mod metrics;
pub mod remote;
mod report;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::data::{Catalog, DataError, Example, Interactions, Sequences, Split, Stage};
use crate::rank::{RankError, RankMode, RankRequest, RankTimings, Ranker};
use crate::retrieval::{RetrievalError, RetrieverRegistry, RetrieverSpec, TrainingView};

pub use metrics::{MetricSums, Metrics};
pub use report::{MethodReport, Report, RetrieverReport, StageTimes, UserRanks};

/// Least depth a retriever's list is evaluated to (the largest recall cut-off).
pub const RETRIEVE_DEPTH: usize = 100;

/// Errors of the evaluation layer.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The evaluation is set up wrongly; the message says what to change.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Retrieval(#[from] RetrievalError),
    #[error(transparent)]
    Rank(#[from] RankError),
    /// A remote server failed or answered something the protocol forbids.
    #[error("server: {0}")]
    Remote(String),
    /// One user's evaluation failed.
    #[error("user {user}, method {method}: {source}")]
    User {
        user: String,
        method: String,
        #[source]
        source: Box<EvalError>,
    },
}

/// Result alias of this module.
pub type Result<T, E = EvalError> = std::result::Result<T, E>;

/// One evaluated method: a retriever alone, or a retriever whose top candidates an LLM
/// re-ranks in `mode`, optionally with a LoRA adapter.
///
/// Written `RETRIEVER`, `RETRIEVER+MODE` or `RETRIEVER+MODE@ADAPTER` (e.g. `markov`,
/// `markov+score`, `itemknn+generate@ml100k`). A score-mode method may end in `~W`: the
/// LLM's scores blended with the retriever's order at weight W
/// ([`crate::rank::apply_retriever_prior`], as `ranking.score_prior_weight = W` serves it);
/// methods that differ only in W share one LLM call per user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Method {
    pub retriever: String,
    pub mode: Option<RankMode>,
    pub adapter: Option<String>,
    /// The retriever-prior weight as written (a finite number >= 0).
    pub prior: Option<String>,
}

impl Method {
    /// The retriever alone.
    pub fn retriever(name: &str) -> Self {
        Method {
            retriever: name.into(),
            mode: None,
            adapter: None,
            prior: None,
        }
    }

    /// The retriever re-ranked by the LLM in `mode`.
    pub fn llm(name: &str, mode: RankMode, adapter: Option<&str>) -> Self {
        Method {
            retriever: name.into(),
            mode: Some(mode),
            adapter: adapter.map(str::to_owned),
            prior: None,
        }
    }

    /// The retriever-prior weight (0 without `~W`).
    pub fn prior_weight(&self) -> f32 {
        self.prior
            .as_deref()
            .and_then(|w| w.parse().ok())
            .unwrap_or(0.0)
    }

    /// Every retriever alone, then each with the LLM in score and generate mode, without and
    /// then with each adapter.
    pub fn defaults(retrievers: &[String], adapters: &[String]) -> Vec<Method> {
        let mut out = Vec::new();
        for r in retrievers {
            out.push(Method::retriever(r));
            for adapter in std::iter::once(None).chain(adapters.iter().map(|a| Some(a.as_str()))) {
                for mode in [RankMode::Score, RankMode::Generate] {
                    out.push(Method::llm(r, mode, adapter));
                }
            }
        }
        out
    }

    /// Parses a comma-separated list, rejecting duplicates.
    pub fn parse_list(s: &str) -> Result<Vec<Method>> {
        let mut out: Vec<Method> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let m: Method = part.parse()?;
            if out.contains(&m) {
                return Err(EvalError::Config(format!("method {m} is listed twice")));
            }
            out.push(m);
        }
        if out.is_empty() {
            return Err(EvalError::Config(
                "no methods given; e.g. --methods markov,markov+score".into(),
            ));
        }
        Ok(out)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.retriever)?;
        if let Some(mode) = self.mode {
            write!(f, "+{}", mode.name())?;
        }
        if let Some(a) = &self.adapter {
            write!(f, "@{a}")?;
        }
        if let Some(w) = &self.prior {
            write!(f, "~{w}")?;
        }
        Ok(())
    }
}

impl FromStr for Method {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Method> {
        let bad = |why: &str| {
            EvalError::Config(format!(
                "method {s:?}: {why}; write RETRIEVER, RETRIEVER+score, RETRIEVER+generate \
                 or RETRIEVER+MODE@ADAPTER, optionally ending in ~W (score mode)"
            ))
        };
        let (s_main, prior) = match s.split_once('~') {
            Some((m, w)) => match w.parse::<f32>() {
                Ok(v) if v.is_finite() && v >= 0.0 => (m, Some(w.to_owned())),
                _ => return Err(bad("the prior weight after `~` must be a number >= 0")),
            },
            None => (s, None),
        };
        let (rest, adapter) = match s_main.split_once('@') {
            Some((r, a)) if !a.is_empty() => (r, Some(a.to_owned())),
            Some(_) => return Err(bad("empty adapter name after `@`")),
            None => (s_main, None),
        };
        let (retriever, mode) = match rest.split_once('+') {
            Some((r, m)) => (r, Some(m.parse::<RankMode>().map_err(|e| bad(&e))?)),
            None => (rest, None),
        };
        if retriever.is_empty() {
            return Err(bad("no retriever name"));
        }
        if adapter.is_some() && mode.is_none() {
            return Err(bad("an adapter needs an LLM rank mode"));
        }
        if prior.is_some() && mode != Some(RankMode::Score) {
            return Err(bad("a retriever prior (`~W`) needs score mode"));
        }
        Ok(Method {
            retriever: retriever.to_owned(),
            mode,
            adapter,
            prior,
        })
    }
}

/// `valid` / `test`.
pub fn stage_name(stage: Stage) -> &'static str {
    ViewStage::from(stage).name()
}

/// Which interactions a retriever learns from: the evaluation views of the leave-one-out
/// protocol, or everything (serving). The name is the view's stage as plugins see it
/// (`palr_retriever_sdk::abi`); the server's `retrieval.training` takes it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ViewStage {
    /// Every user's training part ([`Split::train`]): what a validation evaluation's
    /// retrievers may learn from.
    #[serde(alias = "train-split")]
    Valid,
    /// The training parts plus each user's validation item ([`Split::histories`] at
    /// [`Stage::Test`]): what a test evaluation's retrievers may learn from.
    #[serde(alias = "test-split")]
    Test,
    /// Every interaction (serving; never for evaluation).
    All,
}

impl ViewStage {
    /// Every stage, in the order above.
    pub const ALL: [ViewStage; 3] = [ViewStage::Valid, ViewStage::Test, ViewStage::All];

    /// `valid`, `test` or `all`.
    pub fn name(self) -> &'static str {
        match self {
            ViewStage::Valid => "valid",
            ViewStage::Test => "test",
            ViewStage::All => palr_retriever_sdk::abi::STAGE_ALL,
        }
    }

    /// The evaluation stage whose targets this view leaves out, if any.
    pub fn evaluates(self) -> Option<Stage> {
        match self {
            ViewStage::Valid => Some(Stage::Valid),
            ViewStage::Test => Some(Stage::Test),
            ViewStage::All => None,
        }
    }
}

impl From<Stage> for ViewStage {
    fn from(stage: Stage) -> Self {
        match stage {
            Stage::Valid => ViewStage::Valid,
            Stage::Test => ViewStage::Test,
        }
    }
}

impl FromStr for ViewStage {
    type Err = EvalError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "valid" | "train-split" => Ok(ViewStage::Valid),
            "test" | "test-split" => Ok(ViewStage::Test),
            "all" => Ok(ViewStage::All),
            other => Err(EvalError::Config(format!(
                "unknown view stage {other:?}: use valid, test or all"
            ))),
        }
    }
}

impl fmt::Display for ViewStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the retrievers of a `stage` evaluation are built from, in words (for reports).
pub fn training_view_description(stage: Stage) -> &'static str {
    match stage {
        Stage::Valid => "training histories (Split::train; no validation or test item)",
        Stage::Test => {
            "training histories + each user's validation item \
             (Split::histories(Stage::Test); no test item)"
        }
    }
}

/// The interactions a retriever may learn from at `stage`, with their timestamps, the
/// catalogue's item data, the users' ids and the stage's name. For an evaluation stage every
/// user's row is the beginning of that user's ordered sequence and, for users with targets,
/// exactly the history the user is evaluated with ([`Split::histories`]): it ends before the
/// target's position. [`ViewStage::All`] holds every interaction.
pub fn training_view(
    split: &Split,
    inter: &Interactions,
    catalog: &Catalog,
    stage: impl Into<ViewStage>,
) -> Result<TrainingView> {
    let stage = stage.into();
    let rows = match stage.evaluates() {
        Some(s) => split.histories(s),
        None => inter.sequences().clone(),
    };
    view_of_prefixes(&rows, inter, catalog, stage.name())
}

/// The training data of `palr sft-data --tail N`'s list-making retriever: every user's
/// training part ([`Split::train`]) without its last `tail` items (`tail = 0`: the training
/// view of [`Stage::Valid`]), with their timestamps; its stage is `valid-before-tail-N`.
pub fn training_view_before_tail(
    split: &Split,
    inter: &Interactions,
    catalog: &Catalog,
    tail: usize,
) -> Result<TrainingView> {
    let rows = Sequences::from_slices((0..split.n_users() as u32).map(|u| {
        let train = split.train(u);
        &train[..train.len().saturating_sub(tail)]
    }));
    let stage = match tail {
        0 => ViewStage::Valid.name().to_owned(),
        n => format!("valid-before-tail-{n}"),
    };
    view_of_prefixes(&rows, inter, catalog, &stage)
}

/// A retriever's view of `rows`, one per user, each the beginning of that user's ordered
/// interactions, with their timestamps, item data and user ids.
fn view_of_prefixes(
    rows: &Sequences,
    inter: &Interactions,
    catalog: &Catalog,
    stage: &str,
) -> Result<TrainingView> {
    let n_items = u32::try_from(catalog.len())
        .map_err(|_| EvalError::Config("more than u32::MAX items".into()))?;
    let mut timestamps = Vec::with_capacity(rows.items().len());
    for (u, row) in rows.iter() {
        let full = inter.items_of(u);
        // `Split` slices each user's one ordered sequence, so a row is a prefix of it.
        if full.get(..row.len()) != Some(row) {
            return Err(EvalError::Config(format!(
                "the split's history of user {} is not a prefix of the user's interactions; \
                 the split and the interactions come from different data",
                inter.user_id(u).unwrap_or("?")
            )));
        }
        timestamps.extend_from_slice(&inter.timestamps_of(u)[..row.len()]);
    }
    Ok(TrainingView::new(
        n_items,
        rows.offsets().to_vec(),
        rows.items().to_vec(),
        Some(timestamps),
    )?
    .with_items(crate::retrieval::item_table(catalog))?
    .with_user_ids(inter.user_ids().to_vec())?
    .with_stage(stage))
}

/// The users evaluated at `stage` (those with a target), all of them or `n` drawn without
/// replacement with `seed`, in user index order.
pub fn select_users(split: &Split, stage: Stage, n: Option<usize>, seed: u64) -> Vec<u32> {
    let all: Vec<u32> = split.examples(stage).map(|e| e.user).collect();
    match n {
        Some(n) if n < all.len() => {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut picked: Vec<u32> = rand::seq::index::sample(&mut rng, all.len(), n)
                .into_iter()
                .map(|i| all[i])
                .collect();
            picked.sort_unstable();
            picked
        }
        _ => all,
    }
}

/// An LLM's ordering of one candidate list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LlmRanking {
    /// Candidates, best first (a backend may return fewer than it was given; the rest follow
    /// in retriever order).
    pub order: Vec<u32>,
    /// The score of each item of `order` (log-probabilities), where the backend gives them.
    pub scores: Vec<f32>,
    pub timings: RankTimings,
}

impl LlmRanking {
    /// The order after blending in the retriever prior at `weight`
    /// ([`crate::rank::apply_retriever_prior`]); needs a score for every candidate.
    pub fn with_prior(&self, candidates: &[u32], weight: f32) -> Result<Vec<u32>> {
        if self.scores.len() != self.order.len() || self.order.len() != candidates.len() {
            return Err(EvalError::Config(format!(
                "a retriever prior needs the LLM's score of every candidate; got {} scores \
                 for {} ranked of {} candidates",
                self.scores.len(),
                self.order.len(),
                candidates.len()
            )));
        }
        let mut items = Vec::with_capacity(self.order.len());
        for (&item, &score) in self.order.iter().zip(&self.scores) {
            let pos = candidates.iter().position(|&c| c == item).ok_or_else(|| {
                EvalError::Remote(format!("the ranker returned item {item}, not a candidate"))
            })?;
            items.push(crate::rank::Ranked {
                item,
                score,
                candidate_rank: pos as u32,
                by_llm: true,
            });
        }
        crate::rank::apply_retriever_prior(&mut items, weight);
        Ok(items.iter().map(|r| r.item).collect())
    }
}

/// Where retrieval and ranking run: in process or on a server.
pub trait Backend {
    /// What runs (for the report).
    fn describe(&self) -> String;
    /// The view of the data the retrievers learn from: its stage and fingerprint, when the
    /// backend can tell. An evaluation runs only when it is exactly the evaluated stage's
    /// view ([`training_view`]): a retriever that learnt from more has seen the targets.
    fn training_view(&self) -> Option<(String, String)>;
    /// Checks that every method can run (retrievers and adapters exist, limits allow `depth`
    /// and `candidates`) before any user is evaluated.
    fn check(&self, methods: &[Method], depth: usize, candidates: usize) -> Result<()>;
    /// `retriever`'s top `n` items for `history` (oldest first), best first, never a history
    /// item.
    fn retrieve(&self, retriever: &str, history: &[u32], n: usize) -> Result<Vec<u32>>;
    /// The LLM's order of `candidates` for `history` in `mode` with `adapter`.
    fn rank(
        &self,
        mode: RankMode,
        adapter: Option<&str>,
        history: &[u32],
        candidates: &[u32],
    ) -> Result<LlmRanking>;
}

/// In-process backend: retriever plugins over a training view built by [`training_view`],
/// and rankers keyed by adapter (`None` = the base model).
pub struct LocalBackend {
    registry: RetrieverRegistry,
    rankers: BTreeMap<Option<String>, Arc<Ranker>>,
}

impl LocalBackend {
    /// Builds the training view for `stage` from `split` and loads `specs` over it.
    pub fn load(
        split: &Split,
        inter: &Interactions,
        catalog: &Catalog,
        stage: Stage,
        specs: &[RetrieverSpec],
    ) -> Result<Self> {
        let view = training_view(split, inter, catalog, stage)?;
        let registry = RetrieverRegistry::new(Arc::new(view));
        registry.load_all(specs)?;
        Ok(Self::from_registry(registry))
    }

    /// A backend over retrievers already loaded (and fusions added) on a view of
    /// [`training_view`]; [`evaluate`] checks that the view is the evaluated stage's.
    pub fn from_registry(registry: RetrieverRegistry) -> Self {
        LocalBackend {
            registry,
            rankers: BTreeMap::new(),
        }
    }

    /// Adds the ranker that serves `adapter` (`None` = the base model). Adapters are a
    /// ranker built over a model loaded with that adapter: nothing else here changes when
    /// the engine gains them.
    pub fn with_ranker(mut self, adapter: Option<&str>, ranker: Arc<Ranker>) -> Self {
        self.rankers.insert(adapter.map(str::to_owned), ranker);
        self
    }

    /// The loaded retrievers (and their training view).
    pub fn registry(&self) -> &RetrieverRegistry {
        &self.registry
    }
}

impl Backend for LocalBackend {
    fn describe(&self) -> String {
        "in process".into()
    }

    fn training_view(&self) -> Option<(String, String)> {
        let v = self.registry.view();
        Some((v.stage().to_owned(), v.fingerprint().to_owned()))
    }

    fn check(&self, methods: &[Method], _depth: usize, candidates: usize) -> Result<()> {
        let names = self.registry.names();
        for m in methods {
            if !names.contains(&m.retriever) {
                return Err(EvalError::Config(format!(
                    "method {m}: no retriever called {:?} is loaded (loaded: {}); add it with \
                     --retriever {0}=LIBRARY, --fusion {0}=rrf:A,B, or a --config file that \
                     configures it",
                    m.retriever,
                    names.join(", ")
                )));
            }
            let Some(mode) = m.mode else { continue };
            // A ranker of the adapter's own, or the base ranker whose model has it loaded.
            let ranker = self
                .rankers
                .get(&m.adapter)
                .or_else(|| {
                    let base = self.rankers.get(&None)?;
                    let a = m.adapter.as_deref()?;
                    base.has_adapter(a).then_some(base)
                })
                .ok_or_else(|| {
                    EvalError::Config(match &m.adapter {
                        None => format!("method {m} needs the LLM, but no model is loaded"),
                        Some(a) => format!(
                            "method {m}: adapter {a:?} is not loaded; pass --adapter {a}=DIR"
                        ),
                    })
                })?;
            crate::rank::check_score_cap(candidates, mode, ranker.max_score_candidates()).map_err(
                |p| {
                    EvalError::Config(format!(
                        "method {m}: {} (--candidates)",
                        p.message(|_| String::new())
                    ))
                },
            )?;
        }
        Ok(())
    }

    fn retrieve(&self, retriever: &str, history: &[u32], n: usize) -> Result<Vec<u32>> {
        Ok(self
            .registry
            .retrieve(retriever, history, n, &[])?
            .into_iter()
            .map(|(i, _)| i)
            .collect())
    }

    fn rank(
        &self,
        mode: RankMode,
        adapter: Option<&str>,
        history: &[u32],
        candidates: &[u32],
    ) -> Result<LlmRanking> {
        // A ranker of its own for this adapter, else the base ranker's model picks it.
        let ranker = self
            .rankers
            .get(&adapter.map(str::to_owned))
            .or_else(|| self.rankers.get(&None))
            .ok_or_else(|| EvalError::Config(format!("no ranker for adapter {adapter:?}")))?;
        let pinned = adapter
            .map(|a| ranker.adapter(a))
            .transpose()
            .map_err(|e| EvalError::Config(e.to_string()))?
            .flatten();
        let out = ranker.rank(&RankRequest {
            history,
            candidates,
            k: candidates.len(),
            mode,
            adapter: pinned.as_ref(),
            deadline: None,
            cancel: None,
        })?;
        Ok(LlmRanking {
            order: out.items.iter().map(|r| r.item).collect(),
            scores: out.items.iter().map(|r| r.score).collect(),
            timings: out.timings,
        })
    }
}

/// How to evaluate.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub stage: Stage,
    pub methods: Vec<Method>,
    /// Candidates an LLM method re-ranks (the retriever's top ones).
    pub candidates: usize,
    /// Evaluate this many sampled users (`None` = all).
    pub users: Option<usize>,
    pub seed: u64,
    /// Keep every user's target rank per method in the report.
    pub per_user: bool,
}

/// The final list of an LLM method: the LLM's order of the candidates, any candidate it left
/// out in retriever order, then the retriever's list beyond the candidates. Errors if the LLM
/// named an item that is not a candidate, or one twice.
pub fn merge_llm_order(retrieved: &[u32], n_candidates: usize, llm: &[u32]) -> Result<Vec<u32>> {
    let candidates = &retrieved[..n_candidates.min(retrieved.len())];
    let mut used = vec![false; candidates.len()];
    let mut out = Vec::with_capacity(retrieved.len());
    for &item in llm {
        let pos = candidates.iter().position(|&c| c == item).ok_or_else(|| {
            EvalError::Remote(format!("the ranker returned item {item}, not a candidate"))
        })?;
        if std::mem::replace(&mut used[pos], true) {
            return Err(EvalError::Remote(format!(
                "the ranker returned item {item} twice"
            )));
        }
        out.push(item);
    }
    out.extend(
        candidates
            .iter()
            .zip(&used)
            .filter(|&(_, &u)| !u)
            .map(|(&c, _)| c),
    );
    out.extend_from_slice(&retrieved[candidates.len()..]);
    Ok(out)
}

/// Refuses a backend whose retrievers did not learn from exactly `expected`, the training view
/// of the evaluated `stage`.
fn check_training_view(backend: &dyn Backend, expected: &TrainingView, stage: Stage) -> Result<()> {
    let split = stage_name(stage);
    let short = |fp: &str| fp[..fp.len().min(12)].to_owned();
    match backend.training_view() {
        Some((_, fp)) if fp == expected.fingerprint() => Ok(()),
        Some((got, fp)) => Err(EvalError::Config(format!(
            "the retrievers learn from the {got} view ({}) but the {split} split must be \
             evaluated with retrievers built on the {split} view ({}): a retriever that learnt \
             from other interactions may have seen the targets. {}",
            short(&fp),
            short(expected.fingerprint()),
            if backend.describe().starts_with("server") {
                format!(
                    "Serve the same data set with `[retrieval] training = \"{split}\"` \
                     (PALR_RETRIEVAL__TRAINING={split})"
                )
            } else {
                format!("Build the retrievers on the {split} view")
            }
        ))),
        None => Err(EvalError::Config(format!(
            "{} does not say which interactions its retrievers learn from (an older palr?), \
             so the {split} split cannot be checked for leaked targets",
            backend.describe()
        ))),
    }
}

/// Refuses options nothing can be evaluated with: no methods, no candidates for an LLM
/// method, zero users.
fn check_options(opts: &EvalOptions) -> Result<()> {
    if opts.methods.is_empty() {
        return Err(EvalError::Config("no methods to evaluate".into()));
    }
    if opts.candidates == 0 && opts.methods.iter().any(|m| m.mode.is_some()) {
        return Err(EvalError::Config(
            "--candidates must be at least 1 for LLM methods".into(),
        ));
    }
    if opts.users == Some(0) {
        return Err(EvalError::Config(
            "--users must be at least 1 (leave it out to evaluate every user)".into(),
        ));
    }
    Ok(())
}

/// The retrievers `methods` use, in first-use order (each is asked once per user).
fn retrievers_of(methods: &[Method]) -> Vec<&str> {
    let mut retrievers: Vec<&str> = Vec::new();
    for m in methods {
        if !retrievers.contains(&m.retriever.as_str()) {
            retrievers.push(&m.retriever);
        }
    }
    retrievers
}

/// What [`evaluate`] sums over users.
struct Totals {
    /// Per method (in `EvalOptions::methods` order): metric sums and stage times.
    sums: Vec<MetricSums>,
    times: Vec<StageTimes>,
    /// Per retriever (in [`retrievers_of`] order): retrieval seconds and candidate recall.
    retrieve_s: Vec<f64>,
    recall: Vec<MetricSums>,
}

impl Totals {
    /// Zero totals for `methods` methods and `retrievers` retrievers.
    fn new(methods: usize, retrievers: usize) -> Self {
        Self {
            sums: vec![MetricSums::default(); methods],
            times: vec![StageTimes::default(); methods],
            retrieve_s: vec![0f64; retrievers],
            recall: vec![MetricSums::default(); retrievers],
        }
    }
}

/// Evaluates every method on one user's example `ex` and adds the outcome to `totals`: each
/// of `retrievers` is asked once for its top `depth`, and each method that re-ranks with the
/// LLM does so on that list's top `opts.candidates` (methods that differ only in the prior
/// weight share one LLM call). Returns the target's rank per method when `opts.per_user`,
/// else an empty map.
fn evaluate_user(
    backend: &dyn Backend,
    opts: &EvalOptions,
    retrievers: &[&str],
    depth: usize,
    user_id: &str,
    ex: &Example<'_>,
    totals: &mut Totals,
) -> Result<BTreeMap<String, Option<usize>>> {
    let mut ranks = BTreeMap::new();
    for (ri, &r) in retrievers.iter().enumerate() {
        let t0 = Instant::now();
        let retrieved = backend
            .retrieve(r, ex.history, depth)
            .map_err(|e| EvalError::User {
                user: user_id.into(),
                method: r.into(),
                source: Box::new(e),
            })?;
        let dt_retrieve = t0.elapsed().as_secs_f64();
        totals.retrieve_s[ri] += dt_retrieve;
        let cand_rank = metrics::rank_of(&retrieved, ex.target);
        totals.recall[ri].add(cand_rank, cand_rank);
        let mut llm_calls: std::collections::HashMap<
            (RankMode, Option<String>),
            (LlmRanking, f64),
        > = std::collections::HashMap::new();
        for (mi, m) in opts.methods.iter().enumerate() {
            if m.retriever != r {
                continue;
            }
            let t = &mut totals.times[mi];
            t.retrieve_s += dt_retrieve;
            let final_list = match m.mode {
                Some(mode) if !retrieved.is_empty() => {
                    let t1 = Instant::now();
                    let n = opts.candidates.min(retrieved.len());
                    let wrap = |e| EvalError::User {
                        user: user_id.into(),
                        method: m.to_string(),
                        source: Box::new(e),
                    };
                    // Methods that differ only in the prior weight share one LLM call.
                    let key = (mode, m.adapter.clone());
                    if !llm_calls.contains_key(&key) {
                        let llm = backend
                            .rank(mode, m.adapter.as_deref(), ex.history, &retrieved[..n])
                            .map_err(wrap)?;
                        llm_calls.insert(key.clone(), (llm, t1.elapsed().as_secs_f64()));
                    }
                    let (llm, dt) = &llm_calls[&key];
                    let order = match &m.prior {
                        Some(_) => llm
                            .with_prior(&retrieved[..n], m.prior_weight())
                            .map_err(wrap)?,
                        None => llm.order.clone(),
                    };
                    let list = merge_llm_order(&retrieved, n, &order).map_err(wrap)?;
                    // A shared call counts for each method: each would pay it alone.
                    t.add_rank(&llm.timings, *dt);
                    list
                }
                _ => retrieved.clone(),
            };
            t.total_s += dt_retrieve;
            let rank = metrics::rank_of(&final_list, ex.target);
            totals.sums[mi].add(rank, cand_rank);
            if opts.per_user {
                ranks.insert(m.to_string(), rank);
            }
        }
    }
    Ok(ranks)
}

/// Runs the protocol of the module docs over `backend`; `progress(done, total)` is called after
/// each user.
pub fn evaluate(
    backend: &dyn Backend,
    split: &Split,
    catalog: &Catalog,
    inter: &Interactions,
    opts: &EvalOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Report> {
    let t_start = Instant::now();
    check_options(opts)?;
    let expected = training_view(split, inter, catalog, opts.stage)?;
    check_training_view(backend, &expected, opts.stage)?;
    let depth = RETRIEVE_DEPTH.max(opts.candidates);
    backend.check(&opts.methods, depth, opts.candidates)?;

    let users = select_users(split, opts.stage, opts.users, opts.seed);
    if users.is_empty() {
        return Err(EvalError::Config(
            "no user has a target at this split (users need at least 3 interactions)".into(),
        ));
    }
    let retrievers = retrievers_of(&opts.methods);
    let mut totals = Totals::new(opts.methods.len(), retrievers.len());
    let mut per_user = Vec::new();

    for (done, &u) in users.iter().enumerate() {
        let ex = match opts.stage {
            Stage::Valid => split.valid(u),
            Stage::Test => split.test(u),
        }
        .expect("select_users returns users with targets");
        let user_id = inter.user_id(u).unwrap_or("?");
        let ranks = evaluate_user(backend, opts, &retrievers, depth, user_id, &ex, &mut totals)?;
        if opts.per_user {
            per_user.push(UserRanks {
                user: user_id.into(),
                target: catalog.id(ex.target).unwrap_or("?").into(),
                ranks,
            });
        }
        progress(done + 1, users.len());
    }

    let n = users.len();
    Ok(Report {
        split: stage_name(opts.stage).into(),
        training_view: training_view_description(opts.stage).into(),
        backend: backend.describe(),
        n_items: catalog.len(),
        n_users: split.n_users(),
        n_evaluable_users: split.examples(opts.stage).count(),
        users: n,
        sampled: n < split.examples(opts.stage).count(),
        seed: opts.seed,
        candidates: opts.candidates,
        depth,
        retrievers: retrievers
            .iter()
            .enumerate()
            .map(|(i, r)| {
                RetrieverReport::new(r, &totals.recall[i].mean(), totals.retrieve_s[i], n)
            })
            .collect(),
        methods: opts
            .methods
            .iter()
            .enumerate()
            .map(|(i, m)| MethodReport::new(m, totals.sums[i].mean(), totals.times[i].clone(), n))
            .collect(),
        per_user: opts.per_user.then_some(per_user),
        wall_s: t_start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{InteractionsBuilder, Item};

    #[test]
    fn methods_parse_and_print() {
        let m: Method = "markov".parse().unwrap();
        assert_eq!(m, Method::retriever("markov"));
        let m: Method = "knn-2+score".parse().unwrap();
        assert_eq!(m, Method::llm("knn-2", RankMode::Score, None));
        let m: Method = "markov+generate@ml".parse().unwrap();
        assert_eq!(m, Method::llm("markov", RankMode::Generate, Some("ml")));
        assert_eq!(m.to_string(), "markov+generate@ml");
        for (bad, why) in [
            ("markov+rerank", "unknown rank mode"),
            ("+score", "no retriever"),
            ("markov@a", "needs an LLM rank mode"),
            ("markov+score@", "empty adapter"),
        ] {
            let e = bad.parse::<Method>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let m: Method = "markov+score@ml~0.5".parse().unwrap();
        assert_eq!(m.prior.as_deref(), Some("0.5"));
        assert_eq!(m.adapter.as_deref(), Some("ml"));
        assert_eq!(m.prior_weight(), 0.5);
        assert_eq!(m.to_string(), "markov+score@ml~0.5");
        assert_eq!(
            "markov+score".parse::<Method>().unwrap().prior_weight(),
            0.0
        );
        for bad in [
            "markov~1",
            "markov+generate~1",
            "markov+score~-1",
            "markov+score~x",
        ] {
            let e = bad.parse::<Method>().unwrap_err().to_string();
            assert!(e.contains("prior") || e.contains('~'), "{bad}: {e}");
        }
        let list = Method::parse_list("pop, pop+score ,markov").unwrap();
        assert_eq!(list.len(), 3);
        let e = Method::parse_list("pop,pop").unwrap_err().to_string();
        assert!(e.contains("twice"), "{e}");
        assert!(Method::parse_list(" , ").is_err());
        let d = Method::defaults(&["a".into()], &["x".into()]);
        let names: Vec<String> = d.iter().map(|m| m.to_string()).collect();
        assert_eq!(
            names,
            ["a", "a+score", "a+generate", "a+score@x", "a+generate@x"]
        );
    }

    #[test]
    fn merged_list_puts_the_llm_order_first() {
        let retrieved = [10, 11, 12, 13, 14, 15];
        // The LLM reorders the top 4 but names only three of them.
        let out = merge_llm_order(&retrieved, 4, &[13, 10, 12]).unwrap();
        assert_eq!(out, [13, 10, 12, 11, 14, 15]);
        // A full ordering.
        assert_eq!(
            merge_llm_order(&retrieved, 3, &[12, 11, 10]).unwrap(),
            [12, 11, 10, 13, 14, 15]
        );
        // Fewer retrieved than candidates asked for.
        assert_eq!(merge_llm_order(&[1, 2], 5, &[2]).unwrap(), [2, 1]);
        let e = merge_llm_order(&retrieved, 3, &[14]).unwrap_err();
        assert!(e.to_string().contains("not a candidate"), "{e}");
        let e = merge_llm_order(&retrieved, 3, &[10, 10]).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
    }

    /// A catalog of `n` items "0".."n-1" and users with the given sequences (time = position).
    fn data(n: usize, seqs: &[&[u32]]) -> (Catalog, Interactions, Split) {
        let cat = Catalog::from_items(
            (0..n)
                .map(|i| Item::new(i.to_string(), &format!("Film {i}")))
                .collect(),
        )
        .unwrap();
        let mut b = InteractionsBuilder::new();
        for (u, s) in seqs.iter().enumerate() {
            for (t, &i) in s.iter().enumerate() {
                b.push(&u.to_string(), i, t as i64, None);
            }
        }
        let inter = b.build(&cat);
        let split = Split::leave_one_out(&inter);
        (cat, inter, split)
    }

    #[test]
    fn training_view_rows_end_before_the_target() {
        let (cat, inter, split) = data(9, &[&[0, 1, 2, 3, 4], &[5, 6], &[7, 8, 0]]);
        let valid = training_view(&split, &inter, &cat, Stage::Valid).unwrap();
        let test = training_view(&split, &inter, &cat, Stage::Test).unwrap();
        let all = training_view(&split, &inter, &cat, ViewStage::All).unwrap();
        let row = |v: &TrainingView, u: usize| {
            let o = v.offsets();
            v.items()[o[u] as usize..o[u + 1] as usize].to_vec()
        };
        assert_eq!(row(&valid, 0), [0, 1, 2]);
        assert_eq!(row(&test, 0), [0, 1, 2, 3]);
        // A user too short to evaluate keeps everything in both views.
        assert_eq!(row(&valid, 1), [5, 6]);
        assert_eq!(row(&test, 1), [5, 6]);
        assert_eq!(row(&valid, 2), [7]);
        assert_eq!(row(&test, 2), [7, 8]);
        assert_eq!(all.items(), inter.sequences().items());
        // Timestamps run parallel (time = position in these sequences).
        assert_eq!(test.timestamps().unwrap(), [0, 1, 2, 3, 0, 1, 0, 1]);
        // Each view names its stage and carries the catalogue and user ids; the fingerprints
        // of the three views differ.
        assert_eq!(
            (valid.stage(), test.stage(), all.stage()),
            ("valid", "test", "all")
        );
        assert_eq!(valid.user_ids().unwrap(), ["0", "1", "2"]);
        assert_eq!(valid.item_data().unwrap().ids()[8], "8");
        assert_ne!(valid.fingerprint(), test.fingerprint());
        assert_ne!(test.fingerprint(), all.fingerprint());
        for s in ViewStage::ALL {
            assert_eq!(s.name().parse::<ViewStage>().unwrap(), s);
        }
        assert!("train".parse::<ViewStage>().is_err());
        assert_eq!(select_users(&split, Stage::Test, None, 0), [0, 2]);
        assert_eq!(select_users(&split, Stage::Test, Some(1), 3).len(), 1);
    }

    /// A backend with fixed lists: retrieval returns items by descending index, the LLM
    /// reverses the candidates.
    struct Fixed {
        /// What `training_view` reports.
        view: Option<(String, String)>,
        n_items: u32,
    }

    impl Backend for Fixed {
        fn describe(&self) -> String {
            "fixed".into()
        }
        fn training_view(&self) -> Option<(String, String)> {
            self.view.clone()
        }
        fn check(&self, _: &[Method], _: usize, _: usize) -> Result<()> {
            Ok(())
        }
        fn retrieve(&self, _: &str, history: &[u32], n: usize) -> Result<Vec<u32>> {
            Ok((0..self.n_items)
                .rev()
                .filter(|i| !history.contains(i))
                .take(n)
                .collect())
        }
        fn rank(
            &self,
            _: RankMode,
            _: Option<&str>,
            _: &[u32],
            candidates: &[u32],
        ) -> Result<LlmRanking> {
            Ok(LlmRanking {
                order: candidates.iter().rev().copied().collect(),
                // The reversed order, one nat apart.
                scores: (0..candidates.len()).map(|i| -(i as f32)).collect(),
                timings: RankTimings {
                    prefill_s: 0.5,
                    ..RankTimings::default()
                },
            })
        }
    }

    #[test]
    fn evaluate_ranks_targets_in_the_merged_list() {
        // Items 0..9. User 0's test target 9 is the retriever's first; user 1's target 5 is its
        // third (9, 8, 7 are not in the history... 6 is): lists below.
        let (cat, inter, split) = data(10, &[&[0, 1, 2, 9], &[6, 3, 4, 5]]);
        let opts = EvalOptions {
            stage: Stage::Test,
            methods: Method::parse_list("r,r+score,r+score~5").unwrap(),
            candidates: 3,
            users: None,
            seed: 0,
            per_user: true,
        };
        let view_of = |stage: ViewStage| {
            let v = training_view(&split, &inter, &cat, stage).unwrap();
            Some((v.stage().to_owned(), v.fingerprint().to_owned()))
        };
        let backend = Fixed {
            view: view_of(ViewStage::Test),
            n_items: 10,
        };
        let mut calls = Vec::new();
        let rep = evaluate(&backend, &split, &cat, &inter, &opts, &mut |d, t| {
            calls.push((d, t))
        })
        .unwrap();
        assert_eq!(calls, [(1, 2), (2, 2)]);
        // user 0: history [0,1,2], list [9,8,7,6,5,4,3] -> target 9 at 1; LLM reverses the
        //   top 3 -> [7,8,9,...] -> rank 3.
        // user 1: history [6,3,4], list [9,8,7,5,2,1,0] -> target 5 at 4 (beyond the 3
        //   candidates: unchanged by the LLM).
        let ranks = &rep.per_user.as_ref().unwrap();
        assert_eq!(ranks[0].ranks["r"], Some(1));
        assert_eq!(ranks[0].ranks["r+score"], Some(3));
        assert_eq!(ranks[1].ranks["r"], Some(4));
        assert_eq!(ranks[1].ranks["r+score"], Some(4));
        assert_eq!(ranks[1].target, "5");
        // With the prior at weight 5 the retriever's order wins back: the LLM's scores
        // (0, -1, -2 for 7, 8, 9) lose to -5·ln(1 + position) (9 first, at 0).
        assert_eq!(ranks[0].ranks["r+score~5"], Some(1));
        assert_eq!(ranks[1].ranks["r+score~5"], Some(4));
        let alone = &rep.methods[0].metrics;
        assert_eq!((alone.hr_1, alone.hr_5), (0.5, 1.0));
        assert!((alone.mrr - (1.0 + 0.25) / 2.0).abs() < 1e-12);
        let llm = &rep.methods[1].metrics;
        assert_eq!((llm.hr_1, llm.hr_5), (0.0, 1.0));
        assert!((llm.ndcg_5 - (0.5 + 1.0 / 5f64.log2()) / 2.0).abs() < 1e-12);
        // Recall is the retriever's, for both methods.
        assert_eq!(llm.recall_20, 1.0);
        assert_eq!(rep.retrievers[0].recall.recall_20, 1.0);
        assert_eq!(rep.methods[1].times.prefill_s, 1.0);
        assert_eq!((rep.users, rep.n_evaluable_users, rep.depth), (2, 2, 100));
        // The Markdown table has a row per method.
        let md = rep.markdown();
        assert!(md.contains("| r+score |"), "{md}");

        // Retrievers built on another view are refused: one that learnt from more (all
        // interactions: the test targets included) or less, or one that cannot tell.
        for (view, needle) in [
            (view_of(ViewStage::All), "learn from the all view"),
            (view_of(ViewStage::Valid), "learn from the valid view"),
            (None, "does not say which interactions"),
        ] {
            let wrong = Fixed { view, n_items: 10 };
            let e = evaluate(&wrong, &split, &cat, &inter, &opts, &mut |_, _| {}).unwrap_err();
            assert!(e.to_string().contains(needle), "{e}");
            assert!(
                e.to_string().contains("built on the test view") || wrong.view.is_none(),
                "{e}"
            );
        }
        let zero = EvalOptions {
            users: Some(0),
            ..opts.clone()
        };
        let e = evaluate(&backend, &split, &cat, &inter, &zero, &mut |_, _| {}).unwrap_err();
        assert!(e.to_string().contains("--users must be at least 1"), "{e}");
        let no_candidates = EvalOptions {
            candidates: 0,
            ..opts
        };
        let e = evaluate(
            &backend,
            &split,
            &cat,
            &inter,
            &no_candidates,
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("--candidates must be at least 1"),
            "{e}"
        );
    }
}
