//! Ranking prompts: PALR's Recommend_Retrieval instruction (history titles,
//! candidate titles, "pick from the candidates") for generate mode, and a labelled
//! multiple-choice variant for score mode (LlamaRec, Yue et al. 2023).
//!
//! A prompt is built as token ids in two parts: a **shared prefix** (the chat
//! template's opening, the system message and the instruction up to the history),
//! the same for every request and so computed once in the KV cache, and the
//! request's **suffix** (history, candidates, closing instruction, the template's
//! hand-over to the assistant). The prefix ends at a line break so that the split
//! does not change how the text tokenizes.

use serde::{Deserialize, Serialize};

use crate::chat::{ChatTemplate, Message};
use crate::tokenizer::Tokenizer;

use super::{RankError, RankMode};

/// Prompt settings (the `[ranking.prompt]` table of the server config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptConfig {
    /// System message. Empty: the chat template's own default.
    pub system: String,
    /// Generate-mode instruction. Placeholders: `{history}` (one title per line,
    /// oldest first), `{candidates}` (one title per line), `{k}`. `{history}` must come
    /// first and start a line.
    pub generate_template: String,
    /// Score-mode instruction; `{candidates}` are written `A. Title`, one per line.
    pub score_template: String,
    /// Labels of score-mode candidates, one character each; each must be a single token.
    /// Their number caps the candidates score mode can rank.
    pub score_labels: String,
    /// Wrap the instruction in the model's chat template (instruct models). Off: raw text.
    pub use_chat_template: bool,
    /// PALR's user profile (used when `ranking.user_profile` is on): the instruction that
    /// asks the model to summarise a history (`{history}`, one title per line, must start a
    /// line) into a few preference keywords.
    pub profile_template: String,
    /// The line the profile adds to ranking prompts, after the history (`{profile}`).
    pub profile_line: String,
}

impl Default for PromptConfig {
    fn default() -> Self {
        PromptConfig {
            system: "You are a movie recommender. You only recommend movies from the candidate list you are \
                     given, writing their titles exactly as listed."
                .into(),
            generate_template: "The user has watched these movies, from the oldest to the most recent:\n\
                                {history}\n\n\
                                Candidate movies:\n{candidates}\n\n\
                                Recommend the {k} candidate movies the user is most likely to watch next, \
                                best first. Write one title per line, exactly as in the candidate list."
                .into(),
            score_template: "The user has watched these movies, from the oldest to the most recent:\n\
                             {history}\n\n\
                             Candidate movies:\n{candidates}\n\n\
                             Which candidate movie is the user most likely to watch next? Answer with its \
                             letter only."
                .into(),
            score_labels: "ABCDEFGHIJKLMNOPQRSTUVWXYZ".into(),
            use_chat_template: true,
            profile_template: "The user has watched these movies, from the oldest to the most recent:\n\
                               {history}\n\n\
                               Describe this user's taste in movies in at most five keywords (genres, \
                               themes, eras), separated by commas. Answer with the keywords only."
                .into(),
            profile_line: "The user's tastes: {profile}".into(),
        }
    }
}

/// One mode's fixed parts.
#[derive(Debug, Clone)]
struct Layout {
    /// Instruction text before `{history}`.
    before_history: String,
    /// Tokens of the shared prefix.
    prefix: Vec<u32>,
    /// Instruction text after `{history}` (still holding `{candidates}` and `{k}`).
    after_history: String,
    /// Chat-template text after the user's message (hand-over to the assistant).
    chat_tail: String,
}

/// Builds prompts as token ids.
#[derive(Debug, Clone)]
pub struct PromptBuilder {
    generate: Layout,
    score: Layout,
    /// The user-profile instruction (no candidates).
    profile: Layout,
    profile_line: String,
    /// Score-mode labels and their token ids.
    labels: Vec<(char, u32)>,
}

const MARKER: &str = "\u{1}PALR-CONTENT\u{1}";

fn bad(m: String) -> RankError {
    RankError::Config(m)
}

/// The text before and after the user's message: the chat template rendered around a
/// marker (with the system message), or the plain system text and a newline.
fn chat_frame(
    cfg: &PromptConfig,
    chat: Option<&ChatTemplate>,
) -> Result<(String, String), RankError> {
    if !cfg.use_chat_template {
        let head = if cfg.system.is_empty() {
            String::new()
        } else {
            format!("{}\n\n", cfg.system)
        };
        return Ok((head, "\n".to_string()));
    }
    let chat = chat.ok_or_else(|| {
        bad("ranking.prompt.use_chat_template is on but the model has no chat template; turn it off".into())
    })?;
    let mut messages = Vec::new();
    if !cfg.system.is_empty() {
        messages.push(Message::new("system", &cfg.system));
    }
    messages.push(Message::new("user", MARKER));
    let rendered = chat
        .render(&messages, true)
        .map_err(|e| bad(e.to_string()))?;
    let at = rendered
        .find(MARKER)
        .ok_or_else(|| bad("the chat template drops the user's message".into()))?;
    Ok((
        rendered[..at].to_string(),
        rendered[at + MARKER.len()..].to_string(),
    ))
}

impl Layout {
    /// Splits the template `ranking.prompt.{name}` at `{history}` (which must start a line and
    /// come before `{candidates}`) and tokenizes the fixed prefix inside the chat frame.
    fn parse(
        name: &str,
        template: &str,
        (chat_head, chat_tail): (&str, &str),
        tok: &Tokenizer,
    ) -> Result<Layout, RankError> {
        let at = template.find("{history}").ok_or_else(|| {
            bad(format!(
                "ranking.prompt.{name} has no {{history}} placeholder"
            ))
        })?;
        let c = match (name, template.find("{candidates}")) {
            (_, Some(c)) => c,
            ("profile_template", None) => usize::MAX,
            (_, None) => {
                return Err(bad(format!(
                    "ranking.prompt.{name} has no {{candidates}} placeholder"
                )));
            }
        };
        if c < at {
            return Err(bad(format!(
                "ranking.prompt.{name}: {{history}} must come before {{candidates}}"
            )));
        }
        let head = &template[..at];
        if !(head.is_empty() || head.ends_with('\n')) {
            return Err(bad(format!(
                "ranking.prompt.{name}: {{history}} must start a line"
            )));
        }
        let prefix = tok
            .encode(&format!("{chat_head}{head}"), false)
            .map_err(|e| bad(e.to_string()))?;
        Ok(Layout {
            before_history: head.to_string(),
            prefix,
            after_history: template[at + "{history}".len()..].to_string(),
            chat_tail: chat_tail.to_string(),
        })
    }
}

/// Score mode's labels with their token ids: each one token, no two the same.
fn score_labels(cfg: &PromptConfig, tok: &Tokenizer) -> Result<Vec<(char, u32)>, RankError> {
    let mut labels = Vec::new();
    for ch in cfg.score_labels.chars() {
        let ids = tok
            .encode(&ch.to_string(), false)
            .map_err(|e| bad(e.to_string()))?;
        match ids.as_slice() {
            [id] if !labels.iter().any(|(_, t)| t == id) => labels.push((ch, *id)),
            [_] => {
                return Err(bad(format!(
                    "score label {ch:?} repeats another label's token"
                )));
            }
            _ => {
                return Err(bad(format!(
                    "score label {ch:?} is {} tokens; labels must be single tokens",
                    ids.len()
                )));
            }
        }
    }
    if labels.is_empty() {
        return Err(bad("ranking.prompt.score_labels is empty".into()));
    }
    Ok(labels)
}

impl PromptBuilder {
    pub fn new(
        cfg: &PromptConfig,
        tok: &Tokenizer,
        chat: Option<&ChatTemplate>,
    ) -> Result<Self, RankError> {
        let (head, tail) = chat_frame(cfg, chat)?;
        let frame = (head.as_str(), tail.as_str());
        let labels = score_labels(cfg, tok)?;
        if !cfg.profile_line.contains("{profile}") {
            return Err(bad(
                "ranking.prompt.profile_line has no {profile} placeholder".into(),
            ));
        }
        Ok(PromptBuilder {
            generate: Layout::parse("generate_template", &cfg.generate_template, frame, tok)?,
            score: Layout::parse("score_template", &cfg.score_template, frame, tok)?,
            profile: Layout::parse("profile_template", &cfg.profile_template, frame, tok)?,
            profile_line: cfg.profile_line.clone(),
            labels,
        })
    }

    fn layout(&self, mode: RankMode) -> &Layout {
        match mode {
            RankMode::Score => &self.score,
            _ => &self.generate,
        }
    }

    /// The shared prefix's tokens for `mode`.
    pub fn prefix(&self, mode: RankMode) -> &[u32] {
        &self.layout(mode).prefix
    }

    /// Score-mode labels (character, token id); candidate `i` gets label `i`.
    pub fn labels(&self) -> &[(char, u32)] {
        &self.labels
    }

    /// The user's message alone (the instruction with history and candidates filled
    /// in, no chat template): what fine-tuning data puts in the user turn, so training
    /// and serving see the same text.
    pub fn user_message(
        &self,
        mode: RankMode,
        history: &[&str],
        candidates: &[&str],
        k: usize,
    ) -> String {
        let l = self.layout(mode);
        format!(
            "{}{}",
            l.before_history,
            self.fill(l, mode, history, None, candidates, k)
        )
    }

    /// The user-profile prompt's shared prefix (the chat opening and the instruction up to
    /// the history) as tokens, and the rest for `history` as text.
    pub fn profile_prompt(&self, history: &[&str]) -> (&[u32], String) {
        let l = &self.profile;
        (
            &l.prefix,
            format!(
                "{}{}",
                self.fill(l, RankMode::Generate, history, None, &[], 0),
                l.chat_tail
            ),
        )
    }

    /// What the assistant answers: generate mode, the titles one per line; score
    /// mode, the label of the candidate at `best_position`.
    pub fn answer(
        &self,
        mode: RankMode,
        ranked_titles: &[&str],
        best_position: usize,
    ) -> Option<String> {
        match mode {
            RankMode::Score => self.labels.get(best_position).map(|(ch, _)| ch.to_string()),
            RankMode::Generate => Some(ranked_titles.iter().map(|t| format!("{t}\n")).collect()),
        }
    }

    /// The request's text after the shared prefix, ending with the chat template's
    /// hand-over to the assistant.
    pub fn suffix_text(
        &self,
        mode: RankMode,
        history: &[&str],
        profile: Option<&str>,
        candidates: &[&str],
        k: usize,
    ) -> String {
        let l = self.layout(mode);
        format!(
            "{}{}",
            self.fill(l, mode, history, profile, candidates, k),
            l.chat_tail
        )
    }

    /// The instruction from `{history}` on, placeholders filled.
    fn fill(
        &self,
        l: &Layout,
        mode: RankMode,
        history: &[&str],
        profile: Option<&str>,
        candidates: &[&str],
        k: usize,
    ) -> String {
        let mut history = history.join("\n");
        if let Some(p) = profile {
            history.push_str("\n\n");
            history.push_str(&self.profile_line.replace("{profile}", p));
        }
        let candidates = match mode {
            RankMode::Score => candidates
                .iter()
                .zip(&self.labels)
                .map(|(t, (ch, _))| format!("{ch}. {t}"))
                .collect::<Vec<_>>()
                .join("\n"),
            _ => candidates.join("\n"),
        };
        // Placeholders are filled in the template before titles go in, so a title that
        // happens to contain "{k}" is left alone.
        let rest = l.after_history.replace("{k}", &k.to_string());
        let (before, after) = rest.split_once("{candidates}").unwrap_or((&rest, ""));
        format!("{history}{before}{candidates}{after}")
    }
}
