//! Text generation on a [`LanguageModel`]: prefill the prompt, then choose tokens
//! one at a time until an end-of-sequence token, a stop string or the token limit.

use std::sync::Arc;
use std::time::Instant;

use crate::engine::{EngineError, LanguageModel, Logits, Session};
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::{Tokenizer, TokenizerError};

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("{0}")]
    Invalid(String),
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub sampling: SamplingParams,
    /// Most new tokens.
    pub max_tokens: usize,
    /// Generation ends when the text produced contains one of these (not included in the output).
    pub stop: Vec<String>,
    /// Generation ends at one of these tokens (not included in the output).
    pub eos_token_ids: Vec<u32>,
}

/// Why generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token.
    Eos,
    /// A stop string (which one).
    Stop(String),
    /// `max_tokens` new tokens.
    Length,
    /// The model's context (or the session's capacity) is full.
    ContextFull,
    /// The caller's `interrupted` check said to stop ([`generate_in`]).
    Interrupted,
}

/// The result of [`generate`].
#[derive(Debug, Clone)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    pub prefill_s: f64,
    pub decode_s: f64,
}

/// Generates a continuation of `prompt`, calling `on_text` with each new piece of
/// text as soon as it is complete UTF-8 (stop strings are held back until they can
/// no longer match).
pub fn generate(
    model: &Arc<dyn LanguageModel>,
    tok: &Tokenizer,
    prompt: &[u32],
    params: &GenerateParams,
    on_text: impl FnMut(&str),
) -> Result<Generation, GenerateError> {
    let max_ctx = model.config().max_position_embeddings;
    if prompt.len() >= max_ctx {
        return Err(GenerateError::Invalid(format!(
            "the prompt has {} tokens; the model's context is {max_ctx}",
            prompt.len()
        )));
    }
    let capacity = (prompt.len() + params.max_tokens).min(max_ctx);
    let mut session = model.clone().new_session(capacity)?;
    generate_in(&mut *session, tok, prompt, params, on_text, || false)
}

/// [`generate`] on a session the caller holds (its adapter set, empty or holding context
/// the prompt continues), asking `interrupted` before each forward pass: when it says
/// yes, generation ends with [`FinishReason::Interrupted`] (e.g. a passed deadline).
pub fn generate_in(
    session: &mut dyn Session,
    tok: &Tokenizer,
    prompt: &[u32],
    params: &GenerateParams,
    mut on_text: impl FnMut(&str),
    mut interrupted: impl FnMut() -> bool,
) -> Result<Generation, GenerateError> {
    params.sampling.validate().map_err(GenerateError::Invalid)?;
    if prompt.is_empty() {
        return Err(GenerateError::Invalid("the prompt is empty".into()));
    }
    let mut sampler = Sampler::new(params.sampling.clone());
    let mut decoder = tok.stream_decoder(true);

    let t0 = Instant::now();
    if interrupted() {
        return Ok(Generation {
            tokens: Vec::new(),
            text: String::new(),
            finish: FinishReason::Interrupted,
            prompt_tokens: prompt.len(),
            prefill_s: 0.0,
            decode_s: 0.0,
        });
    }
    let mut next = sampler.sample(session.feed(prompt, Logits::Last)?);
    let prefill_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();

    let mut tokens = Vec::new();
    let mut text = String::new();
    let mut emitted = 0; // bytes of `text` already handed to on_text
    let hold = params.stop.iter().map(|s| s.len()).max().unwrap_or(0);
    let finish = loop {
        if params.eos_token_ids.contains(&next) {
            break FinishReason::Eos;
        }
        tokens.push(next);
        text.push_str(&decoder.push(next)?);
        if let Some((at, stop)) = params
            .stop
            .iter()
            .filter_map(|s| text.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|(at, _)| *at)
        {
            text.truncate(at);
            break FinishReason::Stop(stop.clone());
        }
        // Hand out what can no longer be the start of a stop string.
        let mut safe = text.len().saturating_sub(hold.saturating_sub(1));
        while !text.is_char_boundary(safe) {
            safe -= 1;
        }
        if safe > emitted {
            on_text(&text[emitted..safe]);
            emitted = safe;
        }
        if tokens.len() >= params.max_tokens {
            break FinishReason::Length;
        }
        if session.len() >= session.capacity() {
            break FinishReason::ContextFull;
        }
        if interrupted() {
            break FinishReason::Interrupted;
        }
        next = sampler.sample(session.feed(&[next], Logits::Last)?);
    };
    if matches!(
        finish,
        FinishReason::Eos
            | FinishReason::Length
            | FinishReason::ContextFull
            | FinishReason::Interrupted
    ) {
        text.push_str(&decoder.finish());
    }
    if text.len() > emitted {
        on_text(&text[emitted..]);
    }
    Ok(Generation {
        tokens,
        text,
        finish,
        prompt_tokens: prompt.len(),
        prefill_s,
        decode_s: t1.elapsed().as_secs_f64(),
    })
}
