//! Instruction-tuning data in PALR's format (Yang et al. 2023, "PALR: Personalization Aware
//! LLMs for Recommendation", Sec. 3.3), built from training histories only.
//!
//! Tasks ([`Task`]):
//! - **Recommend** (`recommend`): the user's history → the next items, no candidate list
//!   ([`SftConfig::recommend_template`]).
//! - **Recommend_Retrieval** (`recommend_retrieval`): history + a shuffled candidate list
//!   (the targets plus negatives) → the targets, one title per line. The user turn is
//!   [`PromptBuilder::user_message`] in generate mode and the answer
//!   [`PromptBuilder::answer`], so the text is exactly what the ranker sends at serving time.
//! - **Recommend_Retrieval, score variant** (`recommend_retrieval_score`): the one-pass score
//!   mode's labelled candidate list (one target at a uniformly random position plus
//!   negatives) → the target's label.
//!
//! Examples slide over each user's training sequence ([`Split::train`]): at position `t` the
//! history is the `max_history` (the ranker's cap, 20 by default) items before `t`, and the
//! targets are the next [`SftConfig::future_items`] training items (one for the score task).
//!
//! Negatives: [`SftConfig::hard_negative_share`] of them are *hard* (the hard-negative
//! retriever's top items for the user's training prefix followed by the targets, i.e. items
//! like what the user watched and is about to watch), the rest are drawn by popularity
//! (probability ∝ training count + 1, without replacement). A negative is never an item the
//! user ever interacted with (training, validation or test) nor a target.
//!
//! Candidate lists ([`SftConfig::candidate_order`]) can instead be the hard-negative
//! retriever's own list (as served, or shuffled). With [`SftConfig::tail`] the examples come
//! only from each user's last training positions and that retriever is fitted on what comes
//! before them, so, as at serving time, no list is made by a retriever that counted the
//! example's own transition.
//!
//! Guarantees (tested on MovieLens-100k):
//! - every example of user `u` is built from `u`'s training sequence, the catalog and
//!   statistics of all users' training sequences only (popularity counts; the retriever's
//!   training view is `Split::train` of every user). No user's validation or test
//!   *interaction* feeds any example.
//! - `u`'s own validation and test items appear in no field of `u`'s examples (history,
//!   candidates, targets), even where they repeat an earlier training item (such repeats are
//!   dropped from the sequence the examples slide over).
//! - Items that are *other* users' validation/test targets do appear (as ordinary training
//!   items of users who watched them, or as negatives): those are facts about the catalog,
//!   not about the held-out interactions.
//!
//! Output ([`write_jsonl`]): one JSON object per line in the chat layout fine-tuning tools read,
//! `{"messages":[{"role":"system",..},{"role":"user",..},{"role":"assistant",..}],"task":..,
//! "user":..}`. The same seed gives the same bytes.

use std::collections::HashSet;
use std::io::Write;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::chat::Message;
use crate::data::{Catalog, Interactions, Split};
use crate::rank::{PromptBuilder, RankMode, RankerConfig};
use crate::retrieval::{RetrievalError, Retriever};

/// Errors of the fine-tuning data builder.
#[derive(Debug, thiserror::Error)]
pub enum SftError {
    /// The configuration cannot work; the message says what to change.
    #[error("{0}")]
    Config(String),
    #[error("hard negatives: {0}")]
    Retrieval(#[from] RetrievalError),
    #[error("writing examples: {0}")]
    Io(#[from] std::io::Error),
}

/// Result alias of this module.
pub type Result<T, E = SftError> = std::result::Result<T, E>;

/// One instruction-tuning task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// History → next items.
    Recommend,
    /// History + candidates → the targets among them (generate mode's prompt).
    RecommendRetrieval,
    /// History + labelled candidates → the target's label (score mode's prompt).
    RecommendRetrievalScore,
}

impl Task {
    pub const ALL: [Task; 3] = [
        Task::Recommend,
        Task::RecommendRetrieval,
        Task::RecommendRetrievalScore,
    ];

    /// The name in the data and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Task::Recommend => "recommend",
            Task::RecommendRetrieval => "recommend_retrieval",
            Task::RecommendRetrievalScore => "recommend_retrieval_score",
        }
    }

    /// Parses a comma-separated list (`all` = every task), rejecting duplicates.
    pub fn parse_list(s: &str) -> Result<Vec<Task>> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part == "all" {
                out.extend(
                    Task::ALL
                        .iter()
                        .filter(|t| !out.contains(*t))
                        .collect::<Vec<_>>(),
                );
                continue;
            }
            let t = Task::ALL
                .into_iter()
                .find(|t| t.name() == part)
                .ok_or_else(|| {
                    SftError::Config(format!(
                        "unknown task {part:?}; known: {}, all",
                        Task::ALL.map(Task::name).join(", ")
                    ))
                })?;
            if out.contains(&t) {
                return Err(SftError::Config(format!("task {part} is listed twice")));
            }
            out.push(t);
        }
        if out.is_empty() {
            return Err(SftError::Config("no tasks given".into()));
        }
        Ok(out)
    }
}

/// Fine-tuning data settings (TOML/JSON; the prompts of the retrieval tasks come from the
/// ranker's [`crate::rank::PromptConfig`], so serving and training share them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftConfig {
    /// System message of the Recommend task. Empty: none (the chat template's default).
    pub recommend_system: String,
    /// Recommend-task instruction. Placeholders: `{history}` (one title per line, oldest
    /// first) and `{k}` (number of items answered).
    pub recommend_template: String,
    /// Targets per example of the Recommend and Recommend_Retrieval tasks: the next this many
    /// training items (fewer at the end of the sequence). The score task has one target.
    pub future_items: usize,
    /// Negatives per candidate list.
    pub negatives: usize,
    /// Share of the negatives taken from the hard-negative retriever (0..=1); the rest are
    /// popularity-sampled. Without a retriever, all are popularity-sampled.
    pub hard_negative_share: f64,
    /// Most examples per user and task (0 = one per position); positions are drawn with the
    /// seed when there are more.
    pub max_examples_per_user: usize,
    /// Fewest history items an example has.
    pub min_history: usize,
    /// How candidate lists of the retrieval tasks are made: `shuffled` (targets plus
    /// negatives in random order), `retriever` (the hard-negative retriever's top
    /// `negatives + 1` items for the history, in its order, as the ranker sees them at
    /// serving time; positions whose target the retriever does not propose are skipped,
    /// and `max_examples_per_user` then counts kept examples) or `retriever-shuffled` (the
    /// same lists in random order: the served candidates, but their position says nothing,
    /// so a model must learn from the items themselves; pair it with
    /// `ranking.score_prior_weight` to add the retriever's order back at serving time).
    pub candidate_order: CandidateOrder,
    /// 0: examples from every training position, the hard-negative retriever fitted on every
    /// user's whole training part — so an example's own transition (last item → target) is
    /// in the retriever's counts, which puts targets higher in its lists than at serving
    /// time. N > 0: examples only from each user's last N training positions, with a
    /// retriever fitted on what comes before them
    /// ([`crate::eval::training_view_before_tail`]), so every
    /// list is made as at serving time: by a retriever that never saw the target.
    pub tail: usize,
}

/// See [`SftConfig::candidate_order`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CandidateOrder {
    #[default]
    Shuffled,
    Retriever,
    #[serde(rename = "retriever-shuffled")]
    RetrieverShuffled,
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            recommend_system: "You are a movie recommender.".into(),
            recommend_template: "The user has watched these movies, from the oldest to the most recent:\n\
                                 {history}\n\n\
                                 Recommend the {k} movies the user is most likely to watch next, best \
                                 first. Write one title per line."
                .into(),
            future_items: 3,
            negatives: 19,
            hard_negative_share: 0.5,
            max_examples_per_user: 20,
            min_history: 1,
            candidate_order: CandidateOrder::Shuffled,
            tail: 0,
        }
    }
}

/// One training example, with the item indices it was made of.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub task: Task,
    pub user: u32,
    /// Oldest first (at most the ranker's `max_history`).
    pub history: Vec<u32>,
    /// The items the answer names, in answer order.
    pub targets: Vec<u32>,
    /// The candidate list as shown (empty for Recommend).
    pub candidates: Vec<u32>,
    /// system (when set), user, assistant.
    pub messages: Vec<Message>,
}

/// Builds examples; see the module docs.
pub struct SftBuilder<'a> {
    split: &'a Split,
    inter: &'a Interactions,
    catalog: &'a Catalog,
    prompts: &'a PromptBuilder,
    ranker: &'a RankerConfig,
    cfg: SftConfig,
    hard: Option<Arc<Retriever>>,
    /// Cumulative popularity weights (training count + 1), for sampling.
    cumulative: Vec<f64>,
    /// Items by descending training count (ties by index), the sampler's fallback.
    by_popularity: Vec<u32>,
}

/// splitmix64: seeds per (seed, user, task) so every user's examples are independent of the
/// others and of the order they are built in.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl<'a> SftBuilder<'a> {
    /// `hard` must have been built from the training view of the validation stage
    /// (`eval::training_view(.., Stage::Valid)`, every user's `Split::train`), or with
    /// `cfg.tail > 0` from [`crate::eval::training_view_before_tail`] with the same tail.
    pub fn new(
        split: &'a Split,
        inter: &'a Interactions,
        catalog: &'a Catalog,
        prompts: &'a PromptBuilder,
        ranker: &'a RankerConfig,
        cfg: SftConfig,
        hard: Option<Arc<Retriever>>,
    ) -> Result<Self> {
        let bad = |m: String| Err(SftError::Config(m));
        if !ranker.prompt.use_chat_template {
            return bad(
                "ranking.prompt.use_chat_template is off, so serving prompts are raw text; \
                 sft-data writes chat-layout data that would not match them: turn it on"
                    .into(),
            );
        }
        if !cfg.recommend_template.contains("{history}") {
            return bad("sft.recommend_template has no {history} placeholder".into());
        }
        if cfg.future_items == 0 {
            return bad("sft.future_items must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&cfg.hard_negative_share) {
            return bad(format!(
                "sft.hard_negative_share must be between 0 and 1, got {}",
                cfg.hard_negative_share
            ));
        }
        if cfg.min_history == 0 {
            return bad("sft.min_history must be at least 1 (the ranker needs a history)".into());
        }
        if let Err(e) = ranker.check_item_line() {
            return bad(e.to_string());
        }
        let n = catalog.len();
        let mut counts = vec![0u64; n];
        for u in 0..split.n_users() as u32 {
            for &i in split.train(u) {
                counts[i as usize] += 1;
            }
        }
        let mut acc = 0.0;
        let cumulative = counts
            .iter()
            .map(|&c| {
                acc += c as f64 + 1.0;
                acc
            })
            .collect();
        let mut by_popularity: Vec<u32> = (0..n as u32).collect();
        by_popularity.sort_by_key(|&i| (std::cmp::Reverse(counts[i as usize]), i));
        Ok(SftBuilder {
            split,
            inter,
            catalog,
            prompts,
            ranker,
            cfg,
            hard,
            cumulative,
            by_popularity,
        })
    }

    /// Checks that `tasks` can be built (the score task's list fits the labels).
    pub fn check_tasks(&self, tasks: &[Task]) -> Result<()> {
        let labels = self.prompts.labels().len();
        if tasks.contains(&Task::RecommendRetrievalScore) && self.cfg.negatives + 1 > labels {
            return Err(SftError::Config(format!(
                "the score task lists the target and {} negatives, but there are only {labels} \
                 score labels: use at most {} negatives",
                self.cfg.negatives,
                labels - 1
            )));
        }
        Ok(())
    }

    /// Titles, as answers name them.
    fn titles(&self, items: &[u32]) -> Vec<String> {
        items
            .iter()
            .map(|&i| self.ranker.title_text(self.catalog, i))
            .collect()
    }

    /// Items as the prompt's lists write them (the ranker's `item_line`).
    fn item_texts(&self, items: &[u32]) -> Vec<String> {
        items
            .iter()
            .map(|&i| self.ranker.item_text(self.catalog, i))
            .collect()
    }

    /// The sequence `u`'s examples slide over: the training part, without the user's own
    /// validation and test items (which only a repeat could put there).
    pub fn sequence(&self, u: u32) -> Vec<u32> {
        let held_out = self.held_out(u);
        self.split
            .train(u)
            .iter()
            .copied()
            .filter(|i| !held_out.contains(i))
            .collect()
    }

    /// `u`'s validation and test items.
    fn held_out(&self, u: u32) -> Vec<u32> {
        [self.split.valid(u), self.split.test(u)]
            .iter()
            .flatten()
            .map(|e| e.target)
            .collect()
    }

    /// All of user `u`'s examples for `tasks`, tasks in the given order, positions ascending.
    pub fn user_examples(&self, u: u32, tasks: &[Task], seed: u64) -> Result<Vec<Example>> {
        let seq = self.sequence(u);
        let first = self.first_position(u);
        let user_items: HashSet<u32> = self.inter.items_of(u).iter().copied().collect();
        let mut out = Vec::new();
        for &task in tasks {
            let mut rng =
                StdRng::seed_from_u64(mix(seed ^ mix(u as u64) ^ mix(0x5F7 + task as u64)));
            let in_retriever_order = matches!(
                self.cfg.candidate_order,
                CandidateOrder::Retriever | CandidateOrder::RetrieverShuffled
            ) && task != Task::Recommend;
            if in_retriever_order {
                // Every position the retriever covers, then a seeded sample of them.
                let mut kept = Vec::new();
                for t in first..seq.len() {
                    if let Some(ex) = self.example(task, u, &seq, t, &user_items, &mut rng)? {
                        kept.push(ex);
                    }
                }
                let max = self.cfg.max_examples_per_user;
                if max > 0 && kept.len() > max {
                    let mut pick: Vec<usize> =
                        rand::seq::index::sample(&mut rng, kept.len(), max).into_vec();
                    pick.sort_unstable();
                    kept = pick.into_iter().map(|i| kept[i].clone()).collect();
                }
                out.extend(kept);
                continue;
            }
            let positions = self.positions(first, &seq, &mut rng);
            for t in positions {
                if let Some(ex) = self.example(task, u, &seq, t, &user_items, &mut rng)? {
                    out.push(ex);
                }
            }
        }
        Ok(out)
    }

    /// The first position of `u`'s sequence an example may target: `min_history`, or with a
    /// tail the first position after what the hard-negative retriever was fitted on.
    fn first_position(&self, u: u32) -> usize {
        if self.cfg.tail == 0 {
            return self.cfg.min_history;
        }
        // The retriever saw `train[..cut]`; the sequence is `train` minus held-out repeats.
        let train = self.split.train(u);
        let cut = train.len().saturating_sub(self.cfg.tail);
        let held_out = self.held_out(u);
        let fitted = train[..cut]
            .iter()
            .filter(|i| !held_out.contains(i))
            .count();
        fitted.max(self.cfg.min_history)
    }

    /// Target positions of one user and task.
    fn positions(&self, first: usize, seq: &[u32], rng: &mut StdRng) -> Vec<usize> {
        let all: Vec<usize> = (first..seq.len()).collect();
        let max = self.cfg.max_examples_per_user;
        if max == 0 || all.len() <= max {
            return all;
        }
        let mut picked: Vec<usize> = rand::seq::index::sample(rng, all.len(), max)
            .into_iter()
            .map(|i| all[i])
            .collect();
        picked.sort_unstable();
        picked
    }

    fn example(
        &self,
        task: Task,
        u: u32,
        seq: &[u32],
        t: usize,
        user_items: &HashSet<u32>,
        rng: &mut StdRng,
    ) -> Result<Option<Example>> {
        let history = seq[t.saturating_sub(self.ranker.max_history)..t].to_vec();
        let n_targets = match task {
            Task::RecommendRetrievalScore => 1,
            _ => self.cfg.future_items,
        };
        // Targets: the next items, each once and none already in the history (only repeats
        // could break either).
        let mut targets: Vec<u32> = Vec::with_capacity(n_targets);
        for &i in &seq[t..(t + n_targets).min(seq.len())] {
            if !history.contains(&i) && !targets.contains(&i) {
                targets.push(i);
            }
        }
        if targets.is_empty() {
            return Ok(None);
        }
        let system = |s: &str| (!s.is_empty()).then(|| Message::new("system", s));
        let hist_titles = self.item_texts(&history);
        let hist_refs: Vec<&str> = hist_titles.iter().map(String::as_str).collect();
        let target_titles = self.titles(&targets);
        let target_refs: Vec<&str> = target_titles.iter().map(String::as_str).collect();
        let (candidates, messages) = match task {
            Task::Recommend => {
                let user = self
                    .cfg
                    .recommend_template
                    .replace("{k}", &targets.len().to_string())
                    .replace("{history}", &hist_refs.join("\n"));
                let answer = self
                    .prompts
                    .answer(RankMode::Generate, &target_refs, 0)
                    .unwrap_or_default();
                let mut m: Vec<Message> = system(&self.cfg.recommend_system).into_iter().collect();
                m.push(Message::new("user", user));
                m.push(Message::new("assistant", answer));
                (Vec::new(), m)
            }
            Task::RecommendRetrieval | Task::RecommendRetrievalScore => {
                let candidates = match self.cfg.candidate_order {
                    CandidateOrder::Shuffled => {
                        let mut c = targets.clone();
                        c.extend(self.negatives(seq, t, &targets, user_items, rng)?);
                        c.shuffle(rng);
                        c
                    }
                    CandidateOrder::Retriever => {
                        match self.retrieved_candidates(seq, t, &targets, user_items)? {
                            Some(c) => c,
                            None => return Ok(None),
                        }
                    }
                    CandidateOrder::RetrieverShuffled => {
                        match self.retrieved_candidates(seq, t, &targets, user_items)? {
                            Some(mut c) => {
                                c.shuffle(rng);
                                c
                            }
                            None => return Ok(None),
                        }
                    }
                };
                let titles = self.item_texts(&candidates);
                let refs: Vec<&str> = titles.iter().map(String::as_str).collect();
                let (mode, k, answer) = if task == Task::RecommendRetrieval {
                    let a = self.prompts.answer(RankMode::Generate, &target_refs, 0);
                    (RankMode::Generate, targets.len(), a)
                } else {
                    let pos = candidates
                        .iter()
                        .position(|&c| c == targets[0])
                        .expect("the target is a candidate");
                    let a = self.prompts.answer(RankMode::Score, &[], pos);
                    (RankMode::Score, candidates.len(), a)
                };
                let answer = answer.ok_or_else(|| {
                    SftError::Config("a score-mode candidate has no label".into())
                })?;
                let user = self.prompts.user_message(mode, &hist_refs, &refs, k);
                let mut m: Vec<Message> = system(&self.ranker.prompt.system).into_iter().collect();
                m.push(Message::new("user", user));
                m.push(Message::new("assistant", answer));
                (candidates, m)
            }
        };
        Ok(Some(Example {
            task,
            user: u,
            history,
            targets,
            candidates,
            messages,
        }))
    }

    /// The retriever's candidate list for the history `seq[..t]` as the ranker would get it:
    /// its top `negatives + 1` items, minus items the user interacts with other than the
    /// targets (later training items, held-out items), in the retriever's order. `None`
    /// when a target is not among them.
    fn retrieved_candidates(
        &self,
        seq: &[u32],
        t: usize,
        targets: &[u32],
        user_items: &HashSet<u32>,
    ) -> Result<Option<Vec<u32>>> {
        let hard = self.hard.as_ref().ok_or_else(|| {
            SftError::Config(
                "candidate_order = \"retriever\" or \"retriever-shuffled\" needs a hard-negative retriever".into(),
            )
        })?;
        let want = self.cfg.negatives + 1;
        let mut history: Vec<u32> = seq[..t].to_vec();
        history.sort_unstable();
        history.dedup();
        // Ask for enough extra that dropping the user's own other items (at most all of
        // them) still leaves a full list.
        let got = hard.retrieve(&seq[..t], want + user_items.len(), &history)?;
        let list: Vec<u32> = got
            .into_iter()
            .map(|(i, _)| i)
            .filter(|i| targets.contains(i) || !user_items.contains(i))
            .take(want)
            .collect();
        Ok(targets.iter().all(|t| list.contains(t)).then_some(list))
    }

    /// Negatives for one candidate list: hard ones from the retriever, the rest by popularity.
    fn negatives(
        &self,
        seq: &[u32],
        t: usize,
        targets: &[u32],
        user_items: &HashSet<u32>,
        rng: &mut StdRng,
    ) -> Result<Vec<u32>> {
        let want = self.cfg.negatives;
        let mut out: Vec<u32> = Vec::with_capacity(want);
        let allowed = |i: u32, out: &[u32]| {
            !user_items.contains(&i) && !targets.contains(&i) && !out.contains(&i)
        };
        if let Some(hard) = &self.hard {
            let n_hard = (want as f64 * self.cfg.hard_negative_share).round() as usize;
            if n_hard > 0 {
                let mut query = seq[..t].to_vec();
                query.extend_from_slice(targets);
                let mut exclude: Vec<u32> = user_items.iter().copied().collect();
                exclude.sort_unstable();
                for (i, _) in hard.retrieve(&query, n_hard, &exclude)? {
                    if out.len() < n_hard && allowed(i, &out) {
                        out.push(i);
                    }
                }
            }
        }
        // Popularity sampling with rejection; a bounded number of draws, then the most
        // popular allowed items in order (so a user who watched most of the catalog still
        // terminates).
        let total = *self.cumulative.last().unwrap_or(&0.0);
        let mut draws = 0;
        while out.len() < want && draws < 64 * want && total > 0.0 {
            draws += 1;
            let x = rng.random_range(0.0..total);
            let i = self.cumulative.partition_point(|&c| c <= x) as u32;
            if (i as usize) < self.cumulative.len() && allowed(i, &out) {
                out.push(i);
            }
        }
        for &i in &self.by_popularity {
            if out.len() >= want {
                break;
            }
            if allowed(i, &out) {
                out.push(i);
            }
        }
        Ok(out)
    }

    /// The external id of user `u`.
    pub fn user_id(&self, u: u32) -> &str {
        self.inter.user_id(u).unwrap_or("?")
    }
}

/// Counts of what was written.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub users: usize,
    pub examples: usize,
    pub per_task: Vec<(String, usize)>,
}

#[derive(Serialize)]
struct Line<'a> {
    messages: &'a [Message],
    task: &'static str,
    user: &'a str,
}

/// Writes one example as a JSONL line.
pub fn write_example(out: &mut dyn Write, ex: &Example, user_id: &str) -> Result<()> {
    serde_json::to_writer(
        &mut *out,
        &Line {
            messages: &ex.messages,
            task: ex.task.name(),
            user: user_id,
        },
    )
    .map_err(std::io::Error::from)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Builds every user's examples for `tasks` (users in index order) and writes them as JSONL;
/// `progress(done, total)` is called after each user.
pub fn write_jsonl(
    builder: &SftBuilder<'_>,
    tasks: &[Task],
    seed: u64,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Summary> {
    builder.check_tasks(tasks)?;
    let n = builder.split.n_users();
    let mut summary = Summary {
        per_task: tasks.iter().map(|t| (t.name().to_owned(), 0)).collect(),
        ..Summary::default()
    };
    for u in 0..n as u32 {
        let examples = builder.user_examples(u, tasks, seed)?;
        if !examples.is_empty() {
            summary.users += 1;
        }
        for ex in &examples {
            write_example(out, ex, builder.user_id(u))?;
            summary.examples += 1;
            let slot = tasks
                .iter()
                .position(|&t| t == ex.task)
                .expect("asked task");
            summary.per_task[slot].1 += 1;
        }
        progress(u as usize + 1, n);
    }
    out.flush()?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_parse() {
        assert_eq!(
            Task::parse_list("recommend, recommend_retrieval_score").unwrap(),
            [Task::Recommend, Task::RecommendRetrievalScore]
        );
        assert_eq!(Task::parse_list("all").unwrap(), Task::ALL);
        assert_eq!(
            Task::parse_list("recommend,all").unwrap(),
            Task::ALL,
            "all adds the missing ones"
        );
        let e = Task::parse_list("retrieve").unwrap_err().to_string();
        assert!(
            e.contains("unknown task") && e.contains("recommend_retrieval"),
            "{e}"
        );
        assert!(Task::parse_list("recommend,recommend").is_err());
        assert!(Task::parse_list("").is_err());
    }

    #[test]
    fn config_parses_from_toml_and_rejects_typos() {
        let c: SftConfig = toml::from_str("negatives = 9\nfuture_items = 1").unwrap();
        assert_eq!((c.negatives, c.future_items), (9, 1));
        assert_eq!(
            c.recommend_template,
            SftConfig::default().recommend_template
        );
        let e = toml::from_str::<SftConfig>("negative = 9").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn seeds_mix() {
        assert_ne!(mix(1), mix(2));
        assert_eq!(mix(7), mix(7));
    }
}
