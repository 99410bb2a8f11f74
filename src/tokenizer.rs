//! Text <-> token ids for the engine, over a Hugging Face `tokenizer.json` loaded with the
//! `tokenizers` crate, plus what constrained decoding needs beyond it: the exact bytes each
//! token contributes to decoded text ([`Tokenizer::token_bytes`]) and an incremental,
//! UTF-8-safe decoder ([`StreamDecoder`]).
//!
//! Byte-level BPE (GPT-2's scheme, used by SmolLM2/LLaMA-3-style tokenizers) writes each byte
//! of the text as one printable character: bytes `!`..`~`, `¡`..`¬` and `®`..`ÿ` stand for
//! themselves, the other 68 bytes map in order to U+0100..U+0143 (GPT-2 `bytes_to_unicode`).
//! A token's bytes are its characters mapped back; a token with a character outside that
//! alphabet (an added token such as `<|im_start|>` is inside it) contributes its UTF-8 text,
//! exactly as the `tokenizers` ByteLevel decoder does, so concatenated token bytes equal the
//! decoded text.

use std::path::Path;

use tokenizers::DecoderWrapper;

/// Errors of the tokenizer layer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot load tokenizer {path}: {message}")]
    Load { path: String, message: String },
    #[error(
        "tokenizer {path} is not byte-level BPE (its decoder is {decoder}); palr needs a \
         GPT-2-style byte-level tokenizer to know each token's bytes"
    )]
    NotByteLevel { path: String, decoder: String },
    #[error("tokenizer {path} has a gap in its ids: id {id} has no token")]
    MissingId { path: String, id: u32 },
    #[error("encoding failed: {0}")]
    Encode(String),
    #[error("decoding failed: {0}")]
    Decode(String),
    #[error("token id {id} is out of range (vocabulary size {vocab_size})")]
    UnknownId { id: u32, vocab_size: usize },
}

/// Result of tokenizer operations.
pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;

/// GPT-2's byte -> char table (`bytes_to_unicode`).
pub fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(256 + next).unwrap_or('\0');
            next += 1;
            c
        };
    }
    table
}

/// The inverse of [`byte_to_char_table`]: `Some(byte)` for the 256 alphabet characters.
pub fn char_to_byte(c: char) -> Option<u8> {
    let c = c as u32;
    match c {
        0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF => Some(c as u8),
        0x100..=0x143 => {
            // The n-th non-printable byte, in increasing byte order.
            let n = c - 0x100;
            (0..=255u8)
                .filter(|b| !matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF))
                .nth(n as usize)
        }
        _ => None,
    }
}

/// Bytes a byte-level token string stands for (see the module docs).
fn bytes_of_token(token: &str, lut: &std::collections::HashMap<char, u8>) -> Vec<u8> {
    token
        .chars()
        .map(|c| lut.get(&c).copied())
        .collect::<Option<Vec<u8>>>()
        .unwrap_or_else(|| token.as_bytes().to_vec())
}

/// A loaded tokenizer with its per-token byte table.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// `token_bytes[id]`.
    token_bytes: Vec<Vec<u8>>,
    /// `special[id]`: added token marked special.
    special: Vec<bool>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.token_bytes.len())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .finish()
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json`; special-token ids come from a `tokenizer_config.json` next to
    /// it when there is one.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| TokenizerError::Load {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        let mut t = Self::from_tokenizer(inner, &shown)?;
        if let Some(cfg) = path
            .parent()
            .map(|d| d.join("tokenizer_config.json"))
            .filter(|p| p.is_file())
        {
            let text = std::fs::read_to_string(&cfg).map_err(|e| TokenizerError::Load {
                path: cfg.display().to_string(),
                message: e.to_string(),
            })?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| TokenizerError::Load {
                    path: cfg.display().to_string(),
                    message: e.to_string(),
                })?;
            let id_of = |key: &str| {
                let s = v.get(key)?;
                // Either "text" or {"content": "text", ...}.
                let s = s.as_str().or_else(|| s.get("content")?.as_str())?;
                t.inner.token_to_id(s)
            };
            t.bos_id = id_of("bos_token");
            t.eos_id = id_of("eos_token");
        }
        Ok(t)
    }

    /// Wraps an already loaded `tokenizers` tokenizer (`name` is used in errors).
    pub fn from_tokenizer(inner: tokenizers::Tokenizer, name: &str) -> Result<Self> {
        match inner.get_decoder() {
            Some(DecoderWrapper::ByteLevel(_)) => {}
            other => {
                return Err(TokenizerError::NotByteLevel {
                    path: name.to_string(),
                    decoder: other.map_or("none".into(), |d| {
                        serde_json::to_value(d)
                            .ok()
                            .and_then(|v| v.get("type")?.as_str().map(str::to_owned))
                            .unwrap_or_else(|| "unknown".into())
                    }),
                });
            }
        }
        let n = inner.get_vocab_size(true);
        let lut: std::collections::HashMap<char, u8> = byte_to_char_table()
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        let added = inner.get_added_tokens_decoder();
        let mut token_bytes = Vec::with_capacity(n);
        let mut special = Vec::with_capacity(n);
        for id in 0..n as u32 {
            let tok = inner
                .id_to_token(id)
                .ok_or_else(|| TokenizerError::MissingId {
                    path: name.to_string(),
                    id,
                })?;
            token_bytes.push(bytes_of_token(&tok, &lut));
            special.push(added.get(&id).is_some_and(|a| a.special));
        }
        Ok(Tokenizer {
            inner,
            token_bytes,
            special,
            bos_id: None,
            eos_id: None,
        })
    }

    /// Token ids of `text`. Special-token strings in the text (`<|im_start|>`) become their
    /// ids; `add_special_tokens` controls only the post-processor's BOS/EOS.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.inner
            .encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    /// Text of `ids`; `skip_special` drops special tokens.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        if let Some(&id) = ids
            .iter()
            .find(|&&id| id as usize >= self.token_bytes.len())
        {
            return Err(self.unknown(id));
        }
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    fn unknown(&self, id: u32) -> TokenizerError {
        TokenizerError::UnknownId {
            id,
            vocab_size: self.token_bytes.len(),
        }
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of ids (including added tokens).
    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// BOS id from `tokenizer_config.json`, if known.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// EOS id (the end-of-turn token of chat models) from `tokenizer_config.json`, if known.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Whether `id` is a special added token (`<|im_start|>`).
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// The exact bytes token `id` contributes to decoded text (empty for unknown ids).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// `token_bytes` for every id, indexed by id.
    pub fn token_bytes_table(&self) -> &[Vec<u8>] {
        &self.token_bytes
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// An incremental decoder over this tokenizer.
    pub fn stream_decoder(&self, skip_special: bool) -> StreamDecoder<'_> {
        StreamDecoder {
            tok: self,
            skip_special,
            pending: Vec::new(),
        }
    }
}

/// Turns ids into text as they arrive, never splitting a UTF-8 character: bytes of an
/// incomplete character are held until the token that completes it; invalid bytes become
/// U+FFFD, as in [`Tokenizer::decode`].
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    skip_special: bool,
    pending: Vec<u8>,
}

impl StreamDecoder<'_> {
    /// Adds one token; returns the text that became complete (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        if id as usize >= self.tok.vocab_size() {
            return Err(self.tok.unknown(id));
        }
        if !(self.skip_special && self.tok.is_special(id)) {
            self.pending.extend_from_slice(self.tok.token_bytes(id));
        }
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The first `valid` bytes are valid UTF-8, so this is lossless.
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..valid);
                            break;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Ends the stream: returns what is left (an incomplete character becomes U+FFFD).
    pub fn finish(self) -> String {
        String::from_utf8_lossy(&self.pending).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_matches_tokenizers_crate() {
        let table = byte_to_char_table();
        let ours: std::collections::HashSet<char> = table.iter().copied().collect();
        let theirs: std::collections::HashSet<char> =
            tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
                .into_iter()
                .collect();
        assert_eq!(ours, theirs);
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(table[b as usize]), Some(b));
        }
        assert_eq!(table[b' ' as usize], 'Ġ');
        assert_eq!(table[b'\n' as usize], 'Ċ');
        assert_eq!(char_to_byte('A'), Some(b'A'));
        assert_eq!(char_to_byte(' '), None);
        assert_eq!(char_to_byte('€'), None);
    }
}
