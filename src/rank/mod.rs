//! Ranking candidates with the LLM, two ways.
//!
//! - **Generate** (PALR, Yang et al. 2023): the prompt lists the user's history
//!   titles and the candidate titles; the model writes titles, one per line, and a
//!   [`TokenTrie`] of the candidates' tokenizations constrains every step, so each
//!   written item is a candidate and none repeats. An item's score is the sum of the
//!   log-probabilities (full-vocabulary log-softmax) of its tokens. Tokens the trie
//!   forces (one live continuation) are fed together in one forward pass.
//! - **Score** (one pass, as in LlamaRec, Yue et al. 2023): candidates are labelled
//!   with single-token labels; one prefill gives the distribution over the labels,
//!   which ranks every candidate at once.
//!
//! Candidates the LLM did not rank follow in the caller's (retriever's) order. The
//! prompt's shared prefix is run once per mode and its KV cache copied into each
//! request's session; sessions are pooled, so a request allocates no KV cache.
//!
//! The ranker is synchronous and knows nothing of gRPC: the service runs it on a
//! blocking thread and maps [`RankError`] to status codes.

pub mod prompt;
pub mod trie;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::chat::ChatTemplate;
use crate::data::{Catalog, TitleStyle};
use crate::engine::{AdapterRef, EngineError, LanguageModel, Logits, Session};
use crate::generate::{FinishReason, GenerateError, GenerateParams, generate_in};
use crate::sampling::SamplingParams;
use crate::tokenizer::{Tokenizer, TokenizerError};

pub use prompt::{PromptBuilder, PromptConfig};
pub use trie::TokenTrie;

/// What makes a candidate list unrankable. The one definition of these rules and their
/// words: the ranker checks its requests with [`check_candidates`], and the service checks
/// callers' lists up front with the same function, naming the caller's ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidateProblem {
    /// `candidates[pos]` appears earlier in the list too.
    Repeated { pos: usize },
    /// `candidates[pos]` is in the user's history.
    InHistory { pos: usize },
    /// Score mode labels each candidate with one character: at most `max` candidates.
    OverScoreCap { got: usize, max: usize },
}

impl CandidateProblem {
    /// The message, with `id(pos)` naming the candidate at `pos` as the caller wrote it.
    pub fn message(self, id: impl Fn(usize) -> String) -> String {
        match self {
            Self::Repeated { pos } => format!(
                "candidates[{pos}] = {:?} is listed twice: send each candidate once",
                id(pos)
            ),
            Self::InHistory { pos } => format!(
                "candidates[{pos}] = {:?} is in the history: candidates must be items the user \
                 has not interacted with",
                id(pos)
            ),
            Self::OverScoreCap { got, max } => format!(
                "score mode ranks at most {max} candidates (one label each), got {got}: send \
                 fewer candidates or use generate mode"
            ),
        }
    }
}

/// Score mode's cap: `n` candidates fit `max_score` labels.
pub fn check_score_cap(n: usize, mode: RankMode, max_score: usize) -> Result<(), CandidateProblem> {
    if mode == RankMode::Score && n > max_score {
        return Err(CandidateProblem::OverScoreCap {
            got: n,
            max: max_score,
        });
    }
    Ok(())
}

/// The ranker's rules for a candidate list: no repeats, nothing from `history`, and score
/// mode's cap. The first problem in list order is reported.
pub fn check_candidates(
    history: &[u32],
    candidates: &[u32],
    mode: RankMode,
    max_score: usize,
) -> Result<(), CandidateProblem> {
    check_score_cap(candidates.len(), mode, max_score)?;
    let in_history: std::collections::HashSet<u32> = history.iter().copied().collect();
    let mut seen = std::collections::HashSet::with_capacity(candidates.len());
    for (pos, c) in candidates.iter().enumerate() {
        if !seen.insert(*c) {
            return Err(CandidateProblem::Repeated { pos });
        }
        if in_history.contains(c) {
            return Err(CandidateProblem::InHistory { pos });
        }
    }
    Ok(())
}

/// How the LLM orders candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RankMode {
    Score,
    Generate,
}

impl RankMode {
    /// Lower-case name, as configs, method names and metric labels write it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Score => "score",
            Self::Generate => "generate",
        }
    }
}

impl std::str::FromStr for RankMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Self::Score, Self::Generate]
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown rank mode {s:?}; use score or generate"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RankError {
    /// The ranker's configuration cannot work with this model.
    #[error("ranking config: {0}")]
    Config(String),
    /// The request cannot be served as sent; the message says what to change.
    #[error("{0}")]
    Invalid(String),
    #[error("deadline exceeded during {0}")]
    DeadlineExceeded(&'static str),
    /// The caller gave up (e.g. the client went away); no one waits for the result.
    #[error("cancelled during {0}")]
    Cancelled(&'static str),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// Ranker settings (the `[ranking]` table of the server config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RankerConfig {
    pub prompt: PromptConfig,
    /// Most history items written into the prompt (the most recent ones).
    pub max_history: usize,
    /// Longest prompt accepted, in tokens.
    pub max_prompt_tokens: usize,
    /// Most tokens generate mode may write for one request.
    pub max_generated_tokens: usize,
    /// Most items generate mode writes; further items follow in retriever order.
    pub max_generated_items: usize,
    /// Titles as in the data, or with a trailing article moved first ("article-first").
    pub title_style: TitleStyleConfig,
    /// How an item is written in the prompt's history and candidate lists (see
    /// [`RankerConfig::item_text`]): `{title}` (required), `{year}`, `{genres}`. Generate
    /// mode still answers with titles alone.
    pub item_line: String,
    /// Sessions (KV caches) kept for reuse between requests.
    pub session_pool: usize,
    /// Score mode: weight `w` of the retriever's order in the final score,
    /// `log p_llm(c) − w · ln(1 + position of c)`, renormalised over the candidates
    /// (see [`apply_retriever_prior`]). 0 = the LLM alone.
    pub score_prior_weight: f32,
    /// PALR's user profile: before ranking, the model summarises the history into a few
    /// preference keywords (`prompt.profile_template`, greedy), which the ranking prompt
    /// then carries (`prompt.profile_line`). Cached per (history, adapter).
    pub user_profile: bool,
    /// Most tokens of a profile.
    pub profile_max_tokens: usize,
    /// Profiles kept in the cache (the cache is emptied when full).
    pub profile_cache: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TitleStyleConfig {
    #[default]
    AsInData,
    ArticleFirst,
}

impl Default for RankerConfig {
    fn default() -> Self {
        RankerConfig {
            prompt: PromptConfig::default(),
            max_history: 20,
            max_prompt_tokens: 2048,
            max_generated_tokens: 512,
            max_generated_items: 20,
            title_style: TitleStyleConfig::AsInData,
            item_line: "{title}".into(),
            session_pool: 4,
            score_prior_weight: 0.0,
            user_profile: false,
            profile_max_tokens: 24,
            profile_cache: 10_000,
        }
    }
}

/// Placeholders of [`RankerConfig::item_line`].
const ITEM_LINE_FIELDS: [&str; 3] = ["{title}", "{year}", "{genres}"];

/// `line` with each placeholder of [`ITEM_LINE_FIELDS`] replaced by the value at its index,
/// filled piece by piece so that a value is never re-read as a placeholder; and whether an
/// unknown `{` placeholder was met (kept as written).
fn fill_item_line(line: &str, values: [&str; 3]) -> (String, bool) {
    let mut out = String::with_capacity(line.len() + values.iter().map(|v| v.len()).sum::<usize>());
    let mut unknown = false;
    let mut rest = line;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        match ITEM_LINE_FIELDS.iter().position(|f| tail.starts_with(f)) {
            Some(i) => {
                out.push_str(values[i]);
                rest = &tail[ITEM_LINE_FIELDS[i].len()..];
            }
            None => {
                unknown = true;
                out.push('{');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    (out, unknown)
}

impl RankerConfig {
    /// Checks `item_line`: it names `{title}`, only known placeholders, and stays on one line.
    pub fn check_item_line(&self) -> Result<(), RankError> {
        let line = &self.item_line;
        let bad = |why: &str| {
            Err(RankError::Config(format!(
                "ranking.item_line {line:?} {why}; write e.g. \"{{title}} ({{year}}) [{{genres}}]\""
            )))
        };
        if !line.contains("{title}") {
            return bad("must contain {title}");
        }
        if line.contains('\n') || line.contains('\r') {
            return bad("must be a single line");
        }
        if fill_item_line(line, ["", "", ""]).1 {
            return bad("has an unknown placeholder (known: {title}, {year}, {genres})");
        }
        Ok(())
    }

    /// `item`'s title in the configured style (what generate mode writes).
    pub fn title_text(&self, catalog: &Catalog, item: u32) -> String {
        let style = match self.title_style {
            TitleStyleConfig::AsInData => TitleStyle::AsInData,
            TitleStyleConfig::ArticleFirst => TitleStyle::ArticleFirst,
        };
        catalog
            .title_styled(item, style)
            .map(|t| t.into_owned())
            .unwrap_or_default()
    }

    /// `item` as the prompt lists it: `item_line` with `{title}`, `{year}` and `{genres}`
    /// (comma-separated) filled in. A year or genre list the catalog lacks is empty, and a
    /// bracket pair left empty by it is dropped with its spacing ("Heat ()" → "Heat").
    pub fn item_text(&self, catalog: &Catalog, item: u32) -> String {
        let title = self.title_text(catalog, item);
        if self.item_line == "{title}" {
            return title;
        }
        let it = catalog.item(item);
        let year = it
            .and_then(|i| i.year)
            .map(|y| y.to_string())
            .unwrap_or_default();
        let genres = it.map(|i| i.genres.join(", ")).unwrap_or_default();
        let (mut out, _) = fill_item_line(&self.item_line, [&title, &year, &genres]);
        if year.is_empty() || genres.is_empty() {
            for empty in ["()", "[]"] {
                out = out.replace(empty, "");
            }
            out = out.split_whitespace().collect::<Vec<_>>().join(" ");
        }
        out
    }
}

/// One ranking job.
#[derive(Debug, Clone)]
pub struct RankRequest<'a> {
    /// Item indices, oldest first. Must not be empty.
    pub history: &'a [u32],
    /// Candidate item indices, best first in the caller's (retriever's) order.
    pub candidates: &'a [u32],
    /// Items to return.
    pub k: usize,
    pub mode: RankMode,
    /// LoRA adapter to rank with, pinned by [`Ranker::adapter`] (None: the model as
    /// loaded, merged adapter included).
    pub adapter: Option<&'a AdapterRef>,
    /// Work stops with [`RankError::DeadlineExceeded`] once this passes.
    pub deadline: Option<Instant>,
    /// Work stops with [`RankError::Cancelled`] once this is set.
    pub cancel: Option<&'a std::sync::atomic::AtomicBool>,
}

/// One ranked item.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    pub item: u32,
    /// Log-probability (higher is better) for LLM-ranked items; 0 for the tail.
    pub score: f32,
    /// Position in the request's candidate list (0-based).
    pub candidate_rank: u32,
    pub by_llm: bool,
}

/// Where the time went.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RankTimings {
    /// Building and tokenizing the prompt, and the user profile when it is on.
    pub prompt_s: f64,
    pub prefill_s: f64,
    pub decode_s: f64,
    /// From the start of prefill to the first generated token (generate) or the scores (score).
    pub first_token_s: f64,
    pub prompt_tokens: usize,
    pub cached_prompt_tokens: usize,
    pub generated_tokens: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RankOutput {
    pub items: Vec<Ranked>,
    pub timings: RankTimings,
}

/// A shared prefix is per rank mode and adapter load (its generation: an adapter loaded
/// again under the same name is another adapter).
type PrefixKey = (RankMode, Option<u64>);
/// A user profile is per adapter load and (shown) history.
type ProfileKey = (Option<u64>, Vec<u32>);
/// A lazily computed prefix session, locked while it is filled or copied from.
type PrefixSlot = Arc<Mutex<Option<Box<dyn Session>>>>;

/// Ranks candidates with one model.
pub struct Ranker {
    model: Arc<dyn LanguageModel>,
    tok: Arc<Tokenizer>,
    catalog: Arc<Catalog>,
    cfg: RankerConfig,
    prompts: PromptBuilder,
    /// The shared prefix's session per (mode, adapter), computed on first use, and the
    /// adapter generations retired.
    prefixes: Mutex<Prefixes>,
    pool: Mutex<Vec<Box<dyn Session>>>,
    /// Each item's title as written in the answer, tokenized (filled on first use).
    answer_tokens: RwLock<HashMap<u32, Arc<[u32]>>>,
    /// User profiles by (adapter, history), when `user_profile` is on.
    profiles: Mutex<HashMap<ProfileKey, Arc<str>>>,
}

/// The ranker's shared prefixes, and the generations of adapters unloaded or replaced:
/// nothing computed with those is cached any more (one number per admin call). One lock,
/// so a request caches nothing for a generation retired meanwhile; taken before
/// `profiles` where both are.
#[derive(Default)]
struct Prefixes {
    slots: HashMap<PrefixKey, PrefixSlot>,
    retired: std::collections::HashSet<u64>,
}

impl Prefixes {
    fn retired(&self, generation: Option<u64>) -> bool {
        generation.is_some_and(|g| self.retired.contains(&g))
    }
}

impl Ranker {
    pub fn new(
        model: Arc<dyn LanguageModel>,
        tok: Arc<Tokenizer>,
        chat: Option<&ChatTemplate>,
        catalog: Arc<Catalog>,
        cfg: RankerConfig,
    ) -> Result<Self, RankError> {
        let prompts = PromptBuilder::new(&cfg.prompt, &tok, chat)?;
        let ctx = model.config().max_position_embeddings;
        if cfg.max_prompt_tokens + cfg.max_generated_tokens > ctx {
            return Err(RankError::Config(format!(
                "max_prompt_tokens ({}) + max_generated_tokens ({}) exceed the model's context ({ctx})",
                cfg.max_prompt_tokens, cfg.max_generated_tokens
            )));
        }
        if cfg.user_profile && cfg.profile_max_tokens == 0 {
            return Err(RankError::Config(
                "profile_max_tokens must be positive when user_profile is on".into(),
            ));
        }
        if cfg.max_history == 0 || cfg.max_prompt_tokens == 0 {
            return Err(RankError::Config(
                "max_history and max_prompt_tokens must be positive".into(),
            ));
        }
        if cfg.session_pool == 0 {
            return Err(RankError::Config(
                "session_pool = 0 would drop every KV-cache session after its request (and the \
                 cached prompt prefix with it): set it to at least 1 (default 4)"
                    .into(),
            ));
        }
        // The prompt's fixed part must leave room for a history and candidates, or every
        // request would fail as the caller's fault.
        for mode in [RankMode::Score, RankMode::Generate] {
            let fixed = prompts.prefix(mode).len();
            if fixed >= cfg.max_prompt_tokens {
                return Err(RankError::Config(format!(
                    "max_prompt_tokens = {} but the {} prompt's fixed part (system message and \
                     instructions) alone is {fixed} tokens: every request would be refused; raise \
                     max_prompt_tokens well above {fixed}",
                    cfg.max_prompt_tokens,
                    match mode {
                        RankMode::Score => "score-mode",
                        RankMode::Generate => "generate-mode",
                    }
                )));
            }
        }
        cfg.check_item_line()?;
        Ok(Ranker {
            model,
            tok,
            catalog,
            cfg,
            prompts,
            prefixes: Mutex::new(Prefixes::default()),
            pool: Mutex::new(Vec::new()),
            answer_tokens: RwLock::new(HashMap::new()),
            profiles: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &RankerConfig {
        &self.cfg
    }

    /// Whether requests may name adapter `name` (loaded unmerged, or merged into the weights).
    pub fn has_adapter(&self, name: &str) -> bool {
        self.adapter(name).is_ok()
    }

    /// The adapter a request naming `name` ranks with, pinned for the request: `None` for
    /// the adapter merged into the weights, else the unmerged one loaded under `name` now.
    pub fn adapter(&self, name: &str) -> Result<Option<AdapterRef>, EngineError> {
        if self.model.merged_adapter() == Some(name) {
            return Ok(None);
        }
        self.model.adapter(name).map(Some)
    }

    /// Drops what was computed with adapter load `generation` (shared prefixes, user
    /// profiles): called when it is unloaded or replaced, so its weights can go once the
    /// requests running on it end.
    pub fn forget_adapter(&self, generation: u64) {
        // Held throughout, so no request still on that adapter caches anything after this.
        let mut prefixes = self.prefixes.lock().unwrap_or_else(|e| e.into_inner());
        prefixes.retired.insert(generation);
        prefixes.slots.retain(|(_, g), _| *g != Some(generation));
        self.profiles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(g, _), _| *g != Some(generation));
    }

    /// Shared prompt prefixes held (one per rank mode and adapter used).
    pub fn cached_prefixes(&self) -> usize {
        self.prefixes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .slots
            .len()
    }

    /// The model the ranker runs.
    pub fn model(&self) -> &Arc<dyn LanguageModel> {
        &self.model
    }

    /// Most candidates score mode can label.
    pub fn max_score_candidates(&self) -> usize {
        self.prompts.labels().len()
    }

    fn title(&self, item: u32) -> String {
        self.cfg.title_text(&self.catalog, item)
    }

    /// `item` as the history and candidate lists write it (`item_line`).
    fn item_text(&self, item: u32) -> String {
        self.cfg.item_text(&self.catalog, item)
    }

    /// The tokens the model writes for `item` in generate mode: its title and the line end.
    fn answer_path(&self, item: u32) -> Result<Arc<[u32]>, RankError> {
        if let Some(p) = self
            .answer_tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&item)
        {
            return Ok(p.clone());
        }
        let path: Arc<[u32]> = self
            .tok
            .encode(&format!("{}\n", self.title(item)), false)?
            .into();
        self.answer_tokens
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(item, path.clone());
        Ok(path)
    }

    fn session_capacity(&self) -> usize {
        self.cfg.max_prompt_tokens + self.cfg.max_generated_tokens
    }

    fn take_session(&self) -> Result<Box<dyn Session>, RankError> {
        let pooled = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match pooled {
            Some(s) => Ok(s),
            None => Ok(self.model.clone().new_session(self.session_capacity())?),
        }
    }

    fn return_session(&self, mut s: Box<dyn Session>) {
        // A pooled session pins no adapter: an unloaded one is freed when its requests end.
        if s.truncate(0).is_ok() && s.set_adapter(None).is_ok() {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < self.cfg.session_pool {
                pool.push(s);
            }
        }
    }

    /// Checks a request against the catalog and the limits; the message says what to fix.
    pub fn validate(&self, req: &RankRequest<'_>) -> Result<(), RankError> {
        let bad = |m: String| Err(RankError::Invalid(m));
        let n = self.catalog.len() as u32;
        if req.history.is_empty() {
            return bad("history is empty: send at least one item the user interacted with".into());
        }
        if req.candidates.is_empty() {
            return bad("no candidates to rank".into());
        }
        if req.k == 0 {
            return bad("k must be at least 1".into());
        }
        if let Some(i) = req.history.iter().chain(req.candidates).find(|&&i| i >= n) {
            return bad(format!("item index {i} is outside the catalog ({n} items)"));
        }
        check_candidates(
            req.history,
            req.candidates,
            req.mode,
            self.max_score_candidates(),
        )
        .map_err(|p| {
            RankError::Invalid(p.message(|pos| {
                self.catalog
                    .id(req.candidates[pos])
                    .unwrap_or("?")
                    .to_owned()
            }))
        })
    }

    /// Ranks `req.candidates` for the user whose history is `req.history`.
    pub fn rank(&self, req: &RankRequest<'_>) -> Result<RankOutput, RankError> {
        self.validate(req)?;
        let t0 = Instant::now();
        let mut timings = RankTimings::default();
        let hist = &req.history[req.history.len().saturating_sub(self.cfg.max_history)..];
        let hist_titles: Vec<String> = hist.iter().map(|&i| self.item_text(i)).collect();
        let cand_titles: Vec<String> = req.candidates.iter().map(|&i| self.item_text(i)).collect();
        let hist_refs: Vec<&str> = hist_titles.iter().map(String::as_str).collect();
        let cand_refs: Vec<&str> = cand_titles.iter().map(String::as_str).collect();
        let k = req.k.min(req.candidates.len());
        let llm_k = match req.mode {
            RankMode::Score => k,
            RankMode::Generate => k.min(self.cfg.max_generated_items),
        };
        let profile = if self.cfg.user_profile {
            Some(self.profile(req, hist, &hist_refs)?)
        } else {
            None
        };
        let suffix_text =
            self.prompts
                .suffix_text(req.mode, &hist_refs, profile.as_deref(), &cand_refs, llm_k);
        let suffix = self.tok.encode(&suffix_text, false)?;
        let prefix_len = self.prompts.prefix(req.mode).len();
        timings.prompt_tokens = prefix_len + suffix.len();
        if timings.prompt_tokens > self.cfg.max_prompt_tokens {
            return Err(RankError::Invalid(format!(
                "the prompt is {} tokens, over the limit of {}: send fewer history items or candidates",
                timings.prompt_tokens, self.cfg.max_prompt_tokens
            )));
        }
        timings.prompt_s = t0.elapsed().as_secs_f64();

        let mut session = self.take_session()?;
        let result = match session.set_adapter(req.adapter) {
            Ok(()) => self.run(&mut *session, req, &suffix, llm_k, &mut timings),
            Err(e) => Err(e.into()),
        };
        self.return_session(session);
        let llm = result?;

        // LLM-ranked first, then the rest in the caller's order.
        let mut items = llm;
        let mut used = vec![false; req.candidates.len()];
        for r in &items {
            used[r.candidate_rank as usize] = true;
        }
        for (pos, &item) in req.candidates.iter().enumerate() {
            if items.len() >= k {
                break;
            }
            if !used[pos] {
                items.push(Ranked {
                    item,
                    score: 0.0,
                    candidate_rank: pos as u32,
                    by_llm: false,
                });
            }
        }
        items.truncate(k);
        Ok(RankOutput { items, timings })
    }

    /// Profiles cached so far.
    pub fn cached_profiles(&self) -> usize {
        self.profiles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// The user profile for `hist` (the history the prompt shows): from the cache, or
    /// generated greedily (first line, at most `profile_max_tokens` tokens) and cached.
    fn profile(
        &self,
        req: &RankRequest<'_>,
        hist: &[u32],
        hist_refs: &[&str],
    ) -> Result<Arc<str>, RankError> {
        let key = (req.adapter.map(AdapterRef::generation), hist.to_vec());
        if let Some(p) = self
            .profiles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(p.clone());
        }
        let (prefix, rest) = self.prompts.profile_prompt(hist_refs);
        let mut ids = prefix.to_vec();
        ids.extend(self.tok.encode(&rest, false)?);
        let mut s = self.take_session()?;
        let result = (|| -> Result<String, RankError> {
            s.set_adapter(req.adapter)?;
            if ids.len() + self.cfg.profile_max_tokens > s.capacity() {
                return Err(RankError::Invalid(format!(
                    "the profile prompt is {} tokens, too long for the session ({}): send fewer history items",
                    ids.len(),
                    s.capacity()
                )));
            }
            let mut eos_token_ids = self.model.config().eos_token_ids.clone();
            eos_token_ids.extend(self.tok.eos_id());
            let params = GenerateParams {
                sampling: SamplingParams::default(), // greedy
                max_tokens: self.cfg.profile_max_tokens,
                stop: vec!["\n".into()],
                eos_token_ids,
            };
            let interrupted = || Self::check_deadline(req, "profile").is_err();
            let g = generate_in(&mut *s, &self.tok, &ids, &params, |_| {}, interrupted).map_err(
                |e| match e {
                    GenerateError::Engine(e) => RankError::Engine(e),
                    GenerateError::Tokenizer(e) => RankError::Tokenizer(e),
                    GenerateError::Invalid(m) => RankError::Invalid(m),
                },
            )?;
            if g.finish == FinishReason::Interrupted {
                Self::check_deadline(req, "profile")?;
            }
            Ok(g.text.trim().to_string())
        })();
        self.return_session(s);
        let profile: Arc<str> = result?.into();
        tracing::debug!(profile = %profile, history_items = hist.len(), "user profile generated");
        // The prefix lock (held until the insert) only where an adapter could have been
        // retired meanwhile.
        let prefixes = key
            .0
            .map(|_| self.prefixes.lock().unwrap_or_else(|e| e.into_inner()));
        if !prefixes.as_ref().is_some_and(|p| p.retired(key.0)) {
            let mut cache = self.profiles.lock().unwrap_or_else(|e| e.into_inner());
            if cache.len() >= self.cfg.profile_cache.max(1) {
                cache.clear();
            }
            cache.insert(key, profile.clone());
        }
        Ok(profile)
    }

    /// Stops work whose deadline has passed or whose caller has gone.
    fn check_deadline(req: &RankRequest<'_>, stage: &'static str) -> Result<(), RankError> {
        // The deadline first: when it has passed, the server has answered
        // DEADLINE_EXCEEDED and dropped the request, which also sets the cancel flag;
        // the stop is the deadline's, and is counted as such.
        if req.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(RankError::DeadlineExceeded(stage));
        }
        if req
            .cancel
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed))
        {
            return Err(RankError::Cancelled(stage));
        }
        Ok(())
    }

    /// Copies the shared prefix of `s`'s mode and adapter into `s` (running it first
    /// if no request has yet).
    fn load_prefix(&self, s: &mut dyn Session, mode: RankMode) -> Result<usize, RankError> {
        let prefix = self.prompts.prefix(mode);
        if prefix.is_empty() {
            return Ok(0);
        }
        let adapter = s.adapter().cloned();
        let key = (mode, adapter.as_ref().map(AdapterRef::generation));
        let slot = {
            let mut prefixes = self.prefixes.lock().unwrap_or_else(|e| e.into_inner());
            (!prefixes.retired(key.1)).then(|| prefixes.slots.entry(key).or_default().clone())
        };
        let Some(slot) = slot else {
            // An adapter unloaded or replaced while this request runs on it: its prefix is
            // computed for this request alone, not cached.
            s.feed(prefix, Logits::None)?;
            return Ok(0);
        };
        // Only requests with the same (mode, adapter) wait on each other here.
        let mut p = slot.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_none() {
            let mut fresh = self.model.clone().new_session(prefix.len())?;
            fresh.set_adapter(adapter.as_ref())?;
            fresh.feed(prefix, Logits::None)?;
            *p = Some(fresh);
        }
        s.copy_prefix_from(p.as_deref().expect("filled above"), prefix.len())?;
        Ok(prefix.len())
    }

    /// Runs the prompt and the mode's ranking; returns the LLM-ranked items.
    fn run(
        &self,
        s: &mut dyn Session,
        req: &RankRequest<'_>,
        suffix: &[u32],
        llm_k: usize,
        timings: &mut RankTimings,
    ) -> Result<Vec<Ranked>, RankError> {
        let t_prefill = Instant::now();
        timings.cached_prompt_tokens = self.load_prefix(s, req.mode)?;
        // The engine checks the deadline and the caller between layers, so abandoned work
        // frees its slot within one layer's time.
        let stop = || Self::check_deadline(req, "prefill").is_err();
        let stopped = |e: EngineError| match e {
            EngineError::Interrupted => match Self::check_deadline(req, "prefill") {
                Err(why) => why,
                Ok(()) => RankError::Engine(EngineError::Interrupted),
            },
            e => RankError::Engine(e),
        };
        Self::check_deadline(req, "prefill")?;
        let last = s
            .feed_until(suffix, Logits::Last, &stop)
            .map_err(stopped)?
            .to_vec();
        timings.prefill_s = t_prefill.elapsed().as_secs_f64();
        match req.mode {
            RankMode::Score => {
                let items = self.score_labels(&last, req.candidates, llm_k);
                timings.first_token_s = t_prefill.elapsed().as_secs_f64();
                Ok(items)
            }
            RankMode::Generate => {
                let t_decode = Instant::now();
                let out = self.generate_items(s, req, last, llm_k, timings, t_prefill);
                timings.decode_s = t_decode.elapsed().as_secs_f64();
                out
            }
        }
    }

    /// Score mode: log-softmax over the candidates' label logits (with the
    /// retriever prior of the config, if any), best first.
    fn score_labels(&self, logits: &[f32], candidates: &[u32], k: usize) -> Vec<Ranked> {
        let labels = &self.prompts.labels()[..candidates.len()];
        let raw: Vec<f32> = labels.iter().map(|&(_, t)| logits[t as usize]).collect();
        let m = raw.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = m + raw.iter().map(|v| (v - m).exp()).sum::<f32>().ln();
        let mut items: Vec<Ranked> = candidates
            .iter()
            .zip(&raw)
            .enumerate()
            .map(|(pos, (&item, &v))| Ranked {
                item,
                score: v - lse,
                candidate_rank: pos as u32,
                by_llm: true,
            })
            .collect();
        apply_retriever_prior(&mut items, self.cfg.score_prior_weight);
        items.truncate(k);
        items
    }

    /// Generate mode: constrained greedy decoding of up to `k` titles.
    fn generate_items(
        &self,
        s: &mut dyn Session,
        req: &RankRequest<'_>,
        mut logits: Vec<f32>,
        k: usize,
        timings: &mut RankTimings,
        t_prefill: Instant,
    ) -> Result<Vec<Ranked>, RankError> {
        let paths: Vec<Arc<[u32]>> = req
            .candidates
            .iter()
            .map(|&i| self.answer_path(i))
            .collect::<Result<_, _>>()?;
        let owned: Vec<Vec<u32>> = paths.iter().map(|p| p.to_vec()).collect();
        let mut trie = TokenTrie::new(&owned).map_err(RankError::Invalid)?;
        let vocab = s.vocab_size();
        let budget = self.cfg.max_generated_tokens.min(s.capacity() - s.len());
        let mut out = Vec::with_capacity(k);
        let mut fed = Vec::new();
        'items: while out.len() < k && trie.remaining() > 0 {
            let mut node = trie.root();
            let mut score = 0.0f32;
            let mut item_tokens = 0usize;
            loop {
                Self::check_deadline(req, "decode")?;
                // The best allowed token under the current logits.
                let (tok, next) = trie
                    .allowed(node)
                    .max_by(|a, b| {
                        logits[a.0 as usize]
                            .total_cmp(&logits[b.0 as usize])
                            .then(b.0.cmp(&a.0))
                    })
                    .expect("a live node has a live child");
                score += log_softmax_at(&logits, tok);
                node = next;
                fed.clear();
                fed.push(tok);
                // Tokens the trie forces come along in the same forward pass.
                while let Some((t, n)) = trie.forced(node) {
                    fed.push(t);
                    node = n;
                }
                if timings.generated_tokens + fed.len() > budget {
                    // Out of room: stop here; the rest follow in retriever order.
                    break 'items;
                }
                let done = trie.complete(node);
                let rows = s.feed(&fed, Logits::All)?;
                if timings.generated_tokens == 0 {
                    timings.first_token_s = t_prefill.elapsed().as_secs_f64();
                }
                timings.generated_tokens += fed.len();
                item_tokens += fed.len();
                for (i, &t) in fed.iter().enumerate().skip(1) {
                    score += log_softmax_at(&rows[(i - 1) * vocab..i * vocab], t);
                }
                logits.clear();
                logits.extend_from_slice(&rows[(fed.len() - 1) * vocab..]);
                if let Some(slot) = done {
                    trie.take(slot, &paths[slot as usize]);
                    out.push(Ranked {
                        item: req.candidates[slot as usize],
                        score,
                        candidate_rank: slot,
                        by_llm: true,
                    });
                    debug_assert_eq!(item_tokens, paths[slot as usize].len());
                    continue 'items;
                }
            }
        }
        Ok(out)
    }
}

/// `log softmax(row)[t]`.
fn log_softmax_at(row: &[f32], t: u32) -> f32 {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&v| ((v - m) as f64).exp()).sum();
    row[t as usize] - m - sum.ln() as f32
}

/// Blends the retriever's order into LLM scores and sorts best first:
/// `score(c) = log p_llm(c) − weight · ln(1 + candidate_rank(c))`, renormalised so the
/// scores stay log-probabilities over `items` (a Zipf-shaped prior on the retriever's
/// positions: with weight 1 the retriever's k-th item starts k times less likely than
/// its first). Weight 0 only sorts. Ties keep the retriever's order.
pub fn apply_retriever_prior(items: &mut [Ranked], weight: f32) {
    if weight != 0.0 && !items.is_empty() {
        for it in items.iter_mut() {
            it.score -= weight * (1.0 + it.candidate_rank as f32).ln();
        }
        let m = items
            .iter()
            .map(|r| r.score)
            .fold(f32::NEG_INFINITY, f32::max);
        let lse = m + items.iter().map(|r| (r.score - m).exp()).sum::<f32>().ln();
        for it in items.iter_mut() {
            it.score -= lse;
        }
    }
    items.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(a.candidate_rank.cmp(&b.candidate_rank))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Item;

    fn item(item: u32, logp: f32, pos: u32) -> Ranked {
        Ranked {
            item,
            score: logp,
            candidate_rank: pos,
            by_llm: true,
        }
    }

    #[test]
    fn item_lines_fill_year_and_genres_and_drop_what_is_missing() {
        let mut heat = Item::new("1", "Heat");
        heat.year = Some(1995);
        heat.genres = vec!["Action".into(), "Crime".into()];
        let mut bare = Item::new("2", "Godfather, The");
        bare.attrs
            .insert("note".into(), "{year} in a title is text".into());
        let odd = Item::new("3", "Title {genres} (Director's Cut)");
        let cat = Catalog::from_items(vec![heat, bare, odd]).unwrap();
        let cfg = |line: &str| RankerConfig {
            item_line: line.into(),
            ..RankerConfig::default()
        };
        let full = cfg("{title} ({year}) [{genres}]");
        full.check_item_line().unwrap();
        assert_eq!(full.item_text(&cat, 0), "Heat (1995) [Action, Crime]");
        assert_eq!(full.item_text(&cat, 1), "Godfather, The");
        // Placeholders inside a title are the title's text, not filled again.
        assert_eq!(
            cfg("{title}").item_text(&cat, 2),
            "Title {genres} (Director's Cut)"
        );
        assert_eq!(
            cfg("{genres}: {title}").item_text(&cat, 0),
            "Action, Crime: Heat"
        );
        let styled = RankerConfig {
            title_style: TitleStyleConfig::ArticleFirst,
            ..cfg("{title} / {year}")
        };
        assert_eq!(styled.item_text(&cat, 1), "The Godfather /");
        assert_eq!(styled.title_text(&cat, 1), "The Godfather");
        for (line, why) in [
            ("{year} [{genres}]", "must contain {title}"),
            ("{title} {rating}", "unknown placeholder"),
            ("{title}\n{year}", "single line"),
        ] {
            let e = cfg(line).check_item_line().unwrap_err().to_string();
            assert!(
                e.contains(why) && e.contains("ranking.item_line"),
                "{line}: {e}"
            );
        }
    }

    #[test]
    fn retriever_prior_blends_positions_and_keeps_log_probabilities() {
        // The LLM slightly prefers the retriever's third item (position 2).
        let l = |p: f32| p.ln();
        let base = vec![
            item(10, l(0.30), 0),
            item(11, l(0.30), 1),
            item(12, l(0.40), 2),
        ];
        let mut none = base.clone();
        apply_retriever_prior(&mut none, 0.0);
        assert_eq!(
            none.iter().map(|r| r.item).collect::<Vec<_>>(),
            [12, 10, 11]
        );
        assert_eq!(none[0].score, l(0.40), "weight 0 leaves scores alone");
        // Weight 1: 0.40/3 < 0.30/2 < 0.30/1, so the retriever's order wins.
        let mut w1 = base.clone();
        apply_retriever_prior(&mut w1, 1.0);
        assert_eq!(w1.iter().map(|r| r.item).collect::<Vec<_>>(), [10, 11, 12]);
        let total: f32 = w1.iter().map(|r| r.score.exp()).sum();
        assert!((total - 1.0).abs() < 1e-5, "renormalised: {total}");
        let want0 = (0.30f32 / (0.30 + 0.15 + 0.40 / 3.0)).ln();
        assert!(
            (w1[0].score - want0).abs() < 1e-5,
            "{} vs {want0}",
            w1[0].score
        );
        // Equal fused scores keep the retriever's order.
        let mut tie = vec![item(7, l(0.5), 1), item(8, l(0.5), 0)];
        apply_retriever_prior(&mut tie, 0.0);
        assert_eq!(tie[0].item, 8);
    }
}
