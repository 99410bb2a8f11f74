//! Rebuilds a Hugging Face `tokenizer.json` (the `tokenizers` library's serialization format)
//! from a GGUF file's `tokenizer.ggml.*` metadata, plus the special-token ids the model
//! config and `tokenizer_config.json` need.
//!
//! Supported: `tokenizer.ggml.model = "gpt2"` (byte-level BPE: GPT-2's byte-to-unicode
//! alphabet, ranked merges) with pre-tokenizers `smollm` (SmolLM/SmolLM2: single digits, then
//! the GPT-2 regex) and `gpt-2`/`default` (the GPT-2 regex alone). Token types follow
//! llama.cpp's `llama_token_type`: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
//! 6 byte. Control tokens become special added tokens, user-defined tokens non-special added
//! tokens; all tokens keep their GGUF ids.
//!
//! Special ids, the rule (metadata keys as llama.cpp writes them):
//! - `bos`, `unk`, `pad`: `tokenizer.ggml.{bos,unknown,padding}_token_id` when present and in
//!   range; `pad` falls back to `eos`.
//! - `eos`: a chat model must stop where its chat template ends an assistant turn. When the
//!   template is ChatML (it writes `<|im_end|>` after each message) and `<|im_end|>` is a
//!   control token, eos is `<|im_end|>`, whatever `tokenizer.ggml.eos_token_id` says (some
//!   converters store the base model's `<|endoftext|>` there); otherwise eos is
//!   `tokenizer.ggml.eos_token_id`. A disagreement is reported as a warning.

use std::collections::HashMap;

use serde_json::{Value as Json, json};

use super::reader::GgufFile;
use super::{GgufError, Result};

/// llama.cpp token type of control tokens (special tokens such as `<|im_start|>`).
pub const TOKEN_TYPE_CONTROL: i64 = 3;
/// llama.cpp token type of user-defined added tokens.
pub const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The ChatML end-of-turn token.
pub const CHATML_END: &str = "<|im_end|>";

/// A special token: id and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialToken {
    pub id: u32,
    pub content: String,
}

/// The tokenizer rebuilt from GGUF metadata.
#[derive(Debug, Clone)]
pub struct GgufTokenizer {
    /// The `tokenizer.json` document.
    pub tokenizer_json: Json,
    /// Number of tokens (ids are `0..vocab_size`).
    pub vocab_size: usize,
    pub bos: Option<SpecialToken>,
    pub eos: Option<SpecialToken>,
    pub pad: Option<SpecialToken>,
    pub unk: Option<SpecialToken>,
    /// Whether the tokenizer prepends BOS (`tokenizer.ggml.add_bos_token`, default false).
    pub add_bos: bool,
    /// `tokenizer.chat_template`, if any.
    pub chat_template: Option<String>,
    /// The added tokens (control and user-defined), by id.
    pub added_tokens: Vec<(u32, String, bool)>,
    /// Things the caller should tell the user (e.g. an eos id that was overridden).
    pub warnings: Vec<String>,
}

fn bad(msg: String) -> GgufError {
    GgufError::BadMetadata(msg)
}

/// Builds the tokenizer from `file`'s metadata.
pub fn from_gguf(file: &GgufFile) -> Result<GgufTokenizer> {
    let model = file.require_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(bad(format!(
            "tokenizer.ggml.model is {model:?}; palr imports byte-level BPE tokenizers (\"gpt2\") \
             only"
        )));
    }
    let pre = file.get_str("tokenizer.ggml.pre")?.unwrap_or("default");
    let byte_level = json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
    });
    let pre_tokenizer = match pre {
        "smollm" => json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level,
            ]
        }),
        "gpt-2" | "default" => byte_level,
        other => {
            return Err(bad(format!(
                "tokenizer.ggml.pre is {other:?}; palr knows the pre-tokenizers \"smollm\", \
                 \"gpt-2\" and \"default\""
            )));
        }
    };

    let tokens: Vec<&str> = file
        .get_array("tokenizer.ggml.tokens")?
        .ok_or_else(|| GgufError::MissingKey {
            key: "tokenizer.ggml.tokens".into(),
        })?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str()
                .ok_or_else(|| bad(format!("tokenizer.ggml.tokens[{i}] is not a string")))
        })
        .collect::<Result<_>>()?;
    let n = tokens.len();
    if n == 0 || n > u32::MAX as usize {
        return Err(bad(format!("tokenizer.ggml.tokens has {n} tokens")));
    }
    let token_types: Vec<i64> = match file.get_array("tokenizer.ggml.token_type")? {
        None => vec![1; n],
        Some(a) if a.len() == n => a
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_i64()
                    .ok_or_else(|| bad(format!("tokenizer.ggml.token_type[{i}] is not an integer")))
            })
            .collect::<Result<_>>()?,
        Some(a) => {
            return Err(bad(format!(
                "tokenizer.ggml.token_type has {} entries for {n} tokens",
                a.len()
            )));
        }
    };

    let mut vocab = serde_json::Map::with_capacity(n);
    let mut ids: HashMap<&str, u32> = HashMap::with_capacity(n);
    for (i, &t) in tokens.iter().enumerate() {
        if let Some(prev) = ids.insert(t, i as u32) {
            return Err(bad(format!(
                "token {t:?} appears twice in tokenizer.ggml.tokens (ids {prev} and {i})"
            )));
        }
        vocab.insert(t.to_string(), json!(i));
    }

    let mut merges = Vec::new();
    if let Some(m) = file.get_array("tokenizer.ggml.merges")? {
        merges.reserve(m.len());
        for (i, v) in m.iter().enumerate() {
            let s = v
                .as_str()
                .ok_or_else(|| bad(format!("tokenizer.ggml.merges[{i}] is not a string")))?;
            let (a, b) = match s.split_once(' ') {
                Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => (a, b),
                _ => {
                    return Err(bad(format!(
                        "tokenizer.ggml.merges[{i}] = {s:?} is not two tokens separated by one \
                         space"
                    )));
                }
            };
            for part in [a, b, &format!("{a}{b}")] {
                if !ids.contains_key(part) {
                    return Err(bad(format!(
                        "tokenizer.ggml.merges[{i}] = {s:?} uses {part:?}, which is not a token"
                    )));
                }
            }
            merges.push(json!([a, b]));
        }
    }

    let mut added_tokens = Vec::new();
    let mut added_json = Vec::new();
    for (i, (&t, &ty)) in tokens.iter().zip(&token_types).enumerate() {
        let special = match ty {
            TOKEN_TYPE_CONTROL => true,
            TOKEN_TYPE_USER_DEFINED => false,
            _ => continue,
        };
        added_tokens.push((i as u32, t.to_string(), special));
        added_json.push(json!({
            "id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": special,
        }));
    }

    let mut warnings = Vec::new();
    let mut special_at = |key: &str| -> Result<Option<SpecialToken>> {
        Ok(match file.get_u64(key)? {
            Some(id) if id < n as u64 => Some(SpecialToken {
                id: id as u32,
                content: tokens[id as usize].to_string(),
            }),
            Some(id) => {
                warnings.push(format!(
                    "{key} = {id} is not a token id (there are {n}); ignored"
                ));
                None
            }
            None => None,
        })
    };
    let bos = special_at("tokenizer.ggml.bos_token_id")?;
    let meta_eos = special_at("tokenizer.ggml.eos_token_id")?;
    let meta_pad = special_at("tokenizer.ggml.padding_token_id")?;
    let unk = special_at("tokenizer.ggml.unknown_token_id")?;
    let chat_template = file.get_str("tokenizer.chat_template")?.map(str::to_owned);
    let chatml_eos = chat_template
        .as_deref()
        .filter(|t| t.contains(CHATML_END))
        .and_then(|_| ids.get(CHATML_END))
        .filter(|&&id| token_types[id as usize] == TOKEN_TYPE_CONTROL)
        .map(|&id| SpecialToken {
            id,
            content: CHATML_END.to_string(),
        });
    let eos = match (chatml_eos, meta_eos) {
        (Some(c), Some(m)) if c != m => {
            warnings.push(format!(
                "tokenizer.ggml.eos_token_id is {} ({:?}) but the chat template ends turns with \
                 {:?} (id {}); using {:?} as eos",
                m.id, m.content, c.content, c.id, c.content
            ));
            Some(c)
        }
        (Some(c), _) => Some(c),
        (None, m) => m,
    };
    let pad = meta_pad.or_else(|| eos.clone());
    let add_bos = file
        .get_bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(false);

    let post_processor = match (&bos, add_bos) {
        (Some(b), true) => json!({
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": b.content, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": b.content, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": b.content, "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {
                b.content.clone(): {"id": b.content, "ids": [b.id], "tokens": [b.content]}
            }
        }),
        (None, true) => {
            return Err(bad(
                "tokenizer.ggml.add_bos_token is true but there is no valid \
                 tokenizer.ggml.bos_token_id"
                    .into(),
            ));
        }
        _ => json!({
            "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true
        }),
    };

    let tokenizer_json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_json,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {
            "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true
        },
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges,
        }
    });

    Ok(GgufTokenizer {
        tokenizer_json,
        vocab_size: n,
        bos,
        eos,
        pad,
        unk,
        add_bos,
        chat_template,
        added_tokens,
        warnings,
    })
}

impl GgufTokenizer {
    /// The `tokenizer_config.json` document (the file `transformers` reads for special tokens
    /// and the chat template).
    pub fn tokenizer_config_json(&self, model_max_length: u64) -> Json {
        let decoder: serde_json::Map<String, Json> = self
            .added_tokens
            .iter()
            .map(|(id, content, special)| {
                (
                    id.to_string(),
                    json!({
                        "content": content, "lstrip": false, "normalized": false,
                        "rstrip": false, "single_word": false, "special": special,
                    }),
                )
            })
            .collect();
        let name = |t: &Option<SpecialToken>| t.as_ref().map(|t| t.content.clone());
        let mut extra: Vec<String> = Vec::new();
        for t in [&self.bos, &self.eos].into_iter().flatten() {
            if !extra.contains(&t.content) {
                extra.push(t.content.clone());
            }
        }
        json!({
            "add_bos_token": self.add_bos,
            "add_eos_token": false,
            "add_prefix_space": false,
            "added_tokens_decoder": decoder,
            "additional_special_tokens": extra,
            "bos_token": name(&self.bos),
            "eos_token": name(&self.eos),
            "pad_token": name(&self.pad),
            "unk_token": name(&self.unk),
            "chat_template": self.chat_template,
            "clean_up_tokenization_spaces": false,
            "model_max_length": model_max_length,
            "tokenizer_class": "GPT2Tokenizer",
        })
    }
}
